"""The embeddable runtime: numpy plus one engine (LiteRT or tflite-runtime, TVM's runtime, TFLite
Micro's interpreter, ONNX Runtime).

    >>> import edgedl.runtime as rt
    >>> model = rt.load("lenet.edgedl")               # doctest: +SKIP
    >>> probs = model.predict(images)                 # float in, float out  # doctest: +SKIP

``load`` verifies every file's sha256 against the manifest before loading anything (a TVM bundle is
native code). Nothing here imports TensorFlow, Keras or click.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgedl.bundle import Bundle, open_bundle
from edgedl.errors import BackendError, InputFileError, OptionError
from edgedl.runtime.engines import Engine, TensorSpec
from edgedl.runtime.quant import predict, predict_outputs

__all__ = ["load", "Model", "TensorSpec"]


def _engine(directory: Path, runtime: dict, inputs, outputs, num_threads: int) -> Engine:
    name = runtime.get("engine")
    if name == "litert":
        from edgedl.runtime.engines import LiteRTEngine

        return LiteRTEngine(directory / runtime["model"], num_threads=num_threads, xnnpack=runtime.get("xnnpack", True))
    if name == "tvm":
        from edgedl.runtime.engines import TVMEngine

        return TVMEngine(directory / runtime["library"], inputs, outputs, device=runtime.get("device", "cpu"),
                         num_threads=num_threads)
    if name == "tflm":
        from edgedl.runtime.tflm import TFLMEngine

        return TFLMEngine(directory / runtime["model"], arena_size=runtime.get("arena_size"), num_threads=num_threads)
    if name == "onnxruntime":
        from edgedl.runtime.onnx import ONNXRuntimeEngine

        return ONNXRuntimeEngine(directory / runtime["model"], num_threads=num_threads,
                                 device=runtime.get("device", "cpu"), inputs=inputs, outputs=outputs)
    if name == "ethos-u":
        raise BackendError(f"this bundle runs on an {runtime.get('accelerator', 'Ethos-U')} NPU; this host has none "
                           "(its estimates are in the manifest)")
    raise InputFileError(directory, f"unknown engine '{name}' in the manifest")


def _check_target(bundle: Bundle) -> None:
    """Native code (a TVM library) runs only where its target runs; a ``.tflite`` or ``.onnx`` runs anywhere."""
    if bundle.manifest.engine != "tvm":
        return
    target = bundle.manifest.target()
    here, why = target.runs_here()
    if not here:
        raise OptionError(f"bundle {bundle.path} was compiled for target '{target.name}' "
                          f"({target.cpu.get('arch', target.kind)}) and cannot run here ({why}): compile for a "
                          "target of this machine or run it on the device")


class Model:
    """A loaded bundle: float ``predict``, raw ``invoke``, and the manifest's specs."""

    def __init__(self, bundle: Bundle, engine: Engine):
        self.bundle = bundle      # keeps an unpacked archive alive as long as the model
        self.manifest = bundle.manifest
        self.directory = bundle.directory
        self.engine = engine
        self.inputs = engine.inputs
        self.outputs = engine.outputs

    @property
    def input_shape(self) -> tuple:
        return tuple(self.inputs[0].shape)

    def check(self, x: np.ndarray) -> np.ndarray:
        """Accept (N, *sample) or one sample (*sample); return (N, *sample). Wrong shapes are named."""
        x = np.asarray(x)
        sample = self.input_shape[1:]
        if tuple(x.shape) == sample:
            x = x[None]
        if tuple(x.shape[1:]) != sample:
            raise OptionError(f"input has shape {tuple(x.shape)}; the model takes (N, {', '.join(map(str, sample))}) "
                              f"or one sample of shape {sample}")
        return x

    def predict(self, x: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """Float inputs (N, ...) to float outputs (N, ...): quantized and dequantized per the manifest.
        A model with several outputs gives a list, one array per output, as Keras does."""
        x = self.check(x)
        if x.dtype.kind not in "fiu":
            raise OptionError(f"input dtype {x.dtype} is not numeric; predict() takes float arrays")
        x = x.astype(np.float32, copy=False)
        if len(self.outputs) > 1:
            return predict_outputs(self.engine, x)
        return predict(self.engine, x)

    def inputs_from_files(self, paths) -> np.ndarray:
        """Model inputs from image or 8 kHz wav files, made by the steps the manifest records for that
        kind of file (the data set's, or those compile applied to ``--data``): decode, channels,
        resize, audio features, scale, mean and std.

        Raises:
            OptionError: the manifest records no steps for such files, or the files mix kinds.
            InputFileError: a file that is not an image or a readable wav.

        Example:
            >>> model = load("lenet.edgedl")                                      # doctest: +SKIP
            >>> model.predict(model.inputs_from_files(["three.png"])).argmax(-1)  # doctest: +SKIP
        """
        from edgedl.data.user import inputs_from_files

        return inputs_from_files(paths, self.manifest.get("preprocessing"), self.input_shape[1:])

    def predict_raw(self, x: np.ndarray) -> np.ndarray:
        """Pre-quantized inputs in the model's own dtype (N, ...) to raw outputs (N, ...)."""
        x = self.check(x)
        want = np.dtype(self.inputs[0].dtype)
        if x.dtype != want:
            raise OptionError(f"raw input has dtype {x.dtype}; the model takes {want} (use predict() for float input)")
        return np.stack([self.engine.invoke(s[None])[0] for s in x])

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """One raw batch-1 tensor through the engine (the lowest level; used by the benchmark loop)."""
        return self.engine.invoke(x)


def load(bundle: str | Path, num_threads: int = 1, trusted: list[bytes] | None = None) -> Model:
    """Load a bundle (folder or archive) after verifying every file against the manifest.

    Args:
        bundle: the path ``edgedl compile`` wrote.
        num_threads: engine threads.
        trusted: Ed25519 public keys (``edgedl.signing.load_public_keys``); when given, only a bundle
            signed by one of them is loaded (checked before anything is unpacked).

    Raises:
        InputFileError: not a bundle, a newer format, a manifest that fails the schema (the field named),
            a file whose sha256 does not match (named), or an unsigned/untrusted bundle with ``trusted``.
        OptionError: the bundle is for another CPU architecture.
        BackendError: the engine cannot run here (e.g. an NPU bundle).
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or not 1 <= num_threads <= 1024:
        raise OptionError(f"num_threads must be an integer from 1 to 1024, got {num_threads!r}")
    opened = open_bundle(bundle, trusted=trusted)
    _check_target(opened)
    inputs = [TensorSpec.from_dict(d) for d in opened.manifest["inputs"]]
    outputs = [TensorSpec.from_dict(d) for d in opened.manifest["outputs"]]
    engine = _engine(opened.directory, opened.manifest["runtime"], inputs, outputs, num_threads)
    return Model(opened, engine)
