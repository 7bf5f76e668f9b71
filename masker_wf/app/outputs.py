"""The derivatives of one run: what each file holds, the report, the provenance record.

Paths come from :mod:`masker_wf.bids.naming`; files are written atomically
(:mod:`masker_wf.bids.derivatives`). The provenance record is written last, so that a
record on disk always describes outputs that are complete.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from .. import _spec
from ..bids import derivatives as deriv
from ..bids import naming
from ..bids.provenance import host, now, software_versions

__all__ = [
    "OUTPUT_FILES",
    "PROVENANCE_APP_OPTIONS",
    "PROVENANCE_PARAMETERS",
    "confound_series",
    "jsonable",
    "masker_parameters",
    "output_dirs",
    "output_options",
    "output_res",
    "provenance_parameters",
    "provenance_record",
    "remove_stale",
    "report_file",
    "run_path",
    "sidecars",
    "summary_of",
    "t_r_of",
    "tables",
    "up_to_date_record",
    "write_derivatives",
    "write_report",
]

#: The masker parameters recorded in sidecars and provenance (the spec's provenance face).
PROVENANCE_PARAMETERS = tuple(p.name for p in _spec.for_face("provenance"))
#: The App's own options recorded in the provenance ``Parameters``, after the masker's.
PROVENANCE_APP_OPTIONS = ("denoise_strategy", "confounds", "confounds_file", "desc")


def jsonable(value):
    """``value`` as plain JSON types (numpy scalars and arrays, paths, tuples converted)."""
    return json.loads(json.dumps(value, default=deriv._json_default))


def t_r_of(run, t_r_option, n_header) -> tuple[float | None, list[str]]:
    """The run's repetition time (option, else sidecar, else header) and notes about it."""
    notes = []
    t_r = t_r_option
    if t_r is None:
        t_r = run.metadata.get("RepetitionTime")
    if t_r is None and n_header:
        t_r = float(n_header)
        notes.append(f"RepetitionTime missing from the sidecar; using the header's {t_r} s.")
    if (
        t_r is not None
        and n_header
        and not math.isclose(float(n_header), float(t_r), rel_tol=1e-3)
    ):
        notes.append(
            f"RepetitionTime {t_r} s differs from the NIfTI header's pixdim[4] {n_header} s; "
            f"using {t_r} s."
        )
    return (None if t_r is None else float(t_r)), notes


def output_res(in_header, cleaned_file) -> str | None:
    """``res`` label of the output grid when it differs from the input's, else None."""
    import nibabel as nib

    out = nib.load(cleaned_file)
    same = tuple(out.shape[:3]) == tuple(in_header.get_data_shape()[:3]) and np.allclose(
        out.affine, in_header.get_best_affine(), atol=1e-4
    )
    return None if same else naming.resolution_label(out.header.get_zooms()[:3])


def run_path(out_dir, run, desc, suffix, extension, res) -> Path:
    """Absolute path of one output of ``run``."""
    relative = naming.derivative_path(
        run.bold_file, desc, suffix, extension, res, dataset_root=run.dataset_root
    )
    return Path(out_dir) / relative


def report_file(out_dir, run, desc, res) -> Path:
    """Absolute path of the run's HTML report."""
    return run_path(out_dir, run, desc, "report", ".html", res)


def _uris(links, *paths) -> list[str]:
    return [deriv.bids_uri(p, links) for p in paths if p is not None]


def _outlier_table(selection, n_volumes: int, fd, dvars) -> str:
    censored = selection.censored if selection is not None else {}
    lines = ["framewise_displacement\tstd_dvars\tcensored\treason"]
    for i in range(n_volumes):
        values = []
        for series in (fd, dvars):
            value = None if series is None else series[i]
            values.append("n/a" if value is None or not np.isfinite(value) else f"{value:.6g}")
        reason = "+".join(censored.get(i, [])) or "n/a"
        lines.append(f"{values[0]}\t{values[1]}\t{int(i in censored)}\t{reason}")
    return "\n".join(lines) + "\n"


def confound_series(run, n_volumes: int):
    """Framewise displacement and std DVARS of the run (None when unavailable)."""
    if run.confounds_file is None:
        return None, None
    import pandas as pd

    try:
        table = pd.read_csv(run.confounds_file, sep="\t", na_values=["n/a"])
    except Exception:
        return None, None
    if len(table) != n_volumes:
        return None, None
    fd = (
        table["framewise_displacement"].to_numpy(float)
        if "framewise_displacement" in table
        else None
    )
    dvars = table["std_dvars"].to_numpy(float) if "std_dvars" in table else None
    return fd, dvars


