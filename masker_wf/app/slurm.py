"""Run the App's participants on a SLURM cluster.

Two ways, chosen with ``--slurm-worker``:

``array`` (default)
    One SLURM job array per submission, one array task per participant. :func:`submit`
    writes the participant list and an sbatch script under ``<output_dir>/logs/``, submits
    ``sbatch --parsable --array=0-(N-1)[%throttle]`` and records every task in
    ``<output_dir>/logs/jobs.tsv``. Each task runs the App itself for its participant: the
    command line is given by the caller (:class:`ArrayCommand`, built by
    :mod:`masker_wf.cli.slurm` from the submitting command line without its SLURM options,
    plus ``--no-slurm --array-task``), with the process count set from the CPUs SLURM granted
    (Pydra's local ``cf`` worker when more than one). Only ``sbatch``, ``squeue`` and
    ``scontrol`` are used: no job accounting (``sacct``/slurmdbd) is needed. Submitting again
    skips participants whose last task completed with the same command line and whose
    outputs exist, so only failed or missing work is re-run; the Pydra cache under the work
    directory is shared by all tasks.

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
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
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
    "pydra_worker",
    "read_jobs",
    "refresh_states",
    "require_slurm_programs",
    "scontrol_records",
    "select_participants",
    "squeue_states",
    "submit",
    "submit_array",
    "wait_for_participants",
    "write_jobs",
    "write_sbatch_script",
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


@dataclass(frozen=True)
class ArrayCommand:
    """How an array task runs the App for its participant.

    Attributes
    ----------
    argv : tuple of str
        The task's command (program and arguments), the same for every task: the
        submitting command line without its SLURM options and participant labels.
    signature : str
        Identifies what the command computes (recorded in ``jobs.tsv``; a participant whose
        last task completed under the same signature is not submitted again).
    participant_option : str
        Option the task's participant label is appended with.
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
{command_q} {participant_option} "$label"{nprocs}
rc=$?

