"""CIFAR-10 from JPEG tars (``train_jpg.tar``, ``test_jpg.tar``) or the canonical pickled tarball.

Decoding 60000 JPEGs takes a while, so a full load caches the decoded uint8 arrays as ``.npz`` in
the cache folder (``$EDGEDL_CACHE`` or ``~/.cache/edgedl``), keyed on the source file's name, size
and modification time; the data folder itself is never written. A ``limit`` without a cache
decodes only the chosen JPEG members.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np

from edgedl._io import atomic_path
from edgedl.data.base import Dataset, check_split, choose, decoded_cache_dir, subset_description
from edgedl.data.user import preset
from edgedl.errors import InputFileError

log = logging.getLogger(__name__)

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SPLITS = ("official",)
JPEG_TARS = {"train": "train_jpg.tar", "test": "test_jpg.tar"}
PYTHON_TARBALL = "cifar-10-python.tar.gz"
PYTHON_TARBALL_MD5 = "c58f30108f718f92721af3b95e74349a"  # published with the tarball
PYTHON_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
MEMBER = re.compile(r"(?:.*/)?([^/]+)/[^/]+\.jpe?g", re.IGNORECASE)  # .../<class>/<name>.jpg
IMAGE_SHAPE = (32, 32, 3)


def _has_jpeg_tars(root: Path) -> bool:
    return all((root / name).is_file() for name in JPEG_TARS.values())


def missing(root: Path) -> list[str]:
    if _has_jpeg_tars(root) or (root / PYTHON_TARBALL).is_file():
        return []
    absent = [name for name in JPEG_TARS.values() if not (root / name).is_file()]
    return [f"{' and '.join(absent)}, or {PYTHON_TARBALL}"]


# ---------------------------------------------------------------------------- the decoded cache


def cache_file(source: Path) -> Path:
    """The cache entry for ``source``: named after it, its size and its modification time."""
    stat = source.stat()
    return decoded_cache_dir() / "cifar10" / f"{source.name}-{stat.st_size}-{stat.st_mtime_ns}.npz"


def _read_cache(path: Path, keys: tuple[str, ...]) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in keys}
    except Exception as e:  # a damaged cache is rebuilt, never fatal
        log.warning("ignoring unreadable cache %s (%s)", path, e)
        return None
    for k in keys:
        if k.startswith("x") and (arrays[k].dtype != np.uint8 or arrays[k].shape[1:] != IMAGE_SHAPE):
            log.warning("ignoring cache %s: unexpected array %s %s", path, k, arrays[k].shape)
            return None
    log.info("read decoded CIFAR-10 from cache %s", path)
    return arrays


def _write_cache(path: Path, arrays: dict) -> None:
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        log.info("cached decoded CIFAR-10 in %s", path)
    except OSError as e:
        log.warning("could not write the cache %s (%s); the next load decodes again", path, e)


# ---------------------------------------------------------------------------- JPEG tars


def _decode(data: bytes, where: str) -> np.ndarray:
    from PIL import Image  # a core dependency, imported here to keep `import edgedl.data` light

    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError ... for bad data
        raise InputFileError(where, f"not a decodable JPEG image ({type(e).__name__}: {e})") from e
    if pixels.shape != IMAGE_SHAPE:
        raise InputFileError(where, f"image is {pixels.shape[1]}x{pixels.shape[0]}, expected 32x32")
    return pixels


def _index(tar: tarfile.TarFile, tar_path: Path) -> tuple[list[tarfile.TarInfo], np.ndarray]:
    """The JPEG members of ``tar`` sorted by class and name, and their labels (from the folder name)."""
    entries = []
    for member in tar.getmembers():
        match = MEMBER.fullmatch(member.name) if member.isfile() else None
        if match is None:
            continue
        if match[1] not in CLASSES:
            raise InputFileError(
                f"{tar_path}:{member.name}", f"class folder '{match[1]}' is not a CIFAR-10 class ({' '.join(CLASSES)})"
            )
        entries.append((CLASSES.index(match[1]), member.name, member))
    if not entries:
        raise InputFileError(tar_path, "holds no <class>/<name>.jpg members")
    entries.sort(key=lambda e: (e[0], e[1]))
    return [e[2] for e in entries], np.array([e[0] for e in entries], dtype=np.int64)


def _decode_members(tar, tar_path: Path, members: list) -> np.ndarray:
    x = np.empty((len(members), *IMAGE_SHAPE), dtype=np.uint8)
    for i, member in enumerate(members):
        x[i] = _decode(tar.extractfile(member).read(), f"{tar_path}:{member.name}")
    return x


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path)
    except (tarfile.TarError, OSError) as e:
        raise InputFileError(path, f"not a readable tar file ({e})") from e


def _load_jpeg_part(tar_path: Path, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One split from a JPEG tar: all samples interleaved by class, or a balanced ``limit`` of them."""
    cache = cache_file(tar_path)
    arrays = _read_cache(cache, ("x", "y"))
    if arrays is None and limit is None:
        with _open_tar(tar_path) as tar:
            members, y = _index(tar, tar_path)
            log.info("decoding %d JPEG images from %s (cached afterwards)", len(members), tar_path)
            arrays = {"x": _decode_members(tar, tar_path, members), "y": y}
        _write_cache(cache, arrays)
    if arrays is not None:
        order = choose(arrays["y"], limit, seed)
        return arrays["x"][order], arrays["y"][order].astype(np.int64)
    with _open_tar(tar_path) as tar:  # no cache and a limit: decode only what is chosen
        members, y = _index(tar, tar_path)
        order = choose(y, limit, seed)
        return _decode_members(tar, tar_path, [members[i] for i in order]), y[order]


