"""Generate a realistic fMRI run for the benchmarks.

MNI152NLin2009cAsym 2 mm grid (97 x 115 x 97), 300 volumes, float32, TR 2 s:
a brain-shaped baseline taken from the MNI152 T1 template, voxelwise AR(1)
noise, slow drifts, a global signal and motion-related signals that the 26
confounds (24 motion parameters + WM + CSF) partly explain. Also writes the
brain mask, an fMRIPrep-style confounds TSV and a sample mask with 10 % of the
volumes censored.

The MNI template is taken from an installed nilearn (the benchmark needs
nilearn anyway, as the reference it is compared with)::

    python benchmarks/make_realistic_data.py /tmp/masker-bench
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

SHAPE = (97, 115, 97)
AFFINE = np.array([[2.0, 0, 0, -96.0], [0, 2.0, 0, -132.0], [0, 0, 2.0, -78.0], [0, 0, 0, 1.0]])
T_R = 2.0


def _template_path() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise SystemExit("nilearn is needed to build the benchmark data: pip install nilearn")
    path = (
        Path(spec.origin).parent
        / "datasets"
        / "data"
        / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    if not path.exists():
        raise SystemExit(f"MNI152 template not found at {path}")
    return path


def _template_on_grid() -> np.ndarray:
    """The 1 mm MNI T1 template, resampled (linear) onto the 2 mm benchmark grid."""
    template = nib.load(_template_path())
    voxel_to_template = np.linalg.inv(template.affine) @ AFFINE
    return ndimage.affine_transform(
        np.asarray(template.dataobj, dtype=np.float32),
        voxel_to_template[:3, :3],
        offset=voxel_to_template[:3, 3],
        output_shape=SHAPE,
        order=1,
    )


def _motion_parameters(n_volumes: int, rng: np.random.Generator) -> np.ndarray:
    """Six smooth random-walk motion traces (3 translations in mm, 3 rotations in rad)."""
    steps = rng.normal(0, 1, size=(n_volumes, 6))
    traces = ndimage.gaussian_filter1d(np.cumsum(steps, axis=0), 3, axis=0)
    traces -= traces[0]
    scale = np.array([0.05, 0.05, 0.08, 0.0008, 0.0008, 0.0006])
    return traces * scale


def make_run(out_dir: Path, n_volumes: int = 300, seed: int = 0, compress: bool = False) -> dict:
    """Write the benchmark run into ``out_dir`` and return the paths written."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    template = _template_on_grid()
    mask = ndimage.binary_fill_holes(template > 0.2 * template.max())
    baseline = (1000.0 + 4.0 * template).astype(np.float32)
    baseline[~mask] = (20.0 * rng.random(int((~mask).sum()))).astype(np.float32)

    motion = _motion_parameters(n_volumes, rng)
    derivatives = np.vstack([np.zeros((1, 6)), np.diff(motion, axis=0)])
    motion24 = np.hstack([motion, derivatives, motion**2, derivatives**2])
    time = np.arange(n_volumes) * T_R
    global_signal = np.sin(2 * np.pi * 0.03 * time) + 0.5 * np.sin(2 * np.pi * 0.05 * time)
    white_matter = global_signal + rng.normal(0, 0.3, n_volumes)
    csf = np.sin(2 * np.pi * 0.1 * time) + rng.normal(0, 0.3, n_volumes)

    # Each voxel mixes a few shared time courses with its own AR(1) noise.
    n_vox = int(np.prod(SHAPE))
    bold = np.empty((*SHAPE, n_volumes), dtype=np.float32)
    flat = bold.reshape(n_vox, n_volumes)
    base_flat = baseline.reshape(n_vox)
    mask_flat = mask.reshape(n_vox)
    shared = np.vstack(
        [global_signal, motion[:, 0] * 20, motion[:, 4] * 2000, csf, time / time[-1]]
    )
    chunk = 50_000
    for start in range(0, n_vox, chunk):
        stop = min(start + chunk, n_vox)
        size = stop - start
        weights = rng.normal(0, 1, size=(size, shared.shape[0])).astype(np.float32)
        noise = rng.normal(0, 1, size=(size, n_volumes)).astype(np.float32)
        noise = ndimage.gaussian_filter1d(noise, 0.8, axis=1)
        block = base_flat[start:stop, None] * (1 + 0.01 * (weights @ shared + 2 * noise))
        outside = ~mask_flat[start:stop]
        block[outside] = base_flat[start:stop][outside, None] + noise[outside]
        flat[start:stop] = block

    suffix = ".nii.gz" if compress else ".nii"
    bold_path = out_dir / f"bold{suffix}"
    header = nib.Nifti1Header()
    header.set_xyzt_units("mm", "sec")
    img = nib.Nifti1Image(bold, AFFINE, header)
    img.header.set_zooms((2.0, 2.0, 2.0, T_R))
    img.to_filename(bold_path)
    mask_path = out_dir / "mask.nii.gz"
    nib.Nifti1Image(mask.astype(np.uint8), AFFINE).to_filename(mask_path)

    names = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    columns = (
        names
        + [f"{n}_derivative1" for n in names]
        + [f"{n}_power2" for n in names]
        + [f"{n}_derivative1_power2" for n in names]
    )
    confounds = pd.DataFrame(motion24, columns=columns)
    confounds["white_matter"] = white_matter
    confounds["csf"] = csf
    confounds_path = out_dir / "confounds.tsv"
    confounds.to_csv(confounds_path, sep="\t", index=False)

    n_censored = n_volumes // 10
    censored = np.sort(rng.choice(np.arange(1, n_volumes - 1), size=n_censored, replace=False))
    sample_mask = np.setdiff1d(np.arange(n_volumes), censored)
    sample_mask_path = out_dir / "sample_mask.npy"
    np.save(sample_mask_path, sample_mask)

    paths = {
        "bold": str(bold_path),
        "mask": str(mask_path),
        "confounds": str(confounds_path),
        "sample_mask": str(sample_mask_path),
        "t_r": T_R,
        "n_voxels_in_mask": int(mask.sum()),
        "shape": [*SHAPE, n_volumes],
    }
    (out_dir / "run.json").write_text(json.dumps(paths, indent=2))
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-volumes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compress", action="store_true", help="write bold.nii.gz")
    args = parser.parse_args(argv)
    print(json.dumps(make_run(args.out_dir, args.n_volumes, args.seed, args.compress), indent=2))


if __name__ == "__main__":
    main()
