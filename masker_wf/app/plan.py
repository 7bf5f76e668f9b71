"""Plan a participant-level invocation: check the inputs, prepare the output, find the runs.

Everything that can be refused is refused here, before a single run is processed:
:func:`check_inputs` before anything is written, :func:`prepare_output` before anything is
computed, :func:`plan_runs` once the dataset is indexed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ..bids import derivatives as deriv
from ..bids.confounds import check_file_overrides, load_strategy_file, strategy_parameters
from ..bids.layout import (
    BIDSInputError,
    RunInputs,
    build_layout,
    collect_participants,
    collect_runs,
    dataset_kind,
    find_confounds,
    load_filter_file,
    preprocessed_bold_under,
)
from ..bids.provenance import now
from . import commit, console
from .errors import EXIT_DATA, EXIT_NOINPUT, EXIT_USAGE, AppError, output_exit_code
from .settings import Denoising, Settings

__all__ = [
    "AUTO_STRATEGY_RECORD",
    "Inputs",
    "Plan",
    "check_inputs",
    "confound_parameters",
    "decide_auto_strategy",
    "plan_runs",
    "prepare_output",
]

#: Where ``--denoise-strategy auto`` is decided once for the output dataset.
AUTO_STRATEGY_RECORD = Path("logs") / "denoise_strategy_auto.json"


@dataclass(frozen=True)
class Inputs:
    """The checked input datasets and participants of an invocation.

    Attributes
    ----------
    kind : str
        ``raw`` or ``derivative`` (of ``bids_dir``).
    participants : tuple of str
        Labels to process, without ``sub-``.
    filters : Mapping or None
        Content of ``--bids-filter-file``.
    dataset_links : Mapping
        Name -> root of every input dataset (``raw``/``preprocessed``, then the
        ``--derivatives``), for BIDS URIs and ``DatasetLinks``.
    source_descriptions : tuple of dict
        ``dataset_description.json`` of the input derivatives (their ``GeneratedBy``).
    """

    kind: str
    participants: tuple[str, ...]
    filters: Mapping | None
    dataset_links: Mapping
    source_descriptions: tuple = ()

    @property
    def derivatives_mode(self) -> bool:
        """Process preprocessed (fMRIPrep) BOLD rather than raw BOLD."""
        return self.kind == "derivative" or len(self.dataset_links) > 1


@dataclass(frozen=True)
class Plan:
    """The runs of an invocation and the confound strategy decided for them.

    Attributes
    ----------
    inputs : Inputs
    runs : tuple of RunInputs
    strategy : str
        The strategy in force (``auto`` resolved).
    auto_resolved : bool
        ``strategy`` came from ``--denoise-strategy auto``.
    """

    inputs: Inputs
    runs: tuple[RunInputs, ...]
    strategy: str
    auto_resolved: bool = False


def confound_parameters(denoising: Denoising, strategy: str) -> dict | None:
    """Parameters of ``select_confounds`` for ``strategy`` (None when not denoising).

    Parameters
    ----------
    denoising : Denoising
        The options of the strategy (and the custom strategy file).
    strategy : str
        The strategy in force: ``none``, a nilearn preset or ``custom``.

    Raises
    ------
    ValueError
        An option the strategy does not take, or an invalid value.
    """
    if strategy == "none":
        return None
    options = {k: v for k, v in denoising.options.items() if v is not None}
    if strategy == "custom":
        custom = load_strategy_file(denoising.custom_strategy)
        preset = custom.pop("denoise_strategy")
        columns = custom.pop("columns", None)
        check_file_overrides(custom, preset, options)
        params = strategy_parameters(preset, **{**custom, **options})
        if columns:
            params["columns"] = columns
        return params
    return strategy_parameters(strategy, **options)


def _require_files(settings: Settings) -> None:
    for path in (
        settings.denoising.custom_strategy,
        settings.mask_img,
        settings.execution.config_file,
    ):
        if path is None or Path(path).is_file():
            continue
        if Path(path).exists():
            raise AppError(f"input file '{path}' is not a file.", EXIT_NOINPUT)
        raise AppError(f"input file '{path}' does not exist.", EXIT_NOINPUT)


def _dataset_links(settings: Settings, kind: str) -> dict:
    bids_dir = settings.selection.bids_dir
    links = {"preprocessed" if kind == "derivative" else "raw": bids_dir}
    for name, path in settings.selection.derivatives.items():
        links[name] = Path(path).absolute()
    return links


def _source_descriptions(links: Mapping) -> tuple:
    sources = []
    for path in links.values():
        try:
            description = json.loads((Path(path) / "dataset_description.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        # Only the processing chain goes into GeneratedBy (fMRIPrep's entry, not the raw's).
        if description.get("DatasetType") == "derivative":
            sources.append(description)
    return tuple(sources)


def check_inputs(settings: Settings) -> Inputs:
    """Check the datasets, the selection and the strategy; nothing is written.

    Raises
    ------
    AppError, BIDSInputError
        With the exit code of the problem (16, 18, 64, 65, 66).
    """
    for each in settings.each_strategy():
        _require_files(each)
    selection = settings.selection
    kind = dataset_kind(selection.bids_dir)
    for name, path in selection.derivatives.items():
        if not Path(path).is_dir():
            raise BIDSInputError(f"--derivatives {name}: '{path}' does not exist.", 66)
        dataset_kind(path)
    filters = load_filter_file(selection.bids_filter_file) if selection.bids_filter_file else None
    participants = collect_participants(
        selection,
        on_missing=lambda labels: console.warning(
            f"participant(s) {', '.join(labels)} not found in the dataset; skipped."
        ),
    )
    for each in settings.each_strategy():
        denoising = each.denoising
        if denoising.custom_strategy is not None:
            try:
                load_strategy_file(denoising.custom_strategy)
            except ValueError as exc:
                raise AppError(str(exc), EXIT_DATA) from exc
        try:
            # Each strategy's options are checked up front ('auto' as if confounds exist).
            strategy = denoising.denoise_strategy
            confound_parameters(denoising, "simple" if strategy == "auto" else strategy)
        except ValueError as exc:
            if denoising.custom_strategy is None:
                raise AppError(str(exc), EXIT_USAGE) from exc
            message = f"strategy file '{denoising.custom_strategy}': {exc}"
            given = any(value is not None for value in denoising.options.values())
            # The file alone is at fault (EX_DATAERR, as for its other errors), or the file
            # with the strategy options of the command line (a usage error).
            raise AppError(message, EXIT_USAGE if given else EXIT_DATA) from exc
    links = _dataset_links(settings, kind)
    return Inputs(
        kind=kind,
        participants=tuple(participants),
        filters=filters,
        dataset_links=MappingProxyType(links),
        source_descriptions=_source_descriptions(links),
    )


def prepare_output(settings: Settings, inputs: Inputs) -> None:
    """Create the work and output directories and the dataset-level files.

    An array task leaves ``dataset_description.json`` and ``.bidsignore`` to the process that
    submitted the array (they are written once). The options of the invocation are recorded
    under ``logs/``.

    Raises
    ------
    AppError
        73: a directory or file cannot be created.
    """
    work_dir, out_dir = settings.execution.work_dir, settings.output_dir
    try:
        # The work directory first: a bad -w must not leave an empty output directory.
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "it is a file" if work_dir.is_file() else exc
        raise AppError(
            f"cannot create the work directory '{work_dir}': {reason}",
            output_exit_code(exc.errno),
        ) from exc
    try:
        if out_dir.resolve() == settings.selection.bids_dir.resolve():
            raise OSError("the output directory must differ from the input dataset")
        out_dir.mkdir(parents=True, exist_ok=True)
        if not settings.slurm.array_task:
            deriv.write_dataset_description(
                out_dir,
                dataset_links=dict(inputs.dataset_links),
                source_descriptions=inputs.source_descriptions,
            )
            deriv.write_bidsignore(out_dir)
        _log_options(settings)
        # What killed invocations left (staged sets, unfinished commits) is dealt with
        # before anything new is written.
        for line in commit.sweep(out_dir):
            console.progress(f"masker-wf: {line}")
    except (OSError, ValueError) as exc:
        raise AppError(
            f"cannot create the output in '{out_dir}': {exc}",
            output_exit_code(getattr(exc, "errno", None)),
        ) from exc


def _log_options(settings: Settings) -> None:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
    labels = "-".join(settings.selection.participant_label or ["all"])[:60]
    name = f"masker-wf_{stamp}_{labels}_{os.getpid()}.json"
    deriv.write_json(settings.output_dir / "logs" / name, dict(settings.options))


def plan_runs(settings: Settings, inputs: Inputs) -> Plan:
    """Index the dataset, resolve every run to plain paths, decide ``auto`` once.

    With ``--dry-run`` nothing is written: the ``auto`` decision is read or made without
    being recorded, and the index is built in memory (``--bids-database-dir`` is neither
    created nor updated).

    Raises
    ------
    BIDSInputError
        The dataset cannot be indexed (16) or the selection matches no BOLD (18).
    """
    selection, denoising = settings.selection, settings.denoising
    named = ", ".join(inputs.participants)
    if len(inputs.participants) > 12:
        # a thousand labels are no progress message: the first and last ones, and how many
        first, last = inputs.participants[:5], inputs.participants[-5:]
        named = f"{', '.join(first)} ... {', '.join(last)} ({len(inputs.participants)})"
    console.progress(f"masker-wf: indexing {selection.bids_dir} for participant(s) {named}")
    layout = build_layout(
        selection.bids_dir,
        derivatives=dict(selection.derivatives),
        participants=list(inputs.participants),
        # A dry run writes nothing, not even pybids' index: it indexes in memory.
        database_dir=None if settings.execution.dry_run else selection.bids_database_dir,
        raw_kind=inputs.kind,
    )
    aroma = denoising.denoise_strategy == "ica_aroma"
    runs = collect_runs(
        layout,
        list(inputs.participants),
        derivatives_mode=inputs.derivatives_mode,
        space=selection.space,
        session=selection.session_id,
        task=selection.task_id,
        run=selection.run_id,
        bids_filters=inputs.filters,
        aroma=aroma and (denoising.options["ica_aroma"] or "full") == "full",
    )
    found = sorted({run.subject for run in runs})
    without_bold = [label for label in inputs.participants if label not in found]
    if without_bold:
        console.warning(
            f"no preprocessed BOLD run matches the selection for participant(s) "
            f"{', '.join(without_bold)}; skipped."
        )
    strategy, auto = denoising.denoise_strategy, False
    if strategy == "auto":
        strategy, auto = decide_auto_strategy(settings, inputs), True
    _warn_raw_beside_preprocessed(settings, inputs)
    plan = Plan(inputs, tuple(runs), strategy, auto)
    _warn_ignored_mask_options(settings, plan)
    console.progress(f"masker-wf: {len(runs)} run(s) of {len(found)} participant(s) to process")
    return plan


def _auto_choice(settings: Settings, inputs: Inputs) -> dict:
    """``auto`` over the whole input: ``simple`` when any run of the preprocessed dataset(s)
    has fMRIPrep confounds (whichever participants are selected), else ``none``."""
    roots = []
    if inputs.derivatives_mode:
        roots = [settings.selection.bids_dir] if inputs.kind == "derivative" else []
        roots += [Path(p) for p in settings.selection.derivatives.values()]
    for root in roots:
        found = find_confounds(root)
        if found is not None:
            return {"denoise_strategy": "simple", "because": f"fMRIPrep confounds ({found})"}
    return {"denoise_strategy": "none", "because": "no fMRIPrep confounds in the input"}


def _read_auto_record(path: Path) -> dict | None:
    """The recorded ``auto`` decision, or None when there is none (or it is unreadable)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "denoise_strategy" in record else None


