"""Typed Pydra tasks for the masker steps.

Each task is a thin face over one function of :mod:`masker_wf._steps`: it names
its output file inside the task's own cache directory (Pydra runs the function
there) and returns it. Inputs and outputs are ``fileformats`` types, so that
Pydra hashes file *contents* and caches every step:

==============================  ==============================================
task                            inputs → output
==============================  ==============================================
:class:`ComputeMask`            BOLD image(s) → ``mask_file`` (NIfTI, uint8)
:class:`Resample`               image (+ target grid, reference or mask) →
                                ``out_file``
:class:`Smooth`                 image + FWHM (mm) (+ mask) → ``out_file``
:class:`SmoothSignals`          BOLD + FWHM + mask → ``signals_file``: the mask
                                voxels' smoothed time series (``.npy``)
:class:`HighVarianceConfounds`  raw BOLD → ``confounds_file`` (``.npy``)
:class:`CleanSignals`           BOLD + mask (+ confounds, sample mask,
                                cleaning) → ``signals_file`` (``.npy``, see
                                :mod:`masker_wf._io`) and ``qc_file``
:class:`Unmask`                 signals + mask → ``out_file`` (4D NIfTI), in
                                the task's directory or, with ``out_file``, at
                                a derivative's path
:class:`DerivativesSink`        any file → ``out_file`` at its final
                                (derivative) path, atomically, gzipped for
                                ``.gz``, with a sidecar
==============================  ==============================================

With a ``mask_file``, :class:`Resample` and :class:`Smooth` write what the masker
needs of the BOLD only: the window of the mask's grid it is masked on (the mask's
bounding box, plus one voxel for a resampled BOLD, as nilearn), uncompressed, in the
data's dtype (float32 for float32 BOLD), with the values of the full field of view;
:class:`CleanSignals` with ``bold_window=True`` masks such a window where it lies.
:class:`SmoothSignals` goes one step further and writes the smoothed time series of the
mask's voxels (less than half the window's bytes), which :class:`CleanSignals` cleans as
they are (``extracted_file``): the workflow's smoothing node.

Images are accepted as uncompressed ``.nii`` (:class:`fileformats.medimage.Nifti1`)
or gzipped ``.nii.gz`` (:class:`fileformats.medimage.NiftiGz`). Outputs are
written as ``.nii`` unless ``out_suffix=".nii.gz"``: uncompressed files are much
faster to write, read and hash (gzip dominates the cost of a 1 GB image).

Masker parameters have the names, defaults, allowed values and documentation of
:mod:`masker_wf._spec`. A failing step raises its exception (see
:mod:`masker_wf._steps`: the validator's ValueError/TypeError as the estimator raises
it, with ``step`` and ``file`` set, or a StepError) and leaves it pickled in the task's
cache directory, where :func:`masker_wf.workflow.run_masker_workflow` finds it when a
worker process reported the failure as text.

File hashing
------------
Pydra identifies a file input by a hash of its whole content, memoised per
(path, mtime) in its hash cache. Its stock hash reads the file in 8 KiB pieces
through one BLAKE2b stream: about 2 s for a 1.3 GB BOLD run, as long as the whole
cleaning. :func:`use_segmented_hash` registers with Pydra, for the file types of
these tasks (``Nifti1``, ``NiftiGz`` and the generic ``BinaryFile`` of the signals,
exact types only), a hash that still covers every byte: the SHA-256 of the file,
fed in 64 MiB segments of a memory map (about 1 GB/s; 0.4 s for a fMRIPrep
``.nii.gz`` of 300 MNI 2 mm volumes), which is :func:`masker_wf._io.file_digest`:
computed once per file content in the process, known without reading for the files
the steps wrote (they hash what they write), and the same digest the BIDS App's
provenance record states, so that each input is hashed once.

It is opt-in, because Pydra's serializer registry is process-wide: once registered,
every Pydra task of the process, not only these ones, hashes those types this way,
so its cache keys change (a cache built with the other hash is recomputed, never
wrongly reused). Importing this module registers nothing. fileformats would keep
the change to this project's tasks if they used format classes of their own, but it
refuses format classes defined outside its ``fileformats`` namespace (it raises
``FormatDefinitionError`` when one is instantiated).
"""

import os
import typing as ty

