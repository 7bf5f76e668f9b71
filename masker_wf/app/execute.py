"""The App's two levels, end to end: plan, run (here or on SLURM), summarise.

``participant``: :func:`masker_wf.app.plan.check_inputs` and
:func:`~masker_wf.app.plan.prepare_output`, then either a SLURM job array
(:func:`masker_wf.app.slurm.submit`) or the runs of :func:`~masker_wf.app.plan.plan_runs`
up to ``--nprocs`` at once (:func:`masker_wf.app.run.process_run` in
:func:`masker_wf.app.parallel.process_runs`; with ``--slurm-worker pydra``, one after the
other through Pydra's SLURM worker), then :func:`masker_wf.app.summary.summarise`.

``group``: :func:`masker_wf.app.summary.run_group` over the participant-level outputs.
"""

from __future__ import annotations

import gc
import shutil
from dataclasses import replace

from ..bids.layout import strip_sub
from . import console, parallel, slurm
from .errors import (
    EXIT_CANTCREAT,
    EXIT_NOINPUT,
    EXIT_NOTHING,
    EXIT_OK,
    AppError,
    check_interrupted,
)
from .plan import check_inputs, confound_parameters, plan_runs, prepare_output
from .run import RunResult, by_subject, process_run, strategy_label
from .settings import Settings
from .summary import exit_code, run_group, summarise

__all__ = ["group_level", "participant_level"]


def _process_runs(plan, settings: Settings) -> list[RunResult]:
    """Every run of ``plan``, up to ``--nprocs`` at once (see :mod:`masker_wf.app.parallel`).

    A run's workflow is a chain: it runs in its process (Pydra's debug worker), its steps
    on ``--omp-nthreads`` threads. With ``--slurm-worker pydra`` every node is a SLURM job
    instead, and the runs are submitted one after the other.
    """
    runs = plan.runs

    def one(i: int, worker="debug") -> RunResult:
        run = runs[i]
        # each participant's Pydra cache and intermediates in its own work directory
        return process_run(
            run,
            plan,
            settings.for_participant(run.subject),
            worker=worker,
            index=i + 1,
            total=len(runs),
        )

    if settings.slurm.slurm and settings.slurm.slurm_worker == "pydra":
        worker = slurm.pydra_worker(settings.slurm)
        return [one(i, worker) for i in range(len(runs))]
    limits = parallel.resources(settings.execution, len(runs))
    console.progress(f"masker-wf: {limits.describe()}")
    estimates = [parallel.estimate_run_memory_mb(run, settings) for run in runs]
    for i, (run, memory) in enumerate(zip(runs, estimates, strict=True), start=1):
        console.progress(f"[{i}/{len(runs)}] {run.name}: estimated memory {memory} MB")

    def failed(i: int, reason: str) -> RunResult:
        run = runs[i]
        console.progress(f"[{i + 1}/{len(runs)}] {run.name}: FAILED: {reason}")
        return RunResult.of(run, ok=False, reason=f"{run.bold_file}: {reason}", kind="error")

    preload = None
    if settings.reports:
        from ..reports.figures import preload_matplotlib as preload
    # What is alive now (modules, the pybids index, the plan) lives as long as the runs:
    # out of the collector's full passes, whose cost per run would otherwise grow with the
    # dataset (the up-to-date rerun of 160 participants cost 23 % more per run than of 40),
    # and not copied into forked workers by the collector touching it. Garbage already
    # unreachable is collected first, not frozen with the rest.
    gc.collect()
    gc.freeze()
    check_interrupted()  # Ctrl-C during the collection: its exception is swallowed there
    return parallel.process_runs(len(runs), one, estimates, limits, failed, setup=preload)


