"""One run of the App: prepare its inputs, run its workflow, write its outputs.

:func:`process_run` never raises for a bad run: it returns a :class:`RunResult` with the
file and the reason, so one corrupt run does not stop the others. Its steps are the
functions of this module, in order: :func:`prepare_run` (header, repetition time,
confounds), :func:`run_workflow` (the Pydra masker workflow, cached under the work
directory), then the outputs (:mod:`masker_wf.app.outputs`) under the run's lock: staged
derivatives, report and provenance record (last), committed as one set
(:mod:`masker_wf.app.commit`), unless the set on disk is already what the run would write.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .. import _validation
from .._exceptions import DimensionError
from .._io import prefetch_digest, remember_digest, stat_key
from .._niimg import describe
from ..bids import derivatives as deriv
from ..bids.confounds import (
    ConfoundSelection,
    SidecarError,
    dummy_scan_selection,
    select_confounds,
)
from ..bids.layout import RunInputs
from ..bids.provenance import cache_entries, now
from ..signal import FewDegreesOfFreedomWarning
from . import commit, console, outputs
from .errors import OutputError
from .plan import Plan, confound_parameters
from .qc import check_budget
from .settings import Settings

__all__ = [
    "RunError",
    "RunJob",
    "RunResult",
    "WorkflowRun",
    "by_subject",
    "prepare_run",
    "process_run",
    "strategy_label",
]

logger = logging.getLogger("masker_wf.app")


class RunError(ValueError):
    """A run cannot be processed; ``file`` is the input at fault."""

    def __init__(self, file, reason: str, missing: bool = False):
        # Messages are printed after the file ("FAILED on <file>: <reason>"): a reason that
        # names the same file again ("confounds file '<file>': ...") says it once.
        named = re.match(rf"[\w ]+ '{re.escape(str(file))}'(: )?", reason)
        if named is not None:
            reason = ("" if named.group(1) else "the file ") + reason[named.end() :].lstrip()
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason
        self.missing = missing  # a required input file is absent (exit code 66)


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
    #: Exit code of an output-side failure (73 or 74, see :class:`OutputError`).
    exit_code: int | None = None
    #: The output set's ``desc`` label and confound strategy (set by the caller that knows
    #: them: a run cleaned with several strategies has a result for each).
    desc: str = ""
    strategy: str = ""
    strategy_file: str = ""

    @classmethod
    def of(cls, run: RunInputs, *, ok: bool, **fields) -> RunResult:
        """The outcome of ``run`` (its name, subject and BOLD), with ``fields`` set.

        Parameters
        ----------
        run : RunInputs
            The run the result is about.
        ok : bool
            Whether it succeeded.
        **fields
            The other attributes (``reason``, ``kind``, ``outputs``...).
        """
        return cls(
            name=run.name, subject=run.subject, ok=ok, bold_file=str(run.bold_file), **fields
        )


def by_subject(items) -> dict:
    """Subject label -> its items (runs or results, anything with ``subject``), in order.

    One pass over the items: per-subject work over a thousand subjects stays linear.

    Parameters
    ----------
    items : iterable
        Objects with a ``subject`` attribute.

    Returns
    -------
    dict
        Subjects in the order they first appear, each with its items in order.
    """
    grouped: dict = {}
    for item in items:
        grouped.setdefault(item.subject, []).append(item)
    return grouped


@dataclass(frozen=True)
class RunJob:
    """A run ready for the workflow: its inputs read, its confounds selected.

    Attributes
    ----------
    run : RunInputs
    header : nibabel.Nifti1Header
        Header of the BOLD (grid, codes and units of the outputs).
    n_volumes : int
    t_r : float or None
        Repetition time in force (s).
    notes : tuple of str
        Warnings about the inputs (repetition time).
    strategy : str
        Confound strategy in force.
    confound_params : dict or None
        Parameters of ``select_confounds`` (None: no confounds).
    selection : ConfoundSelection or None
        The regressors and kept volumes.
    mask_file : pathlib.Path or None
        The mask given to the workflow (fMRIPrep's or ``--mask-img``); None: computed.
    design_file : pathlib.Path or None
        The regressors, where Pydra hashes them.
    params : Mapping
        Inputs of the masker workflow besides the BOLD.
    """

    run: RunInputs
    header: object
    n_volumes: int
    t_r: float | None
    notes: tuple[str, ...]
    strategy: str
    confound_params: dict | None
    selection: ConfoundSelection | None
    mask_file: Path | None
    design_file: Path | None
    params: Mapping
    #: Degrees-of-freedom budget (:func:`masker_wf.app.qc.check_budget`), once checked.
    dof: object = None


@dataclass
class WorkflowRun:
    """What running one workflow produced: its outputs, cache entries, times, warnings."""

    outputs: dict
    cache_root: Path
    computed: list[str]
    warnings: list[str]
    started: str
    clock: float
    #: Voxel size (mm) of the cleaned BOLD: the grid of the workflow's mask.
    voxel_size: tuple = ()
    steps: dict = field(default_factory=dict)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.clock


def _read_header(run: RunInputs):
    import nibabel as nib

    try:
        header = nib.load(run.bold_file).header
        shape = header.get_data_shape()
    except Exception as exc:
        raise RunError(run.bold_file, f"cannot read the BOLD image: {exc}") from exc
    try:
        # The validator's check and message, as every face gives them.
        _validation.check_img_ndim(shape, (4,), f"imgs {describe(run.bold_file)}")
    except DimensionError as exc:
        raise RunError(run.bold_file, str(exc)) from exc
    return header, int(shape[3])


def _select_confounds(run: RunInputs, plan: Plan, params, n_volumes: int):
    if params is None:
        return None
    if run.confounds_file is None and plan.auto_resolved:
        raise RunError(
            run.bold_file,
            f"no confounds file for this run; the other runs use '{plan.strategy}' "
            "(--denoise-strategy auto, decided once for the output dataset: "
            "logs/denoise_strategy_auto.json); pass --denoise-strategy none to process "
            "without confounds.",
            missing=True,
        )
    if run.confounds_file is None:
        raise RunError(
            run.bold_file,
            f"the '{plan.strategy}' denoising strategy needs fMRIPrep's confounds file, "
            "and none was found for this run (use --denoise-strategy none for raw data).",
            missing=True,
        )
    try:
        selection = select_confounds(run.confounds_file, **params)
    except SidecarError as exc:  # the confounds' JSON, not the table, is at fault
        raise RunError(exc.file, exc.reason) from exc
    except ValueError as exc:
        raise RunError(run.confounds_file, str(exc)) from exc
    if selection.n_volumes != n_volumes:
        raise RunError(
            run.confounds_file,
            f"confounds length mismatch: {selection.n_volumes} rows but the BOLD "
            f"'{run.bold_file.name}' has {n_volumes} volumes.",
        )
    return selection


def _design_file(work_dir: Path, run: RunInputs, selection, desc=None) -> Path | None:
    """Write the design where Pydra can hash it; unchanged content keeps its mtime (cache).

    ``desc``: one design per strategy when a run is cleaned with several.
    """
    if selection is None or selection.confounds.shape[1] == 0:
        return None
    tag = "" if desc is None else f"_desc-{desc}"
    path = work_dir / "inputs" / f"{run.name}{tag}_design.tsv"
    text = outputs.tsv_text(selection.confounds, "%.17g")
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        deriv.write_text(path, text)
    return path


def _read_mask_header(mask_file) -> None:
    """Fail on the mask itself (not the BOLD) when its header cannot be read."""
    import nibabel as nib

    try:
        nib.load(mask_file).header.get_data_shape()
    except Exception as exc:
        raise RunError(mask_file, f"cannot read the mask image: {exc}") from exc


def prepare_run(run: RunInputs, plan: Plan, settings: Settings) -> RunJob:
    """Read the run's header, decide its repetition time, select its confounds.

    Raises
    ------
    RunError
        The BOLD or the confounds cannot be used.
    """
    if run.sidecar_error is not None:
        raise RunError(run.sidecar_error.file, run.sidecar_error.reason)
    header, n_volumes = _read_header(run)
    zooms = header.get_zooms()
    t_r, notes = outputs.t_r_of(
        run, settings.masker["t_r"], float(zooms[3]) if len(zooms) > 3 else None
    )
    filtering = any(settings.masker[name] is not None for name in ("low_pass", "high_pass"))
    if t_r is None and n_volumes > 1 and not filtering:
        # BIDS requires RepetitionTime of a BOLD derivative (a sidecar with null fails the
        # validator). With a filter, the validator's own message says it, as on every face.
        raise RunError(
            run.bold_file,
            "no repetition time: the sidecar has no RepetitionTime and the NIfTI header's "
            "pixdim[4] is 0; give it with --t-r SECONDS.",
        )
    strategy = plan.strategy
    confound_params = confound_parameters(settings.denoising, strategy)
    dummy_scans = settings.denoising.dummy_scans
    if confound_params is not None:
        confound_params = {**confound_params, "dummy_scans": dummy_scans}
    selection = _select_confounds(run, plan, confound_params, n_volumes)
    if selection is None:
        # No regressors, but the dummy scans are still removed (--dummy-scans).
        try:
            selection = dummy_scan_selection(n_volumes, dummy_scans, run.confounds_file)
        except ValueError as exc:
            # 'auto' reads fMRIPrep's non-steady-state columns; a number is about the BOLD.
            source = run.confounds_file if dummy_scans == "auto" else None
            raise RunError(source or run.bold_file, str(exc)) from exc
    mask_file = settings.mask_img or (run.mask_file if settings.selection.use_input_mask else None)
    params = settings.workflow_parameters()
    params["t_r"] = t_r
    if mask_file is not None:
        _read_mask_header(mask_file)
        # Pydra gets the file a symlink points to: a relative link (DataLad, git-annex)
        # would dangle in the cache; the outputs still name the path the user gave.
        params["mask_file"] = outputs.workflow_input(mask_file, settings.execution.work_dir)
        note = outputs.mask_grid_note(mask_file, header, params)
        if note is not None:
            notes.append(note)
    several = bool(settings.denoising.strategies)
    design = _design_file(
        settings.execution.work_dir, run, selection, settings.outputs.desc if several else None
    )
    if design is not None:
        params["confounds_file"] = design
    if selection is not None and selection.sample_mask is not None:
        params["sample_mask"] = [int(i) for i in selection.sample_mask]
    return RunJob(
        run=run,
        header=header,
        n_volumes=n_volumes,
        t_r=t_r,
        notes=tuple(notes),
        strategy=strategy,
        confound_params=confound_params,
        selection=selection,
        mask_file=None if mask_file is None else Path(mask_file),
        design_file=design,
        params=params,
    )


def _asked_for(warning, job: RunJob) -> bool:
    """A step's warning about what the user asked for: a target grid resamples the BOLD.

    NiftiMasker warns that resampling to the mask's grid is costly (and suggests giving a
    target grid): with --target-resolution (or --target-affine) that resampling is the
    point, and the App's resample node does it once, cropped to the mask.
    """
    grid = job.params.get("target_affine") is not None or job.params.get("target_shape")
    return bool(grid) and "imgs are being resampled to the mask_img resolution" in str(
        warning.message
    )


def run_workflow(job: RunJob, settings: Settings, worker, n_procs, clock) -> WorkflowRun:
    """Run the masker workflow of ``job`` in the work directory's Pydra cache."""
    from ..workflow import run_masker_workflow

    cache_root = settings.execution.work_dir / "pydra"
    before = cache_entries(cache_root)
    mark = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = run_masker_workflow(
            outputs.workflow_input(job.run.bold_file, settings.execution.work_dir),
            cache_root=cache_root,
            worker=worker,
            n_procs=n_procs,
            out_suffix=".nii",
            # The cleaned BOLD is written once, by its sink, from the signals: the cache
            # keeps what resuming needs, not a 4D copy of every output.
            cleaned_bold=False,
            # The App owns its process: it opts in to the fast file hash (4x faster on a
            # BOLD run). Not with the per-node SLURM worker, whose jobs hash in processes
            # that have not opted in.
            segmented_hash=isinstance(worker, str),
            **job.params,
        )
    execution = WorkflowRun(
        outputs=results,
        cache_root=cache_root,
        computed=sorted(cache_entries(cache_root) - before),
        warnings=[
            *job.notes,
            *sorted(
                {
                    str(w.message)
                    for w in caught
                    # The App checked the budget itself, against its own thresholds.
                    if (job.dof is None or not issubclass(w.category, FewDegreesOfFreedomWarning))
                    and not _asked_for(w, job)
                }
            ),
        ],
        started=clock[0],
        clock=clock[1],
        voxel_size=outputs.voxel_size(results["mask_file"]),
    )
    execution.steps["workflow"] = time.perf_counter() - mark
    return execution


