"""masker_wf.masking against nilearn 0.11.1, computed inside each test.

Computed masks must be identical voxel for voxel; masked signals within 1e-5
relative (float64) / 1e-4 (float32). Also: nilearn's errors and warnings, and
where the MNI152 templates come from.
"""

import warnings

import nibabel as nib
import nilearn.image as ni
import nilearn.masking as nm
import numpy as np
import pytest
from conftest import make_synthetic_bold
from hypothesis import given, settings
from hypothesis import strategies as st

from masker_wf import _templates, masking
from masker_wf._exceptions import DimensionError, MaskWarning


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def assert_same_mask(ours, theirs):
    np.testing.assert_allclose(ours.affine, theirs.affine, rtol=1e-12, atol=1e-12)
    a = np.asanyarray(ours.dataobj)
    b = np.asanyarray(theirs.dataobj)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a != 0, b != 0)


def assert_signals_close(ours, theirs):
    assert ours.shape == theirs.shape
    assert ours.dtype == theirs.dtype
    rtol = 1e-4 if theirs.dtype == np.float32 else 1e-5
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * 1e-3 * np.abs(theirs).max())


@pytest.fixture(scope="module")
def synthetic_paths(tmp_path_factory):
    bold, mask = make_synthetic_bold(shape=(14, 15, 12), n_volumes=10)
    folder = tmp_path_factory.mktemp("synthetic")
    nib.save(bold, folder / "bold.nii.gz")
    nib.save(mask, folder / "mask.nii.gz")
    return folder / "bold.nii.gz", folder / "mask.nii.gz"


@pytest.fixture(params=["functional", "ds003", "synthetic"])
def bold_path(request, functional_path, ds003_path, synthetic_paths):
    return {
        "functional": functional_path,
        "ds003": ds003_path,
        "synthetic": synthetic_paths[0],
    }[request.param]


@pytest.fixture(scope="module")
def mni_bold():
    """A small 4D image on a 4 mm MNI grid, so that the template masks are not empty."""
    affine = np.array(
        [[4.0, 0, 0, -78], [0, 4.0, 0, -112], [0, 0, 4.0, -70], [0, 0, 0, 1]], dtype=float
    )
    data = np.random.default_rng(0).normal(100, 5, size=(40, 48, 40, 2)).astype(np.float32)
    return nib.Nifti1Image(data, affine)


# ---------------------------------------------------------------------------- background
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"border_size": 1},
        {"border_size": 3, "connected": True},
        {"opening": 1},
        {"opening": 2, "connected": True},
    ],
)
def test_compute_background_mask_matches_nilearn(bold_path, kwargs):
    ours = masking.compute_background_mask(bold_path, **kwargs)
    theirs = _quiet(nm.compute_background_mask, bold_path, **kwargs)
    assert_same_mask(ours, theirs)


def test_compute_background_mask_nan_background_and_target(ds003_path):
    img = nib.load(ds003_path)
    data = img.get_fdata(dtype=np.float32)
    data[data < np.percentile(data, 40)] = np.nan
    nan_img = nib.Nifti1Image(data, img.affine)
    assert_same_mask(
        masking.compute_background_mask(nan_img), _quiet(nm.compute_background_mask, nan_img)
    )
    target = np.diag([3.0, 3.0, 4.0])
    assert_same_mask(
        masking.compute_background_mask(ds003_path, target_affine=target),
        _quiet(nm.compute_background_mask, ds003_path, target_affine=target),
    )


def test_compute_background_mask_warns_when_empty():
    flat = nib.Nifti1Image(np.ones((6, 6, 6, 3), dtype=np.float32), np.eye(4))
    with pytest.warns(MaskWarning, match="homogeneous background"):
        mask = masking.compute_background_mask(flat)
    assert not np.asanyarray(mask.dataobj).any()


