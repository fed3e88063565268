"""What every data set shares: the :class:`Dataset` result, where data lives, and balanced subsets.

The loaders (``mnist``, ``digits``, ``fsdd``, ``cifar10``) each return a :class:`Dataset`; this
module holds the parts they have in common so each loader reads as "find files, decode, return".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgedl._inputs import count
from edgedl.errors import DataError, OptionError


@dataclass
class Dataset:
    """A data set split into train and test arrays, ready for a model.

    ``x`` arrays are float32 with the batch axis first; ``y`` arrays are int64 class indices into
    ``classes`` (None for unlabelled data a user brings). ``preprocessing`` is a plain, JSON-able
    description of what was done to the raw data, enough to redo it on a device; ``subset`` says how
    a ``limit`` picked the samples; ``file`` names the file a user brought (path, kind, sha256).

    Example:
        >>> from edgedl.data import load_dataset
        >>> ds = load_dataset("digits")
        >>> ds.input_shape, ds.num_classes
        ((28, 28, 1), 10)
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    classes: list[str]
    split: str
    source: str
    preprocessing: dict
    subset: dict = field(default_factory=dict)
    file: dict | None = None

    @classmethod
    def from_parts(cls, name: str, parts: dict, **fields) -> Dataset:
        """A data set from ``{"train": (x, y), "test": (x, y)}`` and its other fields (classes,
        split, source, preprocessing, subset, file): how each loader ends."""
        (x_train, y_train), (x_test, y_test) = parts["train"], parts["test"]
        return cls(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **fields)

    @property
    def input_shape(self) -> tuple | list:
        """Shape of one sample, without the batch axis (a list of them for several inputs)."""
        if isinstance(self.x_train, list):
            return [tuple(int(d) for d in x.shape[1:]) for x in self.x_train]
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labelled(self) -> bool:
        return self.y_test is not None

    def class_counts(self, part: str = "train") -> dict[str, int]:
        """Samples per class in ``part`` ("train" or "test"), in class order ({} without labels)."""
        y = {"train": self.y_train, "test": self.y_test}[part]
        if y is None:
            return {}
        counts = np.bincount(y, minlength=self.num_classes)
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def summary(self) -> dict:
        """A JSON-able description: sizes, shapes, classes and their counts, source, preprocessing
        (and the file a user brought, if any)."""
        d = {
            "name": self.name,
            "split": self.split,
            "sizes": {"train": count(self.x_train), "test": count(self.x_test)},
            "input_shape": self.input_shape,
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "class_counts": {"train": self.class_counts("train"), "test": self.class_counts("test")},
            "source": self.source,
            "preprocessing": self.preprocessing,
            "subset": self.subset,
        }
        if self.file is not None:
            d["file"] = self.file
        return d


@dataclass(frozen=True)
class ModelInput:
    """What data must fit, and what the model says of its data: its input's shape (without the batch)
    and names, the model file (a ``preprocess.toml`` may sit beside it) and its recorded
    ``preprocessing`` (its metrics', a bundle's manifest's); ``taker`` names it in messages.

    Example:
        >>> ModelInput((28, 28, 1), taker="the bundle").shape
        (28, 28, 1)
    """

    shape: tuple | None = None
    names: list | None = None
    path: object = None
    recorded: dict | None = None
    taker: str = "the model"


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a data set before loading it (the registry entry)."""

    name: str
    description: str
    input_shape: tuple
    num_classes: int
    needs_data_dir: bool
    splits: tuple[str, ...]
    module: str  # the loader module under edgedl.data, imported on first use
    features: tuple[str, ...] = ()  # feature kinds accepted by ``features=`` (empty: none)

    def as_dict(self) -> dict:
        d = {
            "name": self.name,
            "description": self.description,
            "input_shape": tuple(self.input_shape),
            "num_classes": self.num_classes,
            "needs_data_dir": self.needs_data_dir,
            "splits": list(self.splits),
        }
        if self.features:
            d["features"] = list(self.features)
        return d


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edgedl`` or ``~/.cache/edgedl``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "edgedl"


def decoded_cache_dir() -> Path:
    """Where decoded arrays are cached: ``$EDGEDL_CACHE`` or the user cache dir."""
    env = os.environ.get("EDGEDL_CACHE")
    return Path(env).expanduser() if env else user_cache_dir()


ORIGIN_ARGUMENT = "--data-dir (the data_dir argument)"
ORIGIN_ENV = "the EDGEDL_DATA environment variable"
ORIGIN_DEFAULT = "the default cache folder, as neither --data-dir nor EDGEDL_DATA is set"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Find the folder that holds the data sets, and say where that choice came from.

    The ``data_dir`` argument wins, then the ``EDGEDL_DATA`` environment variable, then the user
    cache folder (``$XDG_CACHE_HOME/edgedl/data`` or ``~/.cache/edgedl/data``). Each data set sits
    in a sub-folder named after it (``<data dir>/mnist/...``).

    Args:
        data_dir: an explicit folder, or None.

    Returns:
        ``(path, origin)``, origin being a short phrase for messages.

    Example:
        >>> path, origin = resolve_data_dir("/data")
        >>> str(path), origin
        ('/data', '--data-dir (the data_dir argument)')
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser(), ORIGIN_ARGUMENT
    env = os.environ.get("EDGEDL_DATA")
    if env:
        return Path(env).expanduser(), ORIGIN_ENV
    return user_cache_dir() / "data", ORIGIN_DEFAULT


def missing_data_error(name: str, root: Path, origin: str, missing: list[str]) -> DataError:
    """The one message for data that is not where we looked: where, why there, how to get it."""
    what = "not found" if not root.exists() else f"incomplete (missing {', '.join(missing)})"
    return DataError(
        f"data set '{name}' {what}: looked in {root} (data dir from {origin}); "
        f"get it with `edgedl data download {name}`, or point --data-dir or EDGEDL_DATA at a "
        f"folder that holds {name}/"
    )


def check_split(name: str, split: str, known: tuple[str, ...]) -> None:
    if split not in known:
        raise OptionError(
            f"unknown split '{split}' for {name}; expected one of: {', '.join(known)}"
        )


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """All indices of ``labels``, reordered so classes take turns (seeded, deterministic).

    Within each class the samples are shuffled with ``seed``; then the first of every class comes
    first (classes in a random order), then the second of every class, and so on, until a class
    runs out. Any prefix is therefore class-balanced (counts differ by at most one while every
    class still has samples), and any slice of the result holds all classes.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = perm[labels[perm] == c]
        rank[members] = np.arange(len(members))
    tie = rng.random(len(labels))
    return np.lexsort((tie, rank))


def choose(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` samples, balanced across classes; all of them if no limit."""
    order = balanced_order(labels, seed)
    return order if limit is None else order[:limit]


def subset_description(limit: int | None, seed: int, interleaved: bool) -> dict:
    """How the samples of a split were picked and ordered, for ``Dataset.subset``."""
    if limit is not None:
        return {"limit": limit, "seed": seed, "method": "class-balanced, seeded, classes interleaved"}
    if interleaved:
        return {"limit": None, "seed": seed, "method": "all samples, classes interleaved (seeded)"}
    return {"limit": None, "seed": None, "method": "all samples, source order"}
