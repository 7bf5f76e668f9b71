"""--dummy-scans {auto,N}: fMRIPrep's non-steady-state columns or the first N volumes, removed
with or without a confound strategy, and recorded in the outputs."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from masker_wf.bids.confounds import dummy_scan_selection, select_confounds, strategy_parameters
from masker_wf.cli.run import main

REPO = Path(__file__).resolve().parent.parent
FMRIPREP = REPO / "bids_examples" / "ds-masker" / "derivatives" / "fmriprep"
FUNC = FMRIPREP / "sub-01" / "func"
CONFOUNDS = FUNC / "sub-01_task-rhymes_run-01_desc-confounds_timeseries.tsv"
STEM = "sub-01_task-rhymes_run-01_space-MNI152NLin2009cAsym_desc-denoised"


def test_auto_takes_fmripreps_non_steady_state_columns():
    table = pd.read_csv(CONFOUNDS, sep="\t")
    flagged = np.flatnonzero(table["non_steady_state_outlier00"].to_numpy() != 0)
    assert flagged.size  # the bundled runs have one
    selection = select_confounds(CONFOUNDS, **strategy_parameters("simple"))
    assert selection.dummy_scans["Requested"] == "auto"
    assert selection.dummy_scans["Volumes"] == flagged.tolist()
    np.testing.assert_array_equal(selection.kept, np.setdiff1d(np.arange(len(table)), flagged))


def test_a_number_replaces_the_columns_and_the_design_is_demeaned_over_what_is_kept():
    selection = select_confounds(CONFOUNDS, **strategy_parameters("simple"), dummy_scans=3)
    assert selection.kept[0] == 3
    assert selection.dummy_scans == {
        "Requested": 3,
        "Removed": 3,
        "Volumes": [0, 1, 2],
        "Source": "the first volumes (--dummy-scans)",
    }
    assert all(selection.censored[i] == ["dummy_scans"] for i in range(3))
    np.testing.assert_allclose(selection.confounds.iloc[3:].mean(), 0, atol=1e-12)
    # 0 keeps every volume, even those fMRIPrep flagged.
    assert (
        select_confounds(CONFOUNDS, **strategy_parameters("simple"), dummy_scans=0).sample_mask
        is None
    )


def test_without_a_confound_strategy():
    auto = dummy_scan_selection(40, "auto", CONFOUNDS)
    assert auto.columns == []
    assert auto.kept.tolist() == list(range(1, 40))
    assert dummy_scan_selection(40, "auto", None) is None  # no confounds file: nothing known
    assert dummy_scan_selection(40, 0, CONFOUNDS) is None
    assert dummy_scan_selection(40, 4).kept[0] == 4
    with pytest.raises(ValueError, match="would remove every one of the 40 volumes"):
        dummy_scan_selection(40, 40)
    with pytest.raises(ValueError, match="'auto' or an integer"):
        dummy_scan_selection(40, 2.5)


def test_the_app_removes_and_records_the_dummy_scans(tmp_path):
    out = tmp_path / "out"
    argv = [str(FMRIPREP), str(out), "participant", "--participant-label", "01"]
    argv += ["--run-id", "1", "-w", str(tmp_path / "w"), "--denoise-strategy", "none"]
    assert main([*argv, "--dummy-scans", "3", "--no-reports"]) == 0
    func = out / "sub-01" / "func"
    bold = json.loads((func / f"{STEM}_bold.json").read_text())
    assert bold["DummyScans"]["Removed"] == 3
    assert bold["KeptVolumeIndices"][0] == 3
    assert nib.load(func / f"{STEM}_bold.nii.gz").shape[3] == 37
    outliers = pd.read_csv(func / f"{STEM}_outliers.tsv", sep="\t", keep_default_na=False)
    assert outliers["reason"].iloc[:4].tolist() == ["dummy_scans"] * 3 + ["n/a"]
    assert not (func / f"{STEM}_timeseries.tsv").exists()  # no regressor, no design
    record = json.loads((func / f"{STEM}_provenance.json").read_text())
    assert record["DummyScans"]["Requested"] == 3
    assert record["DegreesOfFreedom"]["VolumesKept"] == 37

    # auto, still without a confound strategy: fMRIPrep's flagged volume only.
    assert main([*argv, "--no-reports"]) == 0
    bold = json.loads((func / f"{STEM}_bold.json").read_text())
    assert bold["DummyScans"] == {
        "Requested": "auto",
        "Removed": 1,
        "Volumes": [0],
        "Source": "fMRIPrep's non_steady_state_outlierXX confound columns",
    }
    summary = main([str(FMRIPREP), str(out), "group"])
    assert summary == 0
    table = pd.read_csv(out / "group" / "summary.tsv", sep="\t")
    assert table["dummy_scans"].tolist() == [1]


def test_dummy_scans_option_is_checked(tmp_path, capsys):
    argv = [str(FMRIPREP), str(tmp_path / "out"), "participant", "--dummy-scans", "-1"]
    assert main(argv) == 64
    assert "--dummy-scans/--dummy_scans: must be >= 0, got -1" in capsys.readouterr().err


def test_too_many_dummy_scans_without_confounds_blame_the_bold(tmp_path, capsys):
    argv = [str(FMRIPREP), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")]
    argv += ["--participant-label", "01", "--run-id", "01", "--no-reports"]
    assert main([*argv, "--denoise-strategy", "none", "--dummy-scans", "40"]) == 65
    failed = [line for line in capsys.readouterr().err.splitlines() if "FAILED on" in line]
    # Not the confounds table, which the strategy 'none' does not read.
    bold = FUNC / "sub-01_task-rhymes_run-01_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    assert f"FAILED on {bold}: --dummy-scans 40" in failed[0]


# --------------------------------------------------------------------------- ICA-AROMA
def test_ica_aroma_without_aroma_outputs_says_what_fmriprep_must_have_made(tmp_path, capsys):
    argv = [str(FMRIPREP), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")]
    assert main([*argv, "--denoise-strategy", "ica_aroma"]) == 66  # a required input is missing
    err = capsys.readouterr().err
    for fact in (
        "desc-smoothAROMAnonaggr_bold.nii.gz",  # the file --ica-aroma full reads
        "--use-aroma",
        "versions 1.2 to 23.0.x",
        "removed in fMRIPrep 23.1.0",
        "fMRIPost-AROMA",
        "aroma_motion_XX",  # what --ica-aroma basic reads instead
    ):
        assert fact in err, fact


def test_ica_aroma_basic_without_aroma_columns():
    params = {**strategy_parameters("ica_aroma"), "ica_aroma": "basic"}
    with pytest.raises(ValueError, match=r"no ICA-AROMA columns \(aroma_motion_XX\)") as info:
        select_confounds(CONFOUNDS, **params)
    assert "--use-aroma" in str(info.value)
