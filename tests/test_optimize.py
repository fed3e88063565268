"""Optimization: pruning (unstructured and structured), post-training quantization, QAT, the CLI.

Every test runs the real thing on a tiny real case: LeNet trained for a few epochs on the
scikit-learn digits (no download), or zoo models built but not trained where only shapes matter.
"""

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from edgedl.errors import ModelError, OptionError, UnsupportedOperatorError

keras = pytest.importorskip("keras")

from edgedl import zoo  # noqa: E402
from edgedl.convert import to_tflite  # noqa: E402
from edgedl.data import load_dataset  # noqa: E402
from edgedl.optimize import (  # noqa: E402
    FineTune, OptimizeOptions, PruneSpec, StructuredSpec, keras_graph, metrics, optimize, prune, prune_structured,
)
from edgedl.optimize import qat as qat_module  # noqa: E402
from edgedl.optimize import structured  # noqa: E402
from edgedl.optimize.prune import Masker, Schedule, find_prunable, masking_callback  # noqa: E402
from edgedl.runtime.engines import LiteRTEngine  # noqa: E402
from edgedl.keras_utils import evaluate  # noqa: E402
from edgedl.train import TrainOptions, train  # noqa: E402

LENET_RECIPE = zoo.get_model("lenet").recipe


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def lenet(digits):
    """LeNet trained for 4 epochs on digits (about 90% test accuracy)."""
    return train("lenet", TrainOptions(dataset="digits", epochs=4, seed=0), progress=False)


@pytest.fixture(scope="module")
def lenet_file(lenet, tmp_path_factory):
    """The trained LeNet as `edgedl train` writes it: lenet.keras and lenet.json (recipe, data set) beside."""
    path, _ = lenet.save(tmp_path_factory.mktemp("trained") / "lenet.keras")
    return path


def kernel_sparsity(layer):
    kernel = np.asarray(layer.kernel)
    return 1.0 - np.count_nonzero(kernel) / kernel.size


def small_bn_cnn(input_shape=(28, 28, 1)):
    """Conv-BN-ReLU, a depthwise-separable block in a residual Add, pooling, Flatten, classifier."""
    layers = keras.layers
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = layers.BatchNormalization(name="dw_bn")(y)
    y = layers.ReLU(name="dw_relu")(y)
    y = layers.Conv2D(16, 1, name="pw")(y)
    x = layers.Add(name="add")([x, y])
    x = layers.MaxPooling2D(2, name="pool")(x)
    outputs = layers.Dense(10, activation="softmax", name="probs")(layers.Flatten(name="flatten")(x))
    return keras.Model(inputs, outputs, name="bn_cnn")


# --- unstructured pruning -------------------------------------------------------------------------


def test_pruning_reaches_the_requested_sparsity_in_every_layer_and_it_survives_stripping(lenet, digits, tmp_path):
    result = prune(lenet.model, 0.75, FineTune(digits.x_train, digits.y_train, LENET_RECIPE, 2, progress=False))
    assert [row["layer"] for row in result.layers] == ["conv1", "conv2", "fc1", "fc2", "probs"]
    for row in result.layers:
        assert row["target"] == 0.75 and abs(row["sparsity"] - 0.75) < 0.005, row
    # Stripped: a plain Keras model of built-in layers, uncompiled, zeros in its weights.
    assert not result.model.compiled
    assert all(type(layer).__module__.startswith("keras.") for layer in result.model.layers)
    path = tmp_path / "pruned.keras"
    result.model.save(path)
    loaded = keras.saving.load_model(path)
    for name in ("conv1", "conv2", "fc1", "fc2", "probs"):
        assert abs(kernel_sparsity(loaded.get_layer(name)) - 0.75) < 0.005
    # The original is untouched, and the pruned model still classifies.
    assert kernel_sparsity(lenet.model.get_layer("fc1")) < 0.01
    assert evaluate(loaded, digits.x_test, digits.y_test)[1] > 0.6


def test_pruning_targets_can_be_per_layer_or_global(lenet, digits):
    x, y = digits.x_train[:512], digits.y_train[:512]
    per_layer = prune(lenet.model, {"fc1": 0.9, "conv2": 0.5}, FineTune(x, y, LENET_RECIPE, 1, progress=False))
    reached = {row["layer"]: row["sparsity"] for row in per_layer.layers}
    assert reached == pytest.approx({"fc1": 0.9, "conv2": 0.5}, abs=0.005)
    assert {r["layer"] for r in per_layer.skipped if r["reason"] == "not among the requested layers"} == \
        {"conv1", "fc2", "probs"}
    assert kernel_sparsity(per_layer.model.get_layer("fc2")) < 0.01

    overall = prune(lenet.model, PruneSpec(0.8, scope="global"), FineTune(x, y, LENET_RECIPE, 1, progress=False))
    zeros = sum(r["total"] - r["nonzero"] for r in overall.layers)
    assert zeros / sum(r["total"] for r in overall.layers) == pytest.approx(0.8, abs=0.002)
    assert len({r["sparsity"] for r in overall.layers}) > 1  # one threshold: layers end up differently sparse


def test_per_layer_overrides_set_some_layers_targets_over_the_global_one_and_zero_keeps_a_layer_dense(lenet, digits):
    x, y = digits.x_train[:512], digits.y_train[:512]
    result = prune(lenet.model, PruneSpec(0.8, layers=(("fc1", 0.5), ("probs", 0.0))),
                   FineTune(x, y, LENET_RECIPE, 1, progress=False))
    reached = {row["layer"]: row["sparsity"] for row in result.layers}
    assert reached == pytest.approx({"conv1": 0.8, "conv2": 0.8, "fc1": 0.5, "fc2": 0.8}, abs=0.005)
    assert {r["layer"]: r["reason"] for r in result.skipped}["probs"] == "kept dense (--prune-layer probs=0)"
    assert kernel_sparsity(result.model.get_layer("probs")) < 0.01

    only = prune(lenet.model, PruneSpec(None, layers=(("fc1", 0.9),)),
                 FineTune(x, y, LENET_RECIPE, 1, progress=False))
    assert [(row["layer"], row["sparsity"]) for row in only.layers] == [("fc1", pytest.approx(0.9, abs=0.005))]


def test_per_layer_overrides_are_checked_by_name_scope_and_value(lenet, digits):
    def run(sparsity, layers, scope="layer"):
        prune(lenet.model, PruneSpec(sparsity, scope=scope, layers=layers),
              FineTune(digits.x_train, digits.y_train, LENET_RECIPE, 1, progress=False))

    with pytest.raises(OptionError, match="--prune-layer nope: no prunable layer of that name; the prunable layers are conv1"):
        run(0.5, (("nope", 0.5),))
    with pytest.raises(OptionError, match="--prune-scope global holds one magnitude threshold"):
        run(0.5, (("fc1", 0.5),), scope="global")
    with pytest.raises(OptionError, match=r"--prune-layer fc1 takes a fraction in \[0, 1\) \(0 keeps the layer dense\)"):
        run(0.5, (("fc1", 1.0),))
    with pytest.raises(OptionError, match="--prune-layer fc1=0 keeps a layer dense under --prune, but --prune is not given"):
        run(None, (("fc1", 0.0),))
    with pytest.raises(OptionError, match="nothing to prune"):
        run(None, ())


def _runs_are_whole(kernel: np.ndarray, block: int, axes: tuple = ()) -> bool:
    """Whether every run of ``block`` weights along the input-channel axis (or ``axes``, flattened in the
    kernel's order) is all zero or all non-zero."""
    axes = list(axes) or [kernel.ndim - 2]
    rest = [i for i in range(kernel.ndim) if i not in axes]
    moved = np.transpose(kernel, rest + axes).reshape(*[kernel.shape[i] for i in rest], -1)
    length = moved.shape[-1] - moved.shape[-1] % block
    runs = (moved[..., :length] == 0).reshape(*moved.shape[:-1], -1, block)
    return bool(np.all(runs.all(axis=-1) | ~runs.any(axis=-1)))


def test_block_pruning_zeroes_whole_runs_along_the_input_channels_and_they_gzip_better(lenet, digits):
    import gzip

    x, y = digits.x_train[:512], digits.y_train[:512]
    single = prune(lenet.model, 0.8, FineTune(x, y, LENET_RECIPE, 1, progress=False))
    blocks = prune(lenet.model, PruneSpec(0.8, block=4), FineTune(x, y, LENET_RECIPE, 1, progress=False))
    assert blocks.block == 4
    for row in blocks.layers:
        assert abs(row["sparsity"] - 0.8) < 0.02, row
    for name in ("conv2", "fc1", "fc2"):  # input channels 6, 400 (flattened), 120: runs of 4
        kernel = np.asarray(blocks.model.get_layer(name).kernel)
        assert _runs_are_whole(kernel, 4), name
        assert not _runs_are_whole(np.asarray(single.model.get_layer(name).kernel), 4), name
    # The runs are contiguous in the .tflite, so the same sparsity compresses smaller.
    sizes = {k: len(gzip.compress(to_tflite(r.model, "int8", x[:100]), 9)) for k, r in
             (("single", single), ("blocks", blocks))}
    assert sizes["blocks"] < 0.93 * sizes["single"], sizes


