"""scikit-learn API of masker_wf.NiftiMasker: params, clone, Pipeline, set_output, fitted state."""

from __future__ import annotations

import inspect
import pickle

import numpy as np
import pytest
from sklearn import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.utils.validation import check_is_fitted

from masker_wf import NiftiMasker

NILEARN_0_11_PARAMETERS = [
    "mask_img",
    "runs",
    "smoothing_fwhm",
    "standardize",
    "standardize_confounds",
    "detrend",
    "high_variance_confounds",
    "low_pass",
    "high_pass",
    "t_r",
    "target_affine",
    "target_shape",
    "mask_strategy",
    "mask_args",
    "dtype",
    "memory_level",
    "memory",
    "verbose",
    "reports",
    "cmap",
]


def test_signature_matches_nilearn_0_11():
    from nilearn.maskers import NiftiMasker as NilearnMasker

    ours = inspect.signature(NiftiMasker)
    reference = inspect.signature(NilearnMasker)
    ours_names = [n for n, p in ours.parameters.items() if p.kind is not p.VAR_KEYWORD]
    reference_names = [n for n, p in reference.parameters.items() if p.kind is not p.VAR_KEYWORD]
    assert ours_names[: len(NILEARN_0_11_PARAMETERS)] == NILEARN_0_11_PARAMETERS
    assert reference_names == NILEARN_0_11_PARAMETERS
    for name in reference_names:
        assert ours.parameters[name].default == reference.parameters[name].default, name
    assert ours.parameters["clean_args"].default is None
    assert any(p.kind is p.VAR_KEYWORD for p in ours.parameters.values())


def test_get_set_params_include_clean_kwargs():
    masker = NiftiMasker(smoothing_fwhm=4.0, clean__filter="cosine")
    params = masker.get_params()
    assert params["smoothing_fwhm"] == 4.0
    assert params["clean__filter"] == "cosine"
    assert set(NILEARN_0_11_PARAMETERS) <= set(params)
    masker.set_params(detrend=True, clean__butterworth__order=3)
    assert masker.detrend is True
    assert masker.get_params()["clean__butterworth__order"] == 3
    with pytest.raises(ValueError, match="Invalid parameter"):
        masker.set_params(not_a_parameter=1)
    assert "clean__filter='cosine'" in repr(masker)


def test_clone_keeps_everything(synthetic_bold):
    _, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask, detrend=True, clean__extrapolate=False)
    copy = clone(masker)
    assert copy is not masker
    assert copy.get_params().keys() == masker.get_params().keys()
    assert copy.get_params()["clean__extrapolate"] is False
    assert copy.get_params()["detrend"] is True
    assert copy.mask_img.shape == mask.shape


def test_not_fitted_errors(synthetic_bold):
    bold, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask)
    with pytest.raises(NotFittedError):
        check_is_fitted(masker)
    with pytest.raises(NotFittedError):
        masker.transform(bold)
    with pytest.raises(NotFittedError):
        masker.inverse_transform(np.zeros(5))
    masker.fit()
    check_is_fitted(masker)
    assert masker.__sklearn_is_fitted__()


def test_fit_does_not_modify_parameters(synthetic_bold):
    bold, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask, clean__filter=False)
    before = masker.get_params()
    masker.fit_transform(bold)
    masker.fit_transform(bold)
    after = masker.get_params()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert after[key] is value, key


def test_fit_returns_self_and_attributes(synthetic_bold):
    bold, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask)
    assert masker.fit(bold) is masker
    assert masker.n_elements_ == int(np.asarray(mask.dataobj).sum())
    np.testing.assert_array_equal(masker.affine_, mask.affine)
    assert masker.mask_img_.shape == mask.shape
    assert masker.clean_args_ == {}


def test_pipeline(synthetic_bold):
    bold, mask = synthetic_bold
    pipeline = Pipeline(
        [
            ("masker", NiftiMasker(mask_img=mask, standardize="zscore_sample")),
            ("pca", PCA(n_components=3)),
        ]
    )
    components = pipeline.fit_transform(bold)
    assert components.shape == (60, 3)
    # Supervised use: the images are the samples (volumes), y one value per volume.
    y = np.sin(np.arange(60) / 4.0)
    model = make_pipeline(NiftiMasker(mask_img=mask, detrend=True), LinearRegression())
    model.fit(bold, y)
    assert model.predict(bold).shape == (60,)
    # clone of the whole pipeline
    clone(pipeline).fit(bold)


def test_set_output_pandas(synthetic_bold):
    import pandas as pd

    bold, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask).set_output(transform="pandas")
    frame = masker.fit_transform(bold)
    assert isinstance(frame, pd.DataFrame)
    assert frame.shape == (60, masker.n_elements_)
    assert list(frame.columns[:2]) == ["niftimasker0", "niftimasker1"]
    assert isinstance(masker.transform(bold), pd.DataFrame)
    # DataFrames go back to images.
    assert masker.inverse_transform(frame).shape == bold.shape
    masker.set_output(transform="default")
    assert isinstance(masker.transform(bold), np.ndarray)
    np.testing.assert_array_equal(masker.get_feature_names_out()[:1], ["niftimasker0"])


def test_set_output_polars(synthetic_bold):
    bold, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask).set_output(transform="polars")
    try:
        import polars as pl
    except ImportError:
        with pytest.raises(ImportError, match="polars"):
            masker.fit_transform(bold)
        return
    frame = masker.fit_transform(bold)
    assert isinstance(frame, pl.DataFrame)
    assert frame.shape == (60, masker.n_elements_)


def test_metadata_routing_methods():
    masker = NiftiMasker()
    assert hasattr(masker, "set_fit_request")
    assert hasattr(masker, "set_transform_request")
    routing = masker.get_metadata_routing()
    assert "confounds" in str(routing)


def test_pickle_round_trip(synthetic_bold):
    bold, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask, detrend=True).fit()
    restored = pickle.loads(pickle.dumps(masker))
    np.testing.assert_array_equal(restored.transform(bold), masker.transform(bold))
    # In-memory images kept for the report are pickled as their (3D) mean.
    size = len(pickle.dumps(masker))
    assert size < np.asarray(bold.dataobj).nbytes
    assert (
        "Mask over the mean image"
        in pickle.loads(pickle.dumps(masker)).generate_report().get_html()
    )


def test_keyword_arguments_by_name(synthetic_bold):
    bold, mask = synthetic_bold
    masker = NiftiMasker(mask_img=mask)
    by_name = masker.fit_transform(imgs=bold)
    np.testing.assert_array_equal(masker.transform(imgs=bold), by_name)
    np.testing.assert_array_equal(masker.fit_transform(X=bold), by_name)  # nilearn 0.11 name
