"""The derivatives of one run: what each file holds, the report, the provenance record.

Paths come from :mod:`masker_wf.bids.naming`. The files of a run are written into its
staging directory (:mod:`masker_wf.app.commit`) under the paths they will have in the output
dataset; the provenance record, written last, lists each of them with its content digest
and is what makes them a set.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from .. import _spec
from ..bids import derivatives as deriv
from ..bids import naming, spaces
from ..bids.confounds import load_confounds_table
from ..bids.provenance import applied_confound_parameters, host, now, software_versions
from . import qc as quality

__all__ = [
    "OUTPUT_FILES",
    "PROVENANCE_APP_OPTIONS",
    "PROVENANCE_PARAMETERS",
    "confound_series",
    "input_files",
    "jsonable",
    "mask_grid_note",
    "masker_parameters",
    "output_dirs",
    "output_options",
    "output_res",
    "planned_files",
    "provenance_parameters",
    "provenance_record",
    "read_record",
    "record_path",
    "report_file",
    "request_digest",
    "run_path",
    "sidecars",
    "stale_candidates",
    "summary_of",
    "t_r_of",
    "tables",
    "tsv_text",
    "up_to_date_record",
    "voxel_size",
    "workflow_input",
    "write_derivatives",
    "write_report",
]

#: The masker parameters recorded in sidecars and provenance (the spec's provenance face).
PROVENANCE_PARAMETERS = tuple(p.name for p in _spec.for_face("provenance"))
#: The App's own options recorded in the provenance ``Parameters``, after the masker's.
PROVENANCE_APP_OPTIONS = (
    "denoise_strategy",
    "custom_strategy",
    "confounds",
    "confound_columns",
    "confounds_file",
    "desc",
)


def jsonable(value):
    """``value`` as plain JSON types (numpy scalars and arrays, paths, tuples converted)."""
    return json.loads(json.dumps(value, default=deriv._json_default))


def _seconds(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def t_r_of(run, t_r_option, n_header) -> tuple[float | None, list[str]]:
    """The run's repetition time (s) and notes about where it came from.

    In order: ``--t-r``, the preprocessed BOLD's sidecar, the raw BOLD's sidecar, the
    NIfTI header (``pixdim[4]``); a note says when a later source disagrees with the one
    used, or when the header's value is used.
    """
    derivative = run.raw_file != run.bold_file
    sources = [
        ("the preprocessed BOLD's sidecar" if derivative else "the sidecar", run.metadata),
        *([("the raw BOLD's sidecar", run.raw_metadata)] if derivative else []),
    ]
    values = [
        (where, _seconds(metadata.get("RepetitionTime")))
        for where, metadata in sources
        if metadata.get("RepetitionTime") is not None
    ]
    if n_header:
        values.append(("the NIfTI header's pixdim[4]", float(n_header)))
    values = [(where, value) for where, value in values if value is not None]
    notes = []
    if t_r_option is not None:
        chosen = ("--t-r", float(t_r_option))
    elif values:
        chosen = values[0]
        if chosen[0].startswith("the NIfTI header"):
            notes.append(
                f"RepetitionTime missing from the sidecar; using the header's {chosen[1]} s."
            )
    else:
        return None, notes
    for where, value in values:
        if where != chosen[0] and not math.isclose(value, chosen[1], rel_tol=1e-3):
            notes.append(
                f"RepetitionTime {chosen[1]} s ({chosen[0]}) differs from {where}: "
                f"{value} s; using {chosen[1]} s."
            )
    return chosen[1], notes


def mask_grid_note(mask_file, bold_header, params) -> str | None:
    """A warning when a given mask is not on the BOLD's grid (the BOLD is then resampled).

    None when the grids match, when no mask is given, or when a target grid is asked for
    (then both are resampled, as requested).
    """
    if mask_file is None or params.get("target_affine") is not None:
        return None
    if params.get("target_shape") is not None:
        return None
    import nibabel as nib

    mask_header = nib.load(mask_file).header
    shape, mask_shape = bold_header.get_data_shape()[:3], mask_header.get_data_shape()[:3]
    affine, mask_affine = bold_header.get_best_affine(), mask_header.get_best_affine()
    if tuple(shape) == tuple(mask_shape) and np.allclose(affine, mask_affine, atol=1e-4):
        return None
    shift = float(np.linalg.norm(affine[:3, 3] - mask_affine[:3, 3]))
    return (
        f"the mask '{mask_file}' is not on the BOLD's grid (shape {tuple(mask_shape)} vs "
        f"{tuple(shape)}, origins {shift:.3g} mm apart): the BOLD is resampled onto the "
        "mask's grid, as NiftiMasker does; check that the mask is registered to the BOLD."
    )


def voxel_size(image_file) -> tuple[float, ...]:
    """Voxel size (mm) of an image, from its header.

    Parameters
    ----------
    image_file : path
        A NIfTI image (only its header is read).

    Returns
    -------
    tuple of float
        The sizes along the three spatial axes.
    """
    import nibabel as nib

    return tuple(float(z) for z in nib.load(image_file).header.get_zooms()[:3])


def output_res(in_header, zooms) -> str | None:
    """``res`` label of the output voxel size ``zooms`` (mm) when it differs from the
    input's, else None.

    Only the voxel size names a resolution: an output on a shifted or cropped grid of the
    same voxel size (a mask on another grid) keeps the input's name.
    """
    if np.allclose(zooms, in_header.get_zooms()[:3], rtol=1e-3, atol=1e-4):
        return None
    return naming.resolution_label(zooms)


def run_path(out_dir, run, desc, suffix, extension, res) -> Path:
    """Absolute path of one output of ``run``."""
    relative = naming.derivative_path(
        run.bold_file, desc, suffix, extension, res, dataset_root=run.dataset_root
    )
    return Path(out_dir) / relative


def report_file(out_dir, run, desc, res) -> Path:
    """Absolute path of the run's HTML report."""
    return run_path(out_dir, run, desc, "report", ".html", res)


