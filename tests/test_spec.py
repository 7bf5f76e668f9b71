"""Every face exposes exactly the parameters of masker_wf._spec, with its defaults."""

import inspect

import pytest
from pydra.utils import get_fields

from masker_wf import NiftiMasker, _spec

# Inputs of a face that are data or engine options, not masker parameters.
_NOT_PARAMETERS = {
    "workflow": {"bold_file", "mask_file", "confounds_file", "sample_mask", "out_suffix"},
    "ComputeMask": {"bold_files", "out_suffix"},
    "Resample": {"in_file", "reference_file", "interpolation", "out_suffix", "mask_file"},
    "CleanSignals": {
        "bold_file",
        "mask_file",
        "confounds_file",
        "sample_mask",
        # What the workflow's upstream nodes hand over (see masker_wf.workflow).
        "hv_confounds_file",
        "bold_window",
        "mean_planes_file",
        "extracted_file",
    },
    "nipype": {"name", "omp_nthreads", "mem_gb", "smooth_as_task", "smooth_as_node", "out_suffix"},
}
# The nipype interfaces name some data inputs as nipype users expect (one file each).
_NIPYPE_DATA_INPUTS = {"ComputeMask": {"bold_file", "mask_file"}}
# Options that choose how the workflow is built, on every engine face alike.
_ENGINE_OPTIONS = {"smooth_as_task"}


def _pydra_fields(task):
    fields = {f.name: f for f in get_fields(task)}
    return {
        name: field
        for name, field in fields.items()
        if name not in ("function", "constructor") and not name.startswith("_")
    }


def _assert_same_parameters(face, found: dict):
    """``found``: {name: default} of a face, data inputs included."""
    expected = _spec.defaults(face)
    ignored = _NOT_PARAMETERS.get(face, set()) | _ENGINE_OPTIONS
    names = {name for name in found if name not in ignored}
    assert names == set(expected), (
        f"{face}: missing {sorted(set(expected) - names)}, extra {sorted(names - set(expected))}"
    )
    for name, default in expected.items():
        assert found[name] == default, f"{face}.{name}: default {found[name]!r} != {default!r}"


def test_estimator_signature_is_the_spec_in_nilearn_order():
    signature = inspect.signature(NiftiMasker.__init__)
    parameters = [
        p for p in signature.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD
    ]
    assert [p.name for p in parameters] == [p.name for p in _spec.for_face("estimator")]
    _assert_same_parameters("estimator", {p.name: p.default for p in parameters})


def test_estimator_docstring_documents_every_parameter():
    doc = NiftiMasker.__doc__
    for parameter in _spec.for_face("estimator"):
        assert f"{parameter.name} :" in doc, parameter.name


@pytest.mark.parametrize("face", ["ComputeMask", "Resample", "CleanSignals"])
def test_pydra_task_fields_are_the_spec(face):
    from masker_wf import tasks

    fields = _pydra_fields(getattr(tasks, face))
    _assert_same_parameters(face, {name: f.default for name, f in fields.items()})
    for parameter in _spec.for_face(face):
        allowed = fields[parameter.name].allowed_values
        if allowed and parameter.choices:
            assert set(allowed) == set(parameter.choices), parameter.name


def test_masker_workflow_inputs_are_the_spec():
    from masker_wf.workflow import MaskerWorkflow

    fields = _pydra_fields(MaskerWorkflow)
    _assert_same_parameters("workflow", {name: f.default for name, f in fields.items()})


def test_init_masker_wf_keywords_are_the_spec():
    from masker_wf.nipype import init_masker_wf

    signature = inspect.signature(init_masker_wf)
    _assert_same_parameters("nipype", {p.name: p.default for p in signature.parameters.values()})


@pytest.mark.parametrize("face", ["ComputeMask", "Resample", "CleanSignals"])
def test_nipype_interface_inputs_are_the_spec(face):
    from masker_wf.nipype import interfaces

    spec = getattr(interfaces, face)().inputs
    names = set(spec.copyable_trait_names()) - {"out_suffix"}
    expected = {p.name for p in _spec.for_face(face)}
    data = _NIPYPE_DATA_INPUTS.get(face, _NOT_PARAMETERS[face])
    assert names - data == expected, (
        f"{face}: missing {sorted(expected - names)}, extra {sorted(names - data - expected)}"
    )
    for parameter in _spec.for_face(face):
        trait = spec.trait(parameter.name)
        assert trait.desc == parameter.doc, parameter.name
        if parameter.default is not None:
            assert getattr(spec, parameter.name) == parameter.default, parameter.name


@pytest.mark.parametrize("strategy", _spec.MASK_STRATEGIES)
def test_mask_args_options_are_the_mask_functions_keywords(strategy):
    from masker_wf import masking

    function = {
        "background": masking.compute_background_mask,
        "epi": masking.compute_epi_mask,
    }.get(strategy, masking.compute_brain_mask)
    # The image, caching and logging arguments, and the template kind set by the strategy.
    fixed = {"data_imgs", "epi_img", "target_img", "memory", "verbose", "mask_type"}
    options = set(inspect.signature(function).parameters) - fixed
    assert options == set(_spec.MASK_ARGS[strategy])


@pytest.mark.parametrize("module", ["masking", "image", "signal"])
def test_core_functions_take_nilearns_parameters(module):
    # Every public function of a core module that nilearn 0.11.1 also has takes the same
    # parameters, in the same order, of the same kinds, with the same defaults: the
    # signatures built by _spec.declare_signature included.
    import importlib

    ours = importlib.import_module(f"masker_wf.{module}")
    theirs = importlib.import_module(f"nilearn.{module}")

    def parameters(function):
        return [
            (p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()
        ]

    shared = [
        name
        for name in ours.__all__
        if inspect.isfunction(getattr(ours, name)) and hasattr(theirs, name)
    ]
    assert len(shared) >= 4
    for name in shared:
        assert parameters(getattr(ours, name)) == parameters(getattr(theirs, name)), name


def test_declared_signatures_bind_calls_as_a_def_does():
    from masker_wf.image import resample_to_img
    from masker_wf.masking import compute_multi_background_mask

    with pytest.raises(TypeError, match=r"resample_to_img\(\) got an unexpected keyword"):
        resample_to_img(None, None, clipp=True)
    with pytest.raises(TypeError, match=r"resample_to_img\(\) missing a required argument"):
        resample_to_img(None)
    with pytest.raises(TypeError, match=r"compute_multi_background_mask\(\) too many"):
        compute_multi_background_mask(*range(11))
    assert resample_to_img.__name__ == "resample_to_img"
    assert "%(" not in compute_multi_background_mask.__doc__
