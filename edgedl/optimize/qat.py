"""Quantization-aware training (QAT) for Keras 3 models, exported as full-integer int8 ``.tflite``.

What it does, in four steps:

1. **Fold batch norm** (:func:`fold_batchnorm`): a BatchNormalization right after a Conv2D,
   DepthwiseConv2D or Dense (its only consumer, no activation in between) is folded into that
   layer's kernel and bias, as the TFLite converter does on export. QAT must see the folded
   kernels, since those are what int8 quantizes.
2. **Fake-quantize** (:func:`fake_quant_model`): a copy of the folded model whose Conv/Depthwise/Dense
   kernels pass through per-channel symmetric int8 fake quantization (scale = max|w| / 127 per
   output channel, the grid TFLite uses), and whose activations pass through 8-bit fake
   quantization with ranges tracked by an exponential moving average of each batch's min and max.
   Both round in the forward pass and let gradients straight through (straight-through estimator).
3. **Fine-tune** the fake-quantized model for a few epochs with the model's recipe at a small
   learning rate, so the weights settle where rounding hurts least.
4. **Export**: the fine-tuned float weights go back into the folded architecture, which the
   pipeline converts with ordinary full-int8 post-training quantization
   (:func:`edgedl.convert.to_tflite`). Since the kernels' per-channel max does not change when
   they are quantized, the converter's weight grid is the one QAT trained on; the activation ranges
   are re-calibrated on representative data rather than taken from the moving averages.

Recurrent layers (LSTM, GRU, SimpleRNN) train with their input and output fake-quantized, and their
kernels and cell in float (:func:`not_fake_quantized` lists them): the int8 operators they become
(the fused UNIDIRECTIONAL_SEQUENCE_LSTM, with its int16 cell, or the unrolled GRU's FULLY_CONNECTEDs)
are made by :func:`edgedl.convert.to_tflite` on export, whose calibration sets their inner scales.
On digits read as 8 steps of 8 features, the exported int8 LSTM and GRU stay within a point of float
(tests/test_recurrent_backends.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from edgedl import _lazy
from edgedl.optimize import keras_graph

log = logging.getLogger(__name__)

# QAT fine-tuning starts at this fraction of the recipe's learning rate.
LR_SCALE = 0.03
# Moving-average momentum of the activation ranges.
RANGE_MOMENTUM = 0.99

FOLDABLE = ("Conv2D", "Conv1D", "DepthwiseConv2D", "Dense")
# Activations TFLite fuses into the Conv/Dense before them: their input is never a quantized tensor.
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")
# Layers whose output has the scale of their input (no new quantized tensor in TFLite).
SAME_SCALE = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
              "AlphaDropout", "Flatten", "Reshape", "MaxPooling1D", "MaxPooling2D", "GlobalMaxPooling1D",
              "GlobalMaxPooling2D", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "Identity",
              "ActivityRegularization", "UpSampling1D", "UpSampling2D", "Permute")
# Activations with a fixed output range, which TFLite quantizes with a fixed scale.
FIXED_RANGE_ACTIVATIONS = ("softmax", "log_softmax", "sigmoid", "tanh")


def _activation_name(layer) -> str:
    act = getattr(layer, "activation", None)
    if act is None:
        return "linear"
    return getattr(act, "__name__", str(act))


def _relu_layer_is_fusable(step) -> bool:
    layer = step.layer
    if step.kind == "ReLU":
        return (layer.max_value in (None, 6.0)) and not layer.negative_slope and not layer.threshold
    if step.kind == "Activation":
        return _activation_name(layer) in ("relu", "relu6")
    return False


def fold_batchnorm(model):
    """A copy of ``model`` with every BatchNormalization that directly follows a Conv/Dense folded in.

    Returns:
        ``(folded_model, folded_pairs)`` where ``folded_pairs`` lists ``(layer, batchnorm)`` names.
    """
    keras = _lazy.keras()
    steps = keras_graph.trace(model)
    users = keras_graph.consumers(steps)
    by_name = {s.name: s for s in steps}
    pairs = {}  # batch-norm name -> producer name
    for s in steps:
        if s.kind != "BatchNormalization" or len(s.inputs) != 1:
            continue
        prod = by_name[s.inputs[0]]
        axis = s.layer.axis if isinstance(s.layer.axis, int) else s.layer.axis[0]
        if (prod.kind in FOLDABLE and users[prod.name] == [s.name] and _activation_name(prod.layer) == "linear"
                and axis in (-1, len(s.input_shapes[0]) - 1)
                and getattr(prod.layer, "data_format", "channels_last") == "channels_last"
                and getattr(prod.layer, "groups", 1) == 1):
            pairs[s.name] = prod.name
    if not pairs:
        return keras_graph.copy_model(model), []
    producers = set(pairs.values())

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name in producers:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        if layer.name in pairs:
            return args[0]
        return layer(*args, **kwargs)

    folded = keras.models.clone_model(keras_graph.as_functional(model), clone_function=clone_layer, call_function=call)
    bn_of = {p: b for b, p in pairs.items()}
    for s in steps:
        if s.kind == "InputLayer" or s.name in pairs or not s.layer.weights:
            continue
        new = folded.get_layer(s.name)
        if s.name not in producers:
            new.set_weights(s.layer.get_weights())
            continue
        kernel = np.asarray(s.layer.kernel)
        bias = np.asarray(s.layer.bias) if s.layer.use_bias else np.zeros(_out_channels(s), np.float32)
        bn = by_name[bn_of[s.name]].layer
        gamma = np.asarray(bn.gamma) if bn.scale else 1.0
        beta = np.asarray(bn.beta) if bn.center else 0.0
        scale = gamma / np.sqrt(np.asarray(bn.moving_variance) + bn.epsilon)
        if s.kind == "DepthwiseConv2D":  # kernel (kh, kw, channels, multiplier), channel-major outputs
            kernel = kernel * scale.reshape(1, 1, kernel.shape[2], kernel.shape[3])
        else:
            kernel = kernel * scale
        bias = (bias - np.asarray(bn.moving_mean)) * scale + beta
        new.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return folded, sorted((p, b) for b, p in pairs.items())


def _out_channels(step) -> int:
    return int(step.output_shape[-1])


def fake_quant_kernel(kernel, channels_axes: int = 1):
    """Per-channel symmetric int8 fake quantization of a kernel (straight-through gradients).

    ``channels_axes`` trailing axes make up the channel (2 for a depthwise kernel: channels x multiplier).
    """
    tf = _lazy.tf()
    k = tf.convert_to_tensor(kernel)
    shape = tf.shape(k)
    width = int(np.prod(k.shape[-channels_axes:]))
    flat = tf.reshape(k, [-1, width])
    bound = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(flat), axis=0), 1e-8))
    q = tf.quantization.fake_quant_with_min_max_vars_per_channel(flat, -bound, bound, num_bits=8, narrow_range=True)
    return tf.reshape(q, shape)


def _conv_call(self, inputs):
    """``call`` of a Conv1D/Conv2D whose kernel is fake-quantized per output channel."""
    ops = _lazy.keras().ops
    outputs = self.convolution_op(inputs, fake_quant_kernel(self.kernel))
    if self.use_bias:
        outputs = ops.add(outputs, ops.reshape(self.bias, (1,) * (self.rank + 1) + (self.filters,)))
    return self.activation(outputs) if self.activation is not None else outputs


@lru_cache(maxsize=None)
def layer_classes():
    """The fake-quantizing layer classes (built on first use, so this module imports without Keras)."""
    keras = _lazy.keras()
    ops = keras.ops

    class FakeQuantConv(keras.layers.Conv2D):
        """Conv2D whose kernel is fake-quantized per output channel."""

        call = _conv_call

    class FakeQuantConv1D(keras.layers.Conv1D):
        """Conv1D whose kernel is fake-quantized per output channel."""

        call = _conv_call

    class FakeQuantDepthwise(keras.layers.DepthwiseConv2D):
        """DepthwiseConv2D whose kernel is fake-quantized per channel."""

        def call(self, inputs):
            outputs = ops.depthwise_conv(inputs, fake_quant_kernel(self.kernel, channels_axes=2),
                                         strides=self.strides, padding=self.padding,
                                         dilation_rate=self.dilation_rate, data_format=self.data_format)
            if self.use_bias:
                outputs = ops.add(outputs, ops.reshape(self.bias, (1,) * (self.rank + 1) + (-1,)))
            return self.activation(outputs) if self.activation is not None else outputs

    class FakeQuantDense(keras.layers.Dense):
        """Dense whose kernel is fake-quantized per output unit."""

        def call(self, inputs, training=None):
            x = ops.matmul(inputs, fake_quant_kernel(self.kernel))
            if self.bias is not None:
                x = ops.add(x, self.bias)
            return self.activation(x) if self.activation is not None else x

    return {"Conv2D": FakeQuantConv, "Conv1D": FakeQuantConv1D, "DepthwiseConv2D": FakeQuantDepthwise,
            "Dense": FakeQuantDense, "ActivationQuantizer": _activation_quantizer()}


@lru_cache(maxsize=None)
def _activation_quantizer():
    """The layer that fake-quantizes activations to 8 bits over moving-average ranges."""
    keras = _lazy.keras()
    tf = _lazy.tf()

    class ActivationQuantizer(keras.layers.Layer):
        """8-bit fake quantization of a tensor over a [min, max] range tracked by moving average."""

        def __init__(self, momentum=RANGE_MOMENTUM, **kwargs):
            super().__init__(**kwargs)
            self.momentum = momentum

        def build(self, input_shape):
            self.range_min = self.add_weight(name="range_min", shape=(), initializer="zeros", trainable=False)
            self.range_max = self.add_weight(name="range_max", shape=(), initializer="zeros", trainable=False)
            self.seen = self.add_weight(name="seen", shape=(), initializer="zeros", trainable=False)

        def call(self, x, training=None):
            x = tf.convert_to_tensor(x)
            lo, hi = tf.convert_to_tensor(self.range_min), tf.convert_to_tensor(self.range_max)
            if training:
                m = self.momentum
                batch_lo = tf.minimum(tf.reduce_min(x), 0.0)
                batch_hi = tf.maximum(tf.reduce_max(x), 0.0)
                first = tf.equal(tf.convert_to_tensor(self.seen), 0.0)
                lo = tf.where(first, batch_lo, m * lo + (1 - m) * batch_lo)
                hi = tf.where(first, batch_hi, m * hi + (1 - m) * batch_hi)
                self.range_min.assign(lo)
                self.range_max.assign(hi)
                self.seen.assign(1.0)
            hi = tf.maximum(hi, lo + 1e-6)
            quantized = tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8)
            return tf.where(tf.convert_to_tensor(self.seen) > 0, quantized, x)

        def get_config(self):
            return dict(super().get_config(), momentum=self.momentum)

    return ActivationQuantizer


def fake_quant_model(model):
    """A training copy of ``model`` (already batch-norm folded) with int8 fake quantization inserted.

    Kernels are fake-quantized per channel inside the Conv/Depthwise/Dense layers (same names and
    weights as in ``model``); activations are fake-quantized where TFLite would hold a quantized
    tensor: the model input, and the output of every layer except those feeding only a fused ReLU,
    those that keep their input's scale (pooling by max, dropout, reshapes) and fixed-range
    activations (softmax, sigmoid, tanh).
    """
    keras = _lazy.keras()
    classes = layer_classes()
    Quantizer = classes["ActivationQuantizer"]
    steps = keras_graph.trace(model)
    users = keras_graph.consumers(steps)
    by_name = {s.name: s for s in steps}
    split_activation = {}  # producer name -> activation applied after quantizing its pre-activation

    def quantize_output(step) -> bool:
        if step.kind in SAME_SCALE or step.kind == "InputLayer":
            return False
        if step.kind == "Activation" and _activation_name(step.layer) in FIXED_RANGE_ACTIVATIONS:
            return False
        if step.kind == "Softmax":
            return False
        following = [by_name[u] for u in users.get(step.name, [])]
        if following and all(_relu_layer_is_fusable(f) for f in following) and step.kind in (*FOLDABLE, "Add"):
            return False
        return True

    def clone_layer(layer):
        config = layer.get_config()
        kind = type(layer).__name__
        if kind in FOLDABLE and getattr(layer, "groups", 1) == 1 and \
                getattr(layer, "data_format", "channels_last") == "channels_last":
            act = _activation_name(layer)
            if act not in FUSED_ACTIVATIONS:
                split_activation[layer.name] = config["activation"]
                config["activation"] = "linear"
            return classes[kind].from_config(config)
        return layer.__class__.from_config(config)

    input_quantized = {}

    def call(layer, *args, **kwargs):
        args = [_quantize_inputs(a, input_quantized, Quantizer) for a in args]
        out = layer(*args, **kwargs)
        step = by_name[layer.name]
        if layer.name in split_activation:
            out = Quantizer(name=f"{layer.name}_fq_logits")(out)
            return keras.layers.Activation(split_activation[layer.name], name=f"{layer.name}_activation")(out)
        if quantize_output(step):
            out = Quantizer(name=f"{layer.name}_fq")(out)
        return out

    qmodel = keras.models.clone_model(keras_graph.as_functional(model), clone_function=clone_layer, call_function=call)
    for s in steps:
        if s.layer.weights and s.kind != "InputLayer":
            qmodel.get_layer(s.name).set_weights(s.layer.get_weights())
    return qmodel


def _quantize_inputs(arg, cache, Quantizer):
    """Fake-quantize a model input tensor (once) where a layer takes it."""
    if isinstance(arg, (list, tuple)):
        return type(arg)(_quantize_inputs(a, cache, Quantizer) for a in arg)
    history = getattr(arg, "_keras_history", None)
    if history is not None and type(history.operation).__name__ == "InputLayer":
        if id(arg) not in cache:
            cache[id(arg)] = Quantizer(name=f"{history.operation.name}_fq")(arg)
        return cache[id(arg)]
    return arg


@dataclass
class QATResult:
    """The exportable float model with quantization-trained weights, and what QAT did."""

    model: object = field(repr=False)  # folded architecture, plain Keras layers
    fake_quant_model: object = field(repr=False)  # the training model (fake quantization inside)
    folded: list  # (layer, batch norm) pairs folded
    plain: list = field(default_factory=list)  # {"layer", "kind", "reason"}: kernels trained without fake quantization


def quantization_aware_training(model, tune, keep_sparsity: bool = False) -> QATResult:
    """Fine-tune ``model`` with int8 fake quantization; return float weights ready for int8 export.

    Args:
        model: a trained Keras model (left unchanged).
        tune: a :class:`~edgedl.optimize.finetune.FineTune`: the data, recipe, epochs, seed and teacher;
            QAT starts at its own :data:`LR_SCALE` of the recipe's learning rate, whatever ``tune.lr_scale`` says.
        keep_sparsity: hold the zeros of a pruned model at zero while fine-tuning.

    Returns:
        QATResult: ``model`` is the batch-norm-folded float model to convert with
        ``to_tflite(model, "int8", representative)``.

    Example:
        >>> result = quantization_aware_training(model, FineTune(x, y, recipe, epochs=2))  # doctest: +SKIP
        >>> tflite = to_tflite(result.model, "int8", x[:200])  # doctest: +SKIP
    """
    from edgedl.optimize.finetune import finetune
    from edgedl.optimize.prune import Masker, masking_callback

    keras_graph.require_keras_layers(model, "quantization-aware training")
    folded, pairs = fold_batchnorm(model)
    qmodel = fake_quant_model(folded)
    callbacks = [masking_callback(Masker.keep_zeros(qmodel))] if keep_sparsity else []
    finetune(qmodel, tune.but(lr_scale=LR_SCALE), callbacks=callbacks, title="quantization-aware training")
    export = keras_graph.copy_model(folded)
    for layer in export.layers:
        if layer.weights:
            layer.set_weights(qmodel.get_layer(layer.name).get_weights())
    return QATResult(model=export, fake_quant_model=qmodel, folded=pairs, plain=not_fake_quantized(folded))


def not_fake_quantized(model) -> list[dict]:
    """The layers with kernels that QAT trains in float (the int8 export still quantizes them, after
    training that did not see it): kinds other than Conv1D/Conv2D/DepthwiseConv2D/Dense, grouped or
    channels-first convolutions."""
    rows = []
    for step in keras_graph.trace(model):
        layer = step.layer
        if not any(w.name in ("kernel", "depthwise_kernel", "pointwise_kernel") for w in layer.weights):
            continue
        if step.kind not in FOLDABLE:
            reason = f"QAT fake-quantizes the kernels of {', '.join(FOLDABLE)} only"
        elif getattr(layer, "groups", 1) != 1:
            reason = "a grouped convolution"
        elif getattr(layer, "data_format", "channels_last") != "channels_last":
            reason = "channels first"
        else:
            continue
        rows.append({"layer": step.name, "kind": step.kind, "reason": reason})
    return rows
