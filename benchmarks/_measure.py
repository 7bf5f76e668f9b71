"""Run a benchmark contender in a fresh process and measure its wall time and memory.

Peak memory is the largest sum of the resident set sizes of the process and all its
descendants, sampled every 20 ms from ``/proc``: a contender may run several processes at
once (the App with ``--nprocs 2``), and that sum is what the machine must hold. Children
also report their own ``ru_maxrss`` (exact, from the kernel, one process at a time), see
:func:`self_peak_gb`.
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from pathlib import Path

__all__ = ["byte_compile", "cpu_seconds", "measure", "self_peak_gb"]

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and its descendants (processes that vanish count 0)."""
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        total += pages * _PAGE_BYTES
        stack += _children(pid)
    return total


def measure(command, *, env=None, cwd=None, interval=0.02) -> dict:
    """Run ``command``; return seconds, peak memory (GB) and its output.

    Raises
    ------
    RuntimeError
        The command failed (its stderr's tail in the message).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(process.pid))
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]}... failed ({process.returncode}):\n{stderr[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The process tree's CPU time (waited-for descendants are accumulated into it).
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_gb": peak[0] / 1024**3,
        "stdout": stdout,
        "stderr": stderr,
    }


def byte_compile(*extra_trees) -> str:
    """Byte-compile the ``masker_wf`` the contenders import (and ``extra_trees``), once.

    ``pip install`` byte-compiles a package; an editable install or a ``PYTHONPATH`` tree
    is compiled at its first import, unless ``PYTHONDONTWRITEBYTECODE`` is set (as on the
    benchmark machine), in which case every contender's process would compile masker_wf
    from source (about 0.8 s) while nilearn's is read from its installed ``.pyc`` files.
    Compiling first measures the package as users have it installed.

    Returns
    -------
    str
        One line for the benchmark's log: what was compiled.
    """
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("masker_wf")
    trees = [Path(spec.origin).parent] if spec is not None and spec.origin else []
    trees += [Path(tree) / "masker_wf" for tree in extra_trees if tree is not None]
    for tree in trees:
        compileall.compile_dir(str(tree), quiet=1)
    return "byte-compiled as pip install does: " + ", ".join(str(t) for t in trees)


def self_peak_gb() -> float:
    """Largest resident set (GB) of this process or of one of its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024**2


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
