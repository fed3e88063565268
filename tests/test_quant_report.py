"""``edgedl optimize --quant-report``: per-layer quantization error of the integer model, mapped to
Keras layer names, worst first, in report.json, report.md and a plot (edgedl.optimize.quant_report)."""

import json
import math

import pytest

from cli_run import run_cli, the_error

LENET_LAYERS = {"conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "fc2", "probs"}  # models/lenet.py
PNG = b"\x89PNG\r\n\x1a\n"


def test_int8_quant_report_names_lenets_layers_worst_first_with_a_plot(trained_lenet, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "optimize", trained_lenet["keras"], "-q", "int8", "--quant-report",
                                "--dataset", "digits", "--limit", 200, "--epochs", 1, "-o", out)
    assert code in (0, None), err
    report = json.loads((out / "report.json").read_text())
    quant = report["quant_report"]
    assert quant["mode"] == "int8" and "experimental_preserve_all_tensors" in quant["method"]
    assert 50 <= quant["samples"] <= 100
    rows = quant["layers"]
    assert {r["layer"] for r in rows} == LENET_LAYERS  # one row per Keras layer, the output layer included
    by_layer = {r["layer"]: r for r in rows}
    assert "conv1" in by_layer["conv1"]["tensor"] and by_layer["conv1"]["op"] == "CONV_2D"
    assert by_layer["fc1"]["op"] == "FULLY_CONNECTED" and by_layer["probs"]["op"] == "SOFTMAX"
    snrs = [r["snr_db"] for r in rows]
    assert all(math.isfinite(s) and s > 10 for s in snrs), snrs  # int8 LeNet: tens of dB, not noise
    assert snrs == sorted(snrs)  # worst first
    assert all(0.99 < r["cosine"] <= 1.0 + 1e-9 and 0 < r["rmse_rel"] < 0.1 for r in rows), rows

    assert (out / "quant_error.png").read_bytes()[:8] == PNG
    assert report["files"]["quant_plot"] == str(out / "quant_error.png")
    markdown = (out / "report.md").read_text()
    assert "## Per-layer quantization error" in markdown and "](quant_error.png)" in markdown
    worst = rows[0]
    assert f"| {worst['layer']} | {worst['op']} | {worst['snr_db']:.1f} |" in markdown
    assert f"worst layers after quantization (SNR): {worst['layer']} {worst['snr_db']:.1f} dB" in stdout

    # the same folder, a run without the report: its plot goes with it
    code, _, err = run_cli(capsys, "optimize", trained_lenet["keras"], "-q", "float16", "--dataset", "digits",
                           "--limit", 64, "-o", out)
    assert code in (0, None), err
    assert not (out / "quant_error.png").exists()
    assert json.loads((out / "report.json").read_text())["quant_report"] is None
    assert "quantization error" not in (out / "report.md").read_text()


def test_int16x8_quant_report_reads_names_even_when_the_tflite_strips_them(trained_lenet):
    from edgedl.optimize import OptimizeOptions, optimize

    report = optimize(trained_lenet["model"], OptimizeOptions(quantize="int16x8", quant_report=True, strip_names=True,
                                                              dataset="digits", limit=128), progress=False)
    quant = report.quant_report
    assert quant["mode"] == "int16x8" and quant["samples"] > 0
    assert {r["layer"] for r in quant["layers"]} == LENET_LAYERS
    assert all(r["snr_db"] > 10 for r in quant["layers"])
    assert report.to_dict()["options"]["quant_report"] is True


@pytest.mark.parametrize("args, received", [(["-q", "float16"], "-q float16"), (["--prune", "0.5"], "no -q")])
def test_quant_report_without_integer_quantization_is_a_one_line_error(tmp_path, capsys, args, received):
    code, _, err = run_cli(capsys, "optimize", tmp_path / "lenet.keras", *args, "--quant-report", "-o", tmp_path / "out")
    assert the_error(code, err) == ("error: --quant-report compares float and integer activations: it needs -q int8 "
                                    f"or int16x8 (or --qat), not {received}")


def test_quant_report_with_strip_names_measures_the_selective_model_that_ships(trained_lenet):
    from edgedl.optimize import OptimizeOptions, optimize

    report = optimize(trained_lenet["model"], OptimizeOptions(
        quantize="int8", keep_float=("conv1",), quant_report=True, strip_names=True, dataset="digits", limit=128),
        progress=False)
    quant = report.quant_report
    assert quant["model"] == "int8 by the AI Edge Quantizer, conv1 in float32"
    by_layer = {r["layer"]: r for r in quant["layers"]}
    assert set(by_layer) == LENET_LAYERS
    conv1 = by_layer["conv1"]  # float32 in the written model, fed the float input: no error at all
    assert conv1["rmse_rel"] == 0 and conv1["snr_db"] is None and quant["layers"][-1] is conv1
    assert all(10 < r["snr_db"] < 80 for r in quant["layers"][:-1])  # the int8 layers after it do err

    plain = optimize(trained_lenet["model"], OptimizeOptions(quantize="int8", quant_report=True, strip_names=True,
                                                             dataset="digits", limit=128), progress=False).quant_report
    assert plain["model"] == "int8 by the TensorFlow Lite converter"
    assert next(r for r in plain["layers"] if r["layer"] == "conv1")["snr_db"] > 10  # int8 there: it errs
