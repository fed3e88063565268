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

The int8 operator (int8 activations and weights, int32 biases, an int16 cell with a power-of-two scale) is
lowered to the integer arithmetic LiteRT runs (``lstm_eval.cc``, ``EvalInteger8x8_16``, as ``lstm.cc`` prepares
it): per gate, ``MultiplyByQuantizedMultiplier`` of the int32 input and recurrent products (zero points folded
into effective biases, effective scales over the gates' Q3.12 grid) into saturating int16 pre-activations;
gemmlowp's fixed-point int16 logistic (Q3.12 to Q0.15) and tanh (Q3.12, and the cell's Q(15 + cell scale)) by
exact tables (:func:`gemmlowp_logistic` and :func:`gemmlowp_tanh`, this module's port of gemmlowp's
``fixedpoint.h``, checked against it on every int16 input by tests/test_tvm_recurrent.py); the cell update with
``RoundingDivideByPOT`` products (shifts 15 and 30 + cell scale) and a saturating add; the hidden state
``MultiplyByQuantizedMultiplier(o * tanh(c))`` onto the hidden intermediate's int8 grid. Bit-exact against LiteRT's
default interpreter and its reference kernels on the digits LSTM of tests/test_tvm_recurrent.py (XNNPACK does
not take the LSTM: both run the same builtin kernel).

The state tensors are variables in the ``.tflite``; every inference starts them from zeros, as Keras
starts every call and as edgedl's engines reset LiteRT and TFLite Micro before each invocation.

Peephole, projection and layer-norm LSTMs (which edgedl never produces) are refused by name, as are int8 ones
without the hidden-state intermediate or with a cell scale that is not a power of two (LiteRT refuses those
too); quantized ones other than int8 by :func:`edgedl.backends.tvm.quantized_ops_refused` and, in one line naming the
operator, by the importer (:class:`edgedl.backends.tvm_int8.ExactInt8Converter`).

Example:
    >>> lstm = functools.partial(convert_lstm, converter)  # doctest: +SKIP
    >>> converter.convert_map["UNIDIRECTIONAL_SEQUENCE_LSTM"] = lstm  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math

import numpy as np
from tvm import relax

