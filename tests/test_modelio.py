"""Loading models made by Keras 2 (tf.keras of the TF 2.x era) and SavedModels, as :func:`load_model` does
for every stage: the config keys Keras 3 refuses are rewritten, the weights come from the file, the
outputs equal the model's, the conversion is kept once as .keras, and a model that cannot load says
the whole cause on one line.

The Keras 2 files are written here with h5py the way tf.keras wrote them (``model_config`` JSON of the
Keras 2 layer configs, ``keras_version`` 2.x, ``model_weights/<layer>/<layer>/<weight>:0``), holding
the weights of a Keras 3 twin of the same model, whose outputs are the reference.
"""

import json

import h5py
import numpy as np
import pytest

from edgedl import modelio
from edgedl.errors import InputFileError, ModelError
from edgedl.modelio import converted_model_path, load_model

keras = pytest.importorskip("keras")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Conversions go to this test's own user cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def zeros():
    return {"class_name": "Zeros", "config": {}}


def glorot():
    return {"class_name": "GlorotUniform", "config": {"seed": None}}


def calls(*names):
    """Keras 2's inbound_nodes: one call of the layer on the first output of each named layer."""
    return [[[name, 0, 0, {}] for name in names]]


def input_layer(name, batch_shape):
    return {"class_name": "InputLayer", "config": {"batch_input_shape": [None, *batch_shape], "dtype": "float32",
                                                   "sparse": False, "ragged": False, "name": name},
            "name": name, "inbound_nodes": []}


def layer(cls, name, inbound, **config):
    return {"class_name": cls, "config": {"name": name, "trainable": True, "dtype": "float32", **config},
            "name": name, "inbound_nodes": inbound}


CONV = {"strides": [1, 1], "padding": "same", "data_format": "channels_last", "dilation_rate": [1, 1], "groups": 1,
        "activation": "linear", "use_bias": True, "bias_initializer": zeros(), "bias_regularizer": None,
        "activity_regularizer": None, "bias_constraint": None}
BATCH_NORM = {"axis": [3], "momentum": 0.99, "epsilon": 0.001, "center": True, "scale": True,
              "beta_initializer": zeros(), "gamma_initializer": {"class_name": "Ones", "config": {}},
              "moving_mean_initializer": zeros(), "moving_variance_initializer": {"class_name": "Ones", "config": {}},
              "beta_regularizer": None, "gamma_regularizer": None, "beta_constraint": None, "gamma_constraint": None}
DENSE = {"use_bias": True, "kernel_initializer": glorot(), "bias_initializer": zeros(), "kernel_regularizer": None,
         "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}
RNN = {"return_sequences": False, "return_state": False, "go_backwards": False, "stateful": False, "unroll": False,
       "time_major": False, "activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True,
       "kernel_initializer": glorot(), "recurrent_initializer": {"class_name": "Orthogonal", "config": {"gain": 1.0,
                                                                                                       "seed": None}},
       "bias_initializer": zeros(), "kernel_regularizer": None, "recurrent_regularizer": None, "bias_regularizer": None,
       "activity_regularizer": None, "kernel_constraint": None, "recurrent_constraint": None, "bias_constraint": None,
       "dropout": 0.0, "recurrent_dropout": 0.0, "implementation": 2}


def functional(name, layers, inputs, outputs):
    return {"class_name": "Functional", "config": {"name": name, "layers": layers,
                                                   "input_layers": [[inputs, 0, 0]], "output_layers": [[outputs, 0, 0]]}}


def depthwise_cnn_config(groups=1):
    """A MobileNet-style block as tf.keras 2.11 saved it: DepthwiseConv2D with ``groups``, BatchNorm ``axis: [3]``."""
    return functional("model", [
        input_layer("input_1", (12, 12, 3)),
        layer("Conv2D", "conv2d", calls("input_1"), filters=4, kernel_size=[3, 3], **CONV, kernel_initializer=glorot(),
              kernel_regularizer={"class_name": "L2", "config": {"l2": 9.999999747378752e-05}}, kernel_constraint=None),
        layer("BatchNormalization", "batch_normalization", calls("conv2d"), **BATCH_NORM),
        layer("ReLU", "re_lu", calls("batch_normalization"), max_value=6.0, negative_slope=0.0, threshold=0.0),
        layer("DepthwiseConv2D", "depthwise_conv2d", calls("re_lu"), kernel_size=[3, 3], **{**CONV, "groups": groups},
              depth_multiplier=1, depthwise_initializer=glorot(), depthwise_regularizer=None, depthwise_constraint=None),
        layer("GlobalAveragePooling2D", "global_average_pooling2d", calls("depthwise_conv2d"),
              data_format="channels_last", keepdims=False),
        layer("Dense", "dense", calls("global_average_pooling2d"), units=3, activation="softmax", **DENSE),
    ], "input_1", "dense")


def depthwise_cnn():
    inputs = keras.Input((12, 12, 3), name="input_1")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv2d")(inputs)
    x = keras.layers.BatchNormalization(name="batch_normalization")(x)
    x = keras.layers.ReLU(6.0, name="re_lu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise_conv2d")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="dense")(x), name="model")