def _resolution(run, zooms, input_zooms=None) -> str | None:
    if input_zooms is not None:  # resampled: describe the output grid, not the input's
        size = "x".join(f"{float(z):g}" for z in zooms)
        before = "x".join(f"{float(z):g}" for z in input_zooms)
        return f"{size} mm voxels, resampled from the input's {before} mm grid"
    if "res" not in run.entities:
        return None
    given = run.metadata.get("Resolution")
    if given:
        return given
    size = "x".join(f"{z:g}" for z in zooms)
    return f"res-{run.entities['res']}: {size} mm voxels (inherited from the input)"


def masker_parameters(job, masker) -> dict:
    """Every masker parameter of the provenance face as the run used it (unset: None)."""
    return {name: job.params.get(name, masker.get(name)) for name in PROVENANCE_PARAMETERS}


def sidecars(job, settings, links, *, cleaned_zooms, res) -> dict:
    """The JSON sidecar of each output, by output key (``bold``, ``mask``...).

    Parameters
    ----------
    job : masker_wf.app.run.RunJob
        The run as it went into the workflow.
    settings : Settings
    links : Mapping
        Dataset links (for BIDS URIs).
    cleaned_zooms : tuple of float
        Voxel size of the cleaned BOLD (mm).
    res : str or None
        ``res`` label of a resampled output grid.
    """
    run, selection = job.run, job.selection
    kept = list(range(job.n_volumes)) if selection is None else selection.kept.tolist()
    mask_source = job.mask_file
    parameters = jsonable(masker_parameters(job, settings.masker))
    if mask_source is not None:
        # The mask was given (fMRIPrep's or --mask-img): no strategy computed it.
        parameters.pop("mask_strategy", None)
        parameters.pop("mask_args", None)
    resolution = _resolution(run, cleaned_zooms, job.header.get_zooms()[:3] if res else None)
    confounds_file = run.confounds_file if selection is not None else None
    bold = {
        "Description": "BOLD time series cleaned with NiftiMasker semantics (masking, "
        "smoothing, detrending, filtering, confound regression, scrubbing, standardization "
        "as parameterised), then put back in brain space; zero outside the mask.",
        "Sources": _uris(links, run.bold_file, mask_source, confounds_file),
        "RepetitionTime": job.t_r,
        "TaskName": run.metadata.get("TaskName", run.entities.get("task")),
        "SkullStripped": True,
        "NumberOfVolumesKept": len(kept),
        "KeptVolumeIndices": kept,
        "DenoiseStrategy": job.strategy,
        "ConfoundColumns": selection.columns if selection is not None else [],
        "MaskerParameters": parameters,
    }
    if mask_source is not None:
        bold["MaskSource"] = _uris(links, mask_source)[0]
    if resolution:
        bold["Resolution"] = resolution
    mask = {
        "Type": "Brain",
        "Sources": _uris(links, mask_source) if mask_source else _uris(links, run.bold_file),
    }
    if mask_source:
        mask["MaskSource"] = _uris(links, mask_source)[0]
        if res:
            mask["Description"] = "The given mask, resampled (nearest neighbour)."
    else:
        mask["MaskStrategy"] = job.params.get("mask_strategy", "background")
        mask["MaskArgs"] = job.params.get("mask_args") or {}
    if resolution:
        mask["Resolution"] = resolution
    result = {"bold": bold, "mask": mask}
    if settings.outputs.save_signals:
        result["signals"] = {
            "Description": "Cleaned signals, (kept volumes x mask voxels) float array in "
            "NumPy .npy format, voxels in the mask's C order (NiftiMasker.transform).",
            "Sources": _uris(links, run.bold_file, mask_source),
        }
    if selection is not None:
        result["confounds"] = {
            "Description": "Regressors actually used (demeaned over kept volumes) for "
            f"the '{job.strategy}' strategy.",
            "Sources": _uris(links, run.confounds_file),
            "Strategy": jsonable(selection.parameters),
            "Columns": selection.columns,
        }
    result["outliers"] = {
        "Description": "One row per input volume; censored=1 marks volumes removed "
        "(non-steady state, scrubbing).",
        "SampleMask": kept,
        "Thresholds": {
            k: (selection.parameters.get(k) if selection is not None else None)
            for k in ("fd_threshold", "std_dvars_threshold", "scrub")
        },
        "censored": {"Levels": {"0": "kept", "1": "removed"}},
    }
    return result


#: Output key -> (suffix, extension) of the data file (its sidecar is ``<suffix>.json``).
OUTPUT_FILES = {
    "bold": ("bold", ".nii.gz"),
    "mask": ("mask", ".nii.gz"),
    "signals": ("signals", ".npy"),
    "confounds": ("timeseries", ".tsv"),
    "outliers": ("outliers", ".tsv"),
}


def tables(job) -> dict:
    """Text content of the run's TSV outputs, by output key."""
    selection = job.selection
    fd, dvars = confound_series(job.run, job.n_volumes)
    result = {}
    if selection is not None:
        result["confounds"] = selection.confounds.to_csv(
            sep="\t", index=False, float_format="%.10g"
        )
    result["outliers"] = _outlier_table(selection, job.n_volumes, fd, dvars)
    return result


