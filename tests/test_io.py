"""Atomic writers and readers of masker_wf._io."""

import hashlib
import os

import nibabel as nib
import numpy as np
import pytest

from masker_wf import _io
from masker_wf._io import atomic_output, load_signals, read_sample_mask, save_img, save_signals


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


def test_atomic_output_renames_on_success(tmp_path):
    target = tmp_path / "out.npy"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.endswith(".npy")  # writers that read the suffix pick the right format
        assert not target.exists()
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done"
    assert _leftovers(tmp_path) == ["out.npy"]


def test_atomic_output_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.nii.gz"

    def write_then_fail():
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert _leftovers(tmp_path) == []


def test_atomic_output_keeps_previous_content_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def write_then_interrupt():
        with atomic_output(target) as tmp:
            tmp.write_text("new but partial")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_then_interrupt()
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == ["out.txt"]


def test_atomic_output_gives_normal_permissions(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_output(target) as tmp:
        tmp.write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_output_missing_directory_names_it(tmp_path):
    with pytest.raises(ValueError, match="does not exist"), atomic_output(tmp_path / "no" / "f"):
        pass


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_save_img_round_trip(tmp_path, suffix, synthetic_bold):
    bold, _ = synthetic_bold
    path = save_img(bold, tmp_path / f"bold{suffix}")
    loaded = nib.load(path)
    np.testing.assert_array_equal(np.asanyarray(loaded.dataobj), bold.get_fdata(dtype=np.float32))
    assert loaded.get_data_dtype() == np.float32
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".nii.gz")
    assert _leftovers(tmp_path) == [path.name]


def test_save_img_rejects_unknown_suffix(tmp_path, synthetic_bold):
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        save_img(synthetic_bold[1], tmp_path / "mask.img")


def test_signals_round_trip_keeps_float32_and_c_order(tmp_path):
    signals = np.asfortranarray(np.random.default_rng(0).normal(size=(30, 7)).astype(np.float32))
    path = save_signals(signals, tmp_path / "signals.npy")
    loaded = load_signals(path)
    assert loaded.dtype == np.float32
    assert loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, signals)
    # The documented format is plain .npy: numpy reads it, memory-mapped too.
    np.testing.assert_array_equal(np.load(path, mmap_mode="r"), signals)


@pytest.mark.parametrize(
    "signals",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(12.0).reshape(4, 3)),
        np.arange(5, dtype=np.float32),
        np.zeros((0, 3), dtype=np.float32),
        # Larger than one piece written at a time (16 MiB).
        np.ones((1100, 4000), dtype=np.float32),
    ],
    ids=["C order", "Fortran order", "1D", "no rows", "several pieces"],
)
def test_saved_signals_are_the_bytes_numpy_saves(tmp_path, signals):
    import io

    expected = io.BytesIO()
    np.save(expected, np.ascontiguousarray(signals), allow_pickle=False)
    path = save_signals(signals, tmp_path / "signals.npy")
    assert path.read_bytes() == expected.getvalue()
    # ... and the digest remembered while writing them is theirs.
    assert _io.file_digest(path) == "sha256:" + hashlib.sha256(expected.getvalue()).hexdigest()


@pytest.mark.parametrize("shape", [(3, 4), (7,), (0, 3), (1100, 4000)])
def test_signals_computed_in_place_are_the_bytes_numpy_saves(tmp_path, shape):
    import io

    values = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    path = tmp_path / "signals.npy"
    with _io.signals_output(path) as output:
        out = output.allocate(shape, np.float32)
        assert isinstance(out, np.memmap)
        assert not path.exists()  # in place only once complete
        out[...] = values
        output.set(out)
    expected = io.BytesIO()
    np.save(expected, values, allow_pickle=False)
    assert path.read_bytes() == expected.getvalue()
    assert _io.file_digest(path) == "sha256:" + hashlib.sha256(expected.getvalue()).hexdigest()
    assert _leftovers(tmp_path) == ["signals.npy"]


def test_signals_output_takes_a_shape_of_numpy_integers(tmp_path):
    # A shape computed with numpy (a sum of run lengths) still gives a readable header.
    path = tmp_path / "signals.npy"
    with _io.signals_output(path) as output:
        out = output.allocate((np.int64(2), np.intp(3)), np.float32)
        out[...] = 1
        output.set(out)
    np.testing.assert_array_equal(np.load(path), np.ones((2, 3), dtype=np.float32))


def test_signals_output_stores_another_array_than_the_one_it_gave(tmp_path):
    # A computation that allocated, then returned a view of what it allocated (a 3D
    # image's single row): the view is stored, and the array given stays readable.
    path = tmp_path / "signals.npy"
    with _io.signals_output(path, identity="test 1") as output:
        out = output.allocate((1, 5), np.float32)
        out[...] = np.arange(5)
        output.set(out[0])
        assert out.sum() == 10
    np.testing.assert_array_equal(np.load(path), np.arange(5, dtype=np.float32))
    assert _io.file_digest(path).startswith("sha256:id-")
    assert _leftovers(tmp_path) == ["signals.npy"]


def test_signals_output_leaves_nothing_when_the_computation_fails(tmp_path):
    path = tmp_path / "signals.npy"
    path.write_bytes(b"previous")

    def failing():
        with _io.signals_output(path) as output:
            output.allocate((2, 3), np.float32)[...] = 1
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        failing()
    assert path.read_bytes() == b"previous"
    with pytest.raises(RuntimeError, match="no signals were set"), _io.signals_output(path):
        pass
    assert _leftovers(tmp_path) == ["signals.npy"]
    with pytest.raises(ValueError, match="1D or 2D"), _io.signals_output(path) as output:
        output.allocate((2, 3, 4), np.float32)
    assert path.read_bytes() == b"previous"


