"""Figures for the reports, rendered with matplotlib (Agg) as embedded PNG data URIs.

Every function takes arrays already in memory and returns a ``data:image/png`` URI, so a
report is one self-contained HTML file that opens without a network. Brain views are drawn
in millimetres (the voxel size of the data, not square pixels), with the anatomical
direction at each edge and the slice position in world coordinates; time axes are in
seconds when the repetition time is known. Figures are kept small (few pixels, few voxels)
because a report must cost a small fraction of the processing it describes.
"""

from __future__ import annotations

import base64
import io
import sys
import threading
from dataclasses import dataclass

import numpy as np

from .._qc import orthogonal_planes, slice_centre

__all__ = [
    "carpet_figure",
    "carpet_order",
    "figure_to_data_uri",
    "framewise_displacement_figure",
    "mask_overlay_figure",
    "orthogonal_planes",
    "preload_matplotlib",
    "slice_centre",
    "tsnr_figure",
    "views",
]

# CSS pixels: a 9 inch figure fills the 1000 px wide page without being scaled.
_DPI = 96
MAX_CARPET_ROWS = 800
# Margins (figure fractions) shared by the time-series figures, so their time axes align.
_LEFT, _RIGHT = 0.08, 0.89
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_VIEW_OF_AXIS = {"L": "sagittal", "R": "sagittal", "A": "coronal", "P": "coronal"}
_VIEW_ORDER = ("sagittal", "coronal", "axial")


def _new_figure(figsize):
    """A matplotlib figure of ``figsize`` inches at the page's resolution, on an Agg canvas.

    Not pyplot's: the figure is drawn on the report's own thread and registered nowhere
    (pyplot keeps global state, and a manager per figure, for interactive use).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _colormap(name: str, bad: str):
    """Matplotlib's colormap ``name`` with ``bad`` (NaN) values drawn in that colour."""
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=bad)


_preload_thread = None


def preload_matplotlib() -> None:
    """Import matplotlib's figure and Agg canvas in a background thread, once per process.

    Importing them takes about half a second, as long as drawing a whole report: started
    when a transform starts, it overlaps with the processing (which spends its time in
    NumPy/SciPy code that releases the GIL) instead of adding to the report's cost.
    """
    global _preload_thread
    if _preload_thread is None and "matplotlib.backends.backend_agg" not in sys.modules:
        _preload_thread = threading.Thread(
            target=_new_figure, args=((1, 1),), name="masker-wf-matplotlib"
        )
        _preload_thread.daemon = True
        _preload_thread.start()


def figure_to_data_uri(figure) -> str:
    """Render a matplotlib figure to a base64 PNG data URI (drawn once, at its own size)."""
    buffer = io.BytesIO()
    # One draw at the figure's resolution: bbox_inches="tight" would draw every figure
    # twice (half of the report time), another dpi would lay it out again.
    # zlib level 1: PNGs a tenth larger than at the default level, 6 % less report time.
    figure.savefig(
        buffer, format="png", dpi=_DPI, facecolor="white", pil_kwargs={"compress_level": 1}
    )
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class View:
    """One of the three orthogonal views, as drawn (after ``np.rot90`` of the plane).

    Attributes
    ----------
    axis : int
        Voxel axis held fixed (the plane is ``volume`` indexed at the centre on it).
    name : str
        ``sagittal``, ``coronal`` or ``axial`` (from the direction of ``axis``).
    width_mm, height_mm : float
        Physical size of the drawn plane.
    voxel_mm : tuple of 2 floats
        Size of a pixel along the horizontal and vertical axes (mm).
    edges : dict
        Anatomical direction (``L``, ``R``, ``A``...) at the ``left``, ``right``, ``top``
        and ``bottom`` edges; empty without an affine.
    position : str
        Where the plane cuts, e.g. ``"x = -2 mm"`` (voxel index without an affine).
    """

    axis: int
    name: str
    width_mm: float
    height_mm: float
    voxel_mm: tuple
    edges: dict
    position: str


