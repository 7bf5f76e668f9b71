"""The BIDS App's work: run the masker workflow on each run, write derivatives, reports, summary.

:func:`process_run` handles one run end to end and never raises for a bad run: it returns a
:class:`RunResult` with the file and the reason, so one corrupt run does not stop the others.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import derivatives as deriv
from .confounds import ConfoundSelection, load_strategy_file, select_confounds, strategy_parameters
from .layout import RunInputs
from .provenance import cache_entries, file_sha256, host, now, software_versions

__all__ = [
    "MASKER_PARAMETERS",
    "RunResult",
    "Settings",
    "process_run",
    "run_group",
    "write_subject_report",
]

logger = logging.getLogger("masker_wf.bids")

#: NiftiMasker parameters the App forwards to the workflow (the CLI has one flag for each).
MASKER_PARAMETERS = (
    "smoothing_fwhm",
    "standardize",
    "standardize_confounds",
    "detrend",
    "high_variance_confounds",
    "low_pass",
    "high_pass",
    "t_r",
    "target_affine",
    "target_shape",
    "mask_strategy",
    "mask_args",
    "dtype",
    "clean_args",
)

_CONFOUND_OPTIONS = (
    "motion",
    "wm_csf",
    "global_signal",
    "scrub",
    "fd_threshold",
    "std_dvars_threshold",
    "compcor",
    "n_compcor",
    "ica_aroma",
    "demean",
)


@dataclass
class Settings:
    """Everything that decides the numbers of a run, plus where and how to run.

    Attributes
    ----------
    masker : dict
        NiftiMasker parameters (see :data:`MASKER_PARAMETERS`); ``t_r`` None means "from the
        sidecar".
    denoise_strategy : str
        ``auto``, ``none``, a nilearn preset, or ``custom`` (``strategy_file``).
    confound_options : dict
        Overrides of the preset (``motion``, ``fd_threshold``...), None values ignored.
    strategy_file : path or None
        Custom strategy JSON.
    desc : str
        ``desc-`` label of the outputs.
    use_input_mask : bool
        Use fMRIPrep's ``desc-brain_mask`` when present.
    mask_img : path or None
        One mask for every run (overrides the above).
    save_signals, reports : bool
        Optional outputs.
    worker : str
        Pydra worker (``debug`` or ``cf``).
    n_procs : int or None
        Processes of the ``cf`` worker.
    dataset_links : dict
        Name -> root of each input dataset (for BIDS URIs).
    """

    masker: dict = field(default_factory=dict)
    denoise_strategy: str = "auto"
    confound_options: dict = field(default_factory=dict)
    strategy_file: Path | None = None
    desc: str = "denoised"
    use_input_mask: bool = True
    mask_img: Path | None = None
    save_signals: bool = False
    reports: bool = True
    worker: object = "debug"
    n_procs: int | None = None
    dataset_links: dict = field(default_factory=dict)
    #: True when ``denoise_strategy`` was 'auto', resolved once for the dataset.
    auto_resolved: bool = False

    def resolve_auto(self, runs) -> str:
        """Decide 'auto' once for the selected runs: 'simple' if any has fMRIPrep confounds.

        A run without confounds then fails (instead of silently mixing strategies within a
        subject). Returns the strategy in force.
        """
        if self.denoise_strategy == "auto":
            found = any(run.confounds_file is not None for run in runs)
            self.denoise_strategy = "simple" if found else "none"
            self.auto_resolved = True
        return self.denoise_strategy

    def confound_parameters(self, has_confounds: bool) -> tuple[str, dict | None]:
        """(strategy label, parameters of ``select_confounds``) — None when not denoising."""
        strategy = self.denoise_strategy
        if strategy == "auto":
            strategy = "simple" if has_confounds else "none"
        if strategy == "none":
            return strategy, None
        options = {k: v for k, v in self.confound_options.items() if v is not None}
        if strategy == "custom":
            custom = load_strategy_file(self.strategy_file)
            preset = custom.pop("denoise_strategy")
            columns = custom.pop("columns", None)
            params = strategy_parameters(preset, **{**custom, **options})
            if columns:
                params["columns"] = columns
            return strategy, params
        return strategy, strategy_parameters(strategy, **options)


@dataclass
class RunResult:
    """Outcome of one run."""

    name: str
    subject: str
    ok: bool
    bold_file: str
    reason: str = ""
    kind: str = ""
    outputs: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    seconds: float = 0.0
    report: str | None = None


class RunError(ValueError):
    """A run cannot be processed; ``file`` is the input at fault."""

    def __init__(self, file, reason: str, missing: bool = False):
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason
        self.missing = missing  # a required input file is absent (exit code 66)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _read_if_same(path: Path, content: str) -> bool:
    return path.is_file() and path.read_text(encoding="utf-8") == content


def _t_r(run: RunInputs, settings: Settings, n_header) -> tuple[float | None, list[str]]:
    notes = []
    t_r = settings.masker.get("t_r")
    sidecar = run.metadata.get("RepetitionTime")
    if t_r is None:
        t_r = sidecar
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


def _design_file(work_dir: Path, run: RunInputs, selection: ConfoundSelection) -> Path | None:
    """Write the design where Pydra can hash it; unchanged content keeps its mtime (cache)."""
    if selection.confounds.shape[1] == 0:
        return None
    path = work_dir / "inputs" / f"{run.name}_design.tsv"
    text = selection.confounds.to_csv(sep="\t", index=False, float_format="%.17g")
    if not _read_if_same(path, text):
        deriv.write_text(path, text)
    return path


def _uris(settings: Settings, *paths) -> list[str]:
    return [deriv.bids_uri(p, settings.dataset_links) for p in paths if p is not None]


def _outlier_table(selection: ConfoundSelection | None, n_volumes: int, fd, dvars) -> str:
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


def _confound_series(run: RunInputs, n_volumes: int):
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


def _resolution(run: RunInputs, zooms, input_zooms=None) -> str | None:
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


def process_run(
    run: RunInputs, settings: Settings, out_dir, work_dir, *, index: int = 1, total: int = 1
) -> RunResult:
    """Process one run: confounds, Pydra workflow, derivatives, provenance, report.

    Parameters
    ----------
    run : RunInputs
        The run's files and metadata.
    settings : Settings
        Processing parameters.
    out_dir, work_dir : path
        Output dataset root and working directory (``<work_dir>/pydra`` is the Pydra cache).
    index, total : int
        Position of the run, for progress messages.

    Returns
    -------
    RunResult
        ``ok`` False with ``reason`` when the run failed (nothing is raised).
    """
    import nibabel as nib

    out_dir, work_dir = Path(out_dir), Path(work_dir)
    started, clock = now(), time.perf_counter()
    tag = f"[{index}/{total}] {run.name}"
    if settings.reports:
        from ..reports.figures import preload_matplotlib

        preload_matplotlib()
    warnings_seen: list[str] = []
    try:
        _progress(f"{tag}: reading inputs")
        try:
            header = nib.load(run.bold_file).header
            shape = header.get_data_shape()
        except Exception as exc:
            raise RunError(run.bold_file, f"cannot read the BOLD image: {exc}") from exc
        if len(shape) != 4:
            raise RunError(run.bold_file, f"BOLD must be 4D, got shape {shape}.")
        n_volumes = int(shape[3])
        zooms = header.get_zooms()
        t_r, notes = _t_r(run, settings, float(zooms[3]) if len(zooms) > 3 else None)
        warnings_seen += notes
        for note in notes:
            _progress(f"{tag}: warning: {note}")
        strategy, confound_params = settings.confound_parameters(run.confounds_file is not None)
        selection = None
        if confound_params is not None:
            if run.confounds_file is None and settings.auto_resolved:
                raise RunError(
                    run.bold_file,
                    f"no confounds file for this run; the other runs use '{strategy}' "
                    "(--denoise-strategy auto); pass --denoise-strategy none to process "
                    "without confounds.",
                    missing=True,
                )
            if run.confounds_file is None:
                raise RunError(
                    run.bold_file,
                    f"the '{strategy}' denoising strategy needs fMRIPrep's confounds file, "
                    "and none was found for this run (use --denoise-strategy none for raw data).",
                    missing=True,
                )
            try:
                selection = select_confounds(run.confounds_file, **confound_params)
            except ValueError as exc:
                raise RunError(run.confounds_file, str(exc)) from exc
            if selection.n_volumes != n_volumes:
                raise RunError(
                    run.confounds_file,
                    f"confounds length mismatch: {selection.n_volumes} rows but the BOLD "
                    f"'{run.bold_file.name}' has {n_volumes} volumes.",
                )
        mask_file = settings.mask_img or (run.mask_file if settings.use_input_mask else None)
        params = {k: v for k, v in settings.masker.items() if v is not None}
        params["t_r"] = t_r
        if mask_file is not None:
            params["mask_file"] = Path(mask_file)
        design = _design_file(work_dir, run, selection) if selection is not None else None
        if design is not None:
            params["confounds_file"] = design
        if selection is not None and selection.sample_mask is not None:
            params["sample_mask"] = [int(i) for i in selection.sample_mask]

        from ..workflow import run_masker_workflow

        cache_root = work_dir / "pydra"
        before = cache_entries(cache_root)
        _progress(f"{tag}: running the masker workflow (Pydra cache {cache_root})")
        step_seconds = {}
        mark = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outputs = run_masker_workflow(
                run.bold_file,
                cache_root=cache_root,
                worker=settings.worker,
                n_procs=settings.n_procs,
                out_suffix=".nii",
                **params,
            )
        warnings_seen += sorted({str(w.message) for w in caught})
        after = cache_entries(cache_root)
        step_seconds["workflow"], mark = time.perf_counter() - mark, time.perf_counter()
        res = _output_res(header, outputs["cleaned_bold_file"])
        provenance_file = deriv.subject_dir(out_dir, run.entities) / deriv.derivative_name(
            run.bold_file, settings.desc, "provenance", ".json", res
        )
        output_options = _output_options(settings)
        previous = _up_to_date_record(provenance_file, outputs, output_options, out_dir)
        if previous is not None:
            # Same workflow results and output options: the derivatives on disk are what
            # this run would write. Rewriting them (gzip of a 4D image) is the slowest step
            # of a resumed run, so only the provenance record is updated.
            previous["Pydra"].update(computed=sorted(after - before), reused_from_cache=True)
            previous["LastConfirmed"] = now()
            deriv.write_json(provenance_file, previous)
            seconds = time.perf_counter() - clock
            _progress(f"{tag}: outputs up to date, kept as they are ({seconds:.1f} s)")
            report = _report_path(run, settings, out_dir, res)
            return RunResult(
                name=run.name,
                subject=run.subject,
                ok=True,
                bold_file=str(run.bold_file),
                outputs={k: out_dir / v for k, v in previous["Outputs"].items()},
                summary=previous["Summary"],
                seconds=seconds,
                report=str(report) if report.exists() else None,
            )
        _progress(f"{tag}: writing derivatives")
        written: set[Path] = set()
        result_files = _write_outputs(
            run,
            settings,
            out_dir,
            outputs,
            selection,
            strategy,
            params,
            t_r,
            n_volumes,
            header=header,
            res=res,
            written=written,
        )
        step_seconds["derivatives"], mark = time.perf_counter() - mark, time.perf_counter()
        summary, report = _summarise(
            run, settings, out_dir, outputs, selection, params, t_r, n_volumes, warnings_seen, res
        )
        if report is not None:
            written.add(Path(report))
        step_seconds["report"], mark = time.perf_counter() - mark, time.perf_counter()
        written.add(provenance_file)
        removed = _remove_stale(run, settings.desc, out_dir, res, written)
        for path in removed:
            _progress(f"{tag}: removed stale output {path} (not produced by this run)")
        input_hashes = {
            role: file_sha256(path)
            for role, path in (
                ("bold", run.bold_file),
                ("mask", mask_file),
                ("confounds", run.confounds_file if selection is not None else None),
            )
            if path is not None
        }
        step_seconds["provenance"] = time.perf_counter() - mark
        provenance = {
            "Run": run.name,
            "Status": "ok",
            "StartTime": started,
            "EndTime": now(),
            "Seconds": round(time.perf_counter() - clock, 3),
            "StepSeconds": {step: round(value, 3) for step, value in step_seconds.items()},
            "Host": host(),
            "Software": software_versions(),
            "Inputs": {
                role: {
                    "path": str(path),
                    "uri": _uris(settings, path)[0],
                    "hash": input_hashes[role],
                }
                for role, path in (
                    ("bold", run.bold_file),
                    ("mask", mask_file),
                    ("confounds", run.confounds_file if selection is not None else None),
                )
                if path is not None
            },
            "Parameters": _jsonable(
                {
                    **params,
                    # The regressors as saved in the output dataset, not the work-dir copy.
                    **(
                        {"confounds_file": str(result_files["confounds"].relative_to(out_dir))}
                        if "confounds" in result_files
                        else {}
                    ),
                    "denoise_strategy": strategy,
                    "confounds": confound_params,
                    "desc": settings.desc,
                }
            ),
            "Confounds": selection.columns if selection is not None else [],
            "SampleMask": None if selection is None else selection.kept.tolist(),
            "MaskSource": _mask_source(settings, mask_file),
            "OutputVoxelSize": [
                float(z) for z in nib.load(result_files["bold"]).header.get_zooms()[:3]
            ],
            "RemovedStaleOutputs": removed,
            "Pydra": {
                "cache_root": str(cache_root),
                "design_file": None if design is None else str(design),
                "output_dirs": sorted(
                    {Path(p).parent.name for p in outputs.values() if p is not None}
                ),
                "computed": sorted(after - before),
                "reused_from_cache": not (after - before),
            },
            "Outputs": {k: str(Path(v).relative_to(out_dir)) for k, v in result_files.items()},
            "OutputOptions": output_options,
            "Summary": summary,
            "Warnings": warnings_seen,
        }
        deriv.write_json(provenance_file, provenance)
        seconds = time.perf_counter() - clock
        cached = " (from cache)" if not (after - before) else ""
        _progress(f"{tag}: done in {seconds:.1f} s{cached}")
        return RunResult(
            name=run.name,
            subject=run.subject,
            ok=True,
            bold_file=str(run.bold_file),
            outputs=result_files,
            summary=summary,
            seconds=seconds,
            report=report,
        )
    except Exception as exc:
        seconds = time.perf_counter() - clock
        file, reason = _explain(run, exc)
        kind = "data" if isinstance(exc, ValueError | TypeError | OSError) else "error"
        if getattr(exc, "missing", False):
            kind = "missing"
        _progress(f"{tag}: FAILED on {file}: {reason}")
        logger.debug("run %s failed:\n%s", run.name, traceback.format_exc())
        return RunResult(
            name=run.name,
            subject=run.subject,
            ok=False,
            bold_file=str(run.bold_file),
            reason=f"{file}: {reason}",
            kind=kind,
            seconds=seconds,
        )


def _explain(run: RunInputs, exc: BaseException) -> tuple[str, str]:
    """The input file at fault and a one-paragraph reason, digging through wrappers."""
    from .._steps import StepError

    seen = exc
    while seen is not None:
        if isinstance(seen, RunError):
            return str(seen.file), seen.reason
        if isinstance(seen, StepError):
            files = seen.input_file
            file = ", ".join(map(str, files)) if isinstance(files, list | tuple) else str(files)
            return file, f"{seen.step}: {seen.reason}"
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip() or type(exc).__name__
    # Pydra re-raises task errors with the remote traceback; keep its last line.
    lines = [line for line in text.splitlines() if line.strip()]
    reason = lines[-1] if lines else text
    return str(run.bold_file), f"{type(exc).__name__}: {reason}"


def _jsonable(value):
    return json.loads(json.dumps(value, default=deriv._json_default))


def _output_res(in_header, cleaned_file) -> str | None:
    """``res`` label of the output grid when it differs from the input's, else None."""
    import nibabel as nib

    out = nib.load(cleaned_file)
    same = tuple(out.shape[:3]) == tuple(in_header.get_data_shape()[:3]) and np.allclose(
        out.affine, in_header.get_best_affine(), atol=1e-4
    )
    return None if same else deriv.resolution_label(out.header.get_zooms()[:3])


