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


@pytest.fixture(scope="module")
def outlier_mlp():
    """An MLP on scikit-learn's digits whose first hidden layer, ``hard``, is hard to quantize: the
    kernel rows of the pixels that are zero in every image (the top-left corner) are set to 200 times
    its largest weight. The function is unchanged (those rows only ever meet zeros), but one int8
    scale per output channel must now span the outlier, and the real weights fall into a few steps."""
    keras = pytest.importorskip("keras")
    from edgedl.data import load_dataset

    data = load_dataset("digits")
    keras.utils.set_random_seed(0)
    image = keras.Input((28, 28, 1), name="image")
    h = keras.layers.Flatten(name="flatten")(image)
    h = keras.layers.Dense(32, activation="relu", name="hard")(h)
    h = keras.layers.Dense(32, name="mid")(h)
    h = keras.layers.Dense(16, activation="relu", name="late")(h)
    model = keras.Model(image, keras.layers.Dense(10, activation="softmax", name="probs")(h), name="outlier")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=8, batch_size=64, verbose=0)
    flat = data.x_train.reshape(len(data.x_train), -1)
    zero = np.flatnonzero(flat.max(axis=0) == 0)
    assert len(zero) and data.x_test.reshape(len(data.x_test), -1)[:, zero].max() == 0
    kernel, bias = model.get_layer("hard").get_weights()
    kernel[zero] = 200 * np.abs(kernel).max()
    model.get_layer("hard").set_weights([kernel, bias])
    return model, data


def test_own_error_ranks_first_the_layer_whose_own_quantization_hurts(outlier_mlp):
    from edgedl.convert import to_tflite
    from edgedl.optimize.measure import tflite_accuracy
    from edgedl.optimize.quant_report import _output_layers, layer_errors
    from edgedl.optimize.selective import layer_sensitivity, quantize_layers

    model, data = outlier_mlp
    float_tflite, samples = to_tflite(model), [data.x_train[:200]]
    own = layer_sensitivity(model, float_tflite, "int8", samples, data.x_test)
    assert own["samples"] == 100 and "quantized alone" in own["method"]
    rows = own["layers"]
    assert [r["layer"] for r in rows][0] == "hard" and {r["layer"] for r in rows} == {"flatten", "hard", "mid", "late",
                                                                                       "probs"}
    assert rows[0]["snr_db"] < rows[1]["snr_db"] - 5  # by far the worst on its own

    # in the integer model the error made in `hard` reaches every layer after it: the accumulated SNR
    # cannot tell them apart, and the lowest is a later layer's
    whole = quantize_layers(model, float_tflite, "int8", samples)
    accumulated = {r["layer"]: r["snr_db"] for r in
                   layer_errors(float_tflite, whole, data.x_test, output_layers=_output_layers(model))["layers"]}
    assert all(accumulated[name] < accumulated["hard"] + 1 for name in ("mid", "late", "probs")), accumulated

    # keeping `hard` in float32 is what recovers the accuracy
    float_accuracy = tflite_accuracy(float_tflite, data.x_test, data.y_test)
    kept = quantize_layers(model, float_tflite, "int8", samples, keep_float=["hard"])
    assert tflite_accuracy(whole, data.x_test, data.y_test) < float_accuracy - 0.2
    assert tflite_accuracy(kept, data.x_test, data.y_test) > float_accuracy - 0.1


def test_max_drop_keeps_first_the_layer_hard_to_quantize_and_reports_its_ranking(outlier_mlp, tmp_path):
    from edgedl.optimize import OptimizeOptions, optimize

    model, _ = outlier_mlp
    report = optimize(model, OptimizeOptions(quantize="int8", max_drop=0.1, dataset="digits", out_dir=tmp_path),
                      progress=False)
    sel = report.selective
    assert sel["steps"][0]["kept_float"] == [] and sel["steps"][0]["drop"] > 0.1
    assert sel["steps"][0]["worst_layer"] == "hard" and sel["steps"][1]["kept_float"] == ["hard"]
    assert sel["met"] and sel["keep_float"] == ["hard"]
    ranking = sel["ranking"]
    assert ranking["by"] == "own error" and ranking["layers"][0]["layer"] == "hard"
    assert ranking["layers"][0]["snr_db"] == sel["steps"][0]["worst_snr_db"]
    assert all(r["accumulated_snr_db"] is not None for r in ranking["layers"] if r["layer"] != "flatten")
    assert "ranks the layers by their own error: each layer quantized alone" in sel["method"]
    assert "ranks the layers by their own error" in (tmp_path / "report.md").read_text()


def test_calibration_covers_every_activations_whole_range_over_the_samples(trained_lenet):
    """As the converter calibrates: not the quantizer's default moving average of each sample's min/max,
    which clips what only some samples reach (ResNet-8's logits lost 2.1 points of accuracy to it)."""
    from edgedl.convert import to_tflite
    from edgedl.data import load_dataset
    from edgedl.optimize.quant_report import _Run
    from edgedl.optimize.selective import quantize_layers

    model = trained_lenet["model"]
    x = load_dataset("digits", limit=64).x_train
    float_tflite = to_tflite(model)
    quantized = _Run(quantize_layers(model, float_tflite, "int8", [x]))
    details = {d["name"]: d for d in quantized.interpreter.get_tensor_details()}
    compared = [n for n in _Run(float_tflite).names & set(details)
                if details[n]["dtype"] == np.int8 and len(details[n]["quantization_parameters"]["scales"]) == 1
                and n != "serving_default_input:0"]
    assert any("fc2" in n for n in compared) and len(compared) >= 6, compared
    float_acts = _Run(float_tflite).activations([x], len(x), compared)
    for name in compared:
        scale, zero = details[name]["quantization"]
        low, high = (-128 - zero) * scale, (127 - zero) * scale
        assert low <= float_acts[name].min() + scale and float_acts[name].max() - scale <= high, (name, low, high)
