"""TVM int8 for attention (issue 31, item 3): the importer's exact int8 BATCH_MATMUL, its TRANSPOSE
pass-through and the layer norm's SQUARED_DIFFERENCE and RSQRT (edgedl.backends.tvm_int8), against LiteRT's
three kernel sets, and a tiny transformer block on scikit-learn's 8x8 digits (8 tokens of 8 features), bit-exact
with each kernel set, also through ``compile_model`` for TVM.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("tflite")

from litert_run import litert, run_litert  # noqa: E402 - tests/litert_run.py

TOKENS, FEATURES, HEADS, KEY_DIM, MLP = 8, 8, 2, 8, 32
CONFIGS = {"xnnpack": "default", "builtin": "builtin", "reference": "reference"}


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    return {"train": x[:1400], "y_train": d.target[:1400], "test": x[1400:], "y_test": d.target[1400:]}


def _block():
    """One pre-norm transformer block as tests/test_attention.py builds it, with the zoo kwt's ReLU MLP
    (int8 GELU is not in the importer: TVM's frontend refuses it by name)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((TOKENS, FEATURES), name="rows")
    x = layers.EinsumDense("btd,td->btd", output_shape=(TOKENS, FEATURES), bias_axes="td",
                           kernel_initializer="ones", name="position")(inputs)
    h = layers.LayerNormalization(name="norm1")(x)
    h = layers.MultiHeadAttention(HEADS, KEY_DIM, name="attention")(h, h)
    x = layers.Add(name="add1")([x, h])
    h = layers.LayerNormalization(name="norm2")(x)
    h = layers.Dense(MLP, activation="relu", name="mlp1")(h)
    h = layers.EinsumDense("btd,de->bte", output_shape=(TOKENS, FEATURES), bias_axes="e", name="mlp2")(h)
    x = layers.Add(name="add2")([x, h])
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = layers.Dense(10, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="tiny_transformer")


def _matmuls():
    """Scores ``a @ b^T`` (adj_y) and ``s^T @ a`` (adj_x) of two projections: int8 x int8 matmuls."""
    import keras
    from keras import layers, ops

    keras.utils.set_random_seed(0)
    inputs = keras.Input((TOKENS, FEATURES))
    a, b = layers.Dense(8)(inputs), layers.Dense(8)(inputs)
    s = layers.Lambda(lambda t: ops.matmul(t[0], ops.transpose(t[1], (0, 2, 1))))([a, b])
    s = layers.Dense(8)(s)
    out = layers.Lambda(lambda t: ops.matmul(ops.transpose(t[0], (0, 2, 1)), t[1]))([s, a])
    return keras.Model(inputs, out)


def _run_tvm(buf, converter, xs):
    import tflite
    import tvm
    from tvm import relax
    from tvm.relax.frontend.tflite import from_tflite

    mod = from_tflite(tflite.Model.GetRootAsModel(buf, 0), op_converter=converter)
    vm = relax.VirtualMachine(relax.build(mod, target=tvm.target.Target("llvm")), tvm.cpu())
    return np.stack([vm["main"](tvm.runtime.tensor(x[None])).numpy()[0] for x in xs])


def _operators(buf):
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator

    names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    return [names[model.OperatorCodes(graph.Operators(i).OpcodeIndex()).BuiltinCode()]
            for i in range(graph.OperatorsLength())]


def test_int8_batch_matmul_is_bit_exact_with_every_litert_kernel_set():
    from edgedl.backends.tvm_int8 import BuiltinInt8Converter, ExactInt8Converter, ReferenceInt8Converter
    from edgedl.convert import to_tflite

    rng = np.random.default_rng(0)
    buf = to_tflite(_matmuls(), "int8", rng.normal(size=(200, TOKENS, FEATURES)).astype(np.float32),
                    io_type="int8")
    assert _operators(buf).count("BATCH_MATMUL") == 2
    xs = rng.integers(-128, 128, size=(30, TOKENS, FEATURES)).astype(np.int8)
    converters = {"xnnpack": ExactInt8Converter, "builtin": BuiltinInt8Converter, "reference": ReferenceInt8Converter}
    for kernels, config in CONFIGS.items():
        expected = run_litert(litert(buf, config), xs)
        assert np.array_equal(_run_tvm(buf, converters[kernels], xs), expected), kernels


@pytest.fixture(scope="module")
def int8_block(digits):
    """The block trained for 8 epochs, its int8 .tflite (int8 I/O) and the 397 test digits quantized for it."""
    from edgedl.convert import to_tflite

    model = _block()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits["train"], digits["y_train"], epochs=8, batch_size=32, verbose=0)
    buf = to_tflite(model, "int8", digits["train"][:200], io_type="int8")
    scale, zero_point = litert(buf, "default").get_input_details()[0]["quantization"]
    xs = np.clip(np.round(digits["test"] / scale) + zero_point, -128, 127).astype(np.int8)
    return model, buf, xs


