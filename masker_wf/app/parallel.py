"""Runs side by side: how many at once, threads in each, and the memory they may use.

One run's workflow is a chain (mask, clean, write) with nothing to run in parallel but the
threads inside its steps, so the App's parallelism is over runs: ``--nprocs N`` processes up
to N runs at once, each in a process of its own (:func:`process_runs`); ``--omp-nthreads``
sets the threads inside a run (exported as ``OMP_NUM_THREADS``, which
:func:`masker_wf._threads.default_n_threads` reads, and applied to BLAS); ``--mem-mb`` caps
the runs in flight by the sum of their estimated memory (:func:`estimate_run_memory_mb`,
logged for every run).

Inside a SLURM task the same options apply; the ones not given are derived from the
allocation (``SLURM_CPUS_PER_TASK``, ``SLURM_MEM_PER_NODE`` / ``SLURM_MEM_PER_CPU``), and
none exceeds it (see :func:`resources`).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from .. import _threads
from . import console
from .errors import check_interrupted

__all__ = ["Resources", "estimate_run_memory_mb", "process_runs", "resources"]

#: Memory of a run's process besides its data (Python, numpy, scipy, nibabel, pandas,
#: Pydra, matplotlib), MB.
BASE_MEMORY_MB = 400
#: Blocks of volumes in flight while a ``.nii.gz`` is streamed (read ahead, being
#: smoothed, being compressed), MB.
STREAM_MEMORY_MB = 200
#: Copies of the masked signals a run holds at its peak (raw, cleaned, and the
#: filter's work arrays).
SIGNAL_COPIES = 2.5


@dataclass(frozen=True)
class Resources:
    """What an invocation may use, and where each number came from.

    Attributes
    ----------
    nprocs : int
        Runs processed at once.
    omp_nthreads : int
        Threads inside each run.
    mem_mb : int or None
        Memory the runs in flight may use together (None: no cap).
    cpus : int
        CPUs available (the SLURM allocation in a SLURM task).
    origin : str
        ``"options"``, ``"SLURM allocation"`` or ``"this machine"``, for the log.
    """

    nprocs: int
    omp_nthreads: int
    mem_mb: int | None
    cpus: int
    origin: str

    def describe(self) -> str:
        """One log line."""
        memory = "no memory cap" if self.mem_mb is None else f"--mem-mb {self.mem_mb}"
        return (
            f"{self.nprocs} run(s) at once, {self.omp_nthreads} thread(s) each, {memory} "
            f"({self.cpus} CPU(s); {self.origin})"
        )


def _slurm_allocation(environ: Mapping) -> tuple[int | None, int | None]:
    """CPUs and memory (MB) SLURM granted this task, when it runs in one."""

    def number(name):
        try:
            return int(str(environ.get(name, "")).split("(")[0].split(",")[0])
        except ValueError:
            return None

    if environ.get("SLURM_JOB_ID") is None:
        return None, None
    cpus = number("SLURM_CPUS_PER_TASK") or number("SLURM_CPUS_ON_NODE")
    memory = number("SLURM_MEM_PER_NODE")
    if memory is None and number("SLURM_MEM_PER_CPU") is not None:
        memory = number("SLURM_MEM_PER_CPU") * (cpus or 1)
    return cpus, memory


def _available_mb() -> int | None:
    """``MemAvailable`` of this machine (MB), or None where /proc/meminfo is absent."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _capped(value, limit, name, notes):
    if value is None or limit is None or value <= limit:
        return value
    notes.append(f"{name} {value} is above the SLURM allocation's {limit}: using {limit}")
    return limit


