"""pybids layer (raw + derivatives, participant restriction, filters, database) and the
derivatives writers; the App on an fMRIPrep-like dataset with sessions and a res- entity."""

import json
import shutil
import subprocess
import threading
from argparse import Namespace
from pathlib import Path

import nibabel as nib
import pytest
from bids.layout import Query

from masker_wf.bids import derivatives as deriv
from masker_wf.bids.layout import (
    BIDSInputError,
    build_layout,
    collect_participants,
    collect_runs,
    dataset_kind,
    load_filter_file,
)
from masker_wf.cli.run import main

REPO = Path(__file__).resolve().parent.parent
RAW = REPO / "bids_examples" / "ds-masker"
FMRIPREP = RAW / "derivatives" / "fmriprep"
SPACE = "MNI152NLin2009cAsym"


def test_dataset_kind():
    assert dataset_kind(RAW) == "raw"
    assert dataset_kind(FMRIPREP) == "derivative"
    with pytest.raises(BIDSInputError) as info:
        dataset_kind(RAW / "sub-01")
    assert info.value.exit_code == 16


def test_collect_participants_strips_prefix():
    args = Namespace(bids_dir=RAW, participant_label=["sub-02", "01"], derivatives=None)
    assert collect_participants(args) == ["02", "01"]
    args.participant_label = None
    assert collect_participants(args) == ["01", "02"]
    args.participant_label = ["03"]
    with pytest.raises(BIDSInputError) as info:
        collect_participants(args)
    assert info.value.exit_code == 18


def test_raw_plus_derivatives_layout():
    layout = build_layout(RAW, derivatives={"fmriprep": FMRIPREP}, participants=["01"])
    assert layout.get_subjects() == ["01"]  # sub-02 was not indexed
    runs = collect_runs(layout, ["01"], derivatives_mode=True, space=[SPACE])
    assert [r.entities["run"] for r in runs] == ["01", "02"]
    for run in runs:
        assert run.bold_file.parent.parent.parent == FMRIPREP
        assert run.mask_file.name.endswith("_desc-brain_mask.nii.gz")
        assert run.confounds_file.name == (
            f"sub-01_task-rhymes_run-{run.entities['run']}_desc-confounds_timeseries.tsv"
        )
        assert run.raw_file == RAW / "sub-01" / "func" / (
            f"sub-01_task-rhymes_run-{run.entities['run']}_bold.nii.gz"
        )
        assert run.metadata["RepetitionTime"] == 2.0
        assert run.dataset_root == FMRIPREP
    raw_runs = collect_runs(layout, ["01"], derivatives_mode=False)
    assert all(r.mask_file is None and r.confounds_file is None for r in raw_runs)
    assert raw_runs[0].metadata["TaskName"] == "rhymes"  # inherited from task-rhymes_bold.json
    with pytest.raises(BIDSInputError) as info:
        collect_runs(layout, ["01"], derivatives_mode=True, space=["fsLR"])
    assert info.value.exit_code == 18


def test_filter_file_and_database(tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": {"session": None, "run": "*", "task": "rhymes"}}))
    content = load_filter_file(filters)
    assert content["bold"]["session"] is Query.NONE
    assert content["bold"]["run"] is Query.ANY
    database = tmp_path / "db"
    layout = build_layout(FMRIPREP, participants=["02"], database_dir=database)
    assert layout.get_subjects() == ["01", "02"]  # a saved index holds every subject
    runs = collect_runs(layout, ["02"], derivatives_mode=True, bids_filters=content)
    assert len(runs) == 2
    assert any(database.iterdir())
    again = build_layout(FMRIPREP, participants=["02"], database_dir=database)
    assert len(collect_runs(again, ["02"], derivatives_mode=True)) == 2


def test_derivative_names_and_uris():
    name = f"sub-01_ses-a_task-rest_run-01_space-{SPACE}_res-2_desc-preproc_bold.nii.gz"
    assert deriv.derivative_name(name, "denoised", "mask", ".nii.gz") == (
        f"sub-01_ses-a_task-rest_run-01_space-{SPACE}_res-2_desc-denoised_mask.nii.gz"
    )
    bold = FMRIPREP / "sub-01" / "func" / "x.nii.gz"
    links = {"raw": RAW, "fmriprep": FMRIPREP}
    assert deriv.bids_uri(bold, links) == "bids:fmriprep:sub-01/func/x.nii.gz"
    assert deriv.bids_uri(RAW / "sub-01" / "a.nii", links) == "bids:raw:sub-01/a.nii"


def test_dataset_description_is_written_once_safely(tmp_path):
    links = {"preprocessed": FMRIPREP}
    sources = [json.loads((FMRIPREP / "dataset_description.json").read_text())]
    errors = []

    def write():
        try:
            for _ in range(20):
                deriv.write_dataset_description(
                    tmp_path, dataset_links=links, source_descriptions=sources
                )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    content = json.loads((tmp_path / "dataset_description.json").read_text())
    assert content["GeneratedBy"][0]["Name"] == "masker-wf"
    assert content["GeneratedBy"][1] == sources[0]["GeneratedBy"][0]
    assert not list(tmp_path.glob(".*tmp*"))
    (tmp_path / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "BIDSVersion": "1.10.0", "GeneratedBy": [{"Name": "other"}]})
    )
    with pytest.raises(ValueError, match="another pipeline"):
        deriv.write_dataset_description(tmp_path, dataset_links=links)