def workflow_input(path, work_dir) -> Path:
    """The path to give Pydra for an input file: the file a symlink points to.

    A relative symlink (DataLad, git-annex) would dangle once Pydra links it into its
    cache. The target is used when its name keeps the input's extension (git-annex's
    ``*E`` backends); otherwise an absolute link with the input's name is made under
    ``<work_dir>/inputs/links/`` (nibabel reads the format from the name).
    """
    path = Path(path)
    target = path.resolve()
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    if target == path or target.name.endswith(suffix):
        return target
    link = (
        Path(work_dir)
        / "inputs"
        / "links"
        / hashlib.sha256(str(target).encode()).hexdigest()[:16]
        / path.name
    )
    if not (link.is_symlink() and link.resolve() == target):
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    return link


def record_path(out_dir, run, desc, res) -> Path:
    """Absolute path of the run's provenance record (it identifies the run's output set)."""
    return run_path(out_dir, run, desc, "provenance", ".json", res)


def _uris(links, *paths) -> list[str]:
    return [deriv.bids_uri(p, links) for p in paths if p is not None]


def _reference_uri(reference, links):
    """``SpatialReference`` as the sidecar holds it: BIDS URIs of files, others as given."""
    if isinstance(reference, dict):
        return {key: _reference_uri(value, links) for key, value in reference.items()}
    return deriv.bids_uri(reference, links) if isinstance(reference, Path) else reference


