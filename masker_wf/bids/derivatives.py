"""Write BIDS-Derivatives safely: files, sidecars, BIDS URIs, dataset_description.json.

Output names come from :mod:`masker_wf.bids.naming` (re-exported here for existing callers).

Every file is written to a temporary name in its final directory and renamed into place
(``os.replace``), so readers never see a partial file and parallel participant jobs sharing
one output directory cannot corrupt each other's files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .._io import atomic_output
from .._version import __version__
from .naming import RUN_OUTPUTS, derivative_name, resolution_label

__all__ = [
    "BIDSIGNORE",
    "RUN_OUTPUTS",
    "bids_uri",
    "copy_atomic",
    "derivative_name",
    "relative_link",
    "resolution_label",
    "write_bidsignore",
    "write_dataset_description",
    "write_json",
    "write_text",
]

#: Patterns for the files that are not (yet) in the BIDS specification.
BIDSIGNORE = (
    "*_timeseries.tsv",
    "*_timeseries.json",
    "*_outliers.tsv",
    "*_outliers.json",
    "*_signals.npy",
    "*_signals.json",
    "*_provenance.json",
    "*.html",
    # Directories without a trailing slash: bids-validator-deno 2.x only matches them so.
    "figures",
    "group",
    "logs",
)


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(path, content) -> Path:
    """Write a JSON file atomically (sorted keys no, 2-space indent, numpy values allowed)."""
    return write_text(path, json.dumps(content, indent=2, default=_json_default) + "\n")


def copy_atomic(source, destination) -> Path:
    """Copy ``source`` to ``destination`` atomically (parents created)."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(destination) as tmp:
        shutil.copyfile(source, tmp)
    return destination


def bids_uri(path, dataset_links: dict) -> str:
    """``bids:<name>:<relative path>`` using the deepest ``dataset_links`` root holding ``path``.

    Falls back to a ``file://`` URI when no linked dataset contains the file.

    The path users see is named, not the file a symlink points to: in a DataLad (git-annex)
    dataset every file is a link into ``.git/annex/objects/``. Only a path outside every
    linked dataset is resolved (it may be a link into one of them).
    """
    roots = []
    for name, root in dataset_links.items():
        root = Path(str(root).removeprefix("file://"))
        # The root as given and as resolved: the dataset itself may be reached by a link.
        roots += [(name, Path(os.path.abspath(root))), (name, root.resolve())]
    for candidate in (Path(os.path.abspath(path)), Path(path).resolve()):
        best = None
        for name, root_path in roots:
            if candidate.is_relative_to(root_path) and (
                best is None or len(root_path.parts) > len(best[1].parts)
            ):
                best = (name, root_path)
        if best is not None:
            return f"bids:{best[0]}:{candidate.relative_to(best[1]).as_posix()}"
    return Path(path).resolve().as_uri()


def _generated_by(source_descriptions) -> list[dict]:
    entries = [
        {
            "Name": "masker-wf",
            "Version": __version__,
            "Description": "Masking and denoising of BOLD time series with NiftiMasker "
            "semantics (nilearn 0.11.1) as a Pydra workflow.",
        }
    ]
    for description in source_descriptions:
        for entry in description.get("GeneratedBy", []):
            if entry not in entries and entry.get("Name") != "masker-wf":
                entries.append(entry)
    return entries


def write_dataset_description(out_dir, *, dataset_links: dict, source_descriptions=()) -> Path:
    """Write ``out_dir/dataset_description.json`` once, atomically.

    The content is deterministic (no timestamps), so concurrent participant jobs produce the
    same bytes and a rename race is harmless. An existing description written by masker-wf is
    kept, with missing ``DatasetLinks`` merged in; one written by another tool is an error.

    Parameters
    ----------
    out_dir : path
        Output dataset root (created if needed).
    dataset_links : dict
        Name -> path of the input datasets (``raw``, ``preprocessed``...); written as paths
        relative to ``out_dir``.
    source_descriptions : sequence of dict
        ``dataset_description.json`` contents of the inputs; their ``GeneratedBy`` entries are
        appended after masker-wf's.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        ``out_dir`` holds a dataset_description.json of another pipeline.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "dataset_description.json"
    absolute = {
        k: Path(str(v).removeprefix("file://")).resolve() for k, v in dataset_links.items()
    }
    # Relative references (valid URI references, as BIDS allows) keep the links working when
    # the inputs and outputs are moved together.
    links = {k: relative_link(v, out_dir.resolve()) for k, v in absolute.items()}
    readme = out_dir / "README"
    if not readme.exists():
        write_text(
            readme,
            "Outputs of masker-wf (BIDS App): per run, the cleaned BOLD (desc-<label>_bold),\n"
            "the mask used, the regressors (_timeseries.tsv), the censored volumes\n"
            "(_outliers.tsv) and a provenance record; sub-<label>.html reports;\n"
            "group/summary.tsv and index.html after the 'group' level.\n",
        )
    content = {
        "Name": "masker-wf outputs",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": _generated_by(source_descriptions),
        "DatasetLinks": links,
        "SourceDatasets": [{"URL": v.as_uri()} for v in absolute.values()],
        "HowToAcknowledge": "Cite masker-wf and nilearn; see the methods paragraph in "
        "each sub-<label>.html.",
    }
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            existing = None
        if existing is not None:
            names = [g.get("Name") for g in existing.get("GeneratedBy", [])]
            if names and names[0] != "masker-wf":
                raise ValueError(
                    f"'{path}' belongs to another pipeline ({names[0]}); choose another "
                    "output directory."
                )
            merged = {**existing.get("DatasetLinks", {}), **links}
            content["DatasetLinks"] = merged
            sources = [s for s in existing.get("SourceDatasets", []) if isinstance(s, dict)]
            for source in content["SourceDatasets"]:
                if source not in sources:
                    sources.append(source)
            content["SourceDatasets"] = sources
            if existing == content:
                return path
    write_json(path, content)
    return path


def write_bidsignore(out_dir) -> Path:
    """Write ``.bidsignore`` listing masker-wf's non-BIDS outputs (merged with existing lines)."""
    path = Path(out_dir) / ".bidsignore"
    lines = []
    if path.is_file():
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    wanted = list(dict.fromkeys([*lines, *BIDSIGNORE]))
    if wanted != lines:
        write_text(path, "\n".join(wanted) + "\n")
    return path


def relative_link(target, start) -> str:
    """POSIX relative path from directory ``start`` to ``target`` (for HTML links)."""
    return Path(os.path.relpath(target, start)).as_posix()
