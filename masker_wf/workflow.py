"""The masker as a Pydra workflow: every step a cached, typed, file-based task.

:class:`MaskerWorkflow` composes the tasks of :mod:`masker_wf.tasks`, one node per
step of ``NiftiMasker.fit`` + ``transform`` + ``inverse_transform``::

    bold_file ──> [compute_mask] ─────────────┐ mask (no mask_file given)
    mask_file ──> [resample_mask] ────────────┤      (mask_file and a target grid)
    bold_file ──> [resample_bold] ──> [smooth] ──> clean_signals ──> signals_file
    bold_file ──> [high_variance_confounds] ──┘           └──> unmask ──> cleaned_bold_file

Nodes in brackets exist only when the parameters ask for them: no mask computation
for a given mask, no mask resampling without a target grid; ``resample_bold`` when the
BOLD is not on the mask's grid (a target grid it is not on, or a given mask on
another grid: decided on the headers when the graph is built), ``smooth`` with
``smoothing_fwhm``, ``high_variance_confounds`` when asked (from the raw BOLD, as
nilearn computes them). The order and the numbers are ``NiftiMasker.transform``'s:
the dtype conversion in the first BOLD node, resampling onto the mask's bounding box
(padded by one voxel) when the grids differ, smoothing, masking, cleaning.

The BOLD intermediates are small: ``resample_bold`` writes the window of the mask's grid
that nilearn resamples onto (the mask's bounding box padded by one voxel), uncompressed,
in the data's dtype (float32 for float32 BOLD); ``smooth``
(:class:`~masker_wf.tasks.SmoothSignals`) writes the smoothed time series of the mask's
voxels only (``.npy``, ``n_volumes x n_voxels``), computed from the mask's bounding box
padded by the kernel radius, with the values smoothing the whole field of view gives;
``clean_signals`` memory-maps either (``bold_window=True`` for a window,
``extracted_file`` for signals). The first node reading a ``.nii.gz`` streams it
(decompression overlapping smoothing). Each step hashes what it writes as it writes it,
or identifies it by what it is computed from (the smoothed signals: the package version,
the digests of the BOLD and the mask, the FWHM and dtype), and leaves the digest beside
the file (:func:`masker_wf._io.record_digest`), so that with the segmented hash
(``segmented_hash=True``) Pydra identifies an intermediate without reading it, with
either worker. The high-variance confounds node reads the raw BOLD whole, a second read
of it.

``smooth_as_task`` is accepted for compatibility and changes nothing: smoothing is
always a node of its own now, with every parameter (target grids and high-variance
confounds included).

Caching: each node's cache key is the hash of its inputs, file *contents*
included, so changing a cleaning parameter or the confounds (``low_pass``, another
denoising strategy...) re-runs ``CleanSignals`` and ``Unmask`` only: the mask, the
resampled BOLD and the smoothed signals come from the cache (the ``.nii.gz`` is not read
again). Pydra memoises file hashes in its hash cache keyed on path and mtime;
:func:`run_masker_workflow` keeps it in ``<cache_root>/hashes`` (or ``hash_cache``)
so that re-runs do not re-read the BOLD, and ``segmented_hash=True`` opts in to the
faster file hash of :func:`masker_wf.tasks.use_segmented_hash`.

Errors: a failing node's exception reaches the caller of
:func:`run_masker_workflow` as the object the step raised (class, message,
``step`` and ``file``), with both workers; see :mod:`masker_wf._steps`.

Disk use: the cache root holds, per run, the mask, the resampled BOLD window (with a
target grid or a mask on another grid), the smoothed signals and the cleaned signals
(``n_volumes * n_voxels * 4`` bytes each for float32) and the cleaned BOLD
(uncompressed, ``n_kept_volumes`` volumes of the mask's grid, float32). The workflow's
own ``workflow-*`` directory hard-links the outputs, so they are not stored twice. For
the realistic benchmark run (97 x 115 x 97 voxels, 300 volumes, 270 kept, 235 398 mask
voxels) that is 1.7 GB per run: 0.28 GB of smoothed signals, 0.25 GB of cleaned signals,
1.17 GB of cleaned BOLD. :class:`MaskerSignalsWorkflow` (what the BIDS App runs, writing
the cleaned BOLD straight to its derivative) keeps the smoothed and the cleaned signals:
0.53 GB. Each new parameter set adds its own outputs; remove ``cache_root`` (or old
``python-*``/``workflow-*`` directories in it, the ``hashes`` directory is small) to
reclaim the space.

Example::

    from masker_wf.workflow import run_masker_workflow

    outputs = run_masker_workflow(
        "sub-01_task-rest_bold.nii.gz",
        cache_root="work/pydra",
        mask_file="sub-01_desc-brain_mask.nii.gz",
        confounds_file="sub-01_desc-confounds_timeseries.tsv",
        smoothing_fwhm=6.0,
        detrend=True,
        standardize="zscore_sample",
        low_pass=0.08,
        high_pass=0.01,
        t_r=2.0,
    )
    signals = numpy.load(outputs["signals_file"])  # (n_volumes, n_voxels) float32

or, with Pydra's own API::

    from pydra.engine.submitter import Submitter
    from masker_wf.workflow import MaskerWorkflow

    task = MaskerWorkflow(bold_file="bold.nii.gz", smoothing_fwhm=6.0, t_r=2.0)
    with Submitter(cache_root="work/pydra", worker="cf") as submitter:
        result = submitter(task)
    print(result.outputs.signals_file, result.outputs.cleaned_bold_file)
"""

