"""The degrees-of-freedom budget of signal.clean, checked against the rank of the operator that
clean() actually applies (clean run on an identity matrix), on small cases."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from masker_wf import signal
from masker_wf.bids.confounds import select_confounds, strategy_parameters

REPO = Path(__file__).resolve().parent.parent
CONFOUNDS = (
    REPO
    / "bids_examples/ds-masker/derivatives/fmriprep/sub-01/func"
    / "sub-01_task-rhymes_run-01_desc-confounds_timeseries.tsv"
)


def operator_rank(n_volumes, **kwargs):
    """Effective rank of clean()'s linear operator: directions kept with >= half amplitude.

    clean() is linear before standardization, so cleaning the identity gives its operator
    (kept volumes x volumes). Its output is centred: a mean, whether standardization removes
    it or the cleaning keeps it, holds no time course.
    """
    kwargs.pop("standardize", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        operator = signal.clean(np.eye(n_volumes), standardize=False, **kwargs)
    if operator.shape[0] > 1:
        operator = operator - operator.mean(axis=0)
    return int((np.linalg.svd(operator, compute_uv=False) >= 0.5).sum())


def _confounds(n_volumes, n_columns, seed):
    # Random walks: smooth like motion parameters, so some of their power is filtered out.
    return np.cumsum(np.random.default_rng(seed).normal(size=(n_volumes, n_columns)), axis=0)


SCRUBBED = np.setdiff1d(np.arange(60), [7, 8, 9, 30, 41, 42])
CASES = {
    "confounds and detrend": {"n": 40, "detrend": True, "confounds": _confounds(40, 6, 0)},
    "standardization removes the mean": {
        "n": 40,
        "detrend": False,
        "standardize": "zscore_sample",
        "confounds": _confounds(40, 5, 1),
    },
    # Demeaned confounds leave the mean in the signals: it is no degree of freedom (as many
    # regressors as kept volumes minus one used to be budgeted 1, for constant outputs).
    "confounds only, the mean kept": {
        "n": 30,
        "detrend": False,
        "standardize": False,
        "confounds": _confounds(30, 8, 5),
    },
    "scrubbing and confounds, the mean kept": {
        "n": 60,
        "detrend": False,
        "standardize": False,
        "confounds": _confounds(60, 8, 6),
        "sample_mask": SCRUBBED,
    },
    "cosine high-pass, the mean kept": {
        "n": 60,
        "detrend": False,
        "standardize": False,
        "filter": "cosine",
        "high_pass": 0.01,
        "t_r": 2.0,
        "confounds": _confounds(60, 4, 7),
    },
    "confounds spanning the mean, standardized": {
        "n": 30,
        "detrend": False,
        "standardize_confounds": False,
        "confounds": _confounds(30, 5, 8) + 3.0,
    },
    "confounds spanning the mean, the mean kept": {
        "n": 30,
        "detrend": False,
        "standardize": False,
        "standardize_confounds": False,
        "confounds": _confounds(30, 5, 9) + 3.0,
    },
    "scrubbing, no filter": {
        "n": 60,
        "detrend": True,
        "confounds": _confounds(60, 8, 2),
        "sample_mask": SCRUBBED,
    },
    "cosine high-pass and confounds": {
        "n": 60,
        "detrend": True,
        "filter": "cosine",
        "high_pass": 0.01,
        "t_r": 2.0,
        "confounds": _confounds(60, 4, 3),
    },
    "band-pass": {"n": 60, "detrend": True, "low_pass": 0.08, "high_pass": 0.01, "t_r": 2.0},
    "band-pass over scrubbed volumes": {
        "n": 60,
        "detrend": True,
        "low_pass": 0.08,
        "high_pass": 0.01,
        "t_r": 2.0,
        "sample_mask": SCRUBBED,
    },
    "high-pass without extrapolation": {
        "n": 60,
        "detrend": False,
        "high_pass": 0.02,
        "t_r": 1.5,
        "sample_mask": np.r_[3:55],
        "extrapolate": False,
    },
    "low-pass, standardized, order 3": {
        "n": 50,
        "detrend": False,
        "standardize": "zscore",
        "low_pass": 0.1,
        "t_r": 2.0,
        "butterworth__order": 3,
    },
    # A low-pass passes the constant: kept by the cleaning, the mean is no degree of
    # freedom there either (a budget of 1 was given to constant outputs).
    "low-pass and confounds, the mean kept": {
        "n": 40,
        "detrend": False,
        "standardize": False,
        "low_pass": 0.15,
        "t_r": 2.0,
        "confounds": _confounds(40, 6, 10),
    },
    "low-pass over scrubbed volumes, the mean kept": {
        "n": 60,
        "detrend": False,
        "standardize": False,
        "low_pass": 0.12,
        "t_r": 2.0,
        "sample_mask": SCRUBBED,
        "confounds": _confounds(60, 5, 11),
    },
    "low-pass, confounds spanning the mean, the mean kept": {
        "n": 40,
        "detrend": False,
        "standardize": False,
        "standardize_confounds": False,
        "low_pass": 0.15,
        "t_r": 2.0,
        "confounds": _confounds(40, 5, 12) + 3.0,
    },
    "band-pass, the mean kept": {
        "n": 60,
        "detrend": False,
        "standardize": False,
        "low_pass": 0.1,
        "high_pass": 0.02,
        "t_r": 2.0,
        "confounds": _confounds(60, 4, 13),
    },
    "band-pass, scrubbing and confounds": {
        "n": 60,
        "detrend": True,
        "low_pass": 0.1,
        "high_pass": 0.01,
        "t_r": 2.0,
        "sample_mask": SCRUBBED,
        "confounds": _confounds(60, 6, 4),
    },
}


@pytest.mark.parametrize("case", CASES)
def test_budget_is_the_rank_of_the_cleaning_operator(case):
    kwargs = dict(CASES[case])
    n_volumes = kwargs.pop("n")
    budget = signal.degrees_of_freedom(n_volumes, **kwargs)
    assert budget.exact
    n_kept = n_volumes if "sample_mask" not in kwargs else len(kwargs["sample_mask"])
    assert budget.n_kept == n_kept
    assert budget.budget == (budget.n_kept - budget.n_trend - budget.n_filter - budget.n_confounds)
    assert budget.budget == operator_rank(n_volumes, **kwargs)


def test_filter_and_regressors_are_counted_separately():
    kwargs = {"detrend": True, "low_pass": 0.08, "high_pass": 0.01, "t_r": 2.0}
    filtered = signal.degrees_of_freedom(60, **kwargs)
    # 0.01-0.08 Hz of the 0-0.25 Hz a 2 s repetition time resolves: about 28 % of 60.
    assert filtered.n_trend == 2
    assert 14 <= filtered.budget <= 18
    with_confounds = signal.degrees_of_freedom(60, confounds=_confounds(60, 6, 5), **kwargs)
    assert with_confounds.n_filter == filtered.n_filter
    assert with_confounds.n_confounds == 6
    assert with_confounds.budget == filtered.budget - 6
    cosine = signal.degrees_of_freedom(60, filter="cosine", high_pass=0.01, t_r=2.0)
    # DCT-II drifts up to 0.01 Hz: floor(2 * 60 * 0.01 * 2) = 2, counted as the filter's.
    assert (cosine.n_filter, cosine.n_confounds) == (2, 0)
    assert cosine.seconds_kept == 120.0


def test_the_readme_options_on_the_bundled_run_leave_nothing():
    """The issue's case: scrubbing (33 regressors, 35 volumes kept) plus a band-pass."""
    selection = select_confounds(CONFOUNDS, **strategy_parameters("scrubbing", fd_threshold=0.5))
    kwargs = {
        "confounds": selection.confounds.to_numpy(),
        "sample_mask": selection.sample_mask,
        "detrend": True,
        "standardize": "zscore_sample",
        "low_pass": 0.08,
        "high_pass": 0.01,
        "t_r": 2.0,
    }
    budget = signal.degrees_of_freedom(selection.n_volumes, **kwargs)
    assert (budget.n_kept, budget.n_confounds) == (35, 33)
    assert budget.budget < 0
    # The budget is a lower bound of the operator's rank: here at most one direction is left.
    assert budget.budget <= operator_rank(selection.n_volumes, **kwargs) <= 1


