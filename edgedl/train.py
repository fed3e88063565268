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

from edgedl import _io, _lazy
from edgedl.errors import ModelError, OptionError
from edgedl.keras_utils import ProgressBar, check_shapes, compile_for_training, evaluate, make_dataset, set_determinism

log = logging.getLogger(__name__)

#: seeds NumPy, TensorFlow and Python's random all take
SEED_MAX = 2**32 - 1

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
            raise OptionError(f"-o/--output must end in .keras, got '{out.name}'")
        with _io.atomic_path(out, suffix=".keras") as tmp:
            self.model.save(tmp)
        metrics_path = out.with_suffix(".json")
        _io.write_json(metrics_path, self.metrics)
        return out, metrics_path


def resolve(model: str, dataset: str | None = None):
    """(model source, recipe to train with) for a zoo name or a model file (:func:`edgedl.modelio.resolve_model`).

    A model file trained by ``edgedl train`` carries its recipe in the metrics JSON beside it, so
    training it again (a warm restart) uses the same data set, split, optimizer and schedule.
    """
    from edgedl.modelio import resolve_model

    source = resolve_model(model)
    recipe = dict(source.recipe)
    if source.path is not None:
        if dataset is None and not recipe.get("dataset"):
            raise OptionError(f"training the model file '{model}' needs --dataset (it has no zoo recipe and no "
                              f"metrics JSON from 'edgedl train' beside it)")
        if dataset is not None and dataset != recipe.get("dataset"):
            recipe["split"] = None  # the recorded split belongs to the recorded data set
    return source, recipe


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
    source, recipe = resolve(model, dataset)
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
    keras_model = source.build(input_shape=data.input_shape, num_classes=data.num_classes)
    zoo_name = source.zoo_name
    check_shapes(keras_model, data)

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
