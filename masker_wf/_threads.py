"""How many threads the core may use.

Part of the core: standard library only.

The number is read at call time, not at import, from what the operating system lets this
process run on (its CPU affinity: a SLURM allocation or ``taskset``), lowered by the
standard ``OMP_NUM_THREADS`` variable when it is set. That variable is how a thread budget
reaches worker processes (the BIDS App's ``--omp-nthreads``, ``sbatch``'s environment,
nipype's ``n_procs`` conventions) without being a task input: changing it never changes a
Pydra or nipype cache key, and the results do not depend on it.
"""

from __future__ import annotations

import os

__all__ = ["default_n_threads"]


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on macOS or Windows
        return max(1, os.cpu_count() or 1)


def _omp_num_threads() -> int | None:
    """The first level of ``OMP_NUM_THREADS`` ("4" or "4,2"), or None when unset or invalid."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number >= 1 else None


def default_n_threads() -> int:
    """Number of threads the core's parallel loops use by default.

    Returns
    -------
    int
        The number of CPUs this process may run on (``os.sched_getaffinity``, else
        ``os.cpu_count()``), capped by ``OMP_NUM_THREADS`` when that is a positive integer;
        at least 1.
    """
    cpus = _available_cpus()
    limit = _omp_num_threads()
    return cpus if limit is None else min(cpus, limit)
