"""LiteRT: the bundle holds the .tflite byte for byte, records LiteRT's version and whether XNNPACK
runs it, and edgedl.runtime runs it with exactly the kernels the manifest names."""

import json

import numpy as np
import pytest

import edgedl.runtime as rt
from edgedl.compile import CompileOptions, compile_model

pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.slow

NUM_SAMPLES = 50


@pytest.fixture(scope="module", autouse=True)
def keras_ran_here(trained_lenet):
    """The shared Keras model run once in this process before anything compiles: without it, the
    first .tflite compiled after the shared fixture trained and converted dies in compile's forked
    LiteRT probe (the bug test_a_tflite_compiles_in_the_process_that_converted_it pins)."""
    trained_lenet["model"].predict(np.zeros((1, 28, 28, 1), np.float32), verbose=0)


@pytest.fixture(scope="module")
def digits():
    from edgedl.data import load_dataset

    return load_dataset("digits", limit=NUM_SAMPLES).x_test


def litert_outputs(path, x, resolver=None):
    """Raw int8 outputs of LiteRT's interpreter as shipped, with its default resolver or ``resolver``."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {} if resolver is None else {"experimental_op_resolver_type": getattr(OpResolverType, resolver)}
    interpreter = Interpreter(model_path=str(path), **kwargs)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    outputs = []
    for sample in x:
        interpreter.set_tensor(inp["index"], np.clip(np.round(sample / scale) + zero, -128, 127).astype(np.int8)[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"])[0])
    return np.stack(outputs)


def test_the_bundle_holds_the_tflite_byte_for_byte_and_records_litert_and_xnnpack(trained_lenet, tmp_path):
    import ai_edge_litert

    out = tmp_path / "l.edgedl"
    compile_model(str(trained_lenet["int8"]), "x86_64", str(out), CompileOptions(backend="litert", num_samples=20))
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "model.tflite").read_bytes() == trained_lenet["int8"].read_bytes()
    assert manifest["runtime"] == {"engine": "litert", "model": "model.tflite", "xnnpack": True}
    assert manifest["toolchain"]["ai-edge-litert"] == ai_edge_litert.__version__
    assert [(s["dtype"], s["shape"]) for s in manifest["inputs"]] == [("int8", [1, 28, 28, 1])]
    assert [(s["dtype"], s["shape"]) for s in manifest["outputs"]] == [("int8", [1, 10])]
    assert 0 < manifest["inputs"][0]["scale"] < 1  # the real quantization, for predict() to use


@pytest.mark.parametrize("xnnpack, resolver", [(True, None), (False, "BUILTIN_WITHOUT_DEFAULT_DELEGATES")])
def test_the_runtime_runs_the_kernels_the_manifest_names_bit_for_bit(trained_lenet, digits, tmp_path, xnnpack,
                                                                    resolver):
    out = tmp_path / "l.edgedl"
    compile_model(str(trained_lenet["int8"]), "x86_64", str(out),
                  CompileOptions(backend="litert", num_samples=20, backend_options={"xnnpack": xnnpack}))
    model = rt.load(out)
    assert model.manifest["runtime"]["xnnpack"] is xnnpack
    q = np.clip(np.round(digits / model.inputs[0].scale) + model.inputs[0].zero_point, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(model.predict_raw(q), litert_outputs(trained_lenet["int8"], digits, resolver))


def test_a_float_model_runs_as_keras_computes_it(trained_lenet, digits, tmp_path):
    out = tmp_path / "f.edgedl"
    compile_model(str(trained_lenet["keras"]), "x86_64", str(out), CompileOptions(backend="litert", num_samples=20))
    model = rt.load(out)
    assert model.inputs[0].dtype == "float32" and model.outputs[0].dtype == "float32"
    expected = trained_lenet["model"].predict(digits, verbose=0)
    np.testing.assert_allclose(model.predict(digits), expected, atol=1e-5)


FRESH_PROCESS = """
import sys, tempfile
from pathlib import Path
from edgedl.compile import CompileOptions, compile_model
from edgedl.convert import to_tflite
from edgedl.data import load_dataset
from edgedl.modelio import load_model

folder = Path(tempfile.mkdtemp(dir=sys.argv[1]))
tflite = folder / "lenet_int8.tflite"
model = load_model(sys.argv[2])  # trained: an untrained LeNet predicts one class, which the check refuses
tflite.write_bytes(to_tflite(model, "int8", load_dataset("digits").x_train[:64], io_type="int8"))
compile_model(str(tflite), "x86_64", str(folder / "l.edgedl"), CompileOptions(backend="litert", num_samples=20))
print("compiled")
"""


def test_a_tflite_compiles_in_the_process_that_converted_it(trained_lenet, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path), str(trained_lenet["keras"])],
                          capture_output=True, text=True, timeout=600)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    # LiteRT forked from a process that had run TensorFlow's int8 converter died of SIGSEGV on this
    # valid model; LiteRT's isolated steps now get a fresh interpreter once TensorFlow is loaded.
    assert proc.returncode == 0 and "compiled" in proc.stdout, last
