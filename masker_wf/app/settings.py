"""What one invocation of the App was asked to do, as a frozen value.

:meth:`Settings.from_options` builds it from a plain dict of option values (the command
line merged with the config file, see :func:`masker_wf.cli.parser.parse_options`), checks
the masker parameters with the one validator (:func:`masker_wf._validation.check_parameters`)
and the App's own options, and freezes the result. Nothing reads a global: every function of
the App takes the settings it needs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from .. import _spec
from .._validation import check_parameters
from ..bids import naming

__all__ = [
    "CONFOUND_OPTIONS",
    "Denoising",
    "Execution",
    "Outputs",
    "Selection",
    "Settings",
    "SlurmSettings",
]

#: Options of the confound strategy (nilearn's ``load_confounds`` names).
CONFOUND_OPTIONS = (
    "motion",
    "wm_csf",
    "global_signal",
    "scrub",
    "fd_threshold",
    "std_dvars_threshold",
    "compcor",
    "n_compcor",
    "ica_aroma",
    "demean",
)
#: The masker parameters the App takes (flags and config keys), in spec order.
MASKER_OPTIONS = tuple(p.name for p in _spec.for_face("cli"))
_LABEL = re.compile(r"[A-Za-z0-9]+")


def _frozen(mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


def _tuple(values):
    return None if values is None else tuple(values)


def _path(value):
    return None if value is None else Path(value)


@dataclass(frozen=True)
class Selection:
    """Which data: the dataset, the participants, the entity filters, the pybids index."""

    bids_dir: Path
    participant_label: tuple[str, ...] | None = None
    session_id: tuple[str, ...] | None = None
    task_id: tuple[str, ...] | None = None
    run_id: tuple[str, ...] | None = None
    space: tuple[str, ...] | None = None
    bids_filter_file: Path | None = None
    #: ``name -> path`` of the preprocessed derivatives given with ``--derivatives``.
    derivatives: Mapping[str, Path] = field(default_factory=lambda: _frozen({}))
    bids_database_dir: Path | None = None
    #: Use fMRIPrep's ``desc-brain_mask`` when present.
    use_input_mask: bool = True


@dataclass(frozen=True)
class Denoising:
    """The confound strategy: a nilearn preset, ``auto``, ``none`` or ``custom``."""

    denoise_strategy: str = "auto"
    custom_strategy: Path | None = None
    #: Every ``(strategy, custom file)`` of an invocation that gives several (the first
    #: one is the one above); empty for one. See :meth:`Settings.each_strategy`.
    strategies: tuple = ()
    #: Overrides of the preset (None: the preset's value), see :data:`CONFOUND_OPTIONS`.
    options: Mapping = field(default_factory=lambda: _frozen(dict.fromkeys(CONFOUND_OPTIONS)))
    #: Volumes removed at the start of each run: ``"auto"`` (fMRIPrep's
    #: ``non_steady_state_outlierXX`` columns) or a number.
    dummy_scans: str | int = "auto"
    #: Degrees of freedom left by the cleaning below which a run is flagged (a warning).
    warn_dof: int = 20
    #: ... and below which it is refused (exit code 65 for that run).
    min_dof: int = 1
    #: Seconds of data left after censoring below which a run is refused (0: no minimum).
    min_time: float = 0.0


@dataclass(frozen=True)
class Outputs:
    """What is written besides the cleaned BOLD and mask."""

    desc: str = "denoised"
    save_signals: bool = False
    #: ``--target-resolution`` (mm), already turned into ``target_affine`` in the masker.
    target_resolution: float | None = None
    #: With several strategies, the ``desc`` of each (this one's among them); else empty.
    strategy_descs: tuple = ()

    @property
    def descs(self) -> tuple:
        """Every ``desc`` this invocation writes: its strategies' or its one."""
        return self.strategy_descs or (self.desc,)


@dataclass(frozen=True)
class Execution:
    """Where and how the work runs locally."""

    work_dir: Path = Path("work")
    #: Runs processed at once (``--nprocs``; None: not given).
    nprocs: int | None = None
    #: Threads inside each run (``--omp-nthreads``; None: not given).
    omp_nthreads: int | None = None
    #: Memory the runs in flight may use together, MB (``--mem-mb``; None: not given).
    mem_mb: int | None = None
    verbose: int = 0
    config_file: Path | None = None
    #: Remove a participant's work directory once its outputs are committed.
    clean_workdir: bool = False
    #: Print what would be processed (or submitted) and stop: nothing is written.
    dry_run: bool = False

    def participant_work_dir(self, label: str) -> Path:
        """``<work_dir>/sub-<label>``: a participant's Pydra cache and intermediates.

        One directory per participant, so that array tasks on a shared file system never
        list or lock a directory another participant writes to, and so that a participant
        can be cleaned up alone.
        """
        return self.work_dir / f"sub-{label}"


