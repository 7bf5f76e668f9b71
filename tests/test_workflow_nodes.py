"""One node per step: the graph's shape, NiftiMasker's numbers through it, what is cached."""

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_workflow import CLEANING

from masker_wf import NiftiMasker, _io, _steps
from masker_wf.image import resample_img, smooth_img
from masker_wf.workflow import MaskerWorkflow, run_masker_workflow


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    # Cache hits must come from the test's own runs (see tests/test_workflow.py).
    monkeypatch.setenv("PYDRA_HASH_CACHE", str(tmp_path / "hashes"))


@pytest.fixture
def synthetic_bold_file(tmp_path, synthetic_bold):
    path = tmp_path / "synthetic_bold.nii.gz"
    synthetic_bold[0].to_filename(path)
    return path


@pytest.fixture
def coarse_mask_file(tmp_path, ds003_mask_path):
    """The ds003 brain mask on a 10 mm grid: the BOLD must be resampled onto it."""
    path = tmp_path / "mask_10mm.nii"
    img = resample_img(
        nib.load(ds003_mask_path),
        target_affine=np.diag([10.0, 10.0, 10.0]),
        interpolation="nearest",
    )
    img.to_filename(path)
    return path


def _confounds_file(tmp_path, name, n_columns, seed):
    values = np.random.default_rng(seed).normal(size=(20, n_columns))
    path = tmp_path / f"{name}.tsv"
    header = "\t".join(f"c{i}" for i in range(n_columns))
    rows = ["\t".join(f"{v:.6f}" for v in row) for row in values]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _job_dirs_holding(cache_root, name):
    return sorted(d for d in cache_root.glob("python-*") if (d / name).exists())


def test_smoothing_target_grid_and_high_variance_confounds_are_nodes(synthetic_bold_file):
    task = MaskerWorkflow(
        bold_file=synthetic_bold_file,
        smoothing_fwhm=6.0,
        target_affine=np.diag([4.0, 4.0, 4.0]).tolist(),
        high_variance_confounds=True,
    )
    assert task.construct().node_names == [
        "compute_mask",
        "resample_bold",
        "smooth",
        "high_variance_confounds",
        "clean_signals",
        "unmask",
    ]


