"""The backend interface: compile a ``.tflite`` for a target into files, and load them to run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgedl.errors import InputFileError
from edgedl.runtime.engines import Engine, TensorSpec
from edgedl.targets import Target


def check_inputs(path, names) -> None:
    """Refuse a model that declares no inputs (nothing to feed).

    Raises:
        InputFileError: ``names`` (the model's input names) is empty.
    """
    if not list(names):
        raise InputFileError(path, "the model declares no inputs; edgedl's compile and bench need at least one")


def check_outputs(path, names) -> None:
    """Refuse a model that declares no outputs (nothing to run or compare).

    Raises:
        InputFileError: ``names`` is empty.
    """
    if not list(names):
        raise InputFileError(path, "the model declares no outputs; edgedl needs at least one (its first output "
                                   "is the class scores)")


@dataclass
class CompiledModel:
    """What a backend made: its files (relative to ``directory``) and how to run them."""

    backend: str
    target: str
    directory: Path
    files: list[str]
    runtime: dict                      # engine name and its load arguments, JSON-able
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    options: dict = field(default_factory=dict)
    toolchain: dict = field(default_factory=dict)
    estimates: dict = field(default_factory=dict)
    compile_time_s: float = 0.0


class Backend:
    """One toolchain. Subclasses set ``name`` and ``extra`` and implement the three methods."""

    name = "backend"
    extra = "all"

    def supports(self, target: Target) -> tuple[bool, str]:
        """(ok, reason): whether this backend can compile for ``target``."""
        if self.name not in target.backends:
            return False, f"target '{target.name}' lists backends {', '.join(target.backends)}, not {self.name}"
        return True, ""

    def unsupported_ops(self, graph, target: Target) -> dict:
        """{operator name: reason} for the operators of ``graph`` (an ``edgedl.graph.Graph``) that make
        this backend's compile for ``target`` refuse the model; empty when it compiles. ``inspect``'s
        support table is these answers, and ``tests/test_inspect.py`` holds them to what compile does."""
        return {}

    def cpu_fallback_ops(self, graph, target: Target) -> dict:
        """{operator name: reason} for operators the build leaves to the target's CPU (an NPU backend's
        fallback); empty for a backend that runs the whole model."""
        return {}

    def runs_here(self, target: Target) -> tuple[bool, str]:
        """(ok, reason): whether this machine can run what this backend compiles for ``target``
        (by default: whether the target's code runs here, :meth:`Target.runs_here`)."""
        return target.runs_here()

    def reference_kernels(self, compiled: CompiledModel) -> str | None:
        """The LiteRT kernel set (``xnnpack``, ``builtin`` or ``reference``) whose integer arithmetic
        this build implements: a quantized ``.tflite`` source is run with it as the build's reference,
        so a build is not failed for rounding the way the kernels it implements do. None: the build
        does not run a ``.tflite`` (an ``.onnx`` source), and the source's own engine is the reference."""
        return "xnnpack"

    def compile(self, tflite_path: Path, target: Target, out_dir: Path, options: dict) -> CompiledModel:
        raise NotImplementedError

    def load(self, compiled: CompiledModel, num_threads: int = 1) -> Engine:
        raise NotImplementedError
