"""Specification of edgedl.data: the data sets, their splits, their features, their errors, their CLI."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgedl.cli.main import cli
from edgedl.data import DATASETS, Dataset, list_datasets, load_dataset, resolve_data_dir
from edgedl.data import cifar10, digits, features, fsdd, mnist
from edgedl.data.base import balanced_order
from edgedl.errors import DataError, InputFileError, OptionError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FSDD_SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test reads the user's settings or writes into the user's cache."""
    monkeypatch.setenv("EDGEDL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("EDGEDL_DATA", raising=False)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


# ---------------------------------------------------------------------------- registry and errors


def test_list_datasets_describes_the_four_data_sets():
    entries = {d["name"]: d for d in list_datasets()}
    assert sorted(entries) == ["cifar10", "digits", "fsdd", "mnist"] == sorted(DATASETS)
    for entry in entries.values():
        assert {"name", "description", "input_shape", "num_classes", "needs_data_dir", "splits"} <= set(entry)
        assert entry["num_classes"] == 10
        json.dumps(entry)
    assert entries["digits"]["needs_data_dir"] is False
    assert entries["mnist"]["input_shape"] == (28, 28, 1)
    assert entries["fsdd"]["input_shape"] == (61, 40, 1)
    assert "speaker:NAME" in entries["fsdd"]["splits"]


def test_unknown_name_names_the_known_ones():
    with pytest.raises(DataError, match=r"unknown data set 'imagenet'; known data sets: cifar10, digits, fsdd, mnist"):
        load_dataset("imagenet")


def test_resolve_data_dir_prefers_argument_then_environment_then_cache(tmp_path, monkeypatch):
    assert resolve_data_dir(tmp_path / "arg") == (tmp_path / "arg", "--data-dir (the data_dir argument)")
    monkeypatch.setenv("EDGEDL_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg")[0] == tmp_path / "arg"
    assert resolve_data_dir() == (tmp_path / "env", "the EDGEDL_DATA environment variable")
    monkeypatch.delenv("EDGEDL_DATA")
    path, origin = resolve_data_dir()
    assert path == tmp_path / "xdg" / "edgedl" / "data"
    assert "default cache" in origin


def test_missing_data_says_where_it_looked_why_there_and_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(DataError) as error:
        load_dataset("mnist", data_dir=tmp_path / "nowhere")
    message = str(error.value)
    assert f"looked in {tmp_path / 'nowhere' / 'mnist'}" in message
    assert "--data-dir" in message
    assert "edgedl data download mnist" in message
    assert "EDGEDL_DATA" in message and "mnist/" in message
    assert "\n" not in message

    monkeypatch.setenv("EDGEDL_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError, match=r"data dir from the EDGEDL_DATA environment variable"):
        load_dataset("fsdd")
    monkeypatch.delenv("EDGEDL_DATA")
    with pytest.raises(DataError, match=r"xdg/edgedl/data/cifar10 \(data dir from the default cache folder"):
        load_dataset("cifar10")


def test_an_incomplete_data_set_names_the_missing_files(tmp_path, data_dir):
    (tmp_path / "mnist").mkdir()
    for name in list(mnist.FILES)[:3]:
        (tmp_path / "mnist" / name).symlink_to(data_dir / "mnist" / name)
    with pytest.raises(DataError, match=r"'mnist' incomplete \(missing t10k-labels-idx1-ubyte.gz\)"):
        load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"limit": 0}, r"limit must be a positive integer or None, received: limit=0"),
        ({"limit": 2.5}, r"received: limit=2.5"),
        ({"features": "mfcc"}, r"features='mfcc' does not apply to digits"),
        ({"split": "random"}, r"unknown split 'random' for digits; expected one of: official"),
    ],
)
def test_options_that_do_not_apply_are_refused(options, message):
    with pytest.raises(OptionError, match=message):
        load_dataset("digits", **options)


def test_balanced_order_is_seeded_and_every_prefix_is_class_balanced():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])  # grouped by class, like the CIFAR tars
    order = balanced_order(labels, seed=0)
    assert sorted(order) == list(range(100))
    for n in (4, 8, 37):
        counts = np.bincount(labels[order[:n]], minlength=4)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(order, balanced_order(labels, seed=0))
    assert not np.array_equal(order[:8], balanced_order(labels, seed=1)[:8])


