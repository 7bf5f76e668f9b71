"""The one validator: every check of a masker parameter or input, written once.

Each face (the estimator, the core functions, the Pydra tasks, the nipype interfaces and
the BIDS App) calls these functions at its door, before any work, so that the same bad
input gives the same exception class and message everywhere. Classes are nilearn's where
nilearn's users catch them: ``ValueError`` for bad values, ``TypeError`` for bad types,
:class:`~masker_wf._exceptions.DimensionError` for images of the wrong dimensionality
(a ``TypeError`` as in nilearn's transform, and a ``ValueError`` as in its mask
functions), ``IndexError`` for out-of-range ``sample_mask`` indices.

Part of the core, below the core ops: imports numpy and the spec only.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping

import numpy as np

from . import _spec
from ._exceptions import (
    AllVolumesRemovedError,
    DimensionError,
    SampleMaskError,
    SampleMaskTypeError,
)

__all__ = [
    "CLEAN_ARGS",
    "check_clean_args",
    "check_confounds_finite",
    "check_dtype",
    "check_filter",
    "check_img_ndim",
    "check_mask_args",
    "check_mask_not_empty",
    "check_mask_strategy",
    "check_parameters",
    "check_sample_mask",
    "check_smoothing_fwhm",
    "check_standardize",
    "check_target_grid",
    "mask_args_options",
    "split_clean_kwargs",
]

#: Options of :func:`masker_wf.signal.clean` that ``clean_args`` may set (the masker sets
#: the others itself from its own parameters).
CLEAN_ARGS = (
    "filter",
    "ensure_finite",
    "extrapolate",
    "butterworth__order",
    "butterworth__padtype",
    "butterworth__padlen",
    "butterworth__copy",
)
_CLEAN_PREFIX = "clean__"


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_positive_finite(value) -> bool:
    return _is_number(value) and 0 < value < np.inf


# --------------------------------------------------------------------------- parameters
def check_standardize(standardize, name="standardize"):
    """Canonical standardization strategy: ``'zscore_sample'``, ``'zscore'``, ``'psc'`` or None.

    Raises
    ------
    ValueError
        Not one of ``'zscore_sample'``, ``'zscore'``, ``'psc'``, True, False, None.
    """
    if standardize is None or standardize is False or standardize is np.False_:
        return None
    if standardize is True or standardize is np.True_:
        return "zscore"
    if isinstance(standardize, str) and standardize in ("zscore_sample", "zscore", "psc"):
        return standardize
    if isinstance(standardize, numbers.Integral) and standardize in (0, 1):
        return "zscore" if standardize else None
    raise ValueError(
        f"{name}={standardize!r} is not a valid standardization strategy; use one of "
        "'zscore_sample', 'zscore', 'psc', True, False or None."
    )


def check_smoothing_fwhm(smoothing_fwhm):
    """Refuse a smoothing FWHM that is not a number, 'fast', or 3 numbers (mm).

    Raises
    ------
    TypeError
        Naming ``smoothing_fwhm`` and the value.
    """
    if smoothing_fwhm is None or _is_number(smoothing_fwhm) or smoothing_fwhm == "fast":
        if _is_number(smoothing_fwhm):
            _check_fwhm_values([smoothing_fwhm], smoothing_fwhm)
        return smoothing_fwhm
    values = np.asarray(smoothing_fwhm, dtype=object).ravel()
    if values.size != 3 or not all(_is_number(v) for v in values):
        raise TypeError(
            "smoothing_fwhm must be None, a number of mm, 'fast' or 3 numbers (one per axis); "
            f"got {smoothing_fwhm!r}."
        )
    _check_fwhm_values(values, smoothing_fwhm)
    return smoothing_fwhm


def _check_fwhm_values(values, smoothing_fwhm) -> None:
    # NaN compares False with everything: test finiteness first, or it passes as >= 0.
    if not all(np.isfinite(float(v)) for v in values):
        raise ValueError(f"smoothing_fwhm must be a finite number of mm; got {smoothing_fwhm!r}.")
    if any(v < 0 for v in values):
        raise ValueError(f"smoothing_fwhm must be >= 0 (mm); got {smoothing_fwhm!r}.")


def check_band(low_pass, high_pass) -> None:
    """Refuse non-numeric cut-offs and a band whose high-pass is not below its low-pass."""
    for label, value in (("low_pass", low_pass), ("high_pass", high_pass)):
        if value is not None and not _is_number(value):
            raise TypeError(f"{label} must be a number (Hz) or None; got {value!r}.")
        if value is not None and not value > 0:
            # nilearn clips such a cut-off to a tiny positive frequency with a warning;
            # it is always a mistake, so every face refuses it.
            raise ValueError(f"{label} must be a positive frequency (Hz); got {value!r}.")
        if value is not None and not np.isfinite(value):
            # nilearn lowers an infinite low-pass to the Nyquist frequency with a warning;
            # no finite band or record of it follows from "inf", so it is refused too.
            raise ValueError(f"{label} must be a finite frequency (Hz); got {value!r}.")
    if low_pass is not None and high_pass is not None and high_pass >= low_pass:
        raise ValueError(
            f"high_pass ({high_pass} Hz) must be lower than low_pass ({low_pass} Hz) for a "
            "band-pass filter."
        )


def check_filter(filter, low_pass, high_pass, t_r, *, stacklevel=3):
    """The temporal filter in force: ``'butterworth'``, ``'cosine'`` or None.

    nilearn 0.11.1's rules: Butterworth only filters when a cut-off is set and needs
    ``t_r``; the cosine filter needs ``t_r`` and ``high_pass``; a cut-off with no filter
    warns.

    Raises
    ------
    TypeError
        A cut-off that is not a number.
    ValueError
        Unknown filter, missing or non-positive ``t_r``, ``high_pass >= low_pass``.
    """
    check_band(low_pass, high_pass)
    if filter is None or filter is False or (isinstance(filter, str) and filter == ""):
        if low_pass is not None or high_pass is not None:
            warnings.warn(
                "A cut-off frequency was given with filter=False: no filtering is done.",
                stacklevel=stacklevel,
            )
        return None
    if not isinstance(filter, str) or filter not in ("butterworth", "cosine"):
        raise ValueError(
            f"filter={filter!r} is not implemented; use 'butterworth', 'cosine' or False."
        )
    if filter == "butterworth" and low_pass is None and high_pass is None:
        return None
    if filter == "cosine" and (high_pass is None or not _is_number(t_r)):
        raise ValueError(
            "filter='cosine' needs both the repetition time t_r (s) and the high_pass cut-off "
            f"(Hz); got t_r={t_r!r}, high_pass={high_pass!r}."
        )
    if t_r is None:
        raise ValueError(
            "The repetition time t_r (seconds) must be given for Butterworth filtering "
            f"(low_pass={low_pass!r}, high_pass={high_pass!r})."
        )
    if not _is_positive_finite(t_r):
        raise ValueError(f"t_r must be a positive number of seconds; got {t_r!r}.")
    if filter == "cosine" and low_pass is not None:
        warnings.warn(
            "low_pass is ignored with filter='cosine', which only high-pass filters.",
            stacklevel=stacklevel,
        )
    return filter


def _options_dict(options, name) -> dict:
    """A copy of a dict of named options (``{}`` for None); anything else is a TypeError."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{name} must be a dict, got {type(options).__name__}.")
    return dict(options)


