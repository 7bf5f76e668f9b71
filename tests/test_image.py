"""masker_wf.image against nilearn 0.11.1, computed inside each test.

Real BOLD (nibabel's functional.nii: scaled int16 read as float64; nipype's
ds003: float32) and synthetic images. Images must agree within 1e-5 relative
(float64) / 1e-4 (float32); smooth_masked must be bit-identical to nilearn's
smooth_img + apply_mask.
"""

import warnings

import nibabel as nib
import nilearn.image as ni
import nilearn.masking as nm
import numpy as np
import pytest
from conftest import make_synthetic_bold
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nilearn.image.image import smooth_array as nilearn_smooth_array

from masker_wf import image
from masker_wf._exceptions import BoundingBoxError, DimensionError


def _quiet(function, *args, **kwargs):
    """Call nilearn with its deprecation/casting chatter silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def assert_images_close(ours, theirs):
    """Same affine, shape and dtype; data within 1e-5 (float64) or 1e-4 (float32)."""
    np.testing.assert_allclose(ours.affine, theirs.affine, rtol=1e-12, atol=1e-12)
    a = np.asanyarray(ours.dataobj)
    b = np.asanyarray(theirs.dataobj)
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    rtol = 1e-4 if b.dtype == np.float32 else 1e-5
    scale = np.nanmax(np.abs(b)) if b.size and np.isfinite(b).any() else 1.0
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(scale, 1e-12) * 1e-2)


@pytest.fixture(scope="module")
def synthetic_path(tmp_path_factory):
    bold, mask = make_synthetic_bold(shape=(12, 13, 11), n_volumes=12)
    folder = tmp_path_factory.mktemp("synthetic")
    nib.save(bold, folder / "bold.nii.gz")
    nib.save(mask, folder / "mask.nii.gz")
    return folder / "bold.nii.gz"


@pytest.fixture(params=["functional", "ds003", "synthetic"])
def bold_path(request, functional_path, ds003_path, synthetic_path):
    return {"functional": functional_path, "ds003": ds003_path, "synthetic": synthetic_path}[
        request.param
    ]


def _rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


TARGETS = {
    "3x3-zoom": (np.diag([5.0, 4.5, 6.0]), None),
    "3x3-oblique": (_rotation(0.3) * 3.5, None),
    "4x4-no-shape": (np.diag([3.0, 3.5, 4.0, 1.0]), None),
    "4x4-shape": (
        np.array([[3.0, 0, 0, -20], [0, 3.0, 0, -25], [0, 0, 3.0, -10], [0, 0, 0, 1]]),
        (14, 15, 9),
    ),
}


# --------------------------------------------------------------------------------- resample
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("interpolation", ["continuous", "linear", "nearest"])
def test_resample_img_matches_nilearn(bold_path, target, interpolation):
    affine, shape = TARGETS[target]
    ours = image.resample_img(bold_path, affine, shape, interpolation=interpolation)
    theirs = _quiet(
        ni.resample_img,
        bold_path,
        affine,
        shape,
        interpolation=interpolation,
        force_resample=False,
    )
    assert_images_close(ours, theirs)


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("fill_value", [0, -3.5])
@pytest.mark.parametrize("order", ["F", "C"])
def test_resample_img_options_match_nilearn(ds003_path, clip, fill_value, order):
    affine = np.array([[2.5, 0, 0, -30], [0, 2.5, 0, -40], [0, 0, 4, -10], [0, 0, 0, 1]])
    kwargs = {"clip": clip, "fill_value": fill_value, "order": order}
    ours = image.resample_img(ds003_path, affine, (30, 30, 12), **kwargs)
    theirs = _quiet(
        ni.resample_img, ds003_path, affine, (30, 30, 12), force_resample=True, **kwargs
    )
    assert_images_close(ours, theirs)
    flags = np.asanyarray(ours.dataobj).flags
    assert flags.f_contiguous if order == "F" else flags.c_contiguous


def test_resample_img_force_resample_matches_nilearn(functional_path):
    affine = nib.load(functional_path).affine.copy()
    affine[:3, 3] += affine[:3, :3] @ [-2, 1, 0]
    ours = image.resample_img(functional_path, affine, (18, 20, 3), force_resample=True)
    theirs = _quiet(ni.resample_img, functional_path, affine, (18, 20, 3), force_resample=True)
    assert_images_close(ours, theirs)


def test_resample_img_integer_shift_is_an_exact_block_copy():
    """Pure integer translations copy data; nilearn's shortcut misplaces it (see docstring)."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(10, 9, 8)) + 5
    img = nib.Nifti1Image(data, np.eye(4))
    # Grid starting before the data: nilearn's shortcut is right, both must agree.
    before = np.eye(4)
    before[:3, 3] = [-2, -1, -3]
    ours = image.resample_img(img, before, (14, 12, 12))
    assert_images_close(ours, _quiet(ni.resample_img, img, before, (14, 12, 12)))
    # Grid starting inside the data: compare with true interpolation instead.
    inside = np.eye(4)
    inside[:3, 3] = [3, 2, 1]
    ours = image.resample_img(img, inside, (5, 5, 5))
    np.testing.assert_array_equal(ours.get_fdata(), data[3:8, 2:7, 1:6])
    interpolated = _quiet(ni.resample_img, img, inside, (5, 5, 5), force_resample=True)
    np.testing.assert_allclose(ours.get_fdata(), interpolated.get_fdata(), rtol=1e-10)


