"""File input/output shared by the pipeline faces (Pydra tasks, nipype interfaces, CLI).

Every writer here is atomic: data go to a temporary file in the destination
directory, which is renamed over the destination only once it is complete.
A crash or an exception therefore never leaves a truncated output that a cache
(Pydra's, nipype's, or a user's ``make``) could mistake for a finished one.

Signals file format
-------------------
Signals are stored as NumPy ``.npy`` files (format version 1.0 or 2.0, as
``numpy.save`` chooses): a 2D array of shape ``(n_volumes, n_voxels)``, C order,
with the dtype of the signals (float32 for float32 BOLD; never upcast). Any
NumPy (``numpy.load``) or compatible reader (e.g. ``npyio`` in Julia, ``RcppCNPy``
in R) opens them, and they can be memory-mapped with ``mmap_mode="r"``.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_output",
    "load_qc",
    "load_signals",
    "read_sample_mask",
    "save_img",
    "save_qc",
    "save_signals",
]

# Suffixes nibabel needs to see on the temporary name to pick the right format.
_IMAGE_SUFFIXES = (".nii.gz", ".nii")


def _full_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz", ".tsv.gz", ".npy", ".nii", ".txt", ".tsv", ".csv"):
        if name.endswith(suffix):
            return path.name[-len(suffix) :]
    return path.suffix


@contextlib.contextmanager
def atomic_output(path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The temporary file lives in the same directory as ``path`` (so the final
    ``os.replace`` is an atomic rename on POSIX file systems) and keeps the
    suffix of ``path`` (so writers that pick a format from the suffix, such as
    nibabel, write the right one). If the body raises, the temporary file is
    removed and ``path`` is left untouched (absent, or its previous content).

    Parameters
    ----------
    path : str or os.PathLike
        Final destination. Its parent directory must exist.

    Yields
    ------
    pathlib.Path
        Temporary path to write to.

    Examples
    --------
    >>> with atomic_output("out.npy") as tmp:  # doctest: +SKIP
    ...     np.save(tmp, array)
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"Cannot write '{path}': directory '{parent}' does not exist.")
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{_full_suffix(path)}", dir=parent
    )
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the output the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def save_img(img, path) -> Path:
    """Write a nibabel image atomically; the format follows the suffix.

    Parameters
    ----------
    img : nibabel.spatialimages.SpatialImage
        Image to write.
    path : str or os.PathLike
        Destination ending in ``.nii`` (uncompressed, fastest) or ``.nii.gz``.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    if not path.name.lower().endswith(_IMAGE_SUFFIXES):
        raise ValueError(f"Image output path must end with .nii or .nii.gz, got '{path}'.")
    with atomic_output(path) as tmp:
        if path.name.lower().endswith(".gz"):
            with open(tmp, "wb") as stream, ParallelGzipWriter(stream) as writer:
                img.to_file_map(img.make_file_map({"image": writer, "header": writer}))
        else:
            img.to_filename(tmp)
    return path


