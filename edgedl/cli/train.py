"""``edgedl train``: train a zoo model or a Keras model file, write the .keras model and its metrics."""

import json

import click

from edgedl.cli._options import COUNT, SEED, OutputOption


@click.command()
@click.argument("model")
@click.option("--dataset", "-d", help="Data set (default: the model's recipe). See `edgedl data list`.")
@click.option("--split", help="Data set split, e.g. official or speaker:theo (FSDD).")
@click.option("--epochs", "-e", type=COUNT, help="Epochs (default: the recipe's).")
@click.option("--batch-size", type=COUNT, help="Batch size (default: the recipe's).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for weights, shuffling and augmentation.")
@click.option("--limit", type=COUNT, help="Use at most this many samples per split (quick runs).")
@click.option("--deterministic", is_flag=True,
              help="Bit-identical model for the same seed (TensorFlow's op determinism; can be slower, "
                   "benchmarks/train_speed.py measures it). Off, two runs with the same seed can end slightly "
                   "apart (sums across threads round differently).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data directory (default: $EDGEDL_DATA, then the user cache).")
@click.option("--output", "-o", "--out", "out", cls=OutputOption, type=click.Path(dir_okay=False), help="Write the model here (.keras) and its metrics beside it (.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def train(model, dataset, split, epochs, batch_size, seed, limit, deterministic, data_dir, out, as_json):
    """Train MODEL (a zoo name or a .keras/.h5/SavedModel path) and report its test accuracy.

    \b
    Example:
      edgedl train lenet --epochs 3 -o lenet.keras
    """
    from edgedl.train import TrainOptions
    from edgedl.train import train as run

    if out is not None and not out.endswith(".keras"):
        raise click.BadParameter(f"must end in .keras, got '{out}'", param_hint="--output")
    if out is not None:
        from edgedl._io import check_writable

        check_writable(out, "--output", kind="file")
    options = TrainOptions(dataset=dataset, split=split, epochs=epochs, batch_size=batch_size, seed=seed, limit=limit,
                           data_dir=data_dir, deterministic=deterministic)
    result = run(model, options, progress=not as_json)
    m = result.metrics
    if out:
        paths = result.save(out)
        m = dict(m, model_path=str(paths[0]), metrics_path=str(paths[1]))
    if as_json:
        click.echo(json.dumps({k: v for k, v in m.items() if k != "history"}, indent=2))
        return
    click.echo(result.summary())
    if out:
        click.echo(f"wrote {m['model_path']} and {m['metrics_path']}")
