"""Training: a zoo model (or a user's Keras model) on a real data set, seeded and repeatable.

``train()`` returns a :class:`TrainResult` holding the trained model and its metrics; the CLI
``edgedl train`` writes both (the ``.keras`` model and a metrics JSON) atomically.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgedl import _io, _lazy
from edgedl.errors import ModelError, OptionError

log = logging.getLogger(__name__)

DEFAULT_RECIPE = {
    "epochs": 5, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.001,
    "schedule": "cosine", "augment": None,
}


@dataclass
class TrainResult:
    """A trained Keras model and what it measured."""

    model: object = field(repr=False)
    metrics: dict

    def save(self, out: str | Path) -> tuple[Path, Path]:
        """Write ``out`` (.keras) and ``out`` with ``.json`` (the metrics), each atomically."""
        out = Path(out)
        if out.suffix != ".keras":
            raise OptionError(f"--out must end in .keras, got '{out.name}'")
        with _io.atomic_path(out, suffix=".keras") as tmp:
            self.model.save(tmp)
        metrics_path = out.with_suffix(".json")
        _io.write_json(metrics_path, self.metrics)
        return out, metrics_path


def resolve(model: str, dataset: str | None = None):
    """Return (keras_model, recipe, zoo_name) for a zoo name or a model file."""
    from edgedl import zoo
    from edgedl.modelio import is_model_path, load_model

    if model in zoo.model_names():
        entry = zoo.get_model(model)
        return None, dict(entry.recipe), entry.name
    if is_model_path(model):
        keras_model = load_model(model)
        if dataset is None:
            raise OptionError(f"training the model file '{model}' needs --dataset (it has no zoo recipe)")
        recipe = dict(DEFAULT_RECIPE, dataset=dataset, split=None, target_accuracy=None)
        return keras_model, recipe, None
    zoo.get_model(model)  # raises with the list of known names
    raise ModelError(f"unknown model '{model}'")


def train(model: str, *, dataset: str | None = None, epochs: int | None = None, seed: int = 0,
          data_dir=None, limit: int | None = None, batch_size: int | None = None,
          split: str | None = None, progress: bool = True, callbacks: list | None = None) -> TrainResult:
    """Train a zoo model (by name) or a Keras model file on a data set.

    Args:
        model: a zoo name (``edgedl models``) or a ``.keras``/``.h5``/SavedModel path.
        dataset: data set name; defaults to the recipe's.
        epochs: defaults to the recipe's.
        seed: seeds weights, shuffling and augmentation; the same seed gives the same model.
        data_dir: data directory (else ``EDGEDL_DATA``, else the user cache).
        limit: at most this many samples per split (for quick runs).
        batch_size: defaults to the recipe's.
        split: data set split, e.g. ``official`` or ``speaker:theo`` for FSDD.
        progress: show a progress bar.
        callbacks: extra Keras callbacks for ``fit`` (e.g. ``keras.callbacks.CSVLogger`` for long runs).

    Returns:
        TrainResult with the model and metrics (test accuracy and loss, wall time, data set, split).

    Example:
        >>> result = train("lenet", dataset="digits", epochs=1)  # doctest: +SKIP
        >>> result.metrics["accuracy"] > 0.5  # doctest: +SKIP
    """
    from edgedl.data import load_dataset

    if epochs is not None and epochs < 1:
        raise OptionError(f"--epochs must be a positive integer, got {epochs}")
    keras_model, recipe, zoo_name = resolve(model, dataset)
    dataset = dataset or recipe["dataset"]
    split = split or recipe.get("split") or None
    epochs = epochs or recipe["epochs"]
    batch_size = batch_size or recipe["batch_size"]

    data = load_dataset(dataset, data_dir=data_dir, split=split, limit=limit, seed=seed)
    keras = _lazy.keras()
    tf = _lazy.tf()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    if keras_model is None:
        from edgedl import zoo

        keras_model = zoo.get_model(zoo_name).build(input_shape=data.input_shape, num_classes=data.num_classes)
    _check_shapes(keras_model, data)

    steps = math.ceil(len(data.x_train) / batch_size)
    compile_for_training(keras_model, recipe, steps * epochs)
    train_ds = make_dataset(data.x_train, data.y_train, batch_size, recipe.get("augment"), seed)

    callbacks = list(callbacks or [])
    if progress:
        callbacks.append(ProgressBar(epochs, steps, title=f"training {zoo_name or keras_model.name}"))
    start = time.perf_counter()
    history = keras_model.fit(train_ds, epochs=epochs, verbose=0, callbacks=callbacks)
    wall = time.perf_counter() - start
    loss, accuracy = evaluate(keras_model, data.x_test, data.y_test)
    metrics = {
        "model": zoo_name or keras_model.name,
        "dataset": data.name,
        "split": data.split,
        "num_train": int(len(data.x_train)),
        "num_test": int(len(data.x_test)),
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "accuracy": accuracy,
        "loss": loss,
        "target_accuracy": recipe.get("target_accuracy"),
        "train_wall_time_s": round(wall, 2),
        "num_params": int(keras_model.count_params()),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "preprocessing": data.preprocessing,
    }
    return TrainResult(model=keras_model, metrics=metrics)


def _check_shapes(model, data):
    want = tuple(model.input_shape[1:])
    if want != tuple(data.input_shape):
        raise ModelError(
            f"model '{model.name}' takes inputs of shape {want}, but data set '{data.name}' gives {tuple(data.input_shape)}"
        )


def compile_for_training(model, recipe: dict, total_steps: int):
    """Compile ``model`` with the recipe's optimizer, learning rate and schedule."""
    keras = _lazy.keras()
    lr = recipe.get("learning_rate", 1e-3)
    if recipe.get("schedule") == "cosine" and total_steps > 1:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total_steps, alpha=0.01)
    name = recipe.get("optimizer", "adam")
    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    if name not in optimizers:
        raise OptionError(f"unknown optimizer '{name}'; known: {', '.join(optimizers)}")
    model.compile(optimizer=optimizers[name](learning_rate=lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def make_dataset(x, y, batch_size: int, augment: str | None, seed: int):
    """A shuffled, batched tf.data pipeline; ``augment="flip_crop"`` adds random flips and 4-pixel crops."""
    tf = _lazy.tf()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if augment == "flip_crop":
        h, w = x.shape[1:3]

        def aug(img, label):
            img = tf.image.random_flip_left_right(img)
            img = tf.pad(img, [[4, 4], [4, 4], [0, 0]], mode="REFLECT")
            img = tf.image.random_crop(img, (h, w, x.shape[3]))
            return img, label

        ds = ds.map(aug, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    elif augment:
        raise OptionError(f"unknown augmentation '{augment}'; known: flip_crop")
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def evaluate(model, x, y, batch_size: int = 256) -> tuple[float, float]:
    """(loss, top-1 accuracy) of a Keras classifier on arrays."""
    probs = predict(model, x, batch_size)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0))))
    accuracy = float(np.mean(np.argmax(probs, axis=1) == y))
    return round(loss, 6), round(accuracy, 6)


def predict(model, x, batch_size: int = 256) -> np.ndarray:
    outs = [np.asarray(model(x[i:i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0)


def _keras_callback_base():
    return _lazy.keras().callbacks.Callback


class ProgressBar:
    """A rich progress bar as a Keras callback (built lazily so this module imports without Keras)."""

    def __new__(cls, epochs: int, steps: int, title: str = "training"):
        base = _keras_callback_base()

        class _Bar(base):
            def on_train_begin(self, logs=None):
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                         TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                                         transient=False)
                self.progress.start()
                self.task = self.progress.add_task(title, total=epochs * steps, status="")

            def on_train_batch_end(self, batch, logs=None):
                logs = logs or {}
                status = f"loss {logs.get('loss', float('nan')):.4f} acc {logs.get('accuracy', float('nan')):.4f}"
                self.progress.update(self.task, advance=1, status=status)

            def on_epoch_end(self, epoch, logs=None):
                self.progress.update(self.task, description=f"{title} (epoch {epoch + 1}/{epochs})")

            def on_train_end(self, logs=None):
                self.progress.stop()

        return _Bar()
