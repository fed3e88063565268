"""Fine-tuning after an optimization step, with the model's own training recipe.

Every stage that changes weights (pruning, structured pruning, quantization-aware training) ends
with a short fine-tuning run. It uses the recipe the model was trained with (optimizer, batch size,
augmentation, cosine schedule) at a fraction of its learning rate, since the model is already
trained and only has to recover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from edgedl import _lazy
from edgedl.errors import OptionError

# Fine-tuning starts at this fraction of the recipe's learning rate and decays it with a cosine.
LR_SCALE = 0.5
# Fine-tuning lasts this fraction of the recipe's training epochs unless told otherwise ...
EPOCHS_FRACTION = 0.25
# ... but at least this many optimizer steps (small data sets have few steps per epoch), and never
# more epochs than the recipe trains for.
MIN_STEPS = 2000
# Distillation: the loss is ALPHA x cross-entropy with the labels + (1 - ALPHA) x cross-entropy with
# the teacher's predictions softened at TEMPERATURE (scaled by TEMPERATURE**2, Hinton et al. 2015).
DISTILL_ALPHA = 0.5
DISTILL_TEMPERATURE = 4.0


@dataclass(frozen=True)
class Teacher:
    """A model to distil from while fine-tuning, and how: ``alpha`` is the share of the loss on the
    labels (the rest is on the teacher's predictions softened at ``temperature``)."""

    model: object
    alpha: float = DISTILL_ALPHA
    temperature: float = DISTILL_TEMPERATURE


def check_distill_alpha(alpha) -> float:
    """``alpha`` as a float in [0, 1), or an OptionError that names ``--distill-alpha``."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 1:
        raise OptionError(f"--distill-alpha must be in [0, 1), the share of the loss on the labels "
                          f"(the rest is on the teacher; 0: the teacher alone), got {alpha!r}")
    return float(alpha)


def default_epochs(recipe: dict, num_samples: int | None = None) -> int:
    """Fine-tuning epochs when none are given.

    A quarter of the recipe's training epochs, raised until fine-tuning takes at least
    :data:`MIN_STEPS` optimizer steps on ``num_samples`` training samples, capped at the recipe's
    epochs; at least one. On FSDD (2,700 samples, 85 steps an epoch) DS-CNN's quarter of its 30
    epochs is 8 epochs and 680 steps, too few to recover from 80% sparsity (ERK at 80%, measured:
    1.3 points lost after 12 epochs, none after 24); this gives it 24.
    """
    recipe_epochs = int(recipe.get("epochs", 4))
    epochs = math.ceil(recipe_epochs * EPOCHS_FRACTION)
    if num_samples:
        epochs = max(epochs, min(recipe_epochs, math.ceil(MIN_STEPS / steps_per_epoch(num_samples, recipe))))
    return max(1, epochs)


@dataclass(frozen=True, eq=False)
class FineTune:
    """How a stage that changes weights fine-tunes afterwards: what :func:`~edgedl.optimize.prune.prune`,
    :func:`~edgedl.optimize.structured.prune_structured`,
    :func:`~edgedl.optimize.qat.quantization_aware_training` and :func:`finetune` share.

    Args:
        x, y: training inputs and integer labels.
        recipe: the training recipe (``learning_rate``, ``batch_size``, ``optimizer``, ``schedule``,
            ``augment``), as in a zoo model's ``RECIPE``.
        epochs: how many passes over (x, y) (:func:`default_epochs` gives the usual number).
        seed: seeds shuffling and augmentation.
        progress: show a rich progress bar.
        teacher: a Keras model with the same outputs (e.g. the model before pruning) to distil from,
            or a :class:`Teacher` that also sets the loss's weights: the trained model then also learns
            to match the teacher's softened predictions. The teacher is not changed.
        lr_scale: the fraction of the recipe's learning rate to start from (None: :data:`LR_SCALE`).

    Example:
        >>> tune = FineTune(data.x_train, data.y_train, recipe, epochs=2, progress=False)  # doctest: +SKIP
        >>> prune(model, 0.8, tune).layers[0]["sparsity"]  # doctest: +SKIP
        0.8
    """

    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    recipe: dict
    epochs: int
    seed: int = 0
    progress: bool = True
    teacher: object = field(default=None, repr=False)
    lr_scale: float | None = None

    @property
    def rate_scale(self) -> float:
        """The fraction of the recipe's learning rate fine-tuning starts at."""
        return LR_SCALE if self.lr_scale is None else float(self.lr_scale)

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.x), self.recipe)

    def but(self, **changes) -> "FineTune":
        """A copy with ``changes`` (e.g. ``tune.but(epochs=1)``)."""
        return replace(self, **changes)


