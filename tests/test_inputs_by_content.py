"""Inputs are identified by content, through symlinks (issue 13, items 2 and 3).

A rewritten symlink target is a new input (the hash memo follows the link); a DataLad /
git-annex dataset, whose files are relative links into ``.git/annex/objects``, is processed
like the plain dataset, and its outputs name the paths users see (``bids:`` URIs).
"""

import gzip
import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from app_helpers import RUN, STEM, cleaned_data, copy_fmriprep, one_run_argv

from masker_wf.cli.run import main
from masker_wf.workflow import run_masker_workflow

BOLD = f"{RUN}_desc-preproc_bold.nii.gz"


def _annex(dataset: Path, backend: str = "SHA256E") -> Path:
    """Turn ``dataset`` into a git-annex-style one: every image and table becomes a relative
    symlink to a read-only object under ``.git/annex/objects/`` (as ``datalad get`` leaves
    them); JSON sidecars stay plain files, as DataLad keeps small text files in git. The
    ``SHA256E`` backend keeps the file's extension in the object's name, ``SHA256`` not."""
    objects = dataset / ".git" / "annex" / "objects"
    for path in sorted(dataset.rglob("*")):
        if ".git" in path.parts or path.is_symlink() or not path.is_file():
            continue
        if not path.name.endswith((".nii.gz", ".tsv")):
            continue
        _annex_file(path, objects, path.read_bytes(), backend)
    return dataset


def _annex_file(path: Path, objects: Path, data: bytes, backend: str = "SHA256E") -> Path:
    extension = "".join(path.suffixes) if backend.endswith("E") else ""
    key = f"{backend}-s{len(data)}--{hashlib.sha256(data).hexdigest()}{extension}"
    bucket = hashlib.md5(key.encode()).hexdigest()
    target = objects / bucket[:3] / bucket[3:6] / key / key
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(0o444)
    path.unlink()
    path.symlink_to(os.path.relpath(target, path.parent))
    return target


def _rewritten(path: Path, factor: float) -> bytes:
    """The bytes of ``path``'s image with its data scaled (another image, same header)."""
    image = nib.load(path)
    data = np.asarray(image.dataobj) * np.float32(factor)
    rewritten = nib.Nifti1Image(data.astype(np.float32), image.affine, image.header)
    content = rewritten.to_bytes()
    return gzip.compress(content) if path.name.endswith(".gz") else content


def test_rewritten_symlink_target_is_hashed_again(tmp_path, ds003_path):
    """Pydra level: the segmented hash's memo follows the link to its target."""
    target = tmp_path / "data" / "bold.nii"
    target.parent.mkdir()
    nib.save(nib.load(ds003_path), target)
    link = tmp_path / "bold.nii"
    link.symlink_to(target)
    link_mtime = link.lstat().st_mtime_ns
    kwargs = {"cache_root": tmp_path / "cache", "segmented_hash": True, "t_r": 2.0}
    first = np.load(run_masker_workflow(link, **kwargs)["signals_file"])
    target.write_bytes(_rewritten(target, 3.0))
    os.utime(link, ns=(link_mtime, link_mtime), follow_symlinks=False)
    assert link.lstat().st_mtime_ns == link_mtime  # the link itself did not change
    second = np.load(run_masker_workflow(link, **kwargs)["signals_file"])
    np.testing.assert_allclose(second, 3.0 * first, rtol=1e-4, atol=1e-3)


def test_app_reruns_when_a_symlink_target_changes(tmp_path, capsys):
    dataset = copy_fmriprep(tmp_path / "fmriprep")
    bold = dataset / "sub-01" / "func" / BOLD
    target = tmp_path / "store" / BOLD
    target.parent.mkdir()
    bold.rename(target)
    bold.symlink_to(target)
    argv = one_run_argv(dataset, tmp_path / "out", tmp_path / "work", "--no-reports")
    assert main(argv) == 0
    first = cleaned_data(tmp_path / "out")
    # Rewrite the file the link points to; the link is untouched.
    target.write_bytes(_rewritten(target, 2.0))
    capsys.readouterr()
    assert main(argv) == 0
    assert "outputs up to date" not in capsys.readouterr().err
    assert not np.array_equal(cleaned_data(tmp_path / "out"), first)
    record = json.loads(
        (tmp_path / "out" / "sub-01" / "func" / f"{STEM}_provenance.json").read_text()
    )
    assert (
        record["Inputs"]["bold"]["hash"]
        == "sha256:" + hashlib.sha256(target.read_bytes()).hexdigest()
    )


@pytest.fixture(params=["SHA256E", "SHA256"])
def annexed(tmp_path, request):
    plain = copy_fmriprep(tmp_path / "plain")
    annexed = _annex(copy_fmriprep(tmp_path / "annexed"), request.param)
    return {"plain": plain, "annexed": annexed}


def test_datalad_dataset_is_processed_like_the_plain_one(annexed, tmp_path):
    bold = annexed["annexed"] / "sub-01" / "func" / BOLD
    assert bold.is_symlink()
    assert not os.path.isabs(os.readlink(bold))
    results = {}
    for name, dataset in annexed.items():
        out = tmp_path / f"out-{name}"
        assert main(one_run_argv(dataset, out, tmp_path / f"work-{name}", "--no-reports")) == 0
        func = out / "sub-01" / "func"
        results[name] = {
            "data": cleaned_data(out),
            "sidecar": json.loads((func / f"{STEM}_bold.json").read_text()),
            "record": json.loads((func / f"{STEM}_provenance.json").read_text()),
        }
    np.testing.assert_array_equal(results["annexed"]["data"], results["plain"]["data"])
    assert results["annexed"]["sidecar"] == results["plain"]["sidecar"]
    sources = results["annexed"]["sidecar"]["Sources"]
    assert sources[0] == f"bids:preprocessed:sub-01/func/{BOLD}"
    assert all(s.startswith("bids:preprocessed:sub-01/") for s in sources), sources
    plain_inputs = results["plain"]["record"]["Inputs"]
    for role, entry in results["annexed"]["record"]["Inputs"].items():
        assert entry["uri"] == plain_inputs[role]["uri"]
        assert entry["hash"] == plain_inputs[role]["hash"]
        assert ".git" not in entry["path"]
        assert Path(entry["path"]).is_relative_to(annexed["annexed"])


def test_datalad_link_to_a_new_object_triggers_a_rerun(annexed, tmp_path, capsys):
    """What ``datalad run``/``git annex add`` of a new version does: a new object, the link
    pointed at it."""
    dataset = annexed["annexed"]
    argv = one_run_argv(dataset, tmp_path / "out", tmp_path / "work", "--no-reports")
    assert main(argv) == 0
    first = cleaned_data(tmp_path / "out")
    bold = dataset / "sub-01" / "func" / BOLD
    _annex_file(bold, dataset / ".git" / "annex" / "objects", _rewritten(bold, 0.5))
    capsys.readouterr()
    assert main(argv) == 0
    assert "outputs up to date" not in capsys.readouterr().err
    assert not np.array_equal(cleaned_data(tmp_path / "out"), first)
    assert main(argv) == 0
    assert "outputs up to date" in capsys.readouterr().err
