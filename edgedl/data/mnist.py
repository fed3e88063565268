"""MNIST from its four idx files, checked against the published md5 of the decompressed bytes."""

from __future__ import annotations

import gzip
import hashlib
import logging
import zlib
from pathlib import Path

import numpy as np

from edgedl.data.base import Dataset, check_split, choose, subset_description
from edgedl.data.user import preset
from edgedl.errors import InputFileError

log = logging.getLogger(__name__)

CLASSES = [str(d) for d in range(10)]
SPLITS = ("official",)

# file name -> (md5 of the decompressed bytes, idx magic, shape). The md5 values are the published
# ones; verify the decompressed bytes, because re-compressed .gz wrappers differ byte-wise.
FILES = {
    "train-images-idx3-ubyte.gz": ("6bbc9ace898e44ae57da46a324031adb", 2051, (60000, 28, 28)),
    "train-labels-idx1-ubyte.gz": ("a25bea736e30d166cdddb491f175f624", 2049, (60000,)),
    "t10k-images-idx3-ubyte.gz": ("2646ac647ad5339dbf082846283269ea", 2051, (10000, 28, 28)),
    "t10k-labels-idx1-ubyte.gz": ("27ae3e4e09519cfbb04c329615203637", 2049, (10000,)),
}
PARTS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _locate(root: Path, name: str) -> Path | None:
    """The .gz file, or its decompressed twin (same name without .gz) if only that is there."""
    for candidate in (root / name, root / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def missing(root: Path) -> list[str]:
    """Names of the files this data set needs that are not in ``root``."""
    return [name for name in FILES if _locate(root, name) is None]


def read_idx(path: Path, expected_md5: str, magic: int, shape: tuple) -> np.ndarray:
    """Read one idx file (gzip or plain), checking magic, dimensions, size and md5.

    Raises:
        InputFileError: naming the file and what was wrong with it.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise InputFileError(path, f"not a readable gzip file ({e}); the file is truncated or corrupt") from e
    ndim = len(shape)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputFileError(path, f"only {len(raw)} bytes once decompressed, too short for an idx header")
    got_magic = int.from_bytes(raw[:4], "big")
    if got_magic != magic:
        raise InputFileError(
            path, f"idx magic number is {got_magic}, expected {magic}; not an MNIST idx file of this kind"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims != shape:
        raise InputFileError(path, f"idx dimensions are {dims}, expected {shape}")
    expected_size = header + int(np.prod(shape))
    if len(raw) != expected_size:
        raise InputFileError(
            path,
            f"holds {len(raw)} bytes once decompressed, expected {expected_size}; the file is truncated or corrupt",
        )
    got_md5 = hashlib.md5(raw).hexdigest()
    if got_md5 != expected_md5:
        raise InputFileError(
            path,
            f"md5 of the decompressed bytes is {got_md5}, expected {expected_md5}; the file is corrupt or "
            "not the official one (re-download it with `edgedl data download mnist`)",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read(root: Path, name: str) -> np.ndarray:
    md5, magic, shape = FILES[name]
    return read_idx(_locate(root, name), md5, magic, shape)


def load(root: Path, *, split: str, limit: int | None, seed: int, features=None) -> Dataset:
    """Load MNIST from ``root`` (the folder holding the four idx files)."""
    check_split("mnist", split, SPLITS)
    arrays = {}
    for part, (images_name, labels_name) in PARTS.items():
        labels = _read(root, labels_name).astype(np.int64)
        images = _read(root, images_name)
        if limit is not None:
            chosen = choose(labels, limit, seed)
            images, labels = images[chosen], labels[chosen]
        x = images.astype(np.float32)[..., None]
        x /= 255.0
        arrays[part] = (x, labels)
    return Dataset.from_parts(
        "mnist", arrays,
        classes=list(CLASSES),
        split=split,
        source=str(root),
        preprocessing={
            "input": "uint8 grayscale 28x28",
            "scale": "x / 255",
            "range": [0.0, 1.0],
            "layout": "NHWC",
            "dtype": "float32",
            **preset("image folder", resize=(28, 28), channels="gray", scale=1 / 255),
        },
        subset=subset_description(limit, seed, interleaved=False),
    )
