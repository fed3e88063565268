"""Models with several inputs (and outputs) through the runtime and the bench: every engine takes a
list of raw tensors in the order of its inputs, ``predict`` a list of float arrays, ``Model.predict``
a list or a dict by input name; the bench times and scores such bundles.

The models are made here: small Keras models with two inputs converted by TFLite's converter (float,
and int8 calibrated on [a, b] pairs), and ONNX graphs written with ``onnx.helper``.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgedl.errors import BackendError, OptionError

A, B = 8, 4  # the two inputs' widths


def _keras_two_inputs(same_shape: bool = False, two_outputs: bool = False):
    """Inputs ``a`` (8,) and ``b`` (4,) (both (4,) with ``same_shape``), Dense layers, a Concatenate and a
    3-class softmax; with ``two_outputs`` also a 2-unit linear head."""
    import keras

    keras.utils.set_random_seed(0)
    a = keras.Input((B if same_shape else A,), name="a")
    b = keras.Input((B,), name="b")
    h = keras.layers.Concatenate()([keras.layers.Dense(6, activation="relu")(a),
                                    keras.layers.Dense(6, activation="relu")(b)])
    out = keras.layers.Dense(3, activation="softmax", name="classes")(h)
    if two_outputs:
        return keras.Model([a, b], [out, keras.layers.Dense(2, name="scores")(h)])
    return keras.Model([a, b], out)


def _samples(n: int, same_shape: bool = False, seed: int = 1):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (n, B if same_shape else A)).astype(np.float32),
            rng.uniform(-1, 1, (n, B)).astype(np.float32))


def _convert(model, int8: bool = False, same_shape: bool = False) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        xa, xb = _samples(64, same_shape, seed=2)

        def representative():  # by name: a list would go in TFLite's input order ('b' first), not Keras's
            for i in range(len(xa)):
                yield {"a": xa[i:i + 1], "b": xb[i:i + 1]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """The Keras models and their ``.tflite`` files: float, int8, same-shape inputs, two outputs."""
    pytest.importorskip("tensorflow")
    d = tmp_path_factory.mktemp("two_inputs")
    two, same, heads = _keras_two_inputs(), _keras_two_inputs(same_shape=True), _keras_two_inputs(two_outputs=True)
    files = {"float": (two, False, False), "int8": (two, True, False), "same": (same, False, True),
             "heads": (heads, False, False)}
    out = {"keras": two, "keras_same": same, "keras_heads": heads}
    for name, (model, int8, same_shape) in files.items():
        path = d / f"{name}.tflite"
        path.write_bytes(_convert(model, int8, same_shape))
        out[name] = path
    return out


def _engines(path):
    from edgedl.runtime.engines import LiteRTEngine
    from edgedl.runtime.tflm import TFLMEngine

    return [LiteRTEngine(path), LiteRTEngine(path, kernels="reference"), TFLMEngine(path)]


def _by_name(engine, arrays: dict) -> list:
    """The arrays in the order of the engine's inputs (TFLite's order need not be Keras's)."""
    from edgedl.runtime import short_name

    return [arrays[short_name(s.name)] for s in engine.inputs]


def test_every_tflite_engine_takes_a_list_of_inputs_and_computes_what_keras_does(models):
    from edgedl.runtime.quant import predict

    xa, xb = _samples(16)
    want = models["keras"].predict([xa, xb], verbose=0)
    for engine in _engines(models["float"]):
        assert [s.shape for s in engine.inputs] == [(1, B), (1, A)]  # TFLite put 'b' first: order by name
        got = predict(engine, _by_name(engine, {"a": xa, "b": xb}))
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=engine.name)
        raw = engine.invoke(_by_name(engine, {"a": xa[:1], "b": xb[:1]}))
        np.testing.assert_allclose(raw, want[:1], atol=1e-5)
        assert len(engine.invoke_all(tuple(_by_name(engine, {"a": xa[:1], "b": xb[:1]})))) == 1


def test_inputs_given_in_the_wrong_order_or_number_are_refused_by_name(models):
    xa, xb = _samples(1)
    for engine in _engines(models["float"]):
        first, second = (s.name for s in engine.inputs)
        with pytest.raises(BackendError, match=rf"input '{first}' has shape \(1, {A}\), the model takes \(1, {B}\)"):
            engine.invoke([xa, xb])  # Keras's order; the engine's first input is 'b'
        with pytest.raises(BackendError, match=rf"the model takes 2 inputs \('{first}', '{second}'\), got 1"):
            engine.invoke(xb)
        with pytest.raises(BackendError, match=r"the model takes 2 inputs .*, got 3"):
            engine.invoke([xb, xa, xa])
        with pytest.raises(BackendError, match=rf"input '{second}' has dtype float64, the model takes float32"):
            engine.invoke([xb, xa.astype(np.float64)])