from edgedl.backends.tvm_int8 import _rdbpot, quantize_multiplier

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
    (the int8 one as LiteRT's integer LSTM computes it).

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

    if conv.is_quantized(op):
        return _convert_int8_lstm(conv, op, inputs, options)

    def weight(i):
        return np.asarray(conv.get_tensor_value(inputs[i])).astype(np.float32)

    # the four gates' weights side by side: one matmul per step for x and one for h
    w_x = np.concatenate([weight(i) for i in INPUT_WEIGHTS], axis=0).T          # [input, 4 * units]
    w_h = np.concatenate([weight(i) for i in RECURRENT_WEIGHTS], axis=0).T      # [units, 4 * units]
    bias = np.concatenate([weight(i) for i in BIASES])
    units = w_h.shape[0]

    x, batch, num_steps = _batch_major(conv, inputs[0], options)
    # the input's share of every gate for all steps at once: [batch, time, 4 * units]
    x_gates = conv.bb.emit(relax.op.add(relax.op.matmul(x, relax.const(w_x)), relax.const(bias)))
    parts = conv.bb.emit(relax.op.split(x_gates, num_steps, axis=1)) if num_steps > 1 else None  # once, not per step

    h = relax.const(np.zeros((batch, units), np.float32))
    c = relax.const(np.zeros((batch, units), np.float32))
    w_h = relax.const(w_h)  # one constant shared by every step
    outputs = []
    for t in range(num_steps):
        step = relax.op.squeeze(parts[t] if parts is not None else x_gates, axis=[1])
        gates = conv.bb.emit(relax.op.add(step, relax.op.matmul(h, w_h)))
        i, f, g, o = (conv.bb.emit(relax.op.split(gates, 4, axis=1)[k]) for k in range(4))
        i, f, o = relax.op.sigmoid(i), relax.op.sigmoid(f), relax.op.sigmoid(o)
        g = conv.convert_fused_activation_function(g, activation)
        c = relax.op.add(relax.op.multiply(f, c), relax.op.multiply(i, g))
        if cell_clip > 0.0:
            c = relax.op.clip(c, -cell_clip, cell_clip)
        c = conv.bb.emit(c)
        h = relax.op.multiply(o, conv.convert_fused_activation_function(c, activation))
        if proj_clip > 0.0:
            h = relax.op.clip(h, -proj_clip, proj_clip)
        h = conv.bb.emit(h)
        outputs.append(h)
    out = relax.op.stack(outputs, axis=1)
    return relax.op.permute_dims(out, [1, 0, 2]) if options.TimeMajor() else out


def _batch_major(conv, tensor, options):
    """The operator's input as ``[batch, time, features]``, its batch size and its number of steps."""
    x = conv.get_tensor_expr(tensor)
    shape = [int(d) for d in conv.get_tensor_shape(tensor)]
    if options.TimeMajor():
        x = relax.op.permute_dims(x, [1, 0, 2])
        shape = [shape[1], shape[0], shape[2]]
    return x, shape[0], shape[1]


# ---------------------------------------------------------------------------------------------
# The int8 LSTM: LiteRT's EvalInteger8x8_16 (lstm_eval.cc) with the parameters lstm.cc prepares.
# ---------------------------------------------------------------------------------------------

GATE_GRID = 2.0**-12  # Q3.12: the pre-activation grid of every gate in an LSTM without layer norm


def _convert_int8_lstm(conv, op, inputs, options):
    """The int8 ``UNIDIRECTIONAL_SEQUENCE_LSTM`` (int16 cell) as LiteRT's integer kernel computes it."""
    from tflite.ActivationFunctionType import ActivationFunctionType

    def qparams(tensor):
        q = tensor.tensor.Quantization()
        if q is None or q.ScaleLength() != 1:
            _refuse(f"int8 LSTM tensor {tensor.tensor.Name().decode(errors='replace')!r} is not quantized "
                    "per tensor, as LiteRT's integer LSTM requires")
        return np.float32(q.ScaleAsNumpy()[0]), int(q.ZeroPointAsNumpy()[0])

    if options.FusedActivationFunction() != ActivationFunctionType.TANH:
        _refuse("an int8 LSTM whose activation is not tanh (LiteRT's integer LSTM computes tanh whatever "
                "its option says); compile it with --backend litert or tflm")
    intermediates = op.IntermediatesAsNumpy() if op.IntermediatesLength() else []
    if len(intermediates) < 5:
        _refuse("an int8 LSTM without its five intermediates (the hidden state's scale is the fifth), which "
                "LiteRT's integer LSTM needs")
    hidden = conv.subgraph.Tensors(int(intermediates[4])).Quantization()
    hidden_scale, hidden_zp = np.float32(hidden.ScaleAsNumpy()[0]), int(hidden.ZeroPointAsNumpy()[0])
    x_scale, x_zp = qparams(inputs[0])
    h_scale, h_zp = qparams(inputs[OUTPUT_STATE])
    c_scale = float(qparams(inputs[CELL_STATE])[0])
    cell_bits = round(math.log2(c_scale))
    if abs(math.log2(c_scale) - cell_bits) >= 1e-3:
        _refuse(f"an int8 LSTM whose cell state scale {c_scale} is not a power of two (LiteRT refuses it too)")
    tanh_bits = 15 + cell_bits  # the cell is Q(15 + cell_bits).(-cell_bits) for its tanh
    if not 0 <= tanh_bits <= 6:
        _refuse(f"an int8 LSTM whose cell scale 2**{cell_bits} is outside LiteRT's range (2**-15 to 2**-9)")


    def gate_params(indices, in_scale, in_zp, with_bias):
        """[in, 4 * units] int8 weights, int32 effective biases, multipliers and shifts per column."""
        weights, biases, multipliers, shifts = [], [], [], []
        for k, i in enumerate(indices):
            w = np.asarray(conv.get_tensor_value(inputs[i])).astype(np.int64)
            w_scale, _ = qparams(inputs[i])
            bias = np.asarray(conv.get_tensor_value(inputs[BIASES[k]])).astype(np.int64) if with_bias else 0
            bias = bias - in_zp * w.sum(axis=1)  # PrecomputeZeroPointTimesWeightWithBias (int32)
            biases.append(((bias + 2**31) % 2**32) - 2**31)
            multiplier, shift = quantize_multiplier(float(np.float32(w_scale * in_scale) / np.float32(GATE_GRID)))
            multipliers += [multiplier] * w.shape[0]
            shifts += [shift] * w.shape[0]
            weights.append(w)
        return (np.concatenate(weights, axis=0).T.astype(np.int8), np.concatenate(biases).astype(np.int32),
                np.array(multipliers, np.int64), np.array(shifts, np.int64))

    w_x, b_x, m_x, s_x = gate_params(INPUT_WEIGHTS, x_scale, x_zp, with_bias=True)
    w_h, b_h, m_h, s_h = gate_params(RECURRENT_WEIGHTS, h_scale, h_zp, with_bias=False)
    units = w_h.shape[0]
    hidden_multiplier, hidden_shift = quantize_multiplier(
        float(np.float32(np.float32(2.0**-15) / hidden_scale) * np.float32(2.0**-15)))
    cell_clip = 0
    if options.CellClip() > 0.0:
        cell_clip = int(np.float32(min(max(np.float32(options.CellClip()) / np.float32(c_scale), -32768.0), 32767.0)))

    bb = conv.bb

    def i64(value):
        return relax.const(np.asarray(value, np.int64), "int64")

    def clip16(x):
        return relax.op.minimum(relax.op.maximum(x, i64(-32768)), i64(32767))

    def wrap16(x):  # static_cast<int16_t> of an int32 value
        return relax.op.subtract(relax.op.bitwise_and(relax.op.add(x, i64(32768)), i64(0xFFFF)), i64(32768))

    sigmoid = _table_lookup(bb, "logistic", 3)
    tanh_gate = _table_lookup(bb, "tanh", 3)
    tanh_cell = _table_lookup(bb, "tanh", tanh_bits)

    x, batch, num_steps = _batch_major(conv, inputs[0], options)
    # the input's saturated int16 share of every gate for all steps: [batch, time, 4 * units]
    acc = relax.op.add(relax.op.matmul(x, relax.const(w_x), out_dtype="int32"), relax.const(b_x))
    x_gates = bb.emit(clip16(conv._requantize(bb.emit(acc), m_x, s_x)))
    parts = conv.bb.emit(relax.op.split(x_gates, num_steps, axis=1)) if num_steps > 1 else None  # once, not per step

    h = relax.const(np.full((batch, units), h_zp, np.int8))  # LiteRT resets an int8 variable to its zero point
    c = i64(np.zeros((batch, units), np.int64))
    w_h, b_h = relax.const(w_h), relax.const(b_h)  # one constant each, shared by every step
    outputs = []
    for t in range(num_steps):
        step = relax.op.squeeze(parts[t] if parts is not None else x_gates, axis=[1])
        acc = bb.emit(relax.op.add(relax.op.matmul(h, w_h, out_dtype="int32"), b_h))
        gates = bb.emit(clip16(relax.op.add(step, conv._requantize(acc, m_h, s_h))))
        i, f, g, o = (bb.emit(relax.op.split(gates, 4, axis=1)[k]) for k in range(4))
        i, f, g, o = sigmoid(i), sigmoid(f), tanh_gate(g), sigmoid(o)
        forget = wrap16(conv._rdbpot(bb.emit(relax.op.multiply(f, c)), 15))
        remember = wrap16(conv._rdbpot(bb.emit(relax.op.multiply(i, g)), 30 + cell_bits))
        c = clip16(relax.op.add(forget, remember))
        if cell_clip > 0:
            c = relax.op.minimum(relax.op.maximum(c, i64(-cell_clip)), i64(cell_clip))
        c = bb.emit(c)
        out = conv._requantize(bb.emit(relax.op.multiply(o, tanh_cell(c))), hidden_multiplier, hidden_shift)
        out = bb.emit(relax.op.minimum(relax.op.maximum(relax.op.add(out, i64(hidden_zp)), i64(-128)), i64(127)))
        h = bb.emit(relax.op.astype(out, "int8"))
        outputs.append(h)
    out = relax.op.stack(outputs, axis=1)
    return relax.op.permute_dims(out, [1, 0, 2]) if options.TimeMajor() else out


def _table_lookup(bb, name: str, integer_bits: int):
    """A function of an int64 Relax tensor of int16 values: gemmlowp's ``name`` of it as a Q``integer_bits``
    number (int64 result), read from an exact table of the function's non-negative half.

    The other half follows from the symmetry gemmlowp's code has (``logistic(-a) = 1 - logistic(a)``,
    ``tanh(-a) = -tanh(a)`` in its raw arithmetic); inputs where that does not hold are patched one by one.
    Both are checked against the full function on all 65,536 inputs when the table is made.
    """
    table, odd, patches = _half_table(name, integer_bits)
    table_const = relax.const(table.astype(np.int16), "int16")
    last = relax.const(np.int64(len(table) - 1), "int64")

    def apply(x):
        magnitude = relax.op.minimum(relax.op.abs(x), last)
        value = bb.emit(relax.op.astype(relax.op.take(table_const, magnitude, axis=0, mode="clip"), "int64"))
        mirrored = relax.op.negative(value) if odd else relax.op.subtract(relax.const(np.int64(32767), "int64"), value)
        out = relax.op.where(relax.op.less(x, relax.const(np.int64(0), "int64")), mirrored, value)
        for at, result in patches.items():
            out = relax.op.where(relax.op.equal(x, relax.const(np.int64(at), "int64")),
                                 relax.const(np.int64(result), "int64"), out)
        return bb.emit(out)

    return apply


@functools.lru_cache(maxsize=None)
def _half_table(name: str, integer_bits: int):
    """(table of f(0..K) as int64 where f is constant from K on, odd symmetry?, {input: output} patches)."""
    function = gemmlowp_logistic if name == "logistic" else gemmlowp_tanh
    every = np.arange(-32768, 32768, dtype=np.int64)
    full = function(every, integer_bits)
    half = full[32768:]
    last = len(half) - 1
    while last > 0 and half[last - 1] == half[-1]:
        last -= 1
    table = half[:last + 1].copy()
    odd = name == "tanh"
    magnitude = np.minimum(np.abs(every), last)
    rebuilt = np.where(every < 0, -table[magnitude] if odd else 32767 - table[magnitude], table[magnitude])
    patches = {int(every[k]): int(full[k]) for k in np.nonzero(rebuilt != full)[0]}
    if len(patches) > 8:
        raise AssertionError(f"gemmlowp {name} (Q{integer_bits}) is not symmetric enough for a half table")
    return table, odd, patches


# ---------------------------------------------------------------------------------------------
# gemmlowp's fixed-point int16 logistic and tanh (fixedpoint.h), vectorised in numpy.
# Raw int16 values are held in int64 arrays; C++'s int16 casts wrap, as _w does.
# ---------------------------------------------------------------------------------------------

def _w(x):
    """``static_cast<std::int16_t>``: wrap to int16."""
    return ((np.asarray(x, np.int64) + 32768) & 0xFFFF) - 32768


def _truncating_div(x, d):
    """C++ integer division (toward zero)."""
    q = np.abs(x) // d
    return np.where(x < 0, -q, q)


def _srdhm16(a, b):
    """``SaturatingRoundingDoublingHighMul`` for int16."""
    ab = a * b
    high = _w(_truncating_div(ab + np.where(ab >= 0, 1 << 14, 1 - (1 << 14)), 1 << 15))
    return np.where((a == b) & (a == -32768), 32767, high)


def _sat_pot16(x, exponent: int):
    """``SaturatingRoundingMultiplyByPOT<exponent>`` for int16."""
    if exponent > 0:
        limit = (1 << (15 - exponent)) - 1
        return np.where(x > limit, 32767, np.where(x < -limit, -32768, _w(x << exponent)))
    return _rdbpot(x, -exponent) if exponent < 0 else x


def _constant16(raw32: int) -> int:
    """``GEMMLOWP_CHECKED_FIXEDPOINT_CONSTANT`` of an int16 type: the int32 constant rounded by 2**16."""
    return int(_w(_rdbpot(np.int64(raw32), 16)))


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a):
    x = _w(a + (1 << 12))
    x2 = _srdhm16(x, x)
    x3 = _srdhm16(x2, x)
    x4_over_4 = _sat_pot16(_srdhm16(x2, x2), -2)
    poly = _sat_pot16(_w(_srdhm16(_w(x4_over_4 + x3), _constant16(715827883)) + x2), -1)
    constant = _constant16(1895147668)
    return np.clip(constant + _srdhm16(constant, _w(x + poly)), -32768, 32767)  # AddSaturatingIf16Bit