def _mask_source(settings: Settings, mask_file) -> str:
    if mask_file is None:
        return "computed"
    return "mask_img" if settings.mask_img is not None else "input"


def _remove_stale(run: RunInputs, desc: str, out_dir: Path, res, keep: set) -> list[str]:
    """Delete this run's (same entities and desc) masker-wf outputs it did not write now."""
    folder = deriv.subject_dir(out_dir, run.entities)
    candidates = [
        folder / deriv.derivative_name(run.bold_file, desc, suffix, extension, res)
        for suffix, extension in deriv.RUN_OUTPUTS
    ]
    candidates.append(
        Path(out_dir)
        / f"sub-{run.subject}"
        / "figures"
        / deriv.derivative_name(run.bold_file, desc, "report", ".html", res)
    )
    keep = {Path(p).absolute() for p in keep}
    removed = []
    for path in candidates:
        if path.is_file() and path.absolute() not in keep:
            path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(out_dir)))
    return removed


def _with_input_header(img, in_header, t_r=None):
    """Copy of ``img`` with the input's sform/qform codes and xyzt units (mm, s)."""
    import nibabel as nib

    img = nib.Nifti1Image(img.dataobj, img.affine, img.header)
    space, unit = in_header.get_xyzt_units()
    img.header.set_xyzt_units(
        space if space != "unknown" else "mm", unit if unit != "unknown" else "sec"
    )
    if t_r is not None and img.ndim == 4:
        img.header.set_zooms((*img.header.get_zooms()[:3], float(t_r)))
    sform_code, qform_code = int(in_header["sform_code"]), int(in_header["qform_code"])
    if not (sform_code or qform_code):  # neither set: keep the affine readable as 'scanner'
        sform_code = 1
    affine = img.affine
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)
    return img


