"""``init_masker_wf``: masker-wf as an fMRIPrep-style nipype sub-workflow."""

from __future__ import annotations

import functools
import warnings

import numpy as np
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from .. import _spec, _steps, _validation
from .._version import __version__
from .interfaces import (
    CleanSignals,
    ComputeMask,
    HighVarianceConfounds,
    Resample,
    Smooth,
    Unmask,
)

__all__ = ["LiterateWorkflow", "estimate_bold_mem_gb", "init_masker_wf", "run_masker_wf"]

INPUT_FIELDS = ["bold_file", "mask_file", "confounds_file", "sample_mask", "t_r"]
OUTPUT_FIELDS = ["mask_file", "signals_file", "cleaned_bold_file", "qc_file"]

try:  # Embedding in a NiPreps pipeline: their visit_desc() only visits LiterateWorkflows.
    from niworkflows.engine.workflows import LiterateWorkflow
except ImportError:  # pragma: no cover - niworkflows is optional

    class LiterateWorkflow(pe.Workflow):
        """A nipype Workflow carrying a methods paragraph (``__desc__``, ``__postdesc__``).

        Same API as niworkflows' ``LiterateWorkflow``, which is used instead when installed
        so that NiPreps' boilerplate generation picks this workflow up.
        """

        def __init__(self, name, base_dir=None):
            super().__init__(name, base_dir)
            self.__desc__ = None
            self.__postdesc__ = None

        def visit_desc(self):
            """Gather the methods paragraphs of this workflow and its sub-workflows."""
            desc = [self.__desc__] if self.__desc__ else []
            for node in pe.utils.topological_sort(self._graph)[0]:
                if isinstance(node, LiterateWorkflow):
                    sub = node.visit_desc()
                    if sub and sub not in desc:
                        desc.append(sub)
            if self.__postdesc__:
                desc.append(self.__postdesc__)
            return "".join(desc)


def estimate_bold_mem_gb(bold_file):
    """Memory (GB) of a BOLD series held as float32, from its header only.

    Parameters
    ----------
    bold_file : str or Path
        A 4D NIfTI file.

    Returns
    -------
    float
        ``n_voxels * n_volumes * 4 / 1024**3``: pass it as ``mem_gb`` to
        :func:`init_masker_wf` (as fMRIPrep does with its ``mem_gb`` estimate).
    """
    import nibabel as nib

    shape = nib.load(bold_file).shape
    return float(np.prod(shape, dtype=np.float64) * 4 / 1024**3)


def _as_list_affine(target_affine):
    if target_affine is None:
        return None
    affine = np.asarray(target_affine, dtype=float)
    if affine.shape not in ((3, 3), (4, 4)):
        raise ValueError(
            f"target_affine must be a 3x3 or 4x4 matrix; got an array of shape {affine.shape}."
        )
    return affine.tolist()


def _as_list_shape(target_shape, target_affine):
    if target_shape is None:
        return None
    shape = [int(v) for v in target_shape]
    if len(shape) != 3:
        raise ValueError(f"target_shape must have 3 values; got {tuple(target_shape)!r}.")
    if target_affine is None:
        raise ValueError("target_shape was given without target_affine; give both.")
    return shape


def _describe(params):
    """The methods paragraph (``__desc__``) naming every step and its parameters."""
    from ..reports.methods import methods_paragraph

    # The graph is built before any input is known: the mask, confounds and sample mask
    # are described as optional inputs.
    sentences = [
        methods_paragraph(params, {"masker-wf": __version__}, inputs_known=False),
        "The steps ran as a nipype workflow, one node each; cleaned signals were saved as a "
        "(volumes x voxels) array and put back into a 4D image.",
    ]
    return " ".join(sentences) + "\n"