def participant_level(settings: Settings, array_command: slurm.ArrayCommand | None = None) -> int:
    """Process (or submit) the selected runs; return the exit code.

    Parameters
    ----------
    settings : Settings
    array_command : ArrayCommand, optional
        What the array tasks run; needed with ``--slurm`` (``--slurm-worker array``).

    Raises
    ------
    AppError, masker_wf.bids.layout.BIDSInputError
        The invocation cannot go on (the exit code is on the error).
    """
    inputs = check_inputs(settings)
    dry_run = settings.execution.dry_run
    if not dry_run:
        prepare_output(settings, inputs)
    options = settings.slurm
    if options.slurm and options.slurm_worker == "array":
        if array_command is None:
            raise ValueError("participant_level: --slurm needs the array tasks' command")
        # Planning is linear in the number of files: the submitter plans every run, so that
        # a selection without BOLD fails here, not in every task, and tasks are sized.
        plan = plan_runs(settings, inputs)
        return slurm.submit(
            options,
            settings.output_dir,
            plan.runs,
            array_command,
            resources=slurm.TaskResources(
                nprocs=settings.execution.nprocs,
                omp_nthreads=settings.execution.omp_nthreads,
                mem_mb=settings.execution.mem_mb,
            ),
            dry_run=dry_run,
            estimate_memory=lambda run: parallel.estimate_run_memory_mb(run, settings),
            strategies=len(settings.each_strategy()),
        )
    if options.slurm:
        try:
            slurm.require_slurm_programs("sbatch", "squeue", "scontrol")
        except FileNotFoundError as error:
            console.progress(f"masker-wf --slurm: {error}")
            return 1
        console.progress(
            "masker-wf --slurm --slurm-worker pydra: running here, every workflow node is a "
            "SLURM job (Pydra cache and job scripts under the work directory)"
        )
    plan = plan_runs(settings, inputs)
    if dry_run:
        plans = [(settings, plan)]
        if settings.denoising.strategies:
            # What the run refuses before any work (ICA-AROMA's inputs, whichever strategy
            # asks for them), the dry run refuses too.
            plans = [
                (each, _strategy_plan(plan, each, inputs)) for each in settings.each_strategy()
            ]
        return _print_plan(plan, settings, _missing_confounds(plans), len(plans))
    if settings.denoising.strategies:
        return _process_strategies(plan, settings, inputs)
    results = _labelled(_process_runs(plan, settings), settings, plan)
    code = summarise(results, settings)
    _finish_participants(settings, results)
    return code


def _labelled(results, each: Settings, plan) -> list[RunResult]:
    """``results`` with the ``desc`` and the strategy of their output sets."""
    custom = each.denoising.custom_strategy
    labels = {
        "desc": each.outputs.desc,
        "strategy": plan.strategy,
        "strategy_file": "" if custom is None else str(custom),
    }
    return [replace(r, **labels) for r in results]


def _process_strategies(plan, settings: Settings, inputs) -> int:
    """Every run cleaned with each strategy of the invocation, one strategy after the other.

    The runs' workflows share each participant's Pydra cache: from the second strategy on,
    the mask, the resampled BOLD and the smoothed signals are served from it (the BOLD is
    not read again), and only the cleaning runs. Each strategy's outputs carry its own ``desc``.
    """
    results = []
    # Every strategy is planned before any runs: one missing its inputs (ICA-AROMA's) is
    # refused before the others have written anything, whatever the order given.
    plans = [(each, _strategy_plan(plan, each, inputs)) for each in settings.each_strategy()]
    for each, own_plan in plans:
        name = _strategy_name(each)
        console.progress(f"masker-wf: strategy '{name}': outputs desc-{each.outputs.desc}")
        results += _labelled(_process_runs(own_plan, each), each, own_plan)
    # One summary of every strategy: the subject pages list each failure with its desc,
    # and the last line counts every output set.
    code = summarise(results, settings)
    _finish_participants(settings, results)
    return code


def _strategy_plan(plan, each: Settings, inputs):
    """The plan of one strategy of several: the invocation's, or its own for ICA-AROMA."""
    strategy = each.denoising.denoise_strategy
    # Planning depends on the strategy only for ICA-AROMA's inputs.
    if (strategy == "ica_aroma") == (plan.strategy == "ica_aroma"):
        return replace(plan, strategy=strategy, auto_resolved=False)
    return plan_runs(each, inputs)