# The parameter cases of the parity tests of tests/test_workflow.py, and the cases only
# the node graph has to get right: a BOLD resampled onto a mask of another grid, a given
# mask with a target grid, high-variance confounds, dtype conversions, scaled int16.
PARITY_CASES = {
    "given mask, confounds, scrubbing, cleaning": (
        "ds003",
        {
            "mask": "ds003",
            "confounds": True,
            "sample_mask": [i for i in range(20) if i not in (3, 4, 11)],
        }
        | CLEANING,
    ),
    "computed EPI mask, 4 mm target grid, smoothing": (
        "synthetic",
        {
            "target_affine": np.diag([4.0, 4.0, 4.0]),
            "mask_strategy": "epi",
            "smoothing_fwhm": 6.0,
            "detrend": True,
            "standardize": "zscore_sample",
            "low_pass": 0.1,
            "t_r": 2.0,
        },
    ),
    "target grid and high-variance confounds": (
        "synthetic",
        {
            "target_affine": np.diag([4.0, 4.0, 4.0]),
            "mask_strategy": "epi",
            "smoothing_fwhm": 6.0,
            "high_variance_confounds": True,
            "detrend": True,
        },
    ),
    "mask on another grid, smoothing": ("ds003", {"mask": "coarse", "smoothing_fwhm": 8.0}),
    "mask on another grid, no smoothing": ("ds003", {"mask": "coarse", "detrend": True}),
    "given mask, full target grid": (
        "ds003",
        {
            "mask": "ds003",
            "target_affine": np.diag([10.0, 10.0, 10.0, 1.0]),
            "target_shape": [10, 10, 10],
            "smoothing_fwhm": 8.0,
        },
    ),
    "high-variance confounds and confounds": (
        "ds003",
        {"mask": "ds003", "confounds": True, "high_variance_confounds": True}
        | {"smoothing_fwhm": 4.0, "standardize": "zscore_sample"},
    ),
    "fast smoothing": ("ds003", {"mask": "ds003", "smoothing_fwhm": "fast"}),
    "scaled int16, smoothing, high-variance confounds": (
        "functional",
        {"smoothing_fwhm": 6.0, "high_variance_confounds": True, "detrend": True},
    ),
    "dtype auto": ("functional", {"smoothing_fwhm": 6.0, "dtype": "auto"}),
    "dtype float32 and a target grid": (
        "functional",
        {"target_affine": np.diag([5.0, 5.0, 9.0]), "dtype": "float32", "smoothing_fwhm": 6.0},
    ),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_signals_through_the_graph_are_niftimaskers(
    case, tmp_path, request, ds003_path, ds003_mask_path, functional_path
):
    source, params = PARITY_CASES[case]
    params = dict(params)
    bold = {
        "ds003": ds003_path,
        "functional": functional_path,
        "synthetic": request.getfixturevalue("synthetic_bold_file"),
    }[source]
    mask = params.pop("mask", None)
    mask_file = {None: None, "ds003": ds003_mask_path}.get(mask)
    if mask == "coarse":
        mask_file = request.getfixturevalue("coarse_mask_file")
    confounds = (
        _confounds_file(tmp_path, "confounds", 3, seed=1) if params.pop("confounds", 0) else None
    )
    sample_mask = params.pop("sample_mask", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's resampling warning, on both sides
        outputs = run_masker_workflow(
            bold,
            cache_root=tmp_path / "cache",
            mask_file=mask_file,
            confounds_file=confounds,
            sample_mask=sample_mask,
            **params,
        )
        masker = NiftiMasker(mask_img=mask_file, **params)
        expected = masker.fit_transform(bold, confounds=confounds, sample_mask=sample_mask)
    signals = np.load(outputs["signals_file"])
    assert signals.dtype == expected.dtype
    np.testing.assert_allclose(signals, expected, rtol=1e-6, atol=1e-6)
    cleaned = nib.load(outputs["cleaned_bold_file"])
    expected_img = masker.inverse_transform(expected)
    np.testing.assert_allclose(cleaned.affine, expected_img.affine)
    np.testing.assert_allclose(cleaned.get_fdata(), expected_img.get_fdata(), atol=1e-6)


def test_another_confounds_strategy_reruns_only_cleaning_and_unmasking(
    tmp_path, ds003_path, coarse_mask_file
):
    cache_root = tmp_path / "cache"
    params = {"mask_file": coarse_mask_file, "smoothing_fwhm": 8.0, "detrend": True}
    simple = _confounds_file(tmp_path, "simple", 2, seed=2)
    first = run_masker_workflow(ds003_path, cache_root=cache_root, confounds_file=simple, **params)
    upstream = {
        name: _job_dirs_holding(cache_root, name)
        for name in ("resampled.nii", "smoothed_signals.npy")
    }
    assert all(len(dirs) == 1 for dirs in upstream.values())
    stamps = {d: (d / name).stat().st_mtime_ns for name, (d,) in upstream.items()}

    compcor = _confounds_file(tmp_path, "compcor", 5, seed=3)
    second = run_masker_workflow(
        ds003_path, cache_root=cache_root, confounds_file=compcor, **params
    )
    # The resampled and smoothed BOLD were served from the cache, not written again...
    for name, dirs in upstream.items():
        assert _job_dirs_holding(cache_root, name) == dirs
    assert {d: (d / n).stat().st_mtime_ns for n, (d,) in upstream.items()} == stamps
    # ... while the cleaning and unmasking ran for the new confounds.
    assert len(_job_dirs_holding(cache_root, "signals.npy")) == 2
    assert len(_job_dirs_holding(cache_root, "cleaned_bold.nii")) == 2
    assert not np.array_equal(np.load(first["signals_file"]), np.load(second["signals_file"]))


def test_smoothed_window_is_the_full_field_smoothing_cropped_to_the_mask(
    tmp_path, ds003_path, ds003_mask_path
):
    out = _steps.smooth(ds003_path, tmp_path / "smoothed.nii", fwhm=5.0, mask_file=ds003_mask_path)
    window = nib.load(out)
    mask = np.asanyarray(nib.load(ds003_mask_path).dataobj) != 0
    hits = np.nonzero(mask)
    box = tuple(slice(int(h.min()), int(h.max()) + 1) for h in hits)
    full = smooth_img(nib.load(ds003_path), 5.0)
    assert window.shape == (*(s.stop - s.start for s in box), 20)
    assert window.get_data_dtype() == np.float32
    np.testing.assert_array_equal(
        np.asanyarray(window.dataobj), full.get_fdata(dtype=np.float32)[box]
    )
    corner = full.affine @ [*(s.start for s in box), 1]
    np.testing.assert_allclose(window.affine[:, 3], corner)
    assert window.header.get_zooms()[3] == nib.load(ds003_path).header.get_zooms()[3]
    # The window is identified by what it was computed from (never read to be hashed),
    # and that digest is left beside the file for the other processes of a pool; it
    # stops being trusted once the file changes, and the content is hashed then.
    assert _io.record_digest(out) is not None
    identity = _io._recorded_digest(_io.stat_key(out))
    assert identity.startswith("sha256:id-")
    assert _io.file_digest(out) == identity
    other = _steps.smooth(ds003_path, tmp_path / "other.nii", fwhm=6.0, mask_file=ds003_mask_path)
    assert _io.file_digest(other).startswith("sha256:id-")
    assert _io.file_digest(other) != identity
    info = out.stat()
    out.write_bytes(out.read_bytes()[:-4] + b"\0\0\0\1")
    # A rewrite in the same clock tick as the first write keeps the modification time
    # (Pydra's own hash cache would not notice either): step it, as time does.
    os.utime(out, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))
    assert _io._recorded_digest(_io.stat_key(out)) is None
    assert _io.file_digest(out) == _io._sha256_of_file(str(out), 1 << 20)


@pytest.mark.parametrize("mask", ["ds003", "coarse"])
def test_smoothed_signals_are_nilearns_masked_smoothing(
    tmp_path, request, ds003_path, ds003_mask_path, mask
):
    from nilearn.maskers import NiftiMasker as NilearnMasker

    mask_file = ds003_mask_path if mask == "ds003" else request.getfixturevalue("coarse_mask_file")
    bold = ds003_path
    if mask == "coarse":
        # What the resample_bold node hands over: the BOLD on the mask's bounding box.
        bold = _steps.resample(ds003_path, tmp_path / "resampled.nii", mask_file=mask_file)
    out = _steps.smooth(
        bold,
        tmp_path / "smoothed_signals.npy",
        fwhm=5.0,
        mask_file=mask_file,
        planes_file=tmp_path / "planes.npz",
        extract=True,
    )
    signals = _io.load_signals(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resampling and missing-sform warnings
        # nilearn's transform without cleaning: resampled (onto the mask), smoothed, masked.
        nilearn_masker = NilearnMasker(mask_img=str(mask_file), smoothing_fwhm=5.0)
        expected = nilearn_masker.fit_transform(str(ds003_path))
    assert signals.dtype == np.float32
    assert signals.shape == expected.shape
    np.testing.assert_allclose(signals, expected, rtol=1e-6, atol=1e-5)
    # Identified by what they are computed from, never read to be hashed.
    assert _io.file_digest(out).startswith("sha256:id-")
    assert len(_io.load_qc(tmp_path / "planes.npz")["mean_planes"]) == 3


def test_extracted_signals_are_cleaned_as_they_are(tmp_path, ds003_path, ds003_mask_path):
    extracted = _steps.smooth(
        ds003_path, tmp_path / "s.npy", fwhm=6.0, mask_file=ds003_mask_path, extract=True
    )
    params = {"detrend": True, "standardize": "zscore_sample"}
    out = _steps.clean_signals(
        ds003_path, ds003_mask_path, tmp_path / "clean.npy", extracted_file=extracted, **params
    )
    expected = NiftiMasker(mask_img=ds003_mask_path, smoothing_fwhm=6.0, **params).fit_transform(
        ds003_path
    )
    np.testing.assert_allclose(_io.load_signals(out), expected, rtol=1e-6, atol=1e-6)


def test_smoothed_and_cleaned_signals_are_computed_in_their_files(
    tmp_path, ds003_path, ds003_mask_path, monkeypatch
):
    # Both nodes compute their signals into a memory map of their output file: no array
    # in memory beside it, no copy into the file (a second per 0.28 GB on a 2 mm MNI run).
    in_place = []
    store = _io.SignalsOutput.set

    def observed(self, signals):
        in_place.append(isinstance(signals, np.memmap) and signals is self._mapped)
        return store(self, signals)

    monkeypatch.setattr(_io.SignalsOutput, "set", observed)
    extracted = _steps.smooth(
        ds003_path, tmp_path / "s.npy", fwhm=6.0, mask_file=ds003_mask_path, extract=True
    )
    out = _steps.clean_signals(
        ds003_path, ds003_mask_path, tmp_path / "c.npy", extracted_file=extracted, detrend=True
    )
    assert in_place == [True, True]
    expected = NiftiMasker(mask_img=ds003_mask_path, smoothing_fwhm=6.0, detrend=True)
    np.testing.assert_allclose(
        _io.load_signals(out), expected.fit_transform(ds003_path), rtol=1e-6, atol=1e-6
    )


def test_cleaned_signals_are_identified_by_every_input(tmp_path, ds003_path, ds003_mask_path):
    # With identify (the Pydra task's way), the signals' digest is that of what they are
    # computed from: equal for equal inputs, different when any input differs, a file's
    # content included; never their bytes read again.
    confounds = _confounds_file(tmp_path, "conf", 3, seed=0)

    def digest(name, **params):
        out = _steps.clean_signals(
            ds003_path, ds003_mask_path, tmp_path / name, identify=True, **params
        )
        return _io.file_digest(out)

    first = digest("a.npy", detrend=True, confounds_file=confounds)
    assert first.startswith("sha256:id-")
    assert digest("b.npy", detrend=True, confounds_file=confounds) == first
    assert digest("c.npy", detrend=False, confounds_file=confounds) != first
    assert digest("d.npy", detrend=True, confounds_file=confounds, sample_mask=[0, 2, 5]) != first
    confounds.write_text(confounds.read_text().replace("c0", "x0", 1).replace("1", "2", 1))
    assert digest("e.npy", detrend=True, confounds_file=confounds) != first
    # Arrays are written in full: a long sample mask differing in one place only.
    kept = np.arange(5000)
    other = kept.copy()
    other[2500] = 2501
    identities = [_steps._arguments_identity("x", {"sample_mask": k}) for k in (kept, other)]
    assert identities[0] != identities[1]


def test_extracted_signals_of_another_image_or_mask_are_refused(
    tmp_path, ds003_path, ds003_mask_path, synthetic_bold_file
):
    extracted = _steps.smooth(
        ds003_path, tmp_path / "s.npy", fwhm=6.0, mask_file=ds003_mask_path, extract=True
    )
    with pytest.raises(_steps.StepError, match="not extracted from this image with this mask"):
        _steps.clean_signals(
            synthetic_bold_file, ds003_mask_path, tmp_path / "c.npy", extracted_file=extracted
        )
    # Smoothing (or resampling) asked again on signals smoothed upstream: refused.
    for again in ({"smoothing_fwhm": 6.0}, {"dtype": "float64"}):
        with pytest.raises(_steps.StepError, match="extracted_file holds signals"):
            _steps.clean_signals(
                ds003_path, ds003_mask_path, tmp_path / "c.npy", extracted_file=extracted, **again
            )
    with pytest.raises(_steps.StepError, match=r"must end with \.npy"):
        _steps.smooth(
            ds003_path, tmp_path / "s.nii", fwhm=6.0, mask_file=ds003_mask_path, extract=True
        )
    with pytest.raises(_steps.StepError, match="needs the mask_file"):
        _steps.smooth(ds003_path, tmp_path / "s2.npy", fwhm=6.0, extract=True)
    assert not (tmp_path / "c.npy").exists()
    assert not (tmp_path / "s.nii").exists()


def _nifti_masker_case(tmp_path, bold, mask_file, **params):
    outputs = run_masker_workflow(
        bold, cache_root=tmp_path / "cache", mask_file=mask_file, **params
    )
    expected = NiftiMasker(mask_img=mask_file, **params).fit_transform(bold)
    np.testing.assert_allclose(np.load(outputs["signals_file"]), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("resampled", [False, True], ids=["on its grid", "target grid"])
def test_a_4d_mask_of_one_volume_is_taken_with_smoothing(
    tmp_path, ds003_path, ds003_mask_path, resampled
):
    mask = nib.load(ds003_mask_path)
    four_d = tmp_path / "mask_4d.nii.gz"
    nib.Nifti1Image(np.asanyarray(mask.dataobj)[..., np.newaxis], mask.affine).to_filename(four_d)
    grid = {"target_affine": np.diag([4.0, 4.0, 4.0])} if resampled else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _nifti_masker_case(tmp_path, ds003_path, four_d, smoothing_fwhm=6.0, **grid)


def test_a_mask_whose_affine_differs_by_float_noise_is_on_the_bold_grid(
    tmp_path, ds003_path, ds003_mask_path
):
    # The estimator takes affines within np.allclose as one grid (no resampling): so do
    # the smoothing and cleaning nodes, whatever the offset in voxels.
    mask = nib.load(ds003_mask_path)
    affine = mask.affine.copy()
    affine[:3, 3] += [8e-4, -1e-3, 6e-4]
    jittered = tmp_path / "mask_jittered.nii.gz"
    nib.Nifti1Image(np.asanyarray(mask.dataobj), affine).to_filename(jittered)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _nifti_masker_case(tmp_path, ds003_path, jittered, smoothing_fwhm=6.0, detrend=True)


def test_a_damaged_cached_intermediate_is_named_with_what_to_do(
    tmp_path, ds003_path, ds003_mask_path
):
    params = {"mask_file": ds003_mask_path, "smoothing_fwhm": 6.0}
    cache_root = tmp_path / "cache"
    run_masker_workflow(ds003_path, cache_root=cache_root, **params)
    (directory,) = _job_dirs_holding(cache_root, "smoothed_signals.npy")
    damaged = directory / "smoothed_signals.npy"
    signals = np.load(damaged)
    np.save(damaged, signals[:, :-3])
    with pytest.raises(_steps.StepError) as caught:
        run_masker_workflow(ds003_path, cache_root=cache_root, detrend=True, **params)
    assert Path(caught.value.file) == damaged
    assert "remove the directory holding it" in str(caught.value)
    # A damaged report archive is named too.
    (directory,) = _job_dirs_holding(cache_root, "mean_planes.npz")
    (directory / "mean_planes.npz").write_bytes(b"not a zip archive")
    with pytest.raises(_steps.StepError) as caught:
        run_masker_workflow(
            ds003_path, cache_root=cache_root, standardize="zscore_sample", **params
        )
    assert Path(caught.value.file) == directory / "mean_planes.npz"


def test_clean_signals_refuses_a_window_that_misses_mask_voxels(
    tmp_path, ds003_path, ds003_mask_path
):
    img = nib.load(ds003_path)
    cut = nib.Nifti1Image(np.asanyarray(img.dataobj)[:8], img.affine, img.header)
    cut.to_filename(tmp_path / "cut.nii")
    with pytest.raises(_steps.StepError, match="bold_window"):
        _steps.clean_signals(
            tmp_path / "cut.nii", ds003_mask_path, tmp_path / "signals.npy", bold_window=True
        )


@pytest.mark.parametrize("mask", ["ds003", "coarse"])
def test_report_data_are_those_of_the_unsmoothed_bold(
    tmp_path, request, ds003_path, ds003_mask_path, mask
):
    from masker_wf._pipeline import filter_and_extract

    mask_file = ds003_mask_path if mask == "ds003" else request.getfixturevalue("coarse_mask_file")
    params = {"smoothing_fwhm": 6.0, "detrend": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = run_masker_workflow(
            ds003_path, cache_root=tmp_path / "cache", mask_file=mask_file, **params
        )
        expected = {}
        filter_and_extract(str(ds003_path), str(mask_file), report=expected, **params)
    qc = _io.load_qc(outputs["qc_file"])
    # The mean image the report shows is the input's (gathered by the smoothing node as
    # the volumes streamed by), on the grid the BOLD is masked on, as in one pass.
    for plane, expected_plane in zip(qc["mean_planes"], expected["mean_planes"], strict=True):
        np.testing.assert_array_equal(plane, expected_plane)
    for key in ("signals_before", "signals_after", "tsnr_before", "tsnr_after"):
        np.testing.assert_array_equal(qc[key], expected[key])


_COUNTED_HASHES = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from masker_wf import _io
    from masker_wf.workflow import run_masker_workflow

    read = []
    sha256 = _io._sha256_of_file
    _io._sha256_of_file = lambda path, size: (read.append(Path(path).name), sha256(path, size))[1]
    bold, mask, root = sys.argv[1:]
    outputs = run_masker_workflow(
        bold, cache_root=root, worker="cf", n_procs=2, mask_file=mask, smoothing_fwhm=5.0,
        high_variance_confounds=True, detrend=True, segmented_hash=True,
    )
    # What the BIDS App's derivatives workflow hashes next: the workflow's outputs.
    for path in outputs.values():
        _io.file_digest(path)
    print(" ".join(read))
    """
)


def test_intermediates_are_not_read_again_to_be_hashed(tmp_path, ds003_path, ds003_mask_path):
    # In a fresh process (the segmented hash is process-wide), with the process pool: the
    # nodes' outputs are hashed in this process, which did not write them.
    command = [
        sys.executable,
        "-c",
        _COUNTED_HASHES,
        str(ds003_path),
        str(ds003_mask_path),
        str(tmp_path / "cache"),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    read = done.stdout.split()
    assert ds003_path.name in read  # the input, once
    assert not {"smoothed_signals.npy", "high_variance_confounds.npy", "signals.npy"} & set(read)
    # A later process served from the cache reads nothing to hash: the input's hash is in
    # Pydra's hash cache, the outputs' digests beside their names in the workflow's
    # directory (and beside their nodes' own names).
    again = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.split() == []


@pytest.mark.parametrize("fwhm", [4.0, [0.0, 7.0, 5.0], "fast"])
def test_smoothed_window_equals_full_field_smoothing_at_the_field_edges(fwhm, synthetic_bold):
    from masker_wf.image import smooth_array, smooth_window_chunks

    bold, mask = synthetic_bold
    data = np.asanyarray(bold.dataobj)
    inside = np.asanyarray(mask.dataobj) != 0
    inside[0, 6, 5] = inside[-1, 6, 5] = True  # the mask reaches two faces of the field
    box, windows = smooth_window_chunks(
        ((start, data[..., start : start + 7]) for start in range(0, data.shape[3], 7)),
        data.shape,
        bold.affine,
        fwhm,
        inside,
    )
    window = np.concatenate([block for _, block in windows], axis=3)
    expected = smooth_array(data, bold.affine, fwhm=fwhm)[box]
    np.testing.assert_array_equal(window, expected)


@pytest.mark.parametrize("t_r", [None, 2.5], ids=["the input's", "given"])
def test_cleaned_bold_states_the_runs_header_codes_units_and_repetition_time(
    tmp_path, synthetic_bold_file, t_r
):
    source = nib.load(synthetic_bold_file).header
    outputs = run_masker_workflow(
        synthetic_bold_file,
        cache_root=tmp_path / "cache",
        detrend=True,
        **({} if t_r is None else {"t_r": t_r}),
    )
    cleaned = nib.load(outputs["cleaned_bold_file"]).header
    expected_t_r = float(source.get_zooms()[3]) if t_r is None else t_r
    assert cleaned.get_zooms()[3] == pytest.approx(expected_t_r)
    assert cleaned.get_xyzt_units() == ("mm", "sec")
    assert int(cleaned["sform_code"]) == (int(source["sform_code"]) or 1)
