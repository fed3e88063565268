"""Exact int8 lowering for TVM's TFLite frontend: the TVM backend's importer for quantized models.

TVM 0.27's Relax frontend lowers every int8 operator as dequantize -> float32 op -> quantize. That
is close to LiteRT but not equal: float accumulation and rounding, a truncating integer average
pool (1 step off on about half its outputs), a float softmax. The differences compound through a
network: on a briefly trained ResNet-8, 50% of the int8 outputs and 6% of the top-1 decisions
differ from LiteRT's.

:class:`ExactInt8Converter` is the frontend's converter with the int8 operators in
:data:`EXACT_OPS` lowered to the arithmetic LiteRT itself runs, as Relax operators on
int16/int32/int64 tensors (float32 where LiteRT computes in float; float64 only where LiteRT does, in
the reference FULLY_CONNECTED), so the module still compiles for any target. Every other operator,
and every float model, keeps the stock lowering.

LiteRT does not have one int8 arithmetic but three, which disagree with each other by a step on a
few percent of outputs (on the same x86-64 host, for the same model). Each is reproduced bit for bit
by one converter (:data:`KERNEL_SETS` says which rounding each operator uses):

- :class:`ExactInt8Converter` (``kernels = "xnnpack"``): LiteRT's default interpreter, the XNNPACK
  delegate on, which is what ``LiteRTEngine`` runs and edgedl's fidelity checks compare against.
  Convolutions, fully connected, mean and mul rescale in float32 (``nearbyint(float(acc) * scale)``),
  add and sub use XNNPACK's fixed-point form; average pool and softmax run on the builtin kernels.
- :class:`BuiltinInt8Converter` (``"builtin"``): LiteRT without delegates (the builtin optimized
  kernels, ``LiteRTEngine(xnnpack=False)``).
- :class:`ReferenceInt8Converter` (``"reference"``): LiteRT's reference kernels
  (``OpResolverType.BUILTIN_REF``), the portable integer arithmetic TFLite Micro also implements.

Per operator:

- ``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``FULLY_CONNECTED``: int32 accumulation of
  ``(x - input_zero_point) * w`` plus the int32 bias, then the kernel set's rescaling with the
  per-channel ``input_scale * weight_scale / output_scale`` (for the integer ones as
  ``MultiplyByQuantizedMultiplier`` with TFLite's ``QuantizeMultiplier``), the output zero point and
  the fused activation's clamp.
- ``AVERAGE_POOL_2D``: int32 window sums over the valid (unpadded) positions, divided with rounding
  half away from zero, as ``reference_integer_ops::AveragePool``.
- ``MEAN``: ``reference_ops::QuantizedMeanOrSum`` (1/N folded into the multiplier), the builtin
  ``Mean4D`` (``keep_dims`` over H and W), or XNNPACK's float32 scale and float32 zero-point bias.
- ``ADD``: ``reference_integer_ops::AddFunc`` (left shift 20, two input multipliers, one output),
  or XNNPACK's 21-bit multipliers with one rounding shift (ties up).
- ``SUB``: ``reference_ops::Sub`` (builtin and reference kernels alike: ``AddFunc`` with the second term
  subtracted), or XNNPACK's add with the second multiplier negated (ties up).
- ``MUL``: ``MulElementwise``: ``MultiplyByQuantizedMultiplier((a - a_zero_point) * (b - b_zero_point))`` by
  ``a_scale * b_scale / output_scale`` (computed in float32, as LiteRT does), or XNNPACK's float32 rescaling of
  the same product (a step apart from gemmlowp's on a few outputs).
- ``LOGISTIC``, ``TANH``: a 256-entry table over the int8 inputs, built at import as LiteRT's ``LUTPopulate``
  builds it (float32 dequantization, ``1 / (1 + expf(-x))`` or ``tanhf`` from the C library, float32 rescaling
  rounded half away from zero), in every kernel set: the builtin and reference kernels look theirs up (neither
  runs gemmlowp's fixed-point logistic on int8), and XNNPACK's table measured identical.
- ``SQUARED_DIFFERENCE`` (a layer normalisation's variance, :mod:`edgedl.layernorm`): squared_difference.cc's
  int8 kernel in every kernel set: each input left-shifted by 7 and scaled by its share of twice the larger
  input scale, the difference squared in int32, rescaled by ``(2 * max scale)**2 / (2**14 * output_scale)``
  (``MultiplyByQuantizedMultiplierSmallerThanOneExp`` each; XNNPACK measured identical).
- ``RSQRT``: elementwise.cc's int8 kernel in every kernel set (XNNPACK measured identical), a 256-entry table
  built at import: ``GetInvSqrtQuantizedMultiplierExp`` (gemmlowp's fixed-point Newton-Raphson, ported in
  :func:`inv_sqrt_quantized_multiplier`) of ``q - zero_point``, rescaled by ``1 / (sqrtf(input_scale) *
  output_scale)`` (:func:`rsqrt_int8_table`). A float ``1 / sqrt(x)`` rounded to nearest differs from it on
  about 2 inputs in 10,000 (measured over 200 scale pairs); the stock SQUARED_DIFFERENCE was a step off on
  0.08-1.2% of the outputs (8 scale sets).
- ``SOFTMAX``: the builtin kernel's 256-entry ``expf`` table with float32 sums summed left to right,
  or the reference kernel's gemmlowp fixed-point exp and Newton-Raphson reciprocal.
- ``DEQUANTIZE`` (float outputs): a 256-entry table with the kernel set's float rounding.
- ``BATCH_MATMUL`` (attention's scores and weighted values): int32 accumulation of
  ``(x - x_zero_point) * (y - y_zero_point)`` (``adj_x``/``adj_y`` as transposes of the last two axes),
  then ``MultiplyByQuantizedMultiplier`` of ``x_scale * y_scale / output_scale`` in every kernel set
  (:data:`BATCH_MATMUL_ROUNDING`: XNNPACK does not take int8 BATCH_MATMUL, the builtin kernel rounds as the
  reference one); per-tensor int8 only, anything else refused by name. Measured bit-exact against all three
  LiteRT configurations (tests/test_tvm_attention.py).
- ``SPLIT``, ``STRIDED_SLICE``, ``TRANSPOSE``, ``UNPACK`` (:data:`MOVING_OPS`: an unrolled GRU's, attention's
  head transposes): values copied, exact where the outputs keep the input's scale and zero point (as
  LiteRT requires), refused by name otherwise.
- ``UNIDIRECTIONAL_SEQUENCE_LSTM``: by :mod:`edgedl.backends.tvm_lstm` (TVM's frontend converts only the
  coupled form): float32 as LiteRT's float kernel; int8 (int16 cell) as LiteRT's integer LSTM
  (``EvalInteger8x8_16``: effective-scale int16 gates, gemmlowp's int16 logistic and tanh by exact tables),
  the same in every kernel set (XNNPACK does not take it). Bit-exact on the digits LSTM of
  tests/test_tvm_recurrent.py. Other quantized LSTMs are refused in one line.

The int8 transformer block of tests/test_tvm_attention.py (layer norms as MEAN, SQUARED_DIFFERENCE, ADD, RSQRT,
MUL; attention as FULLY_CONNECTED, TRANSPOSE, BATCH_MATMUL, MUL, SOFTMAX) is bit-exact against each of the three
LiteRT configurations on the 397 test digits, and so is the zoo's ``kwt`` (CONV_2D too; measured untrained, on
random inputs); with the stock SQUARED_DIFFERENCE and RSQRT the block was up to 6 int8 steps off on 2.0-2.8% of
the outputs of 100 digits.

The int8 unrolled GRU (FULLY_CONNECTED, LOGISTIC, TANH, MUL, ADD, SUB and the moving operators above) is
bit-exact against each of the three LiteRT configurations on the 397 test digits of tests/test_tvm_recurrent.py.
TVM's stock float lowering of its LOGISTIC, TANH, MUL and SUB had matched XNNPACK only by luck (under a plain
LLVM target; 3 steps off on 2 of 3970 outputs with edgedl's vectorised schedules) and was up to 8 steps from
the builtin and reference kernels on 18% of the outputs.

Not covered, so possibly a step off: QUANTIZE of float inputs (stock: ties to even; only exact
ties differ); nodes XNNPACK refuses beyond the scale ranges modelled here (those run on the builtin
kernels; MUL's range, [2**-16, 256), is assumed, not measured); other hosts' LiteRT builds (the sets
were measured with ai-edge-litert 2.3 on x86-64; on aarch64 LiteRT's softmax uses another table);
softmax rows longer than 64 on GPUs (summed by a parallel scan there); the softmax, logistic and tanh
tables use this host's ``expf`` and ``tanhf``; RSQRT inputs below the zero point (LiteRT stops with an error
there; the table gives 127) and RSQRT scales whose rescaling would shift right by more than 31 bits (undefined
behaviour in LiteRT's C++, far from any trained layer norm's scales). TFLite is assumed built as LiteRT ships it
(``TFLITE_SINGLE_ROUNDING`` off).

Example:
    >>> import tflite
    >>> from tvm.relax.frontend.tflite import from_tflite
    >>> mod = from_tflite(tflite.Model.GetRootAsModel(buf, 0), op_converter=ExactInt8Converter)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
from tvm import relax
from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter

log = logging.getLogger(__name__)

EXACT_OPS = ("ADD", "AVERAGE_POOL_2D", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "FULLY_CONNECTED",
             "LOGISTIC", "MEAN", "MUL", "RSQRT", "SOFTMAX", "SQUARED_DIFFERENCE", "SUB", "TANH")
MOVING_OPS = ("SPLIT", "STRIDED_SLICE", "TRANSPOSE", "UNPACK")  # int8 operators that copy values, exact as stock lowers them
INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
_UNROLLED_SUM_LIMIT = 64  # softmax rows up to this long are summed as an explicit chain of adds
_MEAN_TABLE_LIMIT = 1 << 20  # XNNPACK's MEAN is a table over the possible sums below this many


# ---------------------------------------------------------------------------------------------
# TFLite's compile-time arithmetic (quantization_util.cc, kernel_util.cc), in Python.
# ---------------------------------------------------------------------------------------------

def round_half_away(x: float) -> int:
    """``std::round``: to the nearest integer, ties away from zero (exact for any double)."""
    a = abs(float(x))
    r = math.floor(a)
    if a - r >= 0.5:
        r += 1
    return int(r) if x >= 0 else -int(r)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``real ~= multiplier / 2**31 * 2**shift``.

    Example:
        >>> quantize_multiplier(0.5)
        (1073741824, 0)
    """
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = round_half_away(q * (1 << 31))
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def activation_range(fused_activation: int, scale: float, zero_point: int,
                     dtype: str = "int8") -> tuple[int, int] | None:
    """TFLite's ``CalculateActivationRangeQuantized`` for a fused activation (float32 arithmetic);
    None for an activation that is not a clamp."""
    from tflite.ActivationFunctionType import ActivationFunctionType as A

    info = np.iinfo(dtype)
    qmin, qmax = int(info.min), int(info.max)

    def quantize(f):
        return zero_point + round_half_away(np.float32(f) / np.float32(scale))

    if fused_activation == A.NONE:
        return qmin, qmax
    if fused_activation == A.RELU:
        return max(qmin, quantize(0.0)), qmax
    if fused_activation == A.RELU6:
        return max(qmin, quantize(0.0)), min(qmax, quantize(6.0))
    if fused_activation == A.RELU_N1_TO_1:
        return max(qmin, quantize(-1.0)), min(qmax, quantize(1.0))
    return None


