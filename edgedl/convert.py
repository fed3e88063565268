"""Conversion: a Keras model to ``.tflite`` (float or quantized) with a fixed batch size of 1.

Keras 3 models keep a dynamic batch dimension, which the TFLite converter turns into dynamic
reshapes that TVM's TFLite frontend rejects; tracing a concrete function with batch 1 avoids that.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from edgedl import _lazy
from edgedl.errors import ModelError, OptionError, UnsupportedOperatorError

log = logging.getLogger(__name__)

QUANTIZE_MODES = ("none", "dynamic", "float16", "int8", "int16x8")
IO_TYPES = ("float", "int8", "uint8")

# Layers TensorFlow's integer calibrator cannot take (it crashes the process on them).
RECURRENT_KINDS = ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D")


def to_tflite(model, quantize: str = "none", representative: np.ndarray | None = None,
              io_type: str = "float", num_calibration: int = 200, per_channel: bool = True,
              keep_float=(), int16=()) -> bytes:
    """Convert a Keras model to a ``.tflite`` flatbuffer with batch size 1.

    Args:
        model: a ``keras.Model``.
        quantize: ``none``, ``dynamic`` (int8 weights), ``float16``, ``int8`` (full integer,
            per-channel weights) or ``int16x8`` (int16 activations, int8 weights).
        representative: calibration inputs (N, *input_shape) for ``int8`` and ``int16x8``; for a model
            with several inputs, a list of such arrays in the order of ``model.inputs``.
        io_type: ``float``, ``int8`` or ``uint8`` input/output for the integer modes.
        num_calibration: how many representative samples to use.
        per_channel: one scale per output channel for int8 weights (``False``: one per tensor,
            which saves a float32 scale and an int64 zero point per channel, per weight and bias
            tensor; on small models that is a third of the file, at some risk to accuracy).
        keep_float: Keras layer names left in float32 in an ``int8``/``int16x8`` model, and
        int16: Keras layer names in int16x8 in an ``int8`` model; with either, Google's AI Edge
            Quantizer quantizes the float32 ``.tflite`` (:func:`edgedl.optimize.selective.quantize_layers`).

    Returns:
        The ``.tflite`` bytes.

    Raises:
        OptionError: unknown mode, or representative data missing or of the wrong shape or dtype.
        UnsupportedOperatorError: the converter cannot quantize an operator in this mode.

    Example:
        >>> tflite_bytes = to_tflite(model, "int8", x_train[:100])  # doctest: +SKIP
    """
    _check_modes(quantize, io_type, per_channel)
    # (dynamic range quantization leaves a fused LSTM's weights in float32, but quantizes those of the
    # while loop: that mode keeps Keras 3's own form)
    if not (keep_float or int16) and quantize != "dynamic":
        from edgedl import recurrent

        if recurrent.recurrent_layers(model):
            blocking = recurrent.unhandled(model) if quantize in ("int8", "int16x8") else []
            if blocking:  # TF 2.21's calibrator segfaults on the while loop of a Keras 3 RNN; refuse before it can
                raise UnsupportedOperatorError(
                    f"'{quantize}' quantization cannot take the recurrent layer(s) "
                    f"{', '.join(f'{n} ({why})' for n, _, why in blocking)} of '{model.name}': TensorFlow's "
                    "calibrator crashes on them, and edgedl converts LSTM, GRU and SimpleRNN layers over a fixed "
                    "number of time steps; use dynamic or float16")
            # Float and float16 take the fused and unrolled forms too: backends that fail on a while loop take
            # them (recurrent.converter_ready leaves a free number of time steps alone)
            with recurrent.converter_ready(model, quantize):
                return _to_tflite(model, quantize, representative, io_type, num_calibration, per_channel, (), ())
    return _to_tflite(model, quantize, representative, io_type, num_calibration, per_channel, keep_float, int16)


def _to_tflite(model, quantize, representative, io_type, num_calibration, per_channel, keep_float, int16) -> bytes:
    if quantize in ("int8", "int16x8") and not (keep_float or int16):
        from edgedl import layernorm

        if layernorm.layer_norms(model):  # Keras' form leaves a NEG in float: traced as int8 takes it
            with layernorm.converter_ready(model):
                return _to_tflite_as_is(model, quantize, representative, io_type, num_calibration, per_channel,
                                        keep_float, int16)
    return _to_tflite_as_is(model, quantize, representative, io_type, num_calibration, per_channel, keep_float, int16)


def _to_tflite_as_is(model, quantize, representative, io_type, num_calibration, per_channel, keep_float,
                     int16) -> bytes:
    tf = _lazy.tf()
    fixed = _batch_of_one(model)
    shapes = [tuple(t.shape) for t in fixed.inputs]
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize in ("int8", "int16x8"):
        recurrent = [layer.name for layer in _all_layers(model) if type(layer).__name__ in RECURRENT_KINDS]
        if recurrent and (keep_float or int16):
            # the AI Edge Quantizer starts from the float32 .tflite, whose RNNs are while loops
            raise UnsupportedOperatorError(
                f"layers kept in float32 or int16x8 cannot be chosen in a model with recurrent layer(s) "
                f"{', '.join(recurrent)} ('{model.name}'); quantize it whole")
        samples = [representative_samples(r, shape, num_calibration)
                   for r, shape in zip(_per_input(representative, len(shapes)), shapes)]
        if not per_channel:
            converter._experimental_disable_per_channel = True  # the converter's only switch for it
        if keep_float or int16:  # some layers at another precision: the AI Edge Quantizer's recipe does that
            from edgedl.optimize.selective import quantize_layers

            return quantize_layers(model, to_tflite(model), quantize, samples, keep_float, int16, io_type, per_channel)
        names = [t.name for t in fixed.inputs]  # by name: the calibrator feeds a list in the .tflite's own order
        converter.representative_dataset = lambda: ({n: s[i][None] for n, s in zip(names, samples)}
                                                    for i in range(len(samples[0])))
        ops = tf.lite.OpsSet
        converter.target_spec.supported_ops = [
            ops.TFLITE_BUILTINS_INT8 if quantize == "int8"
            else ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
        if io_type != "float":
            if quantize == "int16x8":
                raise OptionError("int16x8 models take float or int16 I/O; use --io float")
            io = {"int8": tf.int8, "uint8": tf.uint8}[io_type]
            converter.inference_input_type = io
            converter.inference_output_type = io
    elif keep_float or int16:
        raise OptionError(f"layers kept in float32 or int16x8 are part of an integer model: quantize int8, "
                          f"not '{quantize}'")
    elif io_type != "float":
        raise OptionError(f"I/O type '{io_type}' needs full integer quantization (int8), not '{quantize}'")
    return _convert(converter, quantize, model.name)


def _check_modes(quantize: str, io_type: str, per_channel: bool) -> None:
    if quantize not in QUANTIZE_MODES:
        raise OptionError(f"unknown quantization '{quantize}'; choose one of {', '.join(QUANTIZE_MODES)}")
    if io_type not in IO_TYPES:
        raise OptionError(f"unknown I/O type '{io_type}'; choose one of {', '.join(IO_TYPES)}")
    if not per_channel and quantize not in ("int8", "int16x8"):
        raise OptionError(f"per-tensor weights are an option of int8 and int16x8 quantization, not '{quantize}'")


def _batch_of_one(model):
    """``model`` behind inputs of batch size 1 (the TFLite converter makes a dynamic batch dynamic
    reshapes); each input keeps its name, which the ``.tflite`` signature carries
    (``serving_default_<name>:0``) and :func:`edgedl._inputs.order_for` matches samples by."""
    if not model.inputs:
        raise ModelError(f"model '{model.name}' declares no inputs; edgedl converts models with at least one")
    keras = _lazy.keras()
    fixed = []
    for k, tensor in enumerate(model.inputs):
        name = getattr(tensor, "name", None) or f"input_{k}"
        fixed.append(keras.Input(batch_shape=(1,) + tuple(tensor.shape[1:]),
                                 dtype=getattr(tensor, "dtype", "float32") or "float32",
                                 name="input" if len(model.inputs) == 1 else name))
    args = fixed[0] if len(fixed) == 1 else fixed
    return keras.Model(args, model(args, training=False), name=model.name)


def _convert(converter, quantize: str, name: str) -> bytes:
    """The converter's ``.tflite``; its errors as one UnsupportedOperatorError that names the operators."""
    try:
        with _lazy.quiet():
            return converter.convert()
    except Exception as e:  # the converter raises ConverterError and friends
        msg = " ".join(str(e).split())
        ops = sorted(set(_blocking_ops(msg)))
        if ops:
            raise UnsupportedOperatorError(
                f"'{quantize}' quantization cannot take operator(s) {', '.join(ops)} in model '{name}'"
            ) from None
        raise UnsupportedOperatorError(f"TFLite conversion ({quantize}) of '{name}' failed: {msg[:300]}") from None


