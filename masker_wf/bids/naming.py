"""Where every output of the BIDS App goes: the one module that names derivatives.

Paths are built by pybids (:func:`bids.layout.writing.build_path`) from the patterns of
``masker_wf/data/derivatives_patterns.json`` and the entities pybids parses from the source
BOLD file (:func:`bids.layout.parse_file_entities`). The file is parsed relative to its
dataset root: pybids reads ``datatype`` from any directory of the path, so an absolute path
under, say, ``/data/anat/...`` would be taken for an anatomical file.

Rules kept from the first App (output names must not change between versions):

- the source's entities are kept (zero padding of ``run`` included), its ``desc`` is
  replaced by the App's ``desc`` label;
- outputs on another grid than the input's carry ``res-<label>`` (:func:`resolution_label`),
  replacing the source's ``res``, so runs at several resolutions coexist;
- run outputs go to ``sub-<label>[/ses-<label>]/func/``, reports to ``sub-<label>/figures/``;
- a run cleaned with several strategies in one invocation has one set of outputs per
  strategy, its ``desc`` the App's label followed by the strategy's
  (:func:`strategy_desc`: ``desc-denoisedSimple``, ``desc-denoisedCompcor``).
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

__all__ = [
    "RUN_OUTPUTS",
    "derivative_name",
    "derivative_path",
    "failure_log_path",
    "output_report_path",
    "participant_dir",
    "participant_id",
    "report_path",
    "resolution_label",
    "run_entities",
    "run_name",
    "source_entities",
    "strategy_desc",
    "subject_report_path",
]

#: (suffix, extension) of every per-run file the App names (stale ones are removed).
RUN_OUTPUTS = (
    ("bold", ".nii.gz"),
    ("bold", ".json"),
    ("mask", ".nii.gz"),
    ("mask", ".json"),
    ("signals", ".npy"),
    ("signals", ".json"),
    ("timeseries", ".tsv"),
    ("timeseries", ".json"),
    ("outliers", ".tsv"),
    ("outliers", ".json"),
    ("provenance", ".json"),
)

_IMAGE_EXTENSIONS = (".nii.gz", ".nii")


@cache
def _config() -> dict:
    text = (
        resources.files("masker_wf.data")
        .joinpath("derivatives_patterns.json")
        .read_text(encoding="utf-8")
    )
    return json.loads(text)


@cache
def _entity_configs() -> tuple:
    # pybids' own entities plus the few of ours (TemplateFlow's cohort), so that no entity
    # of a source name is lost on the way to the output name.
    from bids.layout.models import Config

    return tuple(Config.load(config) for config in ("bids", "derivatives", _config()))


def _patterns() -> list[str]:
    return list(_config()["default_path_patterns"])


def _relative_to_dataset(path: Path, dataset_root) -> str:
    # pybids finds ``sub-`` after a slash: the result starts with one, as if at the root.
    if dataset_root is not None and path.is_absolute():
        root = Path(dataset_root).absolute()
        if path.is_relative_to(root):
            return "/" + path.relative_to(root).as_posix()
    if not path.is_absolute():
        return "/" + path.as_posix()  # already relative to its dataset
    # An absolute path outside any known root: the name alone, so that no directory of
    # the path can be mistaken for a datatype.
    return "/" + path.name


def source_entities(bold_file, dataset_root=None) -> dict:
    """BIDS entities of a source file, parsed by pybids relative to its dataset root.

    Parameters
    ----------
    bold_file : str or os.PathLike
        The source BOLD (raw or preprocessed), absolute or relative to its dataset.
    dataset_root : path, optional
        Root of the dataset holding an absolute ``bold_file``; without it only the file name
        of an absolute path is parsed.

    Returns
    -------
    dict
        Entity name -> value (``run`` keeps its zero padding when cast to ``str``).
    """
    return dict(_parsed_entities(_relative_to_dataset(Path(bold_file), dataset_root)))


# A run's outputs are named from the same source name a dozen times (each output, the
# set's record, the report, the stale-output check): pybids parses and builds each once.
@lru_cache(maxsize=4096)
def _parsed_entities(relative: str) -> tuple:
    from bids.layout import parse_file_entities

    return tuple(parse_file_entities(relative, config=list(_entity_configs())).items())


@lru_cache(maxsize=4096)
def _built_path(entities: tuple) -> Path:
    from bids.layout.writing import build_path

    given = {name: value for name, value, _ in entities}
    path = build_path(given, _patterns())
    if path is None:
        raise ValueError(f"No masker-wf output pattern matches the entities {given}.")
    return Path(path)


def _build(entities: dict) -> Path:
    # Keyed by each value's text too: pybids' run 1 and run 01 are equal numbers, not names.
    return _built_path(tuple((k, v, str(v)) for k, v in sorted(entities.items())))


def derivative_path(
    bold_file, desc: str, suffix: str, extension: str, res=None, *, dataset_root=None
) -> Path:
    """Path of one output of the run of ``bold_file``, relative to the output dataset.

    Parameters
    ----------
    bold_file : str or os.PathLike
        The run's source BOLD.
    desc : str
        ``desc-`` label of the outputs.
    suffix, extension : str
        E.g. ``"bold", ".nii.gz"``; suffix ``"report"`` (``.html``) goes to ``figures/``.
    res : str, optional
        ``res-`` label of an output grid other than the input's (see
        :func:`resolution_label`); None keeps the source's ``res``.
    dataset_root : path, optional
        Root of the source dataset (see :func:`source_entities`).

    Returns
    -------
    pathlib.Path
    """
    entities = {
        k: v for k, v in source_entities(bold_file, dataset_root).items() if k != "datatype"
    }
    entities.update(desc=desc, suffix=suffix, extension=extension)
    entities["datatype"] = "figures" if suffix == "report" else "func"
    if res is not None:
        entities["res"] = res
    return _build(entities)


def derivative_name(bold_file, desc: str, suffix: str, extension: str, res=None) -> str:
    """File name of one output (see :func:`derivative_path`)."""
    return derivative_path(bold_file, desc, suffix, extension, res).name


def report_path(bold_file, desc: str, res=None, *, dataset_root=None) -> Path:
    """Path of the run's HTML report, relative to the output dataset."""
    return derivative_path(bold_file, desc, "report", ".html", res, dataset_root=dataset_root)


