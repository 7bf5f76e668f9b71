"""A run's outputs appear as one verified set or not at all (issue 13, items 1 and 5).

The App is killed with SIGKILL at several points of its write phase (see ``kill_app.py``),
then run again with the same and with other options. Each time the output dataset holds
either what it held before (nothing new) or a complete set whose cleaned BOLD equals a clean
run's, whose files match its provenance record, and whose sidecars agree with it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from app_helpers import (
    FMRIPREP,
    PACKAGE_ROOT,
    RUN,
    STEM,
    app_process,
    assert_sets_consistent,
    cleaned_data,
    one_run_argv,
    record_of,
    run_files,
    staging_leftovers,
    visible_files,
)

from masker_wf.cli.run import main

POINTS = ["before-write", "compressing", "between-files", "before-record", "committing"]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Clean runs at 6 and 8 mm, each into its own output dataset (one shared work dir)."""
    root = tmp_path_factory.mktemp("sets")
    work = root / "work"
    references = {"work": work}
    for fwhm in (6, 8):
        out = root / f"clean{fwhm}"
        assert main(one_run_argv(FMRIPREP, out, work, "--smoothing-fwhm", str(fwhm))) == 0
        references[fwhm] = {"data": cleaned_data(out), "files": run_files(visible_files(out))}
    return references


def _assert_clean_set(out, reference, fwhm):
    """``out`` holds the run's complete set at ``fwhm`` mm, as a clean run wrote it."""
    (record,) = [r for r in assert_sets_consistent(out) if r["Run"].startswith(RUN)]
    assert record["Parameters"]["smoothing_fwhm"] == fwhm
    np.testing.assert_array_equal(cleaned_data(out), reference["data"])
    # Sidecars and tables are the clean run's, byte for byte (the report and the record hold
    # times and paths).
    files = run_files(visible_files(out))
    stable = {k: v for k, v in reference["files"].items() if k.endswith((".json", ".tsv"))}
    stable.pop(f"sub-01/func/{STEM}_provenance.json")
    assert {k: files[k] for k in stable} == stable
    assert not staging_leftovers(out)