def _all_layers(model):
    """Every layer of ``model``, those of nested models and wrappers (Bidirectional, TimeDistributed) too."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
        for wrapped in ("layer", "forward_layer", "backward_layer"):
            inner = getattr(layer, wrapped, None)
            if inner is not None and hasattr(inner, "weights"):
                yield inner


def _per_input(representative, count: int) -> list:
    """The calibration arrays, one per model input (a list for a model with several)."""
    if count == 1 or representative is None:
        return [representative] * count
    if not isinstance(representative, (list, tuple)) or len(representative) != count:
        raise OptionError(f"the model has {count} inputs: representative data must be a list of {count} arrays, "
                          "one per input in the model's order")
    return list(representative)


def representative_samples(data, shape, count: int) -> np.ndarray:
    """``count`` calibration samples of ``data`` as float32; OptionError unless it is floating point
    samples of ``shape`` (the model input's, batch first)."""
    if data is None:
        raise OptionError("integer quantization needs representative data (samples of the training inputs)")
    data = np.asarray(data)
    if data.dtype.kind != "f":
        raise OptionError(f"representative data must be floating point like the model input, got dtype {data.dtype}")
    if tuple(data.shape[1:]) != tuple(shape[1:]):
        raise OptionError(
            f"representative data has samples of shape {tuple(data.shape[1:])}, the model takes {tuple(shape[1:])}"
        )
    if len(data) == 0:
        raise OptionError("representative data is empty")
    return data[:count].astype(np.float32)


def _blocking_ops(message: str):
    import re

    for m in re.finditer(r"(?:op|operation)[: ]+'?([A-Za-z_.0-9]+)'?", message):
        yield m.group(1)


#: flatbuffer alignment of weight buffers, as the TFLite converter writes them (TFLM and NPUs read in place)
BUFFER_ALIGNMENT = 16


def strip_names(tflite: bytes) -> bytes:
    """The same model without what no runtime reads, written compactly.

    Dropped: the names of intermediate tensors, the model description and the converter's
    metadata (``min_runtime_version``, ``CONVERSION_METADATA``). Names of the graph's input and
    output tensors and the signatures stay, so every runtime and TVM's frontend load the result as
    before. The file is then written without repeats: identical shapes, operator index lists,
    quantization parameters and operator options are stored once and shared, tensors without data
    share the empty buffer 0, and ``has_rank`` is left out where a non-empty shape already gives
    the rank. Weights are untouched and keep their 16-byte alignment.

    On small models this is several percent of the file (ResNet-8 int8: 5.8 of 98 KB are names;
    DS-CNN int8 per-tensor: 29.3 KB become 27.9 KB).

    Raises:
        OptionError: ``tflite`` is not a TFLite flatbuffer.

    Example:
        >>> small = strip_names(to_tflite(model, "int8", x_train[:100]))  # doctest: +SKIP
    """
    from tensorflow.lite.tools import flatbuffer_utils

    if len(tflite) < 8 or tflite[4:8] != b"TFL3":
        raise OptionError("cannot strip names: the data is not a .tflite flatbuffer (no TFL3 identifier)")
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    model.description = None
    model.metadata = None
    for subgraph in model.subgraphs:
        keep = {int(i) for i in subgraph.inputs} | {int(i) for i in subgraph.outputs}
        for index, tensor in enumerate(subgraph.tensors):
            if index not in keep:
                tensor.name = None
            if tensor.shape is not None and len(tensor.shape) and tensor.shapeSignature is None:
                tensor.hasRank = False  # the schema's default; a non-empty shape gives the rank
    _share_empty_buffer(model)
    return _pack_shared(model)


def _share_empty_buffer(model) -> None:
    """Point every tensor without data at buffer 0 (the schema's empty buffer) and drop the others.

    Runs after the metadata is dropped, so only tensors refer to buffers.
    """

    def empty(buffer):
        return (buffer.data is None or len(buffer.data) == 0) and not buffer.offset

    if not model.buffers or not empty(model.buffers[0]):
        return  # not the layout the converter writes; leave it as it is
    kept = [i for i, b in enumerate(model.buffers) if i == 0 or not empty(b)]
    index = {old: new for new, old in enumerate(kept)}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            tensor.buffer = index.get(tensor.buffer, 0)
    model.buffers = [model.buffers[i] for i in kept]


def _pack_shared(model) -> bytes:
    """Serialise a TFLite object model, storing identical vectors and small tables once."""
    import flatbuffers

    class SharingBuilder(flatbuffers.Builder):
        def CreateNumpyVector(self, x):
            key = (x.dtype.str, x.tobytes())
            vectors = self.__dict__.setdefault("_vectors", {})
            if key not in vectors:
                vectors[key] = super().CreateNumpyVector(x)
            return vectors[key]

    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            if tensor.quantization is not None:
                tensor.quantization.__class__ = _shared_table_class(type(tensor.quantization))
        for op in subgraph.operators:
            if op.builtinOptions is not None:
                op.builtinOptions.__class__ = _shared_table_class(type(op.builtinOptions))
    aligned = _aligned_buffer_class()
    for buffer in model.buffers:
        buffer.__class__ = aligned
    builder = SharingBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _content_key(obj):
    """A hashable key for a flatbuffer object-API value: equal keys pack to equal bytes."""
    if isinstance(obj, np.ndarray):
        return (obj.dtype.str, obj.shape, obj.tobytes())
    if isinstance(obj, (list, tuple)):
        return tuple(_content_key(v) for v in obj)
    if hasattr(obj, "__dict__"):
        return (type(obj).__name__,) + tuple((k, _content_key(v)) for k, v in sorted(vars(obj).items()))
    return obj


@functools.cache
def _shared_table_class(cls):
    class Shared(cls):
        """Packs once per content: a second equal table is the same offset."""

        def Pack(self, builder):
            tables = builder.__dict__.setdefault("_tables", {})
            key = _content_key(self)
            if key not in tables:
                tables[key] = cls.Pack(self, builder)
            return tables[key]

    Shared.__name__ = cls.__name__
    return Shared


@functools.cache
def _aligned_buffer_class():
    from tensorflow.lite.python import schema_py_generated as schema

    class AlignedBuffer(schema.BufferT):
        """A buffer whose data the flatbuffer places at a 16-byte boundary (the object API packs at 1)."""

        def Pack(self, builder):
            data = None
            if self.data is not None:
                raw = np.asarray(self.data, dtype=np.uint8).tobytes()
                builder.StartVector(1, len(raw), BUFFER_ALIGNMENT)
                builder.head -= len(raw)
                builder.Bytes[builder.head:builder.head + len(raw)] = raw
                data = builder.EndVector()
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            schema.BufferAddOffset(builder, self.offset)
            schema.BufferAddSize(builder, self.size)
            return schema.BufferEnd(builder)

    return AlignedBuffer
