"""The BIDS App against the nilearn script users write, on a run as fMRIPrep writes it.

One invocation runs, each in a fresh process (its wall time from start to exit, imports
included; its peak memory the sampled sum over its process tree):

``nilearn``     the script: ``load_confounds_strategy(bold, "simple")``, nilearn 0.11.1
                ``NiftiMasker.fit_transform`` + ``inverse_transform``, ``nib.save`` of the
                cleaned BOLD as ``.nii.gz`` (scrubbing bug patched: tests/nilearn_oracle.py)
``masker_wf``   the same script with ``masker_wf.NiftiMasker``
``app``         ``masker-wf bids_dir out participant`` on the run wrapped in an
                fMRIPrep-style dataset (the BOLD hard-linked), empty work directory
``app_cached``  the App again on the same work directory, into a new output directory

(the tree under test byte-compiled first, as ``pip install`` does: see
``_measure.byte_compile``), with the benchmark configuration: mask given, ``simple``
strategy (the 26 confounds), smoothing 6 mm, detrend, ``zscore_sample``, band-pass
0.01-0.08 Hz, TR 2 s. It prints the run (size, compression ratio), a table (wall time,
peak memory, ratios to nilearn, largest difference of the cleaned BOLD from nilearn's
relative to nilearn's largest value), and the seconds of each step of each contender.

``--mode strategies`` measures what the node-per-step workflow (issue 16) costs and saves,
each contender in a fresh process too:

``app_fused``             the App of ``--baseline TREE`` (a masker-wf tree from before the
                          node-per-step workflow, where ``CleanSignals`` resampled and
                          smoothed: ``mkdir /tmp/masker-fused && git archive 3761eef
                          masker_wf | tar -x -C /tmp/masker-fused``, or a ``git worktree``),
                          empty work directory; left out without ``--baseline``
``app``                   the App (node per step), empty work directory: the first run
``app_second_strategy``   the App on ``app``'s work directory with another strategy, into
                          a new output directory: what a second strategy on the same run
                          costs (mask, resampling and smoothing from the cache)
``app_three_strategies``  one invocation with three strategies, empty work directory

The three strategies are the first run's ``simple`` preset and two strategy files the
benchmark writes (the synthetic confounds have motion and white matter / CSF columns
only): the 24 motion parameters alone, and the 6 basic motion parameters with white matter
and CSF; the second strategy is the first of these files. It prints the ratios the
issue bounds: first run / fused first run (at most 1.15), second strategy / first run (at
most 0.40; also printed: what each strategy after the first adds to one invocation, where
imports and planning are paid once), three strategies / one strategy (at most 1.8).

Usage::

    python benchmarks/make_realistic_data.py /tmp/masker-bench-gz --compress
    python benchmarks/bench_app.py --data /tmp/masker-bench-gz
    mkdir /tmp/masker-fused && git archive 3761eef masker_wf | tar -x -C /tmp/masker-fused
    python benchmarks/bench_app.py --data /tmp/masker-bench-gz --mode strategies \
        --baseline /tmp/masker-fused
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _measure import byte_compile, cpu_seconds, measure, self_peak_gb  # noqa: E402

SPACE = "MNI152NLin2009cAsym"
PARAMS = {
    "smoothing_fwhm": 6.0,
    "detrend": True,
    "standardize": "zscore_sample",
    "low_pass": 0.08,
    "high_pass": 0.01,
    "t_r": 2.0,
}
#: The strategy of the App's contenders (but the second strategy's, a file of its own).
PRESET = ["--denoise-strategy", "simple"]
APP_OPTIONS = [
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
CONTENDERS = ("nilearn", "masker_wf", "app", "app_cached")
STRATEGY_CONTENDERS = ("app_fused", "app", "app_second_strategy", "app_three_strategies")
APPS = tuple(dict.fromkeys(("app", "app_cached", *STRATEGY_CONTENDERS)))
#: The strategy files of ``--mode strategies`` (load_confounds keywords).
STRATEGY_FILES = {
    "motion24": {"strategy": ["motion"], "motion": "full"},
    "basic": {"strategy": ["motion", "wm_csf"], "motion": "basic", "wm_csf": "basic"},
}


def bold_name(stem: str, source: str) -> str:
    """The fMRIPrep name of the BOLD, with the source's extension."""
    extension = ".nii.gz" if source.endswith(".gz") else ".nii"
    return f"{stem}_space-{SPACE}_desc-preproc_bold{extension}"


