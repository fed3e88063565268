"""The model zoo: every model builds from its recipe and maps its input to class probabilities."""

import numpy as np
import pytest

from edgedl.errors import ModelError
from edgedl.zoo import get_model, list_models, model_names

ZOO = ["cnn", "ds_cnn", "gru", "kwt", "lenet", "lstm", "mlp", "mobilenet_v1", "resnet8"]


def test_the_zoo_holds_the_promised_models():
    assert model_names() == ZOO


@pytest.mark.parametrize("name", ZOO)
def test_each_model_builds_from_its_recipe_and_outputs_probabilities(name):
    entry = get_model(name)
    model = entry.build()
    recipe = entry.recipe
    assert tuple(model.input_shape[1:]) == tuple(recipe["input_shape"])
    assert model.output_shape == (None, recipe["num_classes"])
    x = np.random.default_rng(0).random((2, *recipe["input_shape"]), dtype=np.float32)
    probs = np.asarray(model(x, training=False))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert 0.5 <= recipe["target_accuracy"] < 1.0


def test_lenet_is_lenet5_shaped():
    model = get_model("lenet").build()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 2 and kinds.count("Dense") == 3
    assert model.get_layer("conv1").filters == 6 and model.get_layer("conv2").filters == 16


def test_resnet8_has_three_residual_adds_and_batch_norm():
    model = get_model("resnet8").build()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Add") == 3
    assert kinds.count("BatchNormalization") == 7


def test_ds_cnn_and_mobilenet_are_depthwise_separable():
    for name, blocks in (("ds_cnn", 4), ("mobilenet_v1", 13)):
        kinds = [type(layer).__name__ for layer in get_model(name).build().layers]
        assert kinds.count("DepthwiseConv2D") == blocks


def test_mobilenet_width_is_a_quarter():
    model = get_model("mobilenet_v1").build()
    assert model.get_layer("pw13").filters == 256  # 1024 * 0.25


def test_unknown_model_names_the_zoo_and_the_nearest():
    with pytest.raises(ModelError, match=r"unknown model 'lenett'.*lenet, lstm.*Did you mean 'lenet'"):
        get_model("lenett")


def test_every_recipe_names_a_known_data_set():
    from edgedl.data import DATASETS

    for entry in list_models():
        assert entry.recipe["dataset"] in DATASETS