def _write_outputs(
    run,
    settings,
    out_dir,
    outputs,
    selection,
    strategy,
    params,
    t_r,
    n_volumes,
    *,
    header,
    res=None,
    written=None,
):
    import nibabel as nib

    from .._io import save_img

    folder = deriv.subject_dir(out_dir, run.entities)
    folder.mkdir(parents=True, exist_ok=True)
    desc = settings.desc
    written = set() if written is None else written

    def name(suffix, extension):
        path = folder / deriv.derivative_name(run.bold_file, desc, suffix, extension, res)
        written.add(path)
        return path

    files = {}
    kept = list(range(n_volumes)) if selection is None else selection.kept.tolist()
    mask_source = params.get("mask_file")
    sources_bold = _uris(
        settings, run.bold_file, mask_source, run.confounds_file if selection is not None else None
    )
    # Every NiftiMasker parameter, unset ones as null, so the sidecar is self-describing.
    skipped = ("mask_file", "confounds_file", "sample_mask")
    parameters = _jsonable(
        {
            **dict.fromkeys(MASKER_PARAMETERS),
            **settings.masker,
            **{k: v for k, v in params.items() if k not in skipped},
        }
    )
    if mask_source is not None:
        # The mask was given (fMRIPrep's or --mask-img): no strategy computed it.
        parameters.pop("mask_strategy", None)
        parameters.pop("mask_args", None)

    cleaned = nib.load(outputs["cleaned_bold_file"])
    zooms = cleaned.header.get_zooms()[:3]
    # The validator checks pixdim[4] against RepetitionTime: state both, in seconds.
    cleaned = _with_input_header(cleaned, header, t_r)
    resolution = _resolution(run, zooms, header.get_zooms()[:3] if res else None)
    files["bold"] = save_img(cleaned, name("bold", ".nii.gz"))
    sidecar = {
        "Description": "BOLD time series cleaned with NiftiMasker semantics (masking, "
        "smoothing, detrending, filtering, confound regression, scrubbing, standardization "
        "as parameterised), then put back in brain space; zero outside the mask.",
        "Sources": sources_bold,
        "RepetitionTime": t_r,
        "TaskName": run.metadata.get("TaskName", run.entities.get("task")),
        "SkullStripped": True,
        "NumberOfVolumesKept": len(kept),
        "KeptVolumeIndices": kept,
        "DenoiseStrategy": strategy,
        "ConfoundColumns": selection.columns if selection is not None else [],
        "MaskerParameters": parameters,
    }
    if mask_source is not None:
        sidecar["MaskSource"] = _uris(settings, mask_source)[0]
    if resolution:
        sidecar["Resolution"] = resolution
    deriv.write_json(name("bold", ".json"), sidecar)

    mask_img = _with_input_header(nib.load(outputs["mask_file"]), header)
    files["mask"] = save_img(mask_img, name("mask", ".nii.gz"))
    mask_sidecar = {
        "Type": "Brain",
        "Sources": _uris(settings, mask_source) if mask_source else _uris(settings, run.bold_file),
    }
    if mask_source:
        mask_sidecar["MaskSource"] = _uris(settings, mask_source)[0]
        if res:
            mask_sidecar["Description"] = "The given mask, resampled (nearest neighbour)."
    else:
        mask_sidecar["MaskStrategy"] = params.get("mask_strategy", "background")
        mask_sidecar["MaskArgs"] = params.get("mask_args") or {}
    if resolution:
        mask_sidecar["Resolution"] = resolution
    deriv.write_json(name("mask", ".json"), mask_sidecar)

    if settings.save_signals:
        files["signals"] = deriv.copy_atomic(outputs["signals_file"], name("signals", ".npy"))
        deriv.write_json(
            name("signals", ".json"),
            {
                "Description": "Cleaned signals, (kept volumes x mask voxels) float array in "
                "NumPy .npy format, voxels in the mask's C order (NiftiMasker.transform).",
                "Sources": _uris(settings, run.bold_file, mask_source),
            },
        )
    if selection is not None:
        table = selection.confounds.to_csv(sep="\t", index=False, float_format="%.10g")
        files["confounds"] = deriv.write_text(name("timeseries", ".tsv"), table)
        deriv.write_json(
            name("timeseries", ".json"),
            {
                "Description": "Regressors actually used (demeaned over kept volumes) for "
                f"the '{strategy}' strategy.",
                "Sources": _uris(settings, run.confounds_file),
                "Strategy": _jsonable(selection.parameters),
                "Columns": selection.columns,
            },
        )
    fd, dvars = _confound_series(run, n_volumes)
    files["outliers"] = deriv.write_text(
        name("outliers", ".tsv"), _outlier_table(selection, n_volumes, fd, dvars)
    )
    deriv.write_json(
        name("outliers", ".json"),
        {
            "Description": "One row per input volume; censored=1 marks volumes removed "
            "(non-steady state, scrubbing).",
            "SampleMask": kept,
            "Thresholds": {
                k: (selection.parameters.get(k) if selection is not None else None)
                for k in ("fd_threshold", "std_dvars_threshold", "scrub")
            },
            "censored": {"Levels": {"0": "kept", "1": "removed"}},
        },
    )
    return files


