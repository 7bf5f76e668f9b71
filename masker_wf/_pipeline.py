"""The one in-memory implementation of ``NiftiMasker.transform``.

``filter_and_extract`` reproduces the numerics of nilearn 0.11.1's
``NiftiMasker.transform_single_imgs`` (resample to the mask grid if needed,
smooth, mask, clean) while keeping memory low:

* the 4D image is read once, in its own dtype: float32 data is never copied to a
  4D float64 array. An uncompressed NIfTI is a memory map; a ``.nii.gz`` is
  streamed (:func:`masker_wf._niimg.iter_volume_chunks`): blocks of volumes are
  decompressed with python-isal on one thread while the blocks already read are
  smoothed and masked on the others, so the 4D array is never in memory (only
  when resampling or high-variance confounds need it whole is it read into
  memory, once);
* smoothing goes through :func:`masker_wf.image.smooth_masked`, which only
  touches the mask bounding box (plus the kernel radius) and returns the masked
  signals directly, equal to nilearn's smooth-the-whole-field-then-mask;
* the cheap checks on confounds, ``sample_mask`` and the filter parameters run
  *before* the expensive steps, so that a typo fails in milliseconds.

The estimator (:class:`masker_wf.maskers.NiftiMasker`) and the file-based
steps (:mod:`masker_wf._steps`) both call this module, so that there is a
single implementation to test against nilearn.
"""

from __future__ import annotations

import glob
import inspect
import os
import warnings

import numpy as np

from . import _qc, _spec, _validation, image, masking, signal
from ._exceptions import DimensionError, IntermediateMismatchError
from ._niimg import (
    GzipArrayProxy,
    check_niimg,
    check_niimg_3d,
    check_same_fov,
    describe,
    get_data,
    img_data_dtype,
    iter_volume_chunks,
    new_img_like,
)

__all__ = [
    "MeanPlanes",
    "compute_mask_img",
    "filter_and_extract",
    "mask_window",
    "prepare_mask_img",
    "resample_onto_mask",
    "resolve_dtype",
]

# filter_and_extract takes the parameters of the CleanSignals face but clean_args (which it
# takes as clean_kwargs: the masker adds its clean__ keywords); those signal.clean also
# takes are passed on to it under the same names.
_CLEANING = tuple(
    p.name
    for p in _spec.for_face("CleanSignals")
    if p.name in inspect.signature(signal.clean).parameters
)

# Number of voxels kept for the carpet plots of the report.
_REPORT_VOXELS = 2000


def log(message: str, verbose, name: str = "filter_and_extract") -> None:
    """Print a progress message the way nilearn does: ``[caller] message``."""
    if verbose:
        print(f"[{name}] {message}", flush=True)


# --------------------------------------------------------------------------- masks
def _compute_whole_brain_mask(imgs, verbose=0, **kwargs):
    return masking.compute_brain_mask(imgs, mask_type="whole-brain", verbose=verbose, **kwargs)


def _compute_gm_mask(imgs, verbose=0, **kwargs):
    return masking.compute_brain_mask(imgs, mask_type="gm", verbose=verbose, **kwargs)


def _compute_wm_mask(imgs, verbose=0, **kwargs):
    return masking.compute_brain_mask(imgs, mask_type="wm", verbose=verbose, **kwargs)


def mask_strategy_function(mask_strategy: str):
    """Return the mask-computing function of a ``mask_strategy``.

    Module-level functions rather than ``functools.partial`` objects, so that
    ``joblib.Memory`` can name and cache them.

    Parameters
    ----------
    mask_strategy : {"background", "epi", "whole-brain-template", "gm-template", \
"wm-template", "template"}
        ``"template"`` is a deprecated alias of ``"whole-brain-template"``.

    Returns
    -------
    callable
        ``f(imgs, verbose=0, **mask_args) -> Nifti1Image``.
    """
    mask_strategy = _validation.check_mask_strategy(mask_strategy, stacklevel=4)
    functions = {
        "background": getattr(masking, "compute_background_mask", None),
        "epi": getattr(masking, "compute_epi_mask", None),
        "whole-brain-template": _compute_whole_brain_mask,
        "gm-template": _compute_gm_mask,
        "wm-template": _compute_wm_mask,
    }
    return functions[mask_strategy]


