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
        _print_bundle(console, info["bundle"])
    if "quantization" in info:
        q = info["quantization"]
        console.print(f"parameters: {info['num_params']:,}   MACs: {info['macs']:,}   "
                      f"quantization: {q['kind']} ({q['description']})")
    for io in ("inputs", "outputs"):
        for t in info.get(io) or []:
            console.print(f"{io[:-1]}: {tensor_line(t)}")
    if "operators" not in info:
        if "op_counts" in info:
            counts = ", ".join(f"{shown(op)}: {n}" for op, n in info["op_counts"].items())
            console.print(f"operators: {{{counts}}}; parameters: {info['num_params']}")
        return
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
            if s["unsupported"].get(op):
                marks.append("[red]no[/]")
            elif s.get("note"):
                marks.append("?")
            elif op in s.get("cpu_fallback", {}):
                marks.append("[yellow]cpu[/]")
            else:
                marks.append("[green]yes[/]")
        table.add_row(shown(op), str(e["count"]), f"{e['macs']:,}", *marks)
    console.print(table)
    for b, s in support.items():
        for op, reason in s["unsupported"].items():
            console.print(f"  {shown(b)}: {shown(op)}: {shown(reason, 400)}")
        for op, reason in s.get("cpu_fallback", {}).items():
            console.print(f"  {shown(b)}: {shown(op)}: {shown(reason, 400)}")
        if s.get("note"):
            console.print(f"  {shown(b)}: {shown(s['note'], 400)}")


def tensor_line(t: dict) -> str:
    """An input or output as inspect prints it: name, shape, dtype, and scale and zero point where
    the tensor is quantized.

    Example:
        >>> tensor_line({"name": "x", "shape": [1, 4], "dtype": "int8", "scale": 0.5, "zero_point": -3})
        'x [1, 4] int8, scale 0.5, zero point -3'
        >>> tensor_line({"name": "x", "shape": [1, 4], "dtype": "float32", "scale": 0.0, "zero_point": 0})
        'x [1, 4] float32'
    """
    line = f"{shown(t['name'])} {list(t['shape'])} {t['dtype']}"
    if t.get("scale"):
        line += f", scale {t['scale']:.6g}, zero point {t.get('zero_point', 0)}"
    return line


def _print_bundle(console, b: dict) -> None:
    """The bundle's lines: backend and target, source, digest and signer, arena, fidelity, estimates."""
    from edgedl.report.format import estimate_lines

    console.print(f"bundle: backend {shown(b['backend'])} for {shown(b['target'])}, "
                  f"source {shown(str((b.get('source') or {}).get('path', 'not recorded')))}")
    if b.get("signed_by"):
        from edgedl.signing import key_id

        signed = f"signed by key {key_id(bytes.fromhex(b['signed_by']))}; serve --trust checks it"
    else:
        signed = "unsigned"
    console.print(f"digest: sha256:{b['digest']} ({signed})")
    if b.get("arena_bytes"):
        console.print(f"arena: {b['arena_bytes']:,} B ({b['arena_bytes'] / 1024:.1f} KiB)")
    console.print(f"fidelity: {shown(b['fidelity_line'], 400)}")
    lines = estimate_lines(b.get("estimates") or {})
    if not lines:
        console.print(f"estimates: none recorded by {shown(b['backend'])}")
        return
    console.print("estimates:")
    for line in lines:
        console.print(f"  {shown(line, 400)}")
