"""masker-wf on a real SLURM: a single-node cluster on localhost, started by the fixtures.

The cluster (munged, slurmctld, slurmd; see ``slurm_cluster.py``) runs for the whole module and
is stopped by PID at the end. The bundled example dataset goes through it as one job array:
outputs must equal a local run, a broken participant must fail alone and be reported, and a
re-submission after the fix must run that participant only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from pydra.compose import python
from slurm_cluster import LocalSlurm, skip_without_slurm

from masker_wf.cli import slurm as slurm_cli

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "bids_examples" / "ds-masker"
BROKEN_BOLD = (
    "derivatives/fmriprep/sub-02/func/"
    "sub-02_task-rhymes_run-01_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
)
#: Files whose content records when/where they were made (timestamps, hosts, durations).
VOLATILE = ("_provenance.json", "_report.html")


@python.define
def Double(x: int) -> int:
    """A task in the decorator form (its function is not importable by name)."""
    return 2 * x


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster, stopped (by PID) after the module's tests."""
    skip_without_slurm()
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    """Point SLURM clients launched by this process (sbatch, squeue...) at the test cluster."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.setenv("PATH", slurm_cluster.env["PATH"])
    # poll the queue often: test jobs last seconds
    monkeypatch.setenv("MASKER_WF_SLURM_POLL", "0.5")
    return slurm_cluster


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A private copy of the example dataset (the tests break and repair one file)."""
    if not EXAMPLE.is_dir():
        pytest.fail(f"example dataset missing: {EXAMPLE} (run scripts/make_bids_examples.py)")
    root = tmp_path_factory.mktemp("data") / "ds-masker"
    shutil.copytree(EXAMPLE, root)
    return root


@pytest.fixture(scope="module")
def local_outputs(dataset, tmp_path_factory):
    """The App's outputs from a plain local run: the reference for the SLURM runs."""
    from masker_wf.cli.run import main

    base = tmp_path_factory.mktemp("local")
    code = main(_app_args(dataset, base / "out", base / "work"))
    assert code == 0
    return base / "out"


def _app_args(dataset, out_dir, work_dir, *extra):
    return [
        str(dataset / "derivatives" / "fmriprep"),
        str(out_dir),
        "participant",
        "-w",
        str(work_dir),
        *extra,
    ]