def _report_path(run, settings, out_dir, res) -> Path:
    folder = Path(out_dir) / f"sub-{run.subject}" / "figures"
    return folder / deriv.derivative_name(run.bold_file, settings.desc, "report", ".html", res)


def _output_options(settings: Settings) -> dict:
    """What the derivatives depend on beyond the workflow's results."""
    from .. import __version__

    return _jsonable(
        {
            "masker_wf_version": __version__,
            "desc": settings.desc,
            "save_signals": settings.save_signals,
            "reports": settings.reports,
            "dataset_links": {k: str(v) for k, v in settings.dataset_links.items()},
        }
    )


def _up_to_date_record(provenance_file: Path, outputs, output_options, out_dir):
    """The run's previous provenance record if its outputs are what this run would write.

    That is: the previous run succeeded with the same Pydra results (the workflow's
    output directories are named by the hash of every input and parameter), the same
    output options, and all its outputs are still there.
    """
    try:
        record = json.loads(Path(provenance_file).read_text())
    except (OSError, ValueError):
        return None
    same_results = record.get("Pydra", {}).get("output_dirs") == sorted(
        {Path(p).parent.name for p in outputs.values() if p is not None}
    )
    if not (
        record.get("Status") == "ok"
        and same_results
        and record.get("OutputOptions") == output_options
        and all((Path(out_dir) / path).is_file() for path in record.get("Outputs", {}).values())
    ):
        return None
    return record


