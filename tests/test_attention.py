"""Attention models (issue 31, item 3): MACs of multi-head attention and EinsumDense, pruning of the
attention kernels, int8 conversion, and the keyword transformer of the zoo.

The model is real: scikit-learn's 8x8 digits read as 8 tokens of 8 features, a learned positional
embedding (an element-wise EinsumDense), one pre-norm transformer block, trained here.
"""

from __future__ import annotations

import numpy as np
import pytest

TOKENS, FEATURES, HEADS, KEY_DIM, MLP = 8, 8, 2, 8, 32


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    return {"train": x[:1400], "y_train": d.target[:1400], "test": x[1400:], "y_test": d.target[1400:]}


def _block():
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
    h = layers.Dense(MLP, activation="gelu", name="mlp1")(h)
    h = layers.EinsumDense("btd,de->bte", output_shape=(TOKENS, FEATURES), bias_axes="e", name="mlp2")(h)
    x = layers.Add(name="add2")([x, h])
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = layers.Dense(10, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="tiny_transformer")


@pytest.fixture(scope="module")
def model(digits):
    m = _block()
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(digits["train"], digits["y_train"], epochs=30, batch_size=32, verbose=0)
    return m


def _accuracy(scores, y) -> float:
    return float(np.mean(np.asarray(scores).argmax(-1) == y))


def test_macs_count_attention_and_einsum_dense_by_hand():
    from edgedl.optimize.metrics import count_macs, layer_stats

    projections = 3 * TOKENS * FEATURES * HEADS * KEY_DIM  # query, key, value
    scores = HEADS * TOKENS * TOKENS * KEY_DIM  # QK^T
    weighted = HEADS * TOKENS * TOKENS * KEY_DIM  # softmax(QK^T) V
    output = TOKENS * HEADS * KEY_DIM * FEATURES
    attention = projections + scores + weighted + output
    by_layer = {r["layer"]: r["macs"] for r in layer_stats(_block())}
    assert by_layer["attention"] == attention == 3072 + 1024 + 1024 + 1024
    assert by_layer["position"] == TOKENS * FEATURES  # element-wise: one multiply per element
    assert by_layer["mlp1"] == TOKENS * FEATURES * MLP
    assert by_layer["mlp2"] == TOKENS * MLP * FEATURES
    assert by_layer["probs"] == FEATURES * 10
    assert count_macs(_block()) == attention + TOKENS * FEATURES + 2 * TOKENS * FEATURES * MLP + FEATURES * 10


def test_macs_of_cross_attention_with_its_own_value_and_output_sizes():
    import keras

    from edgedl.optimize.metrics import count_macs, einsum_macs

    q, v = keras.Input((8, 6)), keras.Input((5, 6))
    out = keras.layers.MultiHeadAttention(2, 4, value_dim=3, output_shape=7)(q, v)
    expected = 8 * 6 * 8 + 5 * 6 * 8 + 5 * 6 * 6 + 2 * 8 * 5 * 4 + 2 * 8 * 5 * 3 + 8 * 2 * 3 * 7
    assert count_macs(keras.Model([q, v], out)) == expected
    assert einsum_macs("...b,bc->...c", (None, 8, 6), (6, 5)) == 8 * 6 * 5


