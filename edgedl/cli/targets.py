"""``edgedl targets``: list the device descriptions, or show one."""

import json

import click


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def targets(name, as_json):
    """List the targets in targets/ (or show NAME, a target name or a TOML file)."""
    from edgedl.targets import list_targets, load_target

    if name:
        t = load_target(name)
        click.echo(json.dumps(t.to_dict(), indent=2) if as_json else _describe(t))
        return
    entries = list_targets()
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in entries], indent=2))
        return
    click.echo(format_table(entries, _width()))


def _width() -> int:
    """The terminal's width; 120 when piped (a pager or a file: nothing to fit, and 80 would wrap a lot)."""
    import os
    import shutil
    import sys

    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return shutil.get_terminal_size((120, 24)).columns
    return 120


def format_table(entries, width: int = 100) -> str:
    """Targets as a plain table. Names, kinds, architectures and backends are what the user types: they
    are never cut or wrapped (backends wrap only between names); the description wraps into what is
    left of ``width``, or goes on its own indented lines when too little is left."""
    import textwrap

    header = ("target", "kind", "arch", "backends", "RAM", "flash")
    rows = [(t.name, t.kind, t.cpu.get("arch", ""), ", ".join(t.backends), _kb(t.memory.get("ram_kb")),
             _kb(t.memory.get("flash_kb")), t.description) for t in entries]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {4, 5}
    lead = sum(widths) + 2 * len(widths)
    room = width - lead
    inline = room >= 24

    def cells(values):
        return "".join((v.rjust(w) if i in right else v.ljust(w)) + "  " for i, (v, w) in enumerate(zip(values, widths)))

    lines = ["edgedl targets (add your own: a TOML file, passed by path)", "",
             (cells(header) + ("description" if inline else "")).rstrip()]
    for r in rows:
        if inline:
            wrapped = textwrap.wrap(r[6], room, break_on_hyphens=False) or [""]
            lines.append((cells(r[:6]) + wrapped[0]).rstrip())
            lines += [" " * lead + more for more in wrapped[1:]]
        else:
            lines.append(cells(r[:6]).rstrip())
            lines += textwrap.wrap(r[6], max(width - 4, 20), initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


def _kb(kb):
    if kb is None:
        return "-"
    for unit, size in (("GiB", 1024 * 1024), ("MiB", 1024)):
        if kb >= size and kb % size == 0:
            return f"{kb // size} {unit}"
    return f"{kb:,} KiB"


def _describe(t) -> str:
    lines = [f"{t.name}: {t.description}", f"  kind: {t.kind}", f"  backends: {', '.join(t.backends)}"]
    for section in ("cpu", "gpu", "tvm", "npu", "memory"):
        value = getattr(t, section)
        if value:
            lines.append(f"  {section}: {json.dumps(value)}")
    return "\n".join(lines)
