"""Reading a ``.tflite`` graph: its operators, tensors, parameters and multiply-accumulates.

Used by ``edgedl inspect``, by the backends' support checks and by the bundle's estimates. It runs
on LiteRT's interpreter (no TensorFlow needed).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import numpy as np

from edgedl.errors import InputFileError


@dataclass
class Op:
    index: int
    name: str
    inputs: list[int]
    outputs: list[int]
    macs: int = 0


@dataclass
class Graph:
    """The operators and tensors of one ``.tflite`` model."""

    path: str
    size_bytes: int
    ops: list[Op]
    tensors: dict = field(repr=False)    # index -> {"name", "shape", "dtype", "quantization", "constant"}
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)

    @property
    def op_counts(self) -> dict:
        return dict(Counter(op.name for op in self.ops))

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def num_params(self) -> int:
        return sum(prod(t["shape"]) for t in self.tensors.values()
                   if t["constant"] and t["shape"] is not None and all(d >= 0 for d in t["shape"]))

    @property
    def is_quantized(self) -> bool:
        return any(t["dtype"] in ("int8", "uint8", "int16") for t in self.tensors.values() if t["constant"])

    def summary(self) -> dict:
        return {"path": self.path, "size_bytes": self.size_bytes, "num_ops": len(self.ops),
                "op_counts": self.op_counts, "macs": self.macs, "num_params": self.num_params,
                "quantized": self.is_quantized, "inputs": self.inputs, "outputs": self.outputs}


def read_tflite(path: str | Path) -> Graph:
    """Parse a ``.tflite`` file into a :class:`Graph`.

    Raises:
        InputFileError: the file is missing, empty, truncated or not a TFLite flatbuffer.
    """
    from edgedl._lazy import quiet
    from edgedl.runtime.engines import litert_interpreter_class, read_tflite_file

    path = Path(path)
    data = read_tflite_file(path)
    Interpreter = litert_interpreter_class()
    try:
        with quiet():
            interp = Interpreter(model_content=data)
            ops_details = interp._get_ops_details()
            tensor_details = interp.get_tensor_details()
            input_details, output_details = interp.get_input_details(), interp.get_output_details()
    except (ValueError, RuntimeError, IndexError) as e:  # IndexError: an input or output index out of range
        raise InputFileError(path, f"corrupt or unsupported TFLite model ({' '.join(str(e).split())[:160]})") from None
    produced = set()
    for d in ops_details:
        produced.update(int(i) for i in d["outputs"])
    input_ids = {d["index"] for d in input_details}
    tensors = {}
    for t in tensor_details:
        idx = int(t["index"])
        scale, zp = t.get("quantization", (0.0, 0))
        tensors[idx] = {
            "name": t["name"], "shape": [int(s) for s in t["shape"]], "dtype": np.dtype(t["dtype"]).name,
            "quantization": {"scale": float(scale), "zero_point": int(zp)},
            "constant": idx not in produced and idx not in input_ids,
        }
    ops = [Op(int(d["index"]), d["op_name"], [int(i) for i in d["inputs"]], [int(i) for i in d["outputs"]])
           for d in ops_details]
    for op in ops:
        op.macs = _macs(op, tensors)
    io = lambda details: [{"name": d["name"], "shape": [int(s) for s in d["shape"]],  # noqa: E731
                           "dtype": np.dtype(d["dtype"]).name} for d in details]
    return Graph(str(path), len(data), ops, tensors, io(input_details), io(output_details))


def _shape(tensors, op: Op, k: int, rank: int = 0) -> list | None:
    """The shape of input ``k`` of ``op`` when it has one of at least ``rank`` known, non-negative
    dimensions; None otherwise (a malformed or optional input counts no MACs rather than failing)."""
    if k >= len(op.inputs):
        return None
    t = tensors.get(op.inputs[k]) if op.inputs[k] >= 0 else None
    shape = t["shape"] if t else None
    if shape is None or len(shape) < rank or any(d < 0 for d in shape):
        return None
    return shape


def _macs(op: Op, tensors) -> int:
    """Multiply-accumulates of one operator, from its output and weight shapes.

    Counted with Python integers (no overflow on absurd shapes) and only from shapes of the rank the
    operator's schema gives: a malformed model counts 0 for an operator rather than failing.
    """
    t = tensors.get(op.outputs[0]) if op.outputs and op.outputs[0] >= 0 else None
    out = t["shape"] if t else None
    if not out or any(d < 0 for d in out):
        return 0
    size = prod(out)
    if op.name in ("CONV_2D",):
        w = _shape(tensors, op, 1, 4)  # [cout, kh, kw, cin]
        return size * w[1] * w[2] * w[3] if w else 0
    if op.name == "DEPTHWISE_CONV_2D":
        w = _shape(tensors, op, 1, 4)  # [1, kh, kw, cout]
        return size * w[1] * w[2] if w else 0
    if op.name == "TRANSPOSE_CONV":
        w = _shape(tensors, op, 1, 3)
        x = _shape(tensors, op, 2)
        return prod(x) * w[0] * w[1] * w[2] if w and x else 0
    if op.name == "FULLY_CONNECTED":
        w = _shape(tensors, op, 1, 2)  # [units, in]
        return prod(out[:-1]) * w[0] * w[1] if w else 0
    if op.name == "BATCH_MATMUL":
        a = _shape(tensors, op, 0, 1)
        return size * a[-1] if a else 0
    if op.name == "UNIDIRECTIONAL_SEQUENCE_LSTM":
        x = _shape(tensors, op, 0, 2)  # [batch, time, in]
        w = _shape(tensors, op, 1, 2)  # input-to-input weights [units, in]
        wr = _shape(tensors, op, 5, 2)  # recurrent weights [units, units]
        if x and w and wr:
            return x[0] * x[1] * 4 * (w[0] * w[1] + wr[0] * wr[1])
    return 0