def _exp_on_negative_values(a, integer_bits: int):
    fractional = 15 - integer_bits
    quarter = 1 << (fractional - 2)
    a_mod_quarter_minus_quarter = _w((a & (quarter - 1)) - quarter)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        _sat_pot16(a_mod_quarter_minus_quarter, integer_bits))
    remainder = _w(a_mod_quarter_minus_quarter - a)
    for exponent, multiplier in ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                                 (2, 39332535), (3, 720401), (4, 242)):
        if integer_bits > exponent:
            bit = _w(1 << (fractional + exponent))
            result = np.where((remainder & bit) != 0, _srdhm16(result, _constant16(multiplier)), result)
    if integer_bits > 5:
        result = np.where(a < _constant16(-(1 << (36 - integer_bits))), 0, result)
    return np.where(a == 0, 32767, result)


def _newton_reciprocal(a):
    """gemmlowp's Newton-Raphson division shared by its logistic and tanh: ``2 / (1 + a)`` in Q2.13 for a Q0.15
    ``a`` in (0, 1)."""
    total = a + 32767
    half_denominator = _w(_truncating_div(total + np.where(total >= 0, 1, -1), 2))  # RoundingHalfSum
    x = _w(_constant16(1515870810) + _srdhm16(half_denominator, _constant16(-1010580540)))
    for _ in range(3):
        one_minus = _w((1 << 13) - _srdhm16(half_denominator, x))
        x = _w(x + _sat_pot16(_srdhm16(x, one_minus), 2))
    return x


