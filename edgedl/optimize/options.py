"""What :func:`edgedl.optimize.optimize` is asked to do, checked once before anything slow.

:class:`OptimizeOptions` holds every option of an optimization run; :meth:`OptimizeOptions.check`
validates them all together and returns them parsed (a :class:`~edgedl.optimize.prune.PruneSpec` and
a :class:`~edgedl.optimize.structured.StructuredSpec` in place of bare fractions, the quantization
mode ``--qat`` implies, the representative data loaded), so the stages after it take them as they
are. :func:`check_architecture` holds the checks that need the model as well, run before training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgedl import _io
from edgedl.convert import IO_TYPES, QUANTIZE_MODES
from edgedl.errors import InputFileError, OptionError, UnsupportedOperatorError
from edgedl.optimize.finetune import check_distill_alpha
from edgedl.optimize.prune import PruneSpec
from edgedl.optimize.structured import StructuredSpec, check_schedule_epochs

#: what ``quantize`` takes (None keeps the float32 model)
QUANTIZE = tuple(m for m in QUANTIZE_MODES if m != "none")


@dataclass(frozen=True)
class OptimizeOptions:
    """Every option of an optimization run (the ``edgedl optimize`` options, as a Python object).

    Args:
        prune: unstructured pruning: target sparsity in (0, 1) for every prunable layer,
            ``{layer: sparsity}``, or a :class:`~edgedl.optimize.prune.PruneSpec` that also sets the
            scope (``layer``, ``global`` or ``erk``), the schedule (``polynomial``: sparsity grows over
            fine-tuning; ``constant``), the block (prune runs of N weights along the input channels,
            which gzip far better) and per-layer shares.
        structured: fraction of Conv filters / Dense units to remove from each group, in (0, 1), or a
            :class:`~edgedl.optimize.structured.StructuredSpec` that also treats the channels residual
            adds join (``prune``, ``keep`` or a smaller fraction), sets per-layer shares, rounds kept
            widths up to a multiple (``align``) and removes the channels at once (``oneshot``) or
            masks them gradually first (``polynomial``).
        quantize: ``dynamic``, ``float16``, ``int8`` or ``int16x8``; None keeps float32.
        qat: quantization-aware training before int8 conversion (implies ``quantize="int8"``).
        io_type: ``float``, ``int8`` or ``uint8`` model inputs/outputs (``int8`` quantization only).
        per_channel: int8/int16x8 weights with a scale per output channel (``False``: per tensor, a
            smaller file on small models, at some risk to accuracy).
        strip_names: drop intermediate tensor names and the converter's metadata from every
            ``.tflite`` and store repeated tables once; the float32 baseline is stripped too, so sizes
            compare like with like.
        num_calibration: representative samples for int8/int16x8, drawn from the training split.
        quant_report: with ``int8``/``int16x8``, compare each layer's float activations with the
            quantized model's on test samples (:mod:`edgedl.optimize.quant_report`): RMSE, cosine and
            SNR per Keras layer, worst first, in the report and a plot.
        keep_float: Keras layer names left in float32 in the int8 (or int16x8) model, and
        int16: Keras layer names in int16x8 in the int8 model (:mod:`edgedl.optimize.selective`).
        max_drop: accuracy-aware precision: the worst layers (by their own error: the lowest SNR with the
            layer quantized alone, :func:`edgedl.optimize.selective.layer_sensitivity`) are kept in float32,
            one at a time, until test accuracy is at most this much below the float32 model's, a
            fraction in [0, 1] (0.01: one point).
        representative: calibration inputs instead of training samples: an array, or a path in any
            form ``data`` takes (``.npy``, ``.npz``, a folder of images or wav files).
        distill: every fine-tuning stage also learns from the float baseline's predictions.
        distill_alpha: with ``distill``, the share of the fine-tuning loss on the labels, in [0, 1)
            (default :data:`edgedl.optimize.finetune.DISTILL_ALPHA`).
        lr_scale: pruning fine-tuning starts at this multiple of the recipe's learning rate
            (default :data:`edgedl.optimize.finetune.LR_SCALE`); QAT keeps its own.
        dataset: data set for fine-tuning, calibration and accuracy (default: the recipe's, or the one
            in the metrics JSON beside a model file).
        data: a labelled file or folder instead of ``dataset`` (a ``.npz`` with ``x`` and ``y``, or a
            folder of images or wav files in class sub-folders; :func:`edgedl.data.load_data`); without
            ``x_train``/``y_train`` in it, the same samples fine-tune, calibrate and are measured.
        preprocess: how ``data`` (and a ``representative`` file) become model inputs: ``KEY=VALUE``
            strings, a ``.toml``, or an :class:`edgedl.data.Preprocess` (default: a
            ``preprocess.toml`` beside the data or the model, else the defaults).
        epochs: epochs of each fine-tuning stage (default: a quarter of the recipe's, at least 2000
            optimizer steps, at most the recipe's epochs); for a zoo name, also the training epochs.
        data_dir: data directory (else ``EDGEDL_DATA``, else the user cache).
        limit: use at most this many samples per split (quick runs).
        seed: seeds fine-tuning and the choice of calibration samples.
        deterministic: bit-identical fine-tuning from run to run (can be slower; see
            :func:`edgedl.keras_utils.set_determinism`).
        out_dir: if given, :func:`~edgedl.optimize.optimize` writes the results there (see
            :meth:`edgedl.report.optimize.OptimizeReport.save`).

    Example:
        >>> OptimizeOptions(prune=0.8, qat=True).check().quantize
        'int8'
    """

    prune: float | dict | PruneSpec | None = None
    structured: float | StructuredSpec | None = None
    quantize: str | None = None
    qat: bool = False
    io_type: str = "float"
    per_channel: bool = True
    strip_names: bool = False
    num_calibration: int = 200
    quant_report: bool = False
    keep_float: tuple = ()
    int16: tuple = ()
    max_drop: float | None = None
    representative: object = field(default=None, repr=False, compare=False)
    distill: bool = False
    distill_alpha: float | None = None
    lr_scale: float | None = None
    dataset: str | None = None
    data: str | Path | None = None
    preprocess: object = None
    epochs: int | None = None
    data_dir: str | Path | None = None
    limit: int | None = None
    seed: int = 0
    deterministic: bool = False
    out_dir: str | Path | None = None
    checked: bool = field(default=False, init=False, repr=False, compare=False)

    def check(self) -> "OptimizeOptions":
        """Validate every option, together; return them parsed (``self`` if it is already so).

        Raises:
            OptionError: an option out of range, or two that do not go together (the message names
                the ``edgedl optimize`` options).
            InputFileError: the representative data file is missing or not in a form it takes.
        """
        if self.checked:
            return self
        prune = None if self.prune is None else self.prune if isinstance(self.prune, PruneSpec) else PruneSpec(self.prune)
        structured = None if self.structured is None else (
            self.structured if isinstance(self.structured, StructuredSpec) else StructuredSpec(self.structured))
        parsed = dataclasses.replace(self, prune=prune, structured=structured, quantize=self._quantize_mode())
        parsed._check_numbers()
        parsed._check_pairs()
        parsed._check_selective()
        parsed = dataclasses.replace(parsed, representative=load_representative(self.representative, self.preprocess),
                                     distill_alpha=None if self.distill_alpha is None else check_distill_alpha(self.distill_alpha))
        object.__setattr__(parsed, "checked", True)
        return parsed

    def _quantize_mode(self) -> str | None:
        lr_scale = self.lr_scale
        if lr_scale is not None and (isinstance(lr_scale, bool) or not isinstance(lr_scale, (int, float))
                                     or not 0 < lr_scale <= 10):
            raise OptionError(f"--lr-scale must be a number in (0, 10], a multiple of the recipe's learning rate, got {lr_scale!r}")
        quantize = self.quantize
        if quantize is not None and quantize not in QUANTIZE:
            raise OptionError(f"unknown quantization '{quantize}'; choose one of {', '.join(QUANTIZE)}")
        if self.qat:
            if quantize not in (None, "int8"):
                raise OptionError(f"--qat trains for int8 and exports an int8 model; use it with --quantize int8, not '{quantize}'")
            quantize = "int8"
        return quantize

    def _check_numbers(self) -> None:
        if self.io_type not in IO_TYPES:
            raise OptionError(f"unknown I/O type '{self.io_type}'; choose one of {', '.join(IO_TYPES)}")
        if self.io_type != "float" and self.quantize != "int8":
            raise OptionError(f"--io {self.io_type} needs full integer quantization (--quantize int8), not "
                              f"'{self.quantize or 'none'}'")
        for name, value in (("--epochs", self.epochs), ("--limit", self.limit), ("--num-calibration", self.num_calibration)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise OptionError(f"{name} must be a positive integer, got {value}")
        if self.prune is None and self.structured is None and self.quantize is None:
            raise OptionError("nothing to do: give --prune, --structured, --quantize or --qat")
        if self.structured is not None and self.epochs is not None:
            check_schedule_epochs(self.structured.schedule, self.epochs)
        if self.out_dir is not None:
            from edgedl.report.optimize import check_out_files

            _io.check_writable(self.out_dir, "-o/--output", kind="folder")
            check_out_files(Path(self.out_dir))

    def _check_pairs(self) -> None:
        """The options that only make sense with others."""
        mode, retrains = self.quantize, self.prune is not None or self.structured is not None
        if self.lr_scale is not None and not retrains:
            raise OptionError("--lr-scale sets the fine-tuning rate after pruning: use it with --prune or --structured")
        if not self.per_channel and mode not in ("int8", "int16x8"):
            raise OptionError(f"--per-tensor needs --quantize int8 or int16x8, not '{mode or 'none'}'")
        if self.quant_report and mode not in ("int8", "int16x8"):
            raise OptionError(f"--quant-report compares float and integer activations: it needs -q int8 or int16x8 "
                              f"(or --qat), not {'-q ' + mode if mode else 'no -q'}")
        if self.representative is not None and mode not in ("int8", "int16x8"):
            raise OptionError(f"--representative is calibration data for --quantize int8 or int16x8, but "
                              f"{'--quantize ' + mode if mode else 'no --quantize'} calibrates nothing: leave it out")
        if self.data is not None and self.dataset is not None:
            raise OptionError("give one of --dataset (a built-in data set) and --data (a file or folder), not both")
        if self.preprocess and self.data is None and self.representative is None:
            raise OptionError("--preprocess applies to data given with --data or --representative: leave it out")
        if self.data is not None:  # there, of a kind --data takes, with steps that parse: before any training
            from edgedl.data.user import Preprocess, data_kind

            data_kind(self.data)
            Preprocess.parse(self.preprocess)
        if self.distill and not retrains and not self.qat:
            raise OptionError("--distill teaches fine-tuning: use it with --prune, --structured or --qat")
        if self.distill_alpha is not None and not self.distill:
            raise OptionError("--distill-alpha weighs the labels against the teacher: give --distill too")
        if not self.per_channel and self.qat:
            raise OptionError("--per-tensor cannot go with --qat: quantization-aware training fake-quantizes "
                              "kernels per channel; use --per-tensor with post-training --quantize int8")

    def _check_selective(self) -> None:
        """--keep-float, --int16 and --max-drop: layers of an integer model at another precision."""
        for name in ("keep_float", "int16"):  # one layer name, or several
            value = getattr(self, name) or ()
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        drop = self.max_drop
        if drop is not None and (isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop <= 1):
            raise OptionError(f"--max-drop must be a fraction of accuracy in [0, 1] (0.01: one point), got {drop!r}")
        if not self.selective:
            return
        if self.quantize not in ("int8", "int16x8"):
            raise OptionError(f"--keep-float, --int16 and --max-drop choose layers' precision in an integer model: "
                              f"give -q int8, not {'-q ' + self.quantize if self.quantize else 'no -q'}")
        if self.int16 and self.quantize != "int8":
            raise OptionError("--int16 puts layers in int16x8 within an int8 model: use -q int8 "
                              "(with -q int16x8 every layer is int16x8 already)")
        if self.io_type not in ("float", "int8"):
            raise OptionError(f"not supported: --io {self.io_type} with --keep-float/--int16/--max-drop (the AI Edge "
                              "Quantizer writes float or int8 inputs and outputs)")
        both = sorted(set(self.keep_float) & set(self.int16))
        if both:
            raise OptionError(f"layer(s) {', '.join(both)} asked in float (--keep-float) and in int16 (--int16): "
                              "give each once")

    @property
    def selective(self) -> bool:
        """Whether some layers get another precision (``--keep-float``, ``--int16``, ``--max-drop``)."""
        return bool(self.keep_float or self.int16 or self.max_drop is not None)

    @property
    def retraining(self) -> list[str]:
        """The options that rewrite weights (``--prune``, ``--structured``, ``--qat``), as given."""
        return [flag for flag, on in (("--prune", self.prune), ("--structured", self.structured), ("--qat", self.qat)) if on]

    def to_dict(self) -> dict:
        """The options as the report records them (plain JSON values)."""
        spec, cut = self.prune, self.structured
        return {"prune": spec and spec.sparsity, "prune_layers": dict(spec.layers) if spec and spec.layers else None,
                "prune_scope": spec and spec.scope, "prune_schedule": spec and spec.schedule,
                "prune_block": spec.block if spec else None,
                "structured": cut and cut.ratio, "structured_residual": cut and cut.residual,
                "structured_layers": dict(cut.layers) if cut and cut.layers else None,
                "structured_align": cut and cut.align, "structured_schedule": cut and cut.schedule,
                "quantize": self.quantize, "qat": bool(self.qat), "io_type": self.io_type,
                "per_channel": self.per_channel, "strip_names": self.strip_names,
                "quant_report": bool(self.quant_report), "keep_float": list(self.keep_float),
                "int16": list(self.int16), "max_drop": self.max_drop, "distill": bool(self.distill),
                "distill_alpha": self.distill_alpha, "epochs": self.epochs, "lr_scale": self.lr_scale, "seed": self.seed}


# ---------------------------------------------------------------------------------------------------
# Checks that need the model too (its architecture only: run on an untrained zoo model before training).


def check_architecture(model, options: OptimizeOptions) -> None:
    """The checks that need only the architecture: quantizable ops, rebuildable layers, pruning
    targets (layer names), calibration data. ``options`` must be checked."""
    from edgedl.optimize.keras_graph import require_keras_layers
    from edgedl.optimize.prune import find_prunable, resolve_targets
    from edgedl.optimize.structured import plan_channels

    if options.retraining:
        require_keras_layers(model, " and ".join(options.retraining))
    check_quantizable(model, options.quantize)
    if options.selective:
        from edgedl.optimize.selective import check_layers

        check_layers(model, options.keep_float, "--keep-float")
        check_layers(model, options.int16, "--int16")
    if options.structured is not None:
        plan_channels(model, options.structured)
    if options.prune is not None:
        kernels, _ = find_prunable(model)
        resolve_targets(kernels, options.prune.sparsity, scope=options.prune.scope, layers=options.prune.layers)
    if options.representative is not None:
        check_representative(options.representative, model)


def check_quantizable(model, quantize: str | None) -> None:
    """Integer calibration (int8, int16x8) takes LSTM, GRU and SimpleRNN layers over a fixed number of
    time steps (:mod:`edgedl.recurrent` fuses or unrolls them); TensorFlow's calibrator crashes the
    process on any other recurrent layer, so those are refused here, before it can."""
    if quantize not in ("int8", "int16x8"):
        return
    from edgedl.recurrent import unhandled

    blocking = unhandled(model)
    if blocking:
        ops = ", ".join(sorted({k for _, k, _ in blocking}))
        names = ", ".join(f"'{n}'" for n, _, _ in blocking)
        why = "; ".join(f"{n}: {w}" for n, _, w in blocking)
        raise UnsupportedOperatorError(
            f"'{quantize}' quantization cannot take operator(s) {ops} (layer {names}) in model '{model.name}' "
            f"({why}): TensorFlow's integer calibrator crashes on them; use --quantize dynamic or float16"
        )


def load_representative(spec, preprocess=None) -> np.ndarray | None:
    """Representative data given as an array, a ``.npy`` path (loaded as it is), or a ``.npz`` or a
    folder of images or wav files (:func:`edgedl.data.load_user_data` with ``preprocess``; the
    training split, which is the whole file unless it holds ``x_train``). None: take it from the
    training split."""
    if spec is None or isinstance(spec, np.ndarray):
        return spec
    path = Path(spec)
    if path.is_dir() or path.suffix.lower() == ".npz":
        from edgedl.data import load_user_data

        return load_user_data(path, preprocess).x_train
    if not path.is_file():
        raise InputFileError(path, "no such file; representative data must be a .npy array of model inputs, a "
                                   ".npz, or a folder of images or wav files")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError/OSError/UnpicklingError
        raise InputFileError(path, f"not a readable .npy array ({str(e).splitlines()[0][:120]})") from None


def check_representative(data: np.ndarray, model) -> None:
    """Representative data must be floating point samples of the model's input shape.

    The converter's own check, run before any training rather than after it.
    """
    from edgedl.convert import representative_samples

    representative_samples(data, (1,) + tuple(model.input_shape[1:]), max(1, len(data)))
