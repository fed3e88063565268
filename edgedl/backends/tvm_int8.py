"""Exact int8 lowering for TVM's TFLite frontend (placeholder: defaults to the stock converter)."""

from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter


class ExactInt8Converter(OperatorConverter):
    """TVM's TFLite operator converter with TFLite's integer arithmetic for the int8 operators that
    the stock converter rounds differently."""
