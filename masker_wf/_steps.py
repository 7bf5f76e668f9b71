"""File-in/file-out steps of the masker: the one place where file I/O meets the core ops.

Each step reads its input files, calls the in-memory core ops (``masker_wf.image``,
``masker_wf.masking``, ``masker_wf._pipeline``) and writes one output file. The
Pydra tasks (``masker_wf.tasks``), the nipype interfaces (``masker_wf.nipype``) and
the BIDS app all call these functions, so they compute the same numbers as the
in-memory ``NiftiMasker``.

Guarantees shared by every step:

- inputs are checked (existence, readability, dimensionality) before any
  output is written;
- the output is written atomically (:func:`masker_wf._io.atomic_output`):
  on failure nothing is left at ``out_file``;
- a bad input or parameter (a ``ValueError`` or ``TypeError`` raised by the
  validator or the core, e.g. :class:`~masker_wf._exceptions.DimensionError`) is
  re-raised as the same object, with the same message as the estimator gives,
  carrying the attributes ``step`` and ``file`` (the input at fault, else the
  step's main input); any other failure raises :class:`StepError` (a
  ``ValueError`` with ``step``, ``file`` and ``reason``), the original exception
  chained as ``__cause__``.

Errors across processes
-----------------------
The faces that run steps in other processes (Pydra's ``cf`` worker, nipype's
MultiProc) report failures to their caller as text. So that the caller gets the
exception object itself, the Pydra tasks and nipype interfaces run the steps through
:func:`call_step`, which pickles a failure into ``_masker_error.pkl`` in the task's
working directory; :func:`load_error` reads it back.
"""

from __future__ import annotations

import errno
import functools
import io
import itertools
import multiprocessing
import os
import pickle
import sys
from pathlib import Path

import numpy as np

from . import _io, _validation
from ._exceptions import DimensionError, IntermediateMismatchError, SampleMaskError
from ._io import (
    atomic_output,
    load_qc,
    load_signals,
    read_sample_mask,
    save_img,
    save_qc,
    save_signals,
)
from ._niimg import get_data

__all__ = [
    "ERROR_FILE",
    "StepError",
    "call_step",
    "clean_signals",
    "compute_mask",
    "high_variance_confounds",
    "load_error",
    "record_error",
    "resample",
    "sidecar_path",
    "smooth",
    "unmask",
    "with_reference_header",
    "write_derivative",
]

#: Name of the file :func:`call_step` pickles a failure into, in the working directory.
ERROR_FILE = "_masker_error.pkl"


class StepError(ValueError):
    """A file-based step failed for a reason other than a bad input or parameter.

    Parameters
    ----------
    step : str
        Name of the step (``"compute_mask"``, ``"clean_signals"``, ...).
    file : str or os.PathLike or list
        The input file the step was working on (the main one when several); also
        available as ``input_file``.
    reason : str
        What went wrong.
    """

    def __init__(self, step, file, reason):
        self.step = step
        self.file = file
        self.reason = reason
        message = f"masker step '{step}' failed on input file {_name(file)}: {reason}"
        super().__init__(message)

    @property
    def input_file(self):
        """The input file the step was working on (same as ``file``)."""
        return self.file

    def __reduce__(self):
        # Keep the exception picklable across process pools (Pydra's cf worker); notes
        # and other attributes travel as the state.
        return (type(self), (self.step, self.file, self.reason), self.__dict__)


def _name(files) -> str:
    if isinstance(files, (list, tuple)):
        return ", ".join(_name(f) for f in files)
    return f"'{os.fspath(files)}'" if files is not None else "<none>"


def _file_value(files):
    if isinstance(files, (list, tuple)):
        return [_file_value(f) for f in files]
    return None if files is None else os.fspath(files)


def _locate(exc: BaseException, step: str, file) -> BaseException:
    """Set ``exc.step`` and ``exc.file`` unless already set; note them for tracebacks.

    The note shows in formatted tracebacks (Pydra's and nipype's crash reports) but
    leaves ``str(exc)``, the message every face shares, unchanged.
    """
    if getattr(exc, "step", None) is None:
        exc.step = step
    if getattr(exc, "file", None) is None:
        exc.file = _file_value(file)
        exc.add_note(f"(masker step '{exc.step}', input file {_name(exc.file)})")
    return exc


def _step(name: str, input_arg: str, keep: tuple = ()):
    """Give the exceptions of a step its name and input file.

    ValueError and TypeError (bad inputs or parameters, found by the validator or the
    core), and the classes in ``keep``, are re-raised as the same object with ``step`` and
    ``file`` set; anything else becomes a StepError naming the step and its input.
    """
    passed = (ValueError, TypeError, *keep)

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            input_file = kwargs.get(input_arg, args[0] if args else None)
            try:
                return function(*args, **kwargs)
            except passed as exc:
                _locate(exc, name, input_file)
                raise
            except Exception as exc:
                raise StepError(name, input_file, f"{type(exc).__name__}: {exc}") from exc

        return wrapper

    return decorate


def _portable(exc: BaseException) -> dict:
    """What :func:`record_error` pickles: the exception, or its class, args and attributes.

    Exceptions whose ``__init__`` takes other arguments than their message (such as
    DimensionError) pickle but do not unpickle; they are rebuilt from their parts instead.
    """
    try:
        data = pickle.dumps(exc)
        clone = pickle.loads(data)
        if type(clone) is type(exc) and clone.args == exc.args:
            return {"exception": data}
    except Exception:
        pass
    state = {}
    for key, value in vars(exc).items():
        try:
            pickle.dumps(value)
        except Exception:
            continue
        state[key] = value
    try:
        pickle.loads(pickle.dumps(type(exc)))
        return {"parts": pickle.dumps((type(exc), exc.args, state))}
    except Exception:  # a class pickle cannot find by name (defined in a function...)
        error = StepError(
            getattr(exc, "step", None), getattr(exc, "file", None), f"{type(exc).__name__}: {exc}"
        )
        return {"exception": pickle.dumps(error)}


