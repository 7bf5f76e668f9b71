"""The Pydra MaskerWorkflow: NiftiMasker's numbers, caching, and failure behaviour."""

import os
import subprocess
import sys
import textwrap
import time

import nibabel as nib
import numpy as np
import pytest

from masker_wf import NiftiMasker
from masker_wf._exceptions import DimensionError, SampleMaskError
from masker_wf.workflow import MaskerWorkflow, run_masker_workflow

CLEANING = {
    "smoothing_fwhm": 5.0,
    "detrend": True,
    "standardize": "zscore_sample",
    "low_pass": 0.2,
    "high_pass": 0.02,
    "t_r": 2.0,
    # 20 volumes are too few for the default Butterworth padding.
    "clean_args": {"butterworth__padlen": 6},
}


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    # One file-hash cache per test for Pydra used directly (run_masker_workflow sets its
    # own for the duration of each call): cache hits must come from the test's own runs.
    monkeypatch.setenv("PYDRA_HASH_CACHE", str(tmp_path / "hashes"))


@pytest.fixture
def confounds_tsv(tmp_path):
    values = np.random.default_rng(1).normal(size=(20, 3))
    path = tmp_path / "confounds.tsv"
    lines = ["trans_x\ttrans_y\trot_z"] + ["\t".join(f"{v:.6f}" for v in row) for row in values]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def synthetic_bold_file(tmp_path, synthetic_bold):
    path = tmp_path / "synthetic_bold.nii"
    synthetic_bold[0].to_filename(path)
    return path


def _snapshot(cache_root):
    """Every file under the cache (hash store excluded) with its modification time."""
    return {
        path: path.stat().st_mtime_ns
        for path in cache_root.rglob("*")
        if path.is_file() and "hashes" not in path.parts and path.suffix != ".lock"
    }


def _job_dirs_holding(cache_root, name):
    return sorted(d for d in cache_root.glob("python-*") if (d / name).exists())


def test_workflow_matches_niftimasker_on_real_bold(
    tmp_path, ds003_path, ds003_mask_path, confounds_tsv
):
    keep = np.array([i for i in range(20) if i not in (3, 4, 11)])
    outputs = run_masker_workflow(
        ds003_path,
        cache_root=tmp_path / "cache",
        mask_file=ds003_mask_path,
        confounds_file=confounds_tsv,
        sample_mask=keep,
        **CLEANING,
    )
    masker = NiftiMasker(mask_img=ds003_mask_path, **CLEANING)
    expected = masker.fit_transform(ds003_path, confounds=confounds_tsv, sample_mask=keep)
    signals = np.load(outputs["signals_file"])
    assert signals.dtype == np.float32
    np.testing.assert_array_equal(signals, expected)
    cleaned = nib.load(outputs["cleaned_bold_file"])
    assert outputs["cleaned_bold_file"].name == "cleaned_bold.nii"
    expected_img = masker.inverse_transform(expected)
    np.testing.assert_array_equal(cleaned.get_fdata(), expected_img.get_fdata())
    np.testing.assert_array_equal(
        nib.load(outputs["mask_file"]).get_fdata(), nib.load(ds003_mask_path).get_fdata()
    )


def test_workflow_computes_mask_and_resamples_like_niftimasker_with_cf_worker(
    tmp_path, synthetic_bold_file
):
    params = {
        "target_affine": np.diag([4.0, 4.0, 4.0]),
        "mask_strategy": "epi",
        "smoothing_fwhm": 6.0,
        "detrend": True,
        "standardize": "zscore_sample",
        "low_pass": 0.1,
        "t_r": 2.0,
    }
    outputs = run_masker_workflow(
        synthetic_bold_file, cache_root=tmp_path / "cache", worker="cf", n_procs=2, **params
    )
    masker = NiftiMasker(**params)
    expected = masker.fit_transform(synthetic_bold_file)
    mask = nib.load(outputs["mask_file"])
    np.testing.assert_array_equal(mask.get_fdata(), masker.mask_img_.get_fdata())
    np.testing.assert_allclose(mask.affine, masker.mask_img_.affine)
    signals = np.load(outputs["signals_file"])
    assert signals.shape == expected.shape
    np.testing.assert_array_equal(signals, expected)
    cleaned = nib.load(outputs["cleaned_bold_file"])
    np.testing.assert_array_equal(
        cleaned.get_fdata(), masker.inverse_transform(expected).get_fdata()
    )


