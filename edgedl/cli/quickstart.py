"""``edgedl quickstart``: the whole pipeline once, on this machine, with a comparison table."""

import json

import click

from edgedl.cli._options import COUNT, SEED, OutputOption


@click.command()
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Data directory with mnist/ (default: $EDGEDL_DATA; without either, scikit-learn's digits).")
@click.option("--dataset", "-d", help="Data set to train on (default: mnist with a data directory, else digits).")
@click.option("--model", "-m", default="lenet", show_default=True, help="Zoo model to train.")
@click.option("--epochs", "-e", type=COUNT, help="Training epochs (default: 8 on digits, 3 otherwise).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--runs", type=COUNT, default=200, show_default=True, help="Timed inferences per variant and repeat.")
@click.option("--output", "-o", "--out", "out_dir", cls=OutputOption, type=click.Path(file_okay=False), default="edgedl-quickstart",
              show_default=True, help="Folder for the model, the .tflite files and results.json (ignored by git in a checkout).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def quickstart(data_dir, dataset, model, epochs, seed, runs, out_dir, as_json):
    """Train LeNet, quantize it to int8, compile it for this host with LiteRT and TVM, benchmark both.

    Prints one table: accuracy on the test split, top-1 agreement with the float Keras model,
    median latency (batch 1, one thread) and size of every variant.
    """
    from rich.console import Console

    from edgedl._io import check_writable
    from edgedl.quickstart import QuickstartOptions, run

    console = Console(stderr=True)
    check_writable(out_dir, "--output", kind="folder")
    options = QuickstartOptions(data_dir=data_dir, dataset=dataset, model=model, epochs=epochs, seed=seed,
                                out_dir=out_dir, runs=runs)
    result = run(options, progress=not as_json, status=None if as_json else (lambda m: console.print(f"[bold]>[/] {m}")))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    table = results_table(result)
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)
    out.print(table)
    click.echo(next_steps(result))


def results_table(result: dict):
    """The comparison as a rich table: one row per variant and backend; the caption says when TVM ran untuned."""
    from rich.table import Table

    table = Table(title=f"{result['model']} on {result['dataset']} ({result['num_test']} test samples), "
                        f"target {result['target']}, batch 1, one thread",
                  caption="TVM untuned: see the note below" if any(r["backend"] == "tvm" for r in result["rows"]) else None)
    for col in ("variant", "backend", "accuracy", "agreement", "p50 latency", "vs fastest", "size"):
        table.add_column(col, justify="left" if col in ("variant", "backend") else "right")
    for r in result["rows"]:
        table.add_row(r["variant"], r["backend"], f"{100 * r['accuracy']:.2f}%", f"{100 * r['agreement']:.2f}%",
                      "-" if r["p50_us"] is None else f"{r['p50_us']:.1f} us",
                      "-" if r["vs_fastest"] is None else f"{r['vs_fastest']:.2f}x", f"{r['size_bytes'] / 1024:.0f} KiB")
    return table


def next_steps(result: dict) -> str:
    """What the table does not say (TVM ran untuned) and what to try next, with the files just written."""
    import textwrap

    folder, model, target = result["out_dir"], result["model"], result["target"]
    lines = [f"results: {folder}/results.json"]
    if any(r["backend"] == "tvm" for r in result["rows"]):
        lines += textwrap.wrap(
            "note: TVM ran untuned, on edgedl's default CPU schedules (vectorised, register-tiled kernels; no "
            "search). `edgedl compile MODEL --backend tvm --tune --tune-minutes 5` searches schedules for this model "
            "on this CPU with MetaSchedule (bounded by --trials and --tune-minutes; the tuning database is kept and "
            "reused): tune before reading TVM's latency as the best it can do.",
            width=100, subsequent_indent="  ")
    steps = [
        ("bundle", f"edgedl compile {folder}/{model}.keras -t {target} -q int8 -o {model}.edgedl"),
        ("measure", f"edgedl bench {model}.edgedl"),
        ("compress", f"edgedl optimize {folder}/{model}.keras --prune 0.8 -q int8 -o {model}-opt"),
        ("devices", "edgedl targets"),
    ]
    lines += ["next:"] + [f"  {(what + ':').ljust(10)}{command}" for what, command in steps]
    lines += ["  README.md, 'Ten lines, end to end', walks through the rest, remote devices included."]
    return "\n".join(lines)
