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

    def summary(self) -> str:
        """One line: the model, the data set, its test accuracy and loss, and how long training took.

        Example:
            >>> train("lenet", TrainOptions(dataset="digits", epochs=3)).summary()  # doctest: +SKIP
            'lenet on digits (official): test accuracy 93.40% loss 0.2214 after 3 epochs in 4.1 s'
        """
        m = self.metrics
        return (f"{m['model']} on {m['dataset']} ({m['split']}): test accuracy {100 * m['accuracy']:.2f}% "
                f"loss {m['loss']:.4f} after {m['epochs']} epochs in {m['train_wall_time_s']:.1f} s")


@dataclass(frozen=True)
class TrainOptions:
    """How to train (the ``edgedl train`` options, as a Python object); None takes the recipe's.

    Args:
        dataset: data set name; defaults to the recipe's.
        split: data set split, e.g. ``official`` or ``speaker:theo`` for FSDD.
        epochs: defaults to the recipe's.
        batch_size: defaults to the recipe's.
        seed: seeds weights, shuffling and augmentation. Two runs with the same seed can end
            slightly apart (sums across threads round differently); ``deterministic`` makes them
            bit for bit the same.
        limit: at most this many samples per split (for quick runs).
        data_dir: data directory (else ``EDGEDL_DATA``, else the user cache).
        deterministic: the same seed gives a bit-identical model (TensorFlow's op determinism), at
            the cost of running operators on one thread: 2x slower for a batch-128 ResNet-8 step
            on 2 cores, no slower for its recipe's batch of 64 (``benchmarks/train_speed.py``).
        recipe: recipe keys that replace the model's own (e.g. ``{"optimizer": "sgd"}``).

    Example:
        >>> TrainOptions(dataset="digits", epochs=1).check().epochs
        1
    """

    dataset: str | None = None
    split: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    seed: int = 0
    limit: int | None = None
    data_dir: str | Path | None = None
    deterministic: bool = False
    recipe: dict | None = None

    def check(self) -> "TrainOptions":
        """OptionError for a count that is not a positive integer or a seed out of range; else self."""
        for name, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size), ("--limit", self.limit)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < 1):
                raise OptionError(f"{name} must be a positive integer, got {value!r}")
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed <= SEED_MAX:
            raise OptionError(f"--seed must be a whole number from 0 to {SEED_MAX}, got {seed!r}")
        return self


def resolve(model, dataset: str | None = None):
    """(model source, recipe to train with) for a zoo name, a model file or a ``keras.Model``
    (:func:`edgedl.modelio.resolve_model`).

    A model file trained by ``edgedl train`` carries its recipe in the metrics JSON beside it, so
    training it again (a warm restart) uses the same data set, split, optimizer and schedule.
    """
    from edgedl.modelio import resolve_model

    source = resolve_model(model)
    recipe = dict(source.recipe)
    if dataset is None and not recipe.get("dataset"):
        what = f"the model file '{model}'" if source.path is not None else f"model '{source.name}'"
        raise OptionError(f"training {what} needs --dataset (it has no zoo recipe and no "
                          f"metrics JSON from 'edgedl train' beside it)")
    if source.path is not None and dataset is not None and dataset != recipe.get("dataset"):
        recipe["split"] = None  # the recorded split belongs to the recorded data set
    return source, recipe


def train(model, options: TrainOptions | None = None, *, progress: bool = True,
          callbacks: list | None = None) -> TrainResult:
    """Train a zoo model (by name) or a Keras model (a file, or in memory) on a data set, as ``options`` say.

    Args:
        model: a zoo name (``edgedl models``), a ``.keras``/``.h5``/SavedModel path or a ``keras.Model``
            (trained in place).
        options: data set, epochs, batch size, seed ... (:class:`TrainOptions`; None: the recipe's).
        progress: show a progress bar.
        callbacks: extra Keras callbacks for ``fit`` (e.g. ``keras.callbacks.CSVLogger`` for long runs).

    Returns:
        TrainResult with the model and metrics (test accuracy and loss, wall time, data set, split).

    Example:
        >>> result = train("lenet", TrainOptions(dataset="digits", epochs=1))  # doctest: +SKIP
        >>> result.metrics["accuracy"] > 0.5  # doctest: +SKIP
    """
    from edgedl.data import load_dataset

    options = (options or TrainOptions()).check()
    source, recipe = resolve(model, options.dataset)
    recipe.update(options.recipe or {})
    epochs, batch_size = _counts(options, recipe)
    data = load_dataset(options.dataset or recipe["dataset"], data_dir=options.data_dir,
                        split=options.split or recipe.get("split") or None, limit=options.limit, seed=options.seed)
    _lazy.keras().utils.set_random_seed(options.seed)
    set_determinism(options.deterministic)
    keras_model = source.build(input_shape=data.input_shape, num_classes=data.num_classes)
    check_shapes(keras_model, data)

    steps = math.ceil(len(data.x_train) / batch_size)
    compile_for_training(keras_model, recipe, steps * epochs, steps)
    train_ds = make_dataset(data.x_train, data.y_train, batch_size, recipe.get("augment"), options.seed)
    name = source.zoo_name or keras_model.name
    callbacks = list(callbacks or []) + ([ProgressBar(epochs, steps, title=f"training {name}")] if progress else [])
    start = time.perf_counter()
    history = keras_model.fit(train_ds, epochs=epochs, verbose=0, callbacks=callbacks)
    wall = time.perf_counter() - start
    loss, accuracy = evaluate(keras_model, data.x_test, data.y_test)
    metrics = {
        "model": name, "dataset": data.name, "split": data.split,
        "num_train": int(len(data.x_train)), "num_test": int(len(data.x_test)),
        "epochs": epochs, "batch_size": batch_size, "seed": options.seed, "deterministic": bool(options.deterministic),
        "accuracy": accuracy, "loss": loss, "target_accuracy": recipe.get("target_accuracy"),
        "train_wall_time_s": round(wall, 2), "num_params": int(keras_model.count_params()),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "preprocessing": data.preprocessing,
        "recipe": {k: recipe[k] for k in TRAINING_KEYS if k in recipe},
    }
    return TrainResult(model=keras_model, metrics=metrics)


def _counts(options: TrainOptions, recipe: dict) -> tuple[int, int]:
    """(epochs, batch size): the options', else the recipe's, which a metrics JSON may have set to anything."""
    epochs = options.epochs or recipe["epochs"]
    batch_size = options.batch_size or recipe["batch_size"]
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise OptionError(f"the recipe's {name} must be a positive integer, got {value!r}; "
                              f"give --{name.replace('_', '-')}")
    return epochs, batch_size

from edgedl._stage import callable_module  # noqa: E402

callable_module(__name__)  # edgedl.train(...) is edgedl.train.train(...)
