"""masker_wf.NiftiMasker against nilearn 0.11.1's NiftiMasker, computed inside each test.

Parity gate: identical masks, ``transform`` within 1e-4 (max absolute difference
relative to the largest reference value), identical output shapes and dtypes,
``inverse_transform`` images with identical shape and affine.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import make_synthetic_bold
from joblib import Memory

from masker_wf import NiftiMasker
from masker_wf._exceptions import DimensionError

RTOL = 1e-4


# --------------------------------------------------------------------------- helpers
def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def run_both(imgs, fit_imgs=None, confounds=None, sample_mask=None, **params):
    """Fit and transform with nilearn's masker and ours; return both maskers and outputs."""
    from nilearn.maskers import NiftiMasker as NilearnMasker

    reference = NilearnMasker(**params)
    ours = NiftiMasker(**params)
    results = []
    for masker in (reference, ours):
        if fit_imgs is not None or params.get("mask_img") is None:
            _quiet(masker.fit, imgs if fit_imgs is None else fit_imgs)
        else:
            _quiet(masker.fit)
        results.append(
            _quiet(masker.transform, imgs, confounds=confounds, sample_mask=sample_mask)
        )
    return reference, ours, results[0], results[1]


def assert_close(ours, reference, rtol=RTOL):
    assert ours.shape == reference.shape
    assert ours.dtype == reference.dtype
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    difference = float(np.max(np.abs(ours.astype(np.float64) - reference.astype(np.float64))))
    assert difference / scale <= rtol, f"max relative difference {difference / scale:.2e}"


def assert_same_mask(ours_masker, reference_masker):
    ours_img, ref_img = ours_masker.mask_img_, reference_masker.mask_img_
    assert ours_img.shape == ref_img.shape
    np.testing.assert_allclose(ours_img.affine, ref_img.affine)
    np.testing.assert_array_equal(
        np.asarray(ours_img.dataobj) != 0, np.asarray(ref_img.dataobj) != 0
    )
    assert ours_masker.n_elements_ == reference_masker.n_elements_
    np.testing.assert_allclose(
        np.asarray(ours_masker.affine_), np.asarray(reference_masker.affine_)
    )


def assert_parity(imgs, fit_imgs=None, confounds=None, sample_mask=None, **params):
    reference, ours, ref_out, our_out = run_both(imgs, fit_imgs, confounds, sample_mask, **params)
    assert_same_mask(ours, reference)
    assert_close(our_out, ref_out)
    ref_img = _quiet(reference.inverse_transform, ref_out)
    our_img = ours.inverse_transform(our_out)
    assert our_img.shape == ref_img.shape
    np.testing.assert_allclose(our_img.affine, ref_img.affine)
    np.testing.assert_allclose(
        our_img.get_fdata(), ref_img.get_fdata(), atol=RTOL * max(1e-12, np.abs(ref_out).max())
    )
    return ours, our_out


def synthetic(n_volumes=60, dtype=np.float32, seed=0):
    return make_synthetic_bold(n_volumes=n_volumes, dtype=dtype, seed=seed)


def random_confounds(n_volumes, n_columns=4, seed=1):
    rng = np.random.default_rng(seed)
    time = np.arange(n_volumes)
    columns = [
        np.sin(time / (3 + k)) + 0.1 * rng.standard_normal(n_volumes) for k in range(n_columns)
    ]
    return np.column_stack(columns)


def scrubbed(n_volumes, fraction=0.1, seed=2):
    rng = np.random.default_rng(seed)
    censored = rng.choice(np.arange(2, n_volumes - 2), int(fraction * n_volumes), replace=False)
    return np.setdiff1d(np.arange(n_volumes), censored)


