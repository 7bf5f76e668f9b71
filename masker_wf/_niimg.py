"""Loading and checking "Niimg-like" inputs.

A Niimg-like object is what nilearn users pass around: a path (``str`` or
``pathlib.Path``, globs allowed), a nibabel spatial image, or a list of those
(concatenated along time). Everything here returns nibabel images and never
converts data to float64 behind the caller's back.

Gzipped files (``.nii.gz``) are read with python-isal (ISA-L's inflate, the standard
gzip format) behind nibabel: a path loaded here gives an ordinary nibabel image whose
array proxy (:class:`GzipArrayProxy`) decompresses about three times as fast as
Python's ``gzip`` module, the same bytes. :func:`iter_volume_chunks` streams a 4D
image in blocks of consecutive volumes, decompressing the next blocks on another
thread while the caller works on the current one, so that a ``.nii.gz`` is read once
and never held whole in memory.

The lowest layer of the core with :mod:`masker_wf._exceptions`: ``image`` and
``masking`` both import it (binary masks are loaded and read here, see
:func:`load_mask_img`), and it imports neither.
"""

from __future__ import annotations

import contextlib
import glob
import os
import queue
import threading
import warnings
import zlib
from collections.abc import Iterable, Iterator

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy
from nibabel.volumeutils import apply_read_scaling

from ._exceptions import DimensionError

_GLOB_CHARS = ("*", "?", "[")
# Bytes copied per read into an array: a few MiB (ISA-L's own reader is fastest so).
_GZIP_READ_BYTES = 4 * 1024**2
# Compressed bytes inflated per call of _Inflater (about 3 MB of BOLD out): ISA-L's
# output buffer grows by reallocation, so a call that produces tens of MB copies them
# several times (measured on a 2 mm MNI run: 1.9 s to inflate at 1 MiB, 3.2 s at 4 MiB).
_GZIP_RAW_BYTES = 1024**2
# Bytes of the blocks iter_volume_chunks yields (about 8 volumes of a 2 mm MNI run).
_CHUNK_BYTES = 32 * 1024**2


def describe(niimg) -> str:
    """Return a short human-readable name for an image, for error messages."""
    if isinstance(niimg, (str, os.PathLike)):
        return f"'{os.fspath(niimg)}'"
    filename = getattr(niimg, "get_filename", lambda: None)()
    if filename:
        return f"'{filename}'"
    shape = getattr(niimg, "shape", None)
    if shape is not None:
        return f"<{type(niimg).__name__} of shape {tuple(shape)}>"
    return f"<{type(niimg).__name__}>"


def _expand_path(path: str | os.PathLike) -> list[str]:
    text = os.path.expanduser(os.fspath(path))
    if any(char in text for char in _GLOB_CHARS) and not os.path.exists(text):
        matches = sorted(glob.glob(text))
        if not matches:
            raise ValueError(f"No files matching the path pattern {text!r}.")
        return matches
    if not os.path.exists(text):
        raise ValueError(f"File not found: {text!r}.")
    return [text]


def _load_one(niimg):
    if isinstance(niimg, (str, os.PathLike)):
        paths = _expand_path(niimg)
        if len(paths) > 1:
            return [_load_path(p) for p in paths]
        return _load_path(paths[0])
    if isinstance(niimg, nib.spatialimages.SpatialImage):
        return niimg
    raise TypeError(
        "Data given cannot be loaded because it is not compatible with nibabel format: "
        f"expected a path or a nibabel image, got {type(niimg).__name__}."
    )


def _load_path(path: str):
    try:
        return with_fast_gzip(nib.load(path))
    except Exception as exc:
        raise ValueError(f"Cannot read image file '{path}': {exc}") from exc


# --------------------------------------------------------------------------------------
# Gzipped images: python-isal behind nibabel
# --------------------------------------------------------------------------------------
def _open_gzip(path):
    from isal import igzip

    return igzip.open(path, "rb")


