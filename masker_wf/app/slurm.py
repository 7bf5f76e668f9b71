"""Run the App's participants on a SLURM cluster.

Two ways, chosen with ``--slurm-worker``:

``array`` (default)
    :func:`submit` splits the participants into array tasks of ``--participants-per-task``
    participants (by default enough for a task's start-up to be a small share of its work,
    see :func:`default_participants_per_task`) and the tasks into job arrays no larger than
    the cluster's ``MaxArraySize`` (:func:`max_array_size`). Every array is submitted with
    ``sbatch --parsable --array=0-(n-1)[%throttle]`` (throttled arrays one after the other)
    and every participant recorded in ``<output_dir>/logs/jobs.tsv``. A task runs the App
    once for its participants: the command line is given by the caller
    (:class:`ArrayCommand`, built by :mod:`masker_wf.cli.slurm` from the submitting command
    line with absolute paths, without its SLURM options, plus ``--no-slurm --array-task``).
    Only ``sbatch``, ``squeue`` and ``scontrol`` are used: no job accounting
    (``sacct``/slurmdbd) is needed. Submitting again submits every participant that is not
    still queued or running; each task applies the App's own up-to-date check, so a run
    whose outputs are what it would write again is confirmed, not recomputed, and a run
    whose input changed is recomputed. Each participant has its own work directory
    (``<work_dir>/sub-<label>``), so tasks never share a cache directory.

``pydra``
    The App runs in the submitting process and Pydra's SLURM worker sends every workflow node
    to SLURM as its own job (fine-grained, many small jobs). Stock Pydra reads the exit status
    with ``sacct``, which needs SLURM accounting (slurmdbd + a database);
    :class:`ScontrolSlurmWorker` reads it from ``scontrol`` instead, falling back to ``sacct``
    once the controller has forgotten the job (after ``MinJobAge``, 300 s by default).

Both need the output, work and dataset directories and the Python environment to be visible
at the same paths on the compute nodes (a shared file system).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import fcntl
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydra.engine.job import Job
from pydra.workers.slurm import SlurmWorker

from ..bids import naming

__all__ = [
    "FINAL_STATES",
    "JOBS_COLUMNS",
    "ArrayCommand",
    "ScontrolSlurmWorker",
    "Submission",
    "TaskResources",
    "default_participants_per_task",
    "estimate_run_seconds",
    "in_flight_participants",
    "largest_run_memory_mb",
    "max_array_size",
    "plan_submission",
    "pydra_worker",
    "read_jobs",
    "refresh_states",
    "require_slurm_programs",
    "scontrol_records",
    "squeue_states",
    "submit",
    "submit_arrays",
    "wait_for_participants",
    "write_jobs",
    "write_sbatch_script",
    "write_task_results",
]

#: Columns of ``<output_dir>/logs/jobs.tsv``.
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
#: SLURM's default ``MaxArraySize`` (array indices 0 to MaxArraySize - 1).
DEFAULT_MAX_ARRAY_SIZE = 1001
#: Seconds an array task spends before its first run: interpreter, imports, indexing of its
#: participants (4-5 s measured on this project's 2-core machine).
TASK_START_SECONDS = 5.0
#: The share of a task's time its start-up may take, for the default bundling.
START_UP_SHARE = 0.1
#: Estimated seconds of one run: a fixed part (reading, report, provenance) plus a part
#: proportional to its BOLD file (about 35 s for a 1.2 GB MNI 2 mm run of 300 volumes).
RUN_FIXED_SECONDS = 0.5
RUN_SECONDS_PER_MB = 0.03
#: What each strategy after the first adds to a run cleaned with several (``--denoise-strategy
#: a b``), as a share of its first: the cleaning and the outputs again, not the reading and
#: smoothing (0.31-0.46 measured by ``benchmarks/bench_app.py --mode strategies``).
EXTRA_STRATEGY_SHARE = 0.4


@dataclass(frozen=True)
class ArrayCommand:
    """How an array task runs the App for its participants.

    Attributes
    ----------
    argv : tuple of str
        The task's command (program and arguments), the same for every task: the
        submitting command line with absolute paths, without its SLURM options and
        participant labels.
    signature : str
        Identifies what the command computes (recorded in ``jobs.tsv``: a participant whose
        last task under the same signature is still queued or running is not submitted
        again).
    participant_option : str
        Option the task's participant labels are appended with.
    nprocs_option : str or None
        Option appended with the CPUs SLURM granted to the task (Pydra's process count);
        None when the command already sets the count.
    """

    argv: tuple[str, ...]
    signature: str
    participant_option: str = "--participant-label"
    nprocs_option: str | None = None


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


def max_array_size() -> int:
    """The cluster's ``MaxArraySize`` (``scontrol show config``): tasks one array may hold.

    Array indices run from 0 to ``MaxArraySize - 1``. SLURM's default (1001) when the
    configuration does not say.

    Raises
    ------
    FileNotFoundError
        ``scontrol`` is not on ``PATH``.
    RuntimeError
        The controller cannot be asked.
    """
    stdout = _run([_slurm_command("scontrol"), "show", "config"]).stdout
    found = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", stdout, re.MULTILINE)
    return int(found.group(1)) if found else DEFAULT_MAX_ARRAY_SIZE


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
# jobs.tsv and the tasks' results
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


def _results_dir(output_dir) -> Path:
    return Path(output_dir) / "logs" / "slurm" / "results"


def write_task_results(output_dir, exit_codes, environ=None) -> Path | None:
    """Record the exit code of each participant of this array task, for the submitter.

    A task runs several participants; its own exit code says only whether all succeeded.
    The file ``logs/slurm/results/<job>_<index>_participants.tsv`` (written atomically)
    lets ``jobs.tsv`` and ``--wait`` name exactly the participants that failed.

    Parameters
    ----------
    output_dir : path
        The output dataset.
    exit_codes : mapping
        Participant label (without ``sub-``) -> the App's exit code for its runs.
    environ : mapping, optional
        Where ``SLURM_ARRAY_JOB_ID`` and ``SLURM_ARRAY_TASK_ID`` are read (``os.environ``).

    Returns
    -------
    pathlib.Path or None
        The file, or None outside a SLURM array task.
    """
    environ = os.environ if environ is None else environ
    job, index = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if not (job and index):
        return None
    path = _results_dir(output_dir) / f"{job}_{index}_participants.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(
        f"{naming.participant_id(label)}\t{code}\n" for label, code in exit_codes.items()
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


def _participant_results(results_dir, job_id, index) -> dict:
    path = Path(results_dir) / f"{job_id}_{index}_participants.tsv"
    if not path.exists():
        return {}
    codes = {}
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 2:
            codes[fields[0]] = fields[1]
    return codes


def _read_result(results_dir, job_id, index):
    path = Path(results_dir) / f"{job_id}_{index}.tsv"
    if not path.exists():
        return None
    fields = path.read_text().split()
    return fields[-1] if fields else None


def refresh_states(rows, results_dir):
    """Update ``state`` and ``exit_code`` of unfinished rows in place; True if any changed.

    Live tasks come from ``squeue``; finished ones from ``scontrol``, then from the result
    file each task writes when the App returns (which outlives the controller's memory).
    Once a task ended, the exit code of each of its participants comes from the file the
    App wrote for them (:func:`write_task_results`), when there is one.
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
            elif (result := _read_result(results_dir, job_id, index)) is not None:
                state, exit_code = ("COMPLETED" if result == "0" else "FAILED"), result
            else:
                # gone from the queue, forgotten by the controller, no result written:
                # the task died before the App returned (node failure...)
                state = "UNKNOWN"
            if state in ("COMPLETED", "FAILED"):
                # the task's App said how each of its participants ended
                own = _participant_results(results_dir, job_id, index).get(row["participant"])
                if own is not None:
                    state, exit_code = ("COMPLETED" if own == "0" else "FAILED"), own
            if (state, exit_code) != (row["state"], row["exit_code"]):
                row["state"], row["exit_code"] = state, exit_code
                changed = True
    return changed


def latest_rows(rows):
    """The last row recorded for each participant."""
    latest = {}
    for row in rows:
        latest[row["participant"]] = row
    return latest


def in_flight_participants(participants, rows, signature):
    """Split participants into (to_submit, in_flight) given earlier ``jobs.tsv`` rows.

    A participant is in flight when its last task for the same command line
    (``signature``) is still queued or running: submitting it again would run it twice.
    Every other participant is submitted; its task decides run by run what is up to date.
    """
    latest = latest_rows(rows)
    to_submit, in_flight = [], []
    for label in participants:
        row = latest.get(naming.participant_id(label))
        if (
            row is not None
            and row.get("command_hash") == signature
            and row["state"] not in FINAL_STATES
        ):
            in_flight.append(label)
        else:
            to_submit.append(label)
    return to_submit, in_flight


# -------------------------------------------------------------------------------------------
# how many participants per task, how many tasks per array
# -------------------------------------------------------------------------------------------
def estimate_run_seconds(bold_file) -> float:
    """Rough processing time of a run (s) from the size of its BOLD file."""
    try:
        size_mb = Path(bold_file).stat().st_size / 2**20
    except OSError:
        size_mb = 0.0
    return RUN_FIXED_SECONDS + RUN_SECONDS_PER_MB * size_mb


def default_participants_per_task(seconds_per_participant: float, n_participants: int) -> int:
    """Participants per task so that the task's start-up is under a tenth of its work.

    Parameters
    ----------
    seconds_per_participant : float
        Estimated processing time of one participant (s).
    n_participants : int
        Participants to submit (a task never holds more).
    """
    needed = TASK_START_SECONDS / START_UP_SHARE / max(seconds_per_participant, 1e-3)
    return max(1, min(n_participants, math.ceil(needed)))


@dataclass(frozen=True)
class Submission:
    """The participants of a submission in array tasks, and the tasks in job arrays.

    Attributes
    ----------
    tasks : tuple of tuple of str
        The participants (labels without ``sub-``) of each task, in array-index order.
    participants_per_task : int
    max_array_size : int
        The cluster's ``MaxArraySize``.
    n_runs : int
        Runs of the participants.
    task_seconds : float
        Estimated processing time of the longest task (s), start-up included.
    memory_mb : int or None
        Estimated peak memory of a task (MB): the largest run, times the runs a task
        processes at the same time.
    strategies : int
        Confound strategies each run is cleaned with.
    """

    tasks: tuple[tuple[str, ...], ...]
    participants_per_task: int
    max_array_size: int
    n_runs: int
    task_seconds: float
    memory_mb: int | None
    strategies: int = 1

    @property
    def arrays(self) -> tuple[tuple[int, int], ...]:
        """``(first task, number of tasks)`` of each job array, in order."""
        starts = range(0, len(self.tasks), self.max_array_size)
        return tuple(
            (first, min(self.max_array_size, len(self.tasks) - first)) for first in starts
        )

    @property
    def participants(self) -> list[str]:
        """Every participant, in submission order."""
        return [label for task in self.tasks for label in task]

    def array_tasks(self, array: int) -> tuple[tuple[str, ...], ...]:
        """The tasks of job array number ``array``."""
        first, count = self.arrays[array]
        return self.tasks[first : first + count]

    def describe(self) -> str:
        """What would be submitted, for ``--dry-run`` and the submission message."""
        strategies = "" if self.strategies == 1 else f" ({self.strategies} strategies each)"
        lines = [
            f"{self.n_runs} run(s){strategies} of {len(self.participants)} participant(s) in "
            f"{len(self.tasks)} array task(s) of up to {self.participants_per_task} "
            f"participant(s), in {len(self.arrays)} job array(s) (MaxArraySize "
            f"{self.max_array_size})",
            f"estimated per task: {self.task_seconds:.0f} s"
            + ("" if self.memory_mb is None else f", {self.memory_mb} MB of memory"),
        ]
        for number in range(len(self.arrays)):
            tasks = self.array_tasks(number)
            first, last = tasks[0][0], tasks[-1][-1]
            lines.append(
                f"array {number + 1}: --array=0-{len(tasks) - 1}, "
                f"{naming.participant_id(first)} .. {naming.participant_id(last)}"
            )
        return "\n".join(lines)


def plan_submission(
    runs_by_participant,
    *,
    participants_per_task=None,
    max_array_size=DEFAULT_MAX_ARRAY_SIZE,
    run_memory_mb=None,
    runs_at_once=1,
    strategies=1,
) -> Submission:
    """Bundle participants into array tasks and the tasks into job arrays.

    Parameters
    ----------
    runs_by_participant : mapping
        Participant label -> its BOLD files (in submission order).
    participants_per_task : int, optional
        ``--participants-per-task``; default :func:`default_participants_per_task`.
    max_array_size : int
        The cluster's ``MaxArraySize``: an array holds at most that many tasks.
    run_memory_mb : int, optional
        Estimated peak memory of the largest run (MB).
    runs_at_once : int
        Runs a task processes at the same time, each in its own process.
    strategies : int
        Confound strategies each run is cleaned with (they run one after the other, each
        after the first costing :data:`EXTRA_STRATEGY_SHARE` of it).

    Raises
    ------
    ValueError
        Job arrays are disabled (``MaxArraySize`` 0) or there is nothing to submit.
    """
    if max_array_size < 1:
        raise ValueError("job arrays are disabled on this cluster (MaxArraySize=0)")
    labels = list(runs_by_participant)
    if not labels:
        raise ValueError("no participants to submit")
    strategies = max(1, int(strategies))
    per_run = 1.0 + EXTRA_STRATEGY_SHARE * (strategies - 1)
    seconds = {
        label: per_run * sum(estimate_run_seconds(bold) for bold in runs_by_participant[label])
        for label in labels
    }
    per_task = participants_per_task or default_participants_per_task(
        sum(seconds.values()) / len(labels), len(labels)
    )
    tasks = tuple(tuple(labels[i : i + per_task]) for i in range(0, len(labels), per_task))
    bolds = [bold for label in labels for bold in runs_by_participant[label]]
    memory = None if run_memory_mb is None else run_memory_mb * max(1, runs_at_once)
    task_seconds = TASK_START_SECONDS + max(sum(seconds[label] for label in t) for t in tasks)
    return Submission(
        tasks=tasks,
        participants_per_task=per_task,
        max_array_size=max_array_size,
        n_runs=len(bolds),
        task_seconds=task_seconds,
        memory_mb=memory,
        strategies=strategies,
    )


# -------------------------------------------------------------------------------------------
# the arrays
# -------------------------------------------------------------------------------------------
SBATCH_TEMPLATE = """\
#!/bin/bash
# masker-wf job array written by `masker-wf ... --slurm` on {created}.
# Submitted once per job array of the submission, with that array's task list:
#   sbatch --parsable --array=0-(n-1)[%throttle] [--partition P] [--sbatch-args] <this> TASKS
# Array task i processes the participants on line i+2 of TASKS (tab-separated: the index,
# then the participants separated by spaces).
#SBATCH --job-name=masker-wf
#SBATCH --output={logs}/slurm/masker-wf_%A_%a.out
#SBATCH --chdir={cwd}
set -u

tasks=${{1:?usage: sbatch --array=... $0 TASKS_FILE}}
labels=$(sed -n "$((SLURM_ARRAY_TASK_ID + 2))p" "$tasks" | cut -f2)
if [ -z "$labels" ]; then
    echo "no participants on line $((SLURM_ARRAY_TASK_ID + 2)) of $tasks" >&2
    exit 66
fi
echo "masker-wf: $labels on $(hostname), job ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"

# Pydra's local worker gets the CPUs SLURM granted to this task
export MASKER_WF_NPROCS=${{SLURM_CPUS_PER_TASK:-${{SLURM_CPUS_ON_NODE:-1}}}}
# one BLAS/OpenMP thread per Pydra process, so the task does not oversubscribe its CPUs
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
# shellcheck disable=SC2086  # one word per participant label
{command_q} {participant_option} $labels{nprocs}
rc=$?

# the exit status outlives the controller's memory of the job (no accounting needed)
result={logs_q}/slurm/results/${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.tsv
printf 'task\\t%s\\t%s\\t%s\\n' "$SLURM_ARRAY_TASK_ID" "$SLURM_ARRAY_JOB_ID" "$rc" \\
    > "$result.tmp" && mv -f "$result.tmp" "$result"
exit $rc
"""


def write_sbatch_script(path, *, command, logs_dir, cwd=None):
    """Write the sbatch script of a submission (its job arrays pass it their task list).

    Parameters
    ----------
    path : path
        Where to write the script.
    command : ArrayCommand
        What each task runs.
    logs_dir : path
        ``<output_dir>/logs`` (absolute); task logs go to ``logs/slurm/``.
    cwd : path, optional
        The tasks' working directory (default: the current one). Every path the tasks are
        given is absolute, so it only matters to the user's own ``--sbatch-args``.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    nprocs = ""
    if command.nprocs_option:
        nprocs = f' {command.nprocs_option} "$MASKER_WF_NPROCS"'
    text = SBATCH_TEMPLATE.format(
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        logs=logs_dir,
        logs_q=shlex.quote(str(logs_dir)),
        cwd=Path(cwd or os.getcwd()).absolute(),
        command_q=shlex.join(command.argv),
        participant_option=command.participant_option,
        nprocs=nprocs,
    )
    path.write_text(text)
    path.chmod(0o755)
    return path


def write_task_list(path, tasks) -> Path:
    """The task list of one job array: a header, then ``index<TAB>sub-a sub-b ...`` lines."""
    lines = ["array_index\tparticipants"]
    lines += [
        f"{index}\t{' '.join(naming.participant_id(label) for label in task)}"
        for index, task in enumerate(tasks)
    ]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def _new_submission_name(logs_dir):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"masker-wf_{stamp}"
    suffix = 1
    while (logs_dir / f"{name}.sbatch").exists():
        suffix += 1
        name = f"masker-wf_{stamp}-{suffix}"
    return name


@dataclass(frozen=True)
class TaskResources:
    """What a task asks SLURM for, from the App's own options (None: not given).

    Attributes
    ----------
    nprocs : int or None
        ``--nprocs``: runs processed at once.
    omp_nthreads : int or None
        ``--omp-nthreads``: threads inside each run.
    mem_mb : int or None
        ``--mem-mb``: memory of the runs in flight together (MB).
    """

    nprocs: int | None = None
    omp_nthreads: int | None = None
    mem_mb: int | None = None

    def sbatch_options(self, sbatch_args) -> list[str]:
        """``--cpus-per-task`` and ``--mem`` for the options given, unless ``sbatch_args``
        already ask for CPUs or memory (the user's sbatch options win)."""
        options = []
        if (self.nprocs or self.omp_nthreads) and not any(
            a.startswith(("-c", "--cpus-per-task")) for a in sbatch_args
        ):
            # N runs at once of M threads each: N x M CPUs
            options.append(f"--cpus-per-task={(self.nprocs or 1) * (self.omp_nthreads or 1)}")
        if self.mem_mb and not any(a.startswith("--mem") for a in sbatch_args):
            options.append(f"--mem={self.mem_mb}M")
        return options


def _sbatch_options(slurm, resources: TaskResources | None) -> list[str]:
    options = []
    if slurm.slurm_partition:
        options.append(f"--partition={slurm.slurm_partition}")
    sbatch_args = shlex.split(slurm.sbatch_args or "")
    resources = resources or TaskResources()
    return options + resources.sbatch_options(sbatch_args) + sbatch_args


def _throttle(slurm) -> str:
    return f"%{slurm.array_throttle}" if slurm.array_throttle else ""


def _array_spec(n_tasks, slurm):
    return f"0-{n_tasks - 1}{_throttle(slurm)}"


def submit_arrays(slurm, submission: Submission, command, logs_dir, resources=None, on_array=None):
    """Write the submission's script and task lists and submit its job arrays.

    Throttled arrays (``--array-throttle``) wait for the previous one
    (``--dependency=afterany``), so that the throttle holds for the whole submission.

    Parameters
    ----------
    slurm : masker_wf.app.settings.SlurmSettings
        The SLURM options (``array_throttle``, ``slurm_partition``, ``sbatch_args``).
    submission : Submission
        The tasks and arrays.
    command : ArrayCommand
        What each task runs.
    logs_dir : pathlib.Path
        ``<output_dir>/logs`` (absolute).
    resources : TaskResources, optional
        What the user asked for (``--nprocs``, ``--omp-nthreads``, ``--mem-mb``): requested
        from SLURM as CPUs and memory per task.
    on_array : callable, optional
        Called with the new ``jobs.tsv`` rows of each array once it is submitted (so that
        an array submitted before a later one fails is recorded).

    Returns
    -------
    list of dict
        The new ``jobs.tsv`` rows (one per participant), state ``PENDING``.
    """
    sbatch = _slurm_command("sbatch")
    name = _new_submission_name(logs_dir)
    script = write_sbatch_script(logs_dir / f"{name}.sbatch", command=command, logs_dir=logs_dir)
    rows, previous = [], None
    for number in range(len(submission.arrays)):
        tasks = submission.array_tasks(number)
        task_list = write_task_list(logs_dir / f"{name}_array{number + 1}_tasks.tsv", tasks)
        command_line = [sbatch, "--parsable", f"--array={_array_spec(len(tasks), slurm)}"]
        if previous is not None and slurm.array_throttle:
            command_line.append(f"--dependency=afterany:{previous}")
        command_line += [*_sbatch_options(slurm, resources), str(script), str(task_list)]
        # --parsable prints "jobid[;cluster]"
        job_id = _run(command_line).stdout.strip().split(";")[0]
        previous = job_id
        new = [
            {
                "participant": naming.participant_id(label),
                "array_index": str(index),
                "job_id": job_id,
                "state": "PENDING",
                "exit_code": "",
                "submission": name,
                "command_hash": command.signature,
            }
            for index, task in enumerate(tasks)
            for label in task
        ]
        rows += new
        if on_array is not None:
            on_array(new)
        print(
            f"masker-wf --slurm: submitted job array {job_id}: {len(tasks)} task(s), "
            f"{_span(tasks)}; task list {task_list}"
        )
    print(
        f"masker-wf --slurm: script {script}, task logs {logs_dir / 'slurm'}, "
        f"status {logs_dir / 'jobs.tsv'}"
    )
    return rows


def _span(tasks) -> str:
    labels = [label for task in tasks for label in task]
    if len(labels) <= 3:
        return _names(labels)
    return f"{len(labels)} participants, {_names(labels[:1])} .. {_names(labels[-1:])}"


def _names(labels):
    return ", ".join(naming.participant_id(label) for label in labels)


def _file_size(path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def largest_run_memory_mb(runs, estimate) -> int | None:
    """``estimate(run)`` for the run with the largest BOLD file (one header read, whatever
    the number of runs), or None without runs or estimate."""
    if estimate is None or not runs:
        return None
    return estimate(max(runs, key=lambda run: _file_size(run.bold_file)))


def _submission(slurm, runs, labels, size, memory, resources, strategies) -> Submission:
    """The submission of the participants ``labels`` (made, or described by a dry run)."""
    grouped = {label: [] for label in labels}
    for run in runs:
        if run.subject in grouped:
            grouped[run.subject].append(run.bold_file)
    return plan_submission(
        {label: bolds for label, bolds in grouped.items() if bolds},
        participants_per_task=slurm.participants_per_task,
        max_array_size=size,
        run_memory_mb=memory,
        runs_at_once=(resources and resources.nprocs) or 1,
        strategies=strategies,
    )


def submit(
    slurm,
    output_dir,
    runs,
    command,
    *,
    resources: TaskResources | None = None,
    wait=None,
    dry_run=False,
    participants: Sequence[str] | None = None,
    estimate_memory=None,
    strategies=1,
) -> int:
    """Submit the runs' participants as job arrays, and optionally wait for them.

    Parameters
    ----------
    slurm : masker_wf.app.settings.SlurmSettings
        The SLURM options.
    output_dir : path
        Output dataset root (``logs/`` and ``jobs.tsv`` go there).
    runs : sequence of masker_wf.bids.layout.RunInputs
        The planned runs (their participants are submitted).
    command : ArrayCommand
        What each task runs.
    resources : TaskResources, optional
        ``--nprocs``, ``--omp-nthreads`` and ``--mem-mb`` of the submitting command: CPUs
        and memory per task.
    wait : bool, optional
        Follow the tasks to their end (default: ``slurm.wait``).
    dry_run : bool
        Print the submission and stop (nothing is written or submitted).
    participants : sequence of str, optional
        The participants, in submission order (default: those of ``runs``).
    estimate_memory : callable, optional
        ``estimate_memory(run)``: estimated peak memory of a run (MB), for the description
        of the submission.
    strategies : int
        Confound strategies each run is cleaned with (for the estimated time of a task).

    Returns
    -------
    int
        0 when submitted (or, waiting, when every task completed), 1 when a task failed or
        submission was impossible, 130 when waiting was interrupted.
    """
    if slurm.array_task:
        # a task must process its participants, never submit again (fan-out without end)
        print(
            "masker-wf --slurm: refusing to submit from inside a masker-wf array task "
            "(is 'slurm' set in the --config-file?)",
            file=sys.stderr,
        )
        return 1
    labels = list(dict.fromkeys(participants or [run.subject for run in runs]))
    logs_dir = Path(output_dir).absolute() / "logs"
    results_dir = logs_dir / "slurm" / "results"
    jobs_file = logs_dir / "jobs.tsv"
    try:
        if dry_run:
            memory = largest_run_memory_mb(runs, estimate_memory)
            return _dry_run(slurm, runs, labels, jobs_file, command, resources, memory, strategies)
        require_slurm_programs("sbatch", "squeue", "scontrol")
        results_dir.mkdir(parents=True, exist_ok=True)
        with _locked(logs_dir):
            rows = read_jobs(jobs_file)
            if refresh_states(rows, results_dir):
                write_jobs(jobs_file, rows)
            to_submit, in_flight = in_flight_participants(labels, rows, command.signature)
            if in_flight:
                print(f"masker-wf --slurm: still queued or running, skipped: {_names(in_flight)}")
            if to_submit:
                memory = largest_run_memory_mb(runs, estimate_memory)
                submission = _submission(
                    slurm, runs, to_submit, max_array_size(), memory, resources, strategies
                )
                print("masker-wf --slurm: " + submission.describe().replace("\n", "\n  "))

                def record(new_rows):
                    rows.extend(new_rows)
                    write_jobs(jobs_file, rows)

                submit_arrays(slurm, submission, command, logs_dir, resources, on_array=record)
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"masker-wf --slurm: {error}", file=sys.stderr)
        return 1
    if not (slurm.wait if wait is None else wait):
        return 0
    watched = set(to_submit) | set(in_flight)
    if not watched:
        return 0
    return wait_for_participants(jobs_file, results_dir, watched)


def _dry_run(slurm, runs, labels, jobs_file, command, resources, memory, strategies) -> int:
    rows = read_jobs(jobs_file)
    try:
        size, where = max_array_size(), ""
        # what is still in flight, as SLURM sees it now (jobs.tsv is not rewritten)
        refresh_states(rows, jobs_file.parent / "slurm" / "results")
    except (FileNotFoundError, RuntimeError):
        size = DEFAULT_MAX_ARRAY_SIZE
        where = f"\n(SLURM cannot be asked here: MaxArraySize {size}, SLURM's default, assumed)"
    to_submit, in_flight = in_flight_participants(labels, rows, command.signature)
    print("masker-wf --slurm --dry-run: nothing is submitted")
    if in_flight:
        print(f"still queued or running, would be skipped: {_names(in_flight)}")
    if not to_submit:
        return 0
    submission = _submission(slurm, runs, to_submit, size, memory, resources, strategies)
    print(submission.describe() + where)
    sbatch = ["sbatch", "--parsable", f"--array=0-(n-1){_throttle(slurm)}"]
    sbatch += [*_sbatch_options(slurm, resources), "SCRIPT", "TASK_LIST"]
    print(f"each array: {shlex.join(sbatch)}")
    for number in range(len(submission.arrays)):
        for index, task in enumerate(submission.array_tasks(number)):
            print(f"  array {number + 1} task {index}: {_names(task)}")
    print(f"task command: {shlex.join(command.argv)} {command.participant_option} LABELS")
    return 0


def wait_for_participants(jobs_file, results_dir, labels, poll=None):
    """Poll SLURM until the last tasks of ``labels`` ended; return 0 if all completed, else 1.

    ``jobs.tsv`` is rewritten (atomically) whenever a state changes. Failed participants are
    named on stderr.
    """
    poll = float(os.environ.get("MASKER_WF_SLURM_POLL", POLL_SECONDS)) if poll is None else poll
    jobs_file = Path(jobs_file)
    wanted = {naming.participant_id(label) for label in labels}
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
#: How Pydra's SLURM batch scripts start the job, and what runs before it in ours.
_LOAD_AND_RUN = "from pydra.engine.job import load_and_run; "
_SEGMENTED = "from masker_wf.tasks import use_segmented_hash; use_segmented_hash(); "


class ScontrolSlurmWorker(SlurmWorker):
    """Pydra's SLURM worker reading exit status from ``scontrol`` rather than ``sacct``.

    Stock :class:`pydra.workers.slurm.SlurmWorker` asks ``sacct`` once a job left the queue,
    which fails ("Job information not found") on clusters without accounting. The controller
    keeps finished jobs for ``MinJobAge`` seconds, so ``scontrol show job`` answers in the
    meantime; after that, ``sacct`` is asked as before. When the submitting process uses
    masker-wf's segmented file hash (:func:`masker_wf.tasks.use_segmented_hash`), so do the
    jobs.
    """

    _plugin_name = "slurm-scontrol"

    def _prepare_runscripts(self, job, interpreter="/bin/sh", rerun=False):
        # The job's cache directory is named by its checksum, which the compute node would
        # otherwise compute again from the unpickled task. cloudpickle (>= 3.1) ships a task
        # function it cannot find by name (the @python.define form rebinds the name to the
        # task class) by value, with its code file renamed '<dynamic-code>'; Pydra then
        # hashes byte code where the submitter hashed source, the job stores its result under
        # another directory, and the submitter finds none. Computing the checksum before
        # Pydra pickles the job stores it in the pickle (Job caches it), so both sides agree.
        if isinstance(job, Job):
            job.checksum  # noqa: B018 (computed for its side effect: cached in the job)
        script_dir, batchscript = super()._prepare_runscripts(
            job, interpreter=interpreter, rerun=rerun
        )
        from ..tasks import segmented_hash_enabled

        if segmented_hash_enabled():
            # The pickled job carries input hashes made with the segmented file hash of
            # this process; the job re-hashes its inputs after running and must use the
            # same hash, or Pydra reports "input field hashes have changed".
            text = batchscript.read_text()
            patched = text.replace(_LOAD_AND_RUN, _SEGMENTED + _LOAD_AND_RUN, 1)
            if patched == text:
                raise RuntimeError(f"unexpected Pydra batch script {batchscript}: {text!r}")
            batchscript.write_text(patched)
        return script_dir, batchscript

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


def require_slurm_programs(*names: str) -> None:
    """Check that SLURM's client programs are on ``PATH``.

    Raises
    ------
    FileNotFoundError
        Naming the first missing program and how to get it.
    """
    for name in names:
        _slurm_command(name)


def pydra_worker(slurm) -> ScontrolSlurmWorker:
    """The Pydra worker for ``--slurm-worker pydra``: a :class:`ScontrolSlurmWorker`.

    ``--sbatch-args`` and ``--slurm-partition`` apply to every job it submits.

    Parameters
    ----------
    slurm : masker_wf.app.settings.SlurmSettings
        The SLURM options.

    Returns
    -------
    ScontrolSlurmWorker
        Ready to pass as ``worker=`` to a Pydra ``Submitter`` (or ``run_masker_workflow``).
    """
    sbatch_args = slurm.sbatch_args or ""
    if slurm.slurm_partition:
        sbatch_args = f"--partition={slurm.slurm_partition} {sbatch_args}".strip()
    return ScontrolSlurmWorker(sbatch_args=sbatch_args)
