"""Inside the zoo's int8 models: which layers lose the precision, and what ``--max-drop`` keeps in float32
to win it back, at what size and LiteRT latency. Writes benchmarks/results/quant_inside.json.

    EDGEDL_DATA=../shared/data python benchmarks/quant_inside.py [--models lenet ds_cnn resnet8 mobilenet_v1] \\
        [--max-drop 0.001] [--limit 2000] [--repeats 7] [--save-dir /tmp/mcu_models] [-o FILE]

For each model (trained as ``benchmarks/mcu.py`` trains it, a few epochs of its recipe, or reused from
``--save-dir`` where that run left it), three runs of ``edgedl.optimize.optimize`` on the first
``--limit`` samples of each split (the test split for accuracy, the training split for the 200
calibration samples), and each layer's own error:

- ``edgedl optimize MODEL -q int8 --quant-report``: the TensorFlow Lite converter's int8 model, its
  accuracy against the float32 ``.tflite``'s, and its five worst layers (SNR, cosine, RMSE over the
  float range: the error accumulated up to each layer's output, on 100 test samples);
- each layer's own error (``edgedl.optimize.selective.layer_sensitivity``: the layer quantized alone,
  on float inputs), the five worst with their accumulated SNR beside them;
- ``edgedl optimize MODEL -q int8 --max-drop 0.001 --quant-report`` (0.001 = 0.1 points: compile's and
  optimize's unit is a fraction): the AI Edge Quantizer's int8 model, each step's accuracy and size,
  the own-error ranking it returns layers to float32 by (when a step misses the bound), what it
  kept, and the five worst layers of the model that ships;
- ``edgedl optimize MODEL -q int8 --keep-float L1 --keep-float L2 --keep-float L3``, the three layers
  with the largest own error: what keeping layers in float32 costs in accuracy, size and latency,
  whether or not the bound needed it.

Then the float32, the converter's int8, the --max-drop and the three-kept ``.tflite`` are timed on
LiteRT (one thread, batch 1, a zero input, 200 runs after 20 warm-up per repeat, the four models
interleaved within each repeat, median of ``--repeats``), with the XNNPACK delegate (LiteRT's
default) and with LiteRT's built-in kernels: the ratios are within one run, on the host the JSON
records. About 5 minutes for the four models on 2 busy x86-64 cores, the models trained already.
Accuracy differences on a few hundred test samples are coarse (one sample of 300 is 0.33 points): each
accuracy carries its sample count and a 95% Wilson interval. Entries of models not run are kept.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "results" / "quant_inside.json"
MODELS = ["lenet", "ds_cnn", "resnet8", "mobilenet_v1"]
WORST = 5
SENSITIVITY_METHOD = ("each layer quantized alone by the AI Edge Quantizer "
                      "(edgedl.optimize.selective.layer_sensitivity), "
                      "its output against the float32 model's on 100 test samples")


def main(argv=None):
    from mcu import DEFAULT_EPOCHS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS, help="zoo names (%(default)s)")
    p.add_argument("--max-drop", type=float, default=0.001,
                   help="accuracy drop a fraction (0.001 = 0.1 points) (%(default)s)")
    p.add_argument("--limit", type=int, default=2000, help="at most this many samples per split (%(default)s)")
    p.add_argument("--repeats", type=int, default=7, help="latency repeats, median taken (%(default)s)")
    p.add_argument("--save-dir", default="/tmp/mcu_models",
                   help="trained .keras models, reused when trained with the same epochs (%(default)s)")
    p.add_argument("-o", "--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)

    from edgedl import _io

    command = "python benchmarks/quant_inside.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    for name in args.models:
        start = time.perf_counter()
        entry = measure(name, DEFAULT_EPOCHS.get(name), args)
        entry.update(command=command, wall_time_s=round(time.perf_counter() - start, 1), date=time.strftime("%Y-%m-%d"))
        results = json.loads(out.read_text()) if out.is_file() else {"models": {}}  # re-read: runs may overlap
        results["models"][name] = entry
        results["about"] = __doc__.split("\n\n")[0].replace("\n", " ")
        _io.write_json(out, results)
        print(summary_line(name, entry), flush=True)
    print(f"wrote {out}")


def measure(name: str, epochs: int | None, args) -> dict:
    from mcu import trained_model
    from optimize import host

    from edgedl.convert import to_tflite
    from edgedl.optimize import OptimizeOptions, optimize

    model_path, trained = trained_model(name, epochs, Path(args.save_dir))
    common = dict(quantize="int8", quant_report=True, limit=args.limit, seed=0)
    t = time.perf_counter()
    plain = optimize(str(model_path), OptimizeOptions(**common), progress=False)
    plain_s = time.perf_counter() - t
    t = time.perf_counter()
    chosen = optimize(str(model_path), OptimizeOptions(**common, max_drop=args.max_drop), progress=False)
    selective_s = time.perf_counter() - t
    sel = chosen.selective
    float_tflite = to_tflite(plain.model)  # what both runs compare with: the float32 .tflite, names kept
    own = own_errors(plain, float_tflite, args)
    worst3 = tuple(r["layer"] for r in own[:3])  # what keeping layers in float32 costs, whatever --max-drop needed
    kept3 = optimize(str(model_path), OptimizeOptions(quantize="int8", keep_float=worst3, limit=args.limit, seed=0),
                     progress=False)
    int8_row, sel_row = plain.stage("int8"), chosen.stage("selective")
    num_test = plain.data["num_test"]
    models = {"float32": float_tflite, "int8": plain.tflite, "selective": chosen.tflite, "keep_worst3": kept3.tflite}
    latency = {kernels: latencies(models, args.repeats, kernels) for kernels in ("xnnpack", "builtin")}
    flags = ["-q", "int8", "--quant-report", "--limit", str(args.limit)]
    return {
        "training": trained,
        "data": plain.data,
        "commands": {"int8": " ".join(["edgedl", "optimize", str(model_path), *flags, "-o", "OUT"]),
                     "selective": " ".join(["edgedl", "optimize", str(model_path), *flags, "--max-drop",
                                            f"{args.max_drop:g}", "-o", "OUT"])},
        "accuracy": {
            "float32_tflite": _acc(sel["float_accuracy"], num_test),
            "int8_converter": _acc(int8_row.accuracy, num_test),
            "int8_ai_edge_quantizer": _acc(sel["steps"][0]["accuracy"], num_test),
            "selective": _acc(sel_row.accuracy, num_test),
            "int8_drop_points": round(100 * (sel["float_accuracy"] - int8_row.accuracy), 3),
            "selective_drop_points": round(100 * (sel["float_accuracy"] - sel_row.accuracy), 3),
        },
        "int8_worst_layers": _worst(plain.quant_report),
        "int8_layers": len(plain.quant_report["layers"]),
        "int8_worst_layers_own": own,
        "own_method": SENSITIVITY_METHOD,
        "quant_report_method": plain.quant_report["method"],
        "max_drop": {
            "fraction": args.max_drop, "points": round(100 * args.max_drop, 3), "met": sel["met"],
            "kept_float32": sel["keep_float"],
            "steps": [{k: s.get(k) for k in ("kept_float", "accuracy", "drop", "size_bytes", "worst_layer",
                                            "worst_snr_db")} for s in sel["steps"]],
            "ranking_by": sel["ranking"]["by"] if sel["ranking"] else None,
            "ranking_method": sel["ranking"]["method"] if sel["ranking"] else None,
            "ranking": ([{k: r[k] for k in ("layer", "op", "snr_db", "accumulated_snr_db")}
                         for r in sel["ranking"]["layers"]] if sel["ranking"] else None),
            "library": sel["library"],
            "selective_worst_layers": _worst(chosen.quant_report),
            "selective_quant_report_model": chosen.quant_report.get("model"),
        },
        "keep_worst3": {"kept_float32": list(worst3), "accuracy": _acc(kept3.stage("selective").accuracy, num_test),
                        "size_bytes": len(kept3.tflite),
                        "command": " ".join(["edgedl", "optimize", str(model_path), "-q", "int8", "--limit",
                                             str(args.limit), *(f"--keep-float {n}" for n in worst3), "-o", "OUT"])},
        "size_bytes": {"float32": len(float_tflite), "int8": len(plain.tflite), "selective": len(chosen.tflite),
                       "keep_worst3": len(kept3.tflite),
                       "selective_over_int8": round(len(chosen.tflite) / len(plain.tflite), 4),
                       "selective_over_float32": round(len(chosen.tflite) / len(float_tflite), 4)},
        "latency_us": latency,
        "run_time_s": {"int8_with_quant_report": round(plain_s, 1),
                       "max_drop_with_quant_report": round(selective_s, 1)},
        "versions": chosen.versions,
        "host": host(),
    }


def own_errors(plain, float_tflite: bytes, args) -> list[dict]:
    """The five layers with the largest own error (each quantized alone, ``layer_sensitivity``), on the
    run's calibration samples and test split, with each one's accumulated SNR in the converter's int8
    model beside it; --max-drop ranks by the first (it measures it only when a step misses the bound)."""
    from edgedl.data import load_dataset
    from edgedl.optimize.measure import calibration_samples
    from edgedl.optimize.selective import layer_sensitivity

    data = load_dataset(plain.data["dataset"], split=plain.data["split"], limit=args.limit, seed=0)
    calibration = calibration_samples(data.x_train, plain.data["num_calibration"], 0)
    accumulated = {r["layer"]: r["snr_db"] for r in plain.quant_report["layers"]}
    rows = layer_sensitivity(plain.model, float_tflite, "int8", [calibration], data.x_test)["layers"]
    return [{**{k: r[k] for k in ("layer", "op", "snr_db", "cosine", "rmse_rel")},
             "accumulated_snr_db": accumulated.get(r["layer"])} for r in rows[:WORST]]


def latencies(models: dict[str, bytes], repeats: int, kernels: str = "xnnpack") -> dict:
    """LiteRT p50 of each model, one thread, batch 1, interleaved within each repeat; median of the repeats,
    and each model's ratio to float32 and to int8. ``kernels``: ``xnnpack`` (LiteRT's default interpreter,
    the XNNPACK delegate) or ``builtin`` (LiteRT's own optimized kernels, no delegate)."""
    from edgedl.bench import measure_latency
    from edgedl.runtime.engines import LiteRTEngine

    with tempfile.TemporaryDirectory() as tmp:
        engines = {}
        for label, data in models.items():
            path = Path(tmp) / f"{label}.tflite"
            path.write_bytes(data)
            engine = LiteRTEngine(path, num_threads=1, kernels=kernels)
            spec = engine.inputs[0]
            engines[label] = (engine, np.zeros(spec.shape, dtype=spec.dtype))
        p50 = {label: [] for label in models}
        for _ in range(repeats):
            for label, (engine, x) in engines.items():
                p50[label].append(measure_latency(engine, x, warmup=20, runs=200)["p50_us"])
    median = {label: float(np.median(v)) for label, v in p50.items()}
    return {"p50_us": {k: round(v, 2) for k, v in median.items()},
            "over_float32": {k: round(v / median["float32"], 4) for k, v in median.items()},
            "over_int8": {k: round(v / median["int8"], 4) for k, v in median.items()},
            "repeats": repeats, "runs_per_repeat": 200, "warmup": 20, "threads": 1, "batch": 1,
            "engine": {"xnnpack": "LiteRT with the XNNPACK delegate (its default interpreter)",
                       "builtin": "LiteRT's built-in optimized kernels, no delegate"}[kernels]}


def _worst(quant: dict) -> list[dict]:
    return [{k: r[k] for k in ("layer", "op", "snr_db", "cosine", "rmse_rel")} for r in quant["layers"][:WORST]]


def _acc(value: float, n: int | None) -> dict:
    """An accuracy with its sample count and 95% Wilson interval."""
    if not n:
        return {"value": value}
    z, p = 1.96, value
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"value": value, "samples": n, "ci95": [round(centre - half, 4), round(centre + half, 4)]}


def summary_line(name: str, e: dict) -> str:
    a, m, lat = e["accuracy"], e["max_drop"], e["latency_us"]["xnnpack"]
    worst = ", ".join(f"{r['layer']} {r['snr_db']}" for r in e["int8_worst_layers"][:3])
    return (f"{name}: float32 {100 * a['float32_tflite']['value']:.2f}%, "
            f"int8 {100 * a['int8_converter']['value']:.2f}% "
            f"(worst: {worst} dB); --max-drop {m['fraction']:g} kept {m['kept_float32'] or 'nothing'} "
            f"({'met' if m['met'] else 'not met'}): {100 * a['selective']['value']:.2f}%, "
            f"{e['size_bytes']['selective_over_int8']}x int8 size, {lat['over_int8']['selective']}x int8 latency, "
            f"{lat['over_float32']['selective']}x float32")


if __name__ == "__main__":
    main()
