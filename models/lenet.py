"""LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, for 28x28 grey digits."""

RECIPE = {
    "description": "LeNet-5: two 5x5 convolutions with pooling, three dense layers",
    "dataset": "mnist",
    "split": "official",
    "input_shape": [28, 28, 1],
    "num_classes": 10,
    "preprocessing": "pixels scaled to [0, 1]",
    "epochs": 12,
    "batch_size": 128,
    "optimizer": "adam",
    "learning_rate": 0.002,
    "schedule": "cosine",
    "augment": None,
    "target_accuracy": 0.990,
}


def build(input_shape=(28, 28, 1), num_classes=10):
    import keras
    from keras import layers

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 5, padding="valid", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation="relu", name="fc1")(x)
    x = layers.Dense(84, activation="relu", name="fc2")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="lenet")
