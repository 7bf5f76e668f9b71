"""Image-level operations: resampling, smoothing, cropping, averaging, indexing.

Names, signatures and numerics follow ``nilearn.image`` 0.11.1 so that a
nilearn user recognises them. On top of nilearn's API, :func:`smooth_masked`
is the fast path the pipeline uses when a mask is known: it smooths only the
voxels the masked output can depend on (bit-identical to smoothing the whole
image) and never makes a float64 copy of float32 4D data.

Deliberate differences from nilearn 0.11.1:

* ``resample_img`` with a pure integer translation and ``force_resample=False``:
  nilearn's block-copy shortcut misplaces the data when the target grid starts
  inside the data's bounding box, and ignores ``fill_value``; here the copy is
  exact (``out[i] = data[i + shift]``).
* ``fwhm`` with a length other than 1 or 3, or an unknown string, raises a
  ValueError naming ``fwhm`` (nilearn fails later with a numpy broadcasting error
  or silently skips); a malformed ``target_affine`` raises ValueError rather than
  ``LinAlgError``.
* ``memory``/``n_jobs``/``verbose`` are accepted and ignored (no disk cache);
  per-volume loops run in ``masker_wf._threads.default_n_threads()`` threads.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import linalg
from scipy.ndimage import affine_transform, binary_dilation, gaussian_filter1d

from . import _spec
from ._exceptions import BoundingBoxError, DimensionError
from ._niimg import (
    _expand_path,
    _is_list_like,
    check_niimg,
    check_niimg_4d,
    concat_along_time,
    describe,
    get_data,
    load_img_and_mask,
    masked_dtype,
    masked_values,
    new_img_like,
    voxel_sizes,
)
from ._threads import default_n_threads

__all__ = [
    "concat_imgs",
    "crop_img",
    "get_bounds",
    "high_variance_confounds",
    "index_img",
    "mean_img",
    "resample_img",
    "resample_to_img",
    "smooth_array",
    "smooth_img",
    "smooth_masked",
    "smooth_masked_chunks",
    "smooth_window_chunks",
]

_INTERPOLATION_ORDERS = {"continuous": 3, "linear": 1, "nearest": 0}
# FWHM = sqrt(8 ln 2) * sigma for a Gaussian.
_FWHM_PER_SIGMA = np.sqrt(8 * np.log(2))
# scipy's gaussian_filter1d default: the kernel is cut at 4 standard deviations.
_TRUNCATE = 4.0
# Workers for the per-volume loops (scipy.ndimage releases the GIL while filtering):
# default_n_threads(), read at call time.


# --------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------


def get_bounds(shape, affine):
    """World-space extent of the centres of the corner voxels of a 3D grid.

    Parameters
    ----------
    shape : sequence of 3 int
        Grid shape.
    affine : (4, 4) array
        Voxel-to-world transform.

    Returns
    -------
    list of 3 (min, max) tuples
        Per world axis, the smallest and largest coordinate reached by the
        eight corner voxel centres.
    """
    last = np.asarray(shape[:3], dtype=float) - 1
    corners = np.array(np.meshgrid([0.0, last[0]], [0.0, last[1]], [0.0, last[2]])).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    world = np.asarray(affine).dot(corners)[:3]
    return list(zip(world.min(axis=1), world.max(axis=1), strict=True))


def _check_resample_args(target_affine, target_shape, interpolation):
    """Validate resample_img arguments before any data is read."""
    if interpolation not in _INTERPOLATION_ORDERS:
        raise ValueError(
            f"interpolation must be one of {tuple(_INTERPOLATION_ORDERS)}; got {interpolation!r}."
        )
    if target_shape is not None:
        if target_affine is None:
            raise ValueError(
                "If target_shape is specified, target_affine should be specified too "
                f"(target_shape={tuple(target_shape)!r}, target_affine=None)."
            )
        if len(target_shape) != 3:
            raise ValueError(
                "The shape specified should be the shape of the 3D grid, and thus of length 3. "
                f"target_shape={tuple(target_shape)!r} was specified."
            )
        if np.shape(target_affine) == (3, 3):
            raise ValueError(
                "Given target shape without anchor vector: target_affine shape should be (4, 4) "
                "and not (3, 3) when target_shape is given."
            )
    if target_affine is not None and np.shape(target_affine) not in ((3, 3), (4, 4)):
        raise ValueError(
            "target_affine must be a (3, 3) or (4, 4) matrix; got an array of shape "
            f"{np.shape(target_affine)}."
        )


def _extrapolate_out_of_mask(data, finite, iterations=2):
    """Fill the non-finite voxels next to finite ones with their neighbours' mean.

    Each iteration grows the valid region by one voxel (6-connectivity): a
    newly reached voxel takes the mean of its valid neighbours (outside the
    array counts as invalid). Voxels never reached are set to 0. Returns a
    float64 array, as the spline interpolation works in float64 anyway.
    """
    values = np.where(finite, data, 0.0).astype(np.float64)
    valid = finite.copy()
    for _ in range(iterations):
        grown = binary_dilation(valid)
        shell = grown & ~valid
        total = np.zeros(values.shape)
        count = np.zeros(values.shape)
        for axis in range(3):
            for shift in (1, -1):
                src = [slice(None)] * 3
                dst = [slice(None)] * 3
                if shift == 1:
                    src[axis], dst[axis] = slice(1, None), slice(None, -1)
                else:
                    src[axis], dst[axis] = slice(None, -1), slice(1, None)
                src, dst = tuple(src), tuple(dst)
                total[dst] += np.where(valid[src], values[src], 0.0)
                count[dst] += valid[src]
        values[shell] = total[shell] / count[shell]
        values[~grown] = 0.0
        valid = grown
    return values


def _looks_binary(volume) -> bool:
    """True if the volume holds exactly the values 0 and 1 (cheaper than np.unique)."""
    is_zero = volume == 0
    is_one = volume == 1
    return bool(np.all(is_zero | is_one) and is_zero.any() and is_one.any())


def _warn_resample_input(volume, order):
    """nilearn's per-volume warnings; returns True if the volume has non-finite values."""
    has_non_finite = volume.dtype.kind not in "iub" and not np.isfinite(volume).all()
    if has_non_finite:
        warnings.warn(
            "NaNs or infinite values are present in the data passed to resample: they make "
            "resampling ill-defined and slower; values around them are extrapolated.",
            RuntimeWarning,
            stacklevel=4,
        )
    if order != 0 and _looks_binary(volume):
        warnings.warn(
            "Resampling binary images with continuous or linear interpolation. This might lead "
            "to unexpected results. You might consider using nearest interpolation instead.",
            stacklevel=4,
        )
    return has_non_finite