def test_block_pruning_also_works_with_one_global_threshold(lenet, digits):
    x, y = digits.x_train[:256], digits.y_train[:256]
    result = prune(lenet.model, PruneSpec(0.7, scope="global", block=8),
                   FineTune(x, y, LENET_RECIPE, 1, progress=False))
    zeros = sum(r["total"] - r["nonzero"] for r in result.layers)
    assert zeros / sum(r["total"] for r in result.layers) == pytest.approx(0.7, abs=0.01)
    assert _runs_are_whole(np.asarray(result.model.get_layer("fc1").kernel), 8)


def tiny_kwt():
    """The zoo's keyword transformer, narrow and one block deep, over 28x28 digits (14 patches of two rows)."""
    keras.utils.set_random_seed(0)
    return zoo.zoo_module("kwt").build(input_shape=(28, 28, 1), num_classes=10, dim=16, num_heads=2, mlp_dim=32,
                                       num_blocks=1)


def test_block_pruning_cuts_attention_kernels_along_the_axes_their_einsum_contracts_with_the_input():
    from edgedl.optimize.prune import input_axes

    model = tiny_kwt()
    axes = input_axes(model)
    # query, key, value: [d_model, heads, key_dim], contracted over d_model; output: [heads, value_dim, d_model],
    # over heads and value_dim (one axis of 16 once flattened, as the .tflite's fully connected reads it)
    assert axes["block1_attention"] == [(0,), (0,), (0,), (0, 1)]
    # Dense, convolutions and a contracting EinsumDense ("btd,de->bte") keep the second-to-last axis
    assert axes["block1_mlp1"] == [(0,)] and axes["patch_embed"] == [(2,)] and axes["position"] == [(0,)]

    kernels, _ = find_prunable(model)
    masker = Masker(kernels, {"block1_attention": 0.5}, schedule=None, block=4, axes=axes)
    masker.update()
    masker.apply()
    query, key, value, output = (np.asarray(v) for v in kernels["block1_attention"])
    assert query.shape == (16, 2, 8) and output.shape == (2, 8, 16)
    for kernel in (query, key, value, output):
        assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.05)
    for kernel in (query, key, value):  # runs of 4 d_model weights that feed one unit of one head ...
        assert _runs_are_whole(kernel, 4, axes=(0,))
        assert not _runs_are_whole(kernel, 2, axes=(1,))  # ... not the same unit of both heads
    assert _runs_are_whole(output, 4, axes=(0, 1))  # runs of 4 (head, unit) inputs to one output feature
    assert not _runs_are_whole(output, 4, axes=(1,)) or not _runs_are_whole(output, 2, axes=(0,))


def test_a_block_pruned_keyword_transformer_fine_tunes_and_still_classifies(digits):
    from edgedl.keras_utils import evaluate

    model = tiny_kwt()
    model.compile(keras.optimizers.Adam(0.003), "sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=8, batch_size=32, verbose=0)
    dense = evaluate(model, digits.x_test, digits.y_test)[1]
    assert dense > 0.8, dense

    # the classifier (16 features -> 10) kept dense: in runs of 4 it costs about 8 points at this width
    result = prune(model, PruneSpec(0.5, block=4, layers=(("probs", 0),)),
                   FineTune(digits.x_train, digits.y_train, zoo.get_model("kwt").recipe, 3, progress=False))
    reached = {row["layer"]: row["sparsity"] for row in result.layers}
    assert reached == pytest.approx({name: 0.5 for name in (
        "patch_embed", "position", "block1_attention", "block1_mlp1", "block1_mlp2")}, abs=0.02)
    attention = result.model.get_layer("block1_attention")
    assert _runs_are_whole(np.asarray(attention._query_dense.kernel), 4, axes=(0,))
    assert _runs_are_whole(np.asarray(attention._output_dense.kernel), 4, axes=(0, 1))
    assert evaluate(result.model, digits.x_test, digits.y_test)[1] > dense - 0.1


def test_erk_spreads_the_sparsity_by_layer_shape_and_averages_to_the_target(lenet, digits):
    from edgedl.optimize.prune import erk_targets

    kernels, _ = find_prunable(zoo.get_model("ds_cnn").build(input_shape=(61, 40, 1), num_classes=10))
    targets = erk_targets(kernels, 0.8)
    sizes = {n: sum(int(np.prod(v.shape)) for v in vs) for n, vs in kernels.items()}
    assert sum(targets[n] * sizes[n] for n in sizes) / sum(sizes.values()) == pytest.approx(0.8)
    assert targets["dw1"] < 0.6 < 0.8 < targets["pw1"]  # 3x3 depthwise kernels keep far more of their taps
    # At a low target the small layers would need a density above 1: they stay dense, the rest pays.
    low = erk_targets(kernels, 0.3)
    assert low["dw1"] == 0.0 and low["pw1"] > 0.3
    assert sum(low[n] * sizes[n] for n in sizes) / sum(sizes.values()) == pytest.approx(0.3)

    result = prune(lenet.model, PruneSpec(0.8, scope="erk"),
                   FineTune(digits.x_train[:256], digits.y_train[:256], LENET_RECIPE, 1, progress=False))
    zeros = sum(r["total"] - r["nonzero"] for r in result.layers)
    assert zeros / sum(r["total"] for r in result.layers) == pytest.approx(0.8, abs=0.003)
    reached = {r["layer"]: r["sparsity"] for r in result.layers}
    assert reached["conv1"] < reached["fc1"]  # 150 weights against 48,000


def test_the_polynomial_schedule_grows_sparsity_and_the_constant_one_starts_at_the_target():
    poly = Schedule("polynomial", begin_step=0, end_step=100, frequency=10)
    fractions = [poly.fraction(s) for s in range(0, 101, 10)]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(a < b for a, b in zip(fractions, fractions[1:]))
    assert fractions[1] > 0.2  # cubic: fast at first
    assert poly.updates_at(10) and not poly.updates_at(11) and poly.updates_at(100) and not poly.updates_at(120)
    assert Schedule("constant", end_step=100).fraction(0) == 1.0


def test_default_fine_tuning_is_a_quarter_of_the_recipe_but_at_least_two_thousand_steps():
    from edgedl.optimize.finetune import default_epochs, steps_per_epoch

    lenet, ds_cnn = zoo.get_model("lenet").recipe, zoo.get_model("ds_cnn").recipe
    assert default_epochs(lenet, 60000) == 5  # MNIST: a quarter of 12 epochs would be 1,407 steps
    epochs = default_epochs(ds_cnn, 2700)  # FSDD: a quarter of 30 epochs would be 680 steps
    assert epochs * steps_per_epoch(2700, ds_cnn) >= 2000 and epochs <= ds_cnn["epochs"]
    resnet8 = zoo.get_model("resnet8").recipe
    assert default_epochs(resnet8, 50000) == -(-resnet8["epochs"] // 4)  # CIFAR-10: the quarter is plenty
    assert default_epochs(lenet, 100) == lenet["epochs"]  # never longer than the recipe's own training


def test_fine_tuning_under_the_masks_moves_the_kept_weights_and_holds_the_pruned_ones_at_zero(lenet, digits):
    from edgedl.optimize.finetune import finetune

    pruned = prune(lenet.model, 0.6,
                   FineTune(digits.x_train[:256], digits.y_train[:256], LENET_RECIPE, 1, progress=False)).model
    before = np.array(pruned.get_layer("fc1").kernel)
    pruned_mask = before == 0
    assert pruned_mask.mean() == pytest.approx(0.6, abs=0.01)
    masker = Masker.keep_zeros(pruned)
    finetune(pruned, FineTune(digits.x_train[:512], digits.y_train[:512], LENET_RECIPE, 1, progress=False),
             callbacks=[masking_callback(masker)])
    after = np.array(pruned.get_layer("fc1").kernel)
    assert np.all(after[pruned_mask] == 0)
    # Fine-tuning ran: the weights the masks keep have moved (about 65% of them, measured, in one epoch on
    # 512 digits; a weight whose input ReLU holds at zero on every sample gets no gradient).
    assert np.mean(after[~pruned_mask] != before[~pruned_mask]) > 0.4


def test_layers_that_cannot_be_pruned_are_listed_with_the_reason():
    kernels, skipped = find_prunable(small_bn_cnn())
    assert set(kernels) == {"conv1", "dw", "pw", "probs"}
    reasons = {r["layer"]: r["reason"] for r in skipped}
    assert set(reasons) == {"bn1", "dw_bn"}
    assert "normalization" in reasons["bn1"]

    lstm = zoo.get_model("lstm").build()
    kernels, _ = find_prunable(lstm)
    assert [v.name for v in kernels["lstm"]] == ["kernel", "recurrent_kernel"]


def nested_cnn():
    """A classifier whose convolutions live in a nested backbone model, called with training=False."""
    layers = keras.layers
    inputs = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(8, 3, strides=2, name="bb_conv1")(inputs)
    x = layers.BatchNormalization(name="bb_bn")(x)
    x = layers.Conv2D(8, 3, strides=2, activation="relu", name="bb_conv2")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    image = keras.Input((28, 28, 1), name="pixels")
    y = layers.Flatten(name="flatten")(backbone(image, training=False))
    return keras.Model(image, layers.Dense(10, activation="softmax", name="probs")(y), name="nested")


def test_a_nested_backbone_is_read_as_one_flat_graph_so_its_layers_are_pruned_and_counted(digits):
    model = nested_cnn()
    flat = keras_graph.as_functional(model)
    assert [s.name for s in keras_graph.trace(model)] == ["pixels", "bb_conv1", "bb_bn", "bb_conv2", "flatten", "probs"]
    x = digits.x_test[:4]
    np.testing.assert_allclose(np.asarray(flat(x)), np.asarray(model(x)), atol=1e-6)
    assert metrics.count_macs(model) == 13 * 13 * 9 * 8 + 6 * 6 * 72 * 8 + 288 * 10

    kernels, _ = find_prunable(model)
    assert set(kernels) == {"bb_conv1", "bb_conv2", "probs"}
    result = prune(model, 0.5, FineTune(digits.x_train[:256], digits.y_train[:256], LENET_RECIPE, 1, progress=False))
    assert {row["layer"]: row["sparsity"] for row in result.layers} == pytest.approx(
        {"bb_conv1": 0.5, "bb_conv2": 0.5, "probs": 0.5}, abs=0.02)
    smaller = prune_structured(model, 0.5,
                               FineTune(digits.x_train[:256], digits.y_train[:256], LENET_RECIPE, 1, progress=False)).model
    assert smaller.get_layer("bb_conv2").kernel.shape == (3, 3, 4, 4)


def test_nested_models_whose_layer_names_clash_are_refused_by_name():
    def block(name):
        inputs = keras.Input((8, 8, 1))
        return keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(inputs), name=name)

    image = keras.Input((8, 8, 1))
    twin = keras.Model(image, keras.layers.Add()([block("left")(image), block("right")(image)]), name="twin")
    with pytest.raises(ModelError, match="model 'twin' nests model\\(s\\) 'left', 'right' whose layers cannot be joined"):
        keras_graph.trace(twin)


def test_macs_count_transposed_convolutions_and_both_directions_of_a_bidirectional_layer():
    def macs(layer, shape):
        inputs = keras.Input(shape)
        return metrics.count_macs(keras.Model(inputs, layer(inputs)))

    assert macs(keras.layers.Conv2DTranspose(5, 3, strides=2, padding="same"), (8, 8, 3)) == 8 * 8 * 3 * 3 * 5 * 3
    one_way = macs(keras.layers.LSTM(8), (10, 4))
    assert one_way == 10 * (4 * 32 + 8 * 32)
    assert macs(keras.layers.Bidirectional(keras.layers.LSTM(8)), (10, 4)) == 2 * one_way


def test_a_sparsity_outside_zero_to_one_is_refused(lenet, digits):
    for bad in (0, 1, 1.5, -0.2):
        with pytest.raises(OptionError, match=r"--prune must be between 0 and 1 \(exclusive\)"):
            prune(lenet.model, bad, FineTune(digits.x_train, digits.y_train, LENET_RECIPE, 1, progress=False))
    with pytest.raises(OptionError, match="cannot prune layer.*nope.*prunable layers are conv1"):
        prune(lenet.model, {"nope": 0.5}, FineTune(digits.x_train, digits.y_train, LENET_RECIPE, 1, progress=False))
    for bad in (0, 65, 2.5):
        with pytest.raises(OptionError, match="--prune-block must be a whole number from 1 to 64"):
            prune(lenet.model, PruneSpec(0.5, block=bad),
                  FineTune(digits.x_train, digits.y_train, LENET_RECIPE, 1, progress=False))


# --- structured pruning ---------------------------------------------------------------------------


def test_structured_pruning_of_a_small_cnn_halves_its_channels_and_computes_the_same_on_the_rest():
    model = zoo.get_model("cnn").build()
    plan = structured.plan_channels(model, 0.5)
    smaller = structured.rebuild(model, plan)
    assert smaller.get_layer("conv1").filters == 16 and smaller.get_layer("conv2").filters == 32
    assert smaller.get_layer("fc1").units == 64 and smaller.get_layer("probs").units == 10
    assert smaller.get_layer("fc1").kernel.shape == (12 * 12 * 32, 64)  # Flatten rows sliced per channel
    before, after = metrics.model_stats(model), metrics.model_stats(smaller)
    assert 0.2 < after["macs"] / before["macs"] <= 0.5
    assert after["params_total"] < 0.5 * before["params_total"]

    # The rebuilt model equals the original with the removed filters zeroed (no batch norm here).
    zeroed = keras.models.clone_model(model)
    zeroed.set_weights(model.get_weights())
    for group in plan.groups.values():
        if group.keep is not None:
            drop = sorted(set(range(group.channels)) - set(group.keep))
            for name in group.producers:
                kernel, bias = zeroed.get_layer(name).get_weights()
                kernel[..., drop] = 0
                bias[drop] = 0
                zeroed.get_layer(name).set_weights([kernel, bias])
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(smaller(x)), np.asarray(zeroed(x)), atol=1e-5)


