"""What the App decides for the user, and says (issue 13, items 8, 9 and 10): ``auto`` once
per output dataset, resampled masks, ``res-``, entity prefixes, datasets under datatype-like
directories, raw BOLD beside fMRIPrep outputs, the repetition time's source, the confound
parameters recorded (replayed through nilearn), config files that cannot be read."""

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from app_helpers import FMRIPREP, RAW, RUN, SPACE, STEM, copy_fmriprep, one_run_argv

from masker_wf.cli.run import main

CONFOUNDS = "sub-{s}/func/sub-{s}_task-rhymes_run-{r}_desc-confounds_timeseries.{e}"


def _drop_confounds(dataset: Path, subject: str) -> None:
    for run in ("01", "02"):
        for extension in ("tsv", "json"):
            (dataset / CONFOUNDS.format(s=subject, r=run, e=extension)).unlink()


def _strategies(out: Path) -> set:
    return {
        json.loads(p.read_text())["DenoiseStrategy"] for p in out.glob("sub-*/func/*_bold.json")
    }


def test_auto_strategy_is_decided_once_for_the_output_dataset(tmp_path, capsys):
    dataset = copy_fmriprep(tmp_path / "fmriprep")
    _drop_confounds(dataset, "02")
    out = tmp_path / "out"
    argv = [str(dataset), str(out), "participant", "-w", str(tmp_path / "w"), "--no-reports"]
    # sub-02 alone has no confounds, but the dataset does: 'simple', and sub-02 fails.
    assert main([*argv, "--participant-label", "02"]) == 66
    assert "the other runs use 'simple'" in capsys.readouterr().err
    assert main([*argv, "--participant-label", "01"]) == 0
    assert _strategies(out) == {"simple"}
    record = json.loads((out / "logs" / "denoise_strategy_auto.json").read_text())
    assert record["denoise_strategy"] == "simple"
    # Later invocations reuse the record, even when the input changed since.
    _drop_confounds(dataset, "01")
    assert main([*argv, "--participant-label", "01"]) == 66
    assert "as recorded in" in capsys.readouterr().err
    assert _strategies(out) == {"simple"}


def _tree(root: Path) -> dict:
    """Relative path -> (size, mtime) of everything under ``root``, directories included."""
    return {
        path.relative_to(root).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
    }


def test_dry_run_with_the_auto_strategy_writes_nothing(tmp_path, capsys):
    out, work, database = tmp_path / "out", tmp_path / "w", tmp_path / "index"
    argv = one_run_argv(FMRIPREP, out, work, "--no-reports")
    argv[argv.index("simple")] = "auto"
    dry_run = [*argv, "--dry-run", "--bids-database-dir", str(database)]
    # Nothing decided yet: the dry run says what it would record, and records nothing.
    assert main(dry_run) == 0
    assert "'simple' for this output dataset" in capsys.readouterr().err
    assert not out.exists()
    assert not work.exists()
    assert not database.exists()
    # Decided by a real run: the dry run reads the record and leaves every file as it is.
    assert main(argv) == 0
    capsys.readouterr()
    before = {"out": _tree(out), "work": _tree(work)}
    assert main(dry_run) == 0
    assert "as recorded in" in capsys.readouterr().err
    assert {"out": _tree(out), "work": _tree(work)} == before
    assert not database.exists()


def _shifted_mask(tmp_path: Path) -> Path:
    source = FMRIPREP / "sub-01" / "func" / f"{RUN}_desc-brain_mask.nii.gz"
    image = nib.load(source)
    affine = image.affine.copy()
    affine[0, 3] += image.header.get_zooms()[0]  # one voxel off
    path = tmp_path / "shifted_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine, image.header), path)
    return path