# ------------------------------------------------------------------------------------ EPI
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"lower_cutoff": 0.1, "upper_cutoff": 0.95},
        {"opening": 0},
        {"opening": 1, "connected": False},
        {"exclude_zeros": True},
        {"ensure_finite": False, "opening": False},
    ],
)
def test_compute_epi_mask_matches_nilearn(bold_path, kwargs):
    with warnings.catch_warnings():
        # functional.nii has 3 slices: erosion empties it, for both implementations.
        warnings.simplefilter("ignore", MaskWarning)
        ours = masking.compute_epi_mask(bold_path, **kwargs)
    theirs = _quiet(nm.compute_epi_mask, bold_path, **kwargs)
    assert_same_mask(ours, theirs)


def test_compute_epi_mask_with_nans_and_target(ds003_path):
    img = nib.load(ds003_path)
    data = img.get_fdata(dtype=np.float32)
    data[:2] = np.nan
    nan_img = nib.Nifti1Image(data, img.affine)
    assert_same_mask(masking.compute_epi_mask(nan_img), _quiet(nm.compute_epi_mask, nan_img))
    target = np.diag([2.0, 2.0, 3.0])
    assert_same_mask(
        masking.compute_epi_mask(ds003_path, target_affine=target, opening=1),
        _quiet(nm.compute_epi_mask, ds003_path, target_affine=target, opening=1),
    )


def test_compute_epi_mask_empty_warns(functional_path):
    with pytest.warns(MaskWarning, match="EPI images not detrended"):
        masking.compute_epi_mask(functional_path)


# ------------------------------------------------------------------------------ templates
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"mask_type": "gm"},
        {"mask_type": "wm", "threshold": 0.3},
        {"threshold": 0.8, "opening": 0, "connected": False},
        {"mask_type": "gm", "opening": 1},
    ],
)
def test_compute_brain_mask_matches_nilearn(mni_bold, kwargs, monkeypatch):
    monkeypatch.setenv(_templates.SOURCE_ENV, "nilearn")
    ours = masking.compute_brain_mask(mni_bold, **kwargs)
    theirs = _quiet(nm.compute_brain_mask, mni_bold, **kwargs)
    assert np.asanyarray(theirs.dataobj).any()
    assert_same_mask(ours, theirs)


def test_compute_brain_mask_on_native_grid_and_errors(ds003_path, monkeypatch):
    monkeypatch.setenv(_templates.SOURCE_ENV, "nilearn")
    assert_same_mask(
        masking.compute_brain_mask(ds003_path), _quiet(nm.compute_brain_mask, ds003_path)
    )
    with pytest.raises(ValueError, match="Unknown mask type"):
        masking.compute_brain_mask(ds003_path, mask_type="csf")
    corner = np.diag([2.0, 2.0, 2.0, 1.0])
    corner[:3, 3] = [-95, -130, -70]  # inside the template's field of view, outside the head
    outside = nib.Nifti1Image(np.zeros((4, 4, 4)), corner)
    with pytest.warns(MaskWarning, match="mask is empty, lower the threshold"):
        masking.compute_brain_mask(outside)


def test_compute_multi_brain_mask_matches_nilearn(mni_bold, monkeypatch):
    monkeypatch.setenv(_templates.SOURCE_ENV, "nilearn")
    ours = masking.compute_multi_brain_mask([mni_bold, mni_bold], mask_type="wm", n_jobs=2)
    theirs = _quiet(nm.compute_multi_brain_mask, [mni_bold, mni_bold], mask_type="wm")
    assert_same_mask(ours, theirs)
    other = nib.Nifti1Image(np.zeros((5, 5, 5)), np.eye(4))
    with pytest.raises(ValueError, match="different field of view"):
        masking.compute_multi_brain_mask([mni_bold, other])
    with pytest.raises(TypeError, match="empty"):
        masking.compute_multi_brain_mask([])


def test_template_error_names_both_sources(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(empty))
    monkeypatch.setenv("HOME", str(empty))
    monkeypatch.delenv(_templates.SOURCE_ENV, raising=False)
    monkeypatch.setattr(_templates, "nilearn_data_dir", lambda: None)
    with pytest.raises(_templates.TemplateNotFoundError) as error:
        _templates.find_template("gm")
    message = str(error.value)
    assert "nilearn" in message
    assert "TemplateFlow" in message
    assert "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz" in message
    assert "label-GM_probseg" in message
    with pytest.raises(FileNotFoundError, match="TemplateFlow"):
        masking.compute_brain_mask(nib.Nifti1Image(np.zeros((3, 3, 3)), np.eye(4)))


