"""Data a user brings (``--data PATH``): a ``.npz``, a ``.npy``, or a folder of images or of 8 kHz
wav files in class sub-folders, turned into a :class:`~edgedl.data.base.Dataset` like the built-in
data sets.

The steps from file to model input are a :class:`Preprocess` spec (resize, channel order, scale and
offset, mean and std, dtype, audio features), given as ``--preprocess KEY=VALUE`` options or a small
``preprocess.toml`` beside the data or the model. The spec is recorded in the data set's
``preprocessing`` (under ``spec``), which compile writes into the bundle's manifest, so bench (and a
device) redo exactly the same steps on new files.

Example:
    >>> ds = load_user_data("digits.npz", "scale=1/16")                 # doctest: +SKIP
    >>> ds.split, ds.preprocessing["spec"]["scale"]                     # doctest: +SKIP
    ('whole file, no split (train = test)', 0.0625)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedl._inputs import count
from edgedl.data.base import Dataset, choose, subset_description
from edgedl.errors import InputFileError, OptionError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
WAV_SUFFIX = ".wav"
PREPROCESS_FILE = "preprocess.toml"
CHANNELS = ("rgb", "bgr", "gray")
DTYPES = {"float32": None, "uint8": (0, 255), "int8": (-128, 127), "int16": (-32768, 32767)}
FEATURES = ("logmel", "mfcc")
KEYS = ("resize", "channels", "scale", "offset", "mean", "std", "dtype", "features")
EXPECTED_NPZ = ("an array 'x' of inputs (and 'y' of integer labels), 'x_test'/'y_test' (and 'x_train'/'y_train'), "
                "or one array named after the model's input")
EXPECTED_FOLDER = ("class sub-folders holding images (" + ", ".join(IMAGE_SUFFIXES[:4]) + ", ...) or 8 kHz mono "
                   "16-bit .wav files, or such files directly in it (no labels)")
SPLIT_NONE = "whole file, no split (train = test)"
SPLIT_FILE = "the file's x_train and x_test"  # (x_test, or x)


@dataclass(frozen=True)
class Preprocess:
    """How a file becomes model inputs, in this order: decode, ``channels``, ``resize`` (images),
    audio ``features`` (wav), ``x * scale + offset``, ``(x - mean) / std``, then ``dtype``.

    Args:
        resize: images: (height, width); default the model input's, else the first image's.
        channels: images: "rgb", "bgr" or "gray"; default from the model input's last axis (1: gray).
        scale: multiply by this (default 1/255 for images, 1 otherwise).
        offset: then add this.
        mean, std: then subtract ``mean`` and divide by ``std`` (one value, or one per channel);
            wav files default to the FSDD constants of their features.
        dtype: "float32" (default), or "uint8"/"int8"/"int16": values rounded and clipped to that
            integer range (still fed as floats; the engine quantizes).
        features: wav files: "logmel" (61x40, default) or "mfcc" (61x13), as for FSDD.
        origin: where the spec came from (recorded, not a step).

    Example:
        >>> Preprocess.parse(["resize=28x28", "channels=gray", "scale=1/255"]).resize
        (28, 28)
    """

    resize: tuple[int, int] | None = None
    channels: str | None = None
    scale: float | None = None
    offset: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dtype: str = "float32"
    features: str | None = None
    origin: str = "defaults"

    @classmethod
    def parse(cls, spec, origin: str = "--preprocess") -> Preprocess:
        """A spec from ``KEY=VALUE`` strings, a ``.toml`` path (among them or alone), a dict, or a
        :class:`Preprocess` (returned as it is); None gives the defaults.

        Raises:
            OptionError: an unknown key or a value the key does not take.
            InputFileError: a ``.toml`` that is missing, not TOML, or holds unknown keys.
        """
        if spec is None:
            return cls()
        if isinstance(spec, Preprocess):
            return spec
        if isinstance(spec, dict):
            return cls(**_values(spec, origin), origin=origin)
        items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
        values, origins = {}, []
        for item in items:
            text = str(item)
            if text.lower().endswith(".toml") and "=" not in text:
                values.update(_read_toml(Path(text)))
                origins.append(Path(text).name)
                continue
            key, sep, value = text.partition("=")
            if not sep:
                raise OptionError(f"--preprocess got '{text[:60]}'; expected KEY=VALUE with KEY one of "
                                  f"{', '.join(KEYS)}, or a .toml file")
            values[key.strip()] = value.strip()
            if origin not in origins:
                origins.append(origin)
        return cls(**_values(values, "--preprocess"), origin=" + ".join(origins) or origin)

    @classmethod
    def from_record(cls, preprocessing, kind: str | None = None,
                    origin: str = "the recorded preprocessing") -> Preprocess | None:
        """The spec recorded in a data set's (or a manifest's, or a model's metrics') ``preprocessing``;
        None if it holds none, or (with ``kind``) if its steps are for another kind of data (the
        digits' steps are for image files, not for a .npz of inputs already scaled)."""
        record = preprocessing if isinstance(preprocessing, dict) else {}
        spec = record.get("spec")
        if not isinstance(spec, dict) or (kind is not None and record.get("spec_applies_to") != kind):
            return None
        return cls(**_values({k: v for k, v in spec.items() if v is not None}, origin), origin=origin)

    def with_defaults(self, kind: str, input_shape=None, first_image=None) -> Preprocess:
        """The spec with every step decided: what a kind of file and the model's input imply."""
        want = tuple(int(d) for d in input_shape) if input_shape is not None else None
        changes = {}
        if kind == "image folder":
            if self.resize is None:
                changes["resize"] = tuple(want[:2]) if want and len(want) >= 2 else (first_image.height, first_image.width)
            if self.channels is None:
                if want and len(want) == 3:
                    changes["channels"] = "gray" if want[-1] == 1 else "rgb"
                elif want and len(want) == 2:
                    changes["channels"] = "gray"
                else:
                    changes["channels"] = "gray" if first_image.mode in ("L", "1", "I", "I;16", "F") else "rgb"
            if self.scale is None:
                changes["scale"] = 1 / 255
        elif kind == "wav folder":
            features = self.features or ("mfcc" if want and len(want) >= 2 and want[1] == 13 else "logmel")
            changes["features"] = features
            if self.mean is None and self.std is None:
                from edgedl.data.features import normalisation

                mean, std = normalisation(features)
                changes["mean"] = tuple(float(v) for v in np.atleast_1d(mean))
                changes["std"] = tuple(float(v) for v in np.atleast_1d(std))
        if self.scale is None and "scale" not in changes:
            changes["scale"] = 1.0
        if kind != "image folder" and (self.resize is not None or self.channels is not None):
            raise OptionError(f"--preprocess resize and channels apply to image folders; a {kind} is already "
                              "arrays: leave them out")
        if kind != "wav folder" and self.features is not None:
            raise OptionError(f"--preprocess features applies to folders of wav files, not a {kind}: leave it out")
        return dataclasses.replace(self, **changes)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The numeric steps on decoded float inputs (N, ...): scale and offset, mean and std, dtype."""
        x = np.asarray(x, dtype=np.float32) * np.float32(1.0 if self.scale is None else self.scale)
        if self.offset:
            x = x + np.float32(self.offset)
        if self.mean is not None or self.std is not None:
            mean = np.asarray(self.mean or (0.0,), np.float32)
            std = np.asarray(self.std or (1.0,), np.float32)
            for name, v in (("mean", mean), ("std", std)):
                if v.size not in (1, x.shape[-1]):
                    raise OptionError(f"--preprocess {name} has {v.size} values; the inputs' last axis has "
                                      f"{x.shape[-1]} (give one value, or one per channel)")
            x = (x - mean) / std
        bounds = DTYPES[self.dtype]
        if bounds is not None:
            x = np.clip(np.round(x), *bounds)
        return x.astype(np.float32)

    def spec(self) -> dict:
        """The steps as plain JSON values (what :meth:`from_record` reads back)."""
        d = {k: getattr(self, k) for k in KEYS}
        for k in ("resize", "mean", "std"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d


def _number(key: str, value, where: str) -> float:
    text = str(value).strip()
    try:
        if "/" in text:
            top, bottom = text.split("/", 1)
            number = float(top) / float(bottom)
        else:
            number = float(text)
    except (ValueError, ZeroDivisionError):
        raise OptionError(f"{where} {key} must be a number (e.g. 0.5 or 1/255), got {text[:40]!r}") from None
    if not math.isfinite(number):
        raise OptionError(f"{where} {key} must be a finite number, got {text[:40]!r}")
    return number


def _numbers(key: str, value, where: str) -> tuple[float, ...]:
    parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
    numbers = tuple(_number(key, p, where) for p in parts)
    if not numbers:
        raise OptionError(f"{where} {key} needs at least one number")
    return numbers


def _values(raw: dict, where: str) -> dict:
    """Checked, typed spec values from strings (CLI), TOML values or JSON values."""
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise OptionError(f"{where}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(KEYS)}")
    out = {}
    for key, value in raw.items():
        if key == "resize":
            parts = value if isinstance(value, (list, tuple)) else str(value).lower().replace("x", ",").split(",")
            try:
                size = tuple(int(str(p).strip()) for p in parts)
            except ValueError:
                size = ()
            if len(size) != 2 or min(size) < 1:
                raise OptionError(f"{where} resize takes HEIGHTxWIDTH (e.g. 28x28), got {str(value)[:40]!r}")
            out[key] = size
        elif key in ("channels", "dtype", "features"):
            choices = {"channels": CHANNELS, "dtype": tuple(DTYPES), "features": FEATURES}[key]
            text = str(value).strip().lower()
            text = {"grey": "gray", "grayscale": "gray", "float": "float32"}.get(text, text)
            if text not in choices:
                raise OptionError(f"{where} {key} takes {', '.join(choices)}, got {str(value)[:40]!r}")
            out[key] = text
        elif key in ("scale", "offset"):
            out[key] = _number(key, value, where)
        else:  # mean, std
            out[key] = _numbers(key, value, where)
            if key == "std" and min(out[key]) <= 0:
                raise OptionError(f"{where} std must be positive, got {str(value)[:40]!r}")
    return out


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        raise InputFileError(path, "no such file; expected a preprocessing spec (TOML with keys "
                                   f"{', '.join(KEYS)})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputFileError(path, f"not valid TOML ({str(e).splitlines()[0][:120]})") from None
    data = data.get("preprocess", data) if isinstance(data.get("preprocess"), dict) else data
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise InputFileError(path, f"unknown key(s) {', '.join(unknown)}; a preprocessing spec takes {', '.join(KEYS)}")
    return data


def preset(kind: str, **steps) -> dict:
    """What a built-in data set adds to its ``preprocessing`` so that files of ``kind`` ("image
    folder", "wav folder") get its steps: ``spec`` and ``spec_applies_to``. A model trained on it
    records them, and compile and bench apply them to such files given with ``--data``.

    Example:
        >>> preset("image folder", resize=(28, 28), channels="gray", scale=1 / 255)["spec"]["resize"]
        [28, 28]
    """
    return {"spec": Preprocess(**steps).spec(), "spec_applies_to": kind}


def resolve_preprocess(preprocess, data_path, kind: str, model_path=None, recorded=None) -> Preprocess:
    """The spec for ``data_path`` (of ``kind``): ``preprocess`` if given, else a ``preprocess.toml``
    in the data's folder (or beside the data file), else one beside the model, else the steps
    ``recorded`` for this kind of data (the model's metrics or the bundle's manifest), else the
    defaults."""
    if preprocess is not None and not (isinstance(preprocess, (list, tuple)) and not preprocess):
        return Preprocess.parse(preprocess)
    data_path = Path(data_path)
    places = [data_path / PREPROCESS_FILE] if data_path.is_dir() else [data_path.parent / PREPROCESS_FILE]
    if model_path is not None:
        places.append(Path(model_path).parent / PREPROCESS_FILE)
    for place in places:
        if place.is_file():
            return dataclasses.replace(Preprocess.parse(str(place)), origin=str(place))
    return Preprocess.from_record(recorded, kind, origin="the model's recorded preprocessing") or Preprocess()


# ---------------------------------------------------------------------------------------------------


def load_user_data(path, preprocess=None, limit: int | None = None, input_shape=None, *, seed: int = 0,
                   input_names=None, model_path=None, recorded=None) -> Dataset:
    """A :class:`~edgedl.data.base.Dataset` from a file or folder the user brings.

    Args:
        path: a ``.npz`` (arrays ``x`` and optional ``y``; or ``x_test``/``y_test`` with optional
            ``x_train``/``y_train``; or one array named after the model's input; optional
            ``classes``), a ``.npy`` of inputs (no labels), or a folder of images or 8 kHz mono
            16-bit wav files in class sub-folders (sorted names are the classes) or directly in it
            (no labels).
        preprocess: a :class:`Preprocess`, ``KEY=VALUE`` strings or a ``.toml`` path; None looks
            for ``preprocess.toml`` beside the data (then beside ``model_path``).
        limit: at most this many samples per split (class-balanced with ``seed`` where labelled).
        input_shape: the model input's shape without the batch: images are resized to it, and the
            samples must fit it (an axis of 1 is added or dropped where that is all that differs).
        seed: picks the ``limit`` subset.
        input_names: the model's input names (a ``.npz`` may hold one array per input).
        model_path: the model, beside which a ``preprocess.toml`` may sit.
        recorded: a ``preprocessing`` record (the model's metrics', a bundle's manifest's) whose
            steps apply when no spec is given or found and they are for this kind of data.

    Returns:
        The data set: without a train/test split in the file, the whole file is the test split and
        the training split (calibration, fine-tuning) is the same samples (``split`` says so). Its
        ``preprocessing`` records the spec, and ``file`` the path's name, kind and sha256. Unlabelled
        data has ``y_train``/``y_test`` None.

    Raises:
        InputFileError: the file is missing, unreadable or not of an expected form (named, with what
            was expected), or its samples do not fit ``input_shape``.
        OptionError: a preprocessing step that does not apply.

    Example:
        >>> ds = load_user_data("my_digits/", "scale=1/255", input_shape=(28, 28, 1))   # doctest: +SKIP
        >>> ds.classes, ds.file["kind"]                                                # doctest: +SKIP
        (['0', '1', ...], 'image folder')
    """
    p = Path(path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise OptionError(f"limit must be a positive integer or None, received: limit={limit!r}")
    kind = data_kind(p)
    if input_names is not None and len(input_names) > 1 and kind != "npz archive":
        raise InputFileError(p, f"is a {kind}, which gives one input per sample; the model has {len(input_names)} "
                                "inputs: give a .npz with one array per input, named as the model's inputs")
    spec = resolve_preprocess(preprocess, p, kind, model_path, recorded)
    if p.is_dir():
        loaded = _load_folder(p, spec, limit, input_shape, seed)
    elif kind == "npz archive":
        loaded = _load_npz(p, spec, limit, input_shape, seed, input_names)
    else:
        loaded = _load_npy(p, spec, limit, input_shape)
    parts, classes, split, kind, spec, sha = loaded
    if input_shape is not None and not isinstance(parts["test"][0], list):
        parts = {part: (_fit(x, input_shape, p), y) for part, (x, y) in parts.items()}
    preprocessing = {"from": kind, "spec_applies_to": kind, "spec": spec.spec(), "spec_from": spec.origin,
                     "order": "decode, channels, resize (bilinear), features, x * scale + offset, "
                              "(x - mean) / std, dtype"}
    if kind == "wav folder":  # described as FSDD's are, so an app that redoes FSDD's features redoes these
        from edgedl.data import features as F

        preprocessing.update(F.describe(spec.features), normalise=_normalise(spec), layout="N, frames, bands, 1")
    ds = Dataset.from_parts(
        p.name, parts, classes=classes, split=split, source=str(p), preprocessing=preprocessing,
        subset=_subset(limit, seed, labelled=parts["test"][1] is not None),
        file={"path": p.name, "kind": kind, "sha256": sha},
    )
    log.info("loaded %s (%s): %d train, %d test", p, kind, count(parts["train"][0]), count(parts["test"][0]))
    return ds


def _normalise(spec: Preprocess) -> dict:
    """Scale, offset, mean and std folded into one ``(x - mean) / std`` (as FSDD records its own)."""
    scale = 1.0 if spec.scale is None else spec.scale
    mean = [(m - spec.offset) / scale for m in (spec.mean or (0.0,))]
    std = [s / scale for s in (spec.std or (1.0,))]
    one = lambda v: v[0] if len(v) == 1 else v  # noqa: E731
    from edgedl.data.features import normalisation

    fsdd_mean, fsdd_std = (np.atleast_1d(v).tolist() for v in normalisation(spec.features))
    own = list(spec.mean or ()) == fsdd_mean and list(spec.std or ()) == fsdd_std
    return {"formula": "(x - mean) / std", "mean": one(mean), "std": one(std),
            "computed_on": "official train split of FSDD v1.0.10" if own else f"given ({spec.origin})"}


def data_kind(path) -> str:
    """"npz archive", "npy array", "image folder" or "wav folder" (a folder's file names are read).

    Raises:
        InputFileError: missing, or none of those (named, with what ``--data`` takes).
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "no such file or folder; --data takes a .npz, a .npy, or a folder of images or "
                                "wav files in class sub-folders")
    if p.is_dir():
        return _folder_files(p)[2]
    if p.suffix.lower() in (".npz", ".npy"):
        return {".npz": "npz archive", ".npy": "npy array"}[p.suffix.lower()]
    raise InputFileError(p, f"unknown data format '{p.suffix or '(no suffix)'}'; --data takes a .npz, a .npy, "
                            "or a folder of images or wav files in class sub-folders")


def _subset(limit: int | None, seed: int, labelled: bool) -> dict:
    if limit is None:
        return {"limit": None, "seed": None, "method": "all samples, file order"}
    if labelled:
        return subset_description(limit, seed, interleaved=True)
    return {"limit": limit, "seed": None, "method": "the first samples, file order (no labels to balance)"}


def _fit(x: np.ndarray, input_shape, path: Path) -> np.ndarray:
    """``x`` with samples of ``input_shape``, adding or dropping axes of 1 where that is all that differs."""
    want = tuple(int(d) for d in input_shape)
    have = tuple(x.shape[1:])
    if have == want:
        return x
    if [d for d in have if d != 1] == [d for d in want if d != 1]:
        return x.reshape((len(x), *want))
    raise InputFileError(path, f"its samples have shape {have}; the model takes {want} (resize images with "
                               "--preprocess resize=HxW, or give data shaped for the model)")


def _take(x: np.ndarray, y: np.ndarray | None, limit: int | None, seed: int):
    if limit is None or limit >= len(x):
        return x, y
    index = choose(y, limit, seed) if y is not None else np.arange(limit)
    return x[index], (None if y is None else y[index])


def _labels(path: Path, name: str, y: np.ndarray, count: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1 and y.shape[0] == count:  # one-hot
        y = y.argmax(-1)
    if y.ndim != 1 or len(y) != count:
        raise InputFileError(path, f"array '{name}' has shape {y.shape}; expected one integer label per sample "
                                   f"({count},)")
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        raise InputFileError(path, f"array '{name}' holds non-integer values; expected integer class labels")
    if y.dtype.kind not in "iuf" or (len(y) and y.min() < 0):
        raise InputFileError(path, f"array '{name}' must hold class indices 0, 1, ...; got dtype {y.dtype}"
                                   + (f", minimum {y.min()}" if y.dtype.kind in "iuf" else ""))
    return y.astype(np.int64)


def _inputs(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iufb" or x.ndim < 2 or len(x) == 0:
        raise InputFileError(path, f"array '{name}' has dtype {x.dtype} and shape {x.shape}; expected numbers, "
                                   "samples along the first axis (N, ...)")
    return x.astype(np.float32)


def _load_npz(path: Path, spec: Preprocess, limit, input_shape, seed: int, input_names):
    sha = _sha256(path)
    import zipfile

    if not zipfile.is_zipfile(path):
        raise InputFileError(path, "not a .npz archive (not a zip file); expected arrays saved with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # numpy raises ValueError, OSError, BadZipFile ... on a bad archive
        raise InputFileError(path, f"not a readable .npz archive ({_reason(e)})") from None
    names = [str(n) for n in (input_names or [])]
    if len(names) > 1:
        return _load_npz_inputs(path, arrays, names, spec, limit, input_shape, seed, sha)
    test_key = next((k for k in ("x", "x_test") if k in arrays), None)
    if test_key is None:
        named = [n for n in names if n in arrays]
        test_key = named[0] if named else None
    if test_key is None:
        held = ", ".join(sorted(arrays)) or "no arrays"
        raise InputFileError(path, f"holds {held}; expected {EXPECTED_NPZ}")
    label_key = {"x": "y", "x_test": "y_test"}.get(test_key, "y")
    spec = spec.with_defaults("npz archive", input_shape)
    x_test = spec.apply(_inputs(path, test_key, arrays[test_key]))
    y_test = _labels(path, label_key, arrays[label_key], len(x_test)) if label_key in arrays else None
    if "x_train" in arrays:
        x_train = spec.apply(_inputs(path, "x_train", arrays["x_train"]))
        y_train = _labels(path, "y_train", arrays["y_train"], len(x_train)) if "y_train" in arrays else None
        split = SPLIT_FILE
    else:
        x_train, y_train, split = x_test, y_test, SPLIT_NONE
    classes = _classes(path, arrays.get("classes"), y_test, y_train)
    parts = {"train": _take(x_train, y_train, limit, seed), "test": _take(x_test, y_test, limit, seed)}
    return parts, classes, split, "npz archive", spec, sha


def _load_npz_inputs(path: Path, arrays: dict, names: list[str], spec: Preprocess, limit, input_shape, seed: int,
                     sha: str):
    """A ``.npz`` holding one array per input of a model with several (named as the model's inputs),
    with optional labels ``y`` and ``classes``. Each input's array takes the numeric steps of the
    spec (scale, offset, mean, std, dtype); the whole file is the test split and calibrates too."""
    from edgedl._inputs import short_name

    keys = []
    for name in names:
        key = next((k for k in (name, short_name(name)) if k in arrays), None)
        if key is None:
            held = ", ".join(sorted(arrays)) or "no arrays"
            raise InputFileError(path, f"holds {held}; the model has {len(names)} inputs, so the archive needs one "
                                       f"array per input, named {', '.join(repr(short_name(n)) for n in names)} "
                                       "(and 'y' for labels)")
        keys.append(key)
    spec = spec.with_defaults("npz archive", None)
    xs = [spec.apply(_inputs(path, k, arrays[k])) for k in keys]
    counts = {k: len(x) for k, x in zip(keys, xs)}
    if len(set(counts.values())) != 1:
        raise InputFileError(path, "its input arrays hold different numbers of samples ("
                                   + ", ".join(f"'{k}': {n}" for k, n in counts.items()) + "); give one per sample each")
    if input_shape is not None:
        xs = [_fit(x, shape, path) for x, shape in zip(xs, input_shape)]
    y = _labels(path, "y", arrays["y"], len(xs[0])) if "y" in arrays else None
    classes = _classes(path, arrays.get("classes"), y)
    if limit is not None and limit < len(xs[0]):
        index = choose(y, limit, seed) if y is not None else np.arange(limit)
        xs, y = [x[index] for x in xs], (None if y is None else y[index])
    parts = {"train": (xs, y), "test": (xs, y)}
    return parts, classes, SPLIT_NONE, "npz archive", spec, sha


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0][:120] if str(e).strip() else type(e).__name__


def _classes(path: Path, named, *labels) -> list[str]:
    known = [y for y in labels if y is not None]
    if not known:
        return []
    count = int(max(int(y.max()) for y in known)) + 1
    if named is None:
        return [str(i) for i in range(count)]
    classes = [str(c) for c in np.asarray(named).reshape(-1)]
    if len(classes) < count:
        raise InputFileError(path, f"array 'classes' names {len(classes)} classes but the labels go up to {count - 1}")
    return classes


def _load_npy(path: Path, spec: Preprocess, limit, input_shape):
    sha = _sha256(path)
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise InputFileError(path, "not a .npy array (no NumPy header); expected an array saved with numpy.save")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:  # ValueError (pickled objects), OSError, UnpicklingError
        raise InputFileError(path, f"not a readable .npy array ({_reason(e)})") from None
    spec = spec.with_defaults("npy array", input_shape)
    x = spec.apply(_inputs(path, "the array", x))
    x, _ = _take(x, None, limit, 0)
    return {"train": (x, None), "test": (x, None)}, [], SPLIT_NONE, "npy array", spec, sha


def _folder_files(root: Path) -> tuple[list[tuple[Path, int]], list[str], str]:
    """((file, class index or -1), classes, kind) of a folder: class sub-folders, or files directly in it."""
    def samples_in(folder: Path) -> list[Path]:
        return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")
                      and f.suffix.lower() in IMAGE_SUFFIXES + (WAV_SUFFIX,))

    subfolders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subfolders:
        files, classes = [], [d.name for d in subfolders]
        for label, folder in enumerate(subfolders):
            found = samples_in(folder)
            if not found:
                raise InputFileError(folder, f"class folder holds no images or .wav files; expected {EXPECTED_FOLDER}")
            files += [(f, label) for f in found]
    else:
        files, classes = [(f, -1) for f in samples_in(root)], []
    if not files:
        raise InputFileError(root, f"holds no images or .wav files; expected {EXPECTED_FOLDER}")
    wavs = sum(f.suffix.lower() == WAV_SUFFIX for f, _ in files)
    if 0 < wavs < len(files):
        raise InputFileError(root, f"mixes {wavs} .wav files with {len(files) - wavs} images; expected one kind")
    return files, classes, "wav folder" if wavs else "image folder"


def _load_folder(root: Path, spec: Preprocess, limit, input_shape, seed: int):
    files, classes, kind = _folder_files(root)
    labels = np.array([label for _, label in files], dtype=np.int64) if classes else None
    sha = _folder_sha256(root, [f for f, _ in files])
    picked = np.arange(len(files)) if limit is None else (
        choose(labels, limit, seed) if labels is not None else np.arange(min(limit, len(files))))
    paths = [files[i][0] for i in picked]
    if kind == "image folder":
        first = _open_image(paths[0])
        spec = spec.with_defaults(kind, input_shape, first)
        x = np.stack([_image(f, spec) for f in paths])
        x = spec.apply(x)
    else:
        spec = spec.with_defaults(kind, input_shape)
        x = spec.apply(_wav_features(paths, spec.features))[..., None]  # mean and std per band, then (..., 1)
    y = None if labels is None else labels[picked]
    split = SPLIT_NONE.replace("file", "folder")
    return {"train": (x, y), "test": (x, y)}, classes, split, kind, spec, sha


def _open_image(path: Path):
    from PIL import Image  # a core dependency, imported here to keep `import edgedl.data` light

    try:
        image = Image.open(path)
        image.load()
        return image
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError ... for bad data
        raise InputFileError(path, f"not a readable image ({type(e).__name__}: {str(e)[:120]})") from None


def _image(path: Path, spec: Preprocess) -> np.ndarray:
    """One image as float32 (H, W, C) after the channel and resize steps."""
    from PIL import Image

    image = _open_image(path)
    image = image.convert("L" if spec.channels == "gray" else "RGB")
    height, width = spec.resize
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)
    if spec.channels == "gray":
        return pixels[..., None]
    return pixels[..., ::-1] if spec.channels == "bgr" else pixels


def _wav_features(paths: list[Path], kind: str) -> np.ndarray:
    """Un-normalised FSDD features of wav files: (N, frames, bands)."""
    from edgedl.data import features as F
    from edgedl.data.features import read_wav

    signals = np.stack([F.pad_or_trim(read_wav(p)) for p in paths])
    return F.mfcc(signals) if kind == "mfcc" else F.log_mel(signals)


def _sha256(path: Path) -> str:
    from edgedl._io import sha256_file

    try:
        return sha256_file(path)
    except OSError as e:
        raise InputFileError(path, f"cannot be read ({e.strerror or e})") from None


def _folder_sha256(root: Path, files: list[Path]) -> str:
    """One digest of a folder's samples: each file's relative path and content, in sorted order."""
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(f.relative_to(root).as_posix().encode() + b"\0")
        digest.update(_sha256(f).encode())
    return digest.hexdigest()


def inputs_from_files(paths, preprocessing, input_shape) -> np.ndarray:
    """Model inputs from image or wav files, by the steps ``preprocessing`` (a bundle manifest's, a
    model's metrics') records for that kind of file: what an application does with the runtime.

    Raises:
        OptionError: no files, or files of two kinds, or no steps recorded for their kind (the
            model was checked on arrays: preprocess the files as its data was, and call predict).
        InputFileError: a file that is not an image or an 8 kHz mono 16-bit wav, or unreadable.

    Example:
        >>> x = inputs_from_files(["three.png"], manifest["preprocessing"], (28, 28, 1))  # doctest: +SKIP
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise OptionError("no files given; give image or .wav files")
    kinds = set()
    for p in paths:
        suffix = p.suffix.lower()
        if suffix not in IMAGE_SUFFIXES + (WAV_SUFFIX,):
            raise InputFileError(p, f"not an image ({', '.join(IMAGE_SUFFIXES[:4])}, ...) or a .wav file")
        kinds.add("wav folder" if suffix == WAV_SUFFIX else "image folder")
    if len(kinds) > 1:
        raise OptionError("the files mix images and .wav files; give one kind")
    kind = kinds.pop()
    spec = Preprocess.from_record(preprocessing, kind, origin="the recorded preprocessing")
    if spec is None:
        noun = "image" if kind == "image folder" else ".wav"
        raise OptionError(f"the model records no steps for {noun} files (it was checked on arrays): preprocess them "
                          "as its data was, and call predict")
    if kind == "image folder":
        spec = spec.with_defaults(kind, input_shape, _open_image(paths[0]))
        return spec.apply(np.stack([_image(p, spec) for p in paths]))
    spec = spec.with_defaults(kind, input_shape)
    return spec.apply(_wav_features(paths, spec.features))[..., None]

