"""nilearn 0.11.1 as the test oracle, with its one known scrubbing bug patched.

nilearn 0.11.1 interpolates censored volumes before Butterworth filtering with
``volumes[~sample_mask, :] = ...`` where ``sample_mask`` is an *integer* index
array: ``~`` is then a bitwise not (``-(i + 1)``), so it overwrites the mirror
images of the kept volumes instead of the censored ones. masker-wf replaces
exactly the censored volumes; parity tests compare against nilearn with this
one line corrected.
"""

from contextlib import contextmanager

import numpy as np
from scipy.interpolate import CubicSpline


def interpolate_volumes_fixed(volumes, sample_mask, t_r, extrapolate):
    """nilearn's ``_interpolate_volumes`` with a boolean mask of censored volumes."""
    frame_times = np.arange(volumes.shape[0]) * t_r
    spline = CubicSpline(
        frame_times[sample_mask], volumes[sample_mask, :], extrapolate=extrapolate
    )
    censored = np.ones(volumes.shape[0], dtype=bool)
    censored[sample_mask] = False
    volumes[censored, :] = spline(frame_times)[censored, :]
    return volumes


@contextmanager
def fixed_nilearn_scrubbing():
    """Context in which nilearn interpolates censored volumes correctly."""
    import nilearn.signal

    original = nilearn.signal._interpolate_volumes
    nilearn.signal._interpolate_volumes = interpolate_volumes_fixed
    try:
        yield
    finally:
        nilearn.signal._interpolate_volumes = original
