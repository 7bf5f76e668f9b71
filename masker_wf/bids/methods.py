"""The methods paragraph of a subject page, from the provenance records of all its runs.

Unlike :func:`masker_wf.reports.methods_paragraph` (one parameter set), it summarises every run:
censoring and confounds per run when they differ, the filter actually used (Butterworth or
cosine high-pass), and the interpolation of censored volumes only when a Butterworth filter
made it happen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["subject_methods"]


def _same(values):
    return len({repr(v) for v in values}) <= 1


def _run_label(name: str) -> str:
    """Short label of a run for the text: its task/session/run entities."""
    parts = [p for p in name.split("_") if p.split("-", 1)[0] in ("ses", "task", "acq", "run")]
    return "_".join(parts) or name


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def subject_methods(records: Sequence[Mapping], versions: Mapping) -> str:
    """Methods paragraph over the provenance records (``*_provenance.json``) of a subject.

    Parameters
    ----------
    records : sequence of mappings
        One provenance record per run (``Run``, ``Parameters``, ``Confounds``, ``Summary``,
        ``MaskSource``...).
    versions : mapping
        Software name -> version.
    """
    software = ", ".join(f"{name} {version}" for name, version in versions.items())
    n = len(records)
    sentences = [
        f"BOLD time series ({n} run{'s' if n != 1 else ''}) were cleaned with masker-wf "
        f"({software})."
    ]
    if not records:
        return sentences[0]
    params = [dict(r.get("Parameters", {})) for r in records]
    first = params[0]
    labels = [_run_label(r.get("Run", "")) for r in records]

    sources = [
        r.get("MaskSource") or ("input" if r.get("Inputs", {}).get("mask") else "computed")
        for r in records
    ]
    masks = []
    if "input" in sources:
        masks.append("the brain mask of the preprocessed data (fMRIPrep's desc-brain mask)")
    if "mask_img" in sources:
        masks.append("a brain mask given for all runs")
    computed = sorted(
        {
            p.get("mask_strategy", "background")
            for p, s in zip(params, sources, strict=True)
            if s == "computed"
        }
    )
    for strategy in computed:
        masks.append(f"a brain mask computed with the '{strategy}' strategy")
    sentences.append("Signals were extracted within " + " or ".join(masks) + ".")
    if first.get("target_affine") is not None:
        sizes = {
            "x".join(_number(float(z)) for z in r["OutputVoxelSize"])
            for r in records
            if r.get("OutputVoxelSize")
        }
        grid = f" ({', '.join(sorted(sizes))} mm voxels)" if sizes else ""
        sentences.append(f"Images were resampled to the target grid{grid}.")
    if first.get("smoothing_fwhm"):
        sentences.append(
            f"Images were smoothed with a Gaussian kernel of {first['smoothing_fwhm']} mm FWHM."
        )

    clean_args = dict(first.get("clean_args") or {})
    filter_type = clean_args.get("filter", "butterworth")
    low, high = first.get("low_pass"), first.get("high_pass")
    filtering = None
    if filter_type == "cosine" and high:
        filtering = f"cosine high-pass filtering ({high} Hz; discrete cosine drift regressors)"
    elif filter_type == "butterworth":
        if low and high:
            filtering = f"Butterworth band-pass filtering ({high}-{low} Hz)"
        elif low:
            filtering = f"Butterworth low-pass filtering ({low} Hz)"
        elif high:
            filtering = f"Butterworth high-pass filtering ({high} Hz)"

    censored = [
        int(r["Summary"]["volumes_total"]) - int(r["Summary"]["volumes_kept"])
        for r in records
        if r.get("Summary")
    ]
    censoring = None
    if any(censored):
        listed = ""
        if _same(censored):
            volumes = "volume" if censored[0] == 1 else "volumes"
            count = f"{censored[0]} {volumes}" + (" per run" if n > 1 else "")
        else:
            listed = ", ".join(
                f"{c} in {label}" for c, label in zip(censored, labels, strict=True)
            )
            count = f"between {min(censored)} and {max(censored)} volumes per run"
        why = "non-steady-state and/or motion outliers"
        censoring = (
            f"censoring of {count} ({why}; {listed})"
            if listed
            else (f"censoring of {count} ({why})")
        )
        if filtering and filter_type == "butterworth":
            censoring += ", interpolated by cubic splines before filtering, then removed"

    confounds = None
    columns = [list(r.get("Confounds") or []) for r in records]
    strategies = sorted({str(p.get("denoise_strategy")) for p in params} - {"None", "none"})
    described = f" ({', '.join(strategies)} strategy)" if strategies else ""
    if any(columns):
        if _same(columns):
            confounds = (
                f"regression of {len(columns[0])} confounds{described}: {', '.join(columns[0])}"
            )
        else:
            per_run = "; ".join(
                f"{label}: {len(c)} ({', '.join(c) or 'none'})"
                for label, c in zip(labels, columns, strict=True)
            )
            confounds = f"regression of confounds that differ between runs{described} ({per_run})"
        # Filtered confounds are projected out of the filtered data (nilearn's order).
        confounds += (
            ", projected out orthogonally to the filtered data" if filtering else ", regressed out"
        )

    steps = []
    detrend = "linear detrending" if first.get("detrend") else None
    if filter_type == "cosine":
        # clean(): cosine regressors join the confounds; censoring, detrend, regression.
        if censoring:
            steps.append(censoring)
        if detrend:
            steps.append(detrend)
        if filtering:
            steps.append(filtering + ", regressed together with the confounds")
        if confounds:
            steps.append(confounds)
    elif filtering and censoring:
        steps += [s for s in (detrend, filtering, censoring, confounds) if s]
    else:
        steps += [s for s in (censoring, detrend, filtering, confounds) if s]
    if first.get("standardize"):
        steps.append(f"standardization ('{first['standardize']}')")
    if steps:
        sentences.append("Cleaning comprised, in this order: " + "; ".join(steps) + ".")
    t_rs = [p.get("t_r") for p in params if p.get("t_r")]
    if t_rs and _same(t_rs):
        sentences.append(f"The repetition time was {t_rs[0]} s.")
    elif t_rs:
        listed = ", ".join(
            f"{p.get('t_r')} s in {label}" for p, label in zip(params, labels, strict=True)
        )
        sentences.append(f"The repetition times were {listed}.")
    differing = [
        key
        for key in (
            "smoothing_fwhm",
            "detrend",
            "standardize",
            "low_pass",
            "high_pass",
            "clean_args",
            "target_affine",
        )
        if not _same([p.get(key) for p in params])
    ]
    if differing:
        sentences.append(
            "Note: the runs were processed with different values of "
            f"{', '.join(differing)}; the values above are those of {labels[0]} (see each "
            "run's report)."
        )
    return " ".join(sentences)
