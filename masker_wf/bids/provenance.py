"""Provenance of one run: software versions, parameters, input hashes, times, host, cache keys."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import socket
import sys
from importlib import metadata as _metadata
from pathlib import Path

__all__ = ["cache_entries", "file_sha256", "now", "software_versions"]

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


def file_sha256(path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's content, prefixed ``sha256:``."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while chunk := stream.read(chunk_size):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def software_versions() -> dict:
    """Versions of Python and the packages the numbers depend on."""
    versions = {"python": sys.version.split()[0]}
    for package in _PACKAGES:
        try:
            versions[package] = _metadata.version(package)
        except _metadata.PackageNotFoundError:
            continue
    return versions


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