class _Inflater:
    """Sequential reader of a gzip file: few large reads, one ISA-L inflate call for each.

    ``isal.igzip`` refills its input 128 KiB at a time, taking the GIL back for every
    refill; when other threads keep the GIL busy (smoothing the volumes already read),
    those hand-overs stall it. Here each call inflates :data:`_GZIP_RAW_BYTES` of
    compressed data with the GIL released. Multi-member files (and zero padding between
    members) are read as Python's ``gzip`` reads them; each member's CRC-32 and length are
    checked by ISA-L.
    """

    def __init__(self, path):
        from isal import igzip_lib

        # ISA-L's own gzip decompressor (header, CRC-32 and length checked), about
        # 1.5 times as fast here as its zlib-compatible ``decompressobj``.
        self._new = lambda: igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
        self._raw = open(path, "rb", buffering=0)  # noqa: SIM115  (closed by close())
        self._inflate = self._new()
        self._started = False
        self._pending = memoryview(b"")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._raw.close()

    def _inflate_more(self) -> bool:
        """Decompress the next raw block into the pending bytes; False at the end."""
        while True:
            data = self._raw.read(_GZIP_RAW_BYTES)
            if not data:
                if self._started and not self._inflate.eof:
                    raise EOFError(
                        "Compressed file ended before the end-of-stream marker was reached"
                    )
                return False
            out = []
            while data:
                if self._inflate.eof:  # the next member (after optional zero padding)
                    data = data.lstrip(b"\0")
                    if not data:
                        break
                    self._inflate = self._new()
                self._started = True
                out.append(self._inflate.decompress(data))
                data = self._inflate.unused_data if self._inflate.eof else b""
            produced = b"".join(out)
            if produced:
                self._pending = memoryview(produced)
                return True

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` (a writable byte view) as far as the data go; bytes written."""
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            if not self._pending and not self._inflate_more():
                break
            count = min(len(self._pending), len(view) - filled)
            view[filled : filled + count] = self._pending[:count]
            self._pending = self._pending[count:]
            filled += count
        return filled

    def seek(self, offset: int) -> None:
        """Skip forward to uncompressed byte ``offset`` (from the start; reads forward only)."""
        _read_exactly(self, bytearray(offset), "the header")


def _read_exactly(stream, buffer, source) -> None:
    """Fill ``buffer`` from ``stream`` in ISA-L-friendly reads; a short file is an error."""
    view = memoryview(buffer).cast("B")
    filled = 0
    while filled < len(view):
        count = stream.readinto(view[filled : filled + _GZIP_READ_BYTES])
        if not count:
            # nibabel's message for the same case.
            raise OSError(
                f"Expected {len(view)} bytes, got {filled} bytes from {source}\n"
                " - could the file be damaged?"
            )
        filled += count


def _is_gzip_path(file_like) -> bool:
    return isinstance(file_like, (str, os.PathLike)) and os.fspath(file_like).lower().endswith(
        ".gz"
    )


class GzipArrayProxy(ArrayProxy):
    """nibabel's array proxy of a gzipped image file, decompressed with python-isal.

    Reads exactly what :class:`nibabel.arrayproxy.ArrayProxy` reads (same bytes, same
    scaling, same dtypes); reading the whole array is one sequential inflate into the
    array's own buffer, about three times as fast as nibabel's ``gzip`` reader.
    """

    @contextlib.contextmanager
    def _get_fileobj(self):
        with _open_gzip(self.file_like) as stream:
            yield stream

    def _get_unscaled(self, slicer):
        whole = (slice(None),) * len(self._shape)
        if tuple(slicer) not in ((), whole) or 0 in self._shape:
            return super()._get_unscaled(slicer)
        data = np.empty(self._shape, self._dtype, order=self.order)
        # ISA-L's own reader inflates straight into the array (nothing else runs meanwhile).
        with self._get_fileobj() as stream, self._lock:
            stream.seek(self._offset)
            # The array's own buffer, in file order (a Fortran array's transpose is C).
            _read_exactly(stream, data.T if self.order == "F" else data, self.file_like)
        return data


def with_fast_gzip(img):
    """``img`` with its array proxy read through python-isal when its file is gzipped.

    Parameters
    ----------
    img : nibabel image
        As :func:`nibabel.load` returns it.

    Returns
    -------
    nibabel image
        ``img`` itself when it is not a gzipped file image (or already fast); otherwise
        an image of the same class, header, affine, extra and file map, whose data are
        read by :class:`GzipArrayProxy`.
    """
    proxy = getattr(img, "dataobj", None)
    if type(proxy) is not ArrayProxy or not _is_gzip_path(proxy.file_like):
        return img
    spec = (proxy.shape, proxy.dtype, proxy.offset, proxy.slope, proxy.inter)
    fast = GzipArrayProxy(proxy.file_like, spec, mmap=False, order=proxy.order)
    return img.__class__(fast, img.affine, img.header, extra=img.extra, file_map=img.file_map)


def _chunk_volumes(shape, itemsize) -> int:
    volume_bytes = int(np.prod(shape[:3])) * itemsize
    return max(1, min(int(shape[3]), _CHUNK_BYTES // max(volume_bytes, 1)))


def _hand_over(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` in ``out`` unless the consumer has stopped; False once it has."""
    while not stop.is_set():
        with contextlib.suppress(queue.Full):
            out.put(item, timeout=0.1)
            return True
    return False


def _read_chunks(proxy, volumes_per_chunk, out: queue.Queue, stop: threading.Event) -> None:
    """Producer of :func:`iter_volume_chunks`: raw blocks of a gzipped file, in order.

    Ends with ``(None, None)``, or ``(None, exception)`` when the file cannot be read.
    """
    shape, dtype = proxy.shape, proxy.dtype
    n_volumes = int(shape[3])
    try:
        with _Inflater(proxy.file_like) as stream:
            stream.seek(proxy.offset)
            for start in range(0, n_volumes, volumes_per_chunk):
                count = min(volumes_per_chunk, n_volumes - start)
                block = np.empty((*shape[:3], count), dtype=dtype, order="F")
                # Volumes of a NIfTI file are consecutive (Fortran order): one read each.
                _read_exactly(stream, block.T, proxy.file_like)
                if not _hand_over(out, (start, block), stop):
                    return
    except Exception as exc:  # handed to the consumer, which raises it
        _hand_over(out, (None, exc), stop)
        return
    _hand_over(out, (None, None), stop)


def iter_volume_chunks(img, volumes_per_chunk=None, *, prefetch=2) -> Iterator:
    """Yield the data of a 4D image as ``(start, block)``: blocks of consecutive volumes.

    For a gzipped file the blocks are decompressed (python-isal, which releases the GIL)
    on a thread of their own, ``prefetch`` blocks ahead of the consumer, so that reading
    overlaps with the caller's work on earlier volumes and the whole 4D array is never
    in memory. Other images (uncompressed files, memory maps, arrays) give views of
    their data.

    Parameters
    ----------
    img : nibabel image
        A 4D image (see :func:`with_fast_gzip`).
    volumes_per_chunk : int, optional
        Volumes per block; default about 32 MB of data per block.
    prefetch : int, default=2
        Blocks read ahead of the consumer (memory: ``prefetch + 1`` blocks).

    Yields
    ------
    start : int
        Index of the block's first volume.
    block : numpy.ndarray, shape (x, y, z, n)
        The volumes ``start`` to ``start + n``, scaled as nibabel scales them.

    Raises
    ------
    ValueError
        The file cannot be read (truncated or corrupt), naming it (as :func:`get_data`).
    """
    shape = tuple(img.shape)
    if len(shape) != 4:
        raise DimensionError(len(shape), 4, f"img {describe(img)}")
    proxy = img.dataobj
    if volumes_per_chunk is None:
        volumes_per_chunk = _chunk_volumes(shape, np.dtype(img.get_data_dtype()).itemsize)
    if not isinstance(proxy, GzipArrayProxy):
        data = get_data(img)
        for start in range(0, shape[3], volumes_per_chunk):
            yield start, data[..., start : start + volumes_per_chunk]
        return
    blocks: queue.Queue = queue.Queue(maxsize=max(1, int(prefetch)))
    stop = threading.Event()
    reader = threading.Thread(
        target=_read_chunks,
        args=(proxy, volumes_per_chunk, blocks, stop),
        name="masker-wf-gzip-reader",
        daemon=True,
    )
    reader.start()
    slope, inter = np.asanyarray(proxy.slope), np.asanyarray(proxy.inter)
    try:
        while True:
            start, block = blocks.get()
            if start is None:
                if block is not None:
                    raise _unreadable(img, block) from block
                return
            # nibabel's scaling, as a whole-array read applies it.
            yield start, apply_read_scaling(block, slope, inter)
    finally:
        # A consumer that stops early (an error in its work) releases the reader.
        stop.set()
        reader.join()


def _unreadable(img, exc: BaseException) -> ValueError:
    return ValueError(
        f"Cannot read the data of image {describe(img)}: {type(exc).__name__}: {exc} "
        "(is the file truncated or corrupt?)"
    )


def _is_list_like(niimg) -> bool:
    return isinstance(niimg, Iterable) and not isinstance(
        niimg, (str, os.PathLike, nib.spatialimages.SpatialImage, np.ndarray)
    )


def get_data(img) -> np.ndarray:
    """Return the data array of a nibabel image without caching it on the image.

    Scaled integer images (``scl_slope``/``scl_inter``) come back as floats,
    as nibabel applies the scaling; unscaled data keeps its on-disk dtype.

    Raises
    ------
    ValueError
        The data cannot be read (a truncated or corrupt file): the message names
        the file, which nibabel's own error (e.g. ``EOFError``) does not.
    """
    try:
        return np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, ValueError, _isal_error()) as exc:
        raise _unreadable(img, exc) from exc


def _isal_error():
    from isal.isal_zlib import error

    return error


def img_data_dtype(img) -> np.dtype:
    """Dtype the data of ``img`` will have once loaded (scaling applied)."""
    dataobj = img.dataobj
    if nib.is_proxy(dataobj):
        slope = getattr(dataobj, "slope", 1.0)
        inter = getattr(dataobj, "inter", 0.0)
        if slope != 1.0 or inter != 0.0:
            return np.dtype(np.float64)
        return np.dtype(dataobj.dtype)
    return np.asanyarray(dataobj).dtype


def new_img_like(ref_img, data, affine=None, copy_header=False):
    """Build a NIfTI image holding ``data`` on the grid of ``ref_img``.

    Boolean data is stored as ``uint8`` (NIfTI has no boolean type).

    Parameters
    ----------
    ref_img : nibabel image
        Image whose affine (and header, if ``copy_header``) is reused.
    data : numpy.ndarray
        Voxel data of the new image.
    affine : (4, 4) array, optional
        Affine of the new image; defaults to ``ref_img.affine``.
    copy_header : bool, default=False
        Copy the reference header (dtype and scaling are reset to the data's).
    """
    data = np.asanyarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if affine is None:
        affine = ref_img.affine
    header = None
    if copy_header and getattr(ref_img, "header", None) is not None:
        header = ref_img.header.copy()
        header.set_data_dtype(data.dtype)
        if hasattr(header, "set_slope_inter"):
            header.set_slope_inter(None, None)
    klass = ref_img.__class__ if isinstance(ref_img, nib.Nifti1Image) else nib.Nifti1Image
    if klass is nib.Nifti1Pair:
        klass = nib.Nifti1Image
    img = klass(data, np.asarray(affine, dtype=float), header=header)
    if header is None:
        img.header.set_data_dtype(data.dtype)
    return img


def concat_along_time(imgs, name="imgs", dtype=None):
    """Stack images that share one grid along a fourth (time) axis.

    The one implementation behind list inputs of :func:`check_niimg` and
    :func:`masker_wf.image.concat_imgs`.

    Parameters
    ----------
    imgs : sequence of nibabel images
        3D images (one volume each) and/or 4D images, all on the first one's grid.
    name : str, default="imgs"
        Argument name used in error messages.
    dtype : numpy dtype, optional
        Output dtype; by default the common dtype of the inputs (as ``np.concatenate``).

    Returns
    -------
    nibabel.Nifti1Image
        4D image with Fortran-ordered data (as nilearn) and the first image's header.

    Raises
    ------
    ValueError
        An image has another shape or affine than the first one.
    """
    first = imgs[0]
    first_shape = first.shape
    affine = first.affine
    for index, img in enumerate(imgs):
        if img.shape[:3] != first_shape[:3]:
            raise ValueError(
                f"{name}: image {index} {describe(img)} has shape {img.shape[:3]}, "
                f"which differs from the first image's {first_shape[:3]}."
            )
        if not np.allclose(img.affine, affine):
            raise ValueError(
                f"{name}: image {index} {describe(img)} has a different affine from the first "
                f"image:\n{img.affine}\n!=\n{affine}"
            )
    lengths = [img.shape[3] if len(img.shape) == 4 else 1 for img in imgs]
    blocks = None
    if dtype is None:
        # The scaled dtype is only known for sure once the data are read, so read them
        # first; with a dtype given, each image is read once, while it is copied.
        blocks = [get_data(img) for img in imgs]
        dtype = np.result_type(*(block.dtype for block in blocks))
    data = np.empty((*first_shape[:3], sum(lengths)), dtype=dtype, order="F")
    start = 0
    for index, (img, length) in enumerate(zip(imgs, lengths, strict=True)):
        block = blocks[index] if blocks is not None else get_data(img)
        data[..., start : start + length] = block if block.ndim == 4 else block[..., np.newaxis]
        start += length
    return new_img_like(first, data, affine, copy_header=True)


def _refuse_5d(imgs, name):
    # A list of 4D images is 5D data for nilearn: refuse it the same way.
    if any(len(img.shape) > 4 or (len(img.shape) == 4 and img.shape[3] > 1) for img in imgs):
        raise DimensionError(5, 4, name)


def check_niimg(niimg, ensure_ndim=None, atleast_4d=False, dtype=None, name="img"):
    """Load a Niimg-like object and check its dimensionality.

    Parameters
    ----------
    niimg : str, pathlib.Path, nibabel image or list of those
        The image. Paths may contain glob patterns (matches are sorted). A
        list (or a glob matching several files) of 3D images is stacked into
        one 4D image.
    ensure_ndim : {None, 3, 4}, default=None
        Required dimensionality. A 4D image with a single volume is accepted
        where 3D is required (and squeezed).
    atleast_4d : bool, default=False
        Turn a 3D image into a 4D image with one volume.
    dtype : numpy dtype, optional
        Convert the data to this dtype.
    name : str, default="img"
        Argument name used in error messages.

    Returns
    -------
    nibabel.Nifti1Image
    """
    if _is_list_like(niimg):
        items = list(niimg)
        if not items:
            raise ValueError(f"{name}: an empty list of images was given.")
        loaded = []
        for item in items:
            one = _load_one(item)
            loaded.extend(one if isinstance(one, list) else [one])
        _refuse_5d(loaded, name)
        img = concat_along_time(loaded, name)
    else:
        img = _load_one(niimg)
        if isinstance(img, list):
            if len(img) > 1:
                _refuse_5d(img, name)
                img = concat_along_time(img, name)
            else:
                img = img[0]

    ndim = len(img.shape)
    if ndim == 0 or 0 in img.shape:
        raise ValueError(f"{name} {describe(niimg)} is empty: shape {img.shape}.")
    if ensure_ndim == 3 and ndim == 4 and img.shape[3] == 1:
        img = new_img_like(img, get_data(img)[..., 0], copy_header=True)
        ndim = 3
    if atleast_4d and ndim == 3:
        img = new_img_like(img, get_data(img)[..., np.newaxis], copy_header=True)
        ndim = 4
    if ensure_ndim is not None and ndim != ensure_ndim:
        raise DimensionError(ndim, ensure_ndim, f"{name} {describe(niimg)}")
    if dtype is not None and img_data_dtype(img) != np.dtype(dtype):
        img = new_img_like(img, get_data(img).astype(dtype), copy_header=True)
    return img


def check_niimg_3d(niimg, dtype=None, name="img"):
    """Load a Niimg-like object that must be 3D (see :func:`check_niimg`)."""
    return check_niimg(niimg, ensure_ndim=3, dtype=dtype, name=name)


def check_niimg_4d(niimg, dtype=None, name="imgs"):
    """Load a Niimg-like object that must be 4D (see :func:`check_niimg`)."""
    return check_niimg(niimg, ensure_ndim=4, dtype=dtype, name=name)


def check_same_fov(*imgs) -> bool:
    """Return True if all images share the same 3D shape and affine."""
    imgs = [img for img in imgs if img is not None]
    if len(imgs) < 2:
        return True
    shape, affine = imgs[0].shape[:3], imgs[0].affine
    return all(img.shape[:3] == shape and np.allclose(img.affine, affine) for img in imgs[1:])


def voxel_sizes(affine) -> np.ndarray:
    """Voxel size along each array axis (mm), from the columns of ``affine``."""
    return np.sqrt(np.sum(np.asarray(affine)[:3, :3] ** 2, axis=0))


# --------------------------------------------------------------------------------------
# Masks: loading them and reading the data inside them. Here rather than in masking.py
# because image.high_variance_confounds needs them and image.py must not import
# masking.py (masking imports image).
# --------------------------------------------------------------------------------------


def load_mask_img(mask_img, allow_empty=False):
    """Load a binary mask and check that it can be read as true/false.

    Parameters
    ----------
    mask_img : Niimg-like object
        3D image (or 4D with a single volume) holding 0 for background and
        one other value for the mask. NaN/inf are read as 0 (with a warning).
    allow_empty : bool, default=False
        Accept a mask that is 0 everywhere.

    Returns
    -------
    mask : numpy.ndarray of bool, shape (x, y, z)
    affine : (4, 4) numpy.ndarray

    Raises
    ------
    ValueError
        Empty mask (unless ``allow_empty``), two values of which none is 0, or
        more than two values.
    masker_wf._exceptions.DimensionError
        The image is not 3D.
    """
    img = check_niimg_3d(mask_img, name="mask_img")
    data = get_data(img)
    if data.dtype.kind in "fc":
        finite = np.isfinite(data)
        if not finite.all():
            warnings.warn(
                f"Non-finite values detected in mask_img {describe(mask_img)}. These values "
                "will be replaced with zeros.",
                stacklevel=2,
            )
            data = np.where(finite, data, 0)
    values = np.unique(data)
    if len(values) == 1:
        if values[0] == 0 and not allow_empty:
            raise ValueError(
                "The mask is invalid as it is empty: it masks all data. "
                f"mask_img {describe(mask_img)} is 0 in every voxel."
            )
    elif len(values) == 2:
        if 0 not in values:
            raise ValueError(
                "Background of the mask must be represented with 0. "
                f"Given mask contains: {values}. (mask_img {describe(mask_img)})"
            )
    else:
        shown = values if len(values) <= 10 else f"{values[:10]} ... ({len(values)} values)"
        raise ValueError(
            f"Given mask is not made of 2 values: {shown}. Cannot interpret as true or false. "
            f"(mask_img {describe(mask_img)}; binarize it, e.g. with data > 0)"
        )
    return data.astype(bool), img.affine


def load_img_and_mask(imgs, mask_img):
    """Load ``imgs`` and a binary mask, and check that they share one grid.

    Parameters
    ----------
    imgs : Niimg-like object
        3D or 4D image(s).
    mask_img : Niimg-like object
        Binary 3D mask (see :func:`load_mask_img`).

    Returns
    -------
    img : nibabel.Nifti1Image
    mask : numpy.ndarray of bool, shape (x, y, z)

    Raises
    ------
    ValueError
        Invalid mask, or mask and image grids differ.
    """
    mask, mask_affine = load_mask_img(mask_img)
    img = check_niimg(imgs, name="imgs")
    if not np.allclose(mask_affine, img.affine):
        raise ValueError(
            f"Mask affine:\n{mask_affine}\n is different from img affine:\n{img.affine}\n"
            f"(mask_img {describe(mask_img)}, imgs {describe(imgs)}; resample one onto the "
            "other first)"
        )
    if mask.shape != img.shape[:3]:
        raise ValueError(
            f"Mask shape: {mask.shape} is different from img shape:{img.shape[:3]} "
            f"(mask_img {describe(mask_img)}, imgs {describe(imgs)})"
        )
    return img, mask


def masked_dtype(dtype, data_dtype) -> np.dtype:
    """Output dtype of masked data: ``"f"`` keeps floats and turns integers into float32."""
    if isinstance(dtype, str) and dtype == "f":
        data_dtype = np.dtype(data_dtype)
        return data_dtype if data_dtype.kind == "f" else np.dtype(np.float32)
    return np.dtype(dtype)


def masked_values(data, mask, dtype, ensure_finite):
    """``data[mask].T`` in ``dtype`` ((t, n_voxels), or (n_voxels,) for 3D), no 4D copy."""
    if data.ndim == 3:
        values = data[mask]
    else:
        values = data[mask].T
    values = values.astype(dtype, copy=False)
    if ensure_finite and values.dtype.kind in "fc":
        bad = ~np.isfinite(values)
        if bad.any():
            values = values.copy() if np.shares_memory(values, data) else values
            values[bad] = 0
    return values
