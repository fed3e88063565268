"""Recurrent layers in a form TensorFlow's integer calibrator takes: fused LSTMs and unrolled RNNs.

Keras 3's LSTM and GRU trace to a ``while`` loop, and TensorFlow 2.21's integer calibrator crashes
the process on it. Keras 2 gave the converter an LSTM it could fuse: a function marked
``api_implements = "lstm_<id>"`` whose arguments are the input, the two initial states, the kernel,
the recurrent kernel and the bias. The converter replaces such a function by one
``UNIDIRECTIONAL_SEQUENCE_LSTM`` operator, which it quantizes fully to integers (int8 activations,
int16 cell state: the operator TFLite Micro runs on microcontrollers). :func:`converter_ready` gives
a Keras 3 model that form for the length of a conversion:

- an LSTM with the standard activations (tanh, sigmoid), no returned state, no initial state and no
  mask becomes a call of such a function (:func:`fused_lstm`), which computes what Keras computes;
- every other LSTM, GRU and SimpleRNN (Bidirectional ones too) is unrolled over its time steps,
  into fully connected layers and element-wise operators that every backend takes.

Nothing of the model changes outside the ``with`` block, and nothing in it at all but the way its
recurrent layers are traced.

Example:
    >>> with converter_ready(model) as plan:                      # doctest: +SKIP
    ...     tflite = converter.convert()
    >>> plan                                                       # doctest: +SKIP
    [RecurrentPlan(layer='lstm', kind='LSTM', form='fused')]
"""

from __future__ import annotations

import contextlib
import types
import uuid
from dataclasses import dataclass

from edgedl import _lazy

#: recurrent layers handled here; the rest (ConvLSTM, custom cells in keras.layers.RNN) are refused
HANDLED = ("LSTM", "GRU", "SimpleRNN")
FORMS = {"fused": "one UNIDIRECTIONAL_SEQUENCE_LSTM operator",
         "unrolled": "unrolled over its time steps into fully connected and element-wise operators"}


@dataclass(frozen=True)
class RecurrentPlan:
    """How one recurrent layer is converted: ``form`` is ``fused`` or ``unrolled`` (see :data:`FORMS`)."""

    layer: str
    kind: str
    form: str

    def to_dict(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, "form": self.form, "operators": FORMS[self.form]}


def recurrent_layers(model) -> list:
    """Every recurrent layer of ``model`` (those of nested models and Bidirectional wrappers too)."""
    return [rnn for rnn, _ in _walk_model(model)]


def _walk_model(model):
    """(recurrent layer, the layer whose input is its input: itself, or the wrapper around it)."""
    keras = _lazy.keras()

    def walk(layer, host):
        if isinstance(layer, keras.layers.RNN):
            yield layer, host
        for inner in getattr(layer, "layers", None) or ():
            yield from walk(inner, inner)
        for wrapped in ("forward_layer", "backward_layer", "layer"):
            inner = getattr(layer, wrapped, None)
            if inner is not None and inner is not layer and hasattr(inner, "weights"):
                yield from walk(inner, layer)

    seen = set()
    for layer in model.layers:
        for rnn, host in walk(layer, layer):
            if id(rnn) not in seen:
                seen.add(id(rnn))
                yield rnn, host


def unhandled(model) -> list[tuple[str, str, str]]:
    """The recurrent layers :func:`converter_ready` cannot convert, as (layer, kind, why): ConvLSTMs,
    custom cells, and layers over a number of time steps that is not fixed."""
    out = []
    for layer, host in _walk_model(model):
        kind = type(layer).__name__
        if kind not in HANDLED:
            out.append((layer.name, kind, f"{kind} is not an LSTM, GRU or SimpleRNN"))
        elif _timesteps(host) is None:
            out.append((layer.name, kind, "its number of time steps is not fixed"))
    return out


def fusable(layer) -> bool:
    """Whether ``layer`` becomes one fused LSTM operator: an LSTM with tanh and sigmoid activations,
    returning no state and keeping none between calls."""
    return (type(layer).__name__ == "LSTM" and _name(layer.activation) == "tanh"
            and _name(layer.recurrent_activation) == "sigmoid" and not layer.return_state
            and not layer.stateful)


