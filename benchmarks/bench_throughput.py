"""Throughput of the BIDS App over several runs: ``--nprocs 1`` against ``--nprocs 2``.

Four distinct mid-size runs (``make_realistic_data.py --voxel-size 3 --n-volumes 200
--compress``: 64 x 76 x 64, 200 volumes, ``.nii.gz``), two subjects of two runs each,
processed by ``masker-wf participant`` with the benchmark configuration of
``bench_app.py``, once per ``--nprocs`` value and repeat, each time in a fresh process
with an empty work directory. The order alternates (1, 2, 1, 2...) so that a change of
load on the machine hits both alike. Prints wall time and peak memory (the sampled sum
over the App's process tree) of each, the speed-up, and checks that the outputs are the
same bytes (decompressed) whatever ``--nprocs``.

Usage::

    for s in 1 2 3 4; do
        python benchmarks/make_realistic_data.py /tmp/masker-bench-3mm/run-$s \\
            --compress --voxel-size 3 --n-volumes 200 --seed $s
    done
    python benchmarks/bench_throughput.py --data /tmp/masker-bench-3mm --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _measure import byte_compile, measure  # noqa: E402
from bench_app import APP_OPTIONS, make_dataset  # noqa: E402

RUNS = (("01", "1"), ("01", "2"), ("02", "1"), ("02", "2"))


def _dataset(data: Path, root: Path) -> Path:
    runs = sorted(p for p in data.iterdir() if (p / "run.json").exists())
    if len(runs) < len(RUNS):
        sys.exit(f"{data} must hold {len(RUNS)} runs (run-1 ... run-4), see the usage")
    for source, (subject, label) in zip(runs, RUNS, strict=False):
        make_dataset(source, root, subject, label)
    return root


def _decompressed_outputs(out: Path) -> dict:
    from isal import igzip

    found = {}
    for path in sorted(out.glob("sub-*/func/*.nii.gz")):
        with igzip.open(path, "rb") as stream:
            found[path.name] = stream.read()
    return found


def _app(dataset: Path, tmp: Path, nprocs: int, repeat: int, extra) -> dict:
    out, work = tmp / f"out-{nprocs}-{repeat}", tmp / f"work-{nprocs}-{repeat}"
    command = [sys.executable, "-m", "masker_wf.cli.run", str(dataset), str(out), "participant"]
    command += ["-w", str(work), "--nprocs", str(nprocs), *APP_OPTIONS, *extra]
    result = measure(command)
    result["out"] = out
    shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "masker-bench-3mm"
    )
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--app-args", nargs=argparse.REMAINDER, default=[], help="extra options of the App"
    )
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="masker-bench-throughput-", dir=args.data))
    try:
        dataset = _dataset(args.data, tmp / "fmriprep")
        print(byte_compile(), flush=True)
        print(f"load average at the start: {os.getloadavg()[0]:.2f}", flush=True)
        results = {n: [] for n in args.nprocs}
        for repeat in range(args.repeats):
            for nprocs in args.nprocs:
                r = _app(dataset, tmp, nprocs, repeat, args.app_args)
                results[nprocs].append(r)
                print(
                    f"--nprocs {nprocs} (repeat {repeat + 1}): {r['seconds']:6.1f} s  "
                    f"CPU {r['cpu_seconds']:5.1f} s  peak {r['peak_gb']:.2f} GB",
                    flush=True,
                )
        print(f"load average at the end: {os.getloadavg()[0]:.2f}", flush=True)
        reference = _decompressed_outputs(results[args.nprocs[0]][0]["out"])
        same = all(
            _decompressed_outputs(r["out"]) == reference for rs in results.values() for r in rs
        )
        base = statistics.median(r["seconds"] for r in results[args.nprocs[0]])
        print(f"\n{len(RUNS)} runs of 64 x 76 x 64 x 200 (.nii.gz)")
        print("| --nprocs | wall (median) | CPU (median) | peak memory (max) | speed-up |")
        print("|---|---|---|---|---|")
        for nprocs, rs in results.items():
            seconds = statistics.median(r["seconds"] for r in rs)
            cpu = statistics.median(r["cpu_seconds"] for r in rs)
            peak = max(r["peak_gb"] for r in rs)
            print(
                f"| {nprocs} | {seconds:.1f} s | {cpu:.1f} s | {peak:.2f} GB "
                f"| {base / seconds:.2f}x |"
            )
        print(f"\noutputs identical (decompressed) across --nprocs and repeats: {same}")
        return 0 if same else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
