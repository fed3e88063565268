"""The zoo's int8 models on Cortex-M4, M7 and M55 firmware, run on the emulated boards: instructions
per inference, flash, RAM, arena and accuracy, with MLPerf Tiny's published Cortex-M4 results beside
them. Writes benchmarks/results/mcu.json.

    EDGEDL_DATA=../shared/data EDGEDL_MIRROR=../shared/mirror python benchmarks/mcu.py \\
        [--models lenet ds_cnn resnet8 mobilenet_v1] [--cores cortex_m4 cortex_m7 cortex_m55] \\
        [--kernels reference cmsis_nn] [--limit 100] [--reference-limit 10] [--epochs resnet8=2 ...] \\
        [--save-dir DIR] [-o FILE]

Each model is trained briefly (``DEFAULT_EPOCHS``, or ``--epochs NAME=N``; a model already in
``--save-dir`` with those epochs is reused), then for each core and kernel set compiled with
``edgedl.compile.compile_model`` (int8, ``--backend tflm``: the firmware is built and linked) and
benchmarked with ``edgedl.bench.harness.bench`` on the first ``--limit`` samples of the test split:
the firmware runs on QEMU's model of the core's board, which counts executed instructions exactly.
Instructions, flash, RAM and arena do not depend on training; accuracy does, so the float model's
accuracy (on the whole test split and on the same samples) is recorded beside the firmware's.
A model that does not fit a target, or any other failure, is recorded as data with its message.

Runtime on 2 x86-64 cores shared with other jobs: 1.5 to 5 minutes per compile and bench (the first
build for a core and kernel set compiles TFLite Micro: 2-5 minutes; reference kernels run some 70
instructions per MAC, about 1G an inference for the 12M-MAC models, hence --reference-limit), plus
training (about 25 minutes with the default epochs, nothing when reused from --save-dir).
results/mcu.json came from one invocation per model, run side by side in about 45 minutes (each
model's entry records its command line; runs of other models in the file are kept), on models trained
beforehand into /tmp/mcu_models by the same call this script makes (``train(name,
TrainOptions(epochs=N, seed=0))`` with the default epochs, then ``save``), hence reused_from_save_dir:

    python benchmarks/mcu.py --models lenet --save-dir /tmp/mcu_models
    python benchmarks/mcu.py --models ds_cnn --kernels cmsis_nn reference --reference-limit 10 \\
        --save-dir /tmp/mcu_models
    python benchmarks/mcu.py --models resnet8 --kernels cmsis_nn reference --reference-limit 10 \\
        --max-disagreement 0.1 --save-dir /tmp/mcu_models      # and the same for mobilenet_v1
    python benchmarks/mcu.py --summarize-only
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "mcu.json"

MODELS = ["lenet", "ds_cnn", "resnet8", "mobilenet_v1"]
CORES = ["cortex_m4", "cortex_m7", "cortex_m55"]
KERNELS = ["reference", "cmsis_nn"]
# A few epochs each, not the recipes' (lenet 12, ds_cnn 30, resnet8 100, mobilenet_v1 20): the counts,
# flash and RAM do not depend on training, accuracy does (the entries say how far each was trained).
DEFAULT_EPOCHS = {"lenet": 3, "ds_cnn": 10, "resnet8": 2, "mobilenet_v1": 2}

# MLPerf Tiny v1.0 inference, closed division, reference submission: TFLite Micro with CMSIS-NN on an
# STM32 Nucleo-L4R5ZI (Cortex-M4F at 120 MHz). Latency in ms of one inference.
MLPERF_TINY_M4 = {
    "board": "STM32 Nucleo-L4R5ZI (Cortex-M4F), 120 MHz, TFLite Micro with CMSIS-NN (MLPerf Tiny reference "
             "submission)",
    "clock_hz": 120_000_000,
    "benchmarks": {
        "keyword_spotting": {"latency_ms": 181.9, "model": "DS-CNN", "data": "Google Speech Commands v2, "
                             "49x10 MFCC, 12 classes", "model_kb_reported": 53, "macs_approx": 2_700_000},
        "image_classification": {"latency_ms": 704.0, "model": "ResNet-8", "data": "CIFAR-10, 32x32x3, 10 classes",
                                 "model_kb_reported": 96, "macs_approx": 12_500_000},
        "visual_wake_words": {"latency_ms": 600.0, "model": "MobileNetV1 0.25x", "data": "Visual Wake Words "
                              "(COCO persons), 96x96x3, 2 classes", "model_kb_reported": 325,
                              "macs_approx": 7_500_000},
        "anomaly_detection": {"latency_ms": 10.05, "model": "FC autoencoder", "data": "ToyADMOS, 640 inputs",
                              "model_kb_reported": 270, "macs_approx": 264_000},
    },
    "sizes_source": ("approximate sizes of MLPerf Tiny's reference models, quoted, not measured here: model sizes "
                     "(53, 96, 325 and 270 KB) as reported for v0.5 (Linley Newsletter, 'MLPerf Gets Tiny', Aug 2021), "
                     "MACs as in Banbury et al., 'MLPerf Tiny Benchmark', 2021, Table 1 (not re-checked in this run)"),
}
# Our zoo models that stand beside an MLPerf Tiny benchmark (same architecture family, other data).
COMPARABLE = {"ds_cnn": "keyword_spotting", "resnet8": "image_classification"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--cores", nargs="+", default=CORES, help="targets (targets/*.toml) of the cores to build for")
    p.add_argument("--kernels", nargs="+", default=KERNELS, choices=KERNELS)
    p.add_argument("--limit", type=int, default=100, help="test samples the firmware scores (default 100)")
    p.add_argument("--reference-limit", type=int, default=None,
                   help="fewer test samples for the reference kernels (some 70 instructions per MAC: a 13M-MAC "
                        "model takes about 1G instructions an inference, minutes per 100 samples on the emulator); "
                        "default: --limit")
    p.add_argument("--epochs", nargs="*", default=[], metavar="NAME=N",
                   help="override the training epochs of a model (defaults: "
                        + ", ".join(f"{k}={v}" for k, v in DEFAULT_EPOCHS.items()) + ")")
    p.add_argument("--save-dir", help="keep the trained .keras models here, and reuse those trained with the same "
                                      "epochs (not in the repository)")
    p.add_argument("--max-disagreement", type=float, default=0.02,
                   help="compile's bound on the int8 model's top-1 disagreement with the float model (its default "
                        "0.02; a briefly trained model with flat outputs may need more, and the run records it)")
    p.add_argument("--num-samples", type=int, default=100, help="samples compile calibrates and checks on")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one inference on the emulator may take")
    p.add_argument("-o", "--output", default=str(RESULTS))
    p.add_argument("--summarize-only", action="store_true",
                   help="recompute the comparison and summary of the -o file from its runs, run nothing")
    args = p.parse_args(argv)
    if args.summarize_only:
        results = json.loads(Path(args.output).read_text())
        results["mlperf_tiny_comparison"] = comparison(results)
        results["summary"] = summary(results)
        write(Path(args.output), results)
        return
    epochs = dict(DEFAULT_EPOCHS)
    for item in args.epochs:
        name, sep, n = item.partition("=")
        if not sep or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"--epochs takes NAME=N with N a positive integer, got '{item}'")
        epochs[name] = int(n)

    out = Path(args.output)
    results = json.loads(out.read_text()) if out.exists() else {}  # entries of models not run now are kept
    results.update(about(args, argv))
    results.setdefault("models", {})
    results.setdefault("runs", [])
    save_dir = Path(args.save_dir) if args.save_dir else Path(tempfile.mkdtemp(prefix="edgedl-mcu-models-"))
    for name in args.models:
        model_path, trained = trained_model(name, epochs.get(name), save_dir)
        trained["command"] = results["command"]  # runs of several invocations: each model says which
        results["models"][name] = trained
        for core in args.cores:
            for kernels in args.kernels:
                run = measure(name, model_path, core, kernels, args)
                if run.get("model_facts") and "macs" not in results["models"][name]:
                    results["models"][name].update(run.pop("model_facts"))
                run.pop("model_facts", None)
                results = merge(out, results, name, run)
                write(out, results)
                print(line(run), flush=True)


def merge(out: Path, results: dict, name: str, run: dict) -> dict:
    """``results`` with ``run`` in it, over what the file holds now: another invocation (other models)
    may have written it since this one started."""
    on_disk = json.loads(out.read_text()) if out.exists() else {}
    merged = {**on_disk, **{k: v for k, v in results.items() if k not in ("models", "runs")}}
    merged["models"] = {**on_disk.get("models", {}), name: results["models"][name]}
    key = (run["model"], run["target"], run["kernels"])
    mine = [r for r in results["runs"] if r["model"] == name and (r["model"], r["target"], r["kernels"]) != key]
    theirs = [r for r in on_disk.get("runs", []) if r["model"] != name]
    merged["runs"] = theirs + mine + [run]
    merged["mlperf_tiny_comparison"] = comparison(merged)
    merged["summary"] = summary(merged)
    return merged


def about(args, argv) -> dict:
    return {
        "question": "instructions per inference, flash, RAM, arena and accuracy of the zoo's int8 models as TFLite "
                    "Micro firmware on Cortex-M4, M7 and M55 (reference and CMSIS-NN kernels), run on QEMU's "
                    "emulated boards, beside MLPerf Tiny's published Cortex-M4 results",
        "command": "python benchmarks/mcu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores (shared with other jobs)",
        "date": time.strftime("%Y-%m-%d"),
        "settings": {"limit": args.limit, "reference_limit": args.reference_limit or args.limit,
                     "num_samples": args.num_samples, "quantize": "int8",
                     "samples": f"the first {args.limit} samples of each data set's test split (the first "
                                f"{args.reference_limit or args.limit} with reference kernels; each run's "
                                "'samples' says how many it scored)"},
        "how_measured": (
            "edgedl compile (int8, tflm backend) builds the firmware with arm-none-eabi-gcc; edgedl bench runs it "
            "on qemu-system-arm with -icount shift=0 (cortex_m4: mps2-an386, cortex_m7: mps2-an500, cortex_m55: "
            "mps3-an547), where the SysTick counts executed instructions exactly and repeatably. instructions is "
            "the median over the samples; estimated_latency_ms is instructions x the core's stated cycles per "
            "instruction / the target's clock (targets/*.toml): an estimate, not a measured time. flash_bytes is "
            "text + data and ram_bytes data + bss (tensor arena, stack and heap included) of the linked ELF; "
            "arena_used_bytes is what TFLite Micro's allocator used on the device. accuracy is computed from the "
            "firmware's outputs; float_accuracy_same_samples is the trained Keras model on the same samples; "
            "top1_agreement_vs_reference_kernels compares the firmware with LiteRT's reference kernels on the "
            "same integer inputs"),
        "mlperf_tiny_m4": MLPERF_TINY_M4,
    }


def trained_model(name: str, num_epochs: int | None, save_dir: Path) -> tuple[Path, dict]:
    """(the .keras file, what its training recorded): reused from ``save_dir`` when trained with the
    same epochs, else trained now and saved there."""
    from edgedl.train import TrainOptions, train
    from edgedl.zoo import get_model

    path = save_dir / f"{name}.keras"
    metrics_path = path.with_suffix(".json")
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() and path.is_file() else None
    reused = metrics is not None and (num_epochs is None or metrics.get("epochs") == num_epochs)
    if not reused:
        r = train(name, TrainOptions(epochs=num_epochs, seed=0), progress=sys.stderr.isatty())
        save_dir.mkdir(parents=True, exist_ok=True)
        r.save(path)
        metrics = r.metrics
    recipe = get_model(name).recipe
    return path, {
        "dataset": metrics["dataset"], "split": metrics["split"], "epochs": metrics["epochs"],
        "recipe_epochs": recipe["epochs"], "seed": metrics["seed"], "num_train": metrics["num_train"],
        "num_test": metrics["num_test"], "float_accuracy": metrics["accuracy"],
        "recipe_target_accuracy": recipe.get("target_accuracy"), "train_wall_time_s": metrics["train_wall_time_s"],
        "num_params_keras": metrics.get("num_params"), "reused_from_save_dir": reused,
        "note": (f"trained {metrics['epochs']} epochs of the recipe's {recipe['epochs']}: accuracy is below what the "
                 "recipe reaches; instructions, flash and RAM do not depend on training"),
    }


def measure(name: str, model_path: Path, core: str, kernels: str, args) -> dict:
    """One compile and bench of the model's int8 firmware for a core and kernel set; failures as data."""
    from edgedl.bench.harness import bench
    from edgedl.bench.options import BenchOptions
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.errors import EdgeDLError
    from edgedl.graph import read_tflite

    run = {"model": name, "target": core, "kernels": kernels, "status": None,
           "compile_max_disagreement": args.max_disagreement}
    with tempfile.TemporaryDirectory(prefix="edgedl-mcu-") as tmp:
        bundle_dir = Path(tmp) / f"{name}_{core}_{kernels}.edgedl"
        start = time.perf_counter()
        try:
            bundle = compile_model(str(model_path), core, str(bundle_dir),
                                   CompileOptions(quantize="int8", backend="tflm", kernels=kernels,
                                                  num_samples=args.num_samples,
                                                  max_disagreement=args.max_disagreement))
        except EdgeDLError as e:
            run.update(status="refused" if "does not fit" in str(e) else "compile_error",
                       compile_s=round(time.perf_counter() - start, 1), error=f"{type(e).__name__}: {e}")
            return run
        run["compile_s"] = round(time.perf_counter() - start, 1)
        manifest = bundle.manifest
        firmware = (manifest.get("estimates") or {}).get("firmware") or {}
        graph = read_tflite(bundle_dir / manifest["runtime"]["model"])
        run["model_facts"] = {"int8_model_bytes": (manifest.get("estimates") or {}).get("model_bytes"),
                              "macs": int(graph.macs), "num_params": int(graph.num_params),
                              "input_shape": manifest["inputs"][0]["shape"],
                              "operators": sorted(graph.op_counts)}
        run["firmware"] = {k: firmware.get(k) for k in ("built", "reason", "board", "text_bytes", "data_bytes",
                                                         "bss_bytes", "build_seconds", "library_compiled")}
        compile_fidelity = manifest.get("fidelity") or {}
        run["compile_check"] = {k: v for k, v in compile_fidelity.items() if not isinstance(v, (dict, list))}
        if not firmware.get("built"):
            run.update(status="no_firmware", error=firmware.get("reason"))
            return run
        start = time.perf_counter()
        try:
            limit = args.reference_limit if kernels == "reference" and args.reference_limit else args.limit
            data = bench(str(bundle_dir), BenchOptions(limit=limit, reference=str(model_path),
                                                       timeout=args.timeout)).data
        except EdgeDLError as e:
            run.update(status="bench_error", bench_s=round(time.perf_counter() - start, 1),
                       error=f"{type(e).__name__}: {e}")
            return run
        run["bench_s"] = round(time.perf_counter() - start, 1)
    mcu, acc = data["mcu"], data.get("accuracy") or {}
    fidelity = mcu.get("fidelity") or {}
    run.update(
        status="ok", board=mcu["board"], emulated=mcu["emulated"], device=data["device"],
        instructions=mcu["instructions"], instructions_range=mcu["instructions_range"],
        instructions_per_mac=round(mcu["instructions"] / graph.macs, 2) if graph.macs else None,
        estimated_latency_ms=round(mcu["estimated_latency_ms"], 3), clock_hz=mcu["clock_hz"],
        cycles_per_instruction=mcu["cycles_per_instruction"], latency_basis=mcu["latency_basis"],
        flash_bytes=mcu["flash_bytes"], ram_bytes=mcu["ram_bytes"], arena_bytes=mcu["arena_bytes"],
        arena_used_bytes=mcu["arena_used_bytes"],
        samples=acc.get("samples"), dataset=acc.get("dataset"), split=acc.get("split"),
        accuracy=acc.get("accuracy"), float_accuracy_same_samples=acc.get("reference_accuracy"),
        top1_agreement_vs_float=acc.get("reference_agreement"),
        top1_agreement_vs_reference_kernels=fidelity.get("top1_agreement"),
        identical_outputs_vs_reference_kernels=fidelity.get("identical_share"),
        max_step_difference_vs_reference_kernels=fidelity.get("max_step_difference"),
        max_abs_difference_vs_reference_kernels=fidelity.get("max_abs_difference"),
        identical_outputs_vs_tflm_interpreter=(fidelity.get("tflm_interpreter") or {}).get("identical_share"),
        operators=[{k: (round(v, 4) if k == "share" else v) for k, v in op.items()} for op in mcu["operators"]],
    )
    return run


