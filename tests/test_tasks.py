"""File-based steps (masker_wf._steps) and their Pydra tasks (masker_wf.tasks).

Each step must give the numbers of the in-memory NiftiMasker, write its output
atomically, and fail with a StepError naming the step and the input file,
leaving no output behind.
"""

import pickle

import nibabel as nib
import numpy as np
import pytest
from pydra.engine.submitter import Submitter

from masker_wf import NiftiMasker, _steps, tasks
from masker_wf._io import load_signals
from masker_wf._steps import StepError

CLEANING = {
    "smoothing_fwhm": 5.0,
    "detrend": True,
    "standardize": "zscore_sample",
    "low_pass": 0.2,
    "high_pass": 0.02,
    "t_r": 2.0,
    # 20 volumes are too few for the default Butterworth padding (3 * (2 * order + 1)).
    "clean_args": {"butterworth__padlen": 6},
}


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def confounds_tsv(tmp_path_factory):
    """A 20-row, 3-column confounds table with a header, as fMRIPrep writes them."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=(20, 3))
    path = tmp_path_factory.mktemp("confounds") / "confounds.tsv"
    lines = ["trans_x\ttrans_y\trot_z"] + ["\t".join(f"{v:.6f}" for v in row) for row in values]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def synthetic_files(tmp_path_factory, synthetic_bold):
    bold, mask = synthetic_bold
    directory = tmp_path_factory.mktemp("synthetic")
    bold_path, mask_path = directory / "bold.nii.gz", directory / "mask.nii.gz"
    bold.to_filename(bold_path)
    mask.to_filename(mask_path)
    return bold_path, mask_path


def test_compute_mask_matches_niftimasker_fit(tmp_path, functional_path):
    out = _steps.compute_mask([functional_path], tmp_path / "mask.nii")
    expected = NiftiMasker().fit(functional_path).mask_img_
    mask = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj) > 0, expected.get_fdata() > 0)
    np.testing.assert_allclose(mask.affine, expected.affine)
    assert _files(tmp_path) == ["mask.nii"]


def test_clean_signals_and_unmask_match_niftimasker(
    tmp_path, ds003_path, ds003_mask_path, confounds_tsv
):
    keep = [i for i in range(20) if i not in (3, 4, 11)]
    params = dict(CLEANING)
    signals_file = _steps.clean_signals(
        ds003_path,
        ds003_mask_path,
        tmp_path / "signals.npy",
        confounds_file=confounds_tsv,
        sample_mask=keep,
        clean_kwargs=params.pop("clean_args"),
        **params,
    )
    masker = NiftiMasker(mask_img=ds003_mask_path, **CLEANING)
    expected = masker.fit_transform(ds003_path, confounds=confounds_tsv, sample_mask=keep)
    signals = load_signals(signals_file)
    assert signals.dtype == np.float32
    assert signals.shape == (17, 1065)
    np.testing.assert_array_equal(signals, expected)

    cleaned = _steps.unmask(signals_file, ds003_mask_path, tmp_path / "cleaned.nii.gz")
    expected_img = masker.inverse_transform(expected)
    np.testing.assert_array_equal(nib.load(cleaned).get_fdata(), expected_img.get_fdata())
    np.testing.assert_allclose(nib.load(cleaned).affine, expected_img.affine)
    assert _files(tmp_path) == ["cleaned.nii.gz", "signals.npy"]


def test_resample_and_smooth_match_core_ops(tmp_path, synthetic_files):
    from masker_wf.image import resample_img, smooth_img

    bold_path, mask_path = synthetic_files
    affine = np.diag([4.0, 4.0, 4.0])
    out = _steps.resample(bold_path, tmp_path / "r.nii", target_affine=affine)
    expected = resample_img(nib.load(bold_path), target_affine=affine)
    np.testing.assert_array_equal(nib.load(out).get_fdata(), expected.get_fdata())
    out = _steps.resample(
        mask_path, tmp_path / "m.nii", reference_file=out, interpolation="nearest"
    )
    assert nib.load(out).shape == nib.load(tmp_path / "r.nii").shape[:3]
    out = _steps.smooth(bold_path, tmp_path / "s.nii", fwhm=6.0)
    np.testing.assert_array_equal(
        nib.load(out).get_fdata(), smooth_img(nib.load(bold_path), 6.0).get_fdata()
    )


def test_failing_step_names_step_and_file_and_leaves_no_output(tmp_path, ds003_path):
    broken = tmp_path / "broken.nii"
    broken.write_bytes(b"not a nifti file at all")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(StepError, match=r"clean_signals.*broken\.nii") as info:
        _steps.clean_signals(broken, ds003_path, out_dir / "signals.npy")
    assert info.value.step == "clean_signals"
    assert isinstance(info.value, ValueError)
    assert _files(out_dir) == []


def test_failure_inside_core_op_leaves_previous_output_untouched(
    tmp_path, ds003_path, ds003_mask_path
):
    out = tmp_path / "signals.npy"
    out.write_bytes(b"previous")
    # Index 25 does not exist in a 20-volume run: the core refuses it after reading the data.
    with pytest.raises(StepError, match=r"clean_signals.*ds003_sub-01_mc\.nii\.gz"):
        _steps.clean_signals(ds003_path, ds003_mask_path, out, sample_mask=[0, 1, 25])
    assert out.read_bytes() == b"previous"
    assert _files(tmp_path) == ["signals.npy"]


def test_unmask_checks_signals_against_mask(tmp_path, ds003_mask_path):
    signals = tmp_path / "signals.npy"
    np.save(signals, np.zeros((4, 10), dtype=np.float32))
    with pytest.raises(StepError, match=r"unmask.*signals\.npy.*1065 voxels"):
        _steps.unmask(signals, ds003_mask_path, tmp_path / "out.nii")
    assert not (tmp_path / "out.nii").exists()


def test_missing_input_and_output_directory_are_reported(tmp_path, ds003_path):
    with pytest.raises(StepError, match=r"smooth.*nothere\.nii.*does not exist"):
        _steps.smooth(tmp_path / "nothere.nii", tmp_path / "s.nii", fwhm=4)
    with pytest.raises(StepError, match="output directory"):
        _steps.smooth(ds003_path, tmp_path / "missing_dir" / "s.nii", fwhm=4)
    with pytest.raises(StepError, match="target_affine"):
        _steps.resample(ds003_path, tmp_path / "r.nii")


def test_step_error_survives_pickling():
    # The cf worker sends exceptions between processes.
    error = pickle.loads(pickle.dumps(StepError("smooth", "/data/bold.nii", "bad fwhm")))
    assert (error.step, error.input_file, error.reason) == ("smooth", "/data/bold.nii", "bad fwhm")
    assert "smooth" in str(error)
    assert "/data/bold.nii" in str(error)


def test_tasks_run_in_pydra_and_call_the_steps(tmp_path, ds003_path, ds003_mask_path):
    with Submitter(cache_root=tmp_path / "cache", worker="debug") as submitter:
        mask = submitter(tasks.ComputeMask(bold_files=[ds003_path])).outputs.mask_file
        signals = submitter(
            tasks.CleanSignals(
                bold_file=ds003_path, mask_file=ds003_mask_path, detrend=True, t_r=2.0
            )
        ).outputs.signals_file
        cleaned = submitter(
            tasks.Unmask(signals_file=signals, mask_file=ds003_mask_path, out_suffix=".nii.gz")
        ).outputs.out_file
        smoothed = submitter(tasks.Smooth(in_file=ds003_path, fwhm=4.0)).outputs.out_file
        resampled = submitter(
            tasks.Resample(in_file=ds003_mask_path, reference_file=mask, interpolation="nearest")
        ).outputs.out_file
    assert isinstance(signals, tasks.Signals)
    assert str(signals).endswith("signals.npy")
    assert str(mask).endswith("mask.nii")
    assert str(cleaned).endswith("cleaned_bold.nii.gz")
    expected_mask = NiftiMasker().fit(ds003_path).mask_img_
    np.testing.assert_array_equal(nib.load(mask).get_fdata(), expected_mask.get_fdata())
    expected = NiftiMasker(mask_img=ds003_mask_path, detrend=True, t_r=2.0).fit_transform(
        ds003_path
    )
    np.testing.assert_array_equal(load_signals(signals), expected)
    assert nib.load(cleaned).shape == (16, 16, 9, 20)
    assert nib.load(smoothed).shape == (16, 16, 9, 20)
    assert nib.load(resampled).shape == (16, 16, 9)


def test_task_failure_names_step_and_file(tmp_path, ds003_path, ds003_mask_path):
    task = tasks.CleanSignals(bold_file=ds003_path, mask_file=ds003_mask_path, sample_mask=[99])
    with (
        pytest.raises(StepError, match=r"clean_signals.*ds003_sub-01_mc\.nii\.gz"),
        Submitter(cache_root=tmp_path / "cache", worker="debug") as submitter,
    ):
        submitter(task)
    job_dirs = [d for d in (tmp_path / "cache").iterdir() if d.name.startswith("python-")]
    assert len(job_dirs) == 1
    assert not any(p.suffix == ".npy" or ".tmp" in p.name for p in job_dirs[0].iterdir())


def test_file_hash_covers_every_byte_and_ignores_the_path(tmp_path, monkeypatch):
    from fileformats.medimage import Nifti1
    from pydra.utils.hash import hash_function

    monkeypatch.setenv("PYDRA_HASH_CACHE", str(tmp_path / "hashes"))
    monkeypatch.setattr(tasks, "_HASH_SEGMENT_BYTES", 4096)  # several segments, small file
    data = np.random.default_rng(0).normal(size=(10, 10, 10, 8)).astype(np.float32)
    first, copy, changed = tmp_path / "a.nii", tmp_path / "sub" / "a.nii", tmp_path / "c.nii"
    copy.parent.mkdir()
    nib.Nifti1Image(data, np.eye(4)).to_filename(first)
    copy.write_bytes(first.read_bytes())
    edited = bytearray(first.read_bytes())
    edited[-1000] ^= 1  # one bit in the last segment
    changed.write_bytes(bytes(edited))
    assert hash_function(Nifti1(first)) == hash_function(Nifti1(copy))
    assert hash_function(Nifti1(first)) != hash_function(Nifti1(changed))
    # Same content, different format class: different hash, as in stock Pydra.
    assert hash_function(Nifti1(first)) != hash_function(tasks.Signals(first))


@pytest.mark.parametrize("n_volumes", [1, 16, 37])
def test_unmask_streams_the_same_bytes_as_nibabel(tmp_path, ds003_mask_path, n_volumes):
    from masker_wf.masking import unmask

    signals = np.random.default_rng(n_volumes).normal(size=(n_volumes, 1065)).astype(np.float32)
    signals_file = tmp_path / "signals.npy"
    np.save(signals_file, signals)
    streamed = _steps.unmask(signals_file, ds003_mask_path, tmp_path / "streamed.nii")
    unmask(signals, ds003_mask_path).to_filename(tmp_path / "reference.nii")
    assert streamed.read_bytes() == (tmp_path / "reference.nii").read_bytes()