def test_parameters_that_are_off_leave_their_nodes_out(synthetic_bold_file, ds003_mask_path):
    def nodes(**params):
        return MaskerWorkflow(bold_file=synthetic_bold_file, **params).construct().node_names

    assert nodes() == ["compute_mask", "clean_signals", "unmask"]
    # A mask on another grid than the BOLD's: the BOLD is resampled onto it first.
    assert nodes(mask_file=ds003_mask_path) == ["resample_bold", "clean_signals", "unmask"]
    grid = {"target_shape": [8, 8, 8], "target_affine": np.eye(4).tolist()}
    assert nodes(mask_file=ds003_mask_path, **grid) == [
        "resample_mask",
        "resample_bold",
        "clean_signals",
        "unmask",
    ]
    # A target grid the BOLD is on already: nothing to resample.
    bold = nib.load(synthetic_bold_file)
    own_grid = {"target_shape": list(bold.shape[:3]), "target_affine": bold.affine.tolist()}
    assert nodes(**own_grid) == ["compute_mask", "clean_signals", "unmask"]
    assert nodes(smoothing_fwhm=6.0) == ["compute_mask", "smooth", "clean_signals", "unmask"]
    # smooth_as_task is kept for compatibility: smoothing is a node either way, and
    # nothing is refused any more.
    assert nodes(smoothing_fwhm=6.0, smooth_as_task=True) == nodes(smoothing_fwhm=6.0)
    assert nodes(high_variance_confounds=True, smooth_as_task=True) == [
        "compute_mask",
        "high_variance_confounds",
        "clean_signals",
        "unmask",
    ]


def test_smoothing_as_a_separate_task_gives_the_same_signals(tmp_path, synthetic_bold_file):
    params = {"smoothing_fwhm": 6.0, "detrend": True, "t_r": 2.0}
    inside = run_masker_workflow(synthetic_bold_file, cache_root=tmp_path / "a", **params)
    separate = run_masker_workflow(
        synthetic_bold_file, cache_root=tmp_path / "b", smooth_as_task=True, **params
    )
    assert _job_dirs_holding(tmp_path / "b", "smoothed_signals.npy")
    np.testing.assert_allclose(
        np.load(separate["signals_file"]), np.load(inside["signals_file"]), rtol=1e-5, atol=1e-5
    )


def test_second_run_is_served_from_the_cache_by_both_workers(
    tmp_path, ds003_path, ds003_mask_path
):
    cache_root = tmp_path / "cache"
    params = {"mask_file": ds003_mask_path, "smoothing_fwhm": 4.0, "detrend": True}
    first = run_masker_workflow(ds003_path, cache_root=cache_root, worker="debug", **params)
    before = _snapshot(cache_root)
    for worker in ("cf", "debug"):
        again = run_masker_workflow(ds003_path, cache_root=cache_root, worker=worker, **params)
        assert again == first
        # No task ran: no new file, no file rewritten.
        assert _snapshot(cache_root) == before


def test_changed_parameter_recomputes_only_the_affected_steps(tmp_path, ds003_path):
    cache_root = tmp_path / "cache"
    first = run_masker_workflow(ds003_path, cache_root=cache_root, detrend=True, t_r=2.0)
    mask_mtime = first["mask_file"].stat().st_mtime_ns
    second = run_masker_workflow(
        ds003_path,
        cache_root=cache_root,
        detrend=True,
        t_r=2.0,
        low_pass=0.2,
        clean_args={"butterworth__padlen": 6},
    )
    # The mask was computed once and reused; the cleaning and unmasking ran twice.
    assert len(_job_dirs_holding(cache_root, "mask.nii")) == 1
    assert len(_job_dirs_holding(cache_root, "signals.npy")) == 2
    assert len(_job_dirs_holding(cache_root, "cleaned_bold.nii")) == 2
    assert second["mask_file"].stat().st_mtime_ns == mask_mtime
    assert not np.array_equal(np.load(first["signals_file"]), np.load(second["signals_file"]))


