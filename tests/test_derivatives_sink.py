"""The derivative sink: masker_wf._steps.write_derivative and its Pydra and nipype faces.

A derivative is written to a temporary name in its final directory and renamed into place;
a ``.gz`` destination is gzipped with python-isal (or copied when already gzipped); the
sidecar follows the data. Output-side failures raise an OSError naming the destination and
leave neither a partial destination nor a temporary file.
"""

import contextlib
import errno
import gzip
import io
import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from masker_wf import _io, _steps
from masker_wf._steps import write_derivative


def _names(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def bold_nii(tmp_path, rng):
    data = rng.normal(size=(20, 21, 22, 12)).astype(np.float32)
    path = tmp_path / "in" / "bold.nii"
    path.parent.mkdir()
    nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(path)
    return path, data


@pytest.fixture
def out_dir(tmp_path):
    path = tmp_path / "derivatives" / "sub-01" / "func"
    path.mkdir(parents=True)
    return path


def test_uncompressed_image_is_gzipped_for_a_gz_destination(bold_nii, out_dir):
    source, data = bold_nii
    out = out_dir / "sub-01_desc-denoised_bold.nii.gz"
    sidecar = {"RepetitionTime": 2.0, "Sources": ["bids:raw:sub-01_bold.nii.gz"]}
    assert write_derivative(source, out, sidecar=sidecar) == out
    raw = out.read_bytes()
    # Python's gzip reads it, to exactly the input's bytes; nibabel reads the image.
    assert gzip.decompress(raw) == source.read_bytes()
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), data)
    assert json.loads((out_dir / "sub-01_desc-denoised_bold.json").read_text()) == sidecar
    assert _names(out_dir) == [out.with_suffix("").with_suffix(".json").name, out.name]


def test_gzipped_input_is_copied_as_it_is_and_decompressed_for_nii(bold_nii, out_dir, tmp_path):
    source, data = bold_nii
    gzipped = tmp_path / "in" / "bold.nii.gz"
    gzipped.write_bytes(gzip.compress(source.read_bytes(), compresslevel=6))
    copied = write_derivative(gzipped, out_dir / "copy_bold.nii.gz")
    assert copied.read_bytes() == gzipped.read_bytes()
    plain = write_derivative(gzipped, out_dir / "plain_bold.nii")
    assert plain.read_bytes() == source.read_bytes()
    np.testing.assert_array_equal(np.asarray(nib.load(plain).dataobj), data)


def test_any_file_is_copied_with_its_sidecar_next_to_it(tmp_path, out_dir):
    table = tmp_path / "confounds.tsv"
    table.write_text("a\tb\n1\t2\n")
    out = write_derivative(
        table, out_dir / "sub-01_desc-x_timeseries.tsv", sidecar={"a": {"Units": "mm"}}
    )
    assert out.read_text() == "a\tb\n1\t2\n"
    assert json.loads((out_dir / "sub-01_desc-x_timeseries.json").read_text()) == {
        "a": {"Units": "mm"}
    }


class _FullDisk(io.FileIO):
    """A file that accepts ``limit`` bytes, then fails as a full disk does."""

    def __init__(self, path, limit):
        super().__init__(path, "wb")
        self.limit = limit

    def write(self, data):
        if self.tell() + memoryview(data).nbytes > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


@pytest.mark.parametrize("name", ["bold.nii.gz", "bold.nii"])
def test_full_disk_names_the_output_and_leaves_no_partial_file(
    bold_nii, out_dir, monkeypatch, name
):
    source, _ = bold_nii
    out = out_dir / name
    out.write_bytes(b"previous run")
    monkeypatch.setattr(_io, "_open_for_writing", lambda path: _FullDisk(path, limit=100_000))
    with pytest.raises(OSError, match=r"No space left on device") as caught:
        write_derivative(source, out, sidecar={"a": 1})
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(out)
    assert str(out) in str(caught.value)
    # The previous file is untouched, no temporary file is left, the sidecar was not written.
    assert out.read_bytes() == b"previous run"
    assert _names(out_dir) == [name]


def test_a_file_in_the_way_of_the_output_directory_is_named(bold_nii, tmp_path):
    source, _ = bold_nii
    in_the_way = tmp_path / "derivatives"
    in_the_way.write_text("not a directory")
    out = in_the_way / "sub-01" / "func" / "sub-01_bold.nii.gz"
    with pytest.raises(NotADirectoryError) as caught:
        write_derivative(source, out)
    assert caught.value.filename == str(out)
    message = str(caught.value)
    assert str(out) in message
    assert "Not a directory" in message
    assert in_the_way.read_text() == "not a directory"
    assert caught.value.step == "write_derivative"