def test_budget_per_run_with_runs():
    runs = np.repeat([0, 1], 30)
    kept = [np.r_[0:30], np.r_[0:20]]
    budgets = signal.degrees_of_freedom(
        60, runs=runs, sample_mask=kept, detrend=True, confounds=_confounds(60, 3, 6)
    )
    assert [b.budget for b in budgets] == [30 - 2 - 3, 20 - 2 - 3]


def test_long_series_estimate_is_close_to_the_exact_count():
    rng = np.random.default_rng(7)
    for kept, low_pass, high_pass, detrend in (
        (None, 0.08, 0.01, True),
        (np.sort(rng.choice(400, 340, replace=False)), 0.08, 0.01, True),
        (None, 0.1, None, True),
        # A low-pass and neither detrending nor standardization: the mean is kept.
        (None, 0.1, None, False),
    ):
        kwargs = {"detrend": detrend, "low_pass": low_pass, "high_pass": high_pass, "t_r": 2.0}
        if not detrend:
            kwargs["standardize"] = False
        exact = signal.degrees_of_freedom(400, sample_mask=kept, **kwargs)
        estimate = signal.degrees_of_freedom(400, sample_mask=kept, _exact_max=0, **kwargs)
        assert exact.exact
        assert not estimate.exact
        assert abs(estimate.budget - exact.budget) <= max(2, 0.05 * exact.budget)


