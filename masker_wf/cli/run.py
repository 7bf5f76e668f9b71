"""Entry point of the BIDS App (console script ``masker-wf``).

Exit codes follow the BIDS execution specification: 0 success, 1 some runs failed,
16 invalid dataset, 17 unknown analysis level, 18 filters matched nothing, 64 usage error,
65 bad data (every run failed on its data, or a malformed input file), 66 missing input
(including every run lacking a required file such as its confounds),
73 cannot create the output.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import sys
from pathlib import Path

__all__ = ["main"]

EXIT_OK, EXIT_FAILED_RUNS = 0, 1
EXIT_INVALID, EXIT_LEVEL, EXIT_NOTHING = 16, 17, 18
EXIT_USAGE, EXIT_DATA, EXIT_NOINPUT, EXIT_CANTCREAT = 64, 65, 66, 73


def _error(message: str, code: int) -> int:
    print(f"masker-wf: error: {message}", file=sys.stderr)
    return code


def _warning(message: str) -> None:
    print(f"masker-wf: warning: {message}", file=sys.stderr, flush=True)


_LABEL = re.compile(r"[A-Za-z0-9]+")
# signal.clean parameters the App sets itself (flags, confounds, sample_mask).
_CLEAN_SET_BY_APP = {
    "signals",
    "runs",
    "detrend",
    "standardize",
    "sample_mask",
    "confounds",
    "standardize_confounds",
    "low_pass",
    "high_pass",
    "t_r",
    "kwargs",
}
# mask function parameters that are not options (the image, caching, logging, template kind).
_MASK_NOT_OPTIONS = {"memory", "verbose", "mask_type", "kwargs"}


def _allowed_clean_args() -> list[str]:
    import inspect

    from .. import signal

    names = [p for p in inspect.signature(signal.clean).parameters if p not in _CLEAN_SET_BY_APP]
    extra = getattr(signal, "BUTTERWORTH_KWARGS", ("order", "padtype", "padlen"))
    return sorted([*names, *(f"butterworth__{k}" for k in extra)])


def _allowed_mask_args(strategy: str) -> list[str]:
    import inspect

    from .. import masking

    function = {
        "background": masking.compute_background_mask,
        "epi": masking.compute_epi_mask,
    }.get(strategy, masking.compute_brain_mask)  # the *-template strategies
    parameters = list(inspect.signature(function).parameters)[1:]  # [0] is the image
    return [p for p in parameters if p not in _MASK_NOT_OPTIONS]


def _check_options(args) -> str | None:
    """Usage errors the parser cannot see; the message, or None when all is well."""
    if not _LABEL.fullmatch(str(args.output_desc or "")):
        return (
            f"--output-desc {args.output_desc!r} is not a valid BIDS label: use letters and "
            "digits only (e.g. 'denoised', 'smooth6mm')."
        )
    low, high = args.low_pass, args.high_pass
    if low is not None and high is not None and high >= low:
        return (
            f"--high-pass {high} Hz must be lower than --low-pass {low} Hz "
            "(band-pass keeps the frequencies between them)."
        )
    if args.clean_args:
        allowed = _allowed_clean_args()
        unknown = sorted(set(args.clean_args) - set(allowed))
        if unknown:
            return f"--clean-args: unknown keys {unknown}; allowed: {allowed}."
    if args.mask_args:
        allowed = _allowed_mask_args(args.mask_strategy)
        unknown = sorted(set(args.mask_args) - set(allowed))
        if unknown:
            return (
                f"--mask-args: unknown keys {unknown} for --mask-strategy "
                f"{args.mask_strategy}; allowed: {allowed}."
            )
    return None


def _parse(argv):
    """Parse with config-file defaults; return (args, exit code or None)."""
    from .parser import build_parser, load_config_file

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for usage errors
        return None, EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    if args.config_file is not None:
        try:
            config = load_config_file(args.config_file)
        except FileNotFoundError as exc:
            return None, _error(str(exc), EXIT_NOINPUT)
        except ValueError as exc:
            return None, _error(str(exc), EXIT_DATA)
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(config) - known)
        if unknown:
            return None, _error(f"--config-file: unknown options {unknown}", EXIT_USAGE)
        positional = {"bids_dir", "output_dir", "analysis_level"}
        parser.set_defaults(**{k: v for k, v in config.items() if k not in positional})
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return None, EXIT_OK if exc.code in (0, None) else EXIT_USAGE
        for key in (
            "work_dir",
            "bids_filter_file",
            "custom_strategy",
            "mask_img",
            "bids_database_dir",
        ):
            if isinstance(getattr(args, key, None), str):
                setattr(args, key, Path(getattr(args, key)))
    return args, None


def _log_config(args, out_dir: Path) -> None:
    from ..bids.derivatives import write_json

    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
    labels = "-".join(args.participant_label or ["all"])[:60]
    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    write_json(out_dir / "logs" / f"masker-wf_{stamp}_{labels}_{os.getpid()}.json", config)


def main(argv=None) -> int:
    """Run the BIDS App; return the exit code (see the module docstring)."""
    from ..bids.app import environment_setup

    environment_setup()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, code = _parse(argv)
    if args is None:
        return code
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.analysis_level not in ("participant", "group"):
        return _error(
            f"unknown analysis level {args.analysis_level!r}; use 'participant' or 'group'.",
            EXIT_LEVEL,
        )
    out_dir = Path(args.output_dir).absolute()
    if args.analysis_level == "group":
        return _group(args, out_dir)
    return _participant(args, argv, out_dir)


def _group(args, out_dir: Path) -> int:
    from ..bids.app import run_group
    from ..bids.layout import strip_sub

    bids_dir = Path(args.bids_dir).absolute()
    if not bids_dir.is_dir():
        return _error(f"BIDS directory '{bids_dir}' does not exist.", EXIT_NOINPUT)
    if not out_dir.is_dir():
        return _error(
            f"output directory '{out_dir}' does not exist; run 'participant' first.", EXIT_NOINPUT
        )
    participants = [strip_sub(label) for label in args.participant_label or []] or None
    try:
        tsv, index, n_runs = run_group(out_dir, participants=participants)
    except FileNotFoundError as exc:
        return _error(str(exc), EXIT_NOINPUT)
    except OSError as exc:
        return _error(f"cannot write the group outputs in '{out_dir}': {exc}", EXIT_CANTCREAT)
    print(f"group summary of {n_runs} runs: {tsv}\nindex page: {index}")
    return EXIT_OK


def _participant(args, argv, out_dir: Path) -> int:
    from ..bids import derivatives as deriv
    from ..bids.app import process_run, settings_from_args, write_subject_report
    from ..bids.layout import (
        BIDSInputError,
        build_layout,
        collect_participants,
        collect_runs,
        dataset_kind,
        load_filter_file,
    )

    bids_dir = Path(args.bids_dir).absolute()
    derivatives = dict(args.derivatives or [])
    args.derivatives = derivatives
    problem = _check_options(args)
    if problem:
        return _error(problem, EXIT_USAGE)
    for path in (args.custom_strategy, args.mask_img, args.config_file):
        if path is not None and not Path(path).is_file():
            return _error(f"input file '{path}' does not exist.", EXIT_NOINPUT)
    try:
        kind = dataset_kind(bids_dir)
        for name, path in derivatives.items():
            if not Path(path).is_dir():
                raise BIDSInputError(f"--derivatives {name}: '{path}' does not exist.", 66)
            dataset_kind(path)
        filters = load_filter_file(args.bids_filter_file) if args.bids_filter_file else None
        participants = collect_participants(
            args,
            on_missing=lambda labels: _warning(
                f"participant(s) {', '.join(labels)} not found in the dataset; skipped."
            ),
        )
    except BIDSInputError as exc:
        return _error(str(exc), exc.exit_code)
    if args.custom_strategy is not None:
        from ..bids.confounds import load_strategy_file

        try:
            load_strategy_file(args.custom_strategy)
        except ValueError as exc:
            return _error(str(exc), EXIT_DATA)

    derivatives_mode = kind == "derivative" or bool(derivatives)
    links = {}
    if kind == "derivative":
        links["preprocessed"] = bids_dir
    else:
        links["raw"] = bids_dir
    for name, path in derivatives.items():
        links[name] = Path(path).absolute()
    sources = []
    for path in links.values():
        try:
            description = json.loads((Path(path) / "dataset_description.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        # Only the processing chain goes into GeneratedBy (fMRIPrep's entry, not the raw's).
        if description.get("DatasetType") == "derivative":
            sources.append(description)
    try:
        settings = settings_from_args(args, links)
        settings.confound_parameters(True)  # validate the strategy options once, up front
    except ValueError as exc:
        return _error(str(exc), EXIT_USAGE)
    work_dir = Path(args.work_dir).absolute()
    try:
        # The work directory first: a bad -w must not leave an empty output directory.
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "it is a file" if work_dir.is_file() else exc
        return _error(f"cannot create the work directory '{work_dir}': {reason}", EXIT_CANTCREAT)
    try:
        if out_dir.resolve() == bids_dir.resolve():
            raise OSError("the output directory must differ from the input dataset")
        out_dir.mkdir(parents=True, exist_ok=True)
        # Array tasks leave the dataset-level files to the submitting process (written once).
        if not os.environ.get("MASKER_WF_ARRAY_TASK"):
            deriv.write_dataset_description(
                out_dir, dataset_links=links, source_descriptions=sources
            )
            deriv.write_bidsignore(out_dir)
        _log_config(args, out_dir)
    except (OSError, ValueError) as exc:
        return _error(f"cannot create the output in '{out_dir}': {exc}", EXIT_CANTCREAT)

    if args.slurm:
        try:
            from .slurm import run_slurm
        except ImportError as exc:
            return _error(
                f"--slurm needs masker_wf.cli.slurm, which failed to import: {exc}", EXIT_USAGE
            )
        return run_slurm(args, participants, argv)

    print(
        f"masker-wf: indexing {bids_dir} for participant(s) {', '.join(participants)}",
        file=sys.stderr,
    )
    try:
        layout = build_layout(
            bids_dir,
            derivatives=derivatives,
            participants=participants,
            database_dir=args.bids_database_dir,
            raw_kind=kind,
        )
        runs = collect_runs(
            layout,
            participants,
            derivatives_mode=derivatives_mode,
            space=args.space,
            session=args.session_id,
            task=args.task_id,
            run=args.run_id,
            bids_filters=filters,
            aroma=args.denoise_strategy == "ica_aroma" and (args.ica_aroma or "full") == "full",
        )
    except BIDSInputError as exc:
        return _error(str(exc), exc.exit_code)
    found = sorted({run.subject for run in runs})
    without_bold = [label for label in participants if label not in found]
    if without_bold:
        _warning(
            f"no preprocessed BOLD run matches the selection for participant(s) "
            f"{', '.join(without_bold)}; skipped."
        )
    strategy = settings.resolve_auto(runs)
    if settings.auto_resolved:
        print(
            f"masker-wf: --denoise-strategy auto: '{strategy}' for the selected runs "
            f"({'fMRIPrep confounds found' if strategy != 'none' else 'no confounds file'})",
            file=sys.stderr,
        )
    _warn_ignored_mask_options(args, argv, runs, settings)
    print(
        f"masker-wf: {len(runs)} run(s) of {len(found)} participant(s) to process",
        file=sys.stderr,
    )

    results = [
        process_run(run, settings, out_dir, work_dir, index=i, total=len(runs))
        for i, run in enumerate(runs, start=1)
    ]
    if settings.reports:
        for subject in sorted({r.subject for r in runs}):
            try:
                write_subject_report(
                    out_dir, subject, [r for r in results if r.subject == subject], settings
                )
            except Exception as exc:  # a report must not hide the processing result
                print(f"masker-wf: subject report of sub-{subject} failed: {exc}", file=sys.stderr)
    failed = [r for r in results if not r.ok]
    # One failure log per subject, removed once the subject succeeds, so logs/ shows what
    # still needs attention.
    for subject in sorted({r.subject for r in results}):
        failure_log = out_dir / "logs" / f"failures_sub-{subject}.json"
        subject_failures = [r for r in failed if r.subject == subject]
        if subject_failures:
            deriv.write_json(
                failure_log,
                [
                    {"run": r.name, "bold": r.bold_file, "reason": r.reason}
                    for r in subject_failures
                ],
            )
        else:
            failure_log.unlink(missing_ok=True)
    print(
        f"\nmasker-wf: {len(results) - len(failed)}/{len(results)} runs succeeded "
        f"(outputs in {out_dir})",
        file=sys.stderr,
    )
    for r in failed:
        print(f"  FAILED {r.name}: {r.reason}", file=sys.stderr)
    if not failed:
        return EXIT_OK
    if len(failed) == len(results) and all(r.kind == "missing" for r in failed):
        return EXIT_NOINPUT
    if len(failed) == len(results) and all(r.kind in ("data", "missing") for r in failed):
        return EXIT_DATA
    return EXIT_FAILED_RUNS


def _warn_ignored_mask_options(args, argv, runs, settings) -> None:
    """--mask-strategy/--mask-args do nothing for runs whose mask is given: say so."""
    flags = {a.split("=", 1)[0] for a in argv}
    options = []
    if args.mask_args:
        options.append("--mask-args")
    if args.mask_strategy != "background" or flags & {"--mask-strategy", "--mask_strategy"}:
        options.append("--mask-strategy")
    if not options:
        return
    if settings.mask_img is not None:
        _warning(f"{'/'.join(options)} ignored: --mask-img gives the mask of every run.")
        return
    given = [r for r in runs if settings.use_input_mask and r.mask_file is not None]
    if given:
        _warning(
            f"{'/'.join(options)} ignored for {len(given)} of {len(runs)} run(s) that use "
            "fMRIPrep's brain mask (pass --no-use-input-mask to compute the mask instead)."
        )


if __name__ == "__main__":
    raise SystemExit(main())
