"""Fetch the data sets from their canonical sources (or a mirror), verifying checksums first.

Every file is downloaded beside its destination, verified, and only then renamed into place; a
failed download or a checksum mismatch leaves nothing behind in the data folder.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from contextlib import ExitStack, contextmanager
from pathlib import Path

from edgedl._io import atomic_path
from edgedl.data import cifar10, mnist
from edgedl.data.base import resolve_data_dir
from edgedl.data.registry import _info, missing_files
from edgedl.errors import DataError

log = logging.getLogger(__name__)

MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist"
FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags"
FSDD_ARCHIVE = "v1.0.10.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz"

# FSDD v1.0.10 has no published checksum, so we pin one: sha256 over the lines
# "<file name>\t<sha256 of its bytes>\n" of all recordings sorted by file name, plus their count.
# Computed with recordings_digest() from the upstream recordings (the shared data set's copy).
FSDD_COUNT = 3000
FSDD_DIGEST = "8dac6ce326e419e9fcfadedf2e4a67d6c08a40968c34bb8fa2b4e27d74753d5a"
FSDD_MEMBER = re.compile(r"(?:[^/]+/)?recordings/(\d_[A-Za-z]+_\d+\.wav)")

CHUNK = 1 << 20


def recordings_digest(hashes: dict[str, str]) -> str:
    """The FSDD content digest of ``{file name: sha256 hex}`` (see :data:`FSDD_DIGEST`)."""
    h = hashlib.sha256()
    for name in sorted(hashes):
        h.update(f"{name}\t{hashes[name]}\n".encode())
    return h.hexdigest()


def folder_digest(folder: str | os.PathLike) -> tuple[int, str]:
    """(count, digest) of the ``*.wav`` files in ``folder``."""
    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).glob("*.wav")}
    return len(hashes), recordings_digest(hashes)


# ---------------------------------------------------------------------------- plumbing


class _NoProgress:
    def add_task(self, *args, **kwargs):
        return 0

    def advance(self, *args, **kwargs):
        pass


@contextmanager
def _progress(enabled: bool):
    if not enabled:
        yield _NoProgress()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        yield bar


@contextmanager
def _no_trace(folder: Path):
    """Remove ``folder`` again if this block created it and then failed."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _url(base: str, file_name: str) -> str:
    return f"{base.rstrip('/')}/{file_name}"


def _base(mirror: str | None, canonical: str) -> str:
    """The mirror (a URL, or a local folder turned into a file:// URL) or the canonical base."""
    if not mirror:
        return canonical
    if "://" not in mirror:
        return Path(mirror).expanduser().resolve().as_uri()
    return mirror


def _fetch(url: str, dest: Path, bar) -> None:
    """Stream ``url`` into ``dest``."""
    from edgedl import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"edgedl/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(dest, "wb") as f:
            length = response.headers.get("Content-Length")
            task = bar.add_task(url.rsplit("/", 1)[-1], total=int(length) if length else None)
            while chunk := response.read(CHUNK):
                f.write(chunk)
                bar.advance(task, len(chunk))
    except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors; ValueError: a bad URL
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"could not download {url} ({reason}); check the network, or pass --mirror with a copy"
        ) from e


def _mismatch(file_name: str, url: str, kind: str, expected: str, got: str, target: Path) -> DataError:
    return DataError(
        f"checksum mismatch for {file_name} from {url}: expected {kind} {expected}, got {got}; "
        f"nothing was written to {target}"
    )


# ---------------------------------------------------------------------------- per data set


def _gunzip_md5(path: Path, url: str) -> str:
    h = hashlib.md5()
    try:
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{url} is not a valid gzip file ({e}); nothing was written") from e
    return h.hexdigest()


def _download_mnist(root: Path, mirror: str | None, bar) -> None:
    base = _base(mirror, MNIST_URL)
    with ExitStack() as stack:  # every file lands only once all four are verified
        for file_name, (expected, _, _) in mnist.FILES.items():
            url = _url(base, file_name)
            tmp = stack.enter_context(atomic_path(root / file_name))
            _fetch(url, tmp, bar)
            got = _gunzip_md5(tmp, url)
            if got != expected:
                raise _mismatch(file_name, url, "md5 of the decompressed bytes", expected, got, root)