def comparison(results: dict) -> dict:
    """MLPerf Tiny's Cortex-M4 latencies as instructions (at its 120 MHz and our stated CPI), beside our
    comparable zoo models' counts on the Cortex-M4 with CMSIS-NN kernels (as MLPerf's reference
    submission ran) and what those counts would take at 120 MHz."""
    from edgedl.mcu.boards import board_for

    m4 = board_for("cortex_m4")
    clock = MLPERF_TINY_M4["clock_hz"]
    out = {"assumption": (f"an MLPerf Tiny latency becomes instructions as latency x {clock / 1e6:g} MHz / "
                          f"{m4.cycles_per_instruction:g} cycles per instruction (edgedl's stated Cortex-M4 CPI, an "
                          "assumption: QEMU counts instructions, not cycles; a real board adds flash wait states); "
                          "our counts become ms the other way round. The models differ: see 'differences'. "
                          "implied_cycles_per_instruction is MLPerf's cycles per MAC (latency x 120 MHz / its "
                          "MACs) over our CMSIS-NN instructions per MAC on the Cortex-M4: the CPI at which our "
                          "firmware would match MLPerf's board if both did the same work per MAC"),
           "cycles_per_instruction": m4.cycles_per_instruction, "clock_hz": clock, "pairs": {}}
    for ours, bench_name in COMPARABLE.items():
        ref = MLPERF_TINY_M4["benchmarks"][bench_name]
        pair = {"mlperf_benchmark": bench_name, "mlperf_latency_ms": ref["latency_ms"],
                "mlperf_instructions_implied": round(ref["latency_ms"] * 1e-3 * clock / m4.cycles_per_instruction),
                "mlperf_macs_approx": ref["macs_approx"], "mlperf_model_kb_reported": ref["model_kb_reported"]}
        facts = (results["models"].get(ours) or {})
        pair["ours"] = {"model": ours, "dataset": facts.get("dataset"), "input_shape": facts.get("input_shape"),
                        "macs": facts.get("macs"), "num_params": facts.get("num_params"),
                        "int8_model_bytes": facts.get("int8_model_bytes")}
        pair["mlperf_instructions_implied_per_mac"] = round(pair["mlperf_instructions_implied"] / ref["macs_approx"], 2)
        for run in results["runs"]:
            if run["model"] == ours and run["target"] == "cortex_m4" and run["status"] == "ok":
                ms = run["instructions"] * m4.cycles_per_instruction / clock * 1e3
                pair["ours"][f"instructions_{run['kernels']}"] = run["instructions"]
                pair["ours"][f"ms_at_120_mhz_{run['kernels']}"] = round(ms, 2)
                pair["ours"][f"instructions_per_mac_{run['kernels']}"] = run.get("instructions_per_mac")
                if run["kernels"] == "cmsis_nn" and run.get("instructions_per_mac"):
                    # MLPerf's board cycles per MAC over our instructions per MAC: the CPI at which the same
                    # work per MAC would take MLPerf's time (a calibration of the stated CPI, roughly)
                    cycles_per_mac = ref["latency_ms"] * 1e-3 * clock / ref["macs_approx"]
                    pair["implied_cycles_per_instruction"] = round(cycles_per_mac / run["instructions_per_mac"], 2)
        pair["differences"] = differences(ours, facts, ref)
        out["pairs"][ours] = pair
    return out


