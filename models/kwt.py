"""A keyword transformer (KWT, Berg et al. 2021) over log-mel frames of spoken digits (FSDD).

Patches of two frames (2 x 40 log-mel bands) are embedded by a strided convolution, a learned
positional embedding (a bias per token and channel) is added, encoder blocks of multi-head
self-attention and a ReLU MLP follow (pre-norm, as in KWT; ReLU rather than KWT's GELU, which
TFLite Micro has no kernel for), and the tokens are averaged (global average pooling instead of
KWT's class token: no custom layer, so the saved model loads without this module).
"""

RECIPE = {
    "description": "KWT (tiny): 2x40 patches -> 30 tokens of 64, learned positions, 2 pre-norm encoder blocks "
                   "(4-head self-attention, ReLU MLP of 128), token average, dense classifier",
    "dataset": "fsdd",
    "split": "official",
    "input_shape": [61, 40, 1],
    "num_classes": 10,
    "preprocessing": "1 s at 8 kHz, 40 log-mel bands every 16 ms, fixed normalisation",
    "epochs": 60,
    "batch_size": 32,
    "optimizer": "adam",
    "learning_rate": 0.002,
    "schedule": "cosine",
    "augment": None,
    "target_accuracy": 0.95,
}


def build(input_shape=(61, 40, 1), num_classes=10, dim=64, num_heads=4, mlp_dim=128, num_blocks=2, patch_frames=2):
    """Build the transformer; ``input_shape`` is (frames, bands, 1)."""
    import keras
    from keras import layers

    frames, bands = int(input_shape[0]), int(input_shape[1])
    tokens = frames // patch_frames
    inputs = keras.Input(shape=tuple(input_shape), name="features")
    # one patch = patch_frames whole frames; a trailing frame that fills no patch is dropped
    x = layers.Conv2D(dim, (patch_frames, bands), strides=(patch_frames, bands), name="patch_embed")(inputs)
    x = layers.Reshape((tokens, dim), name="tokens")(x)
    # learned positional embedding: a bias per token and channel, after a dim x dim projection that starts as
    # the identity (an element-wise EinsumDense lowers to a BATCH_MATMUL with a constant operand, which TVM's
    # TFLite frontend cannot import; this one is FULLY_CONNECTED + ADD)
    x = layers.EinsumDense("btd,de->bte", output_shape=(tokens, dim), bias_axes="te",
                           kernel_initializer="identity", name="position")(x)
    for i in range(1, num_blocks + 1):
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm1")(x)
        h = layers.MultiHeadAttention(num_heads, dim // num_heads, dropout=0.1, name=f"block{i}_attention")(h, h)
        x = layers.Add(name=f"block{i}_add1")([x, h])
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm2")(x)
        h = layers.Dense(mlp_dim, activation="relu", name=f"block{i}_mlp1")(h)
        h = layers.Dense(dim, name=f"block{i}_mlp2")(h)
        h = layers.Dropout(0.1, name=f"block{i}_drop")(h)
        x = layers.Add(name=f"block{i}_add2")([x, h])
    x = layers.LayerNormalization(epsilon=1e-6, name="norm")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    x = layers.Dropout(0.2, name="drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="kwt")