def test_misregistered_mask_is_reported_and_named_like_the_input(tmp_path, capsys):
    out = tmp_path / "out"
    argv = one_run_argv(FMRIPREP, out, tmp_path / "w")
    mask = _shifted_mask(tmp_path)
    assert main([*argv, "--mask-img", str(mask)]) == 0
    err = capsys.readouterr().err
    assert f"warning: the mask '{mask}' is not on the BOLD's grid" in err
    func = out / "sub-01" / "func"
    assert sorted(p.name for p in func.glob("*_bold.nii.gz")) == [f"{STEM}_bold.nii.gz"]
    # The mask fixed (fMRIPrep's own): the same names, one set, one row of the summary.
    assert main(argv) == 0
    assert "not on the BOLD's grid" not in capsys.readouterr().err
    assert sorted(p.name for p in func.glob("*_bold.nii.gz")) == [f"{STEM}_bold.nii.gz"]
    assert not list(out.rglob("*_res-*"))
    assert main([str(FMRIPREP), str(out), "group"]) == 0
    summary = pd.read_csv(out / "group" / "summary.tsv", sep="\t", dtype=str)
    assert len(summary) == 1


def test_entity_prefixes_are_accepted_like_sub(tmp_path):
    root = tmp_path / "sessions"
    shutil.copy(FMRIPREP / "dataset_description.json", root.mkdir() or root)
    for source in sorted((FMRIPREP / "sub-01" / "func").iterdir()):
        target = (
            root / "sub-01" / "ses-02" / "func" / source.name.replace("sub-01_", "sub-01_ses-02_")
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    out = tmp_path / "out"
    argv = [str(root), str(out), "participant", "-w", str(tmp_path / "w"), "--no-reports"]
    argv += ["--participant-label", "sub-01", "--session-id", "ses-02"]
    assert main([*argv, "--task-id", "task-rhymes", "--run-id", "run-01"]) == 0
    produced = [p.name for p in out.glob("sub-01/ses-02/func/*_desc-denoised_bold.nii.gz")]
    assert produced == [
        f"sub-01_ses-02_task-rhymes_run-01_space-{SPACE}_desc-denoised_bold.nii.gz"
    ]


@pytest.mark.parametrize("parents", ["func/sub-pilot", "perf/.cache"], ids=["func", "perf"])
def test_dataset_under_a_datatype_like_directory(tmp_path, parents):
    dataset = copy_fmriprep(tmp_path / parents / "fmriprep")
    out = tmp_path / "out"
    assert main(one_run_argv(dataset, out, tmp_path / "w", "--no-reports")) == 0
    assert (out / "sub-01" / "func" / f"{STEM}_bold.nii.gz").is_file()


def test_raw_bold_beside_fmriprep_outputs_is_a_warning(tmp_path, capsys):
    argv = one_run_argv(RAW, tmp_path / "out", tmp_path / "w", "--no-reports")
    argv[argv.index("simple")] = "none"
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"warning: cleaning the raw BOLD of '{RAW}', while '{FMRIPREP}' holds" in err
    assert f"--derivatives fmriprep={FMRIPREP}" in err
    argv += ["--derivatives", f"fmriprep={FMRIPREP}"]
    assert main(argv) == 0
    assert "cleaning the raw BOLD" not in capsys.readouterr().err


def _without_sidecar_repetition_time(fmriprep: Path, header_t_r: float) -> None:
    """Remove the first run's sidecar RepetitionTime; set its header's pixdim[4]."""
    func = fmriprep / "sub-01" / "func"
    sidecar = func / f"{RUN}_desc-preproc_bold.json"
    meta = json.loads(sidecar.read_text())
    del meta["RepetitionTime"]
    sidecar.write_text(json.dumps(meta))
    bold = func / f"{RUN}_desc-preproc_bold.nii.gz"
    image = nib.load(bold)
    image.header.set_zooms((*image.header.get_zooms()[:3], header_t_r))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header), bold)


