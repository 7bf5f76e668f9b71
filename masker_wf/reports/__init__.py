"""HTML reports for masker-wf: per run (``NiftiMasker.generate_report``, the BIDS App's
per-run page), per subject (links every run, lists their warnings, carries the methods
paragraph) and for the group (every run, sorted and flagged by quality).

Pages are rendered from the jinja2 templates of the package data (``masker_wf/data/
templates``). The package depends on the core only (:mod:`masker_wf._qc` computes the
numbers shown, :mod:`masker_wf.reports.methods` writes the methods paragraph); matplotlib is
imported when a figure is drawn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .._qc import temporal_snr
from . import figures
from .html import HTMLReport, render
from .methods import methods_paragraph

__all__ = [
    "GROUP_FLAGS",
    "HTMLReport",
    "build_group_report",
    "build_run_report",
    "build_subject_report",
    "methods_paragraph",
    "temporal_snr",
]

#: The quality flags of the group page, most serious first, with what they mean.
GROUP_FLAGS = {
    "failed": "the run failed (see its reason)",
    "refused": "too little data left to clean (--min-dof, --min-time): no outputs",
    "tsnr_not_finite": "the tSNR after cleaning is not a finite number",
    "tsnr_absurd": "median tSNR after cleaning above 1000: the residuals are rounding noise",
    "low_dof": "fewer degrees of freedom than --warn-dof",
}

#: Numbers of a run on the subject and group pages: (key of the summary, heading).
RUN_COLUMNS = (
    ("volumes_kept", "volumes kept"),
    ("seconds_kept", "seconds kept"),
    ("confound_regressors", "regressors"),
    ("dof", "DOF"),
    ("voxels_in_mask", "voxels"),
    ("mean_fd", "FD (mm)"),
    ("tsnr_before", "tSNR before"),
    ("tsnr_after", "tSNR after"),
)

TSNR_AFTER_CAPTION = (
    "tSNR is each voxel's temporal mean over its temporal standard deviation, both over the "
    "kept volumes. After cleaning it is the input's mean over the standard deviation of the "
    "cleaned signals before any standardization, i.e. over the noise cleaning left: it "
    "rises as drifts, motion and filtered-out frequencies are removed, and an enormous value "
    "means nothing is left (the residuals are rounding noise)."
)


def _tsnr_fell(tsnr_before, tsnr_after) -> str:
    """A sentence for the caption when cleaning lowered the median tSNR, else ''."""
    before, after = _median(tsnr_before), _median(tsnr_after)
    if before is None or after is None or not after < before:
        return ""
    # nilearn's default clean__extrapolate=True fills censored volumes at the edges of a
    # run by extrapolating splines before a Butterworth filter: they can add variance.
    return (
        f" Here it fell (median {before:.3g} before, {after:.3g} after): the cleaned signals "
        "vary more than the input. Check what adds variance, such as splines extrapolated "
        "over censored volumes at the edges of the run before a Butterworth filter "
        "(clean__extrapolate=True, nilearn's default)."
    )


def _to_volume(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    volume = np.zeros(mask.shape, dtype=np.float32)
    volume[mask] = values
    return volume


def _sampled_columns(n_voxels: int, n_columns: int):
    """Mask voxels of the report's signal columns: the pipeline keeps evenly spaced ones."""
    if n_columns == n_voxels:
        return np.arange(n_voxels)
    columns = np.unique(np.linspace(0, n_voxels - 1, n_columns).round().astype(np.int64))
    return columns if columns.size == n_columns else None


def _median(values) -> float | None:
    return None if values is None else float(np.median(values))