@pytest.mark.parametrize("point", POINTS)
def test_killed_write_leaves_the_previous_set_or_a_complete_one(references, tmp_path, point):
    work = references["work"]
    out = tmp_path / "out"
    six = one_run_argv(FMRIPREP, out, work, "--smoothing-fwhm", "6")
    eight = one_run_argv(FMRIPREP, out, work, "--smoothing-fwhm", "8")
    assert main(six) == 0
    before = run_files(visible_files(out))

    killed = app_process(eight, point=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    after = run_files(visible_files(out))
    if point == "committing":
        # Killed among the renames: the previous record went first, so no record lists a
        # mix; the staged plan lets the next process finish the commit.
        assert f"sub-01/func/{STEM}_provenance.json" not in after
        assert staging_leftovers(out)
    else:
        assert after == before  # nothing new: the 6 mm set is intact
    assert_sets_consistent(out)

    # Rerun with the options of the set on disk before the kill, then with the killed ones.
    assert main(six) == 0
    _assert_clean_set(out, references[6], 6)
    assert main(eight) == 0
    _assert_clean_set(out, references[8], 8)


def test_interrupted_commit_is_finished_by_the_next_invocation(references, tmp_path):
    work = references["work"]
    out = tmp_path / "out"
    assert main(one_run_argv(FMRIPREP, out, work, "--smoothing-fwhm", "6")) == 0
    eight = one_run_argv(FMRIPREP, out, work, "--smoothing-fwhm", "8")
    assert app_process(eight, point="committing").returncode == -signal.SIGKILL
    # Any invocation on the output dataset finishes it: here the group level.
    assert main([str(FMRIPREP), str(out), "group"]) == 0
    _assert_clean_set(out, references[8], 8)


def test_failed_rerun_is_not_called_up_to_date(references, tmp_path, capsys):
    """Issue 13, item 1: a rerun that dies after part of its outputs is never mistaken for
    a complete earlier set."""
    work = references["work"]
    out = tmp_path / "out"
    six = one_run_argv(FMRIPREP, out, work, "--smoothing-fwhm", "6")
    assert main(six) == 0
    figures = out / "sub-01" / "figures"
    shutil.rmtree(figures)
    figures.write_text("a file where the reports go")
    capsys.readouterr()
    assert main(one_run_argv(FMRIPREP, out, work, "--smoothing-fwhm", "8")) == 73
    assert f"'{figures}'" in capsys.readouterr().err
    # Nothing of the 8 mm run reached the output dataset.
    np.testing.assert_array_equal(cleaned_data(out), references[6]["data"])
    assert record_of(out)["Parameters"]["smoothing_fwhm"] == 6
    figures.unlink()
    # The 6 mm set lost its report: it is not up to date, and is written again.
    assert main(six) == 0
    assert "outputs up to date" not in capsys.readouterr().err
    _assert_clean_set(out, references[6], 6)
    assert main(six) == 0
    assert "outputs up to date" in capsys.readouterr().err


def test_edited_output_is_not_up_to_date(references, tmp_path, capsys):
    """A file of the set changed after it was written (same size): content decides."""
    work = references["work"]
    out = tmp_path / "out"
    six = one_run_argv(FMRIPREP, out, work, "--smoothing-fwhm", "6")
    assert main(six) == 0
    sidecar = out / "sub-01" / "func" / f"{STEM}_outliers.tsv"
    text = sidecar.read_text()
    sidecar.write_text(text.replace("0\t", "1\t", 1))
    capsys.readouterr()
    assert main(six) == 0
    assert "outputs up to date" not in capsys.readouterr().err
    assert sidecar.read_text() == text
    _assert_clean_set(out, references[6], 6)


def test_leftovers_of_killed_runs_are_removed(references, tmp_path):
    """Issue 13, item 5: what a run killed during compression left (staged files, or a
    temporary file next to the outputs), and temporary files an earlier version left, are
    removed by the next successful runs."""
    work = references["work"]
    out = tmp_path / "out"
    func = out / "sub-01" / "func"
    six = one_run_argv(FMRIPREP, out, work, "--smoothing-fwhm", "6")
    assert main(six) == 0
    killed = app_process(
        one_run_argv(FMRIPREP, out, work, "--smoothing-fwhm", "8"), point="compressing"
    )
    assert killed.returncode == -signal.SIGKILL
    assert staging_leftovers(out) or list(func.glob(".*.tmp*"))
    # What a kill during compression left when the sink wrote in place (before staging).
    leftover = func / f".{STEM}_bold.nii.gz.k1ll3d00.tmp.nii.gz"
    leftover.write_bytes(b"\x1f\x8b partial gzip stream")
    # The next invocation, even for another run, removes the staged files; the run's own
    # rerun (up to date) removes the temporary files next to its outputs.
    argv = [*six]
    argv[argv.index("--run-id") + 1] = "2"
    assert main(argv) == 0
    assert not staging_leftovers(out)
    assert main(six) == 0
    assert not list(func.glob(".*.tmp*"))
    _assert_clean_set(out, references[6], 6)


def test_group_summary_has_a_status_per_run(references, tmp_path):
    """Issue 13, item 10: after a failed rerun, the earlier outputs are marked as such."""
    work = references["work"]
    out = tmp_path / "out"
    assert main(one_run_argv(FMRIPREP, out, work, "--smoothing-fwhm", "6")) == 0
    # A directory where the rerun's signals must go: it fails before writing anything.
    signals = out / "sub-01" / "func" / f"{STEM}_signals.npy"
    signals.mkdir()
    rerun = one_run_argv(FMRIPREP, out, work, "--smoothing-fwhm", "8", "--save-signals")
    assert main(rerun) == 73
    assert main([str(FMRIPREP), str(out), "group"]) == 0
    summary = pd.read_csv(out / "group" / "summary.tsv", sep="\t", dtype=str)
    (row,) = summary.to_dict("records")
    assert row["status"] == "kept-previous"
    assert str(signals) in row["reason"]
    levels = json.loads((out / "group" / "summary.json").read_text())["status"]["Levels"]
    assert set(levels) == {"ok", "kept-previous", "failed", "modified"}
    signals.rmdir()
    assert main(rerun) == 0
    assert main([str(FMRIPREP), str(out), "group"]) == 0
    summary = pd.read_csv(out / "group" / "summary.tsv", sep="\t", dtype=str)
    assert summary["status"].tolist() == ["ok"]


@pytest.mark.parametrize("damage", ["deleted", "not JSON"])
def test_a_set_whose_record_is_gone_is_a_modified_row(references, tmp_path, damage):
    out = tmp_path / "out"
    assert main(one_run_argv(FMRIPREP, out, references["work"], "--smoothing-fwhm", "6")) == 0
    record = out / "sub-01" / "func" / f"{STEM}_provenance.json"
    if damage == "deleted":
        record.unlink()
    else:
        record.write_text("{ not json")
    assert main([str(FMRIPREP), str(out), "group"]) == 0
    summary = pd.read_csv(out / "group" / "summary.tsv", sep="\t", dtype=str)
    # The images are still there: the set stays in the table, marked.
    (row,) = summary.to_dict("records")
    assert row["status"] == "modified"
    assert row["bold"] == f"sub-01/func/{STEM}_bold.nii.gz"
    assert row["desc"] == "denoised"
    assert f"sub-01/func/{STEM}_provenance.json" in row["reason"]


#: The App in a process of its own (which knows no digest but those the output dataset and
#: Pydra's cache remember), printing the files it read to hash them once it is done.
COUNT_HASHED_FILES = """
import sys
from masker_wf import _io
from masker_wf.cli.run import main

hashed = []
original = _io._sha256_of_file


def counted(path, piece_bytes):
    hashed.append(path)
    return original(path, piece_bytes)


_io._sha256_of_file = counted
code = main(sys.argv[1:])
for _, pool in _io._prefetcher:
    pool.shutdown(wait=True)  # a hash started ahead of need counts too
print("HASHED", *hashed)
sys.exit(code)
"""


def _hashed_files(argv) -> tuple[list[str], str]:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "NO_ET": "1"}
    command = [sys.executable, "-c", COUNT_HASHED_FILES, *argv]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("HASHED")]
    return line.split()[1:], done.stderr


