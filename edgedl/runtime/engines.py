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


# Operators that keep state in variable tensors from one invocation to the next (a fused LSTM's output
# and cell state, an SVDF's memory). A Keras recurrent layer starts every call from zeros, so each
# inference starts from reset state: the engines reset those tensors before each invocation.
STATEFUL_OPS = frozenset({"UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN",
                          "BIDIRECTIONAL_SEQUENCE_RNN", "SVDF"})


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
    """Interface: ``inputs``/``outputs`` specs and ``invoke(x) -> y`` on raw batch-1 tensors.

    ``x`` is one raw batch-1 array for a model with one input, or a list (or tuple) of them, one per
    entry of ``inputs``, in that order.
    """

    name = "engine"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def invoke(self, x) -> np.ndarray:
        raise NotImplementedError

    def invoke_all(self, x) -> list[np.ndarray]:
        """Raw input tensor(s) through the model; every output, in the order of ``outputs``."""
        return [self.invoke(x)]

    def check_inputs(self, x) -> list[np.ndarray]:
        """The raw input tensors, one per entry of ``inputs``, after checking their number, shapes and dtypes.

        Args:
            x: one array (a model with one input) or a list/tuple of arrays in the order of ``inputs``.

        Returns:
            The arrays, C-contiguous, in the order of ``inputs``.

        Raises:
            BackendError: a wrong number of arrays, or an array whose shape or dtype is not its
                input's (the input named where the model has several).

        Example:
            >>> engine = Engine()
            >>> engine.inputs = [TensorSpec("a", (1, 2), "float32"), TensorSpec("b", (1, 3), "float32")]
            >>> [t.shape for t in engine.check_inputs([np.zeros((1, 2), np.float32), np.zeros((1, 3), np.float32)])]
            [(1, 2), (1, 3)]
        """
        arrays = list(x) if isinstance(x, (list, tuple)) else [x]
        if len(arrays) != len(self.inputs):
            names = ", ".join(repr(s.name) for s in self.inputs)
            plural = "input" if len(self.inputs) == 1 else "inputs"
            raise BackendError(f"the model takes {len(self.inputs)} {plural} ({names}), got {len(arrays)}")
        several = len(self.inputs) > 1
        checked = []
        for spec, a in zip(self.inputs, arrays):
            a = np.asarray(a)
            what = f"input '{spec.name}'" if several else "input"
            if tuple(a.shape) != tuple(spec.shape):
                raise BackendError(f"{what} has shape {tuple(a.shape)}, the model takes {tuple(spec.shape)}")
            if a.dtype != np.dtype(spec.dtype):
                raise BackendError(f"{what} has dtype {a.dtype}, the model takes {spec.dtype}")
            checked.append(np.ascontiguousarray(a))
        return checked

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """The one raw input of a one-input model, checked (:meth:`check_inputs` for several)."""
        return self.check_inputs(x)[0]


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
        self._ins = [d["index"] for d in self.interpreter.get_input_details()]
        self._out = self.interpreter.get_output_details()[0]["index"]
        try:
            ops = {d.get("op_name") for d in self.interpreter._get_ops_details()}  # noqa: SLF001 - the one list
        except Exception as e:  # noqa: BLE001 - names LiteRT cannot decode (a malformed or hostile file)
            raise InputFileError(model_path, f"LiteRT cannot read its operators ({type(e).__name__}: "
                                             f"{' '.join(str(e).split())[:160]})") from None
        self.stateful = bool(ops & STATEFUL_OPS)

    def invoke(self, x) -> np.ndarray:
        arrays = self.check_inputs(x)
        try:
            for index, a in zip(self._ins, arrays):
                self.interpreter.set_tensor(index, a)
            if self.stateful:
                self.interpreter.reset_all_variables()
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self._out)
        except (ValueError, RuntimeError) as e:  # e.g. a model whose tensors have no data ("Tensor data is null")
            raise InputFileError(self.model_path, f"LiteRT cannot run it ({' '.join(str(e).split())[:200]})"
                                 ) from None

    def invoke_all(self, x) -> list[np.ndarray]:
        self.invoke(x)
        return [self.interpreter.get_tensor(d["index"]) for d in self.interpreter.get_output_details()]

    def invoke_fast(self, x) -> None:
        """Invoke without checking the input(s) or copying the output back (for latency loops)."""
        if isinstance(x, (list, tuple)):
            for index, a in zip(self._ins, x):
                self.interpreter.set_tensor(index, a)
        else:
            self.interpreter.set_tensor(self._ins[0], x)
        if self.stateful:
            self.interpreter.reset_all_variables()
        self.interpreter.invoke()