def views(shape, centre, affine=None) -> list[View]:
    """The three views of a volume of ``shape`` cut at voxel ``centre``, in display order.

    Parameters
    ----------
    shape : sequence of 3 int
    centre : sequence of 3 int
        Voxel where the planes cut.
    affine : (4, 4) array, optional
        Voxel-to-world (mm) transform; None draws square voxels without directions.
    """
    shape = tuple(int(n) for n in shape[:3])
    if affine is None:
        zooms, codes = (1.0, 1.0, 1.0), None
    else:
        affine = np.asarray(affine, dtype=float)
        zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        import nibabel.orientations as orientations

        codes = orientations.aff2axcodes(affine)
    result = []
    for axis in range(3):
        across, up = [a for a in range(3) if a != axis]  # after rot90: across ->, up ^
        if codes is None:
            name = ("sagittal", "coronal", "axial")[axis]
            edges, position = {}, f"voxel {centre[axis]} of axis {axis}"
        else:
            name = _VIEW_OF_AXIS.get(codes[axis], "axial")
            edges = {
                "right": codes[across],
                "left": _OPPOSITE[codes[across]],
                "top": codes[up],
                "bottom": _OPPOSITE[codes[up]],
            }
            world = affine @ np.array([*centre, 1.0])
            dominant = int(np.argmax(np.abs(affine[:3, axis])))
            position = f"{'xyz'[dominant]} = {world[dominant]:.0f} mm"
        result.append(
            View(
                axis=axis,
                name=name,
                width_mm=shape[across] * zooms[across],
                height_mm=shape[up] * zooms[up],
                voxel_mm=(zooms[across], zooms[up]),
                edges=edges,
                position=position,
            )
        )
    return sorted(result, key=lambda v: (_VIEW_ORDER.index(v.name), v.axis))


def _planes(volume, centre) -> list[np.ndarray]:
    """The three planes, in voxel-axis order (a list of planes is taken as it is)."""
    if isinstance(volume, (list, tuple)):
        return list(volume)
    return orthogonal_planes(volume, centre)


def _label_edges(axis, view: View, colour="white") -> None:
    style = {"color": colour, "fontsize": 9, "fontweight": "bold", "transform": axis.transAxes}
    for edge, (x, y, ha, va) in {
        "left": (0.02, 0.5, "left", "center"),
        "right": (0.98, 0.5, "right", "center"),
        "top": (0.5, 0.98, "center", "top"),
        "bottom": (0.5, 0.02, "center", "bottom"),
    }.items():
        if edge in view.edges:
            axis.text(x, y, view.edges[edge], ha=ha, va=va, **style)


def _row_of_views(the_views, height_in, width_in=9.0, top_in=0.3):
    """A figure with one axes per view, widths proportional to their size in mm."""
    widths = [v.width_mm for v in the_views]
    figure = _new_figure((width_in, height_in + top_in))
    grid = figure.add_gridspec(
        1, len(the_views), width_ratios=widths, left=0.01, right=0.99, bottom=0.01,
        top=1 - top_in / (height_in + top_in), wspace=0.04,
    )  # fmt: skip
    return figure, [figure.add_subplot(grid[0, i]) for i in range(len(the_views))]


def _height_for(the_views, width_in=9.0) -> float:
    """Inches of height that show the views side by side at one mm scale, in ``width_in``."""
    total_width = sum(v.width_mm for v in the_views)
    return width_in * 0.93 * max(v.height_mm for v in the_views) / total_width