@pytest.fixture
def fmriprep_like(tmp_path):
    """An fMRIPrep-like dataset built from the bundled one: a session and a res-2 entity."""
    root = tmp_path / "fmriprep"
    root.mkdir()
    shutil.copy(FMRIPREP / "dataset_description.json", root)
    shutil.copy(FMRIPREP / ".bidsignore", root)
    for source in sorted((FMRIPREP / "sub-01" / "func").iterdir()):
        name = source.name.replace("sub-01_", "sub-01_ses-1_").replace(
            f"space-{SPACE}_", f"space-{SPACE}_res-2_"
        )
        target = root / "sub-01" / "ses-1" / "func" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        if name.endswith("_bold.json"):
            meta = json.loads(target.read_text())
            meta["Resolution"] = "Template MNI152NLin2009cAsym, 12.5x12.5x16 mm voxels (res-2)"
            target.write_text(json.dumps(meta))
    return root


def test_app_on_fmriprep_like_dataset(fmriprep_like, tmp_path):
    out = tmp_path / "out"
    code = main(
        [
            str(fmriprep_like),
            str(out),
            "participant",
            "-w",
            str(tmp_path / "w"),
            "--session-id",
            "1",
            "--run-id",
            "1",
            "--denoise-strategy",
            "compcor",
            "--n-compcor",
            "3",
        ]
    )
    assert code == 0
    func = out / "sub-01" / "ses-1" / "func"
    stem = f"sub-01_ses-1_task-rhymes_run-01_space-{SPACE}_res-2_desc-denoised"
    bold = func / f"{stem}_bold.nii.gz"
    assert bold.is_file()
    sidecar = json.loads((func / f"{stem}_bold.json").read_text())
    assert sidecar["Resolution"].startswith("Template")
    assert json.loads((func / f"{stem}_mask.json").read_text())["Resolution"]
    # the first 3 components of the "combined" mask (CSF and WM components come first)
    assert sum(c.startswith("a_comp_cor_") for c in sidecar["ConfoundColumns"]) == 3
    assert nib.load(bold).header.get_zooms()[3] == 2.0
    completed = subprocess.run(
        ["bids-validator-deno", "--format", "json", str(out)], capture_output=True, text=True
    )
    report = json.loads(completed.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert completed.returncode == 0, errors


def test_res_entity_of_resampled_outputs():
    name = f"sub-01_task-rest_space-{SPACE}_res-2_desc-preproc_bold.nii.gz"
    assert deriv.derivative_name(name, "denoised", "bold", ".nii.gz", "4mm") == (
        f"sub-01_task-rest_space-{SPACE}_res-4mm_desc-denoised_bold.nii.gz"
    )
    name = f"sub-01_task-rest_space-{SPACE}_den-91k_desc-preproc_bold.nii.gz"
    assert deriv.derivative_name(name, "x", "mask", ".nii.gz", "2p5mm") == (
        f"sub-01_task-rest_space-{SPACE}_res-2p5mm_den-91k_desc-x_mask.nii.gz"
    )
    assert deriv.resolution_label((4.0, 4.0, 4.0)) == "4mm"
    assert deriv.resolution_label((2.5, 2.5, 2.5, 2.0)) == "2p5mm"
    assert deriv.resolution_label((3.0, 3.0, 4.0)) == "3x3x4mm"


def test_missing_participants_are_passed_to_a_callback():
    args = Namespace(bids_dir=RAW, participant_label=["01", "09"], derivatives=None)
    missing = []
    assert collect_participants(args, on_missing=missing.extend) == ["01"]
    assert missing == ["09"]


def test_dataset_links_are_relative(tmp_path):
    out = tmp_path / "deep" / "out"
    deriv.write_dataset_description(out, dataset_links={"fmriprep": FMRIPREP, "raw": RAW})
    content = json.loads((out / "dataset_description.json").read_text())
    for name, root in (("fmriprep", FMRIPREP), ("raw", RAW)):
        link = content["DatasetLinks"][name]
        assert not link.startswith(("/", "file:")), link
        assert (out / link).resolve() == root.resolve()
    assert {s["URL"] for s in content["SourceDatasets"]} == {
        FMRIPREP.resolve().as_uri(),
        RAW.resolve().as_uri(),
    }


def test_a_space_matching_nothing_names_the_spaces_there(tmp_path, capsys):
    from masker_wf.cli.run import main

    fmriprep = (
        Path(__file__).resolve().parent.parent / "bids_examples/ds-masker/derivatives/fmriprep"
    )
    argv = [str(fmriprep), str(tmp_path / "out"), "participant", "--dry-run", "--space"]
    assert main([*argv, "T1w"]) == 18
    assert "are in: MNI152NLin2009cAsym." in capsys.readouterr().err
    assert main([*argv, "MNI152NLin2009cAsym:res-2"]) == 18
    err = capsys.readouterr().err
    assert "--space takes space labels only; select a resolution with --bids-filter-file" in err
    # With its entity's prefix, as the other labels are accepted.
    assert main([*argv, "space-MNI152NLin2009cAsym"]) == 0