def make_dataset(data_dir: Path, root: Path, subject: str = "01", run_label=None) -> Path:
    """An fMRIPrep-style derivatives dataset around a benchmark run (BOLD hard-linked).

    Called again with another ``subject`` or ``run_label``, adds that run to ``root``.
    """
    run = json.loads((data_dir / "run.json").read_text())
    func = root / f"sub-{subject}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    stem = f"sub-{subject}_task-rest" + (f"_run-{run_label}" if run_label else "")
    bold = func / bold_name(stem, run["bold"])
    try:
        os.link(run["bold"], bold)
    except OSError:  # another file system: a symbolic link does as well for reading
        bold.symlink_to(run["bold"])
    shutil.copy(run["mask"], func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz")
    shutil.copy(run["confounds"], func / f"{stem}_desc-confounds_timeseries.tsv")
    (func / f"{stem}_desc-confounds_timeseries.json").write_text("{}")
    sidecar = {"RepetitionTime": run["t_r"], "TaskName": "rest", "SkullStripped": False}
    (func / f"{stem}_space-{SPACE}_desc-preproc_bold.json").write_text(json.dumps(sidecar))
    description = {
        "Name": "masker-wf benchmark run",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "masker-wf benchmarks/make_realistic_data.py"}],
    }
    if not (root / "dataset_description.json").exists():
        (root / "dataset_description.json").write_text(json.dumps(description))
    return root


def _dataset_files(dataset: Path) -> dict:
    func = next(dataset.glob("sub-*/func"))
    return {
        "bold": str(next(func.glob("*_desc-preproc_bold.nii*"))),
        "mask": str(next(func.glob("*_desc-brain_mask.nii.gz"))),
    }


# ------------------------------------------------------------------------ the children
def _script(contender: str, dataset: Path, out: Path) -> dict:
    """The user's script, step by step (each step timed)."""
    steps, mark = {}, time.perf_counter()

    def step(name):
        nonlocal mark
        steps[name] = round(time.perf_counter() - mark, 3)
        mark = time.perf_counter()

    import nibabel as nib
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    if contender == "nilearn":
        sys.path.insert(0, str(HERE.parent / "tests"))
        from nilearn.maskers import NiftiMasker
        from nilearn_oracle import fixed_nilearn_scrubbing
    else:
        from contextlib import nullcontext as fixed_nilearn_scrubbing

        from masker_wf import NiftiMasker
    step("imports")
    files = _dataset_files(dataset)
    confounds, sample_mask = load_confounds_strategy(files["bold"], denoise_strategy="simple")
    step("load_confounds_strategy")
    with fixed_nilearn_scrubbing():
        masker = NiftiMasker(mask_img=files["mask"], **PARAMS)
        signals = masker.fit_transform(files["bold"], confounds=confounds, sample_mask=sample_mask)
    step("fit_transform")
    cleaned = masker.inverse_transform(signals)
    step("inverse_transform")
    nib.save(cleaned, out / "cleaned_bold.nii.gz")
    step("nib.save .nii.gz")
    return {"steps": steps, "cleaned": str(out / "cleaned_bold.nii.gz")}


