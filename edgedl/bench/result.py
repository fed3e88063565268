"""A benchmark result: what ``edgedl bench`` returns, writes (``-o run.json``) and prints, and what
``edgedl report`` reads back.

Where it sits: :func:`edgedl.bench.harness.bench` returns a :class:`BenchResult`; the CLI prints its
:meth:`~BenchResult.to_text` (or, with ``--json``, its :meth:`~BenchResult.summary`) and saves it;
:mod:`edgedl.report.bench` reads result files with :func:`read_results`. On disk a result is one JSON
object in the schema :data:`SCHEMA`. Only the standard library is imported, so the device agent can
import the schema too.

A result is either *timed* (a ``timing`` object: latencies measured on the device) or a
*microcontroller run* (an ``mcu`` object and no ``timing``: the bundle's firmware on an emulated
Cortex-M board or a real one on a serial port, with instructions or cycles per inference and a
latency that is an estimate, never a measurement). :attr:`BenchResult.is_mcu` tells them apart, and
:attr:`BenchResult.p50` is None for a microcontroller run.

Besides the measurement a result may carry (all optional, so older result files still read):
``label`` (``edgedl bench --label``), ``bundle.precision`` (how the bundle computes and what its
inputs and outputs are, from its manifest: :func:`precision_of`), ``host.cpu_model`` and
``host.cpus`` (the processor the run used; ``settings.threads`` the engine threads), and
``accuracy.ci95`` (the 95% Wilson score interval of the accuracy over ``accuracy.samples``:
:func:`wilson_interval`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from edgedl import __version__, _io
from edgedl.errors import InputFileError

SCHEMA = "edgedl.bench/1"
HOW_TO_MAKE = f"expected a result of `edgedl bench BUNDLE -o run.json` (schema {SCHEMA})"

# Fields a result must have to be read; everything else is optional and shown where present. A timed
# result needs the timing fields; a microcontroller run (an "mcu" object) needs REQUIRED_MCU instead.
REQUIRED = (
    ("bundle", "path"), ("bundle", "backend"), ("bundle", "target"),
    ("timing", "latency", "p50_us"), ("timing", "latency", "p90_us"), ("timing", "latency", "p99_us"),
    ("timing", "latency", "min_us"), ("timing", "latency", "max_us"),
)
REQUIRED_MCU = (("mcu", "estimated_latency_ms"),)
# A microcontroller run counts one of these per inference: instructions (emulated) or cycles (a board).
MCU_COUNTS = (("mcu", "instructions"), ("mcu", "cycles"))
# Optional figures: absent or null is fine, anything else must be a finite number (a list of them for lists).
OPTIONAL_NUMBERS = (
    ("timing", "spread", "relative"), ("timing", "throughput_per_s"), ("accuracy", "accuracy"),
    ("bundle", "size_bytes"), ("memory", "peak_rss_bytes"), ("memory", "arena_bytes"),
    ("mcu", "instructions_per_tick"), ("mcu", "clock_hz"), ("mcu", "cycles_per_instruction"),
    ("mcu", "flash_bytes"), ("mcu", "ram_bytes"), ("mcu", "arena_bytes"), ("mcu", "arena_used_bytes"),
    ("mcu", "fidelity", "top1_agreement"), ("mcu", "fidelity", "max_step_difference"),
    ("mcu", "fidelity", "identical_share"),
)
OPTIONAL_NUMBER_LISTS = (("timing", "repeat_p50_us"), ("mcu", "instructions_range"), ("mcu", "cycles_range"))
# Per operator type of a microcontroller run: optional figures of each entry of mcu.operators.
OPERATOR_NUMBERS = ("count", "instructions", "cycles", "share")
Z95 = 1.959963984540054  # the standard normal quantile of 0.975: two-sided 95%
MAX_LABEL = 80  # characters of a run label (edgedl bench --label)
# How the manifest's quantization modes read in a report (a model read from its operators: edgedl.graph).
PRECISION_NAMES = {"none": "float32", "float": "float32", "dynamic": "dynamic (int8 weights)"}


def wilson_interval(successes: float, samples: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion: ``successes`` of ``samples`` (95% by default).

    Unlike the normal approximation it stays within [0, 1] and is not empty at 0 or 100%: 500
    samples at 90% give (0.8706, 0.9233), so two runs 0.2 points apart are not told apart.

    Args:
        successes: how many samples were right (a fraction of ``samples`` rounds to the count).
        samples: how many were scored.
        z: the normal quantile of the interval (1.96: 95%).

    Returns:
        ``(low, high)`` as fractions, or None without samples.

    Example:
        >>> [round(v, 4) for v in wilson_interval(450, 500)]
        [0.8706, 0.9233]
    """
    if not samples or samples <= 0:
        return None
    n = float(samples)
    p = min(max(float(successes) / n, 0.0), 1.0)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_ci95(accuracy: dict) -> list[float] | None:
    """The 95% interval of a result's ``accuracy`` object: its ``ci95``, else computed from its
    accuracy and samples (results written before the interval was recorded); None without both."""
    ci = (accuracy or {}).get("ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_not_a_number("", v) is None for v in ci):
        return [float(ci[0]), float(ci[1])]
    value, samples = (accuracy or {}).get("accuracy"), (accuracy or {}).get("samples")
    if _not_a_number("", value) is not None or _not_a_number("", samples) is not None or samples < 1:
        return None
    return list(wilson_interval(round(float(value) * samples), int(samples)))


def precision_of(manifest: dict, model_kind: str | None = None) -> dict:
    """How a bundle computes, from its manifest: the quantization compile applied (``options.quantize``)
    or, where it applied none to a model that came quantized (a ``.tflite`` source), ``model_kind``
    (:attr:`edgedl.graph.Graph.quantization_kind` of the bundle's model); and its inputs' and
    outputs' types.

    Returns:
        ``{"mode": "int8", "inputs": ["int8"], "outputs": ["int8"], "basis": ...}``; ``mode`` is
        float32, float16, dynamic (int8 weights), int8, int16x8 or mixed, or None where the manifest
        does not tell; ``keep_float`` and ``int16`` list the Keras layers compile left in float32
        or put in int16x8 (``--keep-float``, ``--int16``) where it did.

    Example:
        >>> precision_of({"options": {"quantize": "int8"}, "source": {"kind": "keras"},
        ...               "inputs": [{"dtype": "float32"}], "outputs": [{"dtype": "float32"}]})["mode"]
        'int8'
    """
    quantize = (manifest.get("options") or {}).get("quantize")
    kind = (manifest.get("source") or {}).get("kind")
    if quantize and quantize != "none":
        mode, basis = quantize, f"compiled with --quantize {quantize}"
    elif model_kind:
        mode, basis = model_kind, "read from the bundle's model"
    elif kind == "keras":
        mode, basis = "none", "compiled from Keras without quantization"
    else:
        mode, basis = None, f"a {kind or 'foreign'} source compiled as it was; its precision is not recorded"
    out = {"mode": PRECISION_NAMES.get(mode, mode) if mode else None,
           "inputs": [str(s.get("dtype")) for s in manifest.get("inputs") or []],
           "outputs": [str(s.get("dtype")) for s in manifest.get("outputs") or []], "basis": basis}
    for key in ("keep_float", "int16"):
        layers = (manifest.get("options") or {}).get(key)
        if layers and isinstance(layers, (list, tuple)):
            out[key] = [str(name) for name in layers]
    return out


def precision_text(precision: dict | None) -> str:
    """``int8, I/O int8`` or ``float32`` (I/O float32 said only where it differs): a table cell."""
    if not precision:
        return "–"
    mode = precision.get("mode") or "?"
    selective = [f"{', '.join(precision[key])} {kind}" for key, kind in (("keep_float", "float32"), ("int16", "int16x8"))
                 if precision.get(key)]
    if selective:
        mode += f" ({'; '.join(selective)})"
    ins = "/".join(dict.fromkeys(precision.get("inputs") or []))  # each type once, in the inputs' order
    outs = "/".join(dict.fromkeys(precision.get("outputs") or []))
    if (not ins and not outs) or (ins == outs == "float32" and mode == "float32"):
        return mode
    return f"{mode}, I/O {ins}" if ins == outs else f"{mode}, in {ins or '?'}, out {outs or '?'}"


def check_label(label) -> str | None:
    """A run label as given (``edgedl bench --label``) or None; refused when it is not one short line.

    Raises:
        OptionError: empty, longer than :data:`MAX_LABEL` characters, or with a line break or other
            control character.

    Example:
        >>> check_label("int8 on the Pi, XNNPACK")
        'int8 on the Pi, XNNPACK'
    """
    from edgedl.errors import OptionError

    if label is None:
        return None
    text = str(label).strip()
    if not text or len(text) > MAX_LABEL or re.search(r"[\x00-\x1f\x7f]", text):
        why = ("is empty" if not text else f"is {len(text)} characters long" if len(text) > MAX_LABEL
               else "holds a line break or control character")
        raise OptionError(f"--label {why}; give one line of at most {MAX_LABEL} characters, "
                          "e.g. --label 'int8 xnnpack'")
    return text


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
        """The result for a terminal: where it ran, latency, throughput, memory, accuracy and estimates
        (for a microcontroller run: board, kernels, instructions or cycles, the estimated latency,
        flash, RAM, arena, accuracy, agreement with the reference kernels and the top operators)."""
        if self.is_mcu:
            return self._mcu_text()
        r = self.data
        t, lat = r["timing"], r["timing"]["latency"]
        b = r["bundle"]
        label = f" [{r['label']}]" if r.get("label") else ""
        lines = [
            f"{b['path']}{label}: {b['backend']} for {b['target']} on {r['device']} ({r['host']['machine']})",
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
            if acc.get("ci95"):  # written by this edgedl: older results print as they did
                line += f" (95% interval {100 * acc['ci95'][0]:.1f}–{100 * acc['ci95'][1]:.1f}%)"
            if "reference_agreement" in acc:
                line += f"; top-1 agreement with the float reference {100 * acc['reference_agreement']:.2f}%"
            lines.append(line)
        for k, v in (r.get("estimates_vs_measured") or {}).items():
            measured = v.get("measured_p50", v.get("measured"))
            lines.append(f"  {k}: estimated {v['estimated']:.1f} vs measured {measured:.1f}"
                         + (f" ({v['note']})" if v.get("note") else ""))
        return "\n".join(lines + self._profile_lines())

    def _profile_lines(self, top: int = 8) -> list[str]:
        """``--profile``: the operators that take the most, or why this engine gives no profile."""
        p = self.data.get("profile")
        if not p:
            return []
        if not p.get("available"):
            return [f"  profile: not available ({p.get('reason', 'no reason given')})"]
        unit = p["unit"]
        key = {"us": "time_us"}.get(unit, unit)
        shown = "; ".join(f"{row.get('layer') or row['op']} ({row['type']}) {100 * row['share']:.1f}%"
                          for row in p["rows"][:top])
        return [f"  profile ({p['source']}; operators add up to {100 * p['coverage']:.0f}% of the measured "
                f"{p['measured_total']:,.1f} {unit}):",
                f"    {shown}" + (f"; {len(p['rows']) - top} more" if len(p["rows"]) > top else "")]

    def _mcu_text(self) -> str:
        r, m, b = self.data, self.mcu, self.data["bundle"]
        host = (r.get("host") or {}).get("machine")
        label = f" [{r['label']}]" if r.get("label") else ""
        lines = [f"{b['path']}{label}: {b['backend']} for {b['target']} on {self.device}"
                 + (f" ({host})" if host else "")]
        board = f"{m.get('board') or '?'}" + (f" ({m['core']})" if m.get("core") else "")
        where = (f"emulated board {board}" if m.get("emulated")
                 else f"board {board} on {self.device.removeprefix('serial://')}" if self.device.startswith("serial:")
                 else f"board {board}")
        lines.append(f"  ran on the {where}; {m.get('kernels') or '?'} kernels")
        samples = (r.get("settings") or {}).get("samples")
        over = f" over {samples} samples" if samples else ""
        if self.instructions is not None:
            span = _range_text(m.get("instructions_range"))
            tick = m.get("instructions_per_tick")
            exact = f"; resolution {_count(tick)} instruction{'s' if tick != 1 else ''}" if tick else ""
            lines.append(f"  instructions per inference {_count(self.instructions)} (median{over}{span}{exact})")
        if self.cycles is not None:
            lines.append(f"  cycles per inference {_count(self.cycles)} (median{over}"
                         f"{_range_text(m.get('cycles_range'))}; the board's SysTick)")
        lines.append(f"  latency: {self.estimate_text()}")
        memory = [f"{label} {_kib(m.get(key))}" for label, key in (("flash", "flash_bytes"), ("RAM", "ram_bytes"))
                  if m.get(key) is not None]
        if memory:
            memory[-1] += " from the ELF"
        arena, used = m.get("arena_bytes", (r.get("memory") or {}).get("arena_bytes")), m.get("arena_used_bytes")
        if arena is not None:
            arena = f"arena {int(arena) / 1024:,.1f} KiB"
            memory.append(f"{arena} ({int(used) / 1024:,.1f} KiB used)" if used is not None else arena)
        if memory:
            lines.append("  memory: " + ", ".join(memory))
        acc = r.get("accuracy") or {}
        if acc.get("accuracy") is not None:
            on = " ".join(str(v) for v in (acc.get("samples", "?"), acc.get("dataset"), acc.get("split")) if v)
            ci = (f", 95% interval {100 * acc['ci95'][0]:.1f}–{100 * acc['ci95'][1]:.1f}%" if acc.get("ci95")
                  else "")
            lines.append(f"  accuracy {100 * acc['accuracy']:.2f}% on {on} samples (computed by the firmware{ci})")
        fid = m.get("fidelity") or {}
        if fid:
            parts = []
            if fid.get("top1_agreement") is not None:
                parts.append(f"top-1 agreement {100 * fid['top1_agreement']:.2f}%")
            if fid.get("max_step_difference") is not None:
                parts.append(f"max step difference {_count(fid['max_step_difference'])}")
            if fid.get("max_abs_difference") is not None:
                parts.append(f"max abs difference {fid['max_abs_difference']:.3g}")
            if fid.get("identical_share") is not None:
                parts.append(f"identical outputs {100 * fid['identical_share']:.2f}%")
            on = f" on {fid['samples']} samples" if fid.get("samples") else ""
            lines.append(f"  fidelity vs {fid.get('reference') or 'the reference kernels'}{on}: "
                         + (", ".join(parts) or "no figures"))
            tflm = fid.get("tflm_interpreter") or {}
            if tflm.get("identical_share") is not None:
                lines.append(f"  vs TFLite Micro's interpreter on this host: identical outputs "
                             f"{100 * tflm['identical_share']:.2f}%, max abs difference {tflm['max_abs_difference']:.3g}")
        ops = list(zip(self.operators, self.operator_shares))[:5]
        if ops:
            unit = self.count_unit
            lines.append(f"  top operators by {unit}: " + "; ".join(
                f"{op.get('operator', '?')}" + (f" x{op['count']}" if op.get("count") is not None else "")
                + (f" {100 * share:.1f}%" if share is not None else "")
                + (f" ({_count(op[unit])})" if op.get(unit) is not None else "") for op, share in ops))
        for k, v in (r.get("estimates_vs_measured") or {}).items():  # e.g. the arena compile estimated vs used
            if isinstance(v, dict) and not k.startswith("latency"):  # no latency here is a measurement
                lines.append(f"  {k}: estimated {_count(v.get('estimated'))} vs measured {_count(v.get('measured'))}"
                             + (f" ({v['note']})" if v.get("note") else ""))
        return "\n".join(lines)

    def estimate_text(self) -> str:
        """The estimated latency of a microcontroller run, with its basis, said to be an estimate:
        ``estimated 27.75 ms at 64 MHz (assumes CPI 1.2; an estimate, not a measurement)``."""
        m = self.mcu
        clock = m.get("clock_hz")
        at = f" at {clock / 1e6:g} MHz" if clock else ""
        if self.instructions is not None and m.get("cycles_per_instruction") is not None:
            basis = f"assumes CPI {m['cycles_per_instruction']:g}"
        elif self.cycles is not None:
            basis = "cycles counted on the board / its clock"
        else:
            basis = m.get("latency_basis") or "basis not stated"
        return f"estimated {self.estimated_latency_ms:.2f} ms{at} ({basis}; an estimate, not a measurement)"

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
    def is_mcu(self) -> bool:
        """A microcontroller run (an ``mcu`` object): counts and an estimated latency, no measured timing."""
        return isinstance(self.data.get("mcu"), dict)

    @property
    def latency(self) -> dict:
        """The measured latency percentiles (µs); empty for a microcontroller run, which measures none."""
        if self.is_mcu:
            return (self.data.get("timing") or {}).get("latency") or {}
        return self.data["timing"]["latency"]

    @property
    def p50(self) -> float | None:
        """The measured median latency (µs); None for a microcontroller run (its latency is an estimate)."""
        return None if self.is_mcu else float(self.latency["p50_us"])

    @property
    def repeat_p50(self) -> list[float]:
        return [float(v) for v in (self.data.get("timing") or {}).get("repeat_p50_us") or []]

    @property
    def spread(self) -> float | None:
        spread = ((self.data.get("timing") or {}).get("spread") or {}).get("relative")
        return None if spread is None else float(spread)

    @property
    def throughput(self) -> float | None:
        value = (self.data.get("timing") or {}).get("throughput_per_s")
        return None if value is None else float(value)

    @property
    def mcu(self) -> dict:
        """The ``mcu`` object of a microcontroller run (empty for a timed result)."""
        return self.data.get("mcu") if self.is_mcu else {}

    @property
    def estimated_latency_ms(self) -> float | None:
        """A microcontroller run's estimated latency (ms) from instructions or cycles at the clock; None otherwise."""
        value = self.mcu.get("estimated_latency_ms")
        return None if value is None else float(value)

    @property
    def instructions(self) -> int | None:
        """Instructions per inference (median) of an emulated microcontroller run; None otherwise."""
        value = self.mcu.get("instructions")
        return None if value is None else int(value)

    @property
    def cycles(self) -> int | None:
        """Cycles per inference (median) counted on a real board; None otherwise."""
        value = self.mcu.get("cycles")
        return None if value is None else int(value)

    @property
    def count_unit(self) -> str:
        """What a microcontroller run counts per inference and per operator: ``instructions`` or ``cycles``."""
        return "instructions" if self.instructions is not None or self.cycles is None else "cycles"

    @property
    def flash_bytes(self) -> int | None:
        """Flash (text + data) of a microcontroller run's firmware, read from its ELF; None otherwise."""
        value = self.mcu.get("flash_bytes")
        return None if value is None else int(value)

    @property
    def ram_bytes(self) -> int | None:
        """RAM (data + bss, arena included) of a microcontroller run's firmware; None otherwise."""
        value = self.mcu.get("ram_bytes")
        return None if value is None else int(value)

    @property
    def operators(self) -> list[dict]:
        """A microcontroller run's counts per operator type, largest first (empty otherwise)."""
        return [op for op in self.mcu.get("operators") or [] if isinstance(op, dict)]

    @property
    def operator_shares(self) -> list[float | None]:
        """Each of :attr:`operators`' share of the run's count: as reported, else from the counts."""
        unit = self.count_unit
        total = sum(float(op.get(unit) or 0) for op in self.operators)
        return [float(op["share"]) if op.get("share") is not None
                else float(op[unit]) / total if op.get(unit) is not None and total > 0 else None
                for op in self.operators]

    @property
    def accuracy(self) -> float | None:
        value = (self.data.get("accuracy") or {}).get("accuracy")
        return None if value is None else float(value)

    @property
    def accuracy_samples(self) -> int | None:
        """How many samples the accuracy was scored on."""
        value = (self.data.get("accuracy") or {}).get("samples")
        return None if _not_a_number("", value) is not None else int(value)

    @property
    def accuracy_ci95(self) -> list[float] | None:
        """The 95% Wilson interval of the accuracy, ``[low, high]`` (computed for older results)."""
        return accuracy_ci95(self.data.get("accuracy") or {}) if self.accuracy is not None else None

    @property
    def given_label(self) -> str | None:
        """The label given with ``edgedl bench --label``, or None."""
        value = self.data.get("label")
        return str(value) if value else None

    @property
    def precision(self) -> dict | None:
        """The bundle's precision (:func:`precision_of`): recorded by bench, else from what the result
        holds of its manifest (older results: None where it does not tell)."""
        value = self.data["bundle"].get("precision")
        return value if isinstance(value, dict) else None

    @property
    def profile(self) -> dict | None:
        """The per-operator profile of ``edgedl bench --profile`` (:mod:`edgedl.bench.profile`), or None."""
        value = self.data.get("profile")
        return value if isinstance(value, dict) else None

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
    mcu = "mcu" in item
    if mcu and not isinstance(item["mcu"], dict):
        return f"mcu is {_kind(item['mcu'])}, not an object"
    required = ([p for p in REQUIRED if p[0] != "timing"] + list(REQUIRED_MCU)) if mcu else REQUIRED
    for path in required:
        node = item
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return f"it lacks {'.'.join(path)}"
            node = node[part]
        if path[0] in ("timing", "mcu"):
            problem = _not_a_number(".".join(path), node)
            if problem:
                return problem
    if mcu:
        counts = [path for path in MCU_COUNTS if item["mcu"].get(path[1]) is not None]
        if not counts:
            return "it lacks mcu.instructions or mcu.cycles (a microcontroller run counts one per inference)"
        problem = next((p for p in (_not_a_number(".".join(path), item["mcu"][path[1]]) for path in counts) if p), None)
        if problem:
            return problem
        problem = _operators_problem(item["mcu"].get("operators"))
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


def _operators_problem(operators) -> str | None:
    """Why ``mcu.operators`` is not a list of per-operator counts, or None (absent or null is fine)."""
    if operators is None:
        return None
    if not isinstance(operators, list):
        return f"mcu.operators is {_kind(operators)}, not a list"
    for j, op in enumerate(operators):
        name = f"mcu.operators[{j}]"
        if not isinstance(op, dict):
            return f"{name} is {_kind(op)}, not an object"
        if not isinstance(op.get("operator"), str):
            return f"{name}.operator is {_kind(op.get('operator'))}, not an operator name"
        for key in OPERATOR_NUMBERS:
            problem = op.get(key) is not None and _not_a_number(f"{name}.{key}", op[key])
            if problem:
                return problem
    return None


def _range_text(span) -> str:
    """``, min 1,479,960, max 1,480,040`` for a [min, max] pair, else nothing."""
    if isinstance(span, list) and len(span) == 2 and all(v is not None for v in span):
        return f", min {_count(span[0])}, max {_count(span[1])}"
    return ""


def _count(value) -> str:
    """A count for people: 1,480,000; 40; 1.5 (``?`` for none)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "?"
    return f"{int(value):,}" if float(value).is_integer() else f"{float(value):,.1f}"


def _kib(n) -> str:
    """Bytes as ``173.1 KiB (177,300 B)``."""
    return "?" if n is None else f"{int(n) / 1024:,.1f} KiB ({int(n):,} B)"


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