# the exit status outlives the controller's memory of the job (no accounting needed)
result={logs_q}/slurm/results/${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.tsv
printf 'sub-%s\\t%s\\t%s\\t%s\\n' "$label" "$SLURM_ARRAY_TASK_ID" "$SLURM_ARRAY_JOB_ID" "$rc" \\
    > "$result.tmp" && mv -f "$result.tmp" "$result"
exit $rc
"""


def write_sbatch_script(path, *, participants_file, command, logs_dir, n_tasks, throttle=None):
    """Write the array's sbatch script.

    Parameters
    ----------
    path : path
        Where to write the script.
    participants_file : path
        TSV with a header line and one ``sub-<label>`` per line, in array-index order.
    command : ArrayCommand
        What each task runs.
    logs_dir : path
        ``<output_dir>/logs``; task logs go to ``logs/slurm/``.
    n_tasks : int
        Number of array tasks (for the header comment).
    throttle : int or None
        Maximum simultaneous tasks (for the header comment).

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
        participants=participants_file,
        participants_q=shlex.quote(str(participants_file)),
        last=n_tasks - 1,
        throttle=f"%{throttle}" if throttle else "",
        logs=logs_dir,
        logs_q=shlex.quote(str(logs_dir)),
        cwd=os.getcwd(),
        command_q=shlex.join(command.argv),
        participant_option=command.participant_option,
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


def _outputs_present(output_dir, label):
    subject_dir = Path(output_dir) / naming.participant_dir(label)
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
        row = latest.get(naming.participant_id(label))
        same = row is not None and row.get("command_hash") == signature
        if same and row["state"] == "COMPLETED" and row["exit_code"] == "0":
            if _outputs_present(output_dir, label):
                done.append(label)
                continue
        elif same and row["state"] not in FINAL_STATES:
            in_flight.append(label)
            continue
        to_submit.append(label)
    return to_submit, done, in_flight


def submit_array(slurm, labels, command, logs_dir, nprocs=None):
    """Write the participant list and sbatch script of one submission and submit the array.

    Parameters
    ----------
    slurm : masker_wf.app.settings.SlurmSettings
        The SLURM options (``array_throttle``, ``slurm_partition``, ``sbatch_args``).
    labels : list of str
        Participants of this array, in array-index order, without ``sub-``.
    command : ArrayCommand
        What each task runs.
    logs_dir : pathlib.Path
        ``<output_dir>/logs``.
    nprocs : int, optional
        Processes the user asked for (``--nprocs``): requested from SLURM as CPUs per task.

    Returns
    -------
    list of dict
        The new ``jobs.tsv`` rows, state ``PENDING``.
    """
    sbatch = _slurm_command("sbatch")
    name = _new_submission_name(logs_dir)
    participants_file = logs_dir / f"{name}_participants.tsv"
    participants_file.write_text(
        "participant_id\n" + "".join(f"{naming.participant_id(label)}\n" for label in labels)
    )
    script = write_sbatch_script(
        logs_dir / f"{name}.sbatch",
        participants_file=participants_file,
        command=command,
        logs_dir=logs_dir,
        n_tasks=len(labels),
        throttle=slurm.array_throttle,
    )
    command_line = [sbatch, "--parsable", f"--array={_array_spec(len(labels), slurm)}"]
    if slurm.slurm_partition:
        command_line.append(f"--partition={slurm.slurm_partition}")
    sbatch_args = shlex.split(slurm.sbatch_args or "")
    if nprocs and not any(a.startswith(("-c", "--cpus-per-task")) for a in sbatch_args):
        # --nprocs N runs N processes: ask SLURM for as many CPUs
        command_line.append(f"--cpus-per-task={nprocs}")
    command_line += [*sbatch_args, str(script)]
    # --parsable prints "jobid[;cluster]"
    job_id = _run(command_line).stdout.strip().split(";")[0]
    print(
        f"masker-wf --slurm: submitted job array {job_id} ({len(labels)} task(s): "
        f"{_names(labels)}); script {script}, task logs {logs_dir / 'slurm'}, "
        f"status {logs_dir / 'jobs.tsv'}"
    )
    return [
        {
            "participant": naming.participant_id(label),
            "array_index": str(index),
            "job_id": job_id,
            "state": "PENDING",
            "exit_code": "",
            "submission": name,
            "command_hash": command.signature,
        }
        for index, label in enumerate(labels)
    ]


def submit(slurm, output_dir, participants, command, *, nprocs=None, wait=None) -> int:
    """Submit the participants as one job array and optionally wait for them.

    Parameters
    ----------
    slurm : masker_wf.app.settings.SlurmSettings
        The SLURM options.
    output_dir : path
        Output dataset root (``logs/`` and ``jobs.tsv`` go there).
    participants : sequence of str
        Labels without ``sub-``.
    command : ArrayCommand
        What each task runs.
    nprocs : int, optional
        ``--nprocs`` of the submitting command (CPUs per task).
    wait : bool, optional
        Follow the tasks to their end (default: ``slurm.wait``).

    Returns
    -------
    int
        0 when submitted (or, waiting, when every task completed), 1 when a task failed or
        submission was impossible, 130 when waiting was interrupted.
    """
    if slurm.array_task:
        # a task must process its participant, never submit again (fan-out without end)
        print(
            "masker-wf --slurm: refusing to submit from inside a masker-wf array task "
            "(is 'slurm' set in the --config-file?)",
            file=sys.stderr,
        )
        return 1
    if not participants:
        print("masker-wf --slurm: no participants to process", file=sys.stderr)
        return 1
    logs_dir = Path(output_dir).absolute() / "logs"
    results_dir = logs_dir / "slurm" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    jobs_file = logs_dir / "jobs.tsv"
    try:
        with _locked(logs_dir):
            rows = read_jobs(jobs_file)
            if refresh_states(rows, results_dir):
                write_jobs(jobs_file, rows)
            to_submit, done, in_flight = select_participants(
                participants, rows, output_dir, command.signature
            )
            if done:
                print(f"masker-wf --slurm: already complete, skipped: {_names(done)}")
            if in_flight:
                print(f"masker-wf --slurm: still queued or running, skipped: {_names(in_flight)}")
            if to_submit:
                rows += submit_array(slurm, to_submit, command, logs_dir, nprocs)
                write_jobs(jobs_file, rows)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"masker-wf --slurm: {error}", file=sys.stderr)
        return 1
    if not (slurm.wait if wait is None else wait):
        return 0
    watched = set(to_submit) | set(in_flight)
    if not watched:
        return 0
    return wait_for_participants(jobs_file, results_dir, watched)


def _array_spec(n_tasks, slurm):
    spec = f"0-{n_tasks - 1}"
    return f"{spec}%{slurm.array_throttle}" if slurm.array_throttle else spec


def _names(labels):
    return ", ".join(naming.participant_id(label) for label in labels)


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
class ScontrolSlurmWorker(SlurmWorker):
    """Pydra's SLURM worker reading exit status from ``scontrol`` rather than ``sacct``.

    Stock :class:`pydra.workers.slurm.SlurmWorker` asks ``sacct`` once a job left the queue,
    which fails ("Job information not found") on clusters without accounting. The controller
    keeps finished jobs for ``MinJobAge`` seconds, so ``scontrol show job`` answers in the
    meantime; after that, ``sacct`` is asked as before.
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
        return super()._prepare_runscripts(job, interpreter=interpreter, rerun=rerun)

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