def test_inputs_of_the_same_shape_swapped_give_another_result(models):
    """Same shapes cannot be told apart: the order of ``inputs`` is what decides, so it must be kept."""
    from edgedl.runtime.quant import predict

    xa, xb = _samples(8, same_shape=True)
    want = models["keras_same"].predict([xa, xb], verbose=0)
    for engine in _engines(models["same"]):
        right = predict(engine, _by_name(engine, {"a": xa, "b": xb}))
        swapped = predict(engine, _by_name(engine, {"a": xb, "b": xa}))
        np.testing.assert_allclose(right, want, atol=1e-5)
        assert np.abs(swapped - want).max() > 1e-2


def test_int8_inputs_are_each_quantized_with_their_own_spec(models):
    from edgedl.runtime.quant import predict, quantize_inputs

    xa, xb = _samples(32)
    want = models["keras"].predict([xa, xb], verbose=0)
    for engine in _engines(models["int8"]):
        specs = engine.inputs
        assert [s.dtype for s in specs] == ["int8", "int8"] and specs[0].scale != specs[1].scale
        arrays = _by_name(engine, {"a": xa, "b": xb})
        quantized = quantize_inputs(arrays, specs)
        for q, x, s in zip(quantized, arrays, specs):
            assert q.dtype == np.int8 and q.shape == x.shape
            assert np.abs((q.astype(np.float32) - s.zero_point) * s.scale - x).max() <= s.scale / 2 + 1e-6
        got = predict(engine, arrays)
        assert np.abs(got - want).max() < 0.05, engine.name  # a few steps of 1/256 on the softmax
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
    with pytest.raises(BackendError, match=r"different numbers of samples \('serving_default_b:0': 32, "
                                           r"'serving_default_a:0': 5\)"):
        quantize_inputs([xb, xa[:5]], specs)


def test_every_output_of_a_model_with_two_inputs_and_two_outputs(models):
    from edgedl.runtime.quant import predict_outputs

    xa, xb = _samples(8)
    want = models["keras_heads"].predict([xa, xb], verbose=0)
    for engine in _engines(models["heads"]):
        got = predict_outputs(engine, _by_name(engine, {"a": xa, "b": xb}))
        by_shape = {g.shape[-1]: g for g in got}  # TFLite's output order need not be Keras's either
        assert sorted(by_shape) == [2, 3]
        for w in want:
            np.testing.assert_allclose(by_shape[w.shape[-1]], w, atol=1e-5)