def test_template_found_in_templateflow_cache(tmp_path, monkeypatch, mni_bold):
    """A TemplateFlow cache (here a real NIfTI under the right name) is used when forced."""
    folder = tmp_path / "tpl-MNI152NLin2009cAsym"
    folder.mkdir()
    nilearn_t1 = _templates.nilearn_data_dir() / _templates._NILEARN_FILES["whole-brain"]
    t1 = nib.load(nilearn_t1)
    brain = (np.asanyarray(t1.dataobj) > 127).astype(np.uint8)
    nib.save(
        nib.Nifti1Image(brain, t1.affine),
        folder / "tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz",
    )
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path))
    path, source = _templates.find_template("whole-brain", source="templateflow")
    assert source == "templateflow"
    assert path.parent == folder
    monkeypatch.setenv(_templates.SOURCE_ENV, "templateflow")
    mask = masking.compute_brain_mask(mni_bold)
    # The binary mask thresholded at 0.5 after interpolation is close to nilearn's
    # thresholded T1 (same underlying template, thresholded before vs after resampling).
    theirs = np.asanyarray(_quiet(nm.compute_brain_mask, mni_bold).dataobj) > 0
    ours = np.asanyarray(mask.dataobj) > 0
    assert (ours != theirs).mean() < 0.01
    with pytest.raises(_templates.TemplateNotFoundError):
        _templates.find_template("wm", source="templateflow")
    with pytest.raises(ValueError, match="Unknown template source"):
        _templates.find_template("gm", source="internet")


def test_template_auto_prefers_nilearn(monkeypatch):
    monkeypatch.delenv(_templates.SOURCE_ENV, raising=False)
    path, source = _templates.find_template("wm")
    assert source == "nilearn"
    assert path.name == "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
    template = _templates.load_template("wm")
    assert template.get_data_dtype() == np.float32
    assert float(np.asanyarray(template.dataobj).max()) == 1.0


# ---------------------------------------------------------------------------- multi / intersect
@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("connected", [True, False])
def test_intersect_masks_matches_nilearn(ds003_path, threshold, connected):
    masks = [
        _quiet(nm.compute_epi_mask, ds003_path, lower_cutoff=c, opening=1) for c in (0.1, 0.2, 0.4)
    ]
    masks.append(_quiet(nm.compute_background_mask, ds003_path))
    ours = masking.intersect_masks(masks, threshold=threshold, connected=connected)
    theirs = _quiet(nm.intersect_masks, masks, threshold=threshold, connected=connected)
    assert_same_mask(ours, theirs)
    assert np.asanyarray(ours.dataobj).dtype == np.int8


def test_intersect_masks_errors(ds003_mask_path, functional_path):
    with pytest.raises(ValueError, match="No mask"):
        masking.intersect_masks([])
    with pytest.raises(ValueError, match="smaller than 1"):
        masking.intersect_masks([ds003_mask_path], threshold=1.5)
    with pytest.raises(ValueError, match="greater than 0"):
        masking.intersect_masks([ds003_mask_path], threshold=-0.1)
    other = _quiet(nm.compute_background_mask, functional_path)
    with pytest.raises(ValueError, match=r"same (affine|shape)"):
        masking.intersect_masks([ds003_mask_path, other])


def test_compute_multi_masks_match_nilearn(ds003_path, synthetic_paths):
    runs = [ds003_path, _quiet(ni.index_img, ds003_path, slice(0, 10))]
    assert_same_mask(
        masking.compute_multi_epi_mask(runs, n_jobs=2),
        _quiet(nm.compute_multi_epi_mask, runs),
    )
    assert_same_mask(
        masking.compute_multi_epi_mask(runs, threshold=1.0, opening=1, connected=False),
        _quiet(nm.compute_multi_epi_mask, runs, threshold=1.0, opening=1, connected=False),
    )
    assert_same_mask(
        masking.compute_multi_background_mask(runs), _quiet(nm.compute_multi_background_mask, runs)
    )
    synthetic = [synthetic_paths[0], synthetic_paths[0]]
    assert_same_mask(
        masking.compute_multi_background_mask(synthetic, opening=1, n_jobs=2),
        _quiet(nm.compute_multi_background_mask, synthetic, opening=1),
    )
    with pytest.raises(TypeError, match="empty"):
        masking.compute_multi_epi_mask([])


