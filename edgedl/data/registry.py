"""The data set registry: names, what each one is, and ``load_dataset`` which dispatches to a loader."""

from __future__ import annotations

import importlib
import logging
import os
import time
from pathlib import Path

from edgedl.data.base import Dataset, DatasetInfo, ModelInput, missing_data_error, resolve_data_dir
from edgedl.errors import DataError, OptionError

log = logging.getLogger(__name__)

# In order of preference where a caller takes the first that fits (real MNIST before the small digits).
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="mnist",
            description="MNIST handwritten digits, 28x28 grayscale (60000 train, 10000 test)",
            input_shape=(28, 28, 1),
            num_classes=10,
            needs_data_dir=True,
            splits=("official",),
            module="mnist",
        ),
        DatasetInfo(
            name="digits",
            description="scikit-learn 8x8 digits upsampled to 28x28 (1438 train, 359 test); no download",
            input_shape=(28, 28, 1),
            num_classes=10,
            needs_data_dir=False,
            splits=("official",),
            module="digits",
        ),
        DatasetInfo(
            name="fsdd",
            description="Free Spoken Digit Dataset: 8 kHz speech as 61x40 log-mel (or 61x13 MFCC) frames "
            "(2700 train, 300 test)",
            input_shape=(61, 40, 1),
            num_classes=10,
            needs_data_dir=True,
            splits=("official", "speaker:NAME"),
            module="fsdd",
            features=("logmel", "mfcc"),
        ),
        DatasetInfo(
            name="cifar10",
            description="CIFAR-10: 32x32 colour images of 10 object classes (50000 train, 10000 test)",
            input_shape=(32, 32, 3),
            num_classes=10,
            needs_data_dir=True,
            splits=("official",),
            module="cifar10",
        ),
    )
}


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown data set '{name}'; known data sets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def _loader(info: DatasetInfo):
    return importlib.import_module(f"edgedl.data.{info.module}")


def list_datasets() -> list[dict]:
    """Describe every data set edgedl can load.

    Returns:
        One dict per data set, sorted by name: ``name``, ``description``, ``input_shape``,
        ``num_classes``, ``needs_data_dir`` and ``splits`` (plus ``features`` where there is a
        choice).

    Example:
        >>> [d["name"] for d in list_datasets()]
        ['cifar10', 'digits', 'fsdd', 'mnist']
    """
    return [DATASETS[name].as_dict() for name in sorted(DATASETS)]


def missing_files(name: str, *, data_dir: str | os.PathLike | None = None) -> list[str]:
    """What ``name`` lacks in the resolved data dir ([] when it can be loaded)."""
    info = _info(name)
    if not info.needs_data_dir:
        return []
    root = resolve_data_dir(data_dir)[0] / name
    return _loader(info).missing(root) if root.is_dir() else [f"{name}/"]


def is_present(name: str, *, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``name`` can be loaded from the resolved data dir without a download.

    Example:
        >>> is_present("digits")
        True
    """
    return not missing_files(name, data_dir=data_dir)


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    features: str | None = None,
) -> Dataset:
    """Load a data set as float32 train and test arrays with int64 labels.

    Args:
        name: one of :data:`DATASETS` ("mnist", "digits", "fsdd", "cifar10").
        data_dir: the folder holding ``<name>/``; default ``EDGEDL_DATA``, then the user cache
            (see :func:`resolve_data_dir`). Not needed for "digits".
        split: "official" (the default); for fsdd also "speaker:NAME" (that speaker is the test set).
        limit: at most this many samples per split, balanced across classes and chosen with
            ``seed``; only the chosen samples are decoded where the format allows.
        seed: picks the ``limit`` subset, and the class interleaving of sources stored by class.
        features: for fsdd, "logmel" (default) or "mfcc".

    Returns:
        A :class:`Dataset`.

    Raises:
        DataError: unknown name, or the data is not in the data dir.
        OptionError: a split, limit or features value that does not apply.
        InputFileError: a data file is corrupt.

    Example:
        >>> ds = load_dataset("digits", limit=100)
        >>> ds.x_train.shape, ds.y_train.shape
        ((100, 28, 28, 1), (100,))
    """
    info = _info(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise OptionError(f"limit must be a positive integer or None, received: limit={limit!r}")
    if features is not None and features not in info.features:
        accepted = f"one of: {', '.join(info.features)}" if info.features else "nothing (leave it out)"
        raise OptionError(f"features='{features}' does not apply to {name}; it accepts {accepted}")
    split = split or info.splits[0]
    root = None
    if info.needs_data_dir:
        data_root, origin = resolve_data_dir(data_dir)
        root = data_root / name
        absent = _loader(info).missing(root) if root.is_dir() else [f"{name}/"]
        if absent:
            raise missing_data_error(name, root, origin, absent)
    start = time.perf_counter()
    ds = _loader(info).load(root, split=split, limit=limit, seed=seed, features=features)
    log.info(
        "loaded %s (%s): %d train, %d test, input %s, in %.1f s",
        name, split, len(ds.y_train), len(ds.y_test), ds.input_shape, time.perf_counter() - start,
    )
    return ds


def dataset_root(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """``<resolved data dir>/<name>``."""
    _info(name)
    return resolve_data_dir(data_dir)[0] / name


def load_data(
    dataset: str | None = None,
    data: str | os.PathLike | None = None,
    *,
    preprocess=None,
    data_dir: str | os.PathLike | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    model: ModelInput | None = None,
) -> Dataset:
    """The one way into data: a built-in data set by name (``--dataset``), or a file or folder the
    user brings (``--data``, see :func:`edgedl.data.user.load_user_data`).

    Args:
        dataset: a name in :data:`DATASETS`; the built-in data sets are presets of the same result.
        data: a ``.npz``, ``.npy``, or a folder of images or wav files in class sub-folders.
        preprocess: for ``data``: a :class:`~edgedl.data.user.Preprocess`, ``KEY=VALUE`` strings or
            a ``.toml`` path (None: a ``preprocess.toml`` beside the data or the model, else defaults).
        data_dir, split: for ``dataset`` (see :func:`load_dataset`).
        limit, seed: at most this many samples per split, picked with ``seed``.
        model: for ``data``: the model's input (:class:`ModelInput`), to resize images to and check
            the samples against; where a ``preprocess.toml`` may sit beside it; and its recorded
            ``preprocessing``, whose steps apply when none are given or found, if they are for this
            kind of data.

    Returns:
        A :class:`Dataset`.

    Raises:
        OptionError: both or neither of ``dataset`` and ``data``, or a preprocessing step that does
            not apply to the data set.
        DataError, InputFileError: as :func:`load_dataset` and
            :func:`~edgedl.data.user.load_user_data`.

    Example:
        >>> load_data("digits", limit=10).x_test.shape
        (10, 28, 28, 1)
    """
    if (dataset is None) == (data is None):
        raise OptionError("give one of --dataset (a built-in data set) and --data (a file or folder)"
                          + (", not both" if dataset is not None else ""))
    if data is not None:
        from edgedl.data.user import load_user_data

        model = model or ModelInput()
        return load_user_data(data, preprocess, limit=limit, input_shape=model.shape, seed=seed,
                              input_names=model.names, model_path=model.path, recorded=model.recorded)
    if preprocess:
        raise OptionError(f"--preprocess applies to data given with --data; data set '{dataset}' brings its own "
                          "preprocessing: leave it out")
    return load_dataset(dataset, data_dir=data_dir, split=split, limit=limit, seed=seed)
