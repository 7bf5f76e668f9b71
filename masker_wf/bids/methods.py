"""The methods paragraph of a subject page, from the provenance records of all its runs.

The text itself is written by :func:`masker_wf.reports.methods.methods_paragraph`; this module
only reads what it needs from each run's provenance record (parameters, confound columns,
volumes censored, mask source, output voxel size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..reports.methods import methods_paragraph

__all__ = ["subject_methods"]


def _run_label(name: str) -> str:
    """Short label of a run for the text: its task/session/run entities."""
    parts = [p for p in name.split("_") if p.split("-", 1)[0] in ("ses", "task", "acq", "run")]
    return "_".join(parts) or name


def _run_facts(record: Mapping) -> dict:
    """Parameters and facts of one run, as :func:`methods_paragraph` reads them."""
    summary = record.get("Summary")
    censored = int(summary["volumes_total"]) - int(summary["volumes_kept"]) if summary else None
    source = record.get("MaskSource") or (
        "input" if record.get("Inputs", {}).get("mask") else "computed"
    )
    return {
        **dict(record.get("Parameters", {})),
        "run": _run_label(record.get("Run", "")),
        # Parameters["confounds"] holds the strategy's options; these are the columns used.
        "confounds": list(record.get("Confounds") or []),
        "confounds_parameters": dict(record.get("Parameters", {}).get("confounds") or {}),
        "n_volumes_censored": censored,
        # Independent regressors on the kept volumes (fewer than the columns when some are
        # collinear there).
        "n_independent_confounds": (record.get("DegreesOfFreedom") or {}).get(
            "ConfoundRegressors"
        ),
        "mask_source": source,
        "output_voxel_size": record.get("OutputVoxelSize"),
    }


def subject_methods(records: Sequence[Mapping], versions: Mapping) -> str:
    """Methods paragraph over the provenance records (``*_provenance.json``) of a subject.

    Parameters
    ----------
    records : sequence of mappings
        One provenance record per run (``Run``, ``Parameters``, ``Confounds``, ``Summary``,
        ``MaskSource``...).
    versions : mapping
        Software name -> version.

    Returns
    -------
    str
        The paragraph: censoring and confounds per run when they differ, the filter actually
        used, and the interpolation of censored volumes only when a Butterworth filter ran.
    """
    return methods_paragraph([_run_facts(record) for record in records], versions)
