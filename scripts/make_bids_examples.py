#!/usr/bin/env python
"""Generate ``bids_examples/ds-masker``: a tiny raw BIDS dataset plus fMRIPrep-style derivatives.

The BOLD runs are derived from nipype's real motion-corrected EPI
(``nipype/testing/data/ds003_sub-01_mc.nii.gz``, 16x16x9x20, TR 2 s, 12.5x12.5x16 mm): the 20
volumes are played forward then backward (40 volumes), and each subject/run gets its own
perturbation, all seeded so the output is byte-for-byte reproducible:

- a simulated head-motion trace (smooth random walk plus one or two sudden jerks), whose
  first-order effect on the image (``-grad(mean) . displacement``) is added to the data;
- a global fluctuation, a slow drift, thermal noise, and a bright first volume
  (non-steady state, as real scanners produce before T1 equilibrium).

The fMRIPrep-style confounds TSV/JSON are computed from the data with fMRIPrep's real column
names and conventions: 24 motion parameters (``n/a`` in the first row of derivatives),
``framewise_displacement`` (Power), ``dvars``/``std_dvars``, ``rmsd``, ``global_signal``,
``csf``, ``white_matter`` and ``csf_wm`` with expansions, ``tcompcor``, ``t_comp_cor_NN`` and
``a_comp_cor_NN`` (CSF, WM and combined masks told apart by the JSON ``Mask`` field, 50 %
variance retained, ``dropped_N`` entries), ``cosineNN`` (128 s cut-off),
``non_steady_state_outlierNN`` and ``motion_outlierNN`` (FD > 0.5 mm or std DVARS > 1.5).

These are simulated outputs: ``GeneratedBy`` says so; they were not produced by fMRIPrep.

Usage::

    python scripts/make_bids_examples.py [OUT_DIR]   # default: bids_examples/ next to scripts/
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

DATASET = "ds-masker"
TASK = "rhymes"
SPACE = "MNI152NLin2009cAsym"
TR = 2.0
SUBJECTS = ("01", "02")
RUNS = ("01", "02")
BIDS_VERSION = "1.10.0"
FD_OUTLIER = 0.5  # fMRIPrep's defaults for motion_outlierNN
DVARS_OUTLIER = 1.5
HEAD_RADIUS = 50.0  # mm, Power's FD convention


def _source_files():
    import nipype

    data = Path(nipype.__file__).parent / "testing" / "data"
    return data / "ds003_sub-01_mc.nii.gz", data / "ds003_sub-01_mc_brainmask.nii.gz"


def _affine(shape, zooms):
    # ds003 has qform/sform codes 0; give the grid a centred RAS affine so viewers agree.
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -(np.asarray(shape[:3]) - 1) / 2 * np.asarray(zooms)
    return affine


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _write_nifti(path: Path, data, affine, *, code: int, dtype, units_tr=TR) -> None:
    """Write a .nii.gz deterministically (fixed gzip mtime, so reruns are byte-identical)."""
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    img.header.set_xyzt_units("mm", "sec")
    if img.ndim == 4:
        img.header.set_zooms((*img.header.get_zooms()[:3], units_tr))
    buffer = io.BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": buffer, "header": buffer})
    img.to_file_map(file_map)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buffer.getvalue())


def _motion_trace(rng, n_volumes):
    """Six rigid-body parameters (mm, rad): a smooth random walk plus sudden jerks."""
    steps = np.empty((n_volumes, 6))
    steps[:, :3] = rng.normal(0, 0.012, size=(n_volumes, 3))
    steps[:, 3:] = rng.normal(0, 0.00015, size=(n_volumes, 3))
    steps[0] = 0
    params = np.cumsum(steps, axis=0)
    n_jerks = int(rng.integers(1, 3))
    for onset in rng.choice(np.arange(8, n_volumes - 8), size=n_jerks, replace=False):
        jump = np.concatenate([rng.normal(0, 0.35, 3), rng.normal(0, 0.004, 3)])
        # The head moves for two volumes then mostly comes back, as in a real jerk.
        params[onset : onset + 2] += jump
        params[onset + 2 :] += 0.2 * jump
    return params


def _displacement_effect(mean_img, zooms, params):
    """First-order intensity change caused by a small rigid displacement of the head."""
    gradient = np.stack(np.gradient(mean_img, *zooms), axis=-1)  # per mm
    grid = np.indices(mean_img.shape).astype(float)
    centre = (np.asarray(mean_img.shape) - 1) / 2
    position = np.stack(
        [(grid[i] - centre[i]) * zooms[i] for i in range(3)], axis=-1
    )  # mm from the centre
    effect = np.empty((*mean_img.shape, len(params)))
    for t, (tx, ty, tz, rx, ry, rz) in enumerate(params):
        displacement = np.array([tx, ty, tz]) + np.cross(np.array([rx, ry, rz]), position)
        effect[..., t] = -(gradient * displacement).sum(axis=-1)
    return effect


def _expand(frame: pd.DataFrame, names) -> pd.DataFrame:
    """Add fMRIPrep's ``_derivative1``, ``_power2`` and ``_derivative1_power2`` columns."""
    out = {}
    for name in names:
        values = frame[name].to_numpy()
        derivative = np.concatenate([[np.nan], np.diff(values)])
        out[name] = values
        out[f"{name}_derivative1"] = derivative
        out[f"{name}_power2"] = values**2
        out[f"{name}_derivative1_power2"] = derivative**2
    return pd.DataFrame(out)


