"""Real data sets, the first stage of the pipeline: MNIST, scikit-learn digits, FSDD speech, CIFAR-10,
and the data a user brings (``--data``: a .npz, .npy, or a folder of images or wav files; :mod:`edgedl.data.user`).

Each loader returns a :class:`Dataset` of float32 inputs and int64 labels, with a JSON-able record
of the preprocessing applied, so a model trained on it can be fed the same way on a device.

Data live in ``<data dir>/<name>/``; the data dir is the ``data_dir`` argument (``--data-dir``),
else ``EDGEDL_DATA``, else the user cache (``~/.cache/edgedl/data``). ``digits`` needs none.

Example:
    >>> from edgedl.data import load_dataset, list_datasets
    >>> [d["name"] for d in list_datasets()]
    ['cifar10', 'digits', 'fsdd', 'mnist']
    >>> ds = load_dataset("digits")
    >>> ds.summary()["sizes"]
    {'train': 1438, 'test': 359}
"""

from edgedl.data.base import Dataset, DatasetInfo, ModelInput, resolve_data_dir
from edgedl.data.fetch import download
from edgedl.data.registry import DATASETS, is_present, list_datasets, load_data, load_dataset, missing_files
from edgedl.data.user import Preprocess, load_user_data

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "download",
    "is_present",
    "list_datasets",
    "load_data",
    "load_dataset",
    "load_user_data",
    "missing_files",
    "Preprocess",
    "resolve_data_dir",
]