# ---------------------------------------------------------------------------- mnist


def test_mnist_loads_all_samples_with_the_published_label_counts(data_dir):
    ds = load_dataset("mnist", data_dir=data_dir)
    assert isinstance(ds, Dataset)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert np.bincount(ds.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(ds.y_test).tolist() == MNIST_TEST_COUNTS
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10
    summary = json.loads(json.dumps(ds.summary()))
    assert summary["sizes"] == {"train": 60000, "test": 10000}
    assert summary["class_counts"]["test"]["1"] == 1135
    assert summary["source"] == str(data_dir / "mnist")
    assert summary["preprocessing"]["scale"] == "x / 255"


def test_mnist_limit_picks_a_seeded_class_balanced_subset(data_dir):
    ds = load_dataset("mnist", data_dir=data_dir, limit=50)
    assert len(ds.x_train) == len(ds.x_test) == 50
    assert np.bincount(ds.y_train).tolist() == [5] * 10
    again = load_dataset("mnist", data_dir=data_dir, limit=50)
    assert np.array_equal(ds.x_train, again.x_train)
    other = load_dataset("mnist", data_dir=data_dir, limit=50, seed=1)
    assert not np.array_equal(ds.x_train, other.x_train)


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1)


LABELS = "train-labels-idx1-ubyte.gz"
CORRUPTIONS = {
    "truncated gzip": (lambda gz, raw: gz[: len(gz) // 2], r"not a readable gzip file"),
    "wrong magic": (
        lambda gz, raw: _gz((2051).to_bytes(4, "big") + raw[4:]), r"idx magic number is 2051, expected 2049"
    ),
    "short content": (lambda gz, raw: _gz(raw[:-100]), r"holds 59908 bytes once decompressed, expected 60008"),
    "changed label": (
        lambda gz, raw: _gz(raw[:100] + bytes([(raw[100] + 1) % 10]) + raw[101:]),
        r"md5 of the decompressed bytes is [0-9a-f]{32}, expected a25bea736e30d166cdddb491f175f624",
    ),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_mnist_file_is_named_with_what_is_wrong(tmp_path, data_dir, corruption):
    corrupt, message = CORRUPTIONS[corruption]
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in mnist.FILES:
        if name != LABELS:
            (folder / name).symlink_to(data_dir / "mnist" / name)
    original = (data_dir / "mnist" / LABELS).read_bytes()
    (folder / LABELS).write_bytes(corrupt(original, gzip.decompress(original)))
    with pytest.raises(InputFileError, match=message) as error:
        load_dataset("mnist", data_dir=tmp_path)
    assert error.value.path == str(folder / LABELS)
    assert str(error.value).startswith(f"{folder / LABELS}: ")


# ---------------------------------------------------------------------------- digits


def test_digits_need_no_data_dir_and_split_80_20_by_class():
    ds = load_dataset("digits")
    assert (len(ds.y_train), len(ds.y_test)) == (1438, 359)
    assert ds.x_train.shape[1:] == (28, 28, 1) and ds.x_train.dtype == np.float32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    fraction = np.bincount(ds.y_test) / (np.bincount(ds.y_train) + np.bincount(ds.y_test))
    assert np.all(np.abs(fraction - 0.2) < 0.01)
    assert np.array_equal(ds.y_test, load_dataset("digits", seed=7).y_test)  # the split is fixed
    assert ds.preprocessing["resize"]["method"] == "bilinear, half-pixel centres"


def test_digits_upsampling_is_bilinear_and_keeps_levels():
    w = digits.bilinear_matrix(8, 28)
    assert np.allclose(w.sum(axis=1), 1.0)
    assert np.allclose(digits.upsample(np.full((1, 8, 8), 0.75)), 0.75)
    ramp = np.tile(np.arange(8.0), (8, 1))[None]  # a horizontal ramp stays monotone
    assert np.all(np.diff(digits.upsample(ramp)[0, 14]) >= 0)


# ---------------------------------------------------------------------------- fsdd


@pytest.fixture(scope="module")
def fsdd_official(data_dir):
    return load_dataset("fsdd", data_dir=data_dir)


def test_fsdd_official_split_holds_out_index_0_to_4_of_every_speaker_and_digit(data_dir):
    train, test = fsdd.split_recordings(fsdd.list_recordings(data_dir / "fsdd"), "official")
    assert (len(train), len(test)) == (2700, 300)
    assert {r.index for r in test} == {0, 1, 2, 3, 4}
    assert min(r.index for r in train) == 5
    assert {(r.digit, r.speaker) for r in test} == {(d, s) for d in range(10) for s in FSDD_SPEAKERS}


def test_fsdd_official_features_are_normalised_log_mel_frames(fsdd_official):
    ds = fsdd_official
    assert ds.x_train.shape == (2700, 61, 40, 1) and ds.x_test.shape == (300, 61, 40, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert np.isfinite(ds.x_train).all() and np.isfinite(ds.x_test).all()
    assert abs(ds.x_train.mean()) < 0.01 and abs(ds.x_train.std() - 1) < 0.01  # constants from train
    assert abs(ds.x_test.mean()) < 0.3 and 0.7 < ds.x_test.std() < 1.3
    assert np.bincount(ds.y_train).tolist() == [270] * 10 and np.bincount(ds.y_test).tolist() == [30] * 10
    assert len(set(ds.y_train[:10].tolist())) == 10  # classes interleaved: any slice holds all digits
    p = ds.preprocessing
    assert (p["num_samples"], p["frame_length"], p["frame_step"], p["mel"]["num_bands"]) == (8000, 256, 128, 40)
    assert p["normalise"]["mean"] == fsdd.LOGMEL_MEAN
    json.dumps(ds.summary())


def test_fsdd_test_set_holds_the_features_of_the_test_recordings(data_dir, fsdd_official):
    def features_of(name):
        rec = next(r for r in fsdd.list_recordings(data_dir / "fsdd") if r.path.name == name)
        return (fsdd.raw_features([rec], "logmel")[0, ..., None] - fsdd.LOGMEL_MEAN) / fsdd.LOGMEL_STD

    def distance(x, f):
        return np.abs(x - f).max(axis=(1, 2, 3)).min()

    assert distance(fsdd_official.x_test, features_of("3_theo_2.wav")) < 1e-4
    assert distance(fsdd_official.x_train, features_of("3_theo_2.wav")) > 0.1
    assert distance(fsdd_official.x_train, features_of("3_theo_7.wav")) < 1e-4


def test_fsdd_speaker_split_holds_out_all_500_of_that_speaker(data_dir):
    train, test = fsdd.split_recordings(fsdd.list_recordings(data_dir / "fsdd"), "speaker:theo")
    assert len(test) == 500 and {r.speaker for r in test} == {"theo"}
    assert "theo" not in {r.speaker for r in train}
    ds = load_dataset("fsdd", data_dir=data_dir, split="speaker:theo", limit=40)
    assert (len(ds.y_train), len(ds.y_test), ds.split) == (40, 40, "speaker:theo")


def test_fsdd_unknown_speaker_lists_the_six_speakers(data_dir):
    with pytest.raises(OptionError, match=r"unknown speaker 'bob'.*george, jackson, lucas, nicolas, theo, yweweler"):
        load_dataset("fsdd", data_dir=data_dir, split="speaker:bob")
    with pytest.raises(OptionError, match=r"unknown split 'by-digit' for fsdd"):
        load_dataset("fsdd", data_dir=data_dir, split="by-digit")


def test_fsdd_mfcc_gives_13_normalised_coefficients(data_dir):
    ds = load_dataset("fsdd", data_dir=data_dir, features="mfcc")
    assert ds.x_train.shape == (2700, 61, 13, 1)
    per_coefficient = ds.x_train[..., 0].reshape(-1, 13)
    assert np.all(np.abs(per_coefficient.mean(axis=0)) < 0.01)
    assert np.all(np.abs(per_coefficient.std(axis=0) - 1) < 0.01)
    assert ds.preprocessing["dct"] == {"type": "DCT-II", "norm": "ortho", "num_coefficients": 13}


def test_mel_filterbank_covers_20_hz_to_4_khz_with_40_rising_bands():
    bank = features.mel_filterbank()
    assert bank.shape == (40, 129)
    assert np.all(bank.max(axis=1) > 0)  # no empty band
    peaks = bank.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] > 120
    t = np.arange(8000) / 8000
    spectrum = features.log_mel(np.sin(2 * np.pi * 1000 * t)[None])[0]
    centre = features.mel_to_hz(np.linspace(features.hz_to_mel(20), features.hz_to_mel(4000), 42))[1:-1]
    assert abs(centre[spectrum.mean(axis=0).argmax()] - 1000) < 100


def test_dct_is_orthonormal_dct_ii():
    d = features.dct_matrix(40)
    assert np.allclose(d @ d.T, np.eye(40), atol=1e-5)
    scipy_fft = pytest.importorskip("scipy.fft")
    x = np.random.default_rng(0).normal(size=40)
    assert np.allclose(features.dct_matrix(40, 13) @ x, scipy_fft.dct(x, type=2, norm="ortho")[:13], atol=1e-5)


def _fsdd_copy(data_dir: Path, tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes((data_dir / "fsdd" / "recordings" / name).read_bytes())
    return folder


def test_a_corrupt_wav_is_named(tmp_path, data_dir):
    folder = _fsdd_copy(data_dir, tmp_path, ["0_george_0.wav", "0_george_5.wav"])
    (folder / "1_george_6.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(InputFileError, match=r"1_george_6.wav: not a readable WAV file"):
        load_dataset("fsdd", data_dir=tmp_path)


def test_a_wav_that_is_not_8_khz_mono_16_bit_is_refused(tmp_path, data_dir):
    import wave

    folder = _fsdd_copy(data_dir, tmp_path, ["0_george_0.wav", "0_george_5.wav"])
    with wave.open(str(folder / "1_george_6.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(1600, "<i2").tobytes())
    with pytest.raises(InputFileError, match=r"1_george_6.wav: expected 8 kHz mono 16-bit PCM, got 16000 Hz"):
        load_dataset("fsdd", data_dir=tmp_path)


# ---------------------------------------------------------------------------- cifar10


def test_cifar10_limit_is_class_balanced_decodes_little_and_writes_nothing(data_dir, tmp_path):
    before = snapshot(data_dir / "cifar10")
    ds = load_dataset("cifar10", data_dir=data_dir, limit=200)
    assert ds.x_train.shape == (200, 32, 32, 3) and ds.x_test.shape == (200, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0 and ds.x_train.std() > 0.1
    assert np.bincount(ds.y_train).tolist() == [20] * 10 and np.bincount(ds.y_test).tolist() == [20] * 10
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert snapshot(data_dir / "cifar10") == before
    assert not (tmp_path / "cache").exists()  # a limited cold load decodes only its members, caches nothing


def _jpeg(colour) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _jpeg_tars(folder: Path, per_class: dict, broken: str | None = None) -> None:
    """train_jpg.tar and test_jpg.tar in the shared layout, each image one flat colour (class index)."""
    folder.mkdir(parents=True)
    for part, count in per_class.items():
        with tarfile.open(folder / f"{part}_jpg.tar", "w") as tar:
            for c, name in enumerate(cifar10.CLASSES):
                for i in range(count):
                    member = f"{part}/{name}/{i:04d}.jpg"
                    data = _jpeg((20 * c, 100, 200))
                    _add(tar, member, data[: len(data) // 3] if member == broken else data)


def test_cifar10_full_load_is_cached_outside_the_data_dir(tmp_path, monkeypatch):
    _jpeg_tars(tmp_path / "data" / "cifar10", {"train": 3, "test": 1})
    before = snapshot(tmp_path / "data")
    first = load_dataset("cifar10", data_dir=tmp_path / "data")
    assert (len(first.y_train), len(first.y_test)) == (30, 10)
    assert np.allclose(first.x_train[first.y_train == 4][:, 16, 16], [80 / 255, 100 / 255, 200 / 255], atol=0.02)
    assert len(set(first.y_train[:10].tolist())) == 10  # the class-ordered tar comes out interleaved
    cached = sorted((tmp_path / "cache" / "cifar10").glob("*.npz"))
    assert [p.name.split("-")[0] for p in cached] == ["test_jpg.tar", "train_jpg.tar"]
    assert snapshot(tmp_path / "data") == before

    def no_decoding(*args):
        raise AssertionError("decoded a JPEG although the cache holds it")

    monkeypatch.setattr(cifar10, "_decode", no_decoding)
    second = load_dataset("cifar10", data_dir=tmp_path / "data")
    assert np.array_equal(first.x_train, second.x_train) and np.array_equal(first.y_test, second.y_test)
    assert np.bincount(load_dataset("cifar10", data_dir=tmp_path / "data", limit=10).y_train).tolist() == [1] * 10


def test_cifar10_corrupt_jpeg_names_the_tar_member(tmp_path):
    _jpeg_tars(tmp_path / "cifar10", {"train": 2, "test": 1}, broken="train/cat/0001.jpg")
    with pytest.raises(InputFileError, match=r"train_jpg.tar:train/cat/0001.jpg: not a decodable JPEG image"):
        load_dataset("cifar10", data_dir=tmp_path)


def _python_tarball(path: Path, per_class: int = 2) -> np.ndarray:
    """A small cifar-10-python.tar.gz in the canonical layout; returns the first training image (HWC)."""
    rng = np.random.default_rng(0)
    first = None
    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w:gz") as tar:
        for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            labels = list(range(10)) * per_class
            data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
            if first is None:
                first = data[0].reshape(3, 32, 32).transpose(1, 2, 0)
            _add(tar, f"cifar-10-batches-py/{batch}", pickle.dumps({b"data": data, b"labels": labels}))
    return first


def test_cifar10_reads_the_canonical_python_tarball_after_checking_its_md5(tmp_path, monkeypatch):
    tarball = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    first = _python_tarball(tarball)
    with pytest.raises(InputFileError, match=r"expected c58f30108f718f92721af3b95e74349a; refusing to unpickle"):
        load_dataset("cifar10", data_dir=tmp_path)
    monkeypatch.setattr(cifar10, "PYTHON_TARBALL_MD5", cifar10._md5_file(tarball))
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert (len(ds.y_train), len(ds.y_test)) == (100, 20)
    assert np.array_equal(ds.x_train[0], first / np.float32(255))  # channels last, source order kept
    assert ds.source == str(tarball)


# ---------------------------------------------------------------------------- CLI


def test_cli_list_reports_presence_in_the_data_dir(data_dir, tmp_path):
    result = CliRunner().invoke(cli, ["data", "list", "--json", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert listing["data_dir"] == str(data_dir)
    assert {d["name"]: d["present"] for d in listing["datasets"]} == dict.fromkeys(DATASETS, True)
    empty = CliRunner().invoke(cli, ["data", "list", "--data-dir", str(tmp_path)], env={"COLUMNS": "200"})
    assert empty.exit_code == 0
    assert "built in" in empty.output and "edgedl data download NAME" in empty.output


def test_cli_info_shows_sizes_shape_and_class_counts(data_dir):
    result = CliRunner().invoke(
        cli, ["data", "info", "fsdd", "--data-dir", str(data_dir), "--split", "speaker:theo", "--limit", "20"]
    )
    assert result.exit_code == 0, result.output
    assert "fsdd (speaker:theo split)" in result.output and "20 / 20" in result.output
    assert "61x40x1 float32" in result.output and "samples per class" in result.output
    as_json = CliRunner().invoke(cli, ["data", "info", "digits", "--json"])
    assert json.loads(as_json.output)["sizes"] == {"train": 1438, "test": 359}


@pytest.mark.parametrize("command", [["data"], ["data", "list"], ["data", "info"], ["data", "download"]])
def test_cli_help_works_for_every_data_command(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_cli_user_error_is_one_line_and_a_non_zero_exit(tmp_path):
    env = {**os.environ, "EDGEDL_DATA": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-m", "edgedl.cli.main", "data", "info", "mnist"], capture_output=True, text=True, env=env
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1
    assert run.stderr.startswith(f"error: data set 'mnist' not found: looked in {tmp_path / 'mnist'}")
