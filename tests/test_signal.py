"""masker_wf.signal against nilearn 0.11.1's nilearn.signal, computed inside each test."""

import warnings

import nibabel as nib
import nilearn.signal as nsignal
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from masker_wf import signal as msignal
from masker_wf._exceptions import AllVolumesRemovedError

T_R = 2.0


# --------------------------------------------------------------------------- helpers


def _copy_args(kwargs):
    """nilearn mutates sample_mask in place (extrapolate=False): give it copies."""
    copied = {}
    for key, value in kwargs.items():
        if isinstance(value, np.ndarray):
            value = value.copy()
        elif isinstance(value, list):
            value = [v.copy() if isinstance(v, np.ndarray) else v for v in value]
        copied[key] = value
    return copied


def nilearn_clean(signals, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nsignal.clean(signals.copy(), **_copy_args(kwargs))


def ours_clean(signals, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return msignal.clean(signals, **kwargs)


def assert_matches(ours, reference, rtol):
    assert ours.shape == reference.shape
    assert ours.dtype == reference.dtype
    scale = max(np.abs(reference).max(), np.finfo(np.float64).tiny)
    np.testing.assert_allclose(ours, reference, rtol=rtol, atol=rtol * scale)


def rtol_for(dtype):
    return 1e-5 if np.dtype(dtype) == np.float64 else 1e-4


def synthetic_signals(n_volumes=150, n_features=60, seed=0):
    """Drifting, oscillating, noisy series around a positive baseline, plus confounds."""
    rng = np.random.default_rng(seed)
    time = np.arange(n_volumes)[:, None]
    baseline = rng.uniform(50, 500, size=n_features)
    drift = rng.normal(0, 0.05, size=n_features) * time
    oscillation = 5 * np.sin(2 * np.pi * 0.03 * T_R * time + rng.uniform(0, 6, n_features))
    signals = baseline + drift + oscillation + rng.normal(0, 2, size=(n_volumes, n_features))
    confounds = np.column_stack(
        [
            np.cumsum(rng.normal(0, 0.1, n_volumes)),
            np.sin(2 * np.pi * 0.1 * T_R * np.arange(n_volumes)),
            rng.normal(0, 1, n_volumes),
            np.linspace(-1, 1, n_volumes) ** 2,
        ]
    )
    return signals, confounds


# --------------------------------------------------------------------------- synthetic parity

N_VOLUMES = 150
_rng = np.random.default_rng(42)
KEEP = np.sort(_rng.choice(N_VOLUMES, 135, replace=False))  # 10 % scrubbed, ends included
KEEP_INNER = KEEP[(KEEP > 4) & (KEEP < N_VOLUMES - 4)]
KEEP_BOOL = np.isin(np.arange(N_VOLUMES), KEEP)
RUNS = np.repeat([0, 1], N_VOLUMES // 2)
RUN_MASKS = [np.setdiff1d(np.arange(75), [0, 10, 11, 40]), np.setdiff1d(np.arange(75), [5, 74])]
BAND = {"low_pass": 0.08, "high_pass": 0.01, "t_r": T_R}

SYNTHETIC_CASES = {
    "defaults": {},
    "zscore_sample": {"standardize": "zscore_sample"},
    "zscore_true": {"standardize": True},
    "psc_detrended": {"standardize": "psc"},
    "psc_raw": {"standardize": "psc", "detrend": False, "filter": False},
    "nothing": {"standardize": False, "detrend": False},
    "raw_confounds": {
        "standardize": False,
        "detrend": False,
        "confounds": "C",
        "standardize_confounds": False,
    },
    "low_pass": {"confounds": "C", "low_pass": 0.1, "t_r": T_R},
    "high_pass_psc": {"confounds": "C", "high_pass": 0.01, "t_r": T_R, "standardize": "psc"},
    "band_pass": {"confounds": "C", "standardize": "zscore_sample", **BAND},
    "band_pass_kwargs": {
        "confounds": "C",
        **BAND,
        "butterworth__order": 3,
        "butterworth__padtype": "even",
        "butterworth__padlen": 20,
    },
    "band_pass_no_detrend": {"confounds": "C", "detrend": False, **BAND},
    "nyquist_clipped": {"low_pass": 0.3, "t_r": T_R},
    "cosine": {"filter": "cosine", "high_pass": 0.01, "t_r": T_R, "confounds": "C"},
    "cosine_scrub": {"filter": "cosine", "high_pass": 0.01, "t_r": T_R, "sample_mask": KEEP},
    "no_filter_scrub": {"filter": False, "sample_mask": KEEP, "confounds": "C"},
    "scrub_band_extrapolate": {"sample_mask": KEEP, "confounds": "C", **BAND},
    "scrub_band_no_extrapolate": {
        "sample_mask": KEEP_INNER,
        "confounds": "C",
        "extrapolate": False,
        "standardize": "zscore_sample",
        **BAND,
    },
    "scrub_bool_low_pass_psc": {
        "sample_mask": KEEP_BOOL,
        "low_pass": 0.1,
        "t_r": T_R,
        "standardize": "psc",
    },
    "runs_cosine": {"runs": RUNS, "filter": "cosine", "high_pass": 0.02, "confounds": "C"},
    "runs_scrub_band": {"runs": RUNS, "sample_mask": RUN_MASKS, "confounds": "C", **BAND},
    "confounds_dataframe": {"confounds": "DF", "low_pass": 0.1},
    "confounds_list": {"confounds": "LIST", "standardize": "zscore_sample"},
}


def _resolve(case, confounds):
    kwargs = dict(SYNTHETIC_CASES[case])
    if "confounds" in kwargs:
        kwargs["confounds"] = {
            "C": confounds,
            "DF": pd.DataFrame(confounds, columns=[f"c{i}" for i in range(confounds.shape[1])]),
            "LIST": [confounds[:, :2], pd.DataFrame(confounds[:, 2:])],
        }[kwargs["confounds"]]
    return kwargs


@pytest.mark.parametrize("n_features", [40, 400], ids=["direct", "operator"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(SYNTHETIC_CASES))
def test_clean_matches_nilearn_on_synthetic_signals(
    case, dtype, n_features, nilearn_fixed_scrubbing
):
    signals, confounds = synthetic_signals(N_VOLUMES, n_features)
    signals = signals.astype(dtype)
    kwargs = _resolve(case, confounds)
    reference = nilearn_clean(signals, **kwargs)
    ours = ours_clean(signals, **kwargs)
    assert_matches(ours, reference, rtol_for(dtype))


@pytest.mark.parametrize(("suffix", "sep", "header"), [(".tsv", "\t", True), (".csv", ",", False)])
def test_clean_reads_confounds_files_like_nilearn(tmp_path, suffix, sep, header):
    signals, confounds = synthetic_signals(80, 30)
    frame = pd.DataFrame(confounds, columns=["trans_x", "rot_y", "csf", "wm"])
    path = tmp_path / f"confounds{suffix}"
    frame.to_csv(path, sep=sep, header=header, index=False)
    kwargs = {"confounds": path, "low_pass": 0.1, "t_r": T_R}
    assert_matches(ours_clean(signals, **kwargs), nilearn_clean(signals, **kwargs), 1e-5)
    kwargs["confounds"] = str(path)
    assert_matches(ours_clean(signals, **kwargs), nilearn_clean(signals, **kwargs), 1e-5)


def test_clean_with_nan_only_in_censored_confound_rows_matches_nilearn():
    # fMRIPrep's derivative confounds start with n/a; scrubbing the first volume is fine.
    signals, confounds = synthetic_signals(60, 20)
    confounds[0, :2] = np.nan
    kwargs = {"confounds": confounds, "sample_mask": np.arange(1, 60), "filter": False}
    assert_matches(ours_clean(signals, **kwargs), nilearn_clean(signals, **kwargs), 1e-5)


def test_clean_ensure_finite_matches_nilearn():
    signals, _ = synthetic_signals(60, 20)
    signals[3, 4] = np.nan
    signals[10, 7] = np.inf
    kwargs = {"ensure_finite": True, "low_pass": 0.1, "t_r": T_R}
    ours = ours_clean(signals, **kwargs)
    assert np.isfinite(ours).all()
    assert_matches(ours, nilearn_clean(signals, **kwargs), 1e-5)


def test_operator_and_direct_paths_agree_whatever_the_chunking(monkeypatch):
    signals, confounds = synthetic_signals(N_VOLUMES, 500)
    signals = signals.astype(np.float32)
    kwargs = {"sample_mask": KEEP, "confounds": confounds, "standardize": "psc", **BAND}
    one_chunk = ours_clean(signals, **kwargs)
    monkeypatch.setattr(msignal, "_CHUNK_BYTES", 10_000)  # many chunks, on worker threads
    chunked = ours_clean(signals, **kwargs)
    np.testing.assert_array_equal(chunked, one_chunk)
    monkeypatch.setattr(msignal, "_OPERATOR_MAX_VOLUMES", 0)  # sosfiltfilt per chunk
    direct = ours_clean(signals, **kwargs)
    assert_matches(direct, one_chunk, 1e-5)


def test_integer_signals_become_float32_like_nilearn():
    signals, _ = synthetic_signals(60, 20)
    signals = np.round(signals).astype(np.int16)
    ours = ours_clean(signals, standardize="zscore_sample")
    assert ours.dtype == np.float32
    assert_matches(ours, nilearn_clean(signals, standardize="zscore_sample"), 1e-4)


def test_clean_does_not_modify_its_inputs():
    signals, confounds = synthetic_signals(N_VOLUMES, 30)
    keep = KEEP_INNER.copy()
    before = signals.copy(), confounds.copy()
    ours_clean(signals, confounds=confounds, sample_mask=keep, extrapolate=False, **BAND)
    np.testing.assert_array_equal(signals, before[0])
    np.testing.assert_array_equal(confounds, before[1])
    np.testing.assert_array_equal(keep, KEEP_INNER)


def test_runs_are_cleaned_independently_with_every_option():
    """Unlike nilearn 0.11.1, per-run cleaning keeps standardize_confounds, extrapolate and
    butterworth__* options; runs come out in sorted label order."""
    signals, confounds = synthetic_signals(120, 30)
    runs = np.repeat([2, 1], 60)  # label 1 is the second half: it comes out first
    masks = [np.setdiff1d(np.arange(60), [0, 30]), np.setdiff1d(np.arange(60), [7, 59])]
    options = {
        "standardize": "zscore_sample",
        "standardize_confounds": False,
        "extrapolate": False,
        "butterworth__order": 3,
        "butterworth__padtype": "even",
        **BAND,
    }
    together = ours_clean(signals, runs=runs, confounds=confounds, sample_mask=masks, **options)
    second, first = slice(60, 120), slice(0, 60)
    expected = np.vstack(
        [
            ours_clean(
                signals[second], confounds=confounds[second], sample_mask=masks[0], **options
            ),
            ours_clean(
                signals[first], confounds=confounds[first], sample_mask=masks[1], **options
            ),
        ]
    )
    np.testing.assert_array_equal(together, expected)


# --------------------------------------------------------------------------- scrubbing bug


def test_interpolation_replaces_exactly_the_censored_volumes(nilearn_fixed_scrubbing):
    """A cubic in time is reproduced by the not-a-knot spline, so replacing every censored
    volume (and only those) makes scrubbing invisible: same as cleaning the intact series."""
    n = 80
    time = np.arange(n, dtype=np.float64)
    rng = np.random.default_rng(1)
    coefficients = rng.normal(size=(4, 12))
    intact = np.vander(time / n, 4) @ coefficients + 10
    keep = np.setdiff1d(np.arange(n), [0, 1, 17, 18, 19, 50, 79])
    corrupted = intact.copy()
    corrupted[np.setdiff1d(np.arange(n), keep)] = 1e6  # motion spikes
    kwargs = {"low_pass": 0.1, "high_pass": 0.01, "t_r": T_R, "detrend": False}
    expected = ours_clean(intact, standardize=False, **kwargs)[keep]
    scrubbed = ours_clean(corrupted, sample_mask=keep, standardize=False, **kwargs)
    np.testing.assert_allclose(scrubbed, expected, rtol=1e-9, atol=1e-9)
    # The patched oracle agrees...
    assert_matches(
        scrubbed, nilearn_clean(corrupted, sample_mask=keep, standardize=False, **kwargs), 1e-9
    )


def test_nilearn_0_11_1_scrubbing_bug_is_not_reproduced():
    """Unpatched nilearn 0.11.1 keeps raw censored values whose mirror volume is censored too
    (``~index`` is a bitwise not): its output depends on the spikes, ours does not."""
    signals, _ = synthetic_signals(60, 8)
    keep = np.setdiff1d(np.arange(60), [20, 39])  # 20 and 39 = 60 - 1 - 20: mirror pair
    spiked = signals.copy()
    spiked[[20, 39]] += 1e4
    kwargs = {"sample_mask": keep, "low_pass": 0.1, "t_r": T_R}
    ours = ours_clean(signals, **kwargs)
    np.testing.assert_allclose(ours_clean(spiked, **kwargs), ours, rtol=1e-9, atol=1e-9)
    buggy = nilearn_clean(spiked, **kwargs)
    assert np.abs(buggy - nilearn_clean(signals, **kwargs)).max() > 1e-3


# --------------------------------------------------------------------------- real BOLD parity


def _masked_signals(path, mask_path=None):
    img = nib.load(path)
    data = img.get_fdata(dtype=np.float64)
    if mask_path is not None:
        mask = np.asarray(nib.load(mask_path).dataobj) > 0
    else:
        mean = data.mean(axis=-1)
        mask = mean > 0.2 * mean.max()
    return data[mask].T  # (n_volumes, n_voxels)


@pytest.fixture(scope="module")
def real_signals(functional_path, ds003_path, ds003_mask_path):
    return {
        "functional": _masked_signals(functional_path),
        "ds003": _masked_signals(ds003_path, ds003_mask_path),
    }


REAL_KEEP = np.setdiff1d(np.arange(20), [0, 9, 10, 19])
REAL_CASES = {
    "defaults": {},
    "zscore_sample_low_pass": {"standardize": "zscore_sample", "low_pass": 0.1, "t_r": T_R},
    "psc_high_pass_hv": {"standardize": "psc", "high_pass": 0.02, "t_r": T_R, "confounds": "HV"},
    "band_pass_order2": {
        "low_pass": 0.2,
        "high_pass": 0.02,
        "t_r": T_R,
        "butterworth__order": 2,
        "butterworth__padlen": 12,
        "confounds": "HV",
    },
    "cosine_scrub": {
        "filter": "cosine",
        "high_pass": 0.02,
        "t_r": T_R,
        "sample_mask": REAL_KEEP,
        "confounds": "HV",
    },
    "scrub_low_pass_extrapolate": {
        "low_pass": 0.15,
        "t_r": T_R,
        "sample_mask": REAL_KEEP,
        "butterworth__padlen": 8,
    },
    "scrub_low_pass_no_extrapolate": {
        "low_pass": 0.15,
        "t_r": T_R,
        "sample_mask": REAL_KEEP,
        "extrapolate": False,
        "butterworth__padlen": 8,
        "standardize": "psc",
    },
    "raw_confounds": {
        "detrend": False,
        "standardize": False,
        "standardize_confounds": False,
        "confounds": "HV",
        "filter": False,
    },
    "runs_zscore_sample": {"runs": np.repeat([0, 1], 10), "standardize": "zscore_sample"},
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(REAL_CASES))
@pytest.mark.parametrize("dataset", ["functional", "ds003"])
def test_clean_matches_nilearn_on_real_bold(
    real_signals, dataset, case, dtype, nilearn_fixed_scrubbing
):
    signals = real_signals[dataset].astype(dtype)
    kwargs = dict(REAL_CASES[case])
    if kwargs.get("confounds") == "HV":
        kwargs["confounds"] = nsignal.high_variance_confounds(real_signals[dataset], 3)
    reference = nilearn_clean(signals, **kwargs)
    assert_matches(ours_clean(signals, **kwargs), reference, rtol_for(dtype))


# --------------------------------------------------------------------------- other functions


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "cutoffs",
    [{"low_pass": 0.1}, {"high_pass": 0.01}, {"low_pass": 0.08, "high_pass": 0.01}],
    ids=["low", "high", "band"],
)
def test_butterworth_matches_nilearn_and_filters_in_place(cutoffs, dtype):
    signals = synthetic_signals(100, 30)[0].astype(dtype)
    reference = nsignal.butterworth(signals.copy(), 1 / T_R, **cutoffs)
    ours_input = signals.copy()
    ours = msignal.butterworth(ours_input, 1 / T_R, **cutoffs)
    assert ours is ours_input  # copy=False: in place
    assert_matches(ours, reference, rtol_for(dtype))
    copied = msignal.butterworth(signals, 1 / T_R, copy=True, **cutoffs)
    assert copied is not signals
    assert copied.dtype == dtype
    assert_matches(copied, reference, rtol_for(dtype))
    one_d = msignal.butterworth(signals[:, 3].copy(), 1 / T_R, **cutoffs)
    assert_matches(one_d, reference[:, 3], rtol_for(dtype))


@pytest.mark.parametrize("detrend", [False, True])
@pytest.mark.parametrize("standardize", ["zscore_sample", "zscore", "psc", True, False])
def test_standardize_signal_matches_nilearn(standardize, detrend):
    signals = synthetic_signals(50, 25)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = nsignal.standardize_signal(signals.copy(), detrend, standardize)
        ours = msignal.standardize_signal(signals, detrend=detrend, standardize=standardize)
    assert_matches(ours, reference, 1e-5)


def test_high_variance_confounds_span_the_same_space_as_nilearn(real_signals):
    for signals in real_signals.values():
        for detrend in (True, False):
            reference = nsignal.high_variance_confounds(signals, 4, 5.0, detrend)
            ours = msignal.high_variance_confounds(signals, 4, 5.0, detrend)
            assert ours.shape == reference.shape == (signals.shape[0], 4)
            # Eigenvector signs are arbitrary: compare the projectors.
            np.testing.assert_allclose(ours @ ours.T, reference @ reference.T, atol=1e-8)
    as_float32 = msignal.high_variance_confounds(signals.astype(np.float32))
    assert as_float32.dtype == np.float32


def test_load_confounds_array_forms(tmp_path):
    values = np.arange(12.0).reshape(6, 2)
    (tmp_path / "c.tsv").write_text("a\tb\n" + "\n".join(f"{x}\t{y}" for x, y in values))
    (tmp_path / "c.txt").write_text("\n".join(f"{x} {y}" for x, y in values))
    (tmp_path / "na.tsv").write_text("a\tb\nn/a\t1\n" + "\n".join("1\t2" for _ in range(5)))
    for form in (
        values,
        pd.DataFrame(values),
        tmp_path / "c.tsv",
        str(tmp_path / "c.txt"),
        [values[:, 0], values[:, 1]],
    ):
        loaded = msignal.load_confounds_array(form, 6)
        np.testing.assert_array_equal(loaded, values)
        assert loaded.dtype == np.float64
    assert msignal.load_confounds_array(list(values[:, 0]), 6).shape == (6, 1)
    assert msignal.load_confounds_array(None, 6) is None
    assert np.isnan(msignal.load_confounds_array(tmp_path / "na.tsv", 6)[0, 0])


# --------------------------------------------------------------------------- warnings


def test_zscore_warns_like_nilearn_0_11():
    signals = synthetic_signals(30, 5)[0]
    for standardize in ("zscore", True):
        with pytest.warns(DeprecationWarning, match="zscore_sample"):
            msignal.clean(signals, standardize=standardize)
        with pytest.warns(FutureWarning, match="zscore_sample"):
            msignal.standardize_signal(signals, standardize=standardize)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"filter": False, "low_pass": 0.1}, "no filtering"),
        ({"confounds": "C", "detrend": False, "standardize_confounds": False}, "centered"),
        ({"low_pass": 0.5, "t_r": T_R}, "Nyquist"),
        ({"filter": "cosine", "high_pass": 0.001, "t_r": T_R}, "No cosine drift"),
        ({"filter": "cosine", "high_pass": 0.3, "t_r": T_R}, "saturates"),
        ({"filter": "cosine", "high_pass": 0.01, "t_r": T_R, "confounds": "COS"}, "already"),
    ],
)
def test_clean_warns_on_questionable_parameters(kwargs, match):
    signals, confounds = synthetic_signals(40, 5)
    if kwargs.get("confounds") == "C":
        kwargs["confounds"] = confounds
    elif kwargs.get("confounds") == "COS":
        n = 40
        kwargs["confounds"] = np.cos(np.pi / n * (np.arange(n) + 0.5))[:, None]
    with pytest.warns(UserWarning, match=match):
        msignal.clean(signals, standardize="zscore_sample", **kwargs)