def write_derivatives(job, settings, links, outputs, res) -> tuple[dict, set]:
    """Write the run's derivatives (data files and sidecars) with its derivatives workflow.

    Returns
    -------
    (dict, set)
        Output key -> path of each data file; every path written (sidecars included).
    """
    import nibabel as nib

    from . import sinks

    out_dir, desc, run = settings.output_dir, settings.outputs.desc, job.run
    zooms = nib.load(outputs["cleaned_bold_file"]).header.get_zooms()[:3]
    contents = sidecars(job, settings, links, cleaned_zooms=zooms, res=res)
    keys = ["bold", "mask", *(["signals"] if settings.outputs.save_signals else [])]
    keys += list(tables(job))
    destinations = {key: run_path(out_dir, run, desc, *OUTPUT_FILES[key], res) for key in keys}
    for path in destinations.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    with sinks.staging(settings.execution.work_dir) as staging:
        files = {}
        if settings.outputs.save_signals:
            files["signals"] = Path(outputs["signals_file"])
        for key, text in tables(job).items():
            files[key] = deriv.write_text(staging / destinations[key].name, text)
        task = sinks.RunDerivatives(
            bold_file=run.bold_file,
            cleaned_bold_file=outputs["cleaned_bold_file"],
            mask_file=outputs["mask_file"],
            t_r=job.t_r,
            files=files,
            destinations={key: str(path) for key, path in destinations.items()},
            sidecars=contents,
        )
        sinks.run_derivatives(task, staging / "pydra")
    written = set(destinations.values())
    written |= {
        run_path(out_dir, run, desc, OUTPUT_FILES[key][0], ".json", res) for key in contents
    }
    return destinations, written


def output_options(settings, links) -> dict:
    """What the derivatives depend on beyond the workflow's results."""
    from .. import __version__

    return jsonable(
        {
            "masker_wf_version": __version__,
            "desc": settings.outputs.desc,
            "save_signals": settings.outputs.save_signals,
            "reports": settings.reports,
            "dataset_links": {k: str(v) for k, v in links.items()},
        }
    )


def output_dirs(outputs) -> list[str]:
    """Names of the Pydra cache directories holding the workflow's results (its cache keys)."""
    return sorted({Path(p).parent.name for p in outputs.values() if p is not None})


def up_to_date_record(provenance_file: Path, outputs, options, out_dir):
    """The run's previous provenance record if its outputs are what this run would write.

    That is: the previous run succeeded with the same Pydra results (the workflow's
    output directories are named by the hash of every input and parameter), the same
    output options, and all its outputs are still there.
    """
    try:
        record = json.loads(Path(provenance_file).read_text())
    except (OSError, ValueError):
        return None
    same_results = record.get("Pydra", {}).get("output_dirs") == output_dirs(outputs)
    if not (
        record.get("Status") == "ok"
        and same_results
        and record.get("OutputOptions") == options
        and all((Path(out_dir) / path).is_file() for path in record.get("Outputs", {}).values())
    ):
        return None
    return record


def remove_stale(run, desc: str, out_dir: Path, res, keep: set) -> list[str]:
    """Delete this run's (same entities and desc) masker-wf outputs it did not write now."""
    candidates = [
        run_path(out_dir, run, desc, suffix, extension, res)
        for suffix, extension in naming.RUN_OUTPUTS
    ]
    candidates.append(report_file(out_dir, run, desc, res))
    keep = {Path(p).absolute() for p in keep}
    removed = []
    for path in candidates:
        if path.is_file() and path.absolute() not in keep:
            path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(out_dir)))
    return removed


def summary_of(job, outputs, qc) -> dict:
    """The run's numbers for the group table (voxels, volumes, FD, tSNR)."""
    import nibabel as nib

    mask = np.asarray(nib.load(outputs["mask_file"]).dataobj) > 0
    kept = np.arange(job.n_volumes) if job.selection is None else job.selection.kept
    fd, _ = confound_series(job.run, job.n_volumes)
    tsnr_after, tsnr_before = qc.get("tsnr_after"), qc.get("tsnr_before")
    return {
        "voxels_in_mask": int(mask.sum()),
        "volumes_total": int(job.n_volumes),
        "volumes_kept": len(kept),
        "mean_fd": None if fd is None else float(np.nanmean(fd)),
        # Both tSNR maps are over the kept volumes (see masker_wf._pipeline).
        "tsnr_before": None if tsnr_before is None else float(np.median(tsnr_before)),
        "tsnr_after": None if tsnr_after is None else float(np.median(tsnr_after)),
    }


