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

from edgedl._inputs import short_name
from edgedl.bundle import Bundle, open_bundle
from edgedl.errors import BackendError, InputFileError, OptionError
from edgedl.runtime.engines import Engine, TensorSpec
from edgedl.runtime.quant import predict, predict_outputs

__all__ = ["load", "Model", "TensorSpec", "short_name"]


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

    @property
    def input_names(self) -> list[str]:
        """The inputs' short names, in the order of ``inputs``: a TFLite name such as
        ``serving_default_a:0`` is ``a`` (``predict`` takes either as a key)."""
        return [short_name(s.name) for s in self.inputs]

    def check(self, x: np.ndarray) -> np.ndarray:
        """Accept (N, *sample) or one sample (*sample); return (N, *sample). Wrong shapes are named."""
        return self._check_one(x, self.inputs[0], None)

    def _check_one(self, x, spec: TensorSpec, name: str | None) -> np.ndarray:
        x = np.asarray(x)
        sample = tuple(spec.shape[1:])
        if tuple(x.shape) == sample:
            x = x[None]
        if tuple(x.shape[1:]) != sample:
            what = "input" if name is None else f"input '{name}'"
            raise OptionError(f"{what} has shape {tuple(x.shape)}; the model takes (N, {', '.join(map(str, sample))}) "
                              f"or one sample of shape {sample}")
        return x

    def arrange(self, x) -> list[np.ndarray]:
        """The model's inputs from ``x``, in the order of ``inputs``, each (N, *sample).

        Args:
            x: an array (a model with one input), a list or tuple of arrays in the order of
                ``inputs``, or a dict keyed by input name (the full name, or the short one of
                ``input_names``). Each may be one sample without the batch axis.

        Raises:
            OptionError: a wrong number of arrays, an unknown or missing name, a wrong shape (the
                input named), or inputs with different numbers of samples.

        Example:
            >>> model = load("two_inputs.edgedl")                                     # doctest: +SKIP
            >>> [a.shape for a in model.arrange({"b": np.zeros(4), "a": np.zeros(8)})]  # doctest: +SKIP
            [(1, 8), (1, 4)]
        """
        names = self.input_names
        known = ", ".join(repr(n) for n in names)
        several = len(self.inputs) > 1
        if isinstance(x, dict):
            by_name = {}
            for key, value in x.items():
                if key in names:
                    i = names.index(key)
                else:
                    full = [s.name for s in self.inputs]
                    if key not in full:
                        raise OptionError(f"the model has no input named {key!r}; its inputs: {known}")
                    i = full.index(key)
                if i in by_name:
                    raise OptionError(f"input '{names[i]}' is given twice (by its full and its short name)")
                by_name[i] = value
            missing = [names[i] for i in range(len(names)) if i not in by_name]
            if missing:
                raise OptionError(f"no array for input{'s' if len(missing) > 1 else ''} "
                                  f"{', '.join(repr(n) for n in missing)}; the model's inputs: {known}")
            arrays = [by_name[i] for i in range(len(names))]
        elif isinstance(x, (list, tuple)) and several:
            if len(x) != len(names):
                raise OptionError(f"the model takes {len(names)} inputs ({known}), got {len(x)} arrays; give a list "
                                  "in that order or a dict by name")
            arrays = list(x)
        elif several:
            raise OptionError(f"the model takes {len(names)} inputs ({known}), got one array; give a list in that "
                              "order or a dict by name")
        elif isinstance(x, (list, tuple)) and len(x) == 1:
            arrays = [x[0]]  # the one input's array in a list (or one sample in a list: the same)
        else:
            arrays = [x]
        arrays = [self._check_one(a, spec, name if several else None)
                  for a, spec, name in zip(arrays, self.inputs, names)]
        counts = {len(a) for a in arrays}
        if len(counts) > 1:
            sizes = ", ".join(f"'{n}': {len(a)}" for n, a in zip(names, arrays))
            raise OptionError(f"the inputs have different numbers of samples ({sizes}); give each the same samples")
        return arrays

    def predict(self, x) -> np.ndarray | list[np.ndarray]:
        """Float inputs (N, ...) to float outputs (N, ...): quantized and dequantized per the manifest.

        ``x`` is an array for a model with one input; for several, a list in the order of
        ``inputs`` or a dict keyed by input name (full or short, see ``input_names``). A model with
        several outputs gives a list, one array per output, as Keras does.

        Raises:
            OptionError: an input with the wrong shape, a non-numeric dtype, an unknown or missing name.

        Example:
            >>> model = load("two_inputs.edgedl")                                       # doctest: +SKIP
            >>> model.predict({"a": a, "b": b}).shape == model.predict([a, b]).shape    # doctest: +SKIP
            True
        """
        arrays = self.arrange(x)
        several = len(arrays) > 1
        for a, name in zip(arrays, self.input_names):
            if a.dtype.kind not in "fiu":
                what = f"input '{name}' has" if several else "input"
                raise OptionError(f"{what} dtype {a.dtype} is not numeric; predict() takes float arrays")
        arrays = [a.astype(np.float32, copy=False) for a in arrays]
        x = arrays if several else arrays[0]
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

    def predict_raw(self, x) -> np.ndarray:
        """Pre-quantized inputs in the model's own dtypes (N, ...) to the raw first output (N, ...);
        ``x`` as for :meth:`predict`."""
        arrays = self.arrange(x)
        several = len(arrays) > 1
        for a, spec, name in zip(arrays, self.inputs, self.input_names):
            want = np.dtype(spec.dtype)
            if a.dtype != want:
                what = f"raw input '{name}'" if several else "raw input"
                raise OptionError(f"{what} has dtype {a.dtype}; the model takes {want} (use predict() for float input)")
        if not several:
            return np.stack([self.engine.invoke(s[None])[0] for s in arrays[0]])
        return np.stack([self.engine.invoke([a[i:i + 1] for a in arrays])[0] for i in range(len(arrays[0]))])

    def invoke(self, x) -> np.ndarray:
        """One raw batch-1 tensor (a list of them, one per input, for several) through the engine (the
        lowest level; used by the benchmark loop)."""
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