def _bad_inputs(tmp_path, ds003_path, ds003_mask_path, seed):
    """Three bad inputs: a 2D image, an out-of-range sample_mask, a NaN confound in a kept row.

    Pydra identifies files by content: files of other tests must differ (``seed``), or
    Pydra reuses the workflow it built for the first one, with that one's paths.
    """
    rng = np.random.default_rng(seed)
    image_2d = tmp_path / "image_2d.nii"
    nib.Nifti1Image(rng.normal(size=(5, 5)).astype(np.float32), np.eye(4)).to_filename(image_2d)
    values = rng.normal(size=(20, 2))
    values[6, 1] = np.nan
    confounds = tmp_path / "nan_confounds.tsv"
    rows = ["\t".join("n/a" if np.isnan(v) else f"{v:.5f}" for v in row) for row in values]
    confounds.write_text("a\tb\n" + "\n".join(rows) + "\n")
    return {
        "2d image": (
            image_2d,
            {"mask_file": ds003_mask_path},
            DimensionError,
            lambda: NiftiMasker(mask_img=ds003_mask_path).fit_transform(image_2d),
            image_2d,
        ),
        "sample_mask out of range": (
            ds003_path,
            {"mask_file": ds003_mask_path, "sample_mask": [0, 25]},
            SampleMaskError,
            lambda: NiftiMasker(mask_img=ds003_mask_path).fit_transform(
                ds003_path, sample_mask=[0, 25]
            ),
            ds003_path,
        ),
        "NaN confound in a kept row": (
            ds003_path,
            {"mask_file": ds003_mask_path, "confounds_file": confounds},
            ValueError,
            lambda: NiftiMasker(mask_img=ds003_mask_path).fit_transform(
                ds003_path, confounds=confounds
            ),
            ds003_path,
        ),
    }


@pytest.mark.parametrize("worker", ["debug", "cf"])
def test_bad_inputs_reach_the_caller_as_the_steps_exception(
    tmp_path, ds003_path, ds003_mask_path, worker
):
    cache_root = tmp_path / "cache"
    for name, (bold, params, cls, estimator, at_fault) in _bad_inputs(
        tmp_path, ds003_path, ds003_mask_path, seed=len(worker)
    ).items():
        with pytest.raises(cls) as expected:
            estimator()
        with pytest.raises(cls) as caught:
            run_masker_workflow(bold, cache_root=cache_root, worker=worker, **params)
        # The object itself (not text parsed back): class, message, step and file.
        assert type(caught.value) is type(expected.value), name
        assert str(caught.value) == str(expected.value), name
        assert caught.value.step == "clean_signals", name
        assert caught.value.file == str(at_fault), name
    leftovers = [
        path.name
        for path in cache_root.rglob("*")
        if path.suffix in (".npy", ".nii", ".gz") or ".tmp" in path.name
    ]
    assert leftovers == []


def test_a_failed_earlier_run_is_not_taken_for_the_current_one(
    tmp_path, ds003_path, ds003_mask_path
):
    cache_root = tmp_path / "cache"
    with pytest.raises(SampleMaskError):
        run_masker_workflow(
            ds003_path,
            cache_root=cache_root,
            worker="cf",
            mask_file=ds003_mask_path,
            sample_mask=[0, 25],
        )
    # Another failure in the same cache: its own error, not the one left by the first run.
    with pytest.raises(SampleMaskError, match="duplicated"):
        run_masker_workflow(
            ds003_path,
            cache_root=cache_root,
            worker="cf",
            mask_file=ds003_mask_path,
            sample_mask=[1, 1],
        )


def test_runner_keeps_file_hashes_under_each_cache_root(
    tmp_path, monkeypatch, ds003_path, ds003_mask_path
):
    monkeypatch.delenv("PYDRA_HASH_CACHE")
    first, second = tmp_path / "first", tmp_path / "second"
    outputs = run_masker_workflow(
        ds003_path, cache_root=first, mask_file=ds003_mask_path, out_suffix=".nii.gz"
    )
    first_hashes = set((first / "hashes").iterdir())
    assert first_hashes
    run_masker_workflow(ds003_path, cache_root=second, mask_file=ds003_mask_path, detrend=True)
    # The second call hashed under its own root, not under the first one's.
    assert any((second / "hashes").iterdir())
    assert set((first / "hashes").iterdir()) == first_hashes
    # The location was passed for each call only: the environment is as it was.
    assert "PYDRA_HASH_CACHE" not in os.environ
    assert outputs["cleaned_bold_file"].name == "cleaned_bold.nii.gz"
    assert nib.load(outputs["cleaned_bold_file"]).shape == (16, 16, 9, 20)


