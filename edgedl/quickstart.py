"""The end-to-end quick start: train LeNet, quantize it to int8, compile it for this host with LiteRT
and TVM, and measure accuracy and latency of every variant side by side.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from edgedl import _io

log = logging.getLogger(__name__)


def default_dataset(data_dir) -> str:
    """MNIST when a data directory is given (option or ``EDGEDL_DATA``), else scikit-learn's digits."""
    return "mnist" if (data_dir or os.environ.get("EDGEDL_DATA")) else "digits"


def run(*, data_dir=None, dataset: str | None = None, model: str = "lenet", epochs: int | None = None,
        seed: int = 0, out_dir=None, runs: int = 200, limit: int | None = None, progress: bool = True,
        backends=("litert", "tvm"), status=None) -> dict:
    """Run the whole pipeline once and return the comparison (also written to ``out_dir/results.json``).

    Args:
        data_dir: data directory; without one (and without ``EDGEDL_DATA``) the bundled digits are used.
        dataset: override the data set.
        model: zoo model to train.
        epochs: training epochs (default: 8 on digits, 3 on other data sets).
        seed: training seed.
        out_dir: where the model, the .tflite files and results.json go (default: a temp folder).
        runs: timed inferences per variant.
        limit: at most this many samples per split.
        progress: show progress bars.
        backends: which backends to compile for the host.
        status: callable(str) told about each stage.

    Returns:
        dict with ``rows`` (one per variant and backend) and the training metrics.
    """
    from edgedl.backends import get_backend
    from edgedl.bench import time_invocations
    from edgedl.convert import to_tflite
    from edgedl.data import load_dataset
    from edgedl.reference import fidelity, reference_outputs
    from edgedl.runtime.quant import predict, quantize
    from edgedl.targets import host_target
    from edgedl.train import TrainOptions, train

    say = status or (lambda msg: log.info(msg))
    dataset = dataset or default_dataset(data_dir)
    epochs = epochs or (8 if dataset == "digits" else 3)
    out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="edgedl-quickstart-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    say(f"training {model} on {dataset} for {epochs} epochs")
    result = train(model, TrainOptions(dataset=dataset, epochs=epochs, seed=seed, data_dir=data_dir, limit=limit),
                   progress=progress)
    result.save(out_dir / f"{model}.keras")
    data = load_dataset(dataset, data_dir=data_dir, limit=limit, seed=seed)
    x_test, y_test = data.x_test, data.y_test
    reference = reference_outputs(result.model, x_test)

    say("converting to .tflite: float32 and int8 (full integer, calibrated on the training split)")
    variants = {
        "float32": to_tflite(result.model, "none"),
        "int8": to_tflite(result.model, "int8", representative=data.x_train, io_type="int8"),
    }
    target = host_target()
    rows = [{"variant": "keras float32", "backend": "keras", "accuracy": result.metrics["accuracy"],
             "agreement": 1.0, "p50_us": None, "size_bytes": (out_dir / f"{model}.keras").stat().st_size}]
    for variant, blob in variants.items():
        tfl = _io.write_bytes(out_dir / f"{model}_{variant}.tflite", blob)
        for name in backends:
            backend = get_backend(name)
            say(f"compiling {variant} with {name} for {target.name}")
            compiled = backend.compile(tfl, target, out_dir / f"{name}_{variant}", {})
            engine = backend.load(compiled, num_threads=1)
            check = fidelity(reference, predict(engine, x_test), y_test)
            x0 = quantize(x_test[:1], engine.inputs[0])
            # Three repeats, the one with the median p50: the machine is shared and noisy.
            stats = time_invocations(engine, x0, warmup=20, runs=runs, repeats=3).median_repeat()
            rows.append({
                "variant": variant, "backend": name, "accuracy": check["accuracy"],
                "agreement": check["top1_agreement"], "max_abs_error": check["max_abs_error"],
                "p50_us": stats["p50_us"], "latency": stats, "compile_time_s": round(compiled.compile_time_s, 3),
                "size_bytes": sum((compiled.directory / f).stat().st_size for f in compiled.files),
            })
    fastest = min(r["p50_us"] for r in rows if r["p50_us"])
    for r in rows:
        r["vs_fastest"] = None if r["p50_us"] is None else r["p50_us"] / fastest
    summary = {"model": model, "dataset": data.name, "split": data.split, "num_test": int(len(y_test)),
               "target": target.name, "training": {k: v for k, v in result.metrics.items() if k != "history"},
               "rows": rows, "out_dir": str(out_dir), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _io.write_json(out_dir / "results.json", summary)
    return summary