def test_resample_img_signed_int_becomes_float32_with_warning():
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(data, np.eye(4))
    target = np.diag([0.7, 0.8, 0.9])
    with pytest.warns(UserWarning, match="Casting data from int16 to float32"):
        ours = image.resample_img(img, target)
    assert ours.get_data_dtype() == np.float32
    assert_images_close(ours, _quiet(ni.resample_img, img, target))
    nearest = image.resample_img(img, target, interpolation="nearest")
    assert np.asanyarray(nearest.dataobj).dtype == np.int16


def test_resample_img_non_finite_values_match_nilearn(synthetic_path):
    img = nib.load(synthetic_path)
    data = img.get_fdata(dtype=np.float32)
    data[2:4, 3:5, 4] = np.nan
    data[0, 0, 0] = np.inf
    img = nib.Nifti1Image(data, img.affine)
    target = np.diag([2.0, 2.0, 2.5])
    with pytest.warns(RuntimeWarning, match="NaNs or infinite"):
        ours = image.resample_img(img, target)
    theirs = _quiet(ni.resample_img, img, target)
    a, b = ours.get_fdata(), theirs.get_fdata()
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-4, atol=1e-6)


def test_resample_img_binary_data_warns():
    mask = np.zeros((6, 6, 6), dtype=np.float32)
    mask[2:4, 2:4, 2:4] = 1
    with pytest.warns(UserWarning, match="Resampling binary images"):
        image.resample_img(nib.Nifti1Image(mask, np.eye(4)), np.diag([0.5, 0.5, 0.5]))


def test_resample_img_noop_returns_equal_copy(ds003_path):
    img = nib.load(ds003_path)
    same = image.resample_img(img, img.affine, img.shape[:3])
    assert same is not img
    np.testing.assert_array_equal(np.asanyarray(same.dataobj), np.asanyarray(img.dataobj))
    assert image.resample_img(img) is not img
    assert image.resample_img(img, copy=False) is img


