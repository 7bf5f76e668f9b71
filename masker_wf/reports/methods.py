"""The methods paragraph: what was done to the data, in the order it was done, ready to paste.

One writer for every entry point: the BIDS App's subject page (one parameter set per run,
from the provenance records, see :mod:`masker_wf.bids.methods`), the nipype workflow's
``__desc__`` (parameters known, inputs not yet) and any caller holding one parameter set.
The order of the cleaning steps is that of :func:`masker_wf.signal.clean`: censoring comes
first unless a Butterworth filter runs (censored volumes are then interpolated, filtered and
removed afterwards), then detrending, filtering, confound regression and standardization.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["methods_paragraph"]

# Parameters whose value the paragraph gives once: a note says when runs disagree.
_SHARED = (
    "smoothing_fwhm",
    "detrend",
    "standardize",
    "standardize_confounds",
    "high_variance_confounds",
    "low_pass",
    "high_pass",
    "clean_args",
    "target_affine",
)
_CENSORING_REASON = "non-steady-state and/or motion outliers"


def _same(values) -> bool:
    return len({repr(v) for v in values}) <= 1


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def _mask_sentence(runs, inputs_known: bool) -> str:
    def computed(run):
        strategy = run.get("mask_strategy", "background")
        text = f"a brain mask computed with the '{strategy}' strategy"
        return text + (f" (arguments: {run['mask_args']})" if run.get("mask_args") else "")

    if not inputs_known:
        # A workflow uses the mask connected to it, and computes one otherwise.
        return (
            "Signals were extracted within the brain mask given as input or, when none was "
            f"given, {computed(runs[0])} from the BOLD series."
        )
    masks = []
    for run in runs:
        source = run.get("mask_source") or (
            "mask_img" if run.get("mask_file") or run.get("mask_img") else "computed"
        )
        if source == "input":
            text = "the brain mask of the preprocessed data (fMRIPrep's desc-brain mask)"
        elif source == "mask_img":
            text = "a brain mask given for all runs" if len(runs) > 1 else "the given brain mask"
        else:
            text = computed(run)
        if text not in masks:
            masks.append(text)
    return "Signals were extracted within " + " or ".join(masks) + "."


def _grid_sentence(runs) -> str | None:
    first = runs[0]
    if first.get("target_affine") is None:
        return None
    sizes = {
        "x".join(_number(float(size)) for size in run["output_voxel_size"])
        for run in runs
        if run.get("output_voxel_size")
    }
    if not sizes:
        linear = np.asarray(first["target_affine"], dtype=float)[:3, :3]
        sizes = {"x".join(f"{size:g}" for size in np.sqrt((linear**2).sum(axis=0)))}
    grid = f"{', '.join(sorted(sizes))} mm voxels"
    if first.get("target_shape"):
        grid += f", {'x'.join(str(int(n)) for n in first['target_shape'])} grid"
    return (
        f"Images were resampled to the target grid ({grid}) with third-order spline "
        "interpolation (nearest neighbour for the mask)."
    )


def _smoothing_sentence(fwhm) -> str | None:
    if fwhm is None or (not isinstance(fwhm, str) and not np.any(fwhm)):
        return None
    if isinstance(fwhm, str):
        return (
            f"Images were smoothed with nilearn's '{fwhm}' kernel (each voxel averaged with "
            "0.2 times each of its 6 neighbours)."
        )
    if np.ndim(fwhm):
        fwhm = "x".join(_number(float(v)) for v in fwhm)
    return f"Images were smoothed with a Gaussian kernel of {fwhm} mm FWHM."


def _filter_type(run):
    return (run.get("clean_args") or {}).get("filter", "butterworth")


def _filtering(run) -> str | None:
    """The filtering step that ran, if any."""
    filter_type = _filter_type(run)
    low, high = run.get("low_pass"), run.get("high_pass")
    if filter_type == "cosine" and high:
        return f"cosine high-pass filtering ({high} Hz; discrete cosine drift regressors)"
    if filter_type == "butterworth":
        if low and high:
            return f"Butterworth band-pass filtering ({high}-{low} Hz)"
        if low:
            return f"Butterworth low-pass filtering ({low} Hz)"
        if high:
            return f"Butterworth high-pass filtering ({high} Hz)"
    return None


def _censoring(runs, labels, inputs_known: bool, interpolated: bool) -> str | None:
    """The censoring step; ``interpolated``: filled in by splines for a Butterworth filter."""
    if not inputs_known:
        what = "the volumes excluded by the sample mask, when one is given"
        return f"cubic-spline interpolation of {what}" if interpolated else f"censoring of {what}"
    censored = [int(run.get("n_volumes_censored") or 0) for run in runs]
    if not any(censored):
        return None
    listed = ""
    if _same(censored):
        count = _plural(censored[0], "volume") + (" per run" if len(runs) > 1 else "")
    else:
        listed = ", ".join(f"{c} in {label}" for c, label in zip(censored, labels, strict=True))
        count = f"between {min(censored)} and {max(censored)} volumes per run"
    reason = _scrubbing_reason(runs) or _censoring_reason(runs)
    if interpolated:
        return (
            f"cubic-spline interpolation of the censored volumes ({count}: {reason}"
            f"{'; ' + listed if listed else ''})"
        )
    return f"censoring of {count} ({reason}{'; ' + listed if listed else ''})"


def _censoring_reason(runs) -> str:
    """What was censored, when the runs do not share one scrubbing criterion."""
    strategies = [(run.get("confounds_parameters") or {}).get("strategy") for run in runs]
    if any(strategy is None or "scrub" in strategy for strategy in strategies):
        return _CENSORING_REASON
    # Known not to scrub: only the volumes at the start are censored.
    return "non-steady-state volumes at the start of the run"


def _scrubbing_reason(runs) -> str | None:
    """The motion-outlier criteria of the runs' strategy, when they share one."""
    selections = [run.get("confounds_parameters") or {} for run in runs]
    first = selections[0]
    if "scrub" not in (first.get("strategy") or ()) or not _same(
        [repr(sorted(s.items())) for s in selections]
    ):
        return None
    segments = ""
    if first.get("scrub"):
        segments = (
            f", with the segments of fewer than {first.get('scrub')} volumes left between them"
        )
    return (
        "non-steady-state volumes, and motion outliers: framewise displacement above "
        f"{first.get('fd_threshold')} mm or standardized DVARS above "
        f"{first.get('std_dvars_threshold')}{segments}"
    )