# --------------------------------------------------------------------------- parity: synthetic
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"smoothing_fwhm": 6.0},
        {"smoothing_fwhm": [4.0, 0.0, 6.0]},
        {"smoothing_fwhm": "fast"},
        {"detrend": True},
        {"detrend": True, "standardize": "zscore_sample"},
        {"standardize": "zscore"},
        {"standardize": True},
        {"standardize": "psc"},
        {"detrend": True, "standardize": "psc"},
        {"low_pass": 0.1, "t_r": 2.0},
        {"high_pass": 0.02, "t_r": 2.0, "detrend": True},
        {"low_pass": 0.08, "high_pass": 0.01, "t_r": 2.0, "standardize": "zscore_sample"},
        {"high_pass": 0.01, "t_r": 2.0, "clean__filter": "cosine"},
        {"low_pass": 0.1, "t_r": 2.0, "clean__butterworth__order": 3},
        {"detrend": True, "clean__ensure_finite": True},
        {"high_variance_confounds": True, "detrend": True},
        {"standardize": "zscore_sample", "standardize_confounds": False},
    ],
    ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "defaults",
)
def test_parity_synthetic_given_mask(params):
    bold, mask = synthetic()
    assert_parity(bold, mask_img=mask, **params)


@pytest.mark.parametrize("confound_kind", ["array", "1d", "dataframe", "tsv", "csv", "list"])
def test_parity_confounds(confound_kind, tmp_path):
    bold, mask = synthetic()
    array = random_confounds(60)
    confounds = {
        "array": array,
        "1d": array[:, 0],
        "dataframe": pd.DataFrame(array, columns=[f"c{i}" for i in range(4)]),
        "list": [array[:, :2], array[:, 2:]],
    }.get(confound_kind)
    if confound_kind in ("tsv", "csv"):
        path = tmp_path / f"confounds.{confound_kind}"
        sep = "\t" if confound_kind == "tsv" else ","
        pd.DataFrame(array, columns=[f"c{i}" for i in range(4)]).to_csv(path, sep=sep, index=False)
        confounds = str(path)
    assert_parity(
        bold, confounds=confounds, mask_img=mask, detrend=True, standardize="zscore_sample"
    )


def test_parity_sample_mask_without_filter():
    bold, mask = synthetic()
    keep = scrubbed(60)
    assert_parity(bold, sample_mask=keep, mask_img=mask, detrend=True, standardize="zscore_sample")
    boolean = np.zeros(60, dtype=bool)
    boolean[keep] = True
    assert_parity(bold, sample_mask=boolean, mask_img=mask, detrend=True)


@pytest.mark.usefixtures("nilearn_fixed_scrubbing")
def test_parity_sample_mask_with_bandpass():
    bold, mask = synthetic(n_volumes=80)
    ours, signals = assert_parity(
        bold,
        confounds=random_confounds(80),
        sample_mask=scrubbed(80),
        mask_img=mask,
        smoothing_fwhm=5.0,
        detrend=True,
        standardize="zscore_sample",
        low_pass=0.08,
        high_pass=0.01,
        t_r=2.0,
    )
    assert signals.shape == (80 - 8, ours.n_elements_)


def test_sample_mask_forms_are_equivalent(synthetic_bold):
    bold, mask = synthetic_bold
    keep = scrubbed(60)
    boolean = np.zeros(60, dtype=bool)
    boolean[keep] = True
    masker = NiftiMasker(mask_img=mask, detrend=True).fit()
    expected = masker.transform(bold, sample_mask=keep)
    assert expected.shape == (keep.size, masker.n_elements_)
    for form in (boolean, [keep], [keep.tolist()], keep.tolist(), [boolean], list(boolean)):
        np.testing.assert_array_equal(masker.transform(bold, sample_mask=form), expected)


def test_clean_args_and_kwargs_merge(synthetic_bold):
    _bold, mask = synthetic_bold
    both = NiftiMasker(
        mask_img=mask,
        low_pass=0.1,
        t_r=2.0,
        clean_args={"butterworth__order": 3},
        clean__filter="butterworth",
    ).fit()
    assert both.clean_args_ == {"butterworth__order": 3, "filter": "butterworth"}
    # nilearn 0.11.1 ignores such keywords silently; an option that does nothing is refused.
    with pytest.raises(TypeError, match=r"unsupported keyword argument\(s\) \['auto_resample'\]"):
        NiftiMasker(mask_img=mask, auto_resample=True).fit()