def mask_input(imgs):
    """Images for mask computation: a list holding 4D images is concatenated along time.

    nilearn's mask functions read a list of 4D images as one long run (the
    mean is taken over every volume); the core loaders refuse such a list (it
    is 5D for ``transform``), so the concatenation happens here.
    """
    if isinstance(imgs, (list, tuple)) and len(imgs) > 0:
        shapes = [check_niimg(item, name="imgs").shape for item in imgs]
        if any(len(shape) == 4 for shape in shapes):
            return image.concat_imgs(list(imgs), dtype=None)
    return imgs


def _cached(function, memory, ignore=("verbose",)):
    if memory is None or getattr(memory, "location", None) is None:
        return function
    return memory.cache(function, ignore=list(ignore))


def compute_mask_img(
    imgs,
    mask_strategy="background",
    mask_args=None,
    target_affine=None,
    target_shape=None,
    memory=None,
    verbose=0,
):
    """Compute a mask from images, then put it on the target grid.

    As nilearn's ``NiftiMasker.fit``: the mask is computed on the raw images
    (native grid, no smoothing), then resampled with nearest-neighbour
    interpolation to ``target_affine``/``target_shape`` when given.

    Parameters
    ----------
    imgs : Niimg-like or list of Niimg-like
        Images the mask is computed from (a list gives one mask for all).
    mask_strategy : str, default="background"
        One of ``"background"``, ``"epi"``, ``"whole-brain-template"``,
        ``"gm-template"``, ``"wm-template"`` (``"template"``: deprecated alias).
    mask_args : dict, optional
        Keyword arguments of the mask-computing function.
    target_affine : (3, 3) or (4, 4) array, optional
        Affine of the target grid.
    target_shape : tuple of 3 ints, optional
        Shape of the target grid.
    memory : joblib.Memory, optional
        Cache of the mask computation and resampling.
    verbose : int, default=0
        Verbosity.

    Returns
    -------
    nibabel.Nifti1Image
        The 3D mask.
    """
    if imgs is None:
        raise ValueError(
            "Parameter 'imgs' must be provided to compute a mask (no mask was given in mask_img)."
        )
    compute = mask_strategy_function(mask_strategy)
    mask_args = _validation.check_mask_args(mask_strategy, mask_args)
    verbose = max(0, int(verbose) - 1)
    mask_img = _cached(compute, memory)(mask_input(imgs), verbose=verbose, **mask_args)
    return prepare_mask_img(mask_img, target_affine, target_shape, memory=memory)


def prepare_mask_img(mask_img, target_affine=None, target_shape=None, memory=None):
    """Load a mask and resample it (nearest neighbour) to the target grid.

    Parameters
    ----------
    mask_img : Niimg-like
        A 3D mask (a 4D image with one volume is accepted).
    target_affine : (3, 3) or (4, 4) array, optional
        Affine of the target grid.
    target_shape : tuple of 3 ints, optional
        Shape of the target grid.
    memory : joblib.Memory, optional
        Cache of the resampling.

    Returns
    -------
    nibabel.Nifti1Image
        The mask, unchanged when both targets are None.
    """
    mask_img = check_niimg_3d(mask_img, name="mask_img")
    if target_affine is None and target_shape is None:
        return mask_img
    return _cached(image.resample_img, memory, ignore=())(
        mask_img,
        target_affine=target_affine,
        target_shape=target_shape,
        interpolation="nearest",
        copy=False,
    )


# --------------------------------------------------------------------------- dtype
def resolve_dtype(source_dtype, dtype):
    """Dtype the input data is converted to before processing (nilearn 0.11.1).

    Parameters
    ----------
    source_dtype : numpy.dtype
        Dtype of the loaded image data (scaling applied).
    dtype : None, "auto" or dtype-like
        The masker's ``dtype``. ``"auto"``: signed integers -> int32,
        everything else -> float32.

    Returns
    -------
    numpy.dtype or None
        None when no conversion is needed.
    """
    if dtype is None:
        return None
    source_dtype = np.dtype(source_dtype)
    if isinstance(dtype, str) and dtype == "auto":
        target = np.dtype(np.int32) if source_dtype.kind == "i" else np.dtype(np.float32)
    else:
        _validation.check_dtype(dtype)
        target = np.dtype(dtype)
    return None if target == source_dtype else target