def _summarise(run, settings, out_dir, outputs, selection, params, t_r, n_volumes, notes, res):
    import nibabel as nib

    from .._io import load_qc
    from ..reports import build_run_report

    mask_img = nib.load(outputs["mask_file"])
    mask = np.asarray(mask_img.dataobj) > 0
    # Everything the report shows was gathered by CleanSignals in its one pass over the
    # BOLD: the report never reads the run again.
    qc = load_qc(outputs["qc_file"])
    kept = np.arange(n_volumes) if selection is None else selection.kept
    fd, _ = _confound_series(run, n_volumes)
    tsnr_after = qc.get("tsnr_after")
    # Both tSNR maps are over the kept volumes (see masker_wf._pipeline).
    tsnr_before = qc.get("tsnr_before")
    median_before = None if tsnr_before is None else float(np.median(tsnr_before))
    summary = {
        "voxels_in_mask": int(mask.sum()),
        "volumes_total": int(n_volumes),
        "volumes_kept": len(kept),
        "mean_fd": None if fd is None else float(np.nanmean(fd)),
        "tsnr_before": median_before,
        "tsnr_after": None if tsnr_after is None else float(np.median(tsnr_after)),
    }
    report_path = None
    scrubbing = selection is not None and "scrub" in selection.parameters.get("strategy", ())
    extra = {"confound columns": len(selection.columns) if selection else 0}
    if settings.reports:
        report = build_run_report(
            title=run.name,
            mask=mask,
            mean_data=qc["mean_planes"] or mask.astype(np.float32),
            parameters=_jsonable(
                {
                    **{k: v for k, v in params.items() if k != "sample_mask"},
                    # The source table, not the work-directory copy of the selected columns.
                    **(
                        {"confounds_file": run.confounds_file}
                        if "confounds_file" in params
                        else {}
                    ),
                }
            ),
            signals_before=qc.get("signals_before"),
            signals_after=qc.get("signals_after"),
            t_r=t_r,
            kept_volumes=kept,
            framewise_displacement=fd,
            # The threshold line only when FD scrubbing is part of the strategy.
            fd_threshold=selection.parameters.get("fd_threshold") if scrubbing else None,
            tsnr_before=tsnr_before,
            tsnr_after=tsnr_after,
            summary=extra,
            warnings=notes,
        )
        report_path = _report_path(run, settings, out_dir, res)
        report.save_as_html(report_path)
        report_path = str(report_path)
    return summary, report_path


