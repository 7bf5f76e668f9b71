"""Find the BOLD runs to process: pybids queries over raw BIDS and/or fMRIPrep derivatives.

The layout is only used here, in the parent process: every run is resolved to plain paths and
metadata (:class:`RunInputs`) before anything is handed to Pydra (``BIDSLayout`` cannot be
pickled).

Two choices keep one bad file or an unusual location from spoiling the whole dataset:

- pybids matches its entity patterns against absolute paths, so a dataset under
  ``/scratch/func/`` or ``/data/sub-projects/`` would get a ``datatype`` or a ``subject``
  from its parent directories. Each dataset is indexed with pybids' own configs whose
  patterns are anchored after the dataset root (:func:`rooted_configs`).
- The index holds no metadata (``index_metadata=False``: a malformed JSON anywhere would stop
  pybids from indexing anything). Each run reads its own sidecars, with the BIDS inheritance
  principle (:func:`sidecar_metadata`;
  :func:`collect_runs` applies the same rule to the indexed JSON files of every run in one
  pass); a malformed one fails that run only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .confounds import SidecarError, aroma_missing_message
from .naming import run_name

__all__ = [
    "BIDSInputError",
    "RunInputs",
    "SidecarError",
    "build_layout",
    "collect_participants",
    "collect_runs",
    "dataset_kind",
    "find_confounds",
    "load_filter_file",
    "preprocessed_bold_under",
    "rooted_configs",
    "sidecar_metadata",
    "strip_prefix",
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
    raw_metadata : dict
        Sidecar metadata of ``raw_file`` (``metadata`` again for a raw ``bold_file``).
    confounds_json : pathlib.Path or None
        The JSON of ``confounds_file`` when there is one.
    sidecar_error : SidecarError or None
        A sidecar of the run that could not be read (the run fails with it).
    """

    bold_file: Path
    entities: dict
    metadata: dict = field(default_factory=dict)
    mask_file: Path | None = None
    confounds_file: Path | None = None
    dataset_root: Path | None = None
    raw_file: Path | None = None
    raw_metadata: dict = field(default_factory=dict)
    sidecar_error: SidecarError | None = None
    confounds_json: Path | None = None

    @property
    def subject(self) -> str:
        """Subject label, without ``sub-``."""
        return str(self.entities["subject"])

    @property
    def name(self) -> str:
        """File name of the BOLD without extension (identifies the run in messages)."""
        return run_name(self.bold_file)


def strip_prefix(label, prefix: str) -> str:
    """``strip_prefix('ses-02', 'ses')`` → ``'02'``: labels are accepted with or without it."""
    label = str(label).strip()
    return label.removeprefix(f"{prefix}-")


def strip_sub(label: str) -> str:
    """``'sub-01'`` → ``'01'`` (labels are accepted with or without the prefix)."""
    return strip_prefix(label, "sub")


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


def rooted_configs(root, names=("bids",)) -> list[dict]:
    """pybids configs ``names`` whose entity patterns only match below ``root``.

    pybids searches its patterns in the absolute path of each file; prefixing them with
    the (escaped) root and a lazy ``.*?`` makes the first match the first one after the root,
    as if the path were relative to it.

    Parameters
    ----------
    root : path
        Absolute root of the dataset the configs index.
    names : sequence of str
        pybids config names (``bids``, ``derivatives``).

    Returns
    -------
    list of dict
        Configs for ``BIDSLayout(config=...)``.
    """
    from bids.layout.models import Config

    anchor = "^" + re.escape(Path(root).as_posix())
    configs = []
    for name in names:
        config = Config.load(name)
        entities = []
        for entity in config.entities.values():
            spec = {
                "name": entity.name,
                "pattern": f"{anchor}(?=/).*?(?:{entity.pattern})",
                "mandatory": entity.mandatory,
                "dtype": entity._dtype,
            }
            if entity.directory:
                spec["directory"] = entity.directory
            entities.append(spec)
        configs.append(
            {
                "name": name,
                "entities": entities,
                "default_path_patterns": config.default_path_patterns,
            }
        )
    return configs


