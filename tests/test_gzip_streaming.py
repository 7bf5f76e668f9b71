"""Gzipped images are read with python-isal, streamed once, and written once, compressed as
they are produced; every file this process wrote or read is hashed once."""

import gzip
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from masker_wf import NiftiMasker, _io, _pipeline, _steps, image
from masker_wf._niimg import (
    GzipArrayProxy,
    check_niimg,
    get_data,
    iter_volume_chunks,
)
from masker_wf.masking import unmask


@pytest.fixture
def gz_bold(tmp_path, synthetic_bold):
    bold, mask = synthetic_bold
    path, mask_path = tmp_path / "bold.nii.gz", tmp_path / "mask.nii.gz"
    bold.to_filename(path)
    mask.to_filename(mask_path)
    return path, mask_path


def test_gzipped_file_is_read_by_isal_and_gives_nibabels_data(gz_bold, ds003_path, tmp_path):
    scaled = tmp_path / "scaled.nii.gz"
    data = np.random.default_rng(0).integers(-500, 500, size=(5, 6, 4, 7)).astype(np.int16)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(0.5, 3.0)
    img.to_filename(scaled)
    for path in (gz_bold[0], ds003_path, scaled):
        ours, theirs = check_niimg(path), nib.load(path)
        assert isinstance(ours.dataobj, GzipArrayProxy)
        assert ours.header.binaryblock == theirs.header.binaryblock
        np.testing.assert_array_equal(ours.affine, theirs.affine)
        expected = np.asanyarray(theirs.dataobj)
        whole = get_data(ours)
        assert whole.dtype == expected.dtype
        assert whole.flags.f_contiguous
        np.testing.assert_array_equal(whole, expected)
        np.testing.assert_array_equal(ours.dataobj[1:3, :, 2], theirs.dataobj[1:3, :, 2])
    # Uncompressed files keep nibabel's memory-mapped proxy.
    plain = tmp_path / "plain.nii"
    nib.load(ds003_path).to_filename(plain)
    assert not isinstance(check_niimg(plain).dataobj, GzipArrayProxy)


@pytest.mark.parametrize("volumes_per_chunk", [1, 7, 60, None])
def test_volume_chunks_are_the_images_volumes_in_order(gz_bold, volumes_per_chunk):
    img = check_niimg(gz_bold[0])
    expected = get_data(img)
    seen = 0
    for start, block in iter_volume_chunks(img, volumes_per_chunk):
        assert start == seen
        np.testing.assert_array_equal(block, expected[..., start : start + block.shape[3]])
        seen += block.shape[3]
    assert seen == expected.shape[3]


def test_a_consumer_that_stops_early_releases_the_reader(gz_bold):
    img = check_niimg(gz_bold[0])
    chunks = iter_volume_chunks(img, 2, prefetch=1)
    next(chunks)
    chunks.close()  # returns: the reader thread has stopped
    assert not [t for t in __import__("threading").enumerate() if "gzip-reader" in t.name]


