"""``NiftiMasker``: a drop-in replacement for nilearn 0.11.1's, built on the core ops.

Same signature, attributes and numbers as ``nilearn.maskers.NiftiMasker``;
the work is done by :func:`masker_wf._pipeline.filter_and_extract`, which
reads each image once and never makes a 4D float64 copy of float32 data.

Differences from nilearn 0.11.1 (all deliberate):

* censored volumes are interpolated correctly before Butterworth filtering
  (nilearn 0.11.1 overwrites the wrong rows, see ``masker_wf.signal``);
* ``fit`` does not modify the parameters (nilearn sets ``memory`` and strips
  ``clean__`` keyword arguments, so a second ``fit`` loses them); the cleaning
  arguments in use are in ``clean_args_``;
* ``get_params``/``set_params``/``clone`` keep the ``clean__*`` keyword arguments;
* an unfitted masker raises :class:`sklearn.exceptions.NotFittedError` (a
  ``ValueError``, like nilearn's error);
* ``set_output(transform="pandas"|"polars")`` works (nilearn >= 0.13 behaviour);
* ``transform_single_imgs`` also adds the high variance confounds (nilearn only
  does it in ``transform``);
* ``mask_strategy="template"`` warns with a ``DeprecationWarning``;
* invalid confounds/sample_mask/filter settings are reported before the images
  are smoothed, with messages naming the argument; ``sample_mask`` with
  negative or duplicated indices is an error (nilearn 0.11 silently indexes or
  duplicates rows); a flat list of indices is accepted as one mask;
* with ``memory``, the cache key includes the size and modification time of
  input files, so a file rewritten in place is not served stale signals;
* ``fit`` does not resample the whole 4D input for the report (nilearn does when
  ``target_affine`` is set); the report shows the mask over the temporal mean
  image, carpet plots before/after cleaning and tSNR maps (``cmap`` is accepted
  but the report uses its own colour maps);
* "Resampling images" is printed only when ``verbose`` is set.
"""

from __future__ import annotations

import functools
import glob
import os
import warnings
from pathlib import Path

import numpy as np
from joblib import Memory
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import NotFittedError

from . import _pipeline, _spec, _validation
from ._niimg import check_niimg, describe

__all__ = ["NiftiMasker"]

_CLEAN_PREFIX = "clean__"
# Parameters the door check validates (the others configure the estimator itself).
_CHECKED = tuple(
    p.name
    for p in _spec.for_face("estimator")
    if p.name not in ("mask_img", "runs", "memory", "memory_level", "verbose", "reports", "cmap")
)


def _as_memory(memory):
    """``joblib.Memory`` from None, a path or a Memory (None -> no caching)."""
    if memory is None:
        return Memory(location=None, verbose=0)
    if isinstance(memory, (str, os.PathLike)):
        return Memory(location=os.fspath(Path(memory).expanduser()), verbose=0)
    if isinstance(memory, Memory):
        return memory
    if hasattr(memory, "cache"):
        return memory
    raise TypeError(
        "memory must be None, a path to a cache directory or a joblib.Memory, "
        f"got {type(memory).__name__}."
    )


def _is_list_like(imgs) -> bool:
    return isinstance(imgs, (list, tuple))


def _input_ndim(imgs) -> int:
    """Dimensionality of the input without loading its data (a list is 4D)."""
    if _is_list_like(imgs):
        return 4
    if isinstance(imgs, (str, os.PathLike)):
        text = os.path.expanduser(os.fspath(imgs))
        if not os.path.exists(text) and len(glob.glob(text)) > 1:
            return 4  # several files: concatenated along time (do not load them twice)
    return len(check_niimg(imgs).shape)


