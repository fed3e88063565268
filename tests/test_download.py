"""Specification of edgedl.data.fetch (download), exercised offline through file:// mirrors of the shared data."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgedl.cli.main import cli
from edgedl.data import download, load_dataset
from edgedl.data import mnist
from edgedl.data.fetch import FSDD_ARCHIVE, FSDD_COUNT, FSDD_DIGEST, folder_digest
from edgedl.errors import DataError

ARCHIVE_ROOT = "free-spoken-digit-dataset-1.0.10"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("EDGEDL_DATA", raising=False)


def fsdd_archive(path: Path, recordings: Path, replace: dict | None = None, only: int | None = None) -> None:
    """A tar.gz in GitHub's archive layout, <repo>-<tag>/recordings/*.wav plus a file to skip."""
    replace = replace or {}
    names = sorted(p.name for p in recordings.glob("*.wav"))[:only]
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        readme = b"# Free Spoken Digit Dataset\n"
        info = tarfile.TarInfo(f"{ARCHIVE_ROOT}/README.md")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
        for name in names:
            data = replace.get(name) or (recordings / name).read_bytes()
            info = tarfile.TarInfo(f"{ARCHIVE_ROOT}/recordings/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def mirror(data_dir, tmp_path_factory) -> Path:
    """A flat mirror folder: the four MNIST .gz files and the FSDD v1.0.10 archive."""
    folder = tmp_path_factory.mktemp("mirror")
    for name in mnist.FILES:
        (folder / name).symlink_to(data_dir / "mnist" / name)
    fsdd_archive(folder / FSDD_ARCHIVE, data_dir / "fsdd" / "recordings")
    return folder


def tampered_mirror(mirror: Path, tmp_path: Path, name: str, data: bytes) -> Path:
    folder = tmp_path / "tampered"
    folder.mkdir()
    for entry in mirror.iterdir():
        if entry.name != name:
            (folder / entry.name).symlink_to(entry)
    (folder / name).write_bytes(data)
    return folder


def test_the_pinned_fsdd_digest_is_that_of_the_upstream_recordings(data_dir):
    assert folder_digest(data_dir / "fsdd" / "recordings") == (FSDD_COUNT, FSDD_DIGEST)


def test_download_from_a_mirror_then_load(mirror, tmp_path):
    target = tmp_path / "data"
    assert download("mnist", data_dir=target, mirror=mirror.as_uri(), progress=False) == target / "mnist"
    assert download("fsdd", data_dir=target, mirror=mirror.as_uri(), progress=False) == target / "fsdd"
    assert sorted(p.name for p in (target / "mnist").iterdir()) == sorted(mnist.FILES)
    assert folder_digest(target / "fsdd" / "recordings") == (FSDD_COUNT, FSDD_DIGEST)
    assert sorted(p.name for p in target.rglob(".*")) == []  # no temporary files left
    assert sorted(p.name for p in (target / "fsdd").iterdir()) == ["recordings"]  # README.md skipped

    ds = load_dataset("mnist", data_dir=target, limit=100)  # reading checks every md5
    assert np.bincount(ds.y_train).tolist() == [10] * 10
    ds = load_dataset("fsdd", data_dir=target)
    assert (len(ds.y_train), len(ds.y_test)) == (2700, 300)


def test_a_present_data_set_is_not_downloaded_again(data_dir):
    assert download("mnist", data_dir=data_dir, mirror="file:///nonexistent", progress=False) == data_dir / "mnist"


def test_digits_need_no_download():
    assert download("digits", progress=False) is None


def test_the_cli_downloads_from_a_folder_mirror(mirror, tmp_path):
    result = CliRunner().invoke(
        cli, ["data", "download", "mnist", "--data-dir", str(tmp_path), "--mirror", str(mirror)]
    )
    assert result.exit_code == 0, result.output
    assert f"mnist is ready in {tmp_path / 'mnist'}" in result.output
    assert CliRunner().invoke(cli, ["data", "download", "digits"]).output.startswith("digits ships with scikit-learn")


def test_a_tampered_mnist_file_fails_its_checksum_and_leaves_nothing(mirror, tmp_path):
    name = "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress((mirror / name).read_bytes()))
    raw[50] = (raw[50] + 1) % 10
    bad = tampered_mirror(mirror, tmp_path, name, gzip.compress(bytes(raw)))
    target = tmp_path / "data"
    target.mkdir()
    got = hashlib.md5(bytes(raw)).hexdigest()
    with pytest.raises(
        DataError,
        match=rf"checksum mismatch for {name} from file://.*/{name}: expected md5 of the decompressed bytes "
        rf"27ae3e4e09519cfbb04c329615203637, got {got}; nothing was written to {target / 'mnist'}",
    ):
        download("mnist", data_dir=target, mirror=bad.as_uri(), progress=False)
    assert list(target.iterdir()) == []


def test_a_tampered_fsdd_recording_fails_the_digest_and_leaves_nothing(data_dir, mirror, tmp_path):
    recordings = data_dir / "fsdd" / "recordings"
    changed = bytearray((recordings / "7_jackson_32.wav").read_bytes())
    changed[-1] ^= 1
    archive = tmp_path / FSDD_ARCHIVE
    fsdd_archive(archive, recordings, replace={"7_jackson_32.wav": bytes(changed)})
    bad = tampered_mirror(mirror, tmp_path, FSDD_ARCHIVE, archive.read_bytes())
    target = tmp_path / "data"
    message = rf"checksum mismatch for {FSDD_ARCHIVE} .*expected recordings digest {FSDD_DIGEST}, got"
    with pytest.raises(DataError, match=message):
        download("fsdd", data_dir=target, mirror=bad.as_uri(), progress=False)
    assert not target.exists()


def test_an_fsdd_archive_with_missing_recordings_is_refused(data_dir, mirror, tmp_path):
    archive = tmp_path / FSDD_ARCHIVE
    fsdd_archive(archive, data_dir / "fsdd" / "recordings", only=10)
    bad = tampered_mirror(mirror, tmp_path, FSDD_ARCHIVE, archive.read_bytes())
    with pytest.raises(DataError, match=r"holds 10 recordings, expected 3000; nothing was written"):
        download("fsdd", data_dir=tmp_path / "data", mirror=bad.as_uri(), progress=False)
    assert not (tmp_path / "data").exists()


def test_a_cifar10_tarball_with_the_wrong_md5_is_refused(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "cifar-10-python.tar.gz").write_bytes(b"not the real tarball")
    target = tmp_path / "data"
    message = r"checksum mismatch for cifar-10-python.tar.gz .*expected md5 c58f30108f718f92721af3b95e74349a, got"
    with pytest.raises(DataError, match=message):
        download("cifar10", data_dir=target, mirror=mirror.as_uri(), progress=False)
    assert not target.exists()


def test_an_unreachable_source_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"could not download file://.*/train-images-idx3-ubyte.gz .*--mirror"):
        download("mnist", data_dir=tmp_path / "data", mirror=(tmp_path / "empty").as_uri(), progress=False)
    assert not (tmp_path / "data").exists()


