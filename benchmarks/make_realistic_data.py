"""Generate a realistic fMRI run for the benchmarks.

MNI152NLin2009cAsym 2 mm grid (97 x 115 x 97), 300 volumes, float32, TR 2 s:
a brain-shaped baseline taken from the MNI152 T1 template, voxelwise AR(1)
noise, slow drifts, a global signal and motion-related signals that the 26
confounds (24 motion parameters + WM + CSF) partly explain. Around the brain, a
10 mm shell of non-brain tissue (skull and scalp: a fainter, noisy signal);
outside that head, zero in every volume, as in fMRIPrep's outputs in MNI space,
so that the ``.nii.gz`` compresses like a real one (``--compress``; nibabel's
gzip level 1, as fMRIPrep writes it). Also writes the brain mask, an
fMRIPrep-style confounds TSV and a sample mask with 10 % of the volumes
censored.

``--voxel-size 3`` gives the same field of view on a 3 mm grid (64 x 76 x 64),
the mid-size runs of ``bench_throughput.py``.

The MNI template is taken from an installed nilearn (the benchmark needs
nilearn anyway, as the reference it is compared with)::

    python benchmarks/make_realistic_data.py /tmp/masker-bench-gz --compress
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
#: Thickness of the non-brain tissue around the brain (mm); zero beyond it.
HEAD_MARGIN_MM = 10.0


def grid(voxel_size: float = 2.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the MNI field of view of :data:`SHAPE` at ``voxel_size`` mm."""
    extent = np.array(SHAPE) * 2.0
    shape = tuple(int(n) for n in np.floor(extent / voxel_size).astype(int))
    affine = AFFINE.copy()
    affine[:3, :3] = np.diag([voxel_size] * 3)
    return shape, affine


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


def _template_on_grid(shape=SHAPE, affine=AFFINE) -> np.ndarray:
    """The 1 mm MNI T1 template, resampled (linear) onto the benchmark grid."""
    template = nib.load(_template_path())
    voxel_to_template = np.linalg.inv(template.affine) @ affine
    return ndimage.affine_transform(
        np.asarray(template.dataobj, dtype=np.float32),
        voxel_to_template[:3, :3],
        offset=voxel_to_template[:3, 3],
        output_shape=shape,
        order=1,
    )


def _head(mask: np.ndarray, voxel_size: float) -> np.ndarray:
    """The brain plus a shell of :data:`HEAD_MARGIN_MM` around it (a ball dilation)."""
    radius = round(HEAD_MARGIN_MM / voxel_size)
    ball = (np.indices((2 * radius + 1,) * 3) - radius) ** 2
    ball = ball.sum(axis=0) <= radius**2
    return ndimage.binary_dilation(mask, structure=ball)


def _motion_parameters(n_volumes: int, rng: np.random.Generator) -> np.ndarray:
    """Six smooth random-walk motion traces (3 translations in mm, 3 rotations in rad)."""
    steps = rng.normal(0, 1, size=(n_volumes, 6))
    traces = ndimage.gaussian_filter1d(np.cumsum(steps, axis=0), 3, axis=0)
    traces -= traces[0]
    scale = np.array([0.05, 0.05, 0.08, 0.0008, 0.0008, 0.0006])
    return traces * scale


def make_run(
    out_dir: Path,
    n_volumes: int = 300,
    seed: int = 0,
    compress: bool = False,
    voxel_size: float = 2.0,
) -> dict:
    """Write the benchmark run into ``out_dir`` and return the paths written.

    Parameters
    ----------
    out_dir : pathlib.Path
        Created if needed.
    n_volumes : int, default=300
    seed : int, default=0
        Seed of every random draw (distinct seeds give distinct runs).
    compress : bool, default=False
        Write ``bold.nii.gz`` (nibabel, gzip level 1) instead of ``bold.nii``.
    voxel_size : float, default=2.0
        Voxel size (mm) of the MNI grid: 2 gives 97 x 115 x 97, 3 gives 64 x 76 x 64.
    """
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape, affine = grid(voxel_size)
    template = _template_on_grid(shape, affine)
    mask = ndimage.binary_fill_holes(template > 0.2 * template.max())
    head = _head(mask, voxel_size)
    baseline = (1000.0 + 4.0 * template).astype(np.float32)
    # Skull and scalp: a fainter, uneven signal; air around the head is exactly zero.
    tissue = ndimage.gaussian_filter(rng.random(shape).astype(np.float32), 2.0)
    scalp = head & ~mask
    baseline[scalp] = 200.0 + 400.0 * tissue[scalp]
    baseline[~head] = 0.0

    motion = _motion_parameters(n_volumes, rng)
    derivatives = np.vstack([np.zeros((1, 6)), np.diff(motion, axis=0)])
    motion24 = np.hstack([motion, derivatives, motion**2, derivatives**2])
    time = np.arange(n_volumes) * T_R
    global_signal = np.sin(2 * np.pi * 0.03 * time) + 0.5 * np.sin(2 * np.pi * 0.05 * time)
    white_matter = global_signal + rng.normal(0, 0.3, n_volumes)
    csf = np.sin(2 * np.pi * 0.1 * time) + rng.normal(0, 0.3, n_volumes)

    # Each voxel mixes a few shared time courses with its own AR(1) noise.
    n_vox = int(np.prod(shape))
    bold = np.empty((*shape, n_volumes), dtype=np.float32)
    flat = bold.reshape(n_vox, n_volumes)
    base_flat = baseline.reshape(n_vox)
    mask_flat = mask.reshape(n_vox)
    head_flat = head.reshape(n_vox)
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
        # Non-brain tissue: 3 % noise around its baseline; zero (air) outside the head.
        block[outside] = base_flat[start:stop][outside, None] * (1 + 0.03 * noise[outside])
        block[~head_flat[start:stop]] = 0.0
        flat[start:stop] = block

    suffix = ".nii.gz" if compress else ".nii"
    bold_path = out_dir / f"bold{suffix}"
    header = nib.Nifti1Header()
    header.set_xyzt_units("mm", "sec")
    img = nib.Nifti1Image(bold, affine, header)
    img.header.set_zooms((voxel_size,) * 3 + (T_R,))
    img.to_filename(bold_path)
    mask_path = out_dir / "mask.nii.gz"
    nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(mask_path)

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
        "n_voxels_in_head": int(head.sum()),
        "shape": [*shape, n_volumes],
        "bytes": bold_path.stat().st_size,
        "uncompressed_bytes": int(bold.nbytes + 352),
        "compression_ratio": round((bold.nbytes + 352) / bold_path.stat().st_size, 2),
        "seed": seed,
    }
    (out_dir / "run.json").write_text(json.dumps(paths, indent=2))
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-volumes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compress", action="store_true", help="write bold.nii.gz")
    parser.add_argument("--voxel-size", type=float, default=2.0, help="mm (default 2)")
    args = parser.parse_args(argv)
    run = make_run(args.out_dir, args.n_volumes, args.seed, args.compress, args.voxel_size)
    print(json.dumps(run, indent=2))


if __name__ == "__main__":
    main()