# gemmlowp's fixed-point primitives on Python ints (int32 semantics), for tables built at import.

def _srdhm(a: int, b: int) -> int:
    """``SaturatingRoundingDoublingHighMul``."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    t = ab + nudge
    return t >> 31 if t >= 0 else -((-t) >> 31)  # C++ division truncates toward zero


def _rdbpot(x, exponent: int):
    """``RoundingDivideByPOT``: a right shift rounding to nearest, ties away from zero (an int or an integer
    numpy array)."""
    mask = (1 << exponent) - 1
    return (x >> exponent) + ((x & mask) > ((mask >> 1) + (x < 0)))


def _sat_mul_pot(x: int, exponent: int) -> int:
    """``SaturatingRoundingMultiplyByPOT<exponent>`` on int32."""
    if exponent == 0:
        return x
    if exponent < 0:
        return _rdbpot(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    if x > threshold:
        return INT32_MAX
    if x < -threshold:
        return INT32_MIN
    return x << exponent


def _wrap_int32(x: int) -> int:
    """``x`` as a C++ int32_t holds it (two's complement wrap-around)."""
    return (x + (1 << 31)) % (1 << 32) - (1 << 31)


def _multiply_by_quantized_multiplier(x: int, multiplier: int, shift: int) -> int:
    """TFLite's ``MultiplyByQuantizedMultiplier`` on Python ints (double rounding, as LiteRT ships)."""
    left, right = max(shift, 0), max(-shift, 0)
    return _rdbpot(_srdhm(_wrap_int32(x * (1 << left)), multiplier), right)


def inv_sqrt_quantized_multiplier(value: int) -> tuple[int, int]:
    """TFLite's ``GetInvSqrtQuantizedMultiplierExp(value, kReverseShift)`` (kernels/internal/common.h):
    ``1 / sqrt(value)`` as a Q0.31 multiplier and a left shift, by gemmlowp's fixed-point Newton-Raphson.

    Example:
        >>> inv_sqrt_quantized_multiplier(4)  # 0.5 in Q0.31, within the iteration's precision
        (1073741828, 0)
    """
    if value <= 1:  # 0 (invalid) and 1 alike
        return INT32_MAX, 0
    shift = 11
    while value >= 1 << 29:
        value //= 4
        shift += 1
    left_shift_bit_pairs = (32 - value.bit_length() - 1) // 2 - 1
    shift -= left_shift_bit_pairs
    value <<= 2 * left_shift_bit_pairs
    half_input = _sat_mul_pot(value >> 1, -1)  # F3: 3 integer bits
    half_three = (1 << 28) + (1 << 27)
    x = 1 << 28  # F3::One()
    for _ in range(5):
        x3 = _sat_mul_pot(_srdhm(_srdhm(x, x), x), 6)  # Rescale<3> of an F9
        x = _sat_mul_pot(_wrap_int32(_srdhm(half_three, x) - _srdhm(half_input, x3)), 3)  # Rescale<3> of an F6
    x = _srdhm(x, 1518500250)  # times sqrt(2) / 2 in F0
    if shift < 0:
        x, shift = _wrap_int32(x << -shift), 0
    return x, -shift


def rsqrt_int8_table(in_scale, in_zero_point, out_scale, out_zero_point) -> np.ndarray:
    """elementwise.cc's int8 RSQRT (``RsqrtEvalQuantizedInt8``) for each int8 input ``q`` (from -128): 127 where
    ``q`` is the input zero point, else ``GetInvSqrtQuantizedMultiplierExp(q - zero point)`` applied to 1 with a
    shift of 20, rescaled by ``1 / (sqrtf(in_scale) * out_scale)`` (float32 product, double reciprocal) and the
    shift taken back, plus the output zero point, clamped. Inputs below the zero point (negative values, which
    LiteRT refuses at run time) get 127 too.

    Example:
        >>> int(rsqrt_int8_table(1 / 16, 0, 1 / 16, 0)[128 + 16])  # 1 / sqrt(1) = 1
        16
    """
    k_shift = 20
    product = np.float32(np.sqrt(np.float32(in_scale))) * np.float32(out_scale)
    multiplier, shift = quantize_multiplier(1.0 / float(product))
    table = np.empty(256, np.int64)
    for i, q in enumerate(range(-128, 128)):
        value = q - int(in_zero_point)
        if value <= 0:
            table[i] = 127
            continue
        inv_sqrt, inv_shift = inv_sqrt_quantized_multiplier(value)
        data = _multiply_by_quantized_multiplier(1, inv_sqrt, inv_shift + k_shift)
        table[i] = _multiply_by_quantized_multiplier(data, multiplier, shift - k_shift) + int(out_zero_point)
    return np.clip(table, -128, 127).astype(np.int8)


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: int) -> int:
    constant_term = 1895147668  # exp(-1/8) in Q0.31
    constant_1_over_3 = 715827883
    x = a + (1 << 28)
    x2 = _srdhm(x, x)
    x3 = _srdhm(x2, x)
    x4 = _srdhm(x2, x2)
    x4_over_4 = _sat_mul_pot(x4, -2)
    poly = _sat_mul_pot(_srdhm(x4_over_4 + x3, constant_1_over_3) + x2, -1)
    return constant_term + _srdhm(constant_term, x + poly)


def _exp_on_negative_values(a: int, integer_bits: int) -> int:
    """gemmlowp's ``exp_on_negative_values`` for a Q(integer_bits) input; returns Q0.31."""
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    mask = one_quarter - 1
    a_mod_quarter_minus_one_quarter = (a & mask) - one_quarter
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        _sat_mul_pot(a_mod_quarter_minus_one_quarter, integer_bits))
    remainder = a_mod_quarter_minus_one_quarter - a
    for exponent, multiplier in ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                                 (2, 39332535), (3, 720401), (4, 242)):
        if integer_bits > exponent and remainder & (1 << (fractional_bits + exponent)):
            result = _srdhm(result, multiplier)
    if integer_bits > 5 and a < -(1 << (36 - integer_bits)):
        result = 0
    return INT32_MAX if a == 0 else result


# ---------------------------------------------------------------------------------------------
# The converter.
# ---------------------------------------------------------------------------------------------

def _const(value, dtype):
    return relax.const(np.asarray(value).astype(dtype), dtype)


