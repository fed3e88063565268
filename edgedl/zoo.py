"""The model zoo: finds the builders and recipes in ``models/`` (or, in a wheel, ``edgedl/_zoo``).

A zoo model is a Python module with ``RECIPE`` (a dict: data set, preprocessing, input shape,
training hyper-parameters, the accuracy it should reach) and ``build(input_shape, num_classes)``
returning a Keras model. Adding a model is adding one file.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from edgedl.errors import ModelError

PACKAGE_DIR = Path(__file__).resolve().parent

#: the recipe of a model from outside the zoo with no metrics JSON beside it (it names no data set)
DEFAULT_RECIPE = {
    "epochs": 5, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.001,
    "schedule": "cosine", "augment": None,
}

RECIPE_KEYS = {
    "description", "dataset", "split", "input_shape", "num_classes", "preprocessing", "epochs",
    "batch_size", "optimizer", "learning_rate", "schedule", "augment", "target_accuracy",
}


def resource_dir(name: str) -> Path:
    """The folder of a top-level resource (``models`` or ``targets``) in a wheel or a checkout."""
    installed = PACKAGE_DIR / f"_{'zoo' if name == 'models' else name}"
    if installed.is_dir():
        return installed
    checkout = PACKAGE_DIR.parent / name
    if checkout.is_dir():
        return checkout
    raise ModelError(f"cannot find edgedl's '{name}' folder: looked in {installed} and {checkout}")


@dataclass(frozen=True)
class ZooModel:
    """A zoo entry: its name, recipe and builder."""

    name: str
    recipe: dict = field(repr=False)
    path: Path = field(repr=False)

    def build(self, input_shape=None, num_classes=None):
        """Build a fresh, untrained Keras model (input shape and classes default to the recipe's)."""
        module = zoo_module(self.name)
        shape = tuple(input_shape or self.recipe["input_shape"])
        return module.build(input_shape=shape, num_classes=num_classes or self.recipe["num_classes"])

    def summary(self) -> dict:
        return {"name": self.name, **self.recipe}


@lru_cache(maxsize=None)
def zoo_module(name: str):
    """Import the zoo module ``name`` from its file (zoo modules are not a package on sys.path)."""
    path = resource_dir("models") / f"{name}.py"
    if not path.is_file():
        raise ModelError(_unknown(name))
    spec = importlib.util.spec_from_file_location(f"edgedl_zoo_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def model_names() -> list[str]:
    return sorted(p.stem for p in resource_dir("models").glob("*.py") if not p.stem.startswith("_"))


def get_model(name: str) -> ZooModel:
    """The zoo entry called ``name``.

    Raises:
        ModelError: no zoo model has that name (the message lists the known ones).

    Example:
        >>> get_model("lenet").recipe["dataset"]
        'mnist'
    """
    if name not in model_names():
        raise ModelError(_unknown(name))
    module = zoo_module(name)
    recipe = getattr(module, "RECIPE", None)
    if not isinstance(recipe, dict) or not hasattr(module, "build"):
        raise ModelError(f"zoo model '{name}' ({module.__file__}) must define RECIPE (a dict) and build()")
    missing = RECIPE_KEYS - set(recipe)
    if missing:
        raise ModelError(f"zoo model '{name}': RECIPE lacks {', '.join(sorted(missing))}")
    return ZooModel(name=name, recipe=dict(recipe), path=Path(module.__file__))


def list_models() -> list[ZooModel]:
    return [get_model(n) for n in model_names()]


def _unknown(name: str) -> str:
    names = model_names()
    near = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{near[0]}'?" if near else ""
    return f"unknown model '{name}'; the zoo has: {', '.join(names)}.{hint}"