def resources(execution, n_runs: int, environ: Mapping | None = None) -> Resources:
    """The runs at once, threads per run and memory cap of an invocation.

    Parameters
    ----------
    execution : masker_wf.app.settings.Execution
        ``nprocs``, ``omp_nthreads`` and ``mem_mb`` as given (None: not given).
    n_runs : int
        Runs to process (never more processes than runs).
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    Resources
        Given values are used, but never above a SLURM allocation. Otherwise: one run at
        a time (in a SLURM task: as many as its CPUs); the CPUs divided among the runs at
        once for the threads (capped by an ``OMP_NUM_THREADS`` already set); the memory
        available (in a SLURM task: its allocation).
    """
    environ = os.environ if environ is None else environ
    slurm_cpus, slurm_mb = _slurm_allocation(environ)
    cpus = _threads._available_cpus()
    if slurm_cpus is not None:
        cpus = min(cpus, slurm_cpus)
    notes: list[str] = []
    nprocs = _capped(execution.nprocs, slurm_cpus, "--nprocs", notes)
    omp = _capped(execution.omp_nthreads, slurm_cpus, "--omp-nthreads", notes)
    mem_mb = _capped(execution.mem_mb, slurm_mb, "--mem-mb", notes)
    for note in notes:
        console.warning(note)
    given = (execution.nprocs, execution.omp_nthreads, execution.mem_mb)
    origin = "options" if all(v is not None for v in given) else "this machine"
    if slurm_cpus is not None and not all(v is not None for v in given):
        origin = "SLURM allocation"
    if nprocs is None:
        nprocs = cpus if slurm_cpus is not None else 1
    nprocs = max(1, min(nprocs, max(1, n_runs)))
    if omp is None:
        omp = max(1, cpus // nprocs)
        inherited = _threads._omp_num_threads()
        if inherited is not None:
            omp = min(omp, inherited)
    if mem_mb is None:
        mem_mb = slurm_mb if slurm_mb is not None else _available_mb()
    return Resources(nprocs=nprocs, omp_nthreads=omp, mem_mb=mem_mb, cpus=cpus, origin=origin)


def estimate_run_memory_mb(run, settings) -> int:
    """Peak memory of processing ``run`` (MB), from its headers and the parameters.

    A ``.nii.gz`` BOLD is streamed, so the run holds its masked signals (a few copies)
    and blocks of volumes; the whole 4D array is added when a step needs it in memory
    (an uncompressed BOLD, which is memory-mapped and read through; a mask computed from
    the BOLD; resampling; high-variance confounds).

    Parameters
    ----------
    run : masker_wf.bids.layout.RunInputs
    settings : masker_wf.app.settings.Settings

    Returns
    -------
    int
    """
    import nibabel as nib
    import numpy as np

    try:
        shape = nib.load(run.bold_file).header.get_data_shape()
    except Exception:  # an unreadable BOLD fails its run, with its reason, later
        return BASE_MEMORY_MB
    n_volumes = int(shape[3]) if len(shape) > 3 else 1
    grid = math.prod(int(n) for n in shape[:3])
    masker = settings.masker
    mask_file = settings.mask_img or (run.mask_file if settings.selection.use_input_mask else None)
    whole = (
        mask_file is None
        or not str(run.bold_file).endswith(".gz")
        or masker.get("target_affine") is not None
        or masker.get("target_shape") is not None
        or bool(masker.get("high_variance_confounds"))
    )
    voxels = grid
    if mask_file is not None:
        with contextlib.suppress(Exception):  # an unreadable mask fails its run, later
            voxels = int(np.count_nonzero(np.asanyarray(nib.load(mask_file).dataobj)))
    signal_mb = voxels * n_volumes * 4 / 2**20
    whole_mb = grid * n_volumes * 4 / 2**20 if whole else 0.0
    return math.ceil(BASE_MEMORY_MB + STREAM_MEMORY_MB + SIGNAL_COPIES * signal_mb + whole_mb)


@contextlib.contextmanager
def thread_budget(n_threads: int):
    """``OMP_NUM_THREADS`` and the BLAS pools at ``n_threads`` for a block, then restored."""
    from threadpoolctl import threadpool_limits

    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(n_threads)
    try:
        with threadpool_limits(limits=n_threads):
            yield
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous


# What the forked workers run: set by process_runs before the pool starts, inherited by
# the processes (nothing of it is pickled).
_WORK: dict = {}


def _stop_quietly(signum, frame):
    # At once, as a kill would (output sets are written whole or not at all): an exception
    # here could leave the process joining its threads (a digest thread waiting for work)
    # while the App waits for it.
    os._exit(128 + signum)


def _start_worker(n_threads: int, setup) -> None:
    from threadpoolctl import threadpool_limits

    from .workers import die_with_parent

    die_with_parent()
    # Ctrl-C reaches every process of the terminal's group: the App says it was
    # interrupted; a worker stops without printing a traceback of its own.
    signal.signal(signal.SIGINT, _stop_quietly)
    # The budget of this process's threads: read by masker_wf._threads, applied to BLAS.
    os.environ["OMP_NUM_THREADS"] = str(n_threads)
    threadpool_limits(limits=n_threads)
    if setup is not None:
        setup()


def _work_on(index: int):
    return _WORK["process"](index)


def process_runs(
    n_runs: int,
    process: Callable[[int], object],
    estimates_mb: Sequence[int],
    limits: Resources,
    failed: Callable[[int, str], object],
    setup: Callable[[], object] | None = None,
) -> list:
    """``process(i)`` for every run ``i``, up to ``limits.nprocs`` at once; results in order.

    Whenever a process is free, the first waiting run whose estimated memory fits beside
    the runs in flight under ``limits.mem_mb`` starts (a run that alone exceeds the cap
    still runs, alone). With one process, runs are processed here, one after the other.

    Parameters
    ----------
    n_runs : int
    process : callable
        ``process(i) -> result`` of run ``i``; never raises for a bad run.
    estimates_mb : sequence of int
        Estimated memory of each run.
    limits : Resources
    failed : callable
        ``failed(i, reason) -> result`` for a run whose process died (killed for lack of
        memory, say).
    setup : callable, optional
        Called once where the runs are processed (here, or in each worker process)
        before the first run: what may start threads (a background import) goes here,
        never before a fork.

    Returns
    -------
    list
        The results, in run order.
    """
    if limits.nprocs == 1 or n_runs <= 1:
        if setup is not None:
            setup()
        with thread_budget(limits.omp_nthreads):
            results = []
            for i in range(n_runs):
                check_interrupted()  # a Ctrl-C that a callback swallowed stops before the next
                results.append(process(i))
            return results
    results: dict[int, object] = {}
    waiting = list(range(n_runs))
    _WORK["process"] = process
    try:
        while waiting:
            # A pool broken by a dead process is replaced for the runs still waiting.
            _run_pool(waiting, estimates_mb, limits, results, failed, setup)
    finally:
        _WORK.clear()
    return [results[i] for i in range(n_runs)]


def _next_fitting(waiting, estimates_mb, in_flight_mb, running, limits) -> int | None:
    """Position in ``waiting`` of the first run that fits, or None (wait for one to end)."""
    if len(running) >= limits.nprocs:
        return None
    for position, index in enumerate(waiting):
        if limits.mem_mb is None or in_flight_mb + estimates_mb[index] <= limits.mem_mb:
            return position
    return 0 if not running else None


def _run_pool(waiting, estimates_mb, limits, results, failed, setup) -> None:
    # Forked: the workers inherit the invocation's state (plan, settings, the process
    # function) instead of unpickling it, and start in milliseconds.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(
        limits.nprocs,
        mp_context=context,
        initializer=_start_worker,
        initargs=(limits.omp_nthreads, setup),
    ) as pool:
        try:
            _fill_pool(pool, waiting, estimates_mb, limits, results, failed)
        except KeyboardInterrupt:
            # Ctrl-C may reach this process alone (kill -INT <pid>): its workers stop now,
            # not after their runs (the pool's exit would wait for them).
            for child in multiprocessing.active_children():
                child.kill()
            raise


def _fill_pool(pool, waiting, estimates_mb, limits, results, failed) -> None:
    """Submit the waiting runs as processes and memory allow; gather the results."""
    running: dict = {}
    while waiting or running:
        check_interrupted()
        in_flight = sum(estimates_mb[i] for i in running.values())
        position = _next_fitting(waiting, estimates_mb, in_flight, running, limits)
        if position is not None:
            index = waiting.pop(position)
            running[pool.submit(_work_on, index)] = index
            continue
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            index = running.pop(future)
            try:
                results[index] = future.result()
            except BrokenProcessPool:
                # A process was killed (by the kernel for lack of memory, say): which
                # one is not known, so the runs in flight fail; a new pool goes on.
                for lost in [index, *running.values()]:
                    results[lost] = failed(
                        lost,
                        "a run's process died while it ran (out of memory? "
                        "lower --nprocs or --mem-mb)",
                    )
                return
