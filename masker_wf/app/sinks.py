"""The derivatives workflow of a run: every output file written once, by a node of its own.

Each run goes through two Pydra workflows. The masker workflow
(:class:`masker_wf.workflow.MaskerSignalsWorkflow`) computes the mask, the signals and the
report data in the work directory's cache, where reruns and resumed runs find them: the
cache keeps what resuming needs (the signals), never a 4D image. :class:`RunDerivatives`
then writes the run's derivatives, each straight to its path in the output dataset:

- the cleaned BOLD by :class:`masker_wf.tasks.Unmask` from the signals, a few volumes at a
  time, compressed (python-isal, ordinary gzip) as it is produced: the 4D image is never
  written uncompressed nor held whole in memory;
- the mask, the signals ``.npy`` and the tables by :class:`masker_wf.tasks.DerivativesSink`.

Both images state the input BOLD's sform/qform codes, units (mm, s) and, for the BOLD,
the repetition time (the BIDS validator checks ``pixdim[4]`` against
``RepetitionTime``): the images of the cache carry the grid of the mask only. Each file
gets its JSON sidecar, staged and renamed into place after the data.

The derivatives workflow runs only when the outputs on disk are not already what the run
would write (see :func:`masker_wf.app.outputs.up_to_date_record`), and then in a cache of
its own that is removed afterwards: a sink served from a cache would not write its file
again (after the file was deleted, or when the other outputs of the run change).
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from fileformats.generic import File
from pydra.compose import workflow

from ..tasks import DerivativesSink, NiftiImage, Signals, Unmask

__all__ = ["RunDerivatives", "run_derivatives", "staging", "write_run_derivatives"]


def _run_derivatives(
    bold_file: NiftiImage,
    signals_file: Signals,
    mask_file: NiftiImage,
    destinations: dict,
    sidecars: dict,
    files: dict | None = None,
    t_r: float | None = None,
    compress_level: int = 1,
) -> File:
    """Write one run's derivatives, one node per output file.

    Parameters
    ----------
    bold_file : NIfTI
        The run's input BOLD (the header codes the images state).
    signals_file : Signals
        The masker workflow's signals: the cleaned BOLD is made from them.
    mask_file : NIfTI
        The masker workflow's mask.
    destinations : dict
        Output key (``bold``, ``mask``, and the keys of ``files``) -> absolute path.
    sidecars : dict
        Output key -> JSON sidecar content (written next to the file).
    files : dict, optional
        Other outputs: key -> file to write as it is (signals, tables).
    t_r : float, optional
        Repetition time (s) of the cleaned BOLD.
    compress_level : int
        isal compression level of the ``.nii.gz`` outputs.

    Returns
    -------
    bold_file : File
        The cleaned BOLD at its destination.
    """
    bold = workflow.add(
        Unmask(
            signals_file=signals_file,
            mask_file=mask_file,
            reference_file=bold_file,
            t_r=t_r,
            out_file=destinations["bold"],
            sidecar=sidecars.get("bold"),
            compress_level=compress_level,
        ),
        name="sink_bold",
    )
    workflow.add(
        DerivativesSink(
            in_file=mask_file,
            out_file=destinations["mask"],
            sidecar=sidecars.get("mask"),
            compress_level=compress_level,
            reference_file=bold_file,
        ),
        name="sink_mask",
    )
    for key, in_file in (files or {}).items():
        workflow.add(
            DerivativesSink(
                in_file=in_file, out_file=destinations[key], sidecar=sidecars.get(key)
            ),
            name=f"sink_{key}",
        )
    return bold.out_file


# Defined from a module-level function, as the masker's tasks, so that it pickles by name.
RunDerivatives = workflow.define(_run_derivatives, outputs=["bold_file"], name="RunDerivatives")


def write_run_derivatives(
    *,
    bold_file,
    signals_file,
    mask_file,
    destinations: Mapping,
    sidecars: Mapping,
    cache_root,
    files: Mapping | None = None,
    t_r: float | None = None,
    compress_level: int = 1,
) -> dict[str, Path]:
    """Write one run's derivatives with :class:`RunDerivatives`, each file once.

    Parameters
    ----------
    bold_file, signals_file, mask_file, destinations, sidecars, files, t_r, compress_level
        The inputs of :class:`RunDerivatives` (paths and mappings as they are).
    cache_root : path
        The derivatives workflow's own cache (removed afterwards).

    Returns
    -------
    dict
        Output key -> the file written.

    Raises
    ------
    OSError
        An output cannot be written (its ``filename`` names it), see
        :func:`masker_wf._steps.write_derivative`.
    """
    destinations = {key: str(path) for key, path in destinations.items()}
    task = RunDerivatives(
        bold_file=bold_file,
        signals_file=signals_file,
        mask_file=mask_file,
        destinations=destinations,
        sidecars=dict(sidecars),
        files={key: str(path) for key, path in (files or {}).items()},
        t_r=t_r,
        compress_level=compress_level,
    )
    run_derivatives(task, cache_root)
    return {key: Path(path) for key, path in destinations.items()}


@contextlib.contextmanager
def staging(work_dir) -> Iterator[Path]:
    """A directory under ``<work_dir>/derivatives/`` for one write, removed afterwards.

    It holds the files the App makes for the writers (the tables).
    """
    path = Path(work_dir) / "derivatives" / uuid.uuid4().hex
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_derivatives(task, cache_root) -> None:
    """Run a :class:`RunDerivatives` task with its cache in ``cache_root``, then remove it.

    In this process: the sinks are I/O, not worth a process (or a SLURM job) each.
    """
    from pydra.engine.submitter import Submitter

    from .._io import carry_digests
    from ..workflow import hash_cache_scope

    try:
        # Its own hash cache, removed with it: not the user's ~/.cache/pydra.
        with (
            hash_cache_scope(Path(cache_root) / "hashes"),
            Submitter(cache_root=cache_root, worker="debug") as submitter,
        ):
            submitter(task, raise_errors=True)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
    # Pydra hard-linked the outputs into that cache, and removing it unlinked them: the
    # files' status changed, not their content, so the digests the sinks computed while
    # writing them still hold (the provenance record reuses them).
    carry_digests(task.destinations.values())
