"""nipype interfaces over the masker-wf file-in/file-out steps.

Every interface here is a thin face over one function of :mod:`masker_wf._steps`: the
interface checks and types its inputs (nipype traits), picks an output file name in the
node's working directory, and calls the step. There is no numerical code in this module, so
the numbers a nipype workflow produces are the numbers the Pydra tasks and
:class:`masker_wf.NiftiMasker` produce.

Errors: a failing step raises :class:`masker_wf._steps.StepError` (a :class:`ValueError`
naming the step, the input file and what is wrong). The interface re-raises it without the
core's chained traceback and with the node's other input files named, and nipype puts that
text into the exception it raises (``NodeExecutionError`` with the Linear plugin,
``RuntimeError`` with MultiProc), whose last line is the step's message: the user reads it
in the raised exception, not only in the crash file.
"""

from __future__ import annotations

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

from .. import _steps
from .._steps import StepError

__all__ = ["CleanSignals", "ComputeMask", "Resample", "Smooth", "Unmask"]

MASK_STRATEGIES = (
    "background",
    "epi",
    "whole-brain-template",
    "gm-template",
    "wm-template",
)
STANDARDIZE_STRATEGIES = ("zscore_sample", "zscore", "psc")


def _affine_trait(**metadata):
    # Lists rather than numpy arrays: nipype hashes inputs through str(), and an array's str
    # depends on numpy's print options (and elides long arrays); nested lists hash stably.
    return traits.List(
        traits.List(traits.Float, minlen=3, maxlen=4),
        minlen=3,
        maxlen=4,
        desc="target affine of the output grid (3x3 or 4x4, in mm); resample to it",
        **metadata,
    )


def _shape_trait(**metadata):
    return traits.List(
        traits.Int,
        minlen=3,
        maxlen=3,
        desc="target shape (3 voxel counts) of the output grid; needs target_affine",
        **metadata,
    )