def test_parity_runs():
    bold, mask = synthetic()
    runs = np.repeat([0, 1], 30)
    assert_parity(bold, mask_img=mask, runs=runs, detrend=True, standardize="zscore_sample")
    assert_parity(
        bold,
        confounds=random_confounds(60),
        sample_mask=[np.arange(2, 30), np.arange(0, 28)],
        mask_img=mask,
        runs=runs,
        detrend=True,
    )


@pytest.mark.parametrize(
    "target",
    [
        {"target_affine": np.diag([4.0, 4.0, 4.0])},
        {"target_affine": np.diag([2.5, 2.5, 3.0])},
        {
            "target_affine": np.array(
                [[4.0, 0, 0, -20], [0, 4.0, 0, -22], [0, 0, 4.0, -16], [0, 0, 0, 1]]
            ),
            "target_shape": (10, 11, 9),
        },
    ],
    ids=["3x3-4mm", "3x3-anisotropic", "4x4-with-shape"],
)
@pytest.mark.parametrize("smoothing_fwhm", [None, 5.0])
def test_parity_target_grid(target, smoothing_fwhm):
    bold, mask = synthetic()
    assert_parity(bold, mask_img=mask, smoothing_fwhm=smoothing_fwhm, detrend=True, **target)


@pytest.mark.parametrize(
    "target",
    [
        {"target_affine": np.diag([4.0, 4.0, 4.0])},
        {"target_affine": np.diag([4.0, 4.0, 4.0, 1.0]), "target_shape": (8, 9, 8)},
    ],
)
def test_filter_and_extract_with_raw_mask_equals_masker(target):
    # The file-based steps give filter_and_extract the mask file and the target grid.
    from masker_wf._pipeline import filter_and_extract

    bold, mask = synthetic(n_volumes=30)
    masker = NiftiMasker(mask_img=mask, smoothing_fwhm=5.0, detrend=True, **target)
    expected = _quiet(masker.fit_transform, bold)
    signals = _quiet(filter_and_extract, bold, mask, smoothing_fwhm=5.0, detrend=True, **target)
    np.testing.assert_array_equal(signals, expected)


def test_parity_images_already_on_target_grid():
    bold, mask = synthetic()
    assert_parity(bold, mask_img=mask, target_affine=bold.affine, smoothing_fwhm=4.0)
    assert_parity(
        bold, mask_img=mask, target_affine=bold.affine, target_shape=bold.shape[:3], detrend=True
    )


def test_parity_mask_on_another_grid_warns_and_resamples():
    from nilearn.image import resample_img as nilearn_resample

    bold, mask = synthetic()
    coarse = _quiet(
        nilearn_resample,
        mask,
        target_affine=np.diag([4.0, 4.0, 4.0]),
        interpolation="nearest",
        force_resample=True,
    )
    with pytest.warns(UserWarning, match="resampled to the mask_img resolution"):
        NiftiMasker(mask_img=coarse).fit_transform(bold)
    assert_parity(bold, mask_img=coarse, smoothing_fwhm=6.0, detrend=True)


@pytest.mark.parametrize(
    ("data_dtype", "dtype"),
    [
        (np.float32, None),
        (np.float32, "auto"),
        (np.float32, "float64"),
        (np.float64, None),
        (np.float64, "auto"),
        (np.float64, np.float32),
        (np.int16, None),
        (np.int16, "auto"),
        (np.int16, "float64"),
        (np.uint8, None),
        (np.uint8, "auto"),
    ],
)
def test_parity_dtype(data_dtype, dtype):
    bold, mask = synthetic(n_volumes=30, dtype=data_dtype)
    assert_parity(bold, mask_img=mask, dtype=dtype, detrend=True, standardize="zscore_sample")


@pytest.mark.parametrize("data_dtype", [np.int16, np.uint8])
@pytest.mark.parametrize("dtype", [None, "auto"])
def test_parity_integer_data_smoothed(data_dtype, dtype):
    bold, mask = synthetic(n_volumes=30, dtype=data_dtype)
    assert_parity(bold, mask_img=mask, dtype=dtype, smoothing_fwhm=5.0, detrend=True)