def test_resample_to_img_matches_nilearn(ds003_path, functional_path):
    ours = image.resample_to_img(functional_path, ds003_path)
    theirs = _quiet(ni.resample_to_img, functional_path, ds003_path, force_resample=False)
    assert_images_close(ours, theirs)
    ours = image.resample_to_img(ds003_path, functional_path, interpolation="nearest")
    theirs = _quiet(
        ni.resample_to_img,
        ds003_path,
        functional_path,
        interpolation="nearest",
        force_resample=False,
    )
    assert_images_close(ours, theirs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_shape": (5, 5, 5)}, "target_affine should be specified"),
        ({"target_affine": np.eye(4), "target_shape": (5, 5)}, "length of 3|of length 3"),
        ({"target_affine": np.eye(3), "target_shape": (5, 5, 5)}, "anchor vector"),
        ({"target_affine": np.eye(4), "interpolation": "cubic"}, "interpolation must be one"),
        ({"target_affine": np.eye(2)}, "target_affine must be"),
    ],
)
def test_resample_img_rejects_bad_arguments(ds003_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        image.resample_img(ds003_path, **kwargs)


def test_resample_img_bounding_box_error_like_nilearn(ds003_path):
    far = np.eye(4)
    far[:3, 3] = [1000, 1000, 1000]
    with pytest.raises(BoundingBoxError, match="does not contain any of the data"):
        image.resample_img(ds003_path, far)
    assert issubclass(BoundingBoxError, ValueError)
    with pytest.raises(ValueError, match="does not contain any of the data"):
        _quiet(ni.resample_img, ds003_path, far)


# ---------------------------------------------------------------------------------- smooth
@pytest.mark.parametrize(
    "fwhm", [6, 4.5, [4, 0, 8], (3, None, 5), np.array([2.0, 3.0, 4.0]), "fast", None]
)
def test_smooth_img_matches_nilearn(bold_path, fwhm):
    assert_images_close(image.smooth_img(bold_path, fwhm), _quiet(ni.smooth_img, bold_path, fwhm))


def test_smooth_img_zero_fwhm_warns_and_does_nothing(ds003_path):
    with pytest.warns(UserWarning, match="Setting it to None"):
        ours = image.smooth_img(ds003_path, 0)
    np.testing.assert_array_equal(ours.get_fdata(), nib.load(ds003_path).get_fdata())


def test_smooth_img_list_gives_list(ds003_path, functional_path):
    ours = image.smooth_img([ds003_path, functional_path], 5)
    theirs = _quiet(ni.smooth_img, [ds003_path, functional_path], 5)
    assert isinstance(ours, list)
    assert len(ours) == 2
    for a, b in zip(ours, theirs, strict=True):
        assert_images_close(a, b)


def test_smooth_img_non_finite_and_int_data():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(7, 8, 9)).astype(np.float32)
    data[1, 2, 3] = np.nan
    data[4, 4, 4] = -np.inf
    img = nib.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0]))
    ours = image.smooth_img(img, 5)
    assert np.isfinite(ours.get_fdata()).all()
    assert_images_close(ours, _quiet(ni.smooth_img, img, 5))
    ints = nib.Nifti1Image(
        (np.nan_to_num(data, posinf=0, neginf=0) * 100).astype(np.int16), img.affine
    )
    assert np.asanyarray(image.smooth_img(ints, 5).dataobj).dtype == np.float32
    assert_images_close(image.smooth_img(ints, 5), _quiet(ni.smooth_img, ints, 5))


def test_smooth_array_oblique_affine_and_in_place():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(9, 10, 11))
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0.4) @ np.diag([2.0, 3.0, 2.5])
    expected = _quiet(nilearn_smooth_array, data, affine, fwhm=6)
    work = data.copy()
    result = image.smooth_array(work, affine, fwhm=6, copy=False)
    assert result is work
    np.testing.assert_allclose(work, expected, rtol=1e-12)


@pytest.mark.parametrize("fwhm", [[4, 4], "gauss", [1, 2, 3, 4]])
def test_smooth_array_rejects_bad_fwhm(fwhm):
    with pytest.raises(ValueError, match="fwhm"):
        image.smooth_array(np.zeros((4, 4, 4)), np.eye(4), fwhm=fwhm)


# ------------------------------------------------------------------------- smooth_masked
def _nilearn_smooth_then_mask(img, fwhm, mask):
    smoothed = _quiet(ni.smooth_img, img, fwhm)
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), img.affine)
    return _quiet(nm.apply_mask, smoothed, mask_img)


@pytest.mark.parametrize("fwhm", [6, 3, [8, 0, 4], "fast", None])
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_smooth_masked_equals_nilearn_on_real_bold(ds003_path, ds003_mask_path, fwhm, n_jobs):
    img = nib.load(ds003_path)
    mask = np.asanyarray(nib.load(ds003_mask_path).dataobj) > 0
    ours = image.smooth_masked(np.asanyarray(img.dataobj), img.affine, fwhm, mask, n_jobs=n_jobs)
    theirs = _nilearn_smooth_then_mask(img, fwhm, mask)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("where", ["centre", "edge", "corner-voxel", "full"])
def test_smooth_masked_small_masks_and_edges(functional_path, where):
    """Masks far from and touching the array edges; scaled int16 data is float64."""
    img = nib.load(functional_path)
    mask = np.zeros(img.shape[:3], dtype=bool)
    if where == "centre":
        mask[7:10, 9:12, 1] = True
    elif where == "edge":
        mask[0:3, 15:21, 0:2] = True
    elif where == "corner-voxel":
        mask[-1, -1, -1] = True
    else:
        mask[:] = True
    data = np.asanyarray(img.dataobj)
    ours = image.smooth_masked(data, img.affine, 7, mask)
    theirs = _nilearn_smooth_then_mask(img, 7, mask)
    assert ours.dtype == theirs.dtype == np.float64
    np.testing.assert_array_equal(ours, theirs)


