"""Run the masker-wf BIDS App on a SLURM cluster.

Two ways, chosen with ``--slurm-worker``:

``array`` (default)
    One SLURM job array per submission, one array task per participant. The submitting process
    writes the participant list and an sbatch script under ``<output_dir>/logs/``, submits
    ``sbatch --parsable --array=0-(N-1)[%throttle]`` and records every task in
    ``<output_dir>/logs/jobs.tsv``. Each task runs the App itself
    (``python -m masker_wf.cli.run ... --participant-label <label>``, the same command line
    without the SLURM options) with ``--nprocs`` set from the CPUs SLURM granted (Pydra's
    local ``cf`` worker when more than one). Only ``sbatch``, ``squeue`` and ``scontrol`` are
    used: no job accounting (``sacct``/slurmdbd) is needed. Submitting again skips
    participants whose last task completed with the same command line and whose outputs
    exist, so only failed or missing work is re-run; the Pydra cache under the work directory
    is shared by all tasks.

``pydra``
    The App runs in the submitting process and Pydra's SLURM worker sends every workflow node
    to SLURM as its own job (fine-grained, many small jobs). Stock Pydra reads the exit status
    with ``sacct``, which needs SLURM accounting (slurmdbd + a database);
    :class:`ScontrolSlurmWorker` reads it from ``scontrol`` instead, falling back to ``sacct``
    once the controller has forgotten the job (after ``MinJobAge``, 300 s by default), and
    makes a job's checksum on the compute node agree with the submitter's
    (:func:`run_pickled_job`).

Both need the output, work and dataset directories and the Python environment to be visible
at the same paths on the compute nodes (a shared file system).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydra.workers.slurm import SlurmWorker

#: SLURM options of the App and whether each takes a value; stripped from the array tasks' argv.
SLURM_OPTIONS = {
    "--slurm": False,
    "--no-slurm": False,
    "--wait": False,
    "--sbatch-args": True,
    "--array-throttle": True,
    "--slurm-worker": True,
    "--slurm-partition": True,
}
PARTICIPANT_OPTIONS = ("--participant-label", "--participant_label")

JOBS_COLUMNS = (
    "participant",
    "array_index",
    "job_id",
    "state",
    "exit_code",
    "submission",
    "command_hash",
)
#: SLURM job states after which a task will not run again on its own.
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "UNKNOWN",
    }
)
#: Seconds between two looks at the queue while waiting (``MASKER_WF_SLURM_POLL`` overrides).
POLL_SECONDS = 2.0


def add_slurm_arguments(parser):
    """Add the SLURM options of the BIDS App to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The App's parser; the options go into their own argument group.

    Returns
    -------
    argparse._ArgumentGroup
        The group holding the options.
    """
    group = parser.add_argument_group(
        "SLURM",
        "Submit the participants to a SLURM cluster instead of processing them here. "
        "Paths (dataset, output, work directory, Python environment) must be the same on the "
        "compute nodes.",
    )
    group.add_argument(
        "--slurm",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="submit one SLURM job array, one task per participant, and return (or --wait); "
        "--no-slurm overrides 'slurm' in a --config-file (the array tasks use it)",
    )
    group.add_argument(
        "--sbatch-args",
        default="",
        metavar="ARGS",
        help="extra sbatch options for every task, as one string, e.g. "
        "--sbatch-args='--cpus-per-task=4 --mem=8G --time=2:00:00' "
        "(use the '=' form when the string starts with '-')",
    )
    group.add_argument(
        "--array-throttle",
        type=_positive_int,
        default=None,
        metavar="N",
        help="run at most N array tasks at the same time (sbatch --array=...%%N)",
    )
    group.add_argument(
        "--wait",
        action="store_true",
        help="follow the array until every task ended (squeue/scontrol, no accounting needed); "
        "exit non-zero naming the participants whose task failed",
    )
    group.add_argument(
        "--slurm-worker",
        choices=("array", "pydra"),
        default="array",
        help="'array': one array task per participant running the App with Pydra's local cf "
        "worker (default); 'pydra': run here and let Pydra's SLURM worker submit every "
        "workflow node as its own job (exit status read with scontrol, else sacct)",
    )
    group.add_argument(
        "--slurm-partition",
        default=None,
        metavar="NAME",
        help="SLURM partition for the jobs (default: the cluster's default partition)",
    )
    return group


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# -------------------------------------------------------------------------------------------
# command lines
# -------------------------------------------------------------------------------------------
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
    kept = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name = token.split("=", 1)[0]
        if name in SLURM_OPTIONS:
            # '--opt value' consumes the next token, '--opt=value' does not
            i += 2 if SLURM_OPTIONS[name] and "=" not in token else 1
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
        parsed = vars(_app_parser().parse_args(list(argv)))
    except SystemExit:  # not parseable here: fall back to the literal command line
        parsed = {"argv": list(argv)}

    def canonical(value):
        if isinstance(value, Path):
            return str(value if value.is_absolute() else (cwd / value).resolve())
        if isinstance(value, dict):
            return {str(k): canonical(v) for k, v in sorted(value.items())}
        if isinstance(value, (list, tuple)):
            return [canonical(v) for v in value]
        return value

    options = {
        key: canonical(value)
        for key, value in sorted(parsed.items())
        if key not in _OPTIONS_NOT_IN_HASH and not key.startswith("_")
    }
    payload = json.dumps({"options": options, "config": config}, default=str, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _app_parser():
    from masker_wf.cli.parser import build_parser

    return build_parser()


def _has_option(parser, *names):
    """The first of ``names`` that ``parser`` knows, or None."""
    known = getattr(parser, "_option_string_actions", None) or {}
    return next((name for name in names if name in known), None)


def _check_no_slurm_left(task_argv):
    """Make sure the array tasks will not submit again (e.g. an abbreviated --slurm)."""
    parser = _app_parser()
    probe = parser.parse_args([*task_argv, "--participant-label", "probe"])
    if getattr(probe, "slurm", False):
        raise ValueError(
            "argv: could not remove the SLURM options from the task command line "
            f"{shlex.join(task_argv)!r}; spell them out in full (e.g. --slurm, not --slu)"
        )
    return parser


# -------------------------------------------------------------------------------------------
# SLURM commands
# -------------------------------------------------------------------------------------------
def _slurm_command(name):
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(
            f"{name}: SLURM client program not found on PATH; run on a SLURM login node or "
            "install SLURM's client tools (Debian/Ubuntu: slurm-client)"
        )
    return path


def _run(command, check=True):
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode:
        raise RuntimeError(
            f"{shlex.join(command)} failed with exit code {result.returncode}: "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result


def _query(command):
    """Run a squeue/scontrol query; None when the controller does not know the job (any more).

    Other failures (controller unreachable...) raise RuntimeError: a job we cannot see is not
    a job that ended.
    """
    result = _run(command, check=False)
    if result.returncode:
        if "invalid job id" in result.stderr.lower():
            return None
        raise RuntimeError(
            f"{shlex.join(command)} failed with exit code {result.returncode}: "
            f"{result.stderr.strip()}"
        )
    return result.stdout


def squeue_states(job_id):
    """States of the array tasks of ``job_id`` still in the queue, by array index."""
    stdout = _query([_slurm_command("squeue"), "-h", "-r", "-j", str(job_id), "-o", "%K %T"])
    states = {}
    if stdout is None:
        return states
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            states[int(parts[0])] = parts[1]
    return states


_SCONTROL_FIELDS = re.compile(r"(\w+)=(\S*)")


def scontrol_records(job_id):
    """Final-or-not state and exit code per array index, as ``scontrol show job`` knows them.

    Records of finished jobs stay in the controller's memory for ``MinJobAge`` seconds (300 by
    default); afterwards this returns nothing for them.
    """
    stdout = _query([_slurm_command("scontrol"), "-o", "show", "job", str(job_id)])
    records = {}
    if stdout is None:
        return records
    for line in stdout.splitlines():
        fields = dict(_SCONTROL_FIELDS.findall(line))
        index = fields.get("ArrayTaskId", "")
        if not index.isdigit():
            continue  # pending ranges such as 3-5%2 are reported by squeue instead
        records[int(index)] = (fields.get("JobState", "UNKNOWN"), _exit_code(fields))
    return records


def _exit_code(fields):
    code, _, sig = fields.get("ExitCode", "").partition(":")
    if not code.isdigit():
        return ""
    # killed by a signal: report it the way shells do
    return str(128 + int(sig)) if sig.isdigit() and int(sig) else code


# -------------------------------------------------------------------------------------------
# jobs.tsv
# -------------------------------------------------------------------------------------------
def read_jobs(path):
    """Rows of a ``jobs.tsv`` as a list of dicts (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [dict(row) for row in csv.DictReader(handle, delimiter="\t")]


def write_jobs(path, rows):
    """Write ``rows`` to ``path`` atomically (temporary file in the same directory, renamed)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=JOBS_COLUMNS, delimiter="\t", extrasaction="ignore"
            )
            writer.writeheader()
            for row in rows:
                writer.writerow({key: row.get(key, "") for key in JOBS_COLUMNS})
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(logs_dir):
    """Serialise submitters sharing one output directory (read-modify-write of jobs.tsv)."""
    with open(logs_dir / ".jobs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def refresh_states(rows, results_dir):
    """Update ``state`` and ``exit_code`` of unfinished rows in place; True if any changed.

    Live tasks come from ``squeue``; finished ones from ``scontrol``, then from the result file
    each task writes when the App returns (which outlives the controller's memory).
    """
    changed = False
    pending = [row for row in rows if row["state"] not in FINAL_STATES]
    for job_id in sorted({row["job_id"] for row in pending}):
        live = squeue_states(job_id)
        done = scontrol_records(job_id)
        for row in pending:
            if row["job_id"] != job_id:
                continue
            index = int(row["array_index"])
            state, exit_code = row["state"], row["exit_code"]
            if index in live:
                state = live[index]
            elif index in done:
                state, exit_code = done[index]
            else:
                result = _read_result(results_dir, job_id, index)
                if result is not None:
                    state, exit_code = ("COMPLETED" if result == "0" else "FAILED"), result
                else:
                    # gone from the queue, forgotten by the controller, no result written:
                    # the task died before the App returned (e.g. node failure)
                    state = "UNKNOWN"
            if (state, exit_code) != (row["state"], row["exit_code"]):
                row["state"], row["exit_code"] = state, exit_code
                changed = True
    return changed


def _read_result(results_dir, job_id, index):
    path = Path(results_dir) / f"{job_id}_{index}.tsv"
    if not path.exists():
        return None
    fields = path.read_text().split()
    return fields[-1] if fields else None


def latest_rows(rows):
    """The last row recorded for each participant."""
    latest = {}
    for row in rows:
        latest[row["participant"]] = row
    return latest


# -------------------------------------------------------------------------------------------
# the array
# -------------------------------------------------------------------------------------------
SBATCH_TEMPLATE = """\
#!/bin/bash
# masker-wf job array written by `masker-wf ... --slurm` on {created}.
# Array task i processes the participant on line i+2 of {participants}.
# Submitted as: sbatch --parsable --array=0-{last}{throttle} [--partition P] [--sbatch-args] <this>
#SBATCH --job-name=masker-wf
#SBATCH --output={logs}/slurm/masker-wf_%A_%a.out
#SBATCH --chdir={cwd}
set -u

label=$(sed -n "$((SLURM_ARRAY_TASK_ID + 2))p" {participants_q} | cut -f1)
label=${{label#sub-}}
if [ -z "$label" ]; then
    echo "no participant on line $((SLURM_ARRAY_TASK_ID + 2)) of {participants}" >&2
    exit 66
fi
echo "masker-wf: sub-$label on $(hostname), job ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"

# Pydra's local worker gets the CPUs SLURM granted to this task
export MASKER_WF_NPROCS=${{SLURM_CPUS_PER_TASK:-${{SLURM_CPUS_ON_NODE:-1}}}}
# one BLAS/OpenMP thread per Pydra process, so the task does not oversubscribe its CPUs
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
# tells the App it runs as one task of an array (shared files were written at submission)
export MASKER_WF_ARRAY_TASK=1

{python_q} -m masker_wf.cli.run {argv_q} --no-slurm --participant-label "$label"{nprocs}
rc=$?

# the exit status outlives the controller's memory of the job (no accounting needed)
result={logs_q}/slurm/results/${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.tsv
printf 'sub-%s\\t%s\\t%s\\t%s\\n' "$label" "$SLURM_ARRAY_TASK_ID" "$SLURM_ARRAY_JOB_ID" "$rc" \\
    > "$result.tmp" && mv -f "$result.tmp" "$result"
exit $rc
"""


def write_sbatch_script(
    path, *, participants_file, task_argv, logs_dir, n_tasks, throttle=None, nprocs_option=None
):
    """Write the array's sbatch script.

    Parameters
    ----------
    path : path
        Where to write the script.
    participants_file : path
        TSV with a header line and one ``sub-<label>`` per line, in array-index order.
    task_argv : list of str
        App arguments shared by all tasks (see :func:`app_argv`).
    logs_dir : path
        ``<output_dir>/logs``; task logs go to ``logs/slurm/``.
    n_tasks : int
        Number of array tasks (for the header comment).
    throttle : int or None
        Maximum simultaneous tasks (for the header comment).
    nprocs_option : str or None
        The App's option giving Pydra's process count, set from the CPUs SLURM granted to the
        task; None when the App has no such option or the user chose the count.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    nprocs = ""
    if nprocs_option:
        nprocs = f' {nprocs_option} "$MASKER_WF_NPROCS"'
    text = SBATCH_TEMPLATE.format(
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        participants=participants_file,
        participants_q=shlex.quote(str(participants_file)),
        last=n_tasks - 1,
        throttle=f"%{throttle}" if throttle else "",
        logs=logs_dir,
        logs_q=shlex.quote(str(logs_dir)),
        cwd=os.getcwd(),
        python_q=shlex.quote(sys.executable),
        argv_q=shlex.join(task_argv),
        nprocs=nprocs,
    )
    path.write_text(text)
    path.chmod(0o755)
    return path


def _new_submission_name(logs_dir):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"masker-wf_{stamp}"
    suffix = 1
    while (logs_dir / f"{name}.sbatch").exists():
        suffix += 1
        name = f"masker-wf_{stamp}-{suffix}"
    return name


def _output_dir(args):
    for name in ("output_dir", "out_dir", "output"):
        value = getattr(args, name, None)
        if value:
            return Path(value).absolute()
    raise ValueError("args: no output_dir attribute; cannot place logs/ and jobs.tsv")


def _outputs_present(output_dir, participant):
    subject_dir = output_dir / participant
    return subject_dir.is_dir() and any(subject_dir.iterdir())


def select_participants(participants, rows, output_dir, signature):
    """Split participants into (to_submit, done, in_flight) given earlier ``jobs.tsv`` rows.

    A participant is done when its last task completed with exit code 0 for the same command
    line (``signature``) and its ``sub-<label>`` output directory is not empty; in flight when
    its last task for the same command line is still queued or running.
    """
    latest = latest_rows(rows)
    to_submit, done, in_flight = [], [], []
    for label in participants:
        row = latest.get(f"sub-{label}")
        same = row is not None and row.get("command_hash") == signature
        if same and row["state"] == "COMPLETED" and row["exit_code"] == "0":
            if _outputs_present(output_dir, f"sub-{label}"):
                done.append(label)
                continue
        elif same and row["state"] not in FINAL_STATES:
            in_flight.append(label)
            continue
        to_submit.append(label)
    return to_submit, done, in_flight


def submit_array(args, labels, task_argv, logs_dir, signature, parser=None):
    """Write the participant list and sbatch script of one submission and submit the array.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed App arguments (SLURM options, ``nprocs``).
    labels : list of str
        Participants of this array, in array-index order, without ``sub-``.
    task_argv : list of str
        App arguments shared by the tasks (see :func:`app_argv`).
    logs_dir : pathlib.Path
        ``<output_dir>/logs``.
    signature : str
        :func:`command_hash` of ``task_argv``, recorded with each row.
    parser : argparse.ArgumentParser, optional
        The App's parser, to find its process-count option.

    Returns
    -------
    list of dict
        The new ``jobs.tsv`` rows, state ``PENDING``.
    """
    sbatch = _slurm_command("sbatch")
    name = _new_submission_name(logs_dir)
    participants_file = logs_dir / f"{name}_participants.tsv"
    participants_file.write_text(
        "participant_id\n" + "".join(f"sub-{label}\n" for label in labels)
    )
    nprocs = getattr(args, "nprocs", None)
    script = write_sbatch_script(
        logs_dir / f"{name}.sbatch",
        participants_file=participants_file,
        task_argv=task_argv,
        logs_dir=logs_dir,
        n_tasks=len(labels),
        throttle=args.array_throttle,
        # a count the user chose stays in task_argv; otherwise size from the allocation
        nprocs_option=None if nprocs else _has_option(parser, "--nprocs", "--n-procs"),
    )
    command = [sbatch, "--parsable", f"--array={_array_spec(len(labels), args)}"]
    if args.slurm_partition:
        command.append(f"--partition={args.slurm_partition}")
    sbatch_args = shlex.split(args.sbatch_args or "")
    if nprocs and not any(a.startswith(("-c", "--cpus-per-task")) for a in sbatch_args):
        # --nprocs N runs N processes: ask SLURM for as many CPUs
        command.append(f"--cpus-per-task={nprocs}")
    command += [*sbatch_args, str(script)]
    # --parsable prints "jobid[;cluster]"
    job_id = _run(command).stdout.strip().split(";")[0]
    print(
        f"masker-wf --slurm: submitted job array {job_id} ({len(labels)} task(s): "
        f"{_names(labels)}); script {script}, task logs {logs_dir / 'slurm'}, "
        f"status {logs_dir / 'jobs.tsv'}"
    )
    return [
        {
            "participant": f"sub-{label}",
            "array_index": str(index),
            "job_id": job_id,
            "state": "PENDING",
            "exit_code": "",
            "submission": name,
            "command_hash": signature,
        }
        for index, label in enumerate(labels)
    ]


def run_slurm(args, participants, argv):
    """Submit the participants to SLURM and optionally wait for them.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed App arguments (uses ``output_dir``, the options of :func:`add_slurm_arguments`).
    participants : list of str
        Participant labels without ``sub-``, as ``masker_wf.bids.layout.collect_participants``
        returns them.
    argv : list of str or None
        The App's command line (``None``: ``sys.argv[1:]``); each array task reruns it without
        the SLURM options and with its own ``--participant-label``.

    Returns
    -------
    int
        0 when submitted (or, with ``--wait``, when every task completed), 1 when a task failed
        or submission was impossible.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("MASKER_WF_ARRAY_TASK"):
        # a task must process its participant, never submit again (fan-out without end)
        print(
            "masker-wf --slurm: refusing to submit from inside a masker-wf array task "
            "(is 'slurm' set in the --config-file?)",
            file=sys.stderr,
        )
        return 1
    if getattr(args, "slurm_worker", "array") == "pydra":
        return _run_with_pydra_worker(args, participants, argv)
    if not participants:
        print("masker-wf --slurm: no participants to process", file=sys.stderr)
        return 1

    output_dir = _output_dir(args)
    logs_dir = output_dir / "logs"
    results_dir = logs_dir / "slurm" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    jobs_file = logs_dir / "jobs.tsv"
    task_argv = app_argv(argv)
    parser = _check_no_slurm_left(task_argv)
    signature = command_hash(task_argv, config_file=getattr(args, "config_file", None))

    try:
        with _locked(logs_dir):
            rows = read_jobs(jobs_file)
            if refresh_states(rows, results_dir):
                write_jobs(jobs_file, rows)
            to_submit, done, in_flight = select_participants(
                participants, rows, output_dir, signature
            )
            if done:
                print(f"masker-wf --slurm: already complete, skipped: {_names(done)}")
            if in_flight:
                print(f"masker-wf --slurm: still queued or running, skipped: {_names(in_flight)}")
            if to_submit:
                rows += submit_array(args, to_submit, task_argv, logs_dir, signature, parser)
                write_jobs(jobs_file, rows)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"masker-wf --slurm: {error}", file=sys.stderr)
        return 1

    if not args.wait:
        return 0
    watched = set(to_submit) | set(in_flight)
    if not watched:
        return 0
    return wait_for_participants(jobs_file, results_dir, watched)


def _array_spec(n_tasks, args):
    spec = f"0-{n_tasks - 1}"
    return f"{spec}%{args.array_throttle}" if args.array_throttle else spec


def _names(labels):
    return ", ".join(f"sub-{label}" for label in labels)


def wait_for_participants(jobs_file, results_dir, labels, poll=None):
    """Poll SLURM until the last tasks of ``labels`` ended; return 0 if all completed, else 1.

    ``jobs.tsv`` is rewritten (atomically) whenever a state changes. Failed participants are
    named on stderr.
    """
    poll = float(os.environ.get("MASKER_WF_SLURM_POLL", POLL_SECONDS)) if poll is None else poll
    jobs_file = Path(jobs_file)
    wanted = {f"sub-{label}" for label in labels}
    last_summary = None
    try:
        while True:
            with _locked(jobs_file.parent):
                rows = read_jobs(jobs_file)
                try:
                    if refresh_states(rows, results_dir):
                        write_jobs(jobs_file, rows)
                except RuntimeError as error:
                    # e.g. the controller restarting: look again at the next poll
                    print(f"masker-wf --slurm: cannot query SLURM now: {error}", file=sys.stderr)
            latest = {k: v for k, v in latest_rows(rows).items() if k in wanted}
            states = sorted(row["state"] for row in latest.values())
            summary = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
            if summary != last_summary:
                print(f"masker-wf --slurm: {summary}", flush=True)
                last_summary = summary
            if all(row["state"] in FINAL_STATES for row in latest.values()):
                break
            time.sleep(poll)
    except KeyboardInterrupt:
        print(
            "masker-wf --slurm: stopped waiting; the jobs keep running (scancel <job id> "
            f"to stop them, see {jobs_file})",
            file=sys.stderr,
        )
        return 130
    failed = {
        name: row
        for name, row in sorted(latest.items())
        if not (row["state"] == "COMPLETED" and row["exit_code"] == "0")
    }
    if failed:
        details = "; ".join(
            f"{name} ({row['state']}, exit code {row['exit_code'] or 'n/a'}, log "
            f"{jobs_file.parent / 'slurm'}/masker-wf_{row['job_id']}_{row['array_index']}.out)"
            for name, row in failed.items()
        )
        print(
            f"masker-wf --slurm: {len(failed)} participant(s) failed: {details}", file=sys.stderr
        )
        return 1
    print(f"masker-wf --slurm: all {len(latest)} participant(s) completed")
    return 0


# -------------------------------------------------------------------------------------------
# Pydra's own SLURM worker
# -------------------------------------------------------------------------------------------
class ScontrolSlurmWorker(SlurmWorker):
    """Pydra's SLURM worker reading exit status from ``scontrol`` rather than ``sacct``.

    Stock :class:`pydra.workers.slurm.SlurmWorker` asks ``sacct`` once a job left the queue,
    which fails ("Job information not found") on clusters without accounting. The controller
    keeps finished jobs for ``MinJobAge`` seconds, so ``scontrol show job`` answers in the
    meantime; after that, ``sacct`` is asked as before.
    """

    _plugin_name = "slurm-scontrol"

    def _prepare_runscripts(self, job, interpreter="/bin/sh", rerun=False):
        # Pydra pickles the job and writes a batch script running it; ours runs it through
        # run_pickled_job, which gives the job back the source of its task function.
        script_dir, batch_script = super()._prepare_runscripts(
            job, interpreter=interpreter, rerun=rerun
        )
        call = (
            "from masker_wf.cli.slurm import run_pickled_job; "
            f"run_pickled_job({str(script_dir / '_job.pklz')!r}, rerun={bool(rerun)})"
        )
        batch_script.write_text(
            f"#!{interpreter}\n"
            f"#SBATCH --output={script_dir / 'slurm-%j.out'}\n"
            f"{shlex.quote(sys.executable)} -c {shlex.quote(call)}\n"
        )
        return script_dir, batch_script

    async def _verify_exit_code(self, jobid):
        from pydra.workers import base

        _, stdout, _ = await base.read_and_display_async(
            "scontrol", "-o", "show", "job", str(jobid), hide_display=True
        )
        fields = dict(_SCONTROL_FIELDS.findall(stdout))
        state = fields.get("JobState")
        if not state:
            return await super()._verify_exit_code(jobid)
        if state in ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING"):
            return False
        if state in ("CANCELLED", "TIMEOUT", "PREEMPTED"):
            return state
        if state == "COMPLETED" and _exit_code(fields) == "0":
            return True
        error_file = self.error.get(jobid)
        tail = ""
        if error_file and Path(error_file).exists():
            lines = Path(error_file).read_text(errors="replace").strip().splitlines()
            tail = lines[-1] if lines else ""
        raise RuntimeError(
            f"SLURM job {jobid} ended {state} (exit code {_exit_code(fields)}): "
            f"{tail or 'see ' + str(error_file)}"
        )


def run_pickled_job(job_pkl, rerun=False):
    """Run a job pickled by Pydra's SLURM worker, with its task's source code findable.

    cloudpickle (>= 3.1) ships a Python task's function by value and renames its code file to
    ``<dynamic-code>``. Pydra hashes a function by its source when it can read it and by its
    byte code otherwise, so the job computed a different checksum on the compute node than on
    the submitting side, stored its result under another cache directory, and the submitter
    reported "no result". Pointing the code back at the module file (its line numbers are
    kept) makes both sides hash the same source.

    Parameters
    ----------
    job_pkl : str or path
        The ``_job.pklz`` written by the worker.
    rerun : bool
        Passed on to :func:`pydra.engine.job.load_and_run`.
    """
    import importlib

    import pydra.engine.job as pydra_job

    load_job = pydra_job.load_job

    def load_job_with_source(*args, **kwargs):
        job = load_job(*args, **kwargs)
        function = getattr(job.task, "function", None)
        code = getattr(function, "__code__", None)
        if code is not None and code.co_filename == "<dynamic-code>":
            with contextlib.suppress(ImportError, AttributeError, TypeError):
                module_file = importlib.import_module(function.__module__).__file__
                function.__code__ = code.replace(co_filename=module_file)
        return job

    # only this job's own process is affected: it exists to run this one job
    pydra_job.load_job = load_job_with_source
    return pydra_job.load_and_run(Path(job_pkl), rerun=rerun)


def pydra_worker(args):
    """The Pydra worker for ``--slurm-worker pydra``: a :class:`ScontrolSlurmWorker`.

    ``--sbatch-args`` and ``--slurm-partition`` apply to every job it submits.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed App arguments.

    Returns
    -------
    ScontrolSlurmWorker
        Ready to pass as ``worker=`` to a Pydra ``Submitter`` (or ``run_masker_workflow``).
    """
    sbatch_args = args.sbatch_args or ""
    if args.slurm_partition:
        sbatch_args = f"--partition={args.slurm_partition} {sbatch_args}".strip()
    return ScontrolSlurmWorker(sbatch_args=sbatch_args)


def _run_with_pydra_worker(args, participants, argv):
    """Run the App here, each Pydra node a SLURM job (see :class:`ScontrolSlurmWorker`)."""
    try:
        for program in ("sbatch", "squeue", "scontrol"):
            _slurm_command(program)
    except FileNotFoundError as error:
        print(f"masker-wf --slurm: {error}", file=sys.stderr)
        return 1
    from masker_wf.cli.run import main

    # The App picks ScontrolSlurmWorker from these options (bids.app.settings_from_args).
    task_argv = [*app_argv(argv), "--no-slurm", "--slurm-worker", "pydra"]
    if args.sbatch_args:
        task_argv.append(f"--sbatch-args={args.sbatch_args}")
    if args.slurm_partition:
        task_argv += ["--slurm-partition", args.slurm_partition]
    if participants:
        task_argv += ["--participant-label", *participants]
    print(
        "masker-wf --slurm --slurm-worker pydra: running here, every workflow node is a SLURM "
        "job (Pydra cache and job scripts under the work directory)",
        flush=True,
    )
    return main(task_argv)