def record_error(exc: BaseException, directory) -> Path:
    """Pickle ``exc`` into ``directory/_masker_error.pkl`` (atomically) for another process.

    Parameters
    ----------
    exc : BaseException
        The failure of a step.
    directory : str or os.PathLike
        The task's or node's working directory.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    path = Path(directory) / ERROR_FILE
    with atomic_output(path) as tmp:
        tmp.write_bytes(pickle.dumps(_portable(exc)))
    return path


def load_error(directory) -> BaseException | None:
    """The exception :func:`record_error` left in ``directory``, or None.

    Parameters
    ----------
    directory : str or os.PathLike
        A task's or node's working directory.

    Returns
    -------
    BaseException or None
        Same class, message and attributes (``step``, ``file``...) as the original; None
        when there is no readable error file.
    """
    path = Path(directory) / ERROR_FILE
    try:
        payload = pickle.loads(path.read_bytes())
        if "exception" in payload:
            return pickle.loads(payload["exception"])
        cls, args, state = pickle.loads(payload["parts"])
        # Neither __init__ nor a custom __reduce__: restore what the object held.
        exc = cls.__new__(cls, *args)
        exc.args = args
        exc.__dict__.update(state)
        return exc
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError):
        return None


def _transportable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a StepError saying the same."""
    try:
        clone = pickle.loads(pickle.dumps(exc))
        if type(clone) is type(exc):
            return exc
    except Exception:
        pass
    return StepError(getattr(exc, "step", None), getattr(exc, "file", None), str(exc))


def call_step(step, directory, *args, **kwargs):
    """Run ``step(*args, **kwargs)``; on failure, record the exception in ``directory``.

    Used by the Pydra tasks and the nipype interfaces, whose working directory is
    ``directory``, so that the runners (:func:`masker_wf.workflow.run_masker_workflow`,
    :func:`masker_wf.nipype.run_masker_wf`) can re-raise the exception object itself
    after a worker process reported it as text. A stale error file is removed first.

    Returns
    -------
    object
        What the step returns.

    Raises
    ------
    Exception
        The step's exception, the same object; in a worker process, an exception that
        could not be unpickled by the parent (a multiprocessing pool would break on it) is
        raised as a StepError instead (the recorded file keeps the original).
    """
    directory = Path(directory)
    (directory / ERROR_FILE).unlink(missing_ok=True)
    try:
        return step(*args, **kwargs)
    except Exception as exc:
        record_error(exc, directory)
        if multiprocessing.parent_process() is None:
            raise
        transported = _transportable(exc)
        if transported is exc:
            raise
        raise transported from exc


def _check_input(step: str, path, what: str, ndim=None, read_data=False):
    """Fail early, before any output exists, when an input image is missing or unreadable.

    ``ndim`` is only given where the core does not check the dimensionality itself; the
    check is the validator's (a DimensionError, as the core raises). ``read_data`` also
    reads the data (for small images such as masks), so that a truncated file is blamed
    on itself rather than on the step's main input.
    """
    import nibabel as nib

    if path is None:
        raise StepError(step, path, f"{what} is required.")
    path = Path(path)
    if not path.is_file():
        raise StepError(step, path, f"{what} does not exist.")
    try:
        img = nib.load(path)
    except Exception as exc:
        raise StepError(step, path, f"{what} cannot be read as an image: {exc}") from exc
    if ndim is not None:
        try:
            _validation.check_img_ndim(img.shape, ndim, name=f"{what} '{path}'")
        except (TypeError, ValueError) as exc:
            _locate(exc, step, path)
            raise
    if read_data:
        try:
            get_data(img)
        except ValueError as exc:
            raise StepError(step, path, f"{what}: {exc}") from exc
    return img


def _mask_input(step: str, path):
    """A mask input, checked and 3D (a 4D mask of one volume squeezed, as nilearn takes it)."""
    from ._niimg import check_niimg_3d

    img = _check_input(step, path, "mask image", read_data=True)
    try:
        return check_niimg_3d(img, name=f"mask image '{path}'")
    except (TypeError, ValueError) as exc:
        _locate(exc, step, path)
        raise


def _check_output(step: str, input_file, out_file) -> Path:
    out_file = Path(out_file)
    if not out_file.parent.is_dir():
        reason = f"output directory '{out_file.parent}' of '{out_file}' does not exist."
        raise StepError(step, input_file, reason)
    return out_file


def _as_affine(target_affine):
    if target_affine is None:
        return None
    return np.asarray(target_affine, dtype=float)


def _as_shape(target_shape):
    if target_shape is None:
        return None
    return tuple(int(n) for n in target_shape)


@_step("compute_mask", "bold_files")
def compute_mask(
    bold_files,
    out_file,
    *,
    mask_strategy="background",
    mask_args=None,
    target_affine=None,
    target_shape=None,
) -> Path:
    """Compute a brain mask from BOLD image(s) and write it as NIfTI (uint8).

    Parameters
    ----------
    bold_files : path or list of paths
        4D BOLD image, or several 3D images concatenated along time (as
        ``NiftiMasker.fit`` reads a list).
    out_file : path
        Destination ``.nii`` or ``.nii.gz``.
    mask_strategy : str, default="background"
        ``NiftiMasker`` mask strategy (``"background"``, ``"epi"``,
        ``"whole-brain-template"``, ``"gm-template"``, ``"wm-template"``).
    mask_args : dict, optional
        Extra arguments of the mask computing function.
    target_affine : (3, 3) or (4, 4) array-like, optional
        Affine of the grid the mask is resampled to (nearest neighbour).
    target_shape : 3-tuple of int, optional
        Shape of the grid the mask is resampled to.

    Returns
    -------
    pathlib.Path
        ``out_file``.
    """
    from ._pipeline import compute_mask_img

    files = [bold_files] if isinstance(bold_files, (str, os.PathLike)) else list(bold_files)
    if not files:
        raise StepError("compute_mask", bold_files, "no BOLD file given.")
    for path in files:
        _check_input("compute_mask", path, "BOLD image")
    out_file = _check_output("compute_mask", bold_files, out_file)
    imgs = os.fspath(files[0]) if len(files) == 1 else [os.fspath(f) for f in files]
    mask_img = compute_mask_img(
        imgs,
        mask_strategy=mask_strategy,
        mask_args=dict(mask_args) if mask_args else None,
        target_affine=_as_affine(target_affine),
        target_shape=_as_shape(target_shape),
    )
    return save_img(mask_img, out_file)


