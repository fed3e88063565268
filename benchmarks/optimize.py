"""Measure what pruning and quantization do to the zoo models on real data; write JSON.

For each model: train it with its recipe (or fewer epochs, said in the JSON), then run the
measurements of the optimization issue through ``edgedl.optimize.optimize``:

- ``ptq``: int8 post-training quantization: accuracy drop (goal <= 0.5 points) and the int8
  .tflite size against float32 (goal <= 0.3x).
  ``ptq_stripped``: the same with intermediate tensor names stripped from both files (--strip-names).
  ``ptq_per_tensor_stripped``: stripped, and one weight scale per tensor instead of per channel
  (--per-tensor): on small models the per-channel scales and zero points are a third of the file.
  ``ptq_per_tensor_stripped_int8_io``: the same with int8 inputs and outputs (--io int8), which drops
  the float Quantize and Dequantize operators at the ends of the graph.
- ``qat``: quantization-aware training then int8: accuracy drop (goal <= 0.2 points) and whether it
  is at least as accurate as PTQ of the same model.
- ``prune80``: 80% unstructured sparsity in every layer, then int8: float accuracy drop (goal <= 1
  point) and the gzip'd int8 .tflite against the dense int8 .tflite (goal <= 1/3).
  ``prune80_global``: the same with one magnitude threshold over all layers (80% overall).
  ``prune80_erk``: the same at 80% on average, per-layer shares by the Erdos-Renyi-Kernel rule.
  ``prune80_erk_block4``: ERK at 80%, pruning runs of 4 weights along the input channels (contiguous in
  the .tflite, so the zeros gzip better).
- ``structured50``: 50% of channels removed: accuracy drop (goal <= 1.5 points) and LiteRT latency
  against the unpruned model (goal <= 0.6x), one thread, batch 1, median of repeats, both models
  measured in the same run, float32 and int8. ``structured50_keep_residual``: the same, but the
  channels residual adds join are kept whole (--structured-residual keep): only the insides of
  ResNet-8's blocks lose half their channels. ``structured50_distill`` and
  ``structured50_keep_residual_distill``: the same two, fine-tuned with --distill (the unpruned
  model as teacher). ``structured50_residual25_distill``: half the channels inside the blocks, a
  quarter of the residual stream's (--structured-residual 0.25), distilled: a point between the two.
  ``structured56_keep_residual_distill``: residual stream kept, 9/16 of the channels inside the blocks
  removed (ResNet-8: 16/32/64 -> 7/14/28), distilled: the smallest cut of the blocks alone that
  measured under 0.6x float32 latency (a 0.625 cut, 6/12/24 channels, measured slower).
  ``structured50_keep_residual_but_stage1_distill``: half the channels inside the blocks and half of
  the first stage's residual stream (--structured-residual keep --structured-layer conv0=0.5; ResNet-8:
  16/32/64 -> 8/32/64 residual, 8/16/32 inside), distilled: the 32x32 stage is where the time goes,
  and a conv's time follows its input channels, not its filters below 16 (benchmarks/conv_channels.py).
  ``structured50_keep_residual_but_stage1_distill_lr1``: the first-stage cut fine-tuned from the recipe's
  full learning rate (--lr-scale 1), not half of it.
  ``structured50_keep_residual_s3_inside16_distill_lr1``: residual stream kept, half the channels inside
  the blocks removed and three quarters inside the last one (--structured-layer s3_conv1=0.75; ResNet-8:
  8/16/16 inside), distilled from the full rate: the cut that spends the latency where the channels are
  most plentiful (0.57x float32 in a latency-only scan, 0.46x MACs).
  ``structured50_keep_residual_stem12_distill_lr1``: the same, but a quarter of the first stage's
  residual stream removed instead (--structured-layer conv0=0.25; ResNet-8: 12/32/64 residual, 8/16/32
  inside): the other cut of that scan at 0.58x.
  ``structured50_keep_residual_stem10_distill_lr1``: the same with three eighths of the first stage's
  residual stream removed (--structured-layer conv0=0.375; 10/32/64 residual, 8/16/32 inside), and
  ``structured50_keep_residual_stem12_s2inside12_distill_lr1``: the stem-12 cut with the second stage's
  inside cut to 12 (--structured-layer s2_conv1=0.625; 12/32/64 residual, 8/12/32 inside): the stem-12
  cut measured 0.601x trained, so these are its two nearest neighbours that a latency-only scan on the
  trained baseline put clearly under 0.6x (0.566x and 0.569x, stem-12 0.603x in the same scan).
  ``structured50_keep_residual_stem12_s1inside4_distill_lr1`` (12/32/64 residual, 4/16/32 inside),
  ``..._stem12_s1inside6_s2inside12_...`` (6/12/32 inside), ``..._stem10_s1inside6_...`` (10/32/64, 6/16/32)
  and ``..._stem10_s2inside12_...`` (10/32/64, 8/12/32): on an AMD EPYC host, where stem-12 scans at
  0.63x, the cuts that ``benchmarks/structured_scan.py`` puts at 0.57-0.59x float32.
  ``structured50_keep_residual_stem12_s1inside6_s2inside12_teacher_only_lr1``: that cut distilled from
  the teacher alone (--distill-alpha 0, no weight on the labels), since distillation gains most from long
  schedules that match the teacher's function (Beyer et al., "Knowledge distillation: A good teacher is
  patient and consistent", 2022).
  ``..._stem12_s1inside6_s2inside12_gradual_distill_lr1``: that cut with its channels masked a few more at a
  time over the first half of fine-tuning, then removed (--structured-schedule polynomial).
  ``..._stem12_s1inside6_s2inside14_distill_lr1``: the 6/12/32 cut with two more channels inside the
  second stage (6/14/32, --structured-layer s2_conv1=0.5625, 0.41x MACs): the widest neighbour the
  AMD EPYC scan still put under 0.6x float32 (0.596x).
  ``structured60_keep_residual_distill_lr1`` and ``structured60_keep_residual_align8_distill_lr1``: what
  --structured-align 8 does to accuracy. 60% inside the blocks keeps 6/13/26 channels; aligned to 8 it
  keeps 8/16/32, which a latency scan put at the same int8 time (benchmarks/structured_align.py).

Each entry records the command that produced it. Results merge into the JSON file by
(model, measurement, fine-tuning epochs, --seed), so models can be run one at a time, and a longer
run of a cut, or another seed of it, sits beside the first.

    EDGEDL_DATA=/work/shared/data python benchmarks/optimize.py --models lenet,ds_cnn,cnn
    EDGEDL_DATA=/work/shared/data python benchmarks/optimize.py --models resnet8 --epochs 10
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "optimize.json"

MEASUREMENTS = {
    "lenet": ["ptq", "ptq_stripped", "ptq_per_tensor_stripped", "qat", "prune80", "prune80_global", "prune80_erk", "prune80_erk_block4", "structured50"],
    "ds_cnn": ["ptq", "ptq_stripped", "ptq_per_tensor_stripped", "ptq_per_tensor_stripped_int8_io", "qat", "prune80", "prune80_global", "prune80_erk", "prune80_erk_block4", "structured50"],
    "cnn": ["ptq", "ptq_stripped", "structured50"],
    "resnet8": ["ptq", "ptq_stripped", "ptq_per_tensor_stripped", "structured50", "structured50_keep_residual"],
}
GOALS = {
    "ptq_drop_points": 0.5, "qat_drop_points": 0.2, "int8_size_ratio": 0.3, "prune80_drop_points": 1.0,
    "prune80_gzip_ratio": 1 / 3, "structured50_latency_ratio": 0.6, "structured50_drop_points": 1.5,
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet,ds_cnn,cnn", help="comma-separated zoo names (%(default)s)")
    p.add_argument("--measurements",
                   help="comma-separated subset of " + ",".join(MEASURE))
    p.add_argument("--epochs", type=int, help="training epochs (default: each recipe's)")
    p.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs per stage (default: a quarter of the recipe's, at least 2000 steps)")
    p.add_argument("--limit", type=int, help="at most this many samples per split")
    p.add_argument("--data-dir", help="data directory (default: $EDGEDL_DATA)")
    p.add_argument("--seed", type=int, default=0,
                   help="fine-tuning seed (shuffling, augmentation, calibration samples): a second seed of a cut "
                        "sits beside the first in the JSON (%(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="latency repeats (median taken) (%(default)s)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "edgedl-bench-optimize"),
                   help="where trained models are kept between runs (%(default)s)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON to write (%(default)s)")
    args = p.parse_args(argv)

    from edgedl import _io

    command = "python benchmarks/optimize.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    for name in args.models.split(","):
        wanted = args.measurements.split(",") if args.measurements else MEASUREMENTS.get(name, ["ptq"])
        model_path, trained = trained_model(name, args)
        for what in wanted:
            start = time.perf_counter()
            entry = MEASURE[what](name, model_path, args)
            entry.update(model=name, measurement=what, seed=args.seed, command=command, training=trained,
                         wall_time_s=round(time.perf_counter() - start, 1), host=host())
            print(json.dumps(entry), flush=True)
            results = json.loads(out.read_text()) if out.is_file() else {"entries": []}  # re-read: runs may overlap
            # one entry per measurement, fine-tuning length and seed: a longer run of a cut does not hide the shorter
            results["entries"] = [e for e in results["entries"] if _key(e) != _key(entry)]
            results["entries"].append(entry)
            results["goals"] = GOALS
            results["host"] = host()
            _io.write_json(out, results)
    print(f"wrote {out}")


def _key(entry) -> tuple:
    return entry["model"], entry["measurement"], entry.get("finetune_epochs"), entry.get("seed", 0)


def trained_model(name, args):
    """Train ``name`` with its recipe (cached in --work by epochs and limit); path and training facts."""
    from edgedl.train import TrainOptions, train

    work = Path(args.work)
    tag = f"{name}-e{args.epochs or 'recipe'}-l{args.limit or 'all'}"
    path = work / f"{tag}.keras"
    if not path.is_file():
        result = train(name, TrainOptions(epochs=args.epochs, data_dir=args.data_dir, limit=args.limit),
                       progress=False)
        result.save(path)
    metrics = json.loads(path.with_suffix(".json").read_text())
    from edgedl import zoo

    recipe_epochs = zoo.get_model(name).recipe["epochs"]
    return str(path), {"dataset": metrics["dataset"], "epochs": metrics["epochs"], "recipe_epochs": recipe_epochs,
                       "full_recipe": metrics["epochs"] >= recipe_epochs and not args.limit,
                       "num_train": metrics["num_train"], "num_test": metrics["num_test"],
                       "accuracy": metrics["accuracy"], "train_wall_time_s": metrics["train_wall_time_s"]}


def run(model_path, args, **options):
    from edgedl.optimize import OptimizeOptions, optimize

    return optimize(model_path, OptimizeOptions(epochs=args.finetune_epochs, data_dir=args.data_dir, limit=args.limit,
                                                seed=args.seed, **options), progress=False)


def cli(model_path, args, *flags):
    parts = ["edgedl", "optimize", model_path, *flags, "--out", "OUT"]
    if args.finetune_epochs:
        parts += ["--epochs", str(args.finetune_epochs)]
    if args.limit:
        parts += ["--limit", str(args.limit)]
    if args.seed:
        parts += ["--seed", str(args.seed)]
    return " ".join(parts)


def points(a, b):
    return round(100 * (a - b), 3)


def byte_breakdown(tflite: bytes) -> dict | None:
    """Where a .tflite's bytes go: weight buffers, quantization parameters, tensor names, the rest.

    Quantization parameters are one float32 scale and one int64 zero point per tensor, or per
    output channel for per-channel weights and biases: on small models they rival the weights.
    """
    try:
        import tflite as schema  # the flatbuffer schema, from the tvm extra
    except ImportError:
        return None
    model = schema.Model.GetRootAsModel(tflite, 0)
    weights = sum(model.Buffers(i).DataLength() for i in range(model.BuffersLength()))
    quant = names = 0
    for g in range(model.SubgraphsLength()):
        sg = model.Subgraphs(g)
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            names += len(tensor.Name() or b"")
            q = tensor.Quantization()
            if q is not None:
                quant += 4 * (q.ScaleLength() + q.MinLength() + q.MaxLength()) + 8 * q.ZeroPointLength()
    return {"weights": weights, "quantization_params": quant, "tensor_names": names,
            "graph_and_padding": len(tflite) - weights - quant - names}


def buffer_bytes(tflite: bytes) -> int | None:
    """Bytes of a .tflite's data buffers (the weights)."""
    parts = byte_breakdown(tflite)
    return parts and parts["weights"]


