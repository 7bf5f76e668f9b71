"""The derivatives workflow of a run: every output file written by a ``DerivativesSink`` node.

Each run goes through two Pydra workflows. The masker workflow
(:class:`masker_wf.workflow.MaskerWorkflow`) computes the mask, the signals and the cleaned
BOLD (uncompressed) in the work directory's cache, where reruns and resumed runs find them.
:class:`RunDerivatives` then writes the run's derivatives: one
:class:`masker_wf.tasks.DerivativesSink` node per output file (cleaned BOLD ``.nii.gz``,
mask ``.nii.gz``, signals ``.npy``, regressors and censored volumes ``.tsv``), each with its
JSON sidecar, staged and renamed into place. The cleaned BOLD is compressed once, by its sink.

The two NIfTI outputs first go through :class:`MatchInputHeader`: the images of the cache
carry the grid of the mask they were made with, while a derivative states the input BOLD's
sform/qform codes, units (mm, s) and repetition time (the BIDS validator checks
``pixdim[4]`` against ``RepetitionTime``).

The derivatives workflow runs only when the outputs on disk are not already what the run
would write (see :func:`masker_wf.app.outputs.up_to_date_record`), and then in a cache of
its own that is removed afterwards: a sink served from a cache would not write its file
again (after the file was deleted, or when the other outputs of the run change).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from fileformats.generic import File
from fileformats.medimage import Nifti1
from pydra.compose import python, workflow

from ..tasks import DerivativesSink, NiftiImage

__all__ = [
    "MatchInputHeader",
    "RunDerivatives",
    "run_derivatives",
    "staging",
    "with_input_header",
]


def with_input_header(img, in_header, t_r=None):
    """Copy of ``img`` with the input's sform/qform codes and xyzt units (mm, s).

    Parameters
    ----------
    img : nibabel.Nifti1Image
    in_header : nibabel.Nifti1Header
        Header of the run's input BOLD.
    t_r : float, optional
        Repetition time (s): the 4th voxel size of a 4D image.
    """
    import nibabel as nib

    img = nib.Nifti1Image(img.dataobj, img.affine, img.header)
    space, unit = in_header.get_xyzt_units()
    img.header.set_xyzt_units(
        space if space != "unknown" else "mm", unit if unit != "unknown" else "sec"
    )
    if t_r is not None and img.ndim == 4:
        img.header.set_zooms((*img.header.get_zooms()[:3], float(t_r)))
    sform_code, qform_code = int(in_header["sform_code"]), int(in_header["qform_code"])
    if not (sform_code or qform_code):  # neither set: keep the affine readable as 'scanner'
        sform_code = 1
    affine = img.affine
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)
    return img


def _match_input_header(
    in_file: NiftiImage, reference_file: NiftiImage, t_r: float | None = None
) -> Nifti1:
    """``in_file`` with the sform/qform codes and xyzt units of ``reference_file``.

    Parameters
    ----------
    in_file : NIfTI
        Image of the masker workflow (its data and affine are kept).
    reference_file : NIfTI
        The run's input BOLD.
    t_r : float, optional
        Repetition time (s), stored as the 4th voxel size of a 4D image.

    Returns
    -------
    out_file : NIfTI
        Uncompressed ``image.nii`` (its sink compresses it).
    """
    import nibabel as nib

    from .._io import save_img

    reference = nib.load(str(reference_file)).header
    image = with_input_header(nib.load(str(in_file)), reference, t_r)
    return save_img(image, os.path.abspath("image.nii"))


MatchInputHeader = python.define(
    _match_input_header, outputs=["out_file"], name="MatchInputHeader"
)


def _run_derivatives(
    bold_file: NiftiImage,
    cleaned_bold_file: NiftiImage,
    mask_file: NiftiImage,
    destinations: dict,
    sidecars: dict,
    files: dict | None = None,
    t_r: float | None = None,
) -> File:
    """Write one run's derivatives, one sink per output file.

    Parameters
    ----------
    bold_file : NIfTI
        The run's input BOLD (the header the images take).
    cleaned_bold_file, mask_file : NIfTI
        The masker workflow's cleaned BOLD and mask.
    destinations : dict
        Output key (``bold``, ``mask``, and the keys of ``files``) -> absolute path.
    sidecars : dict
        Output key -> JSON sidecar content (written next to the file).
    files : dict, optional
        Other outputs: key -> file to write as it is (signals, tables).
    t_r : float, optional
        Repetition time (s) of the cleaned BOLD.

    Returns
    -------
    bold_file : File
        The cleaned BOLD at its destination.
    """
    images = {"bold": (cleaned_bold_file, t_r), "mask": (mask_file, None)}
    written = {}
    for key, (image, image_t_r) in images.items():
        header = workflow.add(
            MatchInputHeader(in_file=image, reference_file=bold_file, t_r=image_t_r),
            name=f"{key}_header",
        )
        written[key] = workflow.add(
            DerivativesSink(
                in_file=header.out_file, out_file=destinations[key], sidecar=sidecars.get(key)
            ),
            name=f"sink_{key}",
        )
    for key, in_file in (files or {}).items():
        workflow.add(
            DerivativesSink(
                in_file=in_file, out_file=destinations[key], sidecar=sidecars.get(key)
            ),
            name=f"sink_{key}",
        )
    return written["bold"].out_file


# Defined from a module-level function, as the masker's tasks, so that it pickles by name.
RunDerivatives = workflow.define(_run_derivatives, outputs=["bold_file"], name="RunDerivatives")


@contextlib.contextmanager
def staging(work_dir) -> Iterator[Path]:
    """A directory under ``<work_dir>/derivatives/`` for one write, removed afterwards.

    It holds the files the App makes for the sinks (the tables) and the derivatives
    workflow's own cache.
    """
    path = Path(work_dir) / "derivatives" / uuid.uuid4().hex
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_derivatives(task, cache_root) -> None:
    """Run a :class:`RunDerivatives` task with its cache in ``cache_root``.

    In this process: the sinks are I/O, not worth a process (or a SLURM job) each.
    """
    from pydra.engine.submitter import Submitter

    with Submitter(cache_root=cache_root, worker="debug") as submitter:
        submitter(task, raise_errors=True)
