"""Figures for the reports, rendered with matplotlib (Agg) as embedded PNG data URIs.

Every function takes arrays already in memory and returns a ``data:image/png``
URI, so a report is one self-contained HTML file that opens without a network.
Figures are kept small (few pixels, few voxels) because a report must cost a
small fraction of the processing it describes.
"""

from __future__ import annotations

import base64
import io
import sys
import threading

import numpy as np

from .._qc import orthogonal_planes, slice_centre

__all__ = [
    "carpet_figure",
    "figure_to_data_uri",
    "framewise_displacement_figure",
    "mask_overlay_figure",
    "orthogonal_planes",
    "preload_matplotlib",
    "slice_centre",
    "tsnr_figure",
]

_DPI = 72
MAX_CARPET_ROWS = 800


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


_preload_thread = None


def preload_matplotlib() -> None:
    """Import matplotlib in a background thread, once per process.

    Importing pyplot takes about half a second, as long as drawing a whole report:
    started when a transform starts, it overlaps with the processing (which spends
    its time in NumPy/SciPy code that releases the GIL) instead of adding to the
    report's cost.
    """
    global _preload_thread
    if _preload_thread is None and "matplotlib.pyplot" not in sys.modules:
        _preload_thread = threading.Thread(target=_pyplot, name="masker-wf-matplotlib")
        _preload_thread.daemon = True
        _preload_thread.start()


def figure_to_data_uri(figure) -> str:
    """Render a matplotlib figure to a base64 PNG data URI and close it."""
    plt = _pyplot()
    buffer = io.BytesIO()
    # One draw: bbox_inches="tight" would draw every figure twice (half of the report time).
    figure.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _orthogonal_slices(volume, centre) -> list[np.ndarray]:
    # Rotate so that anterior/superior point up, as radiologists expect to see them.
    if isinstance(volume, (list, tuple)):
        planes = volume
    else:
        planes = orthogonal_planes(volume, centre)
    return [np.rot90(plane) for plane in planes]


def mask_overlay_figure(mean_data: np.ndarray, mask: np.ndarray, title: str = "") -> str:
    """Mask outline over the mean image in three orthogonal views.

    Parameters
    ----------
    mean_data : (x, y, z) array, or its three planes
        Background image (usually the temporal mean of the BOLD run), or only its
        sagittal, coronal and axial planes through :func:`slice_centre` of the mask
        (see :func:`orthogonal_planes`), all that is shown.
    mask : (x, y, z) bool array
        Mask on the same grid.
    title : str
        Figure title.
    """
    plt = _pyplot()
    centre = slice_centre(mask)
    figure, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    backgrounds = _orthogonal_slices(mean_data, centre)
    shown = np.concatenate([plane.ravel() for plane in backgrounds])
    # The contrast is set by what is shown, so planes and whole volume look the same.
    finite = shown[np.isfinite(shown)]
    vmax = np.percentile(finite, 99.5) if finite.size else 1.0
    names = ("sagittal", "coronal", "axial")
    for axis, background, outline, name in zip(
        axes,
        backgrounds,
        _orthogonal_slices(mask.astype(float), centre),
        names,
        strict=True,
    ):
        axis.imshow(background, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        if outline.any() and not outline.all():
            axis.contour(outline, levels=[0.5], colors="#39d353", linewidths=1.2)
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure_to_data_uri(figure)


def _carpet_rows(signals: np.ndarray, max_rows: int) -> np.ndarray:
    n_voxels = signals.shape[1]
    step = max(1, int(np.ceil(n_voxels / max_rows)))
    rows = np.asarray(signals[:, ::step], dtype=np.float32).T
    rows = rows - rows.mean(axis=1, keepdims=True)
    scale = rows.std(axis=1, keepdims=True)
    scale[scale == 0] = 1
    return rows / scale


def carpet_figure(
    before: np.ndarray,
    after: np.ndarray,
    t_r: float | None = None,
    kept_volumes: np.ndarray | None = None,
    max_rows: int = MAX_CARPET_ROWS,
) -> str:
    """Carpet plots (voxels x time) before and after cleaning.

    Each row is one voxel (an even subsample of at most ``max_rows``), centred
    and scaled for display. Censored volumes are marked under the 'before' plot.

    Parameters
    ----------
    before : (n_volumes, n_voxels) array
        Masked signals before cleaning.
    after : (n_kept, n_voxels) array
        Cleaned signals (only the kept volumes; drawn at their times, censored
        volumes left blank).
    t_r : float, optional
        Repetition time in seconds, for the time axis.
    kept_volumes : int array, optional
        Indices of the volumes kept (``sample_mask``).
    max_rows : int
        Largest number of voxels drawn.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=False)
    unit = t_r if t_r else 1.0
    colormap = plt.get_cmap("gray").with_extremes(bad="#f6d5d3")
    n_volumes = before.shape[0]
    for axis, signals, label in ((axes[0], before, "before"), (axes[1], after, "after")):
        rows = _carpet_rows(signals, max_rows)
        if label == "after" and kept_volumes is not None and rows.shape[1] < n_volumes:
            # Put the kept volumes back at their times, censored ones left blank, so that
            # both carpets share one time axis.
            spread = np.full((rows.shape[0], n_volumes), np.nan, dtype=rows.dtype)
            spread[:, np.asarray(kept_volumes)] = rows
            rows = spread
        axis.imshow(
            rows,
            aspect="auto",
            cmap=colormap,
            vmin=-2,
            vmax=2,
            interpolation="nearest",
            extent=(0, rows.shape[1] * unit, rows.shape[0], 0),
        )
        axis.set_ylabel(f"voxels ({label})", fontsize=9)
        axis.set_yticks([])
    if kept_volumes is not None:
        censored = np.setdiff1d(np.arange(before.shape[0]), kept_volumes)
        for volume in censored:
            axes[0].axvspan(volume * unit, (volume + 1) * unit, color="#e5534b", alpha=0.35)
    axes[0].set_title("carpet plot (red: censored volumes)", fontsize=9)
    axes[1].set_xlabel("time (s)" if t_r else "volume", fontsize=9)
    return figure_to_data_uri(figure)


def framewise_displacement_figure(
    fd: np.ndarray, kept_volumes: np.ndarray | None = None, threshold: float | None = None
) -> str:
    """Framewise displacement over time with the censored volumes marked.

    Parameters
    ----------
    fd : (n_volumes,) array
        Framewise displacement in mm (NaN for the first volume is allowed).
    kept_volumes : int array, optional
        Indices of the kept volumes.
    threshold : float, optional
        Scrubbing threshold in mm, drawn as a dashed line.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 2))
    volumes = np.arange(len(fd))
    axis.plot(volumes, fd, color="#1f6feb", linewidth=1)
    if kept_volumes is not None:
        censored = np.setdiff1d(volumes, kept_volumes)
        axis.scatter(censored, np.nan_to_num(fd[censored]), color="#e5534b", s=12, zorder=3)
    if threshold is not None:
        axis.axhline(threshold, color="#e5534b", linestyle="--", linewidth=1)
    axis.set_xlabel("volume", fontsize=9)
    axis.set_ylabel("FD (mm)", fontsize=9)
    axis.set_title("framewise displacement (red: censored volumes)", fontsize=9)
    return figure_to_data_uri(figure)