@pytest.mark.parametrize("smoothing_fwhm", [None, 5.0])
def test_parity_non_finite_values(smoothing_fwhm):
    bold, mask = synthetic(n_volumes=30)
    data = np.asarray(bold.dataobj).copy()
    data[6, 6, 5, :] = np.nan
    data[5, 7, 4, 3] = np.inf
    with_nan = nib.Nifti1Image(data, bold.affine)
    assert_parity(with_nan, mask_img=mask, smoothing_fwhm=smoothing_fwhm, detrend=True)


def test_parity_list_of_3d_images():
    bold, mask = synthetic(n_volumes=30)
    volumes = list(nib.four_to_three(bold))
    assert_parity(volumes, mask_img=mask, detrend=True)


# --------------------------------------------------------------------------- parity: real BOLD
def test_parity_real_bold_scaled_int16(functional_path):
    # nibabel's functional.nii: int16 with scl_slope/inter -> float64 output (dtype=None).
    _ours, signals = assert_parity(str(functional_path), smoothing_fwhm=8.0, detrend=True)
    assert signals.dtype == np.float64
    assert_parity(functional_path, dtype="auto", standardize="zscore_sample")


def test_parity_real_bold_given_mask(ds003_path, ds003_mask_path):
    assert_parity(
        ds003_path,
        mask_img=ds003_mask_path,
        smoothing_fwhm=6.0,
        detrend=True,
        standardize="zscore_sample",
        low_pass=0.1,
        t_r=2.0,
        confounds=random_confounds(20, 3),
    )


@pytest.mark.usefixtures("nilearn_fixed_scrubbing")
def test_parity_real_bold_scrubbing_high_pass(ds003_path, ds003_mask_path):
    assert_parity(
        str(ds003_path),
        mask_img=str(ds003_mask_path),
        smoothing_fwhm=5.0,
        high_pass=0.02,
        t_r=2.0,
        sample_mask=np.delete(np.arange(20), [5, 11]),
        high_variance_confounds=True,
    )


@pytest.mark.parametrize(
    ("strategy", "mask_args"),
    [
        ("background", None),
        ("background", {"border_size": 1}),
        ("epi", None),
        ("epi", {"opening": 1, "lower_cutoff": 0.3}),
        ("whole-brain-template", None),
        ("wm-template", {"opening": 1}),
    ],
)
def test_parity_mask_strategies(ds003_path, strategy, mask_args):
    assert_parity(ds003_path, mask_strategy=strategy, mask_args=mask_args, detrend=True)


@pytest.mark.parametrize("strategy", ["gm-template", "wm-template"])
def test_parity_tissue_templates_synthetic(strategy):
    bold, _ = synthetic(n_volumes=20)
    assert_parity(bold, mask_strategy=strategy, standardize="zscore_sample")


def test_computed_empty_mask_fails_at_transform(ds003_path):
    # On this coarse grid the default GM template mask is eroded away (nilearn too).
    masker = _quiet(NiftiMasker(mask_strategy="gm-template").fit, ds003_path)
    assert masker.n_elements_ == 0
    with pytest.raises(ValueError, match="empty"):
        masker.transform(ds003_path)


def test_template_strategy_is_deprecated(ds003_path):
    with pytest.warns(DeprecationWarning, match="whole-brain-template"):
        masker = NiftiMasker(mask_strategy="template").fit(ds003_path)
    reference = NiftiMasker(mask_strategy="whole-brain-template").fit(ds003_path)
    np.testing.assert_array_equal(
        np.asarray(masker.mask_img_.dataobj), np.asarray(reference.mask_img_.dataobj)
    )


def test_list_of_images_computes_one_mask(ds003_path):
    from nilearn.image import index_img

    first = _quiet(index_img, ds003_path, slice(0, 10))
    second = _quiet(index_img, ds003_path, slice(10, 20))
    reference, ours, _, _ = run_both(first, fit_imgs=[first, second], mask_strategy="epi")
    assert_same_mask(ours, reference)
    whole = NiftiMasker(mask_strategy="epi").fit(ds003_path)
    np.testing.assert_array_equal(
        np.asarray(whole.mask_img_.dataobj), np.asarray(ours.mask_img_.dataobj)
    )