def measure_ptq_stripped(name, model_path, args):
    return measure_ptq(name, model_path, args, strip_names=True)


def measure_ptq_per_tensor_stripped(name, model_path, args):
    return measure_ptq(name, model_path, args, per_channel=False, strip_names=True)


def measure_ptq_per_tensor_stripped_int8_io(name, model_path, args):
    return measure_ptq(name, model_path, args, per_channel=False, strip_names=True, io_type="int8")


def measure_ptq(name, model_path, args, per_channel=True, strip_names=False, io_type="float"):
    from edgedl.convert import to_tflite
    from edgedl.modelio import load_model

    r = run(model_path, args, quantize="int8", per_channel=per_channel, strip_names=strip_names, io_type=io_type)
    base, q = r.stage("baseline"), r.stage("int8")
    drop, ratio = points(base.accuracy, q.accuracy), round(q.size_bytes / base.size_bytes, 4)
    float_buffers, int8_buffers = buffer_bytes(to_tflite(load_model(model_path), "none")), buffer_bytes(r.tflite)
    flags = ["--quantize", "int8"] + (["--per-tensor"] if not per_channel else []) + (
        ["--strip-names"] if strip_names else []) + (["--io", io_type] if io_type != "float" else [])
    return {"equivalent_cli": cli(model_path, args, *flags), "per_channel": per_channel, "strip_names": strip_names,
            "io_type": io_type,
            "baseline_accuracy": base.accuracy, "int8_accuracy": q.accuracy, "drop_points": drop,
            "float32_tflite_bytes": base.size_bytes, "int8_tflite_bytes": q.size_bytes, "int8_size_ratio": ratio,
            "weight_buffers_bytes": {"float32": float_buffers, "int8": int8_buffers,
                                     "ratio": round(int8_buffers / float_buffers, 4) if float_buffers else None,
                                     "int8_non_weight_bytes": q.size_bytes - int8_buffers if int8_buffers else None},
            "int8_bytes_by_part": byte_breakdown(r.tflite),
            "goals": {"drop_points <= 0.5": drop <= GOALS["ptq_drop_points"],
                      "int8_size_ratio <= 0.3": ratio <= GOALS["int8_size_ratio"]}}


