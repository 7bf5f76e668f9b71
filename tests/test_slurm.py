"""masker-wf on a real SLURM: a single-node cluster on localhost, started by the fixtures.

The cluster (munged, slurmctld, slurmd; see ``slurm_cluster.py``) runs for the whole module,
with a ``MaxArraySize`` of 4 so that small datasets need several job arrays, and is stopped
by PID at the end. The bundled example dataset goes through it: outputs must equal a local
run, a broken participant must fail alone and be reported, and a re-submission after the fix
must recompute that participant only. Tiny generated datasets (``benchmarks/bench_scale.py``)
cover the array sizes, the bundling of participants into tasks, re-submission after an input
changed and submission from another working directory.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydra.compose import python
from slurm_cluster import LocalSlurm, skip_without_slurm

from masker_wf.app import slurm as app_slurm
from masker_wf.cli import slurm as slurm_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_scale import make_dataset

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "bids_examples" / "ds-masker"
BROKEN_BOLD = (
    "derivatives/fmriprep/sub-02/func/"
    "sub-02_task-rhymes_run-01_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
)
#: Files whose content records when/where they were made (timestamps, hosts, durations).
VOLATILE = ("_provenance.json", "_report.html")
#: The test cluster's MaxArraySize: an array holds array indices 0-3.
MAX_ARRAY_SIZE = 4
#: Options of the runs of the tiny datasets (their confounds have no cosine columns).
TINY_OPTIONS = ("--denoise-strategy", "simple", "--smoothing-fwhm", "6")


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
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), config={"MaxArraySize": MAX_ARRAY_SIZE})
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
def tiny_dataset(tmp_path_factory):
    """fMRIPrep-style derivatives of 6 participants x 1 run (8x8x8 voxels, 30 volumes)."""
    root = tmp_path_factory.mktemp("tiny") / "fmriprep"
    return make_dataset(root, 6, n_runs=1, shape=(8, 8, 8), n_volumes=30)


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


def _tiny_args(dataset, out_dir, work_dir, *extra):
    return [str(dataset), str(out_dir), "participant", "-w", str(work_dir), *TINY_OPTIONS, *extra]


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


def _data_mtimes(out_dir, subject=None):
    """Modification times of the derivatives (not of the provenance records, which a
    confirmation of up-to-date outputs updates)."""
    return {
        name: (Path(out_dir) / name).stat().st_mtime_ns
        for name in _output_files(out_dir, subject)
        if not name.name.endswith("_provenance.json")
    }


def _task_participants(out_dir):
    """Array task -> participants, from the task lists of every submission."""
    tasks = {}
    for path in sorted((Path(out_dir) / "logs").glob("masker-wf_*_tasks.tsv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                tasks[(path.name, row["array_index"])] = row["participants"].split()
    return tasks


# ---------------------------------------------------------------------------------------------
# the command line and the planning of a submission (no cluster needed)
# ---------------------------------------------------------------------------------------------
def test_task_command_line_has_absolute_paths_and_no_slurm_options_or_labels(tmp_path):
    argv = [
        "bids", "out", "participant", "--slurm", "--wait", "--sbatch-args=--mem=1G -c 2",
        "--array-throttle", "3", "--participant-label", "01", "sub-02", "--slurm-worker",
        "array", "--slurm-partition=debug", "--participants-per-task", "2", "-w", "work",
        "--smoothing-fwhm", "6", "--derivatives", "fmriprep=deriv/fmriprep",
    ]  # fmt: skip
    assert slurm_cli.task_arguments(argv, cwd=tmp_path) == [
        str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
        "--derivatives", f"fmriprep={tmp_path / 'deriv' / 'fmriprep'}",
        "--smoothing-fwhm=6.0", f"--work-dir={tmp_path / 'work'}",
    ]  # fmt: skip


def test_task_command_line_carries_the_config_file_values(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('smoothing_fwhm = 8\nstandardize = false\ncustom_strategy = "s.json"\n')
    monkeypatch.chdir(tmp_path)
    argv = ["bids", "out", "participant", "--config-file", "config.toml", "--smoothing-fwhm", "4"]
    task = slurm_cli.task_arguments(argv)
    # the command line wins; the file's relative paths are taken where the App was started
    assert "--smoothing-fwhm=4.0" in task
    assert "--standardize=none" in task
    # (an option of several values: its values follow it as arguments of their own)
    assert task[task.index("--custom-strategy") + 1] == str(tmp_path / "s.json")
    assert not any(token.startswith("--config-file") for token in task)
    command = slurm_cli.array_command(argv)
    assert command.argv[-2:] == ("--no-slurm", "--array-task")


def test_command_hash_ignores_option_order_and_resource_options(tmp_path):
    from masker_wf.cli.slurm import command_hash

    base = [str(tmp_path / "bids"), "out", "participant", "--smoothing-fwhm", "6", "-w", "w"]
    reordered = ["-w", "w2", str(tmp_path / "bids"), "out", "participant"]
    reordered += ["--nprocs", "2", "--smoothing-fwhm", "6.0", "-v", "--participants-per-task=3"]
    assert command_hash(base, cwd=tmp_path) == command_hash(reordered, cwd=tmp_path)
    # What is computed, or where it is written, is new work.
    assert command_hash(base, cwd=tmp_path) != command_hash([*base, "--detrend"], cwd=tmp_path)
    assert command_hash(base, cwd=tmp_path) != command_hash(base, cwd=tmp_path / "elsewhere")


def test_parser_has_the_slurm_options():
    from masker_wf.cli.parser import build_parser

    args = build_parser().parse_args(
        ["bids", "out", "participant", "--slurm", "--array-throttle", "2",
         "--sbatch-args=--mem=1G --time=5", "--slurm-worker", "pydra", "--wait",
         "--participants-per-task", "3", "--dry-run", "--clean-workdir"]
    )  # fmt: skip
    assert args.slurm
    assert args.wait
    assert args.array_throttle == 2
    assert args.sbatch_args == "--mem=1G --time=5"
    assert args.slurm_worker == "pydra"
    assert args.slurm_partition is None
    assert args.participants_per_task == 3
    assert args.dry_run
    assert args.clean_workdir
    for bad in (["--array-throttle", "0"], ["--participants-per-task", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["bids", "out", "participant", *bad])


def test_participants_in_flight_are_not_submitted_again():
    rows = [
        {"participant": "sub-01", "state": "COMPLETED", "exit_code": "0", "command_hash": "h"},
        {"participant": "sub-02", "state": "FAILED", "exit_code": "1", "command_hash": "h"},
        {"participant": "sub-03", "state": "RUNNING", "exit_code": "", "command_hash": "h"},
        {"participant": "sub-04", "state": "PENDING", "exit_code": "", "command_hash": "old"},
    ]
    # completed and failed ones are submitted: their tasks decide what is up to date
    assert slurm_cli.in_flight_participants(["01", "02", "03", "04", "05"], rows, "h") == (
        ["01", "02", "04", "05"],
        ["03"],
    )


def test_tasks_bundle_participants_and_arrays_respect_max_array_size(tmp_path):
    bolds = {}
    for i in range(1, 12):
        bold = tmp_path / f"sub-{i:02d}_bold.nii.gz"
        bold.write_bytes(b"x" * 1000)
        bolds[f"{i:02d}"] = [bold, bold]
    submission = app_slurm.plan_submission(bolds, participants_per_task=3, max_array_size=2)
    assert submission.tasks == (
        ("01", "02", "03"), ("04", "05", "06"), ("07", "08", "09"), ("10", "11"),
    )  # fmt: skip
    assert submission.arrays == ((0, 2), (2, 2))
    assert submission.n_runs == 22
    assert "4 array task(s)" in submission.describe()
    assert "2 job array(s) (MaxArraySize 2)" in submission.describe()
    # by default, tiny runs are bundled so that a task's start-up is a small part of it
    bundled = app_slurm.plan_submission(bolds, max_array_size=1001)
    assert bundled.participants_per_task == 11
    assert app_slurm.default_participants_per_task(3600.0, 100) == 1
    assert app_slurm.default_participants_per_task(5.0, 100) == 10
    with pytest.raises(ValueError, match="MaxArraySize=0"):
        app_slurm.plan_submission(bolds, max_array_size=0)


def test_a_task_of_several_strategies_is_estimated_longer(tmp_path):
    bolds = {}
    for i in range(1, 41):
        bold = tmp_path / f"sub-{i:02d}_bold.nii.gz"
        with open(bold, "wb") as stream:  # sparse: the estimate reads the size only
            stream.truncate(300 * 2**20)
        bolds[f"{i:02d}"] = [bold]
    one = app_slurm.plan_submission(bolds, participants_per_task=1)
    three = app_slurm.plan_submission(bolds, participants_per_task=1, strategies=3)
    run_seconds = one.task_seconds - app_slurm.TASK_START_SECONDS
    extra = 1 + 2 * app_slurm.EXTRA_STRATEGY_SHARE
    assert three.task_seconds - app_slurm.TASK_START_SECONDS == pytest.approx(run_seconds * extra)
    assert "40 run(s) (3 strategies each) of 40 participant(s)" in three.describe()
    assert "strategies each" not in one.describe()
    # Longer runs: fewer participants bundled into a task by default.
    bundled = app_slurm.plan_submission(bolds).participants_per_task
    assert app_slurm.plan_submission(bolds, strategies=3).participants_per_task < bundled


def test_task_resources_follow_the_app_options():
    resources = app_slurm.TaskResources(nprocs=2, omp_nthreads=3, mem_mb=4000)
    # two runs at once of three threads each; the runs' memory together
    assert resources.sbatch_options([]) == ["--cpus-per-task=6", "--mem=4000M"]
    # the user's own sbatch options win
    assert resources.sbatch_options(["-c", "4", "--mem-per-cpu=1G"]) == []
    assert app_slurm.TaskResources().sbatch_options([]) == []


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


def test_submission_without_sbatch_explains(tiny_dataset, tmp_path, monkeypatch, capsys):
    from masker_wf.cli.run import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM programs here
    argv = _tiny_args(tiny_dataset, tmp_path / "out", tmp_path / "work", "--slurm")
    assert main(argv) == 1
    assert "sbatch" in capsys.readouterr().err


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


def test_max_array_size_is_read_from_the_cluster(slurm_env):
    assert app_slurm.max_array_size() == MAX_ARRAY_SIZE


def test_dry_run_prints_the_plan_and_submits_nothing(slurm_env, tiny_dataset, tmp_path, capsys):
    from masker_wf.cli.run import main

    out_dir = tmp_path / "out"
    argv = _tiny_args(tiny_dataset, out_dir, tmp_path / "work", "--slurm", "--dry-run")
    assert main([*argv, "--participants-per-task", "1"]) == 0
    out = capsys.readouterr().out
    assert "6 run(s) of 6 participant(s) in 6 array task(s)" in out
    assert f"2 job array(s) (MaxArraySize {MAX_ARRAY_SIZE})" in out
    assert "array 2 task 1: sub-06" in out
    assert "MB of memory" in out
    assert not out_dir.exists()  # nothing written
    assert slurm_env.run(["squeue", "-h", "-o", "%i"]).stdout.split() == []
    # without --slurm: the runs, and nothing processed
    assert main(_tiny_args(tiny_dataset, out_dir, tmp_path / "work", "--dry-run")) == 0
    assert "6 run(s) of 6 participant(s)" in capsys.readouterr().out
    assert not out_dir.exists()
    assert not (tmp_path / "work").exists()


def test_more_participants_than_max_array_size_run_as_several_arrays(
    slurm_env, tiny_dataset, tmp_path
):
    from masker_wf.cli.run import main

    out_dir = tmp_path / "out"
    argv = _tiny_args(tiny_dataset, out_dir, tmp_path / "work", "--slurm", "--wait")
    assert main([*argv, "--participants-per-task", "1"]) == 0
    rows = _jobs(out_dir)
    assert sorted(row["participant"] for row in rows) == [f"sub-0{i}" for i in range(1, 7)]
    assert {(row["state"], row["exit_code"]) for row in rows} == {("COMPLETED", "0")}
    arrays = {}
    for row in rows:
        arrays.setdefault(row["job_id"], []).append(int(row["array_index"]))
    assert sorted(sorted(indices) for indices in arrays.values()) == [[0, 1], [0, 1, 2, 3]]
    for i in range(1, 7):
        assert list((out_dir / f"sub-0{i}" / "func").glob("*_desc-denoised_bold.nii.gz"))


@pytest.fixture
def bundled_submission(slurm_env, tiny_dataset, tmp_path):
    """The tiny dataset (a private copy) submitted with --participants-per-task 3."""
    from masker_wf.cli.run import main

    dataset = tmp_path / "fmriprep"
    shutil.copytree(tiny_dataset, dataset)
    out_dir = tmp_path / "out"
    argv = _tiny_args(dataset, out_dir, tmp_path / "work", "--slurm", "--wait")
    argv += ["--participants-per-task", "3"]
    assert main(argv) == 0
    return dataset, out_dir, argv


def test_participants_per_task_3_runs_3_participants_per_task(bundled_submission):
    _, out_dir, _ = bundled_submission
    rows = _jobs(out_dir)
    assert len({row["job_id"] for row in rows}) == 1  # 2 tasks: one array
    by_task = {}
    for row in rows:
        assert (row["state"], row["exit_code"]) == ("COMPLETED", "0")
        by_task.setdefault(row["array_index"], []).append(row["participant"])
    assert by_task == {"0": ["sub-01", "sub-02", "sub-03"], "1": ["sub-04", "sub-05", "sub-06"]}
    assert sorted(_task_participants(out_dir).values()) == sorted(by_task.values())
    # one App per task, processing its three participants
    job_id = rows[0]["job_id"]
    for index, participants in by_task.items():
        log = (out_dir / "logs" / "slurm" / f"masker-wf_{job_id}_{index}.out").read_text()
        assert log.count("masker-wf: indexing") == 1
        assert "3/3 runs succeeded" in log
        for participant in participants:
            assert f"{participant}_task-rest" in log


def test_resubmission_after_changing_one_input_reruns_exactly_that_participant(
    bundled_submission,
):
    from masker_wf.cli.run import main

    dataset, out_dir, argv = bundled_submission
    before = _data_mtimes(out_dir)
    changed = next((dataset / "sub-05" / "func").glob("*_desc-preproc_bold.nii.gz"))
    image = nib.load(changed)
    data = np.asarray(image.dataobj) * np.float32(1.5)
    nib.save(nib.Nifti1Image(data, image.affine, image.header), changed)
    cleaned = next((out_dir / "sub-05" / "func").glob("*_desc-denoised_bold.nii.gz"))
    old_cleaned = np.asarray(nib.load(cleaned).dataobj)

    assert main(argv) == 0
    after = _data_mtimes(out_dir)
    rewritten = {name.parts[0] for name in before if after[name] != before[name]}
    assert rewritten == {"sub-05"}
    assert not np.array_equal(np.asarray(nib.load(cleaned).dataobj), old_cleaned)
    rows = _jobs(out_dir)
    assert [(r["state"], r["exit_code"]) for r in rows[6:]] == [("COMPLETED", "0")] * 6


def test_submitting_from_another_directory_with_relative_paths(
    slurm_env, tiny_dataset, tmp_path, monkeypatch
):
    from masker_wf.cli.run import main

    elsewhere = tmp_path / "submit" / "here"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    dataset = os.path.relpath(tiny_dataset, elsewhere)
    argv = [
        dataset, "out", "participant", "-w", "work", *TINY_OPTIONS, "--participant-label",
        "01", "--slurm", "--wait",
        # tasks start in another directory: every path they are given must be absolute
        "--sbatch-args=--chdir=/",
    ]  # fmt: skip
    assert main(argv) == 0
    assert [(r["state"], r["exit_code"]) for r in _jobs(elsewhere / "out")] == [("COMPLETED", "0")]
    assert list((elsewhere / "out" / "sub-01" / "func").glob("*_desc-denoised_bold.nii.gz"))
    assert (elsewhere / "work" / "sub-01" / "pydra").is_dir()
    script = next((elsewhere / "out" / "logs").glob("masker-wf_*.sbatch")).read_text()
    assert f"{(elsewhere / 'out').absolute()}" in script


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

    # both participants in one task: the broken one is named, the other one completes
    assert code == 1
    assert "1 participant(s) failed: sub-02 (FAILED" in err
    first = {row["participant"]: row for row in _jobs(out_dir)}
    assert (first["sub-01"]["state"], first["sub-01"]["exit_code"]) == ("COMPLETED", "0")
    assert (first["sub-02"]["state"], first["sub-02"]["exit_code"]) == ("FAILED", "1")
    assert first["sub-01"]["job_id"] == first["sub-02"]["job_id"]  # one array
    assert sorted(row["array_index"] for row in first.values()) == ["0", "0"]  # one task
    _assert_same_outputs(out_dir, local_outputs, subject="01")
    assert (out_dir / "dataset_description.json").read_bytes() == (
        local_outputs / "dataset_description.json"
    ).read_bytes()
    sbatch_scripts = sorted((out_dir / "logs").glob("masker-wf_*.sbatch"))
    assert len(sbatch_scripts) == 1
    assert "--slurm" not in sbatch_scripts[0].read_text().split("masker_wf.cli.run", 1)[1]

    # repaired: submitting again recomputes sub-02 only, sub-01's outputs are left alone
    sub01_before = _data_mtimes(out_dir, "01")
    assert main(argv) == 0
    rows = _jobs(out_dir)
    second = [row for row in rows if row["job_id"] != first["sub-01"]["job_id"]]
    assert [(r["participant"], r["state"], r["exit_code"]) for r in second] == [
        ("sub-01", "COMPLETED", "0"),
        ("sub-02", "COMPLETED", "0"),
    ]
    assert _data_mtimes(out_dir, "01") == sub01_before
    _assert_same_outputs(out_dir, local_outputs)
    # the run of sub-02 that had not failed came out of the participant's Pydra cache
    provenance = json.loads(
        next((out_dir / "sub-02" / "func").glob("*run-02*_provenance.json")).read_text()
    )
    assert provenance["Pydra"]["reused_from_cache"] is True


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
    scripts = list(
        (work_dir / "sub-01" / "pydra").glob("slurm-scontrol_scripts/*/batchscript_*.sh")
    )
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