# --------------------------------------------------------------------------- checks
def _n_volumes(img) -> int:
    return 1 if len(img.shape) == 3 else int(img.shape[3])


# --------------------------------------------------------------------------- extraction
def _extract(data, mask: np.ndarray) -> np.ndarray:
    """``data[mask].T`` of a 4D array, one volume at a time (no 4D copy).

    Integer data is converted to float32 on the way, as ``clean`` would do;
    non-finite values become 0, as in nilearn's ``apply_mask``.
    """
    return _extract_chunks(((0, data),), data.shape, data.dtype, mask)


def _extract_chunks(chunks, shape, dtype, mask: np.ndarray, allocate=None) -> np.ndarray:
    """:func:`_extract` of 4D data given as ``(start, block)`` blocks of volumes.

    The result is written into ``allocate(shape, dtype)`` (default numpy.empty).
    """
    dtype = np.dtype(dtype)
    n_volumes = shape[3]
    out_dtype = dtype if dtype.kind == "f" else np.dtype(np.float32)
    if dtype.itemsize > 4 and dtype.kind == "f":
        out_dtype = dtype
    out = (allocate or np.empty)((n_volumes, int(mask.sum())), out_dtype)
    flat_index = {}
    for start, block in chunks:
        # Volumes of a NIfTI array (Fortran order) are contiguous: flat indices of the
        # mask voxels, listed in C order as ``data[mask]`` lists them.
        fortran = np.isfortran(block) or block.flags.f_contiguous
        if fortran and "F" not in flat_index:
            flat_index["F"] = np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")
        for t in range(block.shape[3]):
            volume = block[..., t]
            if fortran:
                out[start + t] = np.take(volume.ravel(order="F"), flat_index["F"])
            else:
                out[start + t] = volume[mask]
    if out_dtype.kind == "f":
        bad = ~np.isfinite(out)
        if bad.any():
            out[bad] = 0
    return out


class MeanPlanes:
    """:func:`masker_wf._qc.mean_planes`, gathered from blocks of volumes as they pass.

    The planes of every volume are kept (three planes per volume, a few tens of MB for
    a long run), in the layout they have in a NIfTI array, and averaged at the end as
    ``mean_planes`` averages them: the numbers are those of the whole array.
    """

    def __init__(self, n_volumes: int, mask):
        self.n_volumes = n_volumes
        self.centre = _qc.slice_centre(mask)
        self.planes = None

    def follow(self, chunks):
        """Pass ``chunks`` through, keeping their planes."""
        for start, block in chunks:
            planes = _qc.orthogonal_planes(block, self.centre)
            if self.planes is None:
                self.planes = [
                    np.empty((*plane.shape[:2], self.n_volumes), dtype=block.dtype, order="F")
                    for plane in planes
                ]
            for stack, plane in zip(self.planes, planes, strict=True):
                stack[..., start : start + block.shape[3]] = plane
            yield start, block

    def result(self) -> list:
        """The three mean planes (see :func:`masker_wf._qc.mean_planes`)."""
        return [plane.mean(axis=-1, dtype=np.float64).astype(np.float32) for plane in self.planes]


def _smooth_and_extract(data, affine, fwhm, mask):
    """Smoothed masked signals, via the mask-bounding-box fast path.

    ``smooth_masked`` warns and skips smoothing for a FWHM of 0, as nilearn.
    """
    return image.smooth_masked(data, affine, fwhm, mask)


def _streams(img) -> bool:
    """Whether ``img`` is a gzipped 4D file that is best read as a stream of volumes."""
    return isinstance(img.dataobj, GzipArrayProxy) and len(img.shape) == 4