# --------------------------------------------------------------------------- behaviour
def test_3d_input_gives_one_row_with_deprecation_warning(synthetic_bold):
    bold, mask = synthetic_bold
    first = nib.Nifti1Image(np.asarray(bold.dataobj)[..., 0], bold.affine)
    masker = NiftiMasker(mask_img=mask).fit()
    with pytest.warns(DeprecationWarning, match="3D images will be transformed"):
        row = masker.transform(first)
    assert row.shape == (1, masker.n_elements_)
    assert masker.inverse_transform(row[0]).shape == mask.shape
    assert masker.inverse_transform(row).shape == (*mask.shape, 1)


def test_inverse_transform_shapes_and_errors(synthetic_bold):
    bold, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask)
    signals = masker.fit_transform(bold)
    image = masker.inverse_transform(signals)
    assert image.shape == bold.shape
    np.testing.assert_allclose(image.affine, mask.affine)
    np.testing.assert_array_equal(masker.transform(image), signals)
    assert masker.inverse_transform(signals[0]).shape == mask.shape
    with pytest.raises(TypeError, match="shape"):
        masker.inverse_transform(signals.T)
    with pytest.raises(TypeError, match="1D or 2D"):
        masker.inverse_transform(signals[np.newaxis])


def test_paths_and_globs(tmp_path, synthetic_bold):
    bold, mask = synthetic_bold
    volumes = nib.four_to_three(bold)
    for index, volume in enumerate(volumes[:10]):
        volume.to_filename(tmp_path / f"vol{index:02d}.nii.gz")
    mask.to_filename(tmp_path / "mask.nii.gz")
    masker = NiftiMasker(mask_img=tmp_path / "mask.nii.gz")
    from_glob = masker.fit_transform(str(tmp_path / "vol*.nii.gz"))
    from_list = masker.transform(sorted(tmp_path.glob("vol*.nii.gz")))
    assert from_glob.shape == (10, masker.n_elements_)
    np.testing.assert_array_equal(from_glob, from_list)


def test_memory_caches_transform(tmp_path, synthetic_bold, capsys):
    bold, mask = synthetic_bold
    path = tmp_path / "bold.nii"
    bold.to_filename(path)
    masker = NiftiMasker(
        mask_img=mask,
        smoothing_fwhm=4.0,
        detrend=True,
        memory=Memory(tmp_path / "cache"),
        verbose=1,
    )
    first = masker.fit_transform(path)
    output = capsys.readouterr().out
    assert "[NiftiMasker.transform_single_imgs] Smoothing images" in output
    assert "[NiftiMasker.fit] Finished fit" in output
    second = masker.transform(path)
    assert "Smoothing images" not in capsys.readouterr().out  # served from the cache
    np.testing.assert_array_equal(first, second)
    assert any("filter_and_extract" in p.name for p in (tmp_path / "cache").rglob("*"))
    # The report data are cached with the signals: a cache hit still gets a full report.
    html = masker.generate_report().get_html()
    assert "Carpet plots" in html
    assert "Temporal SNR" in html
    # A file rewritten in place is not served stale results (nilearn would).
    doubled = nib.Nifti1Image(np.asarray(bold.dataobj) * 2, bold.affine)
    doubled.to_filename(path)
    third = masker.transform(path)
    assert "Smoothing images" in capsys.readouterr().out
    assert not np.allclose(third, first)
    # memory_level=0 disables caching; a str or Path location works too.
    for location in (str(tmp_path / "str"), tmp_path / "path"):
        NiftiMasker(mask_img=mask, memory=location, memory_level=0).fit_transform(bold)
        assert not any(Path(location).rglob("*.pkl"))
        NiftiMasker(mask_img=mask, memory=location).fit_transform(bold)
        assert any(Path(location).rglob("*.pkl"))


