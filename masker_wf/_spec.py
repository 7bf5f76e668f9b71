"""The masker's parameters, declared once.

Every face of masker-wf (the estimator, the Pydra tasks and workflow, the nipype
sub-workflow, the command line, its config file and the provenance record) takes its
parameter names, defaults, allowed values and documentation from :data:`PARAMETERS`.
Faces whose signature must be spelled out in Python (the estimator, whose signature
scikit-learn and nilearn users read; Pydra tasks, which Pydra builds from a function
signature) are checked against this table by ``tests/test_spec.py``; the rest (CLI
flags, nipype traits, docstrings) are generated from it.

Adding a parameter is one entry here, then the faces the test names.

This module is part of the core: it imports nothing beyond the standard library.
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FACES",
    "MASK_STRATEGIES",
    "PARAMETERS",
    "STANDARDIZE_VALUES",
    "Parameter",
    "bind",
    "by_name",
    "declare_signature",
    "defaults",
    "fill_doc",
    "fill_doc_with",
    "for_face",
    "pick",
    "with_face_signature",
]

#: Where a parameter can appear.
#: ``estimator``: ``NiftiMasker.__init__``; ``workflow``: ``MaskerWorkflow`` inputs;
#: ``ComputeMask``/``Resample``/``CleanSignals``: Pydra task (and nipype interface) inputs;
#: ``nipype``: ``init_masker_wf`` keywords; ``cli``: BIDS App flags and config-file keys;
#: ``provenance``: recorded in each run's provenance ``Parameters``.
FACES = (
    "estimator",
    "workflow",
    "ComputeMask",
    "Resample",
    "CleanSignals",
    "nipype",
    "cli",
    "provenance",
)

MASK_STRATEGIES = ("background", "epi", "whole-brain-template", "gm-template", "wm-template")
#: ``"template"``: deprecated alias of ``"whole-brain-template"`` (warns).
DEPRECATED_MASK_STRATEGIES = {"template": "whole-brain-template"}
#: Options ``mask_args`` may set, per strategy: the keyword arguments of the strategy's
#: mask function in :mod:`masker_wf.masking` (checked against their signatures by a test).
MASK_ARGS = {
    "background": ("border_size", "connected", "opening", "target_affine", "target_shape"),
    "epi": (
        "connected",
        "ensure_finite",
        "exclude_zeros",
        "lower_cutoff",
        "opening",
        "target_affine",
        "target_shape",
        "upper_cutoff",
    ),
    "whole-brain-template": ("connected", "opening", "threshold"),
    "gm-template": ("connected", "opening", "threshold"),
    "wm-template": ("connected", "opening", "threshold"),
}
STANDARDIZE_VALUES = ("zscore_sample", "zscore", "psc", True, False, None)
DTYPE_VALUES = (None, "auto", "float32", "float64")

_PROCESSING = frozenset({"estimator", "workflow", "nipype", "cli", "provenance"})


@dataclass(frozen=True)
class Parameter:
    """One masker parameter.

    Attributes
    ----------
    name : str
        nilearn's name.
    default : object
        Default value (the same on every face).
    type : str
        numpydoc type text.
    doc : str
        One-line description (units included).
    faces : frozenset of str
        Faces (see :data:`FACES`) exposing the parameter under ``name``.
    choices : tuple, optional
        Allowed values, when they are a closed set.
    unit : str, optional
        ``"mm"``, ``"Hz"``, ``"s"``...
    cli_metavar : str, optional
        Metavar of the command-line flag.
    """

    name: str
    default: Any
    type: str
    doc: str
    faces: frozenset = field(default_factory=frozenset)
    choices: tuple | None = None
    unit: str | None = None
    cli_metavar: str | None = None

    @property
    def flag(self) -> str:
        """The command-line flag (``--smoothing-fwhm``)."""
        return "--" + self.name.replace("_", "-")

    @property
    def docstring(self) -> str:
        """numpydoc entry: ``name : type, default=...`` then the indented description."""
        default = ", optional" if self.default is None else f", default={self.default!r}"
        return f"{self.name} : {self.type}{default}\n    {self.doc}"


def _p(name, default, type_, doc, faces, **extra) -> Parameter:
    return Parameter(name, default, type_, doc, frozenset(faces), **extra)


_CLEAN = {"CleanSignals"}
_GRID = {"ComputeMask", "Resample", "CleanSignals"}

#: The parameters, in nilearn 0.11.1's ``NiftiMasker`` order.
PARAMETERS: tuple[Parameter, ...] = (
    _p(
        "mask_img",
        None,
        "Niimg-like",
        "Brain mask of the voxels to extract; computed with mask_strategy when None "
        "(the workflow and tasks take it as mask_file, the App as --mask-img).",
        {"estimator", "cli"},
    ),
    _p(
        "runs",
        None,
        "array of int",
        "Run label of each volume; runs are cleaned independently.",
        {"estimator", "workflow"} | _CLEAN,
    ),
    _p(
        "smoothing_fwhm",
        None,
        "float or sequence of 3 floats",
        "Full width at half maximum (mm) of the Gaussian kernel applied before masking.",
        _PROCESSING | _CLEAN,
        unit="mm",
        cli_metavar="MM",
    ),
    _p(
        "standardize",
        False,
        "{'zscore_sample', 'zscore', 'psc', True, False, None}",
        "Standardization of each signal after cleaning: 'zscore_sample' (ddof=1), 'zscore' "
        "or True (ddof=0, deprecated), 'psc' (percent signal change), False/None: none.",
        _PROCESSING | _CLEAN,
        choices=STANDARDIZE_VALUES,
    ),
    _p(
        "standardize_confounds",
        True,
        "bool",
        "z-score the confounds before regressing them out.",
        _PROCESSING | _CLEAN,
    ),
    _p(
        "detrend",
        False,
        "bool",
        "Remove a linear trend from each signal (and from the confounds).",
        _PROCESSING | _CLEAN,
    ),
    _p(
        "high_variance_confounds",
        False,
        "bool",
        "Add the 5 highest-variance voxel time series of the raw images as confounds.",
        _PROCESSING | _CLEAN,
    ),
    _p(
        "low_pass",
        None,
        "float",
        "Low-pass cut-off frequency (Hz) of the Butterworth filter; needs t_r.",
        _PROCESSING | _CLEAN,
        unit="Hz",
        cli_metavar="HZ",
    ),
    _p(
        "high_pass",
        None,
        "float",
        "High-pass cut-off frequency (Hz) of the Butterworth or cosine filter; needs t_r.",
        _PROCESSING | _CLEAN,
        unit="Hz",
        cli_metavar="HZ",
    ),
    _p(
        "t_r",
        None,
        "float",
        "Repetition time (s); needed by the temporal filters (the App reads it from the "
        "BOLD sidecar when not given).",
        _PROCESSING | _CLEAN,
        unit="s",
        cli_metavar="S",
    ),
    _p(
        "target_affine",
        None,
        "(3, 3) or (4, 4) array",
        "Affine of the grid the mask and images are resampled to.",
        _PROCESSING | _GRID,
        cli_metavar="JSON",
    ),
    _p(
        "target_shape",
        None,
        "tuple of 3 ints",
        "Shape of the grid the mask and images are resampled to (needs target_affine).",
        _PROCESSING | _GRID,
        cli_metavar="N",
    ),
    _p(
        "mask_strategy",
        "background",
        "{'background', 'epi', 'whole-brain-template', 'gm-template', 'wm-template'}",
        "How the mask is computed when none is given ('template': deprecated alias of "
        "'whole-brain-template').",
        _PROCESSING | {"ComputeMask"},
        choices=MASK_STRATEGIES,
    ),
    _p(
        "mask_args",
        None,
        "dict",
        "Keyword arguments of the mask-computing function of mask_strategy.",
        _PROCESSING | {"ComputeMask"},
        cli_metavar="JSON",
    ),
    _p(
        "dtype",
        None,
        "{None, 'auto'} or dtype",
        "Data type the images are converted to before processing ('auto': float32, int32 "
        "for signed integers).",
        _PROCESSING | {"Resample", "CleanSignals"},
        choices=DTYPE_VALUES,
    ),
    _p(
        "memory_level",
        1,
        "int",
        "Caching aggressiveness: 0 none, >= 1 the mask computation and transform results.",
        {"estimator"},
    ),
    _p(
        "memory",
        None,
        "None, str, pathlib.Path or joblib.Memory",
        "Cache location of the estimator (the workflow caches with Pydra instead).",
        {"estimator"},
    ),
    _p("verbose", 0, "int", "Verbosity of progress messages.", {"estimator"}),
    _p(
        "reports",
        True,
        "bool",
        "Keep what generate_report needs (the App: write HTML reports).",
        {"estimator", "cli"},
    ),
    _p(
        "cmap",
        "CMRmap_r",
        "str",
        "Colormap of the report's background image (accepted for compatibility).",
        {"estimator"},
    ),
    _p(
        "clean_args",
        None,
        "dict",
        "Extra keyword arguments of masker_wf.signal.clean (filter, ensure_finite, "
        "extrapolate, butterworth__order, butterworth__padtype, butterworth__padlen).",
        _PROCESSING | _CLEAN,
        cli_metavar="JSON",
    ),
)

_BY_NAME = {parameter.name: parameter for parameter in PARAMETERS}


def by_name(name: str) -> Parameter:
    """The :class:`Parameter` called ``name``."""
    return _BY_NAME[name]


def for_face(face: str) -> tuple[Parameter, ...]:
    """The parameters a face exposes, in spec order.

    Parameters
    ----------
    face : str
        One of :data:`FACES`.

    Returns
    -------
    tuple of Parameter
    """
    if face not in FACES:
        raise ValueError(f"Unknown face {face!r}; faces are {FACES}.")
    return tuple(p for p in PARAMETERS if face in p.faces)


def pick(values, face: str) -> dict:
    """``{name: values[name]}`` for the parameters of ``face``: what a face forwards.

    Parameters
    ----------
    values : mapping
        Values by parameter name (e.g. a function's ``locals()``).
    face : str
        One of :data:`FACES`.
    """
    return {p.name: values[p.name] for p in for_face(face)}


def defaults(face: str) -> dict:
    """``{name: default}`` of the parameters of ``face``."""
    return {p.name: p.default for p in for_face(face)}


def bind(face: str, given, owner: str, *, exclude=()) -> dict:
    """The parameters of ``face`` a function received as ``**params``, over the spec defaults.

    Parameters
    ----------
    face : str
        One of :data:`FACES`.
    given : mapping
        The keyword arguments received.
    owner : str
        The function's name, for the error.
    exclude : tuple of str, default=()
        Parameters of the face the function does not take.

    Raises
    ------
    TypeError
        A name that is not a parameter of ``face``, worded as Python words it.
    """
    values = {p.name: p.default for p in for_face(face) if p.name not in exclude}
    for name in given:
        if name not in values:
            raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}")
    values.update(given)
    return values


def with_face_signature(face: str, *, after: str, exclude=()):
    """Decorator: the signature of a ``function(*, ..., **params)`` lists the face's parameters.

    They become keyword-only parameters with the spec defaults, placed after the
    function's own parameter ``after``; the ``**params`` catch-all leaves the signature.
    The function itself receives them in ``**params`` (see :func:`bind`, with the same
    ``exclude``), so the spec is the one list of their names and defaults.

    Parameters
    ----------
    face : str
        One of :data:`FACES`.
    after : str
        The function's own parameter the face's parameters follow.
    exclude : tuple of str, default=()
        Parameters of the face the function does not take.
    """

    def decorate(function):
        own = [
            p
            for p in inspect.signature(function).parameters.values()
            if p.kind is not p.VAR_KEYWORD
        ]
        at = next(i for i, p in enumerate(own) if p.name == after) + 1
        spec = [
            inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default)
            for p in for_face(face)
            if p.name not in exclude
        ]
        function.__signature__ = inspect.Signature([*own[:at], *spec, *own[at:]])
        return function

    return decorate


def declare_signature(names: str, *sources, **defaults):
    """Decorator: ``function(first, ..., **options)`` takes the parameter list ``names``.

    For public functions whose parameter list is nilearn's and mostly another
    function's: each default is taken from ``defaults``, else from the first of
    ``sources`` that has the parameter (a parameter found in neither is required), so a
    default is written once. Calls are bound to that signature: positional arguments,
    unknown and missing names behave as with a ``def`` that lists them. The function
    receives every parameter by keyword, those it does not name in ``**options``.

    Parameters
    ----------
    names : str
        The parameter names in order, separated by white space.
    *sources : callable
        Functions whose defaults are reused.
    **defaults
        Defaults not taken from ``sources``.
    """

    def default(name):
        if name in defaults:
            return defaults[name]
        for source in sources:
            parameter = inspect.signature(source).parameters.get(name)
            if parameter is not None and parameter.default is not parameter.empty:
                return parameter.default
        return inspect.Parameter.empty

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    signature = inspect.Signature(
        [inspect.Parameter(name, kind, default=default(name)) for name in names.split()]
    )

    def decorate(function):
        @functools.wraps(function)
        def bound(*args, **kwargs):
            try:
                arguments = signature.bind(*args, **kwargs)
            except TypeError as error:
                raise TypeError(f"{function.__name__}() {error}") from None
            arguments.apply_defaults()
            return function(**arguments.arguments)

        bound.__signature__ = signature
        return bound

    return decorate


_FILL = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>[\w:]+)\)s[ \t]*$", re.M)


def fill_doc(obj):
    """Replace placeholder lines in ``obj.__doc__`` by numpydoc parameter entries.

    ``%(name)s`` becomes the entry of one parameter; ``%(parameters:FACE)s`` the entries
    of every parameter of a face (see :data:`FACES`), in spec order. Entries are
    re-indented to the placeholder's indentation, so one text serves every docstring
    (nilearn's ``fill_doc`` idea). Unknown names are left as they are.
    """

    def entry(name):
        if name.startswith("parameters:") and name.split(":", 1)[1] in FACES:
            parameters = for_face(name.split(":", 1)[1])
        elif name in _BY_NAME:
            parameters = (_BY_NAME[name],)
        else:
            return None
        return "\n".join(p.docstring for p in parameters)

    return _fill(obj, entry)


def fill_doc_with(texts: dict):
    """Decorator: like :func:`fill_doc`, for texts that are not spec parameters.

    Parameters
    ----------
    texts : dict
        ``{name: text}``; a ``%(name)s`` line becomes ``text``, re-indented. When the
        decorated function has a parameter ``name``, ``{default}`` in its text becomes that
        parameter's default, so one text serves functions whose defaults differ.
    """

    def decorate(obj):
        parameters = inspect.signature(obj).parameters

        def entry(name):
            text = texts.get(name)
            if text is not None and name in parameters:
                default = parameters[name].default
                shown = f'"{default}"' if isinstance(default, str) else repr(default)
                text = text.replace("{default}", shown)
            return text

        return _fill(obj, entry)

    return decorate


def _fill(obj, entry):
    """Replace each ``%(name)s`` line of ``obj.__doc__`` by ``entry(name)``, re-indented."""
    doc = obj.__doc__
    if doc:

        def replace(match):
            text = entry(match["name"])
            if text is None:
                return match[0]
            indent = match["indent"]
            return "\n".join(indent + line if line else line for line in text.splitlines())

        obj.__doc__ = _FILL.sub(replace, doc)
    return obj