class NiftiMasker(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator, auto_wrap_output_keys=None
):
    """Extract (and clean) the time series of the voxels of a mask.

    Drop-in replacement for ``nilearn.maskers.NiftiMasker`` (0.11.1): same
    parameters, attributes and outputs (to float rounding).

    Parameters
    ----------
    %(parameters:estimator)s
    **kwargs
        ``clean__<name>=value`` is passed to ``clean`` as ``<name>=value``
        (e.g. ``clean__filter="cosine"``, ``clean__butterworth__order=3``).

    Attributes
    ----------
    mask_img_ : nibabel.Nifti1Image
        The mask, on the target grid.
    affine_ : array
        ``target_affine`` if given, else the affine of the mask.
    n_elements_ : int
        Number of voxels in the mask.
    clean_args_ : dict
        Keyword arguments passed to ``clean``.
    """

    def __init__(
        self,
        mask_img=None,
        runs=None,
        smoothing_fwhm=None,
        standardize=False,
        standardize_confounds=True,
        detrend=False,
        high_variance_confounds=False,
        low_pass=None,
        high_pass=None,
        t_r=None,
        target_affine=None,
        target_shape=None,
        mask_strategy="background",
        mask_args=None,
        dtype=None,
        memory_level=1,
        memory=None,
        verbose=0,
        reports=True,
        cmap="CMRmap_r",
        clean_args=None,
        **kwargs,
    ):
        # scikit-learn reads the parameters back from these attributes by name.
        given = locals()
        for parameter in _spec.for_face("estimator"):
            setattr(self, parameter.name, given[parameter.name])
        # nilearn's name for the ``**kwargs``; kept as given (never rewritten).
        self.clean_kwargs = dict(kwargs)

    # ------------------------------------------------------------------ sklearn API
    def get_params(self, deep=True):
        """Parameters of the masker, including the ``clean__*`` keyword arguments.

        Parameters
        ----------
        deep : bool, default=True
            Unused (no sub-estimators); kept for scikit-learn.

        Returns
        -------
        dict
        """
        params = super().get_params(deep=deep)
        params.update(getattr(self, "clean_kwargs", {}))
        return params

    def set_params(self, **params):
        """Set parameters, including ``clean__*`` keyword arguments.

        Parameters
        ----------
        **params
            Parameter names and values.

        Returns
        -------
        self
        """
        extra = {key: params.pop(key) for key in list(params) if key.startswith(_CLEAN_PREFIX)}
        if extra:
            self.clean_kwargs = {**getattr(self, "clean_kwargs", {}), **extra}
        if params:
            super().set_params(**params)
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "mask_img_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Inputs are images (paths or nibabel objects), not 2D arrays.
        tags.input_tags.two_d_array = False
        tags.requires_fit = True
        return tags

    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ may return __dict__
        if state.get("_report"):
            # Keep pickles small: in-memory images kept for the report become their mean.
            report = dict(state["_report"])
            report["fit_imgs"] = _portable_imgs(report.get("fit_imgs"))
            if report.get("transform"):
                transform = dict(report["transform"])
                transform["imgs"] = _portable_imgs(transform.get("imgs"))
                report["transform"] = transform
            state["_report"] = report
        return state

    @property
    def _n_features_out(self):
        return getattr(self, "n_elements_", None)

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    # ------------------------------------------------------------------ helpers
    def _log(self, message: str, method: str) -> None:
        _pipeline.log(message, self.verbose, f"{type(self).__name__}.{method}")

    def _memory(self):
        return _as_memory(self.memory)

    def _cache(self, function, func_memory_level=1, ignore=("verbose",)):
        """``function`` cached with ``memory`` if ``memory_level`` allows it."""
        memory = self._memory()
        if (
            getattr(memory, "location", None) is None
            or self.memory_level is None
            or self.memory_level < func_memory_level
        ):
            return function
        return memory.cache(function, ignore=list(ignore))

    def _clean_args(self) -> dict:
        """Keyword arguments for ``clean`` (``clean_args`` + ``clean__*``), checked."""
        args = _validation.check_clean_args(self.clean_args)
        args.update(
            _validation.split_clean_kwargs(getattr(self, "clean_kwargs", {}), type(self).__name__)
        )
        return _validation.check_clean_args(args, name="clean_args and clean__ arguments")

    def _check_params(self) -> dict:
        """The door check: the one validator, before any image is read; checked params."""
        params = {name: getattr(self, name) for name in _CHECKED}
        params["clean_args"] = self._clean_args()
        checked = _validation.check_parameters(params)
        self._memory()  # type check
        return checked

    # ------------------------------------------------------------------ fit
    def fit(self, imgs=None, y=None):
        """Compute the mask (or load the given one) and put it on the target grid.

        Parameters
        ----------
        imgs : Niimg-like or list of Niimg-like, optional
            Images to compute the mask from (required when ``mask_img`` is None).
        y : None
            Ignored (scikit-learn compatibility).

        Returns
        -------
        self
        """
        checked = self._check_params()
        self.clean_args_ = checked["clean_args"]
        if imgs is not None:
            self._log(f"Loading data from {_describe_imgs(imgs)}", "fit")
        if self.mask_img is None:
            if imgs is None:
                raise ValueError(
                    f"Parameter 'imgs' must be provided to {type(self).__name__}.fit() if no "
                    "mask is passed to mask_img."
                )
            self._log("Computing the mask", "fit")
            compute = _pipeline.mask_strategy_function(checked["mask_strategy"])
            mask_args = checked["mask_args"] or {}
            mask_img = self._cache(compute)(
                _pipeline.mask_input(imgs), verbose=max(0, int(self.verbose) - 1), **mask_args
            )
        else:
            mask_img = self.mask_img
        self._log("Resampling mask", "fit")
        self.mask_img_ = self._cache(_pipeline.prepare_mask_img, ignore=("memory",))(
            mask_img, self.target_affine, self.target_shape
        )
        self.affine_ = (
            self.target_affine if self.target_affine is not None else self.mask_img_.affine
        )
        from . import masking

        mask_data, _ = masking.load_mask_img(self.mask_img_, allow_empty=True)
        self.n_elements_ = int(mask_data.sum())
        if self.reports:
            self._report = {"fit_imgs": imgs, "transform": None, "warnings": []}
        else:
            self._report = None
        self._log("Finished fit", "fit")
        return self

    # ------------------------------------------------------------------ transform
    def _wrap_output(self, signals, imgs):
        container = _output_container(self)
        if container == "default":
            return signals
        columns = self.get_feature_names_out()
        if container == "pandas":
            import pandas as pd

            return pd.DataFrame(signals, columns=columns)
        if container == "polars":
            try:
                import polars as pl
            except ImportError as exc:
                raise ImportError(
                    "set_output(transform='polars') needs the polars package: pip install polars"
                ) from exc

            return pl.DataFrame(signals, schema=list(columns), orient="row")
        return signals

    def transform_single_imgs(self, imgs, confounds=None, sample_mask=None, copy=True):
        """Smooth, mask and clean one 3D/4D image (or a list concatenated along time).

        Parameters
        ----------
        imgs : Niimg-like or list of Niimg-like
            A 3D image gives one row (with a ``DeprecationWarning``, as nilearn 0.11).
        confounds : array, DataFrame, CSV/TSV path or list of those, optional
            One row per volume.
        sample_mask : array, optional
            Volumes to keep (indices or booleans).
        copy : bool, default=True
            Unused (the output is always a new array); kept for compatibility.

        Returns
        -------
        numpy.ndarray, shape (n_kept_volumes, n_elements_)
        """
        self._check_fitted()
        ndim = _input_ndim(imgs)
        if ndim == 3:
            warnings.warn(
                "Starting in version 0.12, 3D images will be transformed to 1D arrays. "
                "Until then, 3D images will be coerced to 2D arrays, with a singleton "
                "first dimension representing time.",
                DeprecationWarning,
                stacklevel=3,
            )
        clean_args = getattr(self, "clean_args_", None)
        if clean_args is None:
            clean_args = self._clean_args()
        report = {} if self.reports else None
        if report is not None:
            from .reports.figures import preload_matplotlib

            preload_matplotlib()
        params = {
            "smoothing_fwhm": self.smoothing_fwhm,
            "target_affine": self.target_affine,
            "target_shape": self.target_shape,
            "dtype": self.dtype,
            "high_variance_confounds": self.high_variance_confounds,
            "confounds": confounds,
            "sample_mask": sample_mask,
            "runs": self.runs,
            "detrend": self.detrend,
            "standardize": self.standardize,
            "standardize_confounds": self.standardize_confounds,
            "low_pass": self.low_pass,
            "high_pass": self.high_pass,
            "t_r": self.t_r,
            "clean_kwargs": clean_args,
            "verbose": self.verbose,
            "log_name": f"{type(self).__name__}.transform_single_imgs",
        }
        if getattr(self, "_report", None) is None:
            report = None
        extract = self._cache(_pipeline.cached_filter_and_extract, ignore=("verbose", "log_name"))
        if extract is _pipeline.cached_filter_and_extract:
            extract = _pipeline.filter_and_extract
            if report is not None:
                params["report"] = report
        else:
            # The files' sizes and modification times join the cache key; the report data
            # are cached with the signals, so that a cache hit still gets a full report.
            extract = functools.partial(
                extract, stamps=_pipeline.file_stamps(imgs), with_report=report is not None
            )
            if report is not None:
                cached_extract = extract

                def extract(*args, **kwargs):
                    signals, cached_report = cached_extract(*args, **kwargs)
                    report.update(cached_report)
                    return signals

        if report is None:
            return extract(imgs, self.mask_img_, **params)
        # Record the warnings for the report, and pass them on to the caller.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            signals = extract(imgs, self.mask_img_, **params)
        for warning in caught:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
        self._report["transform"] = {
            "imgs": imgs,
            "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
            **(report or {}),
        }
        return signals

    def transform(self, imgs, confounds=None, sample_mask=None):
        """Smooth, mask and clean images.

        Parameters
        ----------
        imgs : Niimg-like or list of Niimg-like
            3D or 4D image(s).
        confounds : array, DataFrame, CSV/TSV path or list of those, optional
            One row per volume (a list is stacked column-wise).
        sample_mask : array, optional
            Volumes to keep (indices or booleans; a list with one per run with ``runs``).

        Returns
        -------
        numpy.ndarray (or DataFrame with ``set_output``), shape (n_kept_volumes, n_elements_)
        """
        self._check_fitted()
        signals = self.transform_single_imgs(imgs, confounds=confounds, sample_mask=sample_mask)
        return self._wrap_output(signals, imgs)

    def fit_transform(self, imgs=None, y=None, confounds=None, sample_mask=None, **fit_params):
        """Fit to the images (mask), then transform them.

        Parameters
        ----------
        imgs : Niimg-like or list of Niimg-like
            3D or 4D image(s). nilearn 0.11 calls this argument ``X``:
            ``fit_transform(X=img)`` works too.
        y : None
            Ignored.
        confounds : array, DataFrame, CSV/TSV path or list of those, optional
            One row per volume.
        sample_mask : array, optional
            Volumes to keep.
        **fit_params
            Ignored extra fit parameters (except ``X``, see ``imgs``).

        Returns
        -------
        numpy.ndarray (or DataFrame with ``set_output``), shape (n_kept_volumes, n_elements_)
        """
        if imgs is None and "X" in fit_params:
            imgs = fit_params.pop("X")
        if imgs is None:
            raise TypeError(f"{type(self).__name__}.fit_transform needs the images (imgs).")
        if self.mask_img is None:
            self.fit(imgs, y)
        else:
            if y is not None:
                warnings.warn(
                    f"[{type(self).__name__}.fit] Generation of a mask has been requested "
                    "(y != None) while a mask has been provided at masker creation. Given mask "
                    "will be used.",
                    UserWarning,
                    stacklevel=2,
                )
            self.fit(None, y)
            if self.reports and self._report is not None:
                self._report["fit_imgs"] = imgs
        return self.transform(imgs, confounds=confounds, sample_mask=sample_mask)

    def inverse_transform(self, X):
        """Put signals back into brain space (1D -> 3D image, 2D -> 4D image).

        Parameters
        ----------
        X : array or DataFrame, shape (n_elements_,) or (n_samples, n_elements_)
            Signals of the mask voxels.

        Returns
        -------
        nibabel.Nifti1Image
        """
        self._check_fitted()
        from . import masking

        if hasattr(X, "to_numpy"):
            X = X.to_numpy()
        X = np.asarray(X)
        if X.ndim not in (1, 2):
            raise TypeError(f"X must be a 1D or 2D array; got shape {X.shape}.")
        if X.shape[-1] != self.n_elements_:
            raise TypeError(
                f"X must be of shape (samples, {self.n_elements_}) (one column per mask "
                f"voxel); got shape {X.shape}."
            )
        return masking.unmask(X, self.mask_img_)

    # ------------------------------------------------------------------ report
    def generate_report(self):
        """HTML report: mask over the mean image, carpet plots, tSNR, parameters.

        Returns
        -------
        masker_wf.reports.HTMLReport
            Save it with ``.save_as_html(path)``; shown inline in notebooks.
        """
        from .reports import HTMLReport

        if not self.reports:
            message = (
                "Report generation not enabled (reports=False)! No visual outputs will be created."
            )
            warnings.warn(message, UserWarning, stacklevel=2)
            return HTMLReport(
                f"<h1>{type(self).__name__}</h1><p>{message} Set reports=True before "
                "fitting to get a report.</p>",
                title=f"{type(self).__name__} report",
            )
        self._check_fitted()
        return self._build_report()

    def _build_report(self):
        from . import masking
        from .reports import build_run_report

        state = getattr(self, "_report", None) or {"fit_imgs": None, "transform": None}
        notes = []
        mask, _ = masking.load_mask_img(self.mask_img_, allow_empty=True)
        transform = state.get("transform") or {}
        imgs = transform.get("imgs", state.get("fit_imgs"))
        if imgs is None:
            imgs = state.get("fit_imgs")
        mean_data = transform.get("mean_planes")
        if mean_data is None and imgs is not None:
            mean_data = _mean_on_mask_grid(imgs, self.mask_img_)
        if mean_data is None:
            message = (
                "No image provided to fit in NiftiMasker. Setting image to mask for reporting."
            )
            warnings.warn(message, UserWarning, stacklevel=3)
            notes.append(message)
            mean_data = mask.astype(np.float32)
        if _is_list_like(imgs) and any(_input_ndim(i) == 4 for i in imgs):
            notes.append("A list of 4D images was given: they were concatenated along time.")
        parameters = {
            key: _short(value)
            for key, value in self.get_params().items()
            if key not in ("memory", "verbose", "reports", "cmap")
        }
        before = transform.get("signals_before")
        after = transform.get("signals_after")
        tsnr_before = transform.get("tsnr_before")
        tsnr_after = transform.get("tsnr_after")
        notes.extend(transform.get("warnings", []))
        summary = {}
        denoising = None
        budgets = transform.get("degrees_of_freedom") or []
        if len(budgets) == 1:
            denoising = {"degrees_of_freedom": budgets[0]}
        elif budgets:  # runs concatenated along time: one budget each
            left = ", ".join(str(budget["Remaining"]) for budget in budgets)
            summary["degrees of freedom left (per run)"] = left
        summary["coverage of the grid (%)"] = round(
            100.0 * self.n_elements_ / max(1, int(np.prod(mask.shape))), 2
        )
        return build_run_report(
            title=f"{type(self).__name__}: {_describe_imgs(imgs) if imgs is not None else ''}",
            mask=mask,
            # Views drawn in millimetres, with orientation labels.
            affine=self.mask_img_.affine,
            mean_data=mean_data,
            parameters=parameters,
            signals_before=before,
            signals_after=after,
            t_r=self.t_r,
            kept_volumes=transform.get("kept_volumes"),
            tsnr_before=tsnr_before if tsnr_after is not None else None,
            tsnr_after=tsnr_after,
            summary=summary,
            warnings=notes,
            denoising=denoising,
        )


