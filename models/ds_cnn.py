"""DS-CNN for keyword spotting (Zhang et al. 2017, MLPerf Tiny's KWS model), on FSDD log-mel features."""

RECIPE = {
    "description": "DS-CNN (small): a 10x4 strided convolution, four depthwise-separable blocks, global pooling",
    "dataset": "fsdd",
    "split": "official",
    "input_shape": [61, 40, 1],
    "num_classes": 10,
    "preprocessing": "1 s at 8 kHz, 40 log-mel bands every 16 ms, fixed normalisation",
    "epochs": 30,
    "batch_size": 32,
    "optimizer": "adam",
    "learning_rate": 0.003,
    "schedule": "cosine",
    "augment": None,
    "target_accuracy": 0.97,
}


# Batch norm uses momentum 0.9 (Keras defaults to 0.99): with a few thousand training samples the
# moving statistics must settle within a few hundred steps, or inference diverges from training.


def build(input_shape=(61, 40, 1), num_classes=10, filters=64):
    import keras
    from keras import layers

    reg = keras.regularizers.l2(1e-4)
    inputs = keras.Input(shape=tuple(input_shape), name="features")
    x = layers.Conv2D(filters, (10, 4), strides=2, padding="same", use_bias=False,
                      kernel_regularizer=reg, name="conv0")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="bn0")(x)
    x = layers.ReLU(name="relu0")(x)
    for i in range(1, 5):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"dw{i}_bn")(x)
        x = layers.ReLU(name=f"dw{i}_relu")(x)
        x = layers.Conv2D(filters, 1, use_bias=False, kernel_regularizer=reg, name=f"pw{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"pw{i}_bn")(x)
        x = layers.ReLU(name=f"pw{i}_relu")(x)
    x = layers.Dropout(0.3, name="drop")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="ds_cnn")
