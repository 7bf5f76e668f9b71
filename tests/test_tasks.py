"""File-based steps (masker_wf._steps) and their Pydra tasks (masker_wf.tasks).

Each step must give the numbers of the in-memory NiftiMasker, write its output
atomically, and fail naming the step and the input file, leaving no output behind:
a bad input raises the estimator's exception (same class and message) with ``step``
and ``file`` set, any other failure a StepError.
"""

import os
import pickle
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
from pydra.engine.submitter import Submitter

from masker_wf import NiftiMasker, _steps, tasks
from masker_wf._exceptions import DimensionError, SampleMaskError
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
    with pytest.raises(SampleMaskError) as caught:
        _steps.clean_signals(ds003_path, ds003_mask_path, out, sample_mask=[0, 1, 25])
    assert (caught.value.step, caught.value.file) == ("clean_signals", str(ds003_path))
    assert out.read_bytes() == b"previous"
    assert _files(tmp_path) == ["signals.npy"]


def test_bad_input_gives_the_estimators_exception_with_step_and_file(
    tmp_path, ds003_path, ds003_mask_path
):
    image_2d = tmp_path / "image_2d.nii"
    nib.Nifti1Image(np.ones((5, 5), dtype=np.float32), np.eye(4)).to_filename(image_2d)
    cases = [
        # (estimator call, step call, file at fault)
        (
            lambda: NiftiMasker(mask_img=ds003_mask_path).fit_transform(image_2d),
            lambda: _steps.clean_signals(image_2d, ds003_mask_path, tmp_path / "s.npy"),
            image_2d,
        ),
        (
            lambda: NiftiMasker(mask_img=image_2d).fit_transform(ds003_path),
            lambda: _steps.clean_signals(ds003_path, image_2d, tmp_path / "s.npy"),
            image_2d,
        ),
        (
            lambda: NiftiMasker(mask_img=ds003_mask_path).fit_transform(
                ds003_path, sample_mask=[3, 99]
            ),
            lambda: _steps.clean_signals(
                ds003_path, ds003_mask_path, tmp_path / "s.npy", sample_mask=[3, 99]
            ),
            ds003_path,
        ),
    ]
    for estimator, step, at_fault in cases:
        with pytest.raises((TypeError, ValueError)) as expected:
            estimator()
        with pytest.raises((TypeError, ValueError)) as caught:
            step()
        assert type(caught.value) is type(expected.value)
        assert str(caught.value) == str(expected.value)
        assert caught.value.step == "clean_signals"
        assert caught.value.file == str(at_fault)
    assert isinstance(caught.value, SampleMaskError)
    assert _files(tmp_path) == ["image_2d.nii"]


def test_resample_and_smooth_refuse_a_2d_image_with_a_dimension_error(tmp_path):
    image_2d = tmp_path / "image_2d.nii"
    nib.Nifti1Image(np.ones((5, 5), dtype=np.float32), np.eye(4)).to_filename(image_2d)
    for step, kwargs in (
        (_steps.smooth, {"fwhm": 4}),
        (_steps.resample, {"target_shape": [4] * 3}),
    ):
        with pytest.raises(DimensionError, match="image_2d") as caught:
            step(image_2d, tmp_path / "out.nii", **kwargs)
        assert caught.value.file == str(image_2d)
    assert _files(tmp_path) == ["image_2d.nii"]


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
    original = StepError("smooth", "/data/bold.nii", "bad fwhm")
    original.add_note("a note")
    error = pickle.loads(pickle.dumps(original))
    assert (error.step, error.file, error.reason) == ("smooth", "/data/bold.nii", "bad fwhm")
    assert error.input_file == error.file
    assert error.__notes__ == ["a note"]
    assert str(error) == str(original)


def test_recorded_error_comes_back_with_class_message_and_attributes(tmp_path):
    # DimensionError's __init__ does not take its message: pickle alone cannot rebuild it.
    error = DimensionError(2, 4, "imgs 'bold.nii'")
    error.step, error.file = "clean_signals", "/data/bold.nii"
    _steps.record_error(error, tmp_path)
    loaded = _steps.load_error(tmp_path)
    assert type(loaded) is DimensionError
    assert str(loaded) == str(error)
    assert (loaded.step, loaded.file, loaded.file_dimension) == (
        "clean_signals",
        "/data/bold.nii",
        2,
    )
    assert _steps.load_error(tmp_path / "elsewhere") is None