def _jobs(out_dir):
    with open(Path(out_dir) / "logs" / "jobs.tsv", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _output_files(out_dir, subject=None):
    pattern = f"sub-{subject}" if subject else "sub-*"
    return sorted(
        path.relative_to(out_dir)
        for path in Path(out_dir).glob(f"{pattern}/**/*")
        if path.is_file()
    )


def _assert_same_outputs(out_dir, reference, subject=None, runs=None):
    """Same derivative files with the same bytes; provenance/report compared where stable."""
    files = _output_files(out_dir, subject)
    expected = _output_files(reference, subject)
    if runs is not None:
        expected = [f for f in expected if any(run in f.name for run in runs)]
    assert files == expected
    for name in files:
        ours, theirs = Path(out_dir) / name, Path(reference) / name
        if name.name.endswith("_provenance.json"):
            a, b = json.loads(ours.read_text()), json.loads(theirs.read_text())
            for record in (a, b):  # the design matrix lives in each run's own work directory
                design = record["Parameters"].pop("confounds_file", None)
                record["Parameters"]["design"] = design and Path(design).name
            for key in ("Inputs", "Parameters", "Confounds", "SampleMask", "Outputs", "Summary"):
                assert a[key] == b[key], f"{name}: {key} differs"
        elif not name.name.endswith(VOLATILE):
            assert ours.read_bytes() == theirs.read_bytes(), f"{name} differs from the local run"


def _mtimes(out_dir, subject):
    return {
        name: (Path(out_dir) / name).stat().st_mtime_ns for name in _output_files(out_dir, subject)
    }


# ---------------------------------------------------------------------------------------------
# the command line (no cluster needed)
# ---------------------------------------------------------------------------------------------
def test_task_command_line_drops_slurm_options_and_labels():
    argv = [
        "bids", "out", "participant", "--slurm", "--wait", "--sbatch-args=--mem=1G -c 2",
        "--array-throttle", "3", "--participant-label", "01", "sub-02", "--slurm-worker",
        "array", "--slurm-partition=debug", "-w", "work", "--smoothing-fwhm", "6",
    ]  # fmt: skip
    assert slurm_cli.app_argv(argv) == [
        "bids", "out", "participant", "-w", "work", "--smoothing-fwhm", "6",
    ]  # fmt: skip


def test_command_hash_ignores_option_order_and_resource_options(tmp_path):
    from masker_wf.cli.slurm import command_hash

    base = [str(tmp_path / "bids"), "out", "participant", "--smoothing-fwhm", "6", "-w", "w"]
    reordered = ["-w", "w2", str(tmp_path / "bids"), "out", "participant"]
    reordered += ["--nprocs", "2", "--smoothing-fwhm", "6.0", "-v"]
    assert command_hash(base, cwd=tmp_path) == command_hash(reordered, cwd=tmp_path)
    # What is computed, or where it is written, is new work.
    assert command_hash(base, cwd=tmp_path) != command_hash([*base, "--detrend"], cwd=tmp_path)
    assert command_hash(base, cwd=tmp_path) != command_hash(base, cwd=tmp_path / "elsewhere")


def test_parser_has_the_slurm_options():
    from masker_wf.cli.parser import build_parser

    args = build_parser().parse_args(
        ["bids", "out", "participant", "--slurm", "--array-throttle", "2",
         "--sbatch-args", "--mem=1G --time=5", "--slurm-worker", "pydra", "--wait"]
    )  # fmt: skip
    assert args.slurm
    assert args.wait
    assert args.array_throttle == 2
    assert args.sbatch_args == "--mem=1G --time=5"
    assert args.slurm_worker == "pydra"
    assert args.slurm_partition is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bids", "out", "participant", "--array-throttle", "0"])


def test_resubmission_selects_failed_missing_and_changed_participants(tmp_path):
    (tmp_path / "sub-01").mkdir()
    (tmp_path / "sub-01" / "x.nii.gz").write_bytes(b"x")
    rows = [
        {"participant": "sub-01", "state": "COMPLETED", "exit_code": "0", "command_hash": "h"},
        {"participant": "sub-02", "state": "FAILED", "exit_code": "1", "command_hash": "h"},
        {"participant": "sub-03", "state": "RUNNING", "exit_code": "", "command_hash": "h"},
        # completed, but its outputs were deleted since
        {"participant": "sub-04", "state": "COMPLETED", "exit_code": "0", "command_hash": "h"},
    ]
    to_submit, done, running = slurm_cli.select_participants(
        ["01", "02", "03", "04", "05"], rows, tmp_path, "h"
    )
    assert (to_submit, done, running) == (["02", "04", "05"], ["01"], ["03"])
    # another command line (other parameters): everything runs again
    to_submit, done, running = slurm_cli.select_participants(["01", "03"], rows, tmp_path, "new")
    assert (to_submit, done, running) == (["01", "03"], [], [])


def test_jobs_table_is_replaced_atomically(tmp_path):
    path = tmp_path / "jobs.tsv"
    rows = [{"participant": "sub-01", "array_index": "0", "job_id": "7", "state": "PENDING"}]
    slurm_cli.write_jobs(path, rows)
    first_inode = path.stat().st_ino
    rows[0]["state"] = "COMPLETED"
    slurm_cli.write_jobs(path, rows)
    assert path.stat().st_ino != first_inode  # a new file renamed over the old one
    assert slurm_cli.read_jobs(path)[0]["state"] == "COMPLETED"
    assert list(slurm_cli.read_jobs(path)[0]) == list(slurm_cli.JOBS_COLUMNS)
    assert [p.name for p in tmp_path.iterdir()] == ["jobs.tsv"]


# ---------------------------------------------------------------------------------------------
# the real cluster
# ---------------------------------------------------------------------------------------------
def test_cluster_starts_within_a_minute_and_stops_by_pid(tmp_path):
    skip_without_slurm()
    cluster = LocalSlurm(tmp_path / "cluster")
    try:
        cluster.start()
        pids = cluster.pids()
        assert set(pids) == {"munged", "slurmctld", "slurmd"}
        assert cluster.startup_seconds < 60
        info = cluster.run(["sinfo", "-h", "-o", "%T %c"]).stdout.split()
        assert info[0] == "idle"
        assert int(info[1]) == cluster.cpus
    finally:
        cluster.stop()
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_array_run_matches_local_run_and_resubmits_only_the_failed_participant(
    slurm_env, dataset, local_outputs, tmp_path, capsys
):
    from masker_wf.cli.run import main

    out_dir, work_dir = tmp_path / "out", tmp_path / "work"
    argv = _app_args(dataset, out_dir, work_dir, "--slurm", "--wait")
    broken = dataset / BROKEN_BOLD
    good_bytes = broken.read_bytes()
    broken.write_bytes(good_bytes[: len(good_bytes) // 3])  # a truncated download
    try:
        code = main(argv)
    finally:
        broken.write_bytes(good_bytes)
    err = capsys.readouterr().err

    # the broken participant fails its own task and is named; the other one completes
    assert code == 1
    assert "1 participant(s) failed: sub-02 (FAILED" in err
    first = {row["participant"]: row for row in _jobs(out_dir)}
    assert (first["sub-01"]["state"], first["sub-01"]["exit_code"]) == ("COMPLETED", "0")
    assert (first["sub-02"]["state"], first["sub-02"]["exit_code"]) == ("FAILED", "1")
    assert first["sub-01"]["job_id"] == first["sub-02"]["job_id"]  # one array
    assert sorted(row["array_index"] for row in first.values()) == ["0", "1"]
    _assert_same_outputs(out_dir, local_outputs, subject="01")
    assert (out_dir / "dataset_description.json").read_bytes() == (
        local_outputs / "dataset_description.json"
    ).read_bytes()
    sbatch_scripts = sorted((out_dir / "logs").glob("masker-wf_*.sbatch"))
    assert len(sbatch_scripts) == 1
    assert "--slurm" not in sbatch_scripts[0].read_text().split("masker_wf.cli.run", 1)[1]

    # repaired: submitting again runs sub-02 only, sub-01's outputs are left alone
    sub01_before = _mtimes(out_dir, "01")
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0
    assert "already complete, skipped: sub-01" in out
    rows = _jobs(out_dir)
    second = [row for row in rows if row["job_id"] != first["sub-01"]["job_id"]]
    assert [(r["participant"], r["array_index"], r["state"], r["exit_code"]) for r in second] == [
        ("sub-02", "0", "COMPLETED", "0")
    ]
    assert _mtimes(out_dir, "01") == sub01_before
    _assert_same_outputs(out_dir, local_outputs)
    # the run of sub-02 that had not failed came out of the shared Pydra cache
    provenance = json.loads(
        next((out_dir / "sub-02" / "func").glob("*run-02*_provenance.json")).read_text()
    )
    assert provenance["Pydra"]["reused_from_cache"] is True

    # nothing left to do
    assert main(argv) == 0
    assert "already complete, skipped: sub-01, sub-02" in capsys.readouterr().out
    assert len(_jobs(out_dir)) == 3


def test_submission_returns_at_once_and_a_second_one_waits_for_tasks_in_flight(
    slurm_env, dataset, tmp_path, capsys
):
    from masker_wf.cli.run import main

    argv = _app_args(
        dataset, tmp_path / "out", tmp_path / "work", "--participant-label", "01", "--slurm",
        "--array-throttle", "1",
        # --begin holds the task back 3 s: still queued when we submit again below
        "--sbatch-args=--time=10 --job-name=mwf-test --begin=now+3",
    )  # fmt: skip
    assert main(argv) == 0  # submitted, not waited for
    rows = _jobs(tmp_path / "out")
    assert [(r["participant"], r["array_index"], r["state"]) for r in rows] == [
        ("sub-01", "0", "PENDING")
    ]
    record = slurm_env.run(["scontrol", "-o", "show", "job", rows[0]["job_id"]]).stdout
    for setting in ("ArrayTaskThrottle=1", "TimeLimit=00:10:00", "JobName=mwf-test"):
        assert setting in record

    assert main([*argv, "--wait"]) == 0  # submits nothing, follows the task to its end
    assert "still queued or running, skipped: sub-01" in capsys.readouterr().out
    rows = _jobs(tmp_path / "out")
    assert [(r["participant"], r["state"], r["exit_code"]) for r in rows] == [
        ("sub-01", "COMPLETED", "0")
    ]


def test_pydra_slurm_worker_runs_each_node_as_a_job_without_accounting(
    slurm_env, dataset, local_outputs, tmp_path
):
    from masker_wf.cli.run import main

    # no accounting on this cluster: sacct has nothing to say, which stock Pydra relies on
    sacct = slurm_env.run(["sacct", "-n", "-X", "-o", "JobID,State"], check=False)
    assert sacct.returncode != 0 or not sacct.stdout.strip()
    out_dir, work_dir = tmp_path / "out", tmp_path / "work"
    argv = _app_args(
        dataset, out_dir, work_dir, "--slurm", "--slurm-worker", "pydra",
        "--participant-label", "01", "--run-id", "01",
    )  # fmt: skip
    assert main(argv) == 0
    _assert_same_outputs(out_dir, local_outputs, subject="01", runs=["run-01"])
    # every node went through sbatch: one job script per Pydra job under the cache
    scripts = list((work_dir / "pydra").glob("slurm-scontrol_scripts/*/batchscript_*.sh"))
    assert scripts
    jobs = slurm_env.run(["squeue", "-h", "-o", "%i"]).stdout.split()
    assert jobs == []


def test_scontrol_worker_reports_a_failed_job_as_errored(slurm_env, tmp_path):
    from pydra.engine.submitter import Submitter

    from masker_wf.tasks import Smooth

    broken = tmp_path / "broken_bold.nii.gz"
    broken.write_bytes((EXAMPLE / BROKEN_BOLD).read_bytes()[:500])
    with Submitter(worker=slurm_cli.ScontrolSlurmWorker, cache_root=tmp_path / "cache") as sub:
        result = sub(Smooth(in_file=broken, fwhm=6.0))
    assert result.errored


def test_scontrol_worker_runs_decorated_task_under_the_submitters_checksum(
    slurm_env, tmp_path, monkeypatch
):
    # the decorator form rebinds the function's name to the task class, so cloudpickle ships
    # the function by value; run_pickled_job must make the job hash it as the submitter did
    from pydra.engine.submitter import Submitter

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # this module, for the job
    with Submitter(worker=slurm_cli.ScontrolSlurmWorker, cache_root=tmp_path / "cache") as sub:
        result = sub(Double(x=21))
    assert not result.errored
    assert result.outputs.out == 42


def test_run_slurm_without_sbatch_explains(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM programs here
    args = argparse.Namespace(
        output_dir=tmp_path / "out", slurm_worker="array", wait=False, array_throttle=None,
        sbatch_args="", slurm_partition=None,
    )  # fmt: skip
    argv = ["bids", str(tmp_path / "out"), "participant", "--slurm"]
    assert slurm_cli.run_slurm(args, ["01"], argv) == 1
    assert "sbatch" in capsys.readouterr().err
