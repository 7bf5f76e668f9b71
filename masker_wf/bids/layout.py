"""Find the BOLD runs to process: pybids queries over raw BIDS and/or fMRIPrep derivatives.

The layout is only used here, in the parent process: every run is resolved to plain paths and
metadata (:class:`RunInputs`) before anything is handed to Pydra (``BIDSLayout`` cannot be
pickled).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .naming import run_name

__all__ = [
    "BIDSInputError",
    "RunInputs",
    "build_layout",
    "collect_participants",
    "collect_runs",
    "dataset_kind",
    "load_filter_file",
    "strip_sub",
]

_IMAGE_EXT = [".nii.gz", ".nii"]
# Datatypes and folders a BOLD post-processor never needs: not indexing them makes start-up fast.
_IGNORED = [
    "code",
    "stimuli",
    "models",
    "sourcedata",
    "derivatives",
    re.compile(r"/\."),
    re.compile(r"sub-[^/]+/(ses-[^/]+/)?(anat|dwi|fmap|perf|eeg|meg|ieeg|beh|pet|figures|log)"),
]


class BIDSInputError(ValueError):
    """The input dataset or the selection is unusable; ``exit_code`` follows the BIDS spec.

    16: invalid dataset, 18: filters matched nothing, 64: bad usage, 65: bad data,
    66: missing input.
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RunInputs:
    """Everything one run needs, as plain paths and values (picklable).

    Attributes
    ----------
    bold_file : pathlib.Path
        Preprocessed (``desc-preproc``) or raw BOLD.
    entities : dict
        BIDS entities of ``bold_file`` (strings).
    metadata : dict
        Sidecar metadata of ``bold_file`` (inherited JSONs included).
    mask_file, confounds_file : pathlib.Path or None
        fMRIPrep's brain mask and confounds TSV when found.
    dataset_root : pathlib.Path
        Root of the dataset that holds ``bold_file`` (for BIDS URIs).
    raw_file : pathlib.Path or None
        The matching raw BOLD when a raw dataset is available.
    """

    bold_file: Path
    entities: dict
    metadata: dict = field(default_factory=dict)
    mask_file: Path | None = None
    confounds_file: Path | None = None
    dataset_root: Path | None = None
    raw_file: Path | None = None

    @property
    def subject(self) -> str:
        """Subject label, without ``sub-``."""
        return str(self.entities["subject"])

    @property
    def name(self) -> str:
        """File name of the BOLD without extension (identifies the run in messages)."""
        return run_name(self.bold_file)


def strip_sub(label: str) -> str:
    """``'sub-01'`` → ``'01'`` (labels are accepted with or without the prefix)."""
    label = str(label).strip()
    return label[4:] if label.startswith("sub-") else label


