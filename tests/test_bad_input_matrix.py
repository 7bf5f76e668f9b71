"""The same bad input gives the same exception class and message on every face.

Each case runs through the estimator (the reference), a Pydra task, the nipype interface
and the BIDS App. Messages are compared with directories stripped (each face may see its
input under another directory, e.g. Pydra's cache), so what they say of the file and of
the fault must be the same.
"""

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import make_synthetic_bold

from masker_wf import NiftiMasker
from masker_wf._exceptions import DimensionError, SampleMaskError

N_VOLUMES = 60
SPACE = "MNI152NLin2009cAsym"


@dataclass
class Case:
    """Inputs of one bad-input case (file names inside the case's folder)."""

    bold: str = "bold.nii.gz"
    mask: str | None = "mask.nii.gz"
    confounds: str | None = None
    sample_mask: list | None = None
    params: dict = field(default_factory=dict)
    expected: type = ValueError
    #: The App takes neither a sample_mask nor in-memory values: those cases do not apply.
    app: bool = True
    #: A bad parameter value: the App refuses it as a usage error (exit 64).
    usage: bool = False


CASES = {
    "2D image": Case(bold="bold2d.nii.gz", expected=DimensionError),
    "3D image with high-variance confounds": Case(
        bold="bold3d.nii.gz", params={"high_variance_confounds": True}, expected=DimensionError
    ),
    "5D image": Case(bold="bold5d.nii.gz", expected=DimensionError),
    "empty mask": Case(mask="empty_mask.nii.gz", expected=ValueError),
    "NaN confound in a kept volume": Case(confounds="nan_kept.tsv", expected=ValueError),
    "float sample_mask": Case(
        sample_mask=[0.0, 1.0, 2.0, 5.0], expected=SampleMaskError, app=False
    ),
    "out-of-range sample_mask": Case(
        sample_mask=[0, 1, 2, N_VOLUMES + 3], expected=SampleMaskError, app=False
    ),
    "unknown mask_args key": Case(
        mask=None,
        params={"mask_strategy": "epi", "mask_args": {"threshhold": 0.5}},
        expected=TypeError,
    ),
    "high_pass >= low_pass": Case(
        params={"low_pass": 0.05, "high_pass": 0.1, "t_r": 2.0}, expected=ValueError
    ),
    "filter without t_r": Case(
        bold="bold_no_tr.nii.gz", params={"low_pass": 0.1}, expected=ValueError
    ),
    # NaN compares False with every bound and passed the door checks; inf made a sidecar
    # that JSON cannot hold, or an OverflowError deep in the smoothing.
    "NaN smoothing_fwhm": Case(params={"smoothing_fwhm": float("nan")}, usage=True),
    "infinite smoothing_fwhm": Case(params={"smoothing_fwhm": float("inf")}, usage=True),
    "infinite low_pass": Case(params={"low_pass": float("inf"), "t_r": 2.0}, usage=True),
    "infinite t_r": Case(params={"low_pass": 0.1, "t_r": float("inf")}, usage=True),
    "singular target_affine": Case(
        params={"target_affine": [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]},
        usage=True,
    ),
    "NaN in target_affine": Case(
        params={"target_affine": [[2.0, 0.0, 0.0], [0.0, float("nan"), 0.0], [0, 0, 2.0]]},
        usage=True,
    ),
    "Butterworth order 0": Case(
        params={"low_pass": 0.1, "t_r": 2.0, "clean_args": {"butterworth__order": 0}},
        usage=True,
    ),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_inputs")
    bold, mask = make_synthetic_bold(n_volumes=N_VOLUMES)
    nib.save(bold, folder / "bold.nii.gz")
    nib.save(mask, folder / "mask.nii.gz")
    data = np.asarray(bold.dataobj)
    nib.save(nib.Nifti1Image(data[:, :, 5, 0], bold.affine), folder / "bold2d.nii.gz")
    nib.save(nib.Nifti1Image(data[..., 0], bold.affine), folder / "bold3d.nii.gz")
    nib.save(
        nib.Nifti1Image(np.stack([data[..., :3]] * 2, axis=-1), bold.affine),
        folder / "bold5d.nii.gz",
    )
    no_tr = nib.Nifti1Image(data, bold.affine)
    no_tr.header.set_zooms((3.0, 3.0, 3.5, 0.0))
    nib.save(no_tr, folder / "bold_no_tr.nii.gz")
    empty = np.zeros(mask.shape, dtype=np.uint8)
    nib.save(nib.Nifti1Image(empty, mask.affine), folder / "empty_mask.nii.gz")
    rng = np.random.default_rng(1)
    confounds = pd.DataFrame({"drift_a": rng.normal(size=N_VOLUMES), "drift_b": np.arange(60.0)})
    confounds.loc[5, "drift_a"] = np.nan
    confounds.to_csv(folder / "nan_kept.tsv", sep="\t", index=False, na_rep="n/a")
    return folder


def _path(folder, name):
    return None if name is None else str(folder / name)


def _norm(message: str) -> str:
    """The message with directories removed (faces may see the file elsewhere)."""
    return re.sub(r"(?<=['\s(])/[^'\s]*/", "", message).strip()


def _estimator_error(case, folder):
    masker = NiftiMasker(mask_img=_path(folder, case.mask), **case.params)
    sample_mask = None if case.sample_mask is None else np.asarray(case.sample_mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masker.fit_transform(
            _path(folder, case.bold),
            confounds=_path(folder, case.confounds),
            sample_mask=sample_mask,
        )


def _pydra_error(case, folder, cache_root):
    from pydra.engine.submitter import Submitter

    from masker_wf.tasks import CleanSignals, ComputeMask

    bold = _path(folder, case.bold)
    if case.mask is None:
        task = ComputeMask(bold_files=[bold], **case.params)
    else:
        task = CleanSignals(
            bold_file=bold,
            mask_file=_path(folder, case.mask),
            confounds_file=_path(folder, case.confounds),
            sample_mask=case.sample_mask,
            **case.params,
        )
    with Submitter(cache_root=cache_root, worker="debug") as submitter:
        submitter(task, raise_errors=True)


def _nipype_error(case, folder, cwd):
    from masker_wf.nipype import interfaces

    bold = _path(folder, case.bold)
    if case.mask is None:
        interface = interfaces.ComputeMask(bold_file=bold, **case.params)
    else:
        interface = interfaces.CleanSignals(bold_file=bold, mask_file=_path(folder, case.mask))
        for name, value in {
            "confounds_file": _path(folder, case.confounds),
            "sample_mask": case.sample_mask,
            **case.params,
        }.items():
            if value is not None:
                setattr(interface.inputs, name, value)
    interface.run(cwd=str(cwd))


def _catch(function, *args, **kwargs):
    # Any class: the class is what the tests compare.
    with pytest.raises(Exception) as caught:
        function(*args, **kwargs)
    return caught.value


@pytest.mark.parametrize("name", CASES)
def test_every_face_gives_the_estimators_error(name, files, tmp_path):
    case = CASES[name]
    reference = _catch(_estimator_error, case, files)
    assert isinstance(reference, case.expected), repr(reference)
    for face, error in (
        ("Pydra task", _catch(_pydra_error, case, files, tmp_path / "pydra")),
        ("nipype interface", _catch(_nipype_error, case, files, tmp_path)),
    ):
        assert type(error) is type(reference), f"{face}: {error!r} vs {reference!r}"
        assert _norm(str(error)) == _norm(str(reference)), face
        assert getattr(error, "step", None), f"{face}: the error does not name its step"


def _app_dataset(case, folder, root) -> Path:
    """An fMRIPrep-style derivative dataset holding the case's files."""
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    stem = f"sub-01_task-rest_space-{SPACE}"
    (root / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "bad input",
                "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}],
            }
        )
    )
    (func / f"{stem}_desc-preproc_bold.nii.gz").write_bytes((folder / case.bold).read_bytes())
    sidecar = {} if case.bold == "bold_no_tr.nii.gz" else {"RepetitionTime": 2.0}
    (func / f"{stem}_desc-preproc_bold.json").write_text(json.dumps(sidecar))
    if case.mask is not None:
        mask = (folder / case.mask).read_bytes()
        (func / f"{stem}_desc-brain_mask.nii.gz").write_bytes(mask)
    if case.confounds is not None:
        table = (folder / case.confounds).read_bytes()
        (func / "sub-01_task-rest_desc-confounds_timeseries.tsv").write_bytes(table)
    return root