def masked_signals(img, mask, smoothing_fwhm, report, allocate=None) -> np.ndarray:
    """The (smoothed) masked signals of a 4D image; the report's mean planes on the way.

    A gzipped file is streamed (decompression overlapping smoothing and masking), into
    ``allocate(shape, dtype)`` when given (a memory map of the output file, say);
    anything else is read as an array (a memory map for an uncompressed file).
    """
    # Mean planes given by the caller (gathered upstream, from the unsmoothed BOLD) stand.
    if report is not None and "mean_planes" in report:
        report = None
    if not _streams(img):
        data = get_data(img)
        if report is not None:
            # The report shows three planes of the mean image: average just those planes
            # instead of a second pass over the whole run.
            report["mean_planes"] = _qc.mean_planes(data, mask)
        if smoothing_fwhm is not None:
            return _smooth_and_extract(data, img.affine, smoothing_fwhm, mask)
        return _extract(data, mask)
    chunks = iter_volume_chunks(img)
    planes = None
    if report is not None:
        planes = MeanPlanes(img.shape[3], mask)
        chunks = planes.follow(chunks)
    if smoothing_fwhm is not None:
        signals = image.smooth_masked_chunks(
            chunks, img.shape, img.affine, smoothing_fwhm, mask, allocate=allocate
        )
    else:
        signals = _extract_chunks(chunks, img.shape, img_data_dtype(img), mask, allocate)
    if planes is not None:
        report["mean_planes"] = planes.result()
    return signals


def _checked_extracted(signals, n_volumes: int, n_voxels: int) -> np.ndarray:
    """Signals extracted upstream, checked against the image and the mask they are from."""
    signals = np.asanyarray(signals)
    if signals.shape != (n_volumes, n_voxels):
        raise IntermediateMismatchError(
            f"the extracted signals have shape {signals.shape}, but the image has "
            f"{n_volumes} volumes and the mask {n_voxels} voxels: they were not extracted "
            "from this image with this mask.",
            "extracted",
        )
    return signals


def _in_memory(img):
    """A gzipped image read into memory once, for the steps that need it whole."""
    if not isinstance(img.dataobj, GzipArrayProxy):
        return img
    return img.__class__(get_data(img), img.affine, img.header, extra=img.extra)


def _kept_volumes(run_rows, masks):
    """Indices (over all volumes) of the volumes kept, or None when all are kept.

    Runs come in the order of their sorted labels, as ``clean`` stacks them.
    """
    if all(mask is None for mask in masks):
        return None
    return np.concatenate(
        [rows if mask is None else rows[mask] for rows, mask in zip(run_rows, masks, strict=True)]
    )


def file_stamps(imgs) -> list:
    """``(path, size, mtime_ns)`` of every file behind ``imgs``, for cache keys.

    joblib hashes a path (or a file-backed nibabel image) by its name only, so
    a file rewritten in place would be served stale results; adding these
    stamps to the cached call's arguments invalidates the entry instead.
    """
    items = list(imgs) if isinstance(imgs, (list, tuple)) else [imgs]
    stamps = []
    for item in items:
        path = None
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
        elif hasattr(item, "get_filename"):
            path = item.get_filename()
        if path is None:
            continue
        paths = [path] if os.path.exists(path) else sorted(glob.glob(os.path.expanduser(path)))
        for one in paths:
            info = os.stat(one)
            stamps.append((os.path.abspath(one), info.st_size, info.st_mtime_ns))
    return stamps


def cached_filter_and_extract(
    imgs,
    mask_img,
    *,
    stamps=(),
    verbose=0,
    log_name="filter_and_extract",
    with_report=False,
    **params,
):
    """:func:`filter_and_extract` with the input files' stamps in the cache key.

    ``verbose`` and ``log_name`` are named so that ``joblib.Memory`` can leave them
    out of the key; ``stamps`` (see :func:`file_stamps`) is only part of the key;
    ``params`` are :func:`filter_and_extract`'s. With ``with_report``, returns
    ``(signals, report)`` so that the report data are cached too.
    """
    del stamps
    report = {} if with_report else None
    signals = filter_and_extract(
        imgs, mask_img, verbose=verbose, log_name=log_name, report=report, **params
    )
    return (signals, report) if with_report else signals


def _on_target_grid(img, target_affine, target_shape) -> bool:
    """Whether ``img`` is already on the grid ``prepare_mask_img`` would give."""
    if target_shape is not None and tuple(img.shape[:3]) != tuple(target_shape):
        return False
    if target_affine is None:
        return True
    target = np.asarray(target_affine, dtype=float)
    if target.shape == (3, 3):
        return bool(np.allclose(img.affine[:3, :3], target))
    return target.shape == (4, 4) and bool(np.allclose(img.affine, target))