def _refuse_unknown(options, accepted, message) -> None:
    """TypeError ``message(unknown)`` when ``options`` has keys outside ``accepted``."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(message(unknown))


def check_clean_args(clean_args, name="clean_args") -> dict:
    """A copy of ``clean_args`` after refusing what :func:`signal.clean` does not take.

    Raises
    ------
    TypeError
        Not a dict, or keys that are not options of ``clean`` the masker lets through.
    """
    clean_args = _options_dict(clean_args, name)
    _refuse_unknown(
        clean_args,
        CLEAN_ARGS,
        lambda unknown: (
            f"{name}: {unknown} are not options of signal.clean that the masker "
            f"passes on; the accepted options are {list(CLEAN_ARGS)}."
        ),
    )
    check_butterworth_options(
        **{
            key.removeprefix("butterworth__"): value
            for key, value in clean_args.items()
            if key in ("butterworth__order", "butterworth__padtype", "butterworth__padlen")
        }
    )
    return clean_args


def check_butterworth_options(order=5, padtype="odd", padlen=None) -> None:
    """Refuse Butterworth options that do not define a filter.

    Raises
    ------
    ValueError
        ``order`` not a positive integer, ``padtype`` not one of sosfiltfilt's, or
        ``padlen`` not a non-negative integer.
    """
    if not isinstance(order, numbers.Integral) or isinstance(order, bool) or order < 1:
        raise ValueError(f"butterworth order must be a positive integer; got {order!r}.")
    if padtype not in ("odd", "even", "constant", None):
        raise ValueError(
            f"butterworth padtype must be 'odd', 'even', 'constant' or None; got {padtype!r}."
        )
    if padlen is not None and (
        not isinstance(padlen, numbers.Integral) or isinstance(padlen, bool) or padlen < 0
    ):
        raise ValueError(f"butterworth padlen must be a non-negative integer; got {padlen!r}.")


def split_clean_kwargs(kwargs: Mapping, owner: str = "NiftiMasker") -> dict:
    """``clean__<option>`` keyword arguments as ``{option: value}``; anything else refused.

    nilearn 0.11.1 ignores other keyword arguments silently (``auto_resample=True`` is
    accepted and does nothing); an option that does nothing is an error here.

    Raises
    ------
    TypeError
        Keyword arguments without the ``clean__`` prefix.
    """
    unsupported = sorted(key for key in kwargs if not key.startswith(_CLEAN_PREFIX))
    if unsupported:
        raise TypeError(
            f"{owner} got unsupported keyword argument(s) {unsupported}: only 'clean__' "
            "prefixed options (passed on to signal.clean) are accepted besides its parameters."
        )
    return {key[len(_CLEAN_PREFIX) :]: value for key, value in kwargs.items()}


def check_mask_strategy(mask_strategy, *, stacklevel=3) -> str:
    """Canonical mask strategy (``'template'`` warns and becomes ``'whole-brain-template'``).

    Raises
    ------
    ValueError
        Unknown strategy.
    """
    if isinstance(mask_strategy, str) and mask_strategy in _spec.DEPRECATED_MASK_STRATEGIES:
        replacement = _spec.DEPRECATED_MASK_STRATEGIES[mask_strategy]
        warnings.warn(
            f"mask_strategy={mask_strategy!r} is deprecated: use {replacement!r} instead.",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        return replacement
    if not isinstance(mask_strategy, str) or mask_strategy not in _spec.MASK_STRATEGIES:
        allowed = ", ".join(repr(s) for s in _spec.MASK_STRATEGIES)
        raise ValueError(
            f"Unknown value of mask_strategy {mask_strategy!r}. Acceptable values are {allowed}."
        )
    return mask_strategy


def mask_args_options(mask_strategy) -> list[str]:
    """Names ``mask_args`` may hold for a mask strategy (its mask function's options)."""
    return sorted(_spec.MASK_ARGS[check_mask_strategy(mask_strategy, stacklevel=4)])


def check_mask_args(mask_strategy, mask_args) -> dict:
    """A copy of ``mask_args`` after refusing keys the strategy's mask function does not take.

    Raises
    ------
    TypeError
        Not a dict, or unknown keys (the message lists the accepted ones).
    """
    mask_args = _options_dict(mask_args, "mask_args")
    if not mask_args:
        return mask_args
    accepted = mask_args_options(mask_strategy)
    _refuse_unknown(
        mask_args,
        accepted,
        lambda unknown: (
            f"mask_args: {unknown} are not options of the {mask_strategy!r} mask "
            f"strategy; its options are {accepted}."
        ),
    )
    return mask_args


def check_target_grid(target_affine, target_shape):
    """``(affine array or None, shape tuple or None)`` after checking the target grid.

    Raises
    ------
    ValueError
        An affine that is not 3x3 or 4x4, a shape that is not 3 positive integers, or a
        shape without an affine.
    """
    affine = None
    if target_affine is not None:
        try:
            affine = np.asarray(target_affine, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"target_affine must be a 3x3 or 4x4 matrix of numbers; got {target_affine!r}."
            ) from exc
        if affine.shape not in ((3, 3), (4, 4)):
            raise ValueError(
                f"target_affine must be a 3x3 or 4x4 matrix; got an array of shape {affine.shape}."
            )
        if not np.isfinite(affine).all():
            raise ValueError(f"target_affine must hold finite numbers; got {affine.tolist()}.")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError(
                "target_affine must map voxels to distinct positions (its 3x3 part invertible); "
                f"got the singular matrix {affine.tolist()}."
            )
    shape = None
    if target_shape is not None:
        if target_affine is None:
            raise ValueError(
                "target_shape is specified but target_affine is not: give target_affine too."
            )
        values = list(np.ravel(np.asarray(target_shape, dtype=object)))
        if len(values) != 3 or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in values
        ):
            raise ValueError(
                f"target_shape must have 3 positive integers (a 3D grid), got {target_shape!r}."
            )
        shape = tuple(int(v) for v in values)
        if affine.shape != (4, 4):
            raise ValueError(
                "target_shape needs a 4x4 target_affine: a 3x3 affine has no origin to place "
                f"the {shape} grid; got a 3x3 target_affine."
            )
    return affine, shape


