"""masker-wf as a nipype sub-workflow: graph, interfaces, numerics, embedding and errors.

Numerics are compared with masker_wf.NiftiMasker, with nilearn 0.11.1 (computed here) and with
the Pydra workflow, on nipype's real ds003 BOLD, on synthetic data and on bids_examples/.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import test_workflow_nodes as pydra_nodes
from conftest import make_synthetic_bold
from nipype.interfaces.base import isdefined
from nipype.pipeline.engine.nodes import NodeExecutionError

# Fixtures of the Pydra graph's parity cases, which the nipype graph runs too.
from test_workflow_nodes import coarse_mask_file, synthetic_bold_file  # noqa: F401

from masker_wf._exceptions import DimensionError, SampleMaskError
from masker_wf._io import load_qc
from masker_wf._steps import StepError
from masker_wf.nipype import init_masker_wf, run_masker_wf
from masker_wf.nipype.interfaces import (
    CleanSignals,
    ComputeMask,
    DerivativesSink,
    HighVarianceConfounds,
    Resample,
    Smooth,
    Unmask,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "workflows" / "nipype" / "embed_example.py"
DS_MASKER = REPO / "bids_examples" / "ds-masker"
FMRIPREP_FUNC = DS_MASKER / "derivatives" / "fmriprep" / "sub-01" / "func"
RUN_PREFIX = "sub-01_task-rhymes_run-01"

ATOL = 1e-5  # same code path behind every face: differences are float32 rounding at most


def _masker_signals(bold, *, mask=None, confounds=None, sample_mask=None, **params):
    from masker_wf import NiftiMasker

    masker = NiftiMasker(mask_img=None if mask is None else str(mask), **params)
    return masker.fit_transform(str(bold), confounds=confounds, sample_mask=sample_mask)


def _nilearn_signals(bold, *, mask=None, confounds=None, sample_mask=None, **params):
    from nilearn.maskers import NiftiMasker

    masker = NiftiMasker(mask_img=None if mask is None else str(mask), **params)
    return masker.fit_transform(str(bold), confounds=confounds, sample_mask=sample_mask)


def _load_example():
    spec = importlib.util.spec_from_file_location("embed_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def synthetic_files(tmp_path):
    bold, mask = make_synthetic_bold(shape=(12, 13, 11), n_volumes=40)
    bold_file, mask_file = tmp_path / "synth_bold.nii.gz", tmp_path / "synth_mask.nii.gz"
    bold.to_filename(bold_file)
    mask.to_filename(mask_file)
    rng = np.random.default_rng(1)
    confounds = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    confounds_file = tmp_path / "synth_confounds.tsv"
    confounds.to_csv(confounds_file, sep="\t", index=False)
    return bold_file, mask_file, confounds_file


# ------------------------------------------------------------------------------- the graph
def test_graph_has_fmriprep_style_inputnode_outputnode_and_methods_paragraph():
    wf = init_masker_wf(smoothing_fwhm=6.0, detrend=True, high_pass=0.01, t_r=2.0, mem_gb=0.5)
    assert sorted(wf.list_node_names()) == [
        "clean",
        "inputnode",
        "mask",
        "outputnode",
        "resample_bold",
        "smooth",
        "unmask",
    ]
    inputnode, outputnode = wf.get_node("inputnode"), wf.get_node("outputnode")
    assert set(inputnode.inputs.copyable_trait_names()) == {
        "bold_file",
        "mask_file",
        "confounds_file",
        "sample_mask",
        "t_r",
    }
    assert set(outputnode.outputs.copyable_trait_names()) == {
        "mask_file",
        "signals_file",
        "cleaned_bold_file",
        "qc_file",
    }
    # t_r is the inputnode's default, so a connected or set value overrides it.
    assert inputnode.inputs.t_r == 2.0
    assert wf.get_node("smooth").inputs.fwhm == 6.0
    clean = wf.get_node("clean")
    assert not isdefined(clean.inputs.smoothing_fwhm)  # done upstream
    assert clean.mem_gb == pytest.approx(1.0)
    for text in ("'background' strategy", "6.0 mm FWHM", "linearly detrended", "0.01 Hz"):
        assert text in wf.__desc__
    assert wf.visit_desc() == wf.__desc__


def _edges(wf):
    return {
        (source.name, target.name, tuple(map(tuple, data["connect"])))
        for source, target, data in wf._graph.edges(data=True)
    }


def test_smoothing_target_grid_and_high_variance_confounds_are_nodes():
    wf = init_masker_wf(
        smoothing_fwhm=6.0,
        target_affine=np.diag([4.0, 4.0, 4.0]),
        high_variance_confounds=True,
    )
    assert sorted(wf.list_node_names()) == [
        "clean",
        "high_variance_confounds",
        "inputnode",
        "mask",
        "outputnode",
        "resample_bold",
        "smooth",
        "unmask",
    ]
    edges = _edges(wf)
    # mask -> resample_bold -> smooth -> clean, high-variance confounds from the raw BOLD.
    assert ("inputnode", "resample_bold", (("bold_file", "in_file"),)) in edges
    assert ("mask", "resample_bold", (("mask_file", "mask_file"),)) in edges
    assert ("resample_bold", "smooth", (("out_file", "in_file"),)) in edges
    # The smoothed BOLD leaves smooth as its mask voxels' time series; clean reads the raw
    # BOLD's header only.
    assert wf.get_node("smooth").inputs.extract is True
    assert (
        "smooth",
        "clean",
        (("signals_file", "extracted_file"), ("planes_file", "mean_planes_file")),
    ) in edges
    (to_clean,) = [conns for a, b, conns in edges if (a, b) == ("inputnode", "clean")]
    assert ("bold_file", "bold_file") in to_clean
    assert ("inputnode", "high_variance_confounds", (("bold_file", "bold_file"),)) in edges
    assert (
        "high_variance_confounds",
        "clean",
        (("confounds_file", "hv_confounds_file"),),
    ) in edges
    # Each parameter is used by the node of its step only.
    assert wf.get_node("resample_bold").inputs.target_affine == np.diag([4.0, 4.0, 4.0]).tolist()
    clean = wf.get_node("clean").inputs
    assert clean.high_variance_confounds is False
    assert clean.bold_window is False
    for name in ("smoothing_fwhm", "target_affine", "target_shape", "dtype"):
        assert not isdefined(getattr(clean, name)), name


def test_nodes_the_parameters_switch_off_are_not_in_the_graph():
    wf = init_masker_wf(detrend=True)
    # resample_bold stays: a mask the parent connects may be on another grid.
    assert sorted(wf.list_node_names()) == [
        "clean",
        "inputnode",
        "mask",
        "outputnode",
        "resample_bold",
        "unmask",
    ]
    assert (
        "resample_bold",
        "clean",
        (("out_file", "bold_file"), ("bold_window", "bold_window")),
    ) in _edges(wf)


def test_smooth_as_task_is_accepted_and_changes_nothing():
    built = {
        flag: init_masker_wf(
            smoothing_fwhm=5.0,
            smooth_as_task=flag,
            high_variance_confounds=True,
            target_affine=np.eye(3) * 4,
        )
        for flag in (False, True)
    }
    assert built[True].list_node_names() == built[False].list_node_names()
    assert _edges(built[True]) == _edges(built[False])
    assert built[True].__desc__ == built[False].__desc__


def test_smooth_as_node_is_a_deprecated_name_of_smooth_as_task():
    import inspect

    with pytest.warns(DeprecationWarning, match="smooth_as_task"):
        wf = init_masker_wf(smoothing_fwhm=5.0, smooth_as_node=True)
    assert "smooth" in wf.list_node_names()
    # The signature shows the current name only; contradicting values are refused.
    assert "smooth_as_node" not in inspect.signature(init_masker_wf).parameters
    with (
        pytest.warns(DeprecationWarning, match="deprecated"),
        pytest.raises(TypeError, match="smooth_as_task"),
    ):
        init_masker_wf(smoothing_fwhm=5.0, smooth_as_node=True, smooth_as_task=False)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"mask_strategy": "brain"}, "mask_strategy"),
        ({"standardize": "l2"}, "standardize"),
        ({"low_pass": -0.1}, "low_pass"),
        ({"target_shape": (10, 10, 10)}, "target_affine"),
        ({"target_affine": np.eye(2)}, "target_affine"),
        ({"out_suffix": ".mgz"}, "out_suffix"),
    ],
)
def test_invalid_parameters_fail_when_the_workflow_is_built(params, named):
    with pytest.raises(ValueError, match=named):
        init_masker_wf(**params)


@pytest.mark.parametrize(
    "interface",
    [ComputeMask, Resample, Smooth, HighVarianceConfounds, CleanSignals, Unmask, DerivativesSink],
)
def test_every_trait_of_every_interface_is_described(interface):
    for spec in (interface.input_spec(), interface.output_spec()):
        for name in spec.copyable_trait_names():
            assert spec.trait(name).desc, f"{interface.__name__}.{name} has no desc"


def test_masker_traits_take_descriptions_defaults_and_values_from_the_spec():
    from masker_wf import _spec

    inputs = CleanSignals().inputs
    for name in ("smoothing_fwhm", "standardize", "detrend", "runs", "clean_args", "t_r"):
        assert inputs.trait(name).desc == _spec.by_name(name).doc
    assert inputs.standardize is _spec.by_name("standardize").default
    assert set(inputs.trait("standardize").trait_type.values) == set(_spec.STANDARDIZE_VALUES)
    mask = ComputeMask().inputs
    assert mask.mask_strategy == _spec.by_name("mask_strategy").default
    assert set(mask.trait("mask_strategy").trait_type.values) == set(_spec.MASK_STRATEGIES)


# ------------------------------------------------------------------------ numerics: ds003
@pytest.mark.filterwarnings("ignore:The provided image has no sform:UserWarning")
def test_linear_on_ds003_with_given_mask_matches_nifti_masker_and_nilearn(
    tmp_path, ds003_path, ds003_mask_path
):
    rng = np.random.default_rng(0)
    confounds = pd.DataFrame(rng.normal(size=(20, 2)), columns=["motion", "csf"])
    confounds_file = tmp_path / "confounds.tsv"
    confounds.to_csv(confounds_file, sep="\t", index=False)
    sample_mask = np.array([i for i in range(20) if i not in (3, 11)])
    params = {
        "smoothing_fwhm": 8.0,
        "detrend": True,
        "standardize": "zscore_sample",
        "high_pass": 0.02,
    }
    # The factory's t_r (3.0) is a default that inputnode's value (2.0, the real TR) overrides.
    wf = init_masker_wf(t_r=3.0, **params)
    wf.base_dir = str(tmp_path / "work")
    inputs = wf.inputs.inputnode
    inputs.bold_file = str(ds003_path)
    inputs.mask_file = str(ds003_mask_path)
    inputs.confounds_file = str(confounds_file)
    inputs.sample_mask = sample_mask.tolist()
    inputs.t_r = 2.0
    graph = wf.run(plugin="Linear")
    outputs = {node.name: node.result.outputs for node in graph.nodes()}

    signals = np.load(outputs["clean"].signals_file)
    assert outputs["mask"].mask_file == str(ds003_mask_path)  # a given mask passes through
    assert signals.shape == (18, 1065)
    assert signals.dtype == np.float32
    expected = _masker_signals(
        ds003_path,
        mask=ds003_mask_path,
        confounds=confounds.to_numpy(),
        sample_mask=sample_mask,
        t_r=2.0,
        **params,
    )
    np.testing.assert_allclose(signals, expected, atol=ATOL)
    reference = _nilearn_signals(
        ds003_path,
        mask=ds003_mask_path,
        confounds=confounds.to_numpy(),
        sample_mask=sample_mask,
        t_r=2.0,
        **params,
    )
    np.testing.assert_allclose(signals, reference, atol=1e-4)

    cleaned = nib.load(outputs["unmask"].out_file)
    mask = np.asarray(nib.load(ds003_mask_path).dataobj).astype(bool)
    assert cleaned.shape == (16, 16, 9, 18)
    np.testing.assert_array_equal(np.asarray(cleaned.dataobj)[mask].T, signals)


def test_multiproc_on_ds003_computing_the_mask_matches_nifti_masker_and_pydra(
    tmp_path, ds003_path
):
    from masker_wf.workflow import run_masker_workflow

    params = {"smoothing_fwhm": 6.0, "detrend": True, "standardize": "zscore_sample"}
    out = run_masker_wf(
        ds003_path,
        base_dir=tmp_path / "nipype",
        plugin="MultiProc",
        plugin_args={"n_procs": 2},
        **params,
    )
    signals = np.load(out["signals_file"])
    expected = _masker_signals(ds003_path, **params)
    assert signals.shape == expected.shape
    np.testing.assert_allclose(signals, expected, atol=ATOL)

    from masker_wf import NiftiMasker

    expected_mask = NiftiMasker().fit(str(ds003_path)).mask_img_
    np.testing.assert_array_equal(
        np.asarray(nib.load(out["mask_file"]).dataobj).astype(bool),
        np.asarray(expected_mask.dataobj).astype(bool),
    )

    pydra_out = run_masker_workflow(ds003_path, cache_root=tmp_path / "pydra", **params)
    np.testing.assert_allclose(signals, np.load(pydra_out["signals_file"]), atol=ATOL)
    np.testing.assert_allclose(
        nib.load(out["cleaned_bold_file"]).get_fdata(),
        nib.load(pydra_out["cleaned_bold_file"]).get_fdata(),
        atol=ATOL,
    )


# -------------------------------------------------------------------- numerics: synthetic
@pytest.mark.filterwarnings("ignore:imgs are being resampled:UserWarning")
def test_synthetic_resampled_to_a_target_grid_matches_nifti_masker(tmp_path, synthetic_files):
    bold_file, _, confounds_file = synthetic_files
    params = {
        "smoothing_fwhm": 5.0,
        "target_affine": np.diag([4.0, 4.0, 4.5]),
        "detrend": True,
        "low_pass": 0.1,
        "t_r": 2.0,
        "standardize": "zscore_sample",
    }
    sample_mask = np.arange(3, 40)
    out = run_masker_wf(
        bold_file,
        base_dir=tmp_path / "work",
        confounds_file=confounds_file,
        sample_mask=sample_mask,
        **params,
    )
    expected = _masker_signals(
        bold_file,
        confounds=pd.read_csv(confounds_file, sep="\t").to_numpy(),
        sample_mask=sample_mask,
        **params,
    )
    np.testing.assert_allclose(np.load(out["signals_file"]), expected, atol=ATOL)
    mask_img = nib.load(out["mask_file"])
    np.testing.assert_array_equal(np.diag(mask_img.affine)[:3], [4.0, 4.0, 4.5])


@pytest.mark.filterwarnings("ignore:imgs are being resampled:UserWarning")
def test_synthetic_given_mask_resampled_and_smoothed_as_node_match_nifti_masker(
    tmp_path, synthetic_files
):
    bold_file, mask_file, _ = synthetic_files
    params = {"smoothing_fwhm": 6.0, "standardize": "zscore_sample", "detrend": True}
    expected = _masker_signals(bold_file, mask=mask_file, **params)
    for smooth_as_task in (False, True):
        out = run_masker_wf(
            bold_file,
            base_dir=tmp_path / f"smooth_as_task-{smooth_as_task}",
            mask_file=mask_file,
            smooth_as_task=smooth_as_task,
            **params,
        )
        np.testing.assert_allclose(np.load(out["signals_file"]), expected, atol=ATOL)

    # A given mask is resampled (nearest) to the target grid, like NiftiMasker's mask_img_.
    from masker_wf import NiftiMasker

    target = np.diag([5.0, 5.0, 5.0])
    out = run_masker_wf(
        bold_file, base_dir=tmp_path / "target", mask_file=mask_file, target_affine=target
    )
    expected_mask = NiftiMasker(mask_img=str(mask_file), target_affine=target).fit().mask_img_
    mask_img = nib.load(out["mask_file"])
    np.testing.assert_allclose(mask_img.affine, expected_mask.affine)
    np.testing.assert_array_equal(
        np.asarray(mask_img.dataobj).astype(bool), np.asarray(expected_mask.dataobj).astype(bool)
    )


@pytest.mark.parametrize("case", list(pydra_nodes.PARITY_CASES))
def test_signals_through_the_node_graph_are_niftimaskers(
    case, tmp_path, request, ds003_path, ds003_mask_path, functional_path
):
    # The parity cases of the Pydra graph (tests/test_workflow_nodes.py), through nipype's.
    source, params = pydra_nodes.PARITY_CASES[case]
    params = dict(params)
    bold = {
        "ds003": ds003_path,
        "functional": functional_path,
        "synthetic": request.getfixturevalue("synthetic_bold_file"),
    }[source]
    mask = params.pop("mask", None)
    mask_file = {None: None, "ds003": ds003_mask_path}.get(mask)
    if mask == "coarse":
        mask_file = request.getfixturevalue("coarse_mask_file")
    confounds = (
        pydra_nodes._confounds_file(tmp_path, "confounds", 3, seed=1)
        if params.pop("confounds", 0)
        else None
    )
    sample_mask = params.pop("sample_mask", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's resampling warning, on both sides
        out = run_masker_wf(
            bold,
            base_dir=tmp_path / "work",
            mask_file=mask_file,
            confounds_file=confounds,
            sample_mask=sample_mask,
            **params,
        )
        from masker_wf import NiftiMasker

        masker = NiftiMasker(mask_img=mask_file, **params)
        expected = masker.fit_transform(bold, confounds=confounds, sample_mask=sample_mask)
    signals = np.load(out["signals_file"])
    assert signals.dtype == expected.dtype
    np.testing.assert_allclose(signals, expected, rtol=1e-6, atol=1e-6)
    cleaned = nib.load(out["cleaned_bold_file"])
    expected_img = masker.inverse_transform(expected)
    np.testing.assert_allclose(cleaned.affine, expected_img.affine)
    np.testing.assert_allclose(cleaned.get_fdata(), expected_img.get_fdata(), atol=1e-6)


@pytest.mark.filterwarnings("ignore:imgs are being resampled:UserWarning")
@pytest.mark.parametrize("plugin", ["Linear", "MultiProc"])
def test_smoothing_target_grid_and_high_variance_confounds_run_with_either_plugin(
    plugin, tmp_path, synthetic_files
):
    bold_file, mask_file, confounds_file = synthetic_files
    params = {
        "smoothing_fwhm": 6.0,
        "target_affine": np.diag([4.0, 4.0, 4.5]),
        "high_variance_confounds": True,
        "detrend": True,
        "standardize": "zscore_sample",
    }
    sample_mask = np.arange(2, 40)
    out = run_masker_wf(
        bold_file,
        base_dir=tmp_path / "work",
        mask_file=mask_file,
        confounds_file=confounds_file,
        sample_mask=sample_mask,
        plugin=plugin,
        plugin_args={"n_procs": 2} if plugin == "MultiProc" else None,
        **params,
    )
    expected = _masker_signals(
        bold_file,
        mask=mask_file,
        confounds=pd.read_csv(confounds_file, sep="\t").to_numpy(),
        sample_mask=sample_mask,
        **params,
    )
    np.testing.assert_allclose(np.load(out["signals_file"]), expected, rtol=1e-6, atol=1e-6)
    # Named after the run's BOLD, not after the intermediates.
    assert out["signals_file"].name == "synth_bold_signals.npy"
    assert out["cleaned_bold_file"].name == "synth_bold_cleaned.nii"
    node_dirs = {p.name for p in (tmp_path / "work" / "masker_wf").iterdir() if p.is_dir()}
    assert {"resample_bold", "smooth", "high_variance_confounds", "clean"} <= node_dirs


def test_resample_bold_hands_over_a_bold_on_the_mask_grid_untouched(tmp_path, synthetic_files):
    bold_file, mask_file, _ = synthetic_files

    def run(name, mask=mask_file, **inputs):
        cwd = tmp_path / name
        cwd.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nilearn's resampling warning
            result = Resample(in_file=str(bold_file), mask_file=str(mask), **inputs).run(
                cwd=str(cwd)
            )
        return result.outputs, cwd

    on_grid, cwd = run("on_grid")
    assert on_grid.out_file == str(bold_file)
    assert on_grid.bold_window is False
    assert not list(cwd.glob("*.nii*"))  # no copy
    # A dtype conversion to make, or another grid: the step writes the BOLD it masks.
    converted, cwd = run("converted", dtype="float64")
    assert Path(converted.out_file).parent == cwd
    assert converted.bold_window is True
    assert nib.load(converted.out_file).get_data_dtype() == np.float64
    from masker_wf.image import resample_img

    coarse_mask = tmp_path / "mask_4mm.nii"
    resample_img(
        str(mask_file), target_affine=np.diag([4.0, 4.0, 4.0]), interpolation="nearest"
    ).to_filename(coarse_mask)
    resampled, cwd = run("resampled", mask=coarse_mask)
    assert Path(resampled.out_file).parent == cwd
    assert resampled.bold_window is True
    np.testing.assert_allclose(nib.load(resampled.out_file).affine[:3, :3], np.diag([4.0] * 3))


def test_boolean_sample_mask_means_kept_volumes_not_indices(tmp_path, synthetic_files):
    bold_file, mask_file, _ = synthetic_files
    kept = np.ones(40, dtype=bool)
    kept[[0, 1, 17]] = False
    outputs = [
        run_masker_wf(
            bold_file,
            base_dir=tmp_path / name,
            mask_file=mask_file,
            sample_mask=sample_mask,
            detrend=True,
        )
        for name, sample_mask in (("bool", kept.tolist()), ("index", np.flatnonzero(kept)))
    ]
    by_bool, by_index = (np.load(out["signals_file"]) for out in outputs)
    assert by_bool.shape[0] == 37
    np.testing.assert_array_equal(by_bool, by_index)


def test_resample_interface_matches_the_core_resampling(tmp_path, synthetic_files):
    from masker_wf.image import resample_img

    bold_file, _, _ = synthetic_files
    target = np.diag([4.0, 4.0, 4.0])
    result = Resample(
        in_file=str(bold_file), target_affine=target.tolist(), out_suffix=".nii"
    ).run(cwd=str(tmp_path))
    out_file = Path(result.outputs.out_file)
    assert out_file.parent == tmp_path
    assert out_file.name == "synth_bold_resampled.nii"
    expected = resample_img(str(bold_file), target_affine=target, interpolation="continuous")
    np.testing.assert_allclose(nib.load(out_file).get_fdata(), expected.get_fdata(), atol=ATOL)


def test_changing_a_cleaning_parameter_reuses_the_cached_mask(tmp_path, synthetic_files):
    bold_file = synthetic_files[0]
    first = run_masker_wf(bold_file, base_dir=tmp_path, detrend=True)
    stamps = {key: path.stat().st_mtime_ns for key, path in first.items()}
    first_signals = np.load(first["signals_file"])  # the same path is rewritten below
    second = run_masker_wf(bold_file, base_dir=tmp_path, detrend=True, low_pass=0.1, t_r=2.0)
    assert second["mask_file"].stat().st_mtime_ns == stamps["mask_file"]
    assert second["signals_file"].stat().st_mtime_ns != stamps["signals_file"]
    assert not np.allclose(first_signals, np.load(second["signals_file"]))


def test_another_confounds_strategy_reruns_only_cleaning_and_unmasking(tmp_path, synthetic_files):
    bold_file, mask_file, confounds_file = synthetic_files
    other_confounds = tmp_path / "other_confounds.tsv"
    table = pd.read_csv(confounds_file, sep="\t")
    table[["a"]].to_csv(other_confounds, sep="\t", index=False)
    params = {"smoothing_fwhm": 6.0, "high_variance_confounds": True, "detrend": True}
    work = tmp_path / "work"

    def run(confounds):
        run_masker_wf(
            bold_file, base_dir=work, mask_file=mask_file, confounds_file=confounds, **params
        )
        nodes = ("mask", "resample_bold", "smooth", "high_variance_confounds", "clean", "unmask")
        # A node that reruns writes its result file again.
        return {
            node: (work / "masker_wf" / node / f"result_{node}.pklz").stat().st_mtime_ns
            for node in nodes
        }

    first = run(confounds_file)
    second = run(other_confounds)
    rerun = {node for node in first if first[node] != second[node]}
    assert rerun == {"clean", "unmask"}


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("plugin", ["Linear", "MultiProc"])
def test_confounds_with_wrong_row_count_raise_a_message_naming_the_file(
    tmp_path, ds003_path, ds003_mask_path, plugin
):
    confounds_file = tmp_path / "too_short_confounds.tsv"
    pd.DataFrame({"motion": np.arange(7.0)}).to_csv(confounds_file, sep="\t", index=False)
    wf = init_masker_wf(detrend=True)
    wf.base_dir = str(tmp_path / "work")
    wf.config["execution"]["crashdump_dir"] = str(tmp_path / "crash")
    wf.config["execution"]["poll_sleep_duration"] = 0.1
    wf.inputs.inputnode.bold_file = str(ds003_path)
    wf.inputs.inputnode.mask_file = str(ds003_mask_path)
    wf.inputs.inputnode.confounds_file = str(confounds_file)
    plugin_args = {"n_procs": 2} if plugin == "MultiProc" else {}
    # Linear raises nipype's NodeExecutionError, MultiProc a RuntimeError: both carry the
    # step's exception (not only the crash file): class and message, then notes naming the
    # step and the node's other inputs, at the end of the text.
    with pytest.raises((NodeExecutionError, RuntimeError)) as info:
        wf.run(plugin=plugin, plugin_args=plugin_args)
    lines = [line.strip() for line in str(info.value).strip().splitlines()]
    [message] = [line for line in lines if line.startswith("ValueError: confounds")]
    assert str(confounds_file) in message
    # ...and says what is wrong: 7 confound rows for 20 volumes.
    assert re.search(r"\b7\b.*\b20\b", message.split(str(confounds_file))[-1])
    tail = "\n".join(lines[lines.index(message) :])
    assert "masker step 'clean_signals'" in tail
    assert f"mask_file='{ds003_mask_path}'" in tail
    assert list((tmp_path / "crash").glob("crash-*"))


def _bad_inputs(tmp_path, ds003_path, ds003_mask_path):
    """A 2D image, an out-of-range sample_mask (in a file), a NaN confound in a kept row."""
    image_2d = tmp_path / "image_2d.nii"
    nib.Nifti1Image(np.ones((5, 5), dtype=np.float32), np.eye(4)).to_filename(image_2d)
    sample_mask = tmp_path / "sample_mask.txt"
    sample_mask.write_text("0\n1\n99\n")  # volume 99 does not exist (20 volumes)
    confounds = pd.DataFrame(np.random.default_rng(0).normal(size=(20, 2)), columns=["a", "b"])
    confounds.iloc[4, 0] = np.nan
    confounds_file = tmp_path / "nan_confounds.tsv"
    confounds.to_csv(confounds_file, sep="\t", index=False, na_rep="n/a")
    masker = _masker_signals
    return [
        (
            {"bold_file": image_2d, "mask_file": ds003_mask_path},
            DimensionError,
            lambda: masker(image_2d, mask=ds003_mask_path),
            image_2d,
        ),
        (
            {"bold_file": ds003_path, "mask_file": ds003_mask_path, "sample_mask": sample_mask},
            SampleMaskError,
            lambda: masker(ds003_path, mask=ds003_mask_path, sample_mask=[0, 1, 99]),
            sample_mask,
        ),
        (
            {
                "bold_file": ds003_path,
                "mask_file": ds003_mask_path,
                "confounds_file": confounds_file,
            },
            ValueError,
            lambda: masker(ds003_path, mask=ds003_mask_path, confounds=confounds_file),
            ds003_path,
        ),
    ]


@pytest.mark.parametrize("plugin", ["Linear", "MultiProc"])
def test_run_masker_wf_raises_the_steps_exception_itself(
    tmp_path, ds003_path, ds003_mask_path, plugin
):
    plugin_args = {"n_procs": 2} if plugin == "MultiProc" else None
    for index, (inputs, cls, estimator, at_fault) in enumerate(
        _bad_inputs(tmp_path, ds003_path, ds003_mask_path)
    ):
        with pytest.raises(cls) as expected:
            estimator()
        inputs = dict(inputs)
        with pytest.raises(cls) as caught:
            run_masker_wf(
                inputs.pop("bold_file"),
                base_dir=tmp_path / f"work-{index}",
                plugin=plugin,
                plugin_args=plugin_args,
                **inputs,
            )
        # The estimator's class and message, with the step and the file at fault.
        assert type(caught.value) is type(expected.value)
        assert str(caught.value) == str(expected.value)
        assert caught.value.step == "clean_signals"
        assert caught.value.file == str(at_fault)
        assert any("crash file" in note for note in caught.value.__notes__)


def test_missing_input_file_is_named_by_the_interface(tmp_path):
    missing = tmp_path / "no_such_bold.nii.gz"
    with pytest.raises(Exception, match=r"no_such_bold\.nii\.gz"):
        CleanSignals(bold_file=str(missing))


def test_step_error_from_an_interface_names_the_other_inputs(tmp_path, ds003_path):
    signals_file = tmp_path / "signals.npy"
    np.save(signals_file, np.zeros((3, 10), dtype=np.float32))
    mask_file = tmp_path / "mask.nii.gz"
    nib.Nifti1Image(np.ones((4, 4, 4), dtype=np.uint8), np.eye(4)).to_filename(mask_file)
    unmask = Unmask(signals_file=str(signals_file), mask_file=str(mask_file))
    with pytest.raises(StepError, match="signals have 10 columns but mask"):
        unmask.run(cwd=str(tmp_path))


def test_clean_signals_interface_takes_runs_and_writes_the_qc_file(tmp_path, synthetic_files):
    bold_file, mask_file, _ = synthetic_files
    runs = [0] * 20 + [1] * 20
    params = {"detrend": True, "standardize": "zscore_sample"}
    result = CleanSignals(
        bold_file=str(bold_file), mask_file=str(mask_file), runs=runs, **params
    ).run(cwd=str(tmp_path))
    expected = _masker_signals(bold_file, mask=mask_file, runs=np.asarray(runs), **params)
    np.testing.assert_allclose(np.load(result.outputs.signals_file), expected, atol=ATOL)
    # Per-run cleaning is not whole-series cleaning: the runs input is used.
    whole = _masker_signals(bold_file, mask=mask_file, **params)
    assert not np.allclose(expected, whole, atol=1e-3)
    qc = load_qc(result.outputs.qc_file)
    assert Path(result.outputs.qc_file).parent == tmp_path
    assert qc["tsnr_after"].shape == (expected.shape[1],)


# ------------------------------------------------------------ embedding in a parent pipeline
def test_embed_example_runs_and_matches_nifti_masker_on_bids_examples(tmp_path, monkeypatch):
    assert DS_MASKER.is_dir(), (
        "bids_examples/ds-masker is missing: run scripts/make_bids_examples.py"
    )
    out_dir = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), str(out_dir), "--plugin", "MultiProc", "--n-procs", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    func = out_dir / "sub-01" / "func"
    written = sorted(p.name for p in out_dir.glob("sub-*/func/*"))
    assert len(written) == 12  # 2 subjects x 2 runs x (mask, signals, denoised bold)
    citation = (out_dir / "logs" / "CITATION.md").read_text()
    assert "masker-wf" in citation
    assert "NiftiMasker" in citation

    # Same parameters, confounds and sample mask as the example, through the estimator.
    example = _load_example()
    monkeypatch.chdir(tmp_path)
    confounds_file, sample_mask = example.select_confounds(
        str(FMRIPREP_FUNC / f"{RUN_PREFIX}_desc-confounds_timeseries.tsv"),
        example.CONFOUND_COLUMNS,
    )
    bold = FMRIPREP_FUNC / f"{RUN_PREFIX}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    mask = FMRIPREP_FUNC / f"{RUN_PREFIX}_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz"
    expected = _masker_signals(
        bold,
        mask=mask,
        confounds=pd.read_csv(confounds_file, sep="\t").to_numpy(),
        sample_mask=np.asarray(sample_mask),
        smoothing_fwhm=8.0,
        detrend=True,
        standardize="zscore_sample",
        high_pass=0.01,
        t_r=2.0,
    )
    signals = np.load(func / f"{RUN_PREFIX}_space-MNI152NLin2009cAsym_desc-denoised_signals.npy")
    np.testing.assert_allclose(signals, expected, atol=ATOL)


def test_linear_on_bids_examples_with_fmriprep_confounds_matches_nifti_masker_and_pydra(
    tmp_path, monkeypatch
):
    from masker_wf.workflow import run_masker_workflow

    func = DS_MASKER / "derivatives" / "fmriprep" / "sub-02" / "func"
    prefix = "sub-02_task-rhymes_run-02"
    bold = func / f"{prefix}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    assert bold.is_file(), "run scripts/make_bids_examples.py to create bids_examples/"
    monkeypatch.chdir(tmp_path)
    confounds_file, sample_mask = _load_example().select_confounds(
        str(func / f"{prefix}_desc-confounds_timeseries.tsv"), ["trans_x", "rot_y", "csf"]
    )
    params = {
        "mask_strategy": "epi",
        "detrend": True,
        "standardize": "zscore_sample",
        "low_pass": 0.15,
        "high_pass": 0.01,
        "t_r": 2.0,
    }
    out = run_masker_wf(
        bold,
        base_dir=tmp_path / "nipype",
        confounds_file=confounds_file,
        sample_mask=sample_mask,
        **params,
    )
    signals = np.load(out["signals_file"])
    expected = _masker_signals(
        bold,
        confounds=pd.read_csv(confounds_file, sep="\t").to_numpy(),
        sample_mask=np.asarray(sample_mask),
        **params,
    )
    np.testing.assert_allclose(signals, expected, atol=ATOL)
    pydra_out = run_masker_workflow(
        bold,
        cache_root=tmp_path / "pydra",
        confounds_file=confounds_file,
        sample_mask=sample_mask,
        **params,
    )
    np.testing.assert_allclose(signals, np.load(pydra_out["signals_file"]), atol=ATOL)


def test_a_filter_builds_without_t_r_which_the_inputnode_brings():
    # The README's fragment: t_r is connected on inputnode.t_r when the graph runs.
    wf = init_masker_wf(
        smoothing_fwhm=6.0,
        detrend=True,
        standardize="zscore_sample",
        low_pass=0.08,
        high_pass=0.01,
        omp_nthreads=2,
    )
    assert "clean" in wf.list_node_names()
    with pytest.raises(ValueError, match="high_pass"):
        init_masker_wf(low_pass=0.01, high_pass=0.08)


@pytest.mark.parametrize("t_r", [None, 2.5], ids=["the input's", "given"])
def test_cleaned_bold_states_the_runs_header_codes_units_and_repetition_time(
    tmp_path, ds003_path, ds003_mask_path, t_r
):
    source = nib.load(ds003_path).header
    out = run_masker_wf(
        ds003_path,
        base_dir=tmp_path / "nipype",
        mask_file=ds003_mask_path,
        detrend=True,
        **({} if t_r is None else {"t_r": t_r}),
    )
    cleaned = nib.load(out["cleaned_bold_file"]).header
    expected_t_r = float(source.get_zooms()[3]) if t_r is None else t_r
    assert cleaned.get_zooms()[3] == pytest.approx(expected_t_r)
    assert cleaned.get_xyzt_units() == ("mm", "sec")
    assert int(cleaned["qform_code"]) == int(source["qform_code"])