def _resample_volume(volume, has_non_finite, matrix, offset, target_shape, order, out, fill):
    """Interpolate one 3D volume into ``out`` (target voxel -> source voxel mapping)."""
    if has_non_finite:
        finite = np.isfinite(volume)
        volume = _extrapolate_out_of_mask(volume, finite, iterations=2)
    affine_transform(
        volume,
        matrix,
        offset=offset,
        output_shape=target_shape,
        output=out,
        cval=fill,
        order=order,
    )
    if has_non_finite:
        # Voxels interpolated from a non-finite neighbourhood are marked NaN again.
        not_finite = affine_transform(
            ~finite, matrix, offset=offset, output_shape=target_shape, order=0
        )
        out[not_finite] = np.nan
    return out


def _output_dtype(dtype, interpolation):
    """dtype of resampled data: spline interpolation of signed ints gives floats."""
    dtype = np.dtype(dtype)
    if interpolation == "continuous" and dtype.kind == "i":
        new = np.dtype(np.float64) if dtype.itemsize == 8 else np.dtype(np.float32)
        warnings.warn(f"Casting data from {dtype.name} to {new.name}", stacklevel=3)
        dtype = new
    return dtype.newbyteorder("=")


def _shift_copy(data, shift, out, fill_value):
    """Place ``data`` in ``out`` for a pure integer translation: out[i] = data[i + shift]."""
    dst, src = [], []
    for size_out, size_in, step in zip(out.shape[:3], data.shape[:3], shift, strict=True):
        start = max(0, -step)
        stop = min(size_out, size_in - step)
        if stop <= start:
            out[...] = fill_value
            return out
        dst.append(slice(start, stop))
        src.append(slice(start + step, stop + step))
    if fill_value != 0:
        out[...] = fill_value
    out[tuple(dst)] = data[tuple(src)]
    return out