def resample_onto_mask(img, mask_img, target_affine=None, target_shape=None, stacklevel=2):
    """The BOLD on the grid it is masked on, as ``NiftiMasker.transform`` puts it there.

    Images on another grid than the mask's are resampled (continuous interpolation, with
    nilearn's warning) onto the mask's bounding box only, padded by one voxel, and the
    mask is cropped the same way: smoothing then happens on that grid, so its borders are
    nilearn's. Otherwise the masker's own target grid, when given, is applied (a no-op
    for images already on it).

    Parameters
    ----------
    img : nibabel.Nifti1Image
        4D image (after the dtype conversion).
    mask_img : nibabel.Nifti1Image
        The fitted mask, on the target grid.
    target_affine, target_shape : optional
        The masker's target grid.
    stacklevel : int
        Of the warning.

    Returns
    -------
    img, mask_img : nibabel.Nifti1Image
        The image and the mask on the same grid.
    """
    if not check_same_fov(img, mask_img):
        warnings.warn(
            "imgs are being resampled to the mask_img resolution. This process is memory "
            "intensive. You might want to provide a target_affine that is equal to the "
            "affine of the imgs or resample the mask beforehand to save memory and "
            "computation time.",
            UserWarning,
            stacklevel=stacklevel,
        )
        mask_img = image.crop_img(mask_img)
        target_affine, target_shape = mask_img.affine, mask_img.shape[:3]
    if target_affine is None and target_shape is None:
        return img, mask_img
    img = image.resample_img(
        img,
        target_affine=target_affine,
        target_shape=target_shape,
        interpolation="continuous",
        copy=False,
    )
    if img.shape[:3] != mask_img.shape[:3]:
        raise ValueError(
            f"Resampled images have shape {img.shape[:3]}, which differs from the mask "
            f"shape {mask_img.shape[:3]}: check target_affine/target_shape."
        )
    return img, mask_img


def mask_window(img, mask_img):
    """Where ``img``'s grid lies in the mask's, when it is a window holding every mask voxel.

    The workflow's intermediates (the resampled and the smoothed BOLD) are cropped: their
    grid is the mask's, shifted by whole voxels, and smaller. Masking them there is
    masking the full image (C order over the window is C order over the full grid).

    Parameters
    ----------
    img : nibabel image
        3D or 4D image.
    mask_img : nibabel.Nifti1Image
        3D mask.

    Returns
    -------
    tuple of 3 slices or None
        The window in the mask's grid; None when ``img`` is not on a window of it, or
        misses mask voxels.
    """
    if check_same_fov(img, mask_img):
        # The mask's own grid, as the estimator decides it (affines np.allclose): whole.
        return tuple(slice(0, n) for n in mask_img.shape[:3])
    rotation = mask_img.affine[:3, :3]
    if not np.allclose(img.affine[:3, :3], rotation):
        return None
    offset = np.linalg.solve(rotation, img.affine[:3, 3] - mask_img.affine[:3, 3])
    start = np.round(offset)
    if not np.allclose(offset, start, atol=1e-4) or not np.allclose(img.affine[3], [0, 0, 0, 1]):
        return None
    start = start.astype(int)
    stop = start + np.asarray(img.shape[:3])
    if (start < 0).any() or (stop > np.asarray(mask_img.shape[:3])).any():
        return None
    window = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
    mask = np.asanyarray(mask_img.dataobj) != 0
    if int(np.count_nonzero(mask[window])) != int(np.count_nonzero(mask)):
        return None
    return window


def load_img(imgs, dtype=None, name="imgs", whole=False):
    """Load the images to transform as one 4D image (lists concatenated along time).

    Parameters
    ----------
    imgs : Niimg-like or list of Niimg-like
        3D or 4D image(s).
    dtype : None, "auto" or dtype-like
        Conversion applied to the data before processing (nilearn 0.11.1).
    name : str
        Argument name for error messages.
    whole : bool, default=False
        Read a gzipped file into memory now (once), for callers that need the raw
        image whole (high-variance confounds); otherwise it is read where it is used.

    Returns
    -------
    img : nibabel.Nifti1Image
        The 4D image, data not loaded when no conversion is needed.
    raw_img : nibabel.Nifti1Image
        The image before the dtype conversion (high variance confounds use it).
    ndim : int
        Dimensionality of the input (3 or 4).
    """
    raw = check_niimg(imgs, name=name)
    ndim = len(raw.shape)
    if ndim == 3:
        raw = check_niimg(raw, atleast_4d=True, name=name)
    if len(raw.shape) != 4:
        raise DimensionError(len(raw.shape), 4, f"{name} {describe(imgs)}")
    if whole:
        raw = _in_memory(raw)
    img = raw
    target = resolve_dtype(img_data_dtype(raw), dtype)
    if target is not None:
        img = new_img_like(raw, get_data(raw).astype(target), copy_header=True)
    return img, raw, ndim


