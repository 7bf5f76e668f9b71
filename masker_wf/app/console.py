"""What the App tells the user on stderr: progress, warnings, errors."""

from __future__ import annotations

import sys

__all__ = ["error", "progress", "warning"]


def _line(text: str) -> None:
    # One write per line: print() writes the text and its newline separately, which an
    # unbuffered stderr (PYTHONUNBUFFERED, or python -u) passes on as two writes, and the
    # lines of runs processed side by side (--nprocs) then ran together.
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def progress(message: str) -> None:
    """A progress line."""
    _line(message)


def warning(message: str) -> None:
    """``masker-wf: warning: <message>``."""
    _line(f"masker-wf: warning: {message}")


def error(message: str) -> None:
    """``masker-wf: error: <message>``."""
    _line(f"masker-wf: error: {message}")
