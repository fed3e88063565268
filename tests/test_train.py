"""Training: seeded and repeatable, real data, metrics written beside the model, user models load."""

import json
import re

import numpy as np
import pytest

from edgedl.errors import ModelError, OptionError
from edgedl.keras_utils import predict
from edgedl.modelio import load_model
from edgedl.train import TrainOptions, train


@pytest.fixture(scope="module")
def lenet_on_digits():
    return train("lenet", TrainOptions(dataset="digits", epochs=4, seed=1), progress=False)


def test_lenet_learns_digits(lenet_on_digits):
    m = lenet_on_digits.metrics
    assert m["dataset"] == "digits" and m["epochs"] == 4 and m["seed"] == 1
    assert m["accuracy"] > 0.85, m
    assert m["num_test"] + m["num_train"] == 1797 and m["train_wall_time_s"] > 0
    assert re.fullmatch(r"lenet on digits \(\w+\): test accuracy \d+\.\d\d% loss \d\.\d{4} after 4 epochs in [\d.]+ s",
                        lenet_on_digits.summary())


def test_deterministic_training_gives_the_same_model_bit_for_bit():
    first, again = (train("lenet", TrainOptions(dataset="digits", epochs=2, seed=1, deterministic=True),
                          progress=False)
                    for _ in range(2))
    for a, b in zip(first.model.get_weights(), again.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert again.metrics["accuracy"] == first.metrics["accuracy"] and again.metrics["deterministic"] is True


def test_a_deterministic_run_does_not_leave_determinism_on_for_the_next(lenet_on_digits):
    """Op determinism is process-wide: a deterministic run must not make the next, ordinary one
    pay for it."""
    from tensorflow.python.framework import config

    train("lenet", TrainOptions(dataset="digits", epochs=1, limit=200, deterministic=True), progress=False)
    assert config.is_op_determinism_enabled()
    result = train("lenet", TrainOptions(dataset="digits", epochs=1, limit=200), progress=False)
    assert not config.is_op_determinism_enabled() and result.metrics["deterministic"] is False
    assert lenet_on_digits.metrics["deterministic"] is False


def test_save_writes_model_and_metrics_that_load_back(lenet_on_digits, tmp_path):
    model_path, metrics_path = lenet_on_digits.save(tmp_path / "lenet.keras")
    metrics = json.loads(metrics_path.read_text())
    assert metrics["accuracy"] == lenet_on_digits.metrics["accuracy"]
    assert {"loss", "epochs", "train_wall_time_s", "dataset", "split"} <= set(metrics)
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(predict(load_model(str(model_path)), x), predict(lenet_on_digits.model, x), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.json", "lenet.keras"]  # no temp files left


@pytest.mark.parametrize("fmt", ["h5", "savedmodel"])
def test_user_models_in_other_formats_load_through_the_same_path(lenet_on_digits, tmp_path, fmt):
    model = lenet_on_digits.model
    if fmt == "h5":
        path = tmp_path / "user.h5"
        model.save(path)
    else:
        path = tmp_path / "user_savedmodel"
        model.export(str(path), verbose=False)
    loaded = load_model(str(path))
    x = np.random.default_rng(1).random((3, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(predict(loaded, x), predict(model, x), atol=1e-5)


def test_a_user_model_file_trains_on_a_named_data_set(lenet_on_digits, tmp_path):
    path = tmp_path / "mine.keras"
    lenet_on_digits.model.save(path)
    result = train(str(path), TrainOptions(dataset="digits", epochs=1), progress=False)
    assert result.metrics["accuracy"] > 0.85


def test_a_model_file_from_edgedl_train_keeps_training_with_its_recorded_recipe(tmp_path):
    recipe = {"optimizer": "sgd", "learning_rate": 0.05, "nesterov": True, "weight_decay": 5e-4, "warmup_epochs": 1,
              "batch_size": 32}
    first = train("lenet", TrainOptions(dataset="digits", epochs=1, seed=2, recipe=recipe), progress=False)
    assert first.metrics["recipe"]["optimizer"] == "sgd" and first.metrics["batch_size"] == 32
    path, _ = first.save(tmp_path / "lenet.keras")
    again = train(str(path), TrainOptions(epochs=2, seed=2), progress=False)  # no --dataset: read from lenet.json
    m = again.metrics
    assert m["model"] == "lenet" and m["dataset"] == "digits" and m["batch_size"] == 32
    assert m["recipe"] == first.metrics["recipe"]
    assert m["accuracy"] >= first.metrics["accuracy"] - 0.02 and m["accuracy"] > 0.85


def test_a_model_file_without_metrics_or_dataset_is_refused_by_name(lenet_on_digits, tmp_path):
    path = tmp_path / "bare.keras"
    lenet_on_digits.model.save(path)
    with pytest.raises(OptionError, match=r"'.*bare.keras' needs --dataset .*no metrics JSON"):
        train(str(path), TrainOptions(epochs=1), progress=False)


def test_a_keras_model_in_memory_trains_in_place_once_given_a_data_set():
    import keras

    inputs = keras.Input((28, 28, 1))
    tiny = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs)), name="tiny")
    with pytest.raises(OptionError, match=r"training model 'tiny' needs --dataset"):
        train(tiny, TrainOptions(epochs=1), progress=False)
    before = [w.copy() for w in tiny.get_weights()]
    result = train(tiny, TrainOptions(dataset="digits", epochs=1, limit=200), progress=False)
    assert result.model is tiny and result.metrics["model"] == "tiny" and result.metrics["num_train"] == 200
    assert any(not np.array_equal(a, b) for a, b in zip(before, tiny.get_weights()))


def test_unknown_recipe_settings_are_refused_by_name():
    with pytest.raises(OptionError, match=r"unknown optimizer 'rmsprop'; known: adam, adamw, sgd"):
        train("lenet", TrainOptions(dataset="digits", epochs=1, recipe={"optimizer": "rmsprop"}), progress=False)
    with pytest.raises(OptionError, match=r"unknown schedule 'step'; known: cosine, constant"):
        train("lenet", TrainOptions(dataset="digits", epochs=1, recipe={"schedule": "step"}), progress=False)


def test_a_model_whose_input_does_not_fit_the_data_set_is_refused():
    import keras

    from edgedl.data import load_dataset
    from edgedl.keras_utils import check_shapes

    digits = load_dataset("digits")
    inputs = keras.Input((61, 40, 1))
    spectrogram = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)), name="kws")
    with pytest.raises(ModelError, match=r"takes inputs of shape \(61, 40, 1\).*'digits' gives \(28, 28, 1\)"):
        check_shapes(spectrogram, digits)
    left, right = keras.Input((28, 28, 1)), keras.Input((28, 28, 1))
    two = keras.Model([left, right], keras.layers.Add()([left, right]), name="two")
    with pytest.raises(ModelError, match=r"model 'two' has 2 input\(s\) and 1 output\(s\)"):
        check_shapes(two, digits)


@pytest.mark.slow
def test_lenet_on_real_mnist(data_dir):
    result = train("lenet", TrainOptions(dataset="mnist", data_dir=data_dir, epochs=1, limit=6000), progress=False)
    assert result.metrics["num_train"] == 6000 and result.metrics["accuracy"] > 0.85


@pytest.mark.slow
def test_ds_cnn_on_real_spoken_digits(data_dir):
    result = train("ds_cnn", TrainOptions(data_dir=data_dir, epochs=3), progress=False)
    assert result.metrics["dataset"] == "fsdd" and result.metrics["num_test"] == 300
    assert result.metrics["accuracy"] > 0.3  # well above chance (0.1) after three short epochs


@pytest.mark.slow
def test_resnet8_trains_on_real_cifar10_with_augmentation(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDL_CACHE", str(tmp_path))
    result = train("resnet8", TrainOptions(data_dir=data_dir, epochs=1, limit=500), progress=False)
    assert result.metrics["num_train"] == 500 and np.isfinite(result.metrics["loss"])
