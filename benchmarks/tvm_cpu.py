"""TVM on a CPU against LiteRT and ONNX Runtime, float32 and int8, batch 1, one thread, in one run:
TVM's stock lowering (what an untuned build ran before edgedl's schedules), TVM with edgedl's default
CPU schedules (edgedl/backends/tvm_schedule.py, what an untuned build runs now), and optionally TVM
tuned with MetaSchedule from those (trials and minutes recorded). Each latency is the median of the
repeat medians, timed through edgedl's engines as ``edgedl bench`` times them, with the ratio to the
fastest of the row. Writes benchmarks/results/tvm_cpu.json.

    python benchmarks/tvm_cpu.py [--models lenet ds_cnn ...] [--tune-trials 0] [--runs 200]

Models: the zoo's conv nets and MLP, and two MLPerf Tiny style models built here with random weights
(weights do not change latency): ``ad_autoencoder`` (anomaly detection: Dense 640-128-128-128-128-8-
128-128-128-128-640) and ``vww_mobilenet`` (visual wake words: MobileNetV1 alpha 0.25 at 96x96x3, two
classes). int8 models are calibrated on random inputs (accuracy is not measured here) with float I/O.
Also checks that each TVM build's outputs equal the stock build's (the schedules only reorder loops).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "tvm_cpu.json"
ZOO = ["lenet", "cnn", "ds_cnn", "resnet8", "mobilenet_v1", "mlp"]
MLPERF = ["ad_autoencoder", "vww_mobilenet"]


def build(name: str):
    import keras

    if name == "ad_autoencoder":
        x = inp = keras.Input((640,))
        for units in (128, 128, 128, 128, 8, 128, 128, 128, 128):
            x = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Dense(units)(x)))
        return keras.Model(inp, keras.layers.Dense(640)(x), name=name)
    if name == "vww_mobilenet":
        return keras.applications.MobileNet(input_shape=(96, 96, 3), alpha=0.25, weights=None, classes=2)
    from edgedl.zoo import get_model

    return get_model(name).build()


def latency(engine, x, runs: int, repeats: int = 5) -> tuple[float, list[float]]:
    from edgedl.bench import time_invocations
    from edgedl.runtime.quant import quantize

    raw = quantize(x, engine.inputs[0])
    medians = time_invocations(engine, raw, warmup=20, runs=runs, repeats=repeats).repeat_p50_us
    return float(np.median(medians)), [round(m, 2) for m in medians]


def main(argv=None):
    from edgedl import _io
    from edgedl.backends import get_backend
    from edgedl.convert import to_tflite
    from edgedl.errors import EdgeDLError
    from edgedl.targets import load_target

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=ZOO + MLPERF)
    p.add_argument("--precisions", nargs="+", default=["float32", "int8"], choices=["float32", "int8"])
    p.add_argument("--target", default="x86_64_avx512", help="edgedl target for TVM (this host's CPU)")
    p.add_argument("--tune-trials", type=int, default=0, help="add TVM tuned with this many MetaSchedule trials")
    p.add_argument("--tune-minutes", type=float, default=0, help="and at most this many minutes per model")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("-o", "--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    host = load_target(args.target)
    rng = np.random.default_rng(0)
    for name in args.models:
        model = build(name)
        shape = tuple(model.input_shape[1:])
        rep = rng.random((32, *shape), dtype=np.float32)
        x = rep[:1]
        for precision in args.precisions:
            key = f"{name}/{precision}"
            entry = {"latency_us": {}, "latency_repeats_us": {}, "compile_s": {}, "notes": {}, "same_outputs": {}}
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                src = tmp / "m.tflite"
                src.write_bytes(to_tflite(model, "none") if precision == "float32"
                                else to_tflite(model, "int8", rep))
                runs = {"litert (XNNPACK)": ("litert", {}), "onnxruntime": ("onnxruntime", {}),
                        "tvm stock lowering": ("tvm", {"schedules": "stock"}),
                        "tvm edgedl schedules": ("tvm", {})}
                if args.tune_trials:
                    tune = {"tune": True, "trials": args.tune_trials,
                            "tuning_db": str(tmp / "tuning")}
                    if args.tune_minutes:
                        tune["tune_minutes"] = args.tune_minutes
                    runs["tvm tuned"] = ("tvm", tune)
                reference = None
                for label, (backend_name, opts) in runs.items():
                    backend = get_backend(backend_name)
                    target = host if backend_name == "tvm" else load_target("x86_64")
                    try:
                        t0 = time.perf_counter()
                        compiled = backend.compile(src, target, tmp / f"b{len(entry['compile_s'])}", opts)
                        entry["compile_s"][label] = round(time.perf_counter() - t0, 2)
                        if opts.get("tune"):
                            entry["notes"][label] = {k: v for k, v in compiled.options.items()
                                                     if k in ("tasks", "tasks_from_db", "trials_run", "tuning_time_s",
                                                              "tuning_minutes", "stopped_by", "compared",
                                                              "seeded_with_default_schedules")}
                        engine = backend.load(compiled, num_threads=1)
                        entry["latency_us"][label], entry["latency_repeats_us"][label] = latency(engine, x, args.runs)
                        if backend_name == "tvm":
                            from edgedl.runtime.quant import quantize

                            out = np.asarray(engine.invoke(quantize(rep[:1], engine.inputs[0]))[0])
                            if reference is None:
                                reference = out
                            else:
                                entry["same_outputs"][label] = bool(np.array_equal(out, reference))
                    except EdgeDLError as e:
                        entry["notes"][label] = str(e)[:300]
            fastest = min(entry["latency_us"].values())
            entry["ratio_to_fastest"] = {k: round(v / fastest, 2) for k, v in entry["latency_us"].items()}
            lite = entry["latency_us"].get("litert (XNNPACK)")
            if lite:
                entry["ratio_to_litert"] = {k: round(v / lite, 2) for k, v in entry["latency_us"].items()}
            entry.update(command="python benchmarks/tvm_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                         machine=f"{platform.machine()} ({_cpu()}), {os.cpu_count()} cores, batch 1, one thread",
                         tvm_target=host.tvm["target"], date=time.strftime("%Y-%m-%d"))
            results[key] = entry
            _io.write_json(args.output, results)
            print(key, {k: f"{v:.1f} us ({entry['ratio_to_fastest'][k]}x)" for k, v in entry["latency_us"].items()},
                  flush=True)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