@dataclass(frozen=True)
class SlurmSettings:
    """The SLURM options (see ``masker-wf --help``, group SLURM)."""

    slurm: bool = False
    sbatch_args: str = ""
    array_throttle: int | None = None
    wait: bool = False
    slurm_worker: str = "array"
    slurm_partition: str | None = None
    #: Participants processed by each array task (None: chosen from the runs' sizes).
    participants_per_task: int | None = None
    #: This process is one task of a job array submitted by ``--slurm``.
    array_task: bool = False

    @classmethod
    def from_options(cls, options: Mapping) -> SlurmSettings:
        """The SLURM part of ``options`` (missing keys take their defaults)."""
        defaults = cls()
        return cls(
            **{
                name: options.get(name, getattr(defaults, name))
                for name in cls.__dataclass_fields__
            }
        )


@dataclass(frozen=True)
class Settings:
    """Everything one invocation decides: data, parameters, outputs, execution.

    Attributes
    ----------
    output_dir : pathlib.Path
        Output dataset root (absolute).
    analysis_level : str
        ``participant`` or ``group``.
    masker : Mapping
        The masker parameters of the command line (exactly the spec's ``cli`` face,
        checked and normalised by the validator); ``t_r`` None means "from each sidecar",
        ``mask_img`` one mask for every run, ``reports`` write HTML reports.
    selection, denoising, outputs, execution, slurm
        The App's own options, by group.
    given : frozenset of str
        Options set on the command line or in the config file (not left at their default).
    options : Mapping
        The option values the settings were built from (recorded in ``logs/``).
    """

    output_dir: Path
    analysis_level: str
    masker: Mapping
    selection: Selection
    denoising: Denoising = Denoising()
    outputs: Outputs = Outputs()
    execution: Execution = Execution()
    slurm: SlurmSettings = SlurmSettings()
    given: frozenset = frozenset()
    options: Mapping = field(default_factory=lambda: _frozen({}))

    @property
    def reports(self) -> bool:
        """Write the HTML reports."""
        return bool(self.masker["reports"])

    @property
    def mask_img(self) -> Path | None:
        """One mask for every run (``--mask-img``), or None."""
        return self.masker["mask_img"]

    @classmethod
    def from_options(cls, options: Mapping) -> Settings:
        """Build and check the settings from ``dest -> value`` option values.

        Parameters
        ----------
        options : mapping
            Every option of the App by its dest (``smoothing_fwhm``, ``participant_label``,
            ``work_dir``...), plus the positionals ``bids_dir``, ``output_dir`` and
            ``analysis_level``, and optionally ``_given`` (the dests set explicitly).

        Raises
        ------
        ValueError, TypeError
            A masker parameter refused by the validator, or an invalid App option; the
            message names it.
        """
        masker = check_parameters(_masker_parameters(options), t_r_from_data=True)
        desc = options["output_desc"]
        if not _LABEL.fullmatch(str(desc or "")):
            raise ValueError(
                f"--output-desc {desc!r} is not a valid BIDS label: use letters and "
                "digits only (e.g. 'denoised', 'smooth6mm')."
            )
        if options.get("min_dof", 1) > options.get("warn_dof", 20):
            raise ValueError(
                f"--min-dof {options['min_dof']} is above --warn-dof {options['warn_dof']}: "
                "runs are refused below --min-dof and flagged below --warn-dof."
            )
        strategies = _strategies(options["denoise_strategy"], options["custom_strategy"])
        strategy, custom_strategy = strategies[0]
        return cls(
            output_dir=Path(options["output_dir"]).absolute(),
            analysis_level=options["analysis_level"],
            masker=_frozen(masker),
            selection=Selection(
                bids_dir=Path(options["bids_dir"]).absolute(),
                participant_label=_tuple(options["participant_label"]),
                session_id=_tuple(options["session_id"]),
                task_id=_tuple(options["task_id"]),
                run_id=_tuple(options["run_id"]),
                space=_tuple(options["space"]),
                bids_filter_file=_path(options["bids_filter_file"]),
                derivatives=_frozen(
                    {name: Path(path) for name, path in options["derivatives"] or []}
                ),
                bids_database_dir=_path(options["bids_database_dir"]),
                use_input_mask=options["use_input_mask"],
            ),
            denoising=Denoising(
                denoise_strategy=strategy,
                custom_strategy=custom_strategy,
                strategies=strategies if len(strategies) > 1 else (),
                options=_frozen({name: options[name] for name in CONFOUND_OPTIONS}),
                **{
                    name: options[name]
                    for name in ("dummy_scans", "warn_dof", "min_dof", "min_time")
                    if name in options
                },
            ),
            outputs=Outputs(
                desc=desc,
                save_signals=options["save_signals"],
                target_resolution=options["target_resolution"],
            ),
            execution=Execution(
                work_dir=Path(options["work_dir"]).absolute(),
                nprocs=options["nprocs"],
                omp_nthreads=options.get("omp_nthreads"),
                mem_mb=options.get("mem_mb"),
                verbose=options["verbose"],
                config_file=_path(options["config_file"]),
                clean_workdir=bool(options.get("clean_workdir", False)),
                dry_run=bool(options.get("dry_run", False)),
            ),
            slurm=SlurmSettings.from_options(options),
            given=frozenset(options.get("_given", ())),
            options=_frozen({k: v for k, v in options.items() if not k.startswith("_")}),
        )

    def each_strategy(self) -> list[Settings]:
        """One settings per confound strategy of the invocation, each with its ``desc``.

        With several strategies (``--denoise-strategy simple compcor``, or several
        ``--custom-strategy`` files), the outputs of each are labelled
        :func:`masker_wf.bids.naming.strategy_desc`; with one, these settings.
        """
        if not self.denoising.strategies:
            return [self]
        descs = tuple(
            naming.strategy_desc(self.outputs.desc, strategy, file)
            for strategy, file in self.denoising.strategies
        )
        return [
            replace(
                self,
                denoising=replace(self.denoising, denoise_strategy=strategy, custom_strategy=file),
                outputs=replace(self.outputs, desc=desc, strategy_descs=descs),
            )
            for (strategy, file), desc in zip(self.denoising.strategies, descs, strict=True)
        ]

    def for_participant(self, label: str) -> Settings:
        """These settings with the work directory of participant ``label``."""
        execution = replace(self.execution, work_dir=self.execution.participant_work_dir(label))
        return replace(self, execution=execution)

    def workflow_parameters(self) -> dict:
        """The masker parameters the Pydra workflow takes, unset ones left out."""
        names = {p.name for p in _spec.for_face("workflow")}
        return {k: v for k, v in self.masker.items() if k in names and v is not None}