def measure_qat(name, model_path, args):
    r = run(model_path, args, qat=True)
    base, ptq, qat = r.stage("baseline"), r.stage("ptq"), r.stage("qat")
    drop = points(base.accuracy, qat.accuracy)
    return {"equivalent_cli": cli(model_path, args, "--qat"),
            "baseline_accuracy": base.accuracy, "ptq_int8_accuracy": ptq.accuracy,
            "qat_int8_accuracy": qat.accuracy, "qat_fake_quant_accuracy": qat.fake_quant_accuracy,
            "drop_points": drop, "ptq_drop_points": points(base.accuracy, ptq.accuracy),
            "finetune_epochs": r.finetuning["epochs"], "folded_batchnorm": len(r.qat["folded"]),
            "goals": {"drop_points <= 0.2": drop <= GOALS["qat_drop_points"],
                      "qat >= ptq": qat.accuracy >= ptq.accuracy}}


def measure_prune80_global(name, model_path, args):
    return measure_prune80(name, model_path, args, scope="global")


def measure_prune80_erk(name, model_path, args):
    return measure_prune80(name, model_path, args, scope="erk")


def measure_prune80_erk_block4(name, model_path, args):
    return measure_prune80(name, model_path, args, scope="erk", block=4)


def measure_prune80(name, model_path, args, scope="layer", block=1):
    from edgedl.convert import to_tflite
    from edgedl.modelio import load_model
    from edgedl.optimize import metrics
    from edgedl.optimize.measure import calibration_samples
    from edgedl.data import load_dataset

    from edgedl.optimize import PruneSpec

    r = run(model_path, args, prune=PruneSpec(0.8, scope=scope, block=block), quantize="int8")
    base, pruned, q = r.stage("baseline"), r.stage("pruned"), r.stage("int8")
    # The dense int8 model, calibrated on the same samples the pipeline uses.
    data = load_dataset(r.data["dataset"], data_dir=args.data_dir, split=r.data["split"], limit=args.limit)
    dense = metrics.sizes(to_tflite(load_model(model_path), "int8", calibration_samples(data.x_train, 200, 0)))
    drop = points(base.accuracy, pruned.accuracy)
    ratio = round(q.gzip_bytes / dense["size_bytes"], 4)
    flags = ["--prune", "0.8", "--quantize", "int8"] + (["--prune-scope", scope] if scope != "layer" else []) + (
        ["--prune-block", str(block)] if block > 1 else [])
    return {"equivalent_cli": cli(model_path, args, *flags), "scope": scope, "block": block,
            "baseline_accuracy": base.accuracy, "pruned_float_accuracy": pruned.accuracy,
            "pruned_int8_accuracy": q.accuracy, "drop_points": drop,
            "int8_drop_points": points(base.accuracy, q.accuracy), "sparsity": pruned.sparsity,
            "per_layer_sparsity": {row["layer"]: row["sparsity"] for row in r.pruned_layers},
            "not_pruned": r.skipped_layers,
            "dense_int8_bytes": dense["size_bytes"], "dense_int8_gzip_bytes": dense["gzip_bytes"],
            "pruned_int8_bytes": q.size_bytes, "pruned_int8_gzip_bytes": q.gzip_bytes,
            "gzip_ratio_vs_dense_int8": ratio,
            "gzip_ratio_vs_dense_int8_gzip": round(q.gzip_bytes / dense["gzip_bytes"], 4),
            "finetune_epochs": r.finetuning["epochs"],
            "goals": {"drop_points <= 1": drop <= GOALS["prune80_drop_points"],
                      "gzip'd pruned int8 <= 1/3 dense int8": ratio <= GOALS["prune80_gzip_ratio"]}}


