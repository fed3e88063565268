"""Per-layer quantization error (``edgedl optimize --quant-report``): where an integer model loses
precision, layer by layer, on real samples.

Where it sits: :func:`edgedl.optimize.optimize` calls :func:`quant_report` once, on the final Keras
model and the int8 (or int16x8) ``.tflite`` it made; :class:`~edgedl.report.optimize.OptimizeReport`
records the result under ``quant_report`` in report.json, a table of the worst layers in report.md
and :func:`plot_snr`'s chart beside them. :func:`layer_errors` is the comparison itself, for any pair
of ``.tflite`` files converted from the same model.

How: the float32 ``.tflite`` and the integer one run side by side on LiteRT's built-in kernels with
``experimental_preserve_all_tensors``, so every intermediate tensor can be read after a run (no
delegate, whose tensors cannot be read); the tensors both models produce under the same name (the
converter names them after the Keras layer path, ``lenet/conv1/Relu;...``) are compared, the
integer ones dequantized with their own scale and zero point. The error is the whole model's up to
that tensor (the float model's activations against the integer model's), not one operator's alone.

TensorFlow's ``tf.lite.experimental.QuantizationDebugger`` runs with TF 2.21 and a Keras 3 model
converted through edgedl's batch-1 model, but is not used: it measures a debug model it quantizes
again itself (int8 only: an int16x8 run would be measured as int8), not the ``.tflite`` the pipeline
writes; its NumericVerify differences are each operator's own error (every float operator is fed the
dequantized integer input), not the accumulated error of the activations; and its direct float/int
comparison reads intermediate tensors from an interpreter made without ``preserve_all_tensors``
when it is built from a converter, so it reads buffers already reused by later operators.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math

import numpy as np

from edgedl.errors import BackendError

log = logging.getLogger(__name__)

NUM_SAMPLES = 100  # test samples each comparison runs: enough for stable ratios, quick on small models
METHOD = ("float32 and integer .tflite run side by side on LiteRT's built-in kernels with "
          "experimental_preserve_all_tensors; the tensors both produce under the same name are compared "
          "(integer ones dequantized), so each row is the whole model's error up to that layer's output")


def quant_report(model, tflite: bytes, mode: str, export, x, num_samples: int = NUM_SAMPLES,
                 selective: dict | None = None) -> dict:
    """The pipeline's per-layer error of an integer ``.tflite`` against the float32 one of ``model``.

    Args:
        model: the Keras model ``tflite`` was converted from.
        tflite: the integer ``.tflite`` (``int8`` or ``int16x8``), the one the run writes.
        mode: its quantization mode.
        export: the run's :class:`~edgedl.optimize.measure.Export`; where it strips tensor names, both
            models are converted again with the names kept (the same calibration gives the same model).
        x: float samples (the test split); the first ``num_samples`` are run.
        num_samples: how many samples to run.
        selective: the run's selective-precision record (:func:`edgedl.optimize.selective.selective_stage`),
            where ``tflite`` came from it: a model converted again is then the AI Edge Quantizer's, with
            the same layers in float32 and int16x8, not the converter's plain integer one.

    Returns:
        What :func:`layer_errors` returns, with ``mode`` and ``model`` (which model was measured: the AI
        Edge Quantizer's with ``selective``, the converter's where it was converted again, else the
        ``.tflite`` given) added.

    Example:
        >>> quant_report(model, tflite, "int8", measure.export, data.x_test)["layers"][0]["layer"]  # doctest: +SKIP
        'fc1'
    """
    plain = dataclasses.replace(export, strip_names=False)
    float_tflite = plain(model, "none")
    keep, int16 = list((selective or {}).get("keep_float", ())), list((selective or {}).get("int16", ()))
    if export.strip_names:  # the written model has no names to match: the same model again, with them
        if selective is not None:
            from edgedl.optimize.selective import _quantized

            tflite = _quantized(model, float_tflite, mode, plain, keep, int16)
        else:
            tflite = plain(model, mode)
    what = [f"{', '.join(keep)} in float32"] * bool(keep) + [f"{', '.join(int16)} in int16x8"] * bool(int16)
    if selective is not None:
        described = f"{mode} by the AI Edge Quantizer" + (f", {'; '.join(what)}" if what else "")
    elif export.strip_names:
        described = f"{mode} by the TensorFlow Lite converter"
    else:  # measured as given: its maker is the caller's to say
        described = f"the {mode} .tflite given"
    result = layer_errors(float_tflite, tflite, x, output_layers=_output_layers(model), num_samples=num_samples)
    return {"mode": mode, "model": described, **result}


def layer_errors(float_tflite: bytes, quantized_tflite: bytes, x, output_layers: list[str] | None = None,
                 num_samples: int = NUM_SAMPLES) -> dict:
    """Per Keras layer, the float32 model's activations against the quantized model's, on ``x``.

    Each layer's row is its output tensor (the last one the layer produces that both models share):
    ``rmse_rel`` is the root mean square error over the float activations' range (max - min over
    the samples), ``cosine`` the cosine similarity of all the samples' activations taken as one
    vector, ``snr_db`` ten times the log10 of the float activations' power over the error's. A
    value that cannot be defined (a range, or activations, of zero; no error at all) is None.

    Args:
        float_tflite: the float32 ``.tflite``.
        quantized_tflite: the quantized ``.tflite`` of the same model, converted with its names.
        x: float samples, an array (N, ...) or a list of them for a model with several inputs.
        output_layers: the Keras layer name of each model output, in the ``.tflite``'s output order
            (the converter names output tensors ``StatefulPartitionedCall:0``, not after the layer).
        num_samples: run at most this many samples.

    Returns:
        ``{"method", "samples", "layers": [{"layer", "tensor", "op", "rmse_rel", "cosine",
        "snr_db"}, ...]}``, the layers worst first (lowest SNR).

    Raises:
        BackendError: the two models have different inputs, or ``x`` does not fit them.

    Example:
        >>> rows = layer_errors(float_bytes, int8_bytes, x_test)["layers"]  # doctest: +SKIP
        >>> rows[0]["layer"], rows[0]["snr_db"]  # doctest: +SKIP
        ('fc2', 31.4)
    """
    float_run, quant_run = _Run(float_tflite), _Run(quantized_tflite)
    if len(float_run.inputs) != len(quant_run.inputs):
        raise BackendError(f"the float model has {len(float_run.inputs)} input(s) and the quantized one "
                           f"{len(quant_run.inputs)}: compare two conversions of the same model")
    arrays = list(x) if isinstance(x, (list, tuple)) else [x]
    count = min(num_samples, len(arrays[0]))
    if count < 1:
        raise BackendError("per-layer quantization error needs at least one sample; got none")
    shared = [(name, op) for name, op in quant_run.produced if name in float_run.names]
    names = [name for name, _ in shared]
    float_acts, quant_acts = float_run.activations(arrays, count, names), quant_run.activations(arrays, count, names)
    outputs = {d["name"]: k for k, d in enumerate(float_run.interpreter.get_output_details())}
    rows = {}
    for name, op in shared:
        if float_acts[name].shape != quant_acts[name].shape:  # the same name on another tensor: not comparable
            continue
        layer = _layer_of(name, outputs, output_layers)
        rows[layer or name] = {"layer": layer, "tensor": name, "op": op,
                               **_errors(float_acts[name], quant_acts[name])}  # a layer's last tensor wins
    if not rows:
        log.warning("the float and quantized models share no named intermediate tensor; was a model converted "
                    "with its names stripped?")
    layers = sorted(rows.values(), key=lambda r: (r["snr_db"] is None, r["snr_db"] or 0.0))
    return {"method": METHOD, "samples": count, "layers": layers}


def plot_snr(layers: list[dict]) -> bytes:
    """A bar per layer of its SNR in dB, worst on top, as a PNG (the three worst in red; higher is better).

    Args:
        layers: the rows of :func:`layer_errors` (worst first).

    Example:
        >>> png = plot_snr(quant["layers"])  # doctest: +SKIP
        >>> png[:4]  # doctest: +SKIP
        b'\\x89PNG'
    """
    from matplotlib.figure import Figure

    from edgedl.report.plots import png_bytes

    rows = list(layers)
    values = [r["snr_db"] if r["snr_db"] is not None else 0.0 for r in rows]
    worst = sorted(values)[:3]
    fig = Figure(figsize=(6.4, 1.2 + 0.32 * max(len(rows), 1)), dpi=100, layout="constrained")
    ax = fig.subplots()
    ys = np.arange(len(rows))
    ax.barh(ys, values, color=["tab:red" if v in worst else "tab:blue" for v in values])
    ax.set_yticks(ys, [r["layer"] or r["tensor"][:40] for r in rows], fontsize=8)
    ax.invert_yaxis()  # the worst layer on top
    for y, r, v in zip(ys, rows, values):
        ax.annotate("n/a" if r["snr_db"] is None else f"{v:.1f}", (v, y), va="center", fontsize=7,
                    xytext=(3, 0), textcoords="offset points")
    ax.set_xlabel("SNR (dB), float activations against the quantized model's; higher is better", fontsize=8)
    ax.set_title("per-layer quantization error", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    return png_bytes(fig)


class _Run:
    """One ``.tflite`` on LiteRT's built-in kernels, every tensor kept after a run."""

    def __init__(self, tflite: bytes):
        from edgedl._lazy import quiet
        from edgedl.runtime.engines import litert_interpreter_class

        Interpreter = litert_interpreter_class()
        resolvers = importlib.import_module(Interpreter.__module__).OpResolverType
        with quiet():
            self.interpreter = Interpreter(model_content=tflite, experimental_preserve_all_tensors=True,
                                           experimental_op_resolver_type=resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            self.interpreter.allocate_tensors()
        self.inputs = self.interpreter.get_input_details()
        self.produced = []  # (tensor name, op) of every operator output, in execution order
        self._index, kind = {}, {}
        for op in self.interpreter._get_ops_details():  # noqa: SLF001 - LiteRT's only op listing
            what = op["op_name"]
            if what == "DEQUANTIZE" and len(op["inputs"]) == 1:  # a float copy of an output: its maker's op
                what = kind.get(op["inputs"][0], what)
            for index in op["outputs"]:
                name = self.interpreter._get_tensor_details(index, 0)["name"]  # noqa: SLF001
                self.produced.append((name, what))
                self._index[name], kind[index] = index, what
        self.names = set(self._index)

    def activations(self, arrays: list[np.ndarray], count: int, names: list[str]) -> dict[str, np.ndarray]:
        """The named tensors, dequantized to float32, for the first ``count`` samples: ``{name: (count, ...)}``."""
        from edgedl.runtime.quant import dequantize, quantize_inputs

        specs = [_spec(d) for d in self.inputs]
        samples = quantize_inputs([a[:count] for a in arrays], specs)
        details = {n: self.interpreter._get_tensor_details(self._index[n], 0) for n in names}  # noqa: SLF001
        out = {n: [] for n in names}
        for i in range(count):
            for d, a in zip(self.inputs, samples):
                self.interpreter.set_tensor(d["index"], a[i:i + 1])
            self.interpreter.invoke()
            for n in names:
                out[n].append(dequantize(self.interpreter.get_tensor(self._index[n]), _spec(details[n])))
        return {n: np.stack(v) for n, v in out.items()}


def _spec(detail: dict):
    """A tensor's dtype, scale and zero point (the first, for a tensor quantized per channel)."""
    from edgedl.runtime.engines import TensorSpec

    params = detail.get("quantization_parameters") or {}
    scales, zeros = params.get("scales"), params.get("zero_points")
    if scales is not None and len(scales):
        scale, zero = float(scales[0]), int(zeros[0])
    else:
        scale, zero = detail.get("quantization", (0.0, 0))
    return TensorSpec(detail["name"], tuple(int(s) for s in detail["shape"]), np.dtype(detail["dtype"]).name,
                      float(scale), int(zero))


def _errors(f: np.ndarray, q: np.ndarray) -> dict:
    """rmse_rel, cosine and snr_db of ``q`` against the reference ``f`` (None where undefined)."""
    f, q = f.astype(np.float64).ravel(), q.astype(np.float64).ravel()
    noise, signal = float(np.sum((q - f) ** 2)), float(np.sum(f ** 2))
    spread = float(f.max() - f.min()) if f.size else 0.0
    norms = math.sqrt(signal * float(np.sum(q ** 2)))
    rmse = math.sqrt(noise / max(f.size, 1))
    return {"rmse_rel": round(rmse / spread, 6) if spread > 0 else None,
            "cosine": round(float(np.dot(f, q)) / norms, 6) if norms > 0 else None,
            "snr_db": round(10 * math.log10(signal / noise), 3) if noise > 0 and signal > 0 else None}


def _layer_of(tensor: str, outputs: dict[str, int], output_layers: list[str] | None) -> str | None:
    """The Keras layer a tensor belongs to: from its name's layer path, else the output layer it is."""
    from edgedl.bench.profile import keras_layer

    layer = keras_layer(tensor)
    if layer is None and tensor in outputs and output_layers and len(output_layers) == len(outputs):
        layer = output_layers[outputs[tensor]]
    return layer


def _output_layers(model) -> list[str] | None:
    """The Keras layer of each model output, where the ``.tflite`` keeps that order (one output)."""
    outputs = list(getattr(model, "outputs", None) or [])
    if len(outputs) != 1:
        return None  # the converter orders several outputs its own way: leave them unnamed than misnamed
    history = getattr(outputs[0], "_keras_history", None)
    return [history[0].name] if history else None
