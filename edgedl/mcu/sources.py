"""The C/C++ sources a Cortex-M firmware is built from, pinned, fetched once and cached.

TFLite Micro and what it compiles with (CMSIS-NN, CMSIS_6, the Cortex device family pack,
flatbuffers, gemmlowp, ruy, kissfft) at the commits TFLite Micro itself pins
(``tensorflow/lite/micro/tools/make/third_party_downloads.inc`` and ``ext_libs/*_download.sh`` of
its commit 90b983c2). :func:`fetch` downloads each GitHub archive into the user cache, or copies it
from a mirror folder for machines without the internet (``--mirror DIR`` / ``EDGEDL_MIRROR``), and
unpacks it atomically; it is a no-op once a source is there. :mod:`edgedl.mcu.build` reads the
folders it returns.

GitHub's archive bytes are not stable, so a source is pinned by its commit (in the URL and in the
folder name), not by a checksum of the zip.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgedl._io import atomic_path
from edgedl.errors import BackendError

log = logging.getLogger(__name__)

MIRROR_ENV = "EDGEDL_MIRROR"
CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class Source:
    """One pinned source archive.

    ``name`` is how the build refers to it; ``file`` the archive's name in a mirror folder;
    ``top`` the single folder the archive unpacks to.
    """

    name: str
    repository: str  # owner/name on GitHub
    commit: str      # a commit sha, or a tag for the projects TFLite Micro pins by tag
    file: str
    top: str

    @property
    def url(self) -> str:
        """The canonical GitHub archive URL of this commit."""
        ref = self.commit if len(self.commit) == 40 else f"refs/tags/{self.commit}"
        return f"https://github.com/{self.repository}/archive/{ref}.zip"

    @property
    def folder_name(self) -> str:
        """The cache folder: name and commit, so a new pin never reuses an old tree."""
        return f"{self.name}-{self.commit[:12]}"


def _github(name: str, repository: str, commit: str, top: str | None = None) -> Source:
    owner, repo = repository.split("/")
    return Source(name, repository, commit, f"{owner}-{repo}-{commit}.zip", top or f"{repo}-{commit}")


SOURCES: dict[str, Source] = {s.name: s for s in (
    _github("tflite-micro", "tensorflow/tflite-micro", "90b983c2b3f1480642e040bbd2ddb37b998f3424"),
    _github("cmsis-nn", "ARM-software/CMSIS-NN", "4ab83cc3cc98fb85ed6dafb55e8ca02f1628dcae"),
    _github("cmsis", "ARM-software/CMSIS_6", "5782d6f8057906d360f4b95ec08a2354afe5c9b9"),
    _github("cortex-dfp", "ARM-software/Cortex_DFP", "c2c70a97a20fb355815e2ead3d4a40e35a4a3cdf"),
    _github("flatbuffers", "google/flatbuffers", "v25.9.23", "flatbuffers-25.9.23"),
    _github("gemmlowp", "google/gemmlowp", "719139ce755a0f31cbf1c37f7f98adcc7fc9f425"),
    _github("ruy", "google/ruy", "d37128311b445e758136b8602d1bbd2a755e115d"),
    _github("kissfft", "mborgerding/kissfft", "v130", "kissfft-130"),
)}


def cache_dir() -> Path:
    """The MCU cache: ``$EDGEDL_CACHE/mcu``, else ``<user cache>/mcu`` (the cache the data sets use).

    Example:
        >>> cache_dir().name
        'mcu'
    """
    from edgedl.data.base import decoded_cache_dir

    return decoded_cache_dir() / "mcu"


def sources_dir() -> Path:
    """Where the unpacked sources live: ``<cache>/mcu/sources``."""
    return cache_dir() / "sources"


def fetch(mirror: str | os.PathLike | None = None, names: list[str] | None = None) -> dict[str, Path]:
    """Make the pinned sources present in the cache; return ``{name: unpacked folder}``.

    Each archive comes from GitHub, or from ``mirror`` (a folder or ``file://`` URL holding the
    archives under the names in :data:`SOURCES`), or from ``$EDGEDL_MIRROR`` when ``mirror`` is not
    given. A source already unpacked is not fetched again.

    Args:
        mirror: a folder or URL with the archives, for machines without the internet.
        names: only these sources (default: all of them).

    Returns:
        The unpacked folder of each source.

    Raises:
        BackendError: an archive could not be downloaded or copied, or is not a zip of the
            expected folder.

    Example:
        >>> folders = fetch(mirror="/work/shared/mirror")  # doctest: +SKIP
        >>> (folders["tflite-micro"] / "tensorflow/lite/micro").is_dir()  # doctest: +SKIP
        True
    """
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    root = sources_dir()
    out = {}
    for name in names or list(SOURCES):
        source = SOURCES[name]
        folder = root / source.folder_name
        if not folder.is_dir():
            _install(source, folder, mirror)
        out[name] = folder
    return out


def status() -> list[dict]:
    """Each pinned source and whether it is in the cache: ``[{"name", "repository", "commit", "url",
    "path", "cached"}]`` (for ``edgedl toolchain``).

    Example:
        >>> [s["name"] for s in status()][:2]
        ['tflite-micro', 'cmsis-nn']
    """
    root = sources_dir()
    return [{"name": s.name, "repository": s.repository, "commit": s.commit, "url": s.url,
             "path": str(root / s.folder_name), "cached": (root / s.folder_name).is_dir()}
            for s in SOURCES.values()]


def _hint() -> str:
    return (f"`edgedl toolchain fetch --mirror DIR` (or set {MIRROR_ENV}) with a folder holding the archive "
            "fetches it once for every later build")


def _location(source: Source, mirror) -> str:
    if not mirror:
        return source.url
    mirror = str(mirror)
    if "://" in mirror:
        return f"{mirror.rstrip('/')}/{source.file}"
    return str(Path(mirror).expanduser() / source.file)


def _install(source: Source, folder: Path, mirror) -> None:
    where = _location(source, mirror)
    log.info("fetching %s at %s from %s", source.name, source.commit, where)
    with tempfile.TemporaryDirectory(prefix=".fetch.", dir=_parent(folder)) as tmp:
        archive = Path(tmp) / source.file
        _copy(where, archive, source)
        with atomic_path(folder) as staging:
            staging.mkdir()
            try:
                with zipfile.ZipFile(archive) as z:
                    z.extractall(staging)
            except (zipfile.BadZipFile, OSError) as e:
                raise BackendError(f"{where}: not a readable zip archive of {source.name} ({e}); {_hint()}") from None
            top = staging / source.top
            if not top.is_dir():
                found = ", ".join(sorted(p.name for p in staging.iterdir())[:3]) or "nothing"
                raise BackendError(f"{where}: expected the folder {source.top}/ inside, found {found}; "
                                   f"the archive is not {source.name} at {source.commit}")
            # The tree moves up one level, so the cache folder is the source's root.
            for child in top.iterdir():
                os.replace(child, staging / child.name)
            top.rmdir()


def _parent(folder: Path) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder.parent


def _copy(where: str, dest: Path, source: Source) -> None:
    if "://" not in where:
        try:
            shutil.copyfile(where, dest)
        except OSError as e:
            raise BackendError(f"the source archive {source.file} is not in the mirror: {where} "
                               f"({e.strerror or e}); {_hint()}") from None
        return
    from edgedl import __version__

    request = urllib.request.Request(where, headers={"User-Agent": f"edgedl/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as f:
            while chunk := response.read(CHUNK):
                f.write(chunk)
    except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors; ValueError: a bad URL
        reason = getattr(e, "reason", None) or e
        raise BackendError(f"could not download {source.file} from {where} ({reason}); "
                           f"check the network, or {_hint()}") from None