def _cosine_basis(n_volumes, t_r, period_cut=128.0):
    """DCT-II high-pass basis as fMRIPrep writes it (``cosineNN``), without the constant."""
    order = int(np.floor(2 * n_volumes * t_r / period_cut))
    time = np.arange(n_volumes)
    return (
        np.stack(
            [
                np.sqrt(2.0 / n_volumes) * np.cos(np.pi / n_volumes * (time + 0.5) * k)
                for k in range(1, order + 1)
            ],
            axis=1,
        )
        if order
        else np.empty((n_volumes, 0))
    )


def _compcor(series, high_pass, skip, variance=0.5):
    """Principal components of high-passed, variance-normalised voxel time series.

    Returns (components padded with zeros over the skipped volumes, metadata list). Components
    are retained until ``variance`` of the variance is explained, as fMRIPrep does by default.
    """
    kept = series[:, skip:].T  # (time, voxels)
    design = np.column_stack([np.ones(kept.shape[0]), high_pass[skip:]])
    beta, *_ = np.linalg.lstsq(design, kept, rcond=None)
    residual = kept - design @ beta
    std = residual.std(axis=0)
    residual = residual[:, std > 0] / std[std > 0]
    u, s, _ = np.linalg.svd(residual, full_matrices=False)
    explained = s**2 / np.sum(s**2)
    cumulative = np.cumsum(explained)
    n_retained = int(np.searchsorted(cumulative, variance) + 1)
    components = np.zeros((series.shape[1], len(s)))
    components[skip:] = u
    meta = [
        {
            "CumulativeVarianceExplained": float(cumulative[i]),
            "Retained": bool(i < n_retained),
            "SingularValue": float(s[i]),
            "VarianceExplained": float(explained[i]),
        }
        for i in range(min(len(s), n_retained + 3))
    ]
    return components[:, :n_retained], meta


def _dvars(series):
    """DVARS and standardized DVARS (Nichols' AR(1)-based normalisation), first row NaN."""
    diff = np.diff(series, axis=1)
    dvars = np.sqrt(np.mean(diff**2, axis=0))
    centred = series - series.mean(axis=1, keepdims=True)
    ar1 = np.sum(centred[:, 1:] * centred[:, :-1], axis=1) / np.maximum(
        np.sum(centred**2, axis=1), 1e-12
    )
    q75, q25 = np.percentile(series, [75, 25], axis=1)
    robust_sd = (q75 - q25) / 1.349
    expected = np.mean(np.sqrt(2 * (1 - ar1)) * robust_sd)
    nan = np.array([np.nan])
    return np.concatenate([nan, dvars]), np.concatenate([nan, dvars / expected])