def test_a_missing_output_directory_or_a_directory_at_the_destination_is_named(
    bold_nii, tmp_path, out_dir
):
    source, _ = bold_nii
    missing = tmp_path / "nowhere" / "sub-01_bold.nii.gz"
    with pytest.raises(FileNotFoundError, match="nowhere") as caught:
        write_derivative(source, missing)
    assert caught.value.filename == str(missing)
    assert not (tmp_path / "nowhere").exists()
    occupied = out_dir / "sub-01_bold.nii"
    occupied.mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        write_derivative(source, occupied)
    assert caught.value.filename == str(occupied)
    assert _names(out_dir) == ["sub-01_bold.nii"]


@contextlib.contextmanager
def _unwritable(directory: Path):
    """A directory nobody may write into, root included.

    Root ignores permission bits, so as root the directory is made immutable
    (``chattr +i``, EPERM for every user); otherwise its write bits are removed.
    """
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)


def test_a_read_only_directory_is_named(bold_nii, out_dir):
    source, _ = bold_nii
    target = out_dir / "sub-01_bold.nii.gz"
    with _unwritable(out_dir), pytest.raises(PermissionError) as caught:
        write_derivative(source, target)
    assert caught.value.filename == str(target)
    assert _names(out_dir) == []


def test_a_missing_input_is_named_and_nothing_is_written(tmp_path, out_dir):
    missing = tmp_path / "no_such_bold.nii"
    with pytest.raises(FileNotFoundError, match="no_such_bold") as caught:
        write_derivative(missing, out_dir / "sub-01_bold.nii.gz")
    assert caught.value.file == str(missing)
    assert _names(out_dir) == []


@pytest.mark.parametrize(
    ("sidecar", "error"), [({"x": object()}, TypeError), ({"x": float("nan")}, ValueError)]
)
def test_a_sidecar_that_is_not_json_fails_before_anything_is_written(
    bold_nii, out_dir, sidecar, error
):
    source, _ = bold_nii
    with pytest.raises(error, match="sidecar"):
        write_derivative(source, out_dir / "sub-01_bold.nii.gz", sidecar=sidecar)
    assert _names(out_dir) == []


def test_bad_compression_level_is_refused(bold_nii, out_dir):
    with pytest.raises(ValueError, match="compress_level"):
        write_derivative(bold_nii[0], out_dir / "b.nii.gz", compress_level=6)
    assert _names(out_dir) == []


def test_pydra_sink_writes_the_derivative(tmp_path, bold_nii, out_dir):
    from pydra.engine.submitter import Submitter

    from masker_wf.tasks import DerivativesSink

    source, data = bold_nii
    out = out_dir / "sub-01_bold.nii.gz"
    task = DerivativesSink(in_file=source, out_file=str(out), sidecar={"a": 1}, compress_level=2)
    with Submitter(cache_root=tmp_path / "cache", worker="debug") as submitter:
        result = submitter(task)
    assert str(result.outputs.out_file) == str(out)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), data)
    assert json.loads((out_dir / "sub-01_bold.json").read_text()) == {"a": 1}
    with pytest.raises(ValueError, match="compress_level"):
        DerivativesSink(in_file=source, out_file=str(out), compress_level=5)


def test_pydra_sink_failure_is_the_oserror_naming_the_output(tmp_path, bold_nii):
    from pydra.engine.submitter import Submitter

    from masker_wf.tasks import DerivativesSink

    in_the_way = tmp_path / "derivatives"
    in_the_way.write_text("x")
    out = in_the_way / "sub-01_bold.nii.gz"
    with (
        pytest.raises(NotADirectoryError, match="sub-01_bold") as caught,
        Submitter(cache_root=tmp_path / "cache", worker="debug") as submitter,
    ):
        submitter(DerivativesSink(in_file=bold_nii[0], out_file=str(out)))
    assert caught.value.filename == str(out)
    [job_dir] = (tmp_path / "cache").glob("python-*")
    assert isinstance(_steps.load_error(job_dir), NotADirectoryError)


def test_nipype_sink_writes_the_derivative_and_always_runs(tmp_path, bold_nii, out_dir):
    from nipype.pipeline import engine as pe

    from masker_wf.nipype.interfaces import DerivativesSink

    source, data = bold_nii
    out = out_dir / "sub-01_bold.nii.gz"
    node = pe.Node(
        DerivativesSink(in_file=str(source), out_file=str(out), sidecar={"a": 1}),
        name="sink",
        base_dir=str(tmp_path / "work"),
    )
    node.run()
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), data)
    assert json.loads((out_dir / "sub-01_bold.json").read_text()) == {"a": 1}
    # A rerun with the same inputs writes a deleted derivative again (nipype would otherwise
    # take the node's cached result).
    out.unlink()
    node.run()
    assert out.is_file()
    relative = DerivativesSink(in_file=str(source), out_file="sub-01_bold.nii.gz")
    with pytest.raises(ValueError, match="absolute"):
        relative.run(cwd=str(tmp_path))