def test_structured_pruning_of_resnet8_keeps_residual_adds_consistent_and_converts(tmp_path):
    model = zoo.get_model("resnet8").build()
    plan = structured.plan_channels(model, 0.5)
    together = {tuple(sorted(g.producers)) for g in plan.groups.values() if g.keep is not None}
    assert ("conv0", "s1_conv2") in together and ("s2_conv2", "s2_shortcut") in together
    assert ("s3_conv2", "s3_shortcut") in together
    smaller = structured.rebuild(model, plan)
    for name in ("s1_add", "s2_add", "s3_add"):
        shapes = {tuple(t.shape) for t in smaller.get_layer(name).input}
        assert len(shapes) == 1, (name, shapes)
    assert smaller.get_layer("s3_add").output.shape[-1] == 32
    assert smaller.get_layer("s2_bn2").gamma.shape == (16,)
    ratio = metrics.count_macs(smaller) / metrics.count_macs(model)
    assert 0.2 < ratio <= 0.5
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    assert np.asarray(smaller(x)).shape == (2, 10)
    engine = _engine(to_tflite(smaller, "none"), tmp_path)
    assert engine.outputs[0].shape == (1, 10)


def test_keeping_the_residual_channels_prunes_only_inside_the_blocks_of_resnet8(tmp_path):
    model = zoo.get_model("resnet8").build()
    plan = structured.plan_channels(model, StructuredSpec(0.5, residual="keep"))
    pruned = {tuple(g.producers) for g in plan.groups.values() if g.keep is not None}
    assert pruned == {("s1_conv1",), ("s2_conv1",), ("s3_conv1",)}
    frozen = {g["layers"][0]: g["frozen"] for g in plan.summary()["frozen_groups"]}
    assert "joined by 's1_add' (Add)" in frozen["conv0"] and "--structured-residual keep" in frozen["conv0"]
    assert plan.summary()["residual"] == "keep"
    smaller = structured.rebuild(model, plan)
    assert smaller.get_layer("s1_conv1").filters == 8 and smaller.get_layer("s1_conv2").filters == 16
    assert smaller.get_layer("s3_conv2").kernel.shape == (3, 3, 32, 64)
    ratio = metrics.count_macs(smaller) / metrics.count_macs(model)
    assert 0.5 < ratio < 0.6  # the blocks' convs are most of the MACs: pruning their inner half halves them
    engine = _engine(to_tflite(smaller, "none"), tmp_path)
    assert engine.outputs[0].shape == (1, 10)
    with pytest.raises(OptionError, match="unknown --structured-residual 'drop'; choose one of prune, keep"):
        structured.plan_channels(model, StructuredSpec(0.5, residual="drop"))