def write_subject_report(out_dir, subject: str, results, settings: Settings) -> Path | None:
    """Write ``out/sub-<label>.html`` linking the subject's runs, with the methods paragraph.

    Runs already in ``out_dir`` from earlier invocations (their provenance records) are listed
    too, so the page stays complete when runs are processed by separate jobs.
    """
    from ..reports import build_subject_report
    from .methods import subject_methods

    out_dir = Path(out_dir)
    # One entry per output (a run may have outputs at several resolutions or descs).
    records = {r["Outputs"]["bold"]: r for r in _provenance_records(out_dir, subject)}
    runs = []
    for key in sorted(records):
        record = records[key]
        bold = Path(record["Outputs"]["bold"]).name
        report = (
            out_dir / f"sub-{subject}" / "figures" / bold.replace("_bold.nii.gz", "_report.html")
        )
        runs.append(
            {
                "name": bold.removesuffix(".nii.gz"),
                "report": deriv.relative_link(report, out_dir),
                **{k: _fmt(v) for k, v in record["Summary"].items()},
            }
        )
    errors = [{"name": r.name, "reason": r.reason} for r in results if not r.ok]
    versions = software_versions()
    # Every run of the subject with this invocation's desc is summarised (not only the last
    # one's parameters).
    text = subject_methods(
        [
            records[key]
            for key in sorted(records)
            if records[key].get("Parameters", {}).get("desc", settings.desc) == settings.desc
        ],
        {
            k: versions[k]
            for k in versions
            if k in ("masker-wf", "numpy", "scipy", "nibabel", "pydra")
        },
    )
    report = build_subject_report(subject, runs, text, errors)
    return report.save_as_html(out_dir / f"sub-{subject}.html")


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else value