# The structured cuts, as data: measurement name -> options of measure_structured50. ``layers`` sets the
# share removed from the group one layer produces (--structured-layer); the module docstring says why
# each cut was measured. ResNet-8's layer names: conv0 (the stem, the first stage's residual stream),
# s1_conv1 / s2_conv1 / s3_conv1 (the inside of each stage's block).
_KEEP = {"residual": "keep", "distill": True}
_STEM12 = ("conv0", 0.25)
STRUCTURED = {
    "structured50": {},
    "structured50_keep_residual": {"residual": "keep"},
    "structured50_distill": {"distill": True},
    "structured50_keep_residual_distill": _KEEP,
    "structured50_residual25_distill": {"residual": 0.25, "distill": True},
    "structured56_keep_residual_distill": {**_KEEP, "ratio": 0.5625},
    "structured50_keep_residual_but_stage1_distill": {**_KEEP, "layers": (("conv0", 0.5),)},
    "structured50_keep_residual_but_stage1_distill_lr1": {**_KEEP, "layers": (("conv0", 0.5),), "lr_scale": 1.0},
    "structured50_keep_residual_s3_inside16_distill_lr1": {**_KEEP, "layers": (("s3_conv1", 0.75),), "lr_scale": 1.0},
    "structured50_keep_residual_stem12_distill_lr1": {**_KEEP, "layers": (_STEM12,), "lr_scale": 1.0},
    "structured50_keep_residual_stem10_distill_lr1": {**_KEEP, "layers": (("conv0", 0.375),), "lr_scale": 1.0},
    "structured50_keep_residual_stem12_s2inside12_distill_lr1":
        {**_KEEP, "layers": (_STEM12, ("s2_conv1", 0.625)), "lr_scale": 1.0},
    # Four cuts a float32 latency scan put at 0.57-0.59x on an AMD EPYC host where stem-12 scans at 0.63x
    # (python benchmarks/structured_scan.py): the first stage's inside cut further, or the stem to 10.
    "structured50_keep_residual_stem12_s1inside4_distill_lr1":
        {**_KEEP, "layers": (_STEM12, ("s1_conv1", 0.75)), "lr_scale": 1.0},
    "structured50_keep_residual_stem12_s1inside6_s2inside12_distill_lr1":
        {**_KEEP, "layers": (_STEM12, ("s1_conv1", 0.625), ("s2_conv1", 0.625)), "lr_scale": 1.0},
    # The 6/12 cut with two more channels inside the second stage (6/14/32): scanned at 0.596x float32
    "structured50_keep_residual_stem12_s1inside6_s2inside14_distill_lr1":
        {**_KEEP, "layers": (_STEM12, ("s1_conv1", 0.625), ("s2_conv1", 0.5625)), "lr_scale": 1.0},
    "structured50_keep_residual_stem10_s1inside6_distill_lr1":
        {**_KEEP, "layers": (("conv0", 0.375), ("s1_conv1", 0.625)), "lr_scale": 1.0},
    "structured50_keep_residual_stem10_s2inside12_distill_lr1":
        {**_KEEP, "layers": (("conv0", 0.375), ("s2_conv1", 0.625)), "lr_scale": 1.0},
    "structured50_keep_residual_stem12_s1inside6_s2inside12_teacher_only_lr1":
        {**_KEEP, "layers": (_STEM12, ("s1_conv1", 0.625), ("s2_conv1", 0.625)), "lr_scale": 1.0, "distill_alpha": 0.0},
    # The same cut, its channels masked gradually over the first half of fine-tuning (--structured-schedule polynomial)
    "structured50_keep_residual_stem12_s1inside6_s2inside12_gradual_distill_lr1":
        {**_KEEP, "layers": (_STEM12, ("s1_conv1", 0.625), ("s2_conv1", 0.625)), "lr_scale": 1.0,
         "schedule": "polynomial"},
    # What --structured-align 8 buys in accuracy (its int8 cost is nothing: benchmarks/structured_align.py)
    "structured60_keep_residual_distill_lr1": {**_KEEP, "ratio": 0.6, "lr_scale": 1.0},
    "structured60_keep_residual_align8_distill_lr1": {**_KEEP, "ratio": 0.6, "lr_scale": 1.0, "align": 8},
}