def _mosaic_row(planes, gap: int = 2) -> np.ndarray:
    """Planes side by side, bottom-aligned, separated by ``gap`` blank (NaN) columns."""
    height = max(plane.shape[0] for plane in planes)
    padded = []
    for plane in planes:
        plane = np.pad(
            plane.astype(np.float32),
            ((height - plane.shape[0], 0), (0, gap)),
            constant_values=np.nan,
        )
        padded.append(plane)
    return np.hstack(padded)[:, :-gap]


def tsnr_figure(tsnr_before: np.ndarray, tsnr_after: np.ndarray, mask: np.ndarray) -> str:
    """tSNR maps before and after cleaning, three orthogonal views each, same colour scale.

    Parameters
    ----------
    tsnr_before, tsnr_after : (x, y, z) arrays
        Temporal SNR maps (0 outside the mask).
    mask : (x, y, z) bool array
        The mask, used to centre the views.
    """
    plt = _pyplot()
    centre = slice_centre(mask)
    values = np.concatenate([tsnr_before[mask], tsnr_after[mask]])
    values = values[np.isfinite(values)]
    vmax = float(np.percentile(values, 99)) if values.size else 1.0
    # One image of the six views (a mosaic) drawn on one axes: six axes cost most of
    # the report's time.
    rows = [
        _mosaic_row(_orthogonal_slices(volume, centre)) for volume in (tsnr_before, tsnr_after)
    ]
    width = max(row.shape[1] for row in rows)
    rows = [
        np.pad(row, ((0, 0), (0, width - row.shape[1])), constant_values=np.nan) for row in rows
    ]
    gap = np.full((max(2, rows[0].shape[0] // 12), width), np.nan)
    mosaic = np.vstack([rows[0], gap, rows[1]])
    figure, axis = plt.subplots(figsize=(9, 9 * mosaic.shape[0] / mosaic.shape[1] + 0.3))
    colormap = plt.get_cmap("inferno").with_extremes(bad="white")
    image = axis.imshow(mosaic, cmap=colormap, vmin=0, vmax=vmax, interpolation="nearest")
    axis.set_axis_off()
    for top, label in ((0, "before"), (rows[0].shape[0] + gap.shape[0], "after")):
        axis.text(0, top, f"tSNR {label} cleaning", va="top", fontsize=9, color="black")
    figure.colorbar(image, ax=axis, shrink=0.7, label="tSNR")
    return figure_to_data_uri(figure)
