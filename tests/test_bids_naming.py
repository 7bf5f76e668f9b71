"""Output names come from one module (pybids build_path over the packaged patterns) and are
the names the App has always written."""

from pathlib import Path

import pytest

from masker_wf.bids import naming

REPO = Path(__file__).resolve().parent.parent
RAW = REPO / "bids_examples" / "ds-masker"
FMRIPREP = RAW / "derivatives" / "fmriprep"
SPACE = "MNI152NLin2009cAsym"


def _previous_name(bold_file, desc, suffix, extension, res=None):
    """The App's names before naming.py: the source name split by hand (the reference)."""
    name = Path(bold_file).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    parts = [p for p in name.split("_")[:-1] if not p.startswith("desc-")]
    if res is not None:
        parts = [p for p in parts if not p.startswith("res-")]
        where = next(
            (i for i, p in enumerate(parts) if p.split("-", 1)[0] in ("den", "label")),
            len(parts),
        )
        parts.insert(where, f"res-{res}")
    return f"{'_'.join(parts)}_desc-{desc}_{suffix}{extension}"


def _previous_folder(bold_file, suffix):
    entities = dict(p.split("-", 1) for p in Path(bold_file).name.split("_")[:-1] if "-" in p)
    folder = Path(f"sub-{entities['sub']}")
    if suffix == "report":
        return folder / "figures"
    if "ses" in entities:
        folder = folder / f"ses-{entities['ses']}"
    return folder / "func"


def _bundled_bold_files():
    files = sorted(FMRIPREP.glob("sub-*/func/*_bold.nii.gz")) + sorted(
        RAW.glob("sub-*/func/*_bold.nii.gz")
    )
    assert len(files) >= 8  # 2 subjects x 2 runs, raw and preprocessed
    return files


OUTPUTS = (*naming.RUN_OUTPUTS, ("report", ".html"))


@pytest.mark.parametrize("res", [None, "4mm", "2p5mm"])
@pytest.mark.parametrize("desc", ["denoised", "smooth6mm"])
def test_names_are_byte_identical_to_the_previous_ones(desc, res):
    for bold in _bundled_bold_files():
        root = FMRIPREP if FMRIPREP in bold.parents else RAW
        for suffix, extension in OUTPUTS:
            path = naming.derivative_path(bold, desc, suffix, extension, res, dataset_root=root)
            expected = _previous_folder(bold, suffix) / _previous_name(
                bold, desc, suffix, extension, res
            )
            assert path.as_posix().encode() == expected.as_posix().encode()


def test_names_of_the_bundled_dataset_as_written_today():
    bold = (
        FMRIPREP
        / "sub-02/func"
        / f"sub-02_task-rhymes_run-01_space-{SPACE}_desc-preproc_bold.nii.gz"
    )
    stem = f"sub-02_task-rhymes_run-01_space-{SPACE}"
    assert naming.derivative_path(bold, "denoised", "bold", ".nii.gz", dataset_root=FMRIPREP) == (
        Path("sub-02/func") / f"{stem}_desc-denoised_bold.nii.gz"
    )
    assert naming.report_path(bold, "denoised", "4mm", dataset_root=FMRIPREP) == (
        Path("sub-02/figures")
        / f"{stem.replace(SPACE, SPACE + '_res-4mm')}_desc-denoised_report.html"
    )
    assert naming.subject_report_path("02") == Path("sub-02.html")
    output = Path("sub-02/func") / f"{stem}_desc-denoised_bold.nii.gz"
    assert naming.output_report_path(output) == Path("sub-02/figures") / (
        f"{stem}_desc-denoised_report.html"
    )
    assert naming.run_entities(output) == {
        "subject": "02",
        "task": "rhymes",
        "run": "01",  # zero padding kept
        "space": SPACE,
    }


def test_sessions_res_den_and_cohort_entities_are_kept_in_bids_order():
    name = f"sub-01_ses-a_task-rest_run-01_space-{SPACE}_cohort-2_res-2_den-91k_desc-preproc"
    name += "_bold.nii.gz"
    assert naming.derivative_path(name, "x", "mask", ".nii.gz") == Path("sub-01/ses-a/func") / (
        f"sub-01_ses-a_task-rest_run-01_space-{SPACE}_cohort-2_res-2_den-91k_desc-x_mask.nii.gz"
    )
    assert naming.derivative_name(name, "x", "bold", ".json", "4mm") == (
        f"sub-01_ses-a_task-rest_run-01_space-{SPACE}_cohort-2_res-4mm_den-91k_desc-x_bold.json"
    )


def test_entities_are_parsed_relative_to_the_dataset_root(tmp_path):
    # An 'anat' directory above the dataset must not make pybids read datatype 'anat'.
    root = tmp_path / "anat" / "fmriprep"
    bold = root / "sub-01" / "func" / "sub-01_task-rest_run-02_bold.nii.gz"
    assert naming.source_entities(bold, dataset_root=root)["datatype"] == "func"
    assert "datatype" not in naming.source_entities(bold)  # name only, no directory to misread
    assert naming.derivative_path(bold, "d", "bold", ".nii.gz") == Path("sub-01/func") / (
        "sub-01_task-rest_run-02_desc-d_bold.nii.gz"
    )


def test_patterns_ship_with_the_package():
    from importlib import resources

    patterns = resources.files("masker_wf.data").joinpath("derivatives_patterns.json")
    assert patterns.is_file()
    assert "default_path_patterns" in patterns.read_text()


def test_resolution_labels():
    assert naming.resolution_label((4.0, 4.0, 4.0)) == "4mm"
    assert naming.resolution_label((2.5, 2.5, 2.5, 2.0)) == "2p5mm"
    assert naming.resolution_label((3.0, 3.0, 4.0)) == "3x3x4mm"