def test_clean_kwargs_survive_refit(synthetic_bold):
    bold, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask, high_pass=0.02, t_r=2.0, clean__filter="cosine")
    first = masker.fit_transform(bold)
    second = masker.fit_transform(bold)
    np.testing.assert_array_equal(first, second)
    assert masker.clean_args_ == {"filter": "cosine"}
    via_clean_args = NiftiMasker(
        mask_img=mask, high_pass=0.02, t_r=2.0, clean_args={"filter": "cosine"}
    ).fit_transform(bold)
    np.testing.assert_array_equal(first, via_clean_args)


def test_report(tmp_path, synthetic_bold):
    bold, mask = synthetic_bold
    coarse = nib.Nifti1Image(
        np.asarray(mask.dataobj)[::2, ::2, ::2], mask.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    )
    masker = NiftiMasker(mask_img=coarse, detrend=True, t_r=2.0)
    with pytest.warns(UserWarning, match="resampled"):
        masker.fit_transform(bold, sample_mask=scrubbed(60))
    report = masker.generate_report()
    html = report.get_html()
    assert "Mask over the mean image" in html
    assert "Carpet plots" in html
    assert "Temporal SNR" in html
    assert str(masker.n_elements_) in html
    assert "resampled to the mask_img resolution" in html  # warnings are reported
    saved = report.save_as_html(tmp_path / "report.html")
    assert saved.read_text().startswith("<!DOCTYPE html>") or "<html" in saved.read_text()

    off = NiftiMasker(mask_img=mask, reports=False).fit()
    with pytest.warns(UserWarning, match="reports=False"):
        html_off = off.generate_report().get_html()
    assert "reports=False" in html_off

    mask_only = NiftiMasker(mask_img=mask).fit()
    with pytest.warns(UserWarning, match="No image provided"):
        assert "Mask over the mean image" in mask_only.generate_report().get_html()


# --------------------------------------------------------------------------- errors
def test_error_not_fitted(synthetic_bold):
    from sklearn.exceptions import NotFittedError

    bold, _ = synthetic_bold
    with pytest.raises(NotFittedError, match="fit"):
        NiftiMasker().transform(bold)
    with pytest.raises(ValueError, match="fit"):  # NotFittedError is a ValueError, as nilearn's
        NiftiMasker().inverse_transform(np.zeros(3))


def test_error_no_mask_no_imgs():
    with pytest.raises(ValueError, match="imgs' must be provided"):
        NiftiMasker().fit()


def test_error_wrong_dimensionality(synthetic_bold, tmp_path):
    bold, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask).fit()
    with pytest.raises(DimensionError):
        masker.transform([bold, bold])  # a list of 4D images is 5D
    with pytest.raises(TypeError):
        NiftiMasker(mask_img=bold).fit()  # a 4D mask
    flat = nib.Nifti1Image(np.ones((4, 5), dtype=np.float32), np.eye(4))
    with pytest.raises(TypeError, match="dimensionality"):
        masker.transform(flat)
    with pytest.raises(TypeError, match="not compatible with nibabel"):
        masker.transform(np.zeros((3, 3, 3, 3)))
    with pytest.raises(ValueError, match="File not found"):
        masker.transform(tmp_path / "missing.nii.gz")


def test_error_high_variance_confounds_on_3d(synthetic_bold):
    bold, mask = synthetic_bold
    first = nib.Nifti1Image(np.asarray(bold.dataobj)[..., 0], bold.affine)
    masker = NiftiMasker(mask_img=mask, high_variance_confounds=True).fit()
    with pytest.raises(DimensionError):
        _quiet(masker.transform, first)


def test_error_empty_mask(synthetic_bold):
    bold, mask = synthetic_bold
    empty = nib.Nifti1Image(np.zeros(mask.shape, dtype=np.uint8), mask.affine)
    masker = NiftiMasker(mask_img=empty).fit()  # allowed at fit, as nilearn 0.11
    assert masker.n_elements_ == 0
    with pytest.raises(ValueError, match="empty"):
        masker.transform(bold)


