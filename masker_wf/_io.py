"""File input/output shared by the pipeline faces (Pydra tasks, nipype interfaces, CLI).

Every writer here is atomic: data go to a temporary file in the destination
directory, which is renamed over the destination only once it is complete.
A crash or an exception therefore never leaves a truncated output that a cache
(Pydra's, nipype's, or a user's ``make``) could mistake for a finished one.

Compressed outputs (``.nii.gz``) are written with python-isal's threaded gzip writer
(:func:`gzip_writer`): ordinary single-member gzip files that any reader opens, whose
bytes do not depend on the number of threads.

File digests
------------
:func:`file_digest` is the one content hash of a file (``sha256:<hex>``, SHA-256 of
every byte), memoised in the process by the file's stat key (resolved path, size,
times, inode). The writers here hash what they write as they write it and remember the
digest of the file they put in place, so that a file this process wrote is never read
again to be hashed; Pydra's file hash (:func:`masker_wf.tasks.use_segmented_hash`) and
the App's provenance record use the same digests, so each input is hashed once.

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
import errno
import hashlib
import io
import mmap
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ._threads import default_n_threads

__all__ = [
    "atomic_output",
    "carry_digests",
    "check_compress_level",
    "file_digest",
    "gzip_writer",
    "identified_output",
    "is_gzipped",
    "json_text",
    "load_qc",
    "load_signals",
    "output_error",
    "prefetch_digest",
    "read_sample_mask",
    "record_digest",
    "remember_digest",
    "save_img",
    "save_img_blocks",
    "save_qc",
    "save_signals",
    "signals_output",
    "stat_key",
    "write_file",
    "write_img",
    "write_text_file",
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


# ----------------------------------------------------------------------------- digests
# Bytes hashed per update: hashlib releases the GIL on large buffers.
_HASH_SEGMENT_BYTES = 64 * 1024**2
_digests: dict[tuple, str] = {}
# The stat keys of _digests by (size, mtime, inode): what a hard link keeps of a file's stat
# key, so that carry_digests finds a file's earlier names without scanning every digest
# known (a scan per call made a long invocation quadratic in its runs).
_by_inode: dict[tuple, list] = {}
_digests_lock = threading.Lock()


def stat_key(path) -> tuple:
    """What identifies a file's content cheaply: its resolved path and the target's stat.

    Symlinks are followed (a rewritten target, or a link pointed elsewhere, gives another
    key); ``st_ctime_ns`` is in the key because no tool sets it back, so a file rewritten
    with its modification time restored still gets a new key.
    """
    resolved = os.path.realpath(path)
    info = os.stat(resolved)
    return (resolved, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


def _sha256_of_file(path: str, piece_bytes: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        if os.fstat(stream.fileno()).st_size:
            with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
                for start in range(0, len(data), piece_bytes):
                    with memoryview(data)[start : start + piece_bytes] as piece:
                        digest.update(piece)
    return f"sha256:{digest.hexdigest()}"


def file_digest(path, piece_bytes=None) -> str:
    """SHA-256 of the content of the file at ``path``, as ``"sha256:<hex>"``.

    Computed at most once per file content in this process: memoised by
    :func:`stat_key`, and known without reading for the files this module wrote (see
    :func:`remember_digest`).

    Parameters
    ----------
    path : str or os.PathLike
        A file (a symlink is followed).
    piece_bytes : int, optional
        Bytes of the memory map hashed per update (default 64 MiB; the digest does not
        depend on it).

    Returns
    -------
    str
    """
    key = stat_key(path)
    with _digests_lock:
        known = _digests.get(key)
        pending = _pending.get(key)
    if known is not None:
        return known
    if pending is not None:
        with contextlib.suppress(Exception):  # computed again below, raising here
            return pending.result()
    value = _recorded_digest(key)
    if value is not None:
        remember_digest(key, value)
        return value
    value = _sha256_of_file(key[0], int(piece_bytes or _HASH_SEGMENT_BYTES))
    remember_digest(key, value)
    return value


# Digests being computed ahead of need (see prefetch_digest), by stat key; and the thread
# computing them, one per process (a forked child starts its own).
_pending: dict = {}
_prefetcher: list = []


def prefetch_digest(path) -> None:
    """Start computing the digest of ``path`` on a background thread (hashlib releases the
    GIL), so that it is known when :func:`file_digest` asks for it.

    For a large input whose hash would otherwise be the first thing a run waits for:
    started while the run reads its headers and builds its workflow. Errors are left to
    :func:`file_digest` (which computes the digest again).
    """
    from concurrent.futures import ThreadPoolExecutor

    try:
        key = stat_key(path)
    except OSError:
        return
    with _digests_lock:
        if key in _digests or key in _pending:
            return
        if not _prefetcher or _prefetcher[0][0] != os.getpid():
            _prefetcher[:] = [(os.getpid(), ThreadPoolExecutor(1, "masker-wf-digest"))]

        def compute():
            try:
                value = _sha256_of_file(key[0], _HASH_SEGMENT_BYTES)
                remember_digest(key, value)
                return value
            finally:
                with _digests_lock:
                    _pending.pop(key, None)

        _pending[key] = _prefetcher[0][1].submit(compute)


def _record_path(path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.sha256")


def record_digest(path) -> Path | None:
    """Write the digest this process knows for ``path`` beside it, for other processes.

    For the intermediates of a Pydra workflow run by a process pool: the worker that
    wrote a file knows its digest (:func:`hashed_output`), the parent, which hashes it as
    the next node's input, does not. The record (``.<name>.sha256``) states the digest
    with the file's size, modification time and inode; :func:`file_digest` trusts it
    only while they are unchanged (a file replaced or rewritten is read again). Nothing
    is read to write it: without a known digest, nothing is recorded.

    Parameters
    ----------
    path : str or os.PathLike
        A file this process wrote.

    Returns
    -------
    pathlib.Path or None
        The record written, or None.
    """
    key = stat_key(path)
    with _digests_lock:
        digest = _digests.get(key)
    if digest is None:
        return None
    record = _record_path(key[0])
    text = f"{digest} {key[1]} {key[2]} {key[4]}\n"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if record.read_text(encoding="ascii") == text:
            return record  # already there (a run served from the cache writes nothing)
    with atomic_output(record) as tmp:
        tmp.write_text(text, encoding="ascii")
    return record


def _recorded_digest(key: tuple) -> str | None:
    """The digest :func:`record_digest` left beside the file of ``key``, if still valid."""
    try:
        fields = _record_path(key[0]).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    if len(fields) != 4 or not fields[0].startswith("sha256:"):
        return None
    if fields[1:] != [str(key[1]), str(key[2]), str(key[4])]:
        return None
    return fields[0]


def remember_digest(path, digest: str) -> None:
    """Record ``digest`` as the content hash of the file at ``path`` as it is now.

    Parameters
    ----------
    path : str, os.PathLike or tuple
        The file, or its :func:`stat_key`.
    digest : str
        ``"sha256:<hex>"`` of its content.
    """
    key = path if isinstance(path, tuple) else stat_key(path)
    with _digests_lock:
        _digests[key] = digest
        keys = _by_inode.setdefault((key[1], key[2], key[4]), [])
        if key not in keys:
            keys.append(key)


def carry_digests(paths, origins=()) -> None:
    """Keep the known digests of files that were hard-linked since they were hashed.

    A hard link (Pydra links a workflow's outputs into its directory) changes a file's
    ``st_ctime``, hence its :func:`stat_key`, not its content: for each of ``paths`` that
    is the same file (same device and inode, size and modification time) as a file whose
    digest is known, the digest is remembered under the current keys of both names. A
    digest another process left beside an earlier name (:func:`record_digest`) counts
    when that name is in one of ``origins``.

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        Files to look at (missing ones are skipped).
    origins : iterable of str or os.PathLike
        Directories that may hold an earlier name of a file (with the same file name),
        e.g. the job directories of the nodes that wrote a workflow's outputs.
    """
    origins = [Path(directory) for directory in origins]
    for path in paths:
        try:
            key = stat_key(path)
        except OSError:
            continue
        with _digests_lock:
            if key in _digests:
                continue
            earlier = [(k, _digests[k]) for k in _by_inode.get((key[1], key[2], key[4]), ())]
        for name in (directory / Path(path).name for directory in origins):
            with contextlib.suppress(OSError):
                if name.is_file() and os.path.samefile(name, key[0]):
                    recorded = _recorded_digest(stat_key(name))
                    if recorded is not None:
                        earlier.append((stat_key(name), recorded))
                        break
        for (name, *_), value in earlier:
            with contextlib.suppress(OSError):
                if os.path.samefile(name, key[0]):
                    remember_digest(key, value)
                    remember_digest(name, value)
                    break


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes (SHA-256) what it passes on to ``sink``."""

    def __init__(self, sink):
        super().__init__()
        self._sink = sink
        self._hash = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        """Hash ``data`` (any bytes-like object) and write it to the sink."""
        self._hash.update(data)
        self._sink.write(data)
        return memoryview(data).nbytes

    def flush(self) -> None:
        """Flush the sink."""
        self._sink.flush()

    @property
    def digest(self) -> str:
        """``"sha256:<hex>"`` of everything written so far."""
        return f"sha256:{self._hash.hexdigest()}"


@contextlib.contextmanager
def hashed_output(path, opener=None) -> Iterator:
    """Yield a write-only stream to a temporary file next to ``path``, renamed on success.

    :func:`atomic_output` with the bytes hashed as they are written: once ``path`` is
    in place its digest is remembered (:func:`remember_digest`), so that hashing it
    later (Pydra's key, a provenance record) reads nothing.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination; its directory must exist.
    opener : callable, optional
        ``opener(tmp_path)`` returning a binary stream; default ``open(tmp, "wb")``.
    """
    path = Path(path)
    with atomic_output(path) as tmp, (opener or _open_binary)(tmp) as raw:
        writer = _HashingWriter(raw)
        yield writer
    remember_digest(path, writer.digest)


@contextlib.contextmanager
def identified_output(path, identity: str) -> Iterator:
    """:func:`hashed_output` for a file identified by what it is computed from.

    For large intermediates a workflow writes and its next node reads (a smoothed BOLD):
    hashing their bytes (SHA-256 of 0.6 GB, on the thread that writes them) would only
    restate what their inputs already determine. The digest remembered for the file is
    the SHA-256 of ``identity``, a text naming the computation and the digests of its
    inputs, marked as such (``"sha256:id-<hex>"``): equal identities mean equal content,
    as long as the computation is deterministic. Like any remembered digest it holds
    only while the file's stat key is unchanged; a file rewritten by anyone else is
    hashed by its content again.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination; its directory must exist.
    identity : str
        The computation and its inputs, e.g. ``"smooth-window 1 <bold digest> ..."``.
    """
    path = Path(path)
    with atomic_output(path) as tmp, _open_binary(tmp) as raw:
        yield raw
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()
    remember_digest(path, f"sha256:id-{digest}")


def _open_binary(path):
    return open(path, "wb")


def _image_path(path) -> Path:
    """``path`` as a Path, after checking that its suffix names a NIfTI format."""
    path = Path(path)
    if not path.name.lower().endswith(_IMAGE_SUFFIXES):
        raise ValueError(f"Image output path must end with .nii or .nii.gz, got '{path}'.")
    return path


def save_img(img, path, *, compress_level=1, n_threads=None) -> Path:
    """Write a nibabel image atomically; the format follows the suffix.

    Parameters
    ----------
    img : nibabel.spatialimages.SpatialImage
        Image to write.
    path : str or os.PathLike
        Destination ending in ``.nii`` (uncompressed, fastest) or ``.nii.gz``.
    compress_level, n_threads
        For a ``.nii.gz``: see :func:`gzip_writer`.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = _image_path(path)
    with hashed_output(path) as raw:
        write_img(
            img,
            raw,
            gzipped=path.name.lower().endswith(".gz"),
            compress_level=compress_level,
            n_threads=n_threads,
        )
    return path


def write_img(img, stream, *, gzipped, compress_level=1, n_threads=None) -> None:
    """Write the NIfTI bytes nibabel writes for ``img`` to a write-only ``stream``.

    Parameters
    ----------
    img : nibabel.Nifti1Image
    stream : binary file object
        Destination, open for writing (not closed).
    gzipped : bool
        Compress with :func:`gzip_writer` (a ``.nii.gz``).
    compress_level, n_threads
        See :func:`gzip_writer`.
    """
    if not gzipped:
        forward = _ForwardStream(stream)
        img.to_file_map(img.make_file_map({"image": forward, "header": forward}))
        return
    with gzip_writer(stream, compress_level=compress_level, n_threads=n_threads) as gz:
        forward = _ForwardStream(gz)
        img.to_file_map(img.make_file_map({"image": forward, "header": forward}))


def save_img_blocks(
    header, blocks, path, *, compress_level=1, n_threads=None, identity=None
) -> Path:
    """Write a 4D NIfTI from its header and its volumes, block after block, atomically.

    For images produced a few volumes at a time (a smoothed run): the whole array is
    never in memory, and the bytes are hashed as they are written (:func:`hashed_output`),
    so that hashing the file later reads nothing; or, with ``identity``, not hashed at
    all (see :func:`identified_output`).

    Parameters
    ----------
    header : nibabel.Nifti1Header
        Header of the whole image (its shape, dtype and ``vox_offset``; no scaling).
    blocks : iterable of numpy.ndarray
        Arrays ``(x, y, z, n)`` of the header's dtype, consecutive volumes in order,
        Fortran order (the file's); together, every volume of the header's shape.
    path : str or os.PathLike
        Destination ``.nii`` or ``.nii.gz``.
    compress_level, n_threads
        See :func:`gzip_writer` (for a ``.nii.gz``).
    identity : str, optional
        What determines the content (see :func:`identified_output`).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = _image_path(path)
    header = header.copy()
    measure = io.BytesIO()
    header.write_to(measure)
    # As nibabel writes a single-file NIfTI: the data start on a 16-byte boundary.
    header.set_data_offset(-(-measure.tell() // 16) * 16)
    head = io.BytesIO()
    header.write_to(head)
    padding = b"\0" * (int(header["vox_offset"]) - head.tell())
    dtype = header.get_data_dtype()

    def fill(stream):
        stream.write(head.getvalue() + padding)
        for block in blocks:
            # A Fortran-ordered block's bytes are the file's: its transpose is C-contiguous.
            stream.write(memoryview(np.asfortranarray(block, dtype=dtype).T).cast("B"))

    output = hashed_output(path) if identity is None else identified_output(path, identity)
    with output as raw:
        if path.name.lower().endswith(".gz"):
            with gzip_writer(raw, compress_level=compress_level, n_threads=n_threads) as gz:
                fill(gz)
        else:
            fill(raw)
    return path


#: isal's compression levels (0: fastest ... 3: smallest); 1 is close to zlib's level 1,
#: nibabel's default for ``.nii.gz``.
COMPRESS_LEVELS = (0, 1, 2, 3)
_GZIP_MAGIC = b"\x1f\x8b"
# Block size of the threaded compressor. The compressed bytes depend on it (each block is
# deflated with the previous block as dictionary), not on the number of threads: fixed, so
# that the same image gives the same file on every machine.
_GZIP_BLOCK_BYTES = 1024**2
_COPY_CHUNK_BYTES = 8 * 1024**2


def check_compress_level(compress_level) -> int:
    """Refuse a compression level isal does not have (ValueError naming the value)."""
    if isinstance(compress_level, bool) or compress_level not in COMPRESS_LEVELS:
        raise ValueError(
            f"compress_level must be one of {COMPRESS_LEVELS} (isal levels), "
            f"got {compress_level!r}."
        )
    return int(compress_level)


def gzip_writer(stream, *, compress_level=1, n_threads=None):
    """A file object that gzips what it is given into ``stream``, on several threads.

    python-isal's threaded writer (``isal.igzip_threaded``): an ordinary single-member
    ``.gz`` that any gzip reader opens, with a zero modification time in its header, and
    the same bytes whatever the number of threads.

    Parameters
    ----------
    stream : binary file object
        Destination, open for writing (not closed when the writer is).
    compress_level : {0, 1, 2, 3}, default=1
        isal compression level.
    n_threads : int, optional
        Compression threads; default :func:`masker_wf._threads.default_n_threads`.

    Returns
    -------
    io.BufferedWriter
        Write-only and not seekable; closing it writes the gzip trailer.
    """
    from isal import igzip_threaded

    check_compress_level(compress_level)
    threads = default_n_threads() if n_threads is None else max(1, int(n_threads))
    return igzip_threaded.open(
        stream, "wb", compresslevel=compress_level, threads=threads, block_size=_GZIP_BLOCK_BYTES
    )


class _ForwardStream(io.RawIOBase):
    """Write-only stream that knows its position and seeks forward by writing zeros.

    nibabel seeks to the start of the header and to the data offset while writing an
    image; a gzip writer cannot seek, but those seeks never go backwards.
    """

    def __init__(self, sink):
        super().__init__()
        self._sink = sink
        self._position = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        """Write ``data`` (any bytes-like object) to the sink."""
        size = memoryview(data).nbytes
        self._sink.write(data)
        self._position += size
        return size

    def tell(self) -> int:
        """Position in the uncompressed stream."""
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move forward (writing zeros); moving backwards is an error."""
        target = offset if whence == 0 else self._position + offset
        if whence not in (0, 1) or target < self._position:
            raise OSError("a gzip stream can only seek forward.")
        if target > self._position:
            self.write(bytes(target - self._position))
        return target


def output_error(path, exc: BaseException) -> OSError:
    """An OSError naming the output ``path``, for a failure while writing it.

    Keeps the errno of ``exc`` (so the class is ``PermissionError``, ``FileNotFoundError``,
    ``NotADirectoryError``... as for the original error) and says where the original
    failure happened when that was another path (the directory, the temporary file).
    """
    path = os.fspath(path)
    number = getattr(exc, "errno", None)
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    where = getattr(exc, "filename", None)
    # Name the directory at fault (missing, or a file); not our own temporary file.
    if where is not None and Path(path).is_relative_to(where) and os.fspath(where) != path:
        reason += f" (at '{os.fspath(where)}')"
    if number is None:
        error = OSError(f"Cannot write output '{path}': {reason}")
    else:
        # OSError(errno, strerror, filename) builds the errno's subclass and names the file.
        error = OSError(number, f"Cannot write output: {reason}", path)
    error.output_file = path
    return error


def _check_output_directory(path: Path) -> None:
    """Refuse, naming ``path``, a destination whose directory is missing or not a directory."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        is_directory = stat.S_ISDIR(os.stat(parent).st_mode)
    except OSError as exc:
        raise output_error(path, exc) from exc
    if not is_directory:
        cause = NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(parent))
        raise output_error(path, cause)


def _open_for_writing(path):
    # A seam for tests that simulate a full disk.
    return open(path, "wb")


def _write_atomically(path: Path, fill) -> Path:
    """Run ``fill(stream)`` on a temporary file next to ``path``, then rename it to ``path``.

    Any OSError that is not already tagged as coming from an input (the directory, the
    temporary file, the rename, a write, a full disk) is re-raised naming ``path``; on
    failure nothing is left at ``path`` (its previous content stays) nor next to it.
    """
    _check_output_directory(path)
    try:
        with hashed_output(path, _open_for_writing) as stream:
            fill(stream)
    except OSError as exc:
        if getattr(exc, "output_file", None) is not None or getattr(exc, "input_file", None):
            raise
        raise output_error(path, exc) from exc
    return path


def _read(reader, size: int, source) -> bytes:
    try:
        return reader.read(size)
    except OSError as exc:
        error = OSError(exc.errno, exc.strerror or str(exc), os.fspath(source))
        error.input_file = os.fspath(source)
        raise error from exc


def _pump(reader, writer, source) -> None:
    while chunk := _read(reader, _COPY_CHUNK_BYTES, source):
        writer.write(chunk)


def is_gzipped(path) -> bool:
    """Whether the file at ``path`` starts with the gzip magic number."""
    with open(path, "rb") as stream:
        return stream.read(2) == _GZIP_MAGIC


def write_file(in_file, out_file, *, compress_level=1, n_threads=None) -> Path:
    """Copy a file to ``out_file`` atomically, (de)compressing it as the names require.

    A destination ending in ``.gz`` gets gzipped data: the input is copied as it is when
    it is already gzipped, compressed with python-isal otherwise. A gzipped input written
    to a destination without ``.gz`` is decompressed. Everything else is copied.

    Parameters
    ----------
    in_file : str or os.PathLike
        The file to write.
    out_file : str or os.PathLike
        Destination; its directory must exist.
    compress_level, n_threads
        When compressing: see :func:`gzip_writer`.

    Returns
    -------
    pathlib.Path
        ``out_file``, once the whole file is in place.

    Raises
    ------
    OSError
        Naming ``in_file`` when it cannot be read, naming ``out_file`` for any failure on
        the output side (missing directory, a file in the way, permissions, full disk).
    """
    from isal import igzip

    source, out_file = Path(in_file), Path(out_file)
    check_compress_level(compress_level)
    compress = out_file.name.lower().endswith(".gz")
    with open(source, "rb") as raw_input:
        gzipped = raw_input.read(2) == _GZIP_MAGIC
        raw_input.seek(0)

        def fill(stream):
            if compress and not gzipped:
                with gzip_writer(stream, compress_level=compress_level, n_threads=n_threads) as gz:
                    _pump(raw_input, gz, source)
            elif gzipped and not compress:
                with igzip.open(raw_input, "rb") as decompressed:
                    _pump(decompressed, stream, source)
            else:
                _pump(raw_input, stream, source)

        return _write_atomically(out_file, fill)


def json_text(content, *, what="JSON content") -> str:
    """``content`` as JSON text (2-space indent; numpy values, paths, sets accepted).

    Raises
    ------
    TypeError, ValueError
        ``content`` holds a value JSON cannot represent (NaN and infinities included:
        they are not valid JSON).
    """
    import json

    try:
        return json.dumps(content, indent=2, default=_json_default, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{what} cannot be written as JSON: {exc}") from exc


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_text_file(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; output failures name ``path``."""
    data = text.encode("utf-8")
    return _write_atomically(Path(path), lambda stream: stream.write(data))


def _output_path(path, suffix: str, what: str) -> Path:
    """``path`` as a Path, refused (ValueError) unless its extension is ``suffix``."""
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise ValueError(f"{what} output path must end with {suffix}, got '{path}'.")
    return path


def save_signals(signals, path, *, identity=None) -> Path:
    """Write a 2D signals array as ``.npy`` atomically, keeping its dtype.

    Parameters
    ----------
    signals : numpy.ndarray
        Array of shape ``(n_volumes, n_voxels)`` (a 1D array is accepted and
        stored as is, as NiftiMasker returns for a 3D image).
    path : str or os.PathLike
        Destination ending in ``.npy``.
    identity : str, optional
        What determines the content: the file is then not hashed (see
        :func:`identified_output`).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    signals = np.asarray(signals)
    _check_signals(signals.shape, signals.dtype)
    with signals_output(path, identity=identity) as output:
        output.set(signals)
    return path


def _check_signals(shape, dtype) -> np.dtype:
    """The dtype of a signals array of ``shape``; ValueError unless one can be written."""
    dtype = np.dtype(dtype)
    if len(shape) not in (1, 2):
        raise ValueError(
            f"signals must be a 1D or 2D array (n_volumes, n_voxels), got shape {tuple(shape)}."
        )
    if dtype.hasobject or dtype.kind in "mM":
        # np.save(allow_pickle=False) refuses objects; dates are not signals either.
        raise ValueError(f"signals must be a numeric array, got dtype {dtype}.")
    return dtype


class SignalsOutput:
    """A signals ``.npy`` being written (see :func:`signals_output`)."""

    def __init__(self, tmp: Path, hashed: bool):
        self._tmp, self._hashed = tmp, hashed
        self._mapped = None
        self.done = False
        self.digest = None

    def allocate(self, shape, dtype) -> np.ndarray:
        """The array to compute the signals into: a memory map of the output file.

        The computation writes its result where it will be stored: no array in memory
        besides the page cache, no copy into the file afterwards (a second of a 2 mm MNI
        run's 0.28 GB on this project's machine).
        """
        # Plain ints: numpy integers would be written into the header as np.int64(...).
        shape = tuple(int(n) for n in shape)
        dtype = _check_signals(shape, dtype)
        if self._mapped is not None:
            raise RuntimeError(f"signals_output: '{self._tmp}' was allocated already.")
        self._mapped = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=dtype, shape=shape)
        # The file's blocks reserved now: a full disk or quota is an OSError here, not a
        # SIGBUS when a page of the map is first written.
        with open(self._tmp, "r+b") as stream:
            os.posix_fallocate(stream.fileno(), 0, os.fstat(stream.fileno()).st_size)
        return self._mapped

    def set(self, signals) -> None:
        """The signals to store: the array :meth:`allocate` gave (written already), or any."""
        self.done = True
        if signals is self._mapped:
            # No msync: the page cache is what any reader sees, as after a write(); the
            # file is not made more durable than the written ones.
            if self._hashed:
                self.digest = _sha256_of_file(os.fspath(self._tmp), _HASH_SEGMENT_BYTES)
            return
        signals = np.asarray(signals)
        _check_signals(signals.shape, signals.dtype)
        # Not the mapped array (another shape, a view of it): written to a file of its own
        # that then replaces the mapped one, which stays valid for whoever still reads it.
        target = self._tmp if self._mapped is None else self._tmp.with_name(self._tmp.name + "~")
        try:
            with open(target, "wb") as raw:
                writer = _HashingWriter(raw) if self._hashed else raw
                _write_npy(writer, signals)
            if target != self._tmp:
                os.replace(target, self._tmp)
        finally:
            if target != self._tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
        if self._hashed:
            self.digest = writer.digest


@contextlib.contextmanager
def signals_output(path, *, identity=None) -> Iterator[SignalsOutput]:
    """Write a signals ``.npy`` atomically, computed in place or given whole.

    Yields a :class:`SignalsOutput`: its ``allocate(shape, dtype)`` gives a memory map of
    the (temporary) output file for a computation to write its result into, its
    ``set(signals)`` names the result (that map, or any array, then written). The file
    has :func:`numpy.save`'s bytes; it is renamed into place on success, removed on
    failure, and its digest is remembered as :func:`save_signals` does.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ending in ``.npy``.
    identity : str, optional
        What determines the content (see :func:`identified_output`): not hashed then.
    """
    path = _output_path(path, ".npy", "Signals")
    with atomic_output(path) as tmp:
        output = SignalsOutput(tmp, hashed=identity is None)
        yield output
        if not output.done:
            raise RuntimeError(f"signals_output: no signals were set for '{path}'.")
    if identity is not None:
        digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()
        remember_digest(path, f"sha256:id-{digest}")
    else:
        remember_digest(path, output.digest)


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
    path = _output_path(path, ".npz", "QC")
    arrays = {key: np.asarray(report[key]) for key in QC_KEYS[:5] if report.get(key) is not None}
    planes = report.get("mean_planes")
    if planes is not None:
        for key, plane in zip(QC_KEYS[5:], planes, strict=True):
            arrays[key] = np.asarray(plane)
    # Built in memory (a few MB; the zip writer seeks) and hashed as it is written, so
    # that the next node's cache key reads nothing.
    archive = io.BytesIO()
    np.savez(archive, **arrays)
    with hashed_output(path) as stream:
        stream.write(archive.getbuffer())
    return path


def load_qc(path) -> dict:
    """Read a file written by :func:`save_qc` (``mean_planes`` as a list of 3 arrays)."""
    with np.load(path, allow_pickle=False) as archive:
        qc = {key: archive[key] for key in archive.files}
    planes = [qc.pop(key) for key in QC_KEYS[5:] if key in qc]
    qc["mean_planes"] = planes if len(planes) == 3 else None
    return qc


def _write_npy(stream, signals: np.ndarray, rows_per_chunk: int = 16) -> None:
    """Write ``signals`` as a C-order ``.npy`` (``np.save``'s bytes), copying nothing whole.

    ``np.save`` copies the array in pieces through ``tobytes`` for any stream that is
    not a plain file (a hashing writer): 0.5 s for the 0.25 GB of a 2 mm MNI run. A
    C-contiguous array is written from its own memory instead; any other layout a few
    rows at a time.
    """
    header = {
        "descr": np.lib.format.dtype_to_descr(signals.dtype),
        "fortran_order": False,
        "shape": signals.shape,
    }
    np.lib.format.write_array_header_1_0(stream, header)
    if signals.flags.c_contiguous:
        data = memoryview(signals.reshape(-1)).cast("B")
        for start in range(0, data.nbytes, _NPY_PIECE_BYTES):
            stream.write(data[start : start + _NPY_PIECE_BYTES])
        return
    for start in range(0, signals.shape[0], rows_per_chunk):
        stream.write(np.ascontiguousarray(signals[start : start + rows_per_chunk]).data)


#: Bytes of an array written per call (hashlib releases the GIL on buffers this large).
_NPY_PIECE_BYTES = 16 * 1024**2


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