def check_dtype(dtype):
    """Refuse a ``dtype`` that is neither None, ``'auto'`` nor an integer or float dtype.

    Raises
    ------
    TypeError
        Naming the value.
    """
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return dtype
    try:
        target = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: {dtype!r} is not a valid numpy dtype or 'auto'.") from exc
    if target.kind not in "iuf":
        raise TypeError(
            f"dtype: {dtype!r} is not supported; use 'auto', None, or an integer or "
            "floating-point dtype."
        )
    return dtype


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}.")
    return bool(value)


def check_parameters(params: Mapping, *, t_r_from_data: bool = False) -> dict:
    """Check masker parameters (spec names) without data; return them normalised.

    The face-independent door check: every face calls it with the parameters it was
    given, before reading any image. Only the keys present are checked.

    Parameters
    ----------
    params : mapping
        Masker parameters by their spec names (see :mod:`masker_wf._spec`).
    t_r_from_data : bool, default=False
        A missing ``t_r`` will be read from the data (the App reads each run's sidecar):
        the checks that need it are left to the data-time call.

    Returns
    -------
    dict
        The same parameters; ``mask_strategy`` canonical, ``clean_args``/``mask_args``
        copied.

    Raises
    ------
    TypeError, ValueError
        The first problem found, with a message naming the parameter.
    """
    known = {p.name for p in _spec.PARAMETERS}
    unknown = sorted(set(params) - known)
    if unknown:
        raise TypeError(
            f"Unknown masker parameter(s) {unknown}; the parameters are {sorted(known)}."
        )
    out = dict(params)
    if "standardize" in params:
        check_standardize(params["standardize"])
    for name in ("standardize_confounds", "detrend", "high_variance_confounds"):
        if name in params:
            _check_bool(params[name], name)
    if "smoothing_fwhm" in params:
        check_smoothing_fwhm(params["smoothing_fwhm"])
    clean_args = check_clean_args(params.get("clean_args"))
    if "clean_args" in params:
        out["clean_args"] = params["clean_args"] if params["clean_args"] is None else clean_args
    low_pass, high_pass, t_r = (params.get(k) for k in ("low_pass", "high_pass", "t_r"))
    if t_r is not None and not _is_positive_finite(t_r):
        raise ValueError(f"t_r must be a positive number of seconds; got {t_r!r}.")
    if t_r is None and t_r_from_data:
        check_band(low_pass, high_pass)
    else:
        with warnings.catch_warnings():
            # The data-time call warns about filter settings; the door check only refuses.
            warnings.simplefilter("ignore")
            check_filter(clean_args.get("filter", "butterworth"), low_pass, high_pass, t_r)
    if "mask_strategy" in params:
        out["mask_strategy"] = check_mask_strategy(params["mask_strategy"], stacklevel=4)
    if "mask_args" in params:
        checked = check_mask_args(out.get("mask_strategy", "background"), params["mask_args"])
        out["mask_args"] = params["mask_args"] if params["mask_args"] is None else checked
    if "target_affine" in params or "target_shape" in params:
        check_target_grid(params.get("target_affine"), params.get("target_shape"))
    if "dtype" in params:
        check_dtype(params["dtype"])
    return out


