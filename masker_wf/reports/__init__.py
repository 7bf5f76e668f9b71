"""HTML reports for masker-wf: per run (``NiftiMasker.generate_report``, the BIDS App's
per-run page) and per subject (links every run, carries the methods paragraph).

The package depends on the core only (:mod:`masker_wf._qc` computes the numbers shown,
:mod:`masker_wf.reports.methods` writes the methods paragraph); matplotlib is imported
when a figure is drawn."""

from __future__ import annotations

import html as _html
from collections.abc import Mapping, Sequence

import numpy as np

from .._qc import temporal_snr
from . import figures
from .html import HTMLReport, figure, section, table, warnings_block
from .methods import methods_paragraph

__all__ = [
    "HTMLReport",
    "build_run_report",
    "build_subject_report",
    "methods_paragraph",
    "temporal_snr",
]


def _to_volume(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    volume = np.zeros(mask.shape, dtype=np.float32)
    volume[mask] = values
    return volume


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
) -> HTMLReport:
    """Build the report of one run.

    Parameters
    ----------
    title : str
        Report title (e.g. the BOLD file name).
    mask : (x, y, z) bool array
        The mask used.
    mean_data : (x, y, z) array, or a list of its three planes
        Temporal mean of the input on the mask grid (the background of the mask
        view); its sagittal, coronal and axial planes through the mask's centroid
        are enough (see :func:`masker_wf.reports.figures.orthogonal_planes`).
    parameters : mapping
        Processing parameters, shown as a table.
    signals_before, signals_after : 2D arrays, optional
        Masked signals before and after cleaning, for the carpet plots.
    t_r : float, optional
        Repetition time (s).
    kept_volumes : int array, optional
        Indices of the volumes kept after scrubbing.
    framewise_displacement : 1D array, optional
        FD per volume (mm), plotted with the censored volumes marked.
    fd_threshold : float, optional
        Scrubbing threshold (mm).
    tsnr_before, tsnr_after : (n_voxels,) arrays, optional
        tSNR of each mask voxel before and after cleaning.
    summary : mapping, optional
        Extra numbers shown first (the number of voxels and volumes is added).
    warnings : sequence of str
        Warnings raised during processing.
    """
    mask = np.asarray(mask, dtype=bool)
    numbers = {"voxels in mask": int(mask.sum())}
    if signals_before is not None:
        numbers["volumes in input"] = int(signals_before.shape[0])
    if signals_after is not None:
        numbers["volumes kept"] = int(signals_after.shape[0])
    elif kept_volumes is not None:
        numbers["volumes kept"] = len(kept_volumes)
    if tsnr_before is not None:
        numbers["median tSNR before"] = float(np.median(tsnr_before))
    if tsnr_after is not None:
        numbers["median tSNR after"] = float(np.median(tsnr_after))
    numbers.update(summary or {})

    parts = [f"<h1>{_html.escape(title)}</h1>", section("Summary", table(numbers), "summary")]
    mask_view = figures.mask_overlay_figure(mean_data, mask)
    parts.append(section("Mask over the mean image", figure(mask_view, "mask outline"), "mask"))
    if signals_before is not None and signals_after is not None:
        carpet = figures.carpet_figure(signals_before, signals_after, t_r, kept_volumes)
        parts.append(section("Carpet plots", figure(carpet, "carpet plots"), "carpet"))
    if framewise_displacement is not None:
        fd_view = figures.framewise_displacement_figure(
            np.asarray(framewise_displacement, dtype=float), kept_volumes, fd_threshold
        )
        parts.append(
            section("Framewise displacement", figure(fd_view, "framewise displacement"), "fd")
        )
    if tsnr_before is not None and tsnr_after is not None:
        tsnr_view = figures.tsnr_figure(
            _to_volume(tsnr_before, mask), _to_volume(tsnr_after, mask), mask
        )
        parts.append(section("Temporal SNR", figure(tsnr_view, "tSNR maps"), "tsnr"))
    parts.append(section("Parameters", table(parameters, ("parameter", "value")), "parameters"))
    parts.append(section("Warnings", warnings_block(warnings), "warnings"))
    return HTMLReport("".join(parts), title=title)


def build_subject_report(
    subject: str,
    runs: Sequence[Mapping],
    methods: str,
    errors: Sequence[Mapping] = (),
) -> HTMLReport:
    """Build the page of one subject, linking each run's report.

    Parameters
    ----------
    subject : str
        Subject label (without ``sub-``).
    runs : sequence of mappings
        One per run, with ``name``, ``report`` (relative link) and any summary numbers.
    methods : str
        The methods paragraph (plain text).
    errors : sequence of mappings
        Runs that failed, with ``name`` and ``reason``.
    """
    rows = []
    for run in runs:
        link = f"<a href='{_html.escape(str(run['report']))}'>{_html.escape(run['name'])}</a>"
        cells = "".join(
            f"<td>{_html.escape(str(value))}</td>"
            for key, value in run.items()
            if key not in ("name", "report")
        )
        rows.append(f"<tr><td>{link}</td>{cells}</tr>")
    header = ""
    if runs:
        keys = [k for k in runs[0] if k not in ("name", "report")]
        header = "<tr><th>run</th>" + "".join(f"<th>{_html.escape(k)}</th>" for k in keys)
        header += "</tr>"
    parts = [
        f"<h1>sub-{_html.escape(subject)}</h1>",
        section("Runs", f"<table>{header}{''.join(rows)}</table>", "runs"),
    ]
    if errors:
        parts.append(
            section(
                "Failed runs",
                warnings_block(f"{e['name']}: {e['reason']}" for e in errors),
                "errors",
            )
        )
    parts.append(
        section("Methods", f"<div class='methods'><p>{_html.escape(methods)}</p></div>", "methods")
    )
    return HTMLReport("".join(parts), title=f"sub-{subject}")