import contextlib
import functools
import inspect
import os
import typing as ty
from pathlib import Path

import numpy as np
from pydra.compose import workflow

from . import _spec, _validation
from ._io import carry_digests, record_digest
from ._steps import load_error, on_masking_grid
from .tasks import (
    MASK_STRATEGY_VALUES,
    CleanSignals,
    ComputeMask,
    HighVarianceConfounds,
    NiftiImage,
    QCData,
    Resample,
    Signals,
    SmoothSignals,
    TextTable,
    Unmask,
    use_segmented_hash,
)

__all__ = ["MaskerSignalsWorkflow", "MaskerWorkflow", "run_masker_workflow"]


@_spec.fill_doc
def _masker_workflow(
    bold_file: NiftiImage,
    mask_file: NiftiImage | None = None,
    confounds_file: TextTable | None = None,
    sample_mask: list[int] | list[float] | TextTable | None = None,
    runs: list[int] | None = None,
    smoothing_fwhm: float | list[float] | str | None = None,
    standardize: bool | str | None = False,
    standardize_confounds: bool = True,
    detrend: bool = False,
    high_variance_confounds: bool = False,
    low_pass: float | None = None,
    high_pass: float | None = None,
    t_r: float | None = None,
    target_affine: list[list[float]] | None = None,
    target_shape: list[int] | None = None,
    mask_strategy: str = "background",
    mask_args: dict | None = None,
    dtype: str | None = None,
    clean_args: dict | None = None,
    out_suffix: str = ".nii",
    smooth_as_task: bool = False,
) -> tuple[NiftiImage, Signals, NiftiImage, QCData]:
    """NiftiMasker fit + transform + inverse_transform as a Pydra workflow.

    Parameters
    ----------
    bold_file : NIfTI
        4D BOLD image (``.nii`` or ``.nii.gz``).
    mask_file : NIfTI, optional
        Brain mask (NiftiMasker's ``mask_img``); computed with ``mask_strategy``
        when not given.
    confounds_file : File, optional
        Confounds table (.tsv/.csv with a header, or .npy).
    sample_mask : list of int or File, optional
        Indices of the volumes kept (scrubbing), or a file holding them.
    %(parameters:workflow)s
    out_suffix : str
        ".nii" (default, fastest) or ".nii.gz" for the image outputs.
    smooth_as_task : bool
        Accepted for compatibility; no effect: with ``smoothing_fwhm``, smoothing is
        always the ``smooth`` node (the mask voxels' smoothed time series).

    Returns
    -------
    mask_file : NIfTI
        The mask the signals were extracted with.
    signals_file : Signals
        ``.npy`` array (n_kept_volumes, n_voxels).
    cleaned_bold_file : NIfTI
        The cleaned signals back in brain space (4D).
    qc_file : QCData
        Report data gathered while cleaning (see :func:`masker_wf._io.save_qc`).
    """
    mask, clean = _masker_nodes(locals())
    cleaned = workflow.add(
        # The cleaned BOLD states the run's header codes, units and repetition time.
        Unmask(
            signals_file=clean.signals_file,
            mask_file=mask,
            out_suffix=out_suffix,
            reference_file=bold_file,
            t_r=t_r,
        ),
        name="unmask",
    ).out_file
    return mask, clean.signals_file, cleaned, clean.qc_file