def test_psc_of_zero_mean_features_warns_and_zeroes():
    signals = synthetic_signals(40, 5)[0]
    signals[:, 2] = 0.0
    with pytest.warns(UserWarning, match="mean is 0"):
        out = msignal.clean(signals, standardize="psc", detrend=False)
    assert np.all(out[:, 2] == 0)


def test_single_volume_skips_detrend_and_standardize_with_warnings():
    with pytest.warns(UserWarning, match="single time point"):
        out = msignal.clean(np.ones((1, 3)), standardize="zscore_sample")
    np.testing.assert_array_equal(out, np.ones((1, 3)))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"low_pass": 0.1, "t_r": None}, ValueError, "t_r"),
        ({"filter": "cosine", "high_pass": None}, ValueError, "high_pass"),
        ({"filter": "cosine", "high_pass": 0.01, "t_r": None}, ValueError, "t_r"),
        ({"low_pass": 0.1, "t_r": -2.0}, ValueError, "t_r must be a positive"),
        ({"low_pass": True}, TypeError, "low_pass"),
        ({"high_pass": "0.01"}, TypeError, "high_pass"),
        ({"low_pass": 0.01, "high_pass": 0.1}, ValueError, "high_pass .* lower than low_pass"),
        ({"filter": "fourier"}, ValueError, "filter='fourier'"),
        ({"standardize": "zscores"}, ValueError, "standardize='zscores'"),
        ({"standardize_confounds": "foo"}, ValueError, "standardize_confounds"),
        ({"ensure_finite": 1}, ValueError, "ensure_finite"),
        ({"confounds": np.zeros((39, 2))}, ValueError, "confounds has 39 rows .* 40"),
        ({"confounds": np.zeros((40, 2, 2))}, ValueError, "confounds must be a 1D or 2D"),
        ({"confounds": {"a": 1}}, TypeError, "confounds must be"),
        ({"confounds": np.array([["a"] * 40]).T}, TypeError, "confounds must hold numbers"),
        ({"confounds": "NAN"}, ValueError, r"NaN .* volume\(s\) \[5\]"),
        ({"sample_mask": np.array([0, 3, 45])}, ValueError, r"out of range \[45\]"),
        ({"sample_mask": np.array([0, 3, 40])}, IndexError, r"out of range \[40\]"),
        ({"sample_mask": np.array([0, 3, 3, 7])}, ValueError, "duplicated"),
        ({"sample_mask": np.array([5, 3, 7])}, ValueError, "increasing"),
        ({"sample_mask": np.array([-1, 3])}, ValueError, "negative"),
        ({"sample_mask": np.ones(39, bool)}, ValueError, "length 39 .* 40 volumes"),
        ({"sample_mask": np.array([0.0, 1.0])}, TypeError, "integer indices"),
        ({"sample_mask": "all"}, TypeError, "sample_mask must be"),
        ({"sample_mask": np.array([], dtype=int)}, AllVolumesRemovedError, "removes all 40"),
        ({"sample_mask": np.zeros(40, bool)}, AllVolumesRemovedError, "no volume"),
        ({"sample_mask": [np.arange(40), np.arange(3)]}, ValueError, "2 mask.* 1 run"),
        ({"sample_mask": np.array([4]), "low_pass": 0.1}, ValueError, "single volume"),
        ({"runs": np.zeros(39)}, ValueError, r"runs must be .*\(40\)"),
        ({"runs": np.repeat([0, 1], 20), "sample_mask": np.arange(20)}, ValueError, "one mask"),
        ({"butterworth__order": 0, "low_pass": 0.1}, ValueError, "order"),
        ({"butterworth__padtype": "zero", "low_pass": 0.1}, ValueError, "padtype"),
        ({"butterworth_order": 3}, TypeError, "butterworth_order"),
    ],
)
@pytest.mark.filterwarnings("ignore")
def test_clean_refuses_bad_input_naming_the_argument(kwargs, error, match):
    rng = np.random.default_rng(0)
    signals = rng.normal(size=(40, 6)) + 10
    if isinstance(kwargs.get("confounds"), str) and kwargs["confounds"] == "NAN":
        confounds = rng.normal(size=(40, 2))
        confounds[5, 1] = np.nan
        kwargs = {**kwargs, "confounds": confounds}
    with pytest.raises(error, match=match):
        msignal.clean(signals, **kwargs)


