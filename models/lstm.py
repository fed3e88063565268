"""An LSTM over log-mel frames of spoken digits (FSDD)."""

RECIPE = {
    "description": "LSTM(96) over 61 log-mel frames, then a dense classifier",
    "dataset": "fsdd",
    "split": "official",
    "input_shape": [61, 40, 1],
    "num_classes": 10,
    "preprocessing": "1 s at 8 kHz, 40 log-mel bands every 16 ms, fixed normalisation",
    "epochs": 40,
    "batch_size": 32,
    "optimizer": "adam",
    "learning_rate": 0.002,
    "schedule": "cosine",
    "augment": None,
    "target_accuracy": 0.95,
}


def build(input_shape=(61, 40, 1), num_classes=10):
    return build_rnn("LSTM", input_shape, num_classes)


def build_rnn(cell, input_shape, num_classes, units=96):
    """A one-layer recurrent classifier over feature frames; ``cell`` is ``"LSTM"`` or ``"GRU"``."""
    import keras
    from keras import layers

    frames, bands = input_shape[0], input_shape[1]
    inputs = keras.Input(shape=tuple(input_shape), name="features")
    x = layers.Reshape((frames, bands), name="frames")(inputs)
    x = getattr(layers, cell)(units, name=cell.lower())(x)
    x = layers.Dropout(0.2, name="drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=cell.lower())
