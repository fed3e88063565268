"""A benchmark result: what ``edgedl bench`` returns, writes (``-o run.json``) and prints, and what
``edgedl report`` reads back.

Where it sits: :func:`edgedl.bench.harness.bench` returns a :class:`BenchResult`; the CLI prints its
:meth:`~BenchResult.to_text` (or, with ``--json``, its :meth:`~BenchResult.summary`) and saves it;
:mod:`edgedl.report.bench` reads result files with :func:`read_results`. On disk a result is one JSON
object in the schema :data:`SCHEMA`. Only the standard library is imported, so the device agent can
import the schema too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from edgedl import __version__, _io
from edgedl.errors import InputFileError

SCHEMA = "edgedl.bench/1"
HOW_TO_MAKE = f"expected a result of `edgedl bench BUNDLE -o run.json` (schema {SCHEMA})"

# Fields a result must have to be read; everything else is optional and shown where present.
REQUIRED = (
    ("bundle", "path"), ("bundle", "backend"), ("bundle", "target"),
    ("timing", "latency", "p50_us"), ("timing", "latency", "p90_us"), ("timing", "latency", "p99_us"),
    ("timing", "latency", "min_us"), ("timing", "latency", "max_us"),
)
# Optional figures: absent or null is fine, anything else must be a finite number (a list of them for lists).
OPTIONAL_NUMBERS = (
    ("timing", "spread", "relative"), ("timing", "throughput_per_s"), ("accuracy", "accuracy"),
    ("bundle", "size_bytes"), ("memory", "peak_rss_bytes"), ("memory", "arena_bytes"),
)
OPTIONAL_NUMBER_LISTS = (("timing", "repeat_p50_us"),)


@dataclass
class BenchResult:
    """One benchmark of one bundle on one device, as the JSON object of schema ``edgedl.bench/1``.

    ``data`` holds the whole result (bundle, host, settings, timing, memory, accuracy, estimates,
    and ``remote`` for a run through an agent); the properties below read its key figures.

    Example:
        >>> from edgedl.bench.harness import bench
        >>> from edgedl.bench.options import BenchOptions
        >>> result = bench("lenet.edgedl", BenchOptions(runs=50))  # doctest: +SKIP
        >>> result.save("run.json")                                # doctest: +SKIP
        >>> print(BenchResult.load("run.json").to_text())          # doctest: +SKIP
    """

    data: dict

    # ----- saving, loading, rendering -----

    def save(self, path) -> Path:
        """Write the result to ``path`` as JSON (atomically: readers never see half a file)."""
        return _io.write_json(path, self.data)

    @classmethod
    def load(cls, path) -> "BenchResult":
        """Read a result written by :meth:`save` (``edgedl bench -o``).

        Raises:
            InputFileError: the file is missing, not JSON, not a benchmark result, or holds a list
                of several (read those with :func:`read_results`).
        """
        results = read_results(path)
        if len(results) != 1:
            raise InputFileError(path, f"holds {len(results)} benchmark results, not one; read them with "
                                       "edgedl.bench.result.read_results")
        return cls(results[0].data)

    def summary(self) -> dict:
        """JSON-able: the whole result in schema edgedl.bench/1 (what ``edgedl bench --json`` prints)."""
        return self.data

    def to_text(self) -> str:
        """The result for a terminal: where it ran, latency, throughput, memory, accuracy and estimates."""
        r = self.data
        t, lat = r["timing"], r["timing"]["latency"]
        b = r["bundle"]
        lines = [
            f"{b['path']}: {b['backend']} for {b['target']} on {r['device']} ({r['host']['machine']})",
            f"  load {t['load_s'] * 1000:.1f} ms   first inference {t['first_inference_us']:.1f} us",
            f"  latency p50 {lat['p50_us']:.1f} us  p90 {lat['p90_us']:.1f}  p99 {lat['p99_us']:.1f}  "
            f"mean {lat['mean_us']:.1f} ± {lat['std_us']:.1f}  min {lat['min_us']:.1f}  max {lat['max_us']:.1f}",
            f"  repeat medians {', '.join(f'{v:.1f}' for v in t['repeat_p50_us'])} us "
            f"(spread {100 * t['spread']['relative']:.1f}%)   throughput {t['throughput_per_s']:.0f}/s",
            f"  memory: peak RSS {r['memory']['peak_rss_bytes'] / 2**20:.1f} MiB"
            + (f", TFLM arena {r['memory']['arena_bytes'] / 1024:.1f} KiB" if "arena_bytes" in r["memory"] else "")
            + f"   bundle {b['size_bytes'] / 1024:.1f} KiB",
        ]
        acc = r.get("accuracy") or {}
        if "accuracy" in acc:
            line = f"  accuracy {100 * acc['accuracy']:.2f}% on {acc['samples']} {acc.get('dataset', '')} samples"
            if "reference_agreement" in acc:
                line += f"; top-1 agreement with the float reference {100 * acc['reference_agreement']:.2f}%"
            lines.append(line)
        for k, v in (r.get("estimates_vs_measured") or {}).items():
            measured = v.get("measured_p50", v.get("measured"))
            lines.append(f"  {k}: estimated {v['estimated']:.1f} vs measured {measured:.1f}"
                         + (f" ({v['note']})" if v.get("note") else ""))
        return "\n".join(lines)

    # ----- key figures -----

    @property
    def name(self) -> str:
        """The bundle's file or folder name without ``.edgedl``: what runs are matched on."""
        name = Path(str(self.data["bundle"]["path"])).name
        return name[: -len(".edgedl")] if name.endswith(".edgedl") and len(name) > len(".edgedl") else name

    @property
    def backend(self) -> str:
        return str(self.data["bundle"]["backend"])

    @property
    def target(self) -> str:
        return str(self.data["bundle"]["target"])

    @property
    def device(self) -> str:
        return str(self.data.get("device") or "local")

    @property
    def key(self) -> tuple[str, str, str]:
        """(bundle name, target, device): results with the same key are compared with each other."""
        return self.name, self.target, self.device

    @property
    def latency(self) -> dict:
        return self.data["timing"]["latency"]

    @property
    def p50(self) -> float:
        return float(self.latency["p50_us"])

    @property
    def repeat_p50(self) -> list[float]:
        return [float(v) for v in self.data["timing"].get("repeat_p50_us") or []]

    @property
    def spread(self) -> float | None:
        spread = (self.data["timing"].get("spread") or {}).get("relative")
        return None if spread is None else float(spread)

    @property
    def throughput(self) -> float | None:
        value = self.data["timing"].get("throughput_per_s")
        return None if value is None else float(value)

    @property
    def accuracy(self) -> float | None:
        value = (self.data.get("accuracy") or {}).get("accuracy")
        return None if value is None else float(value)

    @property
    def size_bytes(self) -> int | None:
        value = self.data["bundle"].get("size_bytes")
        return None if value is None else int(value)

    @property
    def peak_memory_bytes(self) -> int | None:
        value = (self.data.get("memory") or {}).get("peak_rss_bytes")
        return None if value is None else int(value)

    @property
    def arena_bytes(self) -> int | None:
        value = (self.data.get("memory") or {}).get("arena_bytes")
        return None if value is None else int(value)


