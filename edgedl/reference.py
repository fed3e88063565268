"""The reference every build is held to: real samples, the source model's outputs on them, and how
far a build's outputs stray from those.

One place for the three ideas that ``compile`` (the fidelity check written into the manifest),
``bench`` (agreement with a float model on the device's run) and the quick start (its comparison
table) share:

* :func:`choose_samples`: the data set asked for, else the one the model was trained on (and its
  split), else, when asked to search, the first data set whose inputs fit;
* :func:`reference_outputs`: a Keras model's, a ``.tflite``'s (LiteRT) or an ``.onnx``'s (ONNX
  Runtime) float outputs; a model file from elsewhere is first run in a child process, so a native
  crash on a malformed file is one error line that names it;
* :func:`fidelity`: top-1 agreement, output error and accuracy of a build against the reference.

Example:
    >>> samples = choose_samples((8, 8, 1), dataset="digits", limit=100)          # doctest: +SKIP
    >>> ref = reference_outputs("lenet.keras", samples.x)                          # doctest: +SKIP
    >>> fidelity(ref, edgedl.runtime.load("lenet.edgedl").predict(samples.x), samples.y)  # doctest: +SKIP
    {'samples': 100, 'top1_agreement': 1.0, 'max_abs_error': 0.0039, ...}
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgedl import _inputs, _isolate
from edgedl.data.base import ModelInput
from edgedl.errors import EdgeDLError, InputFileError, OptionError

log = logging.getLogger(__name__)

MAX_SAMPLE_ELEMENTS = 1 << 26  # one input sample; beyond this a shape is a malformed file, not a model to check
CHECK_TIMEOUT_S = 300.0        # the first load, the reference and each run of an untrusted model, in a child
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass
class Samples:
    """Inputs to check on, their labels (None for noise) and where they came from.

    ``description`` goes into manifests and results as it is: the data set, its split, the number of
    samples and its preprocessing, or a note that the samples are noise. ``calibration`` holds the
    training split (what int8 conversion calibrates on), when there is one.
    """

    x: np.ndarray | list     # one array (N, ...), or a list of them for a model with several inputs
    y: np.ndarray | None
    description: dict
    calibration: np.ndarray | list | None = None
    names: list | None = None   # the inputs' names, in the order of ``x``'s arrays (several inputs)

    def __len__(self) -> int:
        return _inputs.count(self.x)


@dataclass
class Reference:
    """The samples, the reference's outputs on them and what the reference is (``label``, recorded
    with every check): what a build is compared with."""

    samples: Samples
    outputs: np.ndarray
    label: str = "the source model"
    more: list = field(default_factory=list)   # the outputs after the first, for models with several

    def compare(self, outputs) -> dict:
        """A build's :func:`fidelity` on the same samples (with accuracy where they have labels), and
        what it was compared with. ``outputs``: the first output, or a list of every output; with
        several, ``outputs`` in the result holds each one's error against its reference."""
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        result = fidelity(self.outputs, outputs[0], self.samples.y) | {"reference": self.label}
        references = [self.outputs, *self.more]
        if len(references) > 1:
            result["outputs"] = [{"index": k, **fidelity(ref, out, classes=k == 0 or _is_distribution(ref))}
                                 for k, (ref, out) in enumerate(zip(references, outputs))]
        return result