@pytest.mark.parametrize(
    "signals",
    [np.array([[None, 1.0]], dtype=object), np.zeros((2, 2), dtype="datetime64[s]")],
    ids=["objects", "dates"],
)
def test_save_signals_refuses_what_is_not_numeric(tmp_path, signals):
    with pytest.raises(ValueError, match="numeric array"):
        save_signals(signals, tmp_path / "s.npy")
    assert not (tmp_path / "s.npy").exists()


def test_save_signals_validates_before_writing(tmp_path):
    with pytest.raises(ValueError, match="1D or 2D"):
        save_signals(np.zeros((2, 3, 4)), tmp_path / "s.npy")
    with pytest.raises(ValueError, match=r"\.npy"):
        save_signals(np.zeros((2, 3)), tmp_path / "s.txt")
    assert _leftovers(tmp_path) == []


def test_load_signals_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.npy"
    with pytest.raises(ValueError, match=r"missing\.npy"):
        load_signals(missing)
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    with pytest.raises(ValueError, match=r"bad\.npy"):
        load_signals(bad)


def test_read_sample_mask_from_values():
    assert read_sample_mask(None) is None
    np.testing.assert_array_equal(read_sample_mask([0, 2, 5]), [0, 2, 5])
    # Values given in memory reach the validator unchanged (it refuses float indices on
    # every face alike); only a file's text is parsed into integers here.
    kept = read_sample_mask(np.array([True, False, True]))
    assert kept.dtype == bool
    assert read_sample_mask(np.array([1.0, 3.0])).dtype.kind == "f"
    with pytest.raises(TypeError, match="sample_mask"):
        read_sample_mask(3)


def test_read_sample_mask_from_files(tmp_path):
    npy = tmp_path / "keep.npy"
    np.save(npy, np.array([1, 4, 6]))
    np.testing.assert_array_equal(read_sample_mask(npy), [1, 4, 6])

    txt = tmp_path / "keep.txt"
    txt.write_text("0\n2\n3\n")
    np.testing.assert_array_equal(read_sample_mask(str(txt)), [0, 2, 3])

    # A BIDS-like one-column TSV with a header and a 0/1 column means "kept or not".
    tsv = tmp_path / "keep.tsv"
    tsv.write_text("sample_mask\n1\n1\n0\n1\n")
    np.testing.assert_array_equal(read_sample_mask(tsv), [0, 1, 3])

    booleans = tmp_path / "keep.csv"
    booleans.write_text("keep\ntrue\nfalse\ntrue\n")
    np.testing.assert_array_equal(read_sample_mask(booleans), [0, 2])


def test_read_sample_mask_file_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"nothere\.tsv"):
        read_sample_mask(tmp_path / "nothere.tsv")
    two_columns = tmp_path / "two.tsv"
    two_columns.write_text("1\t2\n3\t4\n")
    with pytest.raises(ValueError, match=r"two\.tsv"):
        read_sample_mask(two_columns)
    words = tmp_path / "words.txt"
    words.write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"words\.txt"):
        read_sample_mask(words)
    wrong = tmp_path / "mask.json"
    wrong.write_text("[]")
    with pytest.raises(ValueError, match=r"mask\.json"):
        read_sample_mask(wrong)


def _gzip_members(raw: bytes) -> int:
    """Number of gzip members in ``raw`` (each a complete deflate stream)."""
    import zlib

    members = 0
    while raw:
        decompressor = zlib.decompressobj(wbits=31)
        decompressor.decompress(raw)
        assert decompressor.eof
        members += 1
        raw = decompressor.unused_data
    return members


@pytest.mark.parametrize("n_threads", [1, 3])
def test_gzipped_image_is_a_standard_gzip_with_nibabels_bytes(tmp_path, rng, n_threads):
    """save_img's .nii.gz (python-isal) is one gzip member that decompresses (Python's gzip)
    to exactly the bytes nibabel writes, whatever the number of threads."""
    import gzip

    data = rng.normal(size=(40, 41, 42, 30)).astype(np.float32)  # 8 MB: several isal blocks
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    reference = tmp_path / "reference.nii"
    img.to_filename(reference)
    ours = save_img(img, tmp_path / "ours.nii.gz", n_threads=n_threads)
    raw = ours.read_bytes()
    assert raw[:3] == b"\x1f\x8b\x08"
    assert _gzip_members(raw) == 1
    assert gzip.decompress(raw) == reference.read_bytes()
    np.testing.assert_array_equal(np.asarray(nib.load(ours).dataobj), data)
    # Same bytes on a machine with another number of cores: reproducible outputs.
    other = save_img(img, tmp_path / "other.nii.gz", n_threads=4 - n_threads)
    assert other.read_bytes() == raw


def test_save_img_rejects_a_compression_level_isal_does_not_have(tmp_path, synthetic_bold):
    with pytest.raises(ValueError, match="compress_level"):
        save_img(synthetic_bold[1], tmp_path / "mask.nii.gz", compress_level=9)
    assert _leftovers(tmp_path) == []


def test_gzipped_image_failure_leaves_no_file(tmp_path):
    class Broken(nib.Nifti1Image):
        def to_file_map(self, *args, **kwargs):
            raise RuntimeError("disk full")

    img = Broken(np.zeros((3, 3, 3), dtype=np.float32), np.eye(4))
    with pytest.raises(RuntimeError, match="disk full"):
        save_img(img, tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []
