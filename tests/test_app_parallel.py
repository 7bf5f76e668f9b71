"""Runs side by side: --nprocs runs at once, --omp-nthreads threads in each, --mem-mb caps
the runs in flight; the outputs are the same bytes whatever the number of processes, and the
same as before runs were processed side by side."""

import gzip
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from masker_wf import _threads
from masker_wf.app import parallel
from masker_wf.app.settings import Execution
from masker_wf.cli.run import main

REPO = Path(__file__).resolve().parent.parent
FMRIPREP = REPO / "bids_examples" / "ds-masker" / "derivatives" / "fmriprep"
# Digests of the outputs (decompressed) of two configurations, recorded with the App as it
# was before runs were processed side by side (one Pydra workflow after the other, the
# cleaned BOLD staged uncompressed in the cache and gzipped by its sink). OpenBLAS picks its
# kernels by CPU, and kernels round differently: the digests are those of one kernel, which
# the runs of the test are pinned to (AVX2, on every x86-64 machine this runs on).
BEFORE = json.loads((REPO / "tests" / "data" / "app_outputs_before_issue12.json").read_text())
KERNEL = "Haswell"


def _limits(nprocs, mem_mb=None, omp=1):
    return parallel.Resources(nprocs=nprocs, omp_nthreads=omp, mem_mb=mem_mb, cpus=2, origin="")


def _failed(index, reason):
    return ("failed", index, reason)


# ----------------------------------------------------------------- the scheduler itself
def test_two_runs_are_in_flight_at_once(tmp_path):
    def process(index):
        # Each run waits (up to a minute) for another run to be running: it only returns
        # early if two runs really are in flight together.
        (tmp_path / f"running-{index}").touch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            others = [p for p in tmp_path.glob("running-*") if p.name != f"running-{index}"]
            if others:
                return ("met", os.getpid(), _threads.default_n_threads())
            time.sleep(0.01)
        return ("alone", os.getpid(), _threads.default_n_threads())

    results = parallel.process_runs(2, process, [100, 100], _limits(2), _failed)
    assert [r[0] for r in results] == ["met", "met"]
    assert len({r[1] for r in results} | {os.getpid()}) == 3  # two worker processes
    assert [r[2] for r in results] == [1, 1]  # --omp-nthreads reaches the workers


def test_the_memory_cap_keeps_runs_apart(tmp_path):
    def process(index):
        marker = tmp_path / f"running-{index}"
        marker.touch()
        time.sleep(0.2)
        together = [p.name for p in tmp_path.glob("running-*") if p != marker]
        marker.unlink()
        return together

    # Two runs fit in the memory, not three: never more than two at once, although four
    # processes are allowed.
    results = parallel.process_runs(6, process, [600] * 6, _limits(4, mem_mb=1300), _failed)
    assert all(len(together) <= 1 for together in results)
    # A run larger than the cap still runs, alone.
    results = parallel.process_runs(3, process, [600] * 3, _limits(3, mem_mb=100), _failed)
    assert results == [[], [], []]


def test_a_run_whose_process_dies_fails_and_the_others_go_on():
    def process(index):
        if index == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer
        if index == 0:
            time.sleep(1)  # still running when run 1's process dies
        return ("ok", index)

    results = parallel.process_runs(4, process, [1] * 4, _limits(2), _failed)
    # The runs in flight when a process died fail (which process died is not known);
    # a new pool processes the others.
    assert [r[0] for r in results] == ["failed", "failed", "ok", "ok"]
    assert "died" in results[1][2]