def test_clean_warns_with_the_budget_and_is_silent_with_enough_data(rng):
    signals = rng.normal(size=(40, 5))
    with pytest.warns(signal.FewDegreesOfFreedomWarning, match="leave 1 degree") as caught:
        signal.clean(
            signals,
            confounds=_confounds(40, 30, 8),
            low_pass=0.2,
            t_r=2.0,
            detrend=True,
            standardize="zscore_sample",
        )
    budget = caught[0].message.budget
    assert budget.budget == 40 - 30 - 2 - 7
    assert "30 independent confound regressor(s)" in str(caught[0].message)
    assert "dimension(s) removed by the temporal filter" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        signal.clean(signals, confounds=_confounds(40, 6, 9), detrend=True, standardize=False)


# --------------------------------------------------------------------------- the BIDS App
RAW = REPO / "bids_examples" / "ds-masker"
FMRIPREP = RAW / "derivatives" / "fmriprep"
README_OPTIONS = [
    "--denoise-strategy",
    "scrubbing",
    "--fd-threshold",
    "0.5",
    "--smoothing-fwhm",
    "6",
    "--detrend",
    "--standardize",
    "zscore_sample",
    "--low-pass",
    "0.08",
    "--high-pass",
    "0.01",
]


def _app(tmp_path, *options, name="out"):
    from masker_wf.cli.run import main

    out = tmp_path / name
    argv = [str(RAW), str(out), "participant", "--derivatives", f"fmriprep={FMRIPREP}"]
    code = main([*argv, "-w", str(tmp_path / "work"), *options])
    return code, out


def _group(out):
    from masker_wf.cli.run import main

    assert main([str(RAW), str(out), "group"]) == 0
    return pd.read_csv(out / "group" / "summary.tsv", sep="\t", dtype={"subject": str})


def test_the_readme_options_are_refused_on_the_terminal_and_flagged(tmp_path, capsys):
    code, out = _app(tmp_path, *README_OPTIONS)
    err = capsys.readouterr().err
    assert code == 65  # every run refused for its data
    assert err.count("refused, too little data left to clean: -22 degree(s) of freedom") == 6
    assert "(35 of 40 volumes kept (70 s), minus 33 independent confound regressor(s)" in err
    summary = _group(out)
    assert len(summary) == 4
    assert (summary["qc_flags"] == "refused").all()
    assert summary["dof"].tolist() == [-22, -22, -22, -17]
    assert summary["volumes_kept"].tolist() == [35, 35, 35, 29]
    index = (out / "index.html").read_text()
    assert index.count("refused") >= 4

    # Forced through (--min-dof below the budget), the run's tSNR shows what is left: noise.
    one_run = ["--participant-label", "01", "--run-id", "1", "--min-dof", "-30"]
    code, out = _app(tmp_path, *README_OPTIONS, *one_run, name="forced")
    assert code == 0
    assert "warning: few degrees of freedom: -22 degree(s)" in capsys.readouterr().err
    row = _group(out).iloc[0]
    assert row["qc_flags"] == "low_dof,tsnr_absurd"
    assert row["tsnr_after"] > 1000