def finetune(model, tune: FineTune, *, callbacks=(), title: str = "fine-tuning"):
    """Train ``model`` in place as ``tune`` says: its recipe at ``tune.rate_scale`` times the rate.

    Args:
        model: a Keras model (compiled here; any earlier compilation is replaced).
        tune: the data, recipe, epochs, seed, teacher and learning-rate scale.
        callbacks: Keras callbacks to add (e.g. the pruning callback).
        title: what the progress bar says.

    Returns:
        The Keras ``History``.

    Example:
        >>> finetune(model, FineTune(x, y, recipe, epochs=1, progress=False))  # doctest: +SKIP
    """
    from edgedl.keras_utils import ProgressBar, compile_for_training, make_dataset

    if tune.epochs < 1:
        raise OptionError(f"--epochs must be a positive integer, got {tune.epochs}")
    keras = _lazy.keras()
    keras.utils.set_random_seed(tune.seed)
    recipe = tune.recipe
    batch_size = int(recipe.get("batch_size", 64))
    steps = tune.steps_per_epoch
    # the model is trained already: no warm-up, start the cosine at a fraction of the recipe's rate
    tuned = dict(recipe, learning_rate=float(recipe.get("learning_rate", 1e-3)) * tune.rate_scale, warmup_epochs=0)
    teacher = tune.teacher
    if teacher is not None and not isinstance(teacher, Teacher):
        teacher = Teacher(teacher)
    trainee = model if teacher is None else distiller(model, teacher.model, teacher.alpha, teacher.temperature)
    compile_for_training(trainee, tuned, steps * tune.epochs)
    data = make_dataset(tune.x, tune.y, batch_size, recipe.get("augment"), tune.seed)
    callbacks = list(callbacks)
    if tune.progress:
        callbacks.append(ProgressBar(tune.epochs, steps, title=title))
    return trainee.fit(data, epochs=tune.epochs, verbose=0, callbacks=callbacks, shuffle=False)


def distiller(student, teacher, alpha: float = DISTILL_ALPHA, temperature: float = DISTILL_TEMPERATURE):
    """A Keras model that trains ``student`` on the labels and on ``teacher``'s softened predictions.

    Both models end in a softmax (as the zoo's do); their log-probabilities divided by
    ``temperature`` serve as logits. Training it updates ``student`` in place; ``teacher`` is
    frozen inside (its own ``trainable`` flag is left as it was).
    """
    keras = _lazy.keras()
    ops = keras.ops
    if tuple(teacher.output_shape[1:]) != tuple(student.output_shape[1:]):
        raise OptionError(f"cannot distil: the teacher predicts shape {tuple(teacher.output_shape[1:])}, "
                          f"the student {tuple(student.output_shape[1:])}")

    class Distiller(keras.Model):
        def __init__(self):
            super().__init__(name=f"{student.name}_distilled")
            self.student = student
            self.teacher = _frozen(teacher)

        def call(self, x, training=None):
            return self.student(x, training=training)

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            hard = keras.losses.sparse_categorical_crossentropy(y, y_pred)
            soft_teacher = ops.softmax(ops.log(ops.clip(self.teacher(x, training=False), 1e-7, 1.0)) / temperature)
            log_student = ops.log_softmax(ops.log(ops.clip(y_pred, 1e-7, 1.0)) / temperature)
            soft = -ops.sum(ops.stop_gradient(soft_teacher) * log_student, axis=-1) * temperature ** 2
            loss = ops.mean(alpha * hard + (1.0 - alpha) * soft)
            for extra in self.student.losses:  # kernel regularizers
                loss = loss + extra
            return loss

    return Distiller()


def _frozen(model):
    """A copy of ``model`` with the same weights that does not train (the original keeps its flags)."""
    from edgedl.optimize import keras_graph

    copy = keras_graph.copy_model(model)
    copy.trainable = False
    return copy


def steps_per_epoch(num_samples: int, recipe: dict) -> int:
    return math.ceil(num_samples / int(recipe.get("batch_size", 64)))