def choose_samples(model: ModelInput, *, dataset: str | None = None, data=None, preprocess=None,
                   data_dir: str | None = None, trained_on: dict | None = None, limit: int | None = None,
                   search: bool = False) -> Samples | None:
    """Real samples for a model (``model.shape`` is one sample's shape): the user's file, the data set
    asked for, else the one the model was trained on (and its split), else, with ``search``, the
    first data set whose inputs fit.

    Args:
        model: the model's input and what it records (:class:`~edgedl.data.base.ModelInput`;
            ``taker`` names it in a shape mismatch: "the model", "the bundle").
        dataset: the data set asked for (``--dataset``); it must fit.
        data: a file or folder the user brings (``--data``: .npz, .npy, images or wav files in class
            sub-folders; :func:`edgedl.data.load_data`); it must fit. The description then names the
            file (``file``: path, kind, sha256) and its preprocessing holds the spec applied.
        preprocess: for ``data``: ``--preprocess`` (KEY=VALUE strings, a .toml, a
            :class:`~edgedl.data.user.Preprocess`); None: a ``preprocess.toml`` beside the data or
            the model, else the steps the model records for this kind of data, else the defaults.
        data_dir: the data sets' folder (``--data-dir``, else ``EDGEDL_DATA``).
        trained_on: what the model records of its training (``{"dataset": ..., "split": ...}``, from
            the metrics beside it or a bundle's manifest); its data set and split are used when
            ``dataset`` is not given.
        limit: at most this many test samples (None: the whole test split).
        search: with neither a data set asked for nor one recorded, try every data set whose inputs
            have this shape.

    Returns:
        The samples, or None when no data set is named and none (searched) fits.

    Raises:
        OptionError: the named data set gives inputs of another shape; both ``dataset`` and ``data``.
        DataError: the named data set cannot be read.
        InputFileError: ``data`` is unreadable, not of a form it should be, or does not fit the model.
    """
    trained_on = trained_on or {}
    if data is not None:
        recorded = model.recorded if model.recorded is not None else trained_on.get("preprocessing")
        return _user_samples(replace(model, recorded=recorded), dataset, data, preprocess, limit)
    if preprocess:
        raise OptionError("--preprocess applies to data given with --data: leave it out, or give --data")
    if trained_on.get("file"):  # checked on a file the user brought, which is not here: nothing to load by name
        trained_on = {}
    name = dataset or trained_on.get("dataset")
    if isinstance(model.shape, list):  # several inputs: no built-in data set gives them
        if name and dataset:
            raise OptionError(f"data set '{name}' gives one input per sample; {model.taker} takes {len(model.shape)} "
                              "inputs: give a .npz with one array per input with --data")
        return None
    want = tuple(int(d) for d in model.shape)
    if name:
        candidates = [name]
    elif search:  # only data sets whose inputs can fit: loading FSDD or CIFAR-10 to find they do not costs seconds
        from edgedl.data import DATASETS

        candidates = [n for n, info in DATASETS.items() if tuple(info.input_shape) == want]
    else:
        return None
    for n in candidates:
        split = trained_on.get("split") if n == trained_on.get("dataset") else None
        samples = _dataset_samples(n, split, data_dir, limit, required=bool(name))
        if samples is None:
            continue
        if tuple(samples.x.shape[1:]) == want:
            return samples
        if name:
            raise OptionError(f"data set '{n}' gives inputs of shape {tuple(samples.x.shape[1:])}; {model.taker} "
                              f"takes {want}")
    return None


def _user_samples(model: ModelInput, dataset, data, preprocess, limit) -> Samples:
    from edgedl.data import load_data

    # at least 10 per split: the training split also calibrates int8 conversion
    loaded = load_data(dataset, data, preprocess=preprocess, limit=None if limit is None else max(limit, 10),
                       model=model)
    x, y = _inputs.take(loaded.x_test, slice(None, limit)), None if loaded.y_test is None else loaded.y_test[:limit]
    description = {"dataset": loaded.name, "split": loaded.split, "num_samples": _inputs.count(x),
                   "file": loaded.file, "preprocessing": loaded.preprocessing}
    return Samples(x, y, description, loaded.x_train, names=model.names if isinstance(x, list) else None)


def _dataset_samples(name: str, split, data_dir, limit, required: bool) -> Samples | None:
    """A built-in data set's test samples; None when it cannot be read and was not asked for by name."""
    from edgedl.data import load_dataset

    try:
        # at least 10 per split: the training split also calibrates int8 conversion
        data = load_dataset(name, data_dir=data_dir, limit=None if limit is None else max(limit, 10), split=split)
    except EdgeDLError as e:
        if required:
            raise
        log.debug("data set %s not usable: %s", name, e)
        return None
    x, y = data.x_test[:limit], data.y_test[:limit]
    description = {"dataset": data.name, "split": data.split, "num_samples": int(len(x)),
                   "preprocessing": data.preprocessing}
    return Samples(x, y, description, data.x_train)


def input_range(spec) -> tuple[float, float] | None:
    """The float range an integer input covers: from its scale and zero point where it is quantized,
    else its dtype's own range (an int16 audio input); None for a float input.

    Example:
        >>> from edgedl.runtime.engines import TensorSpec
        >>> input_range(TensorSpec("x", (1, 4), "int8", scale=1.0, zero_point=-128))
        (0.0, 255.0)
    """
    if spec.dtype not in ("int8", "uint8", "int16"):
        return None
    info = np.iinfo(spec.dtype)
    if not spec.scale:
        return float(info.min), float(info.max)
    return float((info.min - spec.zero_point) * spec.scale), float((info.max - spec.zero_point) * spec.scale)


