"""Models with several inputs through compile, the runtime and bench: every backend that can takes
them (fed by input name, whatever order a toolchain gives the inputs), a ``.npz`` with one array per
input is their data, and what cannot work is one error line.

The model is real: scikit-learn's 8x8 digits, the top half of each image one input and the bottom
half the other (same shape, so only their names tell them apart), trained here to about 95%.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgedl.bundle import read_manifest

from cli_run import run_cli, the_error  # tests/cli_run.py


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """A trained two-input Keras model (inputs 'top' and 'bottom', in that order) and the test digits
    as a .npz with one array per input and labels."""
    import keras
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(0)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    top, bottom = x[:, :32], x[:, 32:]
    a, b = keras.Input((32,), name="top"), keras.Input((32,), name="bottom")
    h = keras.layers.Concatenate()([keras.layers.Dense(32, activation="relu")(a),
                                    keras.layers.Dense(32, activation="relu")(b)])
    model = keras.Model([a, b], keras.layers.Dense(10, activation="softmax")(h), name="halves")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit([top[:1400], bottom[:1400]], y[:1400], epochs=40, batch_size=32, verbose=0)
    accuracy = model.evaluate([top[1400:], bottom[1400:]], y[1400:], verbose=0)[1]
    d = tmp_path_factory.mktemp("halves")
    model.save(d / "halves.keras")
    np.savez(d / "halves.npz", top=top[1400:], bottom=bottom[1400:], y=y[1400:])
    np.savez(d / "swapped.npz", top=bottom[1400:], bottom=top[1400:], y=y[1400:])
    np.savez(d / "one_missing.npz", top=top[1400:], y=y[1400:])
    return {"dir": d, "model": d / "halves.keras", "data": d / "halves.npz", "accuracy": accuracy,
            "keras": model, "top": top[1400:], "bottom": bottom[1400:], "y": y[1400:]}


def compile_cli(capsys, halves, out, *args, target="x86_64"):
    return run_cli(capsys, "compile", halves["model"], "--target", target, "-o", out, "--data", halves["data"], *args)


def test_the_model_is_trained(halves):
    assert halves["accuracy"] > 0.85


@pytest.mark.parametrize("backend,quantize,target", [
    ("litert", "none", "x86_64"), ("litert", "int8", "x86_64"), ("tflm", "int8", "cortex_m4"),
    ("onnxruntime", "none", "x86_64"), ("tvm", "int8", "x86_64")])
def test_compile_checks_a_two_input_model_on_its_data(halves, tmp_path, capsys, backend, quantize, target):
    out = tmp_path / f"{backend}.edgedl"
    code, _, err = compile_cli(capsys, halves, out, "--backend", backend, "-q", quantize, target=target)
    assert code == 0, err
    manifest = read_manifest(out)
    assert [s["shape"] for s in manifest["inputs"]] == [[1, 32], [1, 32]]
    fidelity = manifest["fidelity"]
    assert fidelity["samples"] == 100  # --samples, class-balanced from the file
    # fed by name: the halves swapped would score near chance, far below the bound
    assert fidelity["accuracy"] >= halves["accuracy"] - 0.05
    assert fidelity["accuracy_drop"] <= 0.05
    assert manifest["samples"]["file"]["kind"] == "npz archive"


def test_the_runtime_takes_a_list_or_a_dict_by_input_name(halves, tmp_path, capsys):
    import edgedl.runtime as rt

    out = tmp_path / "halves.edgedl"
    code, _, err = compile_cli(capsys, halves, out, "--backend", "litert", "-q", "int8")
    assert code == 0, err
    model = rt.load(out)
    top, bottom = halves["top"][:50], halves["bottom"][:50]
    by_keras = halves["keras"].predict([top, bottom], verbose=0).argmax(-1)
    assert np.mean(model.predict({"top": top, "bottom": bottom}).argmax(-1) == by_keras) >= 0.95
    in_order = [{"top": top, "bottom": bottom}[name] for name in model.input_names]
    assert np.array_equal(model.predict(in_order), model.predict({"bottom": bottom, "top": top}))


def test_a_two_input_tflite_and_onnx_compile_as_sources(halves, tmp_path, capsys):
    from edgedl.backends.onnxruntime import export_onnx
    from edgedl.convert import to_tflite

    tflite = tmp_path / "halves.tflite"
    tflite.write_bytes(to_tflite(halves["keras"], "int8", representative=[halves["top"], halves["bottom"]]))
    onnx = export_onnx(halves["keras"], tmp_path / "halves.onnx")
    for source, backend in ((tflite, "litert"), (onnx, "onnxruntime")):
        out = tmp_path / f"{source.suffix[1:]}.edgedl"
        code, _, err = run_cli(capsys, "compile", source, "--target", "x86_64", "-o", out, "--backend", backend,
                               "--data", halves["data"])
        assert code == 0, err
        assert read_manifest(out)["fidelity"]["accuracy"] >= halves["accuracy"] - 0.05


def test_data_for_a_two_input_model_names_each_input(halves, tmp_path, capsys):
    code, _, err = run_cli(capsys, "compile", halves["model"], "--target", "x86_64", "-o", tmp_path / "b.edgedl",
                           "--data", halves["dir"] / "one_missing.npz")
    line = the_error(code, err)
    assert "the model has 2 inputs" in line and "'top', 'bottom'" in line and "one_missing.npz" in line
    code, _, err = run_cli(capsys, "compile", halves["model"], "--target", "x86_64", "-o", tmp_path / "c.edgedl",
                           "--dataset", "digits")
    assert "gives one input per sample" in the_error(code, err)


def test_inputs_swapped_in_the_data_show_in_the_reference_accuracy(halves, tmp_path, capsys):
    """The wrong arrays under the inputs' names: the build still agrees with the reference (the check
    compares the two), and the reference's own accuracy on the data says the data is wrong."""
    out = tmp_path / "s.edgedl"
    code, _, err = run_cli(capsys, "compile", halves["model"], "--target", "x86_64", "-o", out,
                           "--backend", "litert", "--data", halves["dir"] / "swapped.npz")
    assert code == 0, err
    fidelity = read_manifest(out)["fidelity"]
    assert fidelity["top1_agreement"] == 1.0 and fidelity["reference_accuracy"] < 0.5


