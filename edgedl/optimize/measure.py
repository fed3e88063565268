"""Measuring an optimization stage, the same way for each: test accuracy, size, gzip'd size,
parameters, MACs and sparsity (a :class:`~edgedl.report.optimize.StageResult`); and writing the
``.tflite`` each stage is measured by.

:class:`Export` turns a Keras model into the ``.tflite`` of the run (calibration, I/O type, weight
scales, names); :class:`Measure` gives one report row per stage (see
:class:`edgedl.report.optimize.OptimizeReport`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgedl.optimize import metrics
from edgedl.report.optimize import StageResult


@dataclass(frozen=True)
class Export:
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


@dataclass(frozen=True)
class Measure:
    """One :class:`~edgedl.report.optimize.StageResult` per stage, measured on the test split ``(x, y)``;
    ``export`` writes the ``.tflite``."""

    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    export: Export

    def keras(self, stage: str, description: str, model, **extra) -> StageResult:
        """Accuracy of a Keras model, and the size of its float32 .tflite (its intermediate tensor names
        stripped if the export strips them), its parameters, MACs and sparsity."""
        from edgedl.keras_utils import evaluate

        _, accuracy = evaluate(model, self.x, self.y)
        return StageResult(stage, description, "float32 tflite", accuracy, **metrics.sizes(self.export(model, "none")),
                           **metrics.model_stats(model), **extra)

    def tflite(self, stage: str, description: str, tflite: bytes, keras_model, fmt: str, **extra) -> StageResult:
        """Accuracy of a .tflite on LiteRT, its size, and the parameters/MACs/sparsity of its Keras source."""
        return StageResult(stage, description, fmt, tflite_accuracy(tflite, self.x, self.y), **metrics.sizes(tflite),
                           **metrics.model_stats(keras_model), **extra)


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


def calibration_samples(x: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` samples of ``x`` drawn without replacement by ``seed``, in their original order."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(count, len(x)), replace=False)
    return x[np.sort(idx)]


def versions() -> dict:
    """The versions of the toolchain that made the numbers (TensorFlow, Keras, LiteRT, edgedl)."""
    import importlib.metadata as md

    out = {}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert", "edgedl"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out