@_step("resample", "in_file")
def resample(
    in_file,
    out_file,
    *,
    target_affine=None,
    target_shape=None,
    reference_file=None,
    interpolation="continuous",
    dtype=None,
    mask_file=None,
) -> Path:
    """Resample an image to a target grid, onto a reference image's grid, or onto a mask's.

    Parameters
    ----------
    in_file : path
        3D or 4D image.
    out_file : path
        Destination ``.nii`` or ``.nii.gz``.
    target_affine : (3, 3) or (4, 4) array-like, optional
        Target affine (ignored when ``reference_file`` is given).
    target_shape : 3-tuple of int, optional
        Target shape (ignored when ``reference_file`` is given).
    reference_file : path, optional
        Image whose grid is the target.
    interpolation : {"continuous", "linear", "nearest"}, default="continuous"
        ``"nearest"`` for masks and label images.
    dtype : str or numpy dtype, optional
        Cast the input data to this dtype before resampling, as
        ``NiftiMasker(dtype=...)`` does (``"auto"`` is accepted).
    mask_file : path, optional
        The masker's mask (on its target grid): the BOLD ``in_file`` is resampled as
        ``NiftiMasker.transform`` resamples it before smoothing and masking (see
        :func:`masker_wf._pipeline.resample_onto_mask`): onto the mask's bounding box,
        padded by one voxel, when the grids differ, else onto ``target_affine`` /
        ``target_shape``. The output is then that cropped window of the mask's grid
        (continuous interpolation; ``interpolation`` and ``reference_file`` do not
        apply), in the dtype of the data (float32 for float32 BOLD).

    Returns
    -------
    pathlib.Path
        ``out_file``.
    """
    from ._niimg import check_niimg
    from .image import resample_img, resample_to_img

    if mask_file is not None:
        return _resample_onto_mask(
            in_file, mask_file, out_file, target_affine, target_shape, dtype
        )
    img = _check_input("resample", in_file, "input image", ndim=(3, 4))
    if reference_file is not None:
        _check_input("resample", reference_file, "reference image", ndim=(3, 4))
    elif target_affine is None and target_shape is None:
        raise StepError(
            "resample", in_file, "give target_affine and/or target_shape, or reference_file."
        )
    out_file = _check_output("resample", in_file, out_file)
    if dtype is not None:
        img = check_niimg(img, dtype=dtype)
    if reference_file is not None:
        resampled = resample_to_img(
            img, os.fspath(reference_file), interpolation=interpolation, copy=False
        )
    else:
        resampled = resample_img(
            img,
            target_affine=_as_affine(target_affine),
            target_shape=_as_shape(target_shape),
            interpolation=interpolation,
            copy=False,
        )
    return save_img(resampled, out_file)


def _resample_onto_mask(in_file, mask_file, out_file, target_affine, target_shape, dtype):
    """:func:`resample` with ``mask_file``: the BOLD on the (cropped) grid it is masked on."""
    from ._pipeline import load_img, prepare_mask_img, resample_onto_mask

    # The dimensionality is load_img's to check: the estimator's error, word for word.
    _check_input("resample", in_file, "BOLD image")
    mask_img = _check_input("resample", mask_file, "mask image", read_data=True)
    out_file = _check_output("resample", in_file, out_file)
    img, _, _ = load_img(os.fspath(in_file), dtype=dtype)
    mask_img = prepare_mask_img(mask_img)
    img, _ = resample_onto_mask(
        img, mask_img, _as_affine(target_affine), _as_shape(target_shape), stacklevel=4
    )
    return save_img(img, out_file)


@_step("smooth", "in_file")
def smooth(
    in_file, out_file, *, fwhm, mask_file=None, dtype=None, planes_file=None, extract=False
) -> Path:
    """Smooth an image with an isotropic or per-axis Gaussian kernel.

    Parameters
    ----------
    in_file, out_file : path
        The 3D or 4D image, and where its smoothed version goes: a ``.nii`` or
        ``.nii.gz`` (a ``.npy`` with ``extract``).
    fwhm : float, sequence of 3 floats, "fast" or None
        Full width at half maximum of the kernel, in millimetres.
    mask_file : path, optional
        The mask the smoothed BOLD will be masked with (its grid, or a window of it such
        as :func:`resample` writes with a mask): the output is then the smoothed 4D image
        cropped to the mask's bounding box, equal there to smoothing the whole field of
        view (only the box padded by the kernel radius is smoothed), and a ``.nii.gz``
        input is streamed (decompression overlapping smoothing).
    dtype : str or numpy dtype, optional
        With ``mask_file``: the data conversion ``NiftiMasker(dtype=...)`` makes before
        any processing (``"auto"`` is accepted).
    planes_file : path, optional
        With ``mask_file``: also write the report's mean image (the three planes of the
        temporal mean of the *unsmoothed* input through the mask's centroid, gathered as
        the volumes pass; :func:`masker_wf._io.save_qc`) to this ``.npz``, for
        :func:`clean_signals`' ``mean_planes_file``.
    extract : bool, default=False
        With ``mask_file``: write the smoothed time series of the mask's voxels instead
        of the window (a ``.npy`` ``(n_volumes, n_voxels)``, as :func:`clean_signals`
        extracts them), for :func:`clean_signals`' ``extracted_file``: less than half the
        window's bytes, and no second masking pass downstream.

    Returns
    -------
    pathlib.Path
        ``out_file``.
    """
    from .image import smooth_img

    if mask_file is not None:
        # The dimensionality is load_img's to check: the estimator's error, word for word.
        _check_input("smooth", in_file, "BOLD image")
        out_file = _check_output("smooth", in_file, out_file)
        if extract:
            return _smooth_signals(in_file, mask_file, out_file, fwhm, dtype, planes_file)
        return _smooth_window(in_file, mask_file, out_file, fwhm, dtype, planes_file)
    if extract:
        raise StepError("smooth", in_file, "extract needs the mask_file to extract with.")
    img = _check_input("smooth", in_file, "input image", ndim=(3, 4))
    out_file = _check_output("smooth", in_file, out_file)
    return save_img(smooth_img(img, fwhm), out_file)


