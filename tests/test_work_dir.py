"""The work directory: one folder per participant, removed by --clean-workdir once done."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from masker_wf.cli.run import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_scale import make_dataset

OPTIONS = ("--denoise-strategy", "simple", "--smoothing-fwhm", "6", "--no-reports")


@pytest.fixture
def two_participants(tmp_path):
    return make_dataset(tmp_path / "fmriprep", 2, n_runs=1, shape=(8, 8, 8), n_volumes=30)


def _denoised(out_dir, label):
    return sorted((out_dir / f"sub-{label}" / "func").glob("*_desc-denoised_bold.nii.gz"))


def test_each_participant_has_its_own_work_directory(two_participants, tmp_path):
    out_dir, work_dir = tmp_path / "out", tmp_path / "work"
    argv = [str(two_participants), str(out_dir), "participant", "-w", str(work_dir), *OPTIONS]
    assert main(argv) == 0
    assert sorted(p.name for p in work_dir.iterdir()) == ["sub-01", "sub-02"]
    for label in ("01", "02"):
        cache = work_dir / f"sub-{label}" / "pydra"
        assert any(p.name.startswith("workflow-") for p in cache.iterdir())


def test_clean_workdir_removes_the_work_of_participants_whose_outputs_are_committed(
    two_participants, tmp_path
):
    out_dir, work_dir = tmp_path / "out", tmp_path / "work"
    argv = [str(two_participants), str(out_dir), "participant", "-w", str(work_dir), *OPTIONS]
    argv.append("--clean-workdir")
    broken = next((two_participants / "sub-02" / "func").glob("*_desc-preproc_bold.nii.gz"))
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 2])  # a truncated file: sub-02 fails
    assert main(argv) == 1
    assert not (work_dir / "sub-01").exists()  # done: its intermediates are gone
    assert (work_dir / "sub-02").is_dir()  # failed: kept to resume from
    assert _denoised(out_dir, "01")
    assert not _denoised(out_dir, "02")

    broken.write_bytes(good)
    committed = {path: path.stat().st_mtime_ns for path in _denoised(out_dir, "01")}
    assert main(argv) == 0
    assert not any(work_dir.iterdir())
    assert _denoised(out_dir, "02")
    # sub-01's outputs were still what the run writes: confirmed, not written again
    assert {path: path.stat().st_mtime_ns for path in _denoised(out_dir, "01")} == committed
