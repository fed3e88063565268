"""``edgedl targets``: list the device descriptions, or show one."""

import json

import click


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def targets(name, as_json):
    """List the targets in targets/ (or show NAME, a target name or a TOML file)."""
    from rich.console import Console
    from rich.table import Table

    from edgedl.targets import list_targets, load_target

    if name:
        t = load_target(name)
        click.echo(json.dumps(t.to_dict(), indent=2) if as_json else _describe(t))
        return
    entries = list_targets()
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in entries], indent=2))
        return
    table = Table(title="edgedl targets (add your own: a TOML file, passed by path)")
    for col in ("target", "kind", "arch", "backends", "RAM", "flash", "description"):
        table.add_column(col)
    for t in entries:
        table.add_row(t.name, t.kind, t.cpu.get("arch", ""), ", ".join(t.backends), _kb(t.memory.get("ram_kb")),
                      _kb(t.memory.get("flash_kb")), t.description)
    Console().print(table)


def _kb(kb):
    if kb is None:
        return "-"
    return f"{kb // 1024} MiB" if kb >= 1024 and kb % 1024 == 0 else f"{kb} KiB"


def _describe(t) -> str:
    lines = [f"{t.name}: {t.description}", f"  kind: {t.kind}", f"  backends: {', '.join(t.backends)}"]
    for section in ("cpu", "gpu", "tvm", "npu", "memory"):
        value = getattr(t, section)
        if value:
            lines.append(f"  {section}: {json.dumps(value)}")
    return "\n".join(lines)