def _bold_on_mask_window(in_file, mask_file, dtype):
    """The BOLD to smooth (``dtype`` applied), its window of the mask's grid, the mask there."""
    from ._pipeline import load_img, mask_window

    mask_img = _mask_input("smooth", mask_file)
    img, _, _ = load_img(os.fspath(in_file), dtype=dtype)
    window = mask_window(img, mask_img)
    if window is None:
        raise StepError(
            "smooth",
            in_file,
            f"the image is not on the grid of mask '{mask_file}' nor on a window of it "
            "holding every mask voxel: resample it onto the mask first (Resample with "
            "mask_file).",
        )
    return img, (get_data(mask_img) != 0)[window]


def _arguments_identity(what: str, arguments: dict) -> str:
    """What a step's output is computed from: its arguments, files by their digests.

    Every argument is in it (a file as its path and digest, anything else written in full),
    so that two computations with the same identity have the same inputs.
    """
    parts = [f"masker-wf {_version()} {what}"]
    # Every element, each float in the digits that tell it apart from any other.
    with np.printoptions(threshold=sys.maxsize, floatmode="unique"):
        for name, value in sorted(arguments.items()):
            text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
            if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
                text += ":" + _io.file_digest(value)
            parts.append(f"{name}={text}")
    return "\n".join(parts)


def _smoothed_identity(what, in_file, mask_file, fwhm, dtype) -> str:
    """What a smoothing output is computed from (see :func:`masker_wf._io.identified_output`).

    Large intermediates are identified so, not hashed: their next node's cache key then
    costs nothing (0.3 to 0.6 GB for a 2 mm MNI run).
    """
    return " ".join(
        [
            f"masker-wf {_version()} {what}",
            _io.file_digest(in_file),
            _io.file_digest(mask_file),
            f"fwhm={fwhm!r} dtype={dtype!r}",
        ]
    )


def _smooth_window(in_file, mask_file, out_file, fwhm, dtype, planes_file=None) -> Path:
    """:func:`smooth` with ``mask_file``: the smoothed BOLD on the mask's bounding box."""
    from ._niimg import iter_volume_chunks
    from ._pipeline import MeanPlanes
    from .image import smooth_window_chunks

    img, mask = _bold_on_mask_window(in_file, mask_file, dtype)
    chunks = iter_volume_chunks(img)
    planes = None
    if planes_file is not None:
        # What the report shows of the input, taken from the volumes as they stream by.
        planes = MeanPlanes(img.shape[3], mask)
        chunks = planes.follow(chunks)
    box, windows = smooth_window_chunks(chunks, img.shape, img.affine, fwhm, mask)
    start = np.array([s.start for s in box])
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, 3] + img.affine[:3, :3] @ start
    first = next(windows)
    shape = (*(s.stop - s.start for s in box), img.shape[3])
    header = _window_header(img, affine, shape, first[1].dtype)
    blocks = (block for _, block in itertools.chain((first,), windows))
    identity = _smoothed_identity("smooth-window", in_file, mask_file, fwhm, dtype)
    _io.save_img_blocks(header, blocks, out_file, identity=identity)
    if planes is not None:
        save_qc({"mean_planes": planes.result()}, planes_file)
    return out_file


def _smooth_signals(in_file, mask_file, out_file, fwhm, dtype, planes_file=None) -> Path:
    """:func:`smooth` with ``extract``: the smoothed time series of the mask's voxels."""
    from ._pipeline import masked_signals

    if Path(out_file).suffix.lower() != ".npy":
        raise StepError(
            "smooth", in_file, f"with extract, out_file must end with .npy: '{out_file}'."
        )
    img, mask = _bold_on_mask_window(in_file, mask_file, dtype)
    # Streamed from a .nii.gz (decompression overlapping smoothing), the report's mean
    # image of the unsmoothed input gathered on the way: the fused path's own code.
    report = None if planes_file is None else {}
    identity = _smoothed_identity("smooth-signals", in_file, mask_file, fwhm, dtype)
    # Computed into a memory map of the output file (streamed input): never a second copy.
    with _io.signals_output(out_file, identity=identity) as output:
        output.set(masked_signals(img, mask, fwhm, report, output.allocate))
    if report is not None:
        save_qc({"mean_planes": report["mean_planes"]}, planes_file)
    return out_file