def _provenance_records(out_dir: Path, subject: str | None = None):
    pattern = f"sub-{subject}" if subject else "sub-*"
    for path in sorted(Path(out_dir).glob(f"{pattern}/**/*_provenance.json")):
        try:
            yield json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue


def _failures(out_dir: Path, participants=None) -> list[dict]:
    """Failed runs recorded by the participant level (``logs/failures_sub-*.json``)."""
    rows = []
    for path in sorted((out_dir / "logs").glob("failures_sub-*.json")):
        subject = path.stem.removeprefix("failures_sub-")
        if participants and subject not in participants:
            continue
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        for entry in entries if isinstance(entries, list) else []:
            rows.append({"subject": subject, **entry})
    return rows


def run_group(out_dir, participants=None) -> tuple[Path, Path, int]:
    """Group level: summary table over every processed run, and ``index.html``.

    ``participants`` (labels without ``sub-``) restricts the summary to those subjects.

    Returns
    -------
    (summary.tsv path, index.html path, number of runs)

    Raises
    ------
    FileNotFoundError
        No participant-level output in ``out_dir``.
    """
    import pandas as pd

    from ..reports.html import HTMLReport, section, table

    out_dir = Path(out_dir)
    wanted = set(participants or ())
    rows = []
    for record in _provenance_records(out_dir):
        entities = dict(
            part.split("-", 1) for part in record["Run"].split("_")[:-1] if "-" in part
        )
        if wanted and entities.get("sub") not in wanted:
            continue
        rows.append(
            {
                "subject": entities.get("sub"),
                "session": entities.get("ses", "n/a"),
                "task": entities.get("task", "n/a"),
                "run": entities.get("run", "n/a"),
                "space": entities.get("space", "n/a"),
                "bold": record["Outputs"].get("bold"),
                **record["Summary"],
                "seconds": record.get("Seconds"),
            }
        )
    if not rows:
        which = f" for participant(s) {', '.join(sorted(wanted))}" if wanted else ""
        raise FileNotFoundError(
            f"No participant-level outputs (*_provenance.json){which} in '{out_dir}'; "
            "run the 'participant' level first."
        )
    frame = pd.DataFrame(rows)
    group = out_dir / "group"
    group.mkdir(parents=True, exist_ok=True)
    tsv = deriv.write_text(
        group / "summary.tsv",
        frame.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"),
    )
    deriv.write_json(
        group / "summary.json",
        {
            "voxels_in_mask": {"Description": "Number of voxels in the mask used"},
            "volumes_total": {"Description": "Volumes in the input BOLD"},
            "volumes_kept": {"Description": "Volumes after censoring (sample_mask)"},
            "mean_fd": {"Description": "Mean framewise displacement", "Units": "mm"},
            "tsnr_before": {
                "Description": "Median temporal SNR of the input in the mask, over the kept "
                "volumes (runs with censored volumes: over a sample of up to 2000 mask voxels)"
            },
            "tsnr_after": {
                "Description": "Median of input mean / cleaned standard deviation (n/a when "
                "standardized)"
            },
        },
    )
    import html as _html

    body = [f"<h1>masker-wf: {len(frame)} runs, {frame['subject'].nunique()} subjects</h1>"]
    numeric = frame.select_dtypes("number")
    body.append(section("Group means", table({c: float(numeric[c].mean()) for c in numeric})))
    header = "".join(f"<th>{_html.escape(str(c))}</th>" for c in frame.columns)
    body_rows = []
    for _, row in frame.iterrows():
        cells = []
        for column, value in row.items():
            text = _html.escape(str(_fmt(value)))
            if column == "subject":
                text = f"<a href='sub-{text}.html'>sub-{text}</a>"
            cells.append(f"<td>{text}</td>")
        body_rows.append("<tr>" + "".join(cells) + "</tr>")
    body.append(section("Runs", f"<table><tr>{header}</tr>{''.join(body_rows)}</table>"))
    failures = _failures(out_dir, wanted)
    if failures:
        failed_rows = "".join(
            f"<tr><td><a href='sub-{_html.escape(f['subject'])}.html'>"
            f"sub-{_html.escape(f['subject'])}</a></td>"
            f"<td>{_html.escape(str(f.get('run', '')))}</td>"
            f"<td>{_html.escape(str(f.get('reason', '')))}</td></tr>"
            for f in failures
        )
        body.append(
            section(
                f"Failed runs ({len(failures)})",
                f"<table><tr><th>subject</th><th>run</th><th>reason</th></tr>{failed_rows}"
                "</table>",
            )
        )
    body.append(section("Files", f"<p>Summary table: <code>{tsv.relative_to(out_dir)}</code></p>"))
    index = HTMLReport("".join(body), title="masker-wf group summary").save_as_html(
        out_dir / "index.html"
    )
    return tsv, index, len(frame)


