"""Cleaning of 2D time series (time along the first axis): nilearn 0.11.1's ``nilearn.signal``.

The public functions mirror nilearn 0.11.1 names, signatures, defaults and numerics
(``clean``, ``butterworth``, ``high_variance_confounds``, plus ``standardize_signal`` and
``load_confounds_array``; ``degrees_of_freedom`` is masker-wf's: what ``clean`` would leave of
the data, counted before cleaning), with these deliberate differences:

* scrubbing before Butterworth filtering interpolates exactly the censored volumes (nilearn
  0.11.1 indexes with ``~`` applied to an integer index array, which overwrites the mirror
  images of the kept volumes instead);
* per-run cleaning (``runs``) honours ``standardize_confounds``, ``extrapolate`` and the
  ``butterworth__*`` options (nilearn drops them silently for runs), and the i-th
  ``sample_mask`` is checked against the i-th run whatever the run labels are;
* bad inputs are refused up front with messages that name the argument: ``sample_mask``
  must be increasing without duplicates (nilearn reorders or fails inside scipy), negative
  indices are refused, unknown keyword arguments are refused (nilearn ignores them), NaN in
  the confounds of kept volumes is refused with the volume numbers (nilearn fails in the QR);
* confounds are always processed in float64 (nilearn keeps float32 confounds float32), and
  ``butterworth(copy=True)`` keeps the input's float dtype (nilearn returns float64);
* warnings: 'zscore'/True raise a ``ZscoreDeprecationWarning`` (both a DeprecationWarning,
  as in nilearn, and a FutureWarning); nilearn's FutureWarning about the future default of
  ``extrapolate`` and its 'zscore' warning for the internal scaling of confounds are not
  raised (they concern nilearn's release plan, not the user's call).

How it is fast: every step before standardization (interpolation of censored volumes,
detrending, Butterworth filtering, censoring, confound projection) is linear in each column and
identical for all columns.  The steps are written once, for a block of columns in float64.
When a Butterworth filter is involved and the series is short enough, that code is run once on
an identity matrix, which yields the ``(n_kept_out, n_kept_in)`` operator of the whole linear
part; each column chunk is then cleaned by one matrix product (BLAS), instead of one
``sosfiltfilt`` and one spline fit per voxel.  Otherwise the steps are applied chunk by chunk.
Either way computation is float64 per column chunk and the result is written into an output
array of the input's float dtype, so float32 stays float32 and no full float64 copy exists.
"""

import inspect
import numbers
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import linalg
from scipy import signal as sp_signal
from scipy.interpolate import CubicSpline

from masker_wf import _validation
from masker_wf._exceptions import SampleMaskError  # noqa: F401  (re-exported)
from masker_wf._threads import default_n_threads

try:  # installed with scikit-learn; only used to pin BLAS to one thread per worker
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

__all__ = [
    "DegreesOfFreedom",
    "FewDegreesOfFreedomWarning",
    "butterworth",
    "clean",
    "degrees_of_freedom",
    "high_variance_confounds",
    "load_confounds_array",
    "standardize_signal",
]

STANDARDIZE_STRATEGIES = ("zscore_sample", "zscore", "psc", True, False, None)
BUTTERWORTH_KWARGS = ("order", "padtype", "padlen", "copy")

_EPS64 = np.finfo(np.float64).eps
_EPS32 = np.finfo(np.float32).eps
# Column chunks hold about this many bytes of float64 input, so temporaries stay small.
_CHUNK_BYTES = 8 * 2**20
# The precomputed operator costs 2 * n_out * n_in flops per column; above this many kept
# volumes, direct filtering (linear in n) is cheaper.
_OPERATOR_MAX_VOLUMES = 1000
# Worker threads over column chunks: default_n_threads(), read at call time.
_NA_TOKENS = {"", "n/a", "na", "nan", "NaN", "NA", "N/A", "null", "None"}


class ZscoreDeprecationWarning(DeprecationWarning, FutureWarning):
    """``standardize='zscore'`` (or ``True``) uses the population standard deviation.

    Subclasses both DeprecationWarning (what nilearn 0.11.1 raises) and FutureWarning, so
    code filtering either category keeps working.
    """


# --------------------------------------------------------------------------- validation helpers


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


_check_standardize = _validation.check_standardize


def _warn_zscore(stacklevel=3):
    warnings.warn(
        "standardize='zscore' (and standardize=True) divide by the population standard "
        "deviation (ddof=0), as nilearn 0.11 does; nilearn 0.13+ removes 'zscore' and uses "
        "the sample standard deviation. Pass standardize='zscore_sample' for that.",
        ZscoreDeprecationWarning,
        stacklevel=stacklevel,
    )


def _as_signals(signals, name="signals"):
    """Array view of the signals, 2D, real; no copy."""
    signals = np.asarray(signals)
    if signals.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers; got an array of dtype {signals.dtype}.")
    if signals.ndim != 2:
        raise ValueError(
            f"{name} must be a 2D array of shape (n_timepoints, n_features); got shape "
            f"{signals.shape}."
        )
    if signals.shape[0] == 0:
        raise ValueError(f"{name} has no time points (shape {signals.shape}).")
    return signals


def _output_dtype(dtype):
    # nilearn turns every non-float input into float32, whatever its size.
    return dtype if dtype.kind == "f" else np.dtype(np.float32)