def on_masking_grid(bold_img, mask_img=None, target_affine=None, target_shape=None) -> bool:
    """Whether a BOLD is on the grid it is masked on already: no resampling node needed.

    Read from the headers only (the workflows decide their ``resample_bold`` node with
    it). A target grid counts only when full (a 4x4 affine and a shape) and the BOLD's;
    without a mask (one computed from the BOLD), the BOLD's grid is the mask's. An image
    that is not 3D or 4D counts as on the grid: there is nothing to resample, and
    :func:`clean_signals` refuses it with the estimator's error.

    Parameters
    ----------
    bold_img, mask_img : nibabel image
        Loaded images (their data are not read); ``mask_img`` optional.
    target_affine, target_shape : optional
        The masker's target grid.

    Returns
    -------
    bool
    """
    if len(bold_img.shape) not in (3, 4):
        return True
    if target_affine is not None or target_shape is not None:
        if target_affine is None or target_shape is None:
            return False
        affine = np.asarray(target_affine, dtype=float)
        if (
            affine.shape != (4, 4)
            or tuple(bold_img.shape[:3]) != tuple(int(n) for n in target_shape)
            or not np.allclose(bold_img.affine, affine)
        ):
            return False
    if mask_img is None:
        return True
    return tuple(bold_img.shape[:3]) == tuple(mask_img.shape[:3]) and np.allclose(
        bold_img.affine, mask_img.affine
    )


def _version() -> str:
    from ._version import __version__

    return __version__


def _window_header(img, affine, shape, dtype):
    """Header of an image of ``shape`` cropped from ``img``: its codes, units and TR."""
    import nibabel as nib

    first = nib.Nifti1Image(np.zeros((1, 1, 1, 1), dtype=dtype), affine, img.header)
    first.update_header()
    header = first.header.copy()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    # Unscaled data, as nibabel records floats.
    header.set_slope_inter(1.0, 0.0)
    return header


@_step("high_variance_confounds", "bold_file")
def high_variance_confounds(bold_file, out_file) -> Path:
    """The 5 high-variance confounds of a raw 4D BOLD (NiftiMasker's), as ``.npy``.

    :func:`masker_wf.image.high_variance_confounds` with nilearn's defaults, on the whole
    raw image (no mask, no resampling, no smoothing), as ``NiftiMasker.transform``
    computes them with ``high_variance_confounds=True``.

    Parameters
    ----------
    bold_file : path
        4D BOLD image.
    out_file : path
        Destination ``.npy``: an array ``(n_volumes, 5)``.

    Returns
    -------
    pathlib.Path
        ``out_file``.
    """
    from ._niimg import describe
    from ._pipeline import load_img
    from .image import high_variance_confounds as compute

    img = _check_input("high_variance_confounds", bold_file, "BOLD image")
    if len(img.shape) != 4:
        raise DimensionError(
            len(img.shape),
            4,
            f"imgs {describe(os.fspath(bold_file))} (high_variance_confounds needs 4D images)",
        )
    out_file = _check_output("high_variance_confounds", bold_file, out_file)
    _, raw, _ = load_img(os.fspath(bold_file), whole=True)
    return save_signals(compute(raw), out_file)