def test_vela_compiles_a_two_input_int8_model_for_the_npu(halves, tmp_path, capsys):
    out = tmp_path / "npu.edgedl"
    code, _, err = compile_cli(capsys, halves, out, "-q", "int8", target="ethos_u55_128")
    assert code == 0, err
    manifest = read_manifest(out)
    assert manifest["backend"] == "vela" and len(manifest["inputs"]) == 2
    assert manifest["fidelity"]["checked"] is False  # no NPU here: said, not pretended


def test_int8_calibration_feeds_each_input_by_name_whatever_order_the_converter_gives_them(tmp_path):
    """The TFLite calibrator feeds a list in the .tflite's own input order, which need not be the
    Keras model's: calibration samples go in by name."""
    import keras

    from edgedl import _inputs
    from edgedl.convert import to_tflite
    from edgedl.runtime.engines import LiteRTEngine
    from edgedl.runtime.quant import predict

    keras.utils.set_random_seed(1)
    small, large = keras.Input((4,), name="alpha"), keras.Input((8,), name="zeta")
    h = keras.layers.Concatenate()([keras.layers.Dense(6)(large), keras.layers.Dense(6)(small) * 3.0])
    model = keras.Model([small, large], keras.layers.Dense(3, activation="softmax")(h))
    rng = np.random.default_rng(0)
    x = [rng.random((64, 4), np.float32) * 10, rng.random((64, 8), np.float32)]
    path = tmp_path / "alpha_zeta.tflite"
    path.write_bytes(to_tflite(model, "int8", representative=x))
    engine = LiteRTEngine(path, kernels="reference")
    order = _inputs.order_for(["alpha", "zeta"], [(4,), (8,)], engine.inputs, path)
    error = np.abs(predict(engine, _inputs.reorder(x, order)) - model.predict(x, verbose=0)).max()
    assert error < 0.1  # calibrated on each input's own range (fed as a list, the converter fails outright)
