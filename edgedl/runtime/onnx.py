"""The ONNX Runtime engine: an ``.onnx`` model in an InferenceSession on the CPU (or CUDA) provider.

Like the rest of ``edgedl.runtime`` this imports numpy and, lazily, ``onnxruntime`` only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from edgedl.errors import BackendError, InputFileError, MissingDependencyError
from edgedl.runtime.engines import Engine, TensorSpec

ONNX_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "onnx") from None
    return onnxruntime


def session(model_path: str | os.PathLike, num_threads: int = 1, device: str = "cpu"):
    """An ``onnxruntime.InferenceSession`` with ``num_threads`` intra-op threads on ``device``.

    Raises:
        InputFileError: the file is missing or ONNX Runtime cannot load it.
        BackendError: ``device`` is unknown or its execution provider is not installed.
    """
    ort = _ort()
    path = Path(model_path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    if device not in PROVIDERS:
        raise BackendError(f"unknown ONNX Runtime device '{device}'; choose one of {', '.join(PROVIDERS)}")
    providers = PROVIDERS[device]
    available = ort.get_available_providers()
    if providers[0] not in available:
        raise BackendError(f"ONNX Runtime has no {providers[0]} here (it has {', '.join(available)}); "
                           "install onnxruntime-gpu for CUDA")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(num_threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures come back as exceptions (and one-line errors), not as log lines
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        raise InputFileError(path, f"ONNX Runtime cannot load it ({ort_message(e)})") from None


def ort_message(error: Exception, limit: int = 240) -> str:
    """ONNX Runtime's message on one line, without its status prefix and its source file paths."""
    text = " ".join(str(error).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    # "/onnxruntime_src/.../reshape_helper.h:91 onnxruntime::ReshapeHelper::ReshapeHelper(...) <check> was false. "
    text = re.sub(r"\S+\.(?:cc|h|cpp):\d+ (?:\S+\(.*?\) )?(?:.*? was false\. )?", "", text)
    return text[:limit]


def session_specs(sess) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input/output specs of a session with batch 1 (a symbolic first dimension becomes 1)."""

    def spec(node):
        shape = []
        for i, d in enumerate(node.shape):
            if isinstance(d, int) and d >= 0:
                shape.append(d)
            elif i == 0:
                shape.append(1)
            else:
                raise BackendError(f"ONNX tensor '{node.name}' has the dynamic dimension {d!r} at axis {i}; "
                                   "edgedl runs models with fixed shapes (only the batch may be dynamic)")
        return TensorSpec(node.name, tuple(shape), ONNX_TYPES.get(node.type, node.type))

    return [spec(n) for n in sess.get_inputs()], [spec(n) for n in sess.get_outputs()]


class ONNXRuntimeEngine(Engine):
    """An ``.onnx`` model run by ONNX Runtime, one sample (batch 1) per ``invoke``; a model with several
    inputs takes a list of arrays in the order of the session's inputs (fed by their names).

    Args:
        model_path: the ``.onnx`` file.
        num_threads: ONNX Runtime's intra-op threads.
        device: ``cpu`` (CPU provider) or ``cuda`` (CUDA provider, CPU for what it lacks).
        inputs, outputs: specs to report instead of the session's, e.g. with the quantization of
            the ``.tflite`` the model came from (shapes and dtypes must agree with the session's).

    Example:
        >>> engine = ONNXRuntimeEngine("lenet.onnx", num_threads=2)  # doctest: +SKIP
        >>> y = engine.invoke(x[None])  # doctest: +SKIP
    """

    name = "onnxruntime"

    def __init__(self, model_path: str | os.PathLike, num_threads: int = 1, device: str = "cpu",
                 inputs: list[TensorSpec] | None = None, outputs: list[TensorSpec] | None = None):
        self.session = session(model_path, num_threads=num_threads, device=device)
        self.path = Path(model_path)
        found_in, found_out = session_specs(self.session)
        if not found_in or not found_out:
            names = ", ".join(repr(s.name) for s in found_in)
            raise InputFileError(model_path, f"the model has {len(found_in)} input(s) ({names}) and {len(found_out)} "
                                             "output(s); edgedl's runtime runs models with at least one input and at "
                                             "least one output")
        self.inputs = _agree(found_in, inputs, "input")
        self.outputs = _agree(found_out, outputs, "output")
        self._ins = [s.name for s in found_in]
        self._out = [found_out[0].name]
        self._all = [s.name for s in found_out]

    def _run(self, names: list[str], x) -> list[np.ndarray]:
        feed = dict(zip(self._ins, self.check_inputs(x)))
        try:
            return list(self.session.run(names, feed))
        except Exception as e:  # onnxruntime's Fail/InvalidArgument/RuntimeException: the graph cannot run
            raise BackendError(f"{self.path.name}: ONNX Runtime failed to run it ({ort_message(e)})") from None

    def invoke(self, x) -> np.ndarray:
        return self._run(self._out, x)[0]

    def invoke_all(self, x) -> list[np.ndarray]:
        return self._run(self._all, x)


def _agree(found: list[TensorSpec], given: list[TensorSpec] | None, what: str) -> list[TensorSpec]:
    if not given:
        return found
    if len(given) != len(found):
        raise BackendError(f"the ONNX model has {len(found)} {what}(s), the specs given name {len(given)}")
    out = []
    for f, g in zip(found, given):
        if tuple(f.shape) != tuple(g.shape) or f.dtype != g.dtype:
            raise BackendError(f"ONNX {what} '{f.name}' is {f.dtype}{list(f.shape)}, the specs given say "
                               f"{g.dtype}{list(g.shape)}")
        out.append(TensorSpec(f.name, f.shape, f.dtype, g.scale, g.zero_point))
    return out