# --------------------------------------------------------------------------- data
def check_img_ndim(shape, allowed, name="imgs") -> None:
    """Refuse an image whose dimensionality is not in ``allowed``.

    Raises
    ------
    DimensionError
        A ``TypeError`` (nilearn's transform) and a ``ValueError`` (nilearn's mask
        functions), naming the image.
    """
    ndim = len(shape)
    if ndim not in allowed:
        raise DimensionError(ndim, max(allowed), name)


def check_mask_not_empty(mask: np.ndarray, name="mask_img") -> None:
    """Refuse a mask without any voxel (nothing to extract).

    Raises
    ------
    ValueError
        nilearn's message for an empty mask, naming it.
    """
    if not mask.any():
        raise ValueError(f"The mask is invalid as it is empty: it masks all data ({name}).")


def _one_sample_mask(mask, n_volumes: int, label: str) -> np.ndarray:
    """Sorted unique int indices of one run's ``sample_mask``."""
    array = np.asarray(mask)
    if array.ndim != 1:
        raise SampleMaskError(f"{label} must be 1D; got shape {array.shape}.")
    if array.size == 0:
        raise AllVolumesRemovedError(
            f"{label} is empty: it removes all {n_volumes} volumes, every volume of the run."
        )
    if array.dtype == bool:
        if array.size != n_volumes:
            raise SampleMaskError(
                f"{label} is a boolean mask of length {array.size} but the run has "
                f"{n_volumes} volumes."
            )
        indices = np.flatnonzero(array)
        if indices.size == 0:
            raise AllVolumesRemovedError(
                f"{label} marks no volume as kept: it would remove every volume (all {n_volumes})."
            )
        return indices
    if array.dtype.kind not in "iu":
        raise SampleMaskTypeError(
            f"{label} must hold integer indices of kept volumes or booleans; got dtype "
            f"{array.dtype}."
        )
    indices = array.astype(np.int64)
    if indices.min() < 0:
        raise SampleMaskError(
            f"{label} contains invalid index {indices[indices < 0].tolist()}: negative "
            f"indices are not allowed (valid indices 0..{n_volumes - 1})."
        )
    if indices.max() >= n_volumes:
        raise SampleMaskError(
            f"{label} contains invalid index out of range {indices[indices >= n_volumes].tolist()}"
            f"; the run has {n_volumes} volumes (valid indices 0..{n_volumes - 1})."
        )
    steps = np.diff(indices)
    if np.any(steps == 0):
        duplicated = np.unique(indices[1:][steps == 0])
        raise SampleMaskError(f"{label} contains duplicated indices {duplicated.tolist()}.")
    if np.any(steps < 0):
        raise SampleMaskError(f"{label} indices must be in increasing order.")
    return indices