def plan_for(model) -> list[RecurrentPlan]:
    """How :func:`converter_ready` converts each of ``model``'s recurrent layers (what the bundle's
    manifest records), without touching the model."""
    return [RecurrentPlan(layer.name, "LSTM", "fused") if fusable(layer)
            else RecurrentPlan(layer.name, type(layer).__name__, "unrolled")
            for layer, host in _walk_model(model)
            if type(layer).__name__ in HANDLED and _timesteps(host) is not None]


@contextlib.contextmanager
def converter_ready(model):
    """Within the block, ``model``'s recurrent layers trace as the converter can quantize them (fused
    LSTMs, the others unrolled); yields the plan, a :class:`RecurrentPlan` per layer. Layers over a
    free number of time steps, and those :data:`HANDLED` does not name, are left as they are."""
    layers = [layer for layer, host in _walk_model(model)
              if type(layer).__name__ in HANDLED and _timesteps(host) is not None]
    saved = []
    plan = []
    try:
        for layer in layers:
            saved.append((layer, layer.unroll, layer.__dict__.get("call")))
            layer.unroll = True
            if fusable(layer):
                layer.call = types.MethodType(_fused_call(layer.call), layer)
                plan.append(RecurrentPlan(layer.name, "LSTM", "fused"))
            else:
                plan.append(RecurrentPlan(layer.name, type(layer).__name__, "unrolled"))
        yield plan
    finally:
        for layer, unroll, call in saved:
            layer.unroll = unroll
            if call is None:
                layer.__dict__.pop("call", None)
            else:
                layer.call = call


def _fused_call(original):
    """An LSTM ``call`` that runs :func:`fused_lstm` where it can, else the layer's own (unrolled) one."""

    def call(self, sequences, initial_state=None, mask=None, training=False):
        if initial_state is not None or mask is not None:
            return original(sequences, initial_state=initial_state, mask=mask, training=training)
        tf = _lazy.tf()
        cell = self.cell
        batch = sequences.shape[0] if sequences.shape[0] is not None else tf.shape(sequences)[0]
        zeros = tf.zeros((batch, cell.units), sequences.dtype)
        bias = (tf.convert_to_tensor(cell.bias) if cell.use_bias
                else tf.zeros((4 * cell.units,), sequences.dtype))
        fn = fused_lstm(go_backwards=bool(self.go_backwards))
        _, outputs, _, _, _ = fn(sequences, zeros, zeros, tf.convert_to_tensor(cell.kernel),
                                 tf.convert_to_tensor(cell.recurrent_kernel), bias)
        # Keras returns the reversed sequence of a backwards LSTM as it computed it (last step first).
        return outputs if self.return_sequences else outputs[:, -1]

    return call


def fused_lstm(go_backwards: bool = False):
    """A ``tf.function`` the TFLite converter fuses into UNIDIRECTIONAL_SEQUENCE_LSTM.

    Its interface is what the converter's Keras LSTM fusion reads: the attributes
    ``api_implements`` (``lstm_`` and a unique id), ``time_major`` and ``go_backwards``; six
    arguments (batch-major input, initial output and cell states, kernel, recurrent kernel, bias,
    gates in Keras' order i, f, c, o); five results (last output, all outputs, the two final
    states, and a runtime marker). The body is Keras' LSTM step, so the function computes the layer
    exactly where it is not fused (in Keras, or a converter that does not fuse it).
    """
    tf = _lazy.tf()

    def lstm(inputs, init_h, init_c, kernel, recurrent_kernel, bias):
        steps = tf.unstack(inputs, axis=1)
        if go_backwards:
            steps = steps[::-1]
        h, c, outputs = init_h, init_c, []
        for x in steps:
            z = tf.matmul(x, kernel) + tf.matmul(h, recurrent_kernel) + bias
            i, f, g, o = tf.split(z, 4, axis=1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            outputs.append(h)
        return h, tf.stack(outputs, axis=1), h, c, tf.constant(0.0)

    return tf.function(lstm, autograph=False, experimental_attributes={
        "api_implements": f"lstm_{uuid.uuid4()}", "api_preferred_device": "CPU",
        "time_major": False, "go_backwards": go_backwards})


def _timesteps(layer):
    """The number of time steps ``layer`` (a recurrent layer or its wrapper) takes: None where it is
    not fixed; 1 where its input is not known here (the conversion's own trace decides)."""
    try:
        shape = layer.input.shape
    except (AttributeError, ValueError):  # never called (a layer inside a wrapper), or called several times
        return 1
    return shape[1] if len(shape) > 1 else None


def _name(fn) -> str:
    return getattr(fn, "__name__", str(fn))
