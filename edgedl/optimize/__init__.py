"""Optimization, between training and compiling: pruning and quantization of Keras 3 models.

TFMOT does not support Keras 3, so this is edgedl's own, in small stages that each take a Keras
model and return a new one:

- :mod:`~edgedl.optimize.prune`: unstructured magnitude pruning with a sparsity schedule.
- :mod:`~edgedl.optimize.structured`: removing whole filters/units and rebuilding a smaller model.
- :mod:`~edgedl.optimize.qat`: quantization-aware training, exported through int8 conversion.
- :mod:`~edgedl.optimize.metrics`: parameters, MACs, sparsity and sizes.
- :mod:`~edgedl.optimize.pipeline`: :func:`optimize`, which chains them and measures each stage.

Example:
    >>> from edgedl.optimize import optimize
    >>> report = optimize("lenet.keras", prune=0.8, quantize="int8", out_dir="out")  # doctest: +SKIP
    >>> print(report.to_markdown())  # doctest: +SKIP
"""

from edgedl.optimize.pipeline import OptimizeReport, optimize
from edgedl.optimize.prune import PruneResult, PruneSpec, prune
from edgedl.optimize.qat import QATResult, quantization_aware_training
from edgedl.optimize.structured import StructuredResult, StructuredSpec, prune_structured

__all__ = [
    "OptimizeReport", "PruneResult", "PruneSpec", "QATResult", "StructuredResult", "StructuredSpec",
    "optimize", "prune", "prune_structured", "quantization_aware_training",
]