def range_problem(x, expected, where: str) -> str:
    """Why samples do not fit an input's float range ("" when they do): they cover less than a tenth
    of it, or lie a tenth of it or more outside it (0-1 pixels for a model that takes 0-255 ones).
    For several inputs, ``x`` and ``expected`` are lists, one per input."""
    if isinstance(x, (list, tuple)):
        ranges = expected if isinstance(expected, (list, tuple)) else [expected] * len(x)
        problems = [range_problem(a, r, f"{where} (input {k})") for k, (a, r) in enumerate(zip(x, ranges))]
        return next((p for p in problems if p), "")
    if expected is None or not len(x):
        return ""
    lo, hi = expected
    span = hi - lo
    data_lo, data_hi = float(np.min(x)), float(np.max(x))
    if span <= 0 or (data_hi - data_lo >= 0.1 * span and data_lo >= lo - 0.1 * span and data_hi <= hi + 0.1 * span):
        return ""
    return (f"{where} gives inputs in [{data_lo:.3g}, {data_hi:.3g}], but the model's quantized input covers "
            f"[{lo:.3g}, {hi:.3g}]: give data scaled the way the model was trained (or a model that takes this data)")


def noise_samples(input_shape, num_samples: int, where, value_range=None) -> Samples:
    """Seeded uniform noise over the input's range (``value_range``, else [0, 1)) for a model no data
    set fits; the description says the inputs are synthetic and over what range. For a model with
    several inputs, ``input_shape`` is a list of shapes and ``value_range`` a list of ranges (or None).

    Raises:
        InputFileError: one sample would be larger than any model edgedl checks (a malformed shape).
    """
    if isinstance(input_shape, list):
        ranges = value_range if isinstance(value_range, list) else [value_range] * len(input_shape)
        parts = [noise_samples(s, num_samples, where, r) for s, r in zip(input_shape, ranges)]
        x = [p.x for p in parts]
        description = parts[0].description | {"synthetic": [p.description["synthetic"] for p in parts]}
        return Samples(x, None, description, x)
    per_sample = math.prod(int(d) for d in input_shape)
    if per_sample > MAX_SAMPLE_ELEMENTS:
        raise InputFileError(where, f"its input shape {tuple(input_shape)} has {per_sample:,} elements per sample "
                                    f"(more than {MAX_SAMPLE_ELEMENTS:,}); the file is malformed or not a model "
                                    "edgedl can check")
    lo, hi = value_range or (0.0, 1.0)
    x = (lo + (hi - lo) * np.random.default_rng(0).random((num_samples, *input_shape))).astype(np.float32)
    how = "the integer input's range" if value_range else "[0, 1), the input's range being unknown"
    return Samples(x, None, {"dataset": None, "num_samples": len(x), "synthetic": [lo, hi],
                             "note": f"synthetic: uniform noise over {how}; no accuracy"}, x)


def reference_outputs(model, x: np.ndarray, kernels: str = "xnnpack", interpreter: str = "litert") -> np.ndarray:
    """The reference's float (first) output on ``x`` (see :func:`reference_all_outputs`)."""
    return reference_all_outputs(model, x, kernels, interpreter)[0]


def reference_all_outputs(model, x: np.ndarray, kernels: str = "xnnpack", interpreter: str = "litert"
                          ) -> list[np.ndarray]:
    """The reference's float outputs on ``x``, every one, each (N, ...).

    Args:
        model: a loaded Keras model (run here), or the path of a ``.keras``/``.h5``/SavedModel (loaded
            here), a ``.tflite`` (run with LiteRT) or an ``.onnx`` (run with ONNX Runtime); a
            ``.tflite`` or ``.onnx`` runs in a child process.
        x: float inputs, (N, *sample); for a model with several inputs, a list of such arrays in the
            order of the model's inputs (a ``.tflite``'s or ``.onnx``'s own order, a Keras model's
            ``inputs``).
        kernels: a ``.tflite``'s LiteRT kernel set: ``xnnpack`` (LiteRT's default), ``builtin`` or
            ``reference`` (the portable kernels TFLite Micro implements).
        interpreter: what runs a ``.tflite``: ``litert``, or ``tflm`` (TFLite Micro's interpreter, for a
            model with operators only it has).

    Raises:
        InputFileError: the file is not a model the reference can run (named), or crashed its engine.
    """
    if not isinstance(model, (str, Path)):
        from edgedl.keras_utils import predict_outputs

        return predict_outputs(model, x)
    path = Path(model)
    suffix = path.suffix.lower()
    if suffix == ".tflite" and interpreter == "tflm":
        return _isolated(_tflm_outputs, path, "TFLite Micro", x)
    if suffix == ".tflite":
        return _isolated(_tflite_outputs, path, "LiteRT", x, kernels)
    if suffix == ".onnx":
        return _isolated(_onnx_outputs, path, "ONNX Runtime", x)
    if suffix in KERAS_SUFFIXES or path.is_dir():
        from edgedl.keras_utils import predict_outputs
        from edgedl.modelio import load_model

        return predict_outputs(load_model(str(path)), x)
    raise InputFileError(path, "not a reference model; expected .keras, .h5, a SavedModel folder, .tflite or .onnx")


