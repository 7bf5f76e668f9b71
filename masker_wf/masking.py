"""Brain masks: computing them, checking them, and moving data in and out of them.

Names, signatures and results follow ``nilearn.masking`` 0.11.1: computed
masks are identical voxel for voxel (template masks too, when nilearn's
template files are the source, see :mod:`masker_wf._templates`).
``memory``/``verbose`` are accepted for compatibility; nothing is cached on disk.

Deliberate differences from nilearn 0.11.1:

* ``apply_mask(..., smoothing_fwhm="fast")`` smooths (nilearn discards the
  result of its 'fast' kernel there); with an integer ``dtype`` the data are
  smoothed in float32 then cast (nilearn discards the smoothing).
* ``apply_mask`` smooths only the mask's bounding box plus the kernel radius
  and gathers the masked voxels without copying the whole 4D array first.
* Error messages name the offending image; nilearn's wording is kept as prefix.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion, label

from . import _spec
from ._exceptions import MaskWarning
from ._niimg import (
    _is_list_like,
    check_niimg,
    check_niimg_3d,
    check_same_fov,
    describe,
    get_data,
    load_img_and_mask,
    load_mask_img,
    masked_dtype,
    masked_values,
    new_img_like,
)
from .image import _compute_mean, _smoothing_dtype, resample_to_img, smooth_masked

__all__ = [
    "apply_mask",
    "compute_background_mask",
    "compute_brain_mask",
    "compute_epi_mask",
    "compute_multi_background_mask",
    "compute_multi_brain_mask",
    "compute_multi_epi_mask",
    "intersect_masks",
    "largest_connected_component",
    "load_mask_img",
    "unmask",
]


# --------------------------------------------------------------------------------------
# Checking (load_mask_img lives in _niimg, which image.py may import; re-exported here)
# --------------------------------------------------------------------------------------


def largest_connected_component(volume):
    """Keep only the largest 6-connected component of a binary volume.

    Parameters
    ----------
    volume : numpy.ndarray
        3D array, non-zero voxels are foreground.

    Returns
    -------
    numpy.ndarray of bool
        Ties between components of equal size go to the first one labelled.

    Raises
    ------
    ValueError
        The volume has no non-zero voxel.
    """
    volume = np.asarray(volume)
    if not volume.dtype.isnative:
        volume = volume.astype(volume.dtype.newbyteorder("="))
    labels, n_labels = label(volume)
    if not n_labels:
        raise ValueError("No non-zero values: no connected components")
    if n_labels == 1:
        return volume.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def _mask_img(img, mask, affine, *, opening, connected, warning_msg):
    """The mask image of ``img``'s space from a raw boolean ``mask``.

    Erode, keep the largest component, then dilate and erode back (nilearn's recipe).
    """
    if opening:
        opening = int(opening)
        mask = binary_erosion(mask, iterations=opening)
    any_voxel = mask.any()
    if not any_voxel:
        warnings.warn(f"Computed an empty mask. {warning_msg}", MaskWarning, stacklevel=3)
    if connected and any_voxel:
        mask = largest_connected_component(mask)
    if opening:
        mask = binary_dilation(mask, iterations=2 * opening)
        mask = binary_erosion(mask, iterations=opening)
    return new_img_like(img, mask, affine)


def _border_values(data, border_size):
    """Voxels within ``border_size`` of each face; edges and corners appear several times."""
    b = border_size
    return np.concatenate(
        [
            data[:b].ravel(),
            data[-b:].ravel(),
            data[:, :b].ravel(),
            data[:, -b:].ravel(),
            data[:, :, :b].ravel(),
            data[:, :, -b:].ravel(),
        ]
    )


# --------------------------------------------------------------------------------------
# Mask computation
# --------------------------------------------------------------------------------------


# Parameter entries the mask functions share; their defaults differ (nilearn's).
_mask_doc = _spec.fill_doc_with(
    {
        "connected": """connected : bool, default={default}
    Keep only the largest connected component.""",
        "opening": """opening : bool or int, default={default}
    Morphological opening iterations (0 or False: none): erosions before, and twice as
    many dilations then erosions after, the connected-component step.""",
        "target_grid": """target_affine, target_shape : optional
    Resample the mean image first (see :func:`masker_wf.image.resample_img`).""",
        "unused": """memory, verbose
    Accepted for nilearn compatibility; unused.""",
        "mask_returns": """Returns
-------
nibabel.Nifti1Image
    uint8 mask.""",
    }
)


@_mask_doc
def compute_background_mask(
    data_imgs,
    border_size=2,
    connected=False,
    opening=False,
    target_affine=None,
    target_shape=None,
    memory=None,
    verbose=0,
):
    """Mask of the voxels whose mean differs from the background value.

    The background is the median of the mean image over a border of
    ``border_size`` voxels on each face; a voxel belongs to the mask if its
    mean is *exactly* different from it. If that border holds NaNs, the mask is
    instead the non-NaN voxels (SPM's convention).

    Parameters
    ----------
    data_imgs : Niimg-like object or list of them
        3D or 4D image(s); lists are concatenated along time.
    border_size : int, default=2
        Width (voxels) of the border used to estimate the background.
    %(connected)s
    %(opening)s
    %(target_grid)s
    %(unused)s

    %(mask_returns)s
    """
    del memory, verbose
    img = check_niimg(data_imgs, name="data_imgs")
    mean, affine = _compute_mean(img, target_affine=target_affine, target_shape=target_shape)
    border = _border_values(mean, border_size)
    if np.isnan(border).any():
        mask = ~np.isnan(mean)
    else:
        mask = mean != np.median(border)
    return _mask_img(
        img,
        mask,
        affine,
        opening=opening,
        connected=connected,
        warning_msg="Are you sure that input images have a homogeneous background.",
    )


@_mask_doc
def compute_epi_mask(
    epi_img,
    lower_cutoff=0.2,
    upper_cutoff=0.85,
    connected=True,
    opening=2,
    exclude_zeros=False,
    ensure_finite=True,
    target_affine=None,
    target_shape=None,
    memory=None,
    verbose=0,
):
    """Brain mask of an EPI series from the histogram of its mean image.

    The threshold lies in the middle of the largest gap between consecutive
    sorted intensities of the mean image, searched between the
    ``lower_cutoff`` and ``upper_cutoff`` quantiles. When ``opening`` is set,
    the mean is first smoothed with a 1-voxel FWHM Gaussian.

    Parameters
    ----------
    epi_img : Niimg-like object
        3D or 4D EPI image(s).
    lower_cutoff : float, default=0.2
        Lower fraction of the sorted intensities excluded from the search.
    upper_cutoff : float, default=0.85
        Upper fraction excluded.
    %(connected)s
    %(opening)s
    exclude_zeros : bool, default=False
        Ignore exact zeros in the intensity histogram.
    ensure_finite : bool, default=True
        Treat NaN/inf in the mean as 0.
    %(target_grid)s
    %(unused)s

    %(mask_returns)s
    """
    del memory, verbose
    img = check_niimg(epi_img, name="epi_img")
    mean, affine = _compute_mean(
        img,
        target_affine=target_affine,
        target_shape=target_shape,
        smooth=(1 if opening else False),
    )
    if ensure_finite:
        mean = np.array(mean)
        mean[~np.isfinite(mean)] = 0
    values = np.sort(mean, axis=None)
    if exclude_zeros:
        values = values[values != 0]
    if values.size < 2:
        raise ValueError(
            f"epi_img {describe(epi_img)}: cannot compute an EPI mask from fewer than 2 "
            f"intensity values (got {values.size})."
        )
    low = int(np.floor(lower_cutoff * len(values)))
    high = min(int(np.floor(upper_cutoff * len(values))), len(values) - 1)
    gaps = values[low + 1 : high + 1] - values[low:high]
    if gaps.size == 0:
        raise ValueError(
            f"lower_cutoff={lower_cutoff} and upper_cutoff={upper_cutoff} leave no intensity "
            "range to search for a threshold; lower_cutoff must be below upper_cutoff."
        )
    first = low + gaps.argmax()
    threshold = 0.5 * (values[first] + values[first + 1])
    return _mask_img(
        img,
        mean >= threshold,
        affine,
        opening=opening,
        connected=connected,
        warning_msg="Are you sure that input data are EPI images not detrended. ",
    )


@_mask_doc
def compute_brain_mask(
    target_img,
    threshold=0.5,
    connected=True,
    opening=2,
    memory=None,
    verbose=0,
    mask_type="whole-brain",
):
    """Mask from an MNI152 template resampled onto the grid of ``target_img``.

    The template (scaled to [0, 1]) is resampled with cubic splines onto the
    target grid and thresholded. Only the target's shape and affine are used:
    the image must already be in MNI space. The template files are found at
    run time (nilearn's packaged files or TemplateFlow's cache, see
    :mod:`masker_wf._templates`); with nilearn's files the mask is identical to
    nilearn's.

    Parameters
    ----------
    target_img : Niimg-like object
        Image giving the output grid.
    threshold : float, default=0.5
        Keep voxels whose resampled template value is at least this.
    %(connected)s
    %(opening)s
    %(unused)s
    mask_type : {"whole-brain", "gm", "wm"}, default="whole-brain"
        Which template: T1 brain, grey-matter or white-matter probability.

    Returns
    -------
    nibabel.Nifti1Image
        uint8 mask (int8 when neither opening nor connected is used, as nilearn).

    Raises
    ------
    ValueError
        Unknown ``mask_type``.
    masker_wf._templates.TemplateNotFoundError
        No installed source of the template.
    """
    del memory, verbose
    from ._templates import load_template

    if mask_type not in ("whole-brain", "gm", "wm"):
        raise ValueError(
            f"Unknown mask type {mask_type!r}. Only 'whole-brain', 'gm' or 'wm' are accepted."
        )
    img = check_niimg(target_img, name="target_img")
    template = load_template(mask_type)
    resampled = resample_to_img(template, img, copy=False)
    return _mask_img(
        img,
        (get_data(resampled) >= threshold).astype(np.int8),
        img.affine,
        opening=opening,
        connected=connected,
        warning_msg=f"{mask_type} mask is empty, lower the threshold or check your input FOV",
    )


def _check_nonempty_list(imgs, name):
    if not _is_list_like(imgs) or len(imgs) == 0:
        raise TypeError(
            f"{name}: an empty object or a non-list ({imgs!r}) was passed instead of a list of "
            "images."
        )
    return list(imgs)


def _map(function, items, n_jobs):
    """Apply ``function`` to items, in threads when n_jobs > 1 (or -1)."""
    n_workers = len(items) if n_jobs in (None, -1) else max(1, int(n_jobs))
    n_workers = min(n_workers, len(items))
    if n_workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        return list(pool.map(function, items))


def _intersect_run_masks(compute_mask, imgs_name, imgs, options):
    """One ``compute_mask`` per run (in threads), then the intersection of the run masks.

    ``options`` are the other arguments of the multi-run function: the ones
    ``compute_mask`` also takes are passed on; ``threshold`` and ``n_jobs`` are used here.
    """
    imgs = _check_nonempty_list(imgs, imgs_name)
    passed_on = inspect.signature(compute_mask).parameters.keys() - {"memory", "verbose"}
    per_run = {name: options[name] for name in passed_on & options.keys()}
    masks = _map(lambda img: compute_mask(img, **per_run), imgs, options["n_jobs"])
    return intersect_masks(masks, threshold=options["threshold"], connected=options["connected"])


#: Defaults of the multi-run mask functions where they are not the one-run function's
#: (nilearn's, in both: ``compute_background_mask`` opens nothing, its multi-run form does).
_MULTI_RUN_DEFAULTS = {"connected": True, "opening": 2, "threshold": 0.5, "n_jobs": 1}
#: Documentation of a multi-run function's parameters, after its summary line.
_MULTI_RUN_DOC = """

Parameters
----------
{imgs} : list of Niimg-like objects
    One image per run.
{passed_on}
    Passed to :func:`{function}`.
%(connected)s
%(opening)s
threshold : float, default=0.5
    Fraction of the run masks a voxel must belong to (see :func:`intersect_masks`);
    ``connected`` applies to each run's mask and to their intersection.
%(target_grid)s
n_jobs : int, default=1
    Number of threads.
%(unused)s

%(mask_returns)s
"""


def _multi_run_mask(compute_mask, names, summary):
    """The multi-run form of ``compute_mask``: nilearn's parameter list ``names``.

    Its defaults are ``compute_mask``'s but for :data:`_MULTI_RUN_DEFAULTS`; its name is
    nilearn's (``compute_epi_mask`` -> ``compute_multi_epi_mask``).
    """
    imgs_name, *others = names.split()
    # The parameters passed on with the one-run function's defaults; the others are
    # documented in _MULTI_RUN_DOC.
    own = set(_MULTI_RUN_DEFAULTS) | {"target_affine", "target_shape", "memory", "verbose"}
    passed_on = [n for n in others if n in inspect.signature(compute_mask).parameters.keys() - own]

    def multi_run_mask(**options):
        imgs = options.pop(imgs_name)
        return _intersect_run_masks(compute_mask, imgs_name, imgs, options)

    multi_run_mask.__name__ = multi_run_mask.__qualname__ = compute_mask.__name__.replace(
        "compute_", "compute_multi_", 1
    )
    multi_run_mask.__doc__ = summary + _MULTI_RUN_DOC.format(
        imgs=imgs_name, passed_on=", ".join(passed_on), function=compute_mask.__name__
    )
    function = _spec.declare_signature(names, compute_mask, **_MULTI_RUN_DEFAULTS)
    return _mask_doc(function(multi_run_mask))


compute_multi_epi_mask = _multi_run_mask(
    compute_epi_mask,
    "epi_imgs lower_cutoff upper_cutoff connected opening threshold target_affine "
    "target_shape exclude_zeros n_jobs memory verbose",
    "EPI mask common to several runs: one :func:`compute_epi_mask` each, intersected.",
)
compute_multi_background_mask = _multi_run_mask(
    compute_background_mask,
    "data_imgs border_size connected opening threshold target_affine target_shape n_jobs "
    "memory verbose",
    "Background mask common to several runs: one per run, intersected.",
)


@_mask_doc
def compute_multi_brain_mask(
    target_imgs,
    threshold=0.5,
    connected=True,
    opening=2,
    memory=None,
    verbose=0,
    mask_type="whole-brain",
    **kwargs,
):
    """Template mask for several images sharing one grid (see :func:`compute_brain_mask`).

    Parameters
    ----------
    target_imgs : list of Niimg-like objects
        Images that must all have the same shape and affine.
    threshold, connected, opening, mask_type
        Passed to :func:`compute_brain_mask`.
    %(unused)s
    **kwargs
        Ignored (``n_jobs`` and the like), as in nilearn.

    Returns
    -------
    nibabel.Nifti1Image

    Raises
    ------
    ValueError
        The images do not share one field of view.
    """
    del memory, verbose, kwargs
    items = _check_nonempty_list(target_imgs, "target_imgs")
    loaded = [check_niimg(item, name=f"target_imgs[{i}]") for i, item in enumerate(items)]
    for index, img in enumerate(loaded[1:], start=1):
        if not check_same_fov(loaded[0], img):
            raise ValueError(
                f"target_imgs[{index}] {describe(items[index])} has a different field of view "
                f"(shape {img.shape[:3]}) from target_imgs[0] (shape {loaded[0].shape[:3]}): "
                "all images must share one grid."
            )
    return compute_brain_mask(
        loaded[0], threshold=threshold, connected=connected, opening=opening, mask_type=mask_type
    )


def intersect_masks(mask_imgs, threshold=0.5, connected=True):
    """Combine masks: keep voxels present in more than ``threshold`` of them.

    Parameters
    ----------
    mask_imgs : list of Niimg-like objects
        Binary masks on one grid (same shape and exactly the same affine).
    threshold : float in [0, 1], default=0.5
        1 gives the intersection, 0 the union.
    connected : bool, default=True
        Keep only the largest connected component.

    Returns
    -------
    nibabel.Nifti1Image
        int8 mask.
    """
    if len(mask_imgs) == 0:
        raise ValueError("No mask provided for intersection: mask_imgs is empty.")
    if threshold > 1:
        raise ValueError(f"The threshold should be smaller than 1; got {threshold}.")
    if threshold < 0:
        raise ValueError(f"The threshold should be greater than 0; got {threshold}.")
    threshold = min(threshold, 1 - 1.0e-7)
    first, ref_affine = load_mask_img(mask_imgs[0], allow_empty=True)
    counts = np.zeros(first.shape, dtype=np.int64)
    for index, mask_img in enumerate(mask_imgs):
        mask, affine = load_mask_img(mask_img, allow_empty=True)
        if np.any(affine != ref_affine):
            raise ValueError(
                f"All masks should have the same affine: mask_imgs[{index}] has\n{affine}\n"
                f"and mask_imgs[0] has\n{ref_affine}"
            )
        if mask.shape != first.shape:
            raise ValueError(
                f"All masks should have the same shape: mask_imgs[{index}] has {mask.shape} and "
                f"mask_imgs[0] has {first.shape}."
            )
        counts += mask
    group = counts > threshold * len(mask_imgs)
    if connected and group.any():
        group = largest_connected_component(group)
    return new_img_like(
        check_niimg_3d(mask_imgs[0], name="mask_imgs[0]"), group.astype(np.int8), ref_affine
    )


# --------------------------------------------------------------------------------------
# Masking and unmasking
# --------------------------------------------------------------------------------------


def apply_mask(imgs, mask_img, dtype="f", smoothing_fwhm=None, ensure_finite=True):
    """Extract the signals of the voxels in a mask.

    Parameters
    ----------
    imgs : Niimg-like object
        3D or 4D image(s) on the mask's grid.
    mask_img : Niimg-like object
        Binary 3D mask (see :func:`load_mask_img`).
    dtype : numpy dtype or "f", default="f"
        Output dtype; ``"f"`` keeps float data as is and converts integers to
        float32.
    smoothing_fwhm : float, sequence of 3 floats or "fast", optional
        Smooth (FWHM in mm) before masking; only the mask's bounding box plus
        the kernel radius is smoothed, with the same result as smoothing the
        whole image.
    ensure_finite : bool, default=True
        Replace NaN/inf by 0 (always done when smoothing).

    Returns
    -------
    numpy.ndarray, shape (n_volumes, n_voxels)
        Voxels in C order of the mask. A 3D image gives a 1D array (n_voxels,).

    Raises
    ------
    ValueError
        Invalid mask, or mask and image grids differ.
    """
    img, mask = load_img_and_mask(imgs, mask_img)
    data = get_data(img)
    dtype = masked_dtype(dtype, data.dtype)
    if smoothing_fwhm is not None:
        smoothed = smooth_masked(
            data, img.affine, smoothing_fwhm, mask, dtype=_smoothing_dtype(dtype)
        )
        smoothed = smoothed.astype(dtype, copy=False)
        return smoothed[0] if data.ndim == 3 else smoothed
    return masked_values(data, mask, dtype, ensure_finite)


def unmask(X, mask_img, order="F"):
    """Put masked signals back into images on the mask's grid.

    Parameters
    ----------
    X : numpy.ndarray or list of them
        1D (n_voxels,) gives a 3D image; 2D (n_samples, n_voxels) a 4D image.
        A list of arrays gives a list of images.
    mask_img : Niimg-like object
        Binary 3D mask.
    order : {"F", "C"}, default="F"
        Memory layout of the output data.

    Returns
    -------
    nibabel.Nifti1Image or list of them
        Zeros outside the mask; dtype of ``X``; affine of the mask.

    Raises
    ------
    TypeError
        ``X`` has more than 2 dimensions or the wrong number of voxels.
    """
    if isinstance(X, list) and X and not isinstance(X[0], numbers.Number):
        return [unmask(x, mask_img, order=order) for x in X]
    X = np.asanyarray(X)
    img = check_niimg_3d(mask_img, name="mask_img")
    mask, affine = load_mask_img(img)
    n_voxels = int(mask.sum())
    if X.ndim == 1:
        if X.shape[0] != n_voxels:
            raise TypeError(
                f"X must be of shape (samples, {n_voxels}); got {X.shape} "
                f"(mask_img {describe(mask_img)} has {n_voxels} voxels)."
            )
        data = np.zeros(mask.shape, dtype=X.dtype, order=order)
        data[mask] = X
    elif X.ndim == 2:
        if X.shape[1] != n_voxels:
            raise TypeError(
                f"X must be of shape (samples, {n_voxels}); got {X.shape} "
                f"(mask_img {describe(mask_img)} has {n_voxels} voxels)."
            )
        data = np.zeros((*mask.shape, X.shape[0]), dtype=X.dtype, order=order)
        data[mask, :] = X.T
    else:
        raise TypeError(f"Masked data X must be 2D or 1D array; got shape: {X.shape}")
    return new_img_like(img, data, affine)
