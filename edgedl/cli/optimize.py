"""``edgedl optimize``: prune and quantize a trained model, write the results and a measured report."""

import json

import click

from edgedl.cli._options import COUNT, SEED, Number, OutputOption, Whole


def _fraction(value):
    """Leave range checks to the API (one message for both); only make it a number here."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def _whole(value):
    """A whole number if ``value`` reads as one, else ``value`` itself (the API names what is wrong)."""
    try:
        return int(value)
    except ValueError:
        return value


@click.command()
@click.argument("model")
@click.option("--prune", "prune", metavar="FRACTION", help="Unstructured pruning: fraction of kernel weights to zero, in (0, 1), e.g. 0.8.")
@click.option("--prune-layer", "prune_layers", multiple=True, metavar="NAME=FRACTION",
              help="Zero this fraction of layer NAME's kernel weights instead (0 keeps it dense); repeat for more "
                   "layers. Without --prune, only the named layers are pruned.")
@click.option("--prune-scope", type=click.Choice(["layer", "global", "erk"]), default="layer", show_default=True,
              help="layer: every layer reaches the sparsity; global: one magnitude threshold over all layers; "
                   "erk: the sparsity on average, small layers (depthwise, classifier) kept denser.")
@click.option("--prune-schedule", type=click.Choice(["polynomial", "constant"]), default="polynomial",
              show_default=True, help="Sparsity grows over fine-tuning (polynomial) or starts at the target.")
@click.option("--prune-block", type=Whole(1, 64), default=1, show_default=True, metavar="N",
              help="Prune runs of N weights along the input channels together (contiguous in the .tflite: "
                   "the zeros gzip far better); 1 prunes single weights.")
@click.option("--structured", metavar="FRACTION", help="Structured pruning: fraction of Conv filters / Dense units to remove, in (0, 1).")
@click.option("--structured-residual", default="prune", show_default=True, metavar="prune|keep|FRACTION",
              help="Channels joined by residual adds: prune them like the rest, keep them whole, or remove this "
                   "smaller fraction of them, e.g. 0.25.")
@click.option("--structured-layer", "structured_layers", multiple=True, metavar="NAME=FRACTION",
              help="Remove this fraction (0 keeps it whole) of the channels layer NAME produces; repeat for more "
                   "layers.")
@click.option("--structured-align", metavar="N",
              help="Round each pruned group's kept channels up to a multiple of N, the channel tile of the "
                   "runtime's kernels (see benchmarks/README.md).")
@click.option("--structured-schedule", type=click.Choice(["oneshot", "polynomial"]),
              help="oneshot [default]: remove the channels, then fine-tune; polynomial: mask them a few more at a "
                   "time over the first half of fine-tuning, then remove them.")
@click.option("--distill", is_flag=True,
              help="Fine-tune on the labels and the float baseline's predictions (distillation).")
@click.option("--distill-alpha", type=float, metavar="FRACTION",
              help="With --distill, the share of the loss on the labels, in [0, 1) [default: 0.5].")
@click.option("--lr-scale", type=float, metavar="FACTOR",
              help="Fine-tuning starts at this multiple of the recipe's learning rate [default: 0.5]; 1 recovers "
                   "more after a deep cut.")
@click.option("--quantize", "-q", metavar="MODE", help="Quantization: int8, int16x8, float16 or dynamic (default: keep float32).")
@click.option("--qat", is_flag=True, help="Quantization-aware training before int8 conversion (implies --quantize int8).")
@click.option("--io", "io_type", default="float", metavar="TYPE", show_default=True,
              help="Input/output type of an int8 model: float, int8 or uint8.")
@click.option("--num-calibration", type=COUNT, default=200, show_default=True,
              help="Representative samples from the training split for int8/int16x8.")
@click.option("--quant-report", is_flag=True, help="Per-layer error vs float32 (int8, int16x8).")
@click.option("--keep-float", "keep_float", multiple=True, metavar="LAYER",
              help="Keep Keras layer LAYER float32 (repeatable).")
@click.option("--int16", "int16", multiple=True, metavar="LAYER", help="Keras layer LAYER in int16x8 (repeatable).")
@click.option("--max-drop", type=Number(0, 1), metavar="FRACTION",
              help="Keep the worst layers float32 until accuracy drops at most this (0.01: 1 point).")
@click.option("--per-tensor", is_flag=True,
              help="One weight scale per tensor, not per channel: a smaller file, some risk to accuracy.")
@click.option("--strip-names", is_flag=True,
              help="Drop what no runtime reads from the .tflite (intermediate tensor names, metadata) and store "
                   "repeated tables once.")
@click.option("--representative", type=click.Path(),
              help="Calibration inputs instead of training samples: a .npy, or what --data takes.")
@click.option("--output", "-o", "--out", "out_dir", cls=OutputOption, required=True, type=click.Path(),
              help="Folder for model.keras, model.tflite, report.json, report.md and stages.png (a plot of every stage).")
@click.option("--dataset", "-d", help="Data set (default: the recipe's, or the one in the metrics JSON beside MODEL).")
@click.option("--data", "data", type=click.Path(),
              help="Labelled .npz (x, y), or class folders of images or wavs.")
@click.option("--preprocess", multiple=True, metavar="KEY=VALUE|TOML",
              help="Steps for --data: resize=HxW, scale=1/255, mean, std... or a .toml.")
@click.option("--epochs", "-e", type=COUNT,
              help="Fine-tuning epochs per stage (default: a quarter of the recipe's, at least 2000 steps); for a zoo name, also the training epochs.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Default: $EDGEDL_DATA, then the user cache.")
@click.option("--limit", type=COUNT, help="Use at most this many samples per split.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for fine-tuning and calibration samples.")
@click.option("--deterministic", is_flag=True,
              help="Bit-identical fine-tuning for the same seed (can be slower).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def optimize(model, prune, prune_layers, prune_scope, prune_schedule, prune_block, structured, structured_residual, structured_layers,
             structured_align, structured_schedule, distill, distill_alpha, lr_scale, quantize, qat, io_type, num_calibration,
             quant_report, keep_float, int16, max_drop, per_tensor, strip_names, representative, out_dir, dataset, data, preprocess, epochs, data_dir, limit, seed,
             deterministic, as_json):
    """Prune and quantize MODEL (a .keras/.h5/SavedModel path, or a zoo name), fine-tuning with its recipe.

    Every stage is measured on the test split: accuracy, size, gzip'd size, parameters, MACs and
    sparsity. A model file written by `edgedl train` brings its recipe and data set from the metrics
    JSON beside it; other files need --dataset or --data.

    \b
    Examples:
      edgedl train lenet -o lenet.keras
      edgedl optimize lenet.keras --prune 0.8 --quantize int8 -o lenet-opt
      edgedl optimize lenet.keras --prune 0.8 --prune-layer probs=0 -o lenet-sparse
      edgedl optimize lenet.keras --structured 0.5 --qat -o lenet-small
      edgedl optimize ds_cnn.keras --prune 0.8 --prune-scope erk --prune-block 4 -q int8 -o kws-tiny
      edgedl optimize ds_cnn.keras -q int8 --per-tensor --strip-names -o kws-small
    """
    from edgedl import zoo
    from edgedl.errors import OptionError
    from edgedl.optimize import OptimizeOptions
    from edgedl.optimize import optimize as run
    from edgedl.optimize.prune import PruneSpec
    from edgedl.optimize.structured import StructuredSpec

    prune, structured = _fraction(prune), _fraction(structured)
    if prune is not None or prune_layers:
        prune = PruneSpec(prune, scope=prune_scope, schedule=prune_schedule, block=prune_block,
                          layers=prune_layers)
    if structured is not None:
        structured = StructuredSpec(structured, residual=_fraction(structured_residual),
                                    layers=structured_layers,
                                    align=1 if structured_align is None else _whole(structured_align),
                                    schedule=structured_schedule or "oneshot")
    elif structured_layers:
        raise OptionError("--structured-layer sets shares of structured pruning: give --structured too")
    elif structured_align is not None:
        raise OptionError("--structured-align rounds the channels structured pruning keeps: give --structured too")
    elif structured_schedule is not None:
        raise OptionError("--structured-schedule says how structured pruning removes channels: give --structured too")
    options = OptimizeOptions(
        prune=prune, structured=structured, quantize=quantize, qat=qat, io_type=io_type, per_channel=not per_tensor,
        strip_names=strip_names, num_calibration=num_calibration, representative=representative, distill=distill,
        distill_alpha=distill_alpha, lr_scale=lr_scale, dataset=dataset, data=data, quant_report=quant_report,
        keep_float=keep_float, int16=int16, max_drop=max_drop,
        preprocess=list(preprocess) or None, epochs=epochs, data_dir=data_dir,
        limit=limit, seed=seed, deterministic=deterministic, out_dir=out_dir,
    ).check()
    if model in zoo.model_names():
        recipe = zoo.get_model(model).recipe
        click.echo(f"note: '{model}' is a zoo name, not a trained model: it will first be trained on "
                   f"{dataset or recipe['dataset']} for {epochs or recipe['epochs']} epoch(s) "
                   f"({'--epochs' if epochs else 'the recipe; set --epochs to change'}). "
                   f"To optimize a trained model, give its file: edgedl train {model} -o {model}.keras",
                   err=True)
    report = run(model, options, progress=not as_json)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=_plain))
        return
    _print_table(report)


def _plain(o):
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _print_table(report):
    from rich import box
    from rich.console import Console
    from rich.table import Table

    d = report.data
    table = Table(title=f"{report.source['name']} on {d['dataset']} ({d['split']}, {d['num_test']} test samples)",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("stage", "accuracy", "Δ pts", "size", "gzip", "params", "nonzero", "MACs", "zeros"):
        table.add_column(col, justify="left" if col == "stage" else "right", no_wrap=True)
    base = report.stages[0].accuracy
    for r in report.stages:
        table.add_row(r.stage, f"{100 * r.accuracy:.2f}%", f"{r.change(base):+.2f}", _si(r.size_bytes, "B"),
                      _si(r.gzip_bytes, "B"), _si(r.params_total), _si(r.params_nonzero), _si(r.macs),
                      f"{100 * r.sparsity:.0f}%")
    console = Console()
    console.print(table)
    console.print("size: of the float32 .tflite for Keras stages, of the converted one for the last; "
                  "Δ pts: accuracy change in points; zeros: kernel sparsity", highlight=False)
    if report.quant_report and report.quant_report["layers"]:
        worst = report.quant_report["layers"][:3]
        console.print("worst layers after quantization (SNR): " + ", ".join(
            f"{r['layer'] or r['tensor']} {'n/a' if r['snr_db'] is None else format(r['snr_db'], '.1f') + ' dB'}"
            for r in worst), highlight=False)
    if report.selective:
        sel = report.selective
        for k, s in enumerate(sel["steps"] if sel["max_drop"] is not None else []):
            change = 0.0 - 100 * s["drop"]  # 0.0 - : never "-0.00"
            console.print(f"step {k}: float32 {', '.join(s['kept_float']) or 'none'}: {100 * s['accuracy']:.2f}% "
                          f"({change:+.2f} pts vs float32 .tflite), {_si(s['size_bytes'], 'B')}", highlight=False)
        console.print(f"kept in float32: {', '.join(sel['keep_float']) or 'none'}; int16x8: "
                      f"{', '.join(sel['int16']) or 'none'}" + ("" if sel["met"] else
                      f" (--max-drop {sel['max_drop']:g} not met: no layer left)"), highlight=False)
    for r in report.skipped_layers:
        console.print(f"not pruned: {r['layer']} ({r['kind']}): {r['reason']}", highlight=False)
    for path in report.files.values():
        console.print(f"wrote {path}", highlight=False)


def _si(n, unit=""):
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.0f}{prefix}{unit}" if n >= 100 * scale else f"{n / scale:.1f}{prefix}{unit}"
    return f"{n}{unit}"