def test_a_residual_fraction_prunes_the_residual_stream_less_than_the_insides_of_the_blocks(tmp_path):
    model = zoo.get_model("resnet8").build()
    plan = structured.plan_channels(model, StructuredSpec(0.5, residual=0.25))
    kept = {name: len(g.keep) for g in plan.groups.values() if g.keep is not None for name in g.producers}
    assert kept["s1_conv1"] == 8 and kept["s2_conv1"] == 16 and kept["s3_conv1"] == 32  # inside: half
    assert kept["conv0"] == kept["s1_conv2"] == 12  # residual stream: a quarter off
    assert kept["s2_conv2"] == kept["s2_shortcut"] == 24 and kept["s3_conv2"] == kept["s3_shortcut"] == 48
    smaller = structured.rebuild(model, plan)
    assert smaller.get_layer("s2_shortcut").filters == 24 and smaller.get_layer("s3_conv1").kernel.shape == (3, 3, 24, 32)
    macs = [metrics.count_macs(structured.rebuild(model, structured.plan_channels(model, StructuredSpec(0.5, residual=r))))
            for r in ("keep", 0.25, "prune")]
    assert macs[0] > macs[1] > macs[2]
    assert [structured.describe_residual(r) for r in ("prune", "keep", 0.25)] == [
        "", "residual channels kept", "25% of the residual channels removed"]  # as reports say it
    engine = _engine(to_tflite(smaller, "none"), tmp_path)
    assert engine.outputs[0].shape == (1, 10)
    for bad, message in ((1.5, "--structured-residual must be between 0 and 1"),
                         ("most", "unknown --structured-residual 'most'; choose one of prune, keep or a fraction")):
        with pytest.raises(OptionError, match=message):
            structured.plan_channels(model, StructuredSpec(0.5, residual=bad))


def test_a_layer_share_sets_the_cut_of_the_channels_that_layer_produces_over_the_residual_choice(tmp_path):
    model = zoo.get_model("resnet8").build()
    # the residual stream kept except in the first stage: naming either producer of a group sets it
    plan = structured.plan_channels(model,
                                    StructuredSpec(0.5, residual="keep", layers=(("s1_conv2", 0.5), ("s3_conv1", 0.25))))
    kept = {name: len(g.keep) for g in plan.groups.values() if g.keep is not None for name in g.producers}
    assert kept == {"conv0": 8, "s1_conv2": 8, "s1_conv1": 8, "s2_conv1": 16, "s3_conv1": 48}
    assert plan.summary()["layers"] == {"s1_conv2": 0.5, "s3_conv1": 0.25}
    smaller = structured.rebuild(model, plan)
    assert smaller.get_layer("s2_conv1").kernel.shape == (3, 3, 8, 16)  # reads the narrower first stage
    assert smaller.get_layer("s2_shortcut").kernel.shape == (1, 1, 8, 32)
    assert _engine(to_tflite(smaller, "none"), tmp_path).outputs[0].shape == (1, 10)
    # 0 keeps a group whole, and the report says which option did
    plan = structured.plan_channels(model, StructuredSpec(0.5, layers=["s3_conv2=0"]))
    frozen = {g["layers"][0]: g["frozen"] for g in plan.summary()["frozen_groups"]}
    assert frozen["s3_conv2"] == "is kept whole (--structured-layer s3_conv2=0)"
    assert structured.describe_layers({"conv0": 0.5, "s3_conv2": 0.0}) == "set per layer: conv0 50%, s3_conv2 0%"


def test_an_alignment_rounds_every_kept_width_up_to_its_multiple_and_says_which_groups_it_keeps_whole(tmp_path):
    model = zoo.get_model("resnet8").build()
    # a 60% cut keeps 6 / 13 / 26 inside the blocks and 6 / 13 / 26 of the residual 16 / 32 / 64
    plain = structured.plan_channels(model, 0.6)
    kept = {name: len(g.keep) for g in plain.groups.values() if g.keep is not None for name in g.producers}
    assert kept["s1_conv1"] == 6 and kept["s2_conv1"] == 13 and kept["s3_conv1"] == 26 and kept["conv0"] == 6
    plan = structured.plan_channels(model, StructuredSpec(0.6, align=8))
    kept = {name: len(g.keep) for g in plan.groups.values() if g.keep is not None for name in g.producers}
    assert kept == {"conv0": 8, "s1_conv2": 8, "s1_conv1": 8, "s2_conv1": 16, "s2_conv2": 16, "s2_shortcut": 16,
                    "s3_conv1": 32, "s3_conv2": 32, "s3_shortcut": 32}
    # the best ones by L1 norm: the aligned plan keeps the plain plan's channels and the next ranked ones
    for name in ("conv0", "s2_conv1", "s3_conv1"):
        by_layer = {p: g for g in plain.groups.values() for p in g.producers}
        assert set(by_layer[name].keep) <= set({p: g for g in plan.groups.values() for p in g.producers}[name].keep)
    assert plan.summary()["align"] == 8
    smaller = structured.rebuild(model, plan)
    assert smaller.get_layer("s3_conv2").kernel.shape == (3, 3, 32, 32)
    assert _engine(to_tflite(smaller, "none"), tmp_path).outputs[0].shape == (1, 10)
    # rounding 6 of the first stage's 16 up to 16 keeps that group whole, and the report says why
    plan = structured.plan_channels(model, StructuredSpec(0.6, align=16))
    frozen = {g["layers"][0]: g["frozen"] for g in plan.summary()["frozen_groups"]}
    assert frozen["conv0"] == "is kept whole: keeping 6 of its 16 channels rounds up to all 16 (--structured-align 16)"
    assert frozen["s1_conv1"].startswith("is kept whole: keeping 6 of its 16")
    # a share named per layer is taken as given: it is how a cut narrows the next layer's inputs
    named = structured.plan_channels(model, StructuredSpec(0.6, layers=(("conv0", 0.5),), align=16))
    assert len(named.groups[named.tensors["conv0"][0]].keep) == 8
    with pytest.raises(OptionError, match=r"^--structured-align 128 keeps every group of model '.*' whole \(conv0"):
        structured.plan_channels(model, StructuredSpec(0.5, align=128))
    assert {len(g.keep) for g in plan.groups.values() if g.keep is not None} == {16, 32}
    assert structured.describe_cut("keep", (), 16) == "residual channels kept; kept channels rounded up to multiples of 16"
    for bad in (0, -8, 2.5, "16"):
        with pytest.raises(OptionError, match=r"--structured-align takes a whole number of channels >= 1 \(e.g. 8 or 16\)"):
            structured.plan_channels(model, StructuredSpec(0.5, align=bad))


@pytest.mark.parametrize("layers, message", [
    ((("s9_conv",  0.5),), "--structured-layer s9_conv: no Conv or Dense layer of that name in the model "
                           "(its Conv/Dense layers: conv0, s1_conv1,"),
    ((("probs", 0.5),), "--structured-layer probs: its channels cannot be pruned (probs reaches the model's output"),
    ((("conv0", 0.5), ("s1_conv2", 0.25)), "--structured-layer s1_conv2=0.25 and conv0=0.5 name the same channels "
                                           "(conv0, s1_conv2 are pruned together): give one share"),
    ((("conv0", 1.0),), "--structured-layer conv0 takes a fraction in [0, 1) (0 keeps its channels whole), got 1.0"),
    (("conv0",), "--structured-layer takes NAME=FRACTION (e.g. conv0=0.5), got 'conv0'"),
])
def test_a_layer_share_that_names_no_prunable_group_is_an_option_error(layers, message):
    model = zoo.get_model("resnet8").build()
    with pytest.raises(OptionError) as error:
        structured.plan_channels(model, StructuredSpec(0.5, layers=layers))
    assert str(error.value).startswith(message)


def test_depthwise_and_batch_norm_follow_their_input_and_the_classifier_is_never_pruned():
    model = zoo.get_model("ds_cnn").build()
    plan = structured.plan_channels(model, 0.5)
    smaller = structured.rebuild(model, plan)
    assert smaller.get_layer("conv0").filters == 32
    assert smaller.get_layer("dw1").kernel.shape == (3, 3, 32, 1)
    assert smaller.get_layer("bn0").moving_variance.shape == (32,)
    assert smaller.get_layer("pw4").filters == 32 and smaller.get_layer("probs").units == 10
    frozen = plan.summary()["frozen_groups"]
    assert frozen == [{"layers": ["probs"], "channels": 10, "kept": 10,
                       "frozen": "reaches the model's output (the classifier is never pruned)"}]


def test_a_residual_add_prunes_its_branches_together_through_batch_norm_depthwise_and_flatten():
    model = small_bn_cnn()
    plan = structured.plan_channels(model, 0.5)
    assert {tuple(sorted(g.producers)) for g in plan.groups.values() if g.keep is not None} == {("conv1", "pw")}
    smaller = structured.rebuild(model, plan)
    assert smaller.get_layer("conv1").filters == 8 and smaller.get_layer("pw").filters == 8
    assert smaller.get_layer("bn1").gamma.shape == (8,) and smaller.get_layer("dw").kernel.shape == (3, 3, 8, 1)
    assert smaller.get_layer("probs").kernel.shape == (7 * 7 * 8, 10)
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    assert np.asarray(smaller(x)).shape == (2, 10)


