"""The end-to-end quick start: train LeNet, quantize it to int8, compile it for this host with LiteRT
and TVM, and measure accuracy and latency of every variant side by side.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from edgedl import _io

log = logging.getLogger(__name__)


def default_dataset(data_dir) -> str:
    """MNIST when a data directory is given (option or ``EDGEDL_DATA``), else scikit-learn's digits."""
    return "mnist" if (data_dir or os.environ.get("EDGEDL_DATA")) else "digits"


@dataclass
class QuickstartOptions:
    """What the quick start trains and measures (``edgedl quickstart``'s options).

    Args:
        data_dir: data directory; without one (and without ``EDGEDL_DATA``) the bundled digits are used.
        dataset: override the data set.
        model: zoo model to train.
        epochs: training epochs (default: 8 on digits, 3 on other data sets).
        seed: training seed.
        out_dir: where the model, the .tflite files and results.json go (default: a temp folder).
        runs: timed inferences per variant.
        limit: at most this many samples per split.
        backends: which backends to compile for the host.

    Example:
        >>> QuickstartOptions(dataset="digits").resolved().epochs
        8
    """

    data_dir: str | None = None
    dataset: str | None = None
    model: str = "lenet"
    epochs: int | None = None
    seed: int = 0
    out_dir: str | Path | None = None
    runs: int = 200
    limit: int | None = None
    backends: tuple = ("litert", "tvm")

    def resolved(self) -> QuickstartOptions:
        """The options with their defaults filled in (data set, epochs, output folder)."""
        dataset = self.dataset or default_dataset(self.data_dir)
        out_dir = Path(self.out_dir) if self.out_dir else Path(tempfile.mkdtemp(prefix="edgedl-quickstart-"))
        return replace(self, dataset=dataset, epochs=self.epochs or (8 if dataset == "digits" else 3), out_dir=out_dir)


def run(options: QuickstartOptions | None = None, *, progress: bool = True, status=None) -> dict:
    """Run the whole pipeline once and return the comparison (also written to ``out_dir/results.json``):
    train, convert to float32 and int8 ``.tflite``, compile each with each backend for this host,
    and measure accuracy, agreement with the Keras model, latency and size.

    Args:
        options: what to train and measure (:class:`QuickstartOptions`).
        progress: show progress bars.
        status: callable(str) told about each stage.

    Returns:
        dict with ``rows`` (one per variant and backend) and the training metrics.

    Example:
        >>> summary = run(QuickstartOptions(dataset="digits", epochs=2, runs=50))  # doctest: +SKIP
        >>> [(r["variant"], r["backend"]) for r in summary["rows"]][:2]             # doctest: +SKIP
        [('keras float32', 'keras'), ('float32', 'litert')]
    """
    from edgedl.data import load_dataset
    from edgedl.reference import reference_outputs
    from edgedl.targets import host_target

    options = (options or QuickstartOptions()).resolved()
    say = status or (lambda msg: log.info(msg))
    options.out_dir.mkdir(parents=True, exist_ok=True)
    result = _train(options, progress, say)
    data = load_dataset(options.dataset, data_dir=options.data_dir, limit=options.limit, seed=options.seed)
    reference = reference_outputs(result.model, data.x_test)
    say("converting to .tflite: float32 and int8 (full integer, calibrated on the training split)")
    variants = _convert(result.model, data, options)
    target = host_target()
    rows = [{"variant": "keras float32", "backend": "keras", "accuracy": result.metrics["accuracy"],
             "agreement": 1.0, "p50_us": None, "size_bytes": (options.out_dir / f"{options.model}.keras").stat().st_size}]
    for variant, tflite in variants.items():
        for name in options.backends:
            say(f"compiling {variant} with {name} for {target.name}")
            rows.append(_measure(name, variant, tflite, target, data, reference, options))
    return _summary(rows, result, data, target, options)


def _train(options: QuickstartOptions, progress: bool, say):
    from edgedl.train import TrainOptions, train

    say(f"training {options.model} on {options.dataset} for {options.epochs} epochs")
    result = train(options.model, TrainOptions(dataset=options.dataset, epochs=options.epochs, seed=options.seed,
                                               data_dir=options.data_dir, limit=options.limit), progress=progress)
    result.save(options.out_dir / f"{options.model}.keras")
    return result


def _convert(model, data, options: QuickstartOptions) -> dict[str, Path]:
    """The float32 and int8 (full integer, calibrated on the training split) ``.tflite`` files."""
    from edgedl.convert import to_tflite

    blobs = {"float32": to_tflite(model, "none"),
             "int8": to_tflite(model, "int8", representative=data.x_train, io_type="int8")}
    return {variant: _io.write_bytes(options.out_dir / f"{options.model}_{variant}.tflite", blob)
            for variant, blob in blobs.items()}


def _measure(name: str, variant: str, tflite: Path, target, data, reference, options: QuickstartOptions) -> dict:
    """One row: compile with one backend, then accuracy and agreement with the Keras model on the test
    split, and latency (three repeats, the one with the median p50: the machine is shared and noisy)."""
    from edgedl.backends import get_backend
    from edgedl.bench import time_invocations
    from edgedl.reference import fidelity
    from edgedl.runtime.quant import predict, quantize

    backend = get_backend(name)
    compiled = backend.compile(tflite, target, options.out_dir / f"{name}_{variant}", {})
    engine = backend.load(compiled, num_threads=1)
    check = fidelity(reference, predict(engine, data.x_test), data.y_test)
    x0 = quantize(data.x_test[:1], engine.inputs[0])
    stats = time_invocations(engine, x0, warmup=20, runs=options.runs, repeats=3).median_repeat()
    return {"variant": variant, "backend": name, "accuracy": check["accuracy"], "agreement": check["top1_agreement"],
            "max_abs_error": check["max_abs_error"], "p50_us": stats["p50_us"], "latency": stats,
            "compile_time_s": round(compiled.compile_time_s, 3),
            "size_bytes": sum((compiled.directory / f).stat().st_size for f in compiled.files)}


def _summary(rows: list[dict], result, data, target, options: QuickstartOptions) -> dict:
    fastest = min(r["p50_us"] for r in rows if r["p50_us"])
    for r in rows:
        r["vs_fastest"] = None if r["p50_us"] is None else r["p50_us"] / fastest
    summary = {"model": options.model, "dataset": data.name, "split": data.split, "num_test": int(len(data.y_test)),
               "target": target.name, "training": {k: v for k, v in result.metrics.items() if k != "history"},
               "rows": rows, "out_dir": str(options.out_dir), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _io.write_json(options.out_dir / "results.json", summary)
    return summary
