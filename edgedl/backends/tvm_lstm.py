"""The fused LSTM for TVM's TFLite frontend: part of the TVM backend's importer (:mod:`edgedl.backends.tvm_int8`).

edgedl's converter turns a Keras LSTM into one ``UNIDIRECTIONAL_SEQUENCE_LSTM`` (:mod:`edgedl.recurrent`)
with the four gates of Keras' cell: input, forget, cell and output, each with its input and recurrent
weights and its bias. TVM 0.27's Relax frontend converts only the coupled form (no input gate, ``i = 1 - f``)
and refuses this one ("Only coupled input-forget LSTM is supported"). :func:`convert_lstm` lowers the
float32 operator as LiteRT's float kernel computes it (``lstm_eval.cc``, ``EvalFloat``), unrolled over the
model's fixed time steps:

    i = sigmoid(W_i x + R_i h + b_i)   f = sigmoid(W_f x + R_f h + b_f)
    g = act(W_c x + R_c h + b_c)       o = sigmoid(W_o x + R_o h + b_o)
    c = clip(f * c + i * g)            h = clip(o * act(c))

The int8 operator (int8 activations and weights, int32 biases, an int16 cell) is lowered the same way on
its dequantized weights, with the cell state rounded to its int16 grid and the hidden state (the output,
fed back) to its int8 grid at every step. That is close to LiteRT's integer LSTM (``EvalInteger8x8_16``:
int16 gates from effective scales, gemmlowp's fixed-point logistic and tanh), not equal to it: on the
digits LSTM of tests/test_tvm_recurrent.py up to 5 int8 steps apart on 9% of the outputs, top-1 identical.

The state tensors are variables in the ``.tflite``; every inference starts them from zeros, as Keras
starts every call and as edgedl's engines reset LiteRT and TFLite Micro before each invocation.

Peephole, projection and layer-norm LSTMs (which edgedl never produces) are refused by name; quantized
ones other than int8 by :func:`edgedl.backends.tvm.quantized_ops_refused` and, in one line naming the
operator, by the importer (:class:`edgedl.backends.tvm_int8.ExactInt8Converter`).

Example:
    >>> lstm = functools.partial(convert_lstm, converter)  # doctest: +SKIP
    >>> converter.convert_map["UNIDIRECTIONAL_SEQUENCE_LSTM"] = lstm  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from tvm import relax

# input tensor indices of UNIDIRECTIONAL_SEQUENCE_LSTM (lstm_shared.h)
INPUT_WEIGHTS = (1, 2, 3, 4)        # input-to-{input, forget, cell, output}
RECURRENT_WEIGHTS = (5, 6, 7, 8)
BIASES = (12, 13, 14, 15)
PEEPHOLE, PROJECTION, LAYER_NORM = (9, 10, 11), (16, 17), (20, 21, 22, 23)
OUTPUT_STATE, CELL_STATE = 18, 19


def _refuse(reason: str):
    import tvm

    raise tvm.error.OpNotImplemented(f"UNIDIRECTIONAL_SEQUENCE_LSTM: {reason}")


def convert_lstm(conv, op):
    """Relax expression of a float32 or int8 ``UNIDIRECTIONAL_SEQUENCE_LSTM`` with all four gates
    (the int8 one in float32 between the int16 cell's and int8 output's grids: not exact).

    Args:
        conv: the frontend's ``OperatorConverter`` converting the model.
        op: the TFLite operator.

    Returns:
        The operator's output, ``[batch, time, units]`` (or time-major as the operator says).

    Raises:
        tvm.error.OpNotImplemented: a peephole, projection or layer-norm LSTM (the message names which).
    """
    from tflite.UnidirectionalSequenceLSTMOptions import UnidirectionalSequenceLSTMOptions

    inputs = conv.get_input_tensors(op)
    present = [t.tensor_idx >= 0 for t in inputs]
    for indices, kind in ((PEEPHOLE, "peephole"), (PROJECTION, "projection"), (LAYER_NORM, "layer-norm")):
        if any(present[i] for i in indices if i < len(inputs)):
            _refuse(f"a {kind} LSTM, which edgedl's TVM importer does not convert (Keras LSTMs have none)")
    options = UnidirectionalSequenceLSTMOptions()
    raw = op.BuiltinOptions()
    options.Init(raw.Bytes, raw.Pos)
    activation = options.FusedActivationFunction()
    cell_clip, proj_clip = options.CellClip(), options.ProjClip()

    quantized = conv.is_quantized(op)

    def qparams(tensor):
        q = tensor.tensor.Quantization()
        return float(q.ScaleAsNumpy()[0]), int(q.ZeroPointAsNumpy()[0])

    def weight(i):
        value = np.asarray(conv.get_tensor_value(inputs[i]))
        if not quantized:
            return value.astype(np.float32)
        scale, zero_point = qparams(inputs[i])
        return ((value.astype(np.float64) - zero_point) * scale).astype(np.float32)

    def requantize(value, tensor, low, high):
        """``value`` rounded onto ``tensor``'s grid and clamped to [low, high]: (integers, their float value)."""
        scale, zero_point = qparams(tensor)
        steps = relax.op.clip(relax.op.add(relax.op.round(relax.op.divide(value, relax.const(scale, "float32"))),
                                           relax.const(float(zero_point), "float32")), low, high)
        steps = conv.bb.emit(steps)
        back = relax.op.multiply(relax.op.subtract(steps, relax.const(float(zero_point), "float32")),
                                 relax.const(scale, "float32"))
        return steps, conv.bb.emit(back)

    # the four gates' weights side by side: one matmul per step for x and one for h
    w_x = np.concatenate([weight(i) for i in INPUT_WEIGHTS], axis=0).T          # [input, 4 * units]
    w_h = np.concatenate([weight(i) for i in RECURRENT_WEIGHTS], axis=0).T      # [units, 4 * units]
    bias = np.concatenate([weight(i) for i in BIASES])
    units = w_h.shape[0]

    x = conv.get_tensor_expr(inputs[0])
    if quantized:
        scale, zero_point = qparams(inputs[0])
        x = relax.op.subtract(relax.op.astype(x, "float32"), relax.const(float(zero_point), "float32"))
        x = relax.op.multiply(x, relax.const(scale, "float32"))
    shape = [int(d) for d in conv.get_tensor_shape(inputs[0])]
    if options.TimeMajor():
        x = relax.op.permute_dims(x, [1, 0, 2])
        shape = [shape[1], shape[0], shape[2]]
    batch, num_steps = shape[0], shape[1]
    # the input's share of every gate for all steps at once: [batch, time, 4 * units]
    x_gates = conv.bb.emit(relax.op.add(relax.op.matmul(x, relax.const(w_x)), relax.const(bias)))
    parts = relax.op.split(x_gates, num_steps, axis=1) if num_steps > 1 else None

    h = relax.const(np.zeros((batch, units), np.float32))
    c = relax.const(np.zeros((batch, units), np.float32))
    outputs = []
    for t in range(num_steps):
        step = relax.op.squeeze(parts[t] if parts is not None else x_gates, axis=[1])
        gates = conv.bb.emit(relax.op.add(step, relax.op.matmul(h, relax.const(w_h))))
        i, f, g, o = (conv.bb.emit(relax.op.split(gates, 4, axis=1)[k]) for k in range(4))
        i, f, o = relax.op.sigmoid(i), relax.op.sigmoid(f), relax.op.sigmoid(o)
        g = conv.convert_fused_activation_function(g, activation)
        c = relax.op.add(relax.op.multiply(f, c), relax.op.multiply(i, g))
        if cell_clip > 0.0:
            c = relax.op.clip(c, -cell_clip, cell_clip)
        c = conv.bb.emit(c)
        if quantized:  # the cell state is int16 between steps
            c = requantize(c, inputs[CELL_STATE], -32768.0, 32767.0)[1]
        h = relax.op.multiply(o, conv.convert_fused_activation_function(c, activation))
        if proj_clip > 0.0:
            h = relax.op.clip(h, -proj_clip, proj_clip)
        h = conv.bb.emit(h)
        if quantized:  # the output (and the hidden state fed back) is int8
            steps, h = requantize(h, conv.get_output_tensors(op)[0], -128.0, 127.0)
            outputs.append(steps)
        else:
            outputs.append(h)
    out = relax.op.stack(outputs, axis=1)
    if quantized:
        out = relax.op.astype(out, "int8")
    return relax.op.permute_dims(out, [1, 0, 2]) if options.TimeMajor() else out
