"""Exact int8 lowering for TVM: each converter reproduces one LiteRT configuration bit for bit.

Single-operator int8 models (int8 I/O) run on random int8 inputs through LiteRT and through TVM
(LLVM, x86-64); a briefly trained ResNet-8 runs on real CIFAR-10 images. The LiteRT configurations:
``default`` is the interpreter as ``LiteRTEngine`` creates it (XNNPACK delegate on), ``builtin`` the
builtin kernels without delegates, ``reference`` ``OpResolverType.BUILTIN_REF``.
"""

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("tflite")
pytest.importorskip("ai_edge_litert")
pytestmark = [pytest.mark.slow, pytest.mark.tvm]

from litert_run import litert, run_litert  # noqa: E402 - tests/litert_run.py

from edgedl.backends.tvm_int8 import (  # noqa: E402
    KERNEL_SETS,
    BuiltinInt8Converter,
    ExactInt8Converter,
    ReferenceInt8Converter,
    quantize_multiplier,
    round_half_away,
)

TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4", "num-cores": 1}
CONVERTERS = {"default": ExactInt8Converter, "builtin": BuiltinInt8Converter, "reference": ReferenceInt8Converter}
NUM_SAMPLES = 64


def _layers_model(name):
    """Keras models whose int8 .tflite holds one operator (two for ``add`` and ``float_io``)."""
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(1)
    if name == "conv":
        i = keras.Input((12, 12, 6))
        o = L.Conv2D(8, 3, padding="same")(i)
    elif name == "depthwise":
        i = keras.Input((12, 12, 3))
        o = L.DepthwiseConv2D(3, depth_multiplier=2, strides=2)(i)
    elif name == "dense":
        i = keras.Input((64,))
        o = L.Dense(16)(i)
    elif name == "average_pool":
        i = keras.Input((9, 9, 8))
        o = L.AveragePooling2D(3, strides=2, padding="same")(i)
    elif name == "mean":
        i = keras.Input((7, 5, 16))
        o = L.GlobalAveragePooling2D()(i)
    elif name == "mean_keepdims":
        i = keras.Input((7, 5, 16))
        o = L.GlobalAveragePooling2D(keepdims=True)(i)
    elif name == "add":
        i = keras.Input((6, 6, 8))
        o = L.Add()([i, L.Conv2D(8, 1)(i)])
    elif name == "softmax":
        i = keras.Input((40,))
        o = L.Softmax()(i)
    else:  # float_io: QUANTIZE and DEQUANTIZE around a small network
        i = keras.Input((16, 16, 3))
        x = L.AveragePooling2D(2)(L.Conv2D(8, 3, padding="same")(i))
        o = L.Softmax()(L.Dense(10)(L.Flatten()(x)))
    return keras.Model(i, o, name=name)


OPS = {"conv": "CONV_2D", "depthwise": "DEPTHWISE_CONV_2D", "dense": "FULLY_CONNECTED",
       "average_pool": "AVERAGE_POOL_2D", "mean": "MEAN", "mean_keepdims": "MEAN", "add": "ADD",
       "softmax": "SOFTMAX", "float_io": "DEQUANTIZE"}


@pytest.fixture(scope="module")
def single_op_models():
    """{name: int8 .tflite bytes}, calibrated on normal noise."""
    from edgedl.convert import to_tflite

    rng = np.random.default_rng(0)
    models = {}
    for name in OPS:
        model = _layers_model(name)
        calibration = rng.normal(size=(64,) + tuple(model.input_shape[1:])).astype(np.float32)
        models[name] = to_tflite(model, "int8", calibration, io_type="float" if name == "float_io" else "int8")
    return models


def run_tvm(mod, xs, out_shape):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(relax.build(mod, target=tvm.target.Target(TARGET)), tvm.cpu())
    return np.stack([vm["main"](tvm.runtime.tensor(x[None])).numpy().reshape(out_shape) for x in xs])


def import_tflite(buf, converter=None):
    import tflite
    from tvm.relax.frontend.tflite import from_tflite

    kwargs = {"op_converter": converter} if converter else {}
    return from_tflite(tflite.Model.GetRootAsModel(buf, 0), **kwargs)


def sample_inputs(interpreter, count=NUM_SAMPLES, seed=1):
    """Random inputs over the model input's whole range (int8, or float for float I/O)."""
    detail = interpreter.get_input_details()[0]
    shape = (count,) + tuple(detail["shape"][1:])
    rng = np.random.default_rng(seed)
    if detail["dtype"] == np.int8:
        return rng.integers(-128, 128, size=shape).astype(np.int8)
    return rng.normal(size=shape).astype(np.float32)


