"""A GRU over log-mel frames of spoken digits (FSDD)."""

RECIPE = {
    "description": "GRU(96) over 61 log-mel frames, then a dense classifier",
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
    from edgedl.zoo import zoo_module

    return zoo_module("lstm").build_rnn("GRU", input_shape, num_classes)
