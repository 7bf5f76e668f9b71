"""Helpers of the BIDS App tests on output sets: datasets, runs, killed runs, set checks."""

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

import masker_wf

REPO = Path(__file__).resolve().parent.parent
RAW = REPO / "bids_examples" / "ds-masker"
FMRIPREP = RAW / "derivatives" / "fmriprep"
SPACE = "MNI152NLin2009cAsym"
RUN = f"sub-01_task-rhymes_run-01_space-{SPACE}"
STEM = f"{RUN}_desc-denoised"
#: The package under test (the tests also run against an older tree put first on the path).
PACKAGE_ROOT = Path(masker_wf.__file__).resolve().parent.parent
KILL_APP = Path(__file__).resolve().parent / "kill_app.py"


def copy_fmriprep(target: Path) -> Path:
    """A copy of the example's fMRIPrep derivatives at ``target``."""
    shutil.copytree(FMRIPREP, target)
    return target


def one_run_argv(bids_dir, out, work, *extra) -> list[str]:
    """App arguments processing sub-01's first run only."""
    return [
        str(bids_dir),
        str(out),
        "participant",
        "--participant-label",
        "01",
        "--run-id",
        "1",
        "-w",
        str(work),
        "--denoise-strategy",
        "simple",
        *extra,
    ]


def app_process(argv, *, point=None, **kwargs) -> subprocess.CompletedProcess:
    """Run the App in a new process (killed at ``point``, see ``kill_app.py``)."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "NO_ET": "1"}
    command = [sys.executable, "-m", "masker_wf.cli.run", *argv]
    if point is not None:
        command = [sys.executable, str(KILL_APP), point, *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False, **kwargs)


def visible_files(out: Path) -> dict:
    """Relative path -> SHA-256 of every file of the output dataset but the App's state."""
    return {
        path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*"))
        if path.is_file() and ".masker-wf" not in path.relative_to(out).parts
    }


def run_files(files: dict, run: str = RUN) -> dict:
    """The entries of ``files`` (from :func:`visible_files`) that belong to ``run``,
    temporary files (``.<name>.<random>.tmp...``) included."""
    return {k: v for k, v in files.items() if Path(k).name.lstrip(".").startswith(run)}


def cleaned_data(out: Path, stem: str = STEM) -> np.ndarray:
    """The decompressed data of a run's cleaned BOLD."""
    return np.asarray(nib.load(out / "sub-01" / "func" / f"{stem}_bold.nii.gz").dataobj)


def record_of(out: Path, stem: str = STEM) -> dict:
    return json.loads((out / "sub-01" / "func" / f"{stem}_provenance.json").read_text())


def assert_sets_consistent(out: Path) -> list[dict]:
    """Every provenance record of ``out`` describes exactly the files on disk.

    Each file a record lists exists with the size and SHA-256 recorded; every file on disk
    with a record's run and desc is listed; the cleaned BOLD's sidecar states the masker
    parameters of the record; no staged or temporary file is left next to the outputs.
    """
    records = []
    for path in sorted(out.glob("sub-*/**/*_provenance.json")):
        record = json.loads(path.read_text())
        prefix = path.name.removesuffix("_provenance.json")
        for relative, expected in record["Files"].items():
            data = (out / relative).read_bytes()
            assert len(data) == expected["size"], relative
            assert "sha256:" + hashlib.sha256(data).hexdigest() == expected["sha256"], relative
        on_disk = {
            p.relative_to(out).as_posix()
            for p in out.glob(f"sub-*/**/{prefix}_*")
            if p.is_file() and p != path
        }
        assert on_disk == set(record["Files"]), "files of the set differ from its record"
        bold_sidecar = out / record["Outputs"]["bold"].replace(".nii.gz", ".json")
        sidecar = json.loads(bold_sidecar.read_text())
        for name, value in sidecar["MaskerParameters"].items():
            assert record["Parameters"][name] == value, name
        records.append(record)
    temporary = [p for p in out.rglob(".*.tmp*") if ".masker-wf" not in p.parts]
    assert not temporary, "temporary files left in the outputs"
    return records


def staging_leftovers(out: Path) -> list[Path]:
    """Files left in the App's staging area."""
    return [p for p in (out / ".masker-wf" / "staging").rglob("*") if p.is_file()]


def gunzip_equal(a: Path, b: Path) -> bool:
    return gzip.decompress(a.read_bytes()) == gzip.decompress(b.read_bytes())
