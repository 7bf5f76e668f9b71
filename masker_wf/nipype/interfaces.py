"""nipype interfaces over the masker-wf file-in/file-out steps.

Every interface here is a thin face over one function of :mod:`masker_wf._steps`: the
interface checks and types its inputs (nipype traits), picks an output file name in the
node's working directory, and calls the step. There is no numerical code in this module, so
the numbers a nipype workflow produces are the numbers the Pydra tasks and
:class:`masker_wf.NiftiMasker` produce. The one decision made here is
:class:`Resample`'s hand-over of a BOLD already on the mask's grid (read from the
headers), which lets :func:`~masker_wf.nipype.init_masker_wf` keep a ``resample_bold``
node whatever mask a parent pipeline connects, at no cost when none is needed.

Masker parameters have the names, defaults, allowed values and descriptions of
:mod:`masker_wf._spec`.

Errors: a bad input or parameter raises what the estimator raises (the validator's
``ValueError``/``TypeError``, same class and message), with ``step`` and ``file`` attributes
and a note naming the step and the node's input files; any other failure raises
:class:`masker_wf._steps.StepError` (naming the step, the input file and what is wrong,
without the core's chained traceback, with the node's other input files named). nipype puts
that text into the exception it raises (``NodeExecutionError`` with the Linear plugin,
``RuntimeError`` with MultiProc); the exception object itself is pickled into the node's
directory (``_masker_error.pkl``), where :func:`masker_wf.nipype.run_masker_wf` finds it
and re-raises it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.utils.filemanip import split_filename

from .. import _spec, _steps
from .._io import COMPRESS_LEVELS
from .._niimg import img_data_dtype
from .._pipeline import resolve_dtype
from .._steps import StepError

__all__ = [
    "MASK_STRATEGY_VALUES",
    "STANDARDIZE_VALUES",
    "CleanSignals",
    "ComputeMask",
    "DerivativesSink",
    "HighVarianceConfounds",
    "Resample",
    "Smooth",
    "Unmask",
]

#: ``mask_strategy`` values the interfaces accept (the spec's).
MASK_STRATEGY_VALUES = _spec.by_name("mask_strategy").choices
#: ``standardize`` values the interfaces accept.
STANDARDIZE_VALUES = _spec.by_name("standardize").choices


def _desc(name: str) -> str:
    return _spec.by_name(name).doc


def _enum_trait(name: str, values=None):
    """An Enum of a spec parameter's values whose default (first value) is the spec's."""
    default = _spec.by_name(name).default
    values = _spec.by_name(name).choices if values is None else values
    # ``is`` and type: True == 1 and False == 0 must not drop the booleans.
    others = [v for v in values if not (type(v) is type(default) and v == default)]
    return traits.Enum(default, *others, usedefault=True, desc=_desc(name))


def _bool_trait(name: str):
    return traits.Bool(_spec.by_name(name).default, usedefault=True, desc=_desc(name))


def _affine_trait(**metadata):
    # Lists rather than numpy arrays: nipype hashes inputs through str(), and an array's str
    # depends on numpy's print options (and elides long arrays); nested lists hash stably.
    return traits.List(
        traits.List(traits.Float, minlen=3, maxlen=4),
        minlen=3,
        maxlen=4,
        desc=_desc("target_affine"),
        **metadata,
    )


def _shape_trait(**metadata):
    return traits.List(traits.Int, minlen=3, maxlen=3, desc=_desc("target_shape"), **metadata)


def _dtype_trait():
    # Any integer or float numpy dtype name, or "auto": the validator decides, as for the
    # estimator (the spec lists the usual values only).
    return traits.Str(desc=_desc("dtype"))


def _clean_args_trait():
    return traits.Dict(traits.Str, traits.Any, desc=_desc("clean_args"))


def _fwhm_trait(desc, **metadata):
    return traits.Either(
        traits.Float,
        traits.List(traits.Float, minlen=3, maxlen=3),
        # nilearn's "fast": a 3x3x3 averaging kernel instead of a Gaussian.
        traits.Enum("fast"),
        desc=desc,
        **metadata,
    )


def _suffix_trait():
    return traits.Enum(
        ".nii",
        ".nii.gz",
        usedefault=True,
        desc="extension of the image written: '.nii' (default: no compression time) or '.nii.gz'",
    )


def _opt(value):
    """``None`` for an undefined trait value, the value otherwise."""
    return value if isdefined(value) else None


def _affine(value):
    value = _opt(value)
    return None if value is None else np.asarray(value, dtype=float)


def _shape(value):
    value = _opt(value)
    return None if value is None else tuple(int(v) for v in value)


def _call_step(step, runtime, *args, context=None, **kwargs):
    """Call a step in the node's directory; on failure, record the exception there.

    nipype puts the whole exception chain into the message of the exception it raises (and
    into the crash file); the core's internal frames bury the one line that says what is
    wrong. A StepError already carries the cause's type and message, so it is re-raised
    alone, with the node's other input files appended when the message does not name them
    (a wrong confounds file is otherwise reported against the BOLD file). A bad input or
    parameter is re-raised as the same object (the estimator's class and message), the
    other input files in a note. The exception raised is pickled into the node's directory
    for :func:`masker_wf.nipype.run_masker_wf`.
    """
    directory = runtime.cwd
    (Path(directory) / _steps.ERROR_FILE).unlink(missing_ok=True)
    try:
        return str(step(*args, **kwargs))
    except Exception as exc:
        others = [
            f"{name}='{value}'"
            for name, value in (context or {}).items()
            if value is not None and str(value) not in str(exc)
        ]
        if isinstance(exc, StepError):
            reason = exc.reason + (f" (other inputs: {', '.join(others)})" if others else "")
            error = StepError(exc.step, exc.file, reason)
            _steps.record_error(error, directory)
            raise error from None
        if others:
            exc.add_note(f"(other inputs: {', '.join(others)})")
        _steps.record_error(exc, directory)
        raise


def _out_file(runtime, source, suffix):
    """Output path in the node's working directory, named after ``source``.

    ``sub-01_bold.nii.gz`` + ``_mask.nii`` -> ``<cwd>/sub-01_bold_mask.nii``.
    """
    _, base, _ = split_filename(str(source))
    return str(Path(runtime.cwd) / f"{base}{suffix}")


class _ImageStep(SimpleInterface):
    """An interface whose step turns ``in_file`` into one image, ``out_file``.

    The output is named after the input: ``<in_file stem><out_label><out_suffix>``. A
    subclass names its step, the label and what the output is on its class line, gives its
    ``input_spec`` and says which inputs the step takes; its ``output_spec`` (one image,
    ``out_file``, and the traits of ``more_outputs`` when the step has other outputs) is
    made here.
    """

    def __init_subclass__(cls, *, step, out_label, out_desc, more_outputs=None, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._step = staticmethod(step)
        cls._out_label = out_label

        traits_ = {"out_file": File(exists=True, desc=out_desc), **(more_outputs or {})}
        # nipype pickles a node's outputs into its result file: pickle finds the class
        # under this module and name (``Smooth.OutputSpec``).
        OutputSpec = type(
            "OutputSpec",
            (TraitedSpec,),
            {"__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}.OutputSpec"}
            | traits_,
        )
        cls.OutputSpec = cls.output_spec = OutputSpec

    def _step_kwargs(self, inputs, runtime) -> dict:
        """The step's keyword arguments from the interface's inputs."""
        raise NotImplementedError

    def _run_interface(self, runtime):
        inputs = self.inputs
        self._results["out_file"] = _call_step(
            self._step,
            runtime,
            inputs.in_file,
            _out_file(runtime, inputs.in_file, self._out_label + inputs.out_suffix),
            **self._step_kwargs(inputs, runtime),
        )
        return runtime


# --------------------------------------------------------------------------------------- mask
class _ComputeMaskInputSpec(BaseInterfaceInputSpec):
    bold_file = InputMultiObject(
        File(exists=True),
        mandatory=True,
        desc="4D BOLD file(s) the mask is computed from (one mask common to all)",
    )
    mask_file = File(
        exists=True,
        desc="a brain mask given by the user; when set, no mask is computed: the file is "
        "passed through (resampled with nearest-neighbour interpolation to target_affine / "
        "target_shape when those are set)",
    )
    mask_strategy = _enum_trait("mask_strategy", MASK_STRATEGY_VALUES)
    mask_args = traits.Dict(traits.Str, traits.Any, desc=_desc("mask_args"))
    target_affine = _affine_trait()
    target_shape = _shape_trait()
    out_suffix = _suffix_trait()


class _ComputeMaskOutputSpec(TraitedSpec):
    mask_file = File(exists=True, desc="binary brain mask (3D NIfTI)")


class ComputeMask(SimpleInterface):
    """Compute a brain mask from BOLD, or pass a given mask through.

    Wraps :func:`masker_wf._steps.compute_mask` (and :func:`masker_wf._steps.resample` with
    nearest-neighbour interpolation when a given mask must be brought to a target grid).
    Deciding inside the interface, rather than with a conditional graph, keeps the workflow
    graph static: a user connects ``inputnode.mask_file`` or leaves it undefined, and the node
    does the right thing at run time.
    """

    input_spec = _ComputeMaskInputSpec
    output_spec = _ComputeMaskOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        target_affine = _affine(inputs.target_affine)
        target_shape = _shape(inputs.target_shape)
        if isdefined(inputs.mask_file):
            if target_affine is None and target_shape is None:
                self._results["mask_file"] = inputs.mask_file
            else:
                self._results["mask_file"] = _call_step(
                    _steps.resample,
                    runtime,
                    inputs.mask_file,
                    _out_file(runtime, inputs.mask_file, "_resampled" + inputs.out_suffix),
                    target_affine=target_affine,
                    target_shape=target_shape,
                    interpolation="nearest",
                )
            return runtime
        bold_files = list(inputs.bold_file)
        self._results["mask_file"] = _call_step(
            _steps.compute_mask,
            runtime,
            bold_files,
            _out_file(runtime, bold_files[0], "_mask" + inputs.out_suffix),
            mask_strategy=inputs.mask_strategy,
            mask_args=_opt(inputs.mask_args) or None,
            target_affine=target_affine,
            target_shape=target_shape,
        )
        return runtime


# ----------------------------------------------------------------------------------- resample
class _ResampleInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D or 4D NIfTI image to resample")
    reference_file = File(
        exists=True,
        desc="image whose grid (affine and shape) the output takes; overrides target_*",
    )
    mask_file = File(
        exists=True,
        desc="the masker's mask, on its target grid: in_file is a BOLD, put on the grid it "
        "is masked on as NiftiMasker.transform puts it (onto the mask's bounding box, padded "
        "by one voxel, when the grids differ; the dtype conversion first); a BOLD that is "
        "there already, in that dtype, is handed over as it is (out_file is in_file)",
    )
    target_affine = _affine_trait()
    target_shape = _shape_trait()
    interpolation = traits.Enum(
        "continuous",
        "linear",
        "nearest",
        usedefault=True,
        desc="interpolation: 'continuous' (3rd-order spline), 'linear' or 'nearest'",
    )
    dtype = _dtype_trait()
    out_suffix = _suffix_trait()


def _bold_on_mask_grid(bold_file, mask_file, target_affine, target_shape, dtype) -> bool:
    """Whether ``resample(bold_file, mask_file=...)`` would write ``bold_file``'s data as it is.

    Read from the headers only. The BOLD must share the mask's grid and, with a target grid,
    be on it (a 3x3 affine or a partial target is left to the step), and need no dtype
    conversion. An image that is not 3D or 4D is also handed over: there is nothing to
    resample, and ``clean_signals`` refuses it with the estimator's error.
    """
    import nibabel as nib

    bold_img = nib.load(bold_file)
    if len(bold_img.shape) not in (3, 4):
        return True
    if not _steps.on_masking_grid(bold_img, nib.load(mask_file), target_affine, target_shape):
        return False
    return resolve_dtype(img_data_dtype(bold_img), dtype) is None


class Resample(
    _ImageStep,
    step=_steps.resample,
    out_label="_resampled",
    out_desc="the resampled image (with mask_file: the BOLD on the grid it is masked on)",
    more_outputs={
        "bold_window": traits.Bool(
            desc="with mask_file: True when out_file was written, a window of the mask's grid "
            "(for CleanSignals' bold_window); False when in_file was handed over as it is"
        )
    },
):
    """Resample an image to a target grid (wraps :func:`masker_wf._steps.resample`).

    With ``mask_file``, the ``resample_bold`` node of :func:`~masker_wf.nipype.init_masker_wf`:
    the BOLD is put on the grid it is masked on, or handed over untouched (no copy, no read
    of its data) when it is on that grid already; ``bold_window`` says which.
    """

    input_spec = _ResampleInputSpec

    def _step_kwargs(self, inputs, runtime):
        return {
            "target_affine": _affine(inputs.target_affine),
            "target_shape": _shape(inputs.target_shape),
            "reference_file": _opt(inputs.reference_file),
            "interpolation": inputs.interpolation,
            "dtype": _opt(inputs.dtype),
            "mask_file": _opt(inputs.mask_file),
        }

    def _run_interface(self, runtime):
        inputs = self.inputs
        self._results["bold_window"] = False
        if isdefined(inputs.mask_file):
            try:
                on_grid = _bold_on_mask_grid(
                    inputs.in_file,
                    inputs.mask_file,
                    _affine(inputs.target_affine),
                    _shape(inputs.target_shape),
                    _opt(inputs.dtype),
                )
            except Exception:
                # An unreadable header: the step reads it again and names what is wrong.
                on_grid = False
            if on_grid:
                self._results["out_file"] = inputs.in_file
                return runtime
            self._results["bold_window"] = True
        return super()._run_interface(runtime)


# ------------------------------------------------------------------------------------- smooth
class _SmoothInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D or 4D NIfTI image to smooth")
    fwhm = _fwhm_trait(
        "full width at half maximum of the Gaussian kernel, in mm (one value, or one per axis)",
        mandatory=True,
    )
    mask_file = File(
        exists=True,
        desc="the mask the smoothed BOLD is for (in_file on its grid or a window of it): "
        "the output is the smoothed BOLD cropped to the mask's bounding box (the values of "
        "smoothing the whole field of view), and planes_file is written",
    )
    extract = traits.Bool(
        False,
        usedefault=True,
        desc="with mask_file: write the smoothed time series of the mask's voxels "
        "(signals_file, (n_volumes, n_voxels) .npy, for CleanSignals' extracted_file) "
        "instead of the cropped image: less than half the bytes, no second masking pass",
    )
    dtype = _dtype_trait()
    out_suffix = _suffix_trait()


class Smooth(
    _ImageStep,
    step=_steps.smooth,
    out_label="_smoothed",
    out_desc="the smoothed image (with mask_file: cropped to the mask's bounding box); "
    "not set with extract",
    more_outputs={
        "planes_file": File(
            desc="with mask_file: the report's mean image of the unsmoothed input (.npz), "
            "for CleanSignals' mean_planes_file"
        ),
        "signals_file": File(
            desc="with extract: the mask voxels' smoothed time series (.npy), for "
            "CleanSignals' extracted_file"
        ),
    },
):
    """Gaussian spatial smoothing (wraps :func:`masker_wf._steps.smooth`)."""

    input_spec = _SmoothInputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        if not inputs.extract:
            return super()._run_interface(runtime)
        self._results["signals_file"] = _call_step(
            self._step,
            runtime,
            inputs.in_file,
            _out_file(runtime, inputs.in_file, self._out_label + "_signals.npy"),
            extract=True,
            **self._step_kwargs(inputs, runtime),
        )
        return runtime

    def _step_kwargs(self, inputs, runtime):
        planes_file = None
        if isdefined(inputs.mask_file):
            planes_file = _out_file(runtime, inputs.in_file, "_mean_planes.npz")
            self._results["planes_file"] = planes_file
        return {
            "fwhm": inputs.fwhm,
            "mask_file": _opt(inputs.mask_file),
            "dtype": _opt(inputs.dtype),
            "planes_file": planes_file,
        }


# ------------------------------------------------------------------------ high-variance confounds
class _HighVarianceConfoundsInputSpec(BaseInterfaceInputSpec):
    bold_file = File(
        exists=True,
        mandatory=True,
        desc="4D BOLD as given to the masker (before resampling and smoothing)",
    )


class _HighVarianceConfoundsOutputSpec(TraitedSpec):
    confounds_file = File(exists=True, desc="the 5 high-variance confounds, (n_volumes, 5) .npy")


class HighVarianceConfounds(SimpleInterface):
    """NiftiMasker's high-variance confounds of the raw BOLD, for CleanSignals.

    Wraps :func:`masker_wf._steps.high_variance_confounds`.
    """

    input_spec = _HighVarianceConfoundsInputSpec
    output_spec = _HighVarianceConfoundsOutputSpec

    def _run_interface(self, runtime):
        bold_file = self.inputs.bold_file
        self._results["confounds_file"] = _call_step(
            _steps.high_variance_confounds,
            runtime,
            bold_file,
            _out_file(runtime, bold_file, "_high_variance_confounds.npy"),
        )
        return runtime


# -------------------------------------------------------------------------------------- clean
class _CleanSignalsInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="4D BOLD NIfTI file")
    mask_file = File(exists=True, mandatory=True, desc="binary brain mask (3D NIfTI)")
    confounds_file = File(
        exists=True,
        desc="confounds table (TSV/CSV with a header, or .npy), one row per volume",
    )
    sample_mask = traits.Either(
        File(exists=True),
        # Booleans first: the Int branch would accept True/False and turn a boolean mask
        # into the indices 1/0.
        traits.List(traits.Bool),
        traits.List(traits.Int),
        # Floats get through to the step, which refuses them with the estimator's error.
        traits.List(traits.Float),
        desc="volumes to keep (scrubbing): indices, a boolean per volume, or a file of either "
        "(.npy, .txt, .tsv)",
    )
    smoothing_fwhm = _fwhm_trait(_desc("smoothing_fwhm"))
    target_affine = _affine_trait()
    target_shape = _shape_trait()
    high_variance_confounds = _bool_trait("high_variance_confounds")
    detrend = _bool_trait("detrend")
    standardize = _enum_trait("standardize")
    standardize_confounds = _bool_trait("standardize_confounds")
    low_pass = traits.Float(desc=_desc("low_pass"))
    high_pass = traits.Float(desc=_desc("high_pass"))
    t_r = traits.Float(desc=_desc("t_r"))
    runs = traits.List(traits.Int, desc=_desc("runs"))
    dtype = _dtype_trait()
    clean_args = _clean_args_trait()
    # What the upstream nodes of init_masker_wf hand over.
    hv_confounds_file = File(
        exists=True,
        desc="high-variance confounds computed beforehand on the raw BOLD "
        "(HighVarianceConfounds), prepended to the confounds as high_variance_confounds=True "
        "would",
    )
    bold_window = traits.Bool(
        False,
        usedefault=True,
        desc="bold_file is a window of the mask's grid holding every mask voxel (what Resample "
        "and Smooth write with mask_file): masked where it lies, without resampling",
    )
    mean_planes_file = File(
        exists=True,
        desc="the report's mean image gathered upstream from the unsmoothed BOLD (Smooth's "
        "planes_file), for qc_file",
    )
    extracted_file = File(
        exists=True,
        desc="the mask voxels' time series extracted upstream from bold_file (Smooth's "
        "signals_file, with extract): cleaned as they are, bold_file read for its header "
        "only",
    )


class _CleanSignalsOutputSpec(TraitedSpec):
    signals_file = File(
        exists=True, desc="cleaned signals, (n_kept_volumes, n_voxels) float array in .npy"
    )
    qc_file = File(
        exists=True,
        desc="report data gathered while cleaning (.npz: tSNR before/after, carpet samples, "
        "mean image planes; see masker_wf._io.save_qc), as the Pydra task writes it",
    )


class CleanSignals(SimpleInterface):
    """Resample, smooth, mask and clean BOLD signals (:func:`masker_wf._steps.clean_signals`).

    Numerically this is :meth:`masker_wf.NiftiMasker.transform` with the same parameters.
    In :func:`~masker_wf.nipype.init_masker_wf` the resampling, smoothing and
    high-variance confounds are upstream nodes, and this node masks and cleans the window
    ``resample_bold`` writes (``bold_window``) or cleans the signals ``smooth`` extracts
    (``extracted_file``). The outputs are named after the run's BOLD
    (``<bold>_signals.npy``, ``<bold>_qc.npz``): the labels the upstream nodes add to a
    window's name (``_resampled``, ``_smoothed``) are dropped.
    """

    input_spec = _CleanSignalsInputSpec
    output_spec = _CleanSignalsOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        source = inputs.bold_file
        if inputs.bold_window:
            # Parent pipelines (DataSink substitutions) match the names on the BOLD's.
            directory, base, ext = split_filename(source)
            for label in (Smooth._out_label, Resample._out_label):
                base = base.removesuffix(label)
            source = str(Path(directory) / f"{base}{ext}")
        qc_file = _out_file(runtime, source, "_qc.npz")
        self._results["signals_file"] = _call_step(
            _steps.clean_signals,
            runtime,
            inputs.bold_file,
            inputs.mask_file,
            _out_file(runtime, source, "_signals.npy"),
            qc_file=qc_file,
            confounds_file=_opt(inputs.confounds_file),
            sample_mask=_opt(inputs.sample_mask),
            smoothing_fwhm=_opt(inputs.smoothing_fwhm),
            target_affine=_affine(inputs.target_affine),
            target_shape=_shape(inputs.target_shape),
            high_variance_confounds=inputs.high_variance_confounds,
            detrend=inputs.detrend,
            standardize=inputs.standardize,
            standardize_confounds=inputs.standardize_confounds,
            low_pass=_opt(inputs.low_pass),
            high_pass=_opt(inputs.high_pass),
            t_r=_opt(inputs.t_r),
            runs=_opt(inputs.runs) or None,
            dtype=_opt(inputs.dtype),
            clean_args=_opt(inputs.clean_args) or None,
            hv_confounds_file=_opt(inputs.hv_confounds_file),
            bold_window=inputs.bold_window,
            mean_planes_file=_opt(inputs.mean_planes_file),
            extracted_file=_opt(inputs.extracted_file),
            context={
                "mask_file": inputs.mask_file,
                "confounds_file": _opt(inputs.confounds_file),
                "sample_mask": _opt(inputs.sample_mask),
            },
        )
        self._results["qc_file"] = qc_file
        return runtime


# ------------------------------------------------------------------------------------- unmask
class _UnmaskInputSpec(BaseInterfaceInputSpec):
    signals_file = File(exists=True, mandatory=True, desc="signals (n_volumes, n_voxels) in .npy")
    mask_file = File(exists=True, mandatory=True, desc="the mask the signals were extracted with")
    reference_file = File(
        exists=True,
        desc="the run's input BOLD: the output states its sform/qform codes, units and "
        "repetition time (unless t_r is set)",
    )
    t_r = traits.Float(desc="repetition time (s) of the output, its 4th voxel size")
    out_suffix = _suffix_trait()


class _UnmaskOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="4D NIfTI image of the signals put back in the mask")


class Unmask(SimpleInterface):
    """Put signals back into a 4D image (wraps :func:`masker_wf._steps.unmask`)."""

    input_spec = _UnmaskInputSpec
    output_spec = _UnmaskOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        # Name the output after the signals (which are named after the BOLD), e.g.
        # sub-01_bold_signals.npy -> sub-01_bold_cleaned.nii.gz.
        _, base, _ = split_filename(inputs.signals_file)
        base = base.removesuffix("_signals")
        self._results["out_file"] = _call_step(
            _steps.unmask,
            runtime,
            inputs.signals_file,
            inputs.mask_file,
            str(Path(runtime.cwd) / f"{base}_cleaned{inputs.out_suffix}"),
            reference_file=_opt(inputs.reference_file),
            t_r=_opt(inputs.t_r),
            context={"mask_file": inputs.mask_file},
        )
        return runtime


# --------------------------------------------------------------------------------- sink
class _DerivativesSinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the file to write (any format)")
    out_file = traits.Str(
        mandatory=True,
        desc="absolute destination path (its directory must exist); a '.gz' destination is "
        "gzipped with python-isal unless in_file already is",
    )
    sidecar = traits.Dict(
        traits.Str, traits.Any, desc="JSON sidecar written next to the data (same stem, .json)"
    )
    # The first value is the default: 1, as write_derivative's.
    compress_level = traits.Enum(
        1,
        *(level for level in COMPRESS_LEVELS if level != 1),
        usedefault=True,
        desc="isal compression level, 0 (fastest) to 3 (smallest)",
    )


class _DerivativesSinkOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the destination, complete")


class DerivativesSink(SimpleInterface):
    """Write a file to its final derivative path (wraps :func:`masker_wf._steps.write_derivative`).

    Atomic (a temporary name in the destination directory, then a rename), gzipped with
    python-isal for a ``.gz`` destination, with an optional JSON sidecar written after the
    data. The node always runs (as nipype's DataSink): a destination deleted or edited since
    the last run is written again.
    """

    input_spec = _DerivativesSinkInputSpec
    output_spec = _DerivativesSinkOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        inputs = self.inputs
        if not os.path.isabs(inputs.out_file):
            # nipype runs the node in its working directory: a relative path would land there.
            raise ValueError(f"out_file must be an absolute path, got '{inputs.out_file}'.")
        self._results["out_file"] = _call_step(
            _steps.write_derivative,
            runtime,
            inputs.in_file,
            inputs.out_file,
            sidecar=_opt(inputs.sidecar),
            compress_level=inputs.compress_level,
        )
        return runtime