def build_layout(
    bids_dir, *, derivatives=None, participants=None, database_dir=None, raw_kind=None
):
    """Index the dataset(s) with pybids, only the requested participants when possible.

    No metadata is indexed (see the module docstring; :func:`collect_runs` reads each
    run's sidecars), and entities are parsed below each dataset's root only.

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

    def indexer():
        return BIDSLayoutIndexer(validate=False, ignore=ignore, index_metadata=False)

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
    names = ("bids", "derivatives") if kind == "derivative" else ("bids",)
    try:
        layout = BIDSLayout(
            str(root),
            validate=False,
            config=rooted_configs(root, names),
            derivatives=False,
            indexer=indexer(),
            **kwargs,
        )
        for path in paths:
            # One by one, as pybids would, but each with patterns anchored at its own root.
            layout.add_derivatives(
                str(path),
                parent_database_path=database_dir,
                validate=False,
                config=rooted_configs(path, ("bids", "derivatives")),
                indexer=indexer(),
            )
        return layout
    except BIDSInputError:
        raise
    except Exception as exc:
        raise BIDSInputError(f"pybids could not index '{root}': {exc}", 16) from exc


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise SidecarError(path, f"cannot read the JSON sidecar: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SidecarError(path, f"the JSON sidecar is not valid JSON: {exc}") from exc
    if not isinstance(content, dict):
        raise SidecarError(path, "the JSON sidecar does not hold a JSON object")
    return content


def _same_label(a, b) -> bool:
    a, b = str(a), str(b)
    if a.isdigit() and b.isdigit():  # run-1 and run-01 are the same run
        return int(a) == int(b)
    return a == b


def sidecar_metadata(data_file, dataset_root) -> dict:
    """Metadata of a data file from its JSON sidecars (the BIDS inheritance principle).

    Every ``*.json`` from the dataset root down to the file's directory whose suffix is
    the file's and whose entities are a subset of the file's applies; deeper files, then
    files with more entities, override the others.

    Parameters
    ----------
    data_file : path
        A file of the dataset (absolute).
    dataset_root : path
        Root of its dataset.

    Returns
    -------
    dict

    Raises
    ------
    SidecarError
        An applicable sidecar cannot be read or is not a JSON object.
    """
    from .naming import source_entities

    data_file, root = Path(data_file), Path(dataset_root)
    target = source_entities(data_file, root)
    ignored = {"suffix", "extension", "datatype"}
    relative = data_file.parent.relative_to(root).parts
    found = []
    for depth in range(len(relative) + 1):
        directory = root.joinpath(*relative[:depth])
        for candidate in sorted(directory.glob("*.json")):
            entities = source_entities(candidate, root)
            if entities.get("suffix") != target.get("suffix"):
                continue
            keys = set(entities) - ignored
            if all(k in target and _same_label(entities[k], target[k]) for k in keys):
                found.append((depth, len(keys), candidate))
    metadata = {}
    for *_, candidate in sorted(found):
        metadata.update(_read_json(candidate))
    return metadata


def find_confounds(root) -> Path | None:
    """The first fMRIPrep confounds table anywhere in the dataset at ``root``, or None."""
    for pattern in ("*_desc-confounds_timeseries.tsv", "*_desc-confounds_regressors.tsv"):
        for path in Path(root).glob(f"sub-*/**/{pattern}"):
            return path
    return None


def preprocessed_bold_under(bids_dir, participants) -> list[Path]:
    """Derivative datasets in ``bids_dir/derivatives/`` with ``desc-preproc`` BOLD runs of
    ``participants`` (the runs a raw-BIDS invocation without ``--derivatives`` leaves)."""
    found = []
    for description in sorted(Path(bids_dir).glob("derivatives/*/dataset_description.json")):
        root = description.parent
        for label in participants:
            if next(root.glob(f"sub-{label}/**/func/*_desc-preproc_bold.nii*"), None):
                found.append(root)
                break
    return found


#: Entities a raw BOLD shares with its preprocessed derivatives (what identifies the acquisition).
_ACQUISITION_ENTITIES = (
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
#: Entities of the BOLD its confounds table may lack or differ in (the table is per run,
#: whatever the output space).
_CONFOUNDS_FREE = frozenset({"space", "res", "den", "cohort", "desc", "suffix", "extension"})
#: Entities of the BOLD its brain mask may differ in (the mask is per run and space).
_MASK_FREE = frozenset({"desc", "suffix", "extension"})
#: Entities that do not decide whether a JSON sidecar applies to a file.
_SIDECAR_FREE = frozenset({"suffix", "extension", "datatype"})


@cache
def _entity_names() -> dict:
    """File-name key -> pybids entity name (``acq`` -> ``acquisition``), from pybids' configs."""
    from bids.layout.models import Config

    names = {}
    for config in ("bids", "derivatives"):
        for entity in Config.load(config).entities.values():
            key = re.search(r"([A-Za-z]+)-\(", entity.pattern or "")
            if key:
                names.setdefault(key.group(1), entity.name)
    return names


