"""The BIDS App end to end on bids_examples/ds-masker: outputs, validator, parity, exit codes,
failing runs, resume from the Pydra cache."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from masker_wf.cli.run import main

REPO = Path(__file__).resolve().parent.parent
RAW = REPO / "bids_examples" / "ds-masker"
FMRIPREP = RAW / "derivatives" / "fmriprep"
SPACE = "MNI152NLin2009cAsym"
# Parameters exercised end to end (every kind of cleaning step at once).
MASKER_FLAGS = [
    "--smoothing-fwhm",
    "15",
    "--detrend",
    "--standardize",
    "zscore_sample",
    "--high-pass",
    "0.01",
    "--low-pass",
    "0.2",
]


def _validate(path: Path) -> dict:
    """Run the official validator; return its JSON report (fails the test on errors)."""
    completed = subprocess.run(
        ["bids-validator-deno", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(completed.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert completed.returncode == 0, errors
    assert not errors
    return report


@pytest.fixture(scope="module")
def app_run(tmp_path_factory):
    """Participant then group level on raw BIDS + --derivatives fmriprep=PATH."""
    root = tmp_path_factory.mktemp("app")
    out, work = root / "out", root / "work"
    argv = [
        str(RAW),
        str(out),
        "participant",
        "--derivatives",
        f"fmriprep={FMRIPREP}",
        "-w",
        str(work),
        "--denoise-strategy",
        "scrubbing",
        "--fd-threshold",
        "0.5",
        "--std-dvars-threshold",
        "1.5",
        "--motion",
        "basic",
        "--save-signals",
        *MASKER_FLAGS,
    ]
    started = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - started
    group_code = main([str(RAW), str(out), "group"])
    return {
        "out": out,
        "work": work,
        "code": code,
        "group_code": group_code,
        "argv": argv,
        "seconds": seconds,
    }


def _outputs(out: Path, subject="01", run="01", desc="denoised"):
    prefix = out / f"sub-{subject}" / "func" / f"sub-{subject}_task-rhymes_run-{run}_space-{SPACE}"
    return {
        s: Path(f"{prefix}_desc-{desc}_{s}")
        for s in ("bold", "mask", "signals", "timeseries", "outliers", "provenance")
    }


def test_participant_and_group_succeed(app_run):
    out = app_run["out"]
    assert app_run["code"] == 0
    assert app_run["group_code"] == 0
    for subject in ("01", "02"):
        for run in ("01", "02"):
            files = _outputs(out, subject, run)
            for key, path in files.items():
                extension = {
                    "bold": ".nii.gz",
                    "mask": ".nii.gz",
                    "signals": ".npy",
                    "timeseries": ".tsv",
                    "outliers": ".tsv",
                    "provenance": ".json",
                }
                assert path.with_name(path.name + extension[key]).is_file(), (key, path)
        assert (out / f"sub-{subject}.html").is_file()
    summary = pd.read_csv(out / "group" / "summary.tsv", sep="\t", dtype={"subject": str})
    assert len(summary) == 4
    assert set(summary["subject"]) == {"01", "02"}
    for column in ("voxels_in_mask", "volumes_kept", "mean_fd", "tsnr_before"):
        assert summary[column].notna().all()
    assert (summary["voxels_in_mask"] == 1065).all()
    assert (out / "index.html").is_file()


def test_outputs_pass_the_validator(app_run):
    _validate(app_run["out"])


def test_dataset_description_and_sidecars(app_run):
    out = app_run["out"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "masker-wf"
    assert set(description["DatasetLinks"]) == {"raw", "fmriprep"}
    assert description["SourceDatasets"]
    files = _outputs(out)
    sidecar = json.loads(files["bold"].with_name(files["bold"].name + ".json").read_text())
    assert sidecar["RepetitionTime"] == 2.0
    assert sidecar["TaskName"] == "rhymes"
    assert sidecar["SkullStripped"] is True
    assert all(uri.startswith("bids:fmriprep:sub-01/func/") for uri in sidecar["Sources"])
    assert sidecar["MaskerParameters"]["smoothing_fwhm"] == 15
    assert sidecar["MaskerParameters"]["low_pass"] == 0.2
    provenance = json.loads(
        files["provenance"].with_name(files["provenance"].name + ".json").read_text()
    )
    assert provenance["Inputs"]["bold"]["hash"].startswith("sha256:")
    assert provenance["Software"]["masker-wf"]
    assert provenance["Host"]["hostname"]
    assert provenance["StartTime"] < provenance["EndTime"]
    assert provenance["Pydra"]["output_dirs"]
    assert provenance["Pydra"]["computed"]
    assert (out / ".bidsignore").read_text().count("_timeseries") >= 1
    # DatasetLinks are portable (relative to the output dataset) and resolve to the inputs.
    for name, link in description["DatasetLinks"].items():
        assert not link.startswith("/"), link
        assert (out / link).resolve() == {"raw": RAW, "fmriprep": FMRIPREP}[name].resolve()
    # fMRIPrep's mask was used: say where it came from, not a mask strategy.
    mask_uri = "bids:fmriprep:sub-01/func/sub-01_task-rhymes_run-01_space-"
    assert sidecar["MaskSource"].startswith(mask_uri)
    assert "mask_strategy" not in sidecar["MaskerParameters"]
    assert "mask_args" not in sidecar["MaskerParameters"]
    mask_sidecar = json.loads(files["mask"].with_name(files["mask"].name + ".json").read_text())
    assert mask_sidecar["MaskSource"] == sidecar["MaskSource"]
    assert "MaskStrategy" not in mask_sidecar
    # The regressors are the saved derivative, not a work-dir file.
    assert provenance["Parameters"]["confounds_file"] == str(
        files["timeseries"].with_name(files["timeseries"].name + ".tsv").relative_to(out)
    )
    source = nib.load(
        FMRIPREP
        / "sub-01/func"
        / f"sub-01_task-rhymes_run-01_space-{SPACE}_desc-preproc_bold.nii.gz"
    ).header
    for key in ("bold", "mask"):
        header = nib.load(files[key].with_name(files[key].name + ".nii.gz")).header
        assert header.get_xyzt_units() == ("mm", "sec")
        assert int(header["sform_code"]) == int(source["sform_code"])
        assert int(header["qform_code"]) == int(source["qform_code"])


def test_outputs_equal_the_estimator(app_run, nilearn_fixed_scrubbing):
    """Each run's signals and image equal masker_wf.NiftiMasker (and nilearn, scrubbing fixed)."""
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.maskers import NiftiMasker as NilearnMasker

    from masker_wf import NiftiMasker

    out = app_run["out"]
    for subject in ("01", "02"):
        for run in ("01", "02"):
            stem = f"sub-{subject}_task-rhymes_run-{run}_space-{SPACE}"
            bold = FMRIPREP / f"sub-{subject}" / "func" / f"{stem}_desc-preproc_bold.nii.gz"
            mask = FMRIPREP / f"sub-{subject}" / "func" / f"{stem}_desc-brain_mask.nii.gz"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                confounds, sample_mask = load_confounds_strategy(
                    str(bold),
                    "scrubbing",
                    fd_threshold=0.5,
                    std_dvars_threshold=1.5,
                    motion="basic",
                )
            params = {
                "mask_img": str(mask),
                "smoothing_fwhm": 15,
                "detrend": True,
                "standardize": "zscore_sample",
                "high_pass": 0.01,
                "low_pass": 0.2,
                "t_r": 2.0,
            }
            expected = NiftiMasker(**params).fit_transform(
                str(bold), confounds=confounds, sample_mask=sample_mask
            )
            files = _outputs(out, subject, run)
            signals = np.load(files["signals"].with_name(files["signals"].name + ".npy"))
            np.testing.assert_allclose(signals, expected, rtol=1e-5, atol=1e-5)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                oracle = NilearnMasker(**params).fit_transform(
                    str(bold), confounds=confounds, sample_mask=sample_mask
                )
            np.testing.assert_allclose(signals, oracle, rtol=1e-4, atol=1e-4)
            image = nib.load(files["bold"].with_name(files["bold"].name + ".nii.gz"))
            mask_data = np.asarray(nib.load(mask).dataobj) > 0
            data = np.asarray(image.dataobj)
            assert data.shape[-1] == len(sample_mask)
            np.testing.assert_allclose(data[mask_data].T, expected, rtol=1e-5, atol=1e-5)
            assert not data[~mask_data].any()
            kept = pd.read_csv(
                files["outliers"].with_name(files["outliers"].name + ".tsv"), sep="\t"
            )
            np.testing.assert_array_equal(np.flatnonzero(kept["censored"] == 0), sample_mask)
            design = pd.read_csv(
                files["timeseries"].with_name(files["timeseries"].name + ".tsv"), sep="\t"
            )
            assert list(design.columns) == list(confounds.columns)
            np.testing.assert_allclose(design.to_numpy(), confounds.to_numpy(), atol=1e-8)