def test_a_run_left_with_only_its_mean_is_refused(tmp_path, capsys):
    # Scrubbing keeps 29 volumes of sub-02's run 2 against 28 independent regressors: what
    # is left is the mean, a constant (it used to be budgeted 1 and written as a run).
    code, out = _app(
        tmp_path,
        "--denoise-strategy",
        "scrubbing",
        "--participant-label",
        "02",
        "--run-id",
        "2",
        "--smoothing-fwhm",
        "6",
    )
    assert code == 65
    err = capsys.readouterr().err
    assert "0 degree(s) of freedom left" in err
    assert not list((out / "sub-02" / "func").glob("*_bold.nii.gz"))
    row = _group(out).iloc[0]
    assert row["status"] == "failed"
    assert row["dof"] == 0
    assert "refused" in row["qc_flags"]


def test_few_degrees_of_freedom_warn_on_the_terminal_and_enough_pass_silently(tmp_path, capsys):
    one_run = ["--participant-label", "01", "--run-id", "1", "--motion", "basic"]
    # Scrubbing with 9 regressors on 35 volumes and the band-pass: 2 degrees of freedom left.
    code, out = _app(tmp_path, *README_OPTIONS, *one_run, "--wm-csf", "basic")
    err = capsys.readouterr().err
    assert code == 0
    assert "warning: few degrees of freedom: 2 degree(s) of freedom left" in err
    assert "below --warn-dof 20" in err
    row = _group(out).iloc[0]
    assert row["dof"] == 2
    assert "low_dof" in row["qc_flags"]
    func = out / "sub-01" / "func"
    stem = "sub-01_task-rhymes_run-01_space-MNI152NLin2009cAsym_desc-denoised"
    sidecar = json.loads((func / f"{stem}_bold.json").read_text())
    assert sidecar["DegreesOfFreedom"]["Remaining"] == 2
    assert sidecar["DegreesOfFreedom"]["SecondsKept"] == 70.0
    record = json.loads((func / f"{stem}_provenance.json").read_text())
    assert any("few degrees of freedom" in w for w in record["Warnings"])
    report = (out / "sub-01" / "figures" / f"{stem}_report.html").read_text()
    assert "few degrees of freedom" in report

    # 9 regressors, no filter, 39 volumes, the mean kept: 29 degrees of freedom, nothing
    # to say.
    code, out = _app(tmp_path, "--denoise-strategy", "simple", *one_run, name="enough")
    err = capsys.readouterr().err
    assert code == 0
    assert "warning" not in err.lower()
    row = _group(out).iloc[0]
    assert row["dof"] == 29
    assert pd.isna(row["qc_flags"])  # n/a: nothing to flag


def test_min_time_refuses_runs_with_too_few_seconds_and_the_others_go_on(tmp_path, capsys):
    scrubbing = ["--denoise-strategy", "scrubbing", "--fd-threshold", "0.5", "--motion", "basic"]
    options = [*scrubbing, "--participant-label", "02", "--min-time", "65", "--no-reports"]
    code, out = _app(tmp_path, *options)
    err = capsys.readouterr().err
    assert code == 1  # one run refused (58 s left), one processed (70 s)
    assert "58 s of data left after censoring, below --min-time 65 s" in err
    summary = _group(out).set_index("run")
    assert summary.loc[2, "qc_flags"] == "refused"
    assert summary.loc[1, "status"] == "ok"
    code, _ = _app(tmp_path, *options, "--run-id", "2", name="alone")
    assert code == 65


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"detrend": True},
        {"standardize": "zscore_sample"},
        {"confounds": _confounds(40, 2, 14)},
    ],
)
def test_a_single_kept_volume_leaves_nothing(options):
    # Its value is its mean: it used to be budgeted 1 (and written) without detrending.
    budget = signal.degrees_of_freedom(40, sample_mask=[39], **options)
    assert budget.n_kept == 1
    assert budget.budget <= 0


def test_the_app_refuses_a_run_left_with_one_volume(tmp_path, capsys):
    from masker_wf.cli.run import main

    fmriprep = REPO / "bids_examples/ds-masker/derivatives/fmriprep"
    out = tmp_path / "out"
    argv = [str(fmriprep), str(out), "participant", "-w", str(tmp_path / "w"), "--no-reports"]
    argv += ["--participant-label", "01", "--run-id", "01", "--denoise-strategy", "none"]
    assert main([*argv, "--dummy-scans", "39"]) == 65
    assert "0 degree(s) of freedom" in capsys.readouterr().err
    assert not list(out.glob("sub-01/func/*_bold.nii.gz"))