def measure_structured50(name, model_path, args, residual="prune", distill=False, ratio=0.5, layers=(), lr_scale=None,
                         distill_alpha=None, schedule="oneshot", align=1):
    from edgedl import _io
    from edgedl.convert import to_tflite
    from edgedl.modelio import load_model
    from edgedl.optimize import StructuredSpec
    from edgedl.optimize.measure import calibration_samples
    from edgedl.data import load_dataset

    r = run(model_path, args, structured=StructuredSpec(ratio, residual=residual, layers=layers, align=align,
                                                        schedule=schedule),
            quantize="int8", distill=distill,
            distill_alpha=distill_alpha, lr_scale=lr_scale)
    base, small, q = r.stage("baseline"), r.stage("structured"), r.stage("int8")
    data = load_dataset(r.data["dataset"], data_dir=args.data_dir, split=r.data["split"], limit=args.limit)
    calibration = calibration_samples(data.x_train, 200, 0)
    original = load_model(model_path)
    models = {
        "float32": (to_tflite(original, "none"), to_tflite(r.model, "none")),
        "int8": (to_tflite(original, "int8", calibration), r.tflite),
    }
    latency = {fmt: paired_latency(a, b, args.repeats) for fmt, (a, b) in models.items()}
    drop = points(base.accuracy, small.accuracy)
    speed = latency["float32"]["ratio"]
    residual_flag = f"{residual:g}" if isinstance(residual, float) else residual
    for fmt, (_, after) in models.items():  # kept, so latency can be measured again on a quiet machine
        per_layer = "".join(f"-{layer}{share:g}" for layer, share in layers)
        stem = f"{name}-structured{ratio:g}-residual-{residual_flag}{per_layer}{'-distill' if distill else ''}{'' if distill_alpha is None else f'-alpha{distill_alpha:g}'}{f'-lr{lr_scale:g}' if lr_scale else ''}{'' if schedule == 'oneshot' else f'-{schedule}'}{f'-align{align}' if align > 1 else ''}{f'-seed{args.seed}' if args.seed else ''}-{fmt}"
        _io.write_bytes(Path(args.work) / f"{stem}.tflite", after)
    flags = (["--structured", f"{ratio:g}"] + (["--structured-residual", residual_flag] if residual != "prune" else [])
             + [f for layer, share in layers for f in ("--structured-layer", f"{layer}={share:g}")]
             + (["--distill"] if distill else []) + ([] if distill_alpha is None else ["--distill-alpha", f"{distill_alpha:g}"])
             + (["--lr-scale", f"{lr_scale:g}"] if lr_scale else [])
             + ([] if schedule == "oneshot" else ["--structured-schedule", schedule])
             + (["--structured-align", str(align)] if align > 1 else []))
    return {"equivalent_cli": cli(model_path, args, *flags, "--quantize", "int8"), "ratio": ratio, "residual": residual,
            "layers": dict(layers), "schedule": schedule, "align": align, "lr_scale": r.finetuning["lr_scale"], "distill": distill,
            "distillation": r.finetuning["distillation"],
            "baseline_accuracy": base.accuracy, "structured_accuracy": small.accuracy,
            "structured_int8_accuracy": q.accuracy, "drop_points": drop,
            "int8_drop_points": points(base.accuracy, q.accuracy),
            "macs": {"before": base.macs, "after": small.macs, "ratio": round(small.macs / base.macs, 4)},
            "params": {"before": base.params_total, "after": small.params_total,
                       "ratio": round(small.params_total / base.params_total, 4)},
            "latency_us": latency, "groups": r.structured, "finetune_epochs": r.finetuning["epochs"],
            "goals": {"float32 latency ratio <= 0.6": speed <= GOALS["structured50_latency_ratio"],
                      "int8 latency ratio <= 0.6": latency["int8"]["ratio"] <= GOALS["structured50_latency_ratio"],
                      "drop_points <= 1.5": drop <= GOALS["structured50_drop_points"]}}


