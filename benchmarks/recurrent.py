"""The zoo's recurrent models (and the keyword transformer where the zoo has it) through the whole chain
(issue 31, item 4): FSDD accuracy as float32, int8 and QAT int8, latency per host backend, and size,
instructions and estimated latency as Cortex-M firmware. Writes benchmarks/results/recurrent.json.

    EDGEDL_DATA=../shared/data EDGEDL_MIRROR=../shared/mirror python benchmarks/recurrent.py \\
        [--models lstm gru kwt] [--parts accuracy qat backends mcu npu] [--save-dir /tmp/recurrent_models] \\
        [--qat-epochs N] [--limit 300] [--mcu-limit 50] [--runs 100] [--repeats 5] [-o FILE]

Each model is trained with its recipe (``train(name, TrainOptions(seed=0))``, as benchmarks/mcu.py's
``trained_model`` does) into ``--save-dir`` and reused from there by later runs. Then, each part
recorded as it finishes (a part that fails or is refused is recorded with its message, as data):

- ``accuracy``: ``edgedl optimize MODEL -q int8`` (the TensorFlow Lite converter's full-integer model,
  200 calibration samples of the training split): the Keras float32 model's and the int8 model's
  accuracy on FSDD's official test split, with 95% Wilson intervals, and the drop in points;
- ``qat``: ``edgedl optimize MODEL --qat``: the QAT int8 model's accuracy (and the post-training int8
  beside it in the same run), the layers QAT left without fake quantization, or the refusal;
- ``backends``: ``edgedl compile MODEL -t TARGET -b BACKEND -q none|int8 --dataset fsdd`` then
  ``edgedl bench`` (batch 1, one thread, ``--runs`` timed runs after 10 warm-up, median of
  ``--repeats``; accuracy on the first ``--limit`` test samples) for LiteRT, TVM and ONNX Runtime on
  x86_64 and TFLite Micro's interpreter on this host (the cortex_m55 target without firmware: the
  target only sizes the memory check); a backend that refuses is recorded with its one-line reason;
- ``mcu``: int8 firmware (tflm backend, CMSIS-NN kernels) for cortex_m4 and cortex_m55, run on QEMU's
  emulated boards by benchmarks/mcu.py's ``measure``: flash, RAM, arena, instructions per inference
  (exact on the emulator) and the latency estimated from them at the target's clock and stated CPI;
- ``npu``: ``edgedl compile MODEL -t ethos_u55_128|ethos_u85_256 -b vela -q int8 --io int8``: Vela's
  estimate (cycles and time at the NPU's clock, NPU and CPU operator counts, each CPU fallback operator with
  Vela's reason, SRAM, encoded weights); an estimate of the NPU alone, nothing here runs the command stream.

Accuracy on 300 test samples is coarse (one sample is 0.33 points): the 95% intervals say how coarse.
Entries of models not run are kept, and a run of some parts keeps the model's other parts (each part
says which command line produced it, in ``run_by``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
DEFAULT_OUT = ROOT / "results" / "recurrent.json"
PARTS = ["accuracy", "qat", "backends", "mcu", "npu"]
# TFLite Micro's interpreter on this host: compiled for cortex_m55 without firmware, the target only
# sizes compile's memory check (4 MiB of RAM: the unrolled GRU's arena does not fit cortex_m4's 256 KiB)
HOST_BACKENDS = [("litert", "x86_64"), ("tvm", "x86_64"), ("onnxruntime", "x86_64"), ("tflm", "cortex_m55")]
CORES = ["cortex_m4", "cortex_m55"]
NPUS = ["ethos_u55_128", "ethos_u85_256"]
NPU_FACTS = ("accelerator", "clock_hz", "cycles", "npu_cycles", "inference_time_ms", "npu_operators", "cpu_operators",
             "cpu_fallback", "macs", "sram_used_bytes", "weights_encoded_bytes", "weights_original_bytes",
             "memory_mode", "system_config", "fits")
RECURRENT = ("LSTM", "GRU", "SimpleRNN", "Bidirectional", "RNN")


def default_models() -> list[str]:
    """lstm and gru, and kwt once the zoo has it."""
    return ["lstm", "gru"] + (["kwt"] if (ROOT.parent / "models" / "kwt.py").is_file() else [])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=default_models(), help="zoo names (%(default)s)")
    p.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS, help="what to measure (all)")
    p.add_argument("--save-dir", default="/tmp/recurrent_models",
                   help="trained .keras models, reused when there (%(default)s)")
    p.add_argument("--qat-epochs", type=int, help="QAT fine-tuning epochs (default: optimize's, a quarter of the "
                                                  "recipe's)")
    p.add_argument("--limit", type=int, default=300, help="test samples each backend scores (%(default)s)")
    p.add_argument("--mcu-limit", type=int, default=50, help="test samples the firmware scores (%(default)s)")
    p.add_argument("--runs", type=int, default=100, help="timed runs per repeat (%(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="latency repeats, median taken (%(default)s)")
    p.add_argument("-o", "--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    command = "python benchmarks/recurrent.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    for name in args.models:
        from mcu import trained_model

        model_path, trained = trained_model(name, None, Path(args.save_dir))
        record(out, name, {"training": trained, "model_path": str(model_path)}, command)
        for part in args.parts:
            start = time.perf_counter()
            result = PART_FUNCTIONS[part](name, model_path, args)
            result.update(wall_time_s=round(time.perf_counter() - start, 1), run_by=command,
                          date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
            record(out, name, {part: result}, command)
            print(f"{name} {part}: {summary(part, result)}", flush=True)
    print(f"wrote {out}")


def record(out: Path, name: str, parts: dict, command: str) -> None:
    """Merge ``parts`` into the model's entry of the results file (re-read: other runs may have written it)."""
    from optimize import host

    from edgedl import _io, __version__

    results = json.loads(out.read_text()) if out.is_file() else {}
    results["about"] = __doc__.split("\n\n")[0].replace("\n", " ")
    entry = results.setdefault("models", {}).setdefault(name, {})
    entry.update(parts)
    entry.update(last_command=command, host=host(), edgedl_version=__version__)
    _io.write_json(out, results)