def steps(a, b):
    """(largest difference, fraction of outputs that differ), in quantization steps for int8."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(d.max()), float((d > 0).mean())


# -- TFLite's compile-time arithmetic ------------------------------------------------------------

def test_quantize_multiplier_matches_tflite_on_known_values():
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(0.75) == (1610612736, 0)
    assert quantize_multiplier(1 - 2**-40) == (1 << 30, 1)  # rounds up to 2**31, renormalised
    assert quantize_multiplier(2**-40) == (0, 0)  # below 2**-31: flushed to zero
    assert quantize_multiplier(0.0) == (0, 0)


def test_round_half_away_rounds_ties_away_from_zero():
    assert [round_half_away(v) for v in (0.5, 1.5, 2.5, -0.5, -2.5, 0.49999999999999994)] == [1, 2, 3, -1, -3, 0]


def test_an_unknown_kernel_set_is_refused_with_the_known_ones(single_op_models):
    class Typo(ExactInt8Converter):
        kernels = "xnnpak"

    with pytest.raises(ValueError, match=r"unknown kernels 'xnnpak'; expected one of xnnpack, builtin, reference"):
        import_tflite(single_op_models["conv"], Typo)


# -- what the converters fix --------------------------------------------------------------------

def test_litert_configurations_round_convolutions_differently(single_op_models):
    """Why there are three converters: on one conv, XNNPACK, the builtin kernels and the reference
    kernels each disagree with the other two by one step on a fraction of a percent of outputs."""
    buf = single_op_models["conv"]
    interpreters = {config: litert(buf, config) for config in CONVERTERS}
    xs = sample_inputs(interpreters["reference"])
    out = {config: run_litert(it, xs) for config, it in interpreters.items()}
    for a, b in [("default", "builtin"), ("default", "reference"), ("builtin", "reference")]:
        largest, fraction = steps(out[a], out[b])
        assert largest == 1 and 0 < fraction < 0.01, (a, b, largest, fraction)


def test_stock_average_pool_truncates_where_tflite_rounds(single_op_models):
    """The stock lowering averages in int32 with a truncating division: one step off on about half
    of the outputs, against every LiteRT configuration."""
    buf = single_op_models["average_pool"]
    interpreter = litert(buf, "default")
    xs = sample_inputs(interpreter)
    expected = run_litert(interpreter, xs)
    largest, fraction = steps(run_tvm(import_tflite(buf), xs, expected.shape[1:]), expected)
    assert largest == 1 and 0.4 < fraction < 0.6


@pytest.mark.parametrize("config", sorted(CONVERTERS))
@pytest.mark.parametrize("name", sorted(OPS))
def test_each_int8_operator_is_bit_exact_with_its_litert_configuration(single_op_models, name, config):
    buf = single_op_models[name]
    interpreter = litert(buf, config)
    assert OPS[name] in [op["op_name"] for op in interpreter._get_ops_details()]
    xs = sample_inputs(interpreter)
    expected = run_litert(interpreter, xs)
    actual = run_tvm(import_tflite(buf, CONVERTERS[config]), xs, expected.shape[1:])
    assert actual.dtype == expected.dtype
    assert steps(actual, expected) == (0.0, 0.0)


def test_add_rounds_ties_as_each_configuration_does():
    """XNNPACK's ADD rounds ties up, the builtin and reference kernels away from zero. With the
    output scale equal to one input's and the other input's half of it, a fifth of the sums are
    ties: each converter still matches its configuration on every output."""
    import keras

    from edgedl.convert import to_tflite

    keras.utils.set_random_seed(0)
    i = keras.Input((6, 6, 8))
    model = keras.Model(i, keras.ops.add(i, np.linspace(-2, 3, 288).reshape(1, 6, 6, 8).astype("float32")))
    rng = np.random.default_rng(0)
    buf = to_tflite(model, "int8", rng.normal(size=(64, 6, 6, 8)).astype(np.float32), io_type="int8")
    interpreter = litert(buf, "reference")
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    op = interpreter._get_ops_details()[0]
    (a_scale, _), (b_scale, _), (out_scale, _) = (details[t]["quantization"] for t in (*op["inputs"], op["outputs"][0]))
    buf = replace_floats(buf, {out_scale: a_scale, b_scale: np.float32(a_scale) / 2})
    xs = sample_inputs(litert(buf, "reference"))
    out = {config: run_litert(litert(buf, config), xs) for config in CONVERTERS}
    assert steps(out["default"], out["reference"])[1] > 0.1  # the ties
    for config, converter in CONVERTERS.items():
        assert steps(run_tvm(import_tflite(buf, converter), xs, out[config].shape[1:]), out[config]) == (0.0, 0.0)


def test_xnnpack_mean_rounds_after_a_float_zero_point_bias():
    """XNNPACK's MEAN computes float(sum * scale) + (output_zp - input_zp * n * scale) in float32;
    on a value 1e-5 below a tie that rounds to -28 where the exact -28.50001 would give -29. The
    output scale is set so that 437 above the zero point, averaged over 16, lands there."""
    import keras

    from edgedl.convert import to_tflite

    keras.utils.set_random_seed(0)
    i = keras.Input((4, 4, 64))
    model = keras.Model(i, keras.layers.GlobalAveragePooling2D()(i))
    rng = np.random.default_rng(0)
    buf = to_tflite(model, "int8", rng.uniform(0, 6, size=(64, 4, 4, 64)).astype(np.float32), io_type="int8")
    interpreter = litert(buf, "reference")
    in_scale, in_zp = interpreter.get_input_details()[0]["quantization"]
    out_scale, out_zp = interpreter.get_output_details()[0]["quantization"]
    assert (in_zp, out_zp) == (-128, -128)
    buf = replace_floats(buf, {out_scale: np.float32(in_scale) / ((99.5 - 1e-5) / 437 * 16)})
    x = np.full((1, 4, 4, 64), in_zp + 27, np.int8)
    x[0, 0, 0] = in_zp + 32  # 15 * 27 + 32 = 437
    for config, converter in CONVERTERS.items():
        expected = run_litert(litert(buf, config), x)
        assert np.array_equal(run_tvm(import_tflite(buf, converter), x, expected.shape[1:]), expected)
        if config == "default":
            assert set(expected.ravel()) == {-28}


def replace_floats(buf, mapping):
    """The flatbuffer with each float32 value in ``mapping`` (stored once) replaced."""
    data = bytearray(buf)
    for old, new in mapping.items():
        key = np.float32(old).tobytes()
        assert data.count(key) == 1, f"{old} is stored {data.count(key)} times"
        at = data.index(key)
        data[at:at + 4] = np.float32(new).tobytes()
    return bytes(data)


def test_float_models_keep_the_stock_lowering():
    """Nothing in a float model is int8, so the module is the stock converter's, op for op."""
    import keras
    import tvm_ffi
    from keras import layers as L

    from edgedl.convert import to_tflite

    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 3))
    model = keras.Model(i, L.Softmax()(L.Dense(4)(L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(i)))))
    buf = to_tflite(model)
    assert tvm_ffi.structural_equal(import_tflite(buf, ExactInt8Converter), import_tflite(buf))