def _strategies(presets, custom_files) -> tuple:
    """``(strategy, custom file)`` of each strategy asked for, in order.

    Presets named with strategy files are cleaned too, the presets first; the default
    preset (``auto``, the bare string argparse and the settings default to) gives way to
    the files. Several strategies are cleaned one after the other, so that their desc
    labels must differ.
    """
    if custom_files is not None:
        files = [custom_files] if isinstance(custom_files, (str, Path)) else custom_files
        named = (
            []
            if presets in (None, "auto")
            else [presets]
            if isinstance(presets, str)
            else list(presets)
        )
        if "auto" in named:
            raise ValueError(
                "--denoise-strategy auto cannot be combined with --custom-strategy: name the "
                "presets to clean with besides the files."
            )
        strategies = (*((preset, None) for preset in named), *(("custom", Path(f)) for f in files))
    else:
        if presets is None:  # not given: the default
            presets = "auto"
        presets = [presets] if isinstance(presets, str) else list(presets)
        if len(presets) > 1 and "auto" in presets:
            raise ValueError(
                "--denoise-strategy auto cannot be combined with other strategies: name them."
            )
        strategies = tuple((preset, None) for preset in presets)
    if len(strategies) == 1:
        return strategies  # one strategy keeps the desc as given: its label is not used
    labels = [naming.strategy_desc("", *strategy) for strategy in strategies]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(
            f"several strategies would write outputs labelled {repeated}: give each once "
            "(strategy files need names that differ in their letters and digits)."
        )
    return strategies


def _masker_parameters(options: Mapping) -> dict:
    """The spec's cli-face parameters from ``options``; ``--target-resolution`` as an affine."""
    masker = {name: options[name] for name in MASKER_OPTIONS}
    resolution = options.get("target_resolution")
    if masker["target_affine"] is None and resolution is not None:
        masker["target_affine"] = [
            [float(resolution) if i == j else 0.0 for j in range(3)] for i in range(3)
        ]
    if masker["target_shape"] is not None:
        masker["target_shape"] = list(masker["target_shape"])
    return masker
