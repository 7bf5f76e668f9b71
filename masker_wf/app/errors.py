"""Exit codes of the App (BIDS execution specification) and the errors that carry one."""

from __future__ import annotations

import errno
import os
import signal
import threading
from contextlib import contextmanager

__all__ = [
    "EXIT_CANTCREAT",
    "EXIT_DATA",
    "EXIT_FAILED_RUNS",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_IOERR",
    "EXIT_LEVEL",
    "EXIT_NOINPUT",
    "EXIT_NOTHING",
    "EXIT_OK",
    "EXIT_USAGE",
    "AppError",
    "OutputError",
    "check_interrupted",
    "interruptible",
    "output_exit_code",
]

EXIT_OK, EXIT_FAILED_RUNS = 0, 1
EXIT_INVALID, EXIT_LEVEL, EXIT_NOTHING = 16, 17, 18
EXIT_USAGE, EXIT_DATA, EXIT_NOINPUT, EXIT_CANTCREAT, EXIT_IOERR = 64, 65, 66, 73, 74

#: Exit code of an App stopped by Ctrl-C (SIGINT): 128 + the signal's number, as shells do.
EXIT_INTERRUPTED = 128 + signal.SIGINT

# Set by Ctrl-C. A KeyboardInterrupt raised inside a garbage-collector callback (pybids'
# SQLAlchemy teardown, say) is printed and swallowed by Python: the flag is what the App
# checks between runs, so that such a Ctrl-C still stops it.
_INTERRUPTED = threading.Event()


def _on_sigint(signum, frame):
    _INTERRUPTED.set()
    raise KeyboardInterrupt


@contextmanager
def interruptible():
    """Ctrl-C raises KeyboardInterrupt and is remembered, for the block (main thread)."""
    _INTERRUPTED.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def check_interrupted() -> None:
    """Raise KeyboardInterrupt when Ctrl-C was pressed, even if its exception was lost."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


# Errors of the storage itself (74, EX_IOERR); any other output failure (a file in the way,
# no permission, a read-only file system) is "cannot create" (73, EX_CANTCREAT).
_IO_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


def output_exit_code(number: int | None) -> int:
    """74 for an I/O error of the storage (disk full, quota, EIO), else 73."""
    return EXIT_IOERR if number in _IO_ERRNOS else EXIT_CANTCREAT


class AppError(Exception):
    """The App cannot go on; ``exit_code`` says why (see the module constants).

    Parameters
    ----------
    message : str
        What the user reads after ``masker-wf: error:``.
    exit_code : int
        One of the ``EXIT_*`` codes.
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class OutputError(OSError):
    """An output of the App cannot be written; names the output path the user knows.

    Parameters
    ----------
    path : path
        The output (or output directory) at fault, in the output dataset.
    number : int or None
        ``errno`` of the failure.
    reason : str
        What went wrong (the system's message).

    Attributes
    ----------
    output_file : str
        ``path``.
    exit_code : int
        74 when the storage failed (disk full, quota, I/O error), else 73.
    """

    def __init__(self, path, number: int | None, reason: str):
        super().__init__(number, reason, os.fspath(path))
        self.output_file = os.fspath(path)
        self.exit_code = output_exit_code(number)

    def __str__(self) -> str:
        return f"cannot write output '{self.output_file}': {self.strerror}"

    def __reduce__(self):
        return type(self), (self.output_file, self.errno, self.strerror)