def _app_argv(case, dataset, tmp_path) -> list[str]:
    argv = [str(dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work")]
    if case.confounds is not None:
        strategy = tmp_path / "strategy.json"
        strategy.write_text(json.dumps({"strategy": [], "columns": ["drift_a", "drift_b"]}))
        argv += ["--custom-strategy", str(strategy)]
    else:
        argv += ["--denoise-strategy", "none"]
    for key, value in case.params.items():
        if key == "mask_args":
            argv += ["--mask-args", json.dumps(value), "--no-use-input-mask"]
        elif value is True:
            argv.append(f"--{key.replace('_', '-')}")
        elif isinstance(value, (dict, list)):
            argv += [f"--{key.replace('_', '-')}", json.dumps(value)]
        else:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.app])
def test_the_app_reports_the_estimators_error(name, files, tmp_path, capsys):
    from masker_wf.cli.run import main

    case = CASES[name]
    reference = _catch(_estimator_error, case, files)
    dataset = _app_dataset(case, files, tmp_path / "ds")
    code = main(_app_argv(case, dataset, tmp_path))
    stderr = capsys.readouterr().err
    usage = isinstance(reference, TypeError) and not isinstance(reference, DimensionError)
    # Parameter errors are usage errors (64), found before any output; data errors fail
    # the run (65).
    assert code == (64 if usage or case.usage or "high_pass" in name else 65), stderr
    # The App's dataset names the same files the BIDS way.
    stem = f"sub-01_task-rest_space-{SPACE}"
    expected = (
        _norm(str(reference))
        .replace(f"'{case.bold}'", f"'{stem}_desc-preproc_bold.nii.gz'")
        .replace(f"'{case.mask}'", f"'{stem}_desc-brain_mask.nii.gz'")
    )
    # The estimator names its argument (imgs '<file>'); the App names the run's file.
    assert expected.split(" has incompatible", 1)[-1] in _norm(stderr), stderr


@pytest.mark.parametrize("name", ["high_pass >= low_pass", "unknown mask_args key"])
def test_masker_workflow_refuses_bad_parameters_before_any_node_runs(name, files, tmp_path):
    from masker_wf.workflow import run_masker_workflow

    case = CASES[name]
    reference = _catch(_estimator_error, case, files)
    cache_root = tmp_path / "pydra"
    error = _catch(
        run_masker_workflow,
        _path(files, case.bold),
        cache_root=cache_root,
        mask_file=_path(files, case.mask),
        **case.params,
    )
    assert type(error) is type(reference)
    assert _norm(str(error)) == _norm(str(reference))
    # No task ran: the graph was refused when built.
    assert not list(cache_root.glob("python-*"))