# ---------------------------------------------------------------------------- pickled tarball


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unpickle_tarball(path: Path) -> dict:
    """Decode the canonical tarball into uint8 NHWC arrays, after checking its published md5."""
    got = _md5_file(path)
    if got != PYTHON_TARBALL_MD5:
        raise InputFileError(
            path,
            f"md5 is {got}, expected {PYTHON_TARBALL_MD5}; refusing to unpickle a file that is not the "
            "official one (re-download it with `edgedl data download cifar10`)",
        )
    arrays = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            batches = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for part, names in PYTHON_BATCHES.items():
                xs, ys = [], []
                for name in names:
                    if name not in batches:
                        raise InputFileError(path, f"has no member {name}")
                    batch = pickle.load(tar.extractfile(batches[name]), encoding="bytes")
                    xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                    ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
                arrays[f"x_{part}"] = np.ascontiguousarray(np.concatenate(xs))
                arrays[f"y_{part}"] = np.concatenate(ys)
    except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError) as e:
        raise InputFileError(path, f"not a readable CIFAR-10 python tarball ({type(e).__name__}: {e})") from e
    return arrays


def _load_python_tarball(path: Path) -> dict:
    keys = ("x_train", "y_train", "x_test", "y_test")
    cache = cache_file(path)
    arrays = _read_cache(cache, keys)
    if arrays is None:
        arrays = _unpickle_tarball(path)
        _write_cache(cache, arrays)
    return arrays


# ---------------------------------------------------------------------------- the loader


def load(root: Path, *, split: str, limit: int | None, seed: int, features=None) -> Dataset:
    """Load CIFAR-10 from ``root``: the JPEG tars if both are there, else the python tarball."""
    check_split("cifar10", split, SPLITS)
    parts = {}
    if _has_jpeg_tars(root):
        for part, name in JPEG_TARS.items():
            parts[part] = _load_jpeg_part(root / name, limit, seed)
        source = ", ".join(str(root / name) for name in JPEG_TARS.values())
        decoded = "JPEG decoded with Pillow to RGB uint8"
        interleaved = True  # the tars are grouped by class
    else:
        arrays = _load_python_tarball(root / PYTHON_TARBALL)
        for part in ("train", "test"):
            x, y = arrays[f"x_{part}"], arrays[f"y_{part}"].astype(np.int64)
            if limit is not None:
                order = choose(y, limit, seed)
                x, y = x[order], y[order]
            parts[part] = (x, y)
        source = str(root / PYTHON_TARBALL)
        decoded = "pickled uint8 batches, CHW -> HWC"
        interleaved = False
    scaled = {}
    for part, (x, y) in parts.items():
        xf = x.astype(np.float32)
        xf /= 255.0
        scaled[part] = (xf, y)
    return Dataset.from_parts(
        "cifar10", scaled,
        classes=list(CLASSES),
        split=split,
        source=source,
        preprocessing={
            "input": decoded,
            "scale": "x / 255",
            "range": [0.0, 1.0],
            "layout": "NHWC",
            "dtype": "float32",
            **preset("image folder", resize=(32, 32), channels="rgb", scale=1 / 255),
        },
        subset=subset_description(limit, seed, interleaved=interleaved),
    )