def differences(ours: str, facts: dict, ref: dict) -> str:
    """How our model and MLPerf Tiny's differ, in one sentence for the JSON."""
    size = f"ours: {facts.get('dataset')}"
    if facts.get("macs"):
        size += (f", input {facts.get('input_shape')}, {facts.get('num_params'):,} parameters, {facts['macs']:,} "
                 f"MACs, int8 model {(facts.get('int8_model_bytes') or 0) / 1000:.0f} KB")
    theirs = (f"MLPerf's: {ref['data']}, about {ref['macs_approx'] / 1e6:.1f}M MACs, int8 model about "
              f"{ref['model_kb_reported']} KB")
    what = {"ds_cnn": "the zoo's DS-CNN classifies FSDD's spoken digits (10 classes) from a larger input, not "
                      "Speech Commands' 12 keywords from 49x10 MFCCs, and does about 5x MLPerf's MACs",
            "resnet8": "the zoo's ResNet-8 takes the same CIFAR-10 inputs and has about the same MACs as MLPerf's, "
                       "but is not MLPerf's trained model: it is trained here for a few epochs (accuracy far below "
                       "MLPerf's 85% target; the instruction count does not depend on it) and quantized by "
                       "edgedl"}[ours]
    return f"{what}; {size}; {theirs}. Compare instructions per MAC rather than milliseconds."