@cache
def _datatypes() -> re.Pattern:
    from bids.layout.models import Config

    return Config.load("bids").entities["datatype"].regex


def _name_entities(path: Path, root: Path) -> dict:
    """Entities of a file from its name (and datatype folder), as pybids names them.

    A split of the name on ``_`` and ``-``: about 100 times cheaper than a pybids query per
    file, which is what lets one pass over the whole index match every run.
    """
    names = _entity_names()
    stem, dot, extension = path.name.partition(".")
    *pairs, last = stem.split("_")
    entities = {}
    for pair in (*pairs, last) if "-" in last else pairs:
        key, sep, value = pair.partition("-")
        if sep and value:
            entities[names.get(key, key)] = value
    if "-" not in last:
        entities["suffix"] = last
    if dot:
        entities["extension"] = "." + extension
    parent = path.parent
    if parent != root and _datatypes().fullmatch(f"/{parent.name}/"):
        entities["datatype"] = parent.name
    return entities


def _matches(entities: dict, target: dict, free=frozenset()) -> tuple[bool, int]:
    """(every entity both have, but ``free``, has the same label; how many were compared)."""
    shared = [k for k in entities if k in target and k not in free]
    return all(_same_label(entities[k], target[k]) for k in shared), len(shared)


class _Indexed:
    """Files of one kind found by one pybids query, grouped for constant-time lookups.

    Parameters
    ----------
    paths : iterable of str
        Absolute paths, as ``BIDSLayout.get(return_type="filename")`` gives them.
    roots : sequence of pathlib.Path
        Roots of the indexed datasets (the entities of a file are parsed below its root).
    """

    def __init__(self, paths, roots):
        self.roots = sorted(roots, key=lambda r: len(r.parts), reverse=True)
        self.files = []
        self.by_subject: dict[str | None, list] = {}
        self.by_directory: dict[Path, list] = {}
        for name in sorted(paths):
            path = Path(name)
            root = self.root_of(path)
            entry = (path, _name_entities(path, root))
            self.files.append(entry)
            self.by_subject.setdefault(entry[1].get("subject"), []).append(entry)
            self.by_directory.setdefault(path.parent, []).append(entry)

    def root_of(self, path: Path) -> Path:
        """Root of the indexed dataset that holds ``path``."""
        for root in self.roots:
            if path.is_relative_to(root):
                return root
        return _dataset_root(path)

    def nearest(self, path: Path, entities: dict, free) -> Path | None:
        """The file of the same subject pybids' ``get_nearest(strict=True)`` would choose.

        Every entity both files have, but ``free``, must have the same label; then the
        nearest folder (the file's own, then its parents, then any other), then the most
        entities in common, then the path decide.
        """
        best = None
        for candidate, found in self.by_subject.get(entities.get("subject"), ()):
            same, shared = _matches(found, entities, free)
            if not same:
                continue
            if candidate.parent == path.parent:
                distance = 0
            elif path.parent.is_relative_to(candidate.parent):
                distance = len(path.parent.parts) - len(candidate.parent.parts)
            else:
                distance = len(path.parts)
            rank = (distance, -shared, str(candidate))
            if best is None or rank < best[0]:
                best = (rank, candidate)
        return None if best is None else best[1]