def test_runner_restores_a_callers_hash_cache_setting(tmp_path, ds003_path, ds003_mask_path):
    run_masker_workflow(
        ds003_path,
        cache_root=tmp_path / "cache",
        mask_file=ds003_mask_path,
        hash_cache=tmp_path / "elsewhere",
    )
    assert any((tmp_path / "elsewhere").iterdir())
    assert not (tmp_path / "cache" / "hashes").exists()
    assert os.environ["PYDRA_HASH_CACHE"] == str(tmp_path / "hashes")


_SEGMENTED_RUN = textwrap.dedent(
    """
    import multiprocessing, sys
    from pathlib import Path

    import numpy as np

    from masker_wf import tasks
    from masker_wf.workflow import run_masker_workflow

    # Workers that do not inherit this process's state: only the pool's initializer can
    # give them the segmented hash.
    multiprocessing.set_start_method("forkserver")
    bold, mask, root = sys.argv[1:]
    assert not tasks.segmented_hash_enabled()
    out = run_masker_workflow(
        bold, cache_root=root, worker="cf", n_procs=2, mask_file=mask, detrend=True,
        segmented_hash=True,
    )
    assert tasks.segmented_hash_enabled()
    print(out["signals_file"])
    """
)


def test_segmented_hash_is_opt_in_and_reaches_the_cf_workers(
    tmp_path, ds003_path, ds003_mask_path
):
    # In a fresh process: the opt-in is process-wide.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _SEGMENTED_RUN,
            str(ds003_path),
            str(ds003_mask_path),
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    signals = np.load(done.stdout.strip().splitlines()[-1])
    expected = NiftiMasker(mask_img=ds003_mask_path, detrend=True).fit_transform(ds003_path)
    np.testing.assert_array_equal(signals, expected)


def test_runner_names_a_missing_input_file(tmp_path, ds003_path):
    with pytest.raises(ValueError, match=r"bold_file: file not found: '.*nothere\.nii'"):
        run_masker_workflow(tmp_path / "nothere.nii", cache_root=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"confounds_file: file not found"):
        run_masker_workflow(
            ds003_path, cache_root=tmp_path / "cache", confounds_file=tmp_path / "c.tsv"
        )


def test_a_lock_left_empty_by_a_killed_process_does_not_hang_the_next_run(tmp_path, ds003_path):
    """A process killed between creating a hash-cache lock and writing its PID leaves an
    empty lock file that filelock cannot tell from a live owner: the next hash of that
    file would wait forever. Such a lock, once old, is swept before the run."""
    from masker_wf.workflow import _RECORDLESS_LOCK_SECONDS

    cache_root = tmp_path / "pydra"
    hash_cache = cache_root / "hashes"
    hash_cache.mkdir(parents=True)
    # Learn which entry hashing this BOLD makes, in a child process.
    probe = (
        "import sys; from fileformats.medimage import NiftiGz; "
        "from pydra.utils.hash import hash_object; hash_object(NiftiGz(sys.argv[1]))"
    )
    env = {**os.environ, "PYDRA_HASH_CACHE": str(hash_cache)}
    subprocess.run([sys.executable, "-c", probe, str(ds003_path)], env=env, check=True)
    entries = [p for p in hash_cache.iterdir() if p.suffix != ".lock"]
    assert entries
    old = time.time() - 2 * _RECORDLESS_LOCK_SECONDS
    for entry in entries:
        # What a kill between creating the lock and writing its owner leaves.
        entry.unlink()
        lock = entry.with_suffix(".lock")
        lock.write_bytes(b"")
        os.utime(lock, (old, old))
    run = (
        "import sys; from masker_wf.workflow import run_masker_workflow; "
        "run_masker_workflow(sys.argv[1], cache_root=sys.argv[2])"
    )
    done = subprocess.run(
        [sys.executable, "-c", run, str(ds003_path), str(cache_root)],
        timeout=120,
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert not [p for p in hash_cache.glob("*.lock") if p.stat().st_size == 0]
