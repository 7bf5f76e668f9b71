"""Quality-control numbers that the reports show, computed without matplotlib.

The pipeline gathers these while it processes a run (``report=`` of
``filter_and_extract``) and :mod:`masker_wf.reports` draws them; keeping the
arithmetic here lets the processing code depend on the core only, and gives
one definition of each number (tSNR in particular) for both.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "column_stats",
    "mean_planes",
    "orthogonal_planes",
    "slice_centre",
    "temporal_snr",
    "tsnr",
]

# Columns per chunk in column_stats: a few MB of float32 signals stay in cache.
_COLUMN_CHUNK = 2048


def slice_centre(mask: np.ndarray) -> tuple[int, int, int]:
    """Voxel where the three orthogonal views of a report cut: the mask's centroid.

    Parameters
    ----------
    mask : (x, y, z) bool array

    Returns
    -------
    tuple of 3 int
        The rounded centroid of the mask, or the grid centre for an empty mask.
    """
    if mask is not None and mask.any():
        return tuple(int(np.rint(c)) for c in np.argwhere(mask).mean(axis=0))
    return tuple(s // 2 for s in mask.shape)


def orthogonal_planes(volume, centre) -> list[np.ndarray]:
    """The sagittal, coronal and axial planes of ``volume`` through ``centre``.

    ``volume`` may be 4D (an array or a memory map): the planes then keep the time
    axis, so that a temporal mean of the three planes costs three planes, not the run.

    Parameters
    ----------
    volume : (x, y, z) or (x, y, z, t) array
    centre : sequence of 3 int

    Returns
    -------
    list of 3 arrays
        Views (not copies) of ``volume``.
    """
    x, y, z = centre
    return [volume[x, :, :], volume[:, y, :], volume[:, :, z]]


def mean_planes(data, mask: np.ndarray) -> list[np.ndarray]:
    """Temporal mean of the three planes of ``data`` through the mask's centroid.

    All a report shows of the mean image, for the cost of three planes rather than
    a second pass over the run.

    Parameters
    ----------
    data : (x, y, z, t) array
    mask : (x, y, z) bool array

    Returns
    -------
    list of 3 float32 arrays
        Sagittal, coronal and axial mean planes (means accumulated in float64).
    """
    return [
        plane.mean(axis=-1, dtype=np.float64).astype(np.float32)
        for plane in orthogonal_planes(data, slice_centre(mask))
    ]


def column_stats(signals: np.ndarray, rows=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation over time of each column.

    Computed by cache-sized column chunks in the signals' precision (means
    accumulated in float64): for the report only, so cheap beats exact.

    Parameters
    ----------
    signals : (n_volumes, n_voxels) array
    rows : int array, optional
        Restrict the statistics to these time points (the volumes kept).

    Returns
    -------
    mean, std : (n_voxels,) float64 arrays
    """
    n_rows, n_columns = signals.shape
    if rows is not None:
        n_rows = len(rows)
    mean = np.empty(n_columns)
    std = np.empty(n_columns)
    for start in range(0, n_columns, _COLUMN_CHUNK):
        stop = min(start + _COLUMN_CHUNK, n_columns)
        chunk = signals[:, start:stop] if rows is None else signals[rows, start:stop]
        chunk_mean = chunk.mean(axis=0, dtype=np.float64)
        centred = chunk - chunk_mean.astype(chunk.dtype)
        mean[start:stop] = chunk_mean
        std[start:stop] = np.sqrt(np.einsum("ij,ij->j", centred, centred) / max(n_rows, 1))
    return mean, std


def tsnr(mean, std) -> np.ndarray:
    """Temporal SNR ``|mean| / std`` from per-voxel statistics.

    Parameters
    ----------
    mean, std : (n_voxels,) arrays
        Temporal mean and standard deviation (for instance the noise left after cleaning).

    Returns
    -------
    (n_voxels,) float32 array, 0 where the standard deviation is 0.
    """
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    out = np.zeros_like(mean)
    np.divide(np.abs(mean), std, out=out, where=std > 0)
    return out.astype(np.float32)


def temporal_snr(signals: np.ndarray, noise_std: np.ndarray | None = None) -> np.ndarray:
    """Temporal SNR of each column of ``signals``: ``|mean| / std`` over time.

    Parameters
    ----------
    signals : (n_volumes, n_voxels) array
        Signals in their original units (not standardized).
    noise_std : (n_voxels,) array, optional
        Standard deviation to divide by instead of that of ``signals`` (for
        instance the residual noise after cleaning).

    Returns
    -------
    (n_voxels,) float32 array, 0 where the standard deviation is 0.
    """
    signals = np.asarray(signals)
    if signals.dtype.kind != "f":
        # column_stats centres in the signals' dtype: integers would truncate the mean.
        signals = signals.astype(np.float64)
    mean, std = column_stats(signals)
    return tsnr(mean, std if noise_std is None else noise_std)
