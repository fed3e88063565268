"""The TFLite Micro engine: a ``.tflite`` run by TFLM's reference interpreter in a fixed tensor arena.

This is the interpreter a microcontroller runs (the Python package wraps the same C++ code with its
reference kernels), so running it here checks what the device will compute. TFLM writes its
diagnostics (a missing operator, an arena that is too small, the allocation breakdown) with
``MicroPrintf`` on the process's stdout/stderr; :func:`build_interpreter` captures them.

Like the rest of ``edgedl.runtime`` this imports numpy and, lazily, ``tflite_micro`` only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from edgedl._lazy import captured_output
from edgedl.errors import BackendError, InputFileError, MissingDependencyError, UnsupportedOperatorError
from edgedl.runtime.engines import Engine, TensorSpec, read_tflite_file

MISSING_OP = re.compile(r"Didn't find op for (?:builtin opcode|custom opcode) '([^']+)'")
ARENA_SHORT = re.compile(r"(Failed to (?:allocate|resize)[^\n]*|missing: \d+)")


def _runtime():
    try:
        from tflite_micro import runtime
    except ImportError:
        raise MissingDependencyError("tflite_micro", "micro") from None
    return runtime


def build_interpreter(model: bytes, arena_size: int):
    """(interpreter or None, TFLM's log): one attempt to build TFLM's interpreter in ``arena_size`` bytes.

    The interpreter allocates its tensors while it is built, so a success means the arena is large
    enough for the whole model (TFLM plans every tensor and scratch buffer up front).
    """
    runtime = _runtime()
    with captured_output() as out:
        try:
            interpreter = runtime.Interpreter.from_bytes(model, arena_size=int(arena_size))
        except (RuntimeError, ValueError):
            interpreter = None
        except Exception as e:  # noqa: BLE001 - TFLM's Python flatbuffer reader on a malformed file (struct.error...)
            raise InputFileError("model", f"TFLite Micro cannot read it ({str(e)[:120]}); the "
                                          "file is malformed") from None
    return interpreter, out.text.replace("\r", "")


def missing_operators(log: str) -> list[str]:
    """The operators TFLM's op resolver lacks, as named in its log."""
    return list(dict.fromkeys(MISSING_OP.findall(log)))


def allocation_report(interpreter) -> tuple[list[dict], str]:
    """TFLM's ``print_allocations`` breakdown as a list of {what, bytes, ...} and the raw text."""
    with captured_output() as out:
        interpreter.print_allocations()
    entries = []
    for line in out.text.splitlines():
        m = re.search(r"Arena allocation (\w+) (\d+) bytes", line)
        if m:
            entries.append({"what": f"arena {m.group(1)}", "bytes": int(m.group(2))})
            continue
        m = re.search(r"'([^']+)' used (\d+) bytes with alignment overhead \(requested (\d+) bytes for (\d+) ", line)
        if m:
            entries.append({"what": m.group(1), "bytes": int(m.group(2)), "requested_bytes": int(m.group(3)),
                            "count": int(m.group(4))})
    return entries, out.text


def io_specs(model: bytes, interpreter) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs: names from the flatbuffer, shapes/types/quantization from TFLM."""
    schema_fb = _runtime().schema_fb

    subgraph = schema_fb.Model.GetRootAsModel(model, 0).Subgraphs(0)

    def spec(tensor_index, details):
        q = details.get("quantization_parameters", {})
        scales, zps = q.get("scales", []), q.get("zero_points", [])
        name = (subgraph.Tensors(tensor_index).Name() or f"tensor{tensor_index}".encode()).decode("utf-8", "replace")
        return TensorSpec(name, tuple(int(s) for s in details["shape"]), np.dtype(details["dtype"]).name,
                          float(scales[0]) if len(scales) else 0.0, int(zps[0]) if len(zps) else 0)

    inputs = [spec(subgraph.Inputs(i), interpreter.get_input_details(i)) for i in range(subgraph.InputsLength())]
    outputs = [spec(subgraph.Outputs(i), interpreter.get_output_details(i)) for i in range(subgraph.OutputsLength())]
    return inputs, outputs


def has_variables(model: bytes) -> bool:
    """Whether the model keeps state between invocations in variable tensors (a fused LSTM does)."""
    schema_fb = _runtime().schema_fb
    root = schema_fb.Model.GetRootAsModel(model, 0)
    for g in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(g)
        if any(subgraph.Tensors(t).IsVariable() for t in range(subgraph.TensorsLength())):
            return True
    return False


class TFLMEngine(Engine):
    """A ``.tflite`` on TFLite Micro's interpreter, in a tensor arena of ``arena_size`` bytes.

    Args:
        model_path: the ``.tflite`` file.
        arena_size: the tensor arena in bytes (the size a bundle records); by default ten times the
            model size, TFLM's own default.
        num_threads: ignored: TFLM runs on one thread, like the microcontroller.

    Raises:
        InputFileError: the file is missing or not a TFLite flatbuffer.
        UnsupportedOperatorError: TFLM's op resolver lacks an operator of the model (named).
        BackendError: the arena is too small, or TFLM fails otherwise (its log says why).

    Example:
        >>> engine = TFLMEngine("model.tflite", arena_size=12 * 1024)  # doctest: +SKIP
        >>> y = engine.invoke(x_int8)  # doctest: +SKIP
    """

    name = "tflm"

    def __init__(self, model_path: str | os.PathLike, arena_size: int | None = None, num_threads: int = 1):
        path = Path(model_path)
        model = read_tflite_file(path)
        self.arena_size = int(arena_size or 10 * len(model))
        try:
            self.interpreter, log = build_interpreter(model, self.arena_size)
        except InputFileError as e:
            raise InputFileError(path, str(e).removeprefix("model: ")) from None
        if self.interpreter is None:
            missing = missing_operators(log)
            if missing:
                raise UnsupportedOperatorError(
                    f"TFLite Micro has no kernel for operator(s) {', '.join(missing)} in {path.name}")
            detail = "; ".join(ARENA_SHORT.findall(log)) or " ".join(log.split())[-200:] or "no log"
            raise BackendError(f"TFLite Micro cannot set up {path.name} in a {self.arena_size}-byte arena ({detail})")
        try:
            self.stateful = has_variables(model)
            self.inputs, self.outputs = io_specs(model, self.interpreter)
        except Exception as e:  # noqa: BLE001 - the flatbuffer reader on a malformed file (struct.error, ...)
            raise InputFileError(path, f"its tensors cannot be read ({type(e).__name__}: {str(e)[:160]}); the file is "
                                       "malformed") from None

    def invoke(self, x) -> np.ndarray:
        for i, a in enumerate(self.check_inputs(x)):
            self.interpreter.set_input(a, i)
        try:
            if self.stateful:  # each inference starts from zero state, as the Keras layer does (engines.STATEFUL_OPS)
                self.interpreter.reset()
            self.interpreter.invoke()
        except RuntimeError as e:
            raise BackendError(f"TFLite Micro failed to invoke the model: {' '.join(str(e).split())[:200]}") from None
        return np.array(self.interpreter.get_output(0))

    def invoke_all(self, x) -> list[np.ndarray]:
        first = self.invoke(x)
        return [first] + [np.array(self.interpreter.get_output(i)) for i in range(1, len(self.outputs))]