def test_the_int8_transformer_block_is_bit_exact_with_every_litert_kernel_set(int8_block):
    from edgedl.backends.tvm_int8 import BuiltinInt8Converter, ExactInt8Converter, ReferenceInt8Converter

    _, buf, xs = int8_block
    assert {"BATCH_MATMUL", "TRANSPOSE", "SOFTMAX", "SQUARED_DIFFERENCE", "RSQRT"} <= set(_operators(buf))
    converters = {"xnnpack": ExactInt8Converter, "builtin": BuiltinInt8Converter, "reference": ReferenceInt8Converter}
    outputs = {}
    for kernels, config in CONFIGS.items():
        outputs[kernels] = run_litert(litert(buf, config), xs)
        # every output of the 397 digits; with TVM's stock (float) SQUARED_DIFFERENCE and RSQRT in the layer norms it
        # was up to 6 int8 steps off XNNPACK on 2.5% of the outputs, 4 off the builtin (2.0%) and reference (2.8%)
        # kernels (100 digits)
        np.testing.assert_array_equal(_run_tvm(buf, converters[kernels], xs), outputs[kernels], err_msg=kernels)
    assert not np.array_equal(outputs["xnnpack"], outputs["builtin"])  # why one converter per kernel set
    assert not np.array_equal(outputs["builtin"], outputs["reference"])


def test_a_transformer_block_compiles_for_tvm_int8_bit_exact_with_litert(int8_block, digits, tmp_path):
    from edgedl import runtime
    from edgedl.compile import CompileOptions, compile_model

    model, buf, xs = int8_block
    source = tmp_path / "block_int8.tflite"
    source.write_bytes(buf)
    compile_model(str(source), "x86_64", str(tmp_path / "int8.edgedl"), CompileOptions(backend="tvm"))
    engine = runtime.load(tmp_path / "int8.edgedl").engine
    tvm_out = np.stack([np.asarray(engine.invoke(x[None]))[0] for x in xs[:100]])
    # the bundle (edgedl's default CPU schedules) computes what LiteRT's default interpreter does, bit for bit
    np.testing.assert_array_equal(tvm_out, run_litert(litert(buf, "default"), xs[:100]))

    path = tmp_path / "block.keras"
    model.save(path)
    np.savez(tmp_path / "digits.npz", x=digits["test"], y=digits["y_test"])
    bundle = compile_model(str(path), "x86_64", str(tmp_path / "block.edgedl"),
                           CompileOptions(backend="tvm", quantize="int8", data=str(tmp_path / "digits.npz"),
                                          num_samples=20, max_disagreement=0.1))
    fidelity = bundle.manifest["fidelity"]
    # against the float Keras model, 20 samples (measured: 95%, one digit; int8 TVM vs float)
    assert fidelity["reference"] == "the Keras model (float)" and fidelity["top1_agreement"] >= 0.9


def _layer_norm_variance():
    """The variance part of a layer norm as edgedl.layernorm traces it: MEAN, then SQUARED_DIFFERENCE of the
    input and its (broadcast) mean."""
    import keras
    from keras import ops

    keras.utils.set_random_seed(0)
    inputs = keras.Input((TOKENS, 16))
    return keras.Model(inputs, ops.square(ops.subtract(inputs, ops.mean(inputs, axis=-1, keepdims=True))))


