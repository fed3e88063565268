"""Small shared helpers: atomic writes, hashing, JSON."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    Works for files and directories: whatever the block creates at the yielded path replaces the
    target in one rename, so readers never see a half-written result.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        if (path.is_dir() and not path.is_symlink()) or (tmp.is_dir() and path.exists()):
            # A folder cannot be renamed over (or onto a file): the old one steps aside only once the
            # new one is complete, and goes when the new one is in place.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def check_writable(path: str | os.PathLike, option: str, kind: str | None = None) -> Path:
    """Fail now, in one line, if ``path`` could not be written later (before a long run, not after it).

    ``path`` need not exist: the closest folder above it that does must take new files (a probe file
    is created there and removed). ``kind`` is ``"file"`` or ``"folder"`` when ``path`` must be one
    of them (an existing path of the other kind is refused); ``None`` takes either.
    """
    from edgedl.errors import OptionError

    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OptionError(f"{option} must be a folder, but '{path}' is a file")
    if kind == "file" and path.is_dir():
        raise OptionError(f"{option} must be a file, but '{path}' is a folder")
    existing = path if path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OptionError(f"{option} '{path}' cannot be written: '{existing}' is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgedl-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OptionError(f"{option} '{path}' cannot be written: creating a file in '{existing}' failed ({e.strerror})")
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