def _finish_participants(settings: Settings, results) -> None:
    """Tell the submitter how each participant of an array task ended; clean work dirs."""
    by_participant = by_subject(results)
    if settings.slurm.array_task:
        labels = [strip_sub(label) for label in settings.selection.participant_label or ()]
        slurm.write_task_results(
            settings.output_dir,
            {
                label: exit_code(by_participant[label])
                if label in by_participant
                else EXIT_NOTHING
                for label in labels or by_participant
            },
        )
    if settings.execution.clean_workdir:
        for label, runs in sorted(by_participant.items()):
            # only once every run's outputs are committed: a failed run resumes from it
            if all(result.ok for result in runs):
                work_dir = settings.execution.participant_work_dir(label)
                shutil.rmtree(work_dir, ignore_errors=True)
                console.progress(f"masker-wf: --clean-workdir: removed {work_dir}")


def _missing_confounds(plans) -> list[tuple]:
    """``(run, strategy)`` of each run that a strategy needing confounds would fail on."""
    missing = []
    for each, plan in plans:
        if confound_parameters(each.denoising, plan.strategy) is None:
            continue
        label = _strategy_name(each) if each.denoising.custom_strategy else plan.strategy
        missing += [(run, label) for run in plan.runs if run.confounds_file is None]
    return missing


def _print_plan(plan, settings: Settings, missing=(), n_strategies: int = 1) -> int:
    """``--dry-run``: the runs of each participant and the largest run's memory.

    Runs that would fail for a missing confounds file are listed, and the exit code is
    the run's: 66 when every output set (run and strategy) would fail so, else 1.
    """
    runs = plan.runs
    by_participant = by_subject(runs)
    strategies = settings.each_strategy()
    if len(strategies) > 1:
        named = ", ".join(
            f"'{_strategy_name(each)}' (desc-{each.outputs.desc})" for each in strategies
        )
        strategy_text = f"confounds strategies {named}"
    else:
        strategy_text = f"confounds strategy '{plan.strategy}'"
    print(
        f"masker-wf --dry-run: {len(runs)} run(s) of {len(by_participant)} participant(s), "
        f"{strategy_text}; nothing is processed"
    )
    for label, own in by_participant.items():
        print(f"  sub-{label}: {', '.join(run.name for run in own)}")
    memory = slurm.largest_run_memory_mb(
        runs, lambda run: parallel.estimate_run_memory_mb(run, settings)
    )
    if memory is not None:
        print(f"estimated memory of the largest run: {memory} MB")
    for run, strategy in missing:
        print(
            f"  would fail: {run.name}: the '{strategy}' denoising strategy needs fMRIPrep's "
            "confounds file, and none was found for this run"
        )
    if missing:
        return EXIT_NOINPUT if len(missing) == len(runs) * n_strategies else 1
    return EXIT_OK


def _strategy_name(each: Settings) -> str:
    return strategy_label(each.denoising.denoise_strategy, each.denoising.custom_strategy)


def group_level(settings: Settings) -> int:
    """Summary table and index page over the participant-level outputs; the exit code.

    Raises
    ------
    AppError
        66 without input or outputs to summarise, 73 when the outputs cannot be written.
    """
    bids_dir, out_dir = settings.selection.bids_dir, settings.output_dir
    if not bids_dir.is_dir():
        raise AppError(f"BIDS directory '{bids_dir}' does not exist.", EXIT_NOINPUT)
    if not out_dir.is_dir():
        raise AppError(
            f"output directory '{out_dir}' does not exist; run 'participant' first.",
            EXIT_NOINPUT,
        )
    labels = settings.selection.participant_label or ()
    participants = [strip_sub(label) for label in labels] or None
    if settings.execution.dry_run:
        print(
            f"masker-wf --dry-run: would summarise the participant-level outputs of "
            f"'{out_dir}' into '{out_dir / 'group'}' and '{out_dir / 'index.html'}'; "
            "nothing is written"
        )
        return EXIT_OK
    try:
        tsv, index, n_runs = run_group(out_dir, participants=participants)
    except FileNotFoundError as exc:
        raise AppError(str(exc), EXIT_NOINPUT) from exc
    except OSError as exc:
        raise AppError(
            f"cannot write the group outputs in '{out_dir}': {exc}", EXIT_CANTCREAT
        ) from exc
    print(f"group summary of {n_runs} output set(s): {tsv}\nindex page: {index}")
    return EXIT_OK