class ParallelGzipWriter(io.RawIOBase):
    """Write-only file object that gzips what it receives on several threads.

    The data are cut into blocks compressed independently (zlib releases the GIL)
    and joined with sync flushes into one standard deflate stream, as ``pigz``
    does: the result is an ordinary single-member ``.gz`` that any reader opens.
    A 1.2 GB BOLD run takes about half the time of ``gzip`` level 1 on two cores;
    the price is a slightly larger file (no shared dictionary between blocks).

    Parameters
    ----------
    stream : binary file object
        Destination, open for writing (not closed by this object).
    level : int, default=1
        zlib compression level (nibabel's default for ``.nii.gz``).
    block_bytes : int, default=16 MiB
        Size of the independently compressed blocks.
    n_threads : int, default=2
        Compression threads.
    """

    def __init__(self, stream, level=1, block_bytes=16 * 1024**2, n_threads=2):
        super().__init__()
        import zlib
        from concurrent.futures import ThreadPoolExecutor

        self._zlib = zlib
        self._stream = stream
        self._level = level
        self._block_bytes = block_bytes
        self._pool = ThreadPoolExecutor(n_threads)
        # One more thread chains the CRC-32 over the blocks, in order.
        self._crc_pool = ThreadPoolExecutor(1)
        self._max_pending = 2 * n_threads
        self._pending = []
        self._buffer = bytearray()
        self._crc = 0
        self._size = 0
        # gzip header: magic, deflate, no flags, no mtime (reproducible), no extra flags, Unix.
        stream.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03")

    def _compress(self, block: bytes, last: bool) -> bytes:
        compressor = self._zlib.compressobj(self._level, self._zlib.DEFLATED, -15)
        flush = self._zlib.Z_FINISH if last else self._zlib.Z_SYNC_FLUSH
        return compressor.compress(block) + compressor.flush(flush)

    def _update_crc(self, block: bytes) -> None:
        self._crc = self._zlib.crc32(block, self._crc)

    def _submit(self, block: bytes, last: bool = False) -> None:
        self._crc_pool.submit(self._update_crc, block)
        self._size += len(block)
        self._pending.append(self._pool.submit(self._compress, block, last))
        while len(self._pending) > (0 if last else self._max_pending):
            self._stream.write(self._pending.pop(0).result())

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        """Append ``data`` (any bytes-like object) to the uncompressed stream."""
        view = memoryview(data).cast("B")
        if view.nbytes >= self._block_bytes // 4:
            # nibabel writes the data a slab at a time: compress large writes as they
            # come, without copying them into the buffer.
            if self._buffer:
                self._submit(bytes(self._buffer))
                self._buffer.clear()
            self._submit(data if isinstance(data, bytes) else view.tobytes())
            return view.nbytes
        self._buffer += view
        while len(self._buffer) >= self._block_bytes:
            self._submit(bytes(self._buffer[: self._block_bytes]))
            del self._buffer[: self._block_bytes]
        return view.nbytes

    def tell(self) -> int:
        """Position in the uncompressed stream."""
        return self._size + len(self._buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        """Only forward moves are possible: they write zeros (as gzip files do)."""
        target = offset if whence == 0 else self.tell() + offset
        if whence not in (0, 1) or target < self.tell():
            raise OSError("ParallelGzipWriter can only seek forward.")
        self.write(bytes(target - self.tell()))
        return target

    def flush(self) -> None:
        """Nothing to do: blocks are written when compressed; see :meth:`close`."""

    def close(self) -> None:
        """Compress what is left and write the gzip trailer (CRC-32 and size)."""
        if self._pool is None:
            super().close()
            return
        self._submit(bytes(self._buffer), last=True)
        self._buffer.clear()
        self._crc_pool.shutdown()
        self._stream.write(self._crc.to_bytes(4, "little"))
        self._stream.write((self._size & 0xFFFFFFFF).to_bytes(4, "little"))
        self._pool.shutdown()
        self._pool = None
        super().close()

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.close()
        else:  # the output is discarded by atomic_output: just stop the threads
            self._pool.shutdown(cancel_futures=True)
            self._crc_pool.shutdown(cancel_futures=True)
            self._pool = None
            super().close()


def save_signals(signals, path) -> Path:
    """Write a 2D signals array as ``.npy`` atomically, keeping its dtype.

    Parameters
    ----------
    signals : numpy.ndarray
        Array of shape ``(n_volumes, n_voxels)`` (a 1D array is accepted and
        stored as is, as NiftiMasker returns for a 3D image).
    path : str or os.PathLike
        Destination ending in ``.npy``.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise ValueError(f"Signals output path must end with .npy, got '{path}'.")
    signals = np.asarray(signals)
    if signals.ndim not in (1, 2):
        raise ValueError(
            f"signals must be a 1D or 2D array (n_volumes, n_voxels), got shape {signals.shape}."
        )
    with atomic_output(path) as tmp, open(tmp, "wb") as stream:
        if signals.flags.c_contiguous or signals.ndim == 1:
            np.save(stream, signals, allow_pickle=False)
        else:
            _write_c_order(stream, signals)
    return path


#: Arrays of a quality-control file (see :func:`save_qc`).
QC_KEYS = (
    "signals_before",
    "signals_after",
    "tsnr_before",
    "tsnr_after",
    "kept_volumes",
    "mean_plane_sagittal",
    "mean_plane_coronal",
    "mean_plane_axial",
)


def save_qc(report: dict, path) -> Path:
    """Write the report data of one extraction as a ``.npz`` file, atomically.

    Parameters
    ----------
    report : dict
        What :func:`masker_wf._pipeline.filter_and_extract` puts in its ``report``
        argument: a sample of voxels before/after cleaning (``signals_before``,
        ``signals_after``), the tSNR of every mask voxel before/after
        (``tsnr_before``, ``tsnr_after``), ``kept_volumes``, and the three planes of
        the temporal mean image through the mask's centroid (``mean_planes``).
    path : str or os.PathLike
        Destination ending in ``.npz``.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"QC output path must end with .npz, got '{path}'.")
    arrays = {key: np.asarray(report[key]) for key in QC_KEYS[:5] if report.get(key) is not None}
    planes = report.get("mean_planes")
    if planes is not None:
        for key, plane in zip(QC_KEYS[5:], planes, strict=True):
            arrays[key] = np.asarray(plane)
    with atomic_output(path) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, **arrays)
    return path


def load_qc(path) -> dict:
    """Read a file written by :func:`save_qc` (``mean_planes`` as a list of 3 arrays)."""
    with np.load(path, allow_pickle=False) as archive:
        qc = {key: archive[key] for key in archive.files}
    planes = [qc.pop(key) for key in QC_KEYS[5:] if key in qc]
    qc["mean_planes"] = planes if len(planes) == 3 else None
    return qc


def _write_c_order(stream, signals: np.ndarray, rows_per_chunk: int = 16) -> None:
    """Write a non-C-contiguous 2D array as a C-order .npy without a full-size copy."""
    header = {"descr": np.lib.format.dtype_to_descr(signals.dtype), "fortran_order": False}
    header["shape"] = signals.shape
    np.lib.format.write_array_header_2_0(stream, header)
    for start in range(0, signals.shape[0], rows_per_chunk):
        stream.write(np.ascontiguousarray(signals[start : start + rows_per_chunk]).tobytes())