def _confirm_up_to_date(record, execution, provenance_file) -> None:
    # Same request, inputs and files: the derivatives on disk are what this run would
    # write. Rewriting them (gzip of a 4D image) is the slowest step of a resumed run, so
    # only the provenance record is updated (it is not among the files it lists).
    record["Pydra"].update(computed=execution.computed, reused_from_cache=True)
    record["LastConfirmed"] = now()
    try:
        deriv.write_json(provenance_file, record)
    except OSError as exc:
        raise commit.output_error(provenance_file, exc) from exc


def _timed(function, *args):
    """``(function(*args), seconds it took)``."""
    mark = time.perf_counter()
    return function(*args), time.perf_counter() - mark


def _staged_error(exc: BaseException, stage) -> OutputError | None:
    """The output-side failure in ``exc``'s chain, naming the output path (not the stage's)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OutputError):
            return seen
        if isinstance(seen, OSError):
            path = getattr(seen, "output_file", None)
            filename = seen.filename and Path(seen.filename)
            if path is None and filename and filename.is_relative_to(stage.root):
                path = filename
            if path is not None:
                # The writers' message names no path ("Cannot write output: <reason>").
                reason = (seen.strerror or str(seen)).removeprefix("Cannot write output: ")
                return OutputError(stage.final(path), seen.errno, reason)
        seen = seen.__cause__ or seen.__context__
    return None


def _write_outputs(job, settings, links, execution, res, tag, output_set, request) -> RunResult:
    """Stage the derivatives, the report and the provenance record (last); commit them."""
    from .._io import load_qc

    out_dir = settings.output_dir
    planned = outputs.planned_files(job, settings, res)
    output_set.check_destinations(planned)
    console.progress(f"{tag}: writing derivatives")
    mark = time.perf_counter()
    stage = output_set.stage()
    try:
        # Everything the report shows was gathered by CleanSignals in its one pass over the
        # BOLD: the report never reads the run again, so it is drawn (matplotlib, one
        # thread) while the derivatives are written (mostly ISA-L's threads).
        qc = load_qc(execution.outputs["qc_file"])
        summary = outputs.summary_of(job, execution.outputs, qc, settings)
        with ThreadPoolExecutor(1, "masker-wf-report") as pool:
            drawn = None
            if settings.reports:
                drawn = pool.submit(
                    _timed,
                    outputs.write_report,
                    job,
                    settings,
                    execution.outputs,
                    qc,
                    execution.warnings,
                    res,
                    stage,
                )
            files = outputs.write_derivatives(
                job, settings, links, execution.outputs, res, stage, execution.voxel_size
            )
            execution.steps["derivatives"] = time.perf_counter() - mark
            report, execution.steps["report"] = (None, 0.0) if drawn is None else drawn.result()
        mark = time.perf_counter()
        record_file = output_set.record
        record_rel = record_file.relative_to(out_dir).as_posix()
        candidates = outputs.stale_candidates(job.run, settings.outputs.desc, out_dir, res)
        removed = output_set.stale(candidates, keep=planned)
        digests = {
            "inputs": {
                role: output_set.memo.digest(path)
                for role, path in outputs.input_files(job).items()
            },
            "files": stage.digests(exclude={record_rel}),
        }
        execution.steps["provenance"] = time.perf_counter() - mark
        record = outputs.provenance_record(
            job,
            settings,
            links,
            execution,
            files,
            summary,
            removed,
            digests=digests,
            request=request,
            voxel_size=execution.voxel_size,
        )
        deriv.write_json(stage.path(record_file), record)
        output_set.commit(stage, digests["files"], stale=removed)
    except Exception as exc:
        stage.discard()
        error = _staged_error(exc, stage)
        if error is None:
            raise
        raise error from exc
    for path in removed:
        console.progress(f"{tag}: removed stale output {path} (not produced by this run)")
    cached = " (from cache)" if not execution.computed else ""
    console.progress(f"{tag}: done in {execution.elapsed():.1f} s{cached}")
    return RunResult.of(
        job.run,
        ok=True,
        outputs={key: out_dir / path for key, path in files.items()},
        summary=summary,
        seconds=execution.elapsed(),
        report=None if report is None else str(out_dir / report),
    )


def process_run(
    run: RunInputs,
    plan: Plan,
    settings: Settings,
    *,
    worker="debug",
    n_procs=None,
    index: int = 1,
    total: int = 1,
) -> RunResult:
    """Process one run: inputs, Pydra workflow, derivatives, report, provenance.

    Parameters
    ----------
    run : RunInputs
        The run's files and metadata.
    plan : Plan
        The invocation's plan (strategy, dataset links).
    settings : Settings
    worker, n_procs
        Pydra worker (``"debug"``, ``"cf"`` or a worker object) and its process count.
    index, total : int
        Position of the run, for progress messages.

    Returns
    -------
    RunResult
        ``ok`` False with ``reason`` when the run failed (nothing is raised).
    """
    clock = (now(), time.perf_counter())
    tag = f"[{index}/{total}] {run.name}"
    links = plan.inputs.dataset_links
    try:
        # The run's output set at the input's resolution (the usual case): what it
        # remembers spares the BOLD's hash when the run turns out up to date.
        output_set = commit.OutputSet(
            settings.output_dir,
            outputs.record_path(settings.output_dir, run, settings.outputs.desc, None),
        )
        _hash_ahead(run, output_set)
        console.progress(f"{tag}: reading inputs")
        job = check_budget(prepare_run(run, plan, settings), settings)
        for note in job.notes:
            console.progress(f"{tag}: warning: {note}")
        console.progress(
            f"{tag}: running the masker workflow (Pydra cache "
            f"{settings.execution.work_dir / 'pydra'})"
        )
        execution = run_workflow(job, settings, worker, n_procs, clock)
        # What the steps warned about (a cut-off above Nyquist, ...) goes to the terminal
        # too, not only to the report.
        for note in execution.warnings[len(job.notes) :]:
            console.progress(f"{tag}: warning: {note}")
        # The cleaned BOLD is written on the grid of the mask (from the signals).
        res = outputs.output_res(job.header, execution.voxel_size)
        record_file = outputs.record_path(settings.output_dir, run, settings.outputs.desc, res)
        request = outputs.request_digest(
            job, settings, links, execution.outputs, res, execution.voxel_size
        )
        # The run's lock, from the check to the commit: another App writing the same run
        # into the same output dataset waits, and never sees a half-written set.
        if record_file != output_set.record:
            output_set = commit.OutputSet(settings.output_dir, record_file)
        with output_set:
            inputs = {
                role: output_set.memo.digest(path)
                for role, path in outputs.input_files(job).items()
            }
            earlier = outputs.read_record(record_file)
            previous = outputs.up_to_date_record(earlier, request, inputs, output_set)
            if previous is None:
                _warn_other_strategy(earlier, job, settings, tag)
                return _write_outputs(
                    job, settings, links, execution, res, tag, output_set, request
                )
            _confirm_up_to_date(previous, execution, record_file)
            # What a killed writer of an earlier version left next to these files.
            output_set.remove_leftovers([*previous["Files"], output_set.relative_record])
        console.progress(
            f"{tag}: outputs up to date, kept as they are ({execution.elapsed():.1f} s)"
        )
        report = outputs.report_file(settings.output_dir, run, settings.outputs.desc, res)
        return RunResult.of(
            run,
            ok=True,
            outputs={k: settings.output_dir / v for k, v in previous["Outputs"].items()},
            summary=previous["Summary"],
            seconds=execution.elapsed(),
            report=str(report) if report.exists() else None,
        )
    except Exception as exc:
        return _failed(run, exc, tag, time.perf_counter() - clock[1])


def _warn_other_strategy(earlier: dict | None, job, settings: Settings, tag: str) -> None:
    """Say so when the set being replaced (its record ``earlier``) had another strategy.

    A set is the run's outputs under one ``desc``: a later invocation with another strategy
    and the same ``desc`` replaces it, which someone comparing strategies one invocation
    at a time would not expect.
    """
    parameters = (earlier or {}).get("Parameters")
    if not isinstance(parameters, dict):
        return  # no earlier set (or no readable record of it)
    custom = settings.denoising.custom_strategy
    now = (job.strategy, None if custom is None else str(custom))
    before = (parameters.get("denoise_strategy"), parameters.get("custom_strategy"))
    if before[0] is None or before == now:
        return
    console.progress(
        f"{tag}: warning: replacing the desc-{settings.outputs.desc} outputs cleaned with "
        f"strategy '{strategy_label(*before)}' by strategy '{strategy_label(*now)}'; "
        "--output-desc (or several strategies in one invocation) keeps both"
    )


def strategy_label(strategy, custom_file=None) -> str:
    """How messages name a confound strategy: its strategy file's name, else the preset."""
    return Path(custom_file).name if custom_file else str(strategy)


