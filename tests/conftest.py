"""Shared fixtures: small real BOLD shipped inside installed packages, and synthetic data."""

from pathlib import Path

import nibabel as nib
import nibabel.testing
import nipype
import numpy as np
import pytest

NIBABEL_DATA = Path(nibabel.testing.data_path)
NIPYPE_DATA = Path(nipype.__file__).parent / "testing" / "data"


@pytest.fixture(scope="session")
def functional_path():
    """nibabel's real EPI: 17x21x3x20 int16 with scaling, 4x4x8 mm, TR 2 s."""
    return NIBABEL_DATA / "functional.nii"


@pytest.fixture(scope="session")
def ds003_path():
    """nipype's real motion-corrected BOLD: 16x16x9x20 float32, TR 2 s."""
    return NIPYPE_DATA / "ds003_sub-01_mc.nii.gz"


@pytest.fixture(scope="session")
def ds003_mask_path():
    """Brain mask on the grid of ``ds003_path`` (int16, 1065 voxels)."""
    return NIPYPE_DATA / "ds003_sub-01_mc_brainmask.nii.gz"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def make_synthetic_bold(shape=(12, 13, 11), n_volumes=60, dtype=np.float32, seed=0):
    """A 4D image with a bright ellipsoid 'brain' on a zero background, drift and noise.

    Returns ``(bold_img, mask_img)`` where the mask is the ellipsoid.
    """
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    radius = np.array(shape) / 2.8
    inside = (((grid - centre[:, None, None, None]) / radius[:, None, None, None]) ** 2).sum(0) < 1
    time = np.arange(n_volumes)
    signal = 100 + 5 * np.sin(time / 4.0) + 0.05 * time
    data = np.zeros((*shape, n_volumes), dtype=np.float64)
    data[inside] = signal + rng.normal(0, 3, size=(inside.sum(), n_volumes))
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    affine[:3, 3] = [-18, -20, -15]
    bold = nib.Nifti1Image(data.astype(dtype), affine)
    bold.header.set_zooms((3.0, 3.0, 3.5, 2.0))
    mask = nib.Nifti1Image(inside.astype(np.uint8), affine)
    return bold, mask


@pytest.fixture
def synthetic_bold():
    return make_synthetic_bold()


@pytest.fixture
def nilearn_fixed_scrubbing():
    """Patch nilearn's scrubbing bug for the duration of a test (see tests/nilearn_oracle.py)."""
    from nilearn_oracle import fixed_nilearn_scrubbing

    with fixed_nilearn_scrubbing():
        yield