def load_signals(path, mmap_mode=None) -> np.ndarray:
    """Read a signals ``.npy`` file written by :func:`save_signals`.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npy`` file holding a 1D or 2D numeric array.
    mmap_mode : {None, "r"}, default=None
        Memory-map the file instead of reading it.

    Returns
    -------
    numpy.ndarray
        The array, with its stored dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Signals file not found: '{path}'.")
    try:
        signals = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"Cannot read signals file '{path}' as .npy: {exc}") from exc
    if not isinstance(signals, np.ndarray) or signals.ndim not in (1, 2):
        raise ValueError(
            f"Signals file '{path}' must hold a 1D or 2D array, got shape "
            f"{getattr(signals, 'shape', None)}."
        )
    if not np.issubdtype(signals.dtype, np.number):
        raise ValueError(f"Signals file '{path}' holds non-numeric data ({signals.dtype}).")
    return signals


def _as_sample_mask(values, source: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim == 2 and 1 in values.shape:
        values = values.ravel()
    if values.ndim != 1:
        raise ValueError(
            f"sample_mask from {source} must be 1D (kept volume indices or a boolean column), "
            f"got shape {values.shape}."
        )
    if values.dtype == bool:
        return np.flatnonzero(values)
    if values.size == 0:
        return values.astype(int)
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(
            f"sample_mask from {source} must hold integers or booleans, got {values.dtype}."
        )
    is_float = np.issubdtype(values.dtype, np.floating)
    if is_float and (not np.all(np.isfinite(values)) or np.any(values != np.round(values))):
        raise ValueError(f"sample_mask from {source} must hold integer indices.")
    return values.astype(int)


def _is_value(text: str) -> bool:
    if text.lower() in ("true", "false"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_text_column(path: Path) -> np.ndarray:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        return np.array([], dtype=int)
    sep = {".tsv": "\t", ".csv": ","}.get(path.suffix.lower())
    rows = [line.split(sep) for line in lines]
    if any(len(row) != 1 for row in rows):
        raise ValueError(
            f"sample_mask file '{path}' must have a single column, got rows with "
            f"{sorted({len(row) for row in rows})} columns."
        )
    column = [row[0].strip() for row in rows]
    # A header line (e.g. "sample_mask" in a BIDS-style TSV) is skipped.
    if not _is_value(column[0]):
        column = column[1:]
    lowered = [value.lower() for value in column]
    if lowered and all(value in ("true", "false") for value in lowered):
        return np.array([value == "true" for value in lowered], dtype=bool)
    try:
        numbers = np.array([float(value) for value in column])
    except ValueError as exc:
        raise ValueError(f"sample_mask file '{path}' holds non-numeric values: {exc}") from exc
    # A 0/1 column that covers every volume is ambiguous with indices [0, 1, ...];
    # only a column of 0/1 values that is not strictly increasing is read as a boolean mask.
    if numbers.size and np.isin(numbers, (0, 1)).all() and not np.all(np.diff(numbers) > 0):
        return numbers.astype(bool)
    return numbers


def read_sample_mask(sample_mask) -> np.ndarray | None:
    """Normalise a sample mask given as a file, array or list to kept volume indices.

    Parameters
    ----------
    sample_mask : None, str, os.PathLike, list or numpy.ndarray
        ``None`` (keep every volume); a 1D array or list of kept volume
        indices (integers) or of booleans (True = kept); or a file holding
        one of those: ``.npy``, or a one-column ``.txt``/``.tsv``/``.csv``
        (an optional header line is skipped; ``true``/``false`` or ``0``/``1``
        values are read as a boolean column).

    Returns
    -------
    numpy.ndarray or None
        A file's content as kept-volume indices (whole numbers parsed from text become
        integers; a boolean column becomes indices); values given in memory as an array,
        unchanged (see :func:`masker_wf._validation.check_sample_mask`); or ``None``.
    """
    if sample_mask is None:
        return None
    if isinstance(sample_mask, (str, os.PathLike)):
        path = Path(sample_mask)
        if not path.is_file():
            raise ValueError(f"sample_mask file not found: '{path}'.")
        if path.suffix.lower() == ".npy":
            try:
                values = np.load(path, allow_pickle=False)
            except Exception as exc:
                raise ValueError(f"Cannot read sample_mask file '{path}': {exc}") from exc
        elif path.suffix.lower() in (".txt", ".tsv", ".csv"):
            values = _read_text_column(path)
        else:
            raise ValueError(
                f"sample_mask file '{path}' must be .npy, .txt, .tsv or .csv, "
                f"got suffix '{path.suffix}'."
            )
        return _as_sample_mask(values, f"file '{path}'")
    if isinstance(sample_mask, (list, tuple, np.ndarray)):
        # Values given in memory are checked by the one validator (at data time, where the
        # number of volumes is known), exactly as the estimator checks them: converting
        # float indices here would let through what every other face refuses.
        return np.asarray(sample_mask)
    raise TypeError(
        "sample_mask must be None, a file path, a list or a 1D array, "
        f"got {type(sample_mask).__name__}."
    )