class _Sidecars:
    """The JSON sidecars of the index, applied with the BIDS inheritance principle.

    The same rule as :func:`sidecar_metadata` (which globs the file system for one file),
    over the files pybids indexed, grouped by folder; each JSON is read once.
    """

    def __init__(self, index: _Indexed):
        self.index = index
        self.read: dict[Path, dict | SidecarError] = {}

    def metadata(self, data_file: Path) -> dict:
        """Metadata of ``data_file``; SidecarError when an applicable JSON is unreadable."""
        root = self.index.root_of(data_file)
        target = _name_entities(data_file, root)
        found = []
        relative = data_file.parent.relative_to(root).parts
        for depth in range(len(relative) + 1):
            directory = root.joinpath(*relative[:depth])
            for candidate, entities in self.index.by_directory.get(directory, ()):
                if entities.get("suffix") != target.get("suffix"):
                    continue
                same, shared = _matches(entities, target, _SIDECAR_FREE)
                keys = set(entities) - _SIDECAR_FREE
                if same and shared == len(keys):  # the sidecar's entities are the file's
                    found.append((depth, len(keys), str(candidate), candidate))
        metadata = {}
        for *_, candidate in sorted(found):
            if candidate not in self.read:
                try:
                    self.read[candidate] = _read_json(candidate)
                except SidecarError as error:
                    self.read[candidate] = error
            content = self.read[candidate]
            if isinstance(content, SidecarError):
                raise content
            metadata.update(content)
        return metadata


def _spaces_hint(layout, query, space, participants) -> str:
    """With ``--space`` given: the spaces the participants' BOLD files are in."""
    if not space:
        return ""
    others = {k: v for k, v in query.items() if k != "space"}
    try:
        found = layout.get(return_type="id", target="space", invalid_filters="allow", **others)
    except Exception:  # a hint only: the selection's own error is what matters
        return ""
    hint = ""
    if found:
        spaces = ", ".join(sorted(set(found)))
        hint = f" The BOLD files of participant(s) {', '.join(participants)} are in: {spaces}."
    if any(":" in str(name) for name in space):
        # fMRIPrep's --output-spaces syntax (MNI152NLin2009cAsym:res-2) names a space and
        # an entity: here the entity is a filter of its own.
        hint += (
            " --space takes space labels only; select a resolution with --bids-filter-file "
            '(for example {"bold": {"res": "2"}}).'
        )
    return hint