@pytest.mark.parametrize(
    ("given", "environ", "expected"),
    [
        # Here: one run at a time, every CPU in it, the memory available.
        ((None, None, None), {}, (1, 8, "available")),
        ((2, None, None), {}, (2, 4, "available")),
        ((2, 3, 5000), {}, (2, 3, 5000)),
        ((None, None, None), {"OMP_NUM_THREADS": "2"}, (1, 2, "available")),
        # In a SLURM task: derived from the allocation, never above it.
        (
            (None, None, None),
            {"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "4", "SLURM_MEM_PER_NODE": "8000"},
            (4, 1, 8000),
        ),
        (
            (16, 16, 64000),
            {"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "4", "SLURM_MEM_PER_CPU": "1000"},
            (4, 4, 4000),
        ),
        ((2, None, None), {"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "4"}, (2, 2, "available")),
    ],
)
def test_resources_come_from_the_options_else_the_allocation(
    monkeypatch, given, environ, expected
):
    monkeypatch.setattr(_threads, "_available_cpus", lambda: 8)
    monkeypatch.setattr(parallel, "_available_mb", lambda: 12345)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for name, value in environ.items():
        if name == "OMP_NUM_THREADS":
            monkeypatch.setenv(name, value)
    nprocs, omp, mem_mb = given
    execution = Execution(nprocs=nprocs, omp_nthreads=omp, mem_mb=mem_mb)
    found = parallel.resources(execution, n_runs=8, environ=environ)
    memory = 12345 if expected[2] == "available" else expected[2]
    assert (found.nprocs, found.omp_nthreads, found.mem_mb) == (*expected[:2], memory)


def test_never_more_processes_than_runs(monkeypatch):
    monkeypatch.setattr(_threads, "_available_cpus", lambda: 8)
    found = parallel.resources(Execution(nprocs=6), n_runs=2, environ={})
    assert (found.nprocs, found.omp_nthreads) == (2, 4)


# ----------------------------------------------------------------------- the App itself
def _digests(out: Path) -> dict:
    found = {}
    for path in sorted(out.glob("sub-*/func/*")):
        if path.suffix in (".html",) or path.name.endswith("_provenance.json"):
            continue  # times, hosts and process ids
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        found[path.relative_to(out).as_posix()] = hashlib.sha256(data).hexdigest()
    return found


def _app(tmp_path, name, options, *extra):
    out, work = tmp_path / name / "out", tmp_path / name / "work"
    argv = [str(FMRIPREP), str(out), "participant", "-w", str(work), "--no-reports"]
    assert main([*argv, *options, *extra]) == 0
    return out


def _intervals(out: Path) -> list:
    records = [json.loads(p.read_text()) for p in sorted(out.glob("sub-*/func/*_provenance.json"))]
    return [(r["StartTime"], r["EndTime"], r["Host"]["pid"]) for r in records]


def _app_process(tmp_path, name, options, *extra) -> tuple[Path, str]:
    """The App in a process of its own with OpenBLAS's :data:`KERNEL`; its stderr."""
    out, work = tmp_path / name / "out", tmp_path / name / "work"
    argv = [str(FMRIPREP), str(out), "participant", "-w", str(work), "--no-reports"]
    done = subprocess.run(
        [sys.executable, "-m", "masker_wf.cli.run", *argv, *options, *extra],
        env={**os.environ, "OPENBLAS_CORETYPE": KERNEL},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stderr


@pytest.mark.parametrize("config", sorted(BEFORE["configurations"]))
def test_outputs_are_the_same_bytes_whatever_nprocs_and_as_before(tmp_path, config):
    recorded = BEFORE["configurations"][config]
    options = recorded["options"]
    one, _ = _app_process(tmp_path, "one", options, "--nprocs", "1")
    two, err = _app_process(tmp_path, "two", options, "--nprocs", "2")
    assert "2 run(s) at once" in err
    assert "estimated memory" in err
    assert _digests(one) == _digests(two)
    digests = _digests(two)
    for relative, digest in recorded["sha256_decompressed"][KERNEL].items():
        assert digests[relative] == digest, relative
    # Two runs were processed at the same time, in two processes: their intervals overlap.
    intervals = _intervals(two)
    assert len({pid for _, _, pid in intervals}) == 2
    overlapping = [
        (a, b)
        for i, a in enumerate(intervals)
        for b in intervals[i + 1 :]
        if a[0] < b[1] and b[0] < a[1]
    ]
    assert overlapping


def test_mem_mb_below_two_runs_processes_them_one_at_a_time(tmp_path, capsys):
    out = _app(tmp_path, "capped", ["--smoothing-fwhm", "6"], "--nprocs", "2", "--mem-mb", "1")
    err = capsys.readouterr().err
    assert "2 run(s) at once" in err
    assert "--mem-mb 1 " in err
    intervals = sorted(_intervals(out))
    assert len(intervals) == 4
    for earlier, later in itertools.pairwise(intervals):
        assert earlier[1] <= later[0]  # each run ends before the next one starts


def test_each_progress_line_reaches_an_unbuffered_stderr_in_one_write(monkeypatch):
    # With PYTHONUNBUFFERED (set here, and by many job schedulers) a text stream passes each
    # write on at once: print() wrote a message and its newline separately, so the lines of
    # runs processed side by side (--nprocs) could run together.
    import io

    from masker_wf.app import console

    class Recorder(io.RawIOBase):
        def __init__(self):
            self.writes = []

        def writable(self):
            return True

        def write(self, data):
            self.writes.append(bytes(data))
            return len(data)

    raw = Recorder()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, write_through=True))
    console.progress("[1/4] sub-01_task-rest_bold: reading inputs")
    console.warning("a warning")
    console.error("an error")
    assert raw.writes == [
        b"[1/4] sub-01_task-rest_bold: reading inputs\n",
        b"masker-wf: warning: a warning\n",
        b"masker-wf: error: an error\n",
    ]


def test_ctrl_c_stops_the_app_with_one_line_and_a_rerun_resumes(tmp_path):
    from app_helpers import FMRIPREP, PACKAGE_ROOT

    out, work = tmp_path / "out", tmp_path / "work"
    argv = [str(FMRIPREP), str(out), "participant", "-w", str(work), "--no-reports"]
    argv += ["--denoise-strategy", "simple", "--nprocs", "2"]
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "NO_ET": "1"}
    app = subprocess.Popen(
        [sys.executable, "-m", "masker_wf.cli.run", *argv],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a terminal's job is
    )
    lines = []
    for line in app.stderr:
        lines.append(line)
        if "running the masker workflow" in line:
            # Ctrl-C: SIGINT to every process of the job (the App and its workers).
            os.killpg(app.pid, signal.SIGINT)
            break
    try:
        # A worker once stayed joining its threads after the signal, and the App waited
        # for it: never wait for ever here.
        lines.append(app.communicate(timeout=120)[1])
    except subprocess.TimeoutExpired:
        os.killpg(app.pid, signal.SIGKILL)
        raise
    assert app.returncode == 130
    err = "".join(lines)
    # One line instead of the tracebacks of the App and of each worker.
    assert "Traceback" not in err
    assert err.rstrip().endswith(
        "masker-wf: interrupted; output sets already written are kept, and a rerun "
        "resumes from there"
    )
    rerun = subprocess.run(
        [sys.executable, "-m", "masker_wf.cli.run", *argv],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert len(list(out.glob("sub-*/func/*_desc-denoised_bold.nii.gz"))) == 4


# The interrupt the callback raises is the unraisable exception Python reports and drops.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_that_a_collector_callback_swallows_still_stops_the_app(
    tmp_path, monkeypatch, capsys
):
    import gc
    import weakref

    from app_helpers import FMRIPREP

    from masker_wf.app import execute
    from masker_wf.cli.run import main

    collect = gc.collect
    refs = []  # alive: the collector calls the callbacks of weak references that outlive it

    def collect_during_ctrl_c(*args):
        # What pybids' SQLAlchemy teardown met: Ctrl-C while a weakref callback of the
        # collector runs. Python prints "Exception ignored in ..." and goes on.
        class Node:
            pass

        node = Node()
        node.cycle = node
        refs.append(weakref.ref(node, lambda _: os.kill(os.getpid(), signal.SIGINT)))
        del node
        return collect(*args)

    monkeypatch.setattr(execute.gc, "collect", collect_during_ctrl_c)
    out = tmp_path / "out"
    argv = [str(FMRIPREP), str(out), "participant", "-w", str(tmp_path / "w"), "--no-reports"]
    assert main([*argv, "--participant-label", "01", "--denoise-strategy", "simple"]) == 130
    assert "masker-wf: interrupted" in capsys.readouterr().err
    assert not list(out.glob("sub-*/func/*_bold.nii.gz"))  # no run started


def test_ctrl_c_after_the_summary_leaves_the_exit_code(tmp_path):
    from app_helpers import FMRIPREP, PACKAGE_ROOT

    argv = [str(FMRIPREP), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")]
    argv += ["--participant-label", "01", "--run-id", "01", "--no-reports"]
    # Ctrl-C once the App has printed its outcome, while the process exits: it used to die
    # of the signal (a shell saw 130 after "1/1 runs succeeded").
    script = (
        "import os, signal, sys, time\n"
        "from masker_wf.cli.run import main\n"
        f"sys.argv = ['masker-wf', *{argv!r}]\n"
        "code = main()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.2)\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "NO_ET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "1/1 runs succeeded" in done.stderr
    assert "Traceback" not in done.stderr