def test_the_pipeline_reports_structured_pruning_with_the_residual_channels_kept_layer_shares_and_alignment(lenet):
    from edgedl.optimize import StructuredSpec

    cut = StructuredSpec(0.5, residual="keep", layers=(("fc1", 0.25),), align=4)
    report = optimize(lenet.model, OptimizeOptions(structured=cut, dataset="digits", epochs=1, lr_scale=1.0), progress=False)
    assert report.options["lr_scale"] == 1.0 and report.finetuning["lr_scale"] == 1.0
    assert report.finetuning["learning_rate"] == zoo.get_model("lenet").recipe["learning_rate"]
    assert report.options["structured"] == 0.5 and report.options["structured_residual"] == "keep"
    assert report.options["structured_layers"] == {"fc1": 0.25} and report.options["structured_align"] == 4
    assert report.structured["residual"] == "keep" and report.structured["align"] == 4
    assert ("residual channels kept; set per layer: fc1 25%; kept channels rounded up to multiples of 4"
            in report.stage("structured").description)
    kept = {g["layers"][0]: g["kept"] for g in report.structured["pruned_groups"]}
    assert kept == {"conv1": 4, "conv2": 8, "fc1": 90, "fc2": 44}  # 3 and 42 rounded up to fours; fc1's share as given
    assert "kept channels rounded up to multiples of 4" in report.to_markdown()
    assert report.stage("structured").params_total < report.stage("baseline").params_total


def test_distillation_fine_tunes_the_student_and_leaves_the_teacher_alone(lenet, digits):
    from edgedl.optimize.finetune import distiller, finetune

    teacher_weights = [w.copy() for w in lenet.model.get_weights()]
    trainable = lenet.model.trainable
    smaller = structured.rebuild(lenet.model, structured.plan_channels(lenet.model, 0.5))
    before = [w.copy() for w in smaller.get_weights()]
    finetune(smaller, FineTune(digits.x_train, digits.y_train, LENET_RECIPE, 2, progress=False, teacher=lenet.model))
    assert any(not np.array_equal(a, b) for a, b in zip(before, smaller.get_weights()))
    assert evaluate(smaller, digits.x_test, digits.y_test)[1] > 0.5  # as without a teacher: it learns
    for a, b in zip(teacher_weights, lenet.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert lenet.model.trainable == trainable
    with pytest.raises(OptionError, match=r"cannot distil: the teacher predicts shape \(10,\), the student \(3,\)"):
        inputs = keras.Input((28, 28, 1))
        distiller(keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs))), lenet.model)


