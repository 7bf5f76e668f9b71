"""Truncated or corrupt input files: every front end names the file at fault."""

import pytest

from masker_wf import NiftiMasker
from masker_wf._steps import StepError
from masker_wf.workflow import run_masker_workflow


def _truncated(source, destination, keep_fraction=None):
    raw = source.read_bytes()
    # Dropping the end keeps the header readable: the error comes when the data are read.
    cut = len(raw) - 40 if keep_fraction is None else int(len(raw) * keep_fraction)
    destination.write_bytes(raw[:cut])
    return destination


@pytest.mark.parametrize("keep_fraction", [None, 0.5])
def test_estimator_names_a_corrupt_bold(tmp_path, ds003_path, keep_fraction):
    bold = _truncated(ds003_path, tmp_path / "bold.nii.gz", keep_fraction)
    with pytest.raises(ValueError, match=r"bold\.nii\.gz") as caught:
        NiftiMasker().fit_transform(bold)
    assert "truncated or corrupt" in str(caught.value) or "Cannot read" in str(caught.value)


def test_estimator_names_a_corrupt_mask(tmp_path, ds003_path, ds003_mask_path):
    mask = _truncated(ds003_mask_path, tmp_path / "mask.nii.gz")
    with pytest.raises(ValueError, match=r"mask\.nii\.gz"):
        NiftiMasker(mask_img=mask).fit_transform(ds003_path)


def test_workflow_blames_the_corrupt_mask_not_the_bold(tmp_path, ds003_path, ds003_mask_path):
    mask = _truncated(ds003_mask_path, tmp_path / "mask.nii.gz")
    with pytest.raises(StepError) as caught:
        run_masker_workflow(ds003_path, mask_file=mask, cache_root=tmp_path / "cache")
    assert caught.value.input_file is not None
    assert str(caught.value.input_file).endswith("mask.nii.gz")
    assert "truncated or corrupt" in str(caught.value)