def test_error_non_binary_mask(synthetic_bold):
    _bold, mask = synthetic_bold
    data = np.asarray(mask.dataobj).astype(np.int16)
    data[0, 0, 0] = 2
    with pytest.raises(ValueError, match="2 values"):
        NiftiMasker(mask_img=nib.Nifti1Image(data, mask.affine)).fit()


@pytest.mark.parametrize(
    ("confounds", "match"),
    [
        (np.ones((59, 2)), "rows|length"),
        (np.ones((61, 2)), "rows|length"),
        (np.where(np.eye(60, 2) > 0, np.nan, 1.0), "NaN"),
    ],
    ids=["too-few-rows", "too-many-rows", "nan"],
)
def test_error_confounds(synthetic_bold, confounds, match):
    bold, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask, detrend=True).fit()
    with pytest.raises(ValueError, match=match):
        masker.transform(bold, confounds=confounds)


def test_error_confounds_missing_file(synthetic_bold, tmp_path):
    bold, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask).fit()
    with pytest.raises((FileNotFoundError, ValueError), match=r"missing\.tsv"):
        masker.transform(bold, confounds=str(tmp_path / "missing.tsv"))


@pytest.mark.parametrize(
    ("sample_mask", "match"),
    [
        (np.array([0, 1, 60]), "invalid index"),
        (np.array([-1, 3, 4]), "invalid index"),
        (np.array([0, 1, 1, 2]), "duplicated"),
        (np.ones(59, dtype=bool), "length"),
        (np.zeros(60, dtype=bool), "every volume"),
    ],
    ids=["out-of-range", "negative", "duplicated", "bool-length", "all-removed"],
)
def test_error_sample_mask(synthetic_bold, sample_mask, match):
    bold, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask).fit()
    with pytest.raises(ValueError, match=match):
        masker.transform(bold, sample_mask=sample_mask)
    with pytest.raises(IndexError):  # nilearn raises IndexError: both work
        masker.transform(bold, sample_mask=sample_mask)


@pytest.mark.parametrize("params", [{"low_pass": 0.1}, {"high_pass": 0.01}])
def test_error_filter_without_t_r(synthetic_bold, params):
    bold, mask = synthetic_bold
    with pytest.raises(ValueError, match="t_r"):
        NiftiMasker(mask_img=mask, **params).fit_transform(bold)


def test_error_runs_length(synthetic_bold):
    bold, mask = synthetic_bold
    with pytest.raises(ValueError, match="run"):
        NiftiMasker(mask_img=mask, runs=np.zeros(59)).fit_transform(bold)


def test_error_unknown_mask_strategy(synthetic_bold):
    bold, _ = synthetic_bold
    with pytest.raises(ValueError, match="mask_strategy 'foo'"):
        NiftiMasker(mask_strategy="foo").fit(bold)


def test_error_unknown_standardize(synthetic_bold):
    bold, mask = synthetic_bold
    with pytest.raises(ValueError, match="standardize"):
        NiftiMasker(mask_img=mask, standardize="foo").fit(bold)


def test_error_bad_dtype(synthetic_bold):
    bold, mask = synthetic_bold
    # Refused at the door (fit), before any image is read.
    with pytest.raises(TypeError, match="dtype"):
        NiftiMasker(mask_img=mask, dtype="not-a-dtype").fit()
    with pytest.raises(TypeError, match="dtype"):
        NiftiMasker(mask_img=mask, dtype="not-a-dtype").fit_transform(bold)


def test_error_target_fov_without_data(synthetic_bold):
    bold, mask = synthetic_bold
    far = np.eye(4)
    far[:3, 3] = 1e4
    with pytest.raises(ValueError, match="field of view"):
        NiftiMasker(mask_img=mask, target_affine=far).fit_transform(bold)


@pytest.mark.parametrize("strategy", ["background", "epi", "whole-brain-template"])
def test_unknown_mask_args_are_named(synthetic_bold, strategy):
    bold, _ = synthetic_bold
    # nilearn raises a bare TypeError from the mask function; ours names mask_args.
    with pytest.raises(TypeError, match=r"mask_args: \['bogus'\].*options are"):
        NiftiMasker(mask_strategy=strategy, mask_args={"bogus": 1}).fit(bold)