@pytest.fixture(scope="module")
def onnx_two_inputs(tmp_path_factory):
    """z = (x + y) W with x, y (N, 4), and s = x W + v with v (N, 3): an Add, MatMuls, two outputs."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["z"]),
         helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "v"], ["s"])],
        "two_inputs",
        [helper.make_tensor_value_info("x", f, ["N", 4]), helper.make_tensor_value_info("y", f, ["N", 4]),
         helper.make_tensor_value_info("v", f, ["N", 3])],
        [helper.make_tensor_value_info("z", f, ["N", 3]), helper.make_tensor_value_info("s", f, ["N", 3])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "two_inputs.onnx"
    onnx.save(model, str(path))
    return path, w


def test_onnx_runtime_feeds_each_input_by_its_name(onnx_two_inputs):
    from edgedl.runtime.onnx import ONNXRuntimeEngine
    from edgedl.runtime.quant import predict_outputs

    path, w = onnx_two_inputs
    engine = ONNXRuntimeEngine(path)
    assert [(s.name, s.shape) for s in engine.inputs] == [("x", (1, 4)), ("y", (1, 4)), ("v", (1, 3))]
    rng = np.random.default_rng(3)
    x, y, v = (rng.normal(size=(5, n)).astype(np.float32) for n in (4, 4, 3))
    z, s = predict_outputs(engine, [x, y, v])
    np.testing.assert_allclose(z, (x + y) @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s, x @ w + v, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(engine.invoke([x[:1], y[:1], v[:1]]), (x[:1] + y[:1]) @ w, rtol=1e-5, atol=1e-5)
    swapped = predict_outputs(engine, [y, x, v])[1]  # x and y have one shape: only the order tells them apart
    assert np.abs(swapped - s).max() > 1e-2
    with pytest.raises(BackendError, match=r"input 'y' has shape \(1, 3\), the model takes \(1, 4\)"):
        engine.invoke([x[:1], v[:1], y[:1]])
    with pytest.raises(BackendError, match=r"the model takes 3 inputs \('x', 'y', 'v'\), got 1"):
        engine.invoke(x[:1])


# -- bundles: Model.predict with a list or a dict, and the bench ----------------------------------------------


def _bundle(tmp_path, tflite, engine: str = "litert", name: str = "two.edgedl"):
    """A bundle written by hand around a ``.tflite`` (the specs read by the engine itself)."""
    import shutil

    from edgedl.bundle import write_bundle
    from edgedl.runtime.engines import LiteRTEngine

    files = tmp_path / f"files_{name}"
    files.mkdir()
    shutil.copy(tflite, files / "model.tflite")
    specs = LiteRTEngine(tflite)
    runtime = {"engine": engine, "model": "model.tflite"}
    if engine == "tflm":
        runtime["arena_size"] = 64 * 1024
    manifest = {"backend": engine, "target": {"name": "host", "cpu": {}}, "runtime": runtime,
                "inputs": [s.to_dict() for s in specs.inputs], "outputs": [s.to_dict() for s in specs.outputs],
                "files": ["model.tflite"]}
    write_bundle(tmp_path / name, manifest, files)
    return tmp_path / name


def test_model_predict_takes_a_list_in_input_order_or_a_dict_by_name(models, tmp_path):
    import edgedl.runtime as rt

    xa, xb = _samples(6)
    want = models["keras"].predict([xa, xb], verbose=0)
    for engine in ("litert", "tflm"):
        model = rt.load(_bundle(tmp_path, models["float"], engine, f"{engine}.edgedl"))
        assert model.input_names == ["b", "a"]
        np.testing.assert_allclose(model.predict({"a": xa, "b": xb}), want, atol=1e-5)
        np.testing.assert_allclose(model.predict({"serving_default_a:0": xa, "b": xb}), want, atol=1e-5)
        np.testing.assert_allclose(model.predict([xb, xa]), want, atol=1e-5)
        np.testing.assert_allclose(model.predict((xb[0], xa[0])), want[:1], atol=1e-5)  # one sample, no batch axis
        np.testing.assert_allclose(model.predict({"a": xa[2], "b": xb[2]}), want[2:3], atol=1e-5)
        with pytest.raises(OptionError, match=r"the model has no input named 'c'; its inputs: 'b', 'a'"):
            model.predict({"a": xa, "b": xb, "c": xb})
        with pytest.raises(OptionError, match=r"no array for input 'a'; the model's inputs: 'b', 'a'"):
            model.predict({"b": xb})
        with pytest.raises(OptionError, match=r"input 'b' has shape \(6, 8\); the model takes \(N, 4\) or one "
                                              r"sample of shape \(4,\)"):
            model.predict([xa, xb])
        with pytest.raises(OptionError, match=r"the model takes 2 inputs \('b', 'a'\), got one array; give a list"):
            model.predict(xa)
        with pytest.raises(OptionError, match=r"the model takes 2 inputs \('b', 'a'\), got 3 arrays"):
            model.predict([xb, xa, xa])
        with pytest.raises(OptionError, match=r"different numbers of samples \('b': 6, 'a': 2\)"):
            model.predict({"a": xa[:2], "b": xb})
        with pytest.raises(OptionError, match=r"input 'a' is given twice"):
            model.predict({"a": xa, "serving_default_a:0": xa, "b": xb})


def test_model_predict_raw_and_several_outputs(models, tmp_path):
    import edgedl.runtime as rt
    from edgedl.runtime.quant import quantize

    xa, xb = _samples(8)
    model = rt.load(_bundle(tmp_path, models["int8"], "tflm"))
    want = models["keras"].predict([xa, xb], verbose=0)
    got = model.predict({"a": xa, "b": xb})
    assert np.abs(got - want).max() < 0.05
    (sb, sa) = model.inputs
    raw = model.predict_raw({"a": quantize(xa, sa), "b": quantize(xb, sb)})
    assert raw.dtype == np.int8 and raw.shape == (8, 3)
    np.testing.assert_allclose((raw.astype(np.float32) - model.outputs[0].zero_point) * model.outputs[0].scale, got)
    with pytest.raises(OptionError, match=r"raw input 'a' has dtype float32; the model takes int8"):
        model.predict_raw({"a": xa, "b": quantize(xb, sb)})

    heads = rt.load(_bundle(tmp_path, models["heads"], "litert", "heads.edgedl"))
    outs = heads.predict({"a": xa, "b": xb})
    assert isinstance(outs, list) and sorted(o.shape for o in outs) == [(8, 2), (8, 3)]


def test_a_one_input_model_still_takes_one_array_or_a_list_holding_it(tmp_path):
    """The single-input forms of before: an array, one sample, and now also a list or a dict of one."""
    pytest.importorskip("tensorflow")
    import keras

    import edgedl.runtime as rt

    keras.utils.set_random_seed(0)
    inp = keras.Input((5,), name="x")
    model_k = keras.Model(inp, keras.layers.Dense(2)(inp))
    path = tmp_path / "one.tflite"
    path.write_bytes(_convert(model_k))
    model = rt.load(_bundle(tmp_path, path))
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    want = model_k.predict(x, verbose=0)
    assert model.input_names == ["x"]
    for given in (x, [x], {"x": x}):
        np.testing.assert_allclose(model.predict(given), want, atol=1e-5)
    np.testing.assert_allclose(model.predict(x[1]), want[1:2], atol=1e-5)
    with pytest.raises(OptionError, match=r"input has shape \(3, 4\); the model takes \(N, 5\)"):
        model.predict(x[:, :4])


def test_bench_times_and_scores_a_bundle_with_two_inputs(models, tmp_path):
    from edgedl.bench.core import load_samples, measure, save_samples
    from edgedl.bench.harness import run_local
    from edgedl.bench.options import BenchOptions

    import edgedl.runtime as rt

    bundle = _bundle(tmp_path, models["int8"])
    xa, xb = _samples(20)
    x = [xb, xa]  # the bundle's input order
    model = rt.load(bundle)
    y = model.predict(x).argmax(-1)
    y[:5] = (y[:5] + 1) % 3  # a quarter wrong on purpose
    result = measure(str(bundle), BenchOptions(warmup=1, runs=5, repeats=2), x=x, y=y)
    assert result["timing"]["latency"]["runs"] == 10
    assert result["accuracy"] == {"samples": 20, "accuracy": 0.75}
    assert result["outputs_top1"] == model.predict(x).argmax(-1).tolist()

    no_data = measure(str(bundle), BenchOptions(warmup=0, runs=3, repeats=1))  # zeros for both inputs
    assert no_data["timing"]["latency"]["runs"] == 3 and "accuracy" not in no_data

    with pytest.raises(OptionError, match=r"the model takes 2 inputs \('b', 'a'\), got one array"):
        measure(str(bundle), BenchOptions(warmup=0, runs=1, repeats=1), x=xa, y=y)

    samples = tmp_path / "samples.npz"
    save_samples(samples, x, y)
    back, back_y = load_samples(samples)
    assert [a.shape for a in back] == [(20, B), (20, A)] and (back_y == y).all()
    request = {"bundle": str(bundle), "warmup": 1, "runs": 4, "repeats": 1, "threads": 1, "samples": str(samples)}
    child = run_local(str(bundle), request, timeout=120)
    assert child["accuracy"]["accuracy"] == 0.75 and child["timing"]["latency"]["runs"] == 4


def test_bench_scores_a_npz_with_one_array_per_input_against_the_keras_reference(models, tmp_path):
    """``edgedl bench --data two.npz --reference two.keras``: the archive's arrays go to the bundle's
    inputs by name, and to the Keras reference's in its own order (TFLite's is 'b', 'a')."""
    from edgedl.bench.harness import bench
    from edgedl.bench.options import BenchOptions

    bundle = _bundle(tmp_path, models["int8"])
    keras_path = tmp_path / "two.keras"
    models["keras"].save(keras_path)
    xa, xb = _samples(40, seed=5)
    y = models["keras"].predict([xa, xb], verbose=0).argmax(-1)
    np.savez(tmp_path / "two.npz", a=xa, b=xb, y=y)
    result = bench(str(bundle), BenchOptions(data=str(tmp_path / "two.npz"), reference=str(keras_path), warmup=0,
                                             runs=3, repeats=1)).data
    accuracy = result["accuracy"]
    assert accuracy["samples"] == 40 and accuracy["reference_accuracy"] == 1.0
    assert accuracy["accuracy"] >= 0.9 and accuracy["reference_agreement"] == accuracy["accuracy"]
    assert result["timing"]["latency"]["runs"] == 3
