"""Failures by cause (issue 13, items 4, 6 and 7): output-side errors exit 73/74 naming the
output, a malformed sidecar fails its run only, worker processes die with the App."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from app_helpers import (
    FMRIPREP,
    PACKAGE_ROOT,
    RUN,
    STEM,
    app_process,
    copy_fmriprep,
    one_run_argv,
    visible_files,
)

from masker_wf.cli.run import main


def _new_files(out: Path, before: dict) -> list[str]:
    return sorted(set(visible_files(out)) - set(before))


def test_a_file_in_the_way_of_the_outputs_exits_73_naming_it(tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    assert main([*one_run_argv(FMRIPREP, out, work), "--run-id", "2"]) == 0
    before = visible_files(out)
    subject = out / "sub-01"
    for path in sorted(subject.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    subject.rmdir()
    subject.write_text("not a directory")
    capsys.readouterr()
    assert main(one_run_argv(FMRIPREP, out, work)) == 73
    err = capsys.readouterr().err
    assert f"cannot write output '{subject}': a file is in the way" in err
    assert "preproc_bold.nii.gz" not in err.split("FAILED")[-1]  # the input is not blamed
    assert not [p for p in _new_files(out, before) if RUN in p]
    assert not list((out / ".masker-wf" / "staging").rglob("*.nii.gz"))


def test_a_full_disk_exits_74_naming_the_output(tmp_path):
    """A real ENOSPC: the output dataset on a 96 KiB tmpfs, in a private mount namespace."""
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    argv = one_run_argv(FMRIPREP, out, work)
    script = textwrap.dedent(
        f"""
        set -e
        mount -t tmpfs -o size=96k tmpfs {out}
        set +e
        {sys.executable} -m masker_wf.cli.run {" ".join(argv)}
        echo "exit=$?"
        find {out} -type f | sort
        """
    )
    completed = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)},
        check=False,
    )
    assert "exit=74" in completed.stdout, completed.stderr[-3000:]
    assert "No space left on device" in completed.stderr
    failed = completed.stderr.split("FAILED")[-1]
    assert f"cannot write output '{out}/sub-01/" in failed
    left = completed.stdout.split("exit=74")[1].split()
    # Only the dataset-level files written before any run: no output of the run, nothing
    # staged.
    assert not [p for p in left if RUN in p], left
    assert not [p for p in left if "/.masker-wf/staging/" in p], left


def test_an_input_error_still_exits_65_naming_the_input(tmp_path, capsys):
    dataset = copy_fmriprep(tmp_path / "fmriprep")
    bold = dataset / "sub-01" / "func" / f"{RUN}_desc-preproc_bold.nii.gz"
    bold.write_bytes(b"\x1f\x8b not a NIfTI")
    assert main(one_run_argv(dataset, tmp_path / "out", tmp_path / "work")) == 65
    assert f"FAILED on {bold}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "sidecar",
    [
        f"sub-01/func/{RUN}_desc-preproc_bold.json",
        "sub-01/func/sub-01_task-rhymes_run-01_desc-confounds_timeseries.json",
    ],
    ids=["bold-sidecar", "confounds-sidecar"],
)
def test_a_malformed_sidecar_fails_its_run_only(tmp_path, capsys, sidecar):
    dataset = copy_fmriprep(tmp_path / "fmriprep")
    broken = dataset / sidecar
    broken.write_text('{"RepetitionTime": 2.0,')
    out = tmp_path / "out"
    argv = [str(dataset), str(out), "participant", "-w", str(tmp_path / "work"), "--no-reports"]
    assert main([*argv, "--denoise-strategy", "simple"]) == 1
    err = capsys.readouterr().err
    assert "3/4 runs succeeded" in err
    (failure,) = [line for line in err.splitlines() if line.startswith("  FAILED")]
    assert str(broken) in failure
    assert "not valid JSON" in failure
    assert len(list(out.glob("sub-*/func/*_desc-denoised_bold.nii.gz"))) == 3
    # The group table lists the failed run, without numbers.
    assert main([str(dataset), str(out), "group"]) == 0
    summary = pd.read_csv(out / "group" / "summary.tsv", sep="\t", dtype=str)
    failed = summary[summary["status"] == "failed"]
    assert failed["run"].tolist() == ["01"]
    assert failed["subject"].tolist() == ["01"]
    assert failed["voxels_in_mask"].isna().all()
    assert set(summary["status"]) == {"ok", "failed"}


def _children(pid: int) -> set[int]:
    # The App's threads come and go (thread pools, gzip threads), and the App may end: a
    # task that vanishes between the listing and the read is skipped, not an error (it
    # made this test fail now and then).
    children = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return children
    for task in tasks:
        try:
            text = (task / "children").read_text().split()
        except OSError:
            continue
        children |= {int(c) for c in text}
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_die_with_the_app(tmp_path):
    """kill -9 of the App (``--nprocs 2``) leaves no worker process running."""
    dataset = copy_fmriprep(tmp_path / "fmriprep")
    argv = [str(dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work")]
    argv += ["--nprocs", "2", "--no-reports", "--smoothing-fwhm", "6"]
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "NO_ET": "1"}
    app = subprocess.Popen(
        [sys.executable, "-m", "masker_wf.cli.run", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and app.poll() is None and time.monotonic() < deadline:
            workers |= _children(app.pid)
            time.sleep(0.01)
        assert len(workers) >= 2, "the App never started its worker processes"
        os.kill(app.pid, signal.SIGKILL)
        app.wait()
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)], "orphaned workers still run"
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)


def test_workers_run_the_app_to_the_same_result(tmp_path):
    """With ``--nprocs 2`` the runs give the outputs of the in-process worker."""
    argv = one_run_argv(FMRIPREP, tmp_path / "one", tmp_path / "w1", "--no-reports")
    assert main(argv) == 0
    two = app_process(
        [
            *one_run_argv(FMRIPREP, tmp_path / "two", tmp_path / "w2", "--no-reports"),
            "--nprocs",
            "2",
        ]
    )
    assert two.returncode == 0, two.stderr[-2000:]
    for name in ("bold.json", "timeseries.tsv", "outliers.tsv"):
        path = Path("sub-01") / "func" / f"{STEM}_{name}"
        assert (tmp_path / "one" / path).read_bytes() == (tmp_path / "two" / path).read_bytes()
    record = json.loads((tmp_path / "two" / "sub-01/func" / f"{STEM}_provenance.json").read_text())
    assert record["Status"] == "ok"