def test_a_truncated_file_fails_the_stream_naming_it(tmp_path, ds003_path):
    truncated = tmp_path / "bold.nii.gz"
    truncated.write_bytes(ds003_path.read_bytes()[: ds003_path.stat().st_size // 2])
    img = check_niimg(truncated)
    with pytest.raises(ValueError, match=r"bold\.nii\.gz.*truncated or corrupt"):
        for _ in iter_volume_chunks(img, 2):
            pass


def test_streamed_smoothing_equals_smoothing_the_array(gz_bold):
    img = check_niimg(gz_bold[0])
    mask = np.asanyarray(nib.load(gz_bold[1]).dataobj) > 0
    expected = image.smooth_masked(get_data(img), img.affine, 6.0, mask)
    for volumes_per_chunk in (1, 13):
        chunks = iter_volume_chunks(img, volumes_per_chunk)
        streamed = image.smooth_masked_chunks(chunks, img.shape, img.affine, 6.0, mask)
        np.testing.assert_array_equal(streamed, expected)


@pytest.mark.parametrize("smoothing_fwhm", [None, 5.0])
def test_a_gzipped_bold_is_streamed_not_staged(gz_bold, monkeypatch, smoothing_fwhm):
    bold, mask = gz_bold
    in_memory = check_niimg(bold)
    in_memory = nib.Nifti1Image(get_data(in_memory), in_memory.affine, in_memory.header)
    params = {"smoothing_fwhm": smoothing_fwhm, "detrend": True, "t_r": 2.0, "high_pass": 0.02}
    expected_report = {}
    expected = _pipeline.filter_and_extract(in_memory, mask, report=expected_report, **params)

    original = GzipArrayProxy._get_unscaled

    def whole_read(self, slicer):
        # The mask (3D) is read whole; the 4D BOLD only ever as a stream of volumes.
        assert len(self.shape) == 3, "the BOLD was read whole"
        return original(self, slicer)

    monkeypatch.setattr(GzipArrayProxy, "_get_unscaled", whole_read)
    report = {}
    signals = _pipeline.filter_and_extract(str(bold), mask, report=report, **params)
    np.testing.assert_array_equal(signals, expected)
    for key, value in expected_report.items():
        if key == "mean_planes":
            for ours, theirs in zip(report[key], value, strict=True):
                np.testing.assert_array_equal(ours, theirs)
        elif value is not None:
            np.testing.assert_array_equal(np.asarray(report[key]), np.asarray(value))
    # The estimator shares the loader.
    estimator = NiftiMasker(mask_img=str(mask), **params).fit_transform(str(bold))
    np.testing.assert_array_equal(estimator, expected)


def _old_chain(signals_file, mask_file, reference_file, t_r, out_file):
    """The cleaned BOLD as the App wrote it before: .nii, header fixed, then gzipped."""
    image_file = out_file.with_name("image.nii")
    img = unmask(np.load(signals_file), nib.load(mask_file))
    img = _steps.with_reference_header(img, nib.load(reference_file).header, t_r)
    _io.save_img(img, image_file)
    _io.write_file(image_file, out_file)
    return out_file


@pytest.mark.parametrize("n_volumes", [1, 16, 37])
def test_unmask_writes_the_derivative_once_with_the_references_header(
    tmp_path, ds003_path, ds003_mask_path, n_volumes
):
    signals = np.random.default_rng(n_volumes).normal(size=(n_volumes, 1065)).astype(np.float32)
    signals_file = tmp_path / "signals.npy"
    np.save(signals_file, signals)
    out = tmp_path / "out" / "x_bold.nii.gz"
    out.parent.mkdir()
    written = _steps.unmask(
        signals_file,
        ds003_mask_path,
        out,
        reference_file=ds003_path,
        t_r=2.0,
        sidecar={"RepetitionTime": 2.0},
    )
    before = _old_chain(signals_file, ds003_mask_path, ds003_path, 2.0, tmp_path / "old.nii.gz")
    assert written == out
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(before.read_bytes())
    assert out.with_name("x_bold.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["x_bold.json", "x_bold.nii.gz"]
    assert nib.load(out).header.get_zooms()[3] == 2.0


def test_unmask_output_failure_names_the_destination(tmp_path, ds003_mask_path):
    signals_file = tmp_path / "signals.npy"
    np.save(signals_file, np.zeros((3, 1065), np.float32))
    with pytest.raises(FileNotFoundError, match=r"missing.*x_bold\.nii\.gz|x_bold\.nii\.gz"):
        _steps.unmask(signals_file, ds003_mask_path, tmp_path / "missing" / "x_bold.nii.gz")


def test_files_written_here_are_never_read_again_to_be_hashed(tmp_path, monkeypatch):
    signals = np.arange(60, dtype=np.float32).reshape(6, 10)
    path = _io.save_signals(signals, tmp_path / "signals.npy")
    copy = _io.write_file(path, tmp_path / "copy.npy.gz")
    expected = {p: _io._sha256_of_file(str(p), 1 << 20) for p in (path, copy)}

    def no_reading(*args):
        raise AssertionError("a file written here was read to be hashed")

    monkeypatch.setattr(_io, "_sha256_of_file", no_reading)
    for p, digest in expected.items():
        assert _io.file_digest(p) == digest
    # A hard link changes the file's status, not its content: the digest carries over.
    link = tmp_path / "link.npy"
    os.link(path, link)
    _io.carry_digests([link])
    assert _io.file_digest(link) == _io.file_digest(path) == expected[path]


def test_a_file_rewritten_in_place_is_hashed_again(tmp_path):
    path = tmp_path / "table.tsv"
    path.write_text("a\n1\n")
    first = _io.file_digest(path)
    info = path.stat()
    path.write_text("a\n2\n")
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))  # mtime restored
    assert _io.file_digest(path) != first
    shutil.copy(path, tmp_path / "other.tsv")
    assert _io.file_digest(tmp_path / "other.tsv") == _io.file_digest(path)


@pytest.mark.parametrize("trailer_byte", [-8, -1], ids=["crc32", "length"])
def test_a_gzip_whose_trailer_does_not_match_fails_the_stream_naming_it(
    tmp_path, ds003_path, trailer_byte
):
    # The data inflate cleanly; only the member's CRC-32 (or length) in the trailer is
    # wrong, as after a bit flip on disk: the stream must not pass such data on.
    damaged = bytearray(ds003_path.read_bytes())
    damaged[trailer_byte] ^= 0xFF
    path = tmp_path / "bold.nii.gz"
    path.write_bytes(bytes(damaged))
    img = check_niimg(path)
    with pytest.raises(ValueError, match=r"bold\.nii\.gz.*truncated or corrupt"):
        for _ in iter_volume_chunks(img, 2):
            pass


def test_a_multi_member_gzip_streams_as_pythons_gzip_reads_it(tmp_path, synthetic_bold):
    # As bgzip or pigz --independent write them: several members, zero padding between.
    plain = tmp_path / "bold.nii"
    synthetic_bold[0].to_filename(plain)
    raw = plain.read_bytes()
    third = len(raw) // 3
    members = [gzip.compress(raw[i : i + third]) for i in range(0, len(raw), third)]
    path = tmp_path / "bold.nii.gz"
    path.write_bytes(members[0] + b"\0" * 7 + b"".join(members[1:]))
    img = check_niimg(path)
    expected = np.asanyarray(nib.load(path).dataobj)
    streamed = np.concatenate([block for _, block in iter_volume_chunks(img, 3)], axis=3)
    np.testing.assert_array_equal(streamed, expected)