def test_rerun_is_served_from_cache(app_run):
    # Task directories (their names are the cache keys) of each participant's Pydra cache;
    # "hashes" is Pydra's file-hash memo.
    tasks = [p for p in app_run["work"].glob("sub-*/pydra/*") if p.name != "hashes"]
    before = {p: p.stat().st_mtime_ns for p in tasks}
    images = sorted(app_run["out"].glob("sub-*/func/*.nii.gz"))
    images_before = [p.stat().st_mtime_ns for p in images]
    assert main(app_run["argv"]) == 0
    tasks = [p for p in app_run["work"].glob("sub-*/pydra/*") if p.name != "hashes"]
    after = {p: p.stat().st_mtime_ns for p in tasks}
    assert after == before  # no new task directory, nothing rewritten
    # Up-to-date derivatives are not written again (the gzip is the slowest step of a rerun).
    assert [p.stat().st_mtime_ns for p in images] == images_before
    for subject in ("01", "02"):
        for run in ("01", "02"):
            path = _outputs(app_run["out"], subject, run)["provenance"]
            record = json.loads(path.with_name(path.name + ".json").read_text())
            assert record["Pydra"]["reused_from_cache"] is True
            assert record["Pydra"]["computed"] == []


def _copy_fmriprep(tmp_path: Path) -> Path:
    target = tmp_path / "fmriprep"
    shutil.copytree(FMRIPREP, target)
    return target


def test_a_bad_confounds_cell_is_named_once_with_its_line(tmp_path, capsys):
    fmriprep = _copy_fmriprep(tmp_path)
    confounds = fmriprep / "sub-01/func/sub-01_task-rhymes_run-01_desc-confounds_timeseries.tsv"
    table = pd.read_csv(confounds, sep="\t").astype(object)
    table.loc[3, "trans_x"] = "abc"
    table.to_csv(confounds, sep="\t", index=False, na_rep="n/a")
    out = tmp_path / "out"
    argv = [str(fmriprep), str(out), "participant", "-w", str(tmp_path / "work")]
    code = main([*argv, "--participant-label", "01", "--run-id", "01", "--no-reports"])
    assert code == 65
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if "FAILED on" in line]
    assert len(failed) == 1
    # The file once (it used to follow as "confounds file '<path>': ..."), then the cell:
    # the table's 4th data row is the file's 5th line.
    assert failed[0].count(str(confounds)) == 1
    reason = "non-numeric columns ['trans_x'] (line 5: 'abc')."
    assert failed[0].endswith(f"FAILED on {confounds}: {reason}")
    record = json.loads(next((out / "logs").glob("failures_sub-01*.json")).read_text())[0]
    assert record["reason"].count(confounds.name) == 1


def test_derivatives_as_bids_dir_and_failing_run(tmp_path, capsys):
    fmriprep = _copy_fmriprep(tmp_path)
    broken = (
        fmriprep
        / "sub-01/func"
        / f"sub-01_task-rhymes_run-02_space-{SPACE}_desc-preproc_bold.nii.gz"
    )
    broken.write_bytes(gzip.compress(b"not a nifti at all"))
    mismatch = fmriprep / "sub-02/func/sub-02_task-rhymes_run-01_desc-confounds_timeseries.tsv"
    table = pd.read_csv(mismatch, sep="\t")
    table.iloc[:-3].to_csv(mismatch, sep="\t", index=False, na_rep="n/a")
    out = tmp_path / "out"
    code = main(
        [str(fmriprep), str(out), "participant", "-w", str(tmp_path / "work"), "--no-reports"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "2/4 runs succeeded" in err
    assert broken.name in err
    assert "length mismatch" in err
    assert _outputs(out, "01", "01")["bold"].with_suffix(".nii.gz").exists() or (
        out / "sub-01/func"
    ).glob("*run-01*_bold.nii.gz")
    done = sorted(p.name for p in out.glob("sub-*/func/*_desc-denoised_bold.nii.gz"))
    assert len(done) == 2
    assert "run-02" not in " ".join(p for p in done if p.startswith("sub-01"))
    failures = [
        failure
        for log in sorted((out / "logs").glob("failures_sub-*.json"))
        for failure in json.loads(log.read_text())
    ]
    assert {Path(f["bold"]).name for f in failures} == {
        broken.name,
        mismatch.name.replace(
            "_desc-confounds_timeseries.tsv", f"_space-{SPACE}_desc-preproc_bold.nii.gz"
        ),
    }
    _validate(out)
    # Only bad runs selected: every run failed on its data.
    code = main(
        [
            str(fmriprep),
            str(tmp_path / "out2"),
            "participant",
            "-w",
            str(tmp_path / "work"),
            "--participant-label",
            "01",
            "--run-id",
            "2",
            "--no-reports",
        ]
    )
    assert code == 65


@pytest.mark.parametrize(
    ("make_argv", "expected"),
    [
        (lambda t: [str(RAW), str(t / "o"), "session"], 17),
        (lambda t: [str(t / "missing"), str(t / "o"), "participant"], 66),
        (lambda t: [str(t), str(t / "o"), "participant"], 16),
        (lambda t: [str(RAW), str(t / "o"), "participant", "--participant-label", "sub-99"], 18),
        (
            lambda t: [
                str(RAW),
                str(t / "o"),
                "participant",
                "--task-id",
                "nback",
                "-w",
                str(t / "w"),
            ],
            18,
        ),
        (lambda t: [str(RAW), str(t / "o"), "participant", "--no-such-option"], 64),
        (
            lambda t: [
                str(RAW),
                str(t / "o"),
                "participant",
                "--derivatives",
                f"fmriprep={FMRIPREP}",
                "--denoise-strategy",
                "compcor",
                "--fd-threshold",
                "0.5",
                "-w",
                str(t / "w"),
            ],
            64,
        ),
        (lambda t: [str(RAW), str(t / "file.txt" / "o"), "participant"], 73),
        (lambda t: [str(RAW), str(t / "o"), "group"], 66),
        (
            lambda t: [
                str(RAW),
                str(t / "o"),
                "participant",
                "--participant-label",
                "01",
                "--run-id",
                "1",
                "--denoise-strategy",
                "simple",
                "-w",
                str(t / "w"),
                "--no-reports",
            ],
            66,
        ),
        (
            lambda t: [
                str(RAW),
                str(t / "o"),
                "participant",
                "--bids-filter-file",
                str(t / "filter.json"),
            ],
            65,
        ),
        (
            lambda t: [
                str(RAW),
                str(t / "o"),
                "participant",
                "--config-file",
                str(t / "nope.toml"),
            ],
            66,
        ),
    ],
    ids=[
        "17-level",
        "66-no-input",
        "16-invalid",
        "18-participant",
        "18-task",
        "64-option",
        "64-strategy",
        "73-output",
        "66-group",
        "66-no-confounds",
        "65-filter",
        "66-config",
    ],
)
def test_exit_codes(tmp_path, make_argv, expected):
    (tmp_path / "file.txt").write_text("a file, not a directory")
    (tmp_path / "filter.json").write_text("{broken")
    assert main(make_argv(tmp_path)) == expected


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert "masker-wf" in capsys.readouterr().out


def test_config_file_and_filters(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        'denoise-strategy = "simple"\n[masker]\nsmoothing_fwhm = 12.0\n'
        'participant_label = ["01"]\n'
    )
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": {"run": 1, "session": None}}))
    out = tmp_path / "out"
    code = main(
        [
            str(FMRIPREP),
            str(out),
            "participant",
            "--config-file",
            str(config),
            "--bids-filter-file",
            str(filters),
            "-w",
            str(tmp_path / "w"),
            "--no-reports",
            "--output-desc",
            "simple",
        ]
    )
    assert code == 0
    produced = sorted(p.name for p in out.glob("sub-*/func/*_bold.nii.gz"))
    assert produced == [f"sub-01_task-rhymes_run-01_space-{SPACE}_desc-simple_bold.nii.gz"]
    sidecar = json.loads(
        (out / "sub-01/func" / produced[0].replace(".nii.gz", ".json")).read_text()
    )
    assert sidecar["MaskerParameters"]["smoothing_fwhm"] == 12.0
    assert sidecar["DenoiseStrategy"] == "simple"


def test_resume_after_kill(tmp_path):
    """Kill the App after its first run, re-run: finished runs come from the Pydra cache."""
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [
        str(FMRIPREP),
        str(out),
        "participant",
        "-w",
        str(work),
        "--no-reports",
        "--smoothing-fwhm",
        "10",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "masker_wf.cli.run", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    first = (
        out
        / "sub-01/func"
        / (f"sub-01_task-rhymes_run-01_space-{SPACE}_desc-denoised_provenance.json")
    )
    deadline = time.monotonic() + 120
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert first.exists()
    finished = sorted(p.name for p in out.glob("sub-*/func/*_provenance.json"))
    assert 1 <= len(finished) < 4  # killed mid-way
    # Only finished nodes (with a result) must be reused; the node the kill interrupted
    # is rightly recomputed.
    cached_dirs = {
        p: p.stat().st_mtime_ns
        for p in work.glob("sub-*/pydra/*")  # each participant's own cache
        if (p / "_result.pklz").exists()
    }
    assert main(argv) == 0
    recomputed = []
    for path in out.glob("sub-*/func/*_provenance.json"):
        record = json.loads(path.read_text())
        if path.name in finished:
            assert record["Pydra"]["reused_from_cache"] is True, path.name
        else:
            recomputed.append(bool(record["Pydra"]["computed"]))
    assert any(recomputed)  # the runs the kill interrupted were computed now
    after = {p: p.stat().st_mtime_ns for p in work.glob("sub-*/pydra/*")}
    for path, mtime in cached_dirs.items():
        if path.name.startswith(("workflow-", "python-")) and path in after:
            assert after[path] == mtime
    assert len(list(out.glob("sub-*/func/*_desc-denoised_bold.nii.gz"))) == 4
    # No temporary file left behind by the killed process in the output dataset.
    assert not list(out.rglob(".*.tmp*"))


def test_custom_strategy_from_the_command_line(tmp_path):
    strategy = tmp_path / "strategy.json"
    strategy.write_text(
        json.dumps({"strategy": ["motion", "high_pass"], "motion": "basic", "columns": ["csf"]})
    )
    out = tmp_path / "out"
    argv = [
        str(FMRIPREP),
        str(out),
        "participant",
        "--participant-label",
        "01",
        "--run-id",
        "1",
        "--custom-strategy",
        str(strategy),
        "-w",
        str(tmp_path / "w"),
        "--no-reports",
    ]
    assert main(argv) == 0
    name = f"sub-01_task-rhymes_run-01_space-{SPACE}_desc-denoised_bold.json"
    sidecar = json.loads((out / "sub-01" / "func" / name).read_text())
    assert sidecar["DenoiseStrategy"] == "custom"
    assert sidecar["ConfoundColumns"] == sorted(
        ["cosine00", "csf", "rot_x", "rot_y", "rot_z", "trans_x", "trans_y", "trans_z"]
    )
    strategy.write_text('{"strategy": ["motion"], "unknown_key": 1}')
    assert main([*argv[:2], "participant", "--custom-strategy", str(strategy)]) == 65


# --- QA fixes -----------------------------------------------------------------------------


def _methods(page: Path) -> str:
    import html
    import re

    text = re.search(r"class=.methods.><p>(.*?)</p>", page.read_text(), re.S).group(1)
    return html.unescape(text)


def test_subject_methods_cover_every_run(app_run):
    out = app_run["out"]
    text = _methods(out / "sub-01.html")
    assert "(2 runs)" in text
    records = [
        json.loads(p.read_text()) for p in sorted(out.glob("sub-01/func/*_provenance.json"))
    ]
    censored = [r["Summary"]["volumes_total"] - r["Summary"]["volumes_kept"] for r in records]
    if len(set(censored)) > 1:
        assert f"between {min(censored)} and {max(censored)} volumes per run" in text
    else:
        assert f"the censored volumes ({censored[0]} volumes per run" in text
    # Butterworth filtering with censoring: the censored volumes were interpolated.
    assert "Butterworth band-pass filtering (0.01-0.2 Hz)" in text
    assert "cubic-spline interpolation of the censored volumes" in text
    assert "fMRIPrep's desc-brain mask" in text


def test_group_lists_failures_and_honours_participant_label(app_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(app_run["out"], out)
    failure = {"run": "sub-02_task-rhymes_run-03_bold", "bold": "x.nii.gz", "reason": "broken"}
    (out / "logs" / "failures_sub-02.json").write_text(json.dumps([failure]))
    assert main([str(RAW), str(out), "group", "--participant-label", "sub-01"]) == 0
    summary = pd.read_csv(out / "group" / "summary.tsv", sep="\t", dtype={"subject": str})
    assert set(summary["subject"]) == {"01"}
    assert "broken" not in (out / "index.html").read_text()  # sub-02 was not asked for
    assert main([str(RAW), str(out), "group"]) == 0
    index = (out / "index.html").read_text()
    # The failed run is a row of the run table, flagged, with its reason.
    assert '<span class="flag failed">failed</span>' in index
    assert "broken" in index
    assert main([str(RAW), str(out), "group", "--participant-label", "07"]) == 66
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(RAW), str(empty), "group"]) == 66
    assert main([str(tmp_path / "no-such-bids"), str(out), "group"]) == 66


def test_auto_strategy_is_decided_once_per_dataset(tmp_path, capsys):
    fmriprep = _copy_fmriprep(tmp_path)
    (fmriprep / "sub-01/func/sub-01_task-rhymes_run-02_desc-confounds_timeseries.tsv").unlink()
    (fmriprep / "sub-01/func/sub-01_task-rhymes_run-02_desc-confounds_timeseries.json").unlink(
        missing_ok=True
    )
    out = tmp_path / "out"
    argv = [str(fmriprep), str(out), "participant", "--participant-label", "01"]
    argv += ["-w", str(tmp_path / "w"), "--no-reports"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no confounds file for this run; the other runs use 'simple'" in err
    assert "--denoise-strategy none" in err
    produced = sorted(p.name for p in out.glob("sub-01/func/*_bold.json"))
    assert [n.split("_")[2] for n in produced] == ["run-01"]
    sidecar = json.loads((out / "sub-01/func" / produced[0]).read_text())
    assert sidecar["DenoiseStrategy"] == "simple"
    (failure,) = json.loads((out / "logs" / "failures_sub-01.json").read_text())
    assert "run-02" in failure["run"]
    # 'auto' is decided for the dataset, not for the selection: a selection where no run
    # has confounds still gets the recorded 'simple', and fails; the explicit flag works.
    only_run2 = [*argv, "--run-id", "2"]
    assert main(only_run2) == 66
    assert main([*argv, "--denoise-strategy", "none"]) == 0


def test_participants_without_bold_are_named(tmp_path, capsys):
    fmriprep = _copy_fmriprep(tmp_path)
    (fmriprep / "sub-03" / "anat").mkdir(parents=True)
    out = tmp_path / "out"
    argv = [str(fmriprep), str(out), "participant", "-w", str(tmp_path / "w"), "--no-reports"]
    code = main([*argv, "--participant-label", "01", "03", "04", "--run-id", "1"])
    assert code == 0
    err = capsys.readouterr().err
    assert "masker-wf: warning: participant(s) 04 not found in the dataset; skipped." in err
    assert "masker-wf: warning: no preprocessed BOLD run matches the selection for " in err
    assert "participant(s) 03; skipped." in err
    assert "UserWarning" not in err
    assert "1 run(s) of 1 participant(s) to process" in err
    assert main([*argv, "--participant-label", "03"]) == 18


def test_target_resolution_outputs_are_named_by_grid(tmp_path):
    out = tmp_path / "out"
    argv = [
        str(FMRIPREP),
        str(out),
        "participant",
        "--participant-label",
        "01",
        "--run-id",
        "1",
        "-w",
        str(tmp_path / "w"),
        "--no-reports",
    ]
    assert main(argv) == 0
    assert main([*argv, "--target-resolution", "4"]) == 0
    assert main([*argv, "--target-resolution", "2.5"]) == 0
    func = out / "sub-01" / "func"
    stem = f"sub-01_task-rhymes_run-01_space-{SPACE}"
    native = func / f"{stem}_desc-denoised_bold.nii.gz"
    for label, size in (("4mm", 4.0), ("2p5mm", 2.5)):
        bold = func / f"{stem}_res-{label}_desc-denoised_bold.nii.gz"
        assert nib.load(bold).header.get_zooms()[:3] == (size, size, size)
        sidecar = json.loads((func / f"{stem}_res-{label}_desc-denoised_bold.json").read_text())
        assert sidecar["Resolution"].startswith(f"{size:g}x{size:g}x{size:g} mm voxels")
        mask = json.loads((func / f"{stem}_res-{label}_desc-denoised_mask.json").read_text())
        assert mask["Resolution"] == sidecar["Resolution"]
    assert nib.load(native).header.get_zooms()[:3] == (12.5, 12.5, 16.0)  # not overwritten
    _validate(out)


def test_stale_outputs_of_a_run_are_removed(tmp_path):
    out = tmp_path / "out"
    argv = [
        str(FMRIPREP),
        str(out),
        "participant",
        "--participant-label",
        "01",
        "--run-id",
        "1",
        "-w",
        str(tmp_path / "w"),
    ]
    assert main([*argv, "--save-signals"]) == 0
    files = _outputs(out, "01", "01")
    signals = files["signals"].with_name(files["signals"].name + ".npy")
    assert signals.is_file()
    assert main([*argv, "--no-reports", "--denoise-strategy", "none"]) == 0
    assert not signals.exists()
    assert not signals.with_suffix(".json").exists()
    assert not files["timeseries"].with_name(files["timeseries"].name + ".tsv").exists()
    assert not list((out / "sub-01" / "figures").glob("*run-01*_report.html"))
    record = json.loads(
        files["provenance"].with_name(files["provenance"].name + ".json").read_text()
    )
    removed = record["RemovedStaleOutputs"]
    assert str(signals.relative_to(out)) in removed
    assert any(r.endswith("_timeseries.tsv") for r in removed)
    assert any(r.endswith("_report.html") for r in removed)
    # Another desc of the same run is someone else's output: untouched.
    assert main([*argv, "--no-reports", "--output-desc", "other"]) == 0
    assert files["bold"].with_name(files["bold"].name + ".nii.gz").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--output-desc", "my_desc"], "--output-desc 'my_desc' is not a valid BIDS label"),
        (["--clean-args", '{"butterworth__order": 3, "fitler": "cosine"}'], "['fitler']"),
        # The validator's messages (masker_wf._validation), which name spec parameters.
        (
            ["--high-pass", "0.1", "--low-pass", "0.05"],
            "high_pass (0.1 Hz) must be lower than low_pass (0.05 Hz)",
        ),
        (
            ["--mask-args", '{"lower_cutoff": 0.3}'],
            "mask_args: ['lower_cutoff'] are not options of the 'background' mask strategy",
        ),
        (["--mask-strategy", "epi", "--mask-args", '{"border_size": 1}'], "['border_size']"),
    ],
    ids=["desc", "clean-args", "band", "mask-args", "mask-args-epi"],
)
def test_usage_errors_before_processing(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = [str(FMRIPREP), str(out), "participant", "-w", str(tmp_path / "w"), *extra]
    assert main(argv) == 64
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_work_dir_is_a_file(tmp_path, capsys):
    work = tmp_path / "work.txt"
    work.write_text("a file")
    out = tmp_path / "out"
    assert main([str(FMRIPREP), str(out), "participant", "-w", str(work)]) == 73
    assert f"work directory '{work}'" in capsys.readouterr().err
    assert not out.exists()


def test_valid_options_and_ignored_mask_options(tmp_path, capsys, monkeypatch):
    """Valid --clean-args/--mask-args run; mask options are reported as ignored for runs
    using fMRIPrep's mask; the FD threshold line is drawn only with FD scrubbing."""
    import masker_wf.reports as reports

    calls = []
    original = reports.build_run_report

    def spy(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(reports, "build_run_report", spy)
    out = tmp_path / "out"
    argv = [
        str(FMRIPREP),
        str(out),
        "participant",
        "--participant-label",
        "01",
        "--run-id",
        "1",
        "-w",
        str(tmp_path / "w"),
        "--clean-args",
        '{"butterworth__order": 3, "extrapolate": false}',
        "--high-pass",
        "0.01",
        "--mask-strategy",
        "epi",
        "--mask-args",
        '{"lower_cutoff": 0.3}',
        "--denoise-strategy",
        "simple",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "masker-wf: warning: --mask-args/--mask-strategy ignored for 1 of 1 run(s)" in err
    assert calls[-1]["fd_threshold"] is None  # 'simple' does not scrub on FD
    sidecar = json.loads(
        (
            out
            / "sub-01/func"
            / f"sub-01_task-rhymes_run-01_space-{SPACE}_desc-denoised_bold.json"
        ).read_text()
    )
    assert sidecar["MaskerParameters"]["clean_args"]["butterworth__order"] == 3
    # With --no-use-input-mask the options are used: computed mask, strategy recorded.
    assert main([*argv, "--no-use-input-mask"]) == 0
    assert "masker-wf: warning: --mask-args" not in capsys.readouterr().err
    mask = json.loads(
        (
            out
            / "sub-01/func"
            / f"sub-01_task-rhymes_run-01_space-{SPACE}_desc-denoised_mask.json"
        ).read_text()
    )
    assert mask["MaskStrategy"] == "epi"
    assert mask["MaskArgs"] == {"lower_cutoff": 0.3}
    # (--motion basic: the full scrubbing set, 33 regressors for 35 volumes, is refused.)
    scrubbing = ["--denoise-strategy", "scrubbing", "--fd-threshold", "0.4", "--motion", "basic"]
    assert main([*argv, *scrubbing]) == 0
    assert calls[-1]["fd_threshold"] == 0.4


def _record(run, censored, columns, **parameters):
    return {
        "Run": f"sub-01_task-rest_run-{run}_space-{SPACE}_desc-preproc_bold",
        "Parameters": {"t_r": 2.0, "denoise_strategy": "scrubbing", **parameters},
        "Confounds": columns,
        "Summary": {"volumes_total": 100, "volumes_kept": 100 - censored},
        "MaskSource": "input",
    }


def test_subject_methods_text():
    from masker_wf.bids.methods import subject_methods

    versions = {"masker-wf": "0"}
    records = [
        _record("01", 5, ["a", "b"], high_pass=0.01, clean_args={"filter": "cosine"}),
        _record("02", 11, ["a", "b", "c"], high_pass=0.01, clean_args={"filter": "cosine"}),
    ]
    text = subject_methods(records, versions)
    assert "(2 runs)" in text
    assert "cosine high-pass filtering (0.01 Hz" in text
    assert "Butterworth" not in text
    assert "between 5 and 11 volumes per run (non-steady-state" in text
    assert "outliers; 5 in task-rest_run-01, 11 in task-rest_run-02)" in text
    assert "run-01: 2 (a, b); task-rest_run-02: 3 (a, b, c)" in text
    assert "spline" not in text  # no Butterworth filter: nothing was interpolated
    # No filter at all: censoring without interpolation.
    text = subject_methods([_record("01", 5, ["a"]), _record("02", 5, ["a"])], versions)
    assert "censoring of 5 volumes per run" in text
    assert "spline" not in text
    assert "regression of 1 confounds (scrubbing strategy): a" in text
    text = subject_methods([_record("01", 5, ["a"], low_pass=0.1)], versions)
    assert "Butterworth low-pass filtering (0.1 Hz)" in text
    assert "cubic-spline interpolation of the censored volumes (5 volumes" in text


def test_rerun_rewrites_only_when_output_options_change(tmp_path, capsys):
    argv = [
        str(FMRIPREP),
        str(tmp_path / "out"),
        "participant",
        "-w",
        str(tmp_path / "work"),
        "--participant-label",
        "01",
        "--no-reports",
    ]
    assert main(argv) == 0
    bold = sorted((tmp_path / "out").glob("sub-01/func/*_desc-denoised_bold.nii.gz"))
    stamps = [p.stat().st_mtime_ns for p in bold]
    capsys.readouterr()
    assert main(argv) == 0
    assert "outputs up to date" in capsys.readouterr().err
    assert [p.stat().st_mtime_ns for p in bold] == stamps
    # An output option changes what is written: the run's derivatives are written again.
    assert main([*argv, "--save-signals"]) == 0
    assert len(list((tmp_path / "out").glob("sub-01/func/*_signals.npy"))) == 2
    assert [p.stat().st_mtime_ns for p in bold] != stamps


def test_provenance_records_every_spec_parameter_with_its_value(app_run):
    from masker_wf import _spec

    path = _outputs(app_run["out"])["provenance"]
    record = json.loads(path.with_name(path.name + ".json").read_text())
    parameters = record["Parameters"]
    names = [p.name for p in _spec.for_face("provenance")]
    assert set(names) <= set(parameters)
    # The values the run used (MASKER_FLAGS), and the spec's default for the others.
    assert parameters["smoothing_fwhm"] == 15.0
    assert parameters["standardize"] == "zscore_sample"
    assert parameters["detrend"] is True
    assert (parameters["high_pass"], parameters["low_pass"]) == (0.01, 0.2)
    assert parameters["mask_strategy"] == _spec.by_name("mask_strategy").default
    assert parameters["high_variance_confounds"] is False


def test_a_broken_mask_or_confounds_json_is_named_as_the_file_at_fault(tmp_path, capsys):
    fmriprep = _copy_fmriprep(tmp_path)
    func = fmriprep / "sub-01" / "func"
    mask = func / f"sub-01_task-rhymes_run-01_space-{SPACE}_desc-brain_mask.nii.gz"
    mask.write_bytes(mask.read_bytes()[:100])
    sidecar = func / "sub-01_task-rhymes_run-02_desc-confounds_timeseries.json"
    sidecar.write_text("{bad")
    out = tmp_path / "out"
    argv = [str(fmriprep), str(out), "participant", "-w", str(tmp_path / "work")]
    argv += ["--participant-label", "01", "--denoise-strategy", "simple", "--no-reports"]
    assert main(argv) == 65
    failed = [line for line in capsys.readouterr().err.splitlines() if "FAILED on" in line]
    # Both used to be blamed on another file: the BOLD, and the confounds TSV.
    assert f"FAILED on {mask}: cannot read the mask image" in failed[0]
    assert f"FAILED on {sidecar}: confounds sidecar is not valid JSON" in failed[1]


def test_dry_run_names_the_runs_a_missing_confounds_file_would_fail(tmp_path, capsys):
    fmriprep = _copy_fmriprep(tmp_path)
    lost = fmriprep / "sub-01/func/sub-01_task-rhymes_run-01_desc-confounds_timeseries.tsv"
    lost.unlink()
    out = tmp_path / "out"
    argv = [str(fmriprep), str(out), "participant", "-w", str(tmp_path / "w"), "--dry-run"]
    # It used to say yes (0) to what the run refuses.
    assert main([*argv, "--denoise-strategy", "none", "compcor"]) == 1
    printed = capsys.readouterr().out
    bold = f"sub-01_task-rhymes_run-01_space-{SPACE}_desc-preproc_bold"
    assert f"would fail: {bold}: the 'compcor' denoising strategy needs" in printed
    assert "'none'" not in printed.split("would fail")[1]
    assert main([*argv, "--denoise-strategy", "none"]) == 0
    # Only that run selected: every run would fail for a missing input, as the run says;
    # with a strategy that needs no confounds beside, one set of two would be written (1).
    selected = ["--participant-label", "01", "--run-id", "01", "--denoise-strategy"]
    assert main([*argv, *selected, "simple"]) == 66
    assert main([*argv, *selected, "none", "simple"]) == 1
    assert not out.exists()


def test_target_resolution_does_not_warn_about_the_resampling_it_asks_for(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(FMRIPREP), str(out), "participant", "-w", str(tmp_path / "w"), "--no-reports"]
    argv += ["--participant-label", "01", "--run-id", "01", "--denoise-strategy", "simple"]
    assert main([*argv, "--target-resolution", "10"]) == 0
    err = capsys.readouterr().err
    # NiftiMasker's advice (give a target grid to save memory) was printed to users who had.
    assert "resampled to the mask_img resolution" not in err
    assert list(out.glob("sub-01/func/*_res-10mm_desc-denoised_bold.nii.gz"))