@_step("clean_signals", "bold_file")
def clean_signals(
    bold_file,
    mask_file,
    out_file,
    *,
    confounds_file=None,
    sample_mask=None,
    smoothing_fwhm=None,
    target_affine=None,
    target_shape=None,
    high_variance_confounds=False,
    detrend=False,
    standardize=False,
    standardize_confounds=True,
    low_pass=None,
    high_pass=None,
    t_r=None,
    runs=None,
    dtype=None,
    clean_args=None,
    qc_file=None,
    hv_confounds_file=None,
    bold_window=False,
    mean_planes_file=None,
    extracted_file=None,
    identify=False,
) -> Path:
    """Extract the masked, (smoothed,) cleaned time series of a BOLD image to ``.npy``.

    Numerically identical to ``NiftiMasker(mask_img=mask_file, ...).transform``:
    it calls :func:`masker_wf._pipeline.filter_and_extract`. Smoothing happens
    here, on the mask's bounding box only, so that the 4D smoothed image never
    needs to be written or hashed.

    Parameters
    ----------
    bold_file : path
        4D (or 3D) BOLD image.
    mask_file : path
        Binary mask on the grid the BOLD is extracted on.
    out_file : path
        Destination ``.npy``; holds a float array ``(n_kept_volumes, n_voxels)``
        (see :mod:`masker_wf._io` for the format).
    confounds_file : path, optional
        Confounds table (``.tsv``/``.csv`` with a header, or ``.npy``).
    sample_mask : array-like, list or path, optional
        Kept volumes (indices or booleans), or a file holding them
        (see :func:`masker_wf._io.read_sample_mask`).
    smoothing_fwhm : float, optional
        Smoothing kernel FWHM in mm.
    target_affine, target_shape : optional
        Grid the BOLD is resampled to (continuous interpolation) before extraction.
    high_variance_confounds, detrend, standardize, standardize_confounds, low_pass, \
high_pass, t_r, runs, dtype, clean_args
        As in ``NiftiMasker`` (``low_pass`` and ``high_pass`` in Hz, ``t_r`` in seconds;
        ``clean_args``: extra arguments of :func:`masker_wf.signal.clean`).
    qc_file : path, optional
        Also write the report data gathered on the way (tSNR before/after, a
        sample of voxels for the carpet plots, the mean image's planes) to this
        ``.npz`` (see :func:`masker_wf._io.save_qc`), so that a report never has to
        read the BOLD again.
    hv_confounds_file : path, optional
        High-variance confounds computed beforehand on the raw BOLD
        (:func:`high_variance_confounds`), prepended to the confounds as
        ``high_variance_confounds=True`` would.
    bold_window : bool, default=False
        ``bold_file`` is a window of the mask's grid holding every mask voxel (the
        cropped images :func:`resample` and :func:`smooth` write with a mask): it is
        masked where it lies, without resampling. Otherwise an image on another grid is
        resampled, as ``NiftiMasker`` does.
    mean_planes_file : path, optional
        The report's mean image, gathered upstream from the unsmoothed BOLD
        (:func:`smooth`'s ``planes_file``), for ``qc_file``.
    extracted_file : path, optional
        The time series of ``mask_file``'s voxels already extracted from ``bold_file``
        (resampled, smoothed: :func:`smooth` with ``extract``), memory-mapped and cleaned;
        ``bold_file`` is then read for its header only, and ``smoothing_fwhm`` and the
        target grid must be left unset (done upstream).
    identify : bool, default=False
        Identify ``out_file`` by what it is computed from (every argument, files by their
        digests; see :func:`masker_wf._io.identified_output`) instead of hashing it: for a
        workflow whose next node's cache key would otherwise hash it (0.3 s for a 2 mm
        MNI run).

    Returns
    -------
    pathlib.Path
        ``out_file``.
    """
    from ._pipeline import filter_and_extract, mask_window

    arguments = dict(locals())

    if extracted_file is not None and (
        bold_window
        or smoothing_fwhm is not None
        or target_affine is not None
        or target_shape is not None
        or dtype is not None
    ):
        raise StepError(
            "clean_signals",
            extracted_file,
            "extracted_file holds signals resampled, smoothed and converted already: give "
            "it without bold_window, smoothing_fwhm, a target grid and dtype.",
        )

    bold_img = _check_input("clean_signals", bold_file, "BOLD image")
    _check_input("clean_signals", mask_file, "mask image", read_data=True)
    if confounds_file is not None and not Path(confounds_file).is_file():
        raise StepError("clean_signals", confounds_file, "confounds file does not exist.")
    # Sample-mask errors are the sample-mask file's when it is one.
    mask_source = sample_mask if isinstance(sample_mask, (str, os.PathLike)) else bold_file
    try:
        kept = read_sample_mask(sample_mask)
    except (TypeError, ValueError) as exc:
        _locate(exc, "clean_signals", mask_source)
        raise
    out_file = _check_output("clean_signals", bold_file, out_file)
    if out_file.suffix.lower() != ".npy":
        raise StepError("clean_signals", bold_file, f"out_file must end with .npy: '{out_file}'.")
    if qc_file is not None and Path(qc_file).suffix.lower() != ".npz":
        raise StepError("clean_signals", bold_file, f"qc_file must end with .npz: '{qc_file}'.")
    confounds = _read_confounds(confounds_file)
    hv_confounds = None
    if hv_confounds_file is not None:
        hv_confounds = _intermediate(load_signals, hv_confounds_file)
    mask_img = os.fspath(mask_file)
    window = None
    if bold_window:
        mask_img = _mask_input("clean_signals", mask_file)
        window = mask_window(bold_img, mask_img)
        if window is None:
            raise StepError(
                "clean_signals",
                bold_file,
                f"bold_window: the image is not on a window of the grid of mask "
                f"'{mask_file}' holding every mask voxel.",
            )
        mask_img = _crop(mask_img, window)
    extracted = None
    if extracted_file is not None:
        extracted = _intermediate(load_signals, extracted_file, mmap_mode="r")
    report = None if qc_file is None else {}
    if report is not None and mean_planes_file is not None:
        report["mean_planes"] = _intermediate(load_qc, mean_planes_file)["mean_planes"]
    identity = None
    if identify:
        del arguments["out_file"], arguments["qc_file"], arguments["identify"]
        identity = _arguments_identity("clean-signals", arguments)
    # The cleaned signals are computed into a memory map of the output file: no copy.
    with _io.signals_output(out_file, identity=identity) as output:
        try:
            signals = filter_and_extract(
                os.fspath(bold_file),
                mask_img,
                smoothing_fwhm=smoothing_fwhm,
                target_affine=_as_affine(target_affine),
                target_shape=_as_shape(target_shape),
                dtype=dtype,
                high_variance_confounds=high_variance_confounds,
                confounds=confounds,
                sample_mask=kept,
                runs=None if runs is None else np.asarray(runs),
                detrend=detrend,
                standardize=standardize,
                standardize_confounds=standardize_confounds,
                low_pass=low_pass,
                high_pass=high_pass,
                t_r=t_r,
                clean_kwargs=dict(clean_args) if clean_args else None,
                report=report,
                hv_confounds=hv_confounds,
                extracted=extracted,
                allocate=output.allocate,
            )
        except SampleMaskError as exc:
            _locate(exc, "clean_signals", mask_source)
            raise
        except IntermediateMismatchError as exc:
            at_fault = extracted_file if exc.source == "extracted" else hv_confounds_file
            raise StepError("clean_signals", at_fault, f"{exc} {_RECOMPUTE}") from exc
        except DimensionError as exc:
            # The core checks both images; a BOLD of a valid dimensionality leaves the mask.
            at_fault = bold_file if len(bold_img.shape) not in (3, 4) else mask_file
            _locate(exc, "clean_signals", at_fault)
            raise
        output.set(signals)
    if qc_file is not None:
        save_qc(report, qc_file)
    return Path(out_file)


# What to do about a damaged intermediate of a workflow (Pydra serves its cached result).
_RECOMPUTE = (
    "It is an intermediate of a workflow's cache: remove the directory holding it (or the "
    "work directory) to have it computed again."
)


def _intermediate(load, path, **kwargs):
    """``load(path)`` of an upstream node's output; a failure names that file."""
    try:
        return load(path, **kwargs)
    except Exception as exc:
        raise StepError(
            "clean_signals", path, f"cannot be read ({type(exc).__name__}: {exc}). {_RECOMPUTE}"
        ) from exc


def _crop(img, window):
    """``img`` cropped to ``window`` (3 slices), its affine moved with it; data in memory."""
    import nibabel as nib

    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, 3] + img.affine[:3, :3] @ [s.start for s in window]
    return nib.Nifti1Image(np.asanyarray(img.dataobj)[window], affine, img.header)