MAX_SNR_DB = 200.0  # outputs equal to the reference (no error at all) are recorded as this, not infinity


@dataclass
class Bounds:
    """How far a build may stray from the reference before the check fails.

    Args:
        max_disagreement: class outputs: the share of samples whose top class may differ.
        max_accuracy_drop: with labels: how much lower (0.03 = 3 points) the build's accuracy may be.
        min_snr_db: every output: the least signal-to-noise ratio of the build's outputs against
            the reference's (10 dB: the error's power is a tenth of the signal's).

    Example:
        >>> Bounds(max_accuracy_drop=0.01).check(fidelity(np.eye(3), np.eye(3), np.arange(3)))
        []
    """

    max_disagreement: float = 0.02
    max_accuracy_drop: float = 0.03
    min_snr_db: float = 10.0

    def check(self, result: dict) -> list[str]:
        """What in a :func:`fidelity` result breaks these bounds, a sentence each (empty: it passes)."""
        problems = []
        agreement = result.get("top1_agreement")
        if agreement is not None and agreement < 1.0 - self.max_disagreement:
            problems.append(f"top-1 agreement with the reference {100 * agreement:.1f}% is below "
                            f"{100 * (1 - self.max_disagreement):.1f}% (max abs error {result['max_abs_error']:.4g}); "
                            "raise --max-disagreement to accept it")
        drop = result.get("accuracy_drop")
        if drop is not None and drop > self.max_accuracy_drop:
            problems.append(f"accuracy {100 * result['accuracy']:.1f}% is {100 * drop:.1f} points below the "
                            f"reference's {100 * result['reference_accuracy']:.1f}% on the same samples (at most "
                            f"{100 * self.max_accuracy_drop:.1f} allowed); raise --max-accuracy-drop to accept it")
        snr = result.get("snr_db")
        if snr is not None and snr < self.min_snr_db:
            problems.append(f"its outputs' signal-to-noise ratio against the reference is {snr:.1f} dB, below "
                            f"{self.min_snr_db:g} dB (RMSE {result['rmse']:.4g}); lower --min-snr to accept it")
        for other in result.get("outputs", [])[1:]:
            if other.get("snr_db") is not None and other["snr_db"] < self.min_snr_db:
                problems.append(f"output {other['index']}'s signal-to-noise ratio against the reference is "
                                f"{other['snr_db']:.1f} dB, below {self.min_snr_db:g} dB (RMSE {other['rmse']:.4g}); "
                                "lower --min-snr to accept it")
        return problems


def _is_distribution(outputs: np.ndarray) -> bool:
    """Whether outputs read as class probabilities (non-negative rows that sum to 1): how a second
    output is told to be a classifier's rather than a regression head's."""
    outputs = np.asarray(outputs, dtype=np.float64)
    return (outputs.ndim >= 2 and outputs.shape[-1] > 1 and bool(np.all(outputs >= 0))
            and bool(np.allclose(outputs.sum(-1), 1.0, atol=1e-3)))