@_spec.with_face_signature("CleanSignals", after="sample_mask", exclude=("clean_args",))
def filter_and_extract(
    imgs,
    mask_img,
    *,
    confounds=None,
    sample_mask=None,
    clean_kwargs=None,
    verbose=0,
    report=None,
    log_name="filter_and_extract",
    hv_confounds=None,
    extracted=None,
    allocate=None,
    **params,
) -> np.ndarray:
    """Resample, smooth, mask and clean images: ``NiftiMasker.transform`` numerics.

    Equal (to float rounding) to nilearn 0.11.1's
    ``NiftiMasker(mask_img, ...).fit().transform(imgs, confounds, sample_mask)``
    with its scrubbing interpolation bug corrected (censored volumes are the
    ones interpolated).

    Parameters
    ----------
    imgs : Niimg-like or list of Niimg-like
        3D or 4D image(s); a 3D image gives one row.
    mask_img : Niimg-like
        The fitted mask (``NiftiMasker.mask_img_``), already on the target grid.
    smoothing_fwhm : float or sequence of 3 floats, optional
        Gaussian smoothing FWHM in mm (applied after resampling, before masking).
    target_affine, target_shape : optional
        The masker's target grid: images are resampled to it (continuous
        interpolation) when they are on the mask's grid already.
    dtype : None, "auto" or dtype-like
        Data conversion before processing (nilearn 0.11.1 semantics).
    high_variance_confounds : bool, default=False
        Prepend 5 high-variance confounds computed on the raw input image.
    confounds : array, DataFrame, path or list of those, optional
        Confounds (one row per volume), passed to :func:`masker_wf.signal.clean`.
    sample_mask : array or list of arrays, optional
        Volumes to keep (indices or booleans; one per run with ``runs``).
    runs : array, optional
        Run label of each volume.
    detrend, standardize, standardize_confounds, low_pass, high_pass, t_r :
        Cleaning parameters, see :func:`masker_wf.signal.clean`.
    clean_kwargs : dict, optional
        Extra keyword arguments of :func:`masker_wf.signal.clean` (``filter``,
        ``ensure_finite``, ``extrapolate``, ``butterworth__order``...).
    verbose : int, default=0
        Print progress messages.
    report : dict, optional
        Filled with data for the HTML report (a subset of voxels before/after
        cleaning, tSNR, kept volumes).
    log_name : str
        Name printed in front of progress messages.
    hv_confounds : numpy.ndarray, shape (n_volumes, n), optional
        High-variance confounds already computed on the raw image
        (:func:`masker_wf.image.high_variance_confounds`), prepended to ``confounds`` as
        ``high_variance_confounds=True`` would (which is then not needed).
    extracted : numpy.ndarray, shape (n_volumes, n_voxels), optional
        The signals of ``mask_img``'s voxels already extracted from ``imgs`` (resampled
        and smoothed upstream: the workflow's ``smooth`` node); only cleaned here, and
        ``imgs`` is read for its header only. A memory map is not written to.
    allocate : callable, optional
        ``allocate(shape, dtype)`` gives the array the cleaned signals are written into
        (default :func:`numpy.empty`): a memory map of the output file, for instance.

    Returns
    -------
    numpy.ndarray, shape (n_kept_volumes, n_voxels)
        Float32 for float32/integer input (float64 for float64 or scaled
        integer data with ``dtype=None``).
    """
    # The door check of every face, repeated here for callers of this function alone.
    params = _spec.bind("CleanSignals", params, "filter_and_extract", exclude=("clean_args",))
    checked = _validation.check_parameters(params | {"clean_args": clean_kwargs})
    clean_kwargs = checked["clean_args"] or {}
    smoothing_fwhm, target_affine, target_shape = (
        params[name] for name in ("smoothing_fwhm", "target_affine", "target_shape")
    )
    high_variance_confounds, runs = params["high_variance_confounds"], params["runs"]

    log(f"Loading data from {describe(imgs)}", verbose, log_name)
    img, raw_img, ndim = load_img(imgs, dtype=params["dtype"], whole=high_variance_confounds)
    n_volumes = _n_volumes(img)
    mask_img = check_niimg_3d(mask_img, name="mask_img")
    if not _on_target_grid(mask_img, target_affine, target_shape):
        # A mask file given with a target grid (the file-based steps): do what
        # NiftiMasker.fit does first. A fitted mask_img_ is on the grid already.
        mask_img = prepare_mask_img(mask_img, target_affine, target_shape)
    mask, _ = masking.load_mask_img(mask_img)

    # The checks clean() makes on these, made before the expensive steps.
    _, run_rows, masks, confounds = signal.check_clean_inputs(
        n_volumes, runs=runs, sample_mask=sample_mask, confounds=confounds
    )

    all_confounds = confounds
    if hv_confounds is not None and np.shape(hv_confounds)[:1] != (n_volumes,):
        raise IntermediateMismatchError(
            f"the high-variance confounds have shape {np.shape(hv_confounds)}, but the image "
            f"has {n_volumes} volumes: they were not computed from this image.",
            "hv_confounds",
        )
    if hv_confounds is not None:
        # Computed beforehand on the raw image (a node of its own in the workflow).
        all_confounds = hv_confounds if confounds is None else [hv_confounds, confounds]
    elif high_variance_confounds:
        if ndim == 3:
            raise DimensionError(
                3, 4, f"imgs {describe(imgs)} (high_variance_confounds needs 4D images)"
            )
        log("Computing high variance confounds", verbose, log_name)
        hv = image.high_variance_confounds(raw_img)
        all_confounds = hv if confounds is None else [hv, confounds]
    del raw_img

    if extracted is not None:
        signals = _checked_extracted(extracted, n_volumes, int(np.count_nonzero(mask)))
    else:
        if (
            not check_same_fov(img, mask_img)
            or target_affine is not None
            or target_shape is not None
        ):
            log("Resampling images", verbose, log_name)
        img, mask_img = resample_onto_mask(
            img, mask_img, target_affine, target_shape, stacklevel=3
        )
        mask, _ = masking.load_mask_img(mask_img)

        if smoothing_fwhm is not None:
            log("Smoothing images", verbose, log_name)
        log("Extracting region signals", verbose, log_name)
        signals = masked_signals(img, mask, smoothing_fwhm, report)
    del img

    voxels = None
    if report is not None:
        voxels = np.unique(
            np.linspace(0, signals.shape[1] - 1, min(_REPORT_VOXELS, signals.shape[1]))
            .round()
            .astype(np.int64)
        )
        kept = _kept_volumes(run_rows, masks)
        # Over the kept volumes only, like the tSNR after cleaning: censored volumes
        # (non-steady state, motion spikes) would otherwise make the gain look larger.
        mean_before, std_before = _qc.column_stats(signals, rows=kept)
        report["signals_before"] = signals[:, voxels].copy()
        # A single volume has no temporal SNR.
        report["tsnr_before"] = _qc.tsnr(mean_before, std_before) if n_volumes > 1 else None
        report["kept_volumes"] = kept

    log("Cleaning extracted signals", verbose, log_name)
    if report is not None:
        noise_std = np.empty(signals.shape[1])
        budgets: list = []
        clean_kwargs = {**clean_kwargs, "_noise_std_out": noise_std, "_budgets_out": budgets}
    if allocate is not None:
        clean_kwargs = {**clean_kwargs, "_allocate_out": allocate}
    cleaned = signal.clean(
        signals,
        sample_mask=sample_mask,
        confounds=all_confounds,
        **{name: params[name] for name in _CLEANING},
        **clean_kwargs,
    )
    del signals
    if report is not None:
        report["signals_after"] = cleaned[:, voxels].copy()
        report["standardized"] = bool(params["standardize"])
        # Mean of the input over the noise left after cleaning (before any standardization).
        report["tsnr_after"] = _qc.tsnr(mean_before, noise_std) if n_volumes > 1 else None
        report["degrees_of_freedom"] = [budget.as_dict() for budget in budgets]
    return cleaned