def test_pruning_finds_the_attention_kernels_and_keeps_them_sparse(model, digits):
    from edgedl.optimize.keras_graph import copy_model
    from edgedl.optimize.prune import Masker, find_prunable, sparsity_report

    pruned = copy_model(model)
    kernels, skipped = find_prunable(pruned)
    assert [v.path.split("/", 1)[1] for v in kernels["attention"]] == [
        "query/kernel", "key/kernel", "value/kernel", "attention_output/kernel"]
    assert {"mlp1", "mlp2", "probs"} <= set(kernels)
    position = next(s for s in skipped if s["layer"] == "position")
    assert "contracts no axis" in position["reason"]

    masker = Masker(kernels, {"attention": 0.5, "mlp2": 0.5}, schedule=None)
    masker.update()
    masker.apply()
    rows = {r["layer"]: r for r in sparsity_report(pruned, {"attention": 0.5, "mlp2": 0.5})}
    assert rows["attention"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert rows["attention"]["total"] == 4 * FEATURES * HEADS * KEY_DIM
    for v in kernels["attention"]:
        assert np.mean(np.asarray(v) == 0) == pytest.approx(0.5, abs=0.02)
    assert rows["mlp2"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    # the pruned model still works, its biases untouched
    assert _accuracy(pruned.predict(digits["test"], verbose=0), digits["y_test"]) > 0.5


def test_int8_transformer_runs_on_litert_within_two_points_of_float(model, digits, tmp_path):
    from edgedl.convert import to_tflite
    from edgedl.runtime.engines import LiteRTEngine

    float_accuracy = _accuracy(model.predict(digits["test"], verbose=0), digits["y_test"])
    assert float_accuracy > 0.75, float_accuracy  # a model that learned something (0.82 on this split)
    path = tmp_path / "transformer.tflite"
    path.write_bytes(to_tflite(model, "int8", digits["train"][:200], io_type="int8"))
    engine = LiteRTEngine(path)
    spec = engine.inputs[0]
    scores = []
    for sample in digits["test"]:
        raw = np.clip(np.round(sample[None] / spec.scale + spec.zero_point), -128, 127).astype(np.int8)
        scores.append(np.asarray(engine.invoke(raw), np.float32).reshape(-1))
    assert _accuracy(np.array(scores), digits["y_test"]) >= float_accuracy - 0.02


def test_the_zoo_keyword_transformer_builds_from_its_recipe_under_100k_parameters():
    from edgedl.optimize.metrics import count_macs
    from edgedl.zoo import get_model

    entry = get_model("kwt")
    model = entry.build()
    assert tuple(model.input_shape[1:]) == tuple(entry.recipe["input_shape"])
    assert model.output_shape == (None, entry.recipe["num_classes"])
    assert model.count_params() < 100_000
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"MultiHeadAttention", "LayerNormalization", "EinsumDense", "Conv2D"} <= kinds
    assert count_macs(model) > 0


def test_layer_normalization_converts_full_integer_and_vela_keeps_the_block_on_the_npu(model, digits, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from edgedl.compile import CompileOptions, compile_model
    from edgedl.convert import to_tflite
    from edgedl.graph import read_tflite

    tflite = to_tflite(model, "int8", digits["train"][:200], io_type="int8")
    ops = {d["op_name"] for d in Interpreter(model_content=tflite)._get_ops_details()}
    assert "NEG" not in ops and {"MEAN", "RSQRT", "BATCH_MATMUL"} <= ops  # Keras' -mean*inv stayed float
    path = tmp_path / "transformer.tflite"
    path.write_bytes(tflite)
    assert read_tflite(path).quantization_kind == "int8"
    bundle = compile_model(str(path), "ethos_u55_128", str(tmp_path / "u55.edgedl"),
                           CompileOptions(backend="vela", num_samples=20))
    from edgedl.bundle import read_manifest

    assert read_manifest(bundle.path)["estimates"]["cpu_fallback_ops"] == []


def test_vela_names_float_operators_left_in_an_integer_model_without_asking_to_quantize_it(model, digits, tmp_path):
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.convert import _to_tflite_as_is
    from edgedl.errors import UnsupportedOperatorError

    # Keras' own layer normalization, converted as it traces: its NEG stays float in the int8 model
    path = tmp_path / "mixed.tflite"
    path.write_bytes(_to_tflite_as_is(model, "int8", digits["train"][:100], "int8", 100, True, (), ()))
    with pytest.raises(UnsupportedOperatorError, match=r"computes in float \(NEG\); the converter left these "
                                                       r"operators in float in an otherwise integer model"):
        compile_model(str(path), "ethos_u55_128", str(tmp_path / "u55.edgedl"), CompileOptions(backend="vela"))