def _renamed_smooth_as_node(function):
    """Accept the deprecated ``smooth_as_node`` keyword (now ``smooth_as_task``), warning.

    A wrapper rather than a parameter, so that the signature (``inspect.signature``
    follows ``__wrapped__``) lists the current names only.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if "smooth_as_node" in kwargs:
            value = kwargs.pop("smooth_as_node")
            warnings.warn(
                "init_masker_wf(smooth_as_node=...) is deprecated; use smooth_as_task=... "
                "(the name MaskerWorkflow uses).",
                DeprecationWarning,
                stacklevel=2,
            )
            if kwargs.setdefault("smooth_as_task", value) != value:
                raise TypeError("Give smooth_as_task only, not also smooth_as_node.")
        return function(*args, **kwargs)

    return wrapper


@_renamed_smooth_as_node
@_spec.fill_doc
@_spec.with_face_signature("nipype", after="omp_nthreads")
def init_masker_wf(
    *,
    name="masker_wf",
    mem_gb=1.0,
    omp_nthreads=1,
    smooth_as_task=False,
    out_suffix=".nii",
    **params,
):
    """Build the masker-wf nipype sub-workflow: one node per step of the masker.

    Every parameter is a keyword; nothing is read from a global configuration, so the
    factory can be called from any pipeline and from tests. The masker parameters are those
    of :mod:`masker_wf._spec` (the signature lists them; an unknown keyword is a
    ``TypeError``). ``t_r`` becomes the default value of ``inputnode.t_r``: a value set or
    connected on the inputnode overrides it.

    The nodes, in the order of ``NiftiMasker.fit`` + ``transform`` +
    ``inverse_transform`` (nodes in brackets only when the parameters ask for them)::

        inputnode ─> mask ─> resample_bold ─> [smooth] ─> clean ─> unmask ─> outputnode
                 └─> [high_variance_confounds] ───────────┘

    - ``mask`` computes the mask from the BOLD, or passes the given ``inputnode.mask_file``
      through (resampled nearest-neighbour to ``target_affine``/``target_shape``).
    - ``resample_bold`` puts the BOLD on the grid it is masked on, as ``NiftiMasker``
      does (onto the mask's bounding box, padded by one voxel, when the grids differ;
      continuous interpolation; the ``dtype`` conversion first) and writes that window,
      uncompressed. It is always in the graph: nipype knows the files only when the graph
      runs, and a mask connected by the parent pipeline may be on another grid than the
      BOLD. A BOLD already on the mask's grid (and in the ``dtype``) is handed over
      untouched: no copy, no read of its data, the node costs two header reads.
    - ``smooth`` (with ``smoothing_fwhm``) writes the smoothed time series of the mask's
      voxels (``.npy``; the values of smoothing the whole field of view, computed on the
      mask's bounding box padded by the kernel radius), and the report's mean image of the
      unsmoothed BOLD.
    - ``high_variance_confounds`` (with ``high_variance_confounds=True``) computes them
      from the raw ``inputnode.bold_file``, as nilearn does, for ``clean``.
    - ``clean`` cleans those signals (memory-mapped; without smoothing it masks the window
      ``resample_bold`` hands over); ``unmask`` puts them back into a 4D image.

    Parameters
    ----------
    name : str, default="masker_wf"
        Name of the workflow (must be unique within the parent workflow).
    mem_gb : float, default=1.0
        Memory in GB of one BOLD series held as float32 (see :func:`estimate_bold_mem_gb`).
        ``high_variance_confounds`` requests ``3 * mem_gb`` (it reads the raw BOLD whole),
        ``resample_bold``, ``smooth`` and ``clean`` ``2 * mem_gb`` (an input and an output
        of at most the BOLD's size), ``mask`` and ``unmask`` ``mem_gb``; MultiProc schedules
        with these numbers.
    omp_nthreads : int, default=1
        Processors the mask, smooth and clean nodes reserve from MultiProc. The core smooths
        with up to 2 threads, so 2 reserves what smoothing really uses.
    %(parameters:nipype)s
    smooth_as_task : bool, default=False
        Accepted for compatibility (the name ``MaskerWorkflow`` uses); no effect: with
        ``smoothing_fwhm``, smoothing is always the ``smooth`` node, with every other
        parameter (target grids and high-variance confounds included).
        ``smooth_as_node``, its former name, is deprecated.
    out_suffix : {".nii", ".nii.gz"}, default=".nii"
        Extension of the mask and cleaned BOLD the nodes write. Uncompressed by default:
        gzip costs more than all the processing on full-size BOLD, and these files live in
        the working directory (a DataSink or derivatives writer can compress the final
        outputs). The BOLD window of ``resample_bold`` is always ``.nii`` and the smoothed
        signals ``.npy``, memory-mapped by ``clean``.

    Inputs
    ------
    bold_file
        4D BOLD NIfTI file.
    mask_file
        Brain mask (optional: computed with ``mask_strategy`` when left undefined).
    confounds_file
        Confounds table, TSV/CSV with a header or .npy, one row per volume (optional).
    sample_mask
        Volumes to keep: indices, booleans, or a file of either (optional).
    t_r
        Repetition time in seconds (optional; defaults to the ``t_r`` parameter).

    Outputs
    -------
    mask_file
        The mask used (the given one, resampled if a target grid is set, or the computed one).
    signals_file
        Cleaned signals, (n_kept_volumes, n_voxels) array in .npy.
    cleaned_bold_file
        The cleaned signals as a 4D NIfTI image (``unmask``).
    qc_file
        Report data gathered while cleaning (.npz, see :func:`masker_wf._io.save_qc`).

    Returns
    -------
    LiterateWorkflow
        A nipype workflow whose ``__desc__`` is a methods paragraph naming the steps and
        parameters.

    Raises
    ------
    ValueError
        When a parameter is invalid (checked here, at build time, not when the graph runs).
    TypeError
        An unknown keyword, or a parameter of the wrong type.

    Workflow Graph
        .. workflow::
            :graph2use: orig
            :simple_form: yes

            from masker_wf.nipype import init_masker_wf

            wf = init_masker_wf(smoothing_fwhm=6.0, high_variance_confounds=True)

    Examples
    --------
    >>> from masker_wf.nipype import init_masker_wf
    >>> wf = init_masker_wf(smoothing_fwhm=6.0, detrend=True, low_pass=0.1, t_r=2.0)
    >>> sorted(wf.list_node_names())
    ['clean', 'inputnode', 'mask', 'outputnode', 'resample_bold', 'smooth', 'unmask']
    """
    # The door check every face makes, before any node exists.
    # t_r may arrive on inputnode.t_r when the graph runs: the checks that need it wait.
    params = _spec.bind("nipype", params, "init_masker_wf")
    checked = _validation.check_parameters(params, t_r_from_data=True)
    mask_strategy = checked["mask_strategy"]
    del smooth_as_task  # every step is a node now, smoothing included
    if out_suffix not in (".nii", ".nii.gz"):
        raise ValueError(f"out_suffix must be '.nii' or '.nii.gz'; got {out_suffix!r}.")
    if mem_gb is None or not mem_gb > 0:
        raise ValueError(f"mem_gb must be a positive number; got {mem_gb!r}.")
    omp_nthreads = int(omp_nthreads)
    if omp_nthreads < 1:
        raise ValueError(f"omp_nthreads must be >= 1; got {omp_nthreads!r}.")
    target_affine, target_shape = params["target_affine"], params["target_shape"]
    affine_list = _as_list_affine(target_affine)
    shape_list = _as_list_shape(target_shape, target_affine)
    smoothing_fwhm = params["smoothing_fwhm"]
    if isinstance(smoothing_fwhm, (list, tuple, np.ndarray)):
        smoothing_fwhm = [float(v) for v in smoothing_fwhm]
    elif smoothing_fwhm is not None and smoothing_fwhm != "fast":
        smoothing_fwhm = float(smoothing_fwhm)
    dtype = params["dtype"]
    dtype = None if dtype is None else str(np.dtype(dtype)) if dtype != "auto" else "auto"

    params = {
        **params,
        "mask_strategy": mask_strategy,
        "smoothing_fwhm": smoothing_fwhm,
        "dtype": dtype,
        "mask_args": dict(params["mask_args"]) if params["mask_args"] else None,
        "target_affine": affine_list,
        "target_shape": shape_list,
    }

    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = _describe(params)

    inputnode = pe.Node(niu.IdentityInterface(fields=INPUT_FIELDS), name="inputnode")
    # A default, not a constant: anything set or connected on inputnode.t_r overrides it.
    if params["t_r"] is not None:
        inputnode.inputs.t_r = float(params["t_r"])
    outputnode = pe.Node(niu.IdentityInterface(fields=OUTPUT_FIELDS), name="outputnode")

    grid = {
        field: value
        for field, value in (("target_affine", affine_list), ("target_shape", shape_list))
        if value is not None
    }
    mask = pe.Node(
        ComputeMask(mask_strategy=mask_strategy, out_suffix=out_suffix, **grid),
        name="mask",
        mem_gb=mem_gb,
        n_procs=omp_nthreads,
    )
    if params["mask_args"]:
        mask.inputs.mask_args = params["mask_args"]
    # Traits without a default stay undefined rather than None.
    resample_bold = pe.Node(
        Resample(**grid, **({} if dtype is None else {"dtype": dtype})),
        name="resample_bold",
        mem_gb=2 * mem_gb,
    )
    clean = _clean_node(params, mem_gb, omp_nthreads)
    unmask = pe.Node(Unmask(out_suffix=out_suffix), name="unmask", mem_gb=mem_gb)

    # fmt: off
    workflow.connect([
        (inputnode, mask, [("bold_file", "bold_file"), ("mask_file", "mask_file")]),
        (inputnode, resample_bold, [("bold_file", "in_file")]),
        (mask, resample_bold, [("mask_file", "mask_file")]),
        (inputnode, clean, [
            ("confounds_file", "confounds_file"),
            ("sample_mask", "sample_mask"),
            ("t_r", "t_r"),
        ]),
        (mask, clean, [("mask_file", "mask_file")]),
        (mask, unmask, [("mask_file", "mask_file")]),
        # The cleaned BOLD states the run's header codes, units and repetition time.
        (inputnode, unmask, [("bold_file", "reference_file"), ("t_r", "t_r")]),
        (clean, unmask, [("signals_file", "signals_file")]),
        (mask, outputnode, [("mask_file", "mask_file")]),
        (clean, outputnode, [("signals_file", "signals_file"), ("qc_file", "qc_file")]),
        (unmask, outputnode, [("out_file", "cleaned_bold_file")]),
    ])
    # fmt: on

    _connect_bold_steps(
        workflow,
        inputnode,
        mask,
        resample_bold,
        clean,
        smoothing_fwhm=smoothing_fwhm,
        high_variance_confounds=params["high_variance_confounds"],
        mem_gb=mem_gb,
        omp_nthreads=omp_nthreads,
    )
    return workflow


def _connect_bold_steps(
    workflow,
    inputnode,
    mask,
    resample_bold,
    clean,
    *,
    smoothing_fwhm,
    high_variance_confounds,
    mem_gb,
    omp_nthreads,
):
    """Feed ``clean`` the BOLD through the nodes the parameters ask for.

    ``resample_bold -> [smooth] -> clean``, and ``[high_variance_confounds] -> clean``
    from the raw BOLD; the nodes in brackets are only added with ``smoothing_fwhm`` and
    ``high_variance_confounds``.
    """
    if smoothing_fwhm is None:
        # The resampled window, or the BOLD itself when it is on the mask's grid.
        # fmt: off
        workflow.connect([
            (resample_bold, clean, [("out_file", "bold_file"), ("bold_window", "bold_window")]),
        ])
        # fmt: on
    else:
        # The smoothed BOLD leaves the node as its mask voxels' time series: less than
        # half the bytes of the smoothed window, and no second masking pass in clean,
        # which reads the raw BOLD's header only.
        smooth = pe.Node(
            Smooth(fwhm=smoothing_fwhm, extract=True),
            name="smooth",
            mem_gb=2 * mem_gb,
            n_procs=omp_nthreads,
        )
        # fmt: off
        workflow.connect([
            (resample_bold, smooth, [("out_file", "in_file")]),
            (mask, smooth, [("mask_file", "mask_file")]),
            (inputnode, clean, [("bold_file", "bold_file")]),
            # The report shows the unsmoothed mean image: gathered by the node that sees it.
            (smooth, clean, [
                ("signals_file", "extracted_file"), ("planes_file", "mean_planes_file"),
            ]),
        ])
        # fmt: on

    if high_variance_confounds:
        high_variance = pe.Node(
            HighVarianceConfounds(), name="high_variance_confounds", mem_gb=3 * mem_gb
        )
        # From the raw BOLD, before resampling and smoothing, as nilearn takes them.
        # fmt: off
        workflow.connect([
            (inputnode, high_variance, [("bold_file", "bold_file")]),
            (high_variance, clean, [("confounds_file", "hv_confounds_file")]),
        ])
        # fmt: on


def _clean_node(params, mem_gb, omp_nthreads):
    """The ``clean`` node: the cleaning parameters; resampling, smoothing, dtype upstream."""
    # Computed by their own node (when asked), handed over as hv_confounds_file.
    always_set = ("detrend", "standardize", "standardize_confounds")
    clean = pe.Node(
        CleanSignals(
            high_variance_confounds=False, **{field: params[field] for field in always_set}
        ),
        name="clean",
        mem_gb=2 * mem_gb,
        n_procs=omp_nthreads,
    )
    # Traits without a default stay undefined rather than None.
    for field, value in (
        ("low_pass", params["low_pass"]),
        ("high_pass", params["high_pass"]),
        ("clean_args", dict(params["clean_args"]) if params["clean_args"] else None),
    ):
        if value is not None:
            setattr(clean.inputs, field, value)
    return clean


def run_masker_wf(
    bold_file,
    *,
    base_dir,
    mask_file=None,
    confounds_file=None,
    sample_mask=None,
    plugin="Linear",
    plugin_args=None,
    **params,
):
    """Build :func:`init_masker_wf`, run it on one BOLD file and return its output files.

    A convenience for scripts and tests, the nipype twin of
    :func:`masker_wf.workflow.run_masker_workflow`. Pipelines embed :func:`init_masker_wf`
    instead.

    Parameters
    ----------
    bold_file : str or Path
        4D BOLD NIfTI file.
    base_dir : str or Path
        nipype working directory (node caches; crash files go to ``base_dir/crash``).
    mask_file, confounds_file, sample_mask : optional
        Values for the inputnode fields of the same names.
    plugin : str, default="Linear"
        nipype execution plugin (``"Linear"``, ``"MultiProc"``...).
    plugin_args : dict or None, default=None
        Arguments of the plugin (e.g. ``{"n_procs": 2}`` for MultiProc).
    **params
        Keyword arguments of :func:`init_masker_wf` (``smoothing_fwhm``, ``t_r``...).

    Returns
    -------
    dict
        ``mask_file``, ``signals_file``, ``cleaned_bold_file`` and ``qc_file`` as
        :class:`pathlib.Path`.

    Raises
    ------
    ValueError, TypeError
        A bad input or parameter: the exception the step raised (the estimator's class and
        message) with ``step`` and ``file`` attributes, whichever plugin ran the node; a
        note gives the crash file.
    masker_wf._steps.StepError
        Any other failure of a step.
    """
    from pathlib import Path

    base_dir = Path(base_dir).resolve()
    workflow = init_masker_wf(**params)
    workflow.base_dir = str(base_dir)
    workflow.config["execution"]["crashdump_dir"] = str(base_dir / "crash")
    # Distributed plugins (MultiProc...) poll every 2 s by default: most of a small run.
    workflow.config["execution"]["poll_sleep_duration"] = 0.1
    inputs = workflow.inputs.inputnode
    inputs.bold_file = str(Path(bold_file).resolve())
    for field, value in (
        ("mask_file", mask_file),
        ("confounds_file", confounds_file),
        ("sample_mask", sample_mask),
    ):
        if value is not None:
            if isinstance(value, (str, Path)):
                value = str(Path(value).resolve())
            elif isinstance(value, np.ndarray):
                value = value.tolist()
            setattr(inputs, field, value)
    nodes_dir = base_dir / workflow.name
    # Error files of earlier runs (of nodes this run may not reach) must not be taken for
    # this run's.
    for stale in nodes_dir.rglob(_steps.ERROR_FILE):
        stale.unlink(missing_ok=True)
    try:
        graph = workflow.run(plugin=plugin, plugin_args=plugin_args or {})
    except Exception as exc:
        error = _node_error(nodes_dir)
        if error is None:
            raise
        crash_files = sorted((base_dir / "crash").glob("crash-*"), key=lambda p: p.stat().st_mtime)
        if crash_files:
            error.add_note(f"nipype crash file: {crash_files[-1]}")
        raise error from exc
    # nipype drops identity nodes (inputnode/outputnode) from the executed graph: read the
    # outputs from the nodes that feed the outputnode.
    results = {node.name: node.result.outputs for node in graph.nodes()}
    return {
        "mask_file": Path(results["mask"].mask_file),
        "signals_file": Path(results["clean"].signals_file),
        "cleaned_bold_file": Path(results["unmask"].out_file),
        "qc_file": Path(results["clean"].qc_file),
    }


def _node_error(nodes_dir):
    """The exception a failed node left in its directory (the first to fail), or None.

    The interfaces pickle it there (:mod:`masker_wf.nipype.interfaces`): nipype itself only
    reports the failure as text, from whichever process ran the node.
    """
    found = sorted(nodes_dir.rglob(_steps.ERROR_FILE), key=lambda p: p.stat().st_mtime_ns)
    for path in found:
        error = _steps.load_error(path.parent)
        if error is not None:
            return error
    return None
