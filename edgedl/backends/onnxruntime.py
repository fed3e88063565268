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
from edgedl.backends.base import Backend, CompiledModel, check_outputs
from edgedl.errors import InputFileError, MissingDependencyError, OptionError, UnsupportedOperatorError

DEFAULT_OPSET = 17
# TFLite's fused recurrent operators: tf2onnx's TFLite frontend has no handler for any of them.
FUSED_RECURRENT = ("UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN",
                   "BIDIRECTIONAL_SEQUENCE_RNN")


def _tf2onnx():
    try:
        import tf2onnx
    except ImportError:
        raise MissingDependencyError("tf2onnx", "onnx") from None
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    return tf2onnx


def export_onnx(keras_model, path, opset: int = DEFAULT_OPSET) -> Path:
    """Export a Keras model to ``path`` (.onnx) with batch size 1, atomically.

    Uses Keras 3's ``model.export(format="onnx")`` (tf2onnx under the TensorFlow backend) with an input
    signature of batch 1, so every shape in the graph is fixed.

    Args:
        keras_model: a ``keras.Model`` (its inputs keep their names in the ``.onnx``).
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
    if not keras_model.inputs:
        raise OptionError(f"export_onnx needs a model with inputs; '{keras_model.name}' declares none")
    signature = [tf.TensorSpec((1,) + tuple(t.shape[1:]), getattr(t, "dtype", None) or "float32",
                               name=(getattr(t, "name", None) or f"input_{k}").split(":")[0])
                 for k, t in enumerate(keras_model.inputs)]
    if len(signature) > 1:
        signature = [signature]  # one argument: the list of inputs, as the model is called
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


def onnx_reference(path) -> tuple[object, list[tuple], list[str]]:
    """(reference, input shapes without batch, input names) for a float ``.onnx`` model, run by ONNX
    Runtime on the CPU.

    ``reference(x)`` takes float samples (N, ...), or for a model with several inputs a list of them
    in the order of ``names``, and returns every output as float32 (N, ...).

    Raises:
        InputFileError: the model cannot be loaded, has no input or output, or an input that is not float
            or not of fixed sizes past the batch.

    Example:
        >>> reference, shapes, names = onnx_reference("lenet.onnx")  # doctest: +SKIP
        >>> reference(x_test[:8])[0].shape  # doctest: +SKIP
        (8, 10)
    """
    from edgedl import _inputs
    from edgedl.runtime.onnx import ort_message, session

    path = Path(path)
    sess = session(path)
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if not inputs:
        raise InputFileError(path, "the model declares no inputs; edgedl's compile and bench need at least one")
    check_outputs(path, [n.name for n in outputs])
    dtypes, shapes, fixed_batch = [], [], False
    for node in inputs:
        if node.type not in ONNX_FLOATS:
            raise InputFileError(path, f"its input '{node.name}' is {node.type}; the reference needs a float-input "
                                       "model (export the float model, quantize with --quantize)")
        dims = list(node.shape)
        if not dims or any(not isinstance(d, int) or d < 1 for d in dims[1:]):
            raise InputFileError(path, f"its input '{node.name}' has the shape {dims}; edgedl needs a batch axis and "
                                       "fixed, positive sizes on the others (only the batch may be dynamic)")
        if isinstance(dims[0], int) and dims[0] != 1:
            raise InputFileError(path, f"its input '{node.name}' has a fixed batch of {dims[0]}; edgedl runs one "
                                       "sample per inference: export the model with batch 1 or a dynamic batch")
        fixed_batch = fixed_batch or isinstance(dims[0], int)
        dtypes.append(ONNX_FLOATS[node.type])
        shapes.append(tuple(int(d) for d in dims[1:]))
    names = [n.name for n in inputs]
    every = [n.name for n in outputs]

    def reference(x) -> list[np.ndarray]:
        arrays = [np.asarray(a, dtype=t) for a, t in zip(_inputs.as_list(x), dtypes)]
        step = 1 if fixed_batch else 256
        n = len(arrays[0])
        try:
            parts = [sess.run(every, {name: a[i:i + step] for name, a in zip(names, arrays)})
                     for i in range(0, n, step)]
        except Exception as e:  # onnxruntime's Fail/InvalidArgument/RuntimeException: the graph cannot run
            declared = ", ".join(str([step, *a.shape[1:]]) for a in arrays)
            raise InputFileError(path, f"ONNX Runtime cannot run it on inputs of the shape it declares "
                                       f"{declared} ({ort_message(e)})") from None
        return [np.concatenate([p[k] for p in parts]).astype(np.float32) for k in range(len(every))]

    return reference, shapes, names


ONNX_FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def onnx_io_specs(path) -> tuple[list, list]:
    """(inputs, outputs): the ``TensorSpec`` lists of an ``.onnx`` file, with batch 1.

    A dynamic first dimension becomes 1; any other dynamic dimension is refused.

    Raises:
        InputFileError: ONNX Runtime cannot load the file, it has no input or no output, or a dynamic
            dimension past the batch.

    Example:
        >>> inputs, outputs = onnx_io_specs("lenet.onnx")  # doctest: +SKIP
        >>> inputs[0].shape
        (1, 28, 28, 1)
    """
    from edgedl.errors import BackendError
    from edgedl.runtime.onnx import session, session_specs

    path = Path(path)
    sess = session(path)
    if not sess.get_inputs():
        raise InputFileError(path, "the model declares no inputs; edgedl needs at least one")
    check_outputs(path, [n.name for n in sess.get_outputs()])
    try:
        specs_in, specs_out = session_specs(sess)
    except BackendError as e:
        raise InputFileError(path, str(e)) from None
    for spec in specs_in:
        if spec.shape[:1] != (1,):
            raise InputFileError(path, f"its input '{spec.name}' has a fixed batch of {spec.shape[0]}; edgedl runs "
                                       "one sample per inference: export the model with batch 1 or a dynamic batch")
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
        converter for a custom operator or for TFLite's fused recurrent operators (the fused LSTM that
        edgedl.convert makes of a Keras LSTM, float or int8; tf2onnx's LSTM rewriters match TensorFlow
        graphs, not .tflite). A GRU or SimpleRNN, which edgedl.convert unrolls into FULLY_CONNECTED and
        element-wise operators, converts (float and int8), and so does the while loop of a dynamic range
        model; a float Keras LSTM exports to ONNX directly (:func:`export_onnx`, a Loop). ``graph`` is None
        for an ``.onnx`` model, which is taken as it is."""
        out = {}
        if graph is None:
            return out
        out.update({op: "a custom operator: tf2onnx has no converter for it" for op in graph.custom_ops()})
        for g in (graph, *graph.nested):
            for op in g.ops:
                acts = g.activation_dtypes(op)
                if op.name in FUSED_RECURRENT and acts & {"int8", "uint8", "int16"}:
                    out[op.name] = ("tf2onnx has no converter for this fused recurrent operator (float or quantized); "
                                    "a GRU or SimpleRNN, which edgedl unrolls, converts in int8")
                elif op.name in FUSED_RECURRENT:
                    out[op.name] = ("tf2onnx has no converter for this fused recurrent operator (float or quantized); "
                                    "export the float Keras model with edgedl.backends.onnxruntime.export_onnx "
                                    "(an ONNX Loop) and compile the .onnx")
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
            onnx_io_specs(model_path)  # inputs, an output, fixed shapes past the batch: say so by name
            shutil.copyfile(model_path, onnx_path)
            converted = "given"
        elif model_path.suffix == ".tflite":
            from edgedl.graph import read_tflite

            # tf2onnx's own failure on a fused LSTM names an internal tensor ("Cannot find node with output
            # 'lstm/zeros'"): refuse by operator instead
            refused = {op: why for op, why in self.unsupported_ops(read_tflite(model_path), target).items()
                       if op in FUSED_RECURRENT}
            if refused:
                raise UnsupportedOperatorError("; ".join(f"{op}: {why}" for op, why in sorted(refused.items())))
            specs_in, specs_out = _tflite_io(model_path)
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