def test_up_to_date_rerun_reads_no_file_to_hash_it(references, tmp_path):
    """Issue 15: the digests of inputs and outputs whose stat is unchanged are remembered
    (by the output set, by Pydra's cache); a changed input is read and the run redone."""
    work = references["work"]
    out = tmp_path / "out"
    six = one_run_argv(FMRIPREP, out, work, "--smoothing-fwhm", "6")
    assert main(six) == 0
    hashed, err = _hashed_files(six)
    assert "outputs up to date" in err
    assert hashed == []
    # The same confounds, rewritten: the content is read again and found unchanged.
    dataset = tmp_path / "fmriprep"
    shutil.copytree(FMRIPREP, dataset)
    moved = one_run_argv(dataset, out, work, "--smoothing-fwhm", "6")
    assert main(moved) == 0
    confounds = (
        dataset / "sub-01" / "func" / f"{RUN.split('_space-')[0]}_desc-confounds_timeseries.tsv"
    )
    confounds.write_bytes(confounds.read_bytes())
    hashed, err = _hashed_files(moved)
    assert hashed == [str(confounds.resolve())]
    assert "outputs up to date" in err


def test_a_killed_save_of_the_digest_memo_leaves_no_temporary_file(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = one_run_argv(FMRIPREP, out, work, "--no-reports")
    assert main(argv) == 0
    memos = sorted((out / ".masker-wf" / "digests").glob("*.json"))
    assert len(memos) == 1
    # What a process killed between writing the memo's temporary file and its rename left
    # (seen when test_resume_after_kill's kill landed there).
    leftover = memos[0].with_name(f".{memos[0].name}.l058ekmx.tmp.json")
    leftover.write_text("{")
    assert main(argv) == 0  # up to date: the run's set is opened under its lock
    assert not leftover.exists()