def output_report_path(output_bold) -> Path:
    """Report path of the run whose cleaned BOLD is ``output_bold`` (relative to the output).

    Parameters
    ----------
    output_bold : str or os.PathLike
        An App output ``..._desc-<label>_bold.nii.gz``, relative to the output dataset.
    """
    return report_path(output_bold, source_entities(output_bold)["desc"])


def output_record_path(output_bold) -> Path:
    """Provenance record of the set whose cleaned BOLD is ``output_bold`` (both relative).

    Parameters
    ----------
    output_bold : str or os.PathLike
        An App output ``..._desc-<label>_bold.nii.gz``, relative to the output dataset.
    """
    desc = source_entities(output_bold)["desc"]
    return derivative_path(output_bold, desc, "provenance", ".json")


def subject_report_path(subject: str) -> Path:
    """``sub-<label>.html``: the subject page, at the root of the output dataset."""
    return _build({"subject": subject, "extension": ".html"})


def participant_id(label: str) -> str:
    """``'01'`` -> ``'sub-01'``."""
    return f"sub-{label}"


def participant_dir(label: str) -> Path:
    """``sub-<label>``, the participant's folder of the output dataset."""
    return Path(participant_id(label))


def failure_log_path(subject: str) -> Path:
    """``logs/failures_sub-<label>.json``: the failed runs of a participant."""
    return Path("logs") / f"failures_{participant_id(subject)}.json"


def run_name(bold_file) -> str:
    """File name of a source BOLD without its extension (identifies the run in messages)."""
    name = Path(bold_file).name
    for extension in _IMAGE_EXTENSIONS:
        if name.endswith(extension):
            return name[: -len(extension)]
    return name


def run_entities(output_file) -> dict:
    """``subject``, ``session``, ``task``, ``run``, ``space`` of an output, as strings.

    Parameters
    ----------
    output_file : str or os.PathLike
        An App output, relative to the output dataset.
    """
    entities = source_entities(output_file)
    return {
        key: str(entities[key])
        for key in ("subject", "session", "task", "run", "space")
        if key in entities
    }


def resolution_label(zooms) -> str:
    """BIDS ``res`` label of a voxel size: ``(4, 4, 4)`` → ``4mm``, ``2.5`` → ``2p5mm``,
    anisotropic ``3x3x4mm`` (alphanumeric, as BIDS labels must be)."""
    sizes = [f"{float(z):.4g}".replace(".", "p") for z in list(zooms)[:3]]
    return (sizes[0] if len(set(sizes)) == 1 else "x".join(sizes)) + "mm"


def strategy_desc(desc: str, strategy: str, custom_file=None) -> str:
    """The ``desc`` label of one strategy's outputs when a run is cleaned with several.

    Parameters
    ----------
    desc : str
        The App's label (``--output-desc``, ``denoised`` by default).
    strategy : str
        A preset (``simple``, ``scrubbing``, ``compcor``, ``ica_aroma``, ``none``) or
        ``custom``.
    custom_file : path, optional
        The strategy file of ``custom``: its name (letters and digits of its stem) labels it.

    Returns
    -------
    str
        ``desc`` followed by the capitalised label: ``denoisedSimple``,
        ``denoisedIcaaroma``, ``denoisedMystrategy`` for ``my_strategy.json``.
    """
    name = strategy if custom_file is None else Path(custom_file).name.split(".")[0]
    label = "".join(c for c in name if c.isascii() and c.isalnum())
    if not label:
        raise ValueError(f"strategy {name!r} has no letter or digit to label its outputs.")
    return desc + label[0].upper() + label[1:].lower()