def recurrent_config():
    """A Keras 2.3-style Sequential (no InputLayer entry: the first layer carries batch_input_shape) with an LSTM
    that has ``time_major``, nested as a built model in a Functional that also wraps a Dense in TimeDistributed,
    and a final Dense with a mixed-precision ``Policy`` dtype."""
    sequential = {"class_name": "Sequential", "name": "sequential", "inbound_nodes": [[["time_distributed", 0, 0, {}]]],
                  "config": {"name": "sequential", "layers": [
                      {"class_name": "Conv1D", "config": {"name": "conv1d", "trainable": True, "batch_input_shape":
                                                         [None, 8, 4], "dtype": "float32", "filters": 5,
                                                         "kernel_size": [3], **CONV, "strides": [1], "dilation_rate": [1],
                                                         "kernel_initializer": glorot(), "kernel_regularizer": None,
                                                         "kernel_constraint": None}},
                      {"class_name": "LSTM", "config": {"name": "lstm", "trainable": True, "dtype": "float32", "units": 6,
                                                       **RNN, "unit_forget_bias": True}}]}}
    time_distributed = layer("TimeDistributed", "time_distributed", calls("input_1"), layer={
        "class_name": "Dense", "config": {"name": "dense", "trainable": True, "dtype": "float32", "units": 4,
                                          "activation": "relu", **DENSE}})
    head = layer("Dense", "head", [[["sequential", 1, 0, {}]]], units=2, activation="linear", **DENSE)
    head["config"]["dtype"] = {"class_name": "Policy", "config": {"name": "mixed_float16"}}
    return functional("model", [input_layer("input_1", (8, 3)), time_distributed, sequential, head], "input_1", "head")


def recurrent():
    inputs = keras.Input((8, 3), name="input_1")
    x = keras.layers.TimeDistributed(keras.layers.Dense(4, activation="relu", name="dense"), name="time_distributed")(inputs)
    inner = keras.Sequential([keras.Input((8, 4)), keras.layers.Conv1D(5, 3, padding="same", name="conv1d"),
                              keras.layers.LSTM(6, name="lstm")], name="sequential")
    head = keras.layers.Dense(2, dtype="mixed_float16", name="head")
    return keras.Model(inputs, head(inner(x)), name="model")


def write_keras2_h5(path, config, twin):
    """An .h5 file as tf.keras 2.11 wrote it: ``config`` as the model, the weights of ``twin`` (a Keras 3 model
    with the same layers in the same order) under Keras 2's names."""
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = "2.11.0"
        f.attrs["model_config"] = json.dumps(config).encode()
        group = f.create_group("model_weights")
        group.attrs["backend"] = b"tensorflow"
        group.attrs["keras_version"] = b"2.11.0"
        names = [entry["name"] for entry in config["config"]["layers"]]
        group.attrs["layer_names"] = np.array([name.encode() for name in names])
        twin_layers = {layer.name: layer for layer in twin.layers}
        for name in names:
            twin_layer = twin_layers.get(name)  # a layer without weights may have no twin (a TFOpLambda)
            weights = twin_layer.trainable_weights + twin_layer.non_trainable_weights if twin_layer else []
            layer_group = group.create_group(name)
            weight_names = [f"{name}/{w.path.split('/', 1)[-1]}:0" for w in weights]
            layer_group.attrs["weight_names"] = np.array([n.encode() for n in weight_names])
            for weight_name, w in zip(weight_names, weights):
                layer_group.create_dataset(weight_name, data=np.asarray(w.numpy()))


def randomized(model, seed=0):
    """The model with random weights (positive variances), so that loading the wrong ones would show."""
    rng = np.random.default_rng(seed)
    model.set_weights([np.abs(rng.normal(1.0, 0.2, w.shape)) if "variance" in w.path
                       else rng.normal(0.0, 0.3, w.shape) for w in model.weights])
    return model


