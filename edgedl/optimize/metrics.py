"""What an optimization changed, measured: parameters (all and non-zero), MACs, sparsity, sizes.

Plain functions over a Keras model or a byte string; the optimization report is built from them.
MACs count the multiply-accumulates of one inference (batch 1) in convolutions (transposed ones too),
dense and recurrent layers (bidirectional ones too); element-wise layers, pooling and batch norm
(folded away on export) count zero, and so, for now, do attention and EinsumDense layers. Nested
models count with their layers (the graph is read flattened).
"""

from __future__ import annotations

import gzip
import math

import numpy as np

from edgedl.optimize.keras_graph import trace

# The weights that pruning zeroes, and that "sparsity" is measured over.
KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel", "recurrent_kernel")


def _prod(shape) -> int:
    return int(math.prod(int(d) for d in shape if d is not None))


def layer_macs(step) -> int:
    """Multiply-accumulates of one layer call (a :class:`~edgedl.optimize.keras_graph.Step`) at batch 1."""
    layer, kind = step.layer, step.kind
    out = step.output_shape[1:]
    if kind in ("Conv1D", "Conv2D", "Conv3D"):
        kernel = layer.kernel.shape  # (*window, cin / groups, cout)
        return _prod(out[:-1]) * _prod(kernel)
    if kind in ("DepthwiseConv1D", "DepthwiseConv2D"):
        return _prod(out) * _prod(layer.kernel.shape[:-2])
    if kind in ("SeparableConv1D", "SeparableConv2D"):
        dw, pw = layer.depthwise_kernel.shape, layer.pointwise_kernel.shape
        return _prod(out[:-1]) * (_prod(dw) + _prod(pw))
    if kind in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
        # every input position scatters one window: kernel (*window, cout, cin)
        return _prod(step.input_shapes[0][1:-1]) * _prod(layer.kernel.shape)
    if kind == "Dense":
        return _prod(out[:-1]) * _prod(layer.kernel.shape)
    if kind in ("LSTM", "GRU", "SimpleRNN"):
        return int(step.input_shapes[0][1] or 1) * _recurrent_macs(layer)
    if kind == "Bidirectional":
        steps = int(step.input_shapes[0][1] or 1)
        return steps * (_recurrent_macs(layer.forward_layer) + _recurrent_macs(layer.backward_layer))
    return 0


def _recurrent_macs(layer) -> int:
    """Multiply-accumulates of one time step of an LSTM, GRU or SimpleRNN layer."""
    cell = getattr(layer, "cell", None)
    if cell is None or not hasattr(cell, "recurrent_kernel"):
        return 0
    return _prod(cell.kernel.shape) + _prod(cell.recurrent_kernel.shape)


def count_macs(model) -> int:
    """Multiply-accumulates of one inference (batch 1)."""
    return sum(layer_macs(s) for s in trace(model))


def _kernels(layer):
    return [w for w in layer.weights if w.name in KERNEL_NAMES]


def layer_stats(model) -> list[dict]:
    """Per layer with weights: kind, parameters (all, non-zero), kernel sparsity and MACs."""
    rows = []
    for step in trace(model):
        layer = step.layer
        if not layer.weights:
            continue
        values = [np.asarray(w) for w in layer.weights]
        kernels = [np.asarray(w) for w in _kernels(layer)]
        kernel_size = sum(k.size for k in kernels)
        rows.append({
            "layer": step.name,
            "kind": step.kind,
            "params": int(sum(v.size for v in values)),
            "params_nonzero": int(sum(np.count_nonzero(v) for v in values)),
            "kernel_params": int(kernel_size),
            "sparsity": round(float(1.0 - sum(np.count_nonzero(k) for k in kernels) / kernel_size), 4) if kernel_size else 0.0,
            "macs": layer_macs(step),
        })
    return rows


def model_stats(model) -> dict:
    """Parameters (total, non-zero), kernel sparsity and MACs of the whole model.

    Example:
        >>> model_stats(model)  # doctest: +SKIP
        {'params_total': 61706, 'params_nonzero': 61706, 'sparsity': 0.0, 'macs': 416520}
    """
    rows = layer_stats(model)
    kernel = sum(r["kernel_params"] for r in rows)
    kernel_nonzero = sum(r["kernel_params"] * (1 - r["sparsity"]) for r in rows)
    return {
        "params_total": int(sum(r["params"] for r in rows)),
        "params_nonzero": int(sum(r["params_nonzero"] for r in rows)),
        "sparsity": round(float(1.0 - kernel_nonzero / kernel), 4) if kernel else 0.0,
        "macs": int(count_macs(model)),
    }


def sizes(data: bytes) -> dict:
    """Size in bytes, and size after gzip at the highest level (what sparsity buys in storage)."""
    return {"size_bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0))}
