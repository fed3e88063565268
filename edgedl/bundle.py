"""The deployable bundle: a directory (or one tar file) with the compiled files and ``manifest.json``.

The manifest records how every number was made: source model and its sha256, target, backend,
options, toolchain versions, input/output specs with quantization, preprocessing, estimates,
fidelity, and every file with its sha256. There are no timestamps, so the same inputs give the
same bundle. This module needs only the standard library and numpy: devices load bundles with it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from edgedl import _io
from edgedl.errors import InputFileError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def write_bundle(out: str | os.PathLike, manifest: dict, files_dir: Path, archive: bool = False) -> dict:
    """Write a bundle atomically: ``manifest`` plus the files it lists, copied from ``files_dir``.

    The ``files`` entry of the manifest is filled in here (path, bytes, sha256 of each file).

    Returns:
        The manifest as written.
    """
    out = Path(out)
    files_dir = Path(files_dir)
    manifest = dict(manifest, format_version=FORMAT_VERSION)
    entries = []
    for name in sorted(manifest.pop("files")):
        src = files_dir / name
        entries.append({"path": name, "bytes": src.stat().st_size, "sha256": _io.sha256_file(src)})
    manifest["files"] = entries
    text = json.dumps(manifest, indent=2, sort_keys=True, default=_io._json_default) + "\n"
    if archive:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST, text.encode())
            for e in entries:
                _add(tar, e["path"], (files_dir / e["path"]).read_bytes())
        if out.is_dir():
            shutil.rmtree(out)
        _io.write_bytes(out, buf.getvalue())
        return json.loads(text)
    with _io.atomic_path(out, suffix="") as tmp:
        tmp.mkdir()
        for e in entries:
            dst = tmp / e["path"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files_dir / e["path"], dst)
        (tmp / MANIFEST).write_text(text)
        if out.exists() and not out.is_dir():
            out.unlink()
    return json.loads(text)


def _add(tar: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def read_manifest(bundle: str | os.PathLike) -> dict:
    """The manifest of a bundle directory or archive (no file checks; see :func:`open_bundle`)."""
    path = Path(bundle)
    if not path.exists():
        raise InputFileError(path, "no such bundle; expected a folder or an archive written by `edgedl compile`")
    try:
        if path.is_dir():
            text = (path / MANIFEST).read_text()
        else:
            with tarfile.open(path) as tar:
                text = tar.extractfile(MANIFEST).read().decode()
    except (OSError, KeyError, tarfile.TarError, AttributeError, UnicodeDecodeError):
        raise InputFileError(path, f"not an edgedl bundle (no readable {MANIFEST})") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputFileError(path, f"{MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise InputFileError(path, f"{MANIFEST} has no format_version; not an edgedl bundle")
    version = manifest["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputFileError(path, f"bundle format version {version} is newer than this edgedl reads "
                                   f"({FORMAT_VERSION}); upgrade edgedl")
    return manifest


def open_bundle(bundle: str | os.PathLike) -> tuple[dict, Path, "tempfile.TemporaryDirectory | None"]:
    """Verify every file's sha256 against the manifest and return (manifest, directory, tempdir).

    An archive is unpacked into a temporary directory (returned so the caller keeps it alive).

    Raises:
        InputFileError: a missing file or a hash mismatch, naming the file; nothing is loaded then.
    """
    path = Path(bundle)
    manifest = read_manifest(path)
    holder = None
    directory = path
    if not path.is_dir():
        holder = tempfile.TemporaryDirectory(prefix="edgedl-bundle-")
        directory = Path(holder.name)
        with tarfile.open(path) as tar:
            for e in manifest["files"]:
                member = tar.getmember(e["path"]) if e["path"] in tar.getnames() else None
                if member is None or not member.isfile():
                    raise InputFileError(path, f"bundle file '{e['path']}' is missing from the archive")
                dst = directory / e["path"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(tar.extractfile(member).read())
    for e in manifest["files"]:
        f = directory / e["path"]
        if ".." in Path(e["path"]).parts or Path(e["path"]).is_absolute():
            raise InputFileError(path, f"bundle file path '{e['path']}' escapes the bundle")
        if not f.is_file():
            raise InputFileError(path, f"bundle file '{e['path']}' is missing")
        digest = _io.sha256_file(f)
        if digest != e["sha256"]:
            raise InputFileError(path, f"bundle file '{e['path']}' does not match its sha256 in the manifest "
                                       f"(expected {e['sha256'][:12]}..., got {digest[:12]}...): "
                                       "the bundle was changed after compiling; refusing to load it")
    return manifest, directory, holder
