"""ONNX Runtime: Keras exported to ONNX with batch 1, .onnx compiled into a bundle and run against its
reference, a .tflite converted with tf2onnx, and the engine's sessions."""

import numpy as np
import pytest

from edgedl.backends import get_backend
from edgedl.compile import CompileOptions, compile_model
from edgedl.errors import InputFileError
from edgedl.targets import load_target

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


def needs_tf2onnx():
    # Keras' ONNX export under TensorFlow and the .tflite -> ONNX conversion both run tf2onnx.
    pytest.importorskip("tf2onnx", reason="tf2onnx converts Keras and .tflite models to ONNX")


@pytest.fixture(scope="module")
def dense_onnx(tmp_path_factory):
    """A hand-built float model y = softmax(relu(x W + b)) with a dynamic batch: no converter involved."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 4)).astype(np.float32)
    b = rng.normal(size=(4,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Softmax", ["r"], ["y"], axis=-1)],
        "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("dense") / "dense.onnx"
    onnx.save(model, str(path))

    def expected(x):
        z = np.maximum(x @ w + b, 0)
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    return path, expected


@pytest.fixture(scope="module")
def lenet(trained_lenet, tmp_path_factory):
    """The shared trained LeNet (model, .keras, int8 .tflite), and a folder of this module's own."""
    return dict(trained_lenet, dir=tmp_path_factory.mktemp("lenet"))


@pytest.fixture(scope="module")
def lenet_onnx(lenet):
    needs_tf2onnx()
    from edgedl.backends.onnxruntime import export_onnx

    return export_onnx(lenet["model"], lenet["dir"] / "lenet.onnx")


def test_the_engine_runs_a_session_with_the_threads_asked(dense_onnx):
    from edgedl.runtime.onnx import ONNXRuntimeEngine

    path, expected = dense_onnx
    engine = ONNXRuntimeEngine(path, num_threads=2)
    assert engine.session.get_session_options().intra_op_num_threads == 2
    assert engine.session.get_providers() == ["CPUExecutionProvider"]
    assert [s.to_dict() for s in engine.inputs] == [
        {"name": "x", "shape": [1, 6], "dtype": "float32", "scale": 0.0, "zero_point": 0}]  # batch fixed to 1
    x = np.random.default_rng(1).random((1, 6), dtype=np.float32)
    np.testing.assert_allclose(engine.invoke(x), expected(x), atol=1e-6)


def test_onnx_reference_runs_whole_batches(dense_onnx):
    from edgedl.backends.onnxruntime import onnx_reference

    path, expected = dense_onnx
    reference, shapes, names = onnx_reference(path)
    x = np.random.default_rng(2).random((300, 6), dtype=np.float32)
    assert shapes == [(6,)] and names == ["x"]
    np.testing.assert_allclose(reference(x)[0], expected(x), atol=1e-6)


def test_an_onnx_file_compiles_into_a_bundle_with_opset_and_versions(dense_onnx, tmp_path):
    import onnxruntime

    path, _ = dense_onnx
    backend = get_backend("onnxruntime")
    compiled = backend.compile(path, load_target("x86_64"), tmp_path, {})
    assert compiled.files == ["model.onnx"] and (tmp_path / "model.onnx").read_bytes() == path.read_bytes()
    assert compiled.options == {"opset": 17, "source": "given"}
    assert compiled.toolchain["onnxruntime"] == onnxruntime.__version__
    assert compiled.estimates["op_counts"] == {"Gemm": 1, "Relu": 1, "Softmax": 1}
    assert backend.unsupported_ops(None, load_target("x86_64")) == {}
    assert backend.runs_here(load_target("x86_64")) == (True, "")


def test_an_onnx_file_compiles_with_tvm_and_runs_from_its_bundle(dense_onnx, tmp_path):
    """ONNX through TVM's Relax frontend: batch fixed to 1, the library loads and matches the math."""
    pytest.importorskip("tvm")
    from edgedl.runtime import load

    path, expected = dense_onnx
    r = compile_model(str(path), "x86_64", str(tmp_path / "tvm.edgedl"), CompileOptions(backend="tvm", num_samples=20))
    m = r.manifest
    assert m["backend"] == "tvm" and m["source"]["kind"] == "onnx" and m["runtime"]["library"] == "model.so"
    assert m["inputs"][0]["shape"] == [1, 6] and m["outputs"][0]["shape"] == [1, 4]
    assert m["fidelity"]["top1_agreement"] == 1.0 and m["fidelity"]["max_abs_error"] < 1e-5
    x = np.random.default_rng(3).random((16, 6), dtype=np.float32)
    np.testing.assert_allclose(load(r.path).predict(x), expected(x), atol=1e-5)