def fidelity(reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None = None,
             classes: bool | None = None) -> dict:
    """How a build's outputs compare with the reference's on the same samples.

    Returns:
        ``samples``; the output error against the reference: ``max_abs_error``, ``mean_abs_error``,
        ``rmse``, ``cosine`` (of the two outputs as vectors, per sample, averaged) and ``snr_db``
        (reference power over error power, at most 200 dB); for class outputs (more than one
        score per sample) ``top1_agreement`` (share of samples whose top class is the reference's)
        and ``reference_classes`` (how many distinct classes the reference predicts), and with
        labels ``accuracy``, ``reference_accuracy`` and ``accuracy_drop`` (the reference's minus
        the build's). ``classes``: whether the outputs are class scores (None: when there are more
        than one per sample).

    Example:
        >>> fidelity(np.eye(3), np.eye(3) * 0.9, np.arange(3))["top1_agreement"]
        1.0
    """
    reference = np.asarray(reference, dtype=np.float64)
    outputs = np.asarray(outputs, dtype=np.float64)
    n = len(reference)
    result = {"samples": int(n)}
    if reference.shape == outputs.shape and n:
        error = outputs - reference
        flat_ref, flat_out = reference.reshape(n, -1), outputs.reshape(n, -1)
        norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_out, axis=1)
        cosine = np.where(norms > 0, np.sum(flat_ref * flat_out, axis=1) / np.where(norms > 0, norms, 1), 1.0)
        noise = float(np.sum(error ** 2))
        signal = float(np.sum(reference ** 2))
        snr = MAX_SNR_DB if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -MAX_SNR_DB)
        result.update(max_abs_error=float(np.max(np.abs(error))), mean_abs_error=float(np.mean(np.abs(error))),
                      rmse=float(np.sqrt(np.mean(error ** 2))), cosine=float(np.mean(cosine)),
                      snr_db=float(min(snr, MAX_SNR_DB)))
    if classes is None:
        classes = reference.ndim >= 2 and reference.shape[-1] > 1
    if classes:  # class scores: top-1 means something
        ref_top1, top1 = reference.argmax(-1), outputs.argmax(-1)
        result["top1_agreement"] = float(np.mean(ref_top1 == top1))
        result["reference_classes"] = int(len(np.unique(ref_top1)))
        if labels is not None:
            result["accuracy"] = float(np.mean(top1 == labels))
            result["reference_accuracy"] = float(np.mean(ref_top1 == labels))
            result["accuracy_drop"] = result["reference_accuracy"] - result["accuracy"]
    return result


def one_class_problem(reference: np.ndarray, samples: Samples) -> str:
    """Why a check on these samples would mean nothing ("" when it would): the reference predicts
    one class for every sample of a labelled set with several classes, which is what a model fed
    inputs of the wrong scale or preprocessing does (both sides then agree on that one class)."""
    reference = np.asarray(reference)
    if samples.y is None or reference.ndim < 2 or reference.shape[-1] < 2 or len(reference) < 10:
        return ""
    predicted, labels = np.unique(reference.argmax(-1)), np.unique(samples.y)
    if len(predicted) > 1 or len(labels) < 2:
        return ""
    accuracy = float(np.mean(reference.argmax(-1) == samples.y))
    where = samples.description.get("dataset") or "the data"
    return (f"the model predicts class {int(predicted[0])} for all {len(reference)} samples of {where} "
            f"({100 * accuracy:.0f}% accurate over {len(labels)} classes): the samples are not what it expects "
            "(their scale, e.g. 0-255 against 0-1, or their preprocessing) or the model is not trained, so no check on "
            "them means anything: give the data the way the model was trained on it (--data with --preprocess)")


def _isolated(fn, path: Path, tool: str, x: np.ndarray, *args):
    """``fn(path, x, *args)`` in a child process: a model file from elsewhere first runs there."""
    return _isolate.run(fn, path, x, *args, file=path, tool=tool,
                        action=f"computing the reference on {_inputs.count(x)} samples", timeout=CHECK_TIMEOUT_S)


def _tflite_outputs(path: Path, x: np.ndarray, kernels: str = "xnnpack") -> np.ndarray:
    """LiteRT's outputs of a ``.tflite`` on float samples with one kernel set (in a child process)."""
    from edgedl.runtime.engines import LiteRTEngine
    from edgedl.runtime.quant import predict_outputs

    engine = LiteRTEngine(path, kernels=kernels)
    try:
        return predict_outputs(engine, x)
    except (ValueError, RuntimeError) as e:  # "Tensor data is null": no operator writes the output
        raise InputFileError(path, f"LiteRT cannot run it ({' '.join(str(e).split())[:200]})") from None


def _tflm_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """TFLite Micro's interpreter's outputs of a ``.tflite`` on float samples (in a child process)."""
    from edgedl.runtime.quant import predict_outputs
    from edgedl.runtime.tflm import TFLMEngine

    return predict_outputs(TFLMEngine(path), x)


def _onnx_outputs(path: Path, x) -> list[np.ndarray]:
    from edgedl.backends.onnxruntime import onnx_reference

    return onnx_reference(path)[0](x)