# How each of LiteRT's kernel sets rescales an int32 accumulator, measured against LiteRT 2.x on
# x86-64 (tests/test_tvm_int8.py keeps these honest):
#   gemmlowp: MultiplyByQuantizedMultiplier, double rounding, ties away from zero (reference kernels)
#   halfup:   the same two roundings, ties toward +inf (NEON-style vqrdmulh + vrshl: ruy GEMMs, Mean4D)
#   double:   round(acc * scale) in double precision (reference FULLY_CONNECTED)
#   fp32:     nearbyint(float(acc) * float scale), ties to even (XNNPACK)
# ADD as reference_integer_ops::AddFunc ("reference") or XNNPACK's 21-bit multipliers with one shift
# that rounds ties up ("xnnpack"); DEQUANTIZE (int8 -> float32) as float((q - zp) * scale)
# ("product") or as float(q * scale) - float(zp * scale) ("difference", the builtin kernel).
KERNEL_SETS = {
    "xnnpack": {"conv2d": "fp32", "depthwise": "fp32", "fc": "fp32", "mean": "fp32", "mean4d": "fp32",
                "softmax": "float_table", "dequantize": "product", "add": "xnnpack"},
    "builtin": {"conv2d": "halfup", "depthwise": "gemmlowp", "fc": "halfup", "mean": "gemmlowp",
                "mean4d": "mean4d", "softmax": "float_table", "dequantize": "difference", "add": "reference"},
    "reference": {"conv2d": "gemmlowp", "depthwise": "gemmlowp", "fc": "double", "mean": "gemmlowp",
                  "mean4d": "gemmlowp", "softmax": "fixed_point", "dequantize": "product", "add": "reference"},
}

# BATCH_MATMUL's rescaling per kernel set (a table of its own: KERNEL_SETS' keys are fixed by its tests).
BATCH_MATMUL_ROUNDING = {"xnnpack": "gemmlowp", "builtin": "gemmlowp", "reference": "gemmlowp"}

# An unrolled GRU's gate arithmetic per kernel set (a table of its own too), from LiteRT's sources (activations.cc,
# mul.cc, sub.cc, XNNPACK's subgraph) and measured against ai-edge-litert 2.3 on x86-64:
#   lut:       LOGISTIC and TANH, LUTPopulate's 256-entry int8 table computed in float32 at prepare time (the
#              builtin and reference kernels both look it up, neither runs gemmlowp's fixed-point logistic;
#              XNNPACK's table measured identical)
#   gemmlowp:  MUL, MulElementwise: MultiplyByQuantizedMultiplier of (a - za) * (b - zb) by s_a * s_b / s_out
#              (that product and quotient in float32, as mul.cc writes it)
#   fp32:      MUL, XNNPACK: nearbyint(float(product) * float32 scale), as its convolutions (1 step from gemmlowp)
#   reference: SUB, reference_ops::Sub on both the builtin and reference kernels: ADD's AddFunc, second term
#              subtracted
#   xnnpack:   SUB, XNNPACK's qs8 add with the second multiplier negated (ties up, as its ADD)
# TVM's stock float lowering (dequantize, float32 op, quantize) of these four happened to match XNNPACK on the
# digits GRU under a plain LLVM target, not under edgedl's vectorised schedules (3 steps on 2 of 3970 outputs).
ELEMENTWISE_ROUNDING = {
    "xnnpack": {"logistic": "lut", "tanh": "lut", "mul": "fp32", "sub": "xnnpack"},
    "builtin": {"logistic": "lut", "tanh": "lut", "mul": "gemmlowp", "sub": "reference"},
    "reference": {"logistic": "lut", "tanh": "lut", "mul": "gemmlowp", "sub": "reference"},
}


