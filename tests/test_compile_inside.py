"""``edgedl compile`` of a Keras model with ``--quant-report``, ``--keep-float`` and ``--int16``: the
per-layer error kept in the bundle (a listed, verified file and a summary in the manifest), and chosen
layers at another precision through :mod:`edgedl.optimize.selective`."""

import json
import math

import pytest

from cli_run import run_cli, the_error

LENET_LAYERS = {"conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "fc2", "probs"}  # models/lenet.py


def _dtype_of_layer(tflite, layer: str, op: str) -> str:
    """The dtype of the output of LAYER's operator OP in a .tflite."""
    from edgedl.bench.profile import keras_layer
    from edgedl.graph import read_tflite

    graph = read_tflite(tflite)
    ops = [o for o in graph.ops if o.name == op and keras_layer(graph.tensors[o.outputs[0]]["name"]) == layer]
    assert len(ops) == 1, [(o.name, graph.tensors[o.outputs[0]]["name"]) for o in graph.ops]
    return graph.tensors[ops[0].outputs[0]]["dtype"]


def test_quant_report_and_keep_float_go_into_a_verified_bundle(trained_lenet, tmp_path, capsys):
    from edgedl.bundle import open_bundle
    from edgedl.errors import InputFileError

    out = tmp_path / "lenet.edgedl"
    code, stdout, err = run_cli(capsys, "compile", trained_lenet["keras"], "-t", "x86_64", "-b", "litert", "-q", "int8",
                                "--quant-report", "--keep-float", "fc2", "--samples", 60, "--max-disagreement", 0.1,
                                "-o", out)
    assert code in (0, None), err
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} == {"model.tflite", "quant_report.json"}
    assert manifest["options"]["keep_float"] == ["fc2"] and manifest["options"]["quant_report"] is True

    quant = json.loads((out / "quant_report.json").read_text())
    assert quant["mode"] == "int8" and quant["samples"] == 60 and "preserve_all_tensors" in quant["method"]
    rows = quant["layers"]
    assert {r["layer"] for r in rows} == LENET_LAYERS
    snrs = [r["snr_db"] for r in rows if r["snr_db"] is not None]
    assert snrs == sorted(snrs) and all(math.isfinite(s) and s > 5 for s in snrs), rows  # worst first, not noise
    summary = manifest["quant_report"]
    assert summary["file"] == "quant_report.json" and summary["layers"] == len(rows) == 8
    assert summary["worst"] == [{"layer": r["layer"], "snr_db": r["snr_db"]} for r in rows[:3]]
    worst = rows[0]
    assert f"worst layers after quantization (SNR): {worst['layer']} {worst['snr_db']:.1f} dB" in stdout
    assert "precision: fc2 in float32, the rest int8" in stdout

    # fc2 runs in float32, its neighbours in int8: the AI Edge Quantizer's recipe, through to_tflite
    assert _dtype_of_layer(out / "model.tflite", "fc2", "FULLY_CONNECTED") == "float32"
    assert _dtype_of_layer(out / "model.tflite", "fc1", "FULLY_CONNECTED") == "int8"

    with open_bundle(out) as bundle:  # verified like the model
        assert json.loads(bundle.file("quant_report.json").read_text()) == quant
    (out / "quant_report.json").write_text(json.dumps({**quant, "samples": 1}))
    with pytest.raises(InputFileError, match="quant_report.json"):
        open_bundle(out)


def test_int16_puts_one_layer_in_int16x8(trained_lenet, tmp_path):
    from edgedl.compile import CompileOptions, compile_model

    bundle = compile_model(str(trained_lenet["keras"]), "x86_64", str(tmp_path / "b.edgedl"),
                           CompileOptions(backend="litert", quantize="int8", int16="conv1", num_samples=40,
                                                  max_disagreement=0.1))
    model = bundle.path / "model.tflite"
    assert _dtype_of_layer(model, "conv1", "CONV_2D") == "int16"
    assert _dtype_of_layer(model, "conv2", "CONV_2D") == "int8"
    assert bundle.manifest["options"]["int16"] == ["conv1"] and "quant_report" not in bundle.manifest
    assert [f["path"] for f in bundle.manifest.files] == ["model.tflite"]


@pytest.mark.parametrize("source, args, message", [
    ("keras", ["--quant-report"],
     "--quant-report compares float and integer activations: it needs -q int8 or int16x8, not no -q"),
    ("keras", ["-q", "float16", "--keep-float", "fc1"],
     "--keep-float and --int16 choose layers' precision in an integer model: give -q int8, not -q float16"),
    ("keras", ["-q", "int16x8", "--int16", "fc1"],
     "--int16 puts layers in int16x8 within an int8 model: use -q int8 (with -q int16x8 every layer is int16x8 "
     "already)"),
    ("keras", ["-q", "int8", "--keep-float", "fc1", "--int16", "fc1"],
     "layer(s) fc1 asked in float (--keep-float) and in int16 (--int16): give each once"),
    ("int8", ["--quant-report", "--keep-float", "fc1"],
     "--quant-report, --keep-float apply to Keras models, which edgedl converts and quantizes itself, not to "
     "lenet_int8.tflite: give the Keras model it was made from"),
    ("keras", ["-q", "int8", "--keep-float", "dense_9"],
     "--keep-float/--int16 dense_9: model 'lenet' has no layer 'dense_9'; its layers: "),
])
def test_inside_options_refused_in_one_line(trained_lenet, tmp_path, capsys, source, args, message):
    code, _, err = run_cli(capsys, "compile", trained_lenet[source], "-t", "x86_64", *args, "--samples", 20,
                           "-o", tmp_path / "x.edgedl")
    assert the_error(code, err).startswith(f"error: {message}")
    assert code == 2 and not (tmp_path / "x.edgedl").exists()


def test_compile_help_names_the_inside_options_briefly():
    from click.testing import CliRunner

    from edgedl.cli.main import cli

    text = CliRunner().invoke(cli, ["compile", "--help"]).output
    for option in ("--quant-report", "--keep-float LAYER", "--int16 LAYER"):
        assert option in text
    assert max(len(line) for line in text.splitlines()) <= 120


def test_a_keras_input_of_any_length_is_refused_in_one_line(tmp_path, capsys):
    import keras

    inputs = keras.Input((None, 8), name="frames")  # a time axis of any length: nothing converts it batch-1
    keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GRU(8)(inputs))).save(tmp_path / "free.keras")
    code, _, err = run_cli(capsys, "compile", tmp_path / "free.keras", "-t", "x86_64", "-q", "int8", "--quant-report",
                           "-o", tmp_path / "x.edgedl")
    assert the_error(code, err) == (f"error: {tmp_path / 'free.keras'}: its input 'frames' has the shape "
                                    "(None, None, 8); edgedl compiles fixed sizes: give every axis but the batch a "
                                    "size (keras.Input((steps, features)))")