def _bold_query(participants, derivatives_mode, layout, space, aroma, labels, bids_filters):
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
            # As the other labels: with or without the entity's prefix (space-T1w).
            query["space"] = [strip_prefix(name, "space") for name in space]
    else:
        query["scope"] = "raw"
    prefixes = {"session": "ses", "task": "task", "run": "run", "echo": "echo"}
    for name, value in labels.items():
        if value:
            # Labels as users write them in file names are accepted, as for --participant-label.
            query[name] = [strip_prefix(v, prefixes[name]) for v in value]
    query.update(dict((bids_filters or {}).get("bold", {})))
    return query


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
    ``desc-confounds_timeseries.tsv`` (and JSON); otherwise the raw ``bold``. Metadata comes
    from the JSON sidecars (inheritance principle); one that cannot be read is the run's
    ``sidecar_error``.

    The layout is queried a fixed number of times (the BOLD runs, then every confounds table,
    brain mask, raw BOLD and JSON sidecar of the participants, once each), and the runs are
    matched to their files by entities in one pass: the cost grows with the number of files,
    not with runs times files.

    Raises
    ------
    BIDSInputError
        65 for an invalid filter, 18 when the filters select no BOLD file.
    """
    labels = {"session": session, "task": task, "run": run, "echo": echo}
    query = _bold_query(participants, derivatives_mode, layout, space, aroma, labels, bids_filters)
    try:
        bold_paths = layout.get(return_type="filename", invalid_filters="allow", **query)
    except Exception as exc:
        raise BIDSInputError(f"Invalid BIDS filter: {exc}", 65) from exc
    roots = [Path(layout.root), *(Path(d.root) for d in layout.derivatives.values())]
    bolds = _Indexed(bold_paths, roots)
    files = bolds.files
    if derivatives_mode and not space:
        # fMRIPrep's native-space BOLD (no space entity) is only picked when asked for.
        files = [f for f in files if "space" in f[1]] or files
    if not files:
        described = {k: v for k, v in query.items() if k not in ("extension", "datatype")}
        if aroma:  # say which fMRIPrep outputs ICA-AROMA needs, and which versions make them
            # A required input is missing (66), not a selection that matched nothing (18).
            raise BIDSInputError(aroma_missing_message("full", str(described)), 66)
        raise BIDSInputError(
            f"No BOLD file matches the selection {described}."
            + _spaces_hint(layout, query, space, participants),
            18,
        )

    def indexed(**filters):
        found = layout.get(
            return_type="filename", subject=list(participants), invalid_filters="allow", **filters
        )
        return _Indexed(found, roots)

    sidecars = _Sidecars(_Indexed(layout.get(return_type="filename", extension=".json"), roots))
    if derivatives_mode:
        confounds = indexed(
            desc="confounds", suffix=["timeseries", "regressors"], extension=".tsv"
        )
        masks = indexed(desc="brain", suffix="mask", extension=_IMAGE_EXT)
        raw = _raw_by_acquisition(indexed(scope="raw", suffix="bold", extension=_IMAGE_EXT))
    runs = []
    for bold_file, entities in files:
        mask = confounds_file = None
        if derivatives_mode:
            confounds_file = confounds.nearest(bold_file, entities, _CONFOUNDS_FREE)
            mask = masks.nearest(bold_file, entities, _MASK_FREE)
            matches = raw.get(_acquisition_key(entities, _ACQUISITION_ENTITIES), [])
            raw_file = matches[0] if len(matches) == 1 else None
        else:
            raw_file = bold_file
        metadata, raw_metadata, error = _metadata_of(sidecars, bold_file, raw_file)
        runs.append(
            RunInputs(
                bold_file=bold_file,
                entities=dict(entities),
                metadata=metadata,
                mask_file=mask,
                confounds_file=confounds_file,
                confounds_json=_json_of(confounds_file, sidecars.index),
                dataset_root=bolds.root_of(bold_file),
                raw_file=raw_file,
                raw_metadata=raw_metadata,
                sidecar_error=error,
            )
        )
    return runs


def _acquisition_key(entities: dict, names) -> frozenset:
    # digits compare as numbers: run-1 of the raw data is run-01 of the derivatives
    return frozenset(
        (k, int(v) if str(v).isdigit() else str(v)) for k, v in entities.items() if k in names
    )


def _raw_by_acquisition(raw: _Indexed) -> dict:
    """Raw BOLD files by the entities they have (a raw name has acquisition entities only)."""
    grouped: dict[frozenset, list[Path]] = {}
    for path, entities in raw.files:
        names = set(entities) - _SIDECAR_FREE
        if names <= set(_ACQUISITION_ENTITIES):
            grouped.setdefault(_acquisition_key(entities, names), []).append(path)
    return grouped


def _json_of(data_file: Path | None, index: _Indexed) -> Path | None:
    """The JSON next to ``data_file`` with the same name, when indexed."""
    if data_file is None:
        return None
    name = data_file.name.removesuffix(".gz").rsplit(".", 1)[0] + ".json"
    candidate = data_file.with_name(name)
    listed = index.by_directory.get(candidate.parent, ())
    return candidate if any(path == candidate for path, _ in listed) else None


def _metadata_of(sidecars: _Sidecars, bold_file: Path, raw_file: Path | None):
    """(metadata, raw metadata, error): a sidecar that cannot be read fails its run only."""
    try:
        metadata = sidecars.metadata(bold_file)
        if raw_file is None:
            return metadata, {}, None
        if raw_file == bold_file:
            return metadata, metadata, None
        return metadata, sidecars.metadata(raw_file), None
    except SidecarError as error:
        return {}, {}, error


def _dataset_root(path: Path) -> Path:
    """The nearest parent with a dataset_description.json."""
    for parent in path.parents:
        if (parent / "dataset_description.json").is_file():
            return parent
    return path.parent