class ExactInt8Converter(OperatorConverter):
    """TVM's TFLite operator converter with LiteRT's own arithmetic for the int8 operators listed in
    :data:`EXACT_OPS`; every other operator, and every float model, keeps the stock lowering.

    ``kernels`` names the LiteRT configuration to reproduce (see :data:`KERNEL_SETS`):
    ``"xnnpack"`` (here: LiteRT's default interpreter, XNNPACK delegate on, which is what
    ``LiteRTEngine`` runs and what edgedl's fidelity checks compare against). The subclasses
    :class:`BuiltinInt8Converter` and :class:`ReferenceInt8Converter` reproduce LiteRT without
    delegates and LiteRT's reference kernels.
    """

    kernels = "xnnpack"
    # int8 data movement (an unrolled GRU's SPLIT, STRIDED_SLICE, UNPACK): bytes copied, exact as they are
    # (and the fused LSTM, so that :meth:`_lstm` says in one line why an int8 one is not converted)
    _SUPPORTED_QUANTIZED_OPS = OperatorConverter._SUPPORTED_QUANTIZED_OPS | set(MOVING_OPS) | {
        "BATCH_MATMUL", "UNIDIRECTIONAL_SEQUENCE_LSTM"}

    def __init__(self, model, subgraph, exp_tab, ctx, conversion_state=None):
        super().__init__(model, subgraph, exp_tab, ctx, conversion_state)
        if self.kernels not in KERNEL_SETS:
            raise ValueError(f"unknown kernels '{self.kernels}'; expected one of {', '.join(KERNEL_SETS)}")
        self.scheme = KERNEL_SETS[self.kernels]
        self.convert_map.update({
            "ADD": self._exact_add,
            "AVERAGE_POOL_2D": self._exact_average_pool,
            "BATCH_MATMUL": self._exact_batch_matmul,
            "CONV_2D": functools.partial(self._exact_conv, conv_type="conv2d"),
            "DEQUANTIZE": self._exact_dequantize,
            "DEPTHWISE_CONV_2D": functools.partial(self._exact_conv, conv_type="depthwise"),
            "FULLY_CONNECTED": self._exact_fully_connected,
            "LOGISTIC": functools.partial(self._exact_table_activation, name="logistic"),
            "MEAN": self._exact_mean,
            "MUL": self._exact_mul,
            "RSQRT": self._exact_rsqrt,
            "SOFTMAX": self._exact_softmax,
            "SQUARED_DIFFERENCE": self._exact_squared_difference,
            "SUB": self._exact_sub,
            "TANH": functools.partial(self._exact_table_activation, name="tanh"),
            "UNIDIRECTIONAL_SEQUENCE_LSTM": self._lstm,
        })
        for name in MOVING_OPS:
            self.convert_map[name] = functools.partial(self._moving, self.convert_map[name], name)

    def _moving(self, stock, name, op):
        """An operator that only moves values: exact on int8 where its outputs keep its input's scale
        and zero point (LiteRT requires them to for these), the stock lowering on the raw tensors."""
        tensors = [t for t in self.get_input_tensors(op) if t.tensor_idx >= 0 and self._qparams(t) is not None]
        if tensors:
            source = self._qparams(tensors[-1] if name == "SPLIT" else tensors[0])
            for out in self.get_output_tensors(op):
                q = self._qparams(out)
                if q is None or not (np.array_equal(q[0], source[0]) and np.array_equal(q[1], source[1])):
                    import tvm

                    raise tvm.error.OpNotImplemented(f"quantized {name} whose output scale or zero point differs "
                                                     f"from its input's, which edgedl's TVM importer does not rescale")
        return stock(op)

    def _lstm(self, op):
        """A fused LSTM with its input gate (what Keras gives) by :mod:`edgedl.backends.tvm_lstm`, float32
        or int8 (LiteRT's integer LSTM, exact); the coupled form as TVM's frontend converts it."""
        from edgedl.backends.tvm_lstm import convert_lstm

        if self.is_quantized(op):
            if not self._is_int8(self.get_input_tensors(op)[0]):
                import tvm

                raise tvm.error.OpNotImplemented(
                    "UNIDIRECTIONAL_SEQUENCE_LSTM with activations other than int8: edgedl's TVM importer "
                    "lowers float and int8 LSTMs only; compile it with --backend litert or tflm")
        if self.get_input_tensors(op)[1].tensor_idx < 0:
            return super().convert_unidirectional_sequence_lstm(op)
        return convert_lstm(self, op)

    # -- helpers ------------------------------------------------------------------------------

    def _emit(self, expr):
        return self.bb.emit(expr)

    @staticmethod
    def _qparams(tensor):
        """(float32 scales, int zero points) straight from the flatbuffer, or None if not affine."""
        if tensor is None or tensor.tensor_idx < 0:
            return None
        q = tensor.tensor.Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        return q.ScaleAsNumpy().astype(np.float32), q.ZeroPointAsNumpy().astype(np.int64)

    def _is_int8(self, tensor) -> bool:
        from tflite.TensorType import TensorType

        return tensor.tensor.Type() == TensorType.INT8 and self._qparams(tensor) is not None

    def _per_tensor(self, tensor) -> tuple[np.float32, int]:
        scales, zps = self._qparams(tensor)
        return np.float32(scales[0]), int(zps[0])

    def _constant(self, tensor):
        """The tensor's buffer as numpy, or None where it is computed (not a plain constant)."""
        if tensor.tensor_idx < 0 or self.has_expr(tensor.tensor_idx) or self.is_prefetched(tensor.tensor_idx):
            return None
        value = self.get_tensor_value(tensor)
        return value if value.size else None

    @staticmethod
    def _options(op, options_cls):
        raw = op.BuiltinOptions()
        if raw is None:
            return None
        options = options_cls()
        options.Init(raw.Bytes, raw.Pos)
        return options

    def _rescale(self, acc, in_scale, weight_scales, out_scale, kind, rounding=None):
        """An int32 accumulator times ``in_scale * weight_scale / out_scale``, rounded as the
        kernel set does for ``kind`` (``conv2d``, ``depthwise``, ``fc``) or as ``rounding`` says;
        int64 result (before the output zero point).

        ``weight_scales`` is one scale or one per output channel (the last axis).
        """
        rounding = rounding or self.scheme[kind]
        weight_scales = np.atleast_1d(np.asarray(weight_scales, np.float32))
        if rounding == "fp32":  # XNNPACK: float32 scale, float32 product, round to nearest even
            scale = (in_scale * weight_scales / out_scale).astype(np.float32)
            if not np.all((scale >= 2.0**-32) & (scale < 256.0)):  # XNNPACK refuses: the builtin kernel runs
                return self._rescale(acc, in_scale, weight_scales, out_scale, kind, KERNEL_SETS["builtin"][kind])
            product = self._emit(relax.op.multiply(relax.op.astype(acc, "float32"), _const(scale, "float32")))
            return self._round_half_even(product)
        reals = [float(in_scale) * float(w) / float(out_scale) for w in weight_scales]
        if rounding == "double":  # round(double(acc) * effective_scale), ties away from zero
            magnitude = relax.op.multiply(relax.op.astype(relax.op.abs(acc), "float64"), _const(reals, "float64"))
            magnitude = self._emit(magnitude)
            whole = self._emit(relax.op.floor(magnitude))
            up = relax.op.greater_equal(magnitude, relax.op.add(whole, _const(0.5, "float64")))
            rounded = self._emit(relax.op.add(relax.op.astype(whole, "int64"), relax.op.astype(up, "int64")))
            negative = relax.op.less(acc, _const(0, "int32"))
            return self._emit(relax.op.where(negative, relax.op.negative(rounded), rounded))
        multipliers, shifts = zip(*(quantize_multiplier(r) for r in reals))
        return self._requantize(acc, multipliers, shifts, rounding)

    def _round_half_even(self, x):
        """``nearbyint`` of a float tensor as int64, spelled out: TVM's ``round`` is ties-to-even
        on LLVM but ties-away on CUDA, and ``x - floor(x)`` could be fused into an FMA that skips
        the rounding of ``x``; comparisons cannot be."""
        whole = self._emit(relax.op.floor(x))
        half = self._emit(relax.op.add(whole, _const(0.5, str(x.ty.dtype))))
        odd = relax.op.equal(relax.op.floor_mod(relax.op.astype(whole, "int64"), _const(2, "int64")),
                             _const(1, "int64"))
        up = relax.op.logical_or(relax.op.greater(x, half), relax.op.logical_and(relax.op.equal(x, half), odd))
        return self._emit(relax.op.add(relax.op.astype(whole, "int64"), relax.op.astype(up, "int64")))

    def _requantize(self, acc, multiplier, shift, rounding="gemmlowp"):
        """``MultiplyByQuantizedMultiplier(acc, multiplier, shift)`` on an int32 tensor, as int64.

        ``multiplier`` and ``shift`` are ints or arrays broadcasting against the last axis;
        ``rounding`` is ``"gemmlowp"`` (ties away from zero) or ``"halfup"`` (ties toward +inf).
        """
        multiplier = np.asarray(multiplier, np.int64)
        shift = np.asarray(shift, np.int64)
        left = np.maximum(shift, 0)
        right = np.maximum(-shift, 0)
        x = self._emit(relax.op.astype(acc, "int64"))
        if np.any(left > 0):  # x * (1 << left) wraps in int32 in TFLite
            x = self._emit(relax.op.multiply(x, _const(np.left_shift(1, left), "int64")))
            x = self._emit(relax.op.astype(relax.op.astype(x, "int32"), "int64"))
        if rounding == "halfup":
            product = relax.op.add(relax.op.multiply(x, _const(multiplier, "int64")), _const(1 << 30, "int64"))
            high = self._emit(relax.op.right_shift(product, _const(31, "int64")))
            if not np.any(right > 0):
                return high
            half = np.where(right > 0, np.left_shift(1, np.maximum(right - 1, 0)), 0)
            return self._emit(relax.op.right_shift(relax.op.add(high, _const(half, "int64")), _const(right, "int64")))
        high = self._srdhm(x, _const(multiplier, "int64"))
        if not np.any(right > 0):
            return high
        return self._rdbpot(high, right)

    def _srdhm(self, a, b):
        """``SaturatingRoundingDoublingHighMul`` of int64 tensors holding int32 values.

        The saturating case (both INT32_MIN) cannot occur here: one operand is always >= 0.
        """
        ab = self._emit(relax.op.multiply(a, b))
        zero = _const(0, "int64")
        nudge = relax.op.where(relax.op.greater_equal(ab, zero), _const(1 << 30, "int64"),
                               _const(1 - (1 << 30), "int64"))
        t = self._emit(relax.op.add(ab, nudge))
        s31 = _const(31, "int64")  # C++ division by 2**31 truncates toward zero
        return self._emit(relax.op.where(relax.op.greater_equal(t, zero), relax.op.right_shift(t, s31),
                                         relax.op.negative(relax.op.right_shift(relax.op.negative(t), s31))))

    def _rdbpot(self, x, exponent):
        """``RoundingDivideByPOT`` of an int64 tensor; ``exponent`` an int, array or int64 tensor."""
        if isinstance(exponent, relax.Expr):
            one = _const(1, "int64")
            mask = self._emit(relax.op.subtract(relax.op.left_shift(one, exponent), one))
            shift = exponent
        else:
            exponent = np.asarray(exponent, np.int64)
            mask = _const(np.left_shift(np.int64(1), exponent) - 1, "int64")
            shift = _const(exponent, "int64")
        remainder = self._emit(relax.op.bitwise_and(x, mask))
        threshold = self._emit(relax.op.add(
            relax.op.right_shift(mask, _const(1, "int64")),
            relax.op.astype(relax.op.less(x, _const(0, "int64")), "int64")))
        return self._emit(relax.op.add(relax.op.right_shift(x, shift),
                                       relax.op.astype(relax.op.greater(remainder, threshold), "int64")))

    @staticmethod
    def _to_int8(x, lo, hi, zero_point=0):
        """``clamp(x + zero_point, lo, hi)`` cast to int8."""
        if zero_point:
            x = relax.op.add(x, _const(zero_point, "int64"))
        x = relax.op.minimum(relax.op.maximum(x, _const(lo, "int64")), _const(hi, "int64"))
        return relax.op.astype(x, "int8")

    # -- CONV_2D, DEPTHWISE_CONV_2D -----------------------------------------------------------

    def _exact_conv(self, op, conv_type):
        from tflite.Conv2DOptions import Conv2DOptions
        from tflite.DepthwiseConv2DOptions import DepthwiseConv2DOptions
        from tflite.Padding import Padding
        from tflite.TensorType import TensorType

        from tvm.relax.frontend.tflite.tflite_frontend import get_pad_value, to_int_list

        inputs = self.get_input_tensors(op)
        output = self.get_output_tensors(op)[0]
        data, weight = inputs[0], inputs[1]
        bias = inputs[2] if len(inputs) > 2 and inputs[2].tensor_idx >= 0 else None
        depthwise = conv_type == "depthwise"
        opts = self._options(op, DepthwiseConv2DOptions if depthwise else Conv2DOptions)
        w = self._constant(weight) if self._is_int8(weight) else None
        b = self._constant(bias) if bias is not None else None
        if (opts is None or w is None or not (self._is_int8(data) and self._is_int8(output))
                or (bias is not None and (b is None or bias.tensor.Type() != TensorType.INT32))
                or opts.Padding() not in (Padding.SAME, Padding.VALID)):
            return self.convert_conv(op, conv_type)
        w_scales, w_zps = self._qparams(weight)
        in_scale, in_zp = self._per_tensor(data)
        out_scale, out_zp = self._per_tensor(output)
        act = activation_range(opts.FusedActivationFunction(), out_scale, out_zp)
        channel_axis = 3 if depthwise else 0  # per-channel scales run along the output channels
        if (act is None or np.any(w_zps != 0)
                or (w_scales.size > 1 and weight.tensor.Quantization().QuantizedDimension() != channel_axis)):
            return self.convert_conv(op, conv_type)

        _, in_h, in_w, in_c = to_int_list(self.get_tensor_shape(data))
        params = {"strides": [opts.StrideH(), opts.StrideW()],
                  "dilation": [opts.DilationHFactor(), opts.DilationWFactor()],
                  "data_layout": "NHWC", "out_dtype": "int32"}
        if depthwise:  # TFLite [1, KH, KW, C*M]; Relax: one group per input channel
            _, k_h, k_w, out_c = w.shape
            if in_c == 1:
                w, params["kernel_layout"] = w.reshape(k_h, k_w, 1, out_c), "HWIO"
            else:
                w, params["kernel_layout"], params["groups"] = w.reshape(k_h, k_w, out_c, 1), "HWOI", in_c
        else:  # TFLite [OC, KH, KW, IC] -> HWIO
            out_c, k_h, k_w, w_in_c = w.shape
            w, params["kernel_layout"] = w.transpose(1, 2, 3, 0), "HWIO"
            if w_in_c != in_c:
                params["groups"] = in_c // w_in_c
        if opts.Padding() == Padding.SAME:
            top, bottom = get_pad_value(in_h, opts.DilationHFactor() * (k_h - 1) + 1, opts.StrideH())
            left, right = get_pad_value(in_w, opts.DilationWFactor() * (k_w - 1) + 1, opts.StrideW())
            params["padding"] = [top, left, bottom, right]

        # (x - input_zero_point) fits int16; zero padding then adds nothing, as TFLite skips it.
        x = self._emit(relax.op.subtract(relax.op.astype(self.get_expr(data.tensor_idx), "int16"),
                                         _const(in_zp, "int16")))
        acc = self._emit(relax.op.nn.conv2d(x, _const(w, "int16"), **params))
        if b is not None:
            acc = self._emit(relax.op.add(acc, _const(b, "int32")))
        scales = np.broadcast_to(w_scales, (out_c,))
        out = self._rescale(acc, in_scale, scales, out_scale, conv_type)
        return self._to_int8(out, *act, zero_point=out_zp)

    # -- FULLY_CONNECTED ----------------------------------------------------------------------

    def _exact_fully_connected(self, op):
        from tflite.FullyConnectedOptions import FullyConnectedOptions
        from tflite.TensorType import TensorType

        from tvm.relax.frontend.tflite.tflite_frontend import to_int_list

        inputs = self.get_input_tensors(op)
        output = self.get_output_tensors(op)[0]
        data, weight = inputs[0], inputs[1]
        bias = inputs[2] if len(inputs) > 2 and inputs[2].tensor_idx >= 0 else None
        opts = self._options(op, FullyConnectedOptions)
        w = self._constant(weight) if self._is_int8(weight) else None
        b = self._constant(bias) if bias is not None else None
        if (opts is None or w is None or w.ndim != 2 or not (self._is_int8(data) and self._is_int8(output))
                or (bias is not None and (b is None or bias.tensor.Type() != TensorType.INT32))):
            return self.convert_fully_connected(op)
        in_scale, in_zp = self._per_tensor(data)
        out_scale, out_zp = self._per_tensor(output)
        w_scales, w_zps = self._qparams(weight)
        act = activation_range(opts.FusedActivationFunction(), out_scale, out_zp)
        if act is None or (w_scales.size > 1 and (np.any(w_zps != 0)
                                                  or weight.tensor.Quantization().QuantizedDimension() != 0)):
            return self.convert_fully_connected(op)
        units, depth = w.shape
        in_shape = to_int_list(self.get_tensor_shape(data))
        x = self.get_expr(data.tensor_idx)
        if len(in_shape) != 2:
            x = relax.op.reshape(x, [-1, depth])
        x = self._emit(relax.op.subtract(relax.op.astype(x, "int16"), _const(in_zp, "int16")))
        w16 = w.astype(np.int16).T - np.int16(w_zps[0])  # per-tensor weights may carry a zero point
        acc = self._emit(relax.op.matmul(x, _const(w16, "int16"), out_dtype="int32"))
        if b is not None:
            acc = self._emit(relax.op.add(acc, _const(b, "int32")))
        scales = np.broadcast_to(w_scales, (units,)) if w_scales.size > 1 else w_scales[:1]
        out = self._to_int8(self._rescale(acc, in_scale, scales, out_scale, "fc"), *act,
                            zero_point=out_zp)
        if opts.KeepNumDims():
            return relax.op.reshape(out, in_shape[:-1] + [units])
        out_shape = to_int_list(self.get_tensor_shape(output))
        return out if len(out_shape) == 2 else relax.op.reshape(out, out_shape)

    # -- BATCH_MATMUL -------------------------------------------------------------------------

    def _exact_batch_matmul(self, op):
        """int8 x int8 with both zero points, int32 accumulation, then the kernel set's rescaling by
        ``lhs_scale * rhs_scale / output_scale`` (:data:`BATCH_MATMUL_ROUNDING`); per-tensor only."""
        from tflite.BatchMatMulOptions import BatchMatMulOptions

        import tvm

        lhs, rhs = self.get_input_tensors(op)[:2]
        output = self.get_output_tensors(op)[0]
        if not self.is_quantized(op):
            return self.convert_batch_matmul(op)
        if not all(self._is_int8(t) and self._qparams(t)[0].size == 1 for t in (lhs, rhs, output)):
            raise tvm.error.OpNotImplemented("quantized BATCH_MATMUL other than per-tensor int8, which edgedl's "
                                             "TVM importer does not lower; compile it with --backend litert")
        opts = self._options(op, BatchMatMulOptions)

        def operand(tensor, adjoint):
            _, zp = self._per_tensor(tensor)
            x = self._emit(relax.op.subtract(relax.op.astype(self.get_tensor_expr(tensor), "int16"),
                                             _const(zp, "int16")))
            if adjoint:
                rank = x.ty.ndim
                x = self._emit(relax.op.permute_dims(x, list(range(rank - 2)) + [rank - 1, rank - 2]))
            return x

        x = operand(lhs, opts is not None and opts.AdjX())
        y = operand(rhs, opts is not None and opts.AdjY())
        acc = self._emit(relax.op.matmul(x, y, out_dtype="int32"))
        (lhs_scale, _), (rhs_scale, _) = self._per_tensor(lhs), self._per_tensor(rhs)
        out_scale, out_zp = self._per_tensor(output)
        rounding = BATCH_MATMUL_ROUNDING[self.kernels]
        out = self._rescale(acc, lhs_scale, [rhs_scale], out_scale, "fc", rounding)
        return self._to_int8(out, -128, 127, zero_point=out_zp)

    # -- AVERAGE_POOL_2D ----------------------------------------------------------------------

    def _exact_average_pool(self, op):
        """reference_integer_ops::AveragePool (every LiteRT kernel set computes it this way)."""
        from tflite.Padding import Padding
        from tflite.Pool2DOptions import Pool2DOptions

        from tvm.relax.frontend.tflite.tflite_frontend import get_pad_value, to_int_list

        data = self.get_input_tensors(op)[0]
        output = self.get_output_tensors(op)[0]
        opts = self._options(op, Pool2DOptions)
        if (opts is None or not (self._is_int8(data) and self._is_int8(output))
                or opts.Padding() not in (Padding.SAME, Padding.VALID)):
            return self.convert_pool2d(op, "average")
        out_scale, out_zp = self._per_tensor(output)
        act = activation_range(opts.FusedActivationFunction(), out_scale, out_zp)
        if act is None:
            return self.convert_pool2d(op, "average")
        _, in_h, in_w, channels = to_int_list(self.get_tensor_shape(data))
        k_h, k_w, s_h, s_w = opts.FilterHeight(), opts.FilterWidth(), opts.StrideH(), opts.StrideW()
        pad = [0, 0, 0, 0]
        if opts.Padding() == Padding.SAME:
            top, bottom = get_pad_value(in_h, k_h, s_h)
            left, right = get_pad_value(in_w, k_w, s_w)
            pad = [top, left, bottom, right]
        out_h = (in_h + pad[0] + pad[2] - k_h) // s_h + 1
        out_w = (in_w + pad[1] + pad[3] - k_w) // s_w + 1
        # How many input positions each window covers: TFLite divides by those, not by k_h * k_w.
        rows = np.array([min(in_h, y * s_h - pad[0] + k_h) - max(0, y * s_h - pad[0]) for y in range(out_h)])
        cols = np.array([min(in_w, x * s_w - pad[1] + k_w) - max(0, x * s_w - pad[1]) for x in range(out_w)])
        count = (rows[:, None] * cols[None, :]).reshape(1, out_h, out_w, 1).astype(np.int32)

        x = self.get_expr(data.tensor_idx)
        if (out_h, out_w) == (1, 1) and pad == [0, 0, 0, 0] and (k_h, k_w) == (in_h, in_w):
            total = self._emit(relax.op.sum(relax.op.astype(x, "int32"), axis=[1, 2], keepdims=True))
        else:  # window sums: a depthwise convolution with a kernel of ones (zero padding adds 0)
            ones = np.ones((k_h, k_w, channels, 1) if channels > 1 else (k_h, k_w, 1, 1), np.int16)
            total = self._emit(relax.op.nn.conv2d(
                relax.op.astype(x, "int16"), _const(ones, "int16"), strides=[s_h, s_w], padding=pad,
                groups=channels, data_layout="NHWC", kernel_layout="HWOI" if channels > 1 else "HWIO",
                out_dtype="int32"))
        # (sum + count/2) / count for sum > 0, (sum - count/2) / count otherwise, truncating.
        magnitude = relax.op.add(relax.op.abs(total), _const(count // 2, "int32"))
        quotient = self._emit(relax.op.floor_divide(magnitude, _const(count, "int32")))
        signed = relax.op.where(relax.op.greater(total, _const(0, "int32")), quotient, relax.op.negative(quotient))
        return self._to_int8(self._emit(relax.op.astype(signed, "int64")), *act)

    # -- MEAN ---------------------------------------------------------------------------------

    def _exact_mean(self, op):
        from tflite.ReducerOptions import ReducerOptions

        from tvm.relax.frontend.tflite.tflite_frontend import to_int_list

        inputs = self.get_input_tensors(op)
        data, output = inputs[0], self.get_output_tensors(op)[0]
        axes = self._constant(inputs[1])
        if not (self._is_int8(data) and self._is_int8(output)) or axes is None:
            return self._convert_reduce(relax.op.mean, op)
        shape = to_int_list(self.get_tensor_shape(data))
        rank = len(shape)
        axes = sorted({int(a) % rank for a in np.ravel(axes)})
        opts = self._options(op, ReducerOptions) if op.BuiltinOptionsType() else None
        keep_dims = bool(opts.KeepDims()) if opts is not None else False
        in_scale, in_zp = self._per_tensor(data)
        out_scale, out_zp = self._per_tensor(output)
        count = int(np.prod([shape[a] for a in axes])) if axes else 1
        total = self._emit(relax.op.sum(relax.op.astype(self.get_expr(data.tensor_idx), "int32"),
                                        axis=axes, keepdims=keep_dims))
        spatial_4d = keep_dims and rank == 4 and axes == [1, 2]
        rounding = self.scheme["mean4d" if spatial_4d else "mean"]
        if rounding == "fp32":
            # XNNPACK: float32(sum * scale) + float32 bias (zero points folded in), nearest even.
            # The output depends on the sum alone, so it is a table over every possible sum where
            # that is small (no float at run time, no fused multiply-add merging the two roundings).
            scale = np.float32(in_scale / np.float32(out_scale * np.float32(count)))
            bias = np.float32(np.float32(out_zp) - np.float32(np.float32(in_zp * count) * scale))
            if 255 * count < _MEAN_TABLE_LIMIT:
                sums = np.arange(-128 * count, 127 * count + 1, dtype=np.int64)
                table = np.clip(np.rint((sums.astype(np.float32) * scale).astype(np.float32) + bias), -128, 127)
                index = relax.op.add(total, _const(128 * count, "int32"))
                return relax.op.take(_const(table.astype(np.int8), "int8"), index, axis=0, mode="clip")
            # Otherwise the product in float64 (exact), rounded to float32 on its own.
            product = relax.op.multiply(relax.op.astype(total, "float64"), _const(scale, "float64"))
            biased = relax.op.add(relax.op.astype(product, "float32"), _const(bias, "float32"))
            return self._to_int8(self._round_half_even(self._emit(biased)), -128, 127)
        if rounding == "mean4d":  # optimized_integer_ops::Mean: float32 bias and scale on raw sums
            temp = np.float32(np.float32(in_zp) * in_scale) / out_scale
            temp = temp + np.float32(0.5) if temp > 0 else temp - np.float32(0.5)
            real = in_scale / np.float32(np.float32(count) * out_scale)
            mult, shift = quantize_multiplier(float(real))
            return self._to_int8(self._requantize(total, mult, shift, "halfup"), -128, 127,
                                 zero_point=out_zp - int(temp))
        # reference_ops::QuantizedMeanOrSum: 1/n folded into the multiplier
        mult, shift = quantize_multiplier(float(in_scale) / float(out_scale))
        s = min(count.bit_length() - 1, 32, 31 + shift)
        mult, shift = (mult << s) // count, shift - s
        shifted = self._emit(relax.op.subtract(total, _const(in_zp * count, "int32")))
        return self._to_int8(self._requantize(shifted, mult, shift), -128, 127, zero_point=out_zp)

    # -- ADD ----------------------------------------------------------------------------------

    def _exact_add(self, op):
        """reference_integer_ops::AddFunc (builtin and reference kernels) or XNNPACK's qs8 add,
        which round ties differently (away from zero, and up)."""
        from tflite.AddOptions import AddOptions

        lhs, rhs = self.get_input_tensors(op)
        output = self.get_output_tensors(op)[0]
        opts = self._options(op, AddOptions)
        if opts is None or not all(self._is_int8(t) for t in (lhs, rhs, output)):
            return self._convert_elemwise(op, relax.op.add)
        (s1, z1), (s2, z2) = self._per_tensor(lhs), self._per_tensor(rhs)
        out_scale, out_zp = self._per_tensor(output)
        act = activation_range(opts.FusedActivationFunction(), out_scale, out_zp)
        if act is None:
            return self._convert_elemwise(op, relax.op.add)
        if self.scheme["add"] == "xnnpack" and _xnnpack_add_params(s1, s2, out_scale) is not None:
            return self._xnnpack_add(lhs, rhs, output, act, relax.op.add)
        return self._add_func(lhs, rhs, output, act, relax.op.add)  # (also where XNNPACK refuses the scales)

    def _xnnpack_add(self, lhs, rhs, output, act, combine):
        """XNNPACK's qs8 add (``combine`` = add) or subtract: 21-bit multipliers, one shift that rounds ties up."""
        (s1, z1), (s2, z2) = self._per_tensor(lhs), self._per_tensor(rhs)
        out_scale, out_zp = self._per_tensor(output)
        m1, m2, shift = _xnnpack_add_params(s1, s2, out_scale)

        def term(tensor, zp, mult):
            x = relax.op.subtract(relax.op.astype(self.get_tensor_expr(tensor), "int32"), _const(zp, "int32"))
            return relax.op.multiply(x, _const(mult, "int32"))

        acc = self._emit(relax.op.add(combine(term(lhs, z1, m1), term(rhs, z2, m2)), _const(1 << (shift - 1), "int32")))
        out = self._emit(relax.op.astype(relax.op.right_shift(acc, _const(shift, "int32")), "int64"))
        return self._to_int8(out, *act, zero_point=out_zp)

    def _add_func(self, lhs, rhs, output, act, combine):
        """reference_integer_ops::AddFunc (``combine`` = add) or reference_ops::Sub (subtract): each input
        shifted left by 20, scaled by its share of twice the larger input scale, combined, rescaled."""
        (s1, z1), (s2, z2) = self._per_tensor(lhs), self._per_tensor(rhs)
        out_scale, out_zp = self._per_tensor(output)
        left_shift = 20
        twice_max = 2 * float(max(s1, s2))
        m1, sh1 = quantize_multiplier(float(s1) / twice_max)
        m2, sh2 = quantize_multiplier(float(s2) / twice_max)
        mo, sho = quantize_multiplier(twice_max / (float(1 << left_shift) * float(out_scale)))

        def scaled(tensor, zp, mult, shift):
            x = relax.op.subtract(relax.op.astype(self.get_tensor_expr(tensor), "int32"), _const(zp, "int32"))
            return self._requantize(self._emit(relax.op.multiply(x, _const(1 << left_shift, "int32"))), mult, shift)

        raw = self._emit(relax.op.astype(combine(scaled(lhs, z1, m1, sh1), scaled(rhs, z2, m2, sh2)), "int32"))
        return self._to_int8(self._requantize(raw, mo, sho), *act, zero_point=out_zp)

    # -- SUB, MUL -----------------------------------------------------------------------------

    def _binary_operands(self, op, options_cls):
        """(lhs, rhs, output, clamp range) of an int8 per-tensor SUB or MUL, or None for the stock lowering."""
        lhs, rhs = self.get_input_tensors(op)
        output = self.get_output_tensors(op)[0]
        opts = self._options(op, options_cls)
        if (opts is None
                or not all(self._is_int8(t) and self._qparams(t)[0].size == 1 for t in (lhs, rhs, output))):
            return None
        act = activation_range(opts.FusedActivationFunction(), *self._per_tensor(output))
        return None if act is None else (lhs, rhs, output, act)

    def _exact_sub(self, op):
        """reference_ops::Sub (the builtin kernel runs it too): ADD's AddFunc, the second term subtracted;
        or XNNPACK's qs8 subtract, its add with the second multiplier negated."""
        from tflite.SubOptions import SubOptions

        operands = self._binary_operands(op, SubOptions)
        if operands is None:
            return self._convert_elemwise(op, relax.op.subtract)
        lhs, rhs, output, _ = operands
        if (ELEMENTWISE_ROUNDING[self.kernels]["sub"] == "xnnpack"
                and _xnnpack_add_params(self._per_tensor(lhs)[0], self._per_tensor(rhs)[0],
                                        self._per_tensor(output)[0]) is not None):
            return self._xnnpack_add(*operands, relax.op.subtract)
        return self._add_func(*operands, relax.op.subtract)

    def _exact_mul(self, op):
        """MulElementwise: ``MultiplyByQuantizedMultiplier((a - za) * (b - zb))`` plus the output zero point;
        XNNPACK rounds ``float((a - za) * (b - zb)) * scale`` to the nearest even instead."""
        from tflite.MulOptions import MulOptions

        operands = self._binary_operands(op, MulOptions)
        if operands is None:
            return self._convert_elemwise(op, relax.op.multiply)
        lhs, rhs, output, act = operands
        (s1, z1), (s2, z2) = self._per_tensor(lhs), self._per_tensor(rhs)
        out_scale, out_zp = self._per_tensor(output)

        def centred(tensor, zp):
            return relax.op.subtract(relax.op.astype(self.get_tensor_expr(tensor), "int32"), _const(zp, "int32"))

        product = self._emit(relax.op.multiply(centred(lhs, z1), centred(rhs, z2)))  # |product| <= 255 * 255
        scale = np.float32(s1 * s2 / out_scale)  # in float32, as mul.cc's Prepare and XNNPACK's subgraph compute it
        if ELEMENTWISE_ROUNDING[self.kernels]["mul"] == "fp32" and 2.0**-16 <= scale < 256.0:
            out = self._round_half_even(self._emit(relax.op.multiply(relax.op.astype(product, "float32"),
                                                                     _const(scale, "float32"))))
        else:  # (also where XNNPACK refuses the scale, assumed outside [2**-16, 256): the builtin MUL runs)
            out = self._requantize(product, *quantize_multiplier(float(scale)))
        return self._to_int8(out, *act, zero_point=out_zp)

    # -- LOGISTIC, TANH -----------------------------------------------------------------------

    def _exact_table_activation(self, op, name):
        """int8 LOGISTIC or TANH as every kernel set computes it: a lookup in LUTPopulate's 256-entry table
        (:func:`lut_int8`)."""
        data = self.get_input_tensors(op)[0]
        output = self.get_output_tensors(op)[0]
        if not all(self._is_int8(t) and self._qparams(t)[0].size == 1 for t in (data, output)):
            return self.convert_logistic(op) if name == "logistic" else self.convert_tanh(op)
        table = lut_int8(_TABLE_FUNCTIONS[name], *self._per_tensor(data), *self._per_tensor(output))
        index = relax.op.add(relax.op.astype(self.get_expr(data.tensor_idx), "int32"), _const(128, "int32"))
        return relax.op.take(_const(table, "int8"), index, axis=0, mode="clip")

    # -- SQUARED_DIFFERENCE, RSQRT (a layer normalisation's variance and its inverse root) -------

    def _exact_squared_difference(self, op):
        """squared_difference.cc's int8 kernel (every kernel set runs it: XNNPACK does not take it in int8):
        each input shifted left by 7 and scaled by its share of twice the larger input scale, the difference
        squared in int32, rescaled by ``(2 * max scale)**2 / (2**14 * output_scale)``, all three
        ``MultiplyByQuantizedMultiplierSmallerThanOneExp``. Each scaled input depends on its int8 value alone: a
        256-entry int32 table, which also keeps the kernel TVM fuses with the variance's MEAN small (the default
        CPU schedules inline the blocks before a reduction: three chains of rescaling arithmetic there took
        minutes to build)."""
        lhs, rhs = self.get_input_tensors(op)
        output = self.get_output_tensors(op)[0]
        if not all(self._is_int8(t) and self._qparams(t)[0].size == 1 for t in (lhs, rhs, output)):
            return self.convert_squared_difference(op)
        (s1, z1), (s2, z2) = self._per_tensor(lhs), self._per_tensor(rhs)
        out_scale, out_zp = self._per_tensor(output)
        left_shift = 7
        twice_max = 2 * float(max(s1, s2))  # double from the float scales, as Prepare computes it
        m1, sh1 = quantize_multiplier(float(s1) / twice_max)
        m2, sh2 = quantize_multiplier(float(s2) / twice_max)
        mo, sho = quantize_multiplier(twice_max * twice_max / float(np.float32(1 << 2 * left_shift) * out_scale))

        def scaled(tensor, zp, mult, shift):  # depends on the int8 input alone: a 256-entry table
            table = [_multiply_by_quantized_multiplier((q - zp) * (1 << left_shift), mult, shift)
                     for q in range(-128, 128)]
            index = relax.op.add(relax.op.astype(self.get_tensor_expr(tensor), "int32"), _const(128, "int32"))
            return relax.op.take(_const(table, "int32"), index, axis=0, mode="clip")

        difference = self._emit(relax.op.subtract(scaled(lhs, z1, m1, sh1), scaled(rhs, z2, m2, sh2)))
        squared = self._emit(relax.op.astype(relax.op.multiply(difference, difference), "int32"))  # < 255**2 * 2**14
        return self._to_int8(self._requantize(squared, mo, sho), -128, 127, zero_point=out_zp)

    def _exact_rsqrt(self, op):
        """elementwise.cc's int8 RSQRT (the builtin and reference kernels alike; XNNPACK does not take it in int8):
        its output depends on the int8 input alone, so it is a lookup in :func:`rsqrt_int8_table`."""
        data = self.get_input_tensors(op)[0]
        output = self.get_output_tensors(op)[0]
        if not all(self._is_int8(t) and self._qparams(t)[0].size == 1 for t in (data, output)):
            return self._convert_unary_elemwise(op, relax_op=relax.op.rsqrt)
        table = rsqrt_int8_table(*self._per_tensor(data), *self._per_tensor(output))
        index = relax.op.add(relax.op.astype(self.get_tensor_expr(data), "int32"), _const(128, "int32"))
        return relax.op.take(_const(table, "int8"), index, axis=0, mode="clip")

    # -- DEQUANTIZE ---------------------------------------------------------------------------

    def _exact_dequantize(self, op):
        """int8 -> float32 as a 256-entry table, so the float rounding is the kernel's and no fused
        multiply-add can change it."""
        from tflite.TensorType import TensorType

        data = self.get_input_tensors(op)[0]
        output = self.get_output_tensors(op)[0]
        if not self._is_int8(data) or output.tensor.Type() != TensorType.FLOAT32 or self._qparams(data)[0].size != 1:
            return self.convert_dequantize(op)
        scale, zp = self._per_tensor(data)
        q = np.arange(-128, 128, dtype=np.int32)
        if self.scheme["dequantize"] == "difference":
            table = (q.astype(np.float32) * scale) - np.float32(np.float32(zp) * scale)
        else:
            table = ((q - zp).astype(np.float64) * np.float64(scale)).astype(np.float32)
        index = relax.op.add(relax.op.astype(self.get_tensor_expr(data), "int32"), _const(128, "int32"))
        return relax.op.take(_const(table.astype(np.float32), "float32"), index, axis=0, mode="clip")

    # -- SOFTMAX ------------------------------------------------------------------------------

    def _exact_softmax(self, op):
        from tflite.SoftmaxOptions import SoftmaxOptions

        data = self.get_input_tensors(op)[0]
        output = self.get_output_tensors(op)[0]
        opts = self._options(op, SoftmaxOptions)
        if opts is None or not (self._is_int8(data) and self._is_int8(output)):
            return self.convert_softmax(op)
        in_scale, _ = self._per_tensor(data)
        out_scale, out_zp = self._per_tensor(output)
        beta = np.float32(opts.Beta())
        x = self._emit(relax.op.astype(self.get_expr(data.tensor_idx), "int32"))
        row_max = self._emit(relax.op.max(x, axis=-1, keepdims=True))
        distance = self._emit(relax.op.subtract(row_max, x))  # max - x, in [0, 255]
        if self.scheme["softmax"] == "fixed_point":
            return self._softmax_fixed_point(distance, float(in_scale), float(beta))
        return self._softmax_float_table(distance, in_scale, beta, out_scale, out_zp)

    def _softmax_float_table(self, distance, in_scale, beta, out_scale, out_zp):
        """optimized_ops::Softmax for int8 on x86: an expf table, float32 sums and normalisation."""
        scale = np.float32(-in_scale * beta)
        table = np.array([_expf(np.float32(scale * np.float32(d))) for d in range(256)], np.float32)
        e = self._emit(relax.op.take(_const(table, "float32"), distance, axis=0, mode="clip"))
        axis, depth = e.ty.ndim - 1, int(e.ty.shape[-1])
        if depth <= _UNROLLED_SUM_LIMIT:  # left to right, as the C loop adds (float addition is not associative)
            total = None
            for j in range(depth):
                column = self._emit(relax.op.strided_slice(e, axes=[axis], begin=[j], end=[j + 1]))
                total = column if total is None else self._emit(relax.op.add(total, column))
        else:  # TVM's CPU cumsum is one sequential loop too (a GPU scan is not)
            total = self._emit(relax.op.strided_slice(relax.op.cumsum(e, axis=axis), axes=[axis],
                                                      begin=[depth - 1], end=[depth]))
        denominator = self._emit(relax.op.multiply(total, _const(out_scale, "float32")))
        inverse = self._emit(relax.op.divide(_const(1.0, "float32"), denominator))
        # std::round (ties away from zero, prob >= 0) by comparisons: prob - floor(prob) could be
        # fused into a multiply-add that skips the rounding of the product.
        prob = self._emit(relax.op.multiply(e, inverse))
        whole = self._emit(relax.op.floor(prob))
        up = relax.op.greater_equal(prob, relax.op.add(whole, _const(0.5, "float32")))
        rounded = self._emit(relax.op.add(relax.op.astype(whole, "int64"), relax.op.astype(up, "int64")))
        return self._to_int8(rounded, -128, 127, zero_point=out_zp)

    def _softmax_fixed_point(self, distance, in_scale, beta):
        """reference_ops::Softmax for int8: gemmlowp fixed-point exp and Newton-Raphson reciprocal.

        exp() only ever sees the 256 possible (x - max) values, so it is a table built here.
        """
        integer_bits, accumulation_bits = 5, 12
        real = min(beta * in_scale * (1 << (31 - integer_bits)), (1 << 31) - 1.0)
        input_multiplier, left_shift = quantize_multiplier(real)
        radius = math.floor(((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) / (1 << left_shift))
        exp_table = np.zeros(256, np.int64)
        term_table = np.zeros(256, np.int64)
        valid = np.zeros(256, bool)
        for d in range(min(radius, 255) + 1):
            rescaled = _srdhm(-d * (1 << left_shift), input_multiplier)
            exp_table[d] = _exp_on_negative_values(rescaled, integer_bits)
            term_table[d] = _sat_mul_pot(int(exp_table[d]), -accumulation_bits)
            valid[d] = True
        exp_q0 = self._emit(relax.op.take(_const(exp_table, "int64"), distance, axis=0, mode="clip"))
        terms = self._emit(relax.op.take(_const(term_table, "int64"), distance, axis=0, mode="clip"))
        total = self._emit(relax.op.sum(terms, axis=-1, keepdims=True))  # exact in any order
        # GetReciprocal: the headroom is 32 minus how many powers of two the sum reaches.
        powers = _const(np.left_shift(np.int64(1), np.arange(32, dtype=np.int64)), "int64")
        bit_length = self._emit(relax.op.sum(relax.op.astype(
            relax.op.greater_equal(relax.op.expand_dims(total, -1), powers), "int64"), axis=-1))
        headroom_plus_one = self._emit(relax.op.subtract(_const(32, "int64"), bit_length))
        shifted_minus_one = self._emit(relax.op.subtract(relax.op.left_shift(total, headroom_plus_one),
                                                         _const(1 << 31, "int64")))
        scale = self._one_over_one_plus_x(shifted_minus_one)
        exponent = self._emit(relax.op.subtract(_const(accumulation_bits + 31 - 8, "int64"), headroom_plus_one))
        out = self._to_int8(self._rdbpot(self._srdhm(scale, exp_q0), exponent), -128, 127, zero_point=-128)
        return relax.op.where(relax.op.take(_const(valid, "bool"), distance, axis=0, mode="clip"), out,
                              _const(-128, "int8"))

    def _one_over_one_plus_x(self, a):
        """gemmlowp's ``one_over_one_plus_x_for_x_in_0_1`` on an int64 tensor of Q0.31 values."""
        def c(v):
            return _const(v, "int64")

        half_denominator = self._emit(relax.op.right_shift(relax.op.add(a, c(INT32_MAX + 1)), c(1)))
        x = self._emit(relax.op.add(c(1515870810), self._srdhm(half_denominator, c(-1010580540))))
        for _ in range(3):
            one_minus = self._emit(relax.op.subtract(c(1 << 29), self._srdhm(half_denominator, x)))
            x = self._emit(relax.op.add(x, self._saturating_left_shift(self._srdhm(x, one_minus), 2)))
        return self._saturating_left_shift(x, 1)

    def _saturating_left_shift(self, x, exponent: int):
        """``SaturatingRoundingMultiplyByPOT<exponent>`` (exponent > 0) on int64 tensors of int32 values."""
        threshold = (1 << (31 - exponent)) - 1
        shifted = relax.op.left_shift(x, _const(exponent, "int64"))
        shifted = relax.op.where(relax.op.greater(x, _const(threshold, "int64")), _const(INT32_MAX, "int64"), shifted)
        return self._emit(relax.op.where(relax.op.less(x, _const(-threshold, "int64")), _const(INT32_MIN, "int64"),
                                         shifted))


class BuiltinInt8Converter(ExactInt8Converter):
    """:class:`ExactInt8Converter` reproducing LiteRT's builtin kernels without delegates
    (``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``, ``LiteRTEngine(xnnpack=False)``) on x86-64."""

    kernels = "builtin"


class ReferenceInt8Converter(ExactInt8Converter):
    """:class:`ExactInt8Converter` reproducing LiteRT's reference kernels (``OpResolverType.BUILTIN_REF``),
    the portable integer arithmetic TFLite Micro also implements: gemmlowp rounding, fixed-point softmax."""

    kernels = "reference"


def _xnnpack_add_params(lhs_scale, rhs_scale, out_scale):
    """XNNPACK's qs8 add: 21-bit multipliers from the float32 scale ratios and one rounding shift,
    ``(m1 * (a - za) + m2 * (b - zb) + 2**(shift - 1)) >> shift``; None where XNNPACK refuses."""
    ratio1, ratio2 = np.float32(lhs_scale / out_scale), np.float32(rhs_scale / out_scale)
    if not all(2.0**-10 <= r < 2.0**8 for r in (ratio1, ratio2)):
        return None
    shift = 20 - (int(np.frexp(max(ratio1, ratio2))[1]) - 1)  # 20 - the float's unbiased exponent
    multipliers = [int(np.rint(np.float32(np.ldexp(r, shift)))) for r in (ratio1, ratio2)]
    return multipliers[0], multipliers[1], shift


def lut_int8(transform, in_scale, in_zero_point, out_scale, out_zero_point) -> np.ndarray:
    """LiteRT's ``LUTPopulate<int8_t>`` (kernels/internal/common.h): for each int8 input ``q`` (from -128),
    ``transform(float(in_scale * float(q - in_zero_point)))`` times ``1 / out_scale``, all in float32, rounded
    half away from zero, plus the output zero point, clamped to int8.

    Example:
        >>> lut_int8(lambda x: x, 1.0, 0, 1.0, 0)[[0, 128, 255]]
        array([-128,    0,  127], dtype=int8)
    """
    inverse = np.float32(1) / np.float32(out_scale)
    dequantized = np.float32(in_scale) * (np.arange(-128, 128) - in_zero_point).astype(np.float32)
    rescaled = [round_half_away(np.float32(np.float32(transform(np.float32(d))) * inverse)) for d in dequantized]
    return np.clip(np.array(rescaled, np.int64) + out_zero_point, -128, 127).astype(np.int8)


def _logistic(x: np.float32) -> np.float32:
    """activations.cc's ``1.0f / (1.0f + std::exp(-value))`` in float32."""
    return np.float32(np.float32(1) / np.float32(np.float32(1) + _libm("expf", math.exp)(np.float32(-x))))


def _tanh(x: np.float32) -> np.float32:
    """``std::tanh`` of a float: the C library's ``tanhf``."""
    return _libm("tanhf", math.tanh)(x)


_TABLE_FUNCTIONS = {"logistic": _logistic, "tanh": _tanh}


def _expf(x: np.float32) -> np.float32:
    """``expf`` as LiteRT computes it: the C library's (glibc's differs from the correctly rounded
    value on ~0.06% of table entries), else the correctly rounded value."""
    return _libm("expf", math.exp)(x)


def _libm(name: str, fallback):
    """The C library's float32 function ``name`` (what LiteRT calls) as a numpy float32 function;
    ``fallback`` (Python's double precision function, rounded to float32) where it cannot be loaded."""
    function = _libm_function(name)
    if function is None:
        return lambda x: np.float32(fallback(float(x)))
    return lambda x: np.float32(function(float(x)))


@functools.lru_cache(maxsize=None)
def _libm_function(name: str):
    import ctypes
    import ctypes.util

    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        function = getattr(libm, name)
    except (OSError, AttributeError):
        return None
    function.restype, function.argtypes = ctypes.c_float, [ctypes.c_float]
    return function
