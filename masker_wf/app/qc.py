"""How much data a run keeps: its degrees-of-freedom budget, checked before it is cleaned, and
the quality flags of the group table.

:func:`check_budget` computes the budget of a prepared run with the core's
:func:`masker_wf.signal.degrees_of_freedom` (the same cleaning the workflow will do), refuses
the run below ``--min-dof`` or ``--min-time`` and warns below ``--warn-dof``.
:func:`quality_flags` names what is wrong with a processed run in the group table.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .. import signal

__all__ = [
    "TSNR_ABSURD",
    "budget_summary",
    "check_budget",
    "dof_record",
    "dummy_scan_record",
    "quality_flags",
    "run_budget",
]

#: A median tSNR after cleaning above this is not a property of BOLD data (typical values are
#: 20-200): the residuals are rounding noise (too few degrees of freedom) or constant.
TSNR_ABSURD = 1000.0


def budget_summary(budget: signal.DegreesOfFreedom | None) -> dict:
    """The budget's columns of the group table (``dof``, ``seconds_kept``...)."""
    if budget is None:
        return {}
    return {
        "volumes_total": budget.n_volumes,
        "volumes_kept": budget.n_kept,
        "seconds_kept": budget.seconds_kept,
        "confound_regressors": budget.n_confounds,
        "dof": budget.budget,
    }


def run_budget(job, settings) -> signal.DegreesOfFreedom:
    """Degrees-of-freedom budget of ``job`` (a prepared :class:`~masker_wf.app.run.RunJob`).

    Raises
    ------
    TypeError, ValueError
        The validator's refusal of the run's cleaning inputs.
    """
    masker, selection = settings.masker, job.selection
    clean_args = dict(masker.get("clean_args") or {})
    confounds = None
    if selection is not None and selection.columns:
        confounds = selection.confounds.to_numpy(dtype=float)
    return signal.degrees_of_freedom(
        job.n_volumes,
        sample_mask=None if selection is None else selection.sample_mask,
        confounds=confounds,
        detrend=masker["detrend"],
        standardize=masker["standardize"],
        standardize_confounds=masker["standardize_confounds"],
        filter=clean_args.pop("filter", "butterworth"),
        low_pass=masker["low_pass"],
        high_pass=masker["high_pass"],
        t_r=job.t_r,
        extrapolate=clean_args.pop("extrapolate", True),
        # The high-variance confounds are computed from the data: 5 more regressors.
        n_extra_confounds=5 if masker["high_variance_confounds"] else 0,
        **{k: v for k, v in clean_args.items() if k.startswith("butterworth__")},
    )


def check_budget(job, settings):
    """Refuse or flag ``job`` by the data its cleaning leaves; return it with its budget.

    Returns
    -------
    RunJob
        ``job`` with ``dof`` set and, below ``--warn-dof``, a warning in its ``notes``.

    Raises
    ------
    masker_wf.app.run.RunError
        Fewer degrees of freedom than ``--min-dof``, or fewer seconds than ``--min-time``;
        its ``summary`` holds the numbers for the group table.
    """
    try:
        budget = run_budget(job, settings)
    except (TypeError, ValueError):
        # A bad input: the workflow's door check reports it, with its step and file.
        return job
    guards = settings.denoising
    problems = []
    if budget.budget < guards.min_dof:
        problems.append(f"{budget.describe()}, below --min-dof {guards.min_dof}")
    seconds = budget.seconds_kept
    if guards.min_time and (seconds is None or seconds < guards.min_time):
        left = "an unknown duration" if seconds is None else f"{seconds:g} s"
        problems.append(
            f"{left} of data left after censoring, below --min-time {guards.min_time:g} s"
        )
    if problems:
        from .run import RunError  # run imports this module

        error = RunError(
            job.run.bold_file, "refused, too little data left to clean: " + "; ".join(problems)
        )
        error.summary = {"refused": True, **budget_summary(budget)}
        raise error
    notes = job.notes
    if budget.budget < guards.warn_dof:
        notes = (
            *notes,
            f"few degrees of freedom: {budget.describe()}, below --warn-dof {guards.warn_dof}",
        )
    return replace(job, dof=budget, notes=tuple(notes))


def quality_flags(summary, warn_dof: int | None = None) -> list[str]:
    """What is wrong with a run, from its row of the group table.

    Parameters
    ----------
    summary : mapping
        The run's row (``status``, ``refused``, ``dof``, ``dof_warn``, ``tsnr_after``...).
    warn_dof : int, optional
        Threshold when the row does not carry the one it was processed with.

    Returns
    -------
    list of str
        ``refused``, ``failed``, ``low_dof``, ``tsnr_not_finite``, ``tsnr_absurd``; empty
        when nothing is wrong.
    """
    flags = []
    status = summary.get("status", "ok")
    if summary.get("refused"):
        flags.append("refused")
    elif status == "failed":
        flags.append("failed")
    dof, threshold = summary.get("dof"), summary.get("dof_warn", warn_dof)
    if _number(dof) and _number(threshold) and dof < threshold:
        flags.append("low_dof")
    if status != "failed":  # the row describes outputs on disk
        tsnr = summary.get("tsnr_after")
        if tsnr is not None and not _finite(tsnr):
            flags.append("tsnr_not_finite")
        elif _number(tsnr) and tsnr > TSNR_ABSURD:
            flags.append("tsnr_absurd")
    return flags


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def dof_record(job, settings) -> dict | None:
    """The run's budget and the thresholds it was checked against (sidecar, provenance)."""
    if job.dof is None:
        return None
    guards = settings.denoising
    return {
        **job.dof.as_dict(),
        "WarnBelow": guards.warn_dof,
        "RefuseBelow": guards.min_dof,
        "MinTime": guards.min_time,
    }


def dummy_scan_record(job, settings) -> dict:
    """The volumes removed at the start of the run and how they were chosen."""
    if job.selection is not None:
        return job.selection.dummy_scans
    requested = settings.denoising.dummy_scans
    source = "no confounds file" if requested == "auto" else "the first volumes (--dummy-scans)"
    return {"Requested": requested, "Removed": 0, "Volumes": [], "Source": source}