def test_a_keras2_depthwise_h5_loads_with_the_same_outputs_and_is_converted_once(tmp_path, monkeypatch, caplog):
    twin = randomized(depthwise_cnn())
    path = tmp_path / "vww_like.h5"
    write_keras2_h5(path, depthwise_cnn_config(), twin)
    with pytest.raises(Exception, match=r"Unrecognized keyword arguments passed to DepthwiseConv2D: \{'groups': 1\}"):
        keras.saving.load_model(path, compile=False)  # what Keras 3 alone does with the file

    x = np.random.default_rng(1).random((5, 12, 12, 3)).astype("float32")
    with caplog.at_level("INFO", logger="edgedl.modelio"):
        model = load_model(str(path))
    np.testing.assert_array_equal(model.predict(x, verbose=0), twin.predict(x, verbose=0))
    converted = converted_model_path(path)
    assert converted.is_file() and converted.suffix == ".keras"
    assert f"Keras 2.11.0 file converted to {converted}" in caplog.text
    assert "DepthwiseConv2D 'depthwise_conv2d': dropped groups=1" in caplog.text

    def no_second_conversion(config):
        raise AssertionError("converted again")

    monkeypatch.setattr(modelio, "upgrade_keras2_config", no_second_conversion)
    again = load_model(str(path))
    np.testing.assert_array_equal(again.predict(x, verbose=0), twin.predict(x, verbose=0))
    assert sorted(p.name for p in converted.parent.iterdir()) == [converted.name]


def test_keras2_sequential_rnn_wrapper_and_mixed_precision_forms_load_with_the_same_outputs(tmp_path, caplog):
    twin = randomized(recurrent())
    path = tmp_path / "recurrent.h5"
    write_keras2_h5(path, recurrent_config(), twin)
    x = np.random.default_rng(2).random((4, 8, 3)).astype("float32")
    with caplog.at_level("INFO", logger="edgedl.modelio"):
        model = load_model(str(path))
    assert model.input_shape == (None, 8, 3) and model.output_shape == (None, 2)
    np.testing.assert_allclose(model.predict(x, verbose=0), twin.predict(x, verbose=0), rtol=0, atol=1e-6)
    for change in ("LSTM 'lstm': dropped time_major=False", "Sequential 'sequential': input layer 'conv1d_input'",
                   "'head': input from nested model 'sequential' call 0", "Dense 'head': dtype policy 'mixed_float16'"):
        assert change in caplog.text