def _confounds(runs, labels, inputs_known: bool, filtered: bool) -> str | None:
    first = runs[0]
    strategies = sorted({str(run.get("denoise_strategy")) for run in runs} - {"None", "none"})
    described = f" ({', '.join(strategies)} strategy)" if strategies else ""
    high_variance = (
        "5 high-variance confounds (principal components of the highest-variance voxels)"
    )
    if not inputs_known:
        text = "regression of the confounds given as input, if any"
        if first.get("high_variance_confounds"):
            text += f", and of {high_variance}"
    else:
        columns = [list(run.get("confounds") or []) for run in runs]
        if any(columns) and _same(columns):
            independent = [run.get("n_independent_confounds") for run in runs]
            rank = ""
            if (
                _same(independent)
                and independent[0] is not None
                and int(independent[0]) < len(columns[0])
            ):
                rank = f", {independent[0]} of them linearly independent on the kept volumes"
            text = (
                f"regression of {len(columns[0])} confounds{described}{rank}: "
                f"{', '.join(columns[0])}"
            )
        elif any(columns):
            per_run = "; ".join(
                f"{label}: {len(c)} ({', '.join(c) or 'none'})"
                for label, c in zip(labels, columns, strict=True)
            )
            text = f"regression of confounds that differ between runs{described} ({per_run})"
        elif first.get("high_variance_confounds"):
            text = f"regression of {high_variance}"
            high_variance = None
        else:
            return None
        if high_variance and first.get("high_variance_confounds"):
            text += f", and of {high_variance}"
    zscored = "z-scored and " if first.get("standardize_confounds", True) else ""
    # A Butterworth filter also filters the confounds, which are then projected out of the
    # filtered data (nilearn's order); cosine regressors are regressed with the confounds.
    how = "projected out orthogonally to the filtered data" if filtered else "regressed out"
    return f"{text}, {zscored}{how}"


def _in_order(steps) -> str:
    return f", in this order: {'; '.join(steps)}" if len(steps) > 1 else f" {steps[0]}"


