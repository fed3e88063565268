"""Optimization, between training and compiling: pruning and quantization of Keras 3 models.

TFMOT does not support Keras 3, so this is edgedl's own, in small stages that each take a Keras
model and return a new one:

- :mod:`~edgedl.optimize.prune`: unstructured magnitude pruning with a sparsity schedule.
- :mod:`~edgedl.optimize.structured`: removing whole filters/units and rebuilding a smaller model.
- :mod:`~edgedl.optimize.qat`: quantization-aware training, exported through int8 conversion.
- :mod:`~edgedl.optimize.finetune`: :class:`FineTune`, how each of them fine-tunes afterwards.
- :mod:`~edgedl.optimize.metrics` and :mod:`~edgedl.optimize.measure`: parameters, MACs, sparsity,
  sizes and accuracy of each stage.
- :mod:`~edgedl.optimize.keras_graph`: the Keras layer graph the passes read and rewrite.
- :mod:`~edgedl.optimize.options`: :class:`OptimizeOptions`, every option of a run, checked once.
- :mod:`~edgedl.optimize.pipeline`: :func:`optimize`, which chains them and measures each stage
  (the report it returns is :mod:`edgedl.report.optimize`'s).

Example:
    >>> from edgedl.optimize import OptimizeOptions, optimize
    >>> report = optimize("lenet.keras", OptimizeOptions(prune=0.8, quantize="int8", out_dir="out"))  # doctest: +SKIP
    >>> print(report.to_markdown())  # doctest: +SKIP
"""

from edgedl.optimize.finetune import FineTune
from edgedl.optimize.options import OptimizeOptions
from edgedl.optimize.pipeline import optimize
from edgedl.optimize.prune import PruneResult, PruneSpec, prune
from edgedl.optimize.qat import QATResult, quantization_aware_training
from edgedl.optimize.structured import StructuredResult, StructuredSpec, prune_structured
from edgedl.report.optimize import OptimizeReport

__all__ = [
    "FineTune", "OptimizeOptions", "OptimizeReport", "PruneResult", "PruneSpec", "QATResult", "StructuredResult",
    "StructuredSpec", "optimize", "prune", "prune_structured", "quantization_aware_training",
]

from edgedl._stage import callable_module  # noqa: E402

callable_module(__name__)  # edgedl.optimize(...) is edgedl.optimize.optimize(...)