def _hash_ahead(run: RunInputs, output_set: commit.OutputSet) -> None:
    """Have the BOLD's digest (Pydra's key, the provenance record) when it is needed.

    Known without reading when ``output_set`` recorded it for the file as it is now (same
    stat key: an up-to-date rerun hashes nothing); otherwise computed on a thread while the
    run reads its inputs and builds its workflow, not after.
    """
    try:
        key = stat_key(run.bold_file)
    except OSError:
        return  # a BOLD that cannot be read fails its run when it is read, with the reason
    known = output_set.memo.known(run.bold_file, key)
    if known is None:
        prefetch_digest(run.bold_file)
    else:
        # Pydra's file hash reads the process's memo: the BOLD is not read for its key.
        remember_digest(key, known)


def _failed(run: RunInputs, exc: Exception, tag: str, seconds: float) -> RunResult:
    if isinstance(exc, OutputError):
        # The output dataset is at fault, not the run's data: named as the user knows it.
        console.progress(f"{tag}: FAILED: {exc}")
        fields = {"reason": str(exc), "kind": "output", "exit_code": exc.exit_code}
    else:
        file, reason = explain(run, exc)
        kind = "data" if isinstance(exc, ValueError | TypeError | OSError) else "error"
        if getattr(exc, "missing", False):
            kind = "missing"
        console.progress(f"{tag}: FAILED on {file}: {reason}")
        fields = {
            "reason": f"{file}: {reason}",
            "kind": kind,
            # A refused run keeps its numbers (degrees of freedom, volumes) for the group
            # table.
            "summary": dict(getattr(exc, "summary", None) or {}),
        }
    logger.debug("run %s failed:\n%s", run.name, traceback.format_exc())
    return RunResult.of(run, ok=False, seconds=seconds, **fields)