def summary(results: dict) -> dict:
    """Per model, core and kernel set: the figures the README table shows; per core, the median over
    models of reference/CMSIS-NN instruction ratios."""
    rows = {}
    for r in results["runs"]:
        key = f"{r['model']} {r['target']} {r['kernels']}"
        rows[key] = ({"instructions": r["instructions"], "estimated_latency_ms": r["estimated_latency_ms"],
                      "flash_kib": round(r["flash_bytes"] / 1024, 1), "ram_kib": round(r["ram_bytes"] / 1024, 1),
                      "arena_used_kib": round(r["arena_used_bytes"] / 1024, 1), "accuracy": r["accuracy"],
                      "float_accuracy_same_samples": r["float_accuracy_same_samples"],
                      "top1_agreement_vs_reference_kernels": r["top1_agreement_vs_reference_kernels"]}
                     if r["status"] == "ok" else {"status": r["status"], "error": (r.get("error") or "")[:300]})
    speedups = {}
    for core in sorted({r["target"] for r in results["runs"]}):
        ratios = []
        for model in sorted({r["model"] for r in results["runs"]}):
            ref = [r for r in results["runs"] if (r["model"], r["target"], r["kernels"], r["status"])
                   == (model, core, "reference", "ok")]
            opt = [r for r in results["runs"] if (r["model"], r["target"], r["kernels"], r["status"])
                   == (model, core, "cmsis_nn", "ok")]
            if ref and opt:
                ratios.append(ref[0]["instructions"] / opt[0]["instructions"])
        if ratios:
            speedups[core] = {"median_reference_over_cmsis_nn_instructions": round(statistics.median(ratios), 2),
                              "models": len(ratios)}
    return {"runs": rows, "cmsis_nn_speedup": speedups}


def line(run: dict) -> str:
    head = f"{run['model']:>12} {run['target']:>10} {run['kernels']:>9}:"
    if run["status"] != "ok":
        return f"{head} {run['status']}: {(run.get('error') or '')[:200]}"
    return (f"{head} {run['instructions']:>12,} instr, est. {run['estimated_latency_ms']:.1f} ms, "
            f"flash {run['flash_bytes'] / 1024:.0f} KiB, RAM {run['ram_bytes'] / 1024:.0f} KiB, "
            f"acc {run['accuracy']:.2f} (float {run['float_accuracy_same_samples']:.2f}), "
            f"compile {run['compile_s']:.0f} s, bench {run['bench_s']:.0f} s")


def write(path: Path, results: dict) -> None:
    from edgedl import _io

    _io.write_json(path, results)


if __name__ == "__main__":
    main()