def test_clean_refuses_series_too_short_for_the_filter():
    signals = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.raises(ValueError, match=r"signals has 30 time points.*needs at least 34"):
        msignal.clean(signals, low_pass=0.1, high_pass=0.01, t_r=T_R)
    runs = np.repeat([3, 7], 15)
    with pytest.raises(ValueError, match=r"run 3 has 15 time points.*at least 19"):
        msignal.clean(signals, runs=runs, low_pass=0.1, t_r=T_R)
    keep = np.arange(5, 25)  # without extrapolation only 20 volumes remain to filter
    with pytest.raises(ValueError, match=r"span of the kept volumes\) has 20 .* at least 34"):
        msignal.clean(signals, sample_mask=keep, extrapolate=False, high_pass=0.01, low_pass=0.1)


@pytest.mark.parametrize(
    ("signals", "error", "match"),
    [
        (np.zeros(10), ValueError, "2D"),
        (np.zeros((2, 3, 4)), ValueError, "2D"),
        (np.zeros((0, 3)), ValueError, "no time points"),
        (np.array([["a", "b"]]), TypeError, "real numbers"),
    ],
)
def test_clean_refuses_bad_signals(signals, error, match):
    with pytest.raises(error, match=match):
        msignal.clean(signals)


def test_confounds_file_errors_name_the_file(tmp_path):
    short = tmp_path / "short.tsv"
    short.write_text("a\tb\n1\t2\n3\t4\n")
    with pytest.raises(ValueError, match=r"short\.tsv.*2 rows"):
        msignal.load_confounds_array(short, 5)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*line 3.*'b'.*'oops'"):
        msignal.load_confounds_array(bad, 2)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2\n3\n")
    with pytest.raises(ValueError, match=r"ragged\.csv.*line 2 has 1 columns"):
        msignal.load_confounds_array(ragged, 2)
    with pytest.raises(FileNotFoundError, match=r"missing\.tsv"):
        msignal.load_confounds_array(tmp_path / "missing.tsv", 2)
    with pytest.raises(TypeError, match="non-numeric columns: \\['label'\\]"):
        msignal.load_confounds_array(pd.DataFrame({"label": ["x", "y"]}), 2)