def _file_text(files) -> str:
    if isinstance(files, list | tuple):
        return ", ".join(map(str, files))
    return str(files)


def explain(run: RunInputs, exc: BaseException) -> tuple[str, str]:
    """The input file at fault and the reason, from the error objects themselves.

    A :class:`RunError` names its file; an error of a masker step carries ``step`` and
    ``file`` (and ``reason``) attributes, which are used as they are, wherever it sits in
    the chain of causes (an ``OSError`` of a step names the path it could not write in
    ``filename``). Anything else is blamed on the run's BOLD.
    """
    seen = exc
    while seen is not None:
        if isinstance(seen, RunError):
            return str(seen.file), seen.reason
        step = getattr(seen, "step", None)
        if step is not None:
            file = getattr(seen, "file", None)
            if isinstance(seen, OSError) and seen.filename:
                file = seen.filename  # an output that cannot be written: the path at fault
            elif file is None:  # StepError before it carried ``file``
                file = getattr(seen, "input_file", None)
            reason = getattr(seen, "reason", None) or str(seen)
            return _file_text(file), f"{step}: {reason}"
        seen = seen.__cause__ or seen.__context__
    # Pydra adds the remote traceback to an error's text: its last line is the error itself.
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return str(
        run.bold_file
    ), f"{type(exc).__name__}: {lines[-1] if lines else type(exc).__name__}"
