"""``edgedl inspect``: operators, parameters, MACs, sizes and backend support of a model or bundle."""

import json

import click


@click.command("inspect")
@click.argument("path")
@click.option("--target", "-t", help="Check operator support for this target (default: the bundle's, or this host).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def inspect_command(path, target, as_json):
    """Show what MODEL (.keras, .h5, SavedModel, .tflite, .onnx) or BUNDLE holds."""
    from rich.console import Console
    from rich.table import Table

    from edgedl.inspect import inspect_path

    info = inspect_path(path, target)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    console = Console() if Console().is_terminal else Console(width=120)
    console.print(f"[bold]{info['path']}[/] ({info['kind']}, {info.get('size_bytes', 0) / 1024:.1f} KiB)")
    if "bundle" in info:
        b = info["bundle"]
        console.print(f"bundle: backend {b['backend']} for {b['target']}, source {b['source']['path']}")
    if "operators" not in info:
        if "op_counts" in info:
            console.print(f"operators: {info['op_counts']}; parameters: {info['num_params']}")
        return
    console.print(f"parameters: {info['num_params']:,}   MACs: {info['macs']:,}   "
                  f"quantized: {'yes' if info['quantized'] else 'no'}")
    for io in ("inputs", "outputs"):
        for t in info[io]:
            console.print(f"{io[:-1]}: {t['name']} {t['shape']} {t['dtype']}")
    support = info["support"]
    table = Table(title=f"operators and support on {info['target']}")
    table.add_column("operator")
    table.add_column("count", justify="right")
    table.add_column("MACs", justify="right")
    for b in support:
        table.add_column(b)
    for op, e in sorted(info["operators"].items(), key=lambda kv: -kv[1]["macs"]):
        marks = []
        for b, s in support.items():
            reason = s["unsupported"].get(op)
            marks.append("[red]no[/]" if reason else ("?" if s.get("note") else "[green]yes[/]"))
        table.add_row(op, str(e["count"]), f"{e['macs']:,}", *marks)
    console.print(table)
    for b, s in support.items():
        for op, reason in s["unsupported"].items():
            console.print(f"  {b}: {op}: {reason}")
        if s.get("note"):
            console.print(f"  {b}: {s['note']}")