def _read_confounds(confounds_file):
    """Confounds as the core expects them: a path for tables, an array for ``.npy``."""
    if confounds_file is None:
        return None
    if Path(confounds_file).suffix.lower() == ".npy":
        return np.load(confounds_file, allow_pickle=False)
    return os.fspath(confounds_file)


@_step("unmask", "signals_file", keep=(OSError,))
def unmask(
    signals_file,
    mask_file,
    out_file,
    *,
    reference_file=None,
    t_r=None,
    sidecar=None,
    compress_level=1,
    n_threads=None,
) -> Path:
    """Put signals back into brain space: ``(n_volumes, n_voxels)`` → 4D NIfTI.

    Equivalent to ``NiftiMasker.inverse_transform``. A 1D signals array gives
    a 3D image. The image is written as it is produced, a few volumes at a time
    (never whole in memory) and, for a ``.nii.gz``, compressed on the way
    (python-isal, ordinary gzip); it is written once, atomically, to ``out_file``.

    Parameters
    ----------
    signals_file : path
        ``.npy`` signals written by :func:`clean_signals`.
    mask_file : path
        The mask the signals were extracted with.
    out_file : path
        Destination ``.nii`` or ``.nii.gz``; its directory must exist.
    reference_file : path, optional
        The run's input BOLD: the output states its sform/qform codes and space and
        time units (mm and s when it has none), as a derivative should (see
        :func:`with_reference_header`), and its repetition time unless ``t_r`` is given.
    t_r : float, optional
        Repetition time (s), recorded as the 4th voxel size of a 4D output.
    sidecar, compress_level, n_threads
        As in :func:`write_derivative`: the JSON sidecar written next to the image once
        it is in place, the isal compression level of a ``.nii.gz``, its threads.

    Returns
    -------
    pathlib.Path
        ``out_file``, with its sidecar when one is given.

    Raises
    ------
    OSError
        The output cannot be written: naming ``out_file`` (see :func:`write_derivative`).
    """
    import nibabel as nib

    from .masking import load_mask_img

    _io.check_compress_level(compress_level)
    out_file = Path(out_file)
    if not out_file.name.lower().endswith((".nii", ".nii.gz")):
        raise StepError(
            "unmask", signals_file, f"out_file must end with .nii or .nii.gz: '{out_file}'."
        )
    json_file = None if sidecar is None else sidecar_path(out_file)
    text = None if sidecar is None else _io.json_text(sidecar, what=f"sidecar of '{out_file}'")
    signals = load_signals(signals_file, mmap_mode="r")
    _check_input("unmask", mask_file, "mask image", read_data=True)
    # Read the mask file once; every chunk below reuses the in-memory image.
    mask_img = nib.load(os.fspath(mask_file))
    mask_img = nib.Nifti1Image(np.asanyarray(mask_img.dataobj), mask_img.affine, mask_img.header)
    mask, _ = load_mask_img(mask_img)
    n_voxels = int(np.count_nonzero(mask))
    if signals.shape[-1] != n_voxels:
        raise StepError(
            "unmask",
            signals_file,
            f"signals have {signals.shape[-1]} columns but mask '{mask_file}' has "
            f"{n_voxels} voxels.",
        )
    reference = None
    if reference_file is not None:
        reference = _check_input("unmask", reference_file, "reference image").header
    if not out_file.parent.is_dir():
        # As write_derivative: an OSError naming the output.
        cause = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(out_file.parent))
        raise _io.output_error(out_file, cause)
    header = _unmasked_header(signals, mask_img, reference, t_r)
    gzipped = out_file.name.lower().endswith(".gz")

    def fill(stream):
        if gzipped:
            with _io.gzip_writer(stream, compress_level=compress_level, n_threads=n_threads) as gz:
                _write_unmasked(gz, header, signals, mask)
        else:
            _write_unmasked(stream, header, signals, mask)

    _io._write_atomically(out_file, fill)
    if text is not None:
        _io.write_text_file(json_file, text)
    return out_file


def with_reference_header(img, reference_header, t_r=None):
    """Copy of ``img`` stating the reference's sform/qform codes and xyzt units (mm, s).

    What a derivative of a run says about its space: the images of the masker carry the
    grid of the mask they were made with, while a derivative states the input BOLD's
    codes, units and repetition time (the BIDS validator checks ``pixdim[4]`` against
    ``RepetitionTime``).

    Parameters
    ----------
    img : nibabel.Nifti1Image
    reference_header : nibabel.Nifti1Header
        Header of the run's input BOLD.
    t_r : float, optional
        Repetition time (s): the 4th voxel size of a 4D image.
    """
    import nibabel as nib

    img = nib.Nifti1Image(img.dataobj, img.affine, img.header)
    space, unit = reference_header.get_xyzt_units()
    img.header.set_xyzt_units(
        space if space != "unknown" else "mm", unit if unit != "unknown" else "sec"
    )
    if t_r is not None and img.ndim == 4:
        img.header.set_zooms((*img.header.get_zooms()[:3], float(t_r)))
    sform_code = int(reference_header["sform_code"])
    qform_code = int(reference_header["qform_code"])
    if not (sform_code or qform_code):  # neither set: keep the affine readable as 'scanner'
        sform_code = 1
    affine = img.affine
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)
    return img


def _unmasked_header(signals, mask_img, reference, t_r):
    """The header nibabel writes for ``unmask(signals, mask_img)`` (with the reference's)."""
    from .masking import unmask as unmask_array

    first = unmask_array(signals[:1] if signals.ndim == 2 else np.asarray(signals), mask_img)
    if reference is not None:
        if t_r is None and len(reference.get_data_shape()) == 4:
            # The run's own repetition time, when the caller gives none.
            zoom = float(reference.get_zooms()[3])
            t_r = zoom if zoom > 0 else None
        first = with_reference_header(first, reference, t_r)
    first.update_header()
    header = first.header.copy()
    if signals.ndim == 2:
        header.set_data_shape((*first.shape[:3], signals.shape[0]))
    # What nibabel's writer records for unscaled float data.
    header.set_slope_inter(1.0, 0.0)
    return header