def _masker_nodes(given: dict):
    """Add the nodes of a masker workflow up to ``CleanSignals``; ``(mask, clean)``.

    ``given`` holds the workflow's inputs by name. The nodes the parameters switch off
    are left out (a given mask is used as it is, a BOLD on the mask's grid is not
    resampled, no smoothing node without ``smoothing_fwhm``...).
    """
    # The parameters each task takes are the spec's: forwarded by name from here, after
    # the door check every face makes (here, when the graph is built, before any node runs).
    _validation.check_parameters(_spec.pick(given, "workflow"))
    mask_file, bold_file, out_suffix = given["mask_file"], given["bold_file"], given["out_suffix"]
    target_affine, target_shape = given["target_affine"], given["target_shape"]
    smoothing_fwhm, dtype = given["smoothing_fwhm"], given["dtype"]
    resampling = target_affine is not None or target_shape is not None

    if mask_file is None:
        mask = workflow.add(
            ComputeMask(
                bold_files=[bold_file], out_suffix=out_suffix, **_spec.pick(given, "ComputeMask")
            ),
            name="compute_mask",
        ).mask_file
    elif resampling:
        mask = workflow.add(
            Resample(
                in_file=mask_file,
                target_affine=target_affine,
                target_shape=target_shape,
                interpolation="nearest",
                out_suffix=out_suffix,
            ),
            name="resample_mask",
        ).out_file
    else:
        mask = mask_file

    # The BOLD goes through the steps of NiftiMasker.transform, each a node writing a
    # cropped window of the mask's grid (the dtype conversion made by the first of them).
    # High-variance confounds come from the raw BOLD, as nilearn takes them.
    bold, window = bold_file, False
    if _bold_needs_resampling(bold_file, mask_file, target_affine, target_shape):
        bold = workflow.add(
            Resample(
                in_file=bold,
                mask_file=mask,
                target_affine=target_affine,
                target_shape=target_shape,
                dtype=dtype,
            ),
            name="resample_bold",
        ).out_file
        window, dtype = True, None
    mean_planes = extracted = None
    if smoothing_fwhm is not None:
        # The smoothed BOLD leaves the node as its mask voxels' time series: less than
        # half the bytes of the smoothed window, and no second masking pass in cleaning.
        smooth = workflow.add(
            SmoothSignals(in_file=bold, mask_file=mask, fwhm=smoothing_fwhm, dtype=dtype),
            name="smooth",
        )
        # The report shows the unsmoothed mean image: gathered by the node that sees it.
        extracted, mean_planes = smooth.signals_file, smooth.planes_file
        bold, window, dtype = bold_file, False, None
    hv_confounds = None
    if given["high_variance_confounds"]:
        hv_confounds = workflow.add(
            HighVarianceConfounds(bold_file=bold_file), name="high_variance_confounds"
        ).confounds_file

    cleaning = _spec.pick(given, "CleanSignals")
    if window or extracted is not None:
        # Done upstream: on the mask's grid, smoothed, converted (extracted, when smoothed).
        cleaning.update(smoothing_fwhm=None, target_affine=None, target_shape=None, dtype=dtype)
    if hv_confounds is not None:
        cleaning["high_variance_confounds"] = False
    clean = workflow.add(
        CleanSignals(
            bold_file=bold,
            mask_file=mask,
            confounds_file=given["confounds_file"],
            sample_mask=given["sample_mask"],
            hv_confounds_file=hv_confounds,
            bold_window=window,
            mean_planes_file=mean_planes,
            extracted_file=extracted,
            **cleaning,
        ),
        name="clean_signals",
    )
    return mask, clean


