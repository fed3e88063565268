"""Keras helpers shared by training, optimization and measurement: compiling with a recipe,
tf.data pipelines, evaluation and prediction on arrays, progress bars, determinism.

:mod:`edgedl.train` (training a model), :mod:`edgedl.optimize` (fine-tuning after each stage) and
the checks of compiled models against their Keras source (:mod:`edgedl.compile`, the bench harness)
all use these, so they live apart from the training API. Keras and TensorFlow are imported lazily.

Example:
    >>> from edgedl.keras_utils import evaluate
    >>> loss, accuracy = evaluate(model, data.x_test, data.y_test)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from edgedl import _lazy
from edgedl.errors import ModelError, OptionError


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


def check_shapes(model, data) -> None:
    """ModelError unless ``model`` has one input and one output, and its input shape is the data set's."""
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
    """The (first) output of a Keras model on arrays, ``batch_size`` samples at a time, in inference mode."""
    return predict_outputs(model, x, batch_size)[0]


def predict_outputs(model, x, batch_size: int = 256) -> list[np.ndarray]:
    """Every output of a Keras model on arrays (one (N, ...) array, or a list of them in the order of
    ``model.inputs``), one (N, ...) array each, in inference mode."""
    from edgedl import _inputs

    batches = []
    for i in range(0, _inputs.count(x), batch_size):
        out = model(_inputs.take(x, slice(i, i + batch_size)), training=False)
        batches.append([np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])])
    return [np.concatenate([b[k] for b in batches], axis=0) for k in range(len(batches[0]))]


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
