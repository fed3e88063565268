"""Layer normalization in a form TensorFlow's integer converter quantizes whole.

Keras 3's LayerNormalization computes ``x * inv + (beta - mean * inv)``; the int8 converter leaves
the ``-mean * inv`` (a NEG) in float, so a transformer's int8 model is not full-integer and Vela
refuses it. For the length of a conversion, :func:`converter_ready` traces each layer normalization
over the last axis as ``(x - mean) * rsqrt(var + epsilon) * gamma + beta``: the same function,
in operators (MEAN, SUB, MUL, RSQRT, ADD) that all quantize to int8.

Example:
    >>> with converter_ready(model) as names:     # doctest: +SKIP
    ...     tflite = converter.convert()
"""

from __future__ import annotations

import contextlib
import types

from edgedl import _lazy


def _last_axis_only(layer) -> bool:
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    try:
        rank = len(layer.input.shape)
    except (AttributeError, ValueError):  # called several times or never: its rank is not known here
        return list(axes) == [-1]
    return [a % rank for a in axes] == [rank - 1] and not getattr(layer, "rms_scaling", False)


def layer_norms(model) -> list:
    """Every LayerNormalization of ``model`` (nested models too) over its last axis alone."""
    keras = _lazy.keras()
    out = []

    def walk(layer):
        if isinstance(layer, keras.layers.LayerNormalization) and _last_axis_only(layer):
            out.append(layer)
        for inner in getattr(layer, "layers", None) or ():
            walk(inner)
        for attr in vars(layer).values():  # sub-layers of a custom block (an encoder block's norms)
            if isinstance(attr, keras.layers.Layer) and attr is not layer and attr not in out:
                walk(attr)

    for layer in model.layers:
        walk(layer)
    return list({id(x): x for x in out}.values())


@contextlib.contextmanager
def converter_ready(model):
    """Within the block, ``model``'s layer normalizations trace in integer-friendly operators;
    yields the names of the layers changed."""
    layers = layer_norms(model)
    try:
        for layer in layers:
            layer.call = types.MethodType(_call, layer)
        yield [layer.name for layer in layers]
    finally:
        for layer in layers:
            layer.__dict__.pop("call", None)


def _call(self, inputs):
    ops = _lazy.keras().ops
    mean = ops.mean(inputs, axis=-1, keepdims=True)
    centred = ops.subtract(inputs, mean)
    variance = ops.mean(ops.square(centred), axis=-1, keepdims=True)
    out = ops.multiply(centred, ops.rsqrt(ops.add(variance, self.epsilon)))
    if self.gamma is not None:
        out = ops.multiply(out, self.gamma)
    if self.beta is not None:
        out = ops.add(out, self.beta)
    return ops.cast(out, self.compute_dtype)
