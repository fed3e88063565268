"""Engines: the one thing a device needs to run a compiled model, behind one small interface.

An engine loads an artifact file and runs raw tensors (already quantized where the model's input is
integer). This module imports numpy and, lazily, one runtime: never TensorFlow, Keras or click.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedl.errors import BackendError, InputFileError, MissingDependencyError


def read_tflite_file(path) -> bytes:
    """The bytes of a ``.tflite`` file, refused early when it is missing or not a TFLite flatbuffer.

    Raises:
        InputFileError: no such file, or no ``TFL3`` identifier where a flatbuffer has it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise InputFileError(path, "not a TFLite flatbuffer (no TFL3 identifier)")
    return data


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape, dtype and affine quantization (scale 0 means not quantized) of one tensor."""

    name: str
    shape: tuple
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d["dtype"], float(d.get("scale", 0.0)), int(d.get("zero_point", 0)))


class Engine:
    """Interface: ``inputs``/``outputs`` specs and ``invoke(x) -> y`` on one raw input tensor."""

    name = "engine"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def invoke(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def invoke_all(self, x: np.ndarray) -> list[np.ndarray]:
        """One raw input tensor through the model; every output, in the order of ``outputs``."""
        return [self.invoke(x)]

    def check_input(self, x: np.ndarray) -> np.ndarray:
        spec = self.inputs[0]
        if tuple(x.shape) != tuple(spec.shape):
            raise BackendError(f"input has shape {tuple(x.shape)}, the model takes {tuple(spec.shape)}")
        if x.dtype != np.dtype(spec.dtype):
            raise BackendError(f"input has dtype {x.dtype}, the model takes {spec.dtype}")
        return np.ascontiguousarray(x)


def _import(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(module.split(".")[0], extra) from None


def litert_interpreter_class():
    """LiteRT's Interpreter, or the older tflite-runtime's where that is what the device has."""
    try:
        return importlib.import_module("ai_edge_litert.interpreter").Interpreter
    except ImportError:
        pass
    try:
        return importlib.import_module("tflite_runtime.interpreter").Interpreter
    except ImportError:
        raise MissingDependencyError("ai_edge_litert", "runtime") from None


KERNEL_SETS = ("xnnpack", "builtin", "reference")


class LiteRTEngine(Engine):
    """A ``.tflite`` model on LiteRT (XNNPACK delegate on CPU by default).

    ``kernels`` picks one of LiteRT's three arithmetics, which differ by a rounding step on a few
    percent of int8 outputs: ``xnnpack`` (the default interpreter), ``builtin`` (its optimized kernels
    without delegates; also ``xnnpack=False``) or ``reference`` (the portable reference kernels,
    what TFLite Micro implements).
    """

    name = "litert"

    def __init__(self, model_path: str, num_threads: int = 1, xnnpack: bool = True, kernels: str | None = None):
        Interpreter = litert_interpreter_class()
        self.model_path = str(model_path)
        kernels = kernels or ("xnnpack" if xnnpack else "builtin")
        if kernels not in KERNEL_SETS:
            raise BackendError(f"unknown LiteRT kernel set '{kernels}'; known: {', '.join(KERNEL_SETS)}")
        self.kernels = kernels
        kwargs = {"model_path": str(model_path), "num_threads": num_threads}
        if kernels != "xnnpack":
            kwargs["experimental_op_resolver_type"] = _op_resolver(kernels)
        from edgedl._lazy import quiet

        try:
            with quiet():  # LiteRT prints "Created TensorFlow Lite XNNPACK delegate" on stderr
                self.interpreter = Interpreter(**kwargs)
                self.interpreter.allocate_tensors()
        except Exception as e:  # noqa: BLE001 - a malformed model fails in LiteRT's C++ or its flatbuffer reader
            # (ValueError, RuntimeError, struct.error, IndexError, ... as the bytes fall)
            raise InputFileError(model_path, f"LiteRT cannot load it ({' '.join(str(e).split())[:200] or type(e).__name__})"
                                 ) from None
        self.inputs = [_litert_spec(d) for d in self.interpreter.get_input_details()]
        self.outputs = [_litert_spec(d) for d in self.interpreter.get_output_details()]
        self._in = self.interpreter.get_input_details()[0]["index"]
        self._out = self.interpreter.get_output_details()[0]["index"]

    def invoke(self, x: np.ndarray) -> np.ndarray:
        x = self.check_input(x)
        try:
            self.interpreter.set_tensor(self._in, x)
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self._out)
        except (ValueError, RuntimeError) as e:  # e.g. a model whose tensors have no data ("Tensor data is null")
            raise InputFileError(self.model_path, f"LiteRT cannot run it ({' '.join(str(e).split())[:200]})"
                                 ) from None

    def invoke_all(self, x: np.ndarray) -> list[np.ndarray]:
        self.invoke(x)
        return [self.interpreter.get_tensor(d["index"]) for d in self.interpreter.get_output_details()]

    def invoke_fast(self, x: np.ndarray) -> None:
        """Invoke without copying the output back (for latency loops)."""
        self.interpreter.set_tensor(self._in, x)
        self.interpreter.invoke()


def _op_resolver(kernels: str):
    resolvers = importlib.import_module("ai_edge_litert.interpreter").OpResolverType
    return resolvers.BUILTIN_REF if kernels == "reference" else resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def _litert_spec(d: dict) -> TensorSpec:
    scale, zp = d.get("quantization", (0.0, 0))
    return TensorSpec(d["name"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).name, float(scale), int(zp))


class TVMEngine(Engine):
    """A shared library built by TVM's Relax, run by TVM's runtime and virtual machine."""

    name = "tvm"

    def __init__(self, library_path: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 device: str = "cpu", num_threads: int = 1):
        tvm = _import("tvm", "tvm")
        import os

        os.environ.setdefault("TVM_NUM_THREADS", str(num_threads))
        try:
            lib = tvm.runtime.load_module(str(library_path))
        except Exception as e:
            raise InputFileError(library_path, f"TVM cannot load it ({' '.join(str(e).split())[:200]})") from None
        try:
            self.device = tvm.device(device, 0)
            present = self.device.exist
        except Exception as e:  # noqa: BLE001 - an unknown device name in the manifest
            raise InputFileError(library_path, f"TVM does not know the device '{device}' ({str(e)[:120]})") from None
        if not present:
            raise BackendError(f"TVM device '{device}' is not present on this machine")
        try:
            self.vm = tvm.relax.VirtualMachine(lib, self.device)
        except Exception as e:  # noqa: BLE001 - a library that loads but is not a Relax executable
            raise InputFileError(library_path, f"TVM cannot run it as a Relax virtual machine "
                                               f"({' '.join(str(e).split())[:200] or type(e).__name__})") from None
        self._tvm = tvm
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        try:
            self._main = self.vm["main"]
        except Exception as e:  # noqa: BLE001 - a library without the entry point edgedl compiles
            raise InputFileError(library_path, f"TVM finds no 'main' function in it ({str(e)[:160]})") from None

    def _tensor(self, x):
        rt = self._tvm.runtime
        return rt.tensor(x, self.device) if hasattr(rt, "tensor") else self._tvm.nd.array(x, self.device)

    def invoke(self, x: np.ndarray) -> np.ndarray:
        return self.invoke_all(x)[0]

    def invoke_all(self, x: np.ndarray) -> list[np.ndarray]:
        x = self.check_input(x)
        try:
            out = self._main(self._tensor(x))
            outs = list(out) if isinstance(out, (list, tuple)) or type(out).__name__ in ("Array", "Tuple") else [out]
            return [o.numpy() for o in outs]
        except Exception as e:  # noqa: BLE001 - TVM's InternalError on a corrupt executable, and the like
            raise BackendError(f"TVM failed to run the model: {' '.join(str(e).split())[:200]}") from None

    def time_evaluator(self, x: np.ndarray, number: int, repeat: int):
        """TVM's own timer: (per-repeat mean seconds list)."""
        fn = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return list(fn(self._tensor(x)).results)
