"""Select fMRIPrep confounds by strategy, with nilearn's vocabulary and numbers.

:func:`select_confounds` reads an fMRIPrep ``desc-confounds_timeseries.tsv`` (and its JSON) and
returns the same design matrix and ``sample_mask`` as nilearn 0.11.1's
``nilearn.interfaces.fmriprep.load_confounds`` given the same parameters; the preset strategies
of ``load_confounds_strategy`` (``simple``, ``scrubbing``, ``compcor``, ``ica_aroma``) are resolved
by :func:`strategy_parameters`. The BIDS App records the columns and kept volumes it used.

Conventions reproduced (they matter for parity):

- ``n/a`` in the first row of derivative-based columns is replaced by the second row's value;
- columns are sorted by name (nilearn concatenates components then sorts the non-outlier ones);
- non-steady-state volumes (``non_steady_state_outlierNN``) are always removed (unless
  ``dummy_scans`` gives their number, as XCP-D's and fMRIPost's ``--dummy-scans``), and
  scrubbing flags volumes whose ``framewise_displacement`` exceeds ``fd_threshold`` or
  ``std_dvars`` exceeds ``std_dvars_threshold``, then removes segments shorter than ``scrub``
  volumes;
- confounds are demeaned over the kept volumes only.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import _validation
from .._io import stat_key

__all__ = [
    "AROMA_OUTPUTS",
    "COMPONENTS",
    "PRESETS",
    "ConfoundSelection",
    "aroma_missing_message",
    "check_file_overrides",
    "dummy_scan_selection",
    "find_compcor_columns",
    "load_confounds_table",
    "load_strategy_file",
    "scrub_volumes",
    "select_confounds",
    "strategy_parameters",
]

#: Noise components understood in ``strategy`` (nilearn's names).
COMPONENTS = (
    "motion",
    "high_pass",
    "wm_csf",
    "global_signal",
    "compcor",
    "ica_aroma",
    "scrub",
    "non_steady_state",
)

#: nilearn 0.11.1's preset strategies (``load_confounds_strategy``).
PRESETS = {
    "simple": {
        "strategy": ("high_pass", "motion", "wm_csf"),
        "motion": "full",
        "wm_csf": "basic",
    },
    "scrubbing": {
        "strategy": ("high_pass", "motion", "wm_csf", "scrub"),
        "motion": "full",
        "wm_csf": "full",
        "scrub": 5,
        "fd_threshold": 0.2,
        "std_dvars_threshold": 3.0,
    },
    "compcor": {
        "strategy": ("high_pass", "motion", "compcor"),
        "motion": "full",
        "compcor": "anat_combined",
        "n_compcor": "all",
    },
    "ica_aroma": {
        "strategy": ("high_pass", "wm_csf", "ica_aroma"),
        "wm_csf": "basic",
        "ica_aroma": "full",
    },
}

# Parameters each preset lets the user change (others are ignored with a warning by nilearn).
_PRESET_OPTIONS = {
    "simple": ("motion", "wm_csf", "global_signal"),
    "scrubbing": (
        "motion",
        "wm_csf",
        "scrub",
        "fd_threshold",
        "std_dvars_threshold",
        "global_signal",
    ),
    "compcor": ("motion", "compcor", "n_compcor"),
    "ica_aroma": ("wm_csf", "global_signal"),
}

_DEFAULTS = {
    "strategy": ("motion", "high_pass", "wm_csf"),
    "motion": "full",
    "scrub": 5,
    "fd_threshold": 0.2,
    "std_dvars_threshold": 3.0,
    "wm_csf": "basic",
    "global_signal": "basic",
    "compcor": "anat_combined",
    "n_compcor": "all",
    "ica_aroma": "full",
    "demean": True,
}

_EXPANSIONS = {
    "basic": (),
    "derivatives": ("derivative1",),
    "power2": ("power2",),
    "full": ("derivative1", "power2", "derivative1_power2"),
}

_COMPCOR_PREFIXES = {
    "temporal_anat_combined": ("t", "a"),
    "temporal_anat_separated": ("t", "a", "w", "c"),
    "temporal": ("t",),
    "anat_combined": ("a",),
    "anat_separated": ("a", "w", "c"),
}


@dataclass
class ConfoundSelection:
    """The confounds chosen for one run.

    Attributes
    ----------
    confounds : pandas.DataFrame
        The design (n_volumes rows), demeaned over the kept volumes when ``demean``.
    sample_mask : numpy.ndarray or None
        Indices of the kept volumes; None when every volume is kept.
    n_volumes : int
        Number of rows of the confounds file.
    censored : dict
        Removed volume index -> list of reasons (``non_steady_state``, ``fd``, ``std_dvars``,
        ``short_segment``, ``outlier_column``).
    parameters : dict
        The resolved strategy parameters.
    confounds_file : pathlib.Path
        The TSV that was read.
    """

    confounds: pd.DataFrame
    sample_mask: np.ndarray | None
    n_volumes: int
    censored: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    confounds_file: Path | None = None

    @property
    def columns(self) -> list[str]:
        """Names of the regressors, in design order."""
        return list(self.confounds.columns)

    @property
    def kept(self) -> np.ndarray:
        """Indices of the kept volumes (all volumes when nothing is censored)."""
        if self.sample_mask is None:
            return np.arange(self.n_volumes)
        return np.asarray(self.sample_mask)

    @property
    def dummy_scans(self) -> dict:
        """The volumes removed at the start of the run, and how they were chosen."""
        requested = self.parameters.get("dummy_scans", "auto")
        reason = "non_steady_state" if requested == "auto" else "dummy_scans"
        removed = [i for i, reasons in self.censored.items() if reason in reasons]
        source = (
            "fMRIPrep's non_steady_state_outlierXX confound columns"
            if requested == "auto"
            else "the first volumes (--dummy-scans)"
        )
        return {
            "Requested": requested,
            "Removed": len(removed),
            "Volumes": removed,
            "Source": source,
        }


def strategy_parameters(denoise_strategy: str | None = "simple", **overrides) -> dict:
    """Resolve a preset strategy and user overrides into ``select_confounds`` parameters.

    Mirrors ``nilearn.interfaces.fmriprep.load_confounds_strategy``: a preset fixes the
    components, and only the parameters it accepts can be overridden (``None`` means "keep the
    preset's value"); ``global_signal`` given as a string adds the global signal component.

    Parameters
    ----------
    denoise_strategy : {'simple', 'scrubbing', 'compcor', 'ica_aroma'} or None
        The preset. None starts from nilearn's ``load_confounds`` defaults and accepts every
        parameter (including ``strategy``).
    **overrides
        ``motion``, ``wm_csf``, ``global_signal``, ``scrub``, ``fd_threshold``,
        ``std_dvars_threshold``, ``compcor``, ``n_compcor``, ``ica_aroma``, ``demean``,
        ``strategy``.

    Returns
    -------
    dict
        Every parameter of :func:`select_confounds` except the file names.

    Raises
    ------
    ValueError
        Unknown preset, or a parameter the preset does not accept.
    """
    params = dict(_DEFAULTS)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if denoise_strategy is None:
        params.update(overrides)
    else:
        if denoise_strategy not in PRESETS:
            raise ValueError(
                f"denoise_strategy must be one of {sorted(PRESETS)}, got {denoise_strategy!r}."
            )
        params.update(PRESETS[denoise_strategy])
        allowed = _PRESET_OPTIONS[denoise_strategy]
        extra = sorted(set(overrides) - set(allowed) - {"demean"})
        if extra:
            raise ValueError(
                f"The '{denoise_strategy}' strategy does not use {extra}; "
                f"it accepts {list(allowed)}."
            )
        params.update(overrides)
        if isinstance(overrides.get("global_signal"), str):
            params["strategy"] = (*params["strategy"], "global_signal")
    params["strategy"] = tuple(params["strategy"])
    _check_parameters(params)
    return params


def _check_parameters(params: dict) -> None:
    unknown = [c for c in params["strategy"] if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"strategy: unknown components {unknown}; choose from {COMPONENTS}.")
    for name in ("motion", "wm_csf", "global_signal"):
        if params[name] not in _EXPANSIONS:
            raise ValueError(f"{name} must be one of {sorted(_EXPANSIONS)}, got {params[name]!r}.")
    if params["compcor"] not in _COMPCOR_PREFIXES:
        raise ValueError(
            f"compcor must be one of {sorted(_COMPCOR_PREFIXES)}, got {params['compcor']!r}."
        )
    n_compcor = params["n_compcor"]
    if n_compcor != "all" and (not isinstance(n_compcor, int | np.integer) or n_compcor < 0):
        raise ValueError(f"n_compcor must be 'all' or a non-negative int, got {n_compcor!r}.")
    if params["ica_aroma"] not in ("full", "basic"):
        raise ValueError(f"ica_aroma must be 'full' or 'basic', got {params['ica_aroma']!r}.")
    for name in ("fd_threshold", "std_dvars_threshold"):
        value = params[name]
        # A NaN or a threshold at or below zero would censor every volume (or none).
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float | np.number)
            or not np.isfinite(value)
            or value <= 0
        ):
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
    scrub = params["scrub"]
    if isinstance(scrub, float) and scrub.is_integer():
        # 5.0 from a JSON file means 5 volumes, as nilearn reads it.
        scrub = params["scrub"] = int(scrub)
    if isinstance(scrub, bool) or not isinstance(scrub, int | np.integer) or scrub < 0:
        raise ValueError(
            f"scrub (the shortest segment kept between outliers, in volumes) must be a "
            f"non-negative int, got {scrub!r}."
        )
    if "compcor" in params["strategy"] and "high_pass" not in params["strategy"]:
        # CompCor components were computed after a cosine high-pass: regress it too.
        raise ValueError("strategy: 'compcor' requires 'high_pass' as well.")


#: The component of ``strategy`` each option of a component acts on.
_OPTION_COMPONENT = {
    "motion": "motion",
    "wm_csf": "wm_csf",
    "global_signal": "global_signal",
    "scrub": "scrub",
    "fd_threshold": "scrub",
    "std_dvars_threshold": "scrub",
    "compcor": "compcor",
    "n_compcor": "compcor",
    "ica_aroma": "ica_aroma",
}


def check_file_overrides(file_params: dict, preset, overrides: dict) -> None:
    """Refuse command-line strategy options a strategy file would silently lose or drop.

    As nilearn refuses an option a preset does not use, an option of a component the file's
    ``strategy`` does not have is refused (it would do nothing), and so is an option the
    file sets to another value (which one holds would be a guess).

    Parameters
    ----------
    file_params : dict
        What :func:`load_strategy_file` read, without ``denoise_strategy``.
    preset : str or None
        The file's preset (``load_confounds_strategy`` files); its options are checked by
        :func:`strategy_parameters`.
    overrides : dict
        The command line's strategy options that were given (not None).

    Raises
    ------
    ValueError
        Naming the option and what the file holds (the caller names the file).
    """
    components = tuple(file_params.get("strategy", _DEFAULTS["strategy"]))
    for name, value in overrides.items():
        flag = "--" + name.replace("_", "-")
        component = _OPTION_COMPONENT.get(name)
        if preset is None and component is not None and component not in components:
            raise ValueError(
                f"{flag} acts on the '{component}' component, which the file's strategy "
                f"{list(components)} does not have: add it to the file, or leave {flag} out."
            )
        if name in file_params and file_params[name] != value:
            raise ValueError(
                f"{flag} {value!r} and the file's {name} {file_params[name]!r} disagree: "
                "give it in one place."
            )


def load_strategy_file(path) -> dict:
    """Read a custom strategy JSON.

    Two forms are accepted: nilearn's ``load_confounds`` keywords directly
    (``{"strategy": ["motion", "high_pass"], "motion": "basic"}``), or giga-connectome's
    wrapper ``{"name": ..., "function": "load_confounds" | "load_confounds_strategy",
    "parameters": {...}}``. A ``"columns"`` list of explicit column names or regular
    expressions (anchored) may be added; those columns are appended to the design.

    Returns
    -------
    dict
        ``denoise_strategy`` (None for ``load_confounds``) plus the overrides.

    Raises
    ------
    ValueError
        The file is not valid JSON or has unknown keys.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, or not UTF-8 text
        raise ValueError(f"strategy file '{path}' cannot be read as JSON: {exc}") from exc
    if not isinstance(content, dict):
        raise ValueError(f"strategy file '{path}' must hold a JSON object.")
    if "parameters" in content or "function" in content:
        function = content.get("function", "load_confounds")
        params = content.get("parameters", {})
        if not isinstance(params, dict):
            raise ValueError(
                f"strategy file '{path}': 'parameters' must be a JSON object of "
                f"load_confounds keywords, got {params!r}."
            )
        params = dict(params)
        if function == "load_confounds_strategy":
            denoise = params.pop("denoise_strategy", content.get("name", "simple"))
        elif function == "load_confounds":
            denoise = None
        else:
            raise ValueError(
                f"strategy file '{path}': 'function' must be 'load_confounds' or "
                f"'load_confounds_strategy', got {function!r}."
            )
        if "columns" in content:
            params["columns"] = content["columns"]
    else:
        params = dict(content)
        denoise = params.pop("denoise_strategy", None)
    known = set(_DEFAULTS) | {"columns"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"strategy file '{path}': unknown keys {unknown}; known: {sorted(known)}."
        )
    for key in ("strategy", "columns"):
        value = params.get(key)
        # A string would be taken letter by letter: a list of names is asked for.
        if key in params and not (
            isinstance(value, list) and all(isinstance(item, str) for item in value)
        ):
            example = '["motion", "high_pass"]' if key == "strategy" else '["csf", "rot_.*"]'
            raise ValueError(
                f"strategy file '{path}': '{key}' must be a list of names (e.g. {example}), "
                f"got {value!r}."
            )
    if "strategy" in params:
        params["strategy"] = tuple(params["strategy"])
    return {"denoise_strategy": denoise, **params}


def load_confounds_table(confounds_file) -> tuple[pd.DataFrame, dict]:
    """Read an fMRIPrep confounds TSV (``n/a`` → NaN) and its JSON sidecar ({} if absent).

    A run reads its table several times (selection, outlier table, report, group numbers):
    the TSV is parsed once per content, remembered by its stat key
    (:func:`masker_wf._io.stat_key`: an edited file is parsed again), and each call gets its
    own copy.

    Raises
    ------
    ValueError
        The file is missing, unreadable, or not in fMRIPrep's (>= 1.2) format.
    """
    path = Path(confounds_file)
    if not path.is_file():
        raise ValueError(f"confounds file '{path}' does not exist.")
    table = _parsed_table(path, stat_key(path)).copy()
    sidecar = _sidecar(path)
    meta = {}
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SidecarError(sidecar, f"confounds sidecar is not valid JSON: {exc}") from exc
    return table, meta


class SidecarError(ValueError):
    """A JSON sidecar that cannot be read; ``file`` is its path (the file at fault)."""

    def __init__(self, file, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file = Path(file)
        self.reason = reason


@functools.lru_cache(maxsize=16)
def _parsed_table(path: Path, key: tuple) -> pd.DataFrame:
    # ``key`` (the file's stat key) identifies the content; the file is read by its path.
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"], encoding="utf-8")
    except Exception as exc:
        raise ValueError(f"confounds file '{path}' cannot be read as a TSV: {exc}") from exc
    if table.shape[1] == 0 or table.shape[0] == 0:
        raise ValueError(f"confounds file '{path}' is empty.")
    try:
        float(table.columns[0])
    except ValueError:
        pass
    else:
        raise ValueError(f"confounds file '{path}' has no header row (fMRIPrep < 1.2?).")
    if any(re.search(r"[a-z][A-Z]", str(name)) for name in table.columns):
        raise ValueError(
            f"confounds file '{path}' has camelCase column names (fMRIPrep 1.0/1.1); "
            "only fMRIPrep >= 1.2 outputs are supported."
        )
    non_numeric = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        column = table[non_numeric[0]]
        # The first cell that is not a number (nor n/a), as the file's line number.
        bad = pd.to_numeric(column, errors="coerce").isna() & column.notna()
        row = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else None
        where = "" if row is None else f" (line {row + 2}: {column.iloc[row]!r})"
        raise ValueError(f"confounds file '{path}': non-numeric columns {non_numeric[:5]}{where}.")
    return table


def _sidecar(path: Path) -> Path:
    name = path.name
    for suffix in (".tsv.gz", ".tsv"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_suffix(".json")


def _expanded(names, model) -> list[str]:
    return [*names, *(f"{n}_{s}" for n in names for s in _EXPANSIONS[model])]


def _require(table, columns, component, path) -> list[str]:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"confounds file '{path}': the '{component}' component needs columns "
            f"{missing} that are not present."
        )
    return list(columns)


def find_compcor_columns(meta: dict, compcor: str, n_compcor) -> list[str]:
    """CompCor column names selected from the confounds JSON, in component order.

    ``a_comp_cor_NN`` columns are told apart by the JSON ``Mask`` field (``combined``, ``WM``,
    ``CSF``); ``n_compcor`` keeps the first components of each mask (``"all"``: every retained
    component, i.e. 50 % of the variance with fMRIPrep's defaults).
    """

    def first(columns):
        return columns if n_compcor == "all" else columns[: int(n_compcor)]

    selected = []
    for prefix in _COMPCOR_PREFIXES[compcor]:
        count = sum(f"{prefix}_comp_cor" in key for key in meta)
        names = [f"{prefix}_comp_cor_{i:02d}" for i in range(count)]
        if prefix == "a":
            masks = ["combined"] if compcor.endswith("combined") else ["WM", "CSF"]
            for mask in masks:
                selected += first([n for n in names if meta.get(n, {}).get("Mask") == mask])
        else:
            selected += first(names)
    return selected


def scrub_volumes(fd, std_dvars, *, fd_threshold, std_dvars_threshold, scrub) -> np.ndarray:
    """Indices of the volumes censored by motion scrubbing (Power et al. 2014).

    A volume is an outlier when its FD exceeds ``fd_threshold`` or its standardized DVARS
    exceeds ``std_dvars_threshold`` (NaN never exceeds). When ``scrub > 0``, kept segments
    shorter than ``scrub`` volumes (including at the start and end) are censored too.
    """
    fd = np.asarray(fd, dtype=float)
    std_dvars = np.asarray(std_dvars, dtype=float)
    with np.errstate(invalid="ignore"):
        outliers = np.flatnonzero((fd > fd_threshold) | (std_dvars > std_dvars_threshold))
    n = len(fd)
    if scrub <= 0 or outliers.size == 0:
        return outliers
    censored = np.zeros(n, dtype=bool)
    censored[outliers] = True
    if outliers[0] < scrub:  # too short a segment before the first outlier
        censored[: outliers[0]] = True
    if n - (outliers[-1] + 1) < scrub:  # ... or after the last one (nilearn keeps none)
        censored[outliers[-1] :] = True
    gaps = np.diff(outliers)
    for start, gap in zip(outliers[:-1], gaps, strict=True):
        if 1 < gap < scrub + 1:
            censored[start + 1 : start + gap] = True
    return np.flatnonzero(censored)


def select_confounds(
    confounds_file,
    *,
    strategy=_DEFAULTS["strategy"],
    motion="full",
    scrub=5,
    fd_threshold=0.2,
    std_dvars_threshold=3.0,
    wm_csf="basic",
    global_signal="basic",
    compcor="anat_combined",
    n_compcor="all",
    ica_aroma="full",
    demean=True,
    columns=None,
    dummy_scans="auto",
) -> ConfoundSelection:
    """Build the design and ``sample_mask`` of one run from its fMRIPrep confounds file.

    Parameters
    ----------
    confounds_file : path
        ``*_desc-confounds_timeseries.tsv`` (``_regressors.tsv`` also works); its JSON sidecar
        is read when present (required for anatomical CompCor).
    strategy, motion, scrub, fd_threshold, std_dvars_threshold, wm_csf, global_signal, \
compcor, n_compcor, ica_aroma, demean
        As in ``nilearn.interfaces.fmriprep.load_confounds`` (0.11.1 defaults).
    columns : list of str, optional
        Extra columns, by exact name or anchored regular expression.
    dummy_scans : 'auto' or int, default='auto'
        Volumes removed at the start of the run: ``'auto'`` takes the volumes fMRIPrep
        flagged in its ``non_steady_state_outlierXX`` columns (nilearn's behaviour); a
        number N removes the first N volumes and ignores those columns.

    Returns
    -------
    ConfoundSelection

    Raises
    ------
    ValueError
        Missing file or columns, unknown parameters, or every volume censored.
    """
    params = {
        "strategy": tuple(strategy),
        "motion": motion,
        "scrub": scrub,
        "fd_threshold": fd_threshold,
        "std_dvars_threshold": std_dvars_threshold,
        "wm_csf": wm_csf,
        "global_signal": global_signal,
        "compcor": compcor,
        "n_compcor": n_compcor,
        "ica_aroma": ica_aroma,
        "demean": demean,
    }
    _check_parameters(params)
    path = Path(confounds_file)
    table, meta = load_confounds_table(path)
    n_volumes = len(table)
    selected: list[str] = []
    censored: dict[int, list[str]] = {}

    def censor(indices, reason):
        for i in np.asarray(indices, dtype=int):
            censored.setdefault(int(i), []).append(reason)

    nss = [c for c in table.columns if "non_steady_state" in c]
    _check_dummy_scans(dummy_scans)
    if dummy_scans == "auto":
        for column in nss:
            censor(np.flatnonzero(table[column].to_numpy() != 0), "non_steady_state")
    else:
        censor(np.arange(min(int(dummy_scans), n_volumes)), "dummy_scans")
    for component in strategy:
        if component == "motion":
            motion_cols = _expanded(
                ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"], motion
            )
            selected += _require(table, motion_cols, "motion", path)
        elif component == "high_pass":
            selected += [c for c in table.columns if "cosine" in c]
        elif component == "wm_csf":
            selected += _require(table, _expanded(["csf", "white_matter"], wm_csf), "wm_csf", path)
        elif component == "global_signal":
            gs = _expanded(["global_signal"], global_signal)
            selected += _require(table, gs, "global_signal", path)
        elif component == "compcor":
            if not meta and "a" in _COMPCOR_PREFIXES[compcor]:
                raise ValueError(
                    f"anatomical CompCor needs the confounds JSON '{_sidecar(path)}', "
                    "which is missing (fMRIPrep >= 1.4 writes it)."
                )
            compcor_cols = find_compcor_columns(meta, compcor, n_compcor)
            if not compcor_cols:
                raise ValueError(
                    f"confounds file '{path}': no CompCor components for {compcor!r}."
                )
            selected += _require(table, compcor_cols, "compcor", path)
        elif component == "ica_aroma":
            if ica_aroma == "basic":
                aroma = [c for c in table.columns if "aroma" in c]
                if not aroma:
                    raise ValueError(
                        f"confounds file '{path}' has no ICA-AROMA columns "
                        f"(aroma_motion_XX). {_AROMA_ADVICE}"
                    )
                selected += aroma
        elif component == "scrub":
            _require(table, ["framewise_displacement", "std_dvars"], "scrub", path)
            flagged = scrub_volumes(
                table["framewise_displacement"],
                table["std_dvars"],
                fd_threshold=fd_threshold,
                std_dvars_threshold=std_dvars_threshold,
                scrub=scrub,
            )
            with np.errstate(invalid="ignore"):
                fd_out = set(np.flatnonzero(table["framewise_displacement"] > fd_threshold))
                dv_out = set(np.flatnonzero(table["std_dvars"] > std_dvars_threshold))
            for i in flagged:
                reason = [r for r, s in (("fd", fd_out), ("std_dvars", dv_out)) if i in s]
                censor([i], "+".join(reason) if reason else "short_segment")
    for pattern in columns or ():
        matched = [c for c in table.columns if c == pattern or re.fullmatch(pattern, c)]
        if not matched:
            raise ValueError(f"confounds file '{path}': no column matches {pattern!r}.")
        selected += matched
    # Outlier one-hot columns asked for explicitly become censored volumes, not regressors.
    outlier_cols = [c for c in selected if "motion_outlier" in c or "non_steady_state" in c]
    for column in outlier_cols:
        if "non_steady_state" in column and dummy_scans != "auto":
            continue  # --dummy-scans N replaces fMRIPrep's count
        censor(np.flatnonzero(table[column].to_numpy() != 0), "outlier_column")
    design_cols = sorted(set(selected) - set(outlier_cols))
    design = table[design_cols].astype(float).copy()
    if censored:
        kept = np.setdiff1d(np.arange(n_volumes), sorted(censored))
        if kept.size == 0:
            raise ValueError(f"confounds file '{path}': every volume would be censored.")
        sample_mask = kept
    else:
        sample_mask = None
    if design.shape[1]:
        first = design.iloc[0].isna().to_numpy()
        if n_volumes > 1:
            design.iloc[0, first] = design.iloc[1, first]
        if demean:
            rows = design if sample_mask is None else design.iloc[sample_mask]
            design = design - rows.mean(axis=0)
        # The validator's check (NaN matters only in the kept volumes), with its message.
        _validation.check_confounds_finite(design.to_numpy(), sample_mask)
    return ConfoundSelection(
        confounds=design,
        sample_mask=sample_mask,
        n_volumes=n_volumes,
        censored={k: censored[k] for k in sorted(censored)},
        parameters={**params, "columns": list(columns or []), "dummy_scans": dummy_scans},
        confounds_file=path,
    )


def _check_dummy_scans(dummy_scans) -> None:
    if dummy_scans == "auto":
        return
    if isinstance(dummy_scans, bool) or not isinstance(dummy_scans, int | np.integer):
        raise ValueError(f"dummy_scans must be 'auto' or an integer, got {dummy_scans!r}.")
    if dummy_scans < 0:
        raise ValueError(f"dummy_scans must be >= 0, got {dummy_scans}.")


def dummy_scan_selection(n_volumes: int, dummy_scans="auto", confounds_file=None):
    """The volumes kept when no confound is regressed (``--denoise-strategy none``).

    Parameters
    ----------
    n_volumes : int
        Volumes of the run.
    dummy_scans : 'auto' or int, default='auto'
        As :func:`select_confounds`; ``'auto'`` reads only the ``non_steady_state_outlierXX``
        columns of ``confounds_file`` (nothing is removed without a confounds file).
    confounds_file : path, optional
        fMRIPrep's confounds TSV of the run.

    Returns
    -------
    ConfoundSelection or None
        A selection without regressors whose ``sample_mask`` drops the dummy scans; None
        when no volume is removed.

    Raises
    ------
    ValueError
        Every volume would be removed, or the confounds file cannot be read.
    """
    _check_dummy_scans(dummy_scans)
    if dummy_scans == "auto":
        if confounds_file is None:
            return None
        table, _ = load_confounds_table(confounds_file)
        if len(table) != n_volumes:
            raise ValueError(
                f"confounds length mismatch: {len(table)} rows in '{confounds_file}' but the "
                f"BOLD has {n_volumes} volumes."
            )
        columns = [c for c in table.columns if "non_steady_state" in c]
        flagged = np.flatnonzero((table[columns].to_numpy() != 0).any(axis=1)) if columns else []
        reason = "non_steady_state"
    else:
        flagged = np.arange(min(int(dummy_scans), n_volumes))
        reason = "dummy_scans"
    if len(flagged) == 0:
        return None
    kept = np.setdiff1d(np.arange(n_volumes), flagged)
    if kept.size == 0:
        raise ValueError(
            f"--dummy-scans {dummy_scans} would remove every one of the {n_volumes} volumes."
        )
    return ConfoundSelection(
        confounds=pd.DataFrame(index=range(n_volumes)),
        sample_mask=kept,
        n_volumes=n_volumes,
        censored={int(i): [reason] for i in flagged},
        parameters={"strategy": (), "dummy_scans": dummy_scans},
        confounds_file=None if confounds_file is None else Path(confounds_file),
    )


#: The fMRIPrep outputs ``--denoise-strategy ica_aroma`` reads, by ``--ica-aroma`` mode.
AROMA_OUTPUTS = {
    "full": "the ICA-AROMA denoised BOLD "
    "'*_space-MNI152NLin6Asym[_res-2]_desc-smoothAROMAnonaggr_bold.nii.gz'",
    "basic": "the 'aroma_motion_XX' columns of '*_desc-confounds_timeseries.tsv' (the "
    "noise components, regressed out)",
}
_AROMA_ADVICE = (
    "fMRIPrep writes them only when run with --use-aroma, in versions 1.2 to 23.0.x "
    "(ICA-AROMA was removed in fMRIPrep 23.1.0; it moved to fMRIPost-AROMA, which writes "
    "its own denoised BOLD, '*_desc-nonaggrDenoised_bold.nii.gz', and "
    "'*_desc-aroma_timeseries.tsv'). Run fMRIPrep 1.2-23.0 with --use-aroma, or use "
    "another --denoise-strategy (simple, scrubbing, compcor)."
)


def aroma_missing_message(ica_aroma: str, selection: str) -> str:
    """Why ``--denoise-strategy ica_aroma`` found nothing to process, and what would do.

    Parameters
    ----------
    ica_aroma : {'full', 'basic'}
        The ``--ica-aroma`` mode.
    selection : str
        The query that matched nothing (for the message).
    """
    other = {"full": "basic", "basic": "full"}[ica_aroma]
    return (
        f"--denoise-strategy ica_aroma (--ica-aroma {ica_aroma}) needs fMRIPrep's ICA-AROMA "
        f"outputs: {AROMA_OUTPUTS[ica_aroma]}; none matches {selection}. {_AROMA_ADVICE} "
        f"(--ica-aroma {other} uses {AROMA_OUTPUTS[other]}, from the same fMRIPrep runs.)"
    )
