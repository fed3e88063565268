"""The optimization pipeline: a trained Keras model -> pruned -> quantized ``.tflite``, each step measured.

:func:`optimize` reads top-down as its stages: check the options, find the model and its recipe,
load the data, measure the float baseline, then structured pruning, unstructured pruning,
quantization-aware training and conversion, each measured the same way (test accuracy, size,
gzip'd size, parameters, MACs, sparsity). It returns an :class:`OptimizeReport` that holds the
final Keras model and ``.tflite`` and knows how to save and format itself.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgedl import _io, _lazy
from edgedl.convert import RECURRENT_KINDS
from edgedl.errors import InputFileError, ModelError, OptionError, UnsupportedOperatorError
from edgedl.optimize import metrics
from edgedl.optimize.finetune import DISTILL_ALPHA, Teacher, check_distill_alpha

log = logging.getLogger(__name__)

QUANTIZE_MODES = ("dynamic", "float16", "int8", "int16x8")
IO_TYPES = ("float", "int8", "uint8")
FILES = {"model": "model.keras", "tflite": "model.tflite", "report": "report.json", "markdown": "report.md",
         "plot": "stages.png"}


# ---------------------------------------------------------------------------------------------------
# The report: plain data that saves and formats itself.


@dataclass
class OptimizeReport:
    """What :func:`optimize` made and measured.

    ``stages`` has one row per step (``baseline`` first), each with ``accuracy`` on the test split,
    ``size_bytes`` and ``gzip_bytes`` (of the float32 ``.tflite`` for Keras stages, of the
    ``.tflite`` itself for the converted one), ``params_total``, ``params_nonzero``, ``macs`` and
    ``sparsity`` (the fraction of zero kernel weights).
    """

    model: object = field(repr=False)  # the final Keras model
    tflite: bytes = field(repr=False)  # the final .tflite
    source: dict
    data: dict
    options: dict
    finetuning: dict
    stages: list[dict]
    pruned_layers: list[dict] = field(default_factory=list)
    skipped_layers: list[dict] = field(default_factory=list)
    structured: dict | None = None
    qat: dict | None = None
    versions: dict = field(default_factory=dict)
    wall_time_s: float = 0.0
    files: dict = field(default_factory=dict)

    def stage(self, name: str) -> dict:
        """The row of stage ``name`` (``baseline``, ``structured``, ``pruned``, ``qat``, ``ptq`` ...)."""
        for row in self.stages:
            if row["stage"] == name:
                return row
        raise KeyError(f"no stage '{name}'; stages: {', '.join(r['stage'] for r in self.stages)}")

    def to_dict(self) -> dict:
        return {
            "source": self.source, "data": self.data, "options": self.options, "finetuning": self.finetuning,
            "stages": self.stages, "pruned_layers": self.pruned_layers, "skipped_layers": self.skipped_layers,
            "structured": self.structured, "qat": self.qat, "versions": self.versions,
            "wall_time_s": self.wall_time_s, "files": self.files,
        }

    def to_markdown(self) -> str:
        """A readable report: the stage table, then per-layer detail."""
        d = self.data
        lines = [f"# Optimization report: {self.source['name']} on {d['dataset']} ({d['split']})", ""]
        lines += [f"Options: {_options_text(self.options)}. Fine-tuning: {_finetune_text(self.finetuning)}.", ""]
        lines += ["| stage | what | accuracy | change | size | gzip'd | params (non-zero / total) | MACs | sparsity |",
                  "|---|---|---|---|---|---|---|---|---|"]
        base = self.stages[0]["accuracy"]
        for r in self.stages:
            lines.append(
                f"| {r['stage']} | {r['description']} | {100 * r['accuracy']:.2f}% | "
                f"{100 * (r['accuracy'] - base):+.2f} | {_kb(r['size_bytes'])} | {_kb(r['gzip_bytes'])} | "
                f"{r['params_nonzero']:,} / {r['params_total']:,} | {r['macs']:,} | {100 * r['sparsity']:.1f}% |"
            )
        lines += ["", "Sizes are of the .tflite: float32 for the Keras stages, the converted model for the last one.",
                  "Change is in percentage points of test accuracy against the baseline.", ""]
        if self.pruned_layers:
            lines += ["## Pruned layers", ""]
            if self.options.get("prune_block", 1) > 1:
                lines += [f"Pruned in runs of {self.options['prune_block']} weights along the input channels "
                          "(contiguous in the .tflite), ranked by mean magnitude.", ""]
            if self.options.get("prune_scope") == "erk":
                lines += ["ERK scope: the target is reached on average over all these kernels; each layer's "
                          "share follows the Erdos-Renyi-Kernel rule, so small layers keep more of their weights.", ""]
            if self.options.get("prune_scope") == "global":
                lines += ["Global scope: one magnitude threshold over all these kernels reaches the target overall, "
                          "so each layer ends up as sparse as its weights are small.", ""]
            lines += ["| layer | kind | target | sparsity | non-zero / total |", "|---|---|---|---|---|"]
            lines += [f"| {r['layer']} | {r['kind']} | {100 * r['target']:.0f}% | {100 * r['sparsity']:.1f}% | "
                      f"{r['nonzero']:,} / {r['total']:,} |" for r in self.pruned_layers]
            lines.append("")
        if self.skipped_layers:
            lines += ["## Layers not pruned", "", "| layer | kind | why |", "|---|---|---|"]
            lines += [f"| {r['layer']} | {r['kind']} | {r['reason']} |" for r in self.skipped_layers]
            lines.append("")
        if self.structured:
            from edgedl.optimize.structured import describe_cut

            residual = describe_cut(self.structured.get("residual", "prune"), self.structured.get("layers"),
                                    self.structured.get("align", 1), self.structured.get("schedule", "oneshot"),
                                    (self.finetuning or {}).get("epochs"))
            lines += ["## Structured pruning", "", f"Removed {100 * self.structured['ratio']:.0f}% of the channels "
                      f"of every group not frozen (lowest L1 norm first){'; ' + residual if residual else ''}.", "",
                      "| layers (pruned together) | channels | kept | frozen because |", "|---|---|---|---|"]
            for g in self.structured["pruned_groups"] + self.structured["frozen_groups"]:
                lines.append(f"| {', '.join(g['layers'])} | {g['channels']} | {g['kept']} | {g['frozen'] or ''} |")
            lines.append("")
        if self.qat:
            lines += ["## Quantization-aware training", "", self.qat["method"], ""]
            if self.qat.get("folded"):
                lines += ["Batch norm folded: " + ", ".join(f"{b} into {p}" for p, b in self.qat["folded"]), ""]
            if self.qat.get("not_fake_quantized"):
                lines += ["Kernels trained without fake quantization (the int8 export quantizes them all the same): "
                          + ", ".join(f"{r['layer']} ({r['kind']}: {r['reason']})" for r in self.qat["not_fake_quantized"]), ""]
        if self.files.get("plot"):
            lines += [f"![accuracy, size and MACs after each stage]({Path(self.files['plot']).name})", ""]
        if self.files:
            lines += ["## Files", ""] + [f"- {k}: `{v}`" for k, v in self.files.items()] + [""]
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> dict:
        """Write the Keras model, the .tflite, report.md, report.json and stages.png into ``out_dir``.

        All or nothing: the files are written into a new folder beside ``out_dir`` and moved into it
        only once every one is complete (the whole folder in one rename when ``out_dir`` is new), so a
        failure leaves neither a partial set nor old files mixed with new ones.

        Returns:
            ``{"model": path, "tflite": path, "report": path, "markdown": path, "plot": path}`` (also kept
            in ``files``).
        """
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise OptionError(f"--out must be a folder, but '{out}' is a file")
        _check_out_files(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        files = {k: str(out / name) for k, name in FILES.items()}
        staging = out.parent / f".{out.name}.{secrets.token_hex(4)}"
        staging.mkdir()  # not mkdtemp: its 0700 would become --out's when the folder is renamed into place
        try:
            self.model.save(staging / FILES["model"])
            (staging / FILES["tflite"]).write_bytes(self.tflite)
            (staging / FILES["plot"]).write_bytes(plot_stages(self.stages))
            self.files = files
            (staging / FILES["markdown"]).write_text(self.to_markdown())
            _io.write_json(staging / FILES["report"], self.to_dict())
            if not out.exists():
                os.replace(staging, out)
            else:
                for name in FILES.values():
                    os.replace(staging / name, out / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return files


def _check_out_files(out: Path) -> None:
    """OptionError if a file the report writes into ``out`` would replace a folder."""
    for name in FILES.values():
        if (out / name).is_dir():
            raise OptionError(f"--out '{out}' holds a folder named '{name}', where edgedl writes a file: "
                              "move it away or choose another --out")


def plot_stages(stages: list[dict]) -> bytes:
    """Accuracy, .tflite size (and gzip'd) and MACs after each stage, side by side, as a PNG.

    The baseline's accuracy is drawn as a line across the first panel, and each bar is labelled with
    its change in points, so the cost of every step reads at a glance.
    """
    from matplotlib.figure import Figure

    from edgedl.report.plots import png_bytes

    names = [r["stage"] for r in stages]
    xs = np.arange(len(stages))
    fig = Figure(figsize=(3.0 + 1.6 * len(stages), 3.6), dpi=100, layout="constrained")
    acc_ax, size_ax, macs_ax = fig.subplots(1, 3)
    accuracy = [100 * r["accuracy"] for r in stages]
    acc_ax.bar(xs, accuracy, color="tab:blue")
    acc_ax.axhline(accuracy[0], color="black", linewidth=0.8, linestyle="--")
    low, high = min(accuracy), max(accuracy)
    acc_ax.set_ylim(max(0.0, low - max(2.0, 0.5 * (high - low))), min(100.0, high + max(1.0, 0.3 * (high - low))))
    for x, a in zip(xs, accuracy):
        acc_ax.annotate(f"{a - accuracy[0]:+.2f}", (x, a), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
    acc_ax.set_title("test accuracy (%)", fontsize=10)
    width = 0.4
    size_ax.bar(xs - width / 2, [r["size_bytes"] / 1024 for r in stages], width, label=".tflite", color="tab:orange")
    size_ax.bar(xs + width / 2, [r["gzip_bytes"] / 1024 for r in stages], width, label="gzip'd", color="tab:green")
    size_ax.set_title("size (KiB)", fontsize=10)
    size_ax.legend(fontsize=8)
    macs_ax.bar(xs, [r["macs"] / 1e6 for r in stages], color="tab:purple")
    macs_ax.set_title("MACs (millions)", fontsize=10)
    for ax in (acc_ax, size_ax, macs_ax):
        ax.set_xticks(xs, names, rotation=30, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    return png_bytes(fig)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _options_text(o: dict) -> str:
    parts = []
    if o.get("structured"):
        from edgedl.optimize.structured import describe_cut

        residual = describe_cut(o.get("structured_residual", "prune"), o.get("structured_layers"),
                                o.get("structured_align") or 1, o.get("structured_schedule") or "oneshot")
        residual = f", {residual}" if residual else ""
        parts.append(f"structured {o['structured']:g}{residual}")
    if o.get("prune") or o.get("prune_layers"):
        block = f", blocks of {o['prune_block']}" if o.get("prune_block", 1) > 1 else ""
        what = "per layer" if isinstance(o["prune"], dict) or o["prune"] is None else f"{o['prune']:g}"
        if o.get("prune_layers"):
            what += ", " + ", ".join(f"{name}={share:g}" for name, share in o["prune_layers"].items())
        parts.append(f"prune {what} ({o['prune_scope']}, {o['prune_schedule']}{block})")
    if o.get("qat"):
        parts.append("QAT")
    if o.get("distill"):
        weight = o.get("distill_alpha")
        parts.append("distilled from the baseline" + ("" if weight is None else f" ({weight:g} of the loss on the labels)"))
    parts.append(f"quantize {o['quantize'] or 'none (float32)'}")
    if o.get("io_type", "float") != "float":
        parts.append(f"I/O {o['io_type']}")
    return ", ".join(parts)


def _finetune_text(f: dict) -> str:
    return (f"{f['epochs']} epoch(s) per stage, {f['optimizer']} at {f['learning_rate']:g} "
            f"(x{f['lr_scale']:g} of the recipe's; x{f['qat_lr_scale']:g} for QAT), batch {f['batch_size']}, "
            f"recipe from {f['recipe_from']}{', deterministic' if f.get('deterministic') else ''}")


# ---------------------------------------------------------------------------------------------------
# Checks, each run before anything slow.


def prune_spec(prune) -> "PruneSpec | None":
    """``prune`` (a fraction, ``{layer: fraction}`` or a PruneSpec) as a checked PruneSpec."""
    from edgedl.optimize.prune import PruneSpec

    if prune is None:
        return None
    spec = prune if isinstance(prune, PruneSpec) else PruneSpec(prune)
    return spec.check()


def structured_spec(structured) -> "StructuredSpec | None":
    """``structured`` (a fraction or a StructuredSpec) as a checked StructuredSpec."""
    from edgedl.optimize.structured import StructuredSpec

    if structured is None:
        return None
    spec = structured if isinstance(structured, StructuredSpec) else StructuredSpec(structured)
    return spec.check()


def check_options(prune, structured, quantize, qat, io_type, epochs, limit, num_calibration, out_dir,
                  lr_scale=None) -> str | None:
    """Validate the options; return the quantization mode to use (``None``: float32 ``.tflite``)."""
    prune_spec(prune)
    cut = structured_spec(structured)
    if lr_scale is not None and (isinstance(lr_scale, bool) or not isinstance(lr_scale, (int, float))
                                 or not 0 < lr_scale <= 10):
        raise OptionError(f"--lr-scale must be a number in (0, 10], a multiple of the recipe's learning rate, got {lr_scale!r}")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise OptionError(f"unknown quantization '{quantize}'; choose one of {', '.join(QUANTIZE_MODES)}")
    if qat:
        if quantize not in (None, "int8"):
            raise OptionError(f"--qat trains for int8 and exports an int8 model; use it with --quantize int8, not '{quantize}'")
        quantize = "int8"
    if io_type not in IO_TYPES:
        raise OptionError(f"unknown I/O type '{io_type}'; choose one of {', '.join(IO_TYPES)}")
    if io_type != "float" and quantize != "int8":
        raise OptionError(f"--io {io_type} needs full integer quantization (--quantize int8), not '{quantize or 'none'}'")
    for name, value in (("--epochs", epochs), ("--limit", limit), ("--num-calibration", num_calibration)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise OptionError(f"{name} must be a positive integer, got {value}")
    if prune is None and structured is None and quantize is None:
        raise OptionError("nothing to do: give --prune, --structured, --quantize or --qat")
    if cut is not None and epochs is not None:
        from edgedl.optimize.structured import check_schedule_epochs

        check_schedule_epochs(cut.schedule, epochs)
    if out_dir is not None:
        _io.check_writable(out_dir, "--out", kind="folder")
        _check_out_files(Path(out_dir))
    return quantize


def check_quantizable(model, quantize: str | None) -> None:
    """Integer calibration (int8, int16x8) cannot take recurrent layers: TensorFlow's calibrator
    crashes the process on them. Use --quantize dynamic or float16 for LSTM/GRU models."""
    if quantize not in ("int8", "int16x8"):
        return
    from edgedl.optimize.graph import trace

    blocking = [(s.name, s.kind) for s in trace(model) if s.kind in RECURRENT_KINDS]
    if blocking:
        ops = ", ".join(sorted({k for _, k in blocking}))
        names = ", ".join(f"'{n}'" for n, _ in blocking)
        raise UnsupportedOperatorError(
            f"'{quantize}' quantization cannot take operator(s) {ops} (layer {names}) in model '{model.name}': "
            "TensorFlow's integer calibrator does not support recurrent layers; use --quantize dynamic or float16"
        )


def load_representative(spec) -> np.ndarray | None:
    """Representative data given as an array or a ``.npy`` path (None: take it from the training split)."""
    if spec is None or isinstance(spec, np.ndarray):
        return spec
    path = Path(spec)
    if not path.is_file():
        raise InputFileError(path, "no such file; representative data must be a .npy array of model inputs")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError/OSError/UnpicklingError
        raise InputFileError(path, f"not a readable .npy array ({str(e).splitlines()[0][:120]})") from None


def check_representative(data: np.ndarray, model) -> None:
    """Representative data must be floating point samples of the model's input shape.

    The converter's own check, run before any training rather than after it.
    """
    from edgedl.convert import _representative

    _representative(data, (1,) + tuple(model.input_shape[1:]), max(1, len(data)))


# ---------------------------------------------------------------------------------------------------
# Finding the model and its recipe.


@dataclass
class Source:
    model: object = field(repr=False)  # a Keras model, or None for a zoo name still to train
    name: str
    zoo_name: str | None
    recipe: dict
    recipe_from: str
    dataset: str | None
    split: str | None
    path: str | None = None


def find_source(model, dataset: str | None) -> Source:
    """The Keras model (or zoo name) and the training recipe that fits it.

    A zoo name brings its recipe. A model file brings the recipe of the zoo model named in the
    metrics JSON that ``edgedl train`` writes beside it (``lenet.keras`` -> ``lenet.json``), and that
    file's data set and split; otherwise the default recipe, and ``dataset`` must be given.
    """
    from edgedl import zoo
    from edgedl.modelio import is_model_path, load_model, recipe_beside
    from edgedl.train import DEFAULT_RECIPE

    if not isinstance(model, (str, Path)):
        name = getattr(model, "name", "model")
        if name in zoo.model_names():
            recipe = zoo.get_model(name).recipe
            return Source(model, name, name, recipe, f"zoo model '{name}' (by the model's name)",
                          recipe["dataset"], recipe.get("split"))
        return Source(model, name, None, dict(DEFAULT_RECIPE), "defaults", None, None)
    spec = str(model)
    if spec in zoo.model_names():
        recipe = zoo.get_model(spec).recipe
        return Source(None, spec, spec, recipe, f"zoo model '{spec}'", recipe["dataset"], recipe.get("split"))
    if not is_model_path(spec):
        zoo.get_model(spec)  # raises with the known names and a close match
        raise ModelError(f"unknown model '{spec}'")
    try:
        keras_model = load_model(spec)
    except InputFileError:
        custom = custom_layers_in_file(Path(spec))
        if custom:
            raise ModelError(
                f"{spec}: cannot rebuild layer(s) {', '.join(custom)}: custom classes this process does not know; "
                "edgedl optimizes models made of built-in Keras layers"
            ) from None
        raise
    recipe, zoo_name, _ = recipe_beside(Path(spec), DEFAULT_RECIPE)
    if zoo_name:
        return Source(keras_model, Path(spec).stem, zoo_name, recipe, f"zoo model '{zoo_name}' (from {Path(spec).with_suffix('.json').name})",
                      recipe["dataset"], recipe.get("split"), spec)
    return Source(keras_model, Path(spec).stem, None, recipe, "defaults", recipe.get("dataset"),
                  recipe.get("split"), spec)


def custom_layers_in_file(path: Path) -> list[str]:
    """``'name' (Class)`` of each layer in a ``.keras`` file that is not a built-in Keras layer."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found = []

    def walk(layers):
        for layer in layers or []:
            if not isinstance(layer, dict):
                continue
            inner = layer.get("config") or {}
            if not str(layer.get("module") or "").startswith("keras"):
                found.append(f"'{inner.get('name', '?')}' ({layer.get('registered_name') or layer.get('class_name')})")
            walk(inner.get("layers"))

    walk((config.get("config") or {}).get("layers"))
    return found


# ---------------------------------------------------------------------------------------------------
# Measuring a stage.


def keras_stage(stage: str, description: str, model, x, y, *, strip: bool = False, **extra) -> dict:
    """Accuracy of a Keras model, and the size of its float32 .tflite (its intermediate tensor names
    stripped if ``strip``), its parameters, MACs and sparsity."""
    from edgedl.convert import strip_names, to_tflite
    from edgedl.keras_utils import evaluate

    _, accuracy = evaluate(model, x, y)
    row = {"stage": stage, "description": description, "format": "float32 tflite", "accuracy": accuracy}
    tflite = to_tflite(model, "none")
    row.update(metrics.sizes(strip_names(tflite) if strip else tflite))
    row.update(metrics.model_stats(model))
    row.update(extra)
    return row


def tflite_stage(stage: str, description: str, tflite: bytes, keras_model, x, y, fmt: str, **extra) -> dict:
    """Accuracy of a .tflite on LiteRT, its size, and the parameters/MACs/sparsity of its Keras source."""
    row = {"stage": stage, "description": description, "format": fmt, "accuracy": tflite_accuracy(tflite, x, y)}
    row.update(metrics.sizes(tflite))
    row.update(metrics.model_stats(keras_model))
    row.update(extra)
    return row


def tflite_accuracy(tflite: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a .tflite on (x, y), run one sample at a time on LiteRT."""
    from edgedl.runtime.engines import LiteRTEngine
    from edgedl.runtime.quant import predict

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(tflite)
        engine = LiteRTEngine(path, num_threads=1)
        probs = predict(engine, x)
    return round(float(np.mean(np.argmax(probs, axis=1) == y)), 6)


# ---------------------------------------------------------------------------------------------------
# The pipeline.


def optimize(model, *, prune=None, structured=None, quantize=None, qat=False, dataset=None, epochs=None,
             data_dir=None, limit=None, num_calibration=200, io_type="float", representative=None,
             per_channel=True, strip_names=False, distill=False, distill_alpha=None, lr_scale=None, out_dir=None, seed=0,
             deterministic=False, progress=True) -> OptimizeReport:
    """Prune and quantize a trained Keras model; measure every stage; optionally write the results.

    Stages, in order, each optional: structured pruning, unstructured magnitude pruning,
    quantization-aware training, conversion to ``.tflite``. Each pruning/QAT stage fine-tunes with
    the model's training recipe.

    Args:
        model: a ``.keras``/``.h5``/SavedModel path, a ``keras.Model``, or a zoo name (which is
            first trained with its recipe for ``epochs``, or the recipe's epochs).
        prune: target sparsity in (0, 1) for every prunable layer, ``{layer: sparsity}``, or a
            :class:`~edgedl.optimize.prune.PruneSpec` that also sets the scope (``layer``: every
            layer reaches the sparsity; ``global``: one magnitude threshold over all layers), the
            schedule (``polynomial``: sparsity grows over fine-tuning; ``constant``) and the block
            (prune runs of N weights along the input channels, which gzip far better).
        structured: fraction of Conv filters / Dense units to remove from each group, in (0, 1), or
            a :class:`~edgedl.optimize.structured.StructuredSpec` that also says whether the channels
            residual adds join are pruned (``prune``), kept whole (``keep``) or lose a smaller
            fraction of their channels (e.g. ``0.25``), sets the share of the groups named layers
            produce (``layers``), rounds kept widths up to a multiple (``align``), and removes the
            channels before fine-tuning (``schedule="oneshot"``) or masks them gradually while the
            full-width model fine-tunes, then removes them (``"polynomial"``).
        quantize: ``dynamic``, ``float16``, ``int8`` or ``int16x8``; None keeps float32.
        qat: quantization-aware training before int8 conversion (implies ``quantize="int8"``).
        dataset: data set for fine-tuning, calibration and accuracy (default: the recipe's or the one
            in the metrics JSON beside a model file).
        epochs: epochs of each fine-tuning stage (default: a quarter of the recipe's, at least
            2000 optimizer steps, at most the recipe's epochs).
        data_dir: data directory (else ``EDGEDL_DATA``, else the user cache).
        limit: use at most this many samples per split (quick runs).
        num_calibration: representative samples for int8/int16x8, drawn from the training split.
        io_type: ``float``, ``int8`` or ``uint8`` model inputs/outputs (``int8`` quantization only).
        representative: calibration inputs (array or ``.npy`` path) instead of training samples.
        per_channel: int8/int16x8 weights with a scale per output channel (``False``: per tensor,
            a smaller file on small models, at some risk to accuracy).
        strip_names: drop the names of intermediate tensors and the converter's metadata from every
            ``.tflite`` and store repeated tables once (``convert.strip_names``); the float32 baseline
            is stripped too, so sizes compare like with like. Inputs, outputs and signatures keep their names.
        distill: every fine-tuning stage also learns from the float baseline's predictions
            (knowledge distillation), which recovers more of the accuracy pruning costs.
        distill_alpha: with ``distill``, the share of the fine-tuning loss on the labels, in [0, 1)
            (the rest is on the baseline's predictions; default
            :data:`edgedl.optimize.finetune.DISTILL_ALPHA`).
        lr_scale: pruning fine-tuning starts at this multiple of the recipe's learning rate and decays
            it with a cosine (default :data:`edgedl.optimize.finetune.LR_SCALE`); QAT keeps its own.
        out_dir: if given, write ``model.keras``, ``model.tflite``, ``report.json``, ``report.md`` and
            ``stages.png`` (accuracy, size and MACs per stage) there.
        seed: seeds fine-tuning and the choice of calibration samples.
        deterministic: bit-identical fine-tuning from run to run (can be slower;
            see :func:`edgedl.train.set_determinism`).
        progress: show progress bars while training.

    Returns:
        OptimizeReport with the final Keras model, the ``.tflite`` and one measured row per stage.

    Raises:
        OptionError: an option out of range, or representative data of the wrong shape or dtype.
        InputFileError: the model file is missing or not a model.
        ModelError: structured pruning meets a layer it cannot rebuild.
        UnsupportedOperatorError: the model holds operators the quantization mode cannot take.

    Example:
        >>> report = optimize("lenet.keras", prune=0.8, quantize="int8", out_dir="out")  # doctest: +SKIP
        >>> report.stage("int8")["accuracy"] > 0.98  # doctest: +SKIP
        True
    """
    from edgedl.data import load_dataset
    from edgedl.keras_utils import check_shapes, set_determinism

    start = time.perf_counter()
    mode = check_options(prune, structured, quantize, qat, io_type, epochs, limit, num_calibration, out_dir,
                         lr_scale=lr_scale)
    if lr_scale is not None and prune is None and structured is None:
        raise OptionError("--lr-scale sets the fine-tuning rate after pruning: use it with --prune or --structured")
    if not per_channel and mode not in ("int8", "int16x8"):
        raise OptionError(f"--per-tensor needs --quantize int8 or int16x8, not '{mode or 'none'}'")
    if representative is not None and mode not in ("int8", "int16x8"):
        raise OptionError(f"--representative is calibration data for --quantize int8 or int16x8, but "
                          f"{'--quantize ' + mode if mode else 'no --quantize'} calibrates nothing: leave it out")
    if distill and prune is None and structured is None and not qat:
        raise OptionError("--distill teaches fine-tuning: use it with --prune, --structured or --qat")
    if distill_alpha is not None:
        if not distill:
            raise OptionError("--distill-alpha weighs the labels against the teacher: give --distill too")
        distill_alpha = check_distill_alpha(distill_alpha)
    if not per_channel and qat:
        raise OptionError("--per-tensor cannot go with --qat: quantization-aware training fake-quantizes "
                          "kernels per channel; use --per-tensor with post-training --quantize int8")
    spec, cut = prune_spec(prune), structured_spec(structured)
    rep = load_representative(representative)
    src = find_source(model, dataset)
    dataset = dataset or src.dataset
    if dataset is None:
        raise OptionError(f"optimizing '{src.name}' needs --dataset: it has no zoo recipe and no metrics JSON beside it")
    split = src.split if dataset == src.dataset else None
    probe = src.model if src.model is not None else _zoo_build(src.zoo_name, dataset)
    retraining = [flag for flag, on in (("--prune", prune), ("--structured", structured), ("--qat", qat)) if on]
    check_architecture(probe, mode, cut, rep, retraining, spec)  # before anything slow
    data = load_dataset(dataset, data_dir=data_dir, split=split, limit=limit, seed=seed)
    check_shapes(probe, data)

    calibration = rep if rep is not None else _calibration_samples(data.x_train, num_calibration, seed)
    export = _Export(calibration, io_type, num_calibration, per_channel, strip_names)
    set_determinism(deterministic)
    run = _Run(data=data, recipe=src.recipe, epochs=epochs, seed=seed, progress=progress, export=export,
               lr_scale=lr_scale, deterministic=bool(deterministic))
    if cut is not None:
        from edgedl.optimize.structured import check_schedule_epochs

        check_schedule_epochs(cut.schedule, run.tune_epochs, given=epochs is not None)
    current, trained_here = _trained_model(src, run, dataset, split, data_dir, limit)
    run.teacher = None if not distill else Teacher(current, DISTILL_ALPHA if distill_alpha is None else distill_alpha)
    stages = [run.keras_stage("baseline", "float32 Keras model" + (
        f", trained here for {trained_here} epochs" if trained_here else ""), current)]
    parts = {}
    if cut is not None:
        current, row, parts["structured"] = _structured_stage(run, current, cut)
        stages.append(row)
    if spec is not None:
        current, row, parts["pruned_layers"], parts["skipped_layers"] = _prune_stage(run, current, spec)
        stages.append(row)
    current, tflite, rows, parts["qat"] = _convert_stage(run, current, mode, qat, keep_sparsity=prune is not None)
    stages += rows

    report = OptimizeReport(
        model=current, tflite=tflite, stages=stages, versions=_versions(), **parts,
        source={"name": src.name, "path": src.path, "zoo_model": src.zoo_name, "trained_here_epochs": trained_here},
        data={"dataset": data.name, "split": data.split, "num_train": int(len(data.x_train)),
              "num_test": int(len(data.x_test)), "limit": limit,
              "num_calibration": int(min(len(calibration), num_calibration)) if mode in ("int8", "int16x8") else 0,
              "calibration_from": "--representative" if rep is not None else "training split"},
        options={"prune": spec and spec.sparsity, "prune_layers": dict(spec.layers) if spec and spec.layers else None,
                 "prune_scope": spec and spec.scope,
                 "prune_schedule": spec and spec.schedule, "prune_block": spec.block if spec else None,
                 "structured": cut and cut.ratio, "structured_residual": cut and cut.residual,
                 "structured_layers": dict(cut.layers) if cut and cut.layers else None,
                 "structured_align": cut and cut.align, "structured_schedule": cut and cut.schedule,
                 "quantize": mode, "qat": bool(qat), "io_type": io_type,
                 "per_channel": per_channel, "strip_names": strip_names, "distill": bool(distill),
                 "distill_alpha": distill_alpha,
                 "epochs": epochs, "lr_scale": lr_scale, "seed": seed},
        finetuning=run.describe(src.recipe_from),
    )
    report.wall_time_s = round(time.perf_counter() - start, 2)
    if out_dir is not None:
        report.save(out_dir)
    return report


def check_architecture(model, mode, structured: "StructuredSpec | None", representative, retraining: list[str],
                       prune: "PruneSpec | None" = None) -> None:
    """The checks that need only the architecture: quantizable ops, rebuildable layers, pruning
    targets (layer names), calibration data.

    ``retraining`` names the options that rewrite weights (``--prune``, ``--structured``, ``--qat``).
    """
    from edgedl.optimize.graph import require_keras_layers
    from edgedl.optimize.prune import find_prunable, resolve_targets
    from edgedl.optimize.structured import plan

    if retraining:
        require_keras_layers(model, " and ".join(retraining))
    check_quantizable(model, mode)
    if structured is not None:
        plan(model, structured.ratio, structured.residual, structured.layers, structured.align)
    if prune is not None:
        kernels, _ = find_prunable(model)
        resolve_targets(kernels, prune.sparsity, scope=prune.scope, layers=prune.layers)
    if representative is not None:
        check_representative(representative, model)


@dataclass
class _Run:
    """What every stage of one pipeline run shares: the data, the recipe, fine-tuning epochs, seed."""

    data: object = field(repr=False)
    recipe: dict
    epochs: int | None
    seed: int
    progress: bool
    export: "_Export"  # how every .tflite is written, the float32 baselines' included
    teacher: object = field(default=None, repr=False)  # a finetune.Teacher: distil from it while fine-tuning
    lr_scale: float | None = None  # pruning fine-tuning rate, x the recipe's (None: finetune.LR_SCALE)
    deterministic: bool = False  # TensorFlow's op determinism: bit-identical fine-tuning

    @property
    def tune_lr_scale(self) -> float:
        from edgedl.optimize.finetune import LR_SCALE

        return LR_SCALE if self.lr_scale is None else float(self.lr_scale)

    @property
    def tune_epochs(self) -> int:
        from edgedl.optimize.finetune import default_epochs

        return self.epochs or default_epochs(self.recipe, len(self.data.x_train))

    def keras_stage(self, stage, description, model, **extra):
        return keras_stage(stage, description, model, self.data.x_test, self.data.y_test,
                           strip=self.export.strip_names, **extra)

    def tflite_stage(self, stage, description, tflite, model, fmt, **extra):
        return tflite_stage(stage, description, tflite, model, self.data.x_test, self.data.y_test, fmt, **extra)

    def describe(self, recipe_from: str) -> dict:
        from edgedl.optimize import qat

        r = self.recipe
        return {"epochs": self.tune_epochs, "optimizer": r.get("optimizer", "adam"),
                "learning_rate": float(r.get("learning_rate", 1e-3)) * self.tune_lr_scale, "lr_scale": self.tune_lr_scale,
                "qat_lr_scale": qat.LR_SCALE, "batch_size": r.get("batch_size"), "schedule": r.get("schedule"),
                "augment": r.get("augment"), "recipe_from": recipe_from, "deterministic": self.deterministic,
                "distillation": None if self.teacher is None else {
                    "teacher": "the float baseline", "alpha": self.teacher.alpha, "temperature": self.teacher.temperature}}


def _trained_model(src: Source, run: _Run, dataset, split, data_dir, limit):
    """The model to optimize, and the epochs it was trained for here (None: it came trained)."""
    if src.model is not None:
        return src.model, None
    from edgedl.train import train

    result = train(src.zoo_name, dataset=dataset, epochs=run.epochs, seed=run.seed, data_dir=data_dir,
                   limit=limit, split=split, progress=run.progress, deterministic=run.deterministic)
    return result.model, result.metrics["epochs"]


def _structured_stage(run: _Run, model, spec):
    from edgedl.optimize.structured import describe_cut, prune_structured

    t = time.perf_counter()
    ratio = spec.ratio
    result = prune_structured(model, ratio, run.data.x_train, run.data.y_train, recipe=run.recipe,
                              residual=spec.residual, layers=spec.layers, teacher=run.teacher,
                              epochs=run.tune_epochs, progress=run.progress, seed=run.seed,
                              lr_scale=run.tune_lr_scale, align=spec.align, schedule=spec.schedule)
    where = describe_cut(spec.residual, spec.layers, spec.align, spec.schedule, run.tune_epochs)
    where = f" ({where})" if where else ""
    row = run.keras_stage("structured", f"{100 * ratio:.0f}% of channels removed{where}, fine-tuned", result.model,
                          wall_s=round(time.perf_counter() - t, 2))
    return result.model, row, result.summary


def _prune_stage(run: _Run, model, spec):
    from edgedl.optimize.prune import prune

    t = time.perf_counter()
    result = prune(model, spec.sparsity, run.data.x_train, run.data.y_train, recipe=run.recipe,
                   epochs=run.tune_epochs, scope=spec.scope, schedule=spec.schedule, block=spec.block,
                   layers=spec.layers, progress=run.progress, seed=run.seed, teacher=run.teacher, lr_scale=run.tune_lr_scale)
    zeros = sum(r["total"] - r["nonzero"] for r in result.layers)
    total = sum(r["total"] for r in result.layers)
    uniform = isinstance(spec.sparsity, float) and not spec.layers
    whose = "" if uniform else "the pruned layers' "
    what = f"{100 * zeros / max(total, 1):.0f}% of {whose}kernel weights zeroed" + ("" if uniform else " (targets per layer)")
    how = f"{spec.scope}, {spec.schedule}" + (f", blocks of {spec.block}" if spec.block > 1 else "")
    row = run.keras_stage("pruned", f"{what} ({how}), fine-tuned", result.model,
                          wall_s=round(time.perf_counter() - t, 2))
    return result.model, row, result.layers, result.skipped


@dataclass
class _Export:
    """How a Keras model becomes the ``.tflite`` file: calibration, I/O type, weight scales, names."""

    calibration: np.ndarray = field(repr=False)
    io_type: str = "float"
    num_calibration: int = 200
    per_channel: bool = True
    strip_names: bool = False

    def __call__(self, model, mode: str) -> bytes:
        from edgedl.convert import strip_names, to_tflite

        if mode == "none":
            tflite = to_tflite(model, "none")
        else:
            tflite = to_tflite(model, mode, self.calibration, io_type=self.io_type,
                               num_calibration=self.num_calibration, per_channel=self.per_channel)
        return strip_names(tflite) if self.strip_names else tflite


def _convert_stage(run: _Run, model, mode, qat, keep_sparsity):
    """Convert (after QAT if asked); returns (final Keras model, .tflite, stage rows, QAT summary)."""
    export = run.export
    if mode is None:
        return model, export(model, "none"), [], None
    scales = "" if export.per_channel else ", per-tensor weight scales"
    if not qat:
        tflite = export(model, mode)
        return model, tflite, [run.tflite_stage(mode, f"{mode} post-training quantization{scales}", tflite, model,
                                                f"{mode} tflite")], None

    from edgedl.optimize import qat as qat_module
    from edgedl.keras_utils import evaluate

    t = time.perf_counter()
    ptq = export(model, "int8")
    rows = [run.tflite_stage("ptq", f"int8 post-training quantization without QAT (for comparison){scales}", ptq,
                             model, "int8 tflite")]
    result = qat_module.quantization_aware_training(model, run.data.x_train, run.data.y_train, recipe=run.recipe,
                                                    epochs=run.tune_epochs, keep_sparsity=keep_sparsity,
                                                    progress=run.progress, seed=run.seed, teacher=run.teacher)
    _, fq_accuracy = evaluate(result.fake_quant_model, run.data.x_test, run.data.y_test)
    tflite = export(result.model, "int8")
    rows.append(run.tflite_stage("qat", f"int8 after quantization-aware training{scales}", tflite, result.model,
                                 "int8 tflite", fake_quant_accuracy=fq_accuracy, wall_s=round(time.perf_counter() - t, 2)))
    summary = {"method": QAT_METHOD, "folded": result.folded, "fake_quant_accuracy": fq_accuracy,
               "lr_scale": qat_module.LR_SCALE, "not_fake_quantized": result.plain}
    return result.model, tflite, rows, summary


QAT_METHOD = (
    "Batch norm folded into the layer before it; kernels fake-quantized per channel (symmetric int8, "
    "scale max|w|/127) and activations fake-quantized over moving-average ranges, with straight-through "
    "gradients, during fine-tuning; the fine-tuned float weights were then converted with full-int8 "
    "post-training quantization (activation ranges re-calibrated on representative data)."
)


def _zoo_build(name: str, dataset: str):
    """An untrained zoo model shaped for ``dataset`` (to check its architecture before training)."""
    from edgedl import zoo
    from edgedl.data import DATASETS

    info = DATASETS.get(dataset)
    if info is None:
        return zoo.get_model(name).build()
    return zoo.get_model(name).build(input_shape=info.input_shape, num_classes=info.num_classes)


def _calibration_samples(x: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(count, len(x)), replace=False)
    return x[np.sort(idx)]


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert", "edgedl"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out