def _download_fsdd(root: Path, mirror: str | None, bar) -> None:
    url = _url(_base(mirror, FSDD_URL), FSDD_ARCHIVE)
    root.mkdir(parents=True, exist_ok=True)
    fd, archive = tempfile.mkstemp(prefix=f".{FSDD_ARCHIVE}.", dir=root)
    os.close(fd)
    archive = Path(archive)
    try:
        _fetch(url, archive, bar)
        with atomic_path(root / "recordings") as staging:
            staging.mkdir()
            hashes = _extract_recordings(archive, staging, url)
            got = recordings_digest(hashes)
            if len(hashes) != FSDD_COUNT:
                raise DataError(
                    f"{FSDD_ARCHIVE} from {url} holds {len(hashes)} recordings, expected {FSDD_COUNT}; "
                    f"nothing was written to {root}"
                )
            if got != FSDD_DIGEST:
                raise _mismatch(FSDD_ARCHIVE, url, "recordings digest", FSDD_DIGEST, got, root)
    finally:
        archive.unlink(missing_ok=True)


def _extract_recordings(archive: Path, folder: Path, url: str) -> dict[str, str]:
    """Write ``*/recordings/*.wav`` members of ``archive`` into ``folder``; {name: sha256}."""
    hashes = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                match = FSDD_MEMBER.fullmatch(member.name) if member.isfile() else None
                if match is None:
                    continue
                data = tar.extractfile(member).read()
                (folder / match[1]).write_bytes(data)  # plain names only: no path from the archive
                hashes[match[1]] = hashlib.sha256(data).hexdigest()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{url} is not a readable tar archive ({e}); nothing was written") from e
    return hashes


def _download_cifar10(root: Path, mirror: str | None, bar) -> None:
    url = _url(_base(mirror, CIFAR10_URL), cifar10.PYTHON_TARBALL)
    with atomic_path(root / cifar10.PYTHON_TARBALL) as tmp:
        _fetch(url, tmp, bar)
        got = cifar10._md5_file(tmp)
        if got != cifar10.PYTHON_TARBALL_MD5:
            raise _mismatch(cifar10.PYTHON_TARBALL, url, "md5", cifar10.PYTHON_TARBALL_MD5, got, root)


DOWNLOADERS = {"mnist": _download_mnist, "fsdd": _download_fsdd, "cifar10": _download_cifar10}


def download(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    progress: bool = True,
) -> Path | None:
    """Download a data set into ``<data dir>/<name>/``, verified, unless it is there already.

    Sources: MNIST from Google's CVDF mirror (checked against the published md5 of the
    decompressed files), FSDD from the v1.0.10 GitHub archive (only ``recordings/*.wav`` is kept,
    checked against a pinned digest of all 3000 files), CIFAR-10 as ``cifar-10-python.tar.gz`` from
    the University of Toronto (checked against its published md5). "digits" ships with
    scikit-learn and needs no download.

    Args:
        name: "mnist", "fsdd" or "cifar10".
        data_dir: where data sets live (see :func:`resolve_data_dir`).
        mirror: a base URL (``https://``, ``file://``, or a local folder) holding the same file
            names as the canonical source, flat: the four MNIST ``.gz`` files, ``v1.0.10.tar.gz``,
            ``cifar-10-python.tar.gz``.
        progress: show a progress bar on stderr.

    Returns:
        The data set's folder, or None for "digits".

    Raises:
        DataError: unknown name, a failed download, or a checksum mismatch (nothing is left behind).

    Example:
        >>> download("mnist", data_dir="/tmp/data", mirror="file:///srv/mirror")  # doctest: +SKIP
        PosixPath('/tmp/data/mnist')
    """
    info = _info(name)
    if not info.needs_data_dir:
        log.info("%s ships with scikit-learn: nothing to download", name)
        return None
    data_root, _ = resolve_data_dir(data_dir)
    root = data_root / name
    if not missing_files(name, data_dir=data_root):
        log.info("%s is already present in %s", name, root)
        return root
    log.info("downloading %s into %s", name, root)
    with _no_trace(data_root), _no_trace(root), _progress(progress) as bar:
        DOWNLOADERS[name](root, mirror, bar)
    return root