def write_report(job, settings, outputs, qc, notes, res) -> Path:
    """Write the run's HTML report from the data CleanSignals gathered (never the BOLD)."""
    import nibabel as nib

    from ..reports import build_run_report

    mask = np.asarray(nib.load(outputs["mask_file"]).dataobj) > 0
    selection = job.selection
    kept = np.arange(job.n_volumes) if selection is None else selection.kept
    fd, _ = confound_series(job.run, job.n_volumes)
    scrubbing = selection is not None and "scrub" in selection.parameters.get("strategy", ())
    report = build_run_report(
        title=job.run.name,
        mask=mask,
        mean_data=qc["mean_planes"] or mask.astype(np.float32),
        parameters=jsonable(
            {
                **{k: v for k, v in job.params.items() if k != "sample_mask"},
                # The source table, not the work-directory copy of the selected columns.
                **(
                    {"confounds_file": job.run.confounds_file}
                    if "confounds_file" in job.params
                    else {}
                ),
            }
        ),
        signals_before=qc.get("signals_before"),
        signals_after=qc.get("signals_after"),
        t_r=job.t_r,
        kept_volumes=kept,
        framewise_displacement=fd,
        # The threshold line only when FD scrubbing is part of the strategy.
        fd_threshold=selection.parameters.get("fd_threshold") if scrubbing else None,
        tsnr_before=qc.get("tsnr_before"),
        tsnr_after=qc.get("tsnr_after"),
        summary={"confound columns": len(selection.columns) if selection else 0},
        warnings=notes,
    )
    path = report_file(settings.output_dir, job.run, settings.outputs.desc, res)
    report.save_as_html(path)
    return path


def provenance_parameters(job, settings, files) -> dict:
    """``Parameters`` of the provenance record: the masker's, then the App's own options."""
    confounds_file = files.get("confounds")
    app = {
        "denoise_strategy": job.strategy,
        "confounds": job.confound_params,
        # The regressors as saved in the output dataset, not the work-dir copy.
        "confounds_file": None
        if confounds_file is None
        else str(Path(confounds_file).relative_to(settings.output_dir)),
        "desc": settings.outputs.desc,
    }
    return jsonable(
        {
            **masker_parameters(job, settings.masker),
            **{name: app[name] for name in PROVENANCE_APP_OPTIONS},
        }
    )


def provenance_record(job, settings, links, execution, files, summary, removed) -> dict:
    """The run's provenance record (written last, next to its outputs).

    Parameters
    ----------
    job : masker_wf.app.run.RunJob
    settings : Settings
    links : Mapping
        Dataset links (BIDS URIs of the inputs).
    execution : masker_wf.app.run.WorkflowRun
        Times, cache entries and warnings of the workflow.
    files : dict
        Output key -> path of each data file written.
    summary : dict
        The run's numbers (:func:`summary_of`).
    removed : list of str
        Stale outputs removed.
    """
    import nibabel as nib

    from ..bids.provenance import file_sha256

    run, selection = job.run, job.selection
    out_dir = settings.output_dir
    inputs = {
        role: path
        for role, path in (
            ("bold", run.bold_file),
            ("mask", job.mask_file),
            ("confounds", run.confounds_file if selection is not None else None),
        )
        if path is not None
    }
    mark = time.perf_counter()
    hashes = {role: file_sha256(path) for role, path in inputs.items()}
    execution.steps["provenance"] = time.perf_counter() - mark
    return {
        "Run": run.name,
        "Status": "ok",
        "StartTime": execution.started,
        "EndTime": now(),
        "Seconds": round(execution.elapsed(), 3),
        "StepSeconds": {step: round(value, 3) for step, value in execution.steps.items()},
        "Host": host(),
        "Software": software_versions(),
        "Inputs": {
            role: {"path": str(path), "uri": _uris(links, path)[0], "hash": hashes[role]}
            for role, path in inputs.items()
        },
        "Parameters": provenance_parameters(job, settings, files),
        "Confounds": selection.columns if selection is not None else [],
        "SampleMask": None if selection is None else selection.kept.tolist(),
        "MaskSource": _mask_source(settings, job.mask_file),
        "OutputVoxelSize": [float(z) for z in nib.load(files["bold"]).header.get_zooms()[:3]],
        "RemovedStaleOutputs": removed,
        "Pydra": {
            "cache_root": str(execution.cache_root),
            "design_file": None if job.design_file is None else str(job.design_file),
            "output_dirs": output_dirs(execution.outputs),
            "computed": execution.computed,
            "reused_from_cache": not execution.computed,
        },
        "Outputs": {k: str(Path(v).relative_to(out_dir)) for k, v in files.items()},
        "OutputOptions": output_options(settings, links),
        "Summary": summary,
        "Warnings": list(execution.warnings),
    }


def _mask_source(settings, mask_file) -> str:
    if mask_file is None:
        return "computed"
    return "mask_img" if settings.mask_img is not None else "input"