def _bold_needs_resampling(bold_file, mask_file, target_affine, target_shape) -> bool:
    """Whether the BOLD must be resampled before it is masked: a ``resample_bold`` node.

    Decided on the headers when the graph is built: a target grid the BOLD is not on, or
    a given mask on another grid. When they cannot be read then (inputs of an enclosing
    workflow), the node is added; on the mask's grid already, it then writes the image
    as it is.
    """
    import nibabel as nib

    try:
        bold_img = nib.load(os.fspath(bold_file))
        mask_img = None if mask_file is None else nib.load(os.fspath(mask_file))
    except (TypeError, OSError, ValueError, nib.filebasedimages.ImageFileError):
        return True
    # With a target grid the mask is put on it: only the target counts.
    targeted = target_affine is not None or target_shape is not None
    return not on_masking_grid(
        bold_img, None if targeted else mask_img, target_affine, target_shape
    )


# Defined from a module-level function so that worker processes import it by
# reference (see masker_wf.tasks): a stable hash keeps the cache hits.
MaskerWorkflow = workflow.define(
    _masker_workflow,
    # Not standardize: see CleanSignals in masker_wf.tasks.
    inputs={"mask_strategy": workflow.arg(allowed_values=MASK_STRATEGY_VALUES)},
    outputs=["mask_file", "signals_file", "cleaned_bold_file", "qc_file"],
    name="MaskerWorkflow",
)


def _masker_signals_workflow(**given) -> tuple[NiftiImage, Signals, QCData]:
    """:class:`MaskerWorkflow` without its last node: the mask, the signals, the QC data.

    For callers that write the cleaned BOLD themselves, once, where it belongs (the BIDS
    App's derivatives: :class:`masker_wf.tasks.Unmask` with ``out_file``): the cache then
    holds what resuming needs (the signals), not a 4D copy of them. Same inputs (names,
    types and defaults), nodes and cache entries as :class:`MaskerWorkflow` otherwise.

    Returns
    -------
    mask_file, signals_file, qc_file
        As :class:`MaskerWorkflow` returns them.
    """
    mask, clean = _masker_nodes(given)
    return mask, clean.signals_file, clean.qc_file


# MaskerWorkflow's inputs, stated once: Pydra reads the signature and the annotations.
_SIGNALS_RETURN = tuple[NiftiImage, Signals, QCData]
_masker_signals_workflow.__signature__ = inspect.signature(_masker_workflow).replace(
    return_annotation=_SIGNALS_RETURN
)
_masker_signals_workflow.__annotations__ = {
    **_masker_workflow.__annotations__,
    "return": _SIGNALS_RETURN,
}

MaskerSignalsWorkflow = workflow.define(
    _masker_signals_workflow,
    inputs={"mask_strategy": workflow.arg(allowed_values=MASK_STRATEGY_VALUES)},
    outputs=["mask_file", "signals_file", "qc_file"],
    name="MaskerSignalsWorkflow",
)


def _as_list(value, name: str):
    """Arrays become nested lists: Pydra fields are typed lists, hashed by value."""
    if value is None or isinstance(value, (str, os.PathLike)):
        return value
    array = np.asarray(value)
    if name == "sample_mask" and array.dtype == bool:
        array = np.flatnonzero(array)
    if array.dtype.kind in "iub":
        return array.astype(int).tolist()
    return array.astype(float).tolist()


def _existing_file(name: str, path) -> Path:
    path = Path(path).absolute()
    if not path.is_file():
        raise ValueError(f"{name}: file not found: '{path}'.")
    return path


# A lock file Pydra's hash cache left empty this long ago has no live owner: filelock
# writes its owner's PID right after creating the file, and recovers a dead owner from it.
_RECORDLESS_LOCK_SECONDS = 60.0


def _sweep_recordless_locks(hash_cache: Path) -> list[Path]:
    """Remove the hash cache's empty ``.lock`` files older than a minute.

    A process killed between creating a lock file and writing its PID leaves an empty
    one, which filelock cannot tell from a live owner: every later hash of that file
    would wait forever.
    """
    import time

    removed = []
    limit = time.time() - _RECORDLESS_LOCK_SECONDS
    for lock in Path(hash_cache).glob("*.lock"):
        try:
            info = lock.stat()
            if info.st_size == 0 and info.st_mtime < limit:
                lock.unlink()
                removed.append(lock)
        except FileNotFoundError:  # released meanwhile
            continue
    return removed


