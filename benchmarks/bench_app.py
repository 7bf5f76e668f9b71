"""Time the BIDS App on the realistic run of ``make_realistic_data.py``.

Wraps that run (MNI 2 mm, 300 volumes, 1.3 GB) in a one-subject fMRIPrep-style
derivatives dataset (the BOLD is hard-linked, not copied), runs ``masker-wf
participant`` on it in a fresh process with the benchmark configuration
(smoothing 6 mm, detrend, zscore_sample, band-pass 0.01-0.08 Hz, the 26
fMRIPrep confounds of the ``simple`` strategy), then again on the same work
directory (served from the Pydra cache), and prints wall time and peak memory
of each, with the time spent on the run's report.

Usage::

    python benchmarks/bench_app.py --data /tmp/masker-bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = "MNI152NLin2009cAsym"
APP_OPTIONS = [
    "--denoise-strategy",
    "simple",
    "--smoothing-fwhm",
    "6",
    "--detrend",
    "--standardize",
    "zscore_sample",
    "--low-pass",
    "0.08",
    "--high-pass",
    "0.01",
]


def make_dataset(data_dir: Path, root: Path) -> Path:
    """An fMRIPrep-style derivatives dataset around the benchmark run."""
    run = json.loads((data_dir / "run.json").read_text())
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    stem = func / "sub-01_task-rest"
    bold = Path(f"{stem}_space-{SPACE}_desc-preproc_bold.nii")
    try:
        os.link(run["bold"], bold)
    except OSError:  # another file system: a symbolic link does as well for reading
        bold.symlink_to(run["bold"])
    shutil.copy(run["mask"], f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz")
    shutil.copy(run["confounds"], f"{stem}_desc-confounds_timeseries.tsv")
    Path(f"{stem}_desc-confounds_timeseries.json").write_text("{}")
    sidecar = {"RepetitionTime": run["t_r"], "TaskName": "rest", "SkullStripped": False}
    Path(f"{stem}_space-{SPACE}_desc-preproc_bold.json").write_text(json.dumps(sidecar))
    description = {
        "Name": "masker-wf benchmark run",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "masker-wf benchmarks/make_realistic_data.py"}],
    }
    (root / "dataset_description.json").write_text(json.dumps(description))
    return root


def _timed_app(dataset: Path, out_dir: Path, work_dir: Path) -> dict:
    command = [sys.executable, "-m", "masker_wf.cli.run", str(dataset), str(out_dir)]
    command += ["participant", "-w", str(work_dir), *APP_OPTIONS]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"masker-wf failed ({done.returncode}):\n{done.stderr[-4000:]}")
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    return {"seconds": seconds, "peak_gb": peak_gb}


def _provenance(out_dir: Path) -> dict:
    return json.loads(next(out_dir.glob("sub-01/func/*_provenance.json")).read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "masker-bench")
    args = parser.parse_args(argv)
    if not (args.data / "run.json").exists():
        sys.exit(f"no benchmark run in {args.data}: run benchmarks/make_realistic_data.py first")
    with tempfile.TemporaryDirectory(prefix="masker-bench-app-", dir=args.data) as tmp:
        tmp = Path(tmp)
        dataset = make_dataset(args.data, tmp / "fmriprep")
        first = _timed_app(dataset, tmp / "out", tmp / "work")
        first_record = _provenance(tmp / "out")
        shutil.rmtree(tmp / "out")
        again = _timed_app(dataset, tmp / "out", tmp / "work")
        record = _provenance(tmp / "out")
    print(f"first run:             {first['seconds']:6.1f} s   peak {first['peak_gb']:.2f} GB")
    print("steps of the first run (s):", json.dumps(first_record["StepSeconds"]))
    print(f"again (Pydra cache):   {again['seconds']:6.1f} s")
    print("steps of the second run (s):", json.dumps(record["StepSeconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
