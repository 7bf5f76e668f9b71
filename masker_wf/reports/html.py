"""Self-contained HTML pages rendered from the jinja2 templates of the package data
(``masker_wf/data/templates``): the per-run report (also what ``NiftiMasker.generate_report``
returns), the subject page and the group page.

Templates escape every value they are given; only figures (``data:`` URIs) and the body of a
pre-rendered page are inserted as they are.
"""

from __future__ import annotations

import functools
import os
import tempfile
import webbrowser
from pathlib import Path

__all__ = ["HTMLReport", "format_value", "render"]

#: Where the templates are, inside the package.
TEMPLATES = "data/templates"


@functools.cache
def _environment():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("masker_wf", TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["value"] = format_value
    return environment


def format_value(value, digits: int = 6) -> str:
    """A value as a report shows it: floats with ``digits`` significant digits, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v, digits) for v in value) if value else "none"
    return str(value)


def render(template: str, **context) -> str:
    """Render one of the package's templates (``run_report.html.j2``...) to a string."""
    return _environment().get_template(template).render(**context)


class HTMLReport:
    """An HTML report held in memory.

    Displays itself in Jupyter (``_repr_html_``), converts to a string (``get_html``/``str``)
    and saves to disk (``save_as_html``).

    Parameters
    ----------
    body : str
        HTML of the page's body, put in the package's page template; or, with ``document``,
        ignored.
    title : str
        Title of the page.
    document : str, optional
        A complete page already rendered from a template.
    """

    def __init__(self, body: str = "", title: str = "masker-wf report", *, document=None):
        self.title = title
        self.body = body
        self._document = document

    def get_html(self) -> str:
        """Return the complete HTML document."""
        if self._document is not None:
            return self._document
        return render("page.html.j2", title=self.title, body=self.body)

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