def resample_img(
    img,
    target_affine=None,
    target_shape=None,
    interpolation="continuous",
    copy=True,
    order="F",
    clip=True,
    fill_value=0,
    force_resample=None,
    copy_header=False,
):
    """Resample an image onto a new voxel grid.

    Parameters
    ----------
    img : Niimg-like object
        3D or 4D image (4D images are resampled volume by volume).
    target_affine : (3, 3) or (4, 4) array, optional
        Affine of the output grid (voxel -> mm). A 3x3 matrix only fixes the
        voxel axes: the offset and the shape are chosen so that the output is
        the smallest grid (plus one voxel) holding the whole transformed input.
    target_shape : sequence of 3 int, optional
        Shape of the output grid; needs a 4x4 ``target_affine``. When omitted
        with a 4x4 affine, the grid starts at the affine's origin and extends
        far enough to hold all the data at non-negative voxel indices.
    interpolation : {"continuous", "linear", "nearest"}, default="continuous"
        Cubic spline, trilinear or nearest-neighbour interpolation.
    copy : bool, default=True
        When no resampling is needed, return a copy rather than ``img``.
    order : {"F", "C"}, default="F"
        Memory layout of the output array.
    clip : bool, default=True
        Clip the output to ``[min(data.min(), 0), max(data.max(), 0)]``
        (over the whole input) to remove spline ringing.
    fill_value : float, default=0
        Value of output voxels outside the input field of view.
    force_resample : bool or None, default=None
        Interpolate even when the transform is a pure integer translation
        (otherwise the data block is copied, which is exact). None is False, as in
        nilearn 0.11.1 (whose warning that 0.13 will change it is not repeated here).
    copy_header : bool, default=False
        Copy the input header into the output image.

    Returns
    -------
    nibabel.Nifti1Image
        The resampled image. Signed-integer data resampled with
        ``"continuous"`` becomes float32 (float64 for int64), with a warning.

    Raises
    ------
    ValueError
        Bad ``target_shape``/``target_affine``/``interpolation``.
    masker_wf._exceptions.BoundingBoxError
        The target field of view contains none of the data.

    Notes
    -----
    Deviation from nilearn 0.11.1: for a pure integer translation with
    ``force_resample=False`` nilearn copies a misplaced block of data when the
    target grid starts inside the data's bounding box (the block is not offset
    by the part that falls before the grid) and ignores ``fill_value``. Here the
    block copy is exact, ``out[i] = data[i + shift]``, which equals
    interpolating at integer positions.
    """
    _check_resample_args(target_affine, target_shape, interpolation)
    input_is_path = isinstance(img, (str, os.PathLike))
    img = check_niimg(img, name="img")
    shape = img.shape
    affine = img.affine

    if hasattr(img, "get_sform") and not img.get_sform(coded=True)[1]:
        warnings.warn(
            f"The image {describe(img)} has no sform in its header: results may not be as "
            "expected.",
            stacklevel=2,
        )

    if target_affine is None and target_shape is None:
        return _copy_img(img) if copy and not input_is_path else img
    target_affine = np.asarray(target_affine, dtype=float)
    if (
        target_shape is not None
        and tuple(int(s) for s in target_shape) == tuple(shape[:3])
        and target_affine.shape == affine.shape
        and np.allclose(target_affine, affine)
    ):
        return _copy_img(img) if copy and not input_is_path else img

    data = get_data(img)
    if target_affine.shape == (3, 3):
        full = np.eye(4)
        full[:3, :3] = target_affine
        target_affine = full
        (xmin, xmax), (ymin, ymax), (zmin, zmax) = get_bounds(
            shape[:3], np.linalg.inv(target_affine).dot(affine)
        )
        # Anchor the grid on the lowest corner of the transformed data.
        target_affine[:3, 3] = target_affine[:3, :3].dot([xmin, ymin, zmin])
        xmax, ymax, zmax = xmax - xmin, ymax - ymin, zmax - zmin
    else:
        target_affine = target_affine.copy()
        (_, xmax), (_, ymax), (_, zmax) = get_bounds(
            shape[:3], np.linalg.inv(target_affine).dot(affine)
        )
    if target_shape is None:
        target_shape = (int(np.ceil(xmax)) + 1, int(np.ceil(ymax)) + 1, int(np.ceil(zmax)) + 1)
    if xmax < 0 or ymax < 0 or zmax < 0:
        raise BoundingBoxError(
            "The field of view given by the target affine does not contain any of the data of "
            f"{describe(img)}."
        )
    target_shape = tuple(int(s) for s in target_shape)

    if np.all(target_affine == affine):
        transform = np.eye(4)
    else:
        transform = linalg.inv(affine).dot(target_affine)
    matrix, offset = transform[:3, :3], transform[:3, 3]

    out_dtype = _output_dtype(data.dtype, interpolation)
    extra_shape = data.shape[3:]
    resampled = np.zeros(target_shape + extra_shape, dtype=out_dtype, order=order)

    integer_shift = np.all(matrix == np.eye(3)) and np.all(offset == np.round(offset))
    if integer_shift and not force_resample:
        _shift_copy(data, [int(b) for b in offset], resampled, fill_value)
    else:
        spline_order = _INTERPOLATION_ORDERS[interpolation]
        if np.all(np.diag(np.diag(matrix)) == matrix):
            # scipy takes a faster zoom/shift path for a diagonal matrix given as a vector.
            matrix = np.diag(matrix)
        every = (slice(None),) * 3
        jobs = [
            (every + index, _warn_resample_input(data[every + index], spline_order))
            for index in np.ndindex(*extra_shape)
        ]

        def run(job):
            where, has_non_finite = job
            _resample_volume(
                data[where],
                has_non_finite,
                matrix,
                offset,
                target_shape,
                spline_order,
                resampled[where],
                fill_value,
            )

        # Volumes are independent and scipy.ndimage releases the GIL while interpolating.
        if len(jobs) > 1:
            with ThreadPoolExecutor(max_workers=default_n_threads()) as pool:
                for _ in pool.map(run, jobs):
                    pass
        else:
            for job in jobs:
                run(job)

    if clip:
        # 0 is part of the range: it is what the grid is padded with.
        low = min(np.nanmin(data), 0)
        high = max(np.nanmax(data), 0)
        resampled.clip(low, high, out=resampled)
    return new_img_like(img, resampled, target_affine, copy_header=copy_header)


@_spec.declare_signature(
    "source_img target_img interpolation copy order clip fill_value force_resample copy_header",
    resample_img,
    clip=False,
)
def resample_to_img(source_img, target_img, **options):
    """Resample ``source_img`` onto the grid (shape and affine) of ``target_img``.

    No registration is done: both images must already be in the same space.

    Parameters
    ----------
    source_img : Niimg-like object
        Image(s) to resample.
    target_img : Niimg-like object
        Reference image; only its first three dimensions and affine are used.
    interpolation, copy, order, fill_value, force_resample, copy_header
        As in :func:`resample_img`, with the same defaults.
    clip : bool, default=False
        As in :func:`resample_img`, whose default is True (nilearn's defaults).

    Returns
    -------
    nibabel.Nifti1Image
    """
    target = check_niimg(target_img, name="target_img")
    return resample_img(
        source_img, target_affine=target.affine, target_shape=target.shape[:3], **options
    )


def _copy_img(img):
    return new_img_like(img, np.array(get_data(img), copy=True), img.affine, copy_header=True)


# --------------------------------------------------------------------------------------
# Smoothing
# --------------------------------------------------------------------------------------


def _warn_zero_fwhm(fwhm):
    """nilearn treats a scalar FWHM of 0 as "no smoothing", with a warning."""
    if isinstance(fwhm, (int, float)) and not isinstance(fwhm, bool) and fwhm == 0:
        warnings.warn(
            f"The parameter 'fwhm' for smoothing is specified as {fwhm}. Setting it to None "
            "(no smoothing will be performed)",
            stacklevel=3,
        )
        return None
    return fwhm


def _sigmas(fwhm, affine):
    """Per-axis Gaussian standard deviations (voxels) for a FWHM in mm."""
    values = np.asarray([fwhm], dtype=object).ravel()
    try:
        values = np.array([0.0 if v is None else float(v) for v in values])
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"fwhm must be a number, a sequence of 3 numbers, 'fast' or None; got {fwhm!r}."
        ) from exc
    if values.size not in (1, 3):
        raise ValueError(
            f"fwhm must be a number or one value per spatial axis (3); got {values.size} "
            f"values: {fwhm!r}."
        )
    return values / (_FWHM_PER_SIGMA * voxel_sizes(affine))


