"""Recurrent models through the TVM backend (issue 31, item 2): the float fused LSTM, the float and
int8 unrolled GRU compile for x86_64 and compute what LiteRT does (float within 1e-4, the int8 GRU bit for
bit); the int8 fused LSTM compiles too but is not exact: a few int8 steps from LiteRT, the same top-1.

The models are real: scikit-learn's 8x8 digits read as 8 time steps of 8 features, trained here.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("tflite")
pytest.importorskip("ai_edge_litert")

import digit_rows  # noqa: E402 - tests/digit_rows.py


@pytest.fixture(scope="module")
def digits():
    return digit_rows.load()


def _train(digits, layer, name):
    return digit_rows.train(digits, layer, name, epochs=10)


@pytest.fixture(scope="module")
def models(digits):
    import keras

    return {"lstm": _train(digits, keras.layers.LSTM(32, name="lstm"), "lstm"),
            "gru": _train(digits, keras.layers.GRU(32, name="gru"), "gru")}


def _scores(engine, x) -> np.ndarray:
    return digit_rows.scores(engine, x, as_float=False)


def _compile(source, tmp_path, **options):
    from edgedl import runtime
    from edgedl.compile import CompileOptions, compile_model

    out = tmp_path / f"{source.stem}.edgedl"
    compile_model(str(source), "x86_64", str(out), CompileOptions(backend="tvm", **options))
    return runtime.load(out).engine


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_float_recurrent_models_compile_with_tvm_and_compute_what_litert_does(models, digits, tmp_path, name):
    from edgedl.convert import to_tflite
    from edgedl.runtime.engines import LiteRTEngine

    source = tmp_path / f"{name}.keras"
    models[name].save(source)
    tflite = tmp_path / f"{name}.tflite"
    tflite.write_bytes(to_tflite(models[name], "none"))
    tvm_scores = _scores(_compile(source, tmp_path, quantize="none"), digits["test"])
    np.testing.assert_allclose(tvm_scores, _scores(LiteRTEngine(tflite), digits["test"]), atol=1e-4)
    assert np.mean(tvm_scores.argmax(-1) == digits["y_test"]) > 0.6  # a model that learned something


def test_the_int8_gru_compiles_with_tvm_and_computes_what_litert_does_bit_for_bit(models, digits, tmp_path):
    from edgedl.convert import to_tflite
    from edgedl.runtime.engines import LiteRTEngine

    tflite = tmp_path / "gru_int8.tflite"
    tflite.write_bytes(to_tflite(models["gru"], "int8", digits["train"][:200], io_type="int8"))
    litert = _scores(LiteRTEngine(tflite), digits["test"])
    tvm_scores = _scores(_compile(tflite, tmp_path), digits["test"])
    assert tvm_scores.dtype == np.int8
    # the unrolled GRU's SPLIT, STRIDED_SLICE and UNPACK copy int8 values; every output of 397 digits is LiteRT's
    np.testing.assert_array_equal(tvm_scores, litert)


def test_the_int8_lstm_compiles_with_tvm_a_few_steps_from_litert_with_the_same_top1(models, digits, tmp_path):
    from edgedl.convert import to_tflite
    from edgedl.runtime.engines import LiteRTEngine

    tflite = tmp_path / "lstm_int8.tflite"
    tflite.write_bytes(to_tflite(models["lstm"], "int8", digits["train"][:200], io_type="int8"))
    tvm_scores = _scores(_compile(tflite, tmp_path), digits["test"]).astype(int)
    litert = _scores(LiteRTEngine(tflite, kernels="reference"), digits["test"]).astype(int)
    # NOT exact: the gates run in float32 between the int16 cell's and the int8 output's grids, where LiteRT
    # runs its integer LSTM (gemmlowp's int16 logistic and tanh); measured: 5 to 7 steps at most (by machine),
    # 9% of the outputs
    assert np.max(np.abs(tvm_scores - litert)) <= 10
    assert np.mean(tvm_scores != litert) <= 0.15
    assert np.mean(tvm_scores.argmax(-1) == litert.argmax(-1)) >= 0.99
