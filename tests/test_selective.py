"""Selective precision (``edgedl optimize -q int8 --keep-float LAYER --int16 LAYER --max-drop FRACTION``):
chosen Keras layers of an integer model left in float32 or put in int16x8 by Google's AI Edge
Quantizer, and the accuracy-aware mode that keeps the worst layers in float32 until the drop is met
(edgedl.optimize.selective)."""

import json

import numpy as np
import pytest

from cli_run import run_cli, the_error

pytest.importorskip("ai_edge_quantizer")


def _layer_ops(path) -> dict:
    """{Keras layer: [(op, dtypes it computes on)]} of a .tflite, QUANTIZE/DEQUANTIZE left out."""
    from edgedl.bench.profile import keras_layer
    from edgedl.graph import PASS_THROUGH, read_tflite

    graph = read_tflite(path)
    ops = {}
    for op in graph.ops:
        if op.name not in PASS_THROUGH:
            layer = keras_layer(graph.tensors[op.outputs[0]]["name"])
            ops.setdefault(layer, []).append((op.name, graph.activation_dtypes(op)))
    return ops


def test_keep_float_leaves_one_conv_layer_in_float32_and_the_rest_int8(trained_lenet, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "optimize", trained_lenet["keras"], "-q", "int8", "--keep-float", "conv1",
                                "--dataset", "digits", "--limit", 200, "-o", out)
    assert code in (0, None), err
    ops = _layer_ops(out / "model.tflite")
    assert ops["conv1"] == [("CONV_2D", {"float32"})]
    assert ops["conv2"] == [("CONV_2D", {"int8"})]
    assert ops["fc1"] == ops["fc2"] == ops["probs"] == [("FULLY_CONNECTED", {"int8"})]
    assert ops["pool1"] == ops["pool2"] == [("MAX_POOL_2D", {"int8"})]

    report = json.loads((out / "report.json").read_text())
    sel = report["selective"]
    assert sel["keep_float"] == ["conv1"] and sel["int16"] == [] and sel["max_drop"] is None and sel["met"]
    assert sel["library"].startswith("ai-edge-quantizer ")
    assert len(sel["steps"]) == 1 and sel["steps"][0]["kept_float"] == ["conv1"]
    stage = report["stages"][-1]
    assert stage["stage"] == "selective" and "conv1 in float32" in stage["description"]
    assert stage["accuracy"] == sel["steps"][0]["accuracy"] > 0.6  # measured on the test split, near float's
    assert abs(stage["accuracy"] - sel["float_accuracy"]) < 0.05
    assert stage["size_bytes"] == (out / "model.tflite").stat().st_size == sel["steps"][0]["size_bytes"]
    assert report["options"]["keep_float"] == ["conv1"]
    assert "## Selective precision" in (out / "report.md").read_text()
    assert "kept in float32: conv1; int16x8: none" in stdout


def test_int16_puts_a_layer_in_int16x8_beside_int8_and_float32_ones(trained_lenet):
    from edgedl.convert import to_tflite
    from edgedl.data import load_dataset
    from edgedl.optimize.measure import tflite_accuracy

    data = load_dataset("digits", limit=200)
    tflite = to_tflite(trained_lenet["model"], "int8", data.x_train, keep_float=["probs"], int16=["conv2"])
    path = trained_lenet["keras"].parent.parent / "mixed.tflite"
    path.write_bytes(tflite)
    ops = _layer_ops(path)
    assert ops["conv2"] == [("CONV_2D", {"int16"})]
    assert ops["conv1"] == [("CONV_2D", {"int8"})]
    assert ops["probs"] == [("FULLY_CONNECTED", {"float32"})]
    assert ops[None] == [("SOFTMAX", {"float32"})]  # the output layer's activation, float with it
    float_accuracy = tflite_accuracy(to_tflite(trained_lenet["model"]), data.x_test, data.y_test)
    assert abs(tflite_accuracy(tflite, data.x_test, data.y_test) - float_accuracy) < 0.05


