"""The Free Spoken Digit Dataset: 8 kHz speech recordings turned into log-mel or MFCC "images".

Files are ``recordings/{digit}_{speaker}_{index}.wav``. The features are computed in numpy by
:mod:`edgedl.data.features` and normalised with fixed constants, so a device can redo exactly the
same steps from ``Dataset.preprocessing``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedl.data import features as F
from edgedl.data.features import LOGMEL_MEAN, LOGMEL_STD, MFCC_MEAN, MFCC_STD, normalisation, read_wav  # noqa: F401
from edgedl.data.base import Dataset, balanced_order, subset_description
from edgedl.data.user import preset
from edgedl.errors import DataError, InputFileError, OptionError

CLASSES = [str(d) for d in range(10)]
SPLITS = ("official", "speaker:NAME")
FEATURES = ("logmel", "mfcc")
TEST_INDICES = range(5)  # upstream convention: index 0..4 of every speaker and digit is test
FILENAME = re.compile(r"(\d)_([A-Za-z]+)_(\d+)\.wav")

@dataclass(frozen=True)
class Recording:
    path: Path
    digit: int
    speaker: str
    index: int


def recordings_dir(root: Path) -> Path:
    return root / "recordings"


def missing(root: Path) -> list[str]:
    folder = recordings_dir(root)
    if folder.is_dir() and any(folder.glob("*.wav")):
        return []
    return ["recordings/*.wav"]


def list_recordings(root: Path) -> list[Recording]:
    """Every ``{digit}_{speaker}_{index}.wav`` under ``root/recordings``, sorted by digit, speaker, index."""
    found = []
    for path in recordings_dir(root).glob("*.wav"):
        match = FILENAME.fullmatch(path.name)
        if match is None:
            raise InputFileError(path, "file name is not {digit}_{speaker}_{index}.wav")
        found.append(Recording(path, int(match[1]), match[2], int(match[3])))
    return sorted(found, key=lambda r: (r.digit, r.speaker, r.index))


def split_recordings(recs: list[Recording], split: str) -> tuple[list[Recording], list[Recording]]:
    """(train, test) for ``split``: "official" or "speaker:NAME" (that speaker is the test set)."""
    if split == "official":
        is_test = [r.index in TEST_INDICES for r in recs]
    elif split.startswith("speaker:"):
        speaker = split.removeprefix("speaker:")
        speakers = sorted({r.speaker for r in recs})
        if speaker not in speakers:
            raise OptionError(
                f"unknown speaker '{speaker}' in split '{split}'; the speakers are: {', '.join(speakers)}"
            )
        is_test = [r.speaker == speaker for r in recs]
    else:
        raise OptionError(f"unknown split '{split}' for fsdd; expected 'official' or 'speaker:NAME'")
    train = [r for r, t in zip(recs, is_test) if not t]
    test = [r for r, t in zip(recs, is_test) if t]
    return train, test


def raw_features(recs: list[Recording], kind: str) -> np.ndarray:
    """Un-normalised features of ``recs``: (N, frames, bands) float32."""
    signals = np.zeros((len(recs), F.NUM_SAMPLES), dtype=np.float32)
    for i, rec in enumerate(recs):
        signals[i] = F.pad_or_trim(read_wav(rec.path))
    return F.mfcc(signals) if kind == "mfcc" else F.log_mel(signals)


def normalisation_constants(root: Path, kind: str) -> tuple:
    """Recompute the hard-coded mean and std from the official train split under ``root``."""
    train, _ = split_recordings(list_recordings(root), "official")
    x = raw_features(train, kind).astype(np.float64)
    if kind == "mfcc":
        return tuple(x.mean(axis=(0, 1)).round(4).tolist()), tuple(x.std(axis=(0, 1)).round(4).tolist())
    return round(float(x.mean()), 4), round(float(x.std()), 4)


def load(root: Path, *, split: str, limit: int | None, seed: int, features: str | None = None) -> Dataset:
    """Load FSDD from ``root`` (the folder holding ``recordings/``) as normalised features."""
    kind = features or "logmel"
    if kind not in FEATURES:
        raise OptionError(f"unknown features '{kind}' for fsdd; expected one of: {', '.join(FEATURES)}")
    recs = list_recordings(root)
    if not recs:
        raise DataError(f"no recordings in {recordings_dir(root)}")
    mean, std = normalisation(kind)
    arrays = {}
    for part, chosen in zip(("train", "test"), split_recordings(recs, split)):
        labels = np.array([r.digit for r in chosen], dtype=np.int64)
        # Files are sorted by digit: interleave the classes so any slice (a validation split) has all.
        order = balanced_order(labels, seed)
        if limit is not None:
            order = order[:limit]
        picked = [chosen[i] for i in order]
        x = (raw_features(picked, kind) - mean) / std
        arrays[part] = (x.astype(np.float32)[..., None], labels[order])
    preprocessing = F.describe(kind)
    preprocessing["normalise"] = {
        "formula": "(x - mean) / std",
        "mean": list(MFCC_MEAN) if kind == "mfcc" else LOGMEL_MEAN,
        "std": list(MFCC_STD) if kind == "mfcc" else LOGMEL_STD,
        "computed_on": "official train split of FSDD v1.0.10",
    }
    preprocessing["layout"] = "N, frames, bands, 1"
    preprocessing["dtype"] = "float32"
    preprocessing.update(preset("wav folder", features=kind, mean=tuple(np.atleast_1d(mean).tolist()),
                                std=tuple(np.atleast_1d(std).tolist())))
    return Dataset.from_parts(
        "fsdd", arrays,
        classes=list(CLASSES),
        split=split,
        source=str(recordings_dir(root)),
        preprocessing=preprocessing,
        subset=subset_description(limit, seed, interleaved=True),
    )