def paired_latency(before: bytes, after: bytes, repeats: int) -> dict:
    """LiteRT p50 latency of two .tflite models, one thread, batch 1, alternating, median over repeats."""
    from edgedl.bench import measure_latency
    from edgedl.runtime.engines import LiteRTEngine

    with tempfile.TemporaryDirectory() as tmp:
        engines = []
        for label, data in (("before", before), ("after", after)):
            path = Path(tmp) / f"{label}.tflite"
            path.write_bytes(data)
            engine = LiteRTEngine(path, num_threads=1)
            spec = engine.inputs[0]
            x = np.zeros(spec.shape, dtype=spec.dtype)
            engines.append((engine, x))
        p50 = {"before": [], "after": []}
        for _ in range(repeats):
            for label, (engine, x) in zip(("before", "after"), engines):
                p50[label].append(measure_latency(engine, x, warmup=20, runs=200)["p50_us"])
    before_us, after_us = float(np.median(p50["before"])), float(np.median(p50["after"]))
    return {"before_p50_us": round(before_us, 2), "after_p50_us": round(after_us, 2),
            "ratio": round(after_us / before_us, 4), "repeats": repeats, "runs_per_repeat": 200,
            "threads": 1, "batch": 1}


def host() -> dict:
    """The machine a result was measured on: latency ratios differ between CPU models (int8 most), and
    the load average says whether something else ran beside the measurement (a training run does)."""
    import os
    import platform

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            **cpu(), "cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "EDGEDL_DATA": os.environ.get("EDGEDL_DATA")}


def cpu() -> dict:
    """The CPU's model name and the vector extensions LiteRT's kernels choose between, from one read of
    /proc/cpuinfo (empty where there is none): x86-64 hosts here differ in them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8")
    return {"cpu_model": fields.get("model name", ""),
            "cpu_flags": [f for f in fields.get("flags", "").split() if f in wanted]}


MEASURE = {"ptq": measure_ptq, "ptq_stripped": measure_ptq_stripped,
           "ptq_per_tensor_stripped": measure_ptq_per_tensor_stripped,
           "ptq_per_tensor_stripped_int8_io": measure_ptq_per_tensor_stripped_int8_io, "qat": measure_qat, "prune80": measure_prune80,
           "prune80_global": measure_prune80_global, "prune80_erk": measure_prune80_erk,
           "prune80_erk_block4": measure_prune80_erk_block4,
           **{what: functools.partial(measure_structured50, **options) for what, options in STRUCTURED.items()}}


if __name__ == "__main__":
    main()