def _is_flat_sequence(sample_mask) -> bool:
    return isinstance(sample_mask, (list, tuple)) and all(
        np.ndim(item) == 0 for item in sample_mask
    )


def check_sample_mask(sample_mask, run_lengths) -> list:
    """One validated index array per run (None entries when ``sample_mask`` is None).

    Parameters
    ----------
    sample_mask : array, list of arrays or None
        Volumes to keep: increasing integer indices or booleans; with several runs a list
        with one mask per run (indices local to the run, runs in sorted label order). A
        flat list of numbers is one mask.
    run_lengths : sequence of int
        Number of volumes of each run.

    Returns
    -------
    list of numpy.ndarray or None

    Raises
    ------
    SampleMaskError
        A ``ValueError`` and an ``IndexError`` (nilearn raises IndexError for indices out
        of range); :class:`SampleMaskTypeError` (also a ``TypeError``) for a mask that is
        neither integers nor booleans; :class:`AllVolumesRemovedError` when nothing is kept.
    """
    run_lengths = list(run_lengths)
    if sample_mask is None:
        return [None] * len(run_lengths)
    if isinstance(sample_mask, np.ndarray) or (
        _is_flat_sequence(sample_mask) and len(sample_mask) > 0
    ):
        masks = [sample_mask]
    elif isinstance(sample_mask, (list, tuple)):
        masks = list(sample_mask)
    else:
        raise SampleMaskTypeError(
            "sample_mask must be an array of kept-volume indices or booleans, or a list with "
            f"one such array per run; got {type(sample_mask).__name__}."
        )
    if len(masks) != len(run_lengths):
        raise SampleMaskError(
            f"sample_mask holds {len(masks)} mask(s) but the signals form {len(run_lengths)} "
            "run(s): give one mask per run (a list, in sorted run-label order)."
        )
    many = len(run_lengths) > 1
    return [
        _one_sample_mask(mask, n, f"sample_mask[{i}]" if many else "sample_mask")
        for i, (mask, n) in enumerate(zip(masks, run_lengths, strict=True))
    ]


def check_confounds_finite(confounds: np.ndarray, kept_rows, where: str = "signals"):
    """Refuse NaN or infinite confounds in the volumes that are kept.

    Censored volumes never enter the regression (they are dropped, or interpolated from
    the kept ones before filtering), so a NaN there is harmless: fMRIPrep's derivative
    columns start with one.

    Parameters
    ----------
    confounds : numpy.ndarray, shape (n_volumes, n_confounds)
        Confounds of one run.
    kept_rows : array of int or None
        Rows kept (None: all).
    where : str
        What the rows belong to, for the message.

    Raises
    ------
    ValueError
        Naming the volumes at fault.
    """
    if confounds is None:
        return
    rows = np.arange(confounds.shape[0]) if kept_rows is None else np.asarray(kept_rows)
    selected = confounds[rows]
    finite = np.isfinite(selected).all(axis=1) if selected.ndim == 2 else np.isfinite(selected)
    if not finite.all():
        bad = rows[~finite]
        raise ValueError(
            f"confounds contain NaN or infinite values in volume(s) {bad[:20].tolist()} "
            f"of {where} that are kept; fill them (e.g. with 0 or the column mean) or "
            "remove those volumes with sample_mask."
        )