def _single_threaded_blas():
    if threadpool_limits is None:  # pragma: no cover
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _column_chunks(n_rows, n_cols, chunk_bytes=None):
    chunk_bytes = chunk_bytes or _CHUNK_BYTES
    width = max(256, int(chunk_bytes // (8 * max(n_rows, 1))))
    for start in range(0, n_cols, width):
        yield slice(start, min(start + width, n_cols))


# --------------------------------------------------------------------------- confounds


def _read_confounds_file(path, name):
    """Read a CSV/TSV confounds file (optional one-line header) into a float64 array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name} file not found: '{path}'.")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{name} file '{path}' is empty.")
    first = lines[0]
    if "\t" in first:
        rows = [line.split("\t") for line in lines]
    elif "," in first:
        rows = [line.split(",") for line in lines]
    elif ";" in first:
        rows = [line.split(";") for line in lines]
    else:
        rows = [line.split() for line in lines]
    rows = [[cell.strip().strip('"').strip("'") for cell in row] for row in rows]

    def parse(cell):
        if cell in _NA_TOKENS:
            return np.nan
        return float(cell)

    header = None
    try:
        [parse(cell) for cell in rows[0]]
    except ValueError:
        header, rows = rows[0], rows[1:]
    width = len(header) if header is not None else len(rows[0]) if rows else 0
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, row in enumerate(rows):
        line_number = i + 1 + (header is not None)
        if len(row) != width:
            raise ValueError(
                f"{name} file '{path}': line {line_number} has {len(row)} columns, "
                f"expected {width}."
            )
        for j, cell in enumerate(row):
            try:
                values[i, j] = parse(cell)
            except ValueError:
                column = header[j] if header is not None else j
                raise ValueError(
                    f"{name} file '{path}': line {line_number}, column {column!r} holds "
                    f"{cell!r}, which is not a number."
                ) from None
    return values


def load_confounds_array(confounds, n_samples, name="confounds"):
    """Load confounds into a 2D float64 array of shape ``(n_samples, n_confounds)``.

    Parameters
    ----------
    confounds : numpy.ndarray, pandas.DataFrame, str, pathlib.Path, list or tuple, or None
        Confound time series. A 1D array is one confound. A path names a CSV or TSV file
        (tab, comma, semicolon or whitespace separated; one optional header line; ``n/a``
        cells become NaN). A list or tuple of any of these is stacked column-wise; a list of
        numbers is one confound.
    n_samples : int or None
        Number of time points the confounds must have (rows); None skips the check.
    name : str, default="confounds"
        Name of the argument, used in error messages.

    Returns
    -------
    numpy.ndarray or None
        float64 array ``(n_samples, n_confounds)``; None if ``confounds`` is None. NaNs are
        kept (``clean`` refuses them only in the volumes it keeps).

    Raises
    ------
    TypeError
        Unsupported type or non-numeric data.
    ValueError
        Wrong number of rows or dimensions, unreadable file.
    FileNotFoundError
        A path that does not exist.
    """
    if confounds is None:
        return None
    source = ""
    if isinstance(confounds, (list, tuple)):
        if len(confounds) == 0:
            raise ValueError(f"{name} is an empty {type(confounds).__name__}.")
        if all(_is_number(item) for item in confounds):
            array = np.asarray(confounds, dtype=np.float64)
        else:
            parts = [
                load_confounds_array(item, n_samples, name=f"{name}[{i}]")
                for i, item in enumerate(confounds)
            ]
            return np.hstack(parts)
    elif isinstance(confounds, (str, Path)):
        source = f" (file '{confounds}')"
        array = _read_confounds_file(confounds, name)
    elif isinstance(confounds, pd.DataFrame):
        bad = [
            str(col)
            for col, dtype in confounds.dtypes.items()
            if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))
        ]
        if bad:
            raise TypeError(f"{name} DataFrame has non-numeric columns: {bad}.")
        array = confounds.to_numpy(dtype=np.float64)
    elif isinstance(confounds, (np.ndarray, pd.Series)):
        array = np.asarray(confounds)
        if array.dtype.kind not in "fiub":
            raise TypeError(f"{name} must hold numbers; got an array of dtype {array.dtype}.")
        if array.ndim not in (1, 2):
            raise ValueError(
                f"{name} must be a 1D or 2D array; got {array.ndim} dimensions "
                f"(shape {array.shape})."
            )
        array = array.astype(np.float64)
    else:
        raise TypeError(
            f"{name} must be an array, a DataFrame, a CSV/TSV path or a list of these; got "
            f"{type(confounds).__name__}."
        )
    if array.ndim == 1:
        array = array[:, None]
    if n_samples is not None and array.shape[0] != n_samples:
        raise ValueError(
            f"{name}{source} has {array.shape[0]} rows (time points) but the signals have "
            f"{n_samples}."
        )
    return array


def _cosine_drifts(n_volumes, high_pass, t_r):
    """DCT-II drift regressors up to ``high_pass`` Hz, without the constant column."""
    if n_volumes > 1 and high_pass * t_r >= 0.5:
        warnings.warn(
            f"The cosine high-pass filter at {high_pass} Hz spans every frequency the "
            f"sampling (t_r={t_r} s) can represent and saturates the design matrix; reduce "
            "high_pass.",
            stacklevel=4,
        )
    order = 0
    if n_volumes > 1:
        order = min(n_volumes - 1, int(np.floor(2 * n_volumes * high_pass * t_r)))
    times = np.arange(n_volumes) + 0.5
    k = np.arange(1, order + 1)
    return np.sqrt(2.0 / n_volumes) * np.cos(np.pi / n_volumes * np.outer(times, k))


def _add_cosine_drifts(confounds, n_volumes, high_pass, t_r):
    drifts = _cosine_drifts(n_volumes, high_pass, t_r)
    if drifts.shape[1] == 0:
        warnings.warn(
            f"No cosine drift regressor fits in {n_volumes} volumes at high_pass={high_pass} "
            "Hz: the series is too short or the cut-off too low; no high-pass filtering done.",
            stacklevel=3,
        )
        return confounds
    if confounds is None or confounds.shape[1] == 0:
        return drifts
    # A user confound that is nearly one of the drifts means the user already added them
    # (e.g. fMRIPrep's cosine_XX columns): keep the user's set only.
    with np.errstate(invalid="ignore", divide="ignore"):
        d = drifts - drifts.mean(0)
        c = confounds - confounds.mean(0)
        corr = (d.T @ c) / np.outer(np.linalg.norm(d, axis=0), np.linalg.norm(c, axis=0))
    if np.any(corr > 0.9):
        warnings.warn(
            "The confounds already contain cosine drift regressors (correlation > 0.9 with "
            "the filter's); only the supplied confounds are used.",
            stacklevel=3,
        )
        return confounds
    return np.hstack((confounds, drifts))


def _confound_basis(confounds, standardize_confounds):
    """Orthonormal basis (columns) of the confound space, as nilearn computes it."""
    if standardize_confounds:
        confounds = confounds - confounds.mean(0)
        std = confounds.std(0)
        std[std < _EPS64] = 1.0
        confounds /= std
    else:
        # Only rescale: a constant confound must keep removing the mean.
        scale = np.abs(confounds).max(0)
        scale[scale == 0] = 1.0
        confounds = confounds / scale
    q, r, _ = linalg.qr(confounds, mode="economic", pivoting=True)
    return np.ascontiguousarray(q[:, np.abs(np.diag(r)) > 100.0 * _EPS64])


# --------------------------------------------------------------------------- butterworth


def _clip_cutoff(kind, freq, nyquist):
    if freq >= nyquist:
        new = nyquist - nyquist * 10 * _EPS32
        warnings.warn(
            f"The {kind} pass cut-off {freq} Hz is at or above the Nyquist frequency "
            f"({nyquist} Hz); it was lowered to {new} Hz.",
            stacklevel=4,
        )
        return new
    if freq < 0:
        new = nyquist * _EPS32
        warnings.warn(
            f"The {kind} pass cut-off {freq} Hz is negative; it was set to {new} Hz.",
            stacklevel=4,
        )
        return new
    return freq


def _butterworth_sos(sampling_rate, low_pass, high_pass, order):
    """Second-order sections of the filter, or None when nothing is to be filtered."""
    if low_pass is None and high_pass is None:
        return None
    _validation.check_band(low_pass, high_pass)
    if not _is_number(sampling_rate) or not sampling_rate > 0:
        raise ValueError(f"sampling_rate must be a positive number (Hz); got {sampling_rate!r}.")
    _validation.check_butterworth_options(order=order)
    nyquist = sampling_rate * 0.5
    cutoffs = []
    if high_pass is not None:
        cutoffs.append(_clip_cutoff("high", high_pass, nyquist))
        btype = "high"
    if low_pass is not None:
        cutoffs.append(_clip_cutoff("low", low_pass, nyquist))
        btype = "low"
    if len(cutoffs) == 2:
        btype = "band"
        if cutoffs[0] == cutoffs[1]:
            warnings.warn(
                "The band-pass cut-offs became equal after clipping to the valid range; the "
                "signals are returned unfiltered. Check sampling_rate (1 / t_r), low_pass and "
                "high_pass.",
                stacklevel=3,
            )
            return None
    else:
        cutoffs = cutoffs[0]
    return sp_signal.butter(N=order, Wn=cutoffs, btype=btype, output="sos", fs=sampling_rate)


def _edge_length(sos, padtype, padlen):
    """Number of padding samples sosfiltfilt adds at each end."""
    if padtype is None:
        return 0
    if padlen is not None:
        return padlen
    # scipy's default: three times the filter length, minus trivial leading zeros.
    trivial = min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum())
    return 3 * (2 * len(sos) + 1 - trivial)


def _check_padding(n_volumes, sos, padtype, padlen, where="signals"):
    _validation.check_butterworth_options(padtype=padtype, padlen=padlen)
    edge = _edge_length(sos, padtype, padlen)
    if n_volumes <= edge:
        raise ValueError(
            f"{where} has {n_volumes} time points, too few for the Butterworth filter: its "
            f"padding needs at least {edge + 1} (padlen={edge}). Use a longer series, a lower "
            "butterworth__order or a smaller butterworth__padlen."
        )


def _filtfilt_block(block, sos, padtype, padlen):
    # One call along axis 0 per block: each column is filtered exactly as on its own.
    return sp_signal.sosfiltfilt(sos, block, axis=0, padtype=padtype, padlen=padlen)


def butterworth(
    signals,
    sampling_rate,
    low_pass=None,
    high_pass=None,
    order=5,
    padtype="odd",
    padlen=None,
    copy=False,
):
    """Apply a low-, high- or band-pass zero-phase Butterworth filter along time.

    Parameters
    ----------
    signals : numpy.ndarray, shape (n_timepoints,) or (n_timepoints, n_signals)
        Signals to filter; each column is one signal.
    sampling_rate : float
        Samples per second (Hz), i.e. ``1 / t_r``.
    low_pass : float or None, default=None
        Cut-off (Hz) above which frequencies are removed.
    high_pass : float or None, default=None
        Cut-off (Hz) below which frequencies are removed. Both given: band-pass.
        Cut-offs at or above Nyquist are lowered just below it, negative ones raised to ~0,
        with a warning.
    order : int, default=5
        Filter order (applied forward and backward, so the effective order doubles).
    padtype : {"odd", "even", "constant", None}, default="odd"
        Extension at both ends, see :func:`scipy.signal.sosfiltfilt`.
    padlen : int or None, default=None
        Extension length; None uses scipy's default (18 for low/high, 33 for band-pass at
        order 5). The series must be longer than it.
    copy : bool, default=False
        If False and ``signals`` is a float array, it is filtered in place and returned;
        otherwise a new array of the same float dtype is returned (nilearn returns float64
        for 2D input with ``copy=True``; float32 stays float32 here).

    Returns
    -------
    numpy.ndarray
        Filtered signals, same shape. Computation is float64 per column chunk.
    """
    sos = _butterworth_sos(sampling_rate, low_pass, high_pass, order)
    array = np.asarray(signals)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"signals must hold real numbers; got dtype {array.dtype}.")
    in_place = not copy and array.dtype.kind == "f" and array.flags.writeable
    out = array if in_place else np.array(array, dtype=_output_dtype(array.dtype))
    if sos is None:
        return out
    if array.ndim not in (1, 2):
        raise ValueError(f"signals must be 1D or 2D; got shape {array.shape}.")
    _check_padding(array.shape[0], sos, padtype, padlen)
    if out.ndim == 1:
        out[...] = _filtfilt_block(out.astype(np.float64), sos, padtype, padlen)
        return out
    for cols in _column_chunks(out.shape[0], out.shape[1]):
        block = out[:, cols].astype(np.float64)
        out[:, cols] = _filtfilt_block(block, sos, padtype, padlen)
    return out


# --------------------------------------------------------------------------- detrend/standardize


def _detrend_block(block):
    """Remove mean and linear trend of each column of a float64 block, in place."""
    n = block.shape[0]
    block -= block.mean(axis=0)
    ramp = np.arange(n, dtype=np.float64)
    ramp -= ramp.mean()
    norm = np.sqrt((ramp**2).sum())
    if norm >= _EPS64:
        ramp /= norm
    block -= np.outer(ramp, ramp @ block)
    return block


def _warn_detrend_single():
    warnings.warn(
        "Detrending was requested on a single time point, which would zero it; skipped.",
        stacklevel=4,
    )


def _zscore_block(block, ddof):
    block -= block.mean(axis=0)
    # Sum of squares without the block-sized temporaries of ndarray.std.
    std = np.sqrt(np.einsum("ij,ij->j", block, block) / (block.shape[0] - ddof))
    std[std < _EPS64] = 1.0
    block /= std
    return block


def _psc_scale(means):
    """Per-column factor 100 / |mean|; 0 (with a warning) where the mean is ~0."""
    magnitude = np.abs(means)
    invalid = magnitude < _EPS64
    scale = np.zeros_like(magnitude)
    scale[~invalid] = 100.0 / magnitude[~invalid]
    if invalid.any():
        warnings.warn(
            "psc standardization is meaningless for features whose mean is 0; "
            f"{int(invalid.sum())} such time series are set to 0.",
            stacklevel=4,
        )
    return scale


def standardize_signal(signals, detrend=False, standardize="zscore"):
    """Center and scale each column of a 2D signal array (time along the first axis).

    Parameters
    ----------
    signals : numpy.ndarray, shape (n_timepoints, n_features)
        Time series; not modified.
    detrend : bool, default=False
        Remove the linear trend (and mean) of each column first.
    standardize : {'zscore_sample', 'zscore', 'psc', True, False, None}, default='zscore'
        'zscore_sample': zero mean, unit sample standard deviation (ddof=1).
        'zscore' or True: zero mean, unit population standard deviation (ddof=0), with a
        ZscoreDeprecationWarning (nilearn 0.11 behaviour). 'psc': percent signal change,
        ``(x - mean) / |mean| * 100`` (zero-mean columns set to 0 with a warning).
        False/None: no scaling (the copy is still detrended if asked).
        Columns whose standard deviation is below float64 eps are only centered.

    Returns
    -------
    numpy.ndarray
        New array of the input's float dtype (integers give float32).
    """
    strategy = _check_standardize(standardize)
    if strategy == "zscore":
        _warn_zscore()
    signals = _as_signals(signals)
    out = np.empty(signals.shape, dtype=_output_dtype(signals.dtype))
    n = signals.shape[0]
    if strategy is not None and n == 1:
        warnings.warn(
            "Standardization was requested on a single time point, which would zero it; skipped.",
            stacklevel=2,
        )
        strategy = None
    if detrend and n == 1:
        _warn_detrend_single()
        detrend = False
    for cols in _column_chunks(n, signals.shape[1]):
        block = signals[:, cols].astype(np.float64)
        if detrend:
            _detrend_block(block)
        if strategy in ("zscore", "zscore_sample"):
            _zscore_block(block, ddof=1 if strategy == "zscore_sample" else 0)
        elif strategy == "psc":
            means = block.mean(axis=0)
            block -= means
            block *= _psc_scale(means)
        out[:, cols] = block
    return out


# --------------------------------------------------------------------------- sample masks/runs


# --------------------------------------------------------------------------- per-run plan


@dataclass
class _RunPlan:
    """Everything that is the same for all columns of one run."""

    n_in: int  # rows read from the signals (kept volumes, or all)
    n_span: int  # length of the series that is detrended / filtered
    kept_local: np.ndarray | None  # rows of the span given by the input rows
    interp_rows: np.ndarray | None  # rows of the span filled by interpolation
    interp_weights: np.ndarray | None  # (n_interp, n_in)
    censor_after: np.ndarray | None  # rows of the span kept after filtering
    detrend: bool
    sos: np.ndarray | None
    padtype: str | None
    padlen: int | None
    basis: np.ndarray | None  # orthonormal confound basis (n_out, r)
    operator: np.ndarray | None = None  # (n_out, n_in)
    mean0_weights: np.ndarray | None = None  # (n_in,)
    # Columns of ``basis`` that come from the confounds given, and from the cosine drifts.
    n_confound_dims: int = 0
    n_drift_dims: int = 0
    _filter_operator: tuple | None = None

    def linear(self, block):
        """Apply the linear steps to a float64 block of input rows.

        Returns the cleaned block (n_out, m) and each column's mean after interpolation
        (nilearn's ``original_mean_signals``, used by psc).
        """
        if self.interp_rows is not None:
            series = np.empty((self.n_span, block.shape[1]))
            series[self.kept_local] = block
            series[self.interp_rows] = self.interp_weights @ block
        else:
            series = block.copy() if self.detrend or self.basis is not None else block
        mean0 = series.mean(axis=0)
        if self.detrend:
            _detrend_block(series)
        if self.sos is not None:
            series = _filtfilt_block(series, self.sos, self.padtype, self.padlen)
        if self.censor_after is not None:
            series = series[self.censor_after]
        if self.basis is not None:
            series -= self.basis @ (self.basis.T @ series)
        return series, mean0

    def filter_operator(self):
        """``(operator, mean0 weights)`` of the steps before the confound projection.

        Kept until :meth:`build_operator` uses it: the degrees-of-freedom budget and the
        operator then cost one pass of the filter over an identity matrix.
        """
        if self._filter_operator is None:
            basis, self.basis = self.basis, None
            try:
                self._filter_operator = self.linear(np.eye(self.n_in))
            finally:
                self.basis = basis
        return self._filter_operator

    def build_operator(self):
        operator, mean0 = self.filter_operator()
        self._filter_operator = None
        if self.basis is not None:
            # What linear() does to the filtered identity, with the same operations.
            operator = operator.copy()
            operator -= self.basis @ (self.basis.T @ operator)
        self.operator = np.ascontiguousarray(operator)
        self.mean0_weights = mean0

    def apply(self, block):
        if self.operator is None:
            return self.linear(block)
        return self.operator @ block, self.mean0_weights @ block


def _interpolation_weights(kept, rows, t_r, extrapolate):
    """Cubic-spline weights giving the values at ``rows`` from the values at ``kept``."""
    if kept.size < 2:
        raise ValueError(
            "sample_mask keeps a single volume; interpolating the censored volumes before "
            "Butterworth filtering needs at least 2."
        )
    times = np.arange(max(kept.max(), rows.max() if rows.size else 0) + 1) * t_r
    spline = CubicSpline(times[kept], np.eye(kept.size), extrapolate=extrapolate)
    return spline(times[rows])


def _make_plan(
    n_volumes,
    kept,
    confounds,
    *,
    filter_type,
    low_pass,
    high_pass,
    t_r,
    detrend,
    standardize_confounds,
    extrapolate,
    butterworth_kwargs,
    run_label,
):
    where = "signals" if run_label is None else f"run {run_label}"
    sos = None
    n_drifts = 0
    if filter_type == "cosine":
        n_given = 0 if confounds is None else confounds.shape[1]
        confounds = _add_cosine_drifts(confounds, n_volumes, high_pass, t_r)
        n_drifts = (0 if confounds is None else confounds.shape[1]) - n_given
    elif filter_type == "butterworth":
        sos = _butterworth_sos(1.0 / t_r, low_pass, high_pass, butterworth_kwargs["order"])

    interp_rows = weights = kept_local = censor_after = None
    if kept is None:
        n_in = n_span = n_volumes
        rows_in = slice(0, n_volumes)
    elif filter_type == "butterworth":
        # Interpolate censored volumes so the filter sees an evenly sampled series, then
        # censor after filtering.  Without extrapolation the span ends at the kept edges.
        start, stop = (0, n_volumes) if extrapolate else (kept[0], kept[-1] + 1)
        censored = np.ones(n_volumes, dtype=bool)
        censored[kept] = False
        censored[:start] = censored[stop:] = False
        cens_idx = np.flatnonzero(censored)
        n_in, n_span = kept.size, stop - start
        kept_local = kept - start
        censor_after = kept_local
        if cens_idx.size:
            interp_rows = cens_idx - start
            weights = _interpolation_weights(kept, cens_idx, t_r, extrapolate)
        else:
            # Nothing to fill in: the span is exactly the kept volumes.
            kept_local = censor_after = None
        rows_in = kept
    else:
        n_in = n_span = kept.size
        rows_in = kept

    if confounds is not None:
        selected = confounds[rows_in]
        series = np.empty((n_span, selected.shape[1]))
        if interp_rows is not None:
            series[kept_local] = selected
            series[interp_rows] = weights @ selected
        else:
            series[:] = selected
        confounds = series

    do_detrend = bool(detrend)
    if do_detrend and n_span == 1:
        _warn_detrend_single()
        if confounds is not None:
            _warn_detrend_single()
        do_detrend = False
    if sos is not None:
        _check_padding(
            n_span,
            sos,
            butterworth_kwargs["padtype"],
            butterworth_kwargs["padlen"],
            where=where if kept is None else f"{where} (span of the kept volumes)",
        )

    basis = None
    n_confound_dims = n_drift_dims = 0
    if confounds is not None and confounds.shape[1] > 0:
        if do_detrend:
            _detrend_block(confounds)
        if sos is not None:
            confounds = _filtfilt_block(
                confounds, sos, butterworth_kwargs["padtype"], butterworth_kwargs["padlen"]
            )
        if censor_after is not None:
            confounds = confounds[censor_after]
        basis = _confound_basis(confounds, standardize_confounds)
        n_confound_dims = basis.shape[1]
        if n_drifts:
            # The cosine drifts are the filter's share of the basis: what they add to the
            # span of the confounds given.
            given = confounds[:, : confounds.shape[1] - n_drifts]
            n_given = _confound_basis(given, standardize_confounds).shape[1] if given.size else 0
            n_confound_dims, n_drift_dims = n_given, basis.shape[1] - n_given
        if basis.shape[1] == 0:
            basis = None

    plan = _RunPlan(
        n_in=n_in,
        n_span=n_span,
        kept_local=kept_local,
        interp_rows=interp_rows,
        interp_weights=weights,
        censor_after=censor_after,
        detrend=do_detrend,
        sos=sos,
        padtype=butterworth_kwargs["padtype"],
        padlen=butterworth_kwargs["padlen"],
        basis=basis,
        n_confound_dims=n_confound_dims,
        n_drift_dims=n_drift_dims,
    )
    return plan, rows_in


class FewDegreesOfFreedomWarning(UserWarning):
    """The cleaning leaves (almost) no degrees of freedom; ``budget`` holds the numbers."""

    def __init__(self, message, budget=None):
        super().__init__(message)
        self.budget = budget


@dataclass(frozen=True)
class DegreesOfFreedom:
    """Degrees-of-freedom budget of the cleaning of one run.

    ``budget = n_kept - n_trend - n_filter - n_confounds``: the number of independent time
    courses the cleaned signals can still hold. Each term counts dimensions of the
    kept-volume grid that cleaning removes; where two steps remove the same dimension
    (fMRIPrep's cosine regressors under a Butterworth high-pass) both count it, so the
    budget is a lower bound of the rank of the cleaning operator, equal to it when the
    regressors lie in what the filter passes.

    Attributes
    ----------
    n_volumes : int
        Volumes of the run.
    n_kept : int
        Volumes kept (``sample_mask``).
    n_trend : int
        Mean and linear trend: 2 with ``detrend``; else 1 for the mean, which holds no time
        course whether standardization removes it or the cleaning keeps it (0 when the
        confounds span part of it, or when a Butterworth high-pass removes the kept mean).
    n_filter : int
        Dimensions the temporal filter removes on the kept-volume grid: for a Butterworth
        filter, those its operator (interpolation of censored volumes, detrending,
        ``sosfiltfilt``, censoring) passes with less than half their amplitude (its gain at
        the cut-offs); for ``filter='cosine'``, the drift regressors.
    n_confounds : int
        Independent confound regressors, after detrending, filtering and censoring.
    t_r : float or None
        Repetition time (s).
    exact : bool
        False when the filter's share was estimated from its frequency response (series
        longer than the operator limit) rather than counted on its operator.
    """

    n_volumes: int
    n_kept: int
    n_trend: int = 0
    n_filter: int = 0
    n_confounds: int = 0
    t_r: float | None = None
    exact: bool = True

    @property
    def budget(self) -> int:
        """Degrees of freedom left (negative: more is removed than there is data)."""
        return self.n_kept - self.n_trend - self.n_filter - self.n_confounds

    @property
    def seconds_kept(self) -> float | None:
        """Seconds of data kept (``n_kept * t_r``), None without ``t_r``."""
        return None if self.t_r is None else float(self.n_kept * self.t_r)

    def as_dict(self) -> dict:
        """Plain values, for sidecars and provenance records."""
        return {
            "Remaining": self.budget,
            "VolumesTotal": self.n_volumes,
            "VolumesKept": self.n_kept,
            "SecondsKept": self.seconds_kept,
            "ConfoundRegressors": self.n_confounds,
            "TrendTerms": self.n_trend,
            "FilterDimensions": self.n_filter,
            "Exact": self.exact,
        }

    def breakdown(self) -> str:
        """What took the kept volumes: ``"35 of 40 volumes kept (70 s), minus ..."``."""
        removed = [
            f"{count} {what}"
            for count, what in (
                # Independent after detrending, filtering and censoring: the rank, which can
                # be below the number of confound columns.
                (self.n_confounds, "independent confound regressor(s)"),
                (self.n_trend, "mean/trend term(s)"),
                (self.n_filter, "dimension(s) removed by the temporal filter"),
            )
            if count
        ]
        seconds = "" if self.seconds_kept is None else f" ({self.seconds_kept:g} s)"
        return (
            f"{self.n_kept} of {self.n_volumes} volumes kept{seconds}, minus "
            f"{', '.join(removed) if removed else 'nothing'}"
        )

    def describe(self) -> str:
        """One sentence: the budget and what took the kept volumes."""
        return f"{self.budget} degree(s) of freedom left ({self.breakdown()})"


# Series longer than this are not decomposed: the filter's share is read off its response.
_DOF_EXACT_MAX_VOLUMES = _OPERATOR_MAX_VOLUMES
# A direction "passes" the filter when it keeps at least half its amplitude: the gain of a
# zero-phase Butterworth filter (sosfiltfilt) at its cut-off frequencies.
_PASS_GAIN = 0.5


def _filter_pass_rank(plan, t_r, n_trend, centre, exact_max):
    """Dimensions of the kept-volume grid the filter passes (trend terms removed)."""
    n_out = plan.censor_after.size if plan.censor_after is not None else plan.n_span
    if plan.n_in <= exact_max:
        operator = plan.filter_operator()[0]
        if centre:  # standardization removes the mean of what the filter passed
            operator = operator - operator.mean(axis=0)
        gram = operator @ operator.T if n_out <= plan.n_in else operator.T @ operator
        passed = int((linalg.eigvalsh(gram) >= _PASS_GAIN**2).sum())
        return min(passed, n_out - n_trend), True
    # Long series: the operator is (nearly) diagonal in the cosine basis of the span, with
    # the filter's power response as eigenvalues; the interpolated censored volumes add no
    # dimension.
    frequencies = np.arange(plan.n_span) / (2.0 * plan.n_span * t_r)
    _, response = sp_signal.sosfreqz(plan.sos, worN=frequencies, fs=1.0 / t_r)
    passed = int((np.abs(response) ** 2 >= _PASS_GAIN).sum())
    if np.abs(response[0]) ** 2 >= _PASS_GAIN:  # no high-pass: the trend terms are in band
        passed -= n_trend
    return max(0, min(passed, n_out - n_trend)), False


def _passes_constant(sos) -> bool:
    """Whether the forward-backward Butterworth filter ``sos`` keeps a constant series."""
    # The gain at 0 Hz of each second-order section is the ratio of its coefficient sums;
    # filtering forward and backward squares the product.
    gain = np.prod(sos[:, :3].sum(axis=1) / sos[:, 3:].sum(axis=1)) ** 2
    return bool(abs(gain) >= _PASS_GAIN)


def _mean_apart(basis) -> bool:
    """Whether the constant time course is orthogonal to the confound ``basis``.

    Only then does removing (or disregarding) the mean cost a dimension beyond the
    confounds': the centred residuals of a projection span ``n - rank`` dimensions, one
    fewer exactly when the constant lies in the residual space.
    """
    if basis is None:
        return True
    overlap = basis.sum(axis=0) / np.sqrt(basis.shape[0])
    return float(overlap @ overlap) < 1e-12


def _plan_budget(plan, n_volumes, strategy, t_r, n_extra_confounds=0, exact_max=None):
    """:class:`DegreesOfFreedom` of one run's plan."""
    n_out = plan.censor_after.size if plan.censor_after is not None else plan.n_span
    centre = strategy is not None and n_out > 1
    if n_out == 1:
        # A single volume holds no time course: its value is the mean, whatever is done.
        n_trend = 1 if _mean_apart(plan.basis) else 0
    elif plan.detrend:
        n_trend = min(2, n_out)
    elif plan.sos is None:
        # The mean holds no time course, whether standardization removes it or the cleaning
        # keeps it: a dimension of its own unless the confounds already span part of it.
        n_trend = 1 if n_out > 1 and _mean_apart(plan.basis) else 0
    elif centre:
        n_trend = 1
    else:
        # Kept by the cleaning, the mean is a dimension of its own when the filter passes
        # it (a low-pass) and the confounds do not span part of it; a high-pass removes it.
        kept = n_out > 1 and _passes_constant(plan.sos) and _mean_apart(plan.basis)
        n_trend = 1 if kept else 0
    n_filter, exact = plan.n_drift_dims, True
    if plan.sos is not None:
        passed, exact = _filter_pass_rank(
            plan,
            t_r,
            n_trend,
            n_trend == 1 and not plan.detrend,
            _DOF_EXACT_MAX_VOLUMES if exact_max is None else exact_max,
        )
        n_filter = max(0, n_out - n_trend - passed)
    return DegreesOfFreedom(
        n_volumes=int(n_volumes),
        n_kept=int(n_out),
        n_trend=int(n_trend),
        n_filter=int(n_filter),
        n_confounds=int(plan.n_confound_dims + n_extra_confounds),
        t_r=None if t_r is None else float(t_r),
        exact=exact,
    )


def _warn_few_degrees_of_freedom(budget: DegreesOfFreedom, where: str) -> None:
    """Warn when cleaning leaves (almost) nothing of the signals.

    With as many regressors as kept volumes the residuals are rounding noise, which a
    z-scoring then scales up to unit variance: the output looks normal but is not data.
    """
    if budget.n_trend + budget.n_filter + budget.n_confounds == 0:
        return
    if budget.budget < max(3, 0.1 * budget.n_kept):
        warnings.warn(
            FewDegreesOfFreedomWarning(
                f"Cleaning would leave {budget.budget} degree(s) of freedom in {where} "
                f"({budget.breakdown()}): the cleaned signals are mostly (or only) rounding "
                "noise, which standardization would scale up. Use fewer confounds, a wider "
                "band or keep more volumes.",
                budget,
            ),
            stacklevel=3,
        )


def degrees_of_freedom(n_volumes, *, n_extra_confounds=0, **kwargs):
    """Degrees-of-freedom budget of :func:`clean` with these arguments, before cleaning.

    Counts, on the grid of the kept volumes, what each step of the cleaning removes:
    confound regressors, the mean and linear trend, and the dimensions the temporal filter
    removes (the Butterworth operator's directions kept with less than half their amplitude,
    or the cosine drift regressors); see :class:`DegreesOfFreedom`. No signal is needed:
    only the number of volumes, the sample mask and the confounds.

    Parameters
    ----------
    n_volumes : int
        Number of time points of the signals.
    runs, sample_mask, confounds, detrend, standardize, standardize_confounds, filter, \
low_pass, high_pass, t_r, extrapolate, **kwargs
        As :func:`clean` takes them, with its defaults (``butterworth__*`` keyword arguments
        included); keyword-only.
    n_extra_confounds : int, default=0
        Regressors computed from the data later (``high_variance_confounds``), counted as
        independent.

    Returns
    -------
    DegreesOfFreedom, or a list of them (one per run, in sorted label order) with ``runs``.

    Raises
    ------
    TypeError, ValueError
        The checks of :func:`clean`, with its messages.
    """
    # Private: the longest series decomposed exactly (tests compare the estimate with it).
    exact_max = kwargs.pop("_exact_max", None)
    options = {name: kwargs.pop(name, default) for name, default in _CLEAN_OPTIONS.items()}
    butterworth_kwargs = _butterworth_options(
        kwargs,
        lambda key: TypeError(f"degrees_of_freedom() got an unexpected keyword argument {key!r}."),
    )
    t_r = options["t_r"]
    with warnings.catch_warnings():
        # clean() gives the warnings about these arguments; the budget only counts.
        warnings.simplefilter("ignore")
        filter_type = _validation.check_filter(
            options["filter"], options["low_pass"], options["high_pass"], t_r
        )
        strategy = _check_standardize(options["standardize"])
        run_labels, run_rows, masks, confounds = check_clean_inputs(
            int(n_volumes),
            runs=options["runs"],
            sample_mask=options["sample_mask"],
            confounds=options["confounds"],
        )
        plan_options = {k: options[k] for k in ("low_pass", "high_pass", "detrend", "extrapolate")}
        budgets = []
        for label, rows, kept in zip(run_labels, run_rows, masks, strict=True):
            plan, _ = _make_plan(
                rows.size,
                kept,
                None if confounds is None else confounds[rows],
                filter_type=filter_type,
                t_r=t_r,
                standardize_confounds=bool(options["standardize_confounds"]),
                butterworth_kwargs=butterworth_kwargs,
                run_label=label,
                **plan_options,
            )
            budgets.append(
                _plan_budget(plan, rows.size, strategy, t_r, n_extra_confounds, exact_max)
            )
    return budgets if options["runs"] is not None else budgets[0]


def _butterworth_options(kwargs, unexpected):
    """``butterworth__*`` keyword arguments of :func:`clean` as :func:`_make_plan` takes them.

    ``unexpected(key)`` is the exception raised for any other key (its caller's wording).
    """
    options = {"order": 5, "padtype": "odd", "padlen": None}
    for key, value in kwargs.items():
        option = key.removeprefix("butterworth__")
        if not key.startswith("butterworth__") or option not in BUTTERWORTH_KWARGS:
            raise unexpected(key)
        if option != "copy":
            options[option] = value
    return options


# --------------------------------------------------------------------------- clean


def check_clean_inputs(n_volumes, runs=None, sample_mask=None, confounds=None):
    """Check the data-dependent inputs of :func:`clean` before any computation.

    The in-memory pipeline calls this before smoothing (so a bad ``sample_mask`` fails in
    milliseconds), and :func:`clean` calls it again: one check, one message.

    Parameters
    ----------
    n_volumes : int
        Number of time points of the signals.
    runs, sample_mask, confounds
        As :func:`clean` takes them.

    Returns
    -------
    run_labels : list
        Sorted run labels (``[None]`` without ``runs``).
    run_rows : list of numpy.ndarray
        Rows of each run.
    masks : list of numpy.ndarray or None
        Kept volumes of each run (indices local to the run).
    confounds : numpy.ndarray or None
        The confounds as a float64 array.
    """
    if isinstance(confounds, Path):
        confounds = str(confounds)
    confounds = load_confounds_array(confounds, n_volumes)
    if runs is None:
        run_labels = [None]
        run_rows = [np.arange(n_volumes)]
    else:
        runs = np.asarray(runs)
        if runs.ndim != 1 or runs.shape[0] != n_volumes:
            raise ValueError(
                f"runs must be a 1D array with one label per time point ({n_volumes}); got "
                f"shape {runs.shape}."
            )
        run_labels = list(np.unique(runs))
        run_rows = [np.flatnonzero(runs == label) for label in run_labels]
    masks = _validation.check_sample_mask(sample_mask, [rows.size for rows in run_rows])
    if confounds is not None:
        for label, rows, kept in zip(run_labels, run_rows, masks, strict=True):
            where = "signals" if label is None else f"run {label}"
            _validation.check_confounds_finite(confounds[rows], kept, where)
    return run_labels, run_rows, masks, confounds


def clean(
    signals,
    runs=None,
    detrend=True,
    standardize="zscore",
    sample_mask=None,
    confounds=None,
    standardize_confounds=True,
    filter="butterworth",
    low_pass=None,
    high_pass=None,
    t_r=2.5,
    ensure_finite=False,
    extrapolate=True,
    **kwargs,
):
    """Clean 2D time series: scrubbing, detrending, filtering, confound removal, scaling.

    Same semantics and defaults as ``nilearn.signal.clean`` 0.11.1. Order of operations:

    * ``filter='cosine'``: cosine drift regressors (from the full series) are added to the
      confounds; then censoring (``sample_mask``), detrend, confound removal, standardize.
    * ``filter='butterworth'`` with ``sample_mask``: censored volumes are replaced by a cubic
      spline through the kept volumes (signals and confounds), detrend, band/low/high-pass
      filter, censoring, confound removal, standardize.
    * otherwise: censoring, detrend, filter, confound removal, standardize.

    Confounds go through the same detrending and filtering as the signals (Lindquist et al.
    2018), are standardized (or max-scaled), and are projected out of the signals.

    Parameters
    ----------
    signals : numpy.ndarray, shape (n_timepoints, n_features)
        Time series (time along the first axis). Not modified.
    runs : numpy.ndarray of shape (n_timepoints,) or None, default=None
        Run label of each time point. Each run is cleaned independently (with the rows of
        ``confounds`` of that run) and the results are stacked in sorted label order.
    detrend : bool, default=True
        Remove the mean and the linear trend of signals and confounds.
    standardize : {'zscore_sample', 'zscore', 'psc', True, False, None}, default='zscore'
        Final scaling, see :func:`standardize_signal`. 'zscore' and True use the population
        standard deviation and raise a ZscoreDeprecationWarning (as nilearn 0.11). 'psc'
        re-adds the pre-cleaning mean when cleaning removed it (mean reduced below 10 %).
    sample_mask : array of int or bool, or list of those (one per run), default=None
        Volumes to keep: increasing indices, or a boolean mask of length n_timepoints
        (True = keep). With ``runs``, a list with one mask per run, in sorted label order,
        indices local to the run.
    confounds : numpy.ndarray, pandas.DataFrame, str, pathlib.Path, list, or None
        Confound regressors, ``(n_timepoints, n_confounds)``; see
        :func:`load_confounds_array`. NaN is refused in kept volumes.
    standardize_confounds : bool, default=True
        z-score the confounds before the projection; if False they are divided by their
        maximum absolute value (a constant confound then removes the mean).
    filter : {'butterworth', 'cosine', False}, default='butterworth'
        Temporal filter. 'butterworth' is only applied if ``low_pass`` or ``high_pass`` is
        set; 'cosine' adds discrete cosine drift regressors up to ``high_pass``.
    low_pass, high_pass : float or None, default=None
        Cut-off frequencies (Hz).
    t_r : float or None, default=2.5
        Repetition time (seconds); needed by the filters and the interpolation.
    ensure_finite : bool, default=False
        Replace NaN and infinite values of ``signals`` by 0 first.
    extrapolate : bool, default=True
        When interpolating censored volumes before Butterworth filtering, also extrapolate
        censored volumes before the first / after the last kept one; if False they are
        dropped from the filtered span.
    **kwargs
        ``butterworth__order`` (5), ``butterworth__padtype`` ('odd'),
        ``butterworth__padlen`` (None) for :func:`butterworth`; ``butterworth__copy`` is
        accepted and ignored (the input is never modified).

    Returns
    -------
    numpy.ndarray, shape (n_kept_timepoints, n_features)
        Cleaned signals, in the input's float dtype (integers give float32).

    Notes
    -----
    Differences from nilearn 0.11.1 (see the module docstring): censored volumes are
    interpolated correctly (nilearn replaces the wrong rows); per-run cleaning honours
    ``standardize_confounds``, ``extrapolate`` and ``butterworth__*``; ``sample_mask`` must
    be increasing without duplicates; unknown keyword arguments are refused.
    """
    # Private: an (n_features,) float64 array that receives the standard deviation of the
    # cleaned signals before standardization (the noise of the report's tSNR), for free.
    noise_std_out = kwargs.pop("_noise_std_out", None)
    # Private: ``allocate(shape, dtype)`` gives the array the result is written into (a
    # memory map of the output file: the cleaned signals are stored as they are computed).
    allocate = kwargs.pop("_allocate_out", None) or np.empty
    # Private: a list that receives each run's DegreesOfFreedom (the report shows them).
    budgets_out = kwargs.pop("_budgets_out", None)
    butterworth_kwargs = _butterworth_options(
        kwargs,
        lambda key: TypeError(
            f"clean() got an unexpected keyword argument {key!r}; the accepted extra "
            "options are butterworth__order, butterworth__padtype, butterworth__padlen "
            "and butterworth__copy."
        ),
    )
    if isinstance(confounds, Path):
        confounds = str(confounds)
    if confounds is not None and not detrend and not standardize_confounds:
        warnings.warn(
            "Confounds were given with detrend=False and standardize_confounds=False: unless "
            "the confounds are already centered, the signals will not be cleaned correctly.",
            stacklevel=2,
        )
    filter_type = _validation.check_filter(filter, low_pass, high_pass, t_r)
    strategy = _check_standardize(standardize)
    if not isinstance(ensure_finite, (bool, np.bool_)):
        raise ValueError(f"ensure_finite must be True or False; got {ensure_finite!r}.")
    if not isinstance(standardize_confounds, (bool, np.bool_)):
        # nilearn forwards it as a standardize strategy: any valid one means "standardize".
        standardize_confounds = (
            _check_standardize(standardize_confounds, name="standardize_confounds") is not None
        )

    signals = _as_signals(signals)
    n_volumes, n_features = signals.shape
    run_labels, run_rows, masks, confounds = check_clean_inputs(
        n_volumes, runs=runs, sample_mask=sample_mask, confounds=confounds
    )

    # One BLAS thread for every product: a multi-threaded one rounds differently, and the
    # numbers must not depend on the threads a process has (--nprocs, --omp-nthreads).
    with _single_threaded_blas():
        plans = []
        for label, rows, kept in zip(run_labels, run_rows, masks, strict=True):
            run_confounds = None if confounds is None else confounds[rows]
            plan, rows_in = _make_plan(
                rows.size,
                kept,
                run_confounds,
                filter_type=filter_type,
                low_pass=low_pass,
                high_pass=high_pass,
                t_r=t_r,
                detrend=detrend,
                standardize_confounds=standardize_confounds,
                extrapolate=extrapolate,
                butterworth_kwargs=butterworth_kwargs,
                run_label=label,
            )
            plans.append((plan, rows[rows_in]))
            budget = _plan_budget(plan, rows.size, strategy, t_r)
            if budgets_out is not None:
                budgets_out.append(budget)
            _warn_few_degrees_of_freedom(budget, "signals" if label is None else f"run {label}")

        n_out = [
            plan.censor_after.size if plan.censor_after is not None else plan.n_span
            for plan, _ in plans
        ]
        if strategy == "zscore":
            _warn_zscore()
        out = allocate((sum(n_out), n_features), _output_dtype(signals.dtype))
        sum_of_squares = None if noise_std_out is None else np.zeros(n_features)
        offset = 0
        for (plan, rows), n_rows_out in zip(plans, n_out, strict=True):
            if (
                plan.sos is not None
                and plan.n_in <= _OPERATOR_MAX_VOLUMES
                and n_features > plan.n_in
            ):
                plan.build_operator()
            run_strategy = strategy
            if run_strategy is not None and n_rows_out == 1:
                warnings.warn(
                    "Standardization was requested on a single time point, which would zero it; "
                    "skipped.",
                    stacklevel=2,
                )
                run_strategy = None
            _clean_run(
                signals,
                rows,
                plan,
                out[offset : offset + n_rows_out],
                run_strategy,
                ensure_finite,
                sum_of_squares,
            )
            offset += n_rows_out
        if noise_std_out is not None:
            noise_std_out[:] = np.sqrt(sum_of_squares / max(out.shape[0], 1))
    return out


# degrees_of_freedom() takes clean()'s arguments (but the signals and ensure_finite), with
# its defaults: one list, so that the budget counts what clean() will be asked to do.
_CLEAN_OPTIONS = {
    name: parameter.default
    for name, parameter in inspect.signature(clean).parameters.items()
    if parameter.kind is parameter.POSITIONAL_OR_KEYWORD
    and name not in ("signals", "ensure_finite")
}
degrees_of_freedom.__signature__ = inspect.Signature(
    [
        inspect.Parameter("n_volumes", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        *(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
            for name, default in _CLEAN_OPTIONS.items()
        ),
        inspect.Parameter("n_extra_confounds", inspect.Parameter.KEYWORD_ONLY, default=0),
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
)


def _run_chunks(function, chunks):
    """Run ``function`` on each column chunk, on ``default_n_threads()`` threads when worthwhile.

    numpy and BLAS release the GIL, so two Python threads with single-threaded BLAS keep both
    cores busy on the conversions and reductions too, and avoid the spin-waiting of a
    multi-threaded BLAS on a loaded machine. Chunks write disjoint columns. The caller
    (:func:`clean`) holds BLAS to one thread.
    """
    if (n_threads := default_n_threads()) < 2 or len(chunks) < 2:
        for cols in chunks:
            function(cols)
        return
    with ThreadPoolExecutor(n_threads) as pool:
        for future in [pool.submit(function, cols) for cols in chunks]:
            future.result()


def _read_rows(signals, rows, cols):
    """float64 copy of ``signals[rows, cols]`` (rows contiguous → one copy only)."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return signals[rows[0] : rows[-1] + 1, cols].astype(np.float64)
    return signals[rows, cols].astype(np.float64, copy=False)


def _clean_run(signals, rows, plan, out, strategy, ensure_finite, sum_of_squares=None):
    """Clean the columns of one run chunk by chunk, writing into ``out``.

    ``sum_of_squares``, when given, accumulates each column's sum of squared deviations
    from its run mean, before standardization.
    """
    n_features = signals.shape[1]
    psc = strategy == "psc"
    clean_means = np.empty(n_features) if psc else None
    original_means = np.empty(n_features) if psc else None

    def clean_chunk(cols):
        block = _read_rows(signals, rows, cols)
        if ensure_finite:
            block[~np.isfinite(block)] = 0.0
        cleaned, mean0 = plan.apply(block)
        if sum_of_squares is not None:
            sum_of_squares[cols] += cleaned.var(axis=0) * cleaned.shape[0]
        if strategy in ("zscore", "zscore_sample"):
            _zscore_block(cleaned, ddof=1 if strategy == "zscore_sample" else 0)
        elif psc:
            # Store centered values; the per-column scale needs a decision over all columns.
            means = cleaned.mean(axis=0)
            cleaned -= means
            clean_means[cols] = means
            original_means[cols] = mean0
        out[:, cols] = cleaned

    chunks = list(_column_chunks(max(plan.n_span, rows.size), n_features))
    _run_chunks(clean_chunk, chunks)
    if psc and n_features:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.abs(clean_means).mean() / np.abs(original_means).mean()
        # Detrending or high-pass filtering removed the mean: measure change against the
        # mean the signals had before cleaning.
        final_means = clean_means + original_means if ratio < 0.1 else clean_means
        scale = _psc_scale(final_means).astype(out.dtype)
        for cols in _column_chunks(out.shape[0], n_features):
            out[:, cols] *= scale[cols]


# --------------------------------------------------------------------------- hv confounds


def high_variance_confounds(series, n_confounds=5, percentile=2.0, detrend=True):
    """Principal time courses of the highest-variance columns (CompCor-like confounds).

    Parameters
    ----------
    series : numpy.ndarray, shape (n_timepoints, n_features)
        Time series, one per column.
    n_confounds : int, default=5
        Number of confounds returned.
    percentile : float, default=2.0
        Keep the columns whose mean of squares (after optional detrending; no other
        centering) is strictly above the ``100 - percentile`` percentile.
    detrend : bool, default=True
        Remove the mean and linear trend of each column first.

    Returns
    -------
    numpy.ndarray, shape (n_timepoints, n_confounds)
        Unit-norm left singular vectors of the kept columns with the largest singular
        values (sign arbitrary), in the input's float dtype (integers give float32).
    """
    series = _as_signals(series, name="series")
    if not isinstance(n_confounds, numbers.Integral) or n_confounds < 1:
        raise ValueError(f"n_confounds must be a positive integer; got {n_confounds!r}.")
    if not _is_number(percentile) or not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be a number in [0, 100]; got {percentile!r}.")
    n = series.shape[0]
    if detrend and n == 1:
        _warn_detrend_single()
        detrend = False
    mean_squares = np.empty(series.shape[1])
    for cols in _column_chunks(n, series.shape[1]):
        block = series[:, cols].astype(np.float64)
        if detrend:
            _detrend_block(block)
        mean_squares[cols] = (block**2).mean(axis=0)
    threshold = np.nanpercentile(mean_squares, 100.0 - percentile)
    selected = series[:, mean_squares > threshold].astype(np.float64)
    if detrend:
        _detrend_block(selected)
    with _single_threaded_blas():  # the same numbers whatever the threads (see clean)
        eigenvalues, eigenvectors = linalg.eigh(selected @ selected.T / n)
    order = np.argsort(eigenvalues)[::-1][:n_confounds]
    return eigenvectors[:, order].astype(_output_dtype(series.dtype))