def _fast_smooth(arr):
    """nilearn's 'fast' kernel: each voxel plus 0.2 x its 6 neighbours, over 2.2."""
    weight = 0.2
    out = arr.copy()
    weighted = weight * arr
    out[:-1] += weighted[1:]
    out[1:] += weighted[:-1]
    out[:, :-1] += weighted[:, 1:]
    out[:, 1:] += weighted[:, :-1]
    out[:, :, :-1] += weighted[:, :, 1:]
    out[:, :, 1:] += weighted[:, :, :-1]
    out /= 1 + 6 * weight
    return out


def _smoothing_dtype(dtype):
    """Signed ints are smoothed in float32 (int64 in float64); other dtypes are kept."""
    dtype = np.dtype(dtype)
    if dtype.kind == "i":
        return np.dtype(np.float64) if dtype.itemsize == 8 else np.dtype(np.float32)
    return dtype


def smooth_array(arr, affine, fwhm=None, ensure_finite=True, copy=True):
    """Smooth an array with an isotropic or per-axis Gaussian kernel given in mm.

    Parameters
    ----------
    arr : numpy.ndarray
        3D or 4D data; only the first three axes are smoothed.
    affine : (4, 4) array
        Voxel-to-world affine; voxel sizes are the norms of its first three
        columns (so oblique grids are handled).
    fwhm : float, sequence of 3 floats, "fast" or None, default=None
        Full width at half maximum of the kernel in mm. A sequence gives one
        FWHM per axis (0 or None skips an axis). ``"fast"`` applies a cheap
        6-neighbour kernel. None or 0 (with a warning) does no smoothing.
    ensure_finite : bool, default=True
        Replace NaN and infinite values by 0 before smoothing.
    copy : bool, default=True
        Work on a copy; with False, float input is modified in place.

    Returns
    -------
    numpy.ndarray
        Smoothed data. Signed integers become float32 (int64: float64);
        float32 stays float32. The kernel is cut at 4 standard deviations and
        the array is reflected at its edges.
    """
    fwhm = _warn_zero_fwhm(fwhm)
    work_dtype = _smoothing_dtype(arr.dtype)
    if work_dtype != arr.dtype:
        arr = arr.astype(work_dtype)
    elif copy:
        arr = arr.copy()
    if ensure_finite and arr.dtype.kind in "fc":
        arr[~np.isfinite(arr)] = 0
    if isinstance(fwhm, str):
        if fwhm != "fast":
            raise ValueError(f"fwhm must be a number, 'fast' or None; got the string {fwhm!r}.")
        return _fast_smooth(arr)
    if fwhm is not None:
        for axis, sigma in enumerate(_sigmas(fwhm, affine)):
            if sigma > 0:
                gaussian_filter1d(arr, sigma, axis=axis, output=arr)
    return arr


def smooth_img(imgs, fwhm):
    """Smooth image(s) with a Gaussian kernel whose FWHM is given in mm.

    Parameters
    ----------
    imgs : Niimg-like object or list of them
        3D or 4D image(s); each image in a list is smoothed separately.
    fwhm : float, sequence of 3 floats, "fast" or None
        See :func:`smooth_array`.

    Returns
    -------
    nibabel.Nifti1Image or list of them
        Same structure as ``imgs``. Non-finite values are set to 0 first.
    """
    single = not _is_list_like(imgs)
    results = []
    for img in [imgs] if single else imgs:
        img = check_niimg(img, name="imgs")
        smoothed = smooth_array(get_data(img), img.affine, fwhm=fwhm, ensure_finite=True)
        results.append(new_img_like(img, smoothed, img.affine, copy_header=True))
    return results[0] if single else results


def _kernel_radius(fwhm, affine):
    """Per-axis reach (voxels) of the smoothing kernel, or None for no smoothing."""
    if fwhm is None:
        return None
    if isinstance(fwhm, str):
        if fwhm != "fast":
            raise ValueError(f"fwhm must be a number, 'fast' or None; got the string {fwhm!r}.")
        return np.ones(3, dtype=int)
    sigmas = np.broadcast_to(_sigmas(fwhm, affine), (3,))
    return np.array([int(_TRUNCATE * s + 0.5) if s > 0 else 0 for s in sigmas])