def test_call_step_records_the_failure_and_removes_a_stale_record(
    tmp_path, ds003_path, ds003_mask_path
):
    with pytest.raises(SampleMaskError):
        _steps.call_step(
            _steps.clean_signals,
            tmp_path,
            ds003_path,
            ds003_mask_path,
            tmp_path / "s.npy",
            sample_mask=[5, 1],
        )
    assert isinstance(_steps.load_error(tmp_path), SampleMaskError)
    _steps.call_step(_steps.smooth, tmp_path, ds003_path, tmp_path / "s.nii", fwhm=4.0)
    assert _steps.load_error(tmp_path) is None


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
        pytest.raises(SampleMaskError, match=r"invalid index out of range \[99\]") as caught,
        Submitter(cache_root=tmp_path / "cache", worker="debug") as submitter,
    ):
        submitter(task)
    assert (caught.value.step, caught.value.file) == ("clean_signals", str(ds003_path))
    job_dirs = [d for d in (tmp_path / "cache").iterdir() if d.name.startswith("python-")]
    assert len(job_dirs) == 1
    assert not any(p.suffix == ".npy" or ".tmp" in p.name for p in job_dirs[0].iterdir())
    # The task left the exception in its cache directory, for the runners.
    recorded = _steps.load_error(job_dirs[0])
    assert type(recorded) is SampleMaskError
    assert str(recorded) == str(caught.value)


def _segmented_hash(fileset) -> bytes:
    """What the segmented serializer feeds Pydra's hash, without registering it."""
    return b"".join(
        chunk for chunk in tasks._bytes_repr_segmented(fileset, None) if isinstance(chunk, bytes)
    )


def test_segmented_hash_covers_every_byte_and_ignores_the_path(tmp_path, monkeypatch):
    from fileformats.medimage import Nifti1

    monkeypatch.setattr(tasks, "_HASH_SEGMENT_BYTES", 4096)  # several segments, small file
    data = np.random.default_rng(0).normal(size=(10, 10, 10, 8)).astype(np.float32)
    first, copy, changed = tmp_path / "a.nii", tmp_path / "sub" / "a.nii", tmp_path / "c.nii"
    copy.parent.mkdir()
    nib.Nifti1Image(data, np.eye(4)).to_filename(first)
    copy.write_bytes(first.read_bytes())
    edited = bytearray(first.read_bytes())
    edited[-1000] ^= 1  # one bit in the last segment
    changed.write_bytes(bytes(edited))
    assert _segmented_hash(Nifti1(first)) == _segmented_hash(Nifti1(copy))
    assert _segmented_hash(Nifti1(first)) != _segmented_hash(Nifti1(changed))
    # Same content, different format class: different hash, as in stock Pydra.
    assert _segmented_hash(Nifti1(first)) != _segmented_hash(tasks.Signals(first))


_STOCK_HASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path

    import nibabel as nib
    import numpy as np
    from fileformats.medimage import NiftiGz
    from pydra.compose import python

    def copy_image(in_file: NiftiGz) -> NiftiGz:
        return in_file

    CopyImage = python.define(copy_image)
    image = Path(sys.argv[1])
    nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5), np.eye(4)).to_filename(
        image
    )

    def checksum():
        return CopyImage(in_file=image)._checksum

    before = checksum()
    import masker_wf.tasks

    after_import = checksum()
    masker_wf.tasks.use_segmented_hash()
    print(before, after_import, checksum())
    """
)


def test_importing_tasks_leaves_stock_pydra_hashes_alone(tmp_path):
    # A fresh process: this test process may already have opted in.
    env = {**os.environ, "PYDRA_HASH_CACHE": str(tmp_path / "hashes")}
    done = subprocess.run(
        [sys.executable, "-c", _STOCK_HASH_SCRIPT, str(tmp_path / "image.nii.gz")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    before, after_import, after_opt_in = done.stdout.split()
    assert after_import == before
    # The opt-in does change it (so the comparison above can see a change).
    assert after_opt_in != before


@pytest.mark.parametrize("n_volumes", [1, 16, 37])
def test_unmask_streams_the_same_bytes_as_nibabel(tmp_path, ds003_mask_path, n_volumes):
    from masker_wf.masking import unmask

    signals = np.random.default_rng(n_volumes).normal(size=(n_volumes, 1065)).astype(np.float32)
    signals_file = tmp_path / "signals.npy"
    np.save(signals_file, signals)
    streamed = _steps.unmask(signals_file, ds003_mask_path, tmp_path / "streamed.nii")
    unmask(signals, ds003_mask_path).to_filename(tmp_path / "reference.nii")
    assert streamed.read_bytes() == (tmp_path / "reference.nii").read_bytes()
