"""``edgedl inspect``: operators, parameters, MACs, sizes and backend support of a model or bundle."""

import json

import click

MAX_NAME_CHARS = 80  # names come from the model file: cut for the terminal (the JSON keeps them whole)


def shown(text, limit: int = MAX_NAME_CHARS) -> str:
    """``text`` from a model or bundle made safe to print with rich: cut to ``limit`` characters and
    with its square brackets escaped, so a name is never read as markup.

    Example:
        >>> shown("[bold]x[/]")
        '\\[bold]x\\[/]'
        >>> len(shown("a" * 1000))
        80
    """
    from rich.markup import escape

    text = str(text)
    if len(text) > limit:
        text = f"{text[:limit - 22]}... ({len(text):,} chars)"
    return escape(text)


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
    # No highlighter: its regular expressions take minutes on a 100,000-character name, and every
    # string from the file goes through shown() anyway.
    console = Console(highlight=False) if Console().is_terminal else Console(width=120, highlight=False)
    console.print(f"[bold]{shown(info['path'], 400)}[/] ({info['kind']}, {info.get('size_bytes', 0) / 1024:.1f} KiB)")
    if "bundle" in info:
        b = info["bundle"]
        console.print(f"bundle: backend {shown(b['backend'])} for {shown(b['target'])}, "
                      f"source {shown(str((b.get('source') or {}).get('path', 'not recorded')))}")
        if b.get("signed_by"):
            from edgedl.signing import key_id

            signed = f"signed by key {key_id(bytes.fromhex(b['signed_by']))}; serve --trust checks it"
        else:
            signed = "unsigned"
        console.print(f"digest: sha256:{b['digest']} ({signed})")
    if "operators" not in info:
        if "op_counts" in info:
            counts = ", ".join(f"{shown(op)}: {n}" for op, n in info["op_counts"].items())
            console.print(f"operators: {{{counts}}}; parameters: {info['num_params']}")
        return
    console.print(f"parameters: {info['num_params']:,}   MACs: {info['macs']:,}   "
                  f"quantized: {'yes' if info['quantized'] else 'no'}")
    for io in ("inputs", "outputs"):
        for t in info[io]:
            console.print(f"{io[:-1]}: {shown(t['name'])} {t['shape']} {t['dtype']}")
    support = info["support"]
    table = Table(title=f"operators and support on {shown(info['target'])}")
    table.add_column("operator")
    table.add_column("count", justify="right")
    table.add_column("MACs", justify="right")
    for b in support:
        table.add_column(shown(b))
    for op, e in sorted(info["operators"].items(), key=lambda kv: -kv[1]["macs"]):
        marks = []
        for b, s in support.items():
            reason = s["unsupported"].get(op)
            marks.append("[red]no[/]" if reason else ("?" if s.get("note") else "[green]yes[/]"))
        table.add_row(shown(op), str(e["count"]), f"{e['macs']:,}", *marks)
    console.print(table)
    for b, s in support.items():
        for op, reason in s["unsupported"].items():
            console.print(f"  {shown(b)}: {shown(op)}: {shown(reason, 400)}")
        if s.get("note"):
            console.print(f"  {shown(b)}: {shown(s['note'], 400)}")
