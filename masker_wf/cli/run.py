"""Entry point of the BIDS App (console script ``masker-wf``).

``main`` turns ``argv`` into :class:`masker_wf.app.settings.Settings` and an exit code; the
work is done by :mod:`masker_wf.app`. Exit codes follow the BIDS execution specification:
0 success, 1 some runs failed, 16 invalid dataset, 17 unknown analysis level, 18 filters
matched nothing, 64 usage error (including a masker parameter the validator refuses),
65 bad data (every run failed on its data, or a malformed input file), 66 missing input
(including every run lacking a required file such as its confounds), 73 cannot create an
output (a file in the way, no permission), 74 output I/O error (disk full); output-side
errors name the output path.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from ..app.errors import (
    EXIT_INTERRUPTED,
    EXIT_LEVEL,
    EXIT_OK,
    EXIT_USAGE,
    AppError,
    check_interrupted,
    interruptible,
)
from .parser import OptionsError, build_parser, parse_options

__all__ = ["main"]


def _environment_setup() -> None:
    """Turn off telemetry calls (offline clusters) before Pydra/nipype are imported."""
    os.environ.setdefault("NO_ET", "1")
    os.environ.setdefault("NIPYPE_NO_ET", "1")


def _error(message: str, code: int) -> int:
    print(f"masker-wf: error: {message}", file=sys.stderr)
    return code


def _options(argv) -> tuple[dict | None, int | None]:
    """(option values, None), or (None, exit code) after printing why."""
    try:
        return parse_options(argv), None
    except SystemExit as exc:  # --help and --version print, then exit
        return None, EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    except OptionsError as exc:
        if exc.exit_code == EXIT_USAGE:
            build_parser().print_usage(sys.stderr)
        return None, _error(str(exc), exc.exit_code)


def main(argv=None) -> int:
    """Run the BIDS App; return the exit code (see the module docstring)."""
    try:
        with interruptible():
            code = _main(argv)
            check_interrupted()  # a Ctrl-C whose exception Python swallowed
            return code
    except KeyboardInterrupt:
        # What was committed stays (each output set is written whole or not at all); a
        # rerun picks up from there. No traceback: the user asked for this.
        print(
            "\nmasker-wf: interrupted; output sets already written are kept, and a rerun "
            "resumes from there",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        if argv is None and threading.current_thread() is threading.main_thread():
            # Run as the program: the outcome is decided and printed. A Ctrl-C while the
            # process exits (its threads joining) would only turn it into a signal death.
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _main(argv) -> int:
    _environment_setup()
    argv = list(sys.argv[1:] if argv is None else argv)
    options, code = _options(argv)
    if options is None:
        return code
    # The App (and Pydra with it) is imported once telemetry is off and argv is usable.
    from ..app import execute
    from ..app.settings import Settings
    from ..bids.layout import BIDSInputError
    from .slurm import array_command

    level = logging.WARNING - 10 * min(options["verbose"], 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if options["analysis_level"] not in ("participant", "group"):
        return _error(
            f"unknown analysis level {options['analysis_level']!r}; use 'participant' or 'group'.",
            EXIT_LEVEL,
        )
    try:
        # The door: every parameter is checked here, before anything is written.
        settings = Settings.from_options(options)
    except (TypeError, ValueError) as exc:
        return _error(str(exc), EXIT_USAGE)
    try:
        if settings.analysis_level == "group":
            return execute.group_level(settings)
        command = None
        if settings.slurm.slurm and settings.slurm.slurm_worker == "array":
            command = array_command(
                argv, nprocs=settings.execution.nprocs, config_file=settings.execution.config_file
            )
        return execute.participant_level(settings, command)
    except OptionsError as exc:
        return _error(str(exc), exc.exit_code)
    except (AppError, BIDSInputError) as exc:
        return _error(str(exc), exc.exit_code)


if __name__ == "__main__":
    raise SystemExit(main())
