"""Affine (de)quantization between float arrays and a model's integer input/output tensors, and the
float-in, float-out loop over an engine (one sample at a time) that the runtime and bench share."""

from __future__ import annotations

import numpy as np

from edgedl.errors import BackendError
from edgedl.runtime.engines import TensorSpec


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float -> the tensor's dtype with its scale and zero point (a no-op cast for float tensors)."""
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f" or spec.scale == 0.0:
        return np.asarray(x, dtype=dtype)
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float32) / spec.scale) + spec.zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """The tensor's dtype -> float32."""
    if np.dtype(spec.dtype).kind == "f" or spec.scale == 0.0:
        return np.asarray(y, dtype=np.float32)
    return (y.astype(np.float32) - spec.zero_point) * np.float32(spec.scale)


def quantize_inputs(x, specs: list[TensorSpec]) -> list[np.ndarray]:
    """Float samples for every input of a model, each quantized with its own input's spec.

    Args:
        x: a float array (N, ...) for a model with one input, or a list of float arrays, one per
            spec, in the order of ``specs``, each (N, ...) with the same N.
        specs: the model's input specs (``engine.inputs``).

    Returns:
        One array (N, ...) per input, in the dtype of its input.

    Raises:
        BackendError: a wrong number of arrays, or arrays with different numbers of samples.

    Example:
        >>> specs = [TensorSpec("a", (1, 2), "int8", 0.5, 0), TensorSpec("b", (1, 1), "float32")]
        >>> [q.tolist() for q in quantize_inputs([np.array([[1.0, -1.0]]), np.array([[0.25]])], specs)]
        [[[2, -2]], [[0.25]]]
    """
    arrays = list(x) if isinstance(x, (list, tuple)) else [x]
    if len(arrays) != len(specs):
        names = ", ".join(repr(s.name) for s in specs)
        raise BackendError(f"the model takes {len(specs)} input{'' if len(specs) == 1 else 's'} ({names}), "
                           f"got {len(arrays)}")
    counts = {len(a) for a in arrays}
    if len(counts) > 1:
        sizes = ", ".join(f"'{s.name}': {len(a)}" for s, a in zip(specs, arrays))
        raise BackendError(f"the inputs have different numbers of samples ({sizes}); each takes the same samples")
    return [quantize(a, spec) for a, spec in zip(arrays, specs)]


def predict_outputs(engine, x) -> list[np.ndarray]:
    """Run float samples one at a time through an engine; every output as float (N, ...).

    ``x``: a float array (N, ...) for a model with one input, or a list of them (the same N), one
    per entry of ``engine.inputs`` in that order; each is quantized with its own input's spec.
    """
    arrays = quantize_inputs(x, engine.inputs)
    one = len(arrays) == 1
    per_sample = [engine.invoke_all(arrays[0][i:i + 1] if one else [a[i:i + 1] for a in arrays])
                  for i in range(len(arrays[0]))]
    return [np.stack([dequantize(raw[k], spec)[0] for raw in per_sample]) for k, spec in enumerate(engine.outputs)]


def predict(engine, x) -> np.ndarray:
    """Run float samples one at a time through an engine; the first output as float (N, ...).

    ``x`` as for :func:`predict_outputs`.
    """
    arrays = quantize_inputs(x, engine.inputs)
    one = len(arrays) == 1
    spec_out = engine.outputs[0]
    outs = []
    for i in range(len(arrays[0])):
        raw = engine.invoke(arrays[0][i:i + 1] if one else [a[i:i + 1] for a in arrays])
        outs.append(dequantize(raw, spec_out)[0])
    return np.stack(outs)
