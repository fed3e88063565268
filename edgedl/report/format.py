"""Formatting shared by every report and table: numbers, percentages and sizes for people, Markdown
and HTML tables, inline figures. Pure Python, no plotting or TensorFlow imports."""

from __future__ import annotations

import base64
import html
import textwrap


def num(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{float(value):,.{digits}f}"


def percent(value) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}%"


def mib(n) -> str:
    return f"{n / 2**20:.1f} MiB"


def size(n) -> str:
    """A byte count for people: ``512 B``, ``2 MiB (2,097,152 B)``, ``4.3 KiB (4,400 B)``."""
    n = int(n)
    if n < 1024:
        return f"{n:,} B"
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:  # a budget: 2 MiB, not 2,048.0 KiB
        return f"{n // (1024 * 1024):,} MiB ({n:,} B)"
    if n >= 1024 * 1024:
        return f"{n / 2**20:,.1f} MiB ({n:,} B)"
    return f"{n / 1024:,.1f} KiB ({n:,} B)"


def md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(map(md_cell, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(map(md_cell, row)) + " |" for row in rows]
    return lines


def html_table(head, rows, table_id, row_kind, keys, numeric=(), row_class=None) -> str:
    e = html.escape
    numeric = set(numeric)
    out = [f'<table id="{table_id}"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, (row, key) in enumerate(zip(rows, keys)):
        cls = row_kind + (f" {row_class[i]}" if row_class else "")
        cells = "".join(f'<td{" class=num" if j in numeric else ""}>{e(c)}</td>' for j, c in enumerate(row))
        out.append(f'<tr class="{e(cls)}" data-run="{e(key)}">{cells}</tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


def figure_html(png: bytes, fig_id: str, caption: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img id="{fig_id}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _number(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1000):
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4g}"
    return str(v)


def _firmware(v: dict) -> str:
    """A TFLite Micro firmware build in one line: core, board, kernels, flash and RAM of its ELF."""
    if not v.get("built"):
        return v.get("reason") or "not built"
    return (f"{v['core']} ({v['board']} board), {v['kernels']} kernels: flash {size(v['flash_bytes'])} "
            f"(text + data), RAM {size(v['ram_bytes'])} (data + bss, arena {size(v['arena_bytes'])}), read from "
            f"the ELF; {len(v.get('operators') or [])} operators registered")


def _estimate(key: str, v) -> str:
    if key == "firmware" and isinstance(v, dict):
        return _firmware(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and key.endswith("_bytes"):
        return size(v)
    if isinstance(v, dict):
        return ", ".join(f"{k} {_estimate(k, x)}" for k, x in v.items()) or "none"
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(x, dict) and "op" in x for x in v):  # Vela's CPU fallback operators
            return "; ".join(f"{x['op']}" + (f" ({x['reason']})" if x.get("reason") else "") for x in v)
        return ", ".join(_estimate(key, x) for x in v) or "none"
    return _number(v)


def estimate_lines(estimates: dict) -> list[str]:
    """A backend's estimates as lines a person reads: sizes in KiB and bytes, rounded numbers, lists
    and tables written out (never a Python repr); the note last."""
    lines = []
    for key, v in estimates.items():
        if v is None or key == "note":
            continue
        label = key.removesuffix("_bytes").replace("_", " ")
        lines.append(f"{label}: {_estimate(key, v)}")
    if estimates.get("note"):
        lines += textwrap.wrap(f"note: {estimates['note']}", width=96, subsequent_indent="  ")
    return lines