def _op_resolver(kernels: str):
    resolvers = importlib.import_module("ai_edge_litert.interpreter").OpResolverType
    return resolvers.BUILTIN_REF if kernels == "reference" else resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def _litert_spec(d: dict) -> TensorSpec:
    scale, zp = d.get("quantization", (0.0, 0))
    return TensorSpec(d["name"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).name, float(scale), int(zp))


def _aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts on an ``alignment``-byte boundary (TVM's kernels
    assume 64)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _to_numpy(tensor) -> np.ndarray:
    """A TVM tensor's values as a new NumPy array (through DLPack on the CPU: ``.numpy()`` costs 5 us)."""
    try:
        return np.from_dlpack(tensor).copy()
    except (TypeError, ValueError, RuntimeError, BufferError, AttributeError):
        return tensor.numpy()


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
        self._staging = None
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        try:
            self._main = self.vm["main"]
        except Exception as e:  # noqa: BLE001 - a library without the entry point edgedl compiles
            raise InputFileError(library_path, f"TVM finds no 'main' function in it ({str(e)[:160]})") from None

    def _tensor(self, x):
        rt = self._tvm.runtime
        return rt.tensor(x, self.device) if hasattr(rt, "tensor") else self._tvm.nd.array(x, self.device)

    def invoke(self, x) -> np.ndarray:
        return self.invoke_all(x)[0]

    def _staged(self, arrays: list[np.ndarray]) -> list:
        """The input tensors of one call. On the CPU they are DLPack views of 64-byte aligned buffers
        this engine owns, into which each call's arrays are copied: making a TVM tensor per call costs
        about 13 us, more than a small model's whole inference (LeNet runs in 20). Elsewhere (a GPU),
        new device tensors."""
        if self.device.dlpack_device_type() != 1:  # kDLCPU
            return [self._tensor(a) for a in arrays]
        if self._staging is None:
            from_dlpack = getattr(self._tvm.runtime, "from_dlpack", None)
            if from_dlpack is None:
                import tvm_ffi

                from_dlpack = tvm_ffi.from_dlpack
            buffers = [_aligned_empty(a.shape, a.dtype) for a in arrays]
            self._staging = (buffers, [from_dlpack(b) for b in buffers])
        buffers, tensors = self._staging
        for buffer, a in zip(buffers, arrays):
            np.copyto(buffer, a)
        return tensors

    def invoke_all(self, x) -> list[np.ndarray]:
        arrays = self.check_inputs(x)
        try:
            out = self._main(*self._staged(arrays))
            outs = list(out) if isinstance(out, (list, tuple)) or type(out).__name__ in ("Array", "Tuple") else [out]
            return [_to_numpy(o) for o in outs]
        except Exception as e:  # noqa: BLE001 - TVM's InternalError on a corrupt executable, and the like
            raise BackendError(f"TVM failed to run the model: {' '.join(str(e).split())[:200]}") from None

    def time_evaluator(self, x, number: int, repeat: int):
        """TVM's own timer on the raw input(s) ``x`` (as :meth:`invoke` takes them): per-repeat mean seconds."""
        fn = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return list(fn(*[self._tensor(a) for a in self.check_inputs(x)]).results)