def test_a_cifar10_tarball_downloads_and_loads_as_the_same_images(data_dir, tmp_path, monkeypatch):
    """The download path end to end, on a tarball in the canonical layout built from real CIFAR-10
    images: the canonical file is not offline, so its pinned md5 is swapped for this one's."""
    import pickle

    from edgedl.data import cifar10

    real = load_dataset("cifar10", data_dir=data_dir, limit=60)
    to_uint8 = lambda x: np.round(x * 255).astype(np.uint8)  # noqa: E731
    parts = {"train": (to_uint8(real.x_train), real.y_train), "test": (to_uint8(real.x_test), real.y_test)}
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    tarball = mirror / cifar10.PYTHON_TARBALL
    with tarfile.open(tarball, "w:gz") as tar:
        for part, names in cifar10.PYTHON_BATCHES.items():
            x, y = parts[part]
            for k, name in enumerate(names):
                rows = slice(k * len(x) // len(names), (k + 1) * len(x) // len(names))
                batch = {b"data": x[rows].transpose(0, 3, 1, 2).reshape(-1, 3 * 32 * 32),
                         b"labels": [int(v) for v in y[rows]]}
                blob = pickle.dumps(batch)
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    monkeypatch.setattr(cifar10, "PYTHON_TARBALL_MD5", hashlib.md5(tarball.read_bytes()).hexdigest())
    target = tmp_path / "data"
    download("cifar10", data_dir=target, mirror=mirror.as_uri(), progress=False)
    assert sorted(p.name for p in (target / "cifar10").iterdir()) == [cifar10.PYTHON_TARBALL]
    loaded = load_dataset("cifar10", data_dir=target)
    for part, (x, y) in parts.items():
        np.testing.assert_array_equal(to_uint8(getattr(loaded, f"x_{part}")), x)
        np.testing.assert_array_equal(getattr(loaded, f"y_{part}"), y)
    assert loaded.x_train.dtype == np.float32 and loaded.x_train.shape[1:] == (32, 32, 3)
