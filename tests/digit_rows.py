"""scikit-learn's 8x8 digits read as sequences (8 time steps or tokens of 8 features), the real data
the recurrent and attention tests train their small models on, and how they score an engine."""

from __future__ import annotations

import numpy as np


def load() -> dict:
    """The digits in [0, 1] as (N, 8, 8) float32: the first 1400 to train, the other 397 to test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    return {"train": x[:1400], "y_train": d.target[:1400], "test": x[1400:], "y_test": d.target[1400:]}


def train(digits: dict, layer, name: str, epochs: int = 25, learning_rate: float = 0.001, batch_size: int = 32):
    """A classifier: ``layer`` over the rows (its sequence output flattened), then a softmax, trained."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8), name="rows")
    h = layer(inputs)
    if len(h.shape) == 3:
        h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="probs")(h), name=name)
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits["train"], digits["y_train"], epochs=epochs, batch_size=batch_size, verbose=0)
    return model


def scores(engine, x, as_float: bool = True) -> np.ndarray:
    """An engine's raw outputs, one row per sample (as float32, or in the engine's own dtype), each
    sample quantized as an int8 input takes it."""
    spec = engine.inputs[0]
    out = []
    for sample in x:
        raw = sample[None]
        if spec.dtype == "int8":
            raw = np.clip(np.round(raw / spec.scale + spec.zero_point), -128, 127).astype(np.int8)
        y = np.asarray(engine.invoke(raw)).reshape(-1)
        out.append(y.astype(np.float32) if as_float else y)
    return np.array(out)
