"""Provenance of one run: software versions, parameters, input hashes, times, host, cache keys."""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import socket
import sys
from importlib import metadata as _metadata
from pathlib import Path

from .._io import file_digest, stat_key

__all__ = [
    "CONFOUND_COMPONENT_PARAMETERS",
    "applied_confound_parameters",
    "cache_entries",
    "file_sha256",
    "now",
    "software_versions",
    "stat_key",
]

#: ``load_confounds`` parameters that only matter when their component is in ``strategy``
#: (nilearn 0.11.1 ignores them otherwise). ``strategy`` and ``demean`` always apply.
CONFOUND_COMPONENT_PARAMETERS = {
    "motion": ("motion",),
    "wm_csf": ("wm_csf",),
    "global_signal": ("global_signal",),
    "scrub": ("scrub", "fd_threshold", "std_dvars_threshold"),
    "compcor": ("compcor", "n_compcor"),
    "ica_aroma": ("ica_aroma",),
}

_PACKAGES = (
    "masker-wf",
    "numpy",
    "scipy",
    "nibabel",
    "pandas",
    "scikit-learn",
    "pydra",
    "pybids",
    "fileformats",
)


def now() -> str:
    """Current UTC time, ISO 8601 with a ``Z``."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def file_sha256(path) -> str:
    """SHA-256 of a file's content (of its target for a symlink), as ``sha256:<hex>``.

    :func:`masker_wf._io.file_digest`: memoised in the process by the file's stat key
    (:func:`stat_key`), so an input Pydra already hashed is not read again.
    """
    return file_digest(path)


def applied_confound_parameters(parameters) -> dict:
    """The ``load_confounds`` keyword arguments that select exactly these confounds.

    Parameters
    ----------
    parameters : mapping
        Parameters of :func:`masker_wf.bids.confounds.select_confounds` (a preset resolved
        by ``strategy_parameters``; ``columns`` of a custom strategy is left out).

    Returns
    -------
    dict
        ``strategy``, ``demean`` and the parameters of the components in ``strategy``
        only: replayed through nilearn's ``load_confounds`` they give the same regressors
        and sample mask, whatever nilearn's defaults for the other parameters.
    """
    strategy = list(parameters["strategy"])
    applied = {"strategy": strategy}
    for component, names in CONFOUND_COMPONENT_PARAMETERS.items():
        if component in strategy:
            applied.update({name: parameters[name] for name in names})
    applied["demean"] = parameters.get("demean", True)
    return applied


@functools.cache
def _installed_versions() -> tuple:
    # importlib.metadata scans every directory of sys.path for each package (0.7 ms
    # a package): looked up once per process, not once per run and per subject page.
    versions = [("python", sys.version.split()[0])]
    for package in _PACKAGES:
        try:
            versions.append((package, _metadata.version(package)))
        except _metadata.PackageNotFoundError:
            continue
    return tuple(versions)


def software_versions() -> dict:
    """Versions of Python and the packages the numbers depend on."""
    return dict(_installed_versions())


def host() -> dict:
    """Where the run happened."""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }


def cache_entries(cache_root) -> set[str]:
    """Names of the Pydra task directories under ``cache_root`` (their names hold the hash)."""
    root = Path(cache_root)
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir() if p.is_dir() and p.name != "hashes"}
