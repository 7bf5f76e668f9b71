"""Exit codes of the App (BIDS execution specification) and the error that carries one."""

from __future__ import annotations

__all__ = [
    "EXIT_CANTCREAT",
    "EXIT_DATA",
    "EXIT_FAILED_RUNS",
    "EXIT_INVALID",
    "EXIT_LEVEL",
    "EXIT_NOINPUT",
    "EXIT_NOTHING",
    "EXIT_OK",
    "EXIT_USAGE",
    "AppError",
]

EXIT_OK, EXIT_FAILED_RUNS = 0, 1
EXIT_INVALID, EXIT_LEVEL, EXIT_NOTHING = 16, 17, 18
EXIT_USAGE, EXIT_DATA, EXIT_NOINPUT, EXIT_CANTCREAT = 64, 65, 66, 73


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