def _denoising_rows(denoising: Mapping) -> list[tuple[str, object]]:
    """The denoising record as (label, value) rows, in the order a reader checks them."""
    rows = [("confound strategy", denoising["strategy"])] if "strategy" in denoising else []
    if denoising.get("mask"):
        rows.append(("mask", denoising["mask"]))
    if denoising.get("filter"):
        rows.append(("temporal filter", denoising["filter"]))
    for name, value in (denoising.get("thresholds") or {}).items():
        if value is not None:
            rows.append((name.replace("_", " "), value))
    dummy = denoising.get("dummy_scans")
    if dummy:
        rows.append(
            ("dummy scans", f"{dummy.get('Removed', 0)} removed ({dummy.get('Requested')}: "
             f"{dummy.get('Source')})")
        )  # fmt: skip
    dof = denoising.get("degrees_of_freedom")
    if dof:
        rows.append(("degrees of freedom", _dof_text(dof)))
    if dof and "WarnBelow" in dof:  # the App's thresholds
        rows.append(
            ("thresholds", f"warn below {dof.get('WarnBelow')}, refuse below "
             f"{dof.get('RefuseBelow')}; minimum {dof.get('MinTime') or 0:g} s of data")
        )  # fmt: skip
    return rows


def _dof_text(dof: Mapping) -> str:
    terms = [
        f"{dof['VolumesKept']} volumes kept",
        f"{dof['ConfoundRegressors']} confound regressors",
        f"{dof['TrendTerms']} mean/trend terms",
        f"{dof['FilterDimensions']} dimensions removed by the filter",
    ]
    estimate = "" if dof.get("Exact", True) else " (filter share estimated)"
    return f"{dof['Remaining']} = " + " - ".join(terms) + estimate