def test_auto_measures_both_onnx_backends_and_keeps_the_faster(dense_onnx, tmp_path):
    pytest.importorskip("tvm")
    path, _ = dense_onnx
    m = compile_model(str(path), "x86_64", str(tmp_path / "auto.edgedl"), CompileOptions(num_samples=20)).manifest
    candidates = {c["backend"]: c for c in m["selection"]["candidates"]}
    assert set(candidates) == {"onnxruntime", "tvm"} and all(c["ok"] for c in candidates.values())
    assert m["backend"] == min(candidates, key=lambda b: candidates[b]["p50_us"])


def test_a_model_onnx_runtime_cannot_load_is_an_input_file_error(tmp_path):
    from edgedl.backends.onnxruntime import onnx_reference

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(InputFileError, match="ONNX Runtime cannot load it"):
        onnx_reference(bad)


def test_keras_exports_with_batch_one_and_matches_keras(lenet, lenet_onnx):
    from edgedl.backends.onnxruntime import onnx_reference
    from edgedl.data import load_dataset
    from edgedl.keras_utils import predict

    proto = onnx.load(str(lenet_onnx))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 28, 28, 1]
    reference, shapes, _ = onnx_reference(lenet_onnx)
    x = load_dataset("digits").x_test[:64]
    assert shapes == [(28, 28, 1)]
    error = np.abs(reference(x)[0] - predict(lenet["model"], x)).max()
    assert error < 1e-4  # measured: below 1e-6


def test_keras_through_the_pipeline_matches_the_keras_reference(lenet, tmp_path):
    needs_tf2onnx()
    r = compile_model(str(lenet["keras"]), "x86_64", str(tmp_path / "k.edgedl"),
                      CompileOptions(backend="onnxruntime", num_samples=60))
    m = r.manifest
    assert m["backend"] == "onnxruntime" and m["options"]["backend_specific"]["source"] == "tflite via tf2onnx"
    assert m["fidelity"]["top1_agreement"] == 1.0 and m["fidelity"]["max_abs_error"] < 1e-4
    assert "tf2onnx" in m["toolchain"] and m["estimates"]["opset"] == 17


def test_an_onnx_source_compiles_for_onnx_runtime_and_matches_its_reference_exactly(lenet_onnx, tmp_path):
    r = compile_model(str(lenet_onnx), "x86_64", str(tmp_path / "o.edgedl"),
                      CompileOptions(backend="onnxruntime", dataset="digits", num_samples=60))
    m = r.manifest
    assert m["source"]["kind"] == "onnx" and m["runtime"] == {"engine": "onnxruntime", "model": "model.onnx",
                                                               "device": "cpu"}
    assert m["fidelity"]["top1_agreement"] == 1.0 and m["fidelity"]["max_abs_error"] < 1e-6  # same model, same runtime


def test_an_int8_tflite_converts_and_stays_close_to_litert(lenet, tmp_path):
    """Measured on LeNet int8 over the 359 digits test samples, three training seeds: about 96% of the
    int8 outputs equal LiteRT's, the rest are 1 to 5 steps away (the same pattern as XNNPACK), and
    the top-1 class never changes."""
    needs_tf2onnx()
    from edgedl.backends.onnxruntime import onnx_reference
    from edgedl.data import load_dataset
    from edgedl.runtime.engines import LiteRTEngine
    from edgedl.runtime.quant import quantize

    backend = get_backend("onnxruntime")
    compiled = backend.compile(lenet["int8"], load_target("x86_64"), tmp_path, {})
    engine = backend.load(compiled, num_threads=1)
    litert = LiteRTEngine(lenet["int8"], xnnpack=False)
    assert [(s.dtype, s.scale, s.zero_point) for s in engine.inputs] == [
        (s.dtype, s.scale, s.zero_point) for s in litert.inputs]  # the .tflite's quantization carries over
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(compiled.estimates["op_counts"])
    raw = [quantize(s[None], engine.inputs[0]) for s in load_dataset("digits").x_test]
    y = np.stack([engine.invoke(r) for r in raw]).astype(int)
    y_litert = np.stack([litert.invoke(r) for r in raw]).astype(int)
    off = np.abs(y - y_litert)
    assert off.max() <= 8 and np.mean(off == 0) > 0.9
    assert np.mean(y.argmax(-1) == y_litert.argmax(-1)) == 1.0
    with pytest.raises(InputFileError, match="float-input model"):
        onnx_reference(tmp_path / "model.onnx")  # int8 input: no float reference


def test_without_tf2onnx_a_tflite_is_refused_with_the_way_out(lenet, tmp_path, monkeypatch):
    import sys

    from edgedl.errors import UnsupportedOperatorError

    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
    with pytest.raises(UnsupportedOperatorError, match=r"onnxruntime compiles .onnx models; converting this .tflite "
                                                       r"needs tf2onnx \(pip install tf2onnx\), or export the Keras "
                                                       r"model with edgedl.backends.onnxruntime.export_onnx"):
        get_backend("onnxruntime").compile(lenet["int8"], load_target("x86_64"), tmp_path, {})
