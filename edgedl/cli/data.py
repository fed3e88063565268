"""``edgedl data``: list the data sets, show one, download one (over :mod:`edgedl.data`)."""

from __future__ import annotations

import json

import click

from edgedl.cli._options import COUNT
from rich.console import Console
from rich.table import Table

DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder holding <name>/ for each data set [default: $EDGEDL_DATA, else ~/.cache/edgedl/data].",
)


def _print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2))


def _flatten(d: dict, prefix: str = "") -> list[str]:
    """Nested dict -> ["key: value", "outer.inner: value", ...] for a readable table cell."""
    lines = []
    for key, value in d.items():
        if isinstance(value, dict):
            lines += _flatten(value, f"{prefix}{key}.")
        else:
            lines.append(f"{prefix}{key}: {value}")
    return lines


@click.group()
def data():
    """Data sets: which there are, what is in one, and downloading them.

    \b
    edgedl data list
    edgedl data info fsdd --split speaker:theo
    edgedl data download mnist --data-dir ./data
    """


@data.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@DATA_DIR
def list_command(as_json, data_dir):
    """List the data sets and whether each is present in the data dir."""
    from edgedl.data import list_datasets, missing_files, resolve_data_dir

    root, origin = resolve_data_dir(data_dir)
    rows = []
    for info in list_datasets():
        lacking = missing_files(info["name"], data_dir=root)
        rows.append({**info, "present": not lacking, "missing": lacking})
    if as_json:
        _print_json({"data_dir": str(root), "data_dir_from": origin, "datasets": rows})
        return
    table = Table(title=f"data sets in {root}", caption=f"data dir from {origin}")
    for column in ("name", "input", "present", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        if not row["needs_data_dir"]:
            present = "[green]built in[/]"
        else:
            present = "[green]yes[/]" if row["present"] else "[red]no[/]"
        table.add_row(row["name"], "x".join(str(d) for d in row["input_shape"]), present, row["description"])
    if not all(row["present"] for row in rows):
        table.caption += "; get a missing one with: edgedl data download NAME"
    Console().print(table)


@data.command("info")
@click.argument("name")
@DATA_DIR
@click.option("--split", default=None, help="official (default); for fsdd also speaker:NAME.")
@click.option("--features", default=None, help="fsdd only: logmel (default) or mfcc.")
@click.option("--limit", type=COUNT, default=None, help="At most this many samples per split.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info_command(name, data_dir, split, features, limit, as_json):
    """Load data set NAME and show its sizes, shapes, classes and preprocessing."""
    from edgedl.data import load_dataset

    ds = load_dataset(name, data_dir=data_dir, split=split, limit=limit, features=features)
    summary = ds.summary()
    if as_json:
        _print_json(summary)
        return
    console = Console()
    overview = Table(title=f"{summary['name']} ({summary['split']} split)", show_header=False)
    overview.add_column(style="bold")
    overview.add_column(overflow="fold")
    overview.add_row("train / test", f"{summary['sizes']['train']} / {summary['sizes']['test']}")
    overview.add_row("input shape", "x".join(str(d) for d in summary["input_shape"]) + " float32")
    overview.add_row("source", summary["source"])
    overview.add_row("preprocessing", "\n".join(_flatten(summary["preprocessing"])))
    if summary["subset"].get("limit"):
        overview.add_row("subset", json.dumps(summary["subset"]))
    console.print(overview)
    counts = Table(title="samples per class")
    for column in ("class", "train", "test"):
        counts.add_column(column, justify="left" if column == "class" else "right")
    for cls in summary["classes"]:
        counts.add_row(cls, str(summary["class_counts"]["train"][cls]), str(summary["class_counts"]["test"][cls]))
    console.print(counts)


@data.command("download")
@click.argument("name")
@DATA_DIR
@click.option(
    "--mirror", default=None, metavar="URL", help="Base URL (or folder) holding the canonical file names, flat."
)
def download_command(name, data_dir, mirror):
    """Download data set NAME into the data dir, verifying its checksums."""
    from edgedl.data import download

    root = download(name, data_dir=data_dir, mirror=mirror, progress=True)
    if root is None:
        click.echo(f"{name} ships with scikit-learn: nothing to download")
    else:
        click.echo(f"{name} is ready in {root}")