# Where the App's time goes, finer than its provenance's StepSeconds: (module, function,
# label) wrapped in the App's process to time each call (wall seconds; several calls add).
_TRACED = (
    ("masker_wf.app.execute", "plan_runs", "plan (pybids index, runs)"),
    ("masker_wf.app.run", "prepare_run", "inputs (header, confounds)"),
    ("masker_wf.app.run", "check_budget", "degrees-of-freedom check"),
    ("masker_wf._io", "_sha256_of_file", "hash inputs (SHA-256, read once)"),
    ("masker_wf._steps", "_resample_onto_mask", "resample the BOLD (resample_bold node)"),
    ("masker_wf._steps", "_smooth_window", "read .nii.gz + smooth, cropped (smooth node)"),
    (
        "masker_wf._steps",
        "_smooth_signals",
        "smooth node: read .nii.gz + smooth + mask, write its signals",
    ),
    ("masker_wf._pipeline", "_masked_signals", "mask (before issue 16: read + smooth + mask)"),
    ("masker_wf.signal", "clean", "clean (detrend, filter, regress, zscore)"),
    # Called by the smooth node (inside its time above) and by clean_signals.
    ("masker_wf._io", "save_signals", "signals .npy to the Pydra cache (both nodes)"),
    ("masker_wf._steps", "unmask", "cleaned BOLD .nii.gz (unmask + gzip, once)"),
    ("masker_wf.app.outputs", "write_report", "report (drawn meanwhile)"),
)