def _confounds(data, brain, params, t_r):
    """The fMRIPrep-style confounds table and its JSON metadata for one run."""
    n_volumes = data.shape[-1]
    series = data[brain].astype(np.float64)  # (voxels, time)
    mean_img = data.mean(axis=-1)
    brain_values = mean_img[brain]
    # EPI tissue masks from intensity: CSF is bright on T2*, WM is the darker interior.
    eroded = brain.copy()
    for axis in range(2):  # erode in-plane only: the slab has just 9 slices
        eroded &= np.roll(brain, 1, axis) & np.roll(brain, -1, axis)
    csf = brain & (mean_img >= np.percentile(brain_values, 92))
    wm = eroded & ~csf & (mean_img <= np.percentile(mean_img[eroded], 40))
    combined = csf | wm
    n_skip = 1  # the non-steady-state volume is excluded from CompCor, as in fMRIPrep

    table = pd.DataFrame(
        {
            "global_signal": series.mean(axis=0),
            "csf": data[csf].mean(axis=0),
            "white_matter": data[wm].mean(axis=0),
        }
    )
    expanded = _expand(table, ["global_signal", "csf", "white_matter"])
    expanded["csf_wm"] = data[combined].mean(axis=0)
    variance = series[:, n_skip:].var(axis=1)
    tcompcor_mask = variance >= np.percentile(variance, 98)
    expanded["tcompcor"] = series[tcompcor_mask].mean(axis=0)
    dvars, std_dvars = _dvars(series)
    expanded["std_dvars"] = std_dvars
    expanded["dvars"] = dvars
    delta = np.abs(np.diff(params, axis=0))
    fd = delta[:, :3].sum(axis=1) + HEAD_RADIUS * delta[:, 3:].sum(axis=1)
    expanded["framewise_displacement"] = np.concatenate([[np.nan], fd])
    expanded["rmsd"] = np.concatenate(
        [[np.nan], np.sqrt(np.mean(np.diff(params[:, :3], axis=0) ** 2, axis=1) + 0.0)]
    )

    cosines = _cosine_basis(n_volumes, t_r)
    meta: dict[str, dict] = {}
    t_components, t_meta = _compcor(series[tcompcor_mask], cosines, n_skip)
    for i in range(t_components.shape[1]):
        expanded[f"t_comp_cor_{i:02d}"] = t_components[:, i]
    for i, entry in enumerate(t_meta):
        name = f"t_comp_cor_{i:02d}" if entry["Retained"] else f"dropped_{i}"
        meta[name] = {"Method": "tCompCor", **entry}
    index, dropped = 0, len(t_meta)
    for mask_name, mask in (("CSF", csf), ("WM", wm), ("combined", combined)):
        components, a_meta = _compcor(data[mask], cosines, n_skip)
        for i, entry in enumerate(a_meta):
            if entry["Retained"]:
                name = f"a_comp_cor_{index:02d}"
                expanded[name] = components[:, i]
                index += 1
            else:
                name = f"dropped_{dropped}"
                dropped += 1
            meta[name] = {"Mask": mask_name, "Method": "aCompCor", **entry}
    for i in range(cosines.shape[1]):
        expanded[f"cosine{i:02d}"] = cosines[:, i]
    expanded["non_steady_state_outlier00"] = (np.arange(n_volumes) < n_skip).astype(float)
    motion = pd.DataFrame(
        params, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    )
    expanded = pd.concat([expanded, _expand(motion, motion.columns)], axis=1)
    outliers = np.flatnonzero(
        (np.nan_to_num(expanded["framewise_displacement"]) > FD_OUTLIER)
        | (np.nan_to_num(expanded["std_dvars"]) > DVARS_OUTLIER)
    )
    for i, volume in enumerate(outliers):
        column = np.zeros(n_volumes)
        column[volume] = 1
        expanded[f"motion_outlier{i:02d}"] = column

    for name in ("global_signal", "csf", "white_matter", "csf_wm", "tcompcor"):
        meta[name] = {"Method": "Mean"}
    for i in range(cosines.shape[1]):
        meta[f"cosine{i:02d}"] = {"Method": "DCT-II", "CutoffPeriod": 128}
    return expanded, dict(sorted(meta.items())), csf | wm


