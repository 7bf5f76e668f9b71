"""Summarise: subject pages and failure logs of a participant-level invocation, its exit
code, and the group level (summary table and index page over every processed run).

Both read the runs' provenance records, so a page lists every run in the output dataset,
whichever invocation (or SLURM array task) processed it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..bids import derivatives as deriv
from ..bids import naming
from ..bids.methods import subject_methods
from ..bids.provenance import software_versions
from . import console
from .errors import EXIT_DATA, EXIT_FAILED_RUNS, EXIT_NOINPUT, EXIT_OK
from .run import RunResult

__all__ = ["exit_code", "run_group", "summarise", "write_subject_report"]

#: Software named in the methods paragraph.
_METHODS_SOFTWARE = ("masker-wf", "numpy", "scipy", "nibabel", "pydra")


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else value


def _provenance_records(out_dir: Path, subject: str | None = None):
    pattern = naming.participant_id(subject) if subject else "sub-*"
    for path in sorted(Path(out_dir).glob(f"{pattern}/**/*_provenance.json")):
        try:
            yield json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue


def write_subject_report(out_dir, subject: str, results, desc: str) -> Path:
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
    desc : str
        ``desc-`` label of this invocation: the methods paragraph covers its runs.
    """
    from ..reports import build_subject_report

    out_dir = Path(out_dir)
    # One entry per output (a run may have outputs at several resolutions or descs).
    records = {r["Outputs"]["bold"]: r for r in _provenance_records(out_dir, subject)}
    runs = []
    for key in sorted(records):
        bold = records[key]["Outputs"]["bold"]
        runs.append(
            {
                "name": naming.run_name(bold),
                "report": deriv.relative_link(out_dir / naming.output_report_path(bold), out_dir),
                **{k: _fmt(v) for k, v in records[key]["Summary"].items()},
            }
        )
    errors = [{"name": r.name, "reason": r.reason} for r in results if not r.ok]
    versions = software_versions()
    text = subject_methods(
        [
            records[key]
            for key in sorted(records)
            if records[key].get("Parameters", {}).get("desc", desc) == desc
        ],
        {k: versions[k] for k in versions if k in _METHODS_SOFTWARE},
    )
    report = build_subject_report(subject, runs, text, errors)
    return report.save_as_html(out_dir / naming.subject_report_path(subject))


def _write_failure_logs(out_dir: Path, results) -> None:
    # One failure log per subject, removed once the subject succeeds, so logs/ shows what
    # still needs attention.
    for subject in sorted({r.subject for r in results}):
        path = out_dir / naming.failure_log_path(subject)
        failures = [r for r in results if r.subject == subject and not r.ok]
        if failures:
            deriv.write_json(
                path, [{"run": r.name, "bold": r.bold_file, "reason": r.reason} for r in failures]
            )
        else:
            path.unlink(missing_ok=True)


def exit_code(results) -> int:
    """0 all succeeded; 66 all failed for a missing input; 65 all on their data; else 1."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return EXIT_OK
    if len(failed) == len(results) and all(r.kind == "missing" for r in failed):
        return EXIT_NOINPUT
    if len(failed) == len(results) and all(r.kind in ("data", "missing") for r in failed):
        return EXIT_DATA
    return EXIT_FAILED_RUNS


def summarise(results: list[RunResult], settings) -> int:
    """Subject pages, failure logs and the final message; return the exit code."""
    out_dir = settings.output_dir
    if settings.reports:
        for subject in sorted({r.subject for r in results}):
            try:
                write_subject_report(
                    out_dir,
                    subject,
                    [r for r in results if r.subject == subject],
                    settings.outputs.desc,
                )
            except Exception as exc:  # a report must not hide the processing result
                console.progress(f"masker-wf: subject report of sub-{subject} failed: {exc}")
    _write_failure_logs(out_dir, results)
    failed = [r for r in results if not r.ok]
    console.progress(
        f"\nmasker-wf: {len(results) - len(failed)}/{len(results)} runs succeeded "
        f"(outputs in {out_dir})"
    )
    for r in failed:
        console.progress(f"  FAILED {r.name}: {r.reason}")
    return exit_code(results)


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
}


def _group_rows(out_dir: Path, wanted: set) -> list[dict]:
    rows = []
    for record in _provenance_records(out_dir):
        bold = record["Outputs"].get("bold")
        entities = naming.run_entities(bold)
        if wanted and entities.get("subject") not in wanted:
            continue
        rows.append(
            {
                "subject": entities.get("subject"),
                "session": entities.get("session", "n/a"),
                "task": entities.get("task", "n/a"),
                "run": entities.get("run", "n/a"),
                "space": entities.get("space", "n/a"),
                "bold": bold,
                **record["Summary"],
                "seconds": record.get("Seconds"),
            }
        )
    return rows


def _index_page(frame, failures, tsv: Path, out_dir: Path):
    from ..reports.html import HTMLReport, section, table

    body = [f"<h1>masker-wf: {len(frame)} runs, {frame['subject'].nunique()} subjects</h1>"]
    numeric = frame.select_dtypes("number")
    body.append(section("Group means", table({c: float(numeric[c].mean()) for c in numeric})))
    header = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body_rows = []
    for _, row in frame.iterrows():
        cells = []
        for column, value in row.items():
            text = html.escape(str(_fmt(value)))
            if column == "subject":
                text = f"<a href='{naming.subject_report_path(text)}'>sub-{text}</a>"
            cells.append(f"<td>{text}</td>")
        body_rows.append("<tr>" + "".join(cells) + "</tr>")
    body.append(section("Runs", f"<table><tr>{header}</tr>{''.join(body_rows)}</table>"))
    if failures:
        failed_rows = "".join(
            f"<tr><td><a href='{naming.subject_report_path(html.escape(f['subject']))}'>"
            f"sub-{html.escape(f['subject'])}</a></td>"
            f"<td>{html.escape(str(f.get('run', '')))}</td>"
            f"<td>{html.escape(str(f.get('reason', '')))}</td></tr>"
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
    return HTMLReport("".join(body), title="masker-wf group summary").save_as_html(
        out_dir / "index.html"
    )


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
    deriv.write_json(group / "summary.json", _SUMMARY_COLUMNS)
    index = _index_page(frame, _failures(out_dir, wanted), tsv, out_dir)
    return tsv, index, len(frame)