def build_run_report(
    *,
    title: str,
    mask: np.ndarray,
    mean_data: np.ndarray,
    parameters: Mapping,
    signals_before: np.ndarray | None = None,
    signals_after: np.ndarray | None = None,
    t_r: float | None = None,
    kept_volumes: np.ndarray | None = None,
    framewise_displacement: np.ndarray | None = None,
    fd_threshold: float | None = None,
    tsnr_before: np.ndarray | None = None,
    tsnr_after: np.ndarray | None = None,
    summary: Mapping | None = None,
    warnings: Sequence[str] = (),
    affine: np.ndarray | None = None,
    subtitle: str | None = None,
    denoising: Mapping | None = None,
) -> HTMLReport:
    """Build the report of one run.

    Parameters
    ----------
    title : str
        Report title (the BIDS App gives the output's name).
    mask : (x, y, z) bool array
        The mask used.
    mean_data : (x, y, z) array, or a list of its three planes
        Temporal mean of the input on the mask grid (the background of the mask
        view); its sagittal, coronal and axial planes through the mask's centroid
        are enough (see :func:`masker_wf.reports.figures.orthogonal_planes`).
    parameters : mapping
        Processing parameters, shown as a table.
    signals_before, signals_after : 2D arrays, optional
        Masked signals before and after cleaning, for the carpet plots (all mask voxels,
        or evenly spaced ones in mask order).
    t_r : float, optional
        Repetition time (s): every time axis is in seconds.
    kept_volumes : int array, optional
        Indices of the volumes kept after scrubbing.
    framewise_displacement : 1D array, optional
        FD per volume (mm), plotted with the censored volumes marked.
    fd_threshold : float, optional
        Scrubbing threshold (mm).
    tsnr_before, tsnr_after : (n_voxels,) arrays, optional
        tSNR of each mask voxel before and after cleaning.
    summary : mapping, optional
        Extra numbers shown after the computed ones.
    warnings : sequence of str
        Warnings raised during processing (shown first).
    affine : (4, 4) array, optional
        Voxel-to-world transform of the mask's grid: the views are drawn at the voxel size,
        with directions, slice positions and the carpet rows from superior to inferior.
    subtitle : str, optional
        A line under the title (the input file).
    denoising : mapping, optional
        The run's denoising record: ``strategy``, ``mask``, ``filter``, ``thresholds``
        (mapping), ``dummy_scans`` and ``degrees_of_freedom`` (as the App's sidecar holds
        them), ``confound_columns`` (names) and ``censored`` (volume -> reasons).
    """
    mask = np.asarray(mask, dtype=bool)
    n_voxels = int(mask.sum())
    numbers: list[tuple[str, object]] = [("voxels in mask", n_voxels)]
    n_input = None if signals_before is None else int(signals_before.shape[0])
    if n_input is not None:
        numbers.append(("volumes in input", n_input))
    n_kept = None
    if signals_after is not None:
        n_kept = int(signals_after.shape[0])
    elif kept_volumes is not None:
        n_kept = len(kept_volumes)
    if n_kept is not None:
        numbers.append(("volumes kept", n_kept))
        if t_r:
            numbers.append(("seconds kept", float(n_kept * t_r)))
    dof = (denoising or {}).get("degrees_of_freedom")
    if dof:
        numbers.append(("degrees of freedom left", dof["Remaining"]))
    if tsnr_before is not None:
        numbers.append(("median tSNR before", _median(tsnr_before)))
    if tsnr_after is not None:
        numbers.append(("median tSNR after", _median(tsnr_after)))
    if framewise_displacement is not None:
        fd = np.asarray(framewise_displacement, dtype=float)
        numbers.append(("mean FD (mm)", float(np.nanmean(fd)) if np.isfinite(fd).any() else None))
    numbers.extend((summary or {}).items())

    figure_list = [
        {
            "id": "mask",
            "heading": "Mask over the mean image",
            "uri": figures.mask_overlay_figure(mean_data, mask, affine),
            "alt": "mask outline over the mean image, three views",
            "caption": "Green: outline of the mask the signals were extracted in, over the "
            "temporal mean of the input; views in millimetres through the mask's centre.",
        }
    ]
    if framewise_displacement is not None:
        figure_list.append(
            {
                "id": "fd",
                "heading": "Framewise displacement",
                "uri": figures.framewise_displacement_figure(
                    np.asarray(framewise_displacement, dtype=float),
                    kept_volumes,
                    fd_threshold,
                    t_r,
                ),
                "alt": "framewise displacement",
                "caption": "fMRIPrep's framewise displacement; red dots: censored volumes"
                + ("; dashed: the scrubbing threshold." if fd_threshold is not None else "."),
            }
        )
    if signals_before is not None and signals_after is not None:
        columns = _sampled_columns(n_voxels, signals_before.shape[1])
        order = None if columns is None else figures.carpet_order(mask, affine, columns)
        figure_list.append(
            {
                "id": "carpet",
                "heading": "Carpet plots",
                "uri": figures.carpet_figure(
                    signals_before, signals_after, t_r, kept_volumes, order=order
                ),
                "alt": "carpet plots before and after cleaning",
                "caption": "One row per voxel (at most "
                f"{figures.MAX_CARPET_ROWS}), each centred and scaled to unit variance for "
                "display; after cleaning, censored volumes are blank.",
            }
        )
    if tsnr_before is not None and tsnr_after is not None:
        figure_list.append(
            {
                "id": "tsnr",
                "heading": "Temporal SNR",
                "uri": figures.tsnr_figure(
                    _to_volume(tsnr_before, mask), _to_volume(tsnr_after, mask), mask, affine
                ),
                "alt": "tSNR maps before and after cleaning",
                "caption": TSNR_AFTER_CAPTION
                + _tsnr_fell(tsnr_before, tsnr_after)
                + " Same views as the mask figure.",
            }
        )
    record = dict(denoising or {})
    times = None if not t_r else float(t_r)
    censored = [
        {"index": int(i), "time": None if times is None else i * times, "reasons": reasons}
        for i, reasons in sorted((record.get("censored") or {}).items())
    ]
    document = render(
        "run_report.html.j2",
        title=title,
        subtitle=subtitle,
        warnings=list(dict.fromkeys(str(m) for m in warnings)),
        summary=numbers,
        denoising=_denoising_rows(record) if record else [],
        confound_columns=list(record.get("confound_columns") or []),
        censored=censored,
        figures=figure_list,
        parameters=list(parameters.items()),
    )
    return HTMLReport(title=title, document=document)


