"""What the App tells the user on stderr: progress, warnings, errors."""

from __future__ import annotations

import sys

__all__ = ["error", "progress", "warning"]


def progress(message: str) -> None:
    """A progress line."""
    print(message, file=sys.stderr, flush=True)


def warning(message: str) -> None:
    """``masker-wf: warning: <message>``."""
    print(f"masker-wf: warning: {message}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    """``masker-wf: error: <message>``."""
    print(f"masker-wf: error: {message}", file=sys.stderr, flush=True)
