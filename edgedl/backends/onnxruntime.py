"""ONNX Runtime backend: an ``.onnx`` model for CPU (and CUDA) targets, run by ONNX Runtime.

Sources: an ``.onnx`` file is taken as it is; a ``.tflite`` (what ``edgedl compile`` makes from a
Keras model, quantized or not) is converted with tf2onnx's TFLite frontend, an int8 model into
QuantizeLinear/DequantizeLinear form that ONNX Runtime fuses into integer kernels. Keras models
export straight to ONNX with :func:`export_onnx`. :func:`onnx_reference` runs a float ``.onnx`` as
the reference when the source is an ``.onnx`` file.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from edgedl import _io, _lazy
from edgedl.backends.base import Backend, CompiledModel, check_one_input, check_outputs
from edgedl.errors import InputFileError, MissingDependencyError, OptionError, UnsupportedOperatorError

DEFAULT_OPSET = 17


def _tf2onnx():
    try:
        import tf2onnx
    except ImportError:
        raise MissingDependencyError("tf2onnx", "onnx") from None
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    return tf2onnx


def export_onnx(keras_model, path, opset: int = DEFAULT_OPSET) -> Path:
    """Export a one-input Keras model to ``path`` (.onnx) with batch size 1, atomically.

    Uses Keras 3's ``model.export(format="onnx")`` (tf2onnx under the TensorFlow backend) with an input
    signature of batch 1, so every shape in the graph is fixed.

    Args:
        keras_model: a ``keras.Model`` with one input.
        path: where to write the ``.onnx`` file.
        opset: the ONNX opset to target.

    Returns:
        The path written.

    Raises:
        MissingDependencyError: tf2onnx is not installed.
        UnsupportedOperatorError: the exporter cannot convert an operation of the model.

    Example:
        >>> export_onnx(get_model("lenet").build(), "lenet.onnx")  # doctest: +SKIP
    """
    tf = _lazy.tf()
    _tf2onnx()
    if len(keras_model.inputs) != 1:
        raise OptionError(f"export_onnx takes one-input models; '{keras_model.name}' has {len(keras_model.inputs)}")
    tensor = keras_model.inputs[0]
    shape = (1,) + tuple(keras_model.input_shape[1:])
    name = (getattr(tensor, "name", None) or "input").split(":")[0]
    signature = [tf.TensorSpec(shape, getattr(tensor, "dtype", None) or "float32", name=name)]
    path = Path(path)
    with _io.atomic_path(path, suffix=".onnx") as tmp:
        try:
            with warnings.catch_warnings(), _lazy.quiet():
                warnings.simplefilter("ignore")
                keras_model.export(str(tmp), format="onnx", input_signature=signature, opset_version=opset,
                                   verbose=False)
        except Exception as e:
            raise UnsupportedOperatorError(
                f"ONNX export of '{keras_model.name}' failed: {' '.join(str(e).split())[:300]}") from None
    return path


def onnx_reference(path) -> tuple[object, tuple]:
    """(reference, input shape without batch) for a float ``.onnx`` model, run by ONNX Runtime on the CPU.

    ``reference(x)`` takes float samples (N, ...) and returns the first output as float32 (N, ...).

    Raises:
        InputFileError: the model cannot be loaded, has more than one input, or takes no float input.

    Example:
        >>> reference, shape = onnx_reference("lenet.onnx")  # doctest: +SKIP
        >>> reference(x_test[:8]).shape  # doctest: +SKIP
        (8, 10)
    """
    from edgedl.runtime.onnx import ort_message, session

    path = Path(path)
    sess = session(path)
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    check_one_input(path, [n.name for n in inputs])
    check_outputs(path, [n.name for n in outputs])
    node = inputs[0]
    if node.type not in ("tensor(float)", "tensor(float16)", "tensor(double)"):
        raise InputFileError(path, f"its input '{node.name}' is {node.type}; the reference needs a float-input "
                                   "model (export the float model, quantize with --quantize)")
    dims = list(node.shape)
    if not dims or any(not isinstance(d, int) or d < 1 for d in dims[1:]):
        raise InputFileError(path, f"its input '{node.name}' has the shape {dims}; edgedl needs a batch axis and "
                                   "fixed, positive sizes on the others (only the batch may be dynamic)")
    if isinstance(dims[0], int) and dims[0] != 1:
        raise InputFileError(path, f"its input '{node.name}' has a fixed batch of {dims[0]}; edgedl runs one sample "
                                   "per inference: export the model with batch 1 or a dynamic batch")
    fixed_batch = isinstance(dims[0], int)
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}[node.type]
    first = [outputs[0].name]

    def reference(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=dtype)
        step = 1 if fixed_batch else 256
        try:
            parts = [sess.run(first, {node.name: x[i:i + step]})[0] for i in range(0, len(x), step)]
        except Exception as e:  # onnxruntime's Fail/InvalidArgument/RuntimeException: the graph cannot run
            raise InputFileError(path, f"ONNX Runtime cannot run it on inputs of the shape it declares "
                                       f"{[step, *x.shape[1:]]} ({ort_message(e)})") from None
        return np.concatenate(parts).astype(np.float32)

    return reference, tuple(int(d) for d in dims[1:])


def onnx_io_specs(path) -> tuple[list, list]:
    """(inputs, outputs): the ``TensorSpec`` lists of a one-input ``.onnx`` file, with batch 1.

    A dynamic first dimension becomes 1; any other dynamic dimension is refused.

    Raises:
        InputFileError: ONNX Runtime cannot load the file, it has more or fewer than one input, no
            output, or a dynamic dimension past the batch.

    Example:
        >>> inputs, outputs = onnx_io_specs("lenet.onnx")  # doctest: +SKIP
        >>> inputs[0].shape
        (1, 28, 28, 1)
    """
    from edgedl.errors import BackendError
    from edgedl.runtime.onnx import session, session_specs

    path = Path(path)
    sess = session(path)
    check_one_input(path, [n.name for n in sess.get_inputs()])
    check_outputs(path, [n.name for n in sess.get_outputs()])
    try:
        specs_in, specs_out = session_specs(sess)
    except BackendError as e:
        raise InputFileError(path, str(e)) from None
    if specs_in[0].shape[:1] != (1,):
        raise InputFileError(path, f"its input '{specs_in[0].name}' has a fixed batch of {specs_in[0].shape[0]}; "
                                   "edgedl runs one sample per inference: export the model with batch 1 or a "
                                   "dynamic batch")
    return specs_in, specs_out


class ONNXRuntimeBackend(Backend):
    name = "onnxruntime"
    extra = "onnx"

    def runs_here(self, target):
        """CPU targets: same architecture as this host. GPU targets: also ONNX Runtime's CUDA provider."""
        if target.kind != "gpu":
            return super().runs_here(target)
        import platform

        arch, machine = target.cpu.get("arch"), platform.machine()
        if arch and arch != machine:
            return False, f"{target.name}'s host is {arch}, this machine is {machine}"
        ort = _lazy.require("onnxruntime")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return False, "ONNX Runtime here has no CUDAExecutionProvider (install onnxruntime-gpu)"
        return True, ""

    def unsupported_ops(self, graph, target):
        """ONNX Runtime's CPU provider implements the whole standard opset; what fails is the way to it
        from a ``.tflite``: tf2onnx's model of int16 activations (int16x8) does not load, and it has no
        converter for a custom operator or a quantized UNIDIRECTIONAL_SEQUENCE_LSTM. ``graph`` is None
        for an ``.onnx`` model, which is taken as it is."""
        out = {}
        if graph is None:
            return out
        out.update({op: "a custom operator: tf2onnx has no converter for it" for op in graph.custom_ops()})
        for g in (graph, *graph.nested):
            for op in g.ops:
                acts = g.activation_dtypes(op)
                if op.name == "UNIDIRECTIONAL_SEQUENCE_LSTM" and acts & {"int8", "uint8", "int16"}:
                    out[op.name] = "quantized LSTM: tf2onnx converts float LSTMs only"
                elif "int16" in acts:
                    out[op.name] = (f"int16 tensors: the ONNX model tf2onnx makes of them does not load in ONNX "
                                    f"Runtime (opset {DEFAULT_OPSET}); convert with --quantize int8")
        return out

    def compile(self, model_path, target, out_dir, options):
        from edgedl.runtime.onnx import ONNXRuntimeEngine

        onnx = _lazy.require("onnx")
        ort = _lazy.require("onnxruntime")
        start = time.perf_counter()
        opset = options.get("opset", DEFAULT_OPSET)
        if not isinstance(opset, int) or opset < 7:
            raise OptionError(f"onnxruntime option opset must be an integer >= 7, got {opset!r}")
        model_path = Path(model_path)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = out_dir / "model.onnx"
        toolchain = {"onnxruntime": ort.__version__, "onnx": onnx.__version__}
        specs_in = specs_out = None
        if model_path.suffix == ".onnx":
            onnx_io_specs(model_path)  # one input, an output, fixed shapes past the batch: say so by name
            shutil.copyfile(model_path, onnx_path)
            converted = "given"
        elif model_path.suffix == ".tflite":
            specs_in, specs_out = _tflite_io(model_path)
            check_one_input(model_path, [s.name for s in specs_in])
            check_outputs(model_path, [s.name for s in specs_out])
            toolchain["tf2onnx"] = _from_tflite(model_path, onnx_path, opset)
            converted = "tflite via tf2onnx"
        else:
            raise InputFileError(model_path, "onnxruntime compiles .onnx models (or a .tflite, converted with tf2onnx)")
        try:
            proto = onnx.load(str(onnx_path))
        except Exception as e:
            raise InputFileError(model_path, f"not a readable ONNX model ({' '.join(str(e).split())[:200]})") from None
        model_opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
        device = "cuda" if target.kind == "gpu" else "cpu"
        here, _ = self.runs_here(target)
        engine = ONNXRuntimeEngine(onnx_path, device=device if here else "cpu", inputs=specs_in, outputs=specs_out)
        ops: dict = {}
        for node in proto.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        return CompiledModel(
            backend=self.name, target=target.name, directory=out_dir, files=["model.onnx"],
            runtime={"engine": "onnxruntime", "model": "model.onnx", "device": device},
            inputs=engine.inputs, outputs=engine.outputs,
            options={"opset": model_opset, "source": converted},
            toolchain=toolchain,
            estimates={"model_bytes": onnx_path.stat().st_size, "opset": model_opset,
                       "num_nodes": len(proto.graph.node), "op_counts": ops},
            compile_time_s=time.perf_counter() - start,
        )

    def load(self, compiled, num_threads=1):
        from edgedl.runtime.onnx import ONNXRuntimeEngine

        return ONNXRuntimeEngine(Path(compiled.directory) / compiled.runtime["model"], num_threads=num_threads,
                                 device=compiled.runtime.get("device", "cpu"),
                                 inputs=compiled.inputs, outputs=compiled.outputs)


def _from_tflite(tflite_path: Path, onnx_path: Path, opset: int) -> str:
    """Convert a ``.tflite`` to ONNX with tf2onnx's TFLite frontend; returns tf2onnx's version."""
    try:
        tf2onnx = _tf2onnx()
    except MissingDependencyError:
        raise UnsupportedOperatorError(
            "onnxruntime compiles .onnx models; converting this .tflite needs tf2onnx (pip install tf2onnx), or "
            "export the Keras model with edgedl.backends.onnxruntime.export_onnx and compile the .onnx") from None
    _lazy.tf()
    try:
        with warnings.catch_warnings(), _lazy.quiet():
            warnings.simplefilter("ignore")
            tf2onnx.convert.from_tflite(str(tflite_path), opset=opset, output_path=str(onnx_path))
    except Exception as e:
        raise UnsupportedOperatorError(
            f"tf2onnx cannot convert {tflite_path.name} to ONNX: {' '.join(str(e).split())[:300]}") from None
    return tf2onnx.__version__


def _tflite_io(path):
    """The .tflite's input/output specs (their quantization carries over to the converted model)."""
    from edgedl.runtime.engines import LiteRTEngine

    engine = LiteRTEngine(path)
    return engine.inputs, engine.outputs