def _trace_app() -> dict:
    """Wrap the functions of :data:`_TRACED`; return the seconds they will add up to."""
    import functools
    import importlib

    seconds: dict = {}
    for module_name, name, label in _TRACED:
        module = importlib.import_module(module_name)
        function = getattr(module, name, None)
        if function is None:  # a step the tree under test (--baseline) does not have
            continue

        def timed(*args, _function=function, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _function(*args, **kwargs)
            finally:
                seconds[_label] = seconds.get(_label, 0.0) + time.perf_counter() - start

        setattr(module, name, functools.wraps(function)(timed))
    # The step functions call these by their module's names: rebind those too.
    from masker_wf import _steps

    _steps.save_signals = importlib.import_module("masker_wf._io").save_signals
    return seconds


def _app(dataset: Path, out: Path, work: Path, extra) -> dict:
    start = time.perf_counter()
    import masker_wf.app.execute
    import masker_wf.workflow  # noqa: F401  (what the App imports, timed on its own)
    from masker_wf.cli.run import main

    imported = time.perf_counter() - start
    seconds = _trace_app()
    argv = [str(dataset), str(out), "participant", "-w", str(work), *APP_OPTIONS, *extra]
    code = main(argv)
    if code != 0:
        raise SystemExit(f"masker-wf exited with {code}")
    # The first strategy's outputs (desc-denoised, or desc-denoised<Strategy> for several).
    record = json.loads(sorted(out.glob("sub-*/func/*_provenance.json"))[0].read_text())
    cleaned = sorted(out.glob("sub-*/func/*_desc-denoised*_bold.nii.gz"))[0]
    steps = {"imports (numpy, scipy, pandas, nibabel, pybids, Pydra)": imported, **seconds}
    steps = {name: round(value, 2) for name, value in steps.items()}
    return {"steps": steps, "app_steps": record["StepSeconds"], "cleaned": str(cleaned)}


def _child(args) -> dict:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.child in ("nilearn", "masker_wf"):
        result = _script(args.child, args.dataset, out)
    else:
        result = _app(args.dataset, out, args.work, args.app_args)
    result["self_peak_gb"] = self_peak_gb()
    result["cpu_seconds"] = cpu_seconds()
    return result


# ------------------------------------------------------------------------ the parent
def _load_image(path: str):
    """The data of a ``.nii.gz``, decompressed with python-isal (fast, any gzip)."""
    import nibabel as nib
    import numpy as np
    from isal import igzip

    with igzip.open(path, "rb") as stream:
        img = nib.Nifti1Image.from_bytes(stream.read())
    return np.asanyarray(img.dataobj)


def _relative_difference(path: str, reference, mask) -> float:
    import numpy as np

    ours = _load_image(path)[mask].astype(np.float64)
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def _strategy_files(tmp: Path) -> dict:
    """The strategy files of ``--mode strategies``, written under ``tmp``; name -> path."""
    directory = tmp / "strategies"
    directory.mkdir(exist_ok=True)
    paths = {}
    for name, content in STRATEGY_FILES.items():
        paths[name] = directory / f"{name}.json"
        paths[name].write_text(json.dumps(content))
    return paths


def _child_options(name: str, tmp: Path, app_args, baseline) -> tuple[list, Path, dict]:
    """Extra App options, work directory and environment of contender ``name``."""
    env = {**os.environ, "NO_ET": "1"}
    work = tmp / "work"  # app, app_cached and app_second_strategy share it
    extra = list(app_args)
    files = _strategy_files(tmp) if name in STRATEGY_CONTENDERS else {}
    if name == "app_fused":
        work = tmp / "work-fused"
        env["PYTHONPATH"] = os.pathsep.join([str(baseline), env.get("PYTHONPATH", "")])
    if name == "app_second_strategy":
        extra += ["--custom-strategy", str(files["motion24"])]
    elif name == "app_three_strategies":
        # The first run's preset, then two files: presets named with files are cleaned too.
        work = tmp / "work-three"
        extra += [*PRESET, "--custom-strategy", *(str(path) for path in files.values())]
    else:
        extra += PRESET
    return extra, work, env


def _run_child(name: str, dataset: Path, tmp: Path, app_args, baseline=None) -> dict:
    out = tmp / ("out-" + name)
    extra, work, env = _child_options(name, tmp, app_args, baseline)
    command = [sys.executable, __file__, "--child", name, "--dataset", str(dataset)]
    command += ["--out", str(out), "--work", str(work), "--app-args", *extra]
    measured = measure(command, env=env)
    result = json.loads(measured["stdout"].strip().splitlines()[-1])
    return {**result, "seconds": measured["seconds"], "peak_gb": measured["peak_gb"]}


def _describe_run(data_dir: Path) -> str:
    run = json.loads((data_dir / "run.json").read_text())
    size = Path(run["bold"]).stat().st_size
    raw = run.get("uncompressed_bytes", size)
    shape = " x ".join(map(str, run["shape"]))
    return (
        f"run: {shape} float32, {Path(run['bold']).name} {size / 1e9:.2f} GB "
        f"({raw / 1e9:.2f} GB uncompressed, compression ratio {raw / size:.2f}), "
        f"{run['n_voxels_in_mask']} voxels in the mask"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "masker-bench")
    parser.add_argument(
        "--mode",
        choices=["compare", "strategies"],
        default="compare",
        help="compare: the App against the nilearn script (default); strategies: the "
        "node-per-step workflow's first run, second strategy and three strategies",
    )
    every = sorted(set(CONTENDERS) | set(STRATEGY_CONTENDERS))
    parser.add_argument("--contenders", nargs="+", choices=every, help="default: the mode's")
    parser.add_argument(
        "--baseline", type=Path, help="masker-wf tree of the fused path (contender app_fused)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the outputs (printed path)")
    parser.add_argument("--child", choices=every, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--app-args", nargs=argparse.REMAINDER, default=[], help="extra options of the App"
    )
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return 0
    if not (args.data / "run.json").exists():
        sys.exit(f"no benchmark run in {args.data}: run benchmarks/make_realistic_data.py first")
    if args.contenders is None:
        args.contenders = list(CONTENDERS if args.mode == "compare" else STRATEGY_CONTENDERS)
        if args.baseline is None and "app_fused" in args.contenders:
            print("no --baseline tree: app_fused left out", flush=True)
            args.contenders.remove("app_fused")
    if "app_fused" in args.contenders and args.baseline is None:
        sys.exit("app_fused runs the App of --baseline TREE: give it")
    for name in ("app_cached", "app_second_strategy"):
        if name in args.contenders and "app" not in args.contenders:
            sys.exit(f"{name} reuses the work directory of app: run both")

    tmp = Path(tempfile.mkdtemp(prefix="masker-bench-app-", dir=args.data))
    try:
        dataset = make_dataset(args.data, tmp / "fmriprep")
        print(_describe_run(args.data), flush=True)
        print(byte_compile(args.baseline), flush=True)
        print(f"load average at the start: {os.getloadavg()[0]:.2f}", flush=True)
        results = {}
        for name in args.contenders:
            print(f"running {name} ...", flush=True)
            results[name] = _run_child(name, dataset, tmp, args.app_args, args.baseline)
            r = results[name]
            print(f"  {r['seconds']:7.1f} s  peak {r['peak_gb']:5.2f} GB", flush=True)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}", flush=True)
        _report(results, dataset)
    finally:
        if args.keep:
            print(f"outputs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _report(results: dict, dataset: Path) -> None:
    import nibabel as nib
    import numpy as np

    reference = results.get("nilearn")
    mask = np.asarray(nib.load(_dataset_files(dataset)["mask"]).dataobj) > 0
    expected = None
    if reference is not None:
        expected = _load_image(reference["cleaned"])[mask].astype(np.float64)
    print(
        "\n| contender | wall | CPU (user+sys) | peak memory | vs nilearn "
        "| max relative difference |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        ratio, difference = "", ""
        if reference is not None and name != "nilearn":
            speed = reference["seconds"] / r["seconds"]
            memory = r["peak_gb"] / reference["peak_gb"]
            ratio = f"{speed:.1f}x faster, {memory:.2f}x memory"
            difference = f"{_relative_difference(r['cleaned'], expected, mask):.1e}"
        print(
            f"| {name} | {r['seconds']:.1f} s | {r['cpu_seconds']:.1f} s | {r['peak_gb']:.2f} GB "
            f"| {ratio} | {difference} |"
        )
    print("\nsteps (s):")
    for name, r in results.items():
        print(f"  {name}: {json.dumps(r['steps'])}")
        if "app_steps" in r:
            print(f"  {name}, as its provenance record states them: {json.dumps(r['app_steps'])}")
    _report_strategies(results)
    apps = [name for name in APPS if name in results]
    if apps:
        print("\n| step of the App | " + " | ".join(apps) + " |")
        print("|---|" + "---|" * len(apps))
        steps = dict.fromkeys(k for name in apps for k in results[name]["steps"])
        for step in steps:
            cells = [results[name]["steps"].get(step) for name in apps]
            text = " | ".join("" if c is None else f"{c:.2f} s" for c in cells)
            print(f"| {step} | {text} |")
        walls = " | ".join(f"{results[name]['seconds']:.2f} s" for name in apps)
        print(f"| wall (whole process) | {walls} |")


# (numerator, denominator, what it is, the bound)
_STRATEGY_RATIOS = (
    ("app", "app_fused", "first run, node per step / fused path", 1.15),
    ("app_second_strategy", "app", "second strategy on the same run / first run", 0.40),
    ("app_three_strategies", "app", "three strategies in one invocation / one", 1.8),
)


def _report_strategies(results: dict) -> None:
    """The ratios of wall times (and CPU times) ``--mode strategies`` is about."""
    rows = [r for r in _STRATEGY_RATIOS if r[0] in results and r[1] in results]
    if not rows:
        return
    print("\n| ratio | wall | CPU | bound |")
    print("|---|---|---|---|")
    for numerator, denominator, text, bound in rows:
        a, b = results[numerator], results[denominator]
        wall = a["seconds"] / b["seconds"]
        cpu = a["cpu_seconds"] / b["cpu_seconds"]
        verdict = "ok" if wall <= bound else "ABOVE"
        print(f"| {text} | {wall:.2f} | {cpu:.2f} | {bound} ({verdict}) |")
    if "app_three_strategies" in results and "app" in results:
        # What each strategy after the first adds to one invocation (imports, planning and
        # process start-up are paid once).
        three, one = results["app_three_strategies"], results["app"]
        wall = (three["seconds"] - one["seconds"]) / 2 / one["seconds"]
        cpu = (three["cpu_seconds"] - one["cpu_seconds"]) / 2 / one["cpu_seconds"]
        verdict = "ok" if wall <= 0.40 else "ABOVE"
        text = "each extra strategy in one invocation / first run"
        print(f"| {text} | {wall:.2f} | {cpu:.2f} | 0.4 ({verdict}) |")


if __name__ == "__main__":
    sys.exit(main())
