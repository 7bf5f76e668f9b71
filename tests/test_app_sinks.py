"""Each run's derivatives are written by DerivativesSink nodes of its derivatives workflow,
straight from the masker workflow's uncompressed images, never from a stale cache."""

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from masker_wf.cli.run import main
from masker_wf.masking import unmask

REPO = Path(__file__).resolve().parent.parent
FMRIPREP = REPO / "bids_examples" / "ds-masker" / "derivatives" / "fmriprep"
SPACE = "MNI152NLin2009cAsym"
STEM = f"sub-01_task-rhymes_run-01_space-{SPACE}_desc-denoised"


@pytest.fixture
def one_run(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [str(FMRIPREP), str(out), "participant", "--participant-label", "01"]
    argv += ["--run-id", "1", "-w", str(work), "--no-reports", "--save-signals"]
    argv += ["--smoothing-fwhm", "8", "--detrend"]
    assert main(argv) == 0
    return {"argv": argv, "out": out, "work": work, "func": out / "sub-01" / "func"}


def test_cleaned_bold_is_the_workflow_image_with_the_input_header(one_run):
    func, work = one_run["func"], one_run["work"]
    provenance = json.loads((func / f"{STEM}_provenance.json").read_text())
    (workflow_dir,) = provenance["Pydra"]["output_dirs"]
    # The cache keeps the signals only; the cleaned BOLD is written once, from them.
    assert not list((work / "sub-01" / "pydra").rglob("cleaned_bold.nii*"))
    signals = np.load(work / "sub-01" / "pydra" / workflow_dir / "signals.npy")
    cached = unmask(signals, nib.load(func / f"{STEM}_mask.nii.gz"))
    written = nib.load(func / f"{STEM}_bold.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(cached.dataobj))
    np.testing.assert_allclose(written.affine, cached.affine)
    source = nib.load(
        FMRIPREP
        / "sub-01/func"
        / f"sub-01_task-rhymes_run-01_space-{SPACE}_desc-preproc_bold.nii.gz"
    ).header
    assert written.header.get_xyzt_units() == ("mm", "sec")
    assert written.header.get_zooms()[3] == 2.0  # the RepetitionTime, not the cache's 1.0
    assert int(written.header["sform_code"]) == int(source["sform_code"])
    # One standard gzip stream over the NIfTI bytes (any reader opens it).
    with gzip.open(func / f"{STEM}_bold.nii.gz") as stream:
        assert stream.read(348)[344:348] == b"n+1\0"
    # The signals are the workflow's file, byte for byte; each file has its sidecar.
    assert (func / f"{STEM}_signals.npy").read_bytes() == (
        work / "sub-01" / "pydra" / workflow_dir / "signals.npy"
    ).read_bytes()
    for suffix in ("bold", "mask", "signals", "timeseries", "outliers"):
        assert json.loads((func / f"{STEM}_{suffix}.json").read_text())
    # The derivatives workflow's own cache and staged tables are gone.
    assert not any((work / "sub-01" / "derivatives").iterdir())


def test_deleted_output_is_written_again(one_run):
    func = one_run["func"]
    bold = func / f"{STEM}_bold.nii.gz"
    expected = gzip.decompress(bold.read_bytes())
    bold.unlink()
    (func / f"{STEM}_outliers.json").unlink()
    assert main(one_run["argv"]) == 0
    assert gzip.decompress(bold.read_bytes()) == expected
    assert (func / f"{STEM}_outliers.json").is_file()


def test_failed_sink_fails_the_run_and_leaves_no_partial_file(one_run, capsys):
    func = one_run["func"]
    for path in func.iterdir():
        path.unlink()
    # A directory where the mask must go: its sink cannot write it, an output-side failure.
    (func / f"{STEM}_mask.nii.gz").mkdir()
    assert main(one_run["argv"]) == 73
    err = capsys.readouterr().err
    assert f"{STEM}_mask.nii.gz" in err
    assert not list(func.glob(".*tmp*"))
    assert not (func / f"{STEM}_provenance.json").exists()  # written last, only on success
