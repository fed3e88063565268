"""The harness's own overhead: `edgedl bench`'s measurement against a bare invoke loop on the same
bundle, alternating in one run. Goal: p50 within 5%. Writes benchmarks/results/harness_overhead.json.

    python benchmarks/harness_overhead.py BUNDLE [--rounds 5] [--runs 2000]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "harness_overhead.json"


def bare_loop(bundle: str, runs: int) -> float:
    """The plainest loop there is, without edgedl: LiteRT's own Interpreter, set_tensor + invoke,
    perf_counter around each call (a LiteRT bundle)."""
    import json

    from ai_edge_litert.interpreter import Interpreter

    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    if manifest["runtime"]["engine"] != "litert":
        raise SystemExit("this benchmark takes a LiteRT bundle")
    interp = Interpreter(model_path=str(Path(bundle) / manifest["runtime"]["model"]), num_threads=1)
    interp.allocate_tensors()
    d = interp.get_input_details()[0]
    x = np.zeros(d["shape"], dtype=d["dtype"])
    for _ in range(50):
        interp.set_tensor(d["index"], x)
        interp.invoke()
    times = np.empty(runs)
    for i in range(runs):
        t = time.perf_counter()
        interp.set_tensor(d["index"], x)
        interp.invoke()
        times[i] = time.perf_counter() - t
    return float(np.median(times) * 1e6)


def main(argv=None):
    from edgedl import _io
    from edgedl.bench.harness import bench
    from edgedl.bench.options import BenchOptions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=2000)
    args = p.parse_args(argv)
    bare, harness = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop(args.bundle, args.runs))
        r = bench(args.bundle, BenchOptions(runs=args.runs, repeats=1, limit=None, dataset=None))
        harness.append(r.p50)
    result = {"bundle": args.bundle, "bare_p50_us": bare, "harness_p50_us": harness,
              "bare_median_us": float(np.median(bare)), "harness_median_us": float(np.median(harness)),
              "ratio": float(np.median(harness) / np.median(bare)), "goal": "ratio within 1.05",
              "command": "python benchmarks/harness_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.machine()}, shared 2-core machine", "date": time.strftime("%Y-%m-%d")}
    result["goal_met"] = abs(result["ratio"] - 1) <= 0.05
    _io.write_json(RESULTS, result)
    print(result)


if __name__ == "__main__":
    main()
