"""The derivatives of a run: every output file written once, by the step that makes it.

Each run goes through the masker workflow (:class:`masker_wf.workflow.MaskerSignalsWorkflow`),
which computes the mask, the signals and the report data in the work directory's Pydra
cache, where reruns and resumed runs find them: the cache keeps what resuming needs (the
signals), never a 4D image. :func:`write_run_derivatives` then writes the run's
derivatives, each straight to its path in the run's staging directory:

- the cleaned BOLD by :func:`masker_wf._steps.unmask` from the signals, a few volumes at a
  time, compressed (python-isal, ordinary gzip) as it is produced: the 4D image is never
  written uncompressed nor held whole in memory;
- the mask, the signals ``.npy`` and the tables by :func:`masker_wf._steps.write_derivative`.

These are the functions the Pydra sinks (:class:`masker_wf.tasks.Unmask` with ``out_file``,
:class:`masker_wf.tasks.DerivativesSink`) run, called here directly: a sink's cache would
be thrown away (a sink served from a cache would not write its file again), and a Pydra
task costs more than writing a small run's file (about 20 ms each, 0.1 s of a tiny run's
0.7 s).

Both images state the input BOLD's sform/qform codes, units (mm, s) and, for the BOLD,
the repetition time (the BIDS validator checks ``pixdim[4]`` against ``RepetitionTime``):
the images of the cache carry the grid of the mask only. Each file gets its JSON sidecar,
written after the data. Every writer hashes what it writes as it writes it (the provenance
record reuses those digests).

The derivatives are written only when the outputs on disk are not already what the run
would write (see :func:`masker_wf.app.outputs.up_to_date_record`).
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from .. import _steps

__all__ = ["staging", "write_run_derivatives"]


def write_run_derivatives(
    *,
    bold_file,
    signals_file,
    mask_file,
    destinations: Mapping,
    sidecars: Mapping,
    files: Mapping | None = None,
    t_r: float | None = None,
    compress_level: int = 1,
) -> dict[str, Path]:
    """Write one run's derivatives, each file once, the cleaned BOLD first.

    Parameters
    ----------
    bold_file : path
        The run's input BOLD (the header codes the images state).
    signals_file : path
        The masker workflow's signals: the cleaned BOLD is made from them.
    mask_file : path
        The masker workflow's mask.
    destinations : mapping
        Output key (``bold``, ``mask``, and the keys of ``files``) -> absolute path.
    sidecars : mapping
        Output key -> JSON sidecar content (written next to the file).
    files : mapping, optional
        Other outputs: key -> file to write as it is (signals, tables).
    t_r : float, optional
        Repetition time (s) of the cleaned BOLD.
    compress_level : int
        isal compression level of the ``.nii.gz`` outputs.

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
    written = {
        "bold": _steps.unmask(
            signals_file,
            mask_file,
            destinations["bold"],
            reference_file=bold_file,
            t_r=t_r,
            sidecar=sidecars.get("bold"),
            compress_level=compress_level,
        ),
        "mask": _steps.write_derivative(
            mask_file,
            destinations["mask"],
            sidecar=sidecars.get("mask"),
            compress_level=compress_level,
            reference_file=bold_file,
        ),
    }
    for key, in_file in (files or {}).items():
        written[key] = _steps.write_derivative(
            in_file, destinations[key], sidecar=sidecars.get(key)
        )
    return written


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
