"""Recurrent layers in a form TensorFlow's integer calibrator takes: fused LSTMs and unrolled RNNs.

Keras 3's LSTM and GRU trace to a ``while`` loop, and TensorFlow 2.21's integer calibrator crashes
the process on it. Keras 2 gave the converter an LSTM it could fuse: a function marked
``api_implements = "lstm_<id>"`` whose arguments are the input, the two initial states, the kernel,
the recurrent kernel and the bias. The converter replaces such a function by one
``UNIDIRECTIONAL_SEQUENCE_LSTM`` operator, which it quantizes fully to integers (int8 activations,
int16 cell state: the operator TFLite Micro runs on microcontrollers). :func:`converter_ready` gives
a Keras 3 model that form for the length of a conversion:

- an LSTM with the standard activations (tanh, sigmoid), no returned state, no initial state and no
  mask becomes a call of such a function (:func:`fused_lstm`), which computes what Keras computes,
  except in an ``int16x8`` conversion: TensorFlow's converter has no 16x8 quantization of the fused
  operator ("not yet supported"), so there every LSTM is unrolled (:data:`UNFUSED_MODES`);
- every other LSTM, GRU and SimpleRNN (Bidirectional ones too) is unrolled over its time steps,
  into fully connected layers and element-wise operators that every backend takes
  (:func:`unrolled_loop`): the input is projected for all steps at once by fully connected
  layers with the bias, and each step multiplies the state by the recurrent kernel. Keras' own
  unrolled loop projects the input again at every step, each product with its bias: as int8, every
  step's bias is another int32 constant at that step's scale, with a scale and a zero point per
  channel (the zoo GRU: 121 copies, 557 KB of its 852 KB file, against 341 KB in float32), and
  TFLite Micro keeps per-channel multipliers for each of its 122 fully connected operators (most
  of a 528 KiB arena). Unrolled, each step still has its own recurrent fully connected operators,
  and TFLite Micro 8 bytes per output channel of each (the zoo GRU: 135 KiB of its 304 KiB arena);
  per-tensor weights (``edgedl optimize --per-tensor``) keep 8 bytes per operator instead.

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
#: quantization modes whose converter cannot take the fused LSTM operator: their LSTMs are unrolled
UNFUSED_MODES = ("int16x8",)
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


def fusable(layer, quantize: str | None = None) -> bool:
    """Whether ``layer`` becomes one fused LSTM operator: an LSTM with tanh and sigmoid activations,
    returning no state and keeping none between calls, in a conversion to ``quantize`` (a mode of
    :data:`UNFUSED_MODES` fuses none)."""
    return (quantize not in UNFUSED_MODES and type(layer).__name__ == "LSTM" and _name(layer.activation) == "tanh"
            and _name(layer.recurrent_activation) == "sigmoid" and not layer.return_state
            and not layer.stateful)


def plan_for(model, quantize: str | None = None) -> list[RecurrentPlan]:
    """How :func:`converter_ready` converts each of ``model``'s recurrent layers for ``quantize``
    (what the bundle's manifest records), without touching the model."""
    return [RecurrentPlan(layer.name, "LSTM", "fused") if fusable(layer, quantize)
            else RecurrentPlan(layer.name, type(layer).__name__, "unrolled")
            for layer, host in _walk_model(model)
            if type(layer).__name__ in HANDLED and _timesteps(host) is not None]


@contextlib.contextmanager
def converter_ready(model, quantize: str | None = None):
    """Within the block, ``model``'s recurrent layers trace as the converter can quantize them to
    ``quantize`` (fused LSTMs, the others unrolled; all unrolled for a mode of :data:`UNFUSED_MODES`);
    yields the plan, a :class:`RecurrentPlan` per layer. Layers over a free number of time steps, and
    those :data:`HANDLED` does not name, are left as they are."""
    layers = [layer for layer, host in _walk_model(model)
              if type(layer).__name__ in HANDLED and _timesteps(host) is not None]
    saved = []
    plan = []
    try:
        for layer in layers:
            saved.append((layer, layer.unroll, layer.__dict__.get("call"), layer.__dict__.get("inner_loop")))
            layer.unroll = True
            if fusable(layer, quantize):
                layer.call = types.MethodType(_fused_call(layer.call), layer)
                plan.append(RecurrentPlan(layer.name, "LSTM", "fused"))
            else:
                layer.inner_loop = types.MethodType(_unrolled_inner_loop(layer.inner_loop), layer)
                plan.append(RecurrentPlan(layer.name, type(layer).__name__, "unrolled"))
        yield plan
    finally:
        for layer, unroll, *methods in saved:
            layer.unroll = unroll
            for name, method in zip(("call", "inner_loop"), methods):
                if method is None:
                    layer.__dict__.pop(name, None)
                else:
                    setattr(layer, name, method)


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


def _unrolled_inner_loop(original):
    """A recurrent layer's ``inner_loop`` (what ``keras.layers.RNN.call`` runs between the initial
    state and the returned outputs) as :func:`unrolled_loop`, where it can: no mask, not training
    (dropout). Elsewhere the layer's own loop, unrolled by Keras."""

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if mask is not None or training:
            return original(sequences, initial_state, mask=mask, training=training)
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        return unrolled_loop(self, sequences, states)

    return inner_loop


def unrolled_loop(layer, sequences, states):
    """``layer`` (an LSTM, GRU or SimpleRNN) over ``sequences`` from ``states``, unrolled so that each
    weight is one constant of the converted model, whatever the number of steps.

    The input side of every step comes from fully connected layers over all the steps at once, with
    the bias (a GRU's recurrent bias of its update and reset gates folded in: it adds to the same
    sums); each step multiplies the state by the recurrent kernel, with no bias but a GRU's
    recurrent bias of its candidate (``reset_after``), which the reset gate multiplies. As int8, that
    one stays a bias per step (``units`` int32 values: a fully connected layer's bias is at its
    input's scale, the step's state scale, times the kernel's); adding it as one shared constant
    after the product would cost two more operators per step in TFLite Micro's arena.

    What it computes is what Keras' loop computes, to float rounding (a GRU's state update
    ``z * h + (1 - z) * hh`` is written ``hh + z * (h - hh)``: three operators instead of four).

    Args:
        layer: the Keras recurrent layer (its cell's weights and activations are read).
        sequences: its input, (batch, steps, features), with a fixed number of steps.
        states: its initial states, a list (``[h]``, or ``[h, c]`` for an LSTM).

    Returns:
        ``(last_output, outputs, new_states)`` as ``keras.layers.RNN.inner_loop`` returns them:
        ``outputs`` holds every step's output (in the order computed: last step first for
        ``go_backwards``) where the layer returns sequences, else the last output.

    Example:
        >>> last, outputs, states = unrolled_loop(gru, x, [tf.zeros((1, gru.units))])  # doctest: +SKIP
    """
    tf = _lazy.tf()
    cell = layer.cell
    kind = type(layer).__name__
    units = cell.units
    steps = sequences.shape[1]
    kernel = tf.convert_to_tensor(cell.kernel)
    recurrent = tf.convert_to_tensor(cell.recurrent_kernel)
    bias = tf.convert_to_tensor(cell.bias) if cell.use_bias else None
    recurrent_bias = None  # a GRU's (reset after) recurrent bias of its candidate, added at each step
    if kind == "GRU" and bias is not None and cell.reset_after:
        bias, recurrent_bias = bias[0], bias[1]
        bias = bias + tf.concat([recurrent_bias[:2 * units], tf.zeros((units,), bias.dtype)], 0)
        recurrent_bias = recurrent_bias[2 * units:]

    def project(columns):
        """The input's product with the kernel's ``columns``, plus the bias, for all steps at once."""
        flat = tf.reshape(sequences, (-1, sequences.shape[2]))
        out = tf.matmul(flat, kernel[:, columns])
        if bias is not None:
            out = out + bias[columns]
        return tf.unstack(tf.reshape(out, (-1, steps, out.shape[-1])), axis=1)

    order = slice(None, None, -1) if layer.go_backwards else slice(None)
    act, gate = cell.activation, getattr(cell, "recurrent_activation", None)
    outputs = []
    if kind == "GRU":
        x_zr, x_h = project(slice(0, 2 * units))[order], project(slice(2 * units, 3 * units))[order]
        u_zr, u_h = recurrent[:, :2 * units], recurrent[:, 2 * units:]
        (h,) = states
        for t in range(steps):
            z, r = tf.split(gate(x_zr[t] + tf.matmul(h, u_zr)), 2, axis=-1)
            if cell.reset_after:
                inner = tf.matmul(h, u_h)
                if recurrent_bias is not None:
                    inner = inner + recurrent_bias
                hh = act(x_h[t] + r * inner)
            else:
                hh = act(x_h[t] + tf.matmul(r * h, u_h))
            h = hh + z * (h - hh)
            outputs.append(h)
        states = [h]
    elif kind == "LSTM":
        x = project(slice(None))[order]
        h, c = states
        for t in range(steps):
            i, f, g, o = tf.split(x[t] + tf.matmul(h, recurrent), 4, axis=-1)
            c = gate(f) * c + gate(i) * act(g)
            h = gate(o) * act(c)
            outputs.append(h)
        states = [h, c]
    else:  # SimpleRNN
        x = project(slice(None))[order]
        (h,) = states
        for t in range(steps):
            h = x[t] + tf.matmul(h, recurrent)
            if act is not None:
                h = act(h)
            outputs.append(h)
        states = [h]
    return h, (tf.stack(outputs, axis=1) if layer.return_sequences else h), states


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