def _fwhm_trait(desc, **metadata):
    return traits.Either(
        traits.Float,
        traits.List(traits.Float, minlen=3, maxlen=3),
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


def _call_step(step, *args, context=None, **kwargs):
    """Call a step; on failure re-raise its StepError without the chained core traceback.

    nipype puts the whole exception chain into the message of the exception it raises (and
    into the crash file); the core's internal frames bury the one line that says what is
    wrong. The StepError already carries the cause's type and message, so it is re-raised
    alone, with the node's other input files appended when the message does not name them
    (a wrong confounds file is otherwise reported against the BOLD file).
    """
    try:
        return str(step(*args, **kwargs))
    except StepError as exc:
        context = [
            f"{name}='{value}'"
            for name, value in (context or {}).items()
            if value is not None and str(value) not in str(exc)
        ]
        reason = exc.reason + (f" (other inputs: {', '.join(context)})" if context else "")
        raise StepError(exc.step, exc.input_file, reason) from None


def _out_file(runtime, source, suffix):
    """Output path in the node's working directory, named after ``source``.

    ``sub-01_bold.nii.gz`` + ``_mask.nii`` -> ``<cwd>/sub-01_bold_mask.nii``.
    """
    _, base, _ = split_filename(str(source))
    return str(Path(runtime.cwd) / f"{base}{suffix}")


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
    mask_strategy = traits.Enum(
        *MASK_STRATEGIES,
        usedefault=True,
        desc="how to compute the mask when mask_file is not given (nilearn's NiftiMasker "
        "mask_strategy)",
    )
    mask_args = traits.Dict(
        traits.Str,
        traits.Any,
        desc="keyword arguments of the mask computation (e.g. lower_cutoff, opening)",
    )
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
    target_affine = _affine_trait()
    target_shape = _shape_trait()
    interpolation = traits.Enum(
        "continuous",
        "linear",
        "nearest",
        usedefault=True,
        desc="interpolation: 'continuous' (3rd-order spline), 'linear' or 'nearest'",
    )
    dtype = traits.Str(desc="data type the input is converted to before resampling, or 'auto'")
    out_suffix = _suffix_trait()


class _ResampleOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the resampled image")


class Resample(SimpleInterface):
    """Resample an image to a target grid (wraps :func:`masker_wf._steps.resample`)."""

    input_spec = _ResampleInputSpec
    output_spec = _ResampleOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        self._results["out_file"] = _call_step(
            _steps.resample,
            inputs.in_file,
            _out_file(runtime, inputs.in_file, "_resampled" + inputs.out_suffix),
            target_affine=_affine(inputs.target_affine),
            target_shape=_shape(inputs.target_shape),
            reference_file=_opt(inputs.reference_file),
            interpolation=inputs.interpolation,
            dtype=_opt(inputs.dtype),
        )
        return runtime


# ------------------------------------------------------------------------------------- smooth
class _SmoothInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D or 4D NIfTI image to smooth")
    fwhm = _fwhm_trait(
        "full width at half maximum of the Gaussian kernel, in mm (one value, or one per axis)",
        mandatory=True,
    )
    out_suffix = _suffix_trait()


class _SmoothOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the smoothed image")


class Smooth(SimpleInterface):
    """Gaussian spatial smoothing (wraps :func:`masker_wf._steps.smooth`)."""

    input_spec = _SmoothInputSpec
    output_spec = _SmoothOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        self._results["out_file"] = _call_step(
            _steps.smooth,
            inputs.in_file,
            _out_file(runtime, inputs.in_file, "_smoothed" + inputs.out_suffix),
            fwhm=inputs.fwhm,
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
        desc="volumes to keep (scrubbing): indices, a boolean per volume, or a file of either "
        "(.npy, .txt, .tsv)",
    )
    smoothing_fwhm = _fwhm_trait(
        "FWHM in mm of the Gaussian kernel applied before masking (within the mask bounding "
        "box plus the kernel radius)"
    )
    target_affine = _affine_trait()
    target_shape = _shape_trait()
    high_variance_confounds = traits.Bool(
        False,
        usedefault=True,
        desc="add the 5 highest-variance voxel time series (of the input BOLD) as confounds",
    )
    detrend = traits.Bool(False, usedefault=True, desc="remove a linear trend per voxel")
    standardize = traits.Either(
        traits.Bool,
        traits.Enum(*STANDARDIZE_STRATEGIES),
        default=False,
        usedefault=True,
        desc="standardize signals: False, 'zscore_sample', 'zscore', 'psc' or True (=zscore)",
    )
    standardize_confounds = traits.Bool(
        True, usedefault=True, desc="z-score confounds before regressing them out"
    )
    low_pass = traits.Float(desc="low-pass cutoff of the Butterworth filter, in Hz")
    high_pass = traits.Float(desc="high-pass cutoff of the Butterworth filter, in Hz")
    t_r = traits.Float(desc="repetition time in seconds (needed when filtering)")
    dtype = traits.Str(desc="data type the BOLD is converted to before processing, or 'auto'")
    clean_kwargs = traits.Dict(
        traits.Str,
        traits.Any,
        desc="extra keyword arguments of masker_wf.signal.clean (e.g. butterworth__order)",
    )


class _CleanSignalsOutputSpec(TraitedSpec):
    signals_file = File(
        exists=True, desc="cleaned signals, (n_kept_volumes, n_voxels) float array in .npy"
    )


class CleanSignals(SimpleInterface):
    """Resample, smooth, mask and clean BOLD signals (:func:`masker_wf._steps.clean_signals`).

    Numerically this is :meth:`masker_wf.NiftiMasker.transform` with the same parameters.
    """

    input_spec = _CleanSignalsInputSpec
    output_spec = _CleanSignalsOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        self._results["signals_file"] = _call_step(
            _steps.clean_signals,
            inputs.bold_file,
            inputs.mask_file,
            _out_file(runtime, inputs.bold_file, "_signals.npy"),
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
            dtype=_opt(inputs.dtype),
            clean_kwargs=_opt(inputs.clean_kwargs) or None,
            context={
                "mask_file": inputs.mask_file,
                "confounds_file": _opt(inputs.confounds_file),
                "sample_mask": _opt(inputs.sample_mask),
            },
        )
        return runtime


# ------------------------------------------------------------------------------------- unmask
class _UnmaskInputSpec(BaseInterfaceInputSpec):
    signals_file = File(exists=True, mandatory=True, desc="signals (n_volumes, n_voxels) in .npy")
    mask_file = File(exists=True, mandatory=True, desc="the mask the signals were extracted with")
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
            inputs.signals_file,
            inputs.mask_file,
            str(Path(runtime.cwd) / f"{base}_cleaned{inputs.out_suffix}"),
            context={"mask_file": inputs.mask_file},
        )
        return runtime
