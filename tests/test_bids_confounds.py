"""Confound selection: parity with nilearn 0.11.1 load_confounds_strategy on fMRIPrep files."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from nilearn.interfaces.fmriprep import load_confounds, load_confounds_strategy

from masker_wf.bids.confounds import (
    load_strategy_file,
    scrub_volumes,
    select_confounds,
    strategy_parameters,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "bids_examples" / "ds-masker"
FMRIPREP = EXAMPLE / "derivatives" / "fmriprep"
BOLDS = sorted(FMRIPREP.glob("sub-*/func/*_desc-preproc_bold.nii.gz"))


def _confounds_tsv(bold: Path) -> Path:
    return bold.with_name(bold.name.split("_space-")[0] + "_desc-confounds_timeseries.tsv")


def _nilearn(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _assert_same(selection, nilearn_confounds, nilearn_mask):
    assert selection.columns == list(nilearn_confounds.columns)
    if nilearn_confounds.size:
        np.testing.assert_allclose(
            selection.confounds.to_numpy(), nilearn_confounds.to_numpy(), rtol=1e-12, atol=1e-12
        )
    if nilearn_mask is None:
        assert selection.sample_mask is None
    else:
        np.testing.assert_array_equal(selection.sample_mask, nilearn_mask)


CASES = [
    ("simple", {}),
    ("simple", {"global_signal": "full", "motion": "basic", "wm_csf": "derivatives"}),
    ("scrubbing", {}),
    ("scrubbing", {"fd_threshold": 0.5, "std_dvars_threshold": 1.5, "scrub": 0}),
    ("scrubbing", {"fd_threshold": 0.08, "scrub": 5}),
    ("compcor", {}),
    ("compcor", {"compcor": "temporal_anat_combined", "n_compcor": 3}),
    ("compcor", {"compcor": "anat_separated", "n_compcor": "all"}),
    ("compcor", {"compcor": "temporal"}),
]


def test_example_has_fmriprep_columns():
    import pandas as pd

    table = pd.read_csv(_confounds_tsv(BOLDS[0]), sep="\t", na_values="n/a")
    for column in [
        "trans_x", "rot_z_derivative1_power2", "framewise_displacement", "std_dvars", "dvars",
        "global_signal", "csf", "white_matter_power2", "a_comp_cor_00", "t_comp_cor_00",
        "cosine00", "non_steady_state_outlier00", "motion_outlier00",
    ]:  # fmt: skip
        assert column in table.columns
    assert np.isnan(table["framewise_displacement"][0])
    assert len(BOLDS) == 4


@pytest.mark.parametrize(("strategy", "options"), CASES)
@pytest.mark.parametrize("bold", BOLDS[::3], ids=lambda p: p.name[:24])
def test_parity_with_nilearn_strategy(bold, strategy, options):
    expected, expected_mask = _nilearn(load_confounds_strategy, str(bold), strategy, **options)
    selection = select_confounds(_confounds_tsv(bold), **strategy_parameters(strategy, **options))
    _assert_same(selection, expected, expected_mask)


def test_parity_every_run_scrubbing():
    for bold in BOLDS:
        expected, mask = _nilearn(load_confounds_strategy, str(bold), "scrubbing")
        _assert_same(
            select_confounds(_confounds_tsv(bold), **strategy_parameters("scrubbing")),
            expected,
            mask,
        )


def test_parity_load_confounds_free_strategy():
    bold = BOLDS[1]
    kwargs = {"strategy": ("motion", "global_signal", "scrub"), "motion": "power2",
              "global_signal": "basic", "scrub": 3, "fd_threshold": 0.3,
              "std_dvars_threshold": 2.0, "demean": False}  # fmt: skip
    expected, mask = _nilearn(load_confounds, str(bold), **kwargs)
    _assert_same(select_confounds(_confounds_tsv(bold), **kwargs), expected, mask)


def test_parity_ica_aroma(tmp_path):
    # nilearn wants the AROMA-denoised image name for the 'full' ICA-AROMA strategy.
    bold = BOLDS[0]
    func = tmp_path / "func"
    func.mkdir()
    aroma = func / bold.name.replace("desc-preproc", "desc-smoothAROMAnonaggr")
    shutil.copy(bold, aroma)
    tsv = _confounds_tsv(bold)
    shutil.copy(tsv, func / tsv.name)
    shutil.copy(tsv.with_suffix(".json"), func / tsv.with_suffix(".json").name)
    expected, mask = _nilearn(load_confounds_strategy, str(aroma), "ica_aroma")
    _assert_same(select_confounds(func / tsv.name, **strategy_parameters("ica_aroma")),
                 expected, mask)  # fmt: skip


def test_scrub_volumes_segments():
    fd = np.zeros(30)
    fd[[2, 10, 13, 27]] = 1.0
    censored = scrub_volumes(fd, np.zeros(30), fd_threshold=0.5, std_dvars_threshold=3, scrub=5)
    # 0-1 (short start), 2, 10-13 (gap of 2 < 5), 27-29 (short end)
    np.testing.assert_array_equal(censored, [0, 1, 2, 10, 11, 12, 13, 27, 28, 29])


def test_reasons_and_kept():
    selection = select_confounds(_confounds_tsv(BOLDS[0]), **strategy_parameters("scrubbing"))
    assert selection.censored[0][0] == "non_steady_state"
    assert any("fd" in r or "std_dvars" in r for rs in selection.censored.values() for r in rs)
    assert len(selection.kept) == 40 - len(selection.censored)


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad_desc-confounds_timeseries.tsv"
    bad.write_text("trans_x\n0.1\n")
    with pytest.raises(ValueError, match=r"bad_desc-confounds_timeseries\.tsv"):
        select_confounds(bad, **strategy_parameters("simple"))
    with pytest.raises(ValueError, match="does not exist"):
        select_confounds(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="does not use"):
        strategy_parameters("compcor", fd_threshold=0.5)
    with pytest.raises(ValueError, match="denoise_strategy"):
        strategy_parameters("aggressive")


def test_custom_strategy_file(tmp_path):
    path = tmp_path / "strategy.json"
    path.write_text(
        '{"name": "mine", "function": "load_confounds", "parameters": '
        '{"strategy": ["motion", "high_pass"], "motion": "basic"}, "columns": ["csf"]}'
    )
    custom = load_strategy_file(path)
    assert custom["denoise_strategy"] is None
    columns = custom.pop("columns")
    custom.pop("denoise_strategy")
    selection = select_confounds(
        _confounds_tsv(BOLDS[0]), **strategy_parameters(None, **custom), columns=columns
    )
    assert selection.columns == sorted(
        ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "cosine00", "csf"]
    )
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"strategy\.json"):
        load_strategy_file(path)