def test_smooth_masked_non_finite_int_and_3d_inputs():
    rng = np.random.default_rng(3)
    shape = (20, 18, 16, 5)
    data = rng.normal(100, 10, size=shape).astype(np.float32)
    data[3, 4, 5, 1] = np.nan
    data[10, 9, 8, 2] = np.inf
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    img = nib.Nifti1Image(data, affine)
    mask = np.zeros(shape[:3], dtype=bool)
    mask[5:15, 4:14, 4:12] = True
    theirs = _nilearn_smooth_then_mask(img, 5, mask)
    np.testing.assert_array_equal(image.smooth_masked(data, affine, 5, mask), theirs)
    assert not data.flags.writeable or np.isnan(data[3, 4, 5, 1])  # input untouched

    ints = (np.nan_to_num(data, posinf=0) * 10).astype(np.int16)
    int_img = nib.Nifti1Image(ints, affine)
    np.testing.assert_array_equal(
        image.smooth_masked(ints, affine, 5, mask), _nilearn_smooth_then_mask(int_img, 5, mask)
    )
    volume = np.nan_to_num(data[..., 0])
    expected = _quiet(nilearn_smooth_array, volume, affine, fwhm=5)[mask]
    np.testing.assert_array_equal(image.smooth_masked(volume, affine, 5, mask)[0], expected)


def test_smooth_masked_zero_fwhm_warns(ds003_path, ds003_mask_path):
    img = nib.load(ds003_path)
    mask = np.asanyarray(nib.load(ds003_mask_path).dataobj) > 0
    data = np.asanyarray(img.dataobj)
    with pytest.warns(UserWarning, match="Setting it to None"):
        ours = image.smooth_masked(data, img.affine, 0, mask)
    np.testing.assert_array_equal(ours, data[mask].T)