def accuracy_part(name: str, model_path: Path, args) -> dict:
    """Float32 Keras and the converter's int8 on the whole test split."""
    from edgedl.errors import EdgeDLError
    from edgedl.optimize import OptimizeOptions, optimize

    try:
        r = optimize(str(model_path), OptimizeOptions(quantize="int8", seed=0), progress=False)
    except EdgeDLError as e:
        return {"status": "refused", "error": f"{type(e).__name__}: {e}"}
    n = r.data["num_test"]
    base, int8 = r.stage("baseline"), r.stage("int8")
    return {"status": "ok", "command": f"edgedl optimize {model_path} -q int8 -o OUT",
            "data": r.data, "float32_keras": _acc(base.accuracy, n), "int8": _acc(int8.accuracy, n),
            "int8_drop_points": round(100 * (base.accuracy - int8.accuracy), 3),
            "within_1_point": base.accuracy - int8.accuracy <= 0.01,
            "size_bytes": {"float32": base.size_bytes, "int8": int8.size_bytes},
            "operators_int8": _operators(r.tflite), "versions": r.versions}


def qat_part(name: str, model_path: Path, args) -> dict:
    """QAT int8 (with the post-training int8 of the same run beside it), or the refusal."""
    from edgedl.errors import EdgeDLError
    from edgedl.optimize import OptimizeOptions, optimize

    epochs = f" --epochs {args.qat_epochs}" if args.qat_epochs else ""
    command = f"edgedl optimize {model_path} --qat{epochs} -o OUT"
    try:
        r = optimize(str(model_path), OptimizeOptions(qat=True, epochs=args.qat_epochs, seed=0), progress=False)
    except EdgeDLError as e:
        return {"status": "refused", "command": command, "error": f"{type(e).__name__}: {e}"}
    except Exception as e:  # noqa: BLE001 - a crash inside QAT is a finding of this benchmark, kept as data
        return {"status": "error", "command": command, "error": f"{type(e).__name__}: {str(e)[:500]}"}
    n = r.data["num_test"]
    base, ptq, qat = r.stage("baseline"), r.stage("ptq"), r.stage("qat")
    return {"status": "ok", "command": command, "epochs": r.finetuning["epochs"],
            "float32_keras": _acc(base.accuracy, n),
            "int8_ptq": _acc(ptq.accuracy, n), "int8_qat": _acc(qat.accuracy, n),
            "fake_quant_accuracy": qat.fake_quant_accuracy,
            "qat_drop_points": round(100 * (base.accuracy - qat.accuracy), 3),
            "recurrent_layers_fake_quantized": not any(
                p["kind"] in RECURRENT for p in (r.qat or {}).get("not_fake_quantized", [])),
            "qat": r.qat, "qat_wall_s": qat.wall_s,
            "operators_int8": _operators(r.tflite)}


