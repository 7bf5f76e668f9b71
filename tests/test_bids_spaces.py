"""BIDS-valid outputs in every space: the official validator on the App's outputs for a template
space, space-T1w, non-standard space labels, a res- resampling and a raw-BIDS input, on
datasets built by nilearn's own fake fMRIPrep generator (tiny: 4x4x4 voxels, 30 volumes)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from nilearn._utils.data_gen import create_fake_bids_dataset

from masker_wf.bids.layout import RunInputs
from masker_wf.bids.spaces import is_standard_space, spatial_reference
from masker_wf.cli.run import main

# MNI152NLin2009cAsym is a standard template; T1w, MNI and "study" are not.
SPACES = ("MNI152NLin2009cAsym", "T1w", "MNI", "study")


def _validate(path: Path) -> None:
    completed = subprocess.run(
        ["bids-validator-deno", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    issues = json.loads(completed.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert completed.returncode == 0, errors
    assert not errors


@pytest.fixture(scope="module")
def fake_fmriprep(tmp_path_factory):
    """nilearn's fake raw dataset and fMRIPrep derivatives, made indexable by pybids."""
    root = create_fake_bids_dataset(
        base_dir=tmp_path_factory.mktemp("nilearn"),
        n_sub=1,
        n_ses=0,
        tasks=["main"],
        n_runs=[1],
        spaces=SPACES,
    )
    # nilearn writes neither description; pybids needs both.
    description = {"Name": "nilearn fake dataset", "BIDSVersion": "1.10.0"}
    (root / "dataset_description.json").write_text(json.dumps(description))
    derivatives = root / "derivatives"
    (derivatives / "dataset_description.json").write_text(
        json.dumps(
            {
                **description,
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}],
            }
        )
    )
    return root


@pytest.fixture(scope="module")
def app_outputs(fake_fmriprep, tmp_path_factory):
    """The App on every space of the fake fMRIPrep derivatives, native and at res-2mm."""
    out = tmp_path_factory.mktemp("out") / "out"
    work = tmp_path_factory.mktemp("work")
    argv = [
        str(fake_fmriprep),
        str(out),
        "participant",
        "--derivatives",
        f"fmriprep={fake_fmriprep / 'derivatives'}",
        "-w",
        str(work),
        "--denoise-strategy",
        "simple",
        "--motion",
        "basic",
        "--no-reports",
    ]
    assert main(argv) == 0
    assert main([*argv, "--space", "T1w", "study", "--target-resolution", "2"]) == 0
    return out


def _sidecar(out: Path, space: str, suffix: str, res: str = "") -> dict:
    name = f"sub-01_task-main_run-01_space-{space}{res}_desc-denoised_{suffix}.json"
    return json.loads((out / "sub-01" / "func" / name).read_text())


def test_every_space_of_nilearns_fake_fmriprep_passes_the_validator(app_outputs, tmp_path):
    _validate(app_outputs)
    # The validator does require the key: without it, space-T1w outputs are errors.
    copy = tmp_path / "copy"
    shutil.copytree(app_outputs, copy)
    sidecar = copy / "sub-01/func/sub-01_task-main_run-01_space-T1w_desc-denoised_bold.json"
    content = json.loads(sidecar.read_text())
    del content["SpatialReference"]
    sidecar.write_text(json.dumps(content))
    completed = subprocess.run(
        ["bids-validator-deno", "--format", "json", str(copy)], capture_output=True, text=True
    )
    assert completed.returncode == 16
    assert "SIDECAR_KEY_REQUIRED" in completed.stdout
    for space in SPACES:
        bold, mask = _sidecar(app_outputs, space, "bold"), _sidecar(app_outputs, space, "mask")
        if is_standard_space(space):
            assert "SpatialReference" not in bold
        else:
            assert bold["SpatialReference"].startswith("bids:")
            assert mask["SpatialReference"] == bold["SpatialReference"]


def test_spatial_reference_points_at_the_image_defining_the_space(app_outputs):
    # space-T1w: the subject's T1w (nilearn's fake derivatives have no desc-preproc_T1w).
    assert _sidecar(app_outputs, "T1w", "bold")["SpatialReference"] == (
        "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    )
    # Another label: the input BOLD in that space is the only image defining it.
    assert _sidecar(app_outputs, "study", "bold")["SpatialReference"] == (
        "bids:fmriprep:sub-01/func/sub-01_task-main_run-01_space-study_desc-preproc_bold.nii.gz"
    )


def test_resampled_outputs_carry_resolution_and_spatial_reference(app_outputs):
    for space in ("T1w", "study"):
        bold = _sidecar(app_outputs, space, "bold", "_res-2mm")
        assert bold["Resolution"].startswith("2x2x2 mm voxels, resampled from")
        assert bold["SpatialReference"] == _sidecar(app_outputs, space, "bold")["SpatialReference"]
        assert _sidecar(app_outputs, space, "mask", "_res-2mm")["Resolution"]


def test_raw_bids_input_passes_the_validator(fake_fmriprep, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(fake_fmriprep, raw, ignore=shutil.ignore_patterns("derivatives"))
    out = tmp_path / "out"
    argv = [str(raw), str(out), "participant", "-w", str(tmp_path / "w"), "--no-reports"]
    assert main(argv) == 0
    sidecar = json.loads(
        (out / "sub-01/func/sub-01_task-main_run-01_desc-denoised_bold.json").read_text()
    )
    assert "SpatialReference" not in sidecar  # no space entity: the raw BOLD's own grid
    _validate(out)


def _run(bold: Path, root: Path, **metadata) -> RunInputs:
    entities = dict(part.split("-", 1) for part in bold.name.split("_")[:-1])
    entities = {{"sub": "subject", "ses": "session"}.get(k, k): v for k, v in entities.items()}
    return RunInputs(bold_file=bold, entities=entities, metadata=metadata, dataset_root=root)


def test_spatial_reference_prefers_the_inputs_own_then_fmripreps_boldref(tmp_path):
    func = tmp_path / "sub-01" / "ses-1" / "func"
    anat = tmp_path / "sub-01" / "anat"
    func.mkdir(parents=True)
    anat.mkdir(parents=True)
    bold = func / "sub-01_ses-1_task-x_space-T1w_desc-preproc_bold.nii.gz"
    t1w = anat / "sub-01_desc-preproc_T1w.nii.gz"  # fMRIPrep's anatomy of all sessions
    for path in (bold, t1w):
        path.touch()
    assert spatial_reference(_run(bold, tmp_path)) == t1w
    boldref = func / "sub-01_ses-1_task-x_space-T1w_boldref.nii.gz"
    boldref.touch()
    assert spatial_reference(_run(bold, tmp_path)) == boldref
    given = _run(bold, tmp_path, SpatialReference="bids::sub-01/anat/other_T1w.nii.gz")
    assert spatial_reference(given) == tmp_path / "sub-01/anat/other_T1w.nii.gz"
    uri = "https://templateflow.s3.amazonaws.com/tpl-X/tpl-X_T1w.nii.gz"
    assert spatial_reference(_run(bold, tmp_path, SpatialReference=uri)) == uri
    template = func / "sub-01_ses-1_task-x_space-MNI152NLin6Asym_desc-preproc_bold.nii.gz"
    assert spatial_reference(_run(template, tmp_path)) is None