def _write_unmasked(stream, header, signals, mask, volumes_per_chunk=16) -> None:
    """Write the NIfTI bytes of ``masking.unmask(signals, mask)`` to ``stream``.

    Byte for byte what nibabel writes for the whole image, but a few volumes at a time:
    in Fortran order consecutive volumes are consecutive bytes of the file, so one
    zero-filled buffer of ``volumes_per_chunk`` volumes is reused, only its mask voxels
    rewritten for each chunk.
    """
    head = io.BytesIO()
    header.write_to(head)
    stream.write(head.getvalue())
    stream.write(b"\0" * (int(header["vox_offset"]) - head.tell()))
    dtype = header.get_data_dtype()
    if signals.ndim == 1:
        volume = np.zeros(mask.shape, dtype=dtype, order="F")
        volume[mask] = signals
        stream.write(memoryview(volume.T).cast("B"))
        return
    n_volumes = signals.shape[0]
    flat_index = np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")
    count = max(1, min(volumes_per_chunk, n_volumes))
    buffer = np.zeros((*mask.shape, count), dtype=dtype, order="F")
    # Each volume of the buffer as a flat view, in file order.
    volumes = [buffer[..., j].reshape(-1, order="F") for j in range(count)]
    for start in range(0, n_volumes, count):
        chunk = signals[start : start + count]
        for volume, row in zip(volumes, chunk, strict=False):
            volume[flat_index] = row
        # The file's bytes of these volumes: the buffer's, in Fortran order.
        stream.write(memoryview(buffer[..., : len(chunk)].T).cast("B"))


def _write_with_reference(in_file, out_file, reference_file, t_r, compress_level, n_threads):
    """Write the image ``in_file`` to ``out_file`` with the reference's header codes."""
    import nibabel as nib

    reference = _check_input("write_derivative", reference_file, "reference image").header
    # Small images only (a mask): nibabel's own proxy, exactly what was given.
    img = with_reference_header(nib.load(os.fspath(in_file)), reference, t_r)
    gzipped = out_file.name.lower().endswith(".gz")
    _io._write_atomically(
        out_file,
        lambda stream: _io.write_img(
            img, stream, gzipped=gzipped, compress_level=compress_level, n_threads=n_threads
        ),
    )


def sidecar_path(out_file) -> Path:
    """The JSON sidecar of a derivative: ``x_bold.nii.gz`` → ``x_bold.json``."""
    out_file = Path(out_file)
    name = out_file.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return out_file.with_name(Path(name).stem + ".json")


@_step("write_derivative", "in_file", keep=(OSError,))
def write_derivative(
    in_file,
    out_file,
    *,
    sidecar=None,
    compress_level=1,
    n_threads=None,
    reference_file=None,
    t_r=None,
) -> Path:
    """Write a file (an image or any other) to its final derivative path, atomically.

    The data are staged under a temporary name in the destination directory and renamed
    into place, so that a reader, a rerun or a crash never sees a partial file. A
    destination ending in ``.gz`` (``.nii.gz``) is compressed with python-isal (ordinary
    single-member gzip, any reader opens it) when ``in_file`` is uncompressed, copied when
    it is already gzipped; a gzipped input to an uncompressed destination is decompressed.
    The JSON sidecar, when given, is written next to the data once the data are in place
    (same stem, ``.json``), also atomically.

    Parameters
    ----------
    in_file : str or os.PathLike
        The file to write (an image in the task's cache directory, for instance).
    out_file : str or os.PathLike
        Destination. Its directory must exist (the caller creates the derivative tree).
    sidecar : dict, optional
        Content of the JSON sidecar; checked to be valid JSON before anything is written.
    compress_level : {0, 1, 2, 3}, default=1
        isal compression level when compressing.
    n_threads : int, optional
        Compression threads; default :func:`masker_wf._threads.default_n_threads` (it does
        not change the bytes written).
    reference_file : path, optional
        For a NIfTI ``in_file`` (a mask, say): the run's input BOLD, whose sform/qform
        codes and units the derivative states (see :func:`with_reference_header`).
    t_r : float, optional
        With ``reference_file``: the repetition time (s) of a 4D image.

    Returns
    -------
    pathlib.Path
        ``out_file``.

    Raises
    ------
    OSError
        On the output side (directory missing, a file in the way, no permission, disk
        full), an OSError of the errno's class (``FileNotFoundError``,
        ``NotADirectoryError``, ``PermissionError``...) whose message and ``filename`` name
        ``out_file``; nothing is left at ``out_file`` (a previous file there is kept) and
        no temporary file remains. An unreadable ``in_file`` raises the OSError naming it.
    ValueError, TypeError
        A bad ``compress_level`` or a sidecar that is not valid JSON (before any write).
    """
    out_file = Path(out_file)
    _io.check_compress_level(compress_level)
    json_file = None if sidecar is None else sidecar_path(out_file)
    if json_file == out_file:
        raise ValueError(f"out_file '{out_file}' is a .json file: its sidecar would replace it.")
    text = None if sidecar is None else _io.json_text(sidecar, what=f"sidecar of '{out_file}'")
    if reference_file is None:
        _io.write_file(in_file, out_file, compress_level=compress_level, n_threads=n_threads)
    else:
        _write_with_reference(in_file, out_file, reference_file, t_r, compress_level, n_threads)
    if text is not None:
        _io.write_text_file(json_file, text)
    return out_file