def decide_auto_strategy(settings: Settings, inputs: Inputs) -> str:
    """The strategy ``--denoise-strategy auto`` stands for in this output dataset.

    Decided once, over the whole input dataset, and recorded in
    ``<output_dir>/logs/denoise_strategy_auto.json``; later invocations (other
    participants, SLURM array tasks) reuse the record, so one output dataset never mixes
    strategies and a run without confounds fails instead of being processed differently.
    Delete the record (or pass a strategy) to decide again. A dry run reads the record
    when there is one and otherwise says what would be recorded: it writes nothing (no
    record, no lock, no directory).
    """
    out_dir = settings.output_dir
    path = out_dir / AUTO_STRATEGY_RECORD
    if settings.execution.dry_run:
        # The record is replaced atomically: reading it needs no lock.
        record = _read_auto_record(path)
        how = "as recorded in" if record is not None else "would be recorded in"
        if record is None:
            record = _auto_choice(settings, inputs)
    else:
        lock = out_dir / commit.STATE_DIR / "locks" / "denoise_strategy_auto.lock"
        with commit.locked(lock):
            record = _read_auto_record(path)
            how = "as recorded in"
            if record is None:
                record = {**_auto_choice(settings, inputs), "decided": now()}
                record["input"] = {k: str(v) for k, v in inputs.dataset_links.items()}
                how = "recorded in"
                try:
                    deriv.write_json(path, record)
                except OSError as exc:
                    raise AppError(
                        f"cannot record the auto strategy in '{path}': {exc}",
                        output_exit_code(exc.errno),
                    ) from exc
    strategy = record["denoise_strategy"]
    console.progress(
        f"masker-wf: --denoise-strategy auto: '{strategy}' for this output dataset "
        f"({record.get('because', 'decided earlier')}; {how} {path})"
    )
    return strategy


