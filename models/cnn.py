"""The classic Keras MNIST CNN: Conv32-Conv64-MaxPool-Dense128 with dropout."""

RECIPE = {
    "description": "Keras MNIST example CNN: Conv32, Conv64, max-pool, Dense128, dropout",
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
    "target_accuracy": 0.990,
}


def build(input_shape=(28, 28, 1), num_classes=10):
    import keras
    from keras import layers

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Dropout(0.25, name="drop1")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    x = layers.Dropout(0.5, name="drop2")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="cnn")