from fileformats.generic import BinaryFile, File
from fileformats.medimage import Nifti1, NiftiGz
from pydra.compose import python
from pydra.utils.hash import CacheKey, bytes_repr_fileset, register_serializer

from . import _io, _spec, _steps
from ._io import COMPRESS_LEVELS

__all__ = [
    "MASK_STRATEGY_VALUES",
    "CleanSignals",
    "ComputeMask",
    "DerivativesSink",
    "HighVarianceConfounds",
    "NiftiImage",
    "QCData",
    "Resample",
    "Signals",
    "Smooth",
    "SmoothSignals",
    "TextTable",
    "Unmask",
    "segmented_hash_enabled",
    "use_segmented_hash",
]

#: A NIfTI-1 image, uncompressed (``.nii``) or gzipped (``.nii.gz``).
NiftiImage = Nifti1 | NiftiGz

#: Confounds table or sample-mask file (``.tsv``, ``.csv``, ``.txt``, ``.npy``).
TextTable = File


#: Masked time series: a NumPy ``.npy`` array ``(n_volumes, n_voxels)``, C order, with
#: the dtype of the data (float32 for float32 BOLD); see :mod:`masker_wf._io`.
#: fileformats has no ``.npy`` format (and no format class can be defined outside its
#: namespace), so the type is the generic binary file.
Signals = BinaryFile

#: Report data of one extraction: a NumPy ``.npz`` archive (see :func:`masker_wf._io.save_qc`).
QCData = BinaryFile

#: Values the ``mask_strategy`` inputs accept (the spec's).
MASK_STRATEGY_VALUES = _spec.by_name("mask_strategy").choices


# ------------------------------------------------------------------------------ hashing
# Bytes of the memory map hashed per update (hashlib releases the GIL on large buffers).
_HASH_SEGMENT_BYTES = 64 * 1024**2
# Exact types only: other formats (Nifti2, DICOM...) and subclasses keep Pydra's own hash.
_SEGMENT_HASHED_TYPES = (Nifti1, NiftiGz, BinaryFile)
_registered = False