def test_keras2_separable_and_transposed_convolutions_load_with_the_same_outputs(tmp_path):
    inputs = keras.Input((8, 8, 3), name="input_1")
    x = keras.layers.SeparableConv2D(4, 3, padding="same", name="separable_conv2d")(inputs)
    twin = randomized(keras.Model(inputs, keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same",
                                                                      name="conv2d_transpose")(x)))
    pointwise = {"depthwise_initializer": glorot(), "pointwise_initializer": glorot(), "depthwise_regularizer": None,
                 "pointwise_regularizer": None, "depthwise_constraint": None, "pointwise_constraint": None}
    config = functional("model", [
        input_layer("input_1", (8, 8, 3)),
        layer("SeparableConv2D", "separable_conv2d", calls("input_1"), filters=4, kernel_size=[3, 3], **CONV,
              depth_multiplier=1, **pointwise),
        layer("Conv2DTranspose", "conv2d_transpose", calls("separable_conv2d"), filters=2, kernel_size=[3, 3],
              **{**CONV, "strides": [2, 2]}, kernel_initializer=glorot(), kernel_regularizer=None,
              kernel_constraint=None, output_padding=None),
    ], "input_1", "conv2d_transpose")
    write_keras2_h5(tmp_path / "convs.h5", config, twin)
    x = np.random.default_rng(6).random((2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(load_model(str(tmp_path / "convs.h5")).predict(x, verbose=0), twin.predict(x, verbose=0))


def test_upgrade_keras2_config_changes_only_the_values_keras2_always_wrote():
    config = depthwise_cnn_config(groups=2)
    assert modelio.upgrade_keras2_config(config) == []
    assert config["config"]["layers"][4]["config"]["groups"] == 2
    assert config["config"]["layers"][1]["config"]["groups"] == 1  # Conv2D takes groups in Keras 3


def test_a_model_that_cannot_load_says_the_whole_cause_on_one_line(tmp_path):
    """groups=2 is no Keras 2 default, so it stays, and Keras's cause comes after a long config: all of it."""
    path = tmp_path / "grouped.h5"
    write_keras2_h5(path, depthwise_cnn_config(groups=2), randomized(depthwise_cnn()))
    with pytest.raises(InputFileError) as error:
        load_model(str(path))
    message = str(error.value)
    assert message.startswith(f"{path}: not a readable Keras 2.11.0 model (")
    assert message.endswith("Unrecognized keyword arguments passed to DepthwiseConv2D: {'groups': 2})")
    assert "\n" not in message and len(message) > 400
    assert not converted_model_path(path).exists()


def test_tensorflow_ops_saved_as_layers_are_refused_by_name(tmp_path):
    config = depthwise_cnn_config()
    config["config"]["layers"].append({"class_name": "TFOpLambda", "name": "tf.math.multiply", "inbound_nodes":
                                       [["dense", 0, 0, {"y": 2.0, "name": None}]],
                                       "config": {"name": "tf.math.multiply", "trainable": True, "dtype": "float32",
                                                  "function": "math.multiply"}})
    config["config"]["output_layers"] = [["tf.math.multiply", 0, 0]]
    path = tmp_path / "ops.h5"
    write_keras2_h5(path, config, randomized(depthwise_cnn()))
    with pytest.raises(ModelError, match=r"ops\.h5: the model holds TensorFlow operations that Keras 2 saved as layers "
                                         r"\('tf\.math\.multiply' \(TFOpLambda\)\); Keras 3 cannot rebuild them"):
        load_model(str(path))


def test_a_keras3_h5_loads_as_it_is_without_conversion(tmp_path):
    model = randomized(depthwise_cnn())
    model.save(tmp_path / "k3.h5")
    x = np.random.default_rng(3).random((2, 12, 12, 3)).astype("float32")
    np.testing.assert_array_equal(load_model(str(tmp_path / "k3.h5")).predict(x, verbose=0), model.predict(x, verbose=0))
    assert not converted_model_path(tmp_path / "k3.h5").exists()


def test_a_tf2_savedmodel_folder_loads_with_the_same_outputs(tmp_path):
    """A SavedModel with a serving signature, as TF 2.x wrote them (tf.saved_model.save of a tf.Module)."""
    import tensorflow as tf

    rng = np.random.default_rng(4)
    kernel, bias = tf.constant(rng.normal(size=(6, 3)).astype("float32")), tf.constant(rng.normal(size=3).astype("float32"))

    class Scorer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="features")])
        def __call__(self, x):
            return {"scores": tf.nn.softmax(tf.matmul(x, kernel) + bias)}

    scorer = Scorer()
    tf.saved_model.save(scorer, str(tmp_path / "saved"), signatures=scorer.__call__)
    tf.saved_model.save(scorer, str(tmp_path / "named"), signatures={"predict": scorer.__call__})
    x = rng.random((4, 6)).astype("float32")
    for folder in ("saved", "named"):  # serving_default, or the only signature there is
        model = load_model(str(tmp_path / folder))
        np.testing.assert_allclose(model.predict(x, verbose=0), scorer(x)["scores"].numpy(), rtol=0, atol=1e-6)


def test_an_exported_keras_savedmodel_loads_with_the_same_outputs(tmp_path):
    twin = randomized(depthwise_cnn())
    twin.export(str(tmp_path / "exported"), verbose=False)
    x = np.random.default_rng(5).random((3, 12, 12, 3)).astype("float32")
    model = load_model(str(tmp_path / "exported"))
    np.testing.assert_allclose(model.predict(x, verbose=0), twin.predict(x, verbose=0), rtol=0, atol=1e-6)


def test_a_savedmodel_without_a_serving_signature_says_so(tmp_path):
    import tensorflow as tf

    module = tf.Module()
    module.scale = tf.Variable(2.0)
    tf.saved_model.save(module, str(tmp_path / "bare"))
    with pytest.raises(InputFileError, match=r"bare: the SavedModel has no serving signature to call \(it has no "
                                             r"signatures\); save it with signatures="):
        load_model(str(tmp_path / "bare"))


def test_edgedl_compile_takes_a_keras2_h5(tmp_path, capsys):
    from edgedl.cli.main import main

    path = tmp_path / "m.h5"
    write_keras2_h5(path, depthwise_cnn_config(), randomized(depthwise_cnn()))
    with pytest.raises(SystemExit) as stop:
        main(["compile", str(path), "-t", "x86_64", "-b", "litert", "-o", str(tmp_path / "m.edgedl")])
    out, err = capsys.readouterr()
    assert stop.value.code in (0, None), err
    assert (tmp_path / "m.edgedl").is_dir()
    assert converted_model_path(path).is_file()
