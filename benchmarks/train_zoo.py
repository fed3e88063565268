"""Accuracy and training wall time of every zoo model on its real data set, written as JSON.

    python benchmarks/train_zoo.py --data-dir ../shared/data [--models lenet cnn ...] [--epochs N]

Each model trains with its recipe (or --epochs), is evaluated on the test split, and gets an entry
in benchmarks/results/train_zoo.json: accuracy, the recipe's target and whether it was reached,
epochs, wall time, data set and split, and the command that produced it. Entries of models not
run this time are kept, so long runs can be done one model at a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "train_zoo.json"


def main(argv=None):
    from edgedl import _io
    from edgedl.train import TrainOptions, train
    from edgedl.zoo import get_model, model_names

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=model_names())
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (the entry says so)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-dir", help="also keep the trained .keras models here (not in the repository)")
    p.add_argument("--log-dir", help="write a per-epoch CSV log (NAME.csv) here, to follow long runs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key for this run (VALUE is JSON or a bare word, e.g. optimizer=sgd or "
                        "learning_rate=0.05); the entry records the recipe it ran")
    args = p.parse_args(argv)
    overrides = dict(_parse_set(item) for item in args.set)

    for name in args.models:
        recipe = get_model(name).recipe
        start = time.perf_counter()
        callbacks = []
        if args.log_dir:
            import keras

            Path(args.log_dir).mkdir(parents=True, exist_ok=True)
            callbacks.append(keras.callbacks.CSVLogger(str(Path(args.log_dir) / f"{name}.csv")))
        r = train(name, TrainOptions(epochs=args.epochs, seed=args.seed, data_dir=args.data_dir, recipe=overrides),
                  progress=sys.stderr.isatty(), callbacks=callbacks)
        entry = {k: v for k, v in r.metrics.items() if k not in ("history", "preprocessing")}
        entry.update(
            target_reached=None if recipe["target_accuracy"] is None else r.metrics["accuracy"] >= recipe["target_accuracy"],
            recipe_epochs=recipe["epochs"], epochs_overridden=args.epochs is not None,
            recipe_overrides=overrides,
            total_wall_time_s=round(time.perf_counter() - start, 1),
            final_train_accuracy=r.metrics["history"]["accuracy"][-1],
            command="python benchmarks/train_zoo.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            machine=f"{platform.machine()}, {__import__('os').cpu_count()} cores",
            date=time.strftime("%Y-%m-%d"),
        )
        if args.save_dir:
            r.save(Path(args.save_dir) / f"{name}.keras")
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # re-read: runs may overlap
        results[name + ("" if not overrides else "+" + ",".join(f"{k}={v}" for k, v in overrides.items()))] = entry
        _io.write_json(RESULTS, results)
        print(f"{name}: {100 * entry['accuracy']:.2f}% (target {100 * recipe['target_accuracy']:.1f}%, "
              f"{'reached' if entry['target_reached'] else 'NOT reached'}) in {entry['train_wall_time_s']:.0f} s",
              flush=True)


def _parse_set(item: str):
    key, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--set takes KEY=VALUE, got '{item}'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare word such as sgd


if __name__ == "__main__":
    main()