def test_smooth_masked_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="mask shape"):
        image.smooth_masked(np.zeros((4, 4, 4, 2)), np.eye(4), 4, np.ones((4, 4, 3)))
    with pytest.raises(DimensionError):
        image.smooth_masked(np.zeros((4, 4)), np.eye(4), 4, np.ones((4, 4)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(*[st.integers(1, 9)] * 3),
    n_volumes=st.integers(1, 3),
    fwhm=st.one_of(st.floats(0.5, 12), st.sampled_from(["fast", None])),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([np.float32, np.float64, np.int16]),
)
def test_smooth_masked_equals_full_smoothing_property(shape, n_volumes, fwhm, seed, dtype):
    """For any grid, mask, FWHM and dtype: identical to smoothing the whole array."""
    rng = np.random.default_rng(seed)
    data = (rng.normal(size=(*shape, n_volumes)) * 50).astype(dtype)
    mask = rng.random(shape) < 0.3
    affine = np.diag([*rng.uniform(1, 4, size=3), 1.0])
    full = _quiet(nilearn_smooth_array, data, affine, fwhm=fwhm)
    ours = image.smooth_masked(data, affine, fwhm, mask)
    expected = full[mask].T.astype(ours.dtype)
    assert ours.shape == (n_volumes, int(mask.sum()))
    np.testing.assert_array_equal(ours, expected)


# ---------------------------------------------------------------- crop / mean / index / concat
@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("rtol", [1e-8, 0.3])
def test_crop_img_matches_nilearn(bold_path, pad, rtol):
    ours, offset = image.crop_img(bold_path, rtol=rtol, pad=pad, return_offset=True)
    theirs, their_offset = _quiet(ni.crop_img, bold_path, rtol=rtol, pad=pad, return_offset=True)
    assert_images_close(ours, theirs)
    assert offset == tuple(their_offset)


def test_crop_img_of_mask_and_empty_image(ds003_mask_path):
    assert_images_close(image.crop_img(ds003_mask_path), _quiet(ni.crop_img, ds003_mask_path))
    empty = nib.Nifti1Image(np.zeros((4, 5, 6), dtype=np.float32), np.eye(4))
    assert image.crop_img(empty).shape == (4, 5, 6)


def test_mean_img_matches_nilearn(bold_path, ds003_path):
    assert_images_close(image.mean_img(bold_path), _quiet(ni.mean_img, bold_path))
    target = np.diag([4.0, 4.0, 4.0, 1.0])
    ours = image.mean_img([bold_path, bold_path], target_affine=target, target_shape=(9, 9, 9))
    theirs = _quiet(
        ni.mean_img, [bold_path, bold_path], target_affine=target, target_shape=(9, 9, 9)
    )
    assert_images_close(ours, theirs)


def test_mean_img_of_3d_list_matches_nilearn(ds003_path):
    volumes = [_quiet(ni.index_img, ds003_path, i) for i in range(3)]
    assert_images_close(image.mean_img(volumes), _quiet(ni.mean_img, volumes))


@pytest.mark.parametrize("index", [3, slice(2, 9, 3), [0, 5, 1], "bool"])
def test_index_img_matches_nilearn(ds003_path, index):
    if isinstance(index, str):
        index = np.arange(20) % 3 == 0
    assert_images_close(
        image.index_img(ds003_path, index), _quiet(ni.index_img, ds003_path, index)
    )


def test_index_img_accepts_pandas_and_rejects_3d(ds003_path, ds003_mask_path):
    import pandas as pd

    series = pd.Series([1, 4, 2])
    assert image.index_img(ds003_path, series).shape[3] == 3
    with pytest.raises(DimensionError):
        image.index_img(ds003_mask_path, 0)


@pytest.mark.parametrize("dtype", [np.float32, None, np.float64])
def test_concat_imgs_matches_nilearn(ds003_path, dtype):
    volumes = [_quiet(ni.index_img, ds003_path, i) for i in range(4)]
    assert_images_close(
        image.concat_imgs(volumes, dtype=dtype), _quiet(ni.concat_imgs, volumes, dtype=dtype)
    )
    runs = [ds003_path, _quiet(ni.index_img, ds003_path, slice(0, 5))]
    assert_images_close(
        image.concat_imgs(runs, dtype=dtype), _quiet(ni.concat_imgs, runs, dtype=dtype)
    )


def test_concat_imgs_refuses_different_grids_unless_auto_resample(ds003_path, functional_path):
    with pytest.raises(ValueError, match="different field of view"):
        image.concat_imgs([ds003_path, functional_path])
    ours = image.concat_imgs([ds003_path, functional_path], auto_resample=True)
    theirs = _quiet(ni.concat_imgs, [ds003_path, functional_path], auto_resample=True)
    assert ours.shape == theirs.shape == (16, 16, 9, 40)
    with pytest.raises(TypeError, match="empty"):
        image.concat_imgs([])


# ------------------------------------------------------------------------------ confounds
def _as_float64_img(path):
    """nilearn computes these components in the data's precision; with float32 data and a
    large mean the eigenvalue gaps fall below float32 resolution, so the oracle runs on
    float64 (masker_wf.signal works in float64 internally)."""
    img = nib.load(path)
    return nib.Nifti1Image(img.get_fdata(), img.affine)


def assert_same_components(ours, theirs, tol=1e-6):
    """Unit-norm components equal up to sign."""
    assert ours.shape == theirs.shape
    for a, b in zip(ours.T.astype(float), theirs.T.astype(float), strict=True):
        assert abs(abs(a @ b) - 1) < tol


@pytest.mark.parametrize("detrend", [True, False])
@pytest.mark.parametrize(("n_confounds", "percentile"), [(5, 2.0), (3, 10.0)])
def test_high_variance_confounds_match_nilearn(bold_path, detrend, n_confounds, percentile):
    kwargs = {"n_confounds": n_confounds, "percentile": percentile, "detrend": detrend}
    ours = image.high_variance_confounds(bold_path, **kwargs)
    theirs = _quiet(ni.high_variance_confounds, _as_float64_img(bold_path), **kwargs)
    assert_same_components(ours, theirs)


def test_high_variance_confounds_with_mask(ds003_path, ds003_mask_path):
    ours = image.high_variance_confounds(ds003_path, mask_img=ds003_mask_path)
    theirs = _quiet(
        ni.high_variance_confounds, _as_float64_img(ds003_path), mask_img=ds003_mask_path
    )
    assert_same_components(ours, theirs)
    with pytest.raises(DimensionError):
        image.high_variance_confounds(ds003_mask_path)