def _has_regressors(selection) -> bool:
    # --dummy-scans without a confound strategy selects volumes but no regressor.
    return selection is not None and bool(selection.columns)


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
    try:
        table, _ = load_confounds_table(run.confounds_file)
    except ValueError:
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
        # What the strategy was made of (components, expansions, scrubbing thresholds),
        # in load_confounds' words, and the strategy file a custom strategy came from.
        "ConfoundsParameters": jsonable(
            {} if job.confound_params is None else applied_confound_parameters(job.confound_params)
        ),
        "ConfoundColumns": selection.columns if selection is not None else [],
        "MaskerParameters": parameters,
        "DummyScans": quality.dummy_scan_record(job, settings),
    }
    if settings.denoising.custom_strategy is not None:
        bold["StrategyFile"] = Path(settings.denoising.custom_strategy).name
    dof = quality.dof_record(job, settings)
    if dof is not None:
        bold["DegreesOfFreedom"] = dof
    reference = spaces.spatial_reference(run)
    if reference is not None:
        bold["SpatialReference"] = _reference_uri(reference, links)
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
        mask["Description"] = "The given mask the signals were extracted in" + (
            ", resampled (nearest neighbour)." if res else "."
        )
    else:
        mask["Description"] = (
            "Brain mask computed from the BOLD with the "
            f"'{job.params.get('mask_strategy', 'background')}' strategy."
        )
        mask["MaskStrategy"] = job.params.get("mask_strategy", "background")
        mask["MaskArgs"] = job.params.get("mask_args") or {}
    if resolution:
        mask["Resolution"] = resolution
    if reference is not None:
        mask["SpatialReference"] = bold["SpatialReference"]
    result = {"bold": bold, "mask": mask}
    if settings.outputs.save_signals:
        result["signals"] = {
            "Description": "Cleaned signals, (kept volumes x mask voxels) float array in "
            "NumPy .npy format, voxels in the mask's C order (NiftiMasker.transform).",
            "Sources": _uris(links, run.bold_file, mask_source),
        }
    applied = {} if selection is None else applied_confound_parameters(selection.parameters)
    if _has_regressors(selection):
        result["confounds"] = {
            "Description": "Regressors actually used (demeaned over kept volumes) for "
            f"the '{job.strategy}' strategy.",
            "Sources": _uris(links, run.confounds_file),
            # nilearn's load_confounds keywords that give these columns (and no others).
            "Strategy": jsonable(applied),
            "Columns": selection.columns,
        }
        if selection.parameters.get("columns"):
            result["confounds"]["ExtraColumns"] = list(selection.parameters["columns"])
    result["outliers"] = {
        "Description": "One row per input volume; censored=1 marks volumes removed "
        "(non-steady state, scrubbing).",
        "SampleMask": kept,
        # Only the thresholds scrubbing applied (null without scrubbing).
        "Thresholds": {
            k: applied.get(k) for k in ("fd_threshold", "std_dvars_threshold", "scrub")
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


def tsv_text(frame, float_format: str) -> str:
    """What ``frame.to_csv(sep="\t", index=False, float_format=float_format)`` writes.

    For a table of floats with plain column names (a design, fMRIPrep's names), the text
    is made here, row by row (pandas formats every value through Python calls of its own:
    ten times slower, and a run writes its tables at every rerun to compare them); NaN
    is written as an empty field, as pandas does. Anything else is left to pandas.

    Parameters
    ----------
    frame : pandas.DataFrame
    float_format : str
        ``%``-format of each value, e.g. ``"%.10g"``.

    Returns
    -------
    str
        The header line and one line per row, each ending with a newline.
    """
    names = [str(name) for name in frame.columns]
    plain = not any(char in name for name in names for char in '\t"\n\r')
    if not (plain and names and all(dtype.kind == "f" for dtype in frame.dtypes)):
        return frame.to_csv(sep="\t", index=False, float_format=float_format)
    lines = ["\t".join(names)]
    for row in frame.to_numpy().tolist():
        lines.append("\t".join("" if value != value else float_format % value for value in row))
    return "\n".join(lines) + "\n"


def tables(job) -> dict:
    """Text content of the run's TSV outputs, by output key."""
    selection = job.selection
    fd, dvars = confound_series(job.run, job.n_volumes)
    result = {}
    if _has_regressors(selection):
        result["confounds"] = tsv_text(selection.confounds, "%.10g")
    result["outliers"] = _outlier_table(selection, job.n_volumes, fd, dvars)
    return result


def _data_keys(job, settings) -> list[str]:
    keys = ["bold", "mask", *(["signals"] if settings.outputs.save_signals else [])]
    return keys + (["confounds"] if _has_regressors(job.selection) else []) + ["outliers"]


def planned_files(job, settings, res) -> list[str]:
    """Paths (relative to the output dataset) of every file of the run's set, record last."""
    out_dir, desc, run = settings.output_dir, settings.outputs.desc, job.run
    paths = []
    for key in _data_keys(job, settings):
        suffix, extension = OUTPUT_FILES[key]
        paths += [
            run_path(out_dir, run, desc, suffix, extension, res),
            run_path(out_dir, run, desc, suffix, ".json", res),
        ]
    if settings.reports:
        paths.append(report_file(out_dir, run, desc, res))
    paths.append(record_path(out_dir, run, desc, res))
    return [path.relative_to(out_dir).as_posix() for path in paths]


def stale_candidates(run, desc: str, out_dir, res) -> list[str]:
    """Every masker-wf output name of this run (same entities, desc and res), relative."""
    candidates = [
        run_path(out_dir, run, desc, suffix, extension, res)
        for suffix, extension in naming.RUN_OUTPUTS
    ]
    candidates.append(report_file(out_dir, run, desc, res))
    return [path.relative_to(out_dir).as_posix() for path in candidates]


def write_derivatives(job, settings, links, outputs, res, stage, zooms) -> dict:
    """Write the run's derivatives (data files and sidecars) into ``stage``.

    Parameters
    ----------
    job, settings, links
        The run, the invocation's settings, the dataset links.
    outputs : dict
        The masker workflow's outputs.
    res : str or None
        ``res`` label of the output grid.
    stage : masker_wf.app.commit.Stage
        Where the files go (at the paths they will have in the output dataset).
    zooms : tuple of float
        Voxel size of the cleaned BOLD (mm): the workflow's mask's.

    Returns
    -------
    dict
        Output key -> path of each data file, relative to the output dataset.
    """
    from . import sinks

    out_dir, desc, run = settings.output_dir, settings.outputs.desc, job.run
    contents = sidecars(job, settings, links, cleaned_zooms=zooms, res=res)
    finals = {
        key: run_path(out_dir, run, desc, *OUTPUT_FILES[key], res)
        for key in _data_keys(job, settings)
    }
    destinations = {key: stage.path(path) for key, path in finals.items()}
    with sinks.staging(settings.execution.work_dir) as staging:
        files = {}
        if settings.outputs.save_signals:
            files["signals"] = Path(outputs["signals_file"])
        for key, text in tables(job).items():
            files[key] = deriv.write_text(staging / destinations[key].name, text)
        sinks.write_run_derivatives(
            # The file itself, not a link to it (a relative link would dangle in the cache).
            bold_file=workflow_input(run.bold_file, settings.execution.work_dir),
            signals_file=outputs["signals_file"],
            mask_file=outputs["mask_file"],
            t_r=job.t_r,
            files=files,
            destinations=destinations,
            sidecars=contents,
            cache_root=staging / "pydra",
        )
    return {key: path.relative_to(out_dir).as_posix() for key, path in finals.items()}


def request_digest(job, settings, links, outputs, res, zooms) -> str:
    """Digest of everything the run's files depend on: compared to decide "up to date".

    The workflow's results (its cache directories are named by the hash of every input and
    parameter), the output options, and the exact content of every sidecar and table;
    ``zooms`` is the voxel size of the cleaned BOLD (mm).
    """
    content = {
        "output_dirs": output_dirs(outputs),
        "options": output_options(settings, links),
        "files": planned_files(job, settings, res),
        "sidecars": jsonable(sidecars(job, settings, links, cleaned_zooms=zooms, res=res)),
        "tables": tables(job),
    }
    text = json.dumps(content, sort_keys=True, default=deriv._json_default)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


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


def input_files(job) -> dict:
    """Role -> path (as the user sees it) of each input file the run read."""
    run, selection = job.run, job.selection
    return {
        role: Path(path)
        for role, path in (
            ("bold", run.bold_file),
            ("mask", job.mask_file),
            ("confounds", run.confounds_file if selection is not None else None),
        )
        if path is not None
    }


def read_record(record_file: Path) -> dict | None:
    """The provenance record in ``record_file``, or None (missing, unreadable, not a record)."""
    try:
        record = json.loads(Path(record_file).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def up_to_date_record(record: dict | None, request: str, input_digests: dict, output_set):
    """The run's previous provenance ``record`` if the files on disk are what this run writes.

    That is: the previous run succeeded with the same request (:func:`request_digest`) and
    inputs of the same content, and every file its record lists is there with the content
    it had when written (:meth:`masker_wf.app.commit.OutputSet.verify`). A record from a
    version without content digests never counts.
    """
    if record is None or record.get("Status") != "ok":
        return None
    inputs = {role: entry.get("hash") for role, entry in record.get("Inputs", {}).items()}
    files = record.get("Files")
    if record.get("Request") != request or inputs != input_digests or not files:
        return None
    if output_set.verify(files):
        return None
    return record


def summary_of(job, outputs, qc, settings=None) -> dict:
    """The run's numbers for the group table (voxels, volumes, FD, tSNR, degrees of freedom)."""
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
        **quality.budget_summary(job.dof),
        "dummy_scans": quality.dummy_scan_record(job, settings)["Removed"] if settings else None,
        "dof_warn": settings.denoising.warn_dof if settings else None,
    }


def write_report(job, settings, outputs, qc, notes, res, stage) -> Path:
    """Write the run's HTML report into ``stage``, from the data CleanSignals gathered
    (never the BOLD); return its path relative to the output dataset."""
    import nibabel as nib

    from ..reports import build_run_report

    mask_img = nib.load(outputs["mask_file"])
    mask = np.asarray(mask_img.dataobj) > 0
    selection = job.selection
    kept = np.arange(job.n_volumes) if selection is None else selection.kept
    fd, _ = confound_series(job.run, job.n_volumes)
    scrubbing = selection is not None and "scrub" in selection.parameters.get("strategy", ())
    path = report_file(settings.output_dir, job.run, settings.outputs.desc, res)
    bold_name = naming.run_name(run_path(settings.output_dir, job.run, settings.outputs.desc,
                                         *OUTPUT_FILES["bold"], res))  # fmt: skip
    report = build_run_report(
        title=bold_name,
        subtitle=f"from {job.run.bold_file.name}",
        affine=mask_img.affine,
        denoising=_denoising_record(job, settings),
        mask=mask,
        mean_data=qc["mean_planes"] or mask.astype(np.float32),
        parameters=jsonable(
            {
                **{
                    k: v
                    for k, v in job.params.items()
                    # A given mask was not computed: no strategy to show.
                    if k != "sample_mask"
                    and not (job.mask_file is not None and k in ("mask_strategy", "mask_args"))
                },
                # The source table, not the work-directory copy of the selected columns.
                **(
                    {"confounds_file": job.run.confounds_file}
                    if "confounds_file" in job.params
                    else {}
                ),
                # The mask as the user named it (the workflow reads the file it links to).
                **({"mask_file": job.mask_file} if "mask_file" in job.params else {}),
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
        warnings=notes,
    )
    report.save_as_html(stage.path(path))
    return path.relative_to(settings.output_dir).as_posix()


def _denoising_record(job, settings) -> dict:
    """What the run's report says about its denoising (the sidecar's facts, for a reader)."""
    selection, masker = job.selection, settings.masker
    applied = {} if selection is None else applied_confound_parameters(selection.parameters)
    if job.mask_file is None:
        mask = f"computed with the '{job.params.get('mask_strategy', 'background')}' strategy"
    elif settings.mask_img is not None:
        mask = f"given for every run (--mask-img {job.mask_file.name})"
    else:
        mask = f"the input's brain mask ({job.mask_file.name})"
    filter_type = (masker.get("clean_args") or {}).get("filter", "butterworth")
    low, high = masker.get("low_pass"), masker.get("high_pass")
    if filter_type == "cosine" and high:
        described = f"cosine drifts up to {high:g} Hz"
    elif filter_type and (low or high):
        band = [f"high-pass {high:g} Hz" if high else "", f"low-pass {low:g} Hz" if low else ""]
        described = "Butterworth " + ", ".join(b for b in band if b)
    else:
        described = "none"
    if "high_pass" in (applied.get("strategy") or ()):
        # fMRIPrep's cosine regressors remove the slow drifts with the confounds.
        drifts = "high-pass by fMRIPrep's cosine regressors, with the confounds"
        described = drifts if described == "none" else f"{described}; {drifts}"
    return {
        "strategy": job.strategy,
        "mask": mask,
        "filter": described,
        "thresholds": {
            k: applied.get(k) for k in ("fd_threshold", "std_dvars_threshold", "scrub")
        },
        "dummy_scans": quality.dummy_scan_record(job, settings),
        "degrees_of_freedom": quality.dof_record(job, settings),
        "confound_columns": selection.columns if selection is not None else [],
        "censored": {} if selection is None else dict(selection.censored),
    }


def provenance_parameters(job, settings, files) -> dict:
    """``Parameters`` of the provenance record: the masker's, then the App's own options."""
    confounds_file = files.get("confounds")
    params = job.confound_params
    app = {
        "denoise_strategy": job.strategy,
        # The strategy file as given (its content is in "confounds"): tells custom sets apart.
        "custom_strategy": None
        if settings.denoising.custom_strategy is None
        else str(settings.denoising.custom_strategy),
        # nilearn's load_confounds keywords that select exactly the regressors used.
        "confounds": None if params is None else applied_confound_parameters(params),
        "confound_columns": None if params is None else list(params.get("columns") or []),
        # The regressors as saved in the output dataset, not the work-dir copy.
        "confounds_file": None if confounds_file is None else str(confounds_file),
        "desc": settings.outputs.desc,
    }
    return jsonable(
        {
            **masker_parameters(job, settings.masker),
            **{name: app[name] for name in PROVENANCE_APP_OPTIONS},
        }
    )


def provenance_record(
    job, settings, links, execution, files, summary, removed, *, digests, request, voxel_size
) -> dict:
    """The run's provenance record (staged last, committed last, next to its outputs).

    Parameters
    ----------
    job : masker_wf.app.run.RunJob
    settings : Settings
    links : Mapping
        Dataset links (BIDS URIs of the inputs).
    execution : masker_wf.app.run.WorkflowRun
        Times, cache entries and warnings of the workflow.
    files : dict
        Output key -> path of each data file, relative to the output dataset.
    summary : dict
        The run's numbers (:func:`summary_of`).
    removed : list of str
        Stale outputs the commit removes.
    digests : dict
        ``"inputs"``: role -> digest of each input; ``"files"``: relative path ->
        ``{"sha256", "size"}`` of every file of the set but the record.
    request : str
        :func:`request_digest` of the run.
    voxel_size : sequence of float
        Voxel size of the cleaned BOLD (mm).
    """
    selection = job.selection
    inputs = input_files(job)
    return {
        "Run": job.run.name,
        "Status": "ok",
        "StartTime": execution.started,
        "EndTime": now(),
        "Seconds": round(execution.elapsed(), 3),
        "StepSeconds": {step: round(value, 3) for step, value in execution.steps.items()},
        "Host": host(),
        "Software": software_versions(),
        "Inputs": {
            role: {
                "path": str(path),
                "uri": _uris(links, path)[0],
                "hash": digests["inputs"][role],
            }
            for role, path in inputs.items()
        },
        "Parameters": provenance_parameters(job, settings, files),
        "Confounds": selection.columns if selection is not None else [],
        "SampleMask": None if selection is None else selection.kept.tolist(),
        "MaskSource": _mask_source(settings, job.mask_file),
        "DegreesOfFreedom": quality.dof_record(job, settings),
        "DummyScans": quality.dummy_scan_record(job, settings),
        "OutputVoxelSize": [float(z) for z in voxel_size],
        "RemovedStaleOutputs": removed,
        "Pydra": {
            "cache_root": str(execution.cache_root),
            "design_file": None if job.design_file is None else str(job.design_file),
            "output_dirs": output_dirs(execution.outputs),
            "computed": execution.computed,
            "reused_from_cache": not execution.computed,
        },
        "Outputs": dict(files),
        "Files": digests["files"],
        "Request": request,
        "OutputOptions": output_options(settings, links),
        "Summary": summary,
        "Warnings": list(execution.warnings),
    }


def _mask_source(settings, mask_file) -> str:
    if mask_file is None:
        return "computed"
    return "mask_img" if settings.mask_img is not None else "input"