# --------------------------------------------------------------------------- figures
def mask_overlay_figure(mean_data, mask: np.ndarray, affine=None, title: str = "") -> str:
    """Mask outline over the mean image in three orthogonal views, drawn in millimetres.

    Parameters
    ----------
    mean_data : (x, y, z) array, or its three planes
        Background image (usually the temporal mean of the BOLD run), or only its planes
        through :func:`slice_centre` of the mask (see :func:`orthogonal_planes`), all that
        is shown.
    mask : (x, y, z) bool array
        Mask on the same grid.
    affine : (4, 4) array, optional
        Voxel-to-world transform of the grid: voxel size, directions and slice positions.
    title : str
        Figure title.
    """
    mask = np.asarray(mask, dtype=bool)
    centre = slice_centre(mask)
    the_views = views(mask.shape, centre, affine)
    backgrounds = _planes(mean_data, centre)
    outlines = orthogonal_planes(mask, centre)
    shown = np.concatenate([np.asarray(plane, dtype=float).ravel() for plane in backgrounds])
    # The contrast is set by what is shown, so planes and whole volume look the same.
    finite = shown[np.isfinite(shown)]
    vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    figure, axes = _row_of_views(the_views, _height_for(the_views))
    for axis, view in zip(axes, the_views, strict=True):
        dx, dy = view.voxel_mm
        background = np.rot90(np.asarray(backgrounds[view.axis], dtype=float))
        axis.set_facecolor("black")
        axis.imshow(
            background,
            cmap="gray",
            vmin=0,
            vmax=vmax,
            interpolation="nearest",
            extent=(0, view.width_mm, 0, view.height_mm),
        )
        outline = np.rot90(np.pad(outlines[view.axis].astype(float), 1))
        if outline.any() and not outline[1:-1, 1:-1].all():
            # Padded by one empty voxel: the outline closes where the mask meets the edge.
            rows, cols = outline.shape
            x = (np.arange(cols) - 0.5) * dx
            y = (rows - 1.5 - np.arange(rows)) * dy
            axis.contour(x, y, outline, levels=[0.5], colors="#39d353", linewidths=1.3)
        axis.set_xlim(-0.6 * dx, view.width_mm + 0.6 * dx)
        axis.set_ylim(-0.6 * dy, view.height_mm + 0.6 * dy)
        axis.set_aspect("equal")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(f"{view.name}, {view.position}", fontsize=9)
        _label_edges(axis, view)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure_to_data_uri(figure)


def carpet_order(mask: np.ndarray, affine=None, columns=None) -> np.ndarray:
    """Order of signal columns from the most superior voxel to the most inferior.

    Rows of a carpet plot in this order show slice-wise effects (motion, slice timing) as
    bands. Without an affine, the last voxel axis counts as inferior-superior.

    Parameters
    ----------
    mask : (x, y, z) bool array
    affine : (4, 4) array, optional
    columns : int array, optional
        Mask voxels (indices in mask order) the signal columns hold; None: every voxel.
    """
    coordinates = np.argwhere(np.asarray(mask, dtype=bool)).astype(float)
    if columns is not None:
        coordinates = coordinates[np.asarray(columns)]
    if affine is None:
        height = coordinates[:, 2]
    else:
        affine = np.asarray(affine, dtype=float)
        height = coordinates @ affine[2, :3] + affine[2, 3]
    return np.argsort(-height, kind="stable")


