"""Reading a ``.tflite`` graph: its operators, tensors, parameters, multiply-accumulates and how it
is quantized (read from the operators: which dtypes they compute on and which weights they take).

Used by ``edgedl inspect``, by the backends' support checks and by the bundle's estimates. It runs
on LiteRT's interpreter and LiteRT's flatbuffer schema (no TensorFlow needed).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import numpy as np

from edgedl.errors import InputFileError


QUANTIZATION_KINDS = {
    "int8": "full integer: int8 activations and weights",
    "int16x8": "int16x8: int16 activations, int8 weights",
    "dynamic": "dynamic range (hybrid): float activations, int8 weights",
    "float16": "float16 weights, float computation",
    "mixed": "mixed: some operators in integer, others in float",
    "float": "float: not quantized",
}
INTEGER_KINDS = ("int8", "int16x8", "dynamic", "mixed")  # the kinds that compute with integer weights
FLOAT_DTYPES = {"float32", "float16", "float64"}
PASS_THROUGH = ("QUANTIZE", "DEQUANTIZE")  # convert at the edges or dequantize constants: they compute nothing


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
    nested: list = field(default_factory=list, repr=False)  # the other subgraphs (WHILE/IF bodies) as Graphs

    def _all(self) -> list:
        """This graph and its nested subgraphs (where a recurrent layer's loop body keeps its weights)."""
        return [self, *self.nested]

    @property
    def op_counts(self) -> dict:
        return dict(Counter(op.name for op in self.ops))

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def num_params(self) -> int:
        """The elements of the constant tensors, those of loop bodies (a recurrent layer's) included."""
        return sum(prod(t["shape"]) for g in self._all() for t in g.tensors.values()
                   if t["constant"] and t["shape"] is not None and all(d >= 0 for d in t["shape"]))

    @property
    def is_quantized(self) -> bool:
        """Whether the model computes with integer weights: full integer, int16x8, dynamic range or
        mixed (:attr:`quantization_kind`); float and float16 models are not."""
        return self.quantization_kind in INTEGER_KINDS

    def custom_ops(self) -> list[str]:
        """The names of the custom operators (not TFLite builtins, such as Vela's ``ethos-u``)."""
        from ai_edge_litert import schema_py_generated as schema

        builtin = {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")}
        return sorted({op.name for g in self._all() for op in g.ops if op.name not in builtin})

    def activation_dtypes(self, op: Op) -> set[str]:
        """The dtypes of the tensors ``op`` computes on and produces (its non-constant inputs and its
        outputs), not those of its weights."""
        ids = [i for i in op.inputs if i >= 0 and not self.tensors.get(i, {}).get("constant", True)]
        return {self.tensors[i]["dtype"] for i in ids + [i for i in op.outputs if i in self.tensors]}

    def hybrid_ops(self) -> list[Op]:
        """The operators that run a hybrid (dynamic-range) kernel: float activations in, int8 weights
        stored as constants, quantized on the fly at run time.

        Example:
            >>> graph = read_tflite("dense_dynamic.tflite")  # doctest: +SKIP
            >>> [op.name for op in graph.hybrid_ops()]       # doctest: +SKIP
            ['FULLY_CONNECTED']
        """
        return [op for g in self._all() for op in g.ops if op.name not in PASS_THROUGH
                and g.activation_dtypes(op) & FLOAT_DTYPES
                and any(g.tensors.get(i, {}).get("constant") and g.tensors[i]["dtype"] in ("int8", "uint8")
                        for i in op.inputs if i >= 0)]

    @property
    def quantization_kind(self) -> str:
        """How the model is quantized, read from its operators (one of :data:`QUANTIZATION_KINDS`):

        - ``int8``: full integer, int8 (or uint8) activations in every computing operator; float
          only at the edges (QUANTIZE/DEQUANTIZE);
        - ``int16x8``: int16 activations (int8 weights) in every computing operator;
        - ``dynamic``: dynamic range (hybrid): float activations with int8 weights, fed straight to
          hybrid kernels or dequantized from int8 constants;
        - ``float16``: float16 weights dequantized to float, float computation;
        - ``mixed``: some operators compute in integer, others in float;
        - ``float``: no quantization.

        Example:
            >>> read_tflite("lenet_int8.tflite").quantization_kind  # doctest: +SKIP
            'int8'
        """
        acts = [g.activation_dtypes(op) for g in self._all() for op in g.ops if op.name not in PASS_THROUGH]
        integer = {d for a in acts for d in a} & {"int8", "uint8", "int16"}
        in_float = any(a & FLOAT_DTYPES for a in acts)
        dequantized = {g.tensors[op.inputs[0]]["dtype"] for g in self._all() for op in g.ops
                       if op.name == "DEQUANTIZE" and op.inputs and g.tensors.get(op.inputs[0], {}).get("constant")}
        if self.hybrid_ops() or (in_float and dequantized & {"int8", "uint8"}):
            return "dynamic"
        if integer and in_float:
            return "mixed"
        if integer:
            return "int16x8" if "int16" in integer else "int8"
        return "float16" if "float16" in dequantized else "float"

    def summary(self) -> dict:
        kind = self.quantization_kind
        return {"path": self.path, "size_bytes": self.size_bytes, "num_ops": len(self.ops),
                "op_counts": self.op_counts, "macs": self.macs, "num_params": self.num_params,
                "quantized": kind in INTEGER_KINDS,
                "quantization": {"kind": kind, "description": QUANTIZATION_KINDS[kind]},
                "inputs": self.inputs, "outputs": self.outputs}


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
            num_subgraphs = interp._interpreter.NumSubgraphs()
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
                           "dtype": np.dtype(d["dtype"]).name, "scale": float(d["quantization"][0]),
                           "zero_point": int(d["quantization"][1])} for d in details]
    nested = _nested_subgraphs(path, data) if num_subgraphs > 1 else []
    return Graph(str(path), len(data), ops, tensors, io(input_details), io(output_details), nested)


