"""The App's two levels, end to end: plan, run (here or on SLURM), summarise.

``participant``: :func:`masker_wf.app.plan.check_inputs` and
:func:`~masker_wf.app.plan.prepare_output`, then either a SLURM job array
(:func:`masker_wf.app.slurm.submit`) or the runs of :func:`~masker_wf.app.plan.plan_runs`
one after the other (:func:`masker_wf.app.run.process_run`, with Pydra's local workers or
its SLURM worker), then :func:`masker_wf.app.summary.summarise`.

``group``: :func:`masker_wf.app.summary.run_group` over the participant-level outputs.
"""

from __future__ import annotations

from ..bids.layout import strip_sub
from . import console, slurm
from .errors import EXIT_CANTCREAT, EXIT_NOINPUT, EXIT_OK, AppError
from .plan import check_inputs, plan_runs, prepare_output
from .run import process_run
from .settings import Settings
from .summary import run_group, summarise

__all__ = ["group_level", "participant_level"]


def _local_worker(settings: Settings):
    """(worker, n_procs): Pydra's SLURM worker with ``--slurm-worker pydra``, else cf/debug."""
    if settings.slurm.slurm and settings.slurm.slurm_worker == "pydra":
        return slurm.pydra_worker(settings.slurm), None
    n_procs = settings.execution.nprocs or 1
    return ("cf", n_procs) if n_procs > 1 else ("debug", None)


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
    prepare_output(settings, inputs)
    options = settings.slurm
    if options.slurm and options.slurm_worker == "array":
        if array_command is None:
            raise ValueError("participant_level: --slurm needs the array tasks' command")
        return slurm.submit(
            options,
            settings.output_dir,
            list(inputs.participants),
            array_command,
            nprocs=settings.execution.nprocs,
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
    if settings.reports:
        from ..reports.figures import preload_matplotlib

        preload_matplotlib()
    worker, n_procs = _local_worker(settings)
    results = [
        process_run(
            run, plan, settings, worker=worker, n_procs=n_procs, index=i, total=len(plan.runs)
        )
        for i, run in enumerate(plan.runs, start=1)
    ]
    return summarise(results, settings)


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
    try:
        tsv, index, n_runs = run_group(out_dir, participants=participants)
    except FileNotFoundError as exc:
        raise AppError(str(exc), EXIT_NOINPUT) from exc
    except OSError as exc:
        raise AppError(
            f"cannot write the group outputs in '{out_dir}': {exc}", EXIT_CANTCREAT
        ) from exc
    print(f"group summary of {n_runs} runs: {tsv}\nindex page: {index}")
    return EXIT_OK
