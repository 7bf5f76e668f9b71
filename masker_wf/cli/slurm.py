"""The command line of SLURM array tasks, and the SLURM names of the command-line layer.

The execution itself (job arrays, ``jobs.tsv``, waiting, Pydra's SLURM worker) lives in
:mod:`masker_wf.app.slurm`; this module turns the submitting command line into the one
each array task runs (:func:`array_command`): the same arguments without the SLURM options
and participant labels, plus ``--no-slurm --array-task`` and the task's own
``--participant-label``. Its names are re-exported here, where users of earlier versions
import them (``masker_wf.cli.slurm.ScontrolSlurmWorker``).
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
    pydra_worker,
    read_jobs,
    refresh_states,
    scontrol_records,
    select_participants,
    squeue_states,
    submit,
    wait_for_participants,
    write_jobs,
    write_sbatch_script,
)
from .parser import OptionsError, build_parser, slurm_option_strings

__all__ = [
    "FINAL_STATES",
    "JOBS_COLUMNS",
    "PARTICIPANT_OPTIONS",
    "ArrayCommand",
    "ScontrolSlurmWorker",
    "app_argv",
    "array_command",
    "command_hash",
    "pydra_worker",
    "read_jobs",
    "refresh_states",
    "run_slurm",
    "scontrol_records",
    "select_participants",
    "squeue_states",
    "wait_for_participants",
    "write_jobs",
    "write_sbatch_script",
]

PARTICIPANT_OPTIONS = ("--participant-label", "--participant_label")
#: What an array task adds to the shared command line: never submit, skip dataset files.
TASK_OPTIONS = ("--no-slurm", "--array-task")
#: The command every array task runs (the App's entry module, in this Python).
TASK_PROGRAM = (sys.executable, "-m", "masker_wf.cli.run")


def app_argv(argv):
    """The App's command line without SLURM options and without participant labels.

    Parameters
    ----------
    argv : list of str
        Arguments as given to ``masker_wf.cli.run.main`` (without the program name).

    Returns
    -------
    list of str
        What each array task passes to the App, before adding its own
        ``--participant-label``.
    """
    slurm_options = slurm_option_strings(build_parser())
    kept = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name = token.split("=", 1)[0]
        if name in slurm_options:
            # '--opt value' consumes the next token, '--opt=value' does not
            i += 2 if slurm_options[name] and "=" not in token else 1
            continue
        if name in PARTICIPANT_OPTIONS:
            i += 1
            if "=" not in token:
                while i < len(tokens) and not tokens[i].startswith("-"):
                    i += 1
            continue
        kept.append(token)
        i += 1
    return kept


#: App options that change neither what is computed nor what is written.
_OPTIONS_NOT_IN_HASH = frozenset(
    {
        "participant_label",
        "nprocs",
        "verbose",
        "work_dir",
        "bids_database_dir",
        "config_file",
        "slurm",
        "sbatch_args",
        "array_throttle",
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
        The App's arguments (see :func:`app_argv`).
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
    """Make sure the array tasks will not submit again (e.g. an abbreviated --slurm).

    A ``slurm`` key of a config file does not count: the tasks' ``--no-slurm`` wins over it.
    """
    parser = build_parser(raise_errors=True)
    probe = vars(parser.parse_args([*task_argv, "--participant-label", "probe"]))
    if probe.get("slurm"):
        raise OptionsError(
            "could not remove the SLURM options from the task command line "
            f"{shlex.join(task_argv)!r}; spell them out in full (e.g. --slurm, not --slu)"
        )


def array_command(argv, *, nprocs=None, config_file=None) -> ArrayCommand:
    """What each array task runs, from the submitting command line.

    Parameters
    ----------
    argv : list of str
        The submitting command line (without the program name).
    nprocs : int, optional
        ``--nprocs`` of the submitting command; when set it stays in the task's command line,
        otherwise each task takes the CPUs SLURM granted it.
    config_file : path, optional
        ``--config-file`` of the submitting command (its content is part of the signature).

    Raises
    ------
    OptionsError
        The SLURM options could not be removed (an abbreviated spelling).
    """
    task_argv = app_argv(argv)
    _check_no_slurm_left(task_argv)
    return ArrayCommand(
        argv=(*TASK_PROGRAM, *task_argv, *TASK_OPTIONS),
        signature=command_hash(task_argv, config_file=config_file),
        participant_option=PARTICIPANT_OPTIONS[0],
        nprocs_option=None if nprocs else "--nprocs",
    )


def run_slurm(args, participants, argv):
    """Submit the participants to SLURM as one job array (``--slurm-worker array``).

    Parameters
    ----------
    args : object
        The SLURM options as attributes (``slurm_worker``, ``wait``, ``array_throttle``,
        ``sbatch_args``, ``slurm_partition``; any missing one takes its default) and
        ``output_dir``; e.g. the :class:`masker_wf.app.settings.SlurmSettings` fields or an
        ``argparse.Namespace``.
    participants : list of str
        Labels without ``sub-``.
    argv : list of str or None
        The App's command line (``None``: ``sys.argv[1:]``).

    Returns
    -------
    int
        See :func:`masker_wf.app.slurm.submit`.
    """
    from ..app.settings import SlurmSettings

    argv = list(sys.argv[1:] if argv is None else argv)
    options = SlurmSettings.from_options(vars(args))
    nprocs, config_file = getattr(args, "nprocs", None), getattr(args, "config_file", None)
    try:
        command = array_command(argv, nprocs=nprocs, config_file=config_file)
    except OptionsError as error:
        print(f"masker-wf --slurm: {error}", file=sys.stderr)
        return 1
    return submit(options, Path(args.output_dir), participants, command, nprocs=nprocs)