def settings_from_args(args, dataset_links: dict) -> Settings:
    """Build :class:`Settings` from the parsed command line."""
    target_affine = getattr(args, "target_affine", None)
    if target_affine is None and args.target_resolution is not None:
        target_affine = np.diag([args.target_resolution] * 3).tolist()
    if args.target_shape is not None and (target_affine is None or len(target_affine) != 4):
        raise ValueError("--target-shape needs a 4x4 --target-affine (as in NiftiMasker).")
    standardize = args.standardize
    if standardize in (None, "none", "false", "False"):
        standardize = False
    masker = {
        "smoothing_fwhm": args.smoothing_fwhm,
        "standardize": standardize,
        "standardize_confounds": args.standardize_confounds,
        "detrend": args.detrend,
        "high_variance_confounds": args.high_variance_confounds,
        "low_pass": args.low_pass,
        "high_pass": args.high_pass,
        "t_r": args.t_r,
        "target_affine": target_affine,
        "target_shape": args.target_shape,
        "mask_strategy": args.mask_strategy,
        "mask_args": args.mask_args,
        "dtype": args.dtype,
        "clean_args": args.clean_args,
    }
    strategy = args.denoise_strategy
    if args.custom_strategy is not None:
        strategy = "custom"
    n_procs = args.nprocs or 1
    worker, n_procs = ("cf", n_procs) if n_procs > 1 else ("debug", None)
    if getattr(args, "slurm_worker", "array") == "pydra" and not getattr(args, "slurm", False):
        # --slurm --slurm-worker pydra: this process runs the App, each node is a SLURM job.
        from ..cli.slurm import pydra_worker

        worker, n_procs = pydra_worker(args), None
    return Settings(
        masker=masker,
        denoise_strategy=strategy,
        confound_options={k: getattr(args, k) for k in _CONFOUND_OPTIONS},
        strategy_file=args.custom_strategy,
        desc=args.output_desc,
        use_input_mask=args.use_input_mask,
        mask_img=args.mask_img,
        save_signals=args.save_signals,
        reports=args.reports,
        worker=worker,
        n_procs=n_procs,
        dataset_links=dataset_links,
    )


def environment_setup() -> None:
    """Turn off telemetry calls (offline clusters) before Pydra/nipype are imported."""
    os.environ.setdefault("NO_ET", "1")
    os.environ.setdefault("NIPYPE_NO_ET", "1")
