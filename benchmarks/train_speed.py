"""What bit-for-bit reproducible training costs: time per optimizer step, deterministic or not; write JSON.

TensorFlow's op determinism (``edgedl train --deterministic``) makes the same seed give the same
weights to the last bit, at the price of running some operators on one thread. This trains zoo models on their
real data sets (a slice of the training split, the recipe's batch size and augmentation) with it on
and off, alternating, in the same process, and reports the median time per step of every epoch
after the first (which traces the graph) and the ratio. Measured on a 2-core AMD EPYC (AVX-512), each at
its recipe's batch: LeNet/MNIST 1.28x (7.3 against 5.7 ms a step), DS-CNN/FSDD 1.18x, ResNet-8/CIFAR-10
1.10x; an earlier host (its CPU not recorded) gave ResNet-8 1.02x and a batch-128 step 2x.

    EDGEDL_DATA=/work/shared/data python benchmarks/train_speed.py --models lenet,ds_cnn,resnet8
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "results" / "train_speed.json"


def main(argv=None):
    from optimize import host

    from edgedl import _io

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="lenet,ds_cnn,resnet8", help="comma-separated zoo names (%(default)s)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per epoch (%(default)s)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed (%(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each setting, alternating (%(default)s)")
    p.add_argument("--data-dir", help="data directory (default: $EDGEDL_DATA)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON to write (%(default)s)")
    args = p.parse_args(argv)
    command = "python benchmarks/train_speed.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    rows = []
    for name in args.models.split(","):
        row = measure(name, args)
        print(row, flush=True)
        rows.append(row)
    _io.write_json(Path(args.out), {"command": command, "rows": rows, "host": host()})
    print(f"wrote {args.out}")


def measure(name, args) -> dict:
    import keras

    from edgedl import zoo
    from edgedl.train import TrainOptions, train

    recipe = zoo.get_model(name).recipe
    batch = recipe["batch_size"]
    limit = args.steps * batch  # training samples: --steps full batches per epoch

    class EpochTimes(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    per_step = {"deterministic": [], "default": []}
    accuracy = {"deterministic": [], "default": []}
    for _ in range(args.repeats):
        for label in per_step:
            timer = EpochTimes()
            timer.times = []
            options = TrainOptions(epochs=args.epochs, limit=limit, data_dir=args.data_dir,
                                   deterministic=label == "deterministic")
            result = train(name, options, progress=False, callbacks=[timer])
            steps = math.ceil(result.metrics["num_train"] / batch)
            per_step[label] += [t / steps * 1000 for t in timer.times[1:]]
            accuracy[label].append(result.metrics["accuracy"])
    med = {k: float(np.median(v)) for k, v in per_step.items()}
    return {"model": name, "dataset": recipe["dataset"], "batch_size": batch, "steps_per_epoch": args.steps,
            "timed_epochs_per_run": args.epochs - 1, "repeats": args.repeats,
            "ms_per_step": {k: round(v, 2) for k, v in med.items()},
            "deterministic_over_default": round(med["deterministic"] / med["default"], 3),
            "accuracy_after_short_run": accuracy,
            "deterministic_runs_identical": len(set(accuracy["deterministic"])) == 1}


if __name__ == "__main__":
    main()