def test_repetition_time_comes_from_the_sidecars_before_the_header(tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(RAW, raw)
    fmriprep = raw / "derivatives" / "fmriprep"
    _without_sidecar_repetition_time(fmriprep, header_t_r=3.0)
    out = tmp_path / "out"
    argv = one_run_argv(raw, out, tmp_path / "w", "--no-reports")
    assert main([*argv, "--derivatives", f"fmriprep={fmriprep}"]) == 0
    written = json.loads((out / "sub-01" / "func" / f"{STEM}_bold.json").read_text())
    assert written["RepetitionTime"] == 2.0  # the raw sidecar's, not the header's 3.0
    err = capsys.readouterr().err
    assert "RepetitionTime 2.0 s (the raw BOLD's sidecar) differs from the NIfTI header" in err


def test_a_run_without_any_repetition_time_is_refused_before_any_output(tmp_path, capsys):
    fmriprep = copy_fmriprep(tmp_path / "fmriprep")
    _without_sidecar_repetition_time(fmriprep, header_t_r=0.0)
    out = tmp_path / "out"
    argv = one_run_argv(fmriprep, out, tmp_path / "w", "--no-reports")
    assert main(argv) == 65
    err = capsys.readouterr().err
    assert "no repetition time" in err
    assert "--t-r SECONDS" in err
    assert not list(out.glob("sub-01/func/*_bold.json"))
    # Given on the command line, it is the run's.
    assert main([*argv, "--t-r", "2"]) == 0
    written = json.loads((out / "sub-01" / "func" / f"{STEM}_bold.json").read_text())
    assert written["RepetitionTime"] == 2.0


@pytest.mark.parametrize(
    "strategy",
    [
        ["--denoise-strategy", "simple"],
        ["--denoise-strategy", "scrubbing", "--fd-threshold", "0.5", "--std-dvars-threshold", "2"],
        ["--denoise-strategy", "compcor", "--n-compcor", "3"],
        ["--denoise-strategy", "simple", "--global-signal", "basic"],
    ],
    ids=["simple", "scrubbing", "compcor", "simple+gsr"],
)
def test_recorded_confound_parameters_replay_through_nilearn(tmp_path, strategy):
    from nilearn.interfaces.fmriprep import load_confounds

    out = tmp_path / "out"
    argv = one_run_argv(FMRIPREP, out, tmp_path / "w", "--no-reports")
    argv = argv[: argv.index("--denoise-strategy")] + strategy
    assert main(argv) == 0
    func = out / "sub-01" / "func"
    record = json.loads((func / f"{STEM}_provenance.json").read_text())
    parameters = record["Parameters"]["confounds"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        confounds, sample_mask = load_confounds(
            str(FMRIPREP / "sub-01" / "func" / f"{RUN}_desc-preproc_bold.nii.gz"), **parameters
        )
    design = pd.read_csv(func / f"{STEM}_timeseries.tsv", sep="\t")
    assert list(design.columns) == list(confounds.columns)
    np.testing.assert_allclose(design.to_numpy(), confounds.to_numpy(), rtol=1e-8, atol=1e-10)
    kept = list(range(len(design))) if sample_mask is None else list(sample_mask)
    assert record["SampleMask"] == kept
    # Nothing the strategy did not apply is recorded.
    components = set(parameters["strategy"])
    assert ("fd_threshold" in parameters) == ("scrub" in components)
    assert ("global_signal" in parameters) == ("global_signal" in components)
    assert ("n_compcor" in parameters) == ("compcor" in components)


def test_binary_config_file_is_named(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_bytes(b"\xff\xfe\x00\x01binary\x89PNG")
    argv = [str(FMRIPREP), str(tmp_path / "out"), "participant", "--config-file", str(config)]
    assert main(argv) == 65
    assert f"--config-file '{config}' cannot be parsed" in capsys.readouterr().err


def test_group_dry_run_writes_nothing(tmp_path, capsys):
    # It used to write the group table and index page.
    out, work = tmp_path / "out", tmp_path / "w"
    assert main(one_run_argv(FMRIPREP, out, work, "--no-reports")) == 0
    before = _tree(out)
    group = [str(FMRIPREP), str(out), "group", "--dry-run"]
    assert main(group) == 0
    assert "nothing is written" in capsys.readouterr().out
    assert _tree(out) == before
    assert not (out / "group").exists()