def dataset_kind(root) -> str:
    """``'derivative'`` or ``'raw'`` from ``dataset_description.json``.

    Raises
    ------
    BIDSInputError
        66 when ``root`` does not exist, 16 when it is not a BIDS dataset.
    """
    root = Path(root)
    if not root.is_dir():
        raise BIDSInputError(f"BIDS directory '{root}' does not exist.", 66)
    description = root / "dataset_description.json"
    if not description.is_file():
        raise BIDSInputError(
            f"'{root}' is not a BIDS dataset: dataset_description.json is missing.", 16
        )
    try:
        content = json.loads(description.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BIDSInputError(f"'{description}' is not valid JSON: {exc}", 16) from exc
    if not isinstance(content, dict) or "Name" not in content:
        raise BIDSInputError(f"'{description}' lacks the required 'Name' field.", 16)
    kind = content.get("DatasetType", "raw")
    if kind == "derivative" or ("GeneratedBy" in content and "PipelineDescription" in content):
        return "derivative"
    return "raw"


def _subjects_on_disk(root: Path) -> list[str]:
    return sorted(p.name[4:] for p in root.glob("sub-*") if p.is_dir())


def collect_participants(args, on_missing=None) -> list[str]:
    """Participant labels (without ``sub-``) to process, checked against the dataset.

    Reads ``args.bids_dir`` and ``args.participant_label`` (list or None). Labels absent from
    the dataset are passed to ``on_missing`` (a ``warnings.warn`` when None); if none remains
    the selection matched nothing.

    Raises
    ------
    BIDSInputError
        18 when no requested participant exists (or the dataset has no subject).
    """
    root = Path(args.bids_dir)
    dataset_kind(root)
    available = _subjects_on_disk(root)
    derivatives = getattr(args, "derivatives", None) or {}
    for path in derivatives.values():
        available = sorted(set(available) | set(_subjects_on_disk(Path(path))))
    requested = [strip_sub(label) for label in (args.participant_label or [])]
    if not requested:
        if not available:
            raise BIDSInputError(f"No sub-* folder in '{root}'.", 18)
        return available
    found = [label for label in dict.fromkeys(requested) if label in available]
    missing = [label for label in requested if label not in available]
    if not found:
        raise BIDSInputError(
            f"None of the requested participants {requested} exists in '{root}' "
            f"(available: {available}).",
            18,
        )
    if missing:
        if on_missing is not None:
            on_missing(missing)
        else:
            import warnings

            warnings.warn(f"Participants not found and skipped: {missing}", stacklevel=2)
    return found


def load_filter_file(path) -> dict:
    """Read a ``--bids-filter-file`` (fMRIPrep style): ``{"bold": {entity: value}}``.

    ``null`` means "entity absent" and ``"*"`` "any value" (pybids ``Query.NONE``/``ANY``).

    Raises
    ------
    BIDSInputError
        66 if missing, 65 if not a JSON object of objects.
    """
    from bids.layout import Query

    path = Path(path)
    if not path.is_file():
        raise BIDSInputError(f"--bids-filter-file '{path}' does not exist.", 66)

    def hook(obj):
        return {
            k: Query.NONE if v is None else Query.ANY if v == "*" else v for k, v in obj.items()
        }

    try:
        content = json.loads(path.read_text(encoding="utf-8"), object_hook=hook)
    except json.JSONDecodeError as exc:
        raise BIDSInputError(f"--bids-filter-file '{path}' is not valid JSON: {exc}", 65) from exc
    if not isinstance(content, dict) or not all(isinstance(v, dict) for v in content.values()):
        raise BIDSInputError(
            f"--bids-filter-file '{path}' must map query names (e.g. 'bold') to entity filters.",
            65,
        )
    return content


def build_layout(
    bids_dir, *, derivatives=None, participants=None, database_dir=None, raw_kind=None
):
    """Index the dataset(s) with pybids, only the requested participants when possible.

    Parameters
    ----------
    bids_dir : path
        Raw BIDS or a derivatives (fMRIPrep) dataset.
    derivatives : dict name -> path, optional
        Extra derivatives datasets (``--derivatives fmriprep=PATH``).
    participants : list of str, optional
        Labels to index; others are ignored unless ``database_dir`` is given (a reused index
        must hold every subject).
    database_dir : path, optional
        pybids SQLite index directory, created or reused.
    raw_kind : str, optional
        Result of :func:`dataset_kind` (computed when None).

    Returns
    -------
    bids.BIDSLayout
    """
    from bids.layout import BIDSLayout, BIDSLayoutIndexer

    root = Path(bids_dir).resolve()
    kind = raw_kind or dataset_kind(root)
    ignore = list(_IGNORED)
    if participants and database_dir is None:
        alternatives = "|".join(re.escape(p) for p in participants)
        ignore.append(re.compile(rf"sub-(?!({alternatives})(\b|_))"))
    indexer = BIDSLayoutIndexer(validate=False, ignore=ignore)
    paths = [Path(p).resolve() for p in (derivatives or {}).values()]
    for path in paths:
        if not (path / "dataset_description.json").is_file():
            raise BIDSInputError(
                f"derivatives dataset '{path}' has no dataset_description.json", 16
            )
    kwargs = {}
    if database_dir is not None:
        Path(database_dir).mkdir(parents=True, exist_ok=True)
        kwargs["database_path"] = str(database_dir)
    try:
        return BIDSLayout(
            str(root),
            validate=False,
            config=["bids", "derivatives"] if kind == "derivative" else ["bids"],
            derivatives=[str(p) for p in paths] or False,
            indexer=indexer,
            **kwargs,
        )
    except BIDSInputError:
        raise
    except Exception as exc:
        raise BIDSInputError(f"pybids could not index '{root}': {exc}", 16) from exc


def collect_runs(
    layout,
    participants,
    *,
    derivatives_mode: bool,
    space=None,
    session=None,
    task=None,
    run=None,
    echo=None,
    bids_filters=None,
    aroma=False,
) -> list[RunInputs]:
    """Resolve every run of the requested participants to :class:`RunInputs`.

    With derivatives, the BOLD is fMRIPrep's ``desc-preproc_bold`` (``desc-smoothAROMAnonaggr``
    when ``aroma``) in ``space`` (any space when None), with its ``desc-brain_mask`` and
    ``desc-confounds_timeseries.tsv``; otherwise the raw ``bold``.

    Raises
    ------
    BIDSInputError
        18 when the filters select no BOLD file.
    """
    filters = dict((bids_filters or {}).get("bold", {}))
    query = {
        "subject": list(participants),
        "datatype": "func",
        "suffix": "bold",
        "extension": _IMAGE_EXT,
    }
    if derivatives_mode:
        query["desc"] = "smoothAROMAnonaggr" if aroma else "preproc"
        query["scope"] = "derivatives" if layout.derivatives else "all"
        if space:
            query["space"] = list(space)
    else:
        query["scope"] = "raw"
    for name, value in (("session", session), ("task", task), ("run", run), ("echo", echo)):
        if value:
            query[name] = list(value)
    query.update(filters)
    try:
        files = layout.get(invalid_filters="allow", **query)
    except Exception as exc:
        raise BIDSInputError(f"Invalid BIDS filter: {exc}", 65) from exc
    if derivatives_mode and not space:
        # fMRIPrep's native-space BOLD (no space entity) is only picked when asked for.
        spaced = [f for f in files if "space" in f.get_entities()]
        files = spaced or files
    if not files:
        described = {k: v for k, v in query.items() if k not in ("extension", "datatype")}
        raise BIDSInputError(f"No BOLD file matches the selection {described}.", 18)

    runs = []
    for bold in sorted(files, key=lambda f: f.path):
        # pybids keeps the zero padding of run labels (PaddedInt) when cast to str.
        entities = {k: str(v) for k, v in bold.get_entities().items()}
        metadata = dict(bold.get_metadata())
        mask = confounds = raw_file = None
        if derivatives_mode:
            confounds = layout.get_nearest(
                bold.path,
                strict=True,
                ignore_strict_entities=[
                    "space",
                    "res",
                    "den",
                    "desc",
                    "suffix",
                    "extension",
                    "cohort",
                ],
                desc="confounds",
                suffix=["timeseries", "regressors"],
                extension=".tsv",
                full_search=True,
            )
            mask = layout.get_nearest(
                bold.path,
                strict=True,
                ignore_strict_entities=["desc", "suffix", "extension"],
                desc="brain",
                suffix="mask",
                extension=_IMAGE_EXT,
                full_search=True,
            )
            raw_entities = {
                k: v
                for k, v in bold.get_entities().items()
                if k
                in (
                    "subject",
                    "session",
                    "task",
                    "acquisition",
                    "run",
                    "echo",
                    "direction",
                    "reconstruction",
                    "ceagent",
                    "part",
                )
            }
            raw = layout.get(
                scope="raw",
                suffix="bold",
                extension=_IMAGE_EXT,
                invalid_filters="allow",
                **raw_entities,
            )
            raw = [
                r
                for r in raw
                if set(r.get_entities()) <= set(raw_entities) | {"suffix", "extension", "datatype"}
            ]
            raw_file = Path(raw[0].path) if len(raw) == 1 else None
        else:
            raw_file = Path(bold.path)
        runs.append(
            RunInputs(
                bold_file=Path(bold.path),
                entities=entities,
                metadata=metadata,
                mask_file=Path(mask) if mask else None,
                confounds_file=Path(confounds) if confounds else None,
                dataset_root=_dataset_root(Path(bold.path)),
                raw_file=raw_file,
            )
        )
    return runs


def _dataset_root(path: Path) -> Path:
    """The nearest parent with a dataset_description.json."""
    for parent in path.parents:
        if (parent / "dataset_description.json").is_file():
            return parent
    return path.parent