def _nested_subgraphs(path: Path, data: bytes) -> list[Graph]:
    """The subgraphs past the first (the bodies of WHILE, IF and CALL_ONCE), read from the flatbuffer
    with LiteRT's schema: the interpreter lists the operators of the first one only. Their operators
    count no MACs (how often a loop body runs is not in the file)."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    try:
        model = schema.Model.GetRootAs(data, 0)
        graphs = []
        for k in range(1, model.SubgraphsLength()):
            sub = model.Subgraphs(k)
            ops = []
            for j in range(sub.OperatorsLength()):
                op = sub.Operators(j)
                code = model.OperatorCodes(op.OpcodeIndex())
                builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
                if builtin == schema.BuiltinOperator.CUSTOM:
                    name = (code.CustomCode() or b"CUSTOM").decode("utf-8", "replace")
                else:
                    name = names.get(builtin, str(builtin))
                ops.append(Op(j, name, [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else [],
                              [int(i) for i in op.OutputsAsNumpy()] if op.OutputsLength() else []))
            produced = {i for op in ops for i in op.outputs}
            inputs = {int(i) for i in sub.InputsAsNumpy()} if sub.InputsLength() else set()
            tensors = {}
            for i in range(sub.TensorsLength()):
                t = sub.Tensors(i)
                tensors[i] = {"name": (t.Name() or b"").decode("utf-8", "replace"),
                              "shape": [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else [],
                              "dtype": types.get(t.Type(), "unknown"), "quantization": {},
                              "constant": i not in produced and i not in inputs}
            graphs.append(Graph(str(path), 0, ops, tensors))
        return graphs
    except (IndexError, ValueError, TypeError, AttributeError, OverflowError, struct.error) as e:
        raise InputFileError(path, f"corrupt TFLite flatbuffer ({' '.join(str(e).split())[:160]})") from None


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