def _carpet_rows(signals: np.ndarray, order, max_rows: int) -> np.ndarray:
    columns = np.arange(signals.shape[1]) if order is None else np.asarray(order)
    if columns.size > max_rows:
        columns = columns[np.linspace(0, columns.size - 1, max_rows).round().astype(int)]
    rows = np.asarray(signals[:, columns], dtype=np.float32).T
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
    order: np.ndarray | None = None,
) -> str:
    """Carpet plots (voxels x time) before and after cleaning, on one time axis.

    Each row is one voxel (at most ``max_rows``), centred and scaled to unit variance for
    display, in ``order`` (see :func:`carpet_order`); censored volumes are marked in red.

    Parameters
    ----------
    before : (n_volumes, n_voxels) array
        Masked signals before cleaning.
    after : (n_kept, n_voxels) array
        Cleaned signals (only the kept volumes; drawn at their times, censored volumes
        left blank).
    t_r : float, optional
        Repetition time in seconds: the time axis is in seconds, else in volumes.
    kept_volumes : int array, optional
        Indices of the volumes kept (``sample_mask``).
    max_rows : int
        Largest number of voxels drawn.
    order : int array, optional
        Column order of the rows (superior first); None keeps the mask order.
    """
    figure = _new_figure((9, 5.2))
    # Both carpets are one image on one axes (a gap between them): each axes costs as
    # much to draw as a whole small figure, and the carpets share their time axis anyway.
    axis = figure.add_axes((_LEFT, 0.1, _RIGHT - _LEFT, 0.83))
    unit = t_r if t_r else 1.0
    colormap = _colormap("gray", bad="#f6d5d3")
    n_volumes = before.shape[0]
    panels = []
    for signals, label in ((before, "before"), (after, "after")):
        rows = _carpet_rows(signals, order, max_rows)
        if label == "after" and kept_volumes is not None and rows.shape[1] < n_volumes:
            # Put the kept volumes back at their times, censored ones left blank, so that
            # both carpets share one time axis.
            spread = np.full((rows.shape[0], n_volumes), np.nan, dtype=rows.dtype)
            spread[:, np.asarray(kept_volumes)] = rows
            rows = spread
        panels.append(rows)
    height = panels[0].shape[0]
    gap = max(1, round(0.12 * height))
    carpet = np.vstack([panels[0], np.full((gap, n_volumes), np.nan), panels[1]])
    image = axis.imshow(
        carpet,
        aspect="auto",
        cmap=colormap,
        vmin=-2,
        vmax=2,
        interpolation="nearest",
        extent=(0, n_volumes * unit, carpet.shape[0], 0),
    )
    axis.axhspan(height, height + gap, color="white")
    ends = ("S", "I") if order is not None else ("first", "last")
    starts = (0, height + gap)
    axis.set_yticks([starts[0], height, starts[1], carpet.shape[0]], [*ends, *ends], fontsize=8)
    for start, label in zip(starts, ("before", "after"), strict=True):
        axis.text(
            -0.055, 1 - (start + height / 2) / carpet.shape[0], f"{label} cleaning\nvoxels",
            transform=axis.transAxes, rotation=90, ha="center", va="center", fontsize=9,
        )  # fmt: skip
    if kept_volumes is not None:
        censored = np.setdiff1d(np.arange(n_volumes), kept_volumes)
        for volume in censored:
            # Over the carpet before cleaning only (the top panel).
            axis.axvspan(
                volume * unit, (volume + 1) * unit, ymin=1 - height / carpet.shape[0],
                color="#e5534b", alpha=0.35,
            )  # fmt: skip
    order_text = "superior to inferior" if order is not None else "mask order"
    axis.set_title(
        f"voxels {order_text}, each scaled to unit variance; red: censored volumes",
        fontsize=9,
    )
    axis.set_xlabel("time (s)" if t_r else "volume", fontsize=9)
    axis.tick_params(axis="x", labelsize=8)
    colorbar_axes = figure.add_axes((_RIGHT + 0.015, 0.1, 0.015, 0.83))
    colorbar = figure.colorbar(image, cax=colorbar_axes)
    colorbar.set_label("signal (z, per voxel)", fontsize=8)
    colorbar.ax.tick_params(labelsize=8)
    return figure_to_data_uri(figure)