def _warn_raw_beside_preprocessed(settings: Settings, inputs: Inputs) -> None:
    """Raw BOLD cleaned while ``derivatives/`` holds preprocessed BOLD of the same subjects."""
    if inputs.kind != "raw" or inputs.derivatives_mode:
        return
    for root in preprocessed_bold_under(settings.selection.bids_dir, inputs.participants):
        console.warning(
            f"cleaning the raw BOLD of '{settings.selection.bids_dir}', while '{root}' holds "
            f"preprocessed (desc-preproc) BOLD runs of these participants; pass "
            f"--derivatives {root.name}={root} to clean those instead."
        )


def _warn_ignored_mask_options(settings: Settings, plan: Plan) -> None:
    """--mask-strategy/--mask-args do nothing for runs whose mask is given: say so."""
    masker = settings.masker
    options = []
    if masker["mask_args"]:
        options.append("--mask-args")
    if masker["mask_strategy"] != "background" or "mask_strategy" in settings.given:
        options.append("--mask-strategy")
    if not options:
        return
    if settings.mask_img is not None:
        console.warning(f"{'/'.join(options)} ignored: --mask-img gives the mask of every run.")
        return
    given = [r for r in plan.runs if settings.selection.use_input_mask and r.mask_file is not None]
    if given:
        console.warning(
            f"{'/'.join(options)} ignored for {len(given)} of {len(plan.runs)} run(s) that use "
            "fMRIPrep's brain mask (pass --no-use-input-mask to compute the mask instead)."
        )