def _bytes_repr_segmented(fileset, cache) -> ty.Iterator[bytes | tuple]:
    """Pydra byte representation of a file set: names and SHA-256 digests of its files.

    The digests are :func:`masker_wf._io.file_digest`'s: computed once per file content
    in the process and shared with the provenance record (and known without reading for
    a file this process wrote).
    """
    if type(fileset) not in _SEGMENT_HASHED_TYPES:
        yield from bytes_repr_fileset(fileset, cache)
        return
    fspaths = sorted(fileset.fspaths)
    # Keyed on the file a symlink points to (its resolved path, size, times, inode), not on
    # the link's own lstat(): a rewritten target, or a link pointed elsewhere (DataLad,
    # git-annex), must be hashed again. Tagged so that Pydra's hash never shares an entry.
    targets = [os.path.realpath(p) for p in fspaths]
    stats = [os.stat(p) for p in targets]
    yield CacheKey(
        (
            "masker_wf-sha256-segments-target",
            *targets,
            *((s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for s in stats),
        )
    )
    cls = type(fileset)
    yield f"{cls.__module__}.{cls.__name__}:".encode()
    hidden = {"ignore_hidden_files": False, "ignore_hidden_dirs": False}
    # byte_chunks gives the relative names Pydra hashes (its content iterators are lazy
    # and left unread); all_file_paths gives the same files in the same order.
    names = (name for name, _ in fileset.byte_chunks(**hidden))
    for name, path in zip(names, fileset.all_file_paths(**hidden), strict=True):
        yield f",'{name}'=".encode()
        yield _io.file_digest(path, piece_bytes=_HASH_SEGMENT_BYTES).encode()


def use_segmented_hash() -> None:
    """Hash ``Nifti1``, ``NiftiGz`` and ``BinaryFile`` inputs by SHA-256 segments, in Pydra.

    Opt-in and process-wide: from this call on, every Pydra task of this process (not only
    masker-wf's) hashes files of exactly these types with the segmented hash, so their
    cache keys differ from stock Pydra's (caches are recomputed, never wrongly reused).
    Idempotent. Process-pool workers forked afterwards inherit it; with another start
    method, call it in each worker (as :func:`masker_wf.workflow.run_masker_workflow`
    does with ``segmented_hash=True``), or the parent's and the workers' hashes differ.
    """
    global _registered
    if _registered:
        return
    for file_type in _SEGMENT_HASHED_TYPES:
        register_serializer(file_type)(_bytes_repr_segmented)
    _registered = True


def segmented_hash_enabled() -> bool:
    """Whether :func:`use_segmented_hash` was called in this process."""
    return _registered


# -------------------------------------------------------------------------------- tasks
def _image_name(stem: str, out_suffix: str) -> str:
    if out_suffix not in (".nii", ".nii.gz"):
        raise ValueError(f"out_suffix must be '.nii' or '.nii.gz', got {out_suffix!r}.")
    # Pydra runs the function inside the task's cache directory: name the output there.
    return os.path.abspath(stem + out_suffix)


def _affine(target_affine):
    # Pydra inputs hold plain nested lists (hashable, picklable); the steps take arrays.
    return None if target_affine is None else [list(map(float, row)) for row in target_affine]


def _run(step, *args, **kwargs):
    # Pydra makes the task's cache directory the working directory: the failure is
    # recorded there for run_masker_workflow.
    return _steps.call_step(step, os.getcwd(), *args, **kwargs)


def _recorded(*paths):
    """Leave beside each output the digest computed while writing it (see
    :func:`masker_wf._io.record_digest`): the next node's input hash, computed in the
    submitting process when a process pool runs the nodes, then reads nothing.
    """
    for path in paths:
        _io.record_digest(path)
    return paths[0] if len(paths) == 1 else paths


def _choices(values) -> python.arg:
    # Explicit fields only add the allowed values: Pydra takes the type and the default
    # from the signature, the help from the (spec-filled) docstring. Only for values of
    # one type: Pydra sorts them when it hashes the task class.
    return python.arg(allowed_values=values)


# The task functions are module-level functions reachable by name (``_clean_signals``,
# not the task class ``CleanSignals``) so that cloudpickle sends them to the cf
# worker's processes by reference: a function pickled by value loses its source,
# its Pydra hash changes, and the cache misses. fill_doc puts the spec's entries in
# the docstrings before python.define reads the help texts from them.
@_spec.fill_doc
def _compute_mask(
    bold_files: list[NiftiImage],
    mask_strategy: str = "background",
    mask_args: dict | None = None,
    target_affine: list[list[float]] | None = None,
    target_shape: list[int] | None = None,
    out_suffix: str = ".nii",
) -> NiftiImage:
    """Compute a brain mask from BOLD image(s) (see :func:`masker_wf._steps.compute_mask`).

    Parameters
    ----------
    bold_files : list of NIfTI
        4D BOLD image, or 3D images concatenated along time.
    %(parameters:ComputeMask)s
    out_suffix : str
        ".nii" (default, fast) or ".nii.gz".

    Returns
    -------
    mask_file : NIfTI
        Binary mask (uint8).
    """
    return _recorded(
        _run(
            _steps.compute_mask,
            [str(f) for f in bold_files],
            _image_name("mask", out_suffix),
            mask_strategy=mask_strategy,
            mask_args=mask_args,
            target_affine=_affine(target_affine),
            target_shape=target_shape,
        )
    )


ComputeMask = python.define(
    _compute_mask,
    inputs={"mask_strategy": _choices(MASK_STRATEGY_VALUES)},
    outputs=["mask_file"],
    name="ComputeMask",
)


@_spec.fill_doc
def _resample(
    in_file: NiftiImage,
    target_affine: list[list[float]] | None = None,
    target_shape: list[int] | None = None,
    reference_file: NiftiImage | None = None,
    interpolation: str = "continuous",
    dtype: str | None = None,
    out_suffix: str = ".nii",
    mask_file: NiftiImage | None = None,
) -> NiftiImage:
    """Resample an image to a target grid (see :func:`masker_wf._steps.resample`).

    Parameters
    ----------
    in_file : NIfTI
        3D or 4D image.
    %(target_affine)s
    %(target_shape)s
    reference_file : NIfTI, optional
        Image whose grid is the target (instead of target_affine/target_shape).
    interpolation : str
        "continuous", "linear" or "nearest" (masks).
    %(dtype)s
    out_suffix : str
        ".nii" (default, fast) or ".nii.gz".
    mask_file : NIfTI, optional
        The masker's mask: resample the BOLD as ``NiftiMasker.transform`` does before
        smoothing (onto the mask's bounding box, padded by one voxel, when the grids
        differ; else onto the target grid). The output is that cropped window.

    Returns
    -------
    out_file : NIfTI
        The resampled image.
    """
    return _recorded(
        _run(
            _steps.resample,
            str(in_file),
            _image_name("resampled", out_suffix),
            target_affine=_affine(target_affine),
            target_shape=target_shape,
            reference_file=None if reference_file is None else str(reference_file),
            interpolation=interpolation,
            dtype=dtype,
            mask_file=None if mask_file is None else str(mask_file),
        )
    )


Resample = python.define(
    _resample,
    inputs={"interpolation": _choices(("continuous", "linear", "nearest"))},
    outputs=["out_file"],
    name="Resample",
)


@_spec.fill_doc
def _smooth(
    in_file: NiftiImage,
    fwhm: float | list[float] | str | None = None,
    out_suffix: str = ".nii",
    mask_file: NiftiImage | None = None,
    dtype: str | None = None,
) -> tuple[NiftiImage, QCData | None]:
    """Smooth an image with a Gaussian kernel (see :func:`masker_wf._steps.smooth`).

    Parameters
    ----------
    in_file : NIfTI
        3D or 4D image.
    fwhm : float or list of 3 floats or "fast", optional
        Kernel full width at half maximum in mm.
    out_suffix : str
        ".nii" (default, fast) or ".nii.gz".
    mask_file : NIfTI, optional
        The mask the smoothed image is for: the output is cropped to its bounding box
        (the values of smoothing the whole field of view), and a ``.nii.gz`` is streamed.
    %(dtype)s

    Returns
    -------
    out_file : NIfTI
        The smoothed image.
    planes_file : QCData or None
        With ``mask_file``: ``mean_planes.npz``, the report's mean image of the unsmoothed
        input (for :class:`CleanSignals`' ``mean_planes_file``).
    """
    planes_file = None if mask_file is None else os.path.abspath("mean_planes.npz")
    out_file = _run(
        _steps.smooth,
        str(in_file),
        _image_name("smoothed", out_suffix),
        fwhm=fwhm,
        mask_file=None if mask_file is None else str(mask_file),
        dtype=dtype,
        planes_file=planes_file,
    )
    return _recorded(out_file), planes_file


Smooth = python.define(_smooth, outputs=["out_file", "planes_file"], name="Smooth")


@_spec.fill_doc
def _smooth_signals(
    in_file: NiftiImage,
    mask_file: NiftiImage,
    fwhm: float | list[float] | str | None = None,
    dtype: str | None = None,
) -> tuple[Signals, QCData]:
    """Smooth a BOLD and extract its mask voxels' time series (:func:`masker_wf._steps.smooth`
    with ``extract``): the workflow's ``smooth`` node.

    Parameters
    ----------
    in_file : NIfTI
        4D BOLD on the mask's grid or on a window of it holding every mask voxel (what
        :class:`Resample` writes with ``mask_file``); a ``.nii.gz`` is streamed.
    mask_file : NIfTI
        The mask the signals are extracted with.
    fwhm : float or list of 3 floats or "fast", optional
        Kernel full width at half maximum in mm; the values are those of smoothing the
        whole field of view.
    %(dtype)s

    Returns
    -------
    signals_file : Signals
        ``smoothed_signals.npy``, shape (n_volumes, n_voxels), for :class:`CleanSignals`'
        ``extracted_file``.
    planes_file : QCData
        ``mean_planes.npz``, the report's mean image of the unsmoothed input.
    """
    planes_file = os.path.abspath("mean_planes.npz")
    signals_file = _run(
        _steps.smooth,
        str(in_file),
        os.path.abspath("smoothed_signals.npy"),
        fwhm=fwhm,
        mask_file=str(mask_file),
        dtype=dtype,
        planes_file=planes_file,
        extract=True,
    )
    return _recorded(signals_file), planes_file


SmoothSignals = python.define(
    _smooth_signals, outputs=["signals_file", "planes_file"], name="SmoothSignals"
)


def _high_variance_confounds(bold_file: NiftiImage) -> Signals:
    """NiftiMasker's high-variance confounds of a raw BOLD (see
    :func:`masker_wf._steps.high_variance_confounds`).

    Parameters
    ----------
    bold_file : NIfTI
        4D BOLD image, as given to the masker (before resampling and smoothing).

    Returns
    -------
    confounds_file : Signals
        ``high_variance_confounds.npy``, shape (n_volumes, 5).
    """
    return _recorded(
        _run(
            _steps.high_variance_confounds,
            str(bold_file),
            os.path.abspath("high_variance_confounds.npy"),
        )
    )


HighVarianceConfounds = python.define(
    _high_variance_confounds, outputs=["confounds_file"], name="HighVarianceConfounds"
)


@_spec.fill_doc
def _clean_signals(
    bold_file: NiftiImage,
    mask_file: NiftiImage,
    confounds_file: TextTable | None = None,
    sample_mask: list[int] | list[float] | TextTable | None = None,
    smoothing_fwhm: float | list[float] | str | None = None,
    target_affine: list[list[float]] | None = None,
    target_shape: list[int] | None = None,
    high_variance_confounds: bool = False,
    detrend: bool = False,
    standardize: bool | str | None = False,
    standardize_confounds: bool = True,
    low_pass: float | None = None,
    high_pass: float | None = None,
    t_r: float | None = None,
    runs: list[int] | None = None,
    dtype: str | None = None,
    clean_args: dict | None = None,
    hv_confounds_file: Signals | None = None,
    bold_window: bool = False,
    mean_planes_file: QCData | None = None,
    extracted_file: Signals | None = None,
) -> tuple[Signals, QCData]:
    """Masked, smoothed, cleaned signals (see :func:`masker_wf._steps.clean_signals`).

    Parameters
    ----------
    bold_file : NIfTI
        4D BOLD image.
    mask_file : NIfTI
        Mask on the extraction grid.
    confounds_file : File, optional
        Confounds table (.tsv/.csv with header, or .npy).
    sample_mask : list of int or File, optional
        Indices of the kept volumes (or a boolean per volume), or a file holding them.
        Float lists pass the type check so that the step refuses them with the
        estimator's error.
    %(parameters:CleanSignals)s
    hv_confounds_file : Signals, optional
        High-variance confounds computed beforehand (:class:`HighVarianceConfounds`),
        prepended to the confounds.
    bold_window : bool
        ``bold_file`` is a cropped window of the mask's grid (what :class:`Resample` and
        :class:`Smooth` write with ``mask_file``): masked where it lies.
    mean_planes_file : QCData, optional
        The report's mean image gathered upstream (:class:`Smooth`'s ``planes_file``).
    extracted_file : Signals, optional
        The mask voxels' time series extracted upstream (:class:`SmoothSignals`): cleaned
        as they are, ``bold_file`` read for its header only.

    Returns
    -------
    signals_file : Signals
        ``signals.npy``, shape (n_kept_volumes, n_voxels).
    qc_file : QCData
        ``qc.npz``: what a report shows (tSNR before/after, carpet samples, mean
        image planes), gathered during the same pass over the data.
    """
    # The masker parameters are the spec's: forwarded by name.
    parameters = {**_spec.pick(locals(), "CleanSignals"), "target_affine": _affine(target_affine)}
    qc_file = os.path.abspath("qc.npz")
    signals_file = _run(
        _steps.clean_signals,
        str(bold_file),
        str(mask_file),
        os.path.abspath("signals.npy"),
        qc_file=qc_file,
        confounds_file=None if confounds_file is None else str(confounds_file),
        sample_mask=_sample_mask_value(sample_mask),
        hv_confounds_file=None if hv_confounds_file is None else str(hv_confounds_file),
        bold_window=bold_window,
        mean_planes_file=None if mean_planes_file is None else str(mean_planes_file),
        extracted_file=None if extracted_file is None else str(extracted_file),
        # Unmask's cache key then reads nothing: the signals are known by their inputs.
        identify=True,
        **parameters,
    )
    return _recorded(signals_file, qc_file)


# No allowed values for standardize: Pydra hashes a task class with its fields' allowed
# values sorted, and the spec's mix strings, booleans and None (the step validates it).
CleanSignals = python.define(
    _clean_signals, outputs=["signals_file", "qc_file"], name="CleanSignals"
)


def _sample_mask_value(sample_mask: ty.Any):
    if sample_mask is None or isinstance(sample_mask, (list, tuple)):
        return sample_mask
    return str(sample_mask)


def _unmask(
    signals_file: Signals,
    mask_file: NiftiImage,
    out_suffix: str = ".nii",
    reference_file: NiftiImage | None = None,
    t_r: float | None = None,
    out_file: str | None = None,
    sidecar: dict | None = None,
    compress_level: int = 1,
) -> NiftiImage:
    """Signals back to brain space (see :func:`masker_wf._steps.unmask`).

    Parameters
    ----------
    signals_file : Signals
        ``.npy`` signals (n_volumes, n_voxels).
    mask_file : NIfTI
        The mask the signals were extracted with.
    out_suffix : str
        ".nii" (default, fast) or ".nii.gz", when the image goes to the task's directory.
    reference_file : NIfTI, optional
        The run's input BOLD: the image states its sform/qform codes and units.
    t_r : float, optional
        Repetition time (s), the 4th voxel size of the image.
    out_file : str, optional
        Absolute destination (a derivative's final path, ``.nii`` or ``.nii.gz``),
        written once, compressed as it is produced, instead of the task's directory;
        its directory must exist.
    sidecar : dict, optional
        JSON sidecar written next to ``out_file`` (same stem, ``.json``) after the image.
    compress_level : int
        isal compression level of a ``.nii.gz``, 0 (fastest) to 3 (smallest); 1 by default.

    Returns
    -------
    out_file : NIfTI
        4D image (3D for 1D signals) on the mask's grid.
    """
    in_cache = out_file is None
    if in_cache:
        out_file = _image_name("cleaned_bold", out_suffix)
    elif not os.path.isabs(out_file):
        # Pydra runs the task in its cache directory: a relative path would land there.
        raise ValueError(f"out_file must be an absolute path, got '{out_file}'.")
    written = _run(
        _steps.unmask,
        str(signals_file),
        str(mask_file),
        out_file,
        reference_file=None if reference_file is None else str(reference_file),
        t_r=t_r,
        sidecar=sidecar,
        compress_level=compress_level,
    )
    # The digest is left beside an output of the cache only, never in a derivatives tree.
    return _recorded(written) if in_cache else written


Unmask = python.define(
    _unmask,
    inputs={"compress_level": _choices(COMPRESS_LEVELS)},
    outputs=["out_file"],
    name="Unmask",
)


def _derivatives_sink(
    in_file: File,
    out_file: str,
    sidecar: dict | None = None,
    compress_level: int = 1,
    reference_file: NiftiImage | None = None,
) -> File:
    """Write a file to its final derivative path (see :func:`masker_wf._steps.write_derivative`).

    Parameters
    ----------
    in_file : File
        The file to write (any format; an image, signals, a table...).
    out_file : str
        Absolute destination path; its directory must exist. A ``.gz`` destination is
        gzipped (python-isal) unless ``in_file`` already is.
    sidecar : dict, optional
        JSON sidecar written next to the data (same stem, ``.json``) after them.
    compress_level : int
        isal compression level, 0 (fastest) to 3 (smallest); 1 by default.
    reference_file : NIfTI, optional
        For a NIfTI ``in_file`` (the mask): the run's input BOLD, whose sform/qform codes
        and units the derivative states.

    Returns
    -------
    out_file : File
        The destination, complete (written to a temporary name, then renamed).

    Notes
    -----
    Pydra caches this task like any other: run again with the same inputs and cache,
    it does not rewrite a destination deleted or edited since (use a new cache, or
    ``rerun=True``).
    """
    if not os.path.isabs(out_file):
        # Pydra runs the task in its cache directory: a relative path would land there.
        raise ValueError(f"out_file must be an absolute path, got '{out_file}'.")
    return _run(
        _steps.write_derivative,
        str(in_file),
        out_file,
        sidecar=sidecar,
        compress_level=compress_level,
        reference_file=None if reference_file is None else str(reference_file),
    )


DerivativesSink = python.define(
    _derivatives_sink,
    inputs={"compress_level": _choices(COMPRESS_LEVELS)},
    outputs=["out_file"],
    name="DerivativesSink",
)
