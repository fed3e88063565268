"""What measuring through a remote agent costs: the same bundle benchmarked here and through an
``edgedl serve`` agent on loopback, in the same run; write JSON.

The goal is that the device's latency figures do not depend on how they were gathered: the p50
through the agent (TVM RPC) within 10% of the local one. Rounds alternate local and remote (ABBA)
so drift on a shared machine hits both alike; each round is one ``edgedl.bench.bench`` call of
``--repeats`` x ``--runs`` timed inferences, and the medians over rounds are compared. The wall time
of each call (process start, loading, upload, RPC) is recorded beside it.

    python benchmarks/remote_overhead.py
    python benchmarks/remote_overhead.py --backends litert --rounds 6 --runs 2000
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "remote_overhead.json"
GOAL = 0.10


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="litert,tvm", help="backends to compile lenet with (%(default)s)")
    p.add_argument("--rounds", type=int, default=4, help="local/remote pairs, alternating (%(default)s)")
    p.add_argument("--runs", type=int, default=1000, help="timed runs per repeat (%(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="repeats per bench (%(default)s)")
    p.add_argument("--warmup", type=int, default=100, help="untimed runs first (%(default)s)")
    p.add_argument("--limit", type=int, default=50, help="samples scored per bench (%(default)s)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "edgedl-bench-remote"),
                   help="where the trained model and bundles are kept between runs (%(default)s)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON to write (%(default)s)")
    args = p.parse_args(argv)

    from edgedl import _io
    from edgedl.bench.harness import bench
    from edgedl.bench.options import BenchOptions

    command = "python benchmarks/remote_overhead.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    bundles = build_bundles(Path(args.work), args.backends.split(","))
    agent, device = start_agent()
    entries = []
    try:
        for backend, bundle in bundles.items():
            rounds = []
            for i in range(args.rounds):
                order = ("local", "remote") if i % 2 == 0 else ("remote", "local")
                row = {}
                for where in order:
                    opts = BenchOptions(limit=args.limit, warmup=args.warmup, runs=args.runs, repeats=args.repeats,
                                        device=None if where == "local" else device, timeout=600)
                    t0 = time.perf_counter()
                    r = bench(str(bundle), opts).data
                    lat = r["timing"]["latency"]
                    row[where] = {"p50_us": lat["p50_us"], "p90_us": lat["p90_us"], "mean_us": lat["mean_us"],
                                  "repeat_p50_us": r["timing"]["repeat_p50_us"],
                                  "accuracy": r["accuracy"].get("accuracy"), "wall_s": time.perf_counter() - t0}
                    if where == "remote":
                        row[where]["upload_bytes"] = r["remote"]["upload_bytes"]
                        row[where]["upload_s"] = r["remote"]["upload_s"]
                rounds.append(row)
                p50s = {k: round(v["p50_us"], 2) for k, v in row.items()}
                print(json.dumps({"backend": backend, "round": i, **p50s}), flush=True)
            local = float(np.median([r["local"]["p50_us"] for r in rounds]))
            remote = float(np.median([r["remote"]["p50_us"] for r in rounds]))
            entries.append({
                "backend": backend, "bundle": str(bundle), "local_p50_us": local, "remote_p50_us": remote,
                "remote_over_local": remote / local, "within_goal": abs(remote / local - 1) <= GOAL,
                "same_accuracy": all(r["local"]["accuracy"] == r["remote"]["accuracy"] for r in rounds),
                "local_wall_s": float(np.median([r["local"]["wall_s"] for r in rounds])),
                "remote_wall_s": float(np.median([r["remote"]["wall_s"] for r in rounds])),
                "rounds": rounds,
            })
            print(json.dumps({k: v for k, v in entries[-1].items() if k != "rounds"}), flush=True)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    result = {"command": command, "goal": f"remote p50 within {GOAL:.0%} of local",
              "settings": {"rounds": args.rounds, "runs": args.runs, "repeats": args.repeats, "warmup": args.warmup,
                           "threads": 1, "limit": args.limit, "model": "lenet on digits, int8 (litert) / float (tvm)"},
              "host": {"machine": platform.machine(), "node": platform.node(), "python": platform.python_version()},
              "device": f"loopback agent ({device})", "entries": entries,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _io.write_json(args.out, result)
    print(f"wrote {args.out}")


def build_bundles(work: Path, backends: list[str]) -> dict:
    from edgedl.compile import CompileOptions, compile_model

    work.mkdir(parents=True, exist_ok=True)
    keras_path = work / "lenet.keras"
    if not keras_path.is_file():
        from edgedl.train import TrainOptions, train

        train("lenet", TrainOptions(dataset="digits", epochs=2), progress=False).save(keras_path)
    out = {}
    for backend in backends:
        out[backend] = work / f"{backend}.edgedl"
        if not out[backend].exists():
            opts = (CompileOptions(backend="litert", quantize="int8", io_type="int8", num_samples=30)
                    if backend == "litert" else CompileOptions(backend=backend))
            compile_model(str(keras_path), "x86_64", str(out[backend]), opts)
    return out


def start_agent():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgedl.cli.main", "serve", "--port", str(port), "--port-end",
                             str(port)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"the agent did not start: {line}")
    return proc, f"127.0.0.1:{port}"


if __name__ == "__main__":
    main()
