"""Command line of the BIDS App: ``masker-wf bids_dir output_dir {participant,group} ...``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .._version import __version__

__all__ = ["build_parser", "load_config_file"]


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


def _n_compcor(text: str):
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _positive(kind):
    def convert(text):
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return convert


def _add(group, *flags, **kwargs):
    """Add an option under its hyphen spelling and the underscore alias BIDS Apps accept."""
    if kwargs.get("action") is argparse.BooleanOptionalAction:
        return group.add_argument(*flags, **kwargs)  # "--no-x_y" aliases would only confuse
    aliases = [
        "--" + f[2:].replace("-", "_") for f in flags if f.startswith("--") and "-" in f[2:]
    ]
    return group.add_argument(*flags, *[a for a in aliases if a not in flags], **kwargs)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except where the help already says what happens by default."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if "default" in help_text or action.default in (None, argparse.SUPPRESS):
            return help_text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The App's argparse parser (the SLURM options come from ``masker_wf.cli.slurm``)."""
    parser = argparse.ArgumentParser(
        prog="masker-wf",
        description="BIDS App: NiftiMasker-style masking and denoising of every BOLD run of a "
        "raw BIDS dataset or of fMRIPrep derivatives, with Pydra caching and provenance.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="raw BIDS dataset or fMRIPrep derivatives")
    parser.add_argument("output_dir", type=Path, help="output (BIDS-Derivatives) directory")
    parser.add_argument(
        "analysis_level", help="'participant' (process runs) or 'group' (summary over runs)"
    )
    parser.add_argument("--version", action="version", version=f"masker-wf {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    parser.add_argument(
        "--config-file",
        "--config_file",
        type=Path,
        help="TOML or JSON file of option values (keys are option names); the command line "
        "wins over it",
    )

    sel = parser.add_argument_group("Selecting data")
    _add(
        sel,
        "--participant-label",
        nargs="+",
        metavar="LABEL",
        help="participants to process, with or without 'sub-' (default: all)",
    )
    _add(sel, "--session-id", nargs="+", metavar="LABEL", help="sessions to process")
    _add(sel, "--task-id", nargs="+", metavar="LABEL", help="tasks to process")
    _add(sel, "--run-id", nargs="+", metavar="LABEL", help="runs to process")
    _add(
        sel,
        "--space",
        nargs="+",
        metavar="SPACE",
        help="output spaces of fMRIPrep to process (default: every space found)",
    )
    _add(
        sel,
        "--bids-filter-file",
        type=Path,
        metavar="FILE",
        help="JSON {'bold': {entity: value}} (null: absent, '*': any) restricting the query",
    )
    _add(
        sel,
        "--derivatives",
        nargs="+",
        type=_derivative,
        metavar="NAME=PATH",
        help="preprocessed derivatives for a raw bids_dir, e.g. fmriprep=/data/derivatives/"
        "fmriprep",
    )
    _add(
        sel,
        "--bids-database-dir",
        type=Path,
        metavar="DIR",
        help="pybids index directory to create or reuse (indexes every subject)",
    )

    den = parser.add_argument_group("Denoising (nilearn load_confounds vocabulary)")
    _add(
        den,
        "--denoise-strategy",
        default="auto",
        choices=["auto", "none", "simple", "scrubbing", "compcor", "ica_aroma"],
        help="preset confound strategy; 'auto' is decided once for the selected runs: "
        "'simple' when fMRIPrep confounds exist (a run without them then fails), else 'none'",
    )
    _add(
        den,
        "--custom-strategy",
        type=Path,
        metavar="FILE",
        help="strategy JSON (load_confounds keywords, optional 'columns'); overrides the preset",
    )
    levels = ["basic", "power2", "derivatives", "full"]
    _add(den, "--motion", choices=levels, help="motion regressors (preset default if unset)")
    _add(den, "--wm-csf", choices=levels, help="white matter / CSF regressors")
    _add(den, "--global-signal", choices=levels, help="add global signal regressors")
    _add(den, "--scrub", type=int, metavar="N", help="minimum kept segment length (scrubbing)")
    _add(den, "--fd-threshold", type=float, metavar="MM", help="framewise displacement limit")
    _add(den, "--std-dvars-threshold", type=float, help="standardized DVARS limit")
    _add(
        den,
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
    _add(den, "--n-compcor", type=_n_compcor, metavar="N|all", help="CompCor components kept")
    _add(den, "--ica-aroma", choices=["full", "basic"], help="ICA-AROMA mode")
    _add(
        den,
        "--demean",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="demean the confounds over the kept volumes (default: yes)",
    )

    msk = parser.add_argument_group("NiftiMasker parameters")
    _add(msk, "--smoothing-fwhm", type=_positive(float), metavar="MM", help="smoothing FWHM")
    _add(
        msk,
        "--standardize",
        default="none",
        choices=["none", "zscore_sample", "zscore", "psc"],
        help="signal standardization",
    )
    _add(
        msk,
        "--standardize-confounds",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="standardize confounds before regression",
    )
    _add(
        msk,
        "--detrend",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="remove linear trends",
    )
    _add(
        msk,
        "--high-variance-confounds",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="add high-variance confounds",
    )
    _add(msk, "--low-pass", type=_positive(float), metavar="HZ", help="low-pass cut-off")
    _add(msk, "--high-pass", type=_positive(float), metavar="HZ", help="high-pass cut-off")
    _add(
        msk,
        "--t-r",
        type=_positive(float),
        metavar="S",
        help="repetition time (default: RepetitionTime of the sidecar)",
    )
    _add(
        msk,
        "--target-resolution",
        type=_positive(float),
        metavar="MM",
        help="resample to isotropic voxels of this size (outputs named res-<size>mm)",
    )
    _add(
        msk,
        "--target-affine",
        type=_affine,
        metavar="JSON",
        help="resampling affine, 3x3 or 4x4 nested list (overrides --target-resolution)",
    )
    _add(
        msk,
        "--target-shape",
        type=int,
        nargs=3,
        metavar="N",
        help="resampling grid shape (needs a 4x4 --target-affine)",
    )
    _add(
        msk,
        "--mask-strategy",
        default="background",
        choices=["background", "epi", "whole-brain-template", "gm-template", "wm-template"],
        help="mask computation when no mask is given or found",
    )
    _add(
        msk,
        "--mask-args",
        type=_json_object,
        metavar="JSON",
        help="options of the --mask-strategy function (ignored for runs using fMRIPrep's mask)",
    )
    _add(msk, "--mask-img", type=Path, metavar="FILE", help="one mask for every run")
    _add(
        msk,
        "--use-input-mask",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use fMRIPrep's desc-brain_mask when present",
    )
    _add(msk, "--dtype", choices=["auto", "float32", "float64"], help="data type of the data")
    _add(
        msk,
        "--clean-args",
        type=_json_object,
        metavar="JSON",
        help="extra signal.clean options, e.g. '{\"butterworth__order\": 3}'",
    )

    out = parser.add_argument_group("Outputs")
    _add(
        out,
        "--output-desc",
        default="denoised",
        metavar="LABEL",
        help="desc- label of the outputs (letters and digits only)",
    )
    _add(out, "--save-signals", action="store_true", help="also write the signals .npy")
    _add(
        out,
        "--reports",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write HTML reports",
    )

    perf = parser.add_argument_group("Performance")
    _add(
        perf,
        "-w",
        "--work-dir",
        type=Path,
        default=Path("work"),
        help="working directory (Pydra cache: re-running resumes from it)",
    )
    _add(
        perf,
        "--nprocs",
        "--n-cpus",
        type=_positive(int),
        metavar="N",
        help="processes for Pydra's cf worker (default 1: in-process)",
    )

    try:
        from .slurm import add_slurm_arguments
    except ImportError as exc:  # the SLURM helper module is optional at import time
        parser.set_defaults(slurm=False, _slurm_import_error=str(exc))
    else:
        add_slurm_arguments(parser)
    return parser


def load_config_file(path) -> dict:
    """Read a TOML or JSON config file into ``{dest: value}``.

    Keys may use hyphens or underscores, and may be grouped in tables/objects (flattened).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The content cannot be parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config-file '{path}' does not exist.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            content = tomllib.loads(text)
        else:
            content = json.loads(text)
    except Exception as exc:
        raise ValueError(f"--config-file '{path}' cannot be parsed: {exc}") from exc
    if not isinstance(content, dict):
        raise ValueError(f"--config-file '{path}' must hold a table/object.")
    flat = {}

    def walk(mapping):
        for key, value in mapping.items():
            if isinstance(value, dict) and key not in (
                "mask_args",
                "clean_args",
                "mask-args",
                "clean-args",
            ):
                walk(value)
            else:
                flat[key.replace("-", "_")] = value

    walk(content)
    return flat