def build_subject_report(
    subject: str,
    runs: Sequence[Mapping],
    methods: str,
    errors: Sequence[Mapping] = (),
) -> HTMLReport:
    """Build the page of one subject, linking each run's report and listing its warnings.

    Parameters
    ----------
    subject : str
        Subject label (without ``sub-``).
    runs : sequence of mappings
        One per run, with ``name``, ``report`` (relative link), optionally ``warnings``
        (list of str) and ``flags`` (list of str), and its numbers (the keys of
        :data:`RUN_COLUMNS`).
    methods : str
        The methods paragraph (plain text).
    errors : sequence of mappings
        Runs that failed, with ``name`` and ``reason``.
    """
    columns = [(key, label) for key, label in RUN_COLUMNS if any(key in run for run in runs)]
    rows = [
        {
            "name": run["name"],
            "report": run["report"],
            "warnings": list(run.get("warnings") or []),
            "flags": list(run.get("flags") or []),
            "numbers": {key: run.get(key) for key, _ in columns},
        }
        for run in runs
    ]
    document = render(
        "subject_report.html.j2",
        title=f"sub-{subject}",
        runs=rows,
        columns=columns,
        errors=list(errors),
        methods=methods,
    )
    return HTMLReport(title=f"sub-{subject}", document=document)


def _severity(flags) -> int:
    """0 for the most serious flag, ..., len(GROUP_FLAGS) for none."""
    ranks = [list(GROUP_FLAGS).index(f) for f in flags if f in GROUP_FLAGS]
    return min(ranks) if ranks else len(GROUP_FLAGS)


def build_group_report(
    rows: Sequence[Mapping],
    *,
    table_file: str,
    table_json: str,
    title: str = "masker-wf group summary",
) -> HTMLReport:
    """Build the group page: every run, flagged runs first, each linked to its report.

    Parameters
    ----------
    rows : sequence of mappings
        One per output set: ``subject``, ``run`` (a short name), ``desc`` (its output
        label, optional), ``report`` and ``subject_page``
        (relative links; ``report`` None when there is none), ``flags`` (names of
        :data:`GROUP_FLAGS`), ``status`` and ``reason`` (text), and its numbers (the keys of
        :data:`RUN_COLUMNS`).
    table_file, table_json : str
        Where the summary table and its description are (shown at the bottom).
    title : str
        Page title.
    """
    columns = [(key, label) for key, label in RUN_COLUMNS if any(key in row for row in rows)]
    prepared = []
    for row in rows:
        flags = [f for f in row.get("flags") or () if f]
        severity = _severity(flags)
        css = " ".join(
            ["flagged"] * bool(flags) + [f for f in flags if f in ("refused", "failed")]
        )
        prepared.append(
            {
                "subject": row.get("subject"),
                "run": row.get("run"),
                "status": row.get("status"),
                "reason": row.get("reason"),
                "cells": {key: row.get(key) for key, _ in columns},
                "report": row.get("report"),
                "subject_page": row.get("subject_page"),
                "flags": flags,
                "severity": severity,
                "css": css,
            }
        )
    prepared.sort(key=lambda r: (r["severity"], str(r["subject"]), str(r["run"])))
    counts = [
        {"name": name, "count": sum(name in r["flags"] for r in prepared), "meaning": meaning}
        for name, meaning in GROUP_FLAGS.items()
    ]
    medians = []
    for column, label in (
        ("dof", "median degrees of freedom"),
        ("seconds_kept", "median seconds kept"),
        ("tsnr_before", "median tSNR before"),
        ("tsnr_after", "median tSNR after"),
    ):
        values = [
            float(r["cells"][column])
            for r in prepared
            if isinstance(r["cells"].get(column), int | float)
            and np.isfinite(r["cells"][column])
            and "failed" not in r["flags"]
            and "refused" not in r["flags"]
        ]
        if values:
            medians.append((f"{label} (processed runs)", float(np.median(values))))
    document = render(
        "group_report.html.j2",
        title=title,
        n_runs=len(prepared),
        # Rows are output sets: one per run, or per run and strategy (desc) with several.
        n_descs=len({str(row.get("desc")) for row in rows if isinstance(row.get("desc"), str)}),
        n_subjects=len({r["subject"] for r in prepared}),
        n_flagged=sum(bool(r["flags"]) for r in prepared),
        flag_counts=counts,
        medians=medians,
        columns=columns,
        rows=prepared,
        table_file=table_file,
        table_json=table_json,
    )
    return HTMLReport(title=title, document=document)
