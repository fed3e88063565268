"""The embeddable runtime: loads bundles with hash checks, predicts floats, never imports TensorFlow."""

import json
import subprocess
import sys

import numpy as np
import pytest

from edgedl.errors import InputFileError, OptionError


@pytest.fixture(scope="module")
def bundles(trained_lenet, tmp_path_factory):
    from edgedl.compile import CompileOptions, compile_model

    d = tmp_path_factory.mktemp("rt")
    keras_path = trained_lenet["keras"]
    out = {}
    for backend in ("litert", "tvm"):
        out[backend] = d / f"{backend}.edgedl"
        compile_model(str(keras_path), "x86_64", str(out[backend]),
                      CompileOptions(backend=backend, quantize="int8", io_type="int8", num_samples=50))
    out["keras"] = keras_path
    return out


def test_importing_the_runtime_loads_no_tensorflow_or_keras(bundles):
    code = ("import sys, edgedl.runtime as rt; m = rt.load(sys.argv[1]); "
            "import numpy as np; m.predict(np.zeros(m.input_shape[1:], 'float32')); "
            "bad = [k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'keras', 'click')]; print(bad)")
    for backend in ("litert", "tvm"):
        proc = subprocess.run([sys.executable, "-c", code, str(bundles[backend])], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-1000:]
        assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("backend", ["litert", "tvm"])
def test_predict_takes_floats_and_matches_the_compile_time_check(bundles, backend):
    import edgedl.runtime as rt
    from edgedl.data import load_dataset

    model = rt.load(bundles[backend])
    assert model.inputs[0].dtype == "int8" and model.inputs[0].scale > 0
    data = load_dataset("digits")
    probs = model.predict(data.x_test[:50])
    assert probs.shape == (50, 10) and probs.dtype == np.float32
    accuracy = float(np.mean(probs.argmax(1) == data.y_test[:50]))
    assert accuracy > 0.8
    one = model.predict(data.x_test[0])  # a single sample works too
    np.testing.assert_array_equal(one[0], probs[0])


def test_raw_path_takes_prequantized_input(bundles):
    import edgedl.runtime as rt
    from edgedl.runtime.quant import quantize

    model = rt.load(bundles["litert"])
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    raw = model.predict_raw(quantize(x, model.inputs[0]))
    assert raw.dtype == np.int8 and raw.shape == (3, 10)
    with pytest.raises(OptionError, match="raw input has dtype float32; the model takes int8"):
        model.predict_raw(x)


def test_wrong_shape_is_named(bundles):
    import edgedl.runtime as rt

    model = rt.load(bundles["litert"])
    with pytest.raises(OptionError, match=r"input has shape \(2, 32, 32, 3\); the model takes \(N, 28, 28, 1\)"):
        model.predict(np.zeros((2, 32, 32, 3), np.float32))


def test_tampered_native_code_is_refused_before_loading(bundles, tmp_path):
    import shutil

    import edgedl.runtime as rt

    copy = tmp_path / "t.edgedl"
    shutil.copytree(bundles["tvm"], copy)
    with open(copy / "model.so", "ab") as f:
        f.write(b"\x90")
    with pytest.raises(InputFileError, match="'model.so' does not match its (sha256|size)"):
        rt.load(copy)


def test_a_bundle_for_another_cpu_is_refused(bundles, tmp_path):
    import shutil

    import edgedl.runtime as rt

    copy = tmp_path / "arm.edgedl"
    shutil.copytree(bundles["tvm"], copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["target"]["name"], m["target"]["cpu"]["arch"] = "rpi4", "aarch64"
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(OptionError, match="compiled for target 'rpi4' \\(aarch64\\) and cannot run here \\(rpi4 is aarch64, this machine is x86_64\\)"):
        rt.load(copy)
