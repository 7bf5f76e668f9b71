"""The command line of SLURM array tasks, and the SLURM names of the command-line layer.

The execution itself (job arrays, ``jobs.tsv``, waiting, Pydra's SLURM worker) lives in
:mod:`masker_wf.app.slurm`; this module turns the submitting command line into the one
each array task runs (:func:`array_command`): the options the user gave (on the command
line or in the ``--config-file``), every path made absolute, without the SLURM options and
participant labels, plus ``--no-slurm --array-task`` and the task's own
``--participant-label``. Tasks therefore do not depend on the directory they start in, nor
on the config file still being there. Its names are re-exported here, where users of
earlier versions import them (``masker_wf.cli.slurm.ScontrolSlurmWorker``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

from ..app.slurm import (
    FINAL_STATES,
    JOBS_COLUMNS,
    ArrayCommand,
    ScontrolSlurmWorker,
    in_flight_participants,
    pydra_worker,
    read_jobs,
    refresh_states,
    scontrol_records,
    squeue_states,
    wait_for_participants,
    write_jobs,
    write_sbatch_script,
)
from .parser import (
    OFF,
    POSITIONALS,
    OptionsError,
    build_parser,
    option_tokens,
    parse_options,
)

__all__ = [
    "FINAL_STATES",
    "JOBS_COLUMNS",
    "PARTICIPANT_OPTIONS",
    "ArrayCommand",
    "ScontrolSlurmWorker",
    "array_command",
    "command_hash",
    "in_flight_participants",
    "pydra_worker",
    "read_jobs",
    "refresh_states",
    "scontrol_records",
    "squeue_states",
    "task_arguments",
    "wait_for_participants",
    "write_jobs",
    "write_sbatch_script",
]

PARTICIPANT_OPTIONS = ("--participant-label", "--participant_label")
#: What an array task adds to the shared command line: never submit, skip dataset files.
TASK_OPTIONS = ("--no-slurm", "--array-task")
#: The command every array task runs (the App's entry module, in this Python).
TASK_PROGRAM = (sys.executable, "-m", "masker_wf.cli.run")
#: Options the task command line never carries (the task gets its own labels; the config
#: file's values are given as options; a dry run submits no task).
_NOT_FOR_TASKS = frozenset({"participant_label", "config_file", "dry_run"})


def _absolute(value, cwd: Path):
    """``value`` with every path in it absolute (relative ones taken from ``cwd``)."""
    if isinstance(value, Path):
        return value if value.is_absolute() else (cwd / value).absolute()
    if isinstance(value, list | tuple):
        return type(value)(_absolute(item, cwd) for item in value)
    return value


def task_arguments(argv, cwd=None) -> list[str]:
    """The App's arguments for the array tasks, from the submitting command line.

    The options set on the command line or in the ``--config-file`` (the command line wins,
    as for the App itself), every path absolute, without the SLURM options, the participant
    labels and the config file.

    Parameters
    ----------
    argv : list of str
        Arguments as given to ``masker_wf.cli.run.main`` (without the program name).
    cwd : path, optional
        Directory relative paths are taken from (default: the current one); the config
        file's relative paths too, as the App reads them.

    Returns
    -------
    list of str
        What each array task passes to the App, before its own ``--participant-label``.

    Raises
    ------
    OptionsError
        ``argv`` (or its config file) is not a valid App command line.
    """
    cwd = Path(os.getcwd() if cwd is None else cwd)
    parser = build_parser(raise_errors=True)
    options = parse_options(list(argv))
    skipped = _NOT_FOR_TASKS | set(parser.slurm_dests)
    tokens = [str(_absolute(Path(options[name]), cwd)) for name in POSITIONALS[:2]]
    tokens.append(str(options["analysis_level"]))
    for dest in parser.options:
        if dest not in options["_given"] or dest in skipped:
            continue
        value = _absolute(options[dest], cwd)
        if dest == "derivatives":
            value = dict(value)
        elif (value is None or value is False) and OFF in (parser.options[dest].choices or ()):
            value = OFF  # a masker parameter switched off (the spec's False or None)
        tokens += option_tokens(parser, dest, value)
    return tokens


#: App options that change neither what is computed nor what is written.
_OPTIONS_NOT_IN_HASH = frozenset(
    {
        "participant_label",
        "nprocs",
        "omp_nthreads",
        "mem_mb",
        "verbose",
        "work_dir",
        "bids_database_dir",
        "config_file",
        "clean_workdir",
        "dry_run",
        "slurm",
        "sbatch_args",
        "array_throttle",
        "participants_per_task",
        "wait",
        "slurm_worker",
        "slurm_partition",
        "array_task",
    }
)


def command_hash(argv, cwd=None, config_file=None):
    """Short hash identifying what an App command line computes.

    The command line is parsed, so that the order of the options, spellings of the
    same value, and options that only affect resources or logging (``--nprocs``,
    ``-w``, ``-v``...) do not count as new work. Relative paths are resolved.

    Parameters
    ----------
    argv : list of str
        The App's arguments (see :func:`task_arguments`).
    cwd : path, optional
        Directory relative paths are taken from (default: the current one).
    config_file : path, optional
        ``--config-file``: its content counts too, since it sets parameters.

    Returns
    -------
    str
        16 hexadecimal digits.
    """
    cwd = Path(os.getcwd() if cwd is None else cwd)
    config = ""
    if config_file is not None and Path(config_file).is_file():
        config = hashlib.sha256(Path(config_file).read_bytes()).hexdigest()
    try:
        parsed = vars(build_parser(raise_errors=True).parse_args(list(argv)))
    except OptionsError:  # not parseable here: fall back to the literal command line
        parsed = {"argv": list(argv)}

    def canonical(value):
        if isinstance(value, Path):
            return str(value if value.is_absolute() else (cwd / value).resolve())
        if isinstance(value, dict):
            return {str(k): canonical(v) for k, v in sorted(value.items())}
        if isinstance(value, list | tuple):
            return [canonical(v) for v in value]
        return value

    options = {
        key: canonical(value)
        for key, value in sorted(parsed.items())
        if key not in _OPTIONS_NOT_IN_HASH and not key.startswith("_")
    }
    payload = json.dumps({"options": options, "config": config}, default=str, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _check_no_slurm_left(task_argv) -> None:
    """Make sure the array tasks will not submit again (their ``--no-slurm`` is last)."""
    parser = build_parser(raise_errors=True)
    probe = vars(parser.parse_args([*task_argv, *TASK_OPTIONS, "--participant-label", "x"]))
    if probe.get("slurm") or not probe.get("array_task"):
        raise OptionsError(
            f"the task command line {shlex.join(task_argv)!r} would submit again; "
            "report this as a bug"
        )


def array_command(argv, *, nprocs=None, config_file=None, cwd=None) -> ArrayCommand:
    """What each array task runs, from the submitting command line.

    Parameters
    ----------
    argv : list of str
        The submitting command line (without the program name).
    nprocs : int, optional
        ``--nprocs`` of the submitting command; when set it stays in the task's command line,
        otherwise each task takes the CPUs SLURM granted it.
    config_file : path, optional
        Unused: the config file's values are part of the task's command line (kept for
        callers of earlier versions).
    cwd : path, optional
        Directory the submitting command's relative paths are relative to (default: the
        current one).

    Raises
    ------
    OptionsError
        ``argv`` is not a valid App command line.
    """
    del config_file  # folded into the task arguments
    task_argv = task_arguments(argv, cwd=cwd)
    _check_no_slurm_left(task_argv)
    return ArrayCommand(
        argv=(*TASK_PROGRAM, *task_argv, *TASK_OPTIONS),
        signature=command_hash(task_argv),
        participant_option=PARTICIPANT_OPTIONS[0],
        nprocs_option=None if nprocs else "--nprocs",
    )
