"""Self-contained HTML reports: one per run (also what ``NiftiMasker.generate_report`` returns)
and one per subject that links the runs' reports and carries the methods paragraph."""

from __future__ import annotations

import html
import os
import tempfile
import webbrowser
from collections.abc import Iterable, Mapping
from pathlib import Path

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1000px;color:#1f2328;line-height:1.45}
h1{font-size:1.5em;border-bottom:1px solid #d0d7de;padding-bottom:.3em}
h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;font-size:.92em}
th{background:#f6f8fa}
img{max-width:100%;height:auto;display:block;margin:.4em 0}
.warning{background:#fff8c5;border:1px solid #d4a72c;padding:.5em .8em;margin:.3em 0}
.methods{background:#f6f8fa;border-left:4px solid #0969da;padding:.6em 1em}
code{font-size:.9em}
"""


class HTMLReport:
    """An HTML report held in memory.

    Displays itself in Jupyter (``_repr_html_``), converts to a string
    (``get_html``/``str``) and saves to disk (``save_as_html``).
    """

    def __init__(self, body: str, title: str = "masker-wf report"):
        self.title = title
        self.body = body

    def get_html(self) -> str:
        """Return the complete HTML document."""
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
            f"<body>{self.body}</body></html>\n"
        )

    def __str__(self) -> str:
        return self.get_html()

    def _repr_html_(self) -> str:
        return self.get_html()

    def save_as_html(self, file_name) -> Path:
        """Write the report to ``file_name`` atomically (temporary name, then rename)."""
        from .._io import atomic_output

        path = Path(file_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic_output also gives the file the usual permissions (mkstemp's are 0600).
        with atomic_output(path) as temporary:
            temporary.write_text(self.get_html(), encoding="utf-8")
        return path

    def open_in_browser(self, file_name=None) -> Path:
        """Save the report (to a temporary file unless ``file_name``) and open it in a browser."""
        if file_name is None:
            handle, file_name = tempfile.mkstemp(suffix=".html", prefix="masker_wf_report_")
            os.close(handle)
        path = self.save_as_html(file_name)
        webbrowser.open(path.resolve().as_uri())
        return path


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def table(rows: Mapping | Iterable, header: tuple[str, str] | None = None) -> str:
    """An HTML table of ``key: value`` rows (values are escaped)."""
    items = rows.items() if isinstance(rows, Mapping) else rows
    head = (
        f"<tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>"
        if header
        else ""
    )
    body = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td><code>{html.escape(_format_value(value))}"
        "</code></td></tr>"
        for key, value in items
    )
    return f"<table>{head}{body}</table>"


def figure(uri: str, alt: str) -> str:
    """An ``<img>`` element for a data URI produced by :mod:`masker_wf.reports.figures`."""
    return f"<img src='{uri}' alt='{html.escape(alt)}'>"


def section(heading: str, content: str, anchor: str | None = None) -> str:
    """A titled section."""
    anchor_attr = f" id='{html.escape(anchor)}'" if anchor else ""
    return f"<section{anchor_attr}><h2>{html.escape(heading)}</h2>{content}</section>"


def warnings_block(messages: Iterable[str]) -> str:
    """Warnings raised while processing, one box each (or a note that there were none)."""
    messages = list(dict.fromkeys(str(m) for m in messages))
    if not messages:
        return "<p>No warnings.</p>"
    return "".join(f"<div class='warning'>{html.escape(m)}</div>" for m in messages)