@contextlib.contextmanager
def hash_cache_scope(hash_cache):
    """Point Pydra's file-hash cache at ``hash_cache`` for a block (stale locks swept).

    Pydra reads the location from ``PYDRA_HASH_CACHE`` only: it is set for the block and
    restored after it. Not thread-safe: one block at a time per process.
    """
    hash_cache = Path(hash_cache)
    hash_cache.mkdir(parents=True, exist_ok=True)
    _sweep_recordless_locks(hash_cache)
    with _environment("PYDRA_HASH_CACHE", str(hash_cache)):
        yield hash_cache


@contextlib.contextmanager
def _environment(name: str, value: str):
    """Set an environment variable for the duration of a block, then restore it."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _record_node_dirs(found: list, job, result) -> None:
    """``post_run_task`` hook of the workflow job: its nodes' job directories, in order.

    Called (in this process) when the workflow job ends, failed or not; the execution
    graph then holds every job the workflow created, whichever worker ran them.
    """
    graph = getattr(job, "return_values", {}).get("exec_graph")
    if graph is None:
        return
    for node in graph.sorted_nodes:
        try:
            jobs = list(node.tasks)
        except RuntimeError:  # a node never started (upstream failure)
            continue
        found.extend(Path(node_job.cache_dir) for node_job in jobs)


def _step_error(exc: BaseException, node_dirs: list[Path]) -> BaseException | None:
    """The exception a step raised, behind the one Pydra raised, or None.

    The in-process worker lets the step's own exception through; the process-pool
    worker reports it as text, so it is read back from the file the task left in its
    cache directory (Pydra empties a job's directory before running it, so a file there
    comes from this run).
    """
    if getattr(exc, "step", None) is not None:
        return exc
    for directory in node_dirs:
        error = load_error(directory)
        if error is not None:
            return error
    return None


def _cf_worker(n_procs: int | None):
    """Pydra's process-pool worker whose processes all use the segmented file hash.

    Forked processes inherit it; an initializer also covers the spawn and forkserver
    start methods, whose processes would otherwise hash inputs differently from this
    one (Pydra then refuses the results).
    """
    from concurrent.futures import ProcessPoolExecutor

    from pydra.workers.cf import ConcurrentFuturesWorker

    worker = ConcurrentFuturesWorker(**({"n_procs": n_procs} if n_procs else {}))
    worker.pool.shutdown()  # created without workers, replaced before any job
    worker.pool = ProcessPoolExecutor(worker.n_procs, initializer=use_segmented_hash)
    return worker


def run_masker_workflow(
    bold_file,
    *,
    cache_root,
    worker: str = "debug",
    n_procs: int | None = None,
    hash_cache=None,
    segmented_hash: bool = False,
    cleaned_bold: bool = True,
    **params: ty.Any,
) -> dict[str, Path]:
    """Build and run :class:`MaskerWorkflow`; return its output paths.

    Parameters
    ----------
    bold_file : str or os.PathLike
        4D BOLD image.
    cache_root : str or os.PathLike
        Pydra cache directory (created if needed). Re-running with the same
        inputs and ``cache_root`` is served from this cache.
    worker : {"debug", "cf"}, default="debug"
        Pydra worker: ``"debug"`` runs the tasks one after the other in this
        process, ``"cf"`` in a process pool.
    n_procs : int, optional
        Number of processes of the ``"cf"`` worker.
    hash_cache : str or os.PathLike, optional
        Where Pydra memoises file hashes (by path and modification time), so that each
        input is read once, not at every run; default ``<cache_root>/hashes``.
    segmented_hash : bool, default=False
        Hash file inputs with :func:`masker_wf.tasks.use_segmented_hash` (about 5 times
        faster on a large BOLD). It is process-wide: every later Pydra task of this
        process hashes NIfTI and binary files that way too.
    cleaned_bold : bool, default=True
        Also write the cleaned BOLD (:class:`MaskerWorkflow`); False runs
        :class:`MaskerSignalsWorkflow`, for callers that write it themselves from the
        signals (:class:`masker_wf.tasks.Unmask` with ``out_file``).
    **params
        Inputs of :class:`MaskerWorkflow` (``mask_file``, ``confounds_file``,
        ``sample_mask``, ``smoothing_fwhm``, ``t_r``...). NumPy arrays are accepted
        for ``sample_mask`` (indices or booleans), ``runs``, ``target_affine``
        and ``target_shape``, and NumPy dtypes for ``dtype``.

    Returns
    -------
    dict
        ``mask_file``, ``signals_file``, ``cleaned_bold_file`` (with ``cleaned_bold``)
        and ``qc_file`` (report data, see :func:`masker_wf._io.save_qc`) as
        ``pathlib.Path``.

    Raises
    ------
    ValueError, TypeError
        A bad input or parameter: the exception the step raised (the estimator's class
        and message), with ``step`` and ``file`` attributes, whichever worker ran it.
    masker_wf._steps.StepError
        Any other failure of a step (``step``, ``file``, ``reason``).
    """
    from pydra.engine.hooks import TaskHooks
    from pydra.engine.submitter import Submitter

    cache_root = Path(cache_root).absolute()
    cache_root.mkdir(parents=True, exist_ok=True)
    hash_cache = cache_root / "hashes" if hash_cache is None else Path(hash_cache).absolute()
    hash_cache.mkdir(parents=True, exist_ok=True)

    # Check the files here: Pydra's own message for a missing file is hard to read.
    bold_file = _existing_file("bold_file", bold_file)
    for name in ("mask_file", "confounds_file"):
        if params.get(name) is not None:
            params[name] = _existing_file(name, params[name])
    if isinstance(params.get("sample_mask"), (str, os.PathLike)):
        params["sample_mask"] = _existing_file("sample_mask", params["sample_mask"])
    for name in ("sample_mask", "runs", "target_affine", "target_shape"):
        if name in params:
            params[name] = _as_list(params[name], name)
    if params.get("dtype") not in (None, "auto"):
        params["dtype"] = np.dtype(params["dtype"]).name

    worker_kwargs = {}
    if segmented_hash:
        use_segmented_hash()
        if worker == "cf":
            worker = _cf_worker(n_procs)
    elif worker == "cf" and n_procs:
        worker_kwargs["n_procs"] = n_procs
    node_dirs: list[Path] = []
    hooks = TaskHooks(post_run_task=functools.partial(_record_node_dirs, node_dirs))
    definition = MaskerWorkflow if cleaned_bold else MaskerSignalsWorkflow
    task = definition(bold_file=bold_file, **params)
    # Pydra reads its hash cache location from PYDRA_HASH_CACHE only (every hash
    # computation creates a PersistentCache from it, here and in the cf worker's
    # processes, which inherit the environment): set it for this call only, so that
    # each call keeps its hashes under its own root and the caller's environment is
    # left as it was. Not thread-safe: one call at a time per process.
    try:
        with (
            hash_cache_scope(hash_cache),
            Submitter(cache_root=cache_root, worker=worker, **worker_kwargs) as submitter,
        ):
            result = submitter(task, hooks=hooks, raise_errors=True)
    except Exception as exc:
        error = _step_error(exc, node_dirs)
        if error is None or error is exc:
            raise
        raise error from exc
    if result.errored:
        raise RuntimeError(f"{type(task).__name__} failed; see {result.cache_dir}.")
    outputs = result.outputs
    names = ("mask_file", "signals_file", "cleaned_bold_file", "qc_file")
    found = {name: Path(getattr(outputs, name)) for name in names if hasattr(outputs, name)}
    # Pydra hard-linked the nodes' outputs into the workflow's directory: the digests the
    # steps computed while writing them still hold (nothing is read again to hash them),
    # and are left beside those names too, for the next process served from the cache.
    carry_digests(found.values(), origins=node_dirs)
    for path in found.values():
        with contextlib.suppress(OSError):
            record_digest(path)
    return found