def framewise_displacement_figure(
    fd: np.ndarray,
    kept_volumes: np.ndarray | None = None,
    threshold: float | None = None,
    t_r: float | None = None,
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
    t_r : float, optional
        Repetition time (s): the time axis is in seconds, as the carpet plots'.
    """
    figure = _new_figure((9, 2.2))
    axis = figure.subplots()
    figure.subplots_adjust(left=_LEFT, right=_RIGHT, top=0.86, bottom=0.24)
    unit = t_r if t_r else 1.0
    n_volumes = len(fd)
    # Each volume at the middle of its interval, as the carpet plots draw it.
    times = (np.arange(n_volumes) + 0.5) * unit
    axis.plot(times, fd, color="#1f6feb", linewidth=1)
    if kept_volumes is not None:
        censored = np.setdiff1d(np.arange(n_volumes), kept_volumes)
        axis.scatter(times[censored], np.nan_to_num(fd[censored]), color="#e5534b", s=14, zorder=3)
    if threshold is not None:
        axis.axhline(threshold, color="#e5534b", linestyle="--", linewidth=1)
        axis.text(
            n_volumes * unit, threshold, f" {threshold:g} mm", color="#e5534b", va="center",
            fontsize=8,
        )  # fmt: skip
    axis.set_xlim(0, n_volumes * unit)
    axis.set_xlabel("time (s)" if t_r else "volume", fontsize=9)
    axis.set_ylabel("FD (mm)", fontsize=9)
    axis.tick_params(labelsize=8)
    axis.set_title("framewise displacement (red: censored volumes)", fontsize=9)
    return figure_to_data_uri(figure)


def _square_pixels(plane: np.ndarray, voxel_mm) -> np.ndarray:
    """The drawn plane (rotated) resampled by nearest neighbour to square pixels."""
    rotated = np.rot90(plane)
    dx, dy = voxel_mm
    pixel = min(dx, dy)
    rows = np.floor((np.arange(round(rotated.shape[0] * dy / pixel)) + 0.5) * pixel / dy)
    cols = np.floor((np.arange(round(rotated.shape[1] * dx / pixel)) + 0.5) * pixel / dx)
    return rotated[np.ix_(rows.astype(int), cols.astype(int))]


def _mosaic_row(planes, gap: int = 2) -> np.ndarray:
    """Planes side by side, bottom-aligned, separated by ``gap`` blank (NaN) columns."""
    height = max(plane.shape[0] for plane in planes)
    padded = [
        np.pad(
            plane.astype(np.float32),
            ((height - plane.shape[0], 0), (0, gap)),
            constant_values=np.nan,
        )
        for plane in planes
    ]
    return np.hstack(padded)[:, :-gap]


def tsnr_figure(
    tsnr_before: np.ndarray, tsnr_after: np.ndarray, mask: np.ndarray, affine=None
) -> str:
    """tSNR maps before and after cleaning, the mask figure's three views, one colour scale.

    Parameters
    ----------
    tsnr_before, tsnr_after : (x, y, z) arrays
        Temporal SNR maps (0 outside the mask).
    mask : (x, y, z) bool array
        The mask, used to centre the views.
    affine : (4, 4) array, optional
        Voxel-to-world transform (voxel size and orientation of the views).
    """
    centre = slice_centre(mask)
    the_views = views(mask.shape, centre, affine)
    values = np.concatenate([tsnr_before[mask], tsnr_after[mask]])
    values = values[np.isfinite(values)]
    vmax = float(np.percentile(values, 99)) if values.size else 1.0
    # One image of the six views (a mosaic) drawn on one axes: six axes cost most of
    # the report's time. Pixels are resampled square, so the views keep their mm shape.
    rows = []
    for volume in (tsnr_before, tsnr_after):
        planes = orthogonal_planes(volume, centre)
        rows.append(_mosaic_row([_square_pixels(planes[v.axis], v.voxel_mm) for v in the_views]))
    width = max(row.shape[1] for row in rows)
    rows = [
        np.pad(row, ((0, 0), (0, width - row.shape[1])), constant_values=np.nan) for row in rows
    ]
    gap = np.full((max(3, rows[0].shape[0] // 8), width), np.nan)
    mosaic = np.vstack([rows[0], gap, rows[1]])
    left, image_width = 0.3, 7.3  # inches: row labels, images; the rest holds the colour bar
    height = image_width * mosaic.shape[0] / mosaic.shape[1]
    figure = _new_figure((9, height + 0.1))
    axis = figure.add_axes((left / 9, 0.0, image_width / 9, height / (height + 0.1)))
    colormap = _colormap("inferno", bad="white")
    image = axis.imshow(mosaic, cmap=colormap, vmin=0, vmax=vmax, interpolation="nearest")
    axis.set_axis_off()
    for top, label in ((0, "before"), (rows[0].shape[0] + gap.shape[0], "after")):
        middle = top + rows[0].shape[0] / 2
        axis.text(-1, middle, label, rotation=90, ha="right", va="center", fontsize=9)
    colorbar_axes = figure.add_axes((0.88, 0.1, 0.02, 0.8))
    figure.colorbar(image, cax=colorbar_axes).set_label("tSNR", fontsize=9)
    return figure_to_data_uri(figure)