def test_butterworth_and_helpers_refuse_bad_input():
    with pytest.raises(ValueError, match="sampling_rate"):
        msignal.butterworth(np.zeros((50, 2)), 0, low_pass=0.1)
    with pytest.raises(ValueError, match="needs at least 19"):
        msignal.butterworth(np.zeros((18, 2)), 0.5, low_pass=0.1)
    with pytest.raises(ValueError, match="standardize='robust'"):
        msignal.standardize_signal(np.zeros((5, 2)), standardize="robust")
    with pytest.raises(ValueError, match="n_confounds"):
        msignal.high_variance_confounds(np.zeros((5, 20)), n_confounds=0)
    with pytest.raises(ValueError, match="percentile"):
        msignal.high_variance_confounds(np.zeros((5, 20)), percentile=120)


# --------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n_volumes=st.integers(8, 40),
    n_features=st.integers(1, 6),
    n_confounds=st.integers(1, 4),
)
def test_cleaned_signals_are_orthogonal_to_centered_confounds(
    data, n_volumes, n_features, n_confounds
):
    elements = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
    signals = data.draw(hnp.arrays(np.float64, (n_volumes, n_features), elements=elements))
    confounds = data.draw(hnp.arrays(np.float64, (n_volumes, n_confounds), elements=elements))
    out = msignal.clean(
        signals, detrend=False, standardize=False, confounds=confounds, filter=False
    )
    centered = confounds - confounds.mean(0)
    scale = (np.linalg.norm(centered, axis=0)[:, None] + 1) * (
        np.linalg.norm(signals, axis=0)[None, :] + 1
    )
    assert np.all(np.abs(centered.T @ out) <= 1e-8 * scale)


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from([np.float32, np.float64, np.int16]),
    n_volumes=st.integers(2, 30),
    n_features=st.integers(0, 5),
    n_censored=st.integers(0, 3),
    with_nan=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_clean_shapes_dtypes_and_zscore_properties(
    dtype, n_volumes, n_features, n_censored, with_nan, seed
):
    rng = np.random.default_rng(seed)
    signals = (rng.normal(size=(n_volumes, n_features)) * 50 + 100).astype(dtype)
    if with_nan and n_features and dtype != np.int16:
        signals[rng.integers(n_volumes), rng.integers(n_features)] = np.nan
    keep = np.sort(rng.choice(n_volumes, max(n_volumes - n_censored, 1), replace=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = msignal.clean(
            signals, standardize="zscore_sample", sample_mask=keep, ensure_finite=True
        )
    assert out.shape == (keep.size, n_features)
    assert out.dtype == (np.float32 if dtype == np.int16 else dtype)
    assert np.isfinite(out).all()
    if keep.size > 2 and n_features:
        np.testing.assert_allclose(out.mean(0), 0, atol=1e-4)
        std = out.std(0, ddof=1)
        assert np.all((np.abs(std - 1) < 1e-3) | (std < 1e-3))


def test_clean_warns_when_regressors_leave_no_degrees_of_freedom(rng):
    signals = rng.normal(size=(40, 10)).astype(np.float32)
    with pytest.warns(UserWarning, match="leave 0 degree"):
        msignal.clean(
            signals, confounds=rng.normal(size=(40, 38)), detrend=True, standardize=False
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        msignal.clean(signals, confounds=rng.normal(size=(40, 6)), detrend=True, standardize=False)


def test_cleaned_signals_do_not_depend_on_the_blas_threads():
    # --nprocs 2 runs each run on one thread, --nprocs 1 on two: a multi-threaded BLAS
    # product rounds differently, and the outputs differed in their last bit.
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    n = 200
    signals = rng.normal(size=(n, 40000)).astype(np.float32) + 100
    confounds = np.cumsum(rng.normal(size=(n, 26)), axis=0)
    kwargs = {
        "detrend": True,
        "standardize": "zscore_sample",
        "low_pass": 0.08,
        "high_pass": 0.01,
        "t_r": 2.0,
        "confounds": confounds,
    }
    results = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            results.append(msignal.clean(signals, **kwargs))
    np.testing.assert_array_equal(results[0], results[1])