# ------------------------------------------------------------------------------ load_mask_img
def _img(data):
    return nib.Nifti1Image(np.asarray(data), np.eye(4))


def test_load_mask_img_accepts_binary_masks(ds003_mask_path):
    mask, affine = masking.load_mask_img(ds003_mask_path)
    their_mask, their_affine = _quiet(nm.load_mask_img, ds003_mask_path)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, their_mask)
    np.testing.assert_array_equal(affine, their_affine)
    full, _ = masking.load_mask_img(_img(np.full((3, 3, 3), 7, dtype=np.int16)))
    assert full.all()
    squeezed, _ = masking.load_mask_img(_img(np.ones((3, 3, 3, 1), dtype=np.uint8)))
    assert squeezed.shape == (3, 3, 3)


def test_load_mask_img_empty_mask():
    empty = _img(np.zeros((3, 3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="The mask is invalid as it is empty"):
        masking.load_mask_img(empty)
    mask, _ = masking.load_mask_img(empty, allow_empty=True)
    assert not mask.any()


@pytest.mark.parametrize(
    ("values", "match"),
    [([0, 1, 2], "not made of 2 values"), ([1, 2], "Background of the mask must be")],
)
def test_load_mask_img_rejects_non_binary_masks(values, match):
    data = np.resize(np.array(values, dtype=np.int16), (3, 3, 3))
    with pytest.raises(ValueError, match=match):
        masking.load_mask_img(_img(data))
    with pytest.raises(ValueError, match=match):
        _quiet(nm.load_mask_img, _img(data))


def test_load_mask_img_non_finite_and_4d():
    data = np.zeros((4, 4, 4), dtype=np.float32)
    data[1:3, 1:3, 1:3] = 1
    data[0, 0, 0] = np.nan
    with pytest.warns(UserWarning, match="Non-finite values"):
        mask, _ = masking.load_mask_img(_img(data))
    assert mask.sum() == 8
    with pytest.raises(DimensionError):
        masking.load_mask_img(_img(np.ones((3, 3, 3, 2), dtype=np.uint8)))


# ------------------------------------------------------------------------------- apply_mask
@pytest.mark.parametrize("dtype", ["f", np.float64, np.float32])
@pytest.mark.parametrize("smoothing_fwhm", [None, 5, [3, 0, 6]])
def test_apply_mask_matches_nilearn(bold_path, dtype, smoothing_fwhm):
    mask = _quiet(nm.compute_background_mask, bold_path)
    ours = masking.apply_mask(bold_path, mask, dtype=dtype, smoothing_fwhm=smoothing_fwhm)
    theirs = _quiet(nm.apply_mask, bold_path, mask, dtype=dtype, smoothing_fwhm=smoothing_fwhm)
    assert_signals_close(ours, theirs)


def test_apply_mask_fast_smoothing_smooths(bold_path):
    """nilearn's apply_mask drops the result of 'fast' smoothing (it is not done in place);
    masker-wf smooths, equal to nilearn's smooth_img(imgs, 'fast') then apply_mask."""
    mask = _quiet(nm.compute_background_mask, bold_path)
    ours = masking.apply_mask(bold_path, mask, smoothing_fwhm="fast")
    theirs = _quiet(nm.apply_mask, _quiet(ni.smooth_img, bold_path, "fast"), mask)
    assert_signals_close(ours, theirs)


def test_apply_mask_real_mask_nan_int_and_3d(ds003_path, ds003_mask_path):
    img = nib.load(ds003_path)
    data = img.get_fdata(dtype=np.float32)
    data[5:9, 5:9, 4] = np.nan
    nan_img = nib.Nifti1Image(data, img.affine)
    ours = masking.apply_mask(nan_img, ds003_mask_path)
    assert np.isfinite(ours).all()
    assert_signals_close(ours, _quiet(nm.apply_mask, nan_img, ds003_mask_path))
    raw = masking.apply_mask(nan_img, ds003_mask_path, ensure_finite=False)
    assert_signals_close(raw, _quiet(nm.apply_mask, nan_img, ds003_mask_path, ensure_finite=False))
    ints = nib.Nifti1Image(np.nan_to_num(data).astype(np.int16), img.affine)
    assert_signals_close(
        masking.apply_mask(ints, ds003_mask_path), _quiet(nm.apply_mask, ints, ds003_mask_path)
    )
    volume = _quiet(ni.index_img, ds003_path, 3)
    ours = masking.apply_mask(volume, ds003_mask_path, smoothing_fwhm=4)
    assert ours.ndim == 1
    assert_signals_close(ours, _quiet(nm.apply_mask, volume, ds003_mask_path, smoothing_fwhm=4))


def test_apply_mask_rejects_other_grid(ds003_path, functional_path, ds003_mask_path):
    with pytest.raises(ValueError, match="Mask affine"):
        masking.apply_mask(functional_path, ds003_mask_path)
    img = nib.load(ds003_path)
    cropped = nib.Nifti1Image(np.asanyarray(img.dataobj)[:15], img.affine)
    with pytest.raises(ValueError, match="Mask shape"):
        masking.apply_mask(cropped, ds003_mask_path)
    empty = nib.Nifti1Image(np.zeros(img.shape[:3], dtype=np.uint8), img.affine)
    with pytest.raises(ValueError, match="empty"):
        masking.apply_mask(ds003_path, empty)


# ---------------------------------------------------------------------------------- unmask
@pytest.mark.parametrize("order", ["F", "C"])
def test_unmask_matches_nilearn(ds003_path, ds003_mask_path, order):
    signals = _quiet(nm.apply_mask, ds003_path, ds003_mask_path)
    for X in (signals, signals[3], [signals, signals[:4]]):
        ours = masking.unmask(X, ds003_mask_path, order=order)
        theirs = _quiet(nm.unmask, X, ds003_mask_path, order=order)
        for a, b in zip(
            ours if isinstance(ours, list) else [ours],
            theirs if isinstance(theirs, list) else [theirs],
            strict=True,
        ):
            np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
            np.testing.assert_array_equal(a.affine, b.affine)
            assert np.asanyarray(a.dataobj).dtype == signals.dtype


def test_unmask_errors(ds003_mask_path):
    n_voxels = int(masking.load_mask_img(ds003_mask_path)[0].sum())
    with pytest.raises(TypeError, match=f"X must be of shape \\(samples, {n_voxels}\\)"):
        masking.unmask(np.zeros(n_voxels + 1), ds003_mask_path)
    with pytest.raises(TypeError, match=f"X must be of shape \\(samples, {n_voxels}\\)"):
        masking.unmask(np.zeros((3, n_voxels - 1)), ds003_mask_path)
    with pytest.raises(TypeError, match="2D or 1D"):
        masking.unmask(np.zeros((2, 3, n_voxels)), ds003_mask_path)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 6)] * 3),
    n_volumes=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([np.float32, np.float64, np.int16, np.uint8]),
)
def test_apply_mask_unmask_round_trip(shape, n_volumes, seed, dtype):
    """unmask(apply_mask(x)) restores the masked voxels and zeros the others."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.5
    mask.flat[0] = True
    data = (rng.random((*shape, n_volumes)) * 100).astype(dtype)
    affine = np.eye(4)
    signals = masking.apply_mask(
        nib.Nifti1Image(data, affine), nib.Nifti1Image(mask.astype(np.uint8), affine)
    )
    assert signals.shape == (n_volumes, mask.sum())
    assert signals.dtype == (dtype if np.dtype(dtype).kind == "f" else np.float32)
    back = np.asanyarray(
        masking.unmask(signals, nib.Nifti1Image(mask.astype(np.uint8), affine)).dataobj
    )
    np.testing.assert_array_equal(back[mask], data[mask].astype(signals.dtype))
    assert not back[~mask].any()
