"""Recurrent models quantized fully to integers (issue 31, item 1): an LSTM becomes one int8
UNIDIRECTIONAL_SEQUENCE_LSTM operator, a GRU or SimpleRNN is unrolled into operators every backend
has, and both keep the float model's accuracy.

The models are real: scikit-learn's 8x8 digits read as 8 time steps of 8 features, trained here.
A fused LSTM keeps its state in variable tensors from one invocation to the next; the engines reset
it before each, as Keras starts each call from zeros.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgedl.bundle import read_manifest

import digit_rows  # tests/digit_rows.py
from cli_run import run_cli  # tests/cli_run.py


@pytest.fixture(scope="module")
def digits():
    return digit_rows.load()


def _train(digits, layer, name):
    return digit_rows.train(digits, layer, name, epochs=25)


@pytest.fixture(scope="module")
def models(digits):
    import keras

    layers = keras.layers
    return {
        "lstm": _train(digits, layers.LSTM(32, name="lstm"), "lstm"),
        "gru": _train(digits, layers.GRU(32, name="gru"), "gru"),
        "bilstm": _train(digits, layers.Bidirectional(layers.LSTM(16, return_sequences=True, go_backwards=False),
                                                      name="bi"), "bilstm"),
    }


def _ops(tflite: bytes) -> set:
    from ai_edge_litert.interpreter import Interpreter

    return {d["op_name"] for d in Interpreter(model_content=tflite)._get_ops_details()} - {"DELEGATE"}


_scores = digit_rows.scores


def _accuracy(scores, y) -> float:
    return float(np.mean(scores.argmax(-1) == y))


@pytest.mark.parametrize("name,operators", [
    ("lstm", {"UNIDIRECTIONAL_SEQUENCE_LSTM"}),
    ("bilstm", {"UNIDIRECTIONAL_SEQUENCE_LSTM", "REVERSE_V2", "CONCATENATION"}),
    ("gru", {"FULLY_CONNECTED", "LOGISTIC", "TANH", "MUL"}),
])
def test_int8_recurrent_models_convert_and_keep_the_float_accuracy(models, digits, tmp_path, name, operators):
    from edgedl.convert import to_tflite
    from edgedl.runtime.engines import LiteRTEngine

    model = models[name]
    float_accuracy = _accuracy(model.predict(digits["test"], verbose=0), digits["y_test"])
    assert float_accuracy > 0.75, float_accuracy  # a model that learned something
    tflite = to_tflite(model, "int8", digits["train"][:200], io_type="int8")
    ops = _ops(tflite)
    assert operators <= ops, ops
    assert "WHILE" not in ops  # the loop TensorFlow's calibrator crashes on is gone
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(tflite)
    scores = _scores(LiteRTEngine(path), digits["test"])
    assert _accuracy(scores, digits["y_test"]) >= float_accuracy - 0.01  # within a point of float


def test_a_fused_lstm_starts_every_inference_from_zero_state(models, digits, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from edgedl.convert import to_tflite
    from edgedl.runtime.engines import LiteRTEngine
    from edgedl.runtime.tflm import TFLMEngine

    path = tmp_path / "lstm.tflite"
    path.write_bytes(to_tflite(models["lstm"], "int8", digits["train"][:200], io_type="int8"))
    # the interpreter alone carries the state of one inference into the next ...
    raw = Interpreter(model_path=str(path))
    raw.allocate_tensors()
    index, out = raw.get_input_details()[0]["index"], raw.get_output_details()[0]["index"]
    spec = LiteRTEngine(path).inputs[0]
    sample = np.clip(np.round(digits["test"][:1] / spec.scale + spec.zero_point), -128, 127).astype(np.int8)
    carried = []
    for _ in range(2):
        raw.set_tensor(index, sample)
        raw.invoke()
        carried.append(raw.get_tensor(out).copy())
    assert not np.array_equal(carried[0], carried[1])
    # ... the engines do not: the same sample twice gives the fresh interpreter's first scores twice
    for engine in (LiteRTEngine(path), TFLMEngine(path)):
        assert engine.stateful
        twice = [np.asarray(engine.invoke(sample)).reshape(-1) for _ in range(2)]
        np.testing.assert_array_equal(twice[0], twice[1])
        if engine.name == "litert":
            np.testing.assert_array_equal(twice[0], carried[0].reshape(-1))


def test_tflite_micro_runs_the_int8_lstm_as_litert_does(models, digits, tmp_path):
    from edgedl.convert import to_tflite
    from edgedl.runtime.engines import LiteRTEngine
    from edgedl.runtime.tflm import TFLMEngine

    path = tmp_path / "lstm.tflite"
    path.write_bytes(to_tflite(models["lstm"], "int8", digits["train"][:200], io_type="int8"))
    x = digits["test"][:100]
    litert, tflm = _scores(LiteRTEngine(path, kernels="reference"), x), _scores(TFLMEngine(path), x)
    assert np.mean(litert.argmax(-1) == tflm.argmax(-1)) >= 0.98
    # TFLite Micro's integer LSTM is its own code, not LiteRT's: the scores differ by a few int8 steps (4 here)
    assert np.max(np.abs(litert - tflm)) <= 8


def test_compile_checks_an_int8_lstm_within_a_point(models, digits, tmp_path, capsys):
    model_path, data = tmp_path / "lstm.keras", tmp_path / "digits.npz"
    models["lstm"].save(model_path)
    np.savez(data, x=digits["test"], y=digits["y_test"])
    out = tmp_path / "lstm.edgedl"
    code, _, err = run_cli(capsys, "compile", model_path, "-t", "x86_64", "--backend", "litert", "-q", "int8",
                           "--data", data, "-o", out)
    assert code == 0, err
    manifest = read_manifest(out)
    fidelity = manifest["fidelity"]
    assert fidelity["accuracy_drop"] <= 0.01, fidelity
    # the manifest says how the LSTM went into the .tflite
    assert [(r["kind"], r["form"]) for r in manifest["source"]["recurrent"]] == [("LSTM", "fused")]


@pytest.mark.skipif(not (shutil.which("arm-none-eabi-g++") and shutil.which("qemu-system-arm")),
                    reason="needs gcc-arm-none-eabi and qemu-system-arm (scripts/system-deps.sh)")
def test_the_int8_lstm_runs_as_cortex_m4_firmware_from_zero_state_each_sample(models, digits, tmp_path, capsys):
    model_path, data = tmp_path / "lstm.keras", tmp_path / "digits.npz"
    models["lstm"].save(model_path)
    np.savez(data, x=digits["test"], y=digits["y_test"])
    out = tmp_path / "lstm-m4.edgedl"
    code, _, err = run_cli(capsys, "compile", model_path, "-t", "cortex_m4", "--backend", "tflm", "-q", "int8",
                           "--data", data, "-o", out)
    assert code == 0, err
    assert read_manifest(out)["runtime"]["firmware"]["core"] == "cortex-m4"
    result = tmp_path / "run.json"
    code, _, err = run_cli(capsys, "bench", out, "--data", data, "--limit", 60, "-o", result)
    assert code == 0, err
    mcu = json.loads(result.read_text())["mcu"]
    # the firmware's outputs are TFLite Micro's on this host, sample by sample (each from zero state)
    assert mcu["fidelity"]["tflm_interpreter"]["identical_share"] == 1.0, mcu["fidelity"]
    assert mcu["fidelity"]["top1_agreement"] >= 0.98
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in {op["operator"] for op in mcu["operators"]}


def test_float_recurrent_models_convert_to_the_same_forms_and_compute_what_keras_does(models, digits, tmp_path):
    from edgedl.convert import to_tflite
    from edgedl.runtime.engines import LiteRTEngine

    for name, operator in (("lstm", "UNIDIRECTIONAL_SEQUENCE_LSTM"), ("gru", "FULLY_CONNECTED")):
        tflite = to_tflite(models[name], "none")
        assert operator in _ops(tflite) and "WHILE" not in _ops(tflite)
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(tflite)
        np.testing.assert_allclose(_scores(LiteRTEngine(path), digits["test"][:20]),
                                   models[name].predict(digits["test"][:20], verbose=0), atol=1e-5)
    # dynamic range quantization would leave a fused LSTM's weights in float32: it keeps Keras' while loop
    assert "WHILE" in _ops(to_tflite(models["lstm"], "dynamic"))


def test_the_unrolled_int8_gru_keeps_one_copy_of_each_kernel(models, digits):
    """edgedl.recurrent.unrolled_loop projects the input of all 8 steps at once and gives the steps'
    recurrent products no bias: the int8 file holds each kernel once, and a bias per step only for the
    candidate's recurrent bias (at that step's state scale). Keras' own unrolled loop gave each step
    two fully connected operators with a 3 x 32 int32 bias each, every one with a scale and a zero point
    per channel (the zoo GRU's int8 file: 2.5 times its float32 one)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgedl.convert import to_tflite

    tflite = to_tflite(models["gru"], "int8", digits["train"][:200], io_type="int8")
    interpreter = Interpreter(model_content=tflite)
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    fcs = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    # input (gates, candidate) for all steps; recurrent (gates, candidate) at steps 2-8 (the first starts
    # from zeros: folded away); the classifier
    assert len(fcs) == 2 + 2 * 7 + 1
    weights = {op["inputs"][1] for op in fcs}
    assert sorted(tuple(details[w]["shape"]) for w in weights) == [(10, 32), (32, 8), (32, 32), (64, 8), (64, 32)]
    biases = [details[op["inputs"][2]] for op in fcs if len(op["inputs"]) > 2 and op["inputs"][2] >= 0]
    assert sorted(tuple(b["shape"]) for b in biases) == [(10,)] + [(32,)] * 8 + [(64,)]