def backends_part(name: str, model_path: Path, args) -> dict:
    """Compile and bench float32 and int8 on each host backend; refusals as data."""
    runs = {}
    for backend, target in HOST_BACKENDS:
        for quantize in ("none", "int8"):
            key = f"{backend} {'float32' if quantize == 'none' else quantize}"
            runs[key] = host_run(model_path, backend, target, quantize, args)
            print(f"  {name} {key}: {_run_line(runs[key])}", flush=True)
    return {"settings": {"threads": 1, "batch": 1, "runs": args.runs, "repeats": args.repeats, "warmup": 10,
                         "limit": args.limit,
                         "latency": "median over repeats of each repeat's p50 (edgedl bench)"}, "runs": runs}


def host_run(model_path: Path, backend: str, target: str, quantize: str, args) -> dict:
    from edgedl.bench.harness import bench
    from edgedl.bench.options import BenchOptions
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.errors import EdgeDLError

    flags = f"-b {backend} -q {quantize} --dataset fsdd" + (" --no-firmware" if backend == "tflm" else "")
    run = {"backend": backend, "target": target, "quantize": quantize,
           "commands": [f"edgedl compile {model_path} -t {target} {flags} --samples 50 -o BUNDLE",
                        f"edgedl bench BUNDLE --limit {args.limit} --runs {args.runs} --repeats {args.repeats} "
                        "--threads 1"]}
    with tempfile.TemporaryDirectory(prefix="edgedl-recurrent-") as tmp:
        bundle_dir = Path(tmp) / "model.edgedl"
        start = time.perf_counter()
        try:
            bundle = compile_model(str(model_path), target, str(bundle_dir),
                                   CompileOptions(backend=backend, quantize=quantize, dataset="fsdd", num_samples=50,
                                                  firmware=backend != "tflm"))
        except EdgeDLError as e:
            run.update(status="refused", compile_s=round(time.perf_counter() - start, 1),
                       error=f"{type(e).__name__}: {e}".splitlines()[0])
            return run
        except Exception as e:  # noqa: BLE001 - a crash is a finding, kept as data
            run.update(status="compile_crash", error=f"{type(e).__name__}: {e}".splitlines()[0][:500])
            return run
        run["compile_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        try:
            result = bench(str(bundle_dir), BenchOptions(limit=args.limit, runs=args.runs, repeats=args.repeats,
                                                         warmup=10, threads=1))
            run["load_1min_after"] = round(__import__("os").getloadavg()[0], 2)  # other jobs on the host
        except EdgeDLError as e:
            run.update(status="bench_error", error=f"{type(e).__name__}: {e}".splitlines()[0])
            return run
        run["bench_s"] = round(time.perf_counter() - start, 1)
    data = result.data
    lat = data["timing"]["latency"]
    run.update(status="ok", engine=data.get("engine") or (data.get("bundle") or {}).get("engine"),
               p50_us=round(result.p50, 2), latency={k: lat.get(k) for k in ("p50_us", "p90_us", "min_us", "runs")},
               accuracy=_acc(result.accuracy, result.accuracy_samples) if result.accuracy is not None else None,
               precision=(data.get("bundle") or {}).get("precision"), toolchain=bundle.manifest.get("toolchain"))
    return run


def mcu_part(name: str, model_path: Path, args) -> dict:
    """int8 firmware with CMSIS-NN kernels on each core's emulated board, as benchmarks/mcu.py measures it."""
    from mcu import measure

    settings = types.SimpleNamespace(max_disagreement=0.02, num_samples=50, limit=args.mcu_limit,
                                     reference_limit=None, timeout=600.0)
    runs = {}
    for core in CORES:
        run = measure(name, model_path, core, "cmsis_nn", settings)
        facts = run.pop("model_facts", None)
        run["model_facts"] = facts
        run["commands"] = [f"edgedl compile {model_path} -t {core} -b tflm -q int8 --kernels cmsis_nn --samples 50 "
                           "-o BUNDLE", f"edgedl bench BUNDLE --limit {args.mcu_limit} --reference {model_path}"]
        runs[core] = run
        print(f"  {name} {core}: {_mcu_line(run)}", flush=True)
    return {"kernels": "cmsis_nn", "samples": args.mcu_limit, "runs": runs,
            "how_measured": "benchmarks/mcu.py measure(): QEMU -icount counts instructions exactly; "
                            "estimated_latency_ms = instructions x stated CPI / clock (latency_basis)"}


def npu_part(name: str, model_path: Path, args) -> dict:
    """int8 (int8 I/O) through Vela for each Ethos-U target: its estimate, and what falls back to the CPU."""
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.errors import EdgeDLError

    runs = {}
    for target in NPUS:
        run = {"target": target, "commands": [f"edgedl compile {model_path} -t {target} -b vela -q int8 --io int8 "
                                              "--dataset fsdd --samples 50 -o BUNDLE"]}
        with tempfile.TemporaryDirectory(prefix="edgedl-recurrent-") as tmp:
            start = time.perf_counter()
            try:
                bundle = compile_model(str(model_path), target, str(Path(tmp) / "model.edgedl"),
                                       CompileOptions(backend="vela", quantize="int8", io_type="int8", dataset="fsdd",
                                                      num_samples=50))
            except EdgeDLError as e:
                run.update(status="refused", error=f"{type(e).__name__}: {e}".splitlines()[0])
                runs[target] = run
                continue
            run["compile_s"] = round(time.perf_counter() - start, 1)
        estimates = bundle.manifest.get("estimates") or {}
        run.update(status="ok", **{k: estimates.get(k) for k in NPU_FACTS},
                   toolchain=bundle.manifest.get("toolchain"))
        runs[target] = run
        print(f"  {name} {target}: {_npu_line(run)}", flush=True)
    return {"runs": runs, "how_measured": "Vela's static performance model of the NPU alone (no NPU here): cycles "
                                          "and time at the NPU clock; CPU fallback operators run on the Cortex-M "
                                          "and are not in the time"}


PART_FUNCTIONS = {"accuracy": accuracy_part, "qat": qat_part, "backends": backends_part, "mcu": mcu_part,
                  "npu": npu_part}


def _operators(tflite: bytes) -> list[str]:
    from edgedl.graph import read_tflite

    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(tflite)
        f.flush()
        return sorted(read_tflite(f.name).op_counts)


def _acc(value: float, n: int | None) -> dict:
    from quant_inside import _acc as wilson

    return wilson(value, n)


def _run_line(run: dict) -> str:
    if run["status"] != "ok":
        return f"{run['status']}: {run.get('error', '')[:160]}"
    acc = run["accuracy"]["value"] if run.get("accuracy") else float("nan")
    return f"p50 {run['p50_us']:.0f} us, accuracy {100 * acc:.2f}%, compile {run['compile_s']:.0f} s"


def _mcu_line(run: dict) -> str:
    if run["status"] != "ok":
        return f"{run['status']}: {(run.get('error') or '')[:160]}"
    return (f"{run['instructions']:,} instr, est. {run['estimated_latency_ms']:.1f} ms, flash "
            f"{run['flash_bytes'] / 1024:.0f} KiB, RAM {run['ram_bytes'] / 1024:.0f} KiB, arena "
            f"{run['arena_used_bytes'] / 1024:.1f} KiB, acc {run['accuracy']:.2f}")


def _npu_line(run: dict) -> str:
    if run["status"] != "ok":
        return f"{run['status']}: {(run.get('error') or '')[:160]}"
    fallback = ", ".join(f["op"] for f in run.get("cpu_fallback") or []) or "none"
    return (f"{run['cycles']:,} cycles, est. {run['inference_time_ms']:.3f} ms, {run['npu_operators']} NPU / "
            f"{run['cpu_operators']} CPU operators (fallback: {fallback}), SRAM {run['sram_used_bytes'] / 1024:.1f} KiB")


def summary(part: str, r: dict) -> str:
    if r.get("status") not in (None, "ok"):
        return f"{r['status']}: {r.get('error', '')[:200]}"
    if part == "accuracy":
        return (f"float32 {100 * r['float32_keras']['value']:.2f}%, int8 {100 * r['int8']['value']:.2f}% "
                f"(drop {r['int8_drop_points']:+.2f} points)")
    if part == "qat":
        return f"QAT int8 {100 * r['int8_qat']['value']:.2f}% (PTQ {100 * r['int8_ptq']['value']:.2f}%)"
    return f"{len(r['runs'])} runs in {r.get('wall_time_s', 0):.0f} s"


if __name__ == "__main__":
    main()
