"""MobileNet v1 (Howard et al. 2017) at width 0.25, adapted to 32x32 CIFAR-10 images."""

RECIPE = {
    "description": "MobileNet v1, width 0.25: 13 depthwise-separable blocks; first strides removed for 32x32",
    "dataset": "cifar10",
    "split": "official",
    "input_shape": [32, 32, 3],
    "num_classes": 10,
    "preprocessing": "RGB pixels scaled to [0, 1]",
    "epochs": 20,  # measured: 81.99% test accuracy at 20 epochs (benchmarks/results/train_zoo.json)
    "batch_size": 64,
    "optimizer": "adam",
    "learning_rate": 0.002,
    "schedule": "cosine",
    "augment": "flip_crop",
    "target_accuracy": 0.80,
}

# (pointwise filters at width 1.0, depthwise stride); CIFAR's 32x32 input keeps the first stride-2 at 1.
BLOCKS = [(64, 1), (128, 1), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def build(input_shape=(32, 32, 3), num_classes=10, alpha=0.25):
    import keras
    from keras import layers

    reg = keras.regularizers.l2(5e-5)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Conv2D(int(32 * alpha), 3, padding="same", use_bias=False, kernel_regularizer=reg, name="conv0")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="bn0")(x)
    x = layers.ReLU(6.0, name="relu0")(x)
    for i, (filters, stride) in enumerate(BLOCKS, start=1):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"dw{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"dw{i}_relu")(x)
        x = layers.Conv2D(int(filters * alpha), 1, use_bias=False, kernel_regularizer=reg, name=f"pw{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"pw{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"pw{i}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.2, name="drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v1")