def test_every_kernel_set_says_how_it_computes_each_operator():
    keys = {"conv2d", "depthwise", "fc", "mean", "mean4d", "softmax", "dequantize", "add"}
    assert {name: set(scheme) for name, scheme in KERNEL_SETS.items()} == dict.fromkeys(KERNEL_SETS, keys)


# -- a real model ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet8_int8(data_dir, tmp_path_factory):
    """ResNet-8 trained for one epoch on 1000 CIFAR-10 images, int8 with int8 I/O, and 300 test images."""
    from edgedl.convert import to_tflite
    from edgedl.data import load_dataset
    from edgedl.train import TrainOptions, train

    result = train("resnet8", TrainOptions(epochs=1, data_dir=data_dir, limit=1000), progress=False)
    data = load_dataset("cifar10", data_dir=data_dir, limit=1000)
    path = tmp_path_factory.mktemp("resnet8") / "resnet8_int8.tflite"
    path.write_bytes(to_tflite(result.model, "int8", data.x_train[:100], io_type="int8"))
    return path, data.x_test[:300]


def test_resnet8_on_cifar_agrees_with_litert_exactly_where_the_stock_lowering_does_not(resnet8_int8):
    """What TVM's backend imports: stock, a few percent of top-1 decisions differ from LiteRT's
    default interpreter (the average pool feeding the classifier); exact, none and no output does."""
    from edgedl.backends.tvm import import_model
    from edgedl.runtime.engines import LiteRTEngine
    from edgedl.runtime.quant import quantize

    path, images = resnet8_int8
    engine = LiteRTEngine(path)
    xs = quantize(images, engine.inputs[0])
    expected = np.stack([engine.invoke(x[None])[0] for x in xs])
    results = {}
    for exact in (False, True):
        mod, _, _ = import_model(path, exact_int8=exact)
        actual = run_tvm(mod, xs, expected.shape[1:])
        results[exact] = steps(actual, expected) + (float(np.mean(actual.argmax(-1) == expected.argmax(-1))),)
    stock_largest, stock_fraction, stock_top1 = results[False]
    assert stock_largest >= 3 and stock_fraction > 0.2 and stock_top1 < 1.0, results[False]
    assert results[True] == (0.0, 0.0, 1.0)
