"""Compile time per backend and target, and batch-1 single-thread latency of every backend that runs
on this host, side by side in one run, for the zoo models. Writes benchmarks/results/compile_latency.json.

    python benchmarks/compile_latency.py [--models lenet ds_cnn resnet8] [--trials 0] [--runs 300]

Latency is measured on float32 models (weights do not change latency) in one process, one backend
after another, as the median of the repeat medians, with the ratio to the fastest backend.
``--trials N`` adds TVM after N MetaSchedule trials (a tuning database under benchmarks/results/ is
not kept: it goes to the user cache).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "compile_latency.json"

COMPILE_TARGETS = [("litert", "x86_64"), ("tvm", "x86_64_avx512"), ("tvm", "rpi4"), ("tvm", "cortex_a7"),
                   ("tvm", "cuda_sm80"), ("onnxruntime", "x86_64"), ("vela", "ethos_u55_128"),
                   ("vela", "ethos_u85_256"), ("tflm", "cortex_m7")]


def latency(engine, x, runs, repeats=5):
    from edgedl.bench import time_invocations
    from edgedl.runtime.quant import quantize

    raw = quantize(x, engine.inputs[0])
    medians = time_invocations(engine, raw, warmup=30, runs=runs, repeats=repeats).repeat_p50_us
    return float(np.median(medians)), medians


def main(argv=None):
    from edgedl import _io
    from edgedl.backends import get_backend
    from edgedl.convert import to_tflite
    from edgedl.errors import EdgeDLError
    from edgedl.targets import load_target
    from edgedl.zoo import get_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet", "cnn", "ds_cnn", "resnet8", "mobilenet_v1", "lstm", "mlp"])
    p.add_argument("--trials", type=int, default=0, help="MetaSchedule trials for a tuned TVM column (0: skip)")
    p.add_argument("--runs", type=int, default=300)
    args = p.parse_args(argv)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    host = load_target("x86_64_avx512")
    rng = np.random.default_rng(0)
    for name in args.models:
        model = get_model(name).build()
        shape = tuple(model.input_shape[1:])
        rep = rng.random((64, *shape), dtype=np.float32)
        x = rep[:1]
        entry = {"latency_us": {}, "latency_repeats_us": {}, "compile_s": {}, "notes": {}}
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            f32 = tmp / "f32.tflite"
            f32.write_bytes(to_tflite(model, "none"))
            i8 = tmp / "i8.tflite"
            i8.write_bytes(to_tflite(model, "int8", rep, io_type="int8"))
            onnx_path = tmp / "m.onnx"
            try:
                from edgedl.backends.onnxruntime import export_onnx

                export_onnx(model, onnx_path)
            except EdgeDLError as e:
                entry["notes"]["onnx_export"] = str(e)
            # Compile time for every backend x target (int8 for the NPU and MCU backends).
            for backend_name, target_name in COMPILE_TARGETS:
                src = i8 if backend_name in ("vela", "tflm") else (onnx_path if backend_name == "onnxruntime" else f32)
                key = f"{backend_name}/{target_name}"
                try:
                    t0 = time.perf_counter()
                    get_backend(backend_name).compile(src, load_target(target_name), tmp / key.replace("/", "_"), {})
                    entry["compile_s"][key] = round(time.perf_counter() - t0, 3)
                except EdgeDLError as e:
                    entry["notes"][key] = str(e)
            # Latency on this host, all backends in the same process and run.
            runs = {"litert (XNNPACK)": ("litert", f32, {}), "onnxruntime": ("onnxruntime", onnx_path, {}),
                    "tvm untuned": ("tvm", f32, {})}
            if args.trials:
                runs[f"tvm tuned ({args.trials} trials)"] = ("tvm", f32, {"tune": True, "trials": args.trials})
            for label, (backend_name, src, opts) in runs.items():
                if not Path(src).exists():
                    continue
                backend = get_backend(backend_name)
                try:
                    t0 = time.perf_counter()
                    compiled = backend.compile(src, host, tmp / f"lat_{len(entry['latency_us'])}", opts)
                    if opts.get("tune"):
                        entry["compile_s"][label] = round(time.perf_counter() - t0, 1)
                        entry["notes"][label] = compiled.options
                    engine = backend.load(compiled, num_threads=1)
                    entry["latency_us"][label], entry["latency_repeats_us"][label] = latency(engine, x, args.runs)
                except EdgeDLError as e:
                    entry["notes"][label] = str(e)
        fastest = min(entry["latency_us"].values())
        entry["ratio_to_fastest"] = {k: round(v / fastest, 2) for k, v in entry["latency_us"].items()}
        entry["macs"] = None
        entry.update(command="python benchmarks/compile_latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                     machine=f"{platform.machine()}, {__import__('os').cpu_count()} cores, batch 1, one thread",
                     date=time.strftime("%Y-%m-%d"))
        results[name] = entry
        _io.write_json(RESULTS, results)
        print(name, {k: f"{v:.1f} us ({entry['ratio_to_fastest'][k]}x)" for k, v in entry["latency_us"].items()},
              flush=True)


if __name__ == "__main__":
    main()