def test_max_drop_keeps_the_worst_layers_in_float_until_met_and_reports_each_step(trained_lenet, capsys, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "optimize", trained_lenet["keras"], "-q", "int8", "--max-drop", 0,
                                "--dataset", "digits", "--limit", 200, "-o", out)
    assert code in (0, None), err
    report = json.loads((out / "report.json").read_text())
    sel = report["selective"]
    steps = sel["steps"]
    assert sel["max_drop"] == 0 and steps[0]["kept_float"] == []  # first everything quantized
    assert 1 <= len(steps) <= 9  # LeNet's layers with operators: it ends
    for before, after in zip(steps, steps[1:]):  # each step keeps the worst layer of the one before
        assert before["drop"] > 0 and before["worst_snr_db"] is not None
        assert after["kept_float"] == before["kept_float"] + [before["worst_layer"]]
    for step in steps:
        assert 0 < step["accuracy"] <= 1 and step["size_bytes"] > 0
        assert step["drop"] == pytest.approx(sel["float_accuracy"] - step["accuracy"], abs=1e-6)
    assert sel["met"] == (steps[-1]["drop"] <= 0)
    assert sel["keep_float"] == steps[-1]["kept_float"]
    assert report["stages"][-1]["accuracy"] == steps[-1]["accuracy"]
    assert f"step {len(steps) - 1}: float32 {', '.join(steps[-1]['kept_float']) or 'none'}:" in stdout
    markdown = (out / "report.md").read_text()
    assert "Accuracy-aware: at most 0.00 points below float32" in markdown
    assert f"| {len(steps) - 1} | {', '.join(steps[-1]['kept_float']) or 'none'} |" in markdown


@pytest.mark.parametrize("flag", ["--keep-float", "--int16"])
def test_an_unknown_layer_is_one_line_listing_the_models_layers(flag, trained_lenet, capsys, tmp_path):
    code, _, err = run_cli(capsys, "optimize", trained_lenet["keras"], "-q", "int8", flag, "conv9",
                           "--dataset", "digits", "-o", tmp_path / "out")
    line = the_error(code, err)
    assert f"{flag} conv9: model 'lenet' has no layer 'conv9'" in line
    assert "its layers: image, conv1, pool1, conv2, pool2, flatten, fc1, fc2, probs" in line
    assert not (tmp_path / "out").exists()


def test_a_layer_without_an_operator_of_its_own_is_named_with_those_that_have_one(trained_lenet):
    from edgedl.convert import to_tflite
    from edgedl.errors import OptionError

    x = np.random.default_rng(0).random((8, 28, 28, 1), np.float32)
    with pytest.raises(OptionError, match=r"layer 'image' has no operator of its own .*: conv1, pool1, conv2"):
        to_tflite(trained_lenet["model"], "int8", x, keep_float=["image"])
    with pytest.raises(OptionError, match="quantize int8, not 'float16'"):
        to_tflite(trained_lenet["model"], "float16", keep_float=["conv1"])


@pytest.mark.parametrize("kwargs, message", [
    ({"keep_float": ("conv1",), "prune": 0.5}, "give -q int8, not no -q"),
    ({"keep_float": ("conv1",), "quantize": "float16"}, "give -q int8, not -q float16"),
    ({"int16": ("conv1",), "quantize": "int16x8"}, "--int16 puts layers in int16x8 within an int8 model"),
    ({"max_drop": 2, "quantize": "int8"}, r"--max-drop must be a fraction of accuracy in \[0, 1\]"),
    ({"max_drop": 0.01, "quantize": "int8", "io_type": "uint8"}, "not supported: --io uint8"),
    ({"keep_float": ("fc1",), "int16": ("fc1",), "quantize": "int8"}, "fc1 asked in float"),
])
def test_options_that_do_not_go_together_are_refused_before_anything_slow(kwargs, message):
    from edgedl.errors import OptionError
    from edgedl.optimize import OptimizeOptions

    with pytest.raises(OptionError, match=message):
        OptimizeOptions(**kwargs).check()


def test_one_layer_name_is_taken_as_one_layer():
    from edgedl.optimize import OptimizeOptions

    options = OptimizeOptions(quantize="int8", keep_float="conv1").check()
    assert options.keep_float == ("conv1",) and options.selective
    assert not OptimizeOptions(quantize="int8").check().selective