def _tsv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.10g").encode()


def build(out_root: Path) -> Path:
    """Write the dataset under ``out_root/ds-masker`` (replacing it) and return its path."""
    bold_path, mask_path = _source_files()
    source = nib.load(bold_path)
    base = np.asarray(source.dataobj, dtype=np.float64)
    brain = np.asarray(nib.load(mask_path).dataobj) > 0
    base = np.concatenate([base, base[..., ::-1]], axis=-1)  # 40 volumes, continuous in time
    n_volumes = base.shape[-1]
    zooms = tuple(float(z) for z in source.header.get_zooms()[:3])
    affine = _affine(base.shape, zooms)
    mean_img = base.mean(axis=-1)

    root = out_root / DATASET
    if root.exists():
        shutil.rmtree(root)
    fmriprep = root / "derivatives" / "fmriprep"

    _write_json(
        root / "dataset_description.json",
        {
            "Name": "masker-wf example: two subjects, rhyme judgment task",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["masker-wf developers"],
            "HowToAcknowledge": "Derived from nipype's ds003_sub-01_mc.nii.gz test image.",
            "GeneratedBy": [
                {
                    "Name": "masker-wf make_bids_examples.py",
                    "Description": "Simulated from nipype's ds003 test BOLD with seeded motion,"
                    " drift and noise; not real acquisitions.",
                }
            ],
        },
    )
    (root / "README").write_text(
        "Tiny BIDS dataset for masker-wf's examples and tests.\n\n"
        "Generated by scripts/make_bids_examples.py from nipype's real motion-corrected test\n"
        "EPI (ds003_sub-01_mc.nii.gz) with per-run simulated motion, drift and noise.\n"
        "derivatives/fmriprep holds fMRIPrep-style outputs (preprocessed BOLD, brain mask,\n"
        "confounds) computed by the same script; they were not produced by fMRIPrep.\n",
        encoding="utf-8",
    )
    (root / "CHANGES").write_text("1.0.0 2026-11-25\n  - Initial release.\n", encoding="utf-8")
    (root / "participants.tsv").write_text(
        "participant_id\tage\tsex\n"
        + "".join(
            f"sub-{s}\t{age}\t{sex}\n"
            for s, age, sex in zip(SUBJECTS, (27, 31), ("F", "M"), strict=True)
        ),
        encoding="utf-8",
    )
    _write_json(
        root / "participants.json",
        {
            "age": {"Description": "age of the participant", "Units": "year"},
            "sex": {
                "Description": "sex of the participant",
                "Levels": {"F": "female", "M": "male"},
            },
        },
    )
    _write_json(
        root / f"task-{TASK}_bold.json",
        {
            "TaskName": TASK,
            "RepetitionTime": TR,
            "TaskDescription": "Rhyme judgment on visually presented word pairs (simulated).",
            "MagneticFieldStrength": 3,
            "EchoTime": 0.03,
        },
    )

    _write_json(
        fmriprep / "dataset_description.json",
        {
            "Name": "fMRIPrep-style derivatives of the masker-wf example",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "masker-wf make_bids_examples.py",
                    "Version": "1.0.0",
                    "Description": "Simulated fMRIPrep-style outputs (same file names, columns"
                    " and sidecars as fMRIPrep 23.x); not produced by fMRIPrep.",
                }
            ],
            "DatasetLinks": {"raw": "../.."},
            "SourceDatasets": [{"URL": "../.."}],
        },
    )
    (fmriprep / "README").write_text(
        "fMRIPrep-style derivatives simulated by masker-wf's scripts/make_bids_examples.py.\n",
        encoding="utf-8",
    )
    # fMRIPrep's confounds use the BEP012 "timeseries" suffix the validator does not know yet.
    (fmriprep / ".bidsignore").write_text("*_timeseries.tsv\n*_timeseries.json\n")

    for s_index, subject in enumerate(SUBJECTS):
        gain = 1.0 - 0.07 * s_index
        for r_index, run in enumerate(RUNS):
            rng = np.random.default_rng(20261125 + 100 * s_index + r_index)
            params = _motion_trace(rng, n_volumes)
            motion_effect = _displacement_effect(mean_img, zooms, params)
            global_fluct = np.zeros(n_volumes)
            for t in range(1, n_volumes):
                global_fluct[t] = 0.6 * global_fluct[t - 1] + rng.normal(0, 0.004)
            time = np.arange(n_volumes) * TR
            drift = 0.01 * time / time[-1] + 0.004 * np.sin(2 * np.pi * time / 70.0 + r_index)
            data = gain * base * (1 + global_fluct + drift) + motion_effect
            noise_sd = np.where(brain, 0.008 * mean_img, 2.0)[..., None]
            data += rng.normal(0, 1, size=data.shape) * noise_sd
            data[..., 0] += np.where(brain, 0.5 * gain * base[..., 0], 0.0)  # non-steady state
            data = np.clip(data, 0, None)

            entities = f"sub-{subject}_task-{TASK}_run-{run}"
            func = root / f"sub-{subject}" / "func"
            # Raw data: the uncorrected head motion adds a larger displacement effect; int16.
            raw = np.clip(np.round(data + 2.0 * motion_effect), 0, 32767)
            _write_nifti(func / f"{entities}_bold.nii.gz", raw, affine, code=1, dtype=np.int16)
            # Alternating 20 s blocks of word pairs and fixation (the design of ds003's task).
            onsets = np.arange(0, n_volumes * TR, 20.0)
            (func / f"{entities}_events.tsv").write_text(
                "onset\tduration\ttrial_type\n"
                + "".join(
                    f"{onset:.1f}\t20.0\t{'rhyme' if i % 2 == 0 else 'fixation'}\n"
                    for i, onset in enumerate(onsets)
                ),
                encoding="utf-8",
            )

            dfunc = fmriprep / f"sub-{subject}" / "func"
            preproc = f"{entities}_space-{SPACE}_desc-preproc_bold"
            _write_nifti(dfunc / f"{preproc}.nii.gz", data, affine, code=4, dtype=np.float32)
            raw_uri = f"bids:raw:sub-{subject}/func/{entities}_bold.nii.gz"
            _write_json(
                dfunc / f"{preproc}.json",
                {
                    "RepetitionTime": TR,
                    "TaskName": TASK,
                    "SkullStripped": False,
                    "StartTime": 0.0,
                    "Sources": [raw_uri],
                },
            )
            mask_name = f"{entities}_space-{SPACE}_desc-brain_mask"
            _write_nifti(dfunc / f"{mask_name}.nii.gz", brain, affine, code=4, dtype=np.uint8)
            _write_json(dfunc / f"{mask_name}.json", {"Type": "Brain", "Sources": [raw_uri]})
            table, meta, _ = _confounds(data, brain, params, TR)
            (dfunc / f"{entities}_desc-confounds_timeseries.tsv").write_bytes(_tsv_bytes(table))
            _write_json(dfunc / f"{entities}_desc-confounds_timeseries.json", meta)
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out_dir",
        nargs="?",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "bids_examples",
        help="directory that receives ds-masker/ (default: the repository's bids_examples/)",
    )
    args = parser.parse_args(argv)
    root = build(args.out_dir)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"wrote {root} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
