"""Affine (de)quantization between float arrays and a model's integer input/output tensors."""

from __future__ import annotations

import numpy as np

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


def predict_outputs(engine, x: np.ndarray) -> list[np.ndarray]:
    """Run float samples (N, ...) one at a time through an engine; every output as float (N, ...)."""
    spec_in = engine.inputs[0]
    per_sample = [engine.invoke_all(quantize(sample[None], spec_in)) for sample in x]
    return [np.stack([dequantize(raw[k], spec)[0] for raw in per_sample]) for k, spec in enumerate(engine.outputs)]


def predict(engine, x: np.ndarray) -> np.ndarray:
    """Run float samples (N, ...) one at a time through an engine; float outputs (N, ...)."""
    spec_in, spec_out = engine.inputs[0], engine.outputs[0]
    outs = []
    for sample in x:
        raw = engine.invoke(quantize(sample[None], spec_in))
        outs.append(dequantize(raw, spec_out)[0])
    return np.stack(outs)