def test_int8_squared_difference_is_bit_exact_with_every_litert_kernel_set_for_any_scales():
    """squared_difference.cc's rescalings, on random int8 inputs over their whole range, for the converter's
    scales and two random sets of input and output scales."""
    from test_tvm_int8 import replace_floats

    from edgedl.backends.tvm_int8 import BuiltinInt8Converter, ExactInt8Converter, ReferenceInt8Converter
    from edgedl.convert import to_tflite

    rng = np.random.default_rng(0)
    buf = to_tflite(_layer_norm_variance(), "int8", 2 * rng.normal(size=(64, TOKENS, 16)).astype(np.float32),
                    io_type="int8")
    assert _operators(buf) == ["MEAN", "SQUARED_DIFFERENCE"]
    interpreter = litert(buf, "reference")
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    op = interpreter._get_ops_details()[1]
    scales = [np.float32(details[t]["quantization"][0]) for t in (*op["inputs"], op["outputs"][0])]
    xs = rng.integers(-128, 128, size=(40, TOKENS, 16)).astype(np.int8)
    converters = {"xnnpack": ExactInt8Converter, "builtin": BuiltinInt8Converter, "reference": ReferenceInt8Converter}
    for trial in range(3):
        scaled = buf if trial == 0 else replace_floats(buf, {s: s * 2.0 ** rng.uniform(-2, 2) for s in scales})
        for kernels, config in CONFIGS.items():
            expected = run_litert(litert(scaled, config), xs)
            np.testing.assert_array_equal(_run_tvm(scaled, converters[kernels], xs), expected,
                                          err_msg=f"{kernels}, scale set {trial}")


def test_int8_rsqrt_is_litert_s_fixed_point_inverse_square_root_on_every_input():
    """elementwise.cc's int8 RSQRT (GetInvSqrtQuantizedMultiplierExp, then two rescalings) is a table of the int8
    input: edgedl's equals every LiteRT kernel set's on every valid input, for 100 pairs of scales, and TVM looks
    it up."""
    import keras

    from test_tvm_int8 import replace_floats

    from edgedl.backends.tvm_int8 import (BuiltinInt8Converter, ExactInt8Converter, ReferenceInt8Converter,
                                          rsqrt_int8_table)
    from edgedl.convert import to_tflite

    keras.utils.set_random_seed(0)
    inputs = keras.Input((256,))
    rng = np.random.default_rng(0)
    buf = to_tflite(keras.Model(inputs, keras.ops.rsqrt(inputs)), "int8",
                    rng.uniform(1, 4, size=(64, 256)).astype(np.float32), io_type="int8")
    assert _operators(buf) == ["RSQRT"]
    interpreter = litert(buf, "reference")
    in_scale, in_zp = interpreter.get_input_details()[0]["quantization"]
    out_scale, out_zp = interpreter.get_output_details()[0]["quantization"]
    xs = np.resize(np.arange(in_zp, 128), 256)[None].astype(np.int8)  # LiteRT refuses inputs below the zero point
    converters = {"xnnpack": ExactInt8Converter, "builtin": BuiltinInt8Converter, "reference": ReferenceInt8Converter}
    for kernels, config in CONFIGS.items():
        np.testing.assert_array_equal(_run_tvm(buf, converters[kernels], xs), run_litert(litert(buf, config), xs),
                                      err_msg=kernels)
    old_in, old_out = np.float32(in_scale), np.float32(out_scale)
    for _ in range(100):
        new_in = np.float32(old_in * 2.0 ** rng.uniform(-6, 6))
        new_out = np.float32(old_out * 2.0 ** rng.uniform(-6, 6))
        scaled = replace_floats(buf, {old_in: new_in, old_out: new_out})
        expected = rsqrt_int8_table(new_in, in_zp, new_out, out_zp)[xs.astype(int) + 128]
        for config in CONFIGS.values():
            np.testing.assert_array_equal(run_litert(litert(scaled, config), xs), expected,
                                          err_msg=f"{config}: scales {new_in}, {new_out}")
