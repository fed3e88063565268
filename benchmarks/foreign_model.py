"""A model from elsewhere through the whole chain, on real data: a LeNet-style CNN trained on raw 0-255
MNIST pixels and saved as legacy ``.h5`` (the way older tools and many published models did, with no
rescaling inside), compiled for every backend that runs here and for TFLite Micro, float and int8.

For each compile it records what edgedl did with the built-in data set (0-1 pixels: refused by name, or
what it measured) and with the user's data (``--data`` with the 0-255 test split as a ``.npz``): the
accuracy of each build against the float model's on the same samples, as compile's fidelity check
records it.

    python benchmarks/foreign_model.py -o benchmarks/results/foreign_model.json

Needs ``EDGEDL_DATA`` (MNIST). Takes a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = [  # (target, backend, quantize)
    ("x86_64", "litert", "none"), ("x86_64", "litert", "int8"),
    ("x86_64", "tvm", "none"), ("x86_64", "tvm", "int8"),
    ("x86_64", "onnxruntime", "none"),
    ("cortex_m7", "tflm", "int8"),
]


def train_raw_pixel_model(folder: Path, data_dir: str, epochs: int, seed: int) -> tuple[Path, float]:
    """A small CNN trained on 0-255 pixels (no rescaling layer), saved as .h5; its test accuracy."""
    import keras

    from edgedl.data import load_dataset

    keras.utils.set_random_seed(seed)
    data = load_dataset("mnist", data_dir=data_dir, limit=12000)
    x_train, x_test = data.x_train * 255.0, data.x_test * 255.0
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 5, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 5, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, data.y_train, batch_size=64, epochs=epochs, verbose=0)
    accuracy = float(model.evaluate(x_test, data.y_test, verbose=0)[1])
    path = folder / "raw_pixels.h5"
    model.save(path)
    np.savez(folder / "mnist_0_255.npz", x=x_test.astype(np.float32), y=data.y_test)
    return path, accuracy


def compile_case(model: Path, target: str, backend: str, quantize: str, folder: Path, **data) -> dict:
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.errors import EdgeDLError

    out = folder / f"{backend}-{quantize}-{target}-{'data' if 'data' in data else 'dataset'}.edgedl"
    start = time.perf_counter()
    try:
        bundle = compile_model(str(model), target, str(out), CompileOptions(backend=backend, quantize=quantize,
                                                                           num_samples=500, **data))
    except EdgeDLError as e:
        return {"ok": False, "error": str(e), "seconds": round(time.perf_counter() - start, 1)}
    f = bundle.manifest.fidelity
    return {"ok": True, "seconds": round(time.perf_counter() - start, 1),
            **{k: f.get(k) for k in ("samples", "accuracy", "reference_accuracy", "accuracy_drop", "top1_agreement",
                                     "snr_db", "reference")}}


def _said(row: dict) -> str:
    return f"{100 * row['accuracy']:.1f}%" if row["ok"] else "refused: " + row["error"][:90]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks/results/foreign_model.json")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data_dir = os.environ.get("EDGEDL_DATA")
    if not data_dir:
        sys.exit("set EDGEDL_DATA to the folder holding mnist/")
    with tempfile.TemporaryDirectory(prefix="edgedl-foreign-") as tmp:
        folder = Path(tmp)
        model, float_accuracy = train_raw_pixel_model(folder, data_dir, args.epochs, args.seed)
        rows = []
        for target, backend, quantize in CASES:
            # the built-in data set (0-1 pixels), as a new user would first try, then the user's own data
            builtin = compile_case(model, target, backend, quantize, folder, dataset="mnist", data_dir=data_dir)
            own = compile_case(model, target, backend, quantize, folder, data=str(folder / "mnist_0_255.npz"))
            rows.append({"target": target, "backend": backend, "quantize": quantize,
                         "with_builtin_mnist_0_1": builtin, "with_data_0_255": own})
            print(f"{backend:12s} {quantize:5s} {target:10s} built-in: {_said(builtin)}   --data: {_said(own)}",
                  file=sys.stderr)
    result = {"benchmark": "foreign_model", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "machine": platform.processor() or platform.machine(), "epochs": args.epochs, "seed": args.seed,
              "float_keras_accuracy_0_255": float_accuracy, "rows": rows}
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