def _cleaning_sentences(runs, labels, inputs_known: bool) -> list[str]:
    first = runs[0]
    filtering, filter_type = _filtering(first), _filter_type(first)
    butterworth = filtering is not None and filter_type == "butterworth"
    # nilearn's order with a Butterworth filter: the censored volumes are filled in by cubic
    # splines (before the detrending), the series filtered, and only then removed.
    censoring = _censoring(runs, labels, inputs_known, interpolated=butterworth)
    removal = "removal of the interpolated volumes" if censoring and butterworth else None
    confounds = _confounds(runs, labels, inputs_known, filtered=butterworth)
    if filtering and filter_type == "cosine":
        # clean(): the cosine regressors join the confounds and are regressed with them.
        filtering += ", regressed together with the confounds" if confounds else ", regressed out"
    before = [censoring] if censoring else []
    after = [s for s in (filtering, removal, confounds) if s]

    sentences = []
    if first.get("detrend"):
        start = f"After {before[0]}, the" if before else "The"
        sentence = f"{start} signals were linearly detrended"
        sentences.append(sentence + (f", then cleaned by{_in_order(after)}." if after else "."))
    elif before or after:
        sentences.append(f"The signals were cleaned by{_in_order(before + after)}.")
    standardize = first.get("standardize")
    if standardize:
        kind = standardize if isinstance(standardize, str) else "zscore"
        sentences.append(f"Finally, the signals were standardized ('{kind}').")
    return sentences


def methods_paragraph(
    runs: Mapping | Sequence[Mapping], versions: Mapping, *, inputs_known: bool = True
) -> str:
    """A methods paragraph ready to paste into a paper.

    Parameters
    ----------
    runs : mapping or sequence of mappings
        One parameter set, or one per run (the text then counts the runs and lists
        per-run values where they differ). Each holds NiftiMasker parameters
        (``mask_strategy``, ``mask_args``, ``smoothing_fwhm``, ``target_affine``,
        ``target_shape``, ``detrend``, ``low_pass``, ``high_pass``, ``clean_args``,
        ``high_variance_confounds``, ``standardize_confounds``, ``standardize``, ``t_r``)
        and what is known of the run: ``run`` (a short label), ``mask_source``
        (``"input"``: the mask of the preprocessed data, ``"mask_img"``: one given mask,
        ``"computed"``), ``confounds`` (column names), ``denoise_strategy``,
        ``n_volumes_censored`` (non-steady-state and motion outliers) and
        ``output_voxel_size``.
    versions : mapping
        Software name -> version (masker-wf, numpy, scipy, nibabel...).
    inputs_known : bool, default=True
        False describes a workflow before it runs (the nipype ``__desc__``): the mask,
        confounds and sample mask are inputs it may or may not receive, and are
        described as such.

    Returns
    -------
    str
        The paragraph, plain text.
    """
    several = not isinstance(runs, Mapping)
    runs = [dict(run) for run in runs] if several else [dict(runs)]
    software = ", ".join(f"{name} {version}" for name, version in versions.items())
    counted = f" ({_plural(len(runs), 'run')})" if several else ""
    sentences = [
        f"BOLD time series{counted} were cleaned with masker-wf ({software}), which "
        "reproduces nilearn's NiftiMasker."
    ]
    if not runs:
        return sentences[0]
    first = runs[0]
    labels = [str(run.get("run") or index + 1) for index, run in enumerate(runs)]
    sentences.append(_mask_sentence(runs, inputs_known))
    sentences += [
        s for s in (_grid_sentence(runs), _smoothing_sentence(first.get("smoothing_fwhm"))) if s
    ]
    sentences += _cleaning_sentences(runs, labels, inputs_known)
    t_rs = [run.get("t_r") for run in runs if run.get("t_r")]
    if t_rs and _same(t_rs):
        sentences.append(f"The repetition time was {t_rs[0]} s.")
    elif t_rs:
        listed = ", ".join(
            f"{run.get('t_r')} s in {label}" for run, label in zip(runs, labels, strict=True)
        )
        sentences.append(f"The repetition times were {listed}.")
    differing = [key for key in _SHARED if not _same([run.get(key) for run in runs])]
    if differing:
        sentences.append(
            "Note: the runs were processed with different values of "
            f"{', '.join(differing)}; the values above are those of {labels[0]} (see each "
            "run's report)."
        )
    return " ".join(sentences)