_spec.fill_doc(NiftiMasker)

# ``set_output`` is offered, but transform/fit_transform wrap their output themselves:
# scikit-learn's automatic wrapper would require the images as a positional ``X``.
NiftiMasker._sklearn_auto_wrap_output_keys = {"transform"}


def _output_container(estimator) -> str:
    """The container ``set_output`` asked for: the estimator's, else scikit-learn's global.

    ``set_output`` stores its choice in ``_sklearn_output_config`` (scikit-learn's
    documented contract for custom wrappers); the global default is public config.
    """
    from sklearn import get_config

    config = getattr(estimator, "_sklearn_output_config", {}) or {}
    return config.get("transform", get_config()["transform_output"])


def _describe_imgs(imgs) -> str:
    if _is_list_like(imgs):
        return f"list of {len(imgs)} images" + (
            f" ({describe(imgs[0])}, ...)" if len(imgs) else ""
        )
    return describe(imgs)


def _is_file_backed(img) -> bool:
    if isinstance(img, (str, os.PathLike)):
        return True
    return bool(getattr(img, "get_filename", lambda: None)())


def _portable_imgs(imgs):
    """Images for the report as a small picklable object (files stay paths)."""
    if imgs is None:
        return None
    items = list(imgs) if _is_list_like(imgs) else [imgs]
    if all(_is_file_backed(item) for item in items):
        return imgs
    from . import image

    try:
        return image.mean_img(imgs)
    except Exception:  # the report then shows the mask alone
        return None


def _short(value):
    """Parameter value for the report table (arrays summarised)."""
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape}"
    if hasattr(value, "get_filename") or hasattr(value, "dataobj"):
        return describe(value)
    return value


def _mean_on_mask_grid(imgs, mask_img):
    """Temporal mean of ``imgs`` on the grid of ``mask_img`` (None if impossible)."""
    from . import image
    from ._niimg import check_same_fov

    try:
        mean = image.mean_img(imgs)
        if not check_same_fov(mean, mask_img):
            mean = image.resample_to_img(mean, mask_img, interpolation="continuous")
        return np.asarray(mean.dataobj, dtype=np.float32)
    except Exception as exc:  # the report must not fail on a display problem
        warnings.warn(f"Could not compute the mean image for the report: {exc}", stacklevel=3)
        return None
