"""Summarise: subject pages and failure logs of a participant-level invocation, its exit
code, and the group level (summary table and index page over every processed run).

Both read the runs' provenance records, so a page lists every run in the output dataset,
whichever invocation (or SLURM array task) processed it. The group table gives each run a
``status``: ``ok`` (its set is complete and unchanged, and its last attempt succeeded),
``kept-previous`` (the last attempt failed; the row is the earlier set, kept intact),
``failed`` (the last attempt failed and no set exists), ``modified`` (a file of the set was
changed or removed since it was written).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..bids import derivatives as deriv
from ..bids import naming
from ..bids.methods import subject_methods
from ..bids.provenance import now, software_versions
from . import commit, console
from . import qc as quality
from .errors import EXIT_DATA, EXIT_FAILED_RUNS, EXIT_NOINPUT, EXIT_OK, output_exit_code
from .run import RunResult, by_subject

__all__ = ["exit_code", "run_group", "summarise", "write_subject_report"]

#: Software named in the methods paragraph.
_METHODS_SOFTWARE = ("masker-wf", "numpy", "scipy", "nibabel", "pydra")
#: Numbers of a run shown on the subject and group pages.
_RUN_NUMBERS = (
    "volumes_kept",
    "seconds_kept",
    "confound_regressors",
    "dof",
    "voxels_in_mask",
    "mean_fd",
    "tsnr_before",
    "tsnr_after",
)


def _short_name(bold, subject) -> str:
    """The output's name without the subject (the page is the subject's) or the suffix."""
    name = naming.run_name(bold).removeprefix(f"{naming.participant_id(subject)}_")
    return name.removesuffix("_bold")


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else value


def _provenance_files(out_dir: Path, subject: str | None = None):
    """(path, record) of every provenance record of the output dataset (or of a subject)."""
    pattern = naming.participant_id(subject) if subject else "sub-*"
    for path in sorted(Path(out_dir).glob(f"{pattern}/**/*_provenance.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and "Outputs" in record:
            yield path, record


def _provenance_records(out_dir: Path, subject: str | None = None):
    for _, record in _provenance_files(out_dir, subject):
        yield record


def write_subject_report(out_dir, subject: str, results, desc) -> Path:
    """Write ``out/sub-<label>.html`` linking the subject's runs, with the methods paragraph.

    Runs already in ``out_dir`` from earlier invocations (their provenance records) are listed
    too, so the page stays complete when runs are processed by separate jobs.

    Parameters
    ----------
    out_dir : path
        Output dataset root.
    subject : str
        Label without ``sub-``.
    results : sequence of RunResult
        This invocation's runs of the subject (failures are listed on the page).
    desc : str or sequence of str
        ``desc-`` label(s) of this invocation. The methods cover every set the page lists:
        one paragraph per label when there are several (this invocation's first).
    """
    from ..reports import build_subject_report

    out_dir = Path(out_dir)
    # One entry per output (a run may have outputs at several resolutions or descs).
    records = {r["Outputs"]["bold"]: r for r in _provenance_records(out_dir, subject)}
    runs = []
    for key in sorted(records):
        bold = records[key]["Outputs"]["bold"]
        summary = records[key]["Summary"]
        runs.append(
            {
                "name": _short_name(bold, subject),
                "report": deriv.relative_link(out_dir / naming.output_report_path(bold), out_dir),
                **{k: v for k, v in summary.items() if k in _RUN_NUMBERS},
                "warnings": list(records[key].get("Warnings") or []),
                "flags": quality.quality_flags(summary),
            }
        )
    errors = _subject_failures(
        out_dir, subject, results, desc if isinstance(desc, str) else desc[0]
    )
    versions = software_versions()
    versions = {k: versions[k] for k in versions if k in _METHODS_SOFTWARE}
    # Every set the page lists gets its methods: this invocation's labels first, then
    # those of earlier invocations still in the output dataset.
    descs = (desc,) if isinstance(desc, str) else tuple(desc)
    on_disk = {r.get("Parameters", {}).get("desc") for r in records.values()}
    descs += tuple(sorted(d for d in on_disk if d and d not in descs))

    def methods(label):
        return subject_methods(
            [
                records[key]
                for key in sorted(records)
                if records[key].get("Parameters", {}).get("desc", label) == label
            ],
            versions,
        )

    if len(descs) == 1:
        text = methods(descs[0])
    else:
        text = "\n\n".join(f"Outputs labelled desc-{label}: {methods(label)}" for label in descs)
    report = build_subject_report(subject, runs, text, errors)
    return report.save_as_html(out_dir / naming.subject_report_path(subject))


def _subject_failures(out_dir: Path, subject: str, results, desc: str) -> list[dict]:
    """The failed sets the subject page lists: this invocation's, then the failure log's.

    The log keeps the failures of earlier invocations (another strategy, another desc)
    until their set succeeds, so a later invocation's page does not drop them. ``desc``
    labels the results that carry none (one strategy), as in the log.
    """
    failed = [(r.name, r.desc or desc, r.reason) for r in results if not r.ok]
    mine = {(r.name, r.desc or desc) for r in results}
    for entry in _read_failure_log(out_dir / naming.failure_log_path(subject)):
        key = (entry.get("run"), entry.get("desc"))
        if key[0] and key not in mine:
            failed.append((*key, str(entry.get("reason", ""))))
    several = len({label for _, label, _ in failed} | {r.desc or desc for r in results}) > 1
    return [
        {"name": f"{name} (desc-{label})" if several and label else name, "reason": reason}
        for name, label, reason in failed
    ]


def _several_sets(results) -> bool:
    """Whether ``results`` are of several output sets per run (several strategies)."""
    return len({r.desc for r in results}) > 1


def _result_name(result, several: bool) -> str:
    """The run's name, with the ``desc`` of its set when there are ``several``."""
    return f"{result.name} (desc-{result.desc})" if several else result.name


def _write_failure_logs(out_dir: Path, results, desc: str) -> None:
    """Update ``logs/failures_sub-<label>.json``: this invocation's runs replace their entries.

    Each entry is keyed by the run and the ``desc`` of its output set (the result's own, else
    ``desc``), and names the confound strategy.

    A run that succeeded now loses its entry; a run that failed gets one (with the time, so
    that the group level can tell a failure after the outputs on disk from an older one);
    runs this invocation did not process keep theirs. A log left empty is removed, so
    ``logs/`` shows what still needs attention.
    """
    for subject, own in sorted(by_subject(results).items()):
        path = out_dir / naming.failure_log_path(subject)
        mine = {(r.name, r.desc or desc) for r in own}
        entries = [e for e in _read_failure_log(path) if (e.get("run"), e.get("desc")) not in mine]
        entries += [
            {
                "run": r.name,
                "bold": r.bold_file,
                "reason": r.reason,
                "desc": r.desc or desc,
                "denoise_strategy": r.strategy or None,
                "custom_strategy": r.strategy_file or None,
                "kind": r.kind,
                "time": now(),
                # A run refused for too little data keeps its numbers for the group table.
                **({"summary": r.summary} if r.summary else {}),
            }
            for r in own
            if not r.ok
        ]
        if entries:
            deriv.write_json(path, entries)
        else:
            path.unlink(missing_ok=True)


def _read_failure_log(path: Path) -> list[dict]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def exit_code(results) -> int:
    """0 all succeeded; 73/74 a run failed on the output side; 66 all failed for a missing
    input; 65 all on their data; else 1."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return EXIT_OK
    output = [r.exit_code for r in failed if r.kind == "output" and r.exit_code]
    if output:
        # The output dataset cannot take the results: that comes before any run's data.
        return max(output)
    if len(failed) == len(results) and all(r.kind == "missing" for r in failed):
        return EXIT_NOINPUT
    if len(failed) == len(results) and all(r.kind in ("data", "missing") for r in failed):
        return EXIT_DATA
    return EXIT_FAILED_RUNS


def summarise(results: list[RunResult], settings) -> int:
    """Subject pages, failure logs and the final message; return the exit code."""
    out_dir = settings.output_dir
    # The labels of the sets written (several strategies: each one's), in their order.
    descs = tuple(dict.fromkeys(r.desc for r in results if r.desc)) or settings.outputs.descs
    code = exit_code(results)
    try:
        # Before the subject pages: they list the failures the logs keep.
        _write_failure_logs(out_dir, results, settings.outputs.desc)
    except OSError as exc:
        # The runs' outcome is known; a log that cannot be written is an output failure.
        console.error(f"cannot write the failure log in '{out_dir / 'logs'}': {exc}")
        logged = output_exit_code(exc.errno)
        code = max(code, logged) if code in (73, 74) else logged
    if settings.reports:
        for subject, own in sorted(by_subject(results).items()):
            try:
                write_subject_report(out_dir, subject, own, descs)
            except Exception as exc:  # a report must not hide the processing result
                console.progress(f"masker-wf: subject report of sub-{subject} failed: {exc}")
    failed = [r for r in results if not r.ok]
    several = _several_sets(results)
    what = f"output sets ({len(descs)} strategies)" if several else "runs"
    console.progress(
        f"\nmasker-wf: {len(results) - len(failed)}/{len(results)} {what} succeeded "
        f"(outputs in {out_dir})"
    )
    for r in failed:
        console.progress(f"  FAILED {_result_name(r, several)}: {r.reason}")
    return code


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


#: The columns that say which run and output a row is (before the set and its numbers).
_RUN_COLUMNS = {
    "subject": {"Description": "Participant label (without sub-)"},
    "session": {"Description": "Session label (without ses-; n/a without sessions)"},
    "task": {"Description": "Task label"},
    "run": {"Description": "Run label (n/a when the input has none)"},
    "space": {"Description": "Space of the output (fMRIPrep's space entity)"},
    "bold": {"Description": "The cleaned BOLD, relative to the output dataset (n/a: none)"},
    "seconds": {"Description": "Processing time of the set", "Units": "s"},
}

#: The columns that name a row's output set (a run cleaned with several strategies has one
#: set, and a row, for each).
_SET_COLUMNS = {
    "desc": {
        "Description": "desc label of the output set: several confound strategies of one "
        "run are rows of their own (--denoise-strategy/--custom-strategy)"
    },
    "denoise_strategy": {
        "Description": "Confound strategy of the set: a nilearn load_confounds_strategy "
        "preset, or custom (--custom-strategy, --motion, ...)"
    },
    "strategy_file": {"Description": "Name of the --custom-strategy file of a custom set"},
}

_SUMMARY_COLUMNS = {
    "voxels_in_mask": {"Description": "Number of voxels in the mask used"},
    "volumes_total": {"Description": "Volumes in the input BOLD"},
    "volumes_kept": {"Description": "Volumes after censoring (sample_mask)"},
    "mean_fd": {"Description": "Mean framewise displacement", "Units": "mm"},
    "tsnr_before": {
        "Description": "Median temporal SNR of the input in the mask, over the kept "
        "volumes (runs with censored volumes: over a sample of up to 2000 mask voxels)"
    },
    "tsnr_after": {
        "Description": "Median of input mean / cleaned standard deviation (n/a when standardized)"
    },
    "status": {
        "Description": "State of the run's outputs when the group level ran",
        "Levels": {
            "ok": "complete set, unchanged since written; the run's last attempt succeeded",
            "kept-previous": "the last attempt failed (see reason); the row describes the "
            "earlier set, kept intact",
            "failed": "the last attempt failed (see reason); no outputs (qc_flags says "
            "'refused' when the run was refused for too little data left to clean)",
            "modified": "a file of the set was changed or removed after it was written",
        },
    },
    "reason": {"Description": "Why the last attempt failed, or what was modified"},
    "seconds_kept": {"Description": "Seconds of data after censoring", "Units": "s"},
    "confound_regressors": {"Description": "Independent confound regressors of the cleaning"},
    "dof": {
        "Description": "Degrees of freedom left by the cleaning: volumes kept minus confound "
        "regressors, mean/trend terms and the dimensions the temporal filter removes"
    },
    "dof_warn": {"Description": "--warn-dof the run was checked against"},
    "dummy_scans": {"Description": "Volumes removed at the start of the run (--dummy-scans)"},
    "qc_flags": {
        "Description": "What needs a look, comma-separated (n/a: nothing)",
        "Levels": {
            "refused": "too little data left to clean (--min-dof, --min-time): no outputs",
            "failed": "the run failed (see reason)",
            "low_dof": "fewer degrees of freedom than --warn-dof",
            "tsnr_not_finite": "the tSNR after cleaning is not a finite number",
            "tsnr_absurd": "median tSNR after cleaning above 1000: the residuals are "
            "rounding noise or constant",
        },
    },
}


def _set_status(out_dir: Path, path: Path, record: dict) -> tuple[str, str]:
    """(status, reason) of one output set against its record (under the run's lock)."""
    files = record.get("Files")
    if not files:  # a record of a version without content digests: existence only
        missing = [p for p in record["Outputs"].values() if not (out_dir / p).is_file()]
        return ("modified", f"missing: {', '.join(missing)}") if missing else ("ok", "n/a")
    with commit.OutputSet(out_dir, path) as output_set:
        problems = output_set.verify(files)
    return ("modified", "; ".join(problems)) if problems else ("ok", "n/a")


def _failure_entities(failure: dict) -> dict:
    entities = naming.run_entities(Path(str(failure.get("bold", ""))).name)
    return entities if "subject" in entities else {"subject": failure.get("subject")}


def _row(entities: dict, bold, summary: dict, seconds, status: str, reason: str, set_of) -> dict:
    return {
        "subject": entities.get("subject"),
        "session": entities.get("session", "n/a"),
        "task": entities.get("task", "n/a"),
        "run": entities.get("run", "n/a"),
        "space": entities.get("space", "n/a"),
        "desc": set_of.get("desc") or "n/a",
        "denoise_strategy": set_of.get("denoise_strategy") or "n/a",
        "strategy_file": Path(set_of["custom_strategy"]).name
        if set_of.get("custom_strategy")
        else "n/a",
        "bold": bold,
        **summary,
        "seconds": seconds,
        "status": status,
        "reason": reason,
    }


def _group_rows(out_dir: Path, wanted: set) -> list[dict]:
    failures = {}
    for failure in _failures(out_dir, wanted or None):
        failures[(failure.get("run"), failure.get("desc"))] = failure
    rows, matched, listed = [], set(), set()
    for path, record in _provenance_files(out_dir):
        listed.update(record.get("Files") or ())
        listed.update(record["Outputs"].values())
        bold = record["Outputs"].get("bold")
        entities = naming.run_entities(bold)
        if wanted and entities.get("subject") not in wanted:
            continue
        status, reason = _set_status(out_dir, path, record)
        key = (record.get("Run"), record.get("Parameters", {}).get("desc"))
        failure = failures.get(key) or failures.get((key[0], None))
        written = max(str(record.get("EndTime", "")), str(record.get("LastConfirmed", "")))
        if failure is not None:
            matched.add((failure.get("run"), failure.get("desc")))
            if str(failure.get("time", "")) > written and status == "ok":
                status, reason = "kept-previous", str(failure.get("reason", ""))
        parameters = record.get("Parameters", {})
        rows.append(
            _row(
                entities,
                bold,
                record["Summary"],
                record.get("Seconds"),
                status,
                reason,
                parameters,
            )
        )
    numbers = list(_SUMMARY_COLUMNS)[:6]
    for key, failure in failures.items():
        if key not in matched:
            rows.append(
                _row(
                    _failure_entities(failure),
                    "n/a",
                    {**dict.fromkeys(numbers), **(failure.get("summary") or {})},
                    None,
                    "failed",
                    str(failure.get("reason", "")),
                    failure,
                )
            )
    rows += _orphan_rows(out_dir, wanted, listed, numbers)
    for row in rows:
        flags = quality.quality_flags(row)
        row.pop("refused", None)
        row["qc_flags"] = ",".join(flags) if flags else "n/a"
    return rows


def _orphan_rows(out_dir: Path, wanted: set, listed: set, numbers) -> list[dict]:
    """Rows of cleaned BOLDs that no readable provenance record lists: ``modified``.

    A set whose record was deleted or damaged would otherwise vanish from the table while
    its images stay in the output dataset.
    """
    rows = []
    for pattern in ("sub-*/func/*_bold.nii*", "sub-*/ses-*/func/*_bold.nii*"):
        for path in sorted(out_dir.glob(pattern)):
            bold = path.relative_to(out_dir).as_posix()
            if bold in listed:
                continue
            entities = naming.run_entities(bold)
            if wanted and entities.get("subject") not in wanted:
                continue
            try:
                desc = naming.source_entities(bold).get("desc")
                record = naming.output_record_path(bold).as_posix()
            except (KeyError, ValueError):
                continue  # not a name the App writes
            reason = f"no readable provenance record ({record}) lists {bold}"
            rows.append(
                _row(
                    entities,
                    bold,
                    dict.fromkeys(numbers),
                    None,
                    "modified",
                    reason,
                    {"desc": desc},
                )
            )
    return rows


def _index_page(frame, tsv: Path, out_dir: Path):
    """``index.html``: every run of the table, flagged ones first, linked to its report."""
    from ..reports import build_group_report

    rows = []
    for record in frame.to_dict("records"):
        bold = record.get("bold")
        has_outputs = isinstance(bold, str) and bold != "n/a"
        report = out_dir / naming.output_report_path(bold) if has_outputs else None
        flags = record.get("qc_flags")
        rows.append(
            {
                "subject": record["subject"],
                "run": _short_name(bold, record["subject"])
                if has_outputs
                else _failed_run_name(record),
                "report": None
                if report is None or not report.is_file()
                else deriv.relative_link(report, out_dir),
                "subject_page": naming.subject_report_path(record["subject"]),
                "flags": [] if not isinstance(flags, str) or flags == "n/a" else flags.split(","),
                "status": record.get("status"),
                "reason": record.get("reason"),
                "desc": record.get("desc"),
                **{c: _page_value(record.get(c)) for c in _RUN_NUMBERS if c in record},
            }
        )
    report = build_group_report(
        rows,
        table_file=tsv.relative_to(out_dir).as_posix(),
        table_json=tsv.with_suffix(".json").relative_to(out_dir).as_posix(),
    )
    return report.save_as_html(out_dir / "index.html")


def _failed_run_name(record) -> str:
    # Named as the outputs would have been (their desc too: with several strategies, one
    # run has a row per set).
    keys = ("task", "run", "space", "desc")
    parts = [f"{key}-{record[key]}" for key in keys if isinstance(record.get(key), str)]
    return "_".join(p for p in parts if not p.endswith("-n/a")) or "n/a"


def _page_value(value):
    # pandas gives NaN for the n/a of a row without the number (a failed run).
    if isinstance(value, float) and value != value:
        return None
    return value.item() if hasattr(value, "item") else value


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

    out_dir = Path(out_dir)
    wanted = set(participants or ())
    # Finish what killed participant-level commits left, before reading their records.
    commit.sweep(out_dir)
    rows = _group_rows(out_dir, wanted)
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
    deriv.write_json(group / "summary.json", {**_RUN_COLUMNS, **_SET_COLUMNS, **_SUMMARY_COLUMNS})
    index = _index_page(frame, tsv, out_dir)
    return tsv, index, len(frame)
