"""Command line of the BIDS App: ``masker-wf bids_dir output_dir {participant,group} ...``.

The NiftiMasker parameters' flags are generated from :mod:`masker_wf._spec` (flag, help,
choices, default, metavar), so that the command line, the config file and the estimator
share one set of names and texts; the App's own options (data selection, denoising
strategy, outputs, performance, SLURM) are written out here.

:func:`parse_options` turns ``argv`` (and the ``--config-file`` it names) into a plain
dict of option values, the input of :meth:`masker_wf.app.settings.Settings.from_options`.
Config-file values go through the same parser as the command line, so a value is typed
the same way wherever it comes from (``space = "MNI"`` is the one-item list ``["MNI"]``).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from pathlib import Path

from .. import _spec
from .._version import __version__

__all__ = [
    "CONFIG_TABLES",
    "OptionsError",
    "build_parser",
    "load_config_file",
    "option_tokens",
    "parse_options",
    "slurm_option_strings",
    "spec_value",
]

POSITIONALS = ("bids_dir", "output_dir", "analysis_level")
#: Config-file tables whose content is one option's value (a JSON object), not a group.
CONFIG_TABLES = ("mask_args", "clean_args")
#: Spelled-out "off" value of the spec parameters whose choices include False or None.
OFF = "none"


class OptionsError(ValueError):
    """The command line or the config file is not usable; ``exit_code`` follows the BIDS spec.

    64: usage error, 65: a config file that cannot be parsed, 66: a missing config file.
    """

    def __init__(self, message: str, exit_code: int = 64):
        super().__init__(message)
        self.exit_code = exit_code


class AppParser(argparse.ArgumentParser):
    """The App's parser: records its options; can report errors as :class:`OptionsError`.

    Attributes
    ----------
    options : dict
        ``dest -> argparse.Action`` of every option (not the positionals, ``--help`` or
        ``--version``), in the order they were added.
    option_defaults : dict
        ``dest -> default`` of those options.
    with_defaults : bool
        A parsed namespace holds every option (True, the default), or only those given
        (False: the actions' defaults are ``argparse.SUPPRESS``).
    raise_errors : bool
        Usage errors raise :class:`OptionsError` instead of printing and exiting (2).
    slurm_dests : tuple of str
        The options of the SLURM group (see :func:`add_slurm_arguments`).
    """

    def __init__(self, *args, with_defaults: bool = True, raise_errors: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.with_defaults = with_defaults
        self.raise_errors = raise_errors
        self.options: dict[str, argparse.Action] = {}
        self.option_defaults: dict[str, object] = {}
        self.slurm_dests: tuple[str, ...] = ()

    def error(self, message):
        if self.raise_errors:
            raise OptionsError(message)
        super().error(message)


def _json_object(text: str):
    """A JSON object given inline or as a path to a .json file."""
    path = Path(text)
    try:
        if path.suffix == ".json" and path.is_file():
            value = json.loads(path.read_text(encoding="utf-8"))
        else:
            value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _affine(text: str) -> list:
    """A 3x3 or 4x4 affine given as a JSON nested list."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    size = len(value) if isinstance(value, list) else 0
    if size not in (3, 4) or not all(isinstance(r, list) and len(r) == size for r in value):
        raise argparse.ArgumentTypeError("expected a 3x3 or 4x4 nested list of numbers")
    return [[float(x) for x in row] for row in value]


def _derivative(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep:
        path, name = name, Path(name).name
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def _word_or_count(word: str, not_a_count: str, negative: str):
    """An argparse type: ``word`` itself, or an integer >= 0.

    ``not_a_count`` and ``negative`` are the messages (``str.format`` templates given
    ``text`` and ``value``).
    """

    def convert(text: str):
        if text == word:
            return text
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(not_a_count.format(text=text)) from exc
        if value < 0:
            raise argparse.ArgumentTypeError(negative.format(value=value))
        return value

    return convert


_n_compcor = _word_or_count("all", "expected an integer or 'all', got {text!r}", "must be >= 0")
_dummy_scans = _word_or_count(
    "auto", "expected 'auto' or an integer, got {text!r}", "must be >= 0, got {value}"
)


def _number(kind, bound=None):
    """An argparse type: ``kind(text)``; ``bound`` ``"> 0"`` or ``">= 0"`` refuses the rest."""

    def convert(text):
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
        if bound is not None and not (value > 0 if bound == "> 0" else value >= 0):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


# A BIDS label: letters and digits only (BIDS specification, "entities").
_LABEL = re.compile(r"[0-9A-Za-z]+")


def _label(prefix: str, what: str, *, modifiers: bool = False):
    """An argparse type: a BIDS label, with or without its ``prefix-`` (kept as given).

    An empty label or one with other characters would select nothing and surface later as
    "nothing to process"; refused here, as a usage error naming the value. With
    ``modifiers`` (``--space``), what follows a ``:`` is left to the query, whose error
    explains how to select a resolution.
    """

    def convert(text: str):
        label = str(text).strip().removeprefix(f"{prefix}-")
        if modifiers:
            label = label.split(":", 1)[0]
        if not _LABEL.fullmatch(label):
            raise argparse.ArgumentTypeError(
                f"expected a {what} label (letters and digits, with or without "
                f"'{prefix}-'), got {text!r}"
            )
        return text

    convert.__name__ = f"{what} label"
    return convert


def _positive(kind):
    return _number(kind, "> 0")


def _non_negative(kind):
    return _number(kind, ">= 0")


def _add(parser: AppParser, group, *flags, default=None, **kwargs):
    """Add an option under its hyphen spelling and the underscore alias BIDS Apps accept."""
    if kwargs.get("action") is not argparse.BooleanOptionalAction:  # "--no-x_y" would confuse
        aliases = [
            "--" + f[2:].replace("-", "_") for f in flags if f.startswith("--") and "-" in f[2:]
        ]
        flags = (*flags, *[a for a in aliases if a not in flags])
    action = group.add_argument(
        *flags, default=default if parser.with_defaults else argparse.SUPPRESS, **kwargs
    )
    parser.options[action.dest] = action
    parser.option_defaults[action.dest] = default
    # The help states the default itself: without defaults the action does not hold it.
    # (BooleanOptionalAction appends its own "(default: ...)" when it has one.)
    if action.help and default not in (None, "") and "default" not in action.help:
        action.help += " (default: " + str(default).replace("%", "%%") + ")"
    return action


def _adder(parser: AppParser, group):
    """:func:`_add` for the options of one group: ``add(*flags, **kwargs)``."""
    return functools.partial(_add, parser, group)


# How the spec's numpydoc type text becomes an argparse conversion.
_SPEC_TYPES = {
    # Conversion only: the validator checks the values, with the message every face gives.
    "float": {"type": _number(float)},
    "float or sequence of 3 floats": {"type": _number(float)},
    "(3, 3) or (4, 4) array": {"type": _affine},
    "tuple of 3 ints": {"type": int, "nargs": 3},
    "dict": {"type": _json_object},
    "Niimg-like": {"type": Path, "metavar": "FILE"},
}


def _spec_option(add, parameter: _spec.Parameter) -> None:
    """The flag of one spec parameter: its name, doc, default, choices and metavar."""
    kwargs: dict = {"help": parameter.doc.replace("%", "%%"), "dest": parameter.name}
    if parameter.type == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif parameter.choices is not None:
        choices = [c for c in parameter.choices if isinstance(c, str)]
        if False in parameter.choices or None in parameter.choices:
            choices.append(OFF)
            if parameter.default in (False, None):
                # The default as it is spelled on the command line, not Python's False.
                kwargs["help"] += f" (default: {OFF})"
        kwargs["choices"] = choices
    else:
        kwargs.update(_SPEC_TYPES[parameter.type])
    if parameter.cli_metavar is not None:
        kwargs["metavar"] = parameter.cli_metavar
    add(parameter.flag, default=parameter.default, **kwargs)


def spec_value(name: str, value):
    """The spec value of a masker option as parsed: :data:`OFF` becomes False or None."""
    if value == OFF:
        choices = _spec.by_name(name).choices or ()
        return False if False in choices else None
    return value


def build_parser(*, with_defaults: bool = True, raise_errors: bool = False) -> AppParser:
    """The App's argparse parser (see :class:`AppParser`).

    Parameters
    ----------
    with_defaults : bool, default=True
        False: parsed namespaces hold only the options given (see :func:`parse_options`).
    raise_errors : bool, default=False
        Raise :class:`OptionsError` on usage errors instead of exiting.
    """
    parser = AppParser(
        with_defaults=with_defaults,
        raise_errors=raise_errors,
        prog="masker-wf",
        description="BIDS App: NiftiMasker-style masking and denoising of every BOLD run of a "
        "raw BIDS dataset or of fMRIPrep derivatives, with Pydra caching and provenance.",
    )
    parser.add_argument("bids_dir", type=Path, help="raw BIDS dataset or fMRIPrep derivatives")
    parser.add_argument("output_dir", type=Path, help="output (BIDS-Derivatives) directory")
    parser.add_argument(
        "analysis_level", help="'participant' (process runs) or 'group' (summary over runs)"
    )
    parser.add_argument("--version", action="version", version=f"masker-wf {__version__}")
    add = _adder(parser, parser)
    add("-v", "--verbose", action="count", default=0, help="more log output")
    add(
        "--config-file",
        type=Path,
        help="TOML or JSON file of option values (keys are option names); the command line "
        "wins over it",
    )
    for title, description, add_options in _OPTION_GROUPS:
        add_options(_adder(parser, parser.add_argument_group(title, description)))
    add_slurm_arguments(parser)
    return parser


def _selection_options(add) -> None:
    """Which runs of the input dataset are processed (BIDS entities, spaces, filters)."""
    add(
        "--participant-label",
        nargs="+",
        type=_label("sub", "participant"),
        metavar="LABEL",
        help="participants to process, with or without 'sub-' (default: all)",
    )
    entities = (
        ("session-id", "ses", "session"),
        ("task-id", "task", "task"),
        ("run-id", "run", "run"),
    )
    for flag, prefix, what in entities:
        add(
            f"--{flag}",
            nargs="+",
            type=_label(prefix, what),
            metavar="LABEL",
            help=f"{what}s to process",
        )
    add(
        "--space",
        nargs="+",
        type=_label("space", "space", modifiers=True),
        metavar="SPACE",
        help="output spaces of fMRIPrep to process (default: every space found)",
    )
    add(
        "--bids-filter-file",
        type=Path,
        metavar="FILE",
        help="JSON {'bold': {entity: value}} (null: absent, '*': any) restricting the query",
    )
    add(
        "--derivatives",
        nargs="+",
        type=_derivative,
        metavar="NAME=PATH",
        help="preprocessed derivatives for a raw bids_dir, e.g. fmriprep=/data/derivatives/"
        "fmriprep",
    )
    add(
        "--bids-database-dir",
        type=Path,
        metavar="DIR",
        help="pybids index directory to create or reuse (indexes every subject)",
    )


def _denoising_options(add) -> None:
    """The confound strategy: presets, strategy files or components, and dummy scans."""
    add(
        "--denoise-strategy",
        default="auto",
        nargs="+",
        choices=["auto", "none", "simple", "scrubbing", "compcor", "ica_aroma"],
        help="preset confound strategy; 'auto' is decided once per output dataset, over every "
        "participant of the input (recorded in out/logs and reused by later invocations): "
        "'simple' when fMRIPrep confounds exist (a run without them then fails), else 'none'. "
        "Several presets (not 'auto') clean each run with each of them in one invocation, "
        "sharing the mask, resampling and smoothing; each one's outputs have the desc label "
        "--output-desc followed by the strategy (desc-denoisedSimple, desc-denoisedCompcor) "
        "(default: auto)",
    )
    add(
        "--custom-strategy",
        type=Path,
        nargs="+",
        action="extend",
        metavar="FILE",
        help="strategy JSON (load_confounds keywords, optional 'columns'); overrides the "
        "presets; repeated (or several files), each file is a strategy of its own, its desc "
        "label --output-desc followed by the file's name (letters and digits)",
    )
    levels = ["basic", "power2", "derivatives", "full"]
    add("--motion", choices=levels, help="motion regressors (preset if unset)")
    add("--wm-csf", choices=levels, help="white matter / CSF regressors")
    add("--global-signal", choices=levels, help="add global signal regressors")
    add("--scrub", type=int, metavar="N", help="minimum kept segment length")
    add(
        "--fd-threshold",
        type=float,
        metavar="MM",
        help="framewise displacement limit",
    )
    add("--std-dvars-threshold", type=float, help="standardized DVARS limit")
    add(
        "--compcor",
        choices=[
            "anat_combined",
            "anat_separated",
            "temporal",
            "temporal_anat_combined",
            "temporal_anat_separated",
        ],
        help="CompCor components",
    )
    add(
        "--n-compcor",
        type=_n_compcor,
        metavar="N|all",
        help="CompCor components kept",
    )
    add("--ica-aroma", choices=["full", "basic"], help="ICA-AROMA mode")
    add(
        "--dummy-scans",
        type=_dummy_scans,
        default="auto",
        metavar="auto|N",
        help="volumes removed at the start of each run: 'auto' takes those fMRIPrep flagged "
        "(non_steady_state_outlierXX columns of the confounds, none without a confounds "
        "file), N the first N volumes whatever the columns say",
    )
    add(
        "--demean",
        action=argparse.BooleanOptionalAction,
        help="demean the confounds over the kept volumes (default: yes)",
    )


def _data_guards_options(add) -> None:
    """The degrees of freedom and the time a cleaned run must keep."""
    add(
        "--warn-dof",
        type=int,
        default=20,
        metavar="N",
        help="warn about (and flag in the reports) runs left with fewer degrees of freedom",
    )
    add(
        "--min-dof",
        type=int,
        default=1,
        metavar="N",
        help="refuse runs left with fewer degrees of freedom (exit code 65 for the run; the "
        "other runs go on)",
    )
    add(
        "--min-time",
        type=_non_negative(float),
        default=0.0,
        metavar="SECONDS",
        help="refuse runs left with fewer seconds of data after censoring, as XCP-D's "
        "--min-time (XCP-D uses 240); 0: no minimum",
    )


def _masker_options(add) -> None:
    """The NiftiMasker parameters, then the App's own options about masking and grids."""
    for parameter in _spec.for_face("cli"):
        _spec_option(add, parameter)
    add(
        "--target-resolution",
        type=_positive(float),
        metavar="MM",
        help="resample to isotropic voxels of this size (outputs named res-<size>mm)",
    )
    add(
        "--use-input-mask",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use fMRIPrep's desc-brain_mask when present",
    )


def _outputs_options(add) -> None:
    """What is written beside the cleaned BOLD, and how it is named."""
    add(
        "--output-desc",
        default="denoised",
        metavar="LABEL",
        help="desc- label of the outputs (letters and digits only)",
    )
    add(
        "--save-signals",
        action="store_true",
        default=False,
        help="also write the signals .npy",
    )


def _performance_options(add) -> None:
    """The work directory, processes, threads and memory."""
    add(
        "-w",
        "--work-dir",
        type=Path,
        default=Path("work"),
        help="working directory, one sub-<label>/ folder per participant (its Pydra cache: "
        "re-running resumes from it)",
    )
    add(
        "--clean-workdir",
        action="store_true",
        default=False,
        help="remove a participant's folder of the working directory once all its runs "
        "succeeded and their outputs are committed (a rerun then recomputes them)",
    )
    add(
        "--dry-run",
        action="store_true",
        default=False,
        help="print the plan (runs, and with --slurm the array tasks, arrays and estimated "
        "memory) and stop: nothing is processed, written or submitted",
    )
    add(
        "--nprocs",
        "--n-cpus",
        type=_positive(int),
        metavar="N",
        help="runs processed at once, each in a process of its own (default 1: one after "
        "the other, in this process; in a SLURM task, never more than its CPUs)",
    )
    add(
        "--omp-nthreads",
        type=_positive(int),
        metavar="N",
        help="threads inside each run (exported as OMP_NUM_THREADS; default: the CPUs "
        "divided among the runs at once, capped by an OMP_NUM_THREADS already set)",
    )
    add(
        "--mem-mb",
        type=_positive(int),
        metavar="MB",
        help="memory the runs in flight may use together, from each run's estimate "
        "(logged); default: what is available (in a SLURM task: its allocation, never more)",
    )


_DOF_TEXT = (
    "The degrees of freedom of a run are its kept volumes minus the confound regressors, "
    "the mean/trend terms and the dimensions the temporal filter removes, counted before "
    "cleaning; they are recorded in the sidecar, the provenance and group/summary.tsv."
)
#: The App's option groups but SLURM's, in --help order: title, description, options.
_OPTION_GROUPS = (
    ("Selecting data", None, _selection_options),
    ("Denoising (nilearn load_confounds vocabulary)", None, _denoising_options),
    ("NiftiMasker parameters", None, _masker_options),
    ("Data left after cleaning", _DOF_TEXT, _data_guards_options),
    ("Outputs", None, _outputs_options),
    ("Performance", None, _performance_options),
)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_slurm_arguments(parser: AppParser):
    """Add the SLURM options of the BIDS App to ``parser``, in their own group.

    Returns
    -------
    argparse._ArgumentGroup
        The group holding the options.
    """
    before = set(parser.options)
    group = parser.add_argument_group(
        "SLURM",
        "Submit the participants to a SLURM cluster instead of processing them here. "
        "Paths (dataset, output, work directory, Python environment) must be the same on the "
        "compute nodes.",
    )
    add = _adder(parser, group)
    add(
        "--slurm",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="submit the participants as SLURM job arrays (several participants per task, "
        "arrays no larger than the cluster's MaxArraySize) and return (or --wait); "
        "--no-slurm overrides 'slurm' in a --config-file (the array tasks use it)",
    )
    add(
        "--sbatch-args",
        default="",
        metavar="ARGS",
        help="extra sbatch options for every task, as one string, e.g. "
        "--sbatch-args='--cpus-per-task=4 --mem=8G --time=2:00:00' "
        "(use the '=' form when the string starts with '-')",
    )
    add(
        "--array-throttle",
        type=_positive_int,
        metavar="N",
        help="run at most N array tasks at the same time (sbatch --array=...%%N; several "
        "arrays of a submission then run one after the other)",
    )
    add(
        "--participants-per-task",
        type=_positive_int,
        metavar="N",
        help="participants processed by each array task, one after the other (default: "
        "enough for the task's start-up, a few seconds, to be under a tenth of its work, "
        "from the sizes of the runs)",
    )
    add(
        "--wait",
        action="store_true",
        default=False,
        help="follow the arrays until every task ended (squeue/scontrol, no accounting "
        "needed); exit non-zero naming the participants that failed",
    )
    add(
        "--slurm-worker",
        choices=("array", "pydra"),
        default="array",
        help="with --slurm: 'array': job arrays whose tasks run the App for "
        "--participants-per-task participants each; 'pydra': run here and let Pydra's SLURM "
        "worker submit every workflow node as its own job (exit status read with scontrol, "
        "else sacct)",
    )
    add(
        "--slurm-partition",
        metavar="NAME",
        help="SLURM partition for the jobs (default: the cluster's default partition)",
    )
    add(
        "--array-task",
        action="store_true",
        default=False,
        help="set by the job array's sbatch script: this process is one task of the array "
        "(the dataset-level files were written at submission; it never submits)",
    )
    parser.slurm_dests = tuple(dest for dest in parser.options if dest not in before)
    return group


def slurm_option_strings(parser: AppParser) -> dict[str, bool]:
    """Every spelling of the SLURM options, and whether it takes a value."""
    return {
        flag: parser.options[dest].nargs != 0
        for dest in parser.slurm_dests
        for flag in parser.options[dest].option_strings
    }


def load_config_file(path) -> dict:
    """Read a TOML or JSON config file into ``{dest: value}``.

    Keys may use hyphens or underscores, and may be grouped in tables/objects (flattened).

    Raises
    ------
    OptionsError
        The file does not exist (exit code 66), is a directory, or its content cannot be
        parsed (65).
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        # As for strategy files: there, but not a file one can read (65, not 66).
        raise OptionsError(f"--config-file '{path}' is not a file.", 65)
    if not path.is_file():
        raise OptionsError(f"--config-file '{path}' does not exist.", 66)
    try:
        # Decoded inside: a binary file is a config file that cannot be parsed (65).
        text = path.read_bytes().decode("utf-8")
        if path.suffix.lower() == ".toml":
            import tomllib

            content = tomllib.loads(text)
        else:
            content = json.loads(text)
    except Exception as exc:
        raise OptionsError(f"--config-file '{path}' cannot be parsed: {exc}", 65) from exc
    if not isinstance(content, dict):
        raise OptionsError(f"--config-file '{path}' must hold a table/object.", 65)
    flat = {}

    def walk(mapping):
        for key, value in mapping.items():
            dest = key.replace("-", "_")
            if isinstance(value, dict) and dest not in (*CONFIG_TABLES, "derivatives"):
                walk(value)
            else:
                flat[dest] = value

    walk(content)
    return flat


def option_tokens(parser: AppParser, dest: str, value) -> list[str]:
    """Command-line tokens giving option ``dest`` the (config-file) ``value``.

    A scalar where the option takes several values is one value; JSON-valued options take
    a JSON text; a ``derivatives`` table ``{name: path}`` becomes ``name=path`` items.
    """
    action = parser.options[dest]
    flag = next(f for f in action.option_strings if f.startswith("--"))
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise OptionsError(f"{dest}: expected true or false, got {value!r}")
        return [flag if value else "--no-" + flag[2:]]
    if action.nargs == 0:  # store_true and count
        if isinstance(value, bool) or action.const is not None:
            return [flag] if value else []
        return [flag] * int(value)
    if dest == "derivatives" and isinstance(value, dict):
        value = [f"{name}={path}" for name, path in value.items()]
    if action.nargs is None:
        return [f"{flag}={_token(value)}"]  # '=': a value may start with '-'
    items = value if isinstance(value, list) else [value]
    return [flag, *(_token(item) for item in items)]


def _token(value) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, bool):
        return OFF if value is False else "true"
    return str(value)


def parse_options(argv) -> dict:
    """All option values of the App: the command line over the config file over defaults.

    Parameters
    ----------
    argv : list of str
        Arguments without the program name.

    Returns
    -------
    dict
        ``dest -> value`` of the positionals and of every option, plus ``"_given"``: the
        sorted dests set on the command line or in the config file.

    Raises
    ------
    OptionsError
        A usage error (64) or an unusable config file (65, 66).
    SystemExit
        ``--help`` or ``--version`` (code 0), after printing.
    """
    parser = build_parser(with_defaults=False, raise_errors=True)
    given = vars(parser.parse_args(argv))
    from_config = {}
    if given.get("config_file") is not None:
        config_file = given["config_file"]
        config = load_config_file(config_file)
        known = {*parser.options, *POSITIONALS}
        unknown = sorted(set(config) - known)
        if unknown:
            raise OptionsError(f"--config-file: unknown options {unknown}")
        tokens = [str(given[name]) for name in POSITIONALS]
        for dest, value in config.items():
            if dest not in POSITIONALS:
                tokens += option_tokens(parser, dest, value)
        try:
            from_config = vars(parser.parse_args(tokens))
        except OptionsError as exc:
            raise OptionsError(f"--config-file '{config_file}': {exc}") from exc
    options = {**parser.option_defaults, **from_config, **given}
    options["_given"] = sorted((set(from_config) | set(given)) - set(POSITIONALS))
    for parameter in _spec.for_face("cli"):
        options[parameter.name] = spec_value(parameter.name, options[parameter.name])
    return options