def gemmlowp_logistic(a, integer_bits: int):
    """gemmlowp's ``logistic`` of raw int16 values as Q``integer_bits`` numbers: raw Q0.15 results (int64).

    Example:
        >>> int(gemmlowp_logistic(np.int64(0), 3))
        16384
    """
    a = np.asarray(a, np.int64)
    positive = a > 0
    magnitude = np.where(positive, a, _w(-a))
    if_positive = _sat_pot16(_newton_reciprocal(_exp_on_negative_values(_w(-magnitude), integer_bits)), 1)
    return np.where(a == 0, _constant16(1 << 30), np.where(positive, if_positive, _w(32767 - if_positive)))


def gemmlowp_tanh(a, integer_bits: int):
    """gemmlowp's ``tanh`` of raw int16 values as Q``integer_bits`` numbers: raw Q0.15 results (int64).

    Example:
        >>> int(gemmlowp_tanh(np.int64(0), 3))
        0
    """
    a = np.asarray(a, np.int64)
    negative = a < 0
    n = np.where(negative, a, _w(-a))
    t = _sat_pot16(_w(_newton_reciprocal(_exp_on_negative_values(n, integer_bits + 1)) - (1 << 13)), 2)
    return np.where(a == 0, 0, np.where(negative, _w(-t), t))