def smooth_masked(data4d, affine, fwhm, mask, *, dtype=None, ensure_finite=True, n_jobs=None):
    """Smooth 4D data and return the masked voxels, touching only what they depend on.

    Equal to ``apply_mask(smooth_img(img, fwhm), mask)`` as nilearn computes
    it, but the Gaussian filter runs only on the mask's bounding box padded
    by the kernel radius (4 standard deviations, per axis). A masked voxel
    depends on nothing outside that box, and where the box reaches the array
    edge the filter's reflection happens at the same place as on the full
    array, so the result is identical. Volumes are processed in threads.

    Parameters
    ----------
    data4d : array-like, shape (x, y, z, t) or (x, y, z)
        Image data (a numpy array, memmap or nibabel array proxy). It is never
        modified and never copied as a whole.
    affine : (4, 4) array
        Voxel-to-world affine (voxel sizes set the kernel width in voxels).
    fwhm : float, sequence of 3 floats, "fast" or None
        Kernel FWHM in mm (see :func:`smooth_array`). None or 0: no smoothing.
    mask : array-like of bool, shape (x, y, z), or a nibabel image
        Voxels to return (non-zero = in the mask).
    dtype : numpy dtype, optional
        Working and output dtype. By default, as nilearn: signed ints are
        smoothed in float32 (int64: float64), floats keep their precision,
        unsigned ints are smoothed in their own dtype (nilearn truncates them)
        and returned as float32.
    ensure_finite : bool, default=True
        Replace NaN/inf by 0 before smoothing (nilearn always does).
    n_jobs : int, optional
        Number of threads (default :func:`masker_wf._threads.default_n_threads`).

    Returns
    -------
    numpy.ndarray, shape (t, n_mask_voxels)
        Smoothed signals, voxels in C order of the mask (as ``data[mask]``).

    See Also
    --------
    smooth_masked_chunks : the same on data that arrive in blocks of volumes.
    """
    fwhm = _warn_zero_fwhm(fwhm)
    mask = _as_bool_mask(mask)
    shape = tuple(data4d.shape)
    if len(shape) not in (3, 4):
        raise DimensionError(len(shape), 4, "data4d")
    _check_mask_shape(mask, shape)
    plan = _MaskedSmoothing(shape, affine, fwhm, mask)
    if len(shape) == 3:
        block = np.asarray(data4d[plan.box])[..., np.newaxis]
    else:
        # The box only: a view of an array, a partial read of a proxy.
        block = (
            data4d[plan.box] if isinstance(data4d, np.ndarray) else np.asarray(data4d[plan.box])
        )
    n_volumes = block.shape[3]
    step = max(1, min(16, -(-n_volumes // 2)))
    boxed = ((t, block[..., t : t + step]) for t in range(0, n_volumes, step))
    return plan.run(boxed, n_volumes, block.dtype, dtype, ensure_finite, n_jobs)


def smooth_masked_chunks(
    chunks,
    shape,
    affine,
    fwhm,
    mask,
    *,
    dtype=None,
    ensure_finite=True,
    n_jobs=None,
    allocate=None,
):
    """:func:`smooth_masked` of 4D data given as consecutive blocks of volumes.

    Each block is smoothed (on threads) as soon as it arrives, while the caller's
    iterator produces the next ones (a file being decompressed, for instance); only
    the blocks in flight are in memory. The result is identical to
    :func:`smooth_masked` on the whole array.

    Parameters
    ----------
    chunks : iterable of (int, array)
        ``(start, block)`` pairs in order: ``block`` (x, y, z, n) holds volumes
        ``start`` to ``start + n`` (see :func:`masker_wf._niimg.iter_volume_chunks`).
        A block is not used after its volumes are done.
    shape : tuple of 4 int
        Shape of the whole 4D data.
    affine, fwhm, mask, dtype, ensure_finite, n_jobs
        As in :func:`smooth_masked`.
    allocate : callable, optional
        ``allocate(shape, dtype)`` gives the array the result is written into (default
        :func:`numpy.empty`): a memory map of the output file, for instance.

    Returns
    -------
    numpy.ndarray, shape (t, n_mask_voxels)
        The array ``allocate`` gave.
    """
    plan, shape = _streamed_plan(shape, affine, fwhm, mask)
    chunks = iter(chunks)
    first = next(chunks, None)
    if first is None:
        raise ValueError(f"no volumes given for data of shape {shape}.")
    boxed = ((start, block[plan.box]) for start, block in _chain_first(first, chunks))
    return plan.run(boxed, shape[3], first[1].dtype, dtype, ensure_finite, n_jobs, allocate)


def _streamed_plan(shape, affine, fwhm, mask):
    """``(plan, shape)`` of smoothing 4D data of ``shape`` given block by block."""
    fwhm = _warn_zero_fwhm(fwhm)
    mask = _as_bool_mask(mask)
    shape = tuple(shape)
    if len(shape) != 4:
        raise DimensionError(len(shape), 4, "data4d")
    _check_mask_shape(mask, shape)
    return _MaskedSmoothing(shape, affine, fwhm, mask), shape


def _all_finite(values) -> bool:
    """Whether every value is finite, in one pass and no temporary array.

    The float64 sum of float32 values cannot overflow, so it is finite exactly when every
    value is; for float64 data an overflowing sum falls back to the exact test.
    """
    total = np.add.reduce(values, axis=None, dtype=np.float64)
    return bool(np.isfinite(total)) or bool(np.isfinite(values).all())


def _chain_first(first, rest):
    yield first
    yield from rest


def _as_bool_mask(mask) -> np.ndarray:
    if hasattr(mask, "dataobj"):
        mask = np.asanyarray(mask.dataobj)
    return np.asarray(mask).astype(bool, copy=False)


def _check_mask_shape(mask, shape) -> None:
    if mask.shape != tuple(shape[:3]):
        raise ValueError(
            f"mask shape {mask.shape} does not match the spatial shape {tuple(shape[:3])} of "
            "data4d."
        )


class _MaskedSmoothing:
    """What :func:`smooth_masked` computes once per run: the box, the passes, the indices."""

    def __init__(self, shape, affine, fwhm, mask):
        self.fwhm = fwhm
        self.n_voxels = int(mask.sum())
        radius = _kernel_radius(fwhm, affine)
        reach = radius if radius is not None else np.zeros(3, dtype=int)
        box, inner = [], []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            hits = np.flatnonzero(mask.any(axis=other))
            if hits.size == 0:  # empty mask: nothing to smooth
                hits = np.array([0])
            start = max(int(hits[0]) - int(reach[axis]), 0)
            stop = min(int(hits[-1]) + 1 + int(reach[axis]), shape[axis])
            box.append(slice(start, stop))
            # Where the mask itself lies, in box coordinates.
            inner.append(slice(int(hits[0]) - start, int(hits[-1]) + 1 - start))
        self.box = tuple(box)
        # The mask's bounding box, in box coordinates: every voxel of it is final after
        # the three passes (see pass_regions).
        self.inner = tuple(inner)
        self.sub_mask = mask[self.box]
        self.sigmas = None
        if radius is not None and not isinstance(fwhm, str):
            self.sigmas = np.broadcast_to(_sigmas(fwhm, affine), (3,))
        # The filter passes run along axes 0, 1 then 2, rounding to the working dtype in
        # between, exactly as nilearn. Each pass only needs to produce the lines that
        # later passes read: pass 1 only where the mask spans axis 0, pass 2 only where it
        # spans axes 0 and 1. Lines are always complete along the filtered axis, so this
        # is exact.
        self.pass_regions = (
            (slice(None), slice(None), slice(None)),
            (inner[0], slice(None), slice(None)),
            (inner[0], inner[1], slice(None)),
        )

    def _smooth_volumes(
        self, block, rows, out, work_dtype, layout, flat_index, ensure_finite, window=None
    ):
        buffer = np.empty(self.sub_mask.shape, dtype=work_dtype, order=layout)
        gaussian = self.sigmas is not None and not isinstance(self.fwhm, str)
        for t, row in rows:
            volume = block[..., t]
            # The first pass can read the volume where it is (no copy into the buffer)
            # when nothing has to be converted or zeroed first: the same numbers.
            direct = (
                gaussian
                and self.sigmas[0] > 0
                and volume.dtype == work_dtype
                and not (ensure_finite and work_dtype.kind in "fc" and not _all_finite(volume))
            )
            if not direct:
                np.copyto(buffer, volume, casting="unsafe")
                if ensure_finite and work_dtype.kind in "fc":
                    bad = ~np.isfinite(buffer)
                    if bad.any():
                        buffer[bad] = 0
            smoothed = buffer
            if isinstance(self.fwhm, str):
                smoothed = _fast_smooth(buffer)
            elif gaussian:
                for axis, sigma in enumerate(self.sigmas):
                    if sigma > 0:
                        region = buffer[self.pass_regions[axis]]
                        source = volume if direct and axis == 0 else region
                        gaussian_filter1d(source, sigma, axis=axis, output=region)
            if window is not None:
                # The whole bounding box of the mask, for a cropped smoothed image.
                values = window[..., t]
                values[...] = smoothed[self.inner]
                if ensure_finite and values.dtype.kind in "fc":
                    values[~np.isfinite(values)] = 0
                continue
            values = np.take(smoothed.reshape(-1, order=layout), flat_index)
            if ensure_finite and values.dtype.kind in "fc":
                bad = ~np.isfinite(values)
                if bad.any():
                    values[bad] = 0
            out[row] = values

    def run(
        self, boxed, n_volumes, in_dtype, dtype, ensure_finite, n_jobs, allocate=None
    ) -> np.ndarray:
        """Smooth the ``(start, boxed block)`` pairs on threads into ``(t, n_voxels)``.

        The result is written into ``allocate(shape, dtype)`` (default numpy.empty).
        """
        work_dtype = np.dtype(dtype) if dtype is not None else _smoothing_dtype(in_dtype)
        out_dtype = work_dtype if work_dtype.kind == "f" else np.dtype(np.float32)
        out = (allocate or np.empty)((n_volumes, self.n_voxels), out_dtype)
        if self.n_voxels == 0 or n_volumes == 0:
            for _ in boxed:  # let a streaming source finish
                pass
            return out
        n_threads = max(1, int(n_jobs or default_n_threads()))
        layout = flat_index = None
        pending = []
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            for start, block in boxed:
                if layout is None:
                    # Match the source layout so that copying a volume is a plain copy.
                    contiguous = block[..., 0].flags.f_contiguous or block.flags.f_contiguous
                    layout = "F" if contiguous else "C"
                    flat_index = np.ravel_multi_index(
                        np.nonzero(self.sub_mask), self.sub_mask.shape, order=layout
                    )
                rows = [(t, start + t) for t in range(block.shape[3])]
                # One task per thread and block: the block is released once they are done.
                for part in range(min(n_threads, len(rows))):
                    pending.append(
                        pool.submit(
                            self._smooth_volumes,
                            block,
                            rows[part::n_threads],
                            out,
                            work_dtype,
                            layout,
                            flat_index,
                            ensure_finite,
                        )
                    )
                # Bounded work in flight: at most two blocks beyond the one being read.
                while len(pending) > 2 * n_threads:
                    pending.pop(0).result()
            for future in pending:
                future.result()
        return out

    def run_window(self, boxed, n_volumes, in_dtype, dtype, ensure_finite, n_jobs):
        """Smooth the ``(start, boxed block)`` pairs; yield the mask's bounding box of each.

        Yields ``(start, window)`` in order, ``window`` an array (x, y, z, n) in Fortran
        order (the layout of a NIfTI file) holding the smoothed values of the mask's
        bounding box for volumes ``start`` to ``start + n``: equal to smoothing the
        whole field of view, then cropping. At most two blocks are in flight beyond the
        one being read, so that a streaming source keeps running while the windows are
        written.
        """
        work_dtype = np.dtype(dtype) if dtype is not None else _smoothing_dtype(in_dtype)
        out_dtype = work_dtype if work_dtype.kind == "f" else np.dtype(np.float32)
        shape = tuple(s.stop - s.start for s in self.inner)
        n_threads = max(1, int(n_jobs or default_n_threads()))
        in_flight = []
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            for start, block in boxed:
                contiguous = block[..., 0].flags.f_contiguous or block.flags.f_contiguous
                layout = "F" if contiguous else "C"
                window = np.empty((*shape, block.shape[3]), dtype=out_dtype, order="F")
                rows = [(t, start + t) for t in range(block.shape[3])]
                parts = [
                    pool.submit(
                        self._smooth_volumes,
                        block,
                        rows[part::n_threads],
                        None,
                        work_dtype,
                        layout,
                        None,
                        ensure_finite,
                        window,
                    )
                    for part in range(min(n_threads, len(rows)))
                ]
                in_flight.append((start, window, parts))
                while len(in_flight) > 2:
                    yield _finished(in_flight.pop(0))
            while in_flight:
                yield _finished(in_flight.pop(0))


def _finished(item):
    start, window, parts = item
    for future in parts:
        future.result()
    return start, window


def smooth_window_chunks(
    chunks, shape, affine, fwhm, mask, *, dtype=None, ensure_finite=True, n_jobs=None
):
    """Smoothed 4D data cropped to the mask's bounding box, block after block.

    The values of smoothing the whole field of view (:func:`smooth_array`, as nilearn's
    ``smooth_img``), then cropping to the bounding box of ``mask``; computed, like
    :func:`smooth_masked`, on that box padded by the kernel radius only.

    Parameters
    ----------
    chunks, shape, affine, fwhm, mask, dtype, ensure_finite, n_jobs
        As in :func:`smooth_masked_chunks`.

    Returns
    -------
    box : tuple of 3 slices
        The mask's bounding box in the input grid.
    windows : iterator of (int, numpy.ndarray)
        ``(start, window)``: the smoothed box of volumes ``start`` to
        ``start + window.shape[3]``, Fortran order; float32 for float32 and integer
        input, float64 for float64. Consume it to run the smoothing.
    """
    plan, shape = _streamed_plan(shape, affine, fwhm, mask)
    box = tuple(
        slice(outer.start + inner.start, outer.start + inner.stop)
        for outer, inner in zip(plan.box, plan.inner, strict=True)
    )

    def windows():
        chunk_iter = iter(chunks)
        first = next(chunk_iter, None)
        if first is None:
            raise ValueError(f"no volumes given for data of shape {shape}.")
        boxed = ((start, block[plan.box]) for start, block in _chain_first(first, chunk_iter))
        yield from plan.run_window(boxed, shape[3], first[1].dtype, dtype, ensure_finite, n_jobs)

    return box, windows()


# --------------------------------------------------------------------------------------
# Cropping, averaging, indexing, concatenation
# --------------------------------------------------------------------------------------


def _crop_to(img, slices, copy=True, copy_header=False):
    data = get_data(img)[tuple(slices)]
    if copy:
        data = data.copy()
    affine = img.affine.copy()
    start = np.array([s.start for s in slices[:3]])
    affine[:3, 3] = img.affine[:3, 3] + img.affine[:3, :3].dot(start)
    affine[3] = [0, 0, 0, 1]
    return new_img_like(img, data, affine, copy_header=copy_header)


def crop_img(img, rtol=1e-8, copy=True, pad=True, return_offset=False, copy_header=False):
    """Crop an image to the bounding box of its non-negligible voxels.

    Parameters
    ----------
    img : Niimg-like object
        3D or 4D image (a voxel is kept if it passes at any time point).
    rtol : float, default=1e-8
        Voxels with ``|value| <= rtol * max|data|`` count as empty.
    copy : bool, default=True
        Copy the cropped data rather than keeping a view.
    pad : bool, default=True
        Keep one extra voxel on each side (within the grid).
    return_offset : bool, default=False
        Also return the slices used for cropping.
    copy_header : bool, default=False
        Copy the input header.

    Returns
    -------
    nibabel.Nifti1Image or (nibabel.Nifti1Image, tuple of slice)
        The cropped image, with its affine origin moved to the first kept voxel.
        An image with no voxel above threshold is returned whole.
    """
    img = check_niimg(img, name="img")
    data = get_data(img)
    peak = max(-data.min(), data.max())
    keep = (data < -rtol * peak) | (data > rtol * peak)
    if data.ndim == 4:
        keep = keep.any(axis=-1)
    coords = np.array(np.nonzero(keep))
    if coords.shape[1] == 0:
        start, end = np.zeros(3, dtype=int), np.array(data.shape[:3])
    else:
        start, end = coords.min(axis=1), coords.max(axis=1) + 1
    if pad:
        start = np.maximum(start - 1, 0)
        end = np.minimum(end + 1, data.shape[:3])
    slices = tuple(slice(int(s), int(e)) for s, e in zip(start, end, strict=True))
    cropped = _crop_to(img, slices, copy=copy, copy_header=copy_header)
    return (cropped, slices) if return_offset else cropped


def _compute_mean(imgs, target_affine=None, target_shape=None, smooth=False):
    """Temporal mean of an image, optionally resampled and smoothed.

    ``smooth`` is a FWHM in **voxels** (the mean is smoothed with an identity
    affine); NaNs stay NaN. Returns ``(mean_array, affine)``.
    """
    img = check_niimg(imgs, name="imgs")
    data = get_data(img)
    if data.ndim not in (3, 4):
        raise DimensionError(data.ndim, 4, f"imgs {describe(imgs)}")
    mean = data.mean(axis=-1) if data.ndim == 4 else data.copy()
    resampled = resample_img(
        new_img_like(img, mean, img.affine),
        target_affine=target_affine,
        target_shape=target_shape,
        copy=False,
    )
    affine = resampled.affine
    mean = get_data(resampled)
    if smooth:
        nans = np.isnan(mean)
        mean = smooth_array(mean, np.eye(4), fwhm=smooth, ensure_finite=True, copy=False)
        mean[nans] = np.nan
    return mean, affine


def mean_img(imgs, target_affine=None, target_shape=None, verbose=0, n_jobs=1, copy_header=False):
    """Voxel-wise mean over time (and over images when a list is given).

    Parameters
    ----------
    imgs : Niimg-like object or list of them
        Each item is averaged over time, resampled if a target is given, and
        the per-item means are averaged.
    target_affine : (3, 3) or (4, 4) array, optional
        Resample the means to this affine (see :func:`resample_img`).
    target_shape : sequence of 3 int, optional
        Resample the means to this shape.
    verbose : int, default=0
        Accepted for nilearn compatibility; unused.
    n_jobs : int, default=1
        Accepted for nilearn compatibility; items are processed in sequence.
    copy_header : bool, default=False
        Copy the first image's header.

    Returns
    -------
    nibabel.Nifti1Image
        3D mean image. float32 data gives a float32 mean; integers give float64.
    """
    del verbose, n_jobs
    items = [imgs] if not _is_list_like(imgs) else list(imgs)
    if not items:
        raise ValueError("imgs: an empty list of images was given to mean_img.")
    first = check_niimg(items[0], name="imgs")
    total, first_affine = _compute_mean(first, target_affine, target_shape)
    if target_affine is None or target_shape is None:
        target_affine, target_shape = first_affine, total.shape[:3]
    for item in items[1:]:
        total += _compute_mean(item, target_affine, target_shape)[0]
    total = total / float(len(items))
    return new_img_like(first, total, target_affine, copy_header=copy_header)


def index_img(imgs, index):
    """Select volume(s) of a 4D image.

    Parameters
    ----------
    imgs : Niimg-like object
        4D image.
    index : int, slice, sequence of int or bool array (or pandas Series)
        Volume(s) to select, numpy-style.

    Returns
    -------
    nibabel.Nifti1Image
        3D image for an integer index, 4D otherwise.
    """
    img = check_niimg_4d(imgs, name="imgs")
    if hasattr(index, "iloc") and hasattr(index, "to_numpy"):
        index = index.to_numpy().ravel()
    return new_img_like(img, get_data(img)[:, :, :, index], img.affine, copy_header=True)


def concat_imgs(
    niimgs,
    dtype=np.float32,
    ensure_ndim=None,
    memory=None,
    memory_level=0,
    auto_resample=False,
    verbose=0,
):
    """Concatenate 3D or 4D images along time into one 4D image.

    Parameters
    ----------
    niimgs : list of Niimg-like objects, or a glob pattern
        Images of the same dimensionality (all 3D or all 4D).
    dtype : numpy dtype or None, default=numpy.float32
        Output dtype; None keeps the first image's dtype.
    ensure_ndim : int, optional
        Required output dimensionality (only 4 makes sense).
    memory, memory_level, verbose
        Accepted for nilearn compatibility; unused.
    auto_resample : bool, default=False
        Resample every image onto the first one's grid (continuous
        interpolation) instead of refusing different grids.

    Returns
    -------
    nibabel.Nifti1Image
        4D image, Fortran-ordered data.
    """
    del memory, memory_level, verbose
    if isinstance(niimgs, (str, os.PathLike)):
        niimgs = _expand_path(niimgs)
    items = list(niimgs) if _is_list_like(niimgs) else [niimgs]
    if not items:
        raise TypeError("concat_imgs: cannot concatenate an empty list of images.")
    item_ndim = None if ensure_ndim is None else ensure_ndim - 1
    loaded = []
    for index, item in enumerate(items):
        img = check_niimg(item, name=f"niimgs[{index}]")
        ndim = len(img.shape)
        if item_ndim is None:
            item_ndim = ndim
        if item_ndim not in (3, 4):
            raise DimensionError(item_ndim + 1, 4, "niimgs")
        if ndim != item_ndim:
            raise DimensionError(ndim + 1, item_ndim + 1, f"niimgs[{index}] {describe(item)}")
        if loaded and (
            img.shape[:3] != loaded[0].shape[:3] or not np.allclose(img.affine, loaded[0].affine)
        ):
            if not auto_resample:
                raise ValueError(
                    f"niimgs[{index}] {describe(item)} has a different field of view (shape "
                    f"{img.shape[:3]}, affine\n{img.affine}) from the first image (shape "
                    f"{loaded[0].shape[:3]}, affine\n{loaded[0].affine}); use auto_resample=True "
                    "to resample it."
                )
            img = resample_to_img(img, loaded[0])
        loaded.append(img)
    if dtype is None:
        dtype = get_data(loaded[0]).dtype
    return concat_along_time(loaded, name="niimgs", dtype=dtype)


# --------------------------------------------------------------------------------------
# Confounds
# --------------------------------------------------------------------------------------


def high_variance_confounds(imgs, n_confounds=5, percentile=2.0, detrend=True, mask_img=None):
    """Principal components of the highest-variance voxels, as confounds.

    Parameters
    ----------
    imgs : Niimg-like object
        4D image.
    n_confounds : int, default=5
        Number of components returned.
    percentile : float, default=2.0
        Keep the voxels whose variance is above the ``100 - percentile``
        percentile.
    detrend : bool, default=True
        Remove the linear trend of each voxel first.
    mask_img : Niimg-like object, optional
        Only consider these voxels; by default every voxel of the image
        (background included), as nilearn does.

    Returns
    -------
    numpy.ndarray, shape (n_volumes, n_confounds)
        Unit-norm time courses (their sign is arbitrary).
    """
    from .signal import high_variance_confounds as signal_hvc

    if mask_img is not None:
        # What masking.apply_mask does without smoothing; masking imports this module.
        img, mask = load_img_and_mask(imgs, mask_img)
        data = get_data(img)
        series = masked_values(data, mask, masked_dtype("f", data.dtype), ensure_finite=True)
    else:
        img = check_niimg_4d(imgs, name="imgs")
        data = get_data(img)
        # The voxel order does not matter here (columns are thresholded and
        # summed over), so reshape without copying whichever layout the data has.
        layout = "F" if data.flags.f_contiguous and not data.flags.c_contiguous else "C"
        series = data.reshape(-1, data.shape[-1], order=layout).T
    return signal_hvc(series, n_confounds=n_confounds, percentile=percentile, detrend=detrend)
