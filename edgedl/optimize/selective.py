"""Selective precision (``edgedl optimize -q int8 --keep-float LAYER --int16 LAYER --max-drop FRACTION``):
an integer model with chosen Keras layers left in float32 or in int16x8.

Where it sits: :func:`edgedl.convert.to_tflite` hands a conversion with ``keep_float`` or ``int16``
layers to :func:`quantize_layers`; :func:`edgedl.optimize.optimize` calls :func:`selective_stage`
once, after the plain conversion, which adds a ``selective`` row to the report and, with
``max_drop``, keeps the worst layers in float (by their own error, :func:`layer_sensitivity`: each
layer quantized alone) until the accuracy drop is met.

How: the float32 ``.tflite`` is quantized by Google's AI Edge Quantizer (``ai-edge-quantizer`` on
PyPI, the LiteRT team's quantizer of converted models), calibrated on each activation's whole range
over the samples (as the converter calibrates), with a recipe of static int8 (or int16x8)
for every operator and, for the operators of the chosen layers (matched by their output tensors'
names, which the converter derives from the Keras layer path), no quantization or int16
activations; it inserts the QUANTIZE/DEQUANTIZE operators at the borders. TensorFlow's converter has
no per-layer switch; its ``QuantizationDebugger(denylisted_nodes=...)`` can leave nodes in float but
re-quantizes a debug model int8-only, so it cannot put a layer in int16x8 beside int8 ones.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from edgedl import _lazy
from edgedl.errors import OptionError

log = logging.getLogger(__name__)

SENSITIVITY_METHOD = ("each layer quantized alone (its input quantized at its border, every other layer float32, "
                      "the whole model's calibration ranges), its output against the float32 model's: the layer's "
                      "own error on float inputs, as TensorFlow's QuantizationDebugger measures each operator, "
                      "not the error accumulated from the layers before it")

METHOD = ("the float32 .tflite quantized by Google's AI Edge Quantizer (static, each activation's min/max "
          "over all the run's representative samples), the chosen layers' operators left in float32 or given int16 "
          "activations; QUANTIZE/DEQUANTIZE operators at their borders")


def check_layers(model, names, flag: str) -> None:
    """Every name must be a Keras layer of ``model``.

    Raises:
        OptionError: one line naming the unknown layer and listing the model's layers.

    Example:
        >>> check_layers(model, ["conv1"], "--keep-float")  # doctest: +SKIP
    """
    from edgedl.convert import _all_layers

    known = [layer.name for layer in _all_layers(model)]
    for name in names:
        if name not in known:
            raise OptionError(f"{flag} {name}: model '{model.name}' has no layer '{name}'; its layers: "
                              f"{', '.join(known)}")


def layer_scopes(float_tflite: bytes, model) -> dict[str, list[str]]:
    """The Keras layers of a ``.tflite`` converted from ``model``: ``{layer: [op scope, ...]}``.

    An op's scope is what the AI Edge Quantizer matches a recipe against: its output tensors' names,
    each followed by ``;``. The layer of an op is read from the tensor name's layer path
    (:func:`edgedl.bench.profile.keras_layer`); the model's output tensor belongs to its output layer.
    """
    from edgedl.optimize.quant_report import _layer_of, _output_layers, _Run

    interpreter = _Run(float_tflite).interpreter
    outputs = {d["name"]: k for k, d in enumerate(interpreter.get_output_details())}
    output_layers = _output_layers(model)
    scopes: dict[str, list[str]] = {}
    for op in interpreter._get_ops_details():  # noqa: SLF001 - LiteRT's only op listing
        names = [interpreter._get_tensor_details(i, 0)["name"] for i in op["outputs"] if i >= 0]  # noqa: SLF001
        layers = {_layer_of(n, outputs, output_layers) for n in names} - {None}
        for layer in layers:
            scopes.setdefault(layer, []).append("".join(n + ";" for n in names))
    return scopes


def quantize_layers(model, float_tflite: bytes, mode: str, samples: list[np.ndarray], keep_float=(), int16=(),
                    io_type: str = "float", per_channel: bool = True) -> bytes:
    """``float_tflite`` quantized in ``mode``, but the ``keep_float`` layers in float32 and the ``int16``
    layers with int16 activations (int16x8).

    Args:
        model: the Keras model ``float_tflite`` was converted from (its layer and input names).
        float_tflite: its float32 ``.tflite``, with the converter's tensor names.
        mode: ``int8`` or ``int16x8``, for every other layer.
        samples: the calibration samples, one array (N, ...) per model input.
        keep_float: Keras layer names to leave in float32.
        int16: Keras layer names in int16x8 (with ``mode="int8"``).
        io_type: ``float`` or ``int8`` model inputs and outputs.
        per_channel: one weight scale per output channel (else per tensor).

    Returns:
        The ``.tflite`` bytes.

    Raises:
        OptionError: a layer that is not in the model or has no operator in the ``.tflite``, a layer
            asked in both precisions, or ``--io uint8`` (the quantizer writes float or int8 I/O).
        MissingDependencyError: ``ai-edge-quantizer`` is not installed.

    Example:
        >>> quantize_layers(model, to_tflite(model), "int8", [x_train[:200]], keep_float=["conv1"])  # doctest: +SKIP
    """
    if mode not in ("int8", "int16x8"):
        raise OptionError(f"layers kept in float or int16x8 are part of an integer model: quantize int8, not '{mode}'")
    if int16 and mode != "int8":
        raise OptionError("--int16 puts layers in int16x8 within an int8 model: use -q int8 "
                          "(with -q int16x8 every layer is int16x8 already)")
    if io_type not in ("float", "int8"):
        raise OptionError(f"not supported: --io {io_type} with --keep-float/--int16/--max-drop (the AI Edge "
                          "Quantizer writes float or int8 inputs and outputs)")
    both = sorted(set(keep_float) & set(int16))
    if both:
        raise OptionError(f"layer(s) {', '.join(both)} asked in float (--keep-float) and in int16 (--int16): "
                          "give each once")
    check_layers(model, [*keep_float, *int16], "--keep-float/--int16")
    scopes = layer_scopes(float_tflite, model)
    for name in [*keep_float, *int16]:
        if name not in scopes:
            raise OptionError(f"layer '{name}' has no operator of its own in the .tflite (the converter folded "
                              f"or dropped it); layers with operators: {', '.join(scopes)}")
    q = _quantizer(float_tflite, ".*", 16 if mode == "int16x8" else 8, io_type, per_channel)
    ops, weights = _ops(), _granularity(per_channel)
    for name in int16:
        q.add_static_config(_regex(scopes[name]), ops.ALL_SUPPORTED, 16, 8, weights)
    for name in keep_float:
        q.update_quantization_recipe(_regex(scopes[name]), ops.ALL_SUPPORTED, algorithm_key="no_quantize")
    with _lazy.quiet():  # calibration runs the float model on LiteRT over every sample
        ranges = _calibrate(q, float_tflite, model, samples)
        result = q.quantize(ranges, enable_progress_report=False)
    return bytes(result.quantized_model)


def layer_sensitivity(model, float_tflite: bytes, mode: str, samples: list[np.ndarray], x, per_channel: bool = True,
                      num_samples: int | None = None) -> dict:
    """Each Keras layer's own quantization error: the model with that layer alone quantized.

    For every layer with operators of its own, the float32 ``.tflite`` is quantized with only that
    layer's operators in ``mode`` (its input quantized at its border, every other layer in float32,
    the ranges of one calibration of the whole model), and that layer's output is compared with the
    float32 model's (:func:`edgedl.optimize.quant_report.layer_errors`). Every layer is fed float
    inputs, as TensorFlow's QuantizationDebugger feeds each operator, so an error made early does not
    make the layers after it look worse: this is the ranking ``--max-drop`` keeps layers in float by.
    The per-layer error of the whole integer model (``--quant-report``) is the other view: each row is
    the error accumulated up to that layer.

    Args:
        model: the Keras model ``float_tflite`` was converted from.
        float_tflite: its float32 ``.tflite``, with the converter's tensor names.
        mode: ``int8`` or ``int16x8``.
        samples: the calibration samples, one array (N, ...) per model input.
        x: float samples the errors are measured on (the test split), as for ``layer_errors``.
        per_channel: one weight scale per output channel (else per tensor).
        num_samples: run at most this many of ``x`` (default: ``quant_report.NUM_SAMPLES``).

    Returns:
        ``{"method", "samples", "layers": [{"layer", "tensor", "op", "rmse_rel", "cosine", "snr_db"}, ...]}``,
        worst first (lowest SNR); a layer whose output is exact when quantized alone has ``snr_db`` None
        and comes last.

    Raises:
        MissingDependencyError: ``ai-edge-quantizer`` is not installed.

    Example:
        >>> own = layer_sensitivity(model, to_tflite(model), "int8", [x_train[:200]], x_test)  # doctest: +SKIP
        >>> rows = own["layers"]  # doctest: +SKIP
        >>> rows[0]["layer"], rows[0]["snr_db"]  # doctest: +SKIP
        ('conv1', 24.7)
    """
    from edgedl.optimize.quant_report import NUM_SAMPLES, _output_layers, layer_errors

    bits = 16 if mode == "int16x8" else 8
    scopes = layer_scopes(float_tflite, model)
    whole = _quantizer(float_tflite, ".*", bits, "float", per_channel)
    with _lazy.quiet():
        ranges = _calibrate(whole, float_tflite, model, samples)
    rows, count = [], 0
    for name, scope in scopes.items():
        alone = _quantizer(float_tflite, _regex(scope), bits, "float", per_channel)
        with _lazy.quiet():
            tflite = bytes(alone.quantize(ranges, enable_progress_report=False).quantized_model)
        errors = layer_errors(float_tflite, tflite, x, output_layers=_output_layers(model),
                              num_samples=NUM_SAMPLES if num_samples is None else num_samples)
        count = errors["samples"]
        row = next((r for r in errors["layers"] if r["layer"] == name), None)
        if row is None:
            log.warning("layer %s quantized alone: no output tensor of its own to compare; not ranked", name)
            continue
        rows.append(row)
    rows.sort(key=lambda r: (r["snr_db"] is None, r["snr_db"] or 0.0))
    return {"method": SENSITIVITY_METHOD, "samples": count, "layers": rows}


def _calibrate(q, float_tflite: bytes, model, samples: list[np.ndarray]) -> dict:
    """Each activation's range over all ``samples``: the smallest minimum and largest maximum, as the
    TensorFlow Lite converter calibrates. ``Quantizer.calibrate`` would keep a moving average (0.95)
    of each sample's minimum and maximum, fed one sample at a time: it clips what a few samples reach
    (ResNet-8's logits to [-3.0, 4.0] of [-6.2, 11.7], its softmax to 0.64 of 0.995; 2.1 points of
    CIFAR-10 accuracy lost where the converter's int8 model loses 0.05, benchmarks/quant_inside.py)."""
    calibrator = _lazy.require("ai_edge_quantizer.calibrator")
    recipe_manager = _lazy.require("ai_edge_quantizer.recipe_manager")
    qsv_utils = _lazy.require("ai_edge_quantizer.utils.qsv_utils")
    recipes = recipe_manager.RecipeManager()
    recipes.load_quantization_recipe(q.get_quantization_recipe())
    calibration = calibrator.Calibrator(float_tflite, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
    calibration.calibrate({_signature(float_tflite): _feeds(model, samples)}, recipes)
    return calibration.get_model_qsvs()


def _ops():
    return _lazy.require("ai_edge_quantizer.qtyping").TFLOperationName


def _granularity(per_channel: bool):
    granularity = _lazy.require("ai_edge_quantizer.qtyping").QuantGranularity
    return granularity.CHANNELWISE if per_channel else granularity.TENSORWISE


def _quantizer(float_tflite: bytes, regex: str, bits: int, io_type: str, per_channel: bool):
    """An AI Edge Quantizer of ``float_tflite`` whose recipe quantizes the operators ``regex`` matches,
    ``bits``-bit activations and int8 weights; with float ``io_type`` the graph's inputs and outputs
    stay float32, as the converter's int8 models have them."""
    quantizer = _lazy.require("ai_edge_quantizer.quantizer")
    ops = _ops()
    q = quantizer.Quantizer(bytearray(float_tflite))
    q.add_static_config(regex, ops.ALL_SUPPORTED, bits, 8, _granularity(per_channel))
    if io_type == "float":
        for edge in (ops.INPUT, ops.OUTPUT):
            q.update_quantization_recipe(".*", edge, algorithm_key="no_quantize")
    return q


def _regex(scopes: list[str]) -> str:
    """A recipe regex that matches exactly these op scopes."""
    return "^(?:" + "|".join(re.escape(s) for s in scopes) + ")$"


def _signature(tflite: bytes) -> str:
    from edgedl.optimize.quant_report import _Run

    return next(iter(_Run(tflite).interpreter.get_signature_list()))


def _feeds(model, samples: list[np.ndarray]) -> list[dict]:
    """One ``{input name: sample of batch 1}`` per calibration sample (the names edgedl's batch-1 model
    gives its inputs, which the ``.tflite`` signature carries)."""
    names = ["input"] if len(model.inputs) == 1 else [t.name for t in model.inputs]
    return [{n: s[i][None].astype(np.float32) for n, s in zip(names, samples)} for i in range(len(samples[0]))]


def selective_stage(model, options, measure, rows: list):
    """The pipeline's selective-precision stage: the ``.tflite`` with the chosen layers in float32 or
    int16x8, or with ``options.max_drop`` the worst layers returned to float32 until the accuracy drop
    against the float32 ``.tflite`` is at most ``max_drop`` (a fraction: 0.01 is one point).

    Each step quantizes everything but the layers kept so far and measures test accuracy; while the
    drop is over the bound, the next layer of the ranking is kept in float32 for the next step. The
    ranking is by each layer's own error (:func:`layer_sensitivity`: the layer quantized alone, on float
    inputs, lowest SNR first), measured once, not by the error accumulated at each layer's output in
    the integer model, where an error made early makes every layer after it look worse. It ends when
    the bound is met or no layer is left.

    Args:
        model: the Keras model to convert (after the pipeline's other stages).
        options: the run's checked :class:`~edgedl.optimize.options.OptimizeOptions`.
        measure: the run's :class:`~edgedl.optimize.measure.Measure`.
        rows: the conversion stage's report rows; the ``selective`` row is appended.

    Returns:
        ``(tflite, rows, summary)``: the final ``.tflite``, the rows, and the report's ``selective``
        record (``method``, ``library``, ``keep_float``, ``int16``, ``max_drop``, ``float_accuracy``,
        ``met``, ``steps``: each with ``kept_float``, ``accuracy``, ``drop``, ``size_bytes`` and the
        ``worst_layer`` it then kept, with its own SNR ``worst_snr_db``; with ``max_drop`` and a step
        over it, ``ranking``: ``by`` (``"own error"``), ``method``, ``samples`` and ``layers``, the
        rows of :func:`layer_sensitivity` with ``accumulated_snr_db``, the layer's SNR in the first
        step's integer model, beside them).

    Example:
        >>> tflite, rows, summary = selective_stage(model, options, measure, rows)  # doctest: +SKIP
        >>> summary["steps"][-1]["kept_float"]  # doctest: +SKIP
        ['probs']
    """
    import dataclasses
    import importlib.metadata as md

    from edgedl.convert import strip_names
    from edgedl.optimize.measure import tflite_accuracy
    from edgedl.optimize.quant_report import _output_layers, layer_errors

    export = dataclasses.replace(measure.export, strip_names=False)
    float_tflite = export(model, "none")
    float_accuracy = tflite_accuracy(float_tflite, measure.x, measure.y)
    mode, keep, int16 = options.quantize, list(options.keep_float), list(options.int16)
    candidates = set(layer_scopes(float_tflite, model))
    steps, ranking = [], None
    while True:
        tflite = _quantized(model, float_tflite, mode, export, keep, int16)
        accuracy = tflite_accuracy(tflite, measure.x, measure.y)
        step = {"kept_float": list(keep), "accuracy": accuracy, "drop": round(float_accuracy - accuracy, 6),
                "size_bytes": len(strip_names(tflite) if measure.export.strip_names else tflite)}
        steps.append(step)
        log.info("selective precision: %s kept float, accuracy %.4f", keep or "nothing", accuracy)
        if options.max_drop is None or step["drop"] <= options.max_drop:
            break
        if ranking is None:  # each layer's own error does not change with what is kept: measured once
            ranking = layer_sensitivity(model, float_tflite, mode, _samples(model, export), measure.x,
                                        export.per_channel)
            accumulated = {r["layer"]: r["snr_db"] for r in
                           layer_errors(float_tflite, tflite, measure.x, output_layers=_output_layers(model))["layers"]}
            ranking = {"by": "own error", **ranking,
                       "layers": [{**r, "accumulated_snr_db": accumulated.get(r["layer"])} for r in ranking["layers"]]}
        worst = [r for r in ranking["layers"] if r["layer"] in candidates - set(keep) - set(int16)]
        if not worst:
            break
        step["worst_layer"], step["worst_snr_db"] = worst[0]["layer"], worst[0]["snr_db"]
        keep.append(worst[0]["layer"])
    final = strip_names(tflite) if measure.export.strip_names else tflite
    what = ", ".join([f"{', '.join(keep)} in float32"] * bool(keep) + [f"{', '.join(int16)} in int16x8"] * bool(int16))
    rows = rows + [measure.tflite("selective", f"{mode} (AI Edge Quantizer), {what or 'no layer kept'}", final,
                                  model, f"{mode} tflite, mixed precision" if keep or int16 else f"{mode} tflite")]
    method = METHOD if options.max_drop is None else (f"{METHOD}. --max-drop ranks the layers by their own error: "
                                                       f"{SENSITIVITY_METHOD}")
    summary = {"method": method, "library": f"ai-edge-quantizer {md.version('ai-edge-quantizer')}",
               "keep_float": keep, "int16": int16, "max_drop": options.max_drop, "float_accuracy": float_accuracy,
               "met": options.max_drop is None or steps[-1]["drop"] <= options.max_drop, "steps": steps,
               "ranking": ranking}
    return final, rows, summary


def _quantized(model, float_tflite: bytes, mode: str, export, keep: list[str], int16: list[str]) -> bytes:
    """One step's model, by the AI Edge Quantizer even with nothing kept, so every step is quantized alike."""
    return quantize_layers(model, float_tflite, mode, _samples(model, export), keep, int16, export.io_type,
                           export.per_channel)


def _samples(model, export) -> list[np.ndarray]:
    """The run's calibration samples, one array per model input."""
    from edgedl.convert import _per_input, representative_samples

    return [representative_samples(r, (1,) + tuple(t.shape[1:]), export.num_calibration)
            for r, t in zip(_per_input(export.calibration, len(model.inputs)), model.inputs)]