def test_with_distill_alpha_0_the_labels_carry_no_weight_and_the_teacher_alone_teaches(lenet, digits):
    from edgedl.optimize.finetune import Teacher, finetune

    wrong = (digits.y_train + 1 + np.arange(len(digits.y_train)) % 9) % 10  # no label is right
    cut = structured.plan_channels(lenet.model, 0.5)
    start = evaluate(structured.rebuild(lenet.model, cut), digits.x_test, digits.y_test)[1]

    def tuned(labels, alpha):
        student = structured.rebuild(lenet.model, cut)
        teacher = Teacher(lenet.model, alpha=alpha)
        finetune(student, FineTune(digits.x_train, labels, LENET_RECIPE, 2, progress=False, teacher=teacher))
        return student

    right, wrong_0, wrong_half = tuned(digits.y_train, 0.0), tuned(wrong, 0.0), tuned(wrong, 0.5)
    for a, b in zip(right.get_weights(), wrong_0.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert evaluate(wrong_0, digits.x_test, digits.y_test)[1] > start + 0.3  # it learns, from the teacher
    assert any(not np.allclose(a, b, atol=1e-3) for a, b in zip(right.get_weights(), wrong_half.get_weights()))


def test_the_pipeline_distils_every_fine_tuning_stage_from_the_baseline_when_asked(lenet):
    report = optimize(lenet.model, OptimizeOptions(prune=0.5, dataset="digits", epochs=1, distill=True),
                      progress=False)
    assert report.options["distill"] is True and report.options["distill_alpha"] is None
    assert report.finetuning["distillation"] == {"teacher": "the float baseline", "alpha": 0.5, "temperature": 4.0}
    assert report.stage("pruned").sparsity >= 0.45
    assert report.stage("pruned").accuracy > 0.6, report.stages  # one epoch on digits: it still classifies
    with pytest.raises(OptionError, match="--distill teaches fine-tuning: use it with --prune, --structured or --qat"):
        optimize(lenet.model, OptimizeOptions(quantize="int8", distill=True, dataset="digits"), progress=False)


def test_fine_tuning_starts_at_the_asked_multiple_of_the_recipes_learning_rate(lenet, digits):
    from edgedl.optimize.finetune import LR_SCALE, finetune

    recipe = dict(LENET_RECIPE, schedule="constant")
    for scale in (LR_SCALE, 0.1):
        model = keras_graph.copy_model(lenet.model)
        finetune(model, FineTune(digits.x_train[:64], digits.y_train[:64], recipe, 1, progress=False, lr_scale=scale))
        assert float(model.optimizer.learning_rate) == pytest.approx(recipe["learning_rate"] * scale)


def test_structured_pruning_fine_tunes_a_trained_model(lenet, digits):
    result = prune_structured(lenet.model, 0.5,
                              FineTune(digits.x_train, digits.y_train, LENET_RECIPE, 2, progress=False))
    assert result.model.count_params() < 0.35 * lenet.model.count_params()
    assert evaluate(result.model, digits.x_test, digits.y_test)[1] > 0.5


def _randomize(model, seed=0):
    """Give every weight (batch-norm statistics too) random values, so nothing is zero or one by chance."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) * rng.choice([-1, 1], w.shape)
                           if "variance" not in v.path else rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                           for v, w in zip(layer.weights, layer.get_weights())])
    return model


def test_gradual_masking_zeroes_a_growing_share_of_each_group_and_removing_the_masked_channels_is_exact():
    model = _randomize(small_bn_cnn())
    the_plan = structured.plan_channels(model, 0.5)
    masker = structured.ChannelMasker(the_plan, Schedule("polynomial", 0, 100, 10))
    (group,) = masker.targets  # conv1, bn1, dw, dw_bn and pw (joined by the Add): 16 channels, 8 kept
    masker.update(0.5)
    masker.apply()
    assert masker.masks[group].sum() == 12  # half of the 8 channels it loses
    masked = np.flatnonzero(masker.masks[group] == 0)
    assert np.all(np.asarray(model.get_layer("conv1").kernel)[..., masked] == 0)
    assert np.all(np.asarray(model.get_layer("dw").kernel)[..., masked, :] == 0)
    assert np.all(np.asarray(model.get_layer("bn1").gamma)[masked] == 0)
    assert np.all(np.asarray(model.get_layer("pw").bias)[masked] == 0)
    masker.finish()
    assert masker.masks[group].sum() == 8 and set(masked) <= set(np.flatnonzero(masker.masks[group] == 0))
    smaller = structured.rebuild(model, masker.final_plan())
    assert smaller.get_layer("conv1").filters == 8 and smaller.get_layer("probs").kernel.shape == (7 * 7 * 8, 10)
    x = np.random.default_rng(1).random((4, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(smaller(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


def odd_cnn():
    """Layers that do not map zero to zero: a sigmoid conv, batch norm without scale, batch norm after Flatten."""
    layers = keras.layers
    inputs = keras.Input((12, 12, 1), name="image")
    x = layers.Conv2D(8, 3, activation="sigmoid", name="conv1")(inputs)
    x = layers.BatchNormalization(scale=False, name="bn1")(x)
    x = layers.Conv2D(8, 3, strides=2, name="conv2")(x)
    x = layers.BatchNormalization(name="bn2")(layers.Flatten(name="flatten")(x))
    x = layers.Dense(16, activation="hard_sigmoid", name="fc1")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="odd_cnn")


def test_removing_the_masked_channels_is_exact_even_where_a_masked_channel_is_not_zero():
    model = _randomize(odd_cnn())
    the_plan = structured.plan_channels(model, 0.5)
    masker = structured.ChannelMasker(the_plan, Schedule("polynomial", 0, 100, 10))
    assert len(masker.targets) == 3  # conv1 + bn1, conv2 + bn2 (through Flatten), fc1
    masker.finish()
    smaller = structured.rebuild(model, masker.final_plan())
    assert smaller.get_layer("conv1").filters == 4 and smaller.get_layer("fc1").units == 8
    x = np.random.default_rng(1).random((4, 12, 12, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(smaller(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


def test_gradual_structured_pruning_fine_tunes_masked_then_smaller_and_says_so(lenet, digits):
    result = prune_structured(lenet.model, StructuredSpec(0.5, schedule="polynomial"),
                              FineTune(digits.x_train, digits.y_train, LENET_RECIPE, 4, progress=False))
    assert result.model.count_params() < 0.35 * lenet.model.count_params()
    assert result.summary["schedule"] == "polynomial" and result.summary["masking_epochs"] == 2
    assert {g["layers"][0]: g["kept"] for g in result.summary["pruned_groups"]} == {"conv1": 3, "conv2": 8, "fc1": 60,
                                                                                   "fc2": 42}
    assert evaluate(result.model, digits.x_test, digits.y_test)[1] > 0.5
    assert [w.shape for w in lenet.model.get_layer("conv1").get_weights()] == [(5, 5, 1, 6), (6,)]  # left unchanged
    assert (structured.describe_cut("keep", (), 1, "polynomial", 5) ==
            "residual channels kept; channels masked gradually over the first 3 of 5 fine-tuning epochs, then removed")
    with pytest.raises(OptionError, match="--structured-schedule polynomial needs at least 2 fine-tuning epochs"):
        prune_structured(lenet.model, StructuredSpec(0.5, schedule="polynomial"),
                         FineTune(digits.x_train, digits.y_train, LENET_RECIPE, 1, progress=False))
    with pytest.raises(OptionError, match="unknown --structured-schedule 'gradual'; choose one of oneshot, polynomial"):
        prune_structured(lenet.model, StructuredSpec(0.5, schedule="gradual"),
                         FineTune(digits.x_train, digits.y_train, LENET_RECIPE, 2, progress=False))


def test_a_custom_layer_stops_structured_pruning_and_is_named():
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.w

    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = Scale(name="my_scale")(x)
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    with pytest.raises(ModelError, match=r"cannot rebuild layer 'my_scale' \(Scale"):
        structured.plan_channels(keras.Model(inputs, outputs), 0.5)


# --- quantization ---------------------------------------------------------------------------------


def _engine(tflite: bytes, folder):
    path = folder / "model.tflite"
    path.write_bytes(tflite)
    return LiteRTEngine(path)


@pytest.mark.parametrize("mode", ["dynamic", "float16", "int8", "int16x8"])
def test_each_post_training_quantization_gives_a_loadable_model_that_still_classifies(lenet, mode, tmp_path):
    report = optimize(lenet.model, OptimizeOptions(quantize=mode, dataset="digits", num_calibration=100),
                      progress=False)
    base, quantized = report.stage("baseline"), report.stage(mode)
    engine = _engine(report.tflite, tmp_path)
    assert engine.inputs[0].shape == (1, 28, 28, 1)
    assert quantized.accuracy >= base.accuracy - 0.02, report.stages
    limit = {"dynamic": 0.3, "float16": 0.55, "int8": 0.3, "int16x8": 0.32}[mode]  # int16x8: 64-bit biases
    assert quantized.size_bytes <= limit * base.size_bytes, report.stages


def test_int8_with_integer_io_takes_int8_inputs(lenet, tmp_path):
    report = optimize(lenet.model, OptimizeOptions(quantize="int8", io_type="int8", dataset="digits"), progress=False)
    engine = _engine(report.tflite, tmp_path)
    assert engine.inputs[0].dtype == "int8" and engine.outputs[0].dtype == "int8"
    assert report.stage("int8").accuracy >= report.stage("baseline").accuracy - 0.02


def _tensor_facts(tflite: bytes):
    """(names of all tensors, {weight tensor name or index: number of scales}, data offsets of the buffers)."""
    import tflite as schema

    model = schema.Model.GetRootAsModel(tflite, 0)
    graph = model.Subgraphs(0)
    names, scales = [], {}
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        names.append((t.Name() or b"").decode())
        q = t.Quantization()
        if t.Buffer() and model.Buffers(t.Buffer()).DataLength() and q is not None and q.ScaleLength():
            scales[i] = q.ScaleLength()
    base = np.frombuffer(tflite, np.uint8).ctypes.data
    offsets = [model.Buffers(i).DataAsNumpy().ctypes.data - base
               for i in range(model.BuffersLength()) if model.Buffers(i).DataLength()]
    return names, scales, offsets


def test_stripped_names_leave_the_model_computing_the_same_with_its_io_names_and_aligned_weights(lenet, digits,
                                                                                                 tmp_path):
    from edgedl.convert import strip_names

    full = to_tflite(lenet.model, "int8", digits.x_train[:100], io_type="int8")
    stripped = strip_names(full)
    assert len(stripped) < len(full)
    names, _, offsets = _tensor_facts(stripped)
    full_names, _, _ = _tensor_facts(full)
    (tmp_path / "full").mkdir(), (tmp_path / "stripped").mkdir()
    a, b = _engine(full, tmp_path / "full"), _engine(stripped, tmp_path / "stripped")
    assert [t.name for t in b.inputs] == [t.name for t in a.inputs] and b.outputs[0].name == a.outputs[0].name
    assert sum(1 for n in names if n) == 2 and sum(1 for n in full_names if n) == len(full_names)
    assert all(offset % 16 == 0 for offset in offsets)  # TFLM and NPUs read weights in place
    from edgedl.runtime.quant import predict

    np.testing.assert_array_equal(predict(a, digits.x_test[:50]), predict(b, digits.x_test[:50]))
    with pytest.raises(OptionError, match="not a .tflite flatbuffer"):
        strip_names(b"PK\x03\x04 a zip file")


def test_stripping_also_drops_the_converters_metadata_and_stores_repeats_once(lenet, digits):
    import tflite as schema

    from edgedl.convert import strip_names

    full = to_tflite(lenet.model, "int8", digits.x_train[:100], per_channel=False)
    stripped = strip_names(full)
    before, after = schema.Model.GetRootAsModel(full, 0), schema.Model.GetRootAsModel(stripped, 0)
    assert before.MetadataLength() == 2 and after.MetadataLength() == 0  # min_runtime_version, CONVERSION_METADATA
    graph = after.Subgraphs(0)
    data = [after.Buffers(i).DataLength() for i in range(after.BuffersLength())]
    assert data[0] == 0 and all(data[1:])  # one empty buffer, shared by every tensor without data
    activations = [graph.Tensors(i) for i in range(graph.TensorsLength()) if not data[graph.Tensors(i).Buffer()]]
    assert len(activations) >= 8 and {t.Buffer() for t in activations} == {0}
    name_bytes = sum(len(before.Subgraphs(0).Tensors(i).Name()) for i in range(graph.TensorsLength()))
    assert len(full) - len(stripped) > name_bytes + 400  # what sharing saves, beyond the names themselves
    assert strip_names(stripped) == stripped  # stripping again changes nothing


def test_per_tensor_int8_has_one_scale_per_weight_tensor_and_a_smaller_stripped_file(lenet, digits):
    report = optimize(lenet.model,
                      OptimizeOptions(quantize="int8", per_channel=False, strip_names=True, dataset="digits"),
                      progress=False)
    base, q = report.stage("baseline"), report.stage("int8")
    assert report.options["per_channel"] is False and report.options["strip_names"] is True
    assert "per-tensor" in q.description
    names, scales, _ = _tensor_facts(report.tflite)
    assert scales and set(scales.values()) == {1}
    per_channel = to_tflite(lenet.model, "int8", digits.x_train[:200])
    assert set(_tensor_facts(per_channel)[1].values()) != {1}
    assert q.size_bytes < len(per_channel)
    assert base.size_bytes < len(to_tflite(lenet.model, "none"))  # the baseline is measured stripped too
    assert q.accuracy >= base.accuracy - 0.02, report.stages


def test_per_tensor_scales_need_post_training_integer_quantization(lenet):
    with pytest.raises(OptionError, match="--per-tensor needs --quantize int8 or int16x8, not 'float16'"):
        optimize(lenet.model, OptimizeOptions(quantize="float16", per_channel=False, dataset="digits"),
                 progress=False)
    with pytest.raises(OptionError, match="--per-tensor cannot go with --qat"):
        optimize(lenet.model, OptimizeOptions(qat=True, per_channel=False, dataset="digits"), progress=False)


def test_representative_data_of_the_wrong_shape_or_dtype_is_refused_before_any_work(lenet):
    wrong_shape = np.zeros((10, 8, 8, 1), np.float32)
    with pytest.raises(OptionError, match=r"samples of shape \(8, 8, 1\), the model takes \(28, 28, 1\)"):
        optimize(lenet.model, OptimizeOptions(quantize="int8", dataset="digits", representative=wrong_shape),
                 progress=False)
    with pytest.raises(OptionError, match="must be floating point.*uint8"):
        optimize(lenet.model,
                 OptimizeOptions(quantize="int8", dataset="digits", representative=np.zeros((10, 28, 28, 1), np.uint8)))


def test_recurrent_layers_integer_quantization_cannot_convert_are_refused_naming_the_operator():
    from edgedl.optimize.options import check_quantizable

    check_quantizable(zoo.get_model("gru").build(), "int8")  # fixed time steps: unrolled (edgedl.recurrent)
    check_quantizable(zoo.get_model("lstm").build(), "int8")  # fused

    # inside a wrapper, inside a nested model, over a free number of time steps: found all the same,
    # before TensorFlow's calibrator crashes on it
    inner_in = keras.Input((None, 28))
    inner = keras.Model(inner_in, keras.layers.Bidirectional(keras.layers.LSTM(4), name="bi")(inner_in), name="encoder")
    outer_in = keras.Input((None, 28))
    outer = keras.Model(outer_in, keras.layers.Dense(10)(inner(outer_in)), name="outer")
    # (Keras numbers a layer name already taken in this process: forward_lstm_1, ...)
    with pytest.raises(UnsupportedOperatorError, match=r"operator\(s\) LSTM \(layer 'forward_lstm(_\d+)?', "
                                                       r"'backward_lstm(_\d+)?'\).*time steps is not fixed"):
        check_quantizable(outer, "int8")
    check_quantizable(outer, "dynamic")  # fine
    with pytest.raises(UnsupportedOperatorError, match="recurrent layer"):
        to_tflite(outer, "int8", np.zeros((4, 28, 28), np.float32))
    conv = keras.Sequential([keras.Input((4, 8, 1)), keras.layers.ConvLSTM1D(2, 3, name="clstm")], name="conv")
    with pytest.raises(UnsupportedOperatorError, match=r"ConvLSTM1D \(layer 'clstm'\)"):
        check_quantizable(conv, "int8")


def test_batch_norm_folding_is_exact():
    model = small_bn_cnn()
    rng = np.random.default_rng(0)
    for name in ("bn1", "dw_bn"):
        layer = model.get_layer(name)
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 0.5, beta.shape),
                           rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2, var.shape)])
    folded, pairs = qat_module.fold_batchnorm(model)
    assert pairs == [("conv1", "bn1"), ("dw", "dw_bn")]
    assert not any(type(layer).__name__ == "BatchNormalization" for layer in folded.layers)
    x = rng.random((4, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x)), atol=1e-5)


@pytest.fixture(scope="module")
def bn_cnn(digits):
    """The small batch-norm CNN, trained for 4 epochs on digits."""
    from edgedl.optimize.finetune import finetune

    model = small_bn_cnn()
    recipe = dict(LENET_RECIPE, batch_size=32)
    finetune(model, FineTune(digits.x_train, digits.y_train, recipe, 4, progress=False, lr_scale=1.0))
    return model


def test_qat_folds_batch_norm_keeps_sparsity_and_exports_an_int8_model_at_least_as_good_as_ptq(bn_cnn, tmp_path):
    report = optimize(bn_cnn, OptimizeOptions(prune=0.5, qat=True, dataset="digits", epochs=2, io_type="int8"),
                      progress=False)
    assert [s.stage for s in report.stages] == ["baseline", "pruned", "ptq", "qat"]
    assert [tuple(pair) for pair in report.qat["folded"]] == [("conv1", "bn1"), ("dw", "dw_bn")]
    assert not any(type(layer).__name__ == "BatchNormalization" for layer in report.model.layers)
    engine = _engine(report.tflite, tmp_path)
    assert engine.inputs[0].dtype == "int8" and engine.outputs[0].dtype == "int8"
    # Pruned zeros survive QAT (folding scales a kernel per channel, which keeps zeros zero).
    assert report.stage("qat").sparsity >= 0.5 and abs(kernel_sparsity(report.model.get_layer("pw")) - 0.5) < 0.01
    # The report names the layers it did not prune, and why.
    assert {r["layer"] for r in report.skipped_layers} == {"bn1", "dw_bn"}
    assert "## Layers not pruned" in report.to_markdown()
    # A few steps on digits are noisy; the benchmark measures QAT against PTQ on real data.
    assert report.stage("qat").accuracy >= report.stage("ptq").accuracy - 0.03, report.stages
    assert report.stage("qat").accuracy > 0.5, report.stages
    assert report.qat["not_fake_quantized"] == []


def test_qat_names_the_kernels_it_trains_without_fake_quantization():
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.SeparableConv2D(4, 3, name="sep")(inputs)
    x = keras.layers.Conv2D(4, 3, groups=2, name="grouped")(x)
    x = keras.layers.Conv2D(4, 3, name="plain")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="probs")(keras.layers.Flatten()(x)))
    rows = qat_module.not_fake_quantized(model)
    assert [(r["layer"], r["kind"]) for r in rows] == [("sep", "SeparableConv2D"), ("grouped", "Conv2D")]
    assert rows[1]["reason"] == "a grouped convolution"


def test_recurrent_kernels_are_pruned_too(digits):
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Reshape((28, 28))(inputs)
    x = keras.layers.GRU(8, name="gru")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="probs")(x))
    result = prune(model, 0.5, FineTune(digits.x_train[:128], digits.y_train[:128], LENET_RECIPE, 1, progress=False))
    row = next(r for r in result.layers if r["layer"] == "gru")
    assert row["weights"] == ["kernel", "recurrent_kernel"] and abs(row["sparsity"] - 0.5) < 0.01


# --- the command line -----------------------------------------------------------------------------


def edgedl(*args):
    proc = subprocess.run([sys.executable, "-m", "edgedl.cli.main", *args], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.slow
def test_the_cli_writes_the_pruned_model_an_int8_tflite_and_a_report(lenet_file, tmp_path):
    from edgedl.graph import read_tflite

    out = tmp_path / "out"
    code, stdout, stderr = edgedl("optimize", str(lenet_file), "--prune", "0.5", "--prune-block", "2",
                                  "--quantize", "int8", "--epochs", "1", "--deterministic", "--out", str(out), "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["data"]["dataset"] == "digits"  # from lenet.json beside the model
    assert report["finetuning"]["deterministic"] is True
    assert report["options"]["prune_block"] == 2 and report["options"]["prune_scope"] == "layer"
    assert report["finetuning"]["recipe_from"].startswith("zoo model 'lenet'")
    assert [s["stage"] for s in report["stages"]] == ["baseline", "pruned", "int8"]
    for row in report["stages"]:
        assert {"accuracy", "size_bytes", "gzip_bytes", "params_total", "params_nonzero", "macs", "sparsity"} <= set(row)
    assert report["stages"][1]["params_nonzero"] < 0.6 * report["stages"][1]["params_total"]
    assert sorted(p.name for p in out.iterdir()) == ["model.keras", "model.tflite", "report.json", "report.md",
                                                     "stages.png"]
    assert keras.saving.load_model(out / "model.keras").count_params() == report["stages"][0]["params_total"]
    # --quantize int8 wrote the int8 model: int8 weights and activations in every convolution and dense
    # layer, int32 biases, float only at the edges (float I/O by default, quantized on the way in).
    graph = read_tflite(out / "model.tflite")
    compute = [op for op in graph.ops if op.name in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(compute) == 5
    for op in compute:
        weights, bias = (graph.tensors[i] for i in op.inputs[1:3])
        assert weights["dtype"] == "int8" and bias["dtype"] == "int32", op
        assert [graph.tensors[i]["dtype"] for i in op.outputs] == ["int8"], op
    assert graph.is_quantized and graph.op_counts["QUANTIZE"] == 1 and graph.op_counts["DEQUANTIZE"] == 1
    assert graph.inputs[0]["dtype"] == "float32" and graph.size_bytes < 0.4 * report["stages"][0]["size_bytes"]
    markdown = (out / "report.md").read_text()
    assert "| pruned |" in markdown and "](stages.png)" in markdown
    assert report["files"]["plot"] == str(out / "stages.png")


def test_the_pipeline_reports_per_layer_pruning_targets(lenet):
    from edgedl.optimize.prune import PruneSpec

    spec = PruneSpec(0.8, layers=(("fc1", 0.5), ("probs", 0.0)))
    report = optimize(lenet.model, OptimizeOptions(prune=spec, dataset="digits", epochs=1, limit=256), progress=False)
    assert report.options["prune_layers"] == {"fc1": 0.5, "probs": 0.0}
    assert {r["layer"]: r["target"] for r in report.pruned_layers} == {"conv1": 0.8, "conv2": 0.8, "fc1": 0.5, "fc2": 0.8}
    assert "prune 0.8, fc1=0.5, probs=0 (layer, polynomial)" in report.to_markdown()
    pruned = next(s for s in report.stages if s.stage == "pruned")
    assert "of the pruned layers' kernel weights zeroed (targets per layer)" in pruned.description


def test_the_report_folder_is_written_all_at_once_and_a_second_run_replaces_it_whole(lenet, tmp_path):
    from edgedl.report.optimize import FILES

    out = tmp_path / "out"
    optimize(lenet.model, OptimizeOptions(quantize="float16", dataset="digits", limit=64, out_dir=out),
             progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES.values())
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # an ordinary folder, not the staging folder's 0700

    report = optimize(lenet.model, OptimizeOptions(quantize="dynamic", dataset="digits", limit=64, out_dir=out),
                      progress=False)
    lines = report.summary()
    assert lines[0].startswith("baseline: ") and "(+0.00 pts)" in lines[0] and lines[1].startswith("dynamic: ")
    assert lines[2:] == [f"wrote {out / name}" for name in FILES.values()]
    assert json.loads((out / "report.json").read_text())["options"]["quantize"] == "dynamic"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left beside it

    (out / "model.tflite").unlink()
    (out / "model.tflite").mkdir()
    with pytest.raises(OptionError, match="-o/--output .* holds a folder named 'model.tflite', where edgedl writes a file"):
        optimize(lenet.model, OptimizeOptions(quantize="float16", dataset="digits", limit=64, out_dir=out),
                 progress=False)


def test_the_stage_plot_is_a_png_that_widens_with_the_stages_and_draws_the_same_bytes_twice():
    from matplotlib.image import imread

    from dataclasses import replace

    from edgedl.report.optimize import StageResult, plot_stages

    def row(stage, accuracy, size, gzip_bytes):
        return StageResult(stage, stage, "float32 tflite", accuracy, size, gzip_bytes, 61_706, 61_706, 0.0, 2_300_000)

    stages = [row("baseline", 0.9911, 250_000, 230_000), row("pruned", 0.9890, 250_000, 90_000),
              row("int8", 0.9887, 70_000, 30_000)]
    png = plot_stages(stages)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == plot_stages(stages)  # the same stages draw the same bytes
    image = imread(io.BytesIO(png))
    assert image.shape[1] > image.shape[0] > 200  # three panels side by side
    wider = imread(io.BytesIO(plot_stages(stages + [replace(stages[-1], stage="more")])))
    assert wider.shape[1] > image.shape[1]  # room for each stage's bar


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.keras").write_bytes(b"this is not a zip archive")
    (folder / "model.tflite").write_bytes(b"TFL3: never read, the suffix says enough")
    np.save(folder / "small.npy", np.zeros((8, 8, 8, 1), np.float32))
    np.save(folder / "bytes.npy", np.zeros((8, 28, 28, 1), np.uint8))
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Reshape((28, 28, 1))(inputs)
    x = keras.layers.ConvLSTM1D(2, 3, name="lstm")(x)  # a recurrent layer integer calibration cannot take
    x = keras.layers.Flatten()(x)
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x), name="rnn").save(folder / "rnn.keras")
    _write_custom_layer_model(folder / "custom.keras")
    left, right = keras.Input((28, 28, 1)), keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(keras.layers.Add()([left, right]))
    keras.Model([left, right], keras.layers.Dense(10, activation="softmax")(x), name="two").save(folder / "two.keras")
    return folder


def _write_custom_layer_model(path):
    """A .keras file whose config names a custom layer class the CLI process cannot import."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    outputs = keras.layers.Dense(10, name="probs")(keras.layers.Flatten()(x))
    keras.Model(inputs, outputs).save(path)
    with zipfile.ZipFile(path) as z:
        files = {name: z.read(name) for name in z.namelist()}
    config = json.loads(files["config.json"])
    conv = config["config"]["layers"][1]
    conv.update(module=None, class_name="Scale", registered_name="mine>Scale")
    conv["config"]["name"] = "my_scale"
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


@pytest.mark.parametrize("case, args, message", [
    ("not a model", ["{bad}/notes.keras", "--quantize", "int8"], "notes.keras: not a .keras model: the file is not a zip"),
    ("converted model", ["{bad}/model.tflite", "--quantize", "int8"],
     "a .tflite model is already converted and cannot be trained, pruned or re-quantized here"),
    ("custom layer", ["{bad}/custom.keras", "--structured", "0.5"], "cannot rebuild layer(s) 'my_scale' (mine>Scale)"),
    ("representative shape", ["{lenet}", "--quantize", "int8", "--representative", "{bad}/small.npy"],
     "samples of shape (8, 8, 1), the model takes (28, 28, 1)"),
    ("representative dtype", ["{lenet}", "--quantize", "int8", "--representative", "{bad}/bytes.npy"],
     "must be floating point like the model input, got dtype uint8"),
    ("sparsity", ["{lenet}", "--prune", "1.5"], "--prune must be between 0 and 1 (exclusive), got 1.5"),
    ("structured ratio", ["{lenet}", "--structured", "0"], "--structured must be between 0 and 1 (exclusive), got 0"),
    ("residual share", ["{lenet}", "--structured", "0.5", "--structured-residual", "half"],
     "unknown --structured-residual 'half'; choose one of prune, keep or a fraction between 0 and 1"),
    ("layer share without --structured", ["{lenet}", "--structured-layer", "conv1=0.5"],
     "--structured-layer sets shares of structured pruning: give --structured too"),
    ("layer share of no layer", ["{lenet}", "--structured", "0.5", "--structured-layer", "nope=0.5"],
     "--structured-layer nope: no conv or dense layer of that name in the model"),
    ("alignment below one", ["{lenet}", "--structured", "0.5", "--structured-align", "0"],
     "--structured-align takes a whole number of channels >= 1 (e.g. 8 or 16), got 0"),
    ("alignment not whole", ["{lenet}", "--structured", "0.5", "--structured-align", "2.5"],
     "--structured-align takes a whole number of channels >= 1 (e.g. 8 or 16), got '2.5'"),
    ("alignment that keeps everything", ["{lenet}", "--structured", "0.5", "--structured-align", "128"],
     "--structured-align 128 keeps every group of model"),
    ("alignment without --structured", ["{lenet}", "--quantize", "int8", "--structured-align", "16"],
     "--structured-align rounds the channels structured pruning keeps: give --structured too"),
    ("gradual schedule with one epoch", ["{lenet}", "--structured", "0.5", "--structured-schedule", "polynomial",
                                         "--epochs", "1"], "--structured-schedule polynomial needs at least 2 fine-tuning"),
    ("schedule without --structured", ["{lenet}", "--quantize", "int8", "--structured-schedule", "polynomial"],
     "--structured-schedule says how structured pruning removes channels: give --structured too"),
    ("learning-rate scale", ["{lenet}", "--structured", "0.5", "--lr-scale", "0"],
     "--lr-scale must be a number in (0, 10], a multiple of the recipe's learning rate, got 0.0"),
    ("learning-rate scale without pruning", ["{lenet}", "--quantize", "int8", "--lr-scale", "1"],
     "--lr-scale sets the fine-tuning rate after pruning: use it with --prune or --structured"),
    ("distillation weight", ["{lenet}", "--structured", "0.5", "--distill", "--distill-alpha", "1"],
     "--distill-alpha must be in [0, 1), the share of the loss on the labels"),
    ("distillation weight without --distill", ["{lenet}", "--structured", "0.5", "--distill-alpha", "0.2"],
     "--distill-alpha weighs the labels against the teacher: give --distill too"),
    ("prune block", ["{lenet}", "--prune", "0.5", "--prune-block", "0"], "--prune-block must be a whole number from 1 to 64"),
    ("prune layer of no layer", ["{lenet}", "--prune", "0.5", "--prune-layer", "nope=0.5"],
     "--prune-layer nope: no prunable layer of that name; the prunable layers are conv1, conv2, fc1, fc2, probs"),
    ("prune layer not NAME=FRACTION", ["{lenet}", "--prune-layer", "fc1"], "--prune-layer takes NAME=FRACTION"),
    ("representative without integer quantization", ["{lenet}", "--quantize", "float16", "--representative",
                                                     "{bad}/small.npy"],
     "--representative is calibration data for --quantize int8 or int16x8, but --quantize float16 calibrates nothing"),
    ("two inputs", ["{bad}/two.keras", "--quantize", "float16"],
     "model 'two' has 2 input(s) and 1 output(s); edgedl trains and measures models with one input"),
    ("mode the model cannot take", ["{bad}/rnn.keras", "--quantize", "int8"],
     "'int8' quantization cannot take operator(s) ConvLSTM1D (layer 'lstm')"),
    ("unknown mode", ["{lenet}", "--quantize", "int4"], "unknown quantization 'int4'"),
    ("qat with float16", ["{lenet}", "--qat", "--quantize", "float16"], "use it with --quantize int8"),
    ("per-tensor without int8", ["{lenet}", "--prune", "0.5", "--per-tensor"], "--per-tensor needs --quantize int8"),
])
def test_bad_input_is_one_error_line_with_nothing_written(case, args, message, bad_inputs, lenet_file, tmp_path):
    out = tmp_path / "out"
    args = [a.format(bad=bad_inputs, lenet=lenet_file) for a in args]
    code, stdout, stderr = edgedl("optimize", *args, "--dataset", "digits", "--out", str(out))
    assert code != 0
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message.lower() in errors[0].lower(), stderr
    assert not out.exists() or not any(out.iterdir())


# --- on real data ---------------------------------------------------------------------------------


def _have(name):
    from edgedl.data import is_present

    try:
        return is_present(name)
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _have("mnist"), reason="MNIST is not in the data dir (set EDGEDL_DATA)")
def test_lenet_on_mnist_keeps_its_accuracy_through_80_percent_sparsity_and_int8():
    trained = train("lenet", TrainOptions(dataset="mnist", epochs=3, limit=30000), progress=False)
    report = optimize(trained.model,
                      OptimizeOptions(prune=0.8, quantize="int8", dataset="mnist", limit=30000, epochs=3),
                      progress=False)
    base, pruned, q = report.stage("baseline"), report.stage("pruned"), report.stage("int8")
    assert pruned.sparsity >= 0.79
    assert pruned.accuracy >= base.accuracy - 0.015, report.stages
    assert q.accuracy >= pruned.accuracy - 0.005, report.stages
    assert q.gzip_bytes <= q.size_bytes / 2.5
