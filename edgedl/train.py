"""Training: a zoo model (or a user's Keras model) on a real data set, seeded and repeatable.

``train()`` returns a :class:`TrainResult` holding the trained model and its metrics; the CLI
``edgedl train`` writes both (the ``.keras`` model and a metrics JSON) atomically.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

import numpy as np

from edgedl import _io, _lazy
from edgedl.errors import ModelError, OptionError

log = logging.getLogger(__name__)

#: seeds NumPy, TensorFlow and Python's random all take
SEED_MAX = 2**32 - 1

DEFAULT_RECIPE = {
    "epochs": 5, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.001,
    "schedule": "cosine", "augment": None,
}


#: recipe keys that say how a model was trained (recorded in the metrics JSON)
TRAINING_KEYS = ("optimizer", "learning_rate", "schedule", "warmup_epochs",
                 "momentum", "nesterov", "weight_decay", "augment")


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
    """Return (keras_model, recipe, zoo_name) for a zoo name or a model file.

    A model file trained by ``edgedl train`` carries its recipe in the metrics JSON beside it, so
    training it again (a warm restart) uses the same data set, split, optimizer and schedule.
    """
    from edgedl import zoo
    from edgedl.modelio import is_model_path, load_model, recipe_beside

    if model in zoo.model_names():
        entry = zoo.get_model(model)
        return None, dict(entry.recipe), entry.name
    if is_model_path(model):
        keras_model = load_model(model)
        recipe, zoo_name, _ = recipe_beside(Path(model), dict(DEFAULT_RECIPE, split=None, target_accuracy=None))
        if dataset is None and not recipe.get("dataset"):
            raise OptionError(f"training the model file '{model}' needs --dataset (it has no zoo recipe and no "
                              f"metrics JSON from 'edgedl train' beside it)")
        if dataset is not None and dataset != recipe.get("dataset"):
            recipe["split"] = None  # the recorded split belongs to the recorded data set
        return keras_model, recipe, zoo_name
    zoo.get_model(model)  # raises with the list of known names
    raise ModelError(f"unknown model '{model}'")


def train(model: str, *, dataset: str | None = None, epochs: int | None = None, seed: int = 0,
          data_dir=None, limit: int | None = None, batch_size: int | None = None,
          split: str | None = None, progress: bool = True, callbacks: list | None = None,
          recipe: dict | None = None, deterministic: bool = False) -> TrainResult:
    """Train a zoo model (by name) or a Keras model file on a data set.

    Args:
        model: a zoo name (``edgedl models``) or a ``.keras``/``.h5``/SavedModel path.
        dataset: data set name; defaults to the recipe's.
        epochs: defaults to the recipe's.
        seed: seeds weights, shuffling and augmentation. Two runs with the same seed can end
            slightly apart (sums across threads round differently); ``deterministic`` makes them
            bit for bit the same.
        data_dir: data directory (else ``EDGEDL_DATA``, else the user cache).
        limit: at most this many samples per split (for quick runs).
        batch_size: defaults to the recipe's.
        split: data set split, e.g. ``official`` or ``speaker:theo`` for FSDD.
        progress: show a progress bar.
        callbacks: extra Keras callbacks for ``fit`` (e.g. ``keras.callbacks.CSVLogger`` for long runs).
        recipe: recipe keys that replace the model's own (e.g. ``{"optimizer": "sgd"}``).
        deterministic: the same seed gives a bit-identical model (TensorFlow's op determinism), at
            the cost of running operators on one thread: 2x slower for a batch-128 ResNet-8 step
            on 2 cores, no slower for its recipe's batch of 64 (``benchmarks/train_speed.py``).

    Returns:
        TrainResult with the model and metrics (test accuracy and loss, wall time, data set, split).

    Example:
        >>> result = train("lenet", dataset="digits", epochs=1)  # doctest: +SKIP
        >>> result.metrics["accuracy"] > 0.5  # doctest: +SKIP
    """
    from edgedl.data import load_dataset

    for name, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < 1):
            raise OptionError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed <= SEED_MAX:
        raise OptionError(f"--seed must be a whole number from 0 to {SEED_MAX}, got {seed!r}")
    overrides = recipe or {}
    keras_model, recipe, zoo_name = resolve(model, dataset)
    recipe.update(overrides)
    dataset = dataset or recipe["dataset"]
    split = split or recipe.get("split") or None
    epochs = epochs or recipe["epochs"]
    batch_size = batch_size or recipe["batch_size"]
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):  # a recipe from a metrics JSON may say anything
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise OptionError(f"the recipe's {name} must be a positive integer, got {value!r}; "
                              f"give --{name.replace('_', '-')}")

    data = load_dataset(dataset, data_dir=data_dir, split=split, limit=limit, seed=seed)
    keras = _lazy.keras()
    keras.utils.set_random_seed(seed)
    set_determinism(deterministic)
    if keras_model is None:
        from edgedl import zoo

        keras_model = zoo.get_model(zoo_name).build(input_shape=data.input_shape, num_classes=data.num_classes)
    _check_shapes(keras_model, data)

    steps = math.ceil(len(data.x_train) / batch_size)
    compile_for_training(keras_model, recipe, steps * epochs, steps)
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
        "deterministic": bool(deterministic),
        "accuracy": accuracy,
        "loss": loss,
        "target_accuracy": recipe.get("target_accuracy"),
        "train_wall_time_s": round(wall, 2),
        "num_params": int(keras_model.count_params()),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "preprocessing": data.preprocessing,
        "recipe": {k: recipe[k] for k in TRAINING_KEYS if k in recipe},
    }
    return TrainResult(model=keras_model, metrics=metrics)


def set_determinism(deterministic: bool) -> None:
    """Turn TensorFlow's op determinism on or off for this process.

    On, every operator gives bit-identical results from run to run, which TensorFlow buys by
    running some on a single thread; off (TensorFlow's default), sums across threads may round
    differently from run to run. The setting is process-wide, so each training entry
    point sets it, rather than inheriting whatever the last one left.
    """
    from tensorflow.python.framework import config  # the public API has only enable_op_determinism

    if deterministic:
        config.enable_op_determinism()
    else:
        config.disable_op_determinism()


def _check_shapes(model, data):
    inputs, outputs = len(model.inputs or ()), len(model.outputs or ())
    if (inputs, outputs) != (1, 1):
        raise ModelError(
            f"model '{model.name}' has {inputs} input(s) and {outputs} output(s); "
            f"edgedl trains and measures models with one input (data set '{data.name}' gives {tuple(data.input_shape)}) "
            "and one output (the class scores)"
        )
    want = tuple(model.input_shape[1:])
    if want != tuple(data.input_shape):
        raise ModelError(
            f"model '{model.name}' takes inputs of shape {want}, but data set '{data.name}' gives {tuple(data.input_shape)}"
        )


def compile_for_training(model, recipe: dict, total_steps: int, steps_per_epoch: int = 1):
    """Compile ``model`` with the recipe's optimizer, learning rate and schedule.

    Recipe keys: ``optimizer`` (adam or sgd), ``learning_rate``, ``schedule`` (cosine or constant),
    ``warmup_epochs`` (linear warm-up before the cosine), ``momentum`` and ``nesterov`` (sgd),
    ``weight_decay`` (decoupled, applied by the optimizer to kernels, not to biases or batch norm).
    """
    keras = _lazy.keras()
    lr = recipe.get("learning_rate", 1e-3)
    warmup = min(int(recipe.get("warmup_epochs", 0) * steps_per_epoch), max(total_steps - 1, 0))
    if recipe.get("schedule", "cosine") not in ("cosine", "constant"):
        raise OptionError(f"unknown schedule '{recipe['schedule']}'; known: cosine, constant")
    if recipe.get("schedule") == "cosine" and total_steps > 1:
        if warmup:
            lr = keras.optimizers.schedules.CosineDecay(lr / 100, decay_steps=total_steps - warmup, alpha=0.01,
                                                        warmup_target=lr, warmup_steps=warmup)
        else:
            lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total_steps, alpha=0.01)
    name = recipe.get("optimizer", "adam")
    kwargs = {"learning_rate": lr}
    if recipe.get("weight_decay"):
        kwargs["weight_decay"] = recipe["weight_decay"]
    if name == "sgd":
        kwargs.update(momentum=recipe.get("momentum", 0.9), nesterov=bool(recipe.get("nesterov", False)))
    optimizers = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "sgd": keras.optimizers.SGD}
    if name not in optimizers:
        raise OptionError(f"unknown optimizer '{name}'; known: {', '.join(optimizers)}")
    optimizer = optimizers[name](**kwargs)
    if recipe.get("weight_decay"):
        # decay kernels only: biases, batch norm scales and shifts stay free
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


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
