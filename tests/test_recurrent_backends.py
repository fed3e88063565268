"""Recurrent models past LiteRT (issue 31, items 1-2): the int8 LSTM (one fused
UNIDIRECTIONAL_SEQUENCE_LSTM) and the int8 GRU (unrolled) on Vela's Ethos-U55 and U85, the same
models through ONNX Runtime (tf2onnx), and quantization-aware training of both.

The models are real: scikit-learn's 8x8 digits read as 8 time steps of 8 features, trained here.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from edgedl.backends import get_backend
from edgedl.errors import UnsupportedOperatorError
from edgedl.targets import load_target

pytestmark = pytest.mark.slow
# Trains either model to 91-94% on the last 397 digits (scikit-learn's order: later writers) in 30 epochs.
RECIPE = {"learning_rate": 5e-3, "batch_size": 32, "optimizer": "adam"}


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    return {"train": x[:1400], "y_train": d.target[:1400], "test": x[1400:], "y_test": d.target[1400:]}


def _train(digits, kind):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8), name="rows")
    h = getattr(keras.layers, kind)(32, name=kind.lower())(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="probs")(h), name=kind.lower())
    model.compile(keras.optimizers.Adam(RECIPE["learning_rate"]), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(digits["train"], digits["y_train"], epochs=30, batch_size=RECIPE["batch_size"], verbose=0)
    return model


@pytest.fixture(scope="module")
def models(digits, tmp_path_factory):
    """Each model in Keras and as .tflite: float32, int8 with int8 I/O, int8 with float I/O."""
    from edgedl.convert import to_tflite

    d = tmp_path_factory.mktemp("recurrent")
    out = {}
    for kind in ("LSTM", "GRU"):
        model = _train(digits, kind)
        name = kind.lower()
        paths = {"keras": model}
        for form, mode, io in (("float", "none", "float"), ("int8", "int8", "int8"),
                               ("int8_float_io", "int8", "float")):
            paths[form] = d / f"{name}_{form}.tflite"
            paths[form].write_bytes(to_tflite(model, mode, representative=digits["train"][:200], io_type=io))
        out[name] = paths
    return out


def _ops(path) -> set:
    from edgedl.graph import read_tflite

    graph = read_tflite(path)
    return {op.name for g in (graph, *graph.nested) for op in g.ops}


def _top1(engine, x) -> np.ndarray:
    """Engine outputs sample by sample (a fused LSTM's state is reset per invocation), as float."""
    spec = engine.inputs[0]
    rows = []
    for k in range(len(x)):
        sample = x[k:k + 1]
        if spec.dtype == "int8":
            sample = np.clip(np.round(sample / spec.scale + spec.zero_point), -128, 127).astype(np.int8)
        rows.append(np.asarray(engine.invoke(sample), np.float32))
    return np.concatenate(rows)


# --- Vela ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["ethos_u55_128", "ethos_u85_256"])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_int8_lstm_and_gru_run_wholly_on_the_npu(models, tmp_path, name, target):
    """Vela lowers the fused LSTM (its gates' FULLY_CONNECTEDs, LOGISTIC/TANH as lookup tables, the
    int16 cell's MUL/ADD) and every operator of the unrolled GRU (SPLIT, UNPACK and RESHAPE become
    memory moves) to the NPU: no CPU fallback, and the estimates say so."""
    pytest.importorskip("ethosu.vela")
    expected = {"lstm": {"UNIDIRECTIONAL_SEQUENCE_LSTM"}, "gru": {"FULLY_CONNECTED", "LOGISTIC", "TANH", "SUB"}}[name]
    assert expected <= _ops(models[name]["int8"])
    backend = get_backend("vela")
    tgt = load_target(target)
    compiled = backend.compile(models[name]["int8"], tgt, tmp_path, {})
    e = compiled.estimates
    assert e["cpu_fallback"] == [] and e["cpu_fallback_ops"] == [] and "CPU fallback:" not in e["note"]
    assert e["cycles"] > 0
    with open(tmp_path / "vela_per_layer.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["Target"] for r in rows} == {"NPU"}
    originals = {r["Original Operator"] for r in rows}
    if name == "lstm":
        assert "UnidirectionalSequenceLstm" in originals
        lowered = {r["NNG Operator"] for r in rows if r["Original Operator"] == "UnidirectionalSequenceLstm"}
        assert {"FullyConnected", "Sigmoid", "Tanh", "Mul", "Add"} <= lowered
    else:
        assert {"FullyConnected", "Sigmoid", "Tanh", "Sub"} <= originals
    assert backend.cpu_fallback_ops(_graph(models[name]["int8"]), tgt) == {}


@pytest.fixture(scope="module")
def lstm_int16x8(models, digits, tmp_path_factory):
    """The LSTM converted with ``-q int16x8`` (float I/O: an int16x8 model takes no int8 I/O)."""
    from edgedl.convert import to_tflite

    path = tmp_path_factory.mktemp("int16x8") / "lstm_int16x8.tflite"
    path.write_bytes(to_tflite(models["lstm"]["keras"], "int16x8", representative=digits["train"][:200]))
    return path


@pytest.mark.parametrize("target", ["ethos_u55_128", "ethos_u85_256"])
def test_int16x8_lstm_is_unrolled_and_runs_on_the_npu_but_for_its_float_io(models, digits, lstm_int16x8,
                                                                           tmp_path, target):
    """TensorFlow's converter has no 16x8 quantization of the fused UNIDIRECTIONAL_SEQUENCE_LSTM ("not
    yet supported"), so Vela never sees one: an int16x8 conversion unrolls the LSTM instead
    (edgedl.recurrent.UNFUSED_MODES), the manifest's plan says so, and Vela puts every unrolled operator
    (FULLY_CONNECTED, LOGISTIC, TANH, MUL, ADD with int16 activations) on the NPU. What stays on the CPU
    is named: the QUANTIZE and DEQUANTIZE of the float I/O, with a note that does not advise int8 I/O.
    The int16x8 model keeps the float model's answers on LiteRT."""
    pytest.importorskip("ethosu.vela")
    from edgedl import recurrent
    from edgedl.runtime.engines import LiteRTEngine

    keras_model = models["lstm"]["keras"]
    assert [(p.kind, p.form) for p in recurrent.plan_for(keras_model, "int16x8")] == [("LSTM", "unrolled")]
    assert [(p.kind, p.form) for p in recurrent.plan_for(keras_model, "int8")] == [("LSTM", "fused")]
    ops = _ops(lstm_int16x8)
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in ops and {"FULLY_CONNECTED", "LOGISTIC", "TANH", "MUL"} <= ops
    graph = _graph(lstm_int16x8)
    fc_out = next(op.outputs[0] for op in graph.ops if op.name == "FULLY_CONNECTED")
    assert graph.tensors[fc_out]["dtype"] == "int16"
    compiled = get_backend("vela").compile(lstm_int16x8, load_target(target), tmp_path, {})
    e = compiled.estimates
    assert e["cpu_fallback_ops"] == ["DEQUANTIZE", "QUANTIZE"] and e["cpu_operators"] == 2, e["cpu_fallback"]
    assert e["npu_operators"] > 100 and e["cycles"] > 0
    assert "CPU fallback: DEQUANTIZE, QUANTIZE (the float input/output conversions of an int16x8 model" in e["note"]
    assert "--io int8" not in e["note"]
    with open(tmp_path / "vela_per_layer.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["Original Operator"] for r in rows if r["Target"] != "NPU"} == {"Quantize", "Dequantize"}
    assert {"FullyConnected", "Sigmoid", "Tanh", "Mul", "Add"} <= {r["Original Operator"] for r in rows
                                                                  if r["Target"] == "NPU"}
    ours = _top1(LiteRTEngine(lstm_int16x8), digits["test"]).argmax(1)
    assert (ours == keras_model.predict(digits["test"], verbose=0).argmax(1)).mean() >= 0.99


def _graph(path):
    from edgedl.graph import read_tflite

    return read_tflite(path)


# --- ONNX Runtime -------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["float", "int8", "int8_float_io"])
def test_gru_converts_to_onnx_and_matches_litert(models, digits, tmp_path, form):
    """The unrolled GRU goes through tf2onnx's TFLite frontend in every form and computes what LiteRT
    does: float to rounding, int8 within one quantization step, the same top-1 on every sample."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from edgedl.runtime.engines import LiteRTEngine

    path = models["gru"][form]
    backend = get_backend("onnxruntime")
    assert backend.unsupported_ops(_graph(path), load_target("x86_64")) == {}
    compiled = backend.compile(path, load_target("x86_64"), tmp_path, {})
    # the matrix products: the input's for all 8 steps at once (update and reset gates, candidate), the
    # state's at 7 steps (the first starts from zeros: folded away), the classifier's. Gemm where ONNX
    # keeps a bias, MatMul where tf2onnx spells it out (int8: between its DequantizeLinear nodes)
    counts = compiled.estimates["op_counts"]
    assert counts.get("Gemm", 0) + counts.get("MatMul", 0) == 2 + 2 * 7 + 1, counts
    ours = _top1(backend.load(compiled), digits["test"])
    litert = _top1(LiteRTEngine(path), digits["test"])
    diff = np.abs(ours - litert).max()
    # float: rounding; int8 I/O: one integer step of the output; float I/O: one step of its 1/256 scale
    assert diff <= {"float": 1e-5, "int8": 1, "int8_float_io": 1 / 256 + 1e-6}[form]
    assert (ours.argmax(1) == litert.argmax(1)).all()
    assert (ours.argmax(1) == digits["y_test"]).mean() > 0.88


@pytest.mark.parametrize("form", ["float", "int8"])
def test_fused_lstm_is_refused_by_operator_in_one_line(models, tmp_path, form):
    """tf2onnx has no converter for UNIDIRECTIONAL_SEQUENCE_LSTM (float or int8): support and compile
    say so by operator, not with tf2onnx's message about an internal tensor."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    path = models["lstm"][form]
    backend = get_backend("onnxruntime")
    why = backend.unsupported_ops(_graph(path), load_target("x86_64"))
    assert list(why) == ["UNIDIRECTIONAL_SEQUENCE_LSTM"] and "no converter" in why["UNIDIRECTIONAL_SEQUENCE_LSTM"]
    with pytest.raises(UnsupportedOperatorError) as info:
        backend.compile(path, load_target("x86_64"), tmp_path, {})
    message = str(info.value)
    assert "\n" not in message and message.startswith("UNIDIRECTIONAL_SEQUENCE_LSTM: tf2onnx has no converter")
    assert not (tmp_path / "model.onnx").exists()
    if form == "float":
        assert "export_onnx" in message


def test_a_float_keras_lstm_exports_to_onnx_as_the_refusal_says(models, digits, tmp_path):
    """The way the float LSTM's refusal points to: tf2onnx converts the Keras model (an ONNX Loop),
    which compiles with onnxruntime and computes what Keras does."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from edgedl.backends.onnxruntime import export_onnx

    model = models["lstm"]["keras"]
    path = export_onnx(model, tmp_path / "lstm.onnx")
    backend = get_backend("onnxruntime")
    compiled = backend.compile(path, load_target("x86_64"), tmp_path / "bundle", {})
    assert "Loop" in compiled.estimates["op_counts"]
    ours = _top1(backend.load(compiled), digits["test"])
    keras_out = model.predict(digits["test"], verbose=0)
    assert np.abs(ours - keras_out).max() < 1e-5 and (ours.argmax(1) == keras_out.argmax(1)).all()


# --- QAT ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_qat_of_a_recurrent_model_exports_int8_within_a_point_of_float(models, digits, tmp_path, name):
    """QAT fake-quantizes the recurrent layer's input and output and trains its kernels in float
    (listed in ``plain``); the export is converted by edgedl.convert, so the LSTM is the fused int8
    operator and the GRU unrolled, and int8 accuracy stays within a point of float."""
    from edgedl.convert import to_tflite
    from edgedl.optimize import FineTune, quantization_aware_training
    from edgedl.runtime.engines import LiteRTEngine

    model = models[name]["keras"]
    result = quantization_aware_training(model, FineTune(digits["train"], digits["y_train"], RECIPE, 2, progress=False))
    assert [p["layer"] for p in result.plain] == [name]
    assert {"rows_fq", f"{name}_fq"} <= {layer.name for layer in result.fake_quant_model.layers}
    path = tmp_path / f"{name}_qat.tflite"
    path.write_bytes(to_tflite(result.model, "int8", representative=digits["train"][:200], io_type="int8"))
    ops = _ops(path)
    assert ("UNIDIRECTIONAL_SEQUENCE_LSTM" in ops) == (name == "lstm") and "WHILE" not in ops
    qat = (_top1(LiteRTEngine(path), digits["test"]).argmax(1) == digits["y_test"]).mean()
    float_acc = (model.predict(digits["test"], verbose=0).argmax(1) == digits["y_test"]).mean()
    assert float_acc > 0.88 and abs(qat - float_acc) <= 0.01, (float_acc, qat)
