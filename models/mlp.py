"""A multi-layer perceptron: the smallest baseline for image digits."""

RECIPE = {
    "description": "MLP: Dense256-Dense128 on flattened pixels",
    "dataset": "mnist",
    "split": "official",
    "input_shape": [28, 28, 1],
    "num_classes": 10,
    "preprocessing": "pixels scaled to [0, 1]",
    "epochs": 10,
    "batch_size": 128,
    "optimizer": "adam",
    "learning_rate": 0.001,
    "schedule": "cosine",
    "augment": None,
    "target_accuracy": 0.980,
}


def build(input_shape=(28, 28, 1), num_classes=10):
    import keras
    from keras import layers

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Flatten(name="flatten")(inputs)
    x = layers.Dense(256, activation="relu", name="fc1")(x)
    x = layers.Dense(128, activation="relu", name="fc2")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="mlp")
