"""What an optimization changed, measured: parameters (all and non-zero), MACs, sparsity, sizes.

Plain functions over a Keras model or a byte string; the optimization report is built from them.
MACs count the multiply-accumulates of one inference (batch 1) in convolutions (transposed ones too),
dense and recurrent layers (bidirectional ones too), EinsumDense layers (the product of the sizes of
every index in the equation) and multi-head attention (the query, key, value and output projections,
plus QK^T and the attention-weighted sum of the values); element-wise layers, pooling, softmax and
normalization (batch norm is folded away on export) count zero. Nested models count with their
layers (the graph is read flattened).
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
    if kind == "EinsumDense":
        return einsum_macs(layer.equation, step.input_shapes[0], layer.kernel.shape)
    if kind == "MultiHeadAttention":
        return _attention_macs(layer, step.input_shapes)
    return 0


def einsum_macs(equation: str, input_shape, kernel_shape) -> int:
    """Multiply-accumulates of ``einsum(equation, x, kernel)`` at batch 1: every index of the
    equation is looped over once, so it is the product of all their sizes (a Dense kernel
    ``ab,bc->ac`` gives a*b*c; an element-wise ``abc,bc->abc`` gives a*b*c).

    Example:
        >>> einsum_macs("abc,cde->abde", (None, 30, 64), (64, 4, 16))
        122880
    """
    inputs, _ = equation.replace(" ", "").split("->")
    x, k = inputs.split(",")
    if "..." in x:  # the ellipsis stands for the input's leading axes, each its own index
        free = len(input_shape) - (len(x) - 3)
        x = x.replace("...", "".join(chr(0x100 + i) for i in range(free)))
    sizes = {}
    for letter, size in [*zip(x, input_shape), *zip(k, kernel_shape)]:
        sizes[letter] = int(size) if size is not None else 1
    return _prod(sizes.values())


def _attention_macs(layer, input_shapes) -> int:
    """Multi-head attention: the four projections (EinsumDense) plus QK^T and the weighted sum of V."""
    query = input_shapes[0]
    value = input_shapes[1] if len(input_shapes) > 1 else query
    key = input_shapes[2] if len(input_shapes) > 2 else value
    heads, key_dim = layer._num_heads, layer._key_dim
    value_dim = layer._value_dim or key_dim
    q_len, kv_len = _prod(query[1:-1]), _prod(key[1:-1])
    projections = sum(einsum_macs(dense.equation, shape, dense.kernel.shape) for dense, shape in (
        (layer._query_dense, query), (layer._key_dense, key), (layer._value_dense, value)))
    output = einsum_macs(layer._output_dense.equation, (1, *query[1:-1], heads, value_dim),
                         layer._output_dense.kernel.shape)
    scores = heads * q_len * kv_len * key_dim  # QK^T
    weighted = heads * q_len * kv_len * value_dim  # softmax(QK^T) V
    return projections + output + scores + weighted


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