def read_results(path) -> list[BenchResult]:
    """The benchmark results in one file: one result, or a JSON list of results.

    Raises:
        InputFileError: the file is missing, not JSON, or not a benchmark result (the file is named,
            and the item where a list holds several).

    Example:
        >>> [r.p50 for r in read_results("runs.json")]  # doctest: +SKIP
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "no such file" if not p.exists() else f"is a folder; {HOW_TO_MAKE}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputFileError(p, f"is not a text file; {HOW_TO_MAKE}") from None
    except json.JSONDecodeError as e:
        raise InputFileError(p, f"is not JSON (line {e.lineno}: {e.msg}); {HOW_TO_MAKE}") from None
    except RecursionError:
        raise InputFileError(p, f"nests JSON arrays or objects too deeply to read; {HOW_TO_MAKE}") from None
    except ValueError as e:  # an integer of more digits than Python converts (4300)
        raise InputFileError(p, f"is not JSON this reads ({str(e).split(':')[0][:80]}); {HOW_TO_MAKE}") from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise InputFileError(p, f"holds an empty list; {HOW_TO_MAKE}")
    results = []
    for i, item in enumerate(items):
        where = f"item {i} " if isinstance(data, list) else ""
        problem = _problem(item)
        if problem:
            raise InputFileError(p, f"{where}is not a benchmark result: {problem}; {HOW_TO_MAKE}")
        results.append(BenchResult(item))
    return results


def _problem(item) -> str | None:
    """Why ``item`` is not a benchmark result this edgedl reads, or None."""
    if not isinstance(item, dict):
        return f"found a JSON {type(item).__name__}, not an object"
    schema = item.get("schema")
    if schema is None:
        keys = ", ".join(sorted(map(str, item))[:6]) or "none"
        return f"it has no \"schema\" field (its keys: {keys})"
    if schema != SCHEMA:
        if isinstance(schema, str) and schema.startswith("edgedl.bench/"):
            return f"its schema {schema} is not {SCHEMA}, the one this edgedl ({__version__}) reads"
        return f"its schema is {schema!r}"
    for path in REQUIRED:
        node = item
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return f"it lacks {'.'.join(path)}"
            node = node[part]
        if path[0] == "timing":
            problem = _not_a_number(".".join(path), node)
            if problem:
                return problem
    for path in OPTIONAL_NUMBERS + OPTIONAL_NUMBER_LISTS:
        node = item
        for i, part in enumerate(path):
            if node is None:
                break
            if not isinstance(node, dict):
                return f"{'.'.join(path[:i]) } is {_kind(node)}, not an object"
            node = node.get(part)
        if node is None:
            continue
        name = ".".join(path)
        if path in OPTIONAL_NUMBER_LISTS:
            if not isinstance(node, list):
                return f"{name} is {_kind(node)}, not a list of numbers"
            problem = next((p for p in (_not_a_number(f"{name}[{j}]", v) for j, v in enumerate(node)) if p), None)
        else:
            problem = _not_a_number(name, node)
        if problem:
            return problem
    return None


def _not_a_number(name: str, node) -> str | None:
    """Why ``node`` is not a finite number (named ``name``), or None."""
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return f"{name} is {_kind(node)}, not a number"
    try:
        if math.isfinite(float(node)):
            return None
    except OverflowError:
        return f"{name} is an integer too large for a float, not a finite number"
    return f"{name} is {node}, not a finite number"


def _kind(node) -> str:
    """A short description of a JSON value for a message (never the whole of a big one)."""
    if isinstance(node, (dict, list)):
        return f"a JSON {'object' if isinstance(node, dict) else 'array'}"
    text = repr(node)
    return text if len(text) <= 40 else f"{text[:37]}..."
