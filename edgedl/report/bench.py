"""Benchmark reports: results side by side, with a regression check.

``edgedl bench -o run.json`` writes one result (schema ``edgedl.bench/1``); a report reads any
number of them and shows

* a table of the runs (label, backend, precision, target, device, latency percentiles, throughput,
  accuracy with its 95% interval, bundle size, peak memory) and the details of each measurement
  (the host's CPU and the engine threads among them);
* accuracy against latency, marker area proportional to bundle size, with the Pareto front (no
  other run is both faster and at least as accurate) marked and listed, and which accuracy
  differences lie within the runs' 95% intervals (no run is called more accurate on those);
* the estimates compile made beside what was measured (and their ratio);
* per run benchmarked with ``--profile``, its slowest operators (with their Keras layer), in HTML
  also as a bar chart; a run whose engine gives no profile says why in one line;
* given the output of ``edgedl optimize ... --quant-report``, the per-layer quantization error
  (the worst layers, and in HTML a chart of every layer's SNR);
* each run's latency distribution (min, p50, p90, p99, max and the median of every repeat);
* against a baseline, per bundle, target and device: the baseline p50, the new p50, the change and
  a verdict (a slowdown beyond the threshold is a regression);
* microcontroller runs (results with an ``mcu`` object: firmware on an emulated or real Cortex-M
  board) in a table of their own (board, kernels, instructions or cycles per inference, the
  estimated latency marked as an estimate, flash, RAM, arena, accuracy, agreement with the
  reference kernels) and a table (and, in HTML, a plot) of their instructions per operator type.
  Their latency is an estimate, never a measurement: they stay out of the latency tables and plots,
  the Pareto front and the regression check.

HTML reports are one self-contained file (plots inline as PNG, drawn by matplotlib's Agg renderer);
Markdown reports hold the same tables without the plots.

Example:
    >>> report = build_report(["float.json", "int8.json"], baseline=["main.json"])  # doctest: +SKIP
    >>> report.save("report.html")                                                # doctest: +SKIP
    >>> [c.label for c in report.regressions]                                     # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgedl import __version__, _io
from edgedl.bench.result import SCHEMA, BenchResult, precision_text, read_results  # noqa: F401 - SCHEMA: edgedl.report's too
from edgedl.errors import InputFileError, OptionError
from edgedl.report.format import _estimate, figure_html, html_table, md_table, mib, num, percent
from edgedl.report.optimize import (
    BUNDLE_QUANT_FILE, FILES, QUANT_HOW_TO_MAKE, QuantError, is_optimize_output, load_quant_error,
)
from edgedl.report.plots import MARKERS, new_figure, png_bytes

DEFAULT_THRESHOLD = 0.10
SUFFIXES = {".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown"}
TOP_OPERATORS = 15  # rows (and bars) of each run's per-operator profile
PROFILE_UNITS = {"us": "µs", "instructions": "instructions", "cycles": "cycles"}


@dataclass
class Run(BenchResult):
    """One benchmark result, the file it came from and its label in the report."""

    source: str
    label: str = ""


@dataclass
class Comparison:
    """One bundle, target and device: its p50 in the baseline and now, and the verdict."""

    name: str
    target: str
    device: str
    baseline_p50: float | None
    p50: float | None
    baseline_runs: int
    runs: int
    threshold: float

    @property
    def label(self) -> str:
        return f"{self.name} ({self.target}, {self.device})"

    @property
    def change(self) -> float | None:
        """Relative change of the p50: +0.25 is 25 % slower than the baseline."""
        if self.baseline_p50 is None or self.p50 is None or self.baseline_p50 <= 0:
            return None
        return self.p50 / self.baseline_p50 - 1.0

    @property
    def verdict(self) -> str:
        """``regression``, ``faster``, ``unchanged``, ``new`` (no baseline) or ``not run`` (baseline only)."""
        if self.baseline_p50 is None:
            return "new"
        if self.p50 is None:
            return "not run"
        change = self.change
        if change is None:
            return "unchanged"
        if change > self.threshold:
            return "regression"
        if change < -self.threshold:
            return "faster"
        return "unchanged"

    def to_dict(self) -> dict:
        return {"bundle": self.name, "target": self.target, "device": self.device,
                "baseline_p50_us": self.baseline_p50, "p50_us": self.p50, "change": self.change,
                "verdict": self.verdict, "baseline_runs": self.baseline_runs, "runs": self.runs}


def load_results(paths) -> list[Run]:
    """Read benchmark results: each file holds one result or a JSON list of results.

    Raises:
        InputFileError: a file is missing, not JSON, or not a benchmark result (the file is named, and
            the item where a list holds several).
    """
    return [Run(result.data, str(path)) for path in paths for result in read_results(path)]


def _label(runs: list[Run]) -> None:
    """Give every run a short, unique label: its own (``edgedl bench --label``), else the bundle name,
    with target and device where needed; labels still shared get ``#1``, ``#2``, ..."""
    counts = Counter(r.name for r in runs if not r.given_label)
    labels = [r.given_label or (r.name if counts[r.name] == 1 else f"{r.name} ({r.target}, {r.device})")
              for r in runs]
    seen: Counter = Counter()
    totals = Counter(labels)
    for run, label in zip(runs, labels):
        seen[label] += 1
        run.label = label if totals[label] == 1 else f"{label} #{seen[label]}"


def compare(runs: list[Run], baseline: list[Run], threshold: float = DEFAULT_THRESHOLD) -> list[Comparison]:
    """Match runs to baseline runs by bundle name, target and device; compare their p50 latency.

    Several runs with the same key count as one, with the median of their p50s. Microcontroller runs
    (no measured latency) are left out on both sides.
    """
    new, old = _group(runs), _group(baseline)
    out = []
    for key in list(new) + [k for k in old if k not in new]:
        p50s, base = new.get(key, []), old.get(key, [])
        out.append(Comparison(*key, baseline_p50=statistics.median(base) if base else None,
                              p50=statistics.median(p50s) if p50s else None, baseline_runs=len(base),
                              runs=len(p50s), threshold=threshold))
    return out


def _group(runs: list[Run]) -> dict:
    groups: dict = {}
    for r in runs:
        if not r.is_mcu:
            groups.setdefault(r.key, []).append(r.p50)
    return groups


def pareto_front(runs: list[Run]) -> list[Run]:
    """The runs with an accuracy that no other run beats on both counts (at least as accurate and at
    least as fast, better in one), fastest first. Microcontroller runs (an estimated latency) are not on it."""
    scored = [r for r in runs if r.accuracy is not None and not r.is_mcu]
    front = [r for r in scored
             if not any(o.accuracy >= r.accuracy and o.p50 <= r.p50 and (o.accuracy > r.accuracy or o.p50 < r.p50)
                        for o in scored)]
    return sorted(front, key=lambda r: (r.p50, -r.accuracy))


def within_interval(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of timed runs whose accuracies differ but whose 95% intervals overlap: neither is more
    accurate than the other on these samples (less accurate run first)."""
    scored = [r for r in runs if r.accuracy is not None and r.accuracy_ci95 and not r.is_mcu]
    pairs = []
    for i, a in enumerate(scored):
        for b in scored[i + 1:]:
            if a.accuracy != b.accuracy and a.accuracy_ci95[0] <= b.accuracy_ci95[1] \
                    and b.accuracy_ci95[0] <= a.accuracy_ci95[1]:
                pairs.append((a, b) if a.accuracy < b.accuracy else (b, a))
    return pairs


def accuracy_text(r: BenchResult) -> str:
    """``98.2% (97.0–99.0, n=500)``: the accuracy, its 95% Wilson interval and the samples scored."""
    if r.accuracy is None:
        return "–"
    ci, n = r.accuracy_ci95, r.accuracy_samples
    if not ci:
        return percent(r.accuracy)
    return f"{percent(r.accuracy)} ({100 * ci[0]:.1f}–{100 * ci[1]:.1f}" + (f", n={n})" if n else ")")


@dataclass
class Report:
    """Runs, an optional baseline, their comparison, and the renderings (HTML, Markdown)."""

    runs: list[Run]
    baseline: list[Run] = field(default_factory=list)
    threshold: float = DEFAULT_THRESHOLD
    comparisons: list[Comparison] = field(default_factory=list)
    quant_errors: list[QuantError] = field(default_factory=list)  # outputs of edgedl optimize --quant-report

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict == "regression"]

    @property
    def pareto(self) -> list[Run]:
        return pareto_front(self.runs)

    @property
    def timed(self) -> list[Run]:
        """The runs with measured latencies (everything but microcontroller runs)."""
        return [r for r in self.runs if not r.is_mcu]

    @property
    def ties(self) -> list[tuple[Run, Run]]:
        """Pairs of runs whose accuracy difference lies within their 95% intervals (:func:`within_interval`)."""
        return within_interval(self.runs)

    @property
    def profiled(self) -> list[Run]:
        """The runs with a per-operator profile record (``edgedl bench --profile``), available or not."""
        return [r for r in self.runs if r.profile]

    @property
    def mcu_runs(self) -> list[Run]:
        """The microcontroller runs: counts and an estimated latency, reported apart from the timed runs."""
        return [r for r in self.runs if r.is_mcu]

    def summary(self) -> dict:
        """JSON-able: the timed runs' key figures, the Pareto front, the regression check and, apart,
        the microcontroller runs (``mcu_runs``: their latency is ``estimated_latency_ms``, an estimate)."""
        return {
            "runs": [{"label": r.label, "bundle": r.name, "backend": r.backend, "target": r.target,
                      "device": r.device, "precision": r.precision, "p50_us": r.p50, "accuracy": r.accuracy,
                      "accuracy_ci95": r.accuracy_ci95, "accuracy_samples": r.accuracy_samples,
                      "size_bytes": r.size_bytes, "cpu_model": (r.data.get("host") or {}).get("cpu_model"),
                      "threads": (r.data.get("settings") or {}).get("threads"), "source": r.source}
                     for r in self.timed],
            "pareto": [r.label for r in self.pareto],
            "accuracy_within_interval": [[a.label, b.label] for a, b in self.ties],
            "profiles": [_profile_summary(r) for r in self.profiled],
            "quant_errors": [{"label": q.label, "mode": q.mode, "samples": q.samples, "source": q.source,
                              "worst": q.worst()} for q in self.quant_errors],
            "threshold": self.threshold,
            "comparisons": [c.to_dict() for c in self.comparisons] if self.baseline else [],
            "regressions": [c.label for c in self.regressions],
            "mcu_runs": [_mcu_summary(r) for r in self.mcu_runs],
        }

    def save(self, path) -> Path:
        """Write the report atomically, as HTML or Markdown by the suffix (.html/.htm, .md/.markdown)."""
        path = Path(path)
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise OptionError(f"cannot tell the report format from '{path.name}'; end the file name in "
                              f"{', '.join(SUFFIXES)}")
        return _io.write_text(path, self.to_html() if kind == "html" else self.to_markdown())

    # ----- tables, shared by both renderings -----

    def run_rows(self) -> tuple[list[str], list[list[str]]]:
        head = ["run", "backend", "target", "device", "precision", "p50 (µs)", "p90 (µs)", "p99 (µs)",
                "throughput (/s)", "accuracy (95% interval, n)", "size (KiB)", "peak memory"]
        rows = []
        for r in self.timed:
            lat = r.latency
            machine = (r.data.get("host") or {}).get("machine")
            memory = mib(r.peak_memory_bytes) + " RSS" if r.peak_memory_bytes else "–"
            if r.arena_bytes:
                memory += f", arena {r.arena_bytes / 1024:.1f} KiB"
            rows.append([r.label, r.backend, r.target, r.device + (f" ({machine})" if machine else ""),
                         precision_text(r.precision),
                         num(lat["p50_us"]), num(lat["p90_us"]), num(lat["p99_us"]),
                         num(r.throughput, 0), accuracy_text(r),
                         num(r.size_bytes / 1024) if r.size_bytes is not None else "–", memory])
        return head, rows

    def detail_rows(self) -> tuple[list[str], list[list[str]]]:
        head = ["run", "runs × repeats", "repeat medians (µs)", "spread", "load (ms)", "first inference (µs)",
                "mean ± std (µs)", "CPU (cores)", "threads", "precision (how known)", "accuracy on",
                "agreement with reference", "created", "file"]
        rows = []
        for r in self.timed:
            s, t, acc = r.data.get("settings") or {}, r.data["timing"], r.data.get("accuracy") or {}
            lat = r.latency
            on = f"{acc.get('samples', '?')} {acc.get('dataset', '')}".strip() if acc else "–"
            host = r.data.get("host") or {}
            cpu = host.get("cpu_model") or host.get("machine") or "–"
            if host.get("cpus"):
                cpu += f" ({host['cpus']})"
            prec = r.precision
            rows.append([
                r.label, f"{s.get('runs', '?')} × {s.get('repeats', '?')}",
                ", ".join(num(v) for v in r.repeat_p50) or "–",
                percent(r.spread), num(t["load_s"] * 1000) if "load_s" in t else "–",
                num(t.get("first_inference_us")),
                f"{num(lat.get('mean_us'))} ± {num(lat.get('std_us'))}" if "mean_us" in lat else "–",
                cpu, str(s.get("threads", "–")),
                f"{precision_text(prec)} ({prec.get('basis')})" if prec and prec.get("basis") else precision_text(prec),
                on, percent(acc.get("reference_agreement")), str(r.data.get("created", "–")),
                Path(r.source).name])
        return head, rows

    def comparison_rows(self) -> tuple[list[str], list[list[str]]]:
        head = ["bundle", "target", "device", "baseline p50 (µs)", "new p50 (µs)", "change", "verdict"]
        rows = [[c.name, c.target, c.device, num(c.baseline_p50), num(c.p50),
                 f"{100 * c.change:+.1f}%" if c.change is not None else "–", c.verdict] for c in self.comparisons]
        return head, rows

    def estimate_rows(self) -> tuple[list[str], list[list[str]]]:
        """Each estimate beside its measurement (``estimates_vs_measured``) with measured / estimated;
        then the compile estimates (figures) this run measured nothing of, in their own units."""
        head = ["run", "quantity", "estimated", "measured", "note", "measured / estimated"]
        rows = []
        for r in self.runs:  # a microcontroller run's latency is an estimate: never beside a measured one
            paired = r.data.get("estimates_vs_measured") or {}
            for quantity, v in paired.items():
                if not isinstance(v, dict) or (r.is_mcu and quantity.startswith("latency")):
                    continue
                est, meas = v.get("estimated"), v.get("measured_p50", v.get("measured"))
                ratio = (f"{meas / est:.2f}×" if isinstance(est, (int, float)) and isinstance(meas, (int, float))
                         and est > 0 else "–")
                rows.append([r.label, quantity, num(est), num(meas), str(v.get("note") or ""), ratio])
            covered = {"inference_time_ms"} if "latency_us" in paired else set()
            covered |= {"arena_bytes", "tflm"} if "arena_bytes" in paired else set()
            for key, v in (r.data.get("estimates") or {}).items():  # figures only: breakdowns stay in the manifest
                if (key in covered or isinstance(v, bool) or not isinstance(v, (int, float))
                        or (r.is_mcu and key == "inference_time_ms")):
                    continue
                rows.append([r.label, key, _estimate(key, v), "–", "not measured by this run", "–"])
        return head, rows

    def mcu_rows(self) -> tuple[list[str], list[list[str]]]:
        head = ["bundle", "target", "board", "kernels", "instructions per inference",
                "estimated latency (ms, estimate)", "flash (KiB)", "RAM (KiB)", "arena used (KiB)", "accuracy",
                "top-1 agreement with reference kernels", "precision", "accuracy (95% interval, n)"]
        rows = []
        for r in self.mcu_runs:
            m = r.mcu
            board = str(m.get("board") or "?") + (" (emulated)" if m.get("emulated") else f" ({r.device})")
            count = _count(r.instructions) if r.instructions is not None else f"{_count(r.cycles)} cycles"
            arena, used = m.get("arena_bytes", r.arena_bytes), m.get("arena_used_bytes")
            arena_text = (f"{num(used / 1024)} of {num(arena / 1024)}" if used is not None and arena is not None
                          else num(arena / 1024) if arena is not None else "–")
            rows.append([r.label, r.target, board, str(m.get("kernels") or "–"), count,
                         f"≈ {num(r.estimated_latency_ms, 2)}", _kib(r.flash_bytes), _kib(r.ram_bytes), arena_text,
                         percent(r.accuracy), percent((m.get("fidelity") or {}).get("top1_agreement")),
                         precision_text(r.precision), accuracy_text(r)])
        return head, rows

    def mcu_basis(self) -> list[str]:
        """How each microcontroller run's latency was estimated (what turns counts into milliseconds)."""
        return [f"{r.label}: ≈ {num(r.estimated_latency_ms, 2)} ms, {r.mcu['latency_basis']}"
                if r.mcu.get("latency_basis") else f"{r.label}: {r.estimate_text()}" for r in self.mcu_runs]

    def mcu_operator_rows(self) -> tuple[list[str], list[list[str]]]:
        head = ["run", "operator", "count", "instructions per inference (cycles on a board)", "share"]
        rows = []
        for r in self.mcu_runs:
            unit = r.count_unit
            for op, share in zip(r.operators, r.operator_shares):
                rows.append([r.label, str(op.get("operator")), _count(op.get("count")),
                             _count(op.get(unit)) + ("" if unit == "instructions" else " cycles"), percent(share)])
        return head, rows

    def profile_rows(self) -> tuple[list[str], list[list[str]]]:
        """The slowest operators of each profiled run (at most :data:`TOP_OPERATORS` each)."""
        head = ["run", "operator", "Keras layer", "type", "time or count", "share", "calls"]
        rows = []
        for r in self.profiled:
            p = r.profile
            if not p.get("available"):
                continue
            unit = p.get("unit", "us")
            key = {"us": "time_us"}.get(unit, unit)
            for row in (p.get("rows") or [])[:TOP_OPERATORS]:
                value = row.get(key)
                rows.append([r.label, str(row.get("op", "?")), str(row.get("layer") or "–"), str(row.get("type", "?")),
                             "–" if value is None else (f"{num(value, 1)} µs" if unit == "us"
                                                        else f"{_count(value)} {PROFILE_UNITS.get(unit, unit)}"),
                             percent(row.get("share")), _count(row.get("calls"))])
        return head, rows

    def profile_notes(self) -> list[str]:
        """One line per profiled run: what the operators add up to, or why there is no profile."""
        lines = []
        for r in self.profiled:
            p = r.profile
            if not p.get("available"):
                lines.append(f"{r.label}: no per-operator profile ({p.get('reason') or 'no reason given'}).")
                continue
            unit = PROFILE_UNITS.get(p.get("unit"), p.get("unit"))
            n = len(p.get("rows") or [])
            shown = f"the {TOP_OPERATORS} slowest of {n} operators shown" if n > TOP_OPERATORS else f"{n} operators"
            covered = (f"; they add up to {100 * p['coverage']:.0f}% of the measured {num(p.get('measured_total'))} "
                       f"{unit} per inference" if p.get("coverage") is not None else "")
            lines.append(f"{r.label}: {shown}, from {p.get('source') or p.get('backend') or '?'}{covered}.")
        return lines

    def quant_rows(self, q: QuantError) -> tuple[list[str], list[list[str]]]:
        """The worst layers of one optimize output: layer, op, RMSE relative to the range, cosine, SNR."""
        head = ["layer", "op", "RMSE / range", "cosine", "SNR (dB)", "tensor"]
        rows = [[str(row.get("layer") or "?"), str(row.get("op") or "?"), _fmt(row.get("rmse_rel"), ".2e"),
                 _fmt(row.get("cosine"), ".5f"), _fmt(row.get("snr_db"), ".1f"), str(row.get("tensor"))[:60]]
                for row in q.worst()]
        return head, rows

    def quant_intro(self, q: QuantError) -> str:
        samples = f" on {q.samples} samples" if q.samples else ""
        return (f"{q.label}: the {q.mode} model against the float32 one{samples}, the {len(q.worst())} worst of "
                f"{len(q.layers)} layers (lowest SNR first; higher SNR and cosine are better). From "
                f"{Path(q.source).name}" + (f": {q.method}." if q.method else "."))

    def tie_notes(self) -> list[str]:
        """The accuracy differences within the runs' 95% intervals, said as no difference."""
        return [f"{b.label} at {accuracy_text(b)} vs {a.label} at {accuracy_text(a)}: "
                f"{100 * (b.accuracy - a.accuracy):.1f} points apart, within both 95% intervals; neither is more "
                "accurate on these samples" for a, b in self.ties]

    def _sources(self) -> str:
        files = sorted({Path(r.source).name for r in self.runs})
        text = f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}" + (f" from {', '.join(files)}" if files else "")
        if self.quant_errors:
            outputs = ", ".join(f"{Path(q.source).parent.name}/{Path(q.source).name}" for q in self.quant_errors)
            text += f"; per-layer quantization error from {outputs}"
        if self.baseline:
            base = sorted({Path(r.source).name for r in self.baseline})
            plural = "s" if len(self.baseline) != 1 else ""
            text += f"; baseline: {len(self.baseline)} run{plural} from {', '.join(base)}"
        return text

    def no_runs_note(self) -> str:
        """Why a report of optimize outputs (or bundles) alone has no runs, Pareto front or regression
        check, and what makes one; '' where benchmark results were given.

        Example:
            >>> build_report(["optimized/"]).no_runs_note()  # doctest: +SKIP
            'No benchmark results given, so no runs, Pareto front or regression check: no compiled bundles in ...'
        """
        if self.runs:
            return ""
        folders = [Path(q.source).parent for q in self.quant_errors]
        outputs = [f for f, q in zip(folders, self.quant_errors) if Path(q.source).name != BUNDLE_QUANT_FILE]
        bundles = [f for f, q in zip(folders, self.quant_errors) if Path(q.source).name == BUNDLE_QUANT_FILE]
        why = []
        if outputs:
            model = outputs[0] / FILES["tflite"]
            bundle = f"{outputs[0].name}.edgedl"
            why.append(f"no compiled bundles in {', '.join(map(str, outputs))}: run `edgedl compile "
                       f"{model if model.is_file() else outputs[0] / FILES['model']} --target TARGET -o {bundle}` "
                       f"and `edgedl bench {bundle} -o run.json`, then report run.json with it")
        if bundles:
            why.append(f"{', '.join(map(str, bundles))} {'is' if len(bundles) == 1 else 'are'} compiled but not "
                       f"benchmarked: run `edgedl bench {bundles[0]} -o run.json`, then report run.json with it")
        missing = "no runs or Pareto front" if self.baseline else "no runs, Pareto front or regression check"
        return f"No benchmark results given, so {missing}: " + "; ".join(why) + "."

    def _no_pareto(self) -> str:
        if self.mcu_runs:
            return ("No timed run has an accuracy (microcontroller runs are not on the front: their latency is an "
                    "estimate).")
        return "No run has an accuracy."

    def _pareto_items(self) -> list[str]:
        ties = self.ties
        items = []
        for r in self.pareto:
            item = (f"{r.label}: {accuracy_text(r)} at p50 {num(r.p50)} µs, {num((r.size_bytes or 0) / 1024)} KiB "
                    f"({r.backend}, {r.target}, {r.device})")
            # on the front only by an accuracy lead within the intervals over a run at least as fast
            behind = [a.label for a, b in ties if b is r and a.p50 <= r.p50]
            if behind:
                item += f"; its accuracy lead over {', '.join(behind)} is within the 95% intervals"
            items.append(item)
        return items

    def regression_summary(self) -> str:
        if not self.baseline:
            return "No baseline given (use --baseline BASE.json)."
        regs = self.regressions
        matched = sum(1 for c in self.comparisons if c.change is not None)
        if regs:
            return (f"{len(regs)} regression{'s' if len(regs) != 1 else ''} of {matched} matched: p50 slower than the "
                    f"baseline by more than {100 * self.threshold:g}% ({', '.join(c.label for c in regs)}).")
        return (f"No regression: {matched} matched, none slower than the baseline by more than "
                f"{100 * self.threshold:g}%.")

    # ----- Markdown -----

    def to_markdown(self) -> str:
        """The report as Markdown: the tables and the Pareto front (the plots are in the HTML report)."""
        out = ["# Benchmark report", "", self._sources() + f". Written by edgedl {__version__}.", ""]
        if not self.runs:  # optimize outputs (or bundles) alone: nothing to time, compare or put on a front
            out += [self.no_runs_note()]
        else:
            out += ["## Runs", ""]
            out += md_table(*self.run_rows()) if self.timed else [_NO_TIMED]
            out += ["", "## Pareto front: accuracy vs p50 latency", ""]
            items = self._pareto_items()
            out += [f"{i}. {item}" for i, item in enumerate(items, 1)] or [self._no_pareto()]
            ties = self.tie_notes()
            if ties:
                out += ["", f"Accuracy differences within the interval ({_TIE_NOTE}):", ""] + [f"* {t}" for t in ties]
        if self.runs or self.baseline:
            out += ["", "## Regression check", "", self.regression_summary()]
        if self.baseline:
            out += ["", f"Threshold: a p50 more than {100 * self.threshold:g}% above the baseline's is a regression.",
                    ""] + md_table(*self.comparison_rows())
        if self.timed:
            out += ["", "## Measurement details", ""] + md_table(*self.detail_rows())
        head, rows = self.estimate_rows()
        if rows:
            out += ["", "## Estimates vs measurements", ""] + md_table(head, rows)
        if self.profiled:
            out += ["", "## Per-operator profile", ""] + [f"* {line}" for line in self.profile_notes()]
            head, rows = self.profile_rows()
            if rows:
                out += [""] + md_table(head, rows)
        for q in self.quant_errors:
            out += ["", f"## Per-layer quantization error: {q.label}", "", self.quant_intro(q), ""]
            out += md_table(*self.quant_rows(q)) if q.layers else ["No layer of the integer model matched the float one."]
        if self.mcu_runs:
            out += ["", "## Microcontroller runs", "", _MCU_NOTE, ""] + md_table(*self.mcu_rows())
            out += ["", "How the latencies were estimated:", ""] + [f"* {line}" for line in self.mcu_basis()]
            head, rows = self.mcu_operator_rows()
            if rows:
                out += ["", "### Instructions per operator type", ""] + md_table(head, rows)
        plots = ("Plots (accuracy vs latency vs size, latency distributions, operator shares, per-layer SNR) are"
                 if self.runs else "The per-layer SNR plots are")
        out += ["", f"{plots} in the HTML report: `edgedl report ... -o report.html`.", ""]
        return "\n".join(out)

    # ----- HTML -----

    def to_html(self) -> str:
        """The report as one self-contained HTML page; plots are inline PNGs drawn with matplotlib (Agg)."""
        from edgedl import _lazy

        _lazy.require("matplotlib")
        e = html.escape
        parts = [_HTML_HEAD, "<h1>Benchmark report</h1>",
                 f'<p class="meta">{e(self._sources())}. Written by edgedl {e(__version__)}.</p>']

        if not self.runs:  # optimize outputs (or bundles) alone: nothing to time, compare or put on a front
            parts.append(f'<p id="no-runs">{e(self.no_runs_note())}</p>')
        else:
            parts += self._runs_html()

        if self.runs or self.baseline:
            parts += self._regression_html()
        parts += self._details_html()
        parts.append("</body>\n</html>\n")
        return "\n".join(parts)

    def _runs_html(self) -> list[str]:
        """The runs table, the accuracy/latency/size plot with the Pareto front, and the latency plot."""
        e = html.escape
        parts = []
        head, rows = self.run_rows()
        parts += ['<section id="runs"><h2>Runs</h2>',
                  html_table(head, rows, "runs-table", "run", [r.label for r in self.timed],
                              numeric=range(5, 11)) if self.timed else f"<p>{e(_NO_TIMED)}</p>", "</section>"]

        parts.append('<section id="tradeoff"><h2>Accuracy, latency and size</h2>')
        scored = [r for r in self.timed if r.accuracy is not None]
        if scored:
            parts.append(figure_html(plot_tradeoff(self.timed, self.pareto), "plot-tradeoff",
                                 "Accuracy against p50 latency; marker area is proportional to bundle size, colour is "
                                 "the target, shape the backend. The dashed line joins the Pareto front (ringed).",
                                 "accuracy against p50 latency, marker size by bundle size"))
        unscored = [r.label for r in self.timed if r.accuracy is None]
        if unscored:
            parts.append(f"<p>Not plotted (no accuracy measured): {e(', '.join(unscored))}.</p>")
        parts.append("<h3>Pareto front: no other run is both faster and at least as accurate</h3>")
        items = self._pareto_items()
        parts.append('<ol id="pareto">' + "".join(f'<li class="pareto" data-run="{e(r.label)}">{e(item)}</li>'
                                                   for r, item in zip(self.pareto, items)) + "</ol>"
                     if items else f"<p>{e(self._no_pareto())}</p>")
        ties = self.tie_notes()
        if ties:
            parts.append(f'<p class="ties">Accuracy differences within the interval ({e(_TIE_NOTE)}):</p>'
                         '<ul id="accuracy-ties">' + "".join(f'<li class="tie">{e(t)}</li>' for t in ties) + "</ul>")
        parts.append("</section>")

        if self.timed:
            parts += ['<section id="latency"><h2>Latency distributions</h2>',
                      figure_html(plot_latency(self.timed), "plot-latency",
                              "Per run: whiskers from min to max, box from p50 to p90, a bar at p99, dots at the "
                              "median of each repeat. Log scale.", "latency distribution of each run"), "</section>"]
        return parts

    def _regression_html(self) -> list[str]:
        """The regression check: its verdict and, with a baseline, the comparison table and plot."""
        e = html.escape
        parts = ['<section id="regression"><h2>Regression check</h2>']
        parts.append(f'<p class="verdict{" bad" if self.regressions else ""}">{e(self.regression_summary())}</p>')
        if self.baseline:
            head, rows = self.comparison_rows()
            parts.append(html_table(head, rows, "regression-table", "comparison", [c.label for c in self.comparisons],
                                     numeric=range(3, 6),
                                     row_class=[c.verdict.replace(" ", "-") for c in self.comparisons]))
            if any(c.change is not None for c in self.comparisons):
                parts.append(figure_html(plot_changes(self.comparisons, self.threshold), "plot-regression",
                                     f"Change of the p50 latency against the baseline; dashed lines at "
                                     f"±{100 * self.threshold:g}%.", "p50 change against the baseline"))
        parts.append("</section>")
        return parts

    def _details_html(self) -> list[str]:
        """The sections after the check: measurement details, estimates, profiles, per-layer
        quantization error and the microcontroller runs (each only where there is something to show)."""
        e = html.escape
        parts = []
        head, rows = self.detail_rows()
        if self.timed:
            parts += ['<section id="details"><h2>Measurement details</h2>',
                      html_table(head, rows, "details-table", "detail", [r.label for r in self.timed],
                                 numeric=range(4, 7)), "</section>"]
        head, rows = self.estimate_rows()
        if rows:
            parts += ['<section id="estimates"><h2>Estimates vs measurements</h2>',
                      html_table(head, rows, "estimates-table", "estimate", [r[0] for r in rows], numeric=(2, 3, 5)),
                      "</section>"]
        if self.profiled:
            parts += ['<section id="profile"><h2>Per-operator profile</h2>',
                      '<ul id="profile-notes">' + "".join(f"<li>{e(line)}</li>" for line in self.profile_notes())
                      + "</ul>"]
            head, rows = self.profile_rows()
            if rows:
                parts.append(html_table(head, rows, "profile-table", "profile-op", [row[0] for row in rows],
                                        numeric=range(4, 7)))
            for k, r in enumerate(x for x in self.profiled if x.profile.get("available") and x.profile.get("rows")):
                source = r.profile.get("source") or r.profile.get("backend") or "?"
                parts.append(figure_html(plot_profile(r), f"plot-profile-{k + 1}",
                                         f"{r.label}: each operator's share of the operators' total, slowest first (at "
                                         f"most {TOP_OPERATORS}; Keras layer and operator type). Measured by {source}.",
                                         f"per-operator share of {r.label}"))
            parts.append("</section>")
        for k, q in enumerate(self.quant_errors):
            head, rows = self.quant_rows(q)
            parts += [f'<section id="quant-error-{k + 1}" class="quant-error"><h2>Per-layer quantization error: '
                      f"{e(q.label)}</h2>", f"<p>{e(self.quant_intro(q))}</p>"]
            if rows:
                from edgedl.optimize.quant_report import plot_snr

                parts += [html_table(head, rows, f"quant-table-{k + 1}", "quant-layer", [row[0] for row in rows],
                                     numeric=range(2, 5)),
                          figure_html(plot_snr(q.worst(2 * TOP_OPERATORS)), f"plot-quant-{k + 1}",
                                      "SNR of each layer's activations, float32 against the quantized model (worst on "
                                      "top, the three worst in red; higher is better).",
                                      f"per-layer SNR of {q.label}")]
            else:
                parts.append("<p>No layer of the integer model matched the float one.</p>")
            parts.append("</section>")
        if self.mcu_runs:
            head, rows = self.mcu_rows()
            parts += ['<section id="mcu"><h2>Microcontroller runs</h2>', f"<p>{e(_MCU_NOTE)}</p>",
                      html_table(head, rows, "mcu-table", "mcu-run", [r.label for r in self.mcu_runs],
                                 numeric=range(4, 11)),
                      "<p>How the latencies were estimated:</p><ul>"
                      + "".join(f"<li>{e(line)}</li>" for line in self.mcu_basis()) + "</ul>"]
            head, rows = self.mcu_operator_rows()
            if rows:
                parts += ["<h3>Instructions per operator type</h3>",
                          html_table(head, rows, "mcu-operators-table", "mcu-operator",
                                     [f"{r[0]}: {r[1]}" for r in rows], numeric=range(2, 5)),
                          figure_html(plot_mcu_operators(self.mcu_runs), "plot-mcu-operators",
                                      "Share of each run's instructions (cycles on a board) per operator type, from "
                                      "the profiler in the firmware.", "instructions per operator type of each run")]
            parts.append("</section>")
        return parts


_TIE_NOTE = ("their 95% Wilson intervals overlap, so the report does not call one more accurate; score more "
             "samples with `edgedl bench --limit` to tell them apart")
_NO_TIMED = "No timed runs: the microcontroller runs below have counted instructions and an estimated latency."
_MCU_NOTE = ("Firmware runs on Cortex-M boards (emulated, or real on a serial port). Their latencies are estimates "
             "from counted instructions (or a board's cycles) at the target's clock, not measurements, and are kept "
             "out of the latency tables, the Pareto front and the regression check.")


def _count(value) -> str:
    if value is None:
        return "–"
    return f"{int(value):,}" if float(value).is_integer() else num(value)


def _kib(n) -> str:
    return "–" if n is None else num(n / 1024)


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _profile_summary(r: Run) -> dict:
    """A profiled run's top operators (or why it has none) for ``edgedl report --json``."""
    p = r.profile
    if not p.get("available"):
        return {"label": r.label, "available": False, "reason": p.get("reason")}
    return {"label": r.label, "available": True, "unit": p.get("unit"), "coverage": p.get("coverage"),
            "source": p.get("source"), "rows": (p.get("rows") or [])[:TOP_OPERATORS]}


def _mcu_summary(r: Run) -> dict:
    """A microcontroller run's key figures for ``edgedl report --json``."""
    m = r.mcu
    fid = m.get("fidelity") or {}
    return {"label": r.label, "bundle": r.name, "backend": r.backend, "target": r.target, "device": r.device,
            "board": m.get("board"), "core": m.get("core"), "emulated": m.get("emulated"), "kernels": m.get("kernels"),
            "instructions": r.instructions, "cycles": r.cycles, "estimated_latency_ms": r.estimated_latency_ms,
            "latency_is_estimate": True, "latency_basis": m.get("latency_basis"), "clock_hz": m.get("clock_hz"),
            "cycles_per_instruction": m.get("cycles_per_instruction"), "flash_bytes": r.flash_bytes,
            "ram_bytes": r.ram_bytes, "arena_bytes": m.get("arena_bytes", r.arena_bytes),
            "arena_used_bytes": m.get("arena_used_bytes"), "accuracy": r.accuracy,
            "top1_agreement": fid.get("top1_agreement"), "max_step_difference": fid.get("max_step_difference"),
            "operators": [dict(op, share=share) for op, share in zip(r.operators, r.operator_shares)],
            "size_bytes": r.size_bytes, "source": r.source}


def build_report(paths, baseline=(), threshold: float = DEFAULT_THRESHOLD) -> Report:
    """Read benchmark results (and a baseline) into a :class:`Report`.

    Args:
        paths: result files of ``edgedl bench -o`` (one result each, or a JSON list of results); and
            any number of ``edgedl optimize ... --quant-report`` outputs (the folder or its
            report.json) or bundles compiled with ``--quant-report``, whose per-layer quantization
            error the report shows (:func:`edgedl.report.optimize.load_quant_error`).
        baseline: result files to compare against, matched by bundle name, target and device.
        threshold: relative p50 slowdown that counts as a regression (0.10: 10 % slower).

    Returns:
        The report; ``save()`` writes it, ``regressions`` lists the slowdowns.

    Raises:
        InputFileError: a file is neither a benchmark result nor a per-layer error (named, with what
            is expected). OptionError: a bad threshold, no files.

    Example:
        >>> build_report(["run.json", "optimized/"]).save("report.html")  # doctest: +SKIP
    """
    if not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or threshold <= 0:
        raise OptionError(f"--threshold must be a positive fraction (0.10 for 10%), got {threshold}")
    paths, baseline = list(paths), list(baseline or ())
    if not paths:
        raise OptionError("no benchmark results given; pass one or more files written by `edgedl bench -o run.json`")
    quant = [load_quant_error(p) for p in paths if is_optimize_output(p)]
    try:
        runs = load_results([p for p in paths if not is_optimize_output(p)])
    except InputFileError as e:  # say the other kind of file a report reads too
        also = QUANT_HOW_TO_MAKE.removeprefix("expected ")
        raise InputFileError(e.path, f"{str(e).removeprefix(e.path + ': ')}, or {also}") from None
    base = load_results(baseline)
    _label(runs)
    _label(base)
    names = Counter(q.name for q in quant)
    seen: Counter = Counter()
    for q in quant:  # the model's name, with its folder where two outputs share one
        seen[q.name] += 1
        q.label = q.name if names[q.name] == 1 else f"{q.name} ({Path(q.source).parent.name}) #{seen[q.name]}"
    return Report(runs, base, float(threshold), compare(runs, base, threshold) if base else [], quant)


# ----- plots -----

def plot_tradeoff(runs: list[Run], pareto: list[Run]) -> bytes:
    """Accuracy (%) against p50 latency (µs); area ∝ bundle size, colour = target, marker = backend. PNG."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    scored = [r for r in runs if r.accuracy is not None]
    fig, ax = new_figure(8.0, 5.0)
    targets = sorted({r.target for r in scored})
    backends = sorted({r.backend for r in scored})
    colours = colormaps["tab10"]
    largest = max((r.size_bytes or 0) for r in scored) or 1

    def area(r):  # points^2: from 40 for an empty bundle to 940 for the largest
        return 40 + 900 * (r.size_bytes or 0) / largest

    for r in scored:
        ax.scatter(r.p50, 100 * r.accuracy, s=area(r), color=colours(targets.index(r.target) % 10),
                   marker=MARKERS[backends.index(r.backend) % len(MARKERS)], alpha=0.7, edgecolors="black",
                   linewidths=0.5, zorder=3)
        ci = r.accuracy_ci95
        if ci:  # the 95% interval of the accuracy as a vertical bar
            ax.errorbar(r.p50, 100 * r.accuracy, yerr=[[100 * (r.accuracy - ci[0])], [100 * (ci[1] - r.accuracy)]],
                        fmt="none", ecolor="dimgrey", elinewidth=1, capsize=3, zorder=2)
    if pareto:
        xs, ys = [r.p50 for r in pareto], [100 * r.accuracy for r in pareto]
        ax.plot(xs, ys, "--", color="black", linewidth=1, zorder=2, drawstyle="steps-post")
        ax.scatter(xs, ys, s=[area(r) + 250 for r in pareto], facecolors="none", edgecolors="crimson",
                   linewidths=1.5, zorder=4)
    p50s = [r.p50 for r in scored]
    if max(p50s) / max(min(p50s), 1e-9) > 3:
        ax.set_xscale("log")
    _pad(ax, p50s, [100 * v for r in scored for v in (r.accuracy_ci95 or [r.accuracy])])
    # Labels of points that (nearly) coincide are stacked downwards instead of drawn over each other.
    placed: list[tuple[float, float]] = []
    for r in sorted(scored, key=lambda r: (r.p50, -r.accuracy)):
        fx, fy = _axes_fraction(ax, r.p50, 100 * r.accuracy)
        stack = sum(1 for px, py in placed if abs(px - fx) < 0.12 and abs(py - fy) < 0.05)
        placed.append((fx, fy))
        ax.annotate(r.label, (r.p50, 100 * r.accuracy), xytext=(math.sqrt(area(r)) / 2 + 3, 4 - 11 * stack),
                    textcoords="offset points", fontsize=8, zorder=5)
    ax.set_xlabel("p50 latency (µs)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], linestyle="", marker="o", color=colours(i % 10), label=t) for i, t in enumerate(targets)]
    handles += [Line2D([], [], linestyle="", marker=MARKERS[i % len(MARKERS)], color="grey", label=b)
                for i, b in enumerate(backends)]
    handles.append(Line2D([], [], linestyle="--", color="black", marker="o", markerfacecolor="none",
                          markeredgecolor="crimson", label="Pareto front"))
    ax.legend(handles=handles, fontsize=8, loc="best", title="target / backend", title_fontsize=8)
    ax.set_title("accuracy vs latency (marker area ∝ bundle size; bars: 95% interval of the accuracy)", fontsize=10)
    return png_bytes(fig)


def plot_profile(run: Run, top: int = TOP_OPERATORS) -> bytes:
    """A horizontal bar per operator of ``run``'s profile, the slowest on top: its share (%) of the
    operators' total, labelled by Keras layer (or operator name) and type. PNG."""
    p = run.profile
    rows = (p.get("rows") or [])[:top]
    fig, ax = new_figure(8.0, 1.2 + 0.32 * max(len(rows), 1))
    ys = list(range(len(rows)))
    shares = [100 * float(row.get("share") or 0.0) for row in rows]
    ax.barh(ys, shares, color="#4c72b0", height=0.7)
    names = []
    for row in rows:
        name, kind = str(row.get("layer") or row.get("op", "?"))[:40], str(row.get("type", "?"))
        names.append(name if name == kind else f"{name} ({kind})")
    ax.set_yticks(ys, names, fontsize=8)
    ax.invert_yaxis()
    for y, v in zip(ys, shares):
        ax.annotate(f"{v:.1f}%", (v, y), va="center", fontsize=7, xytext=(3, 0), textcoords="offset points")
    ax.set_xlim(0, max(shares + [1.0]) * 1.15)
    unit = PROFILE_UNITS.get(p.get("unit"), p.get("unit"))
    ax.set_xlabel(f"share of the operators' total (%, of {unit} per inference)", fontsize=8)
    ax.set_title(f"{run.label}: slowest operators", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return png_bytes(fig)


def plot_mcu_operators(runs: list[Run]) -> bytes:
    """One bar per microcontroller run, split by operator type into its share of the run's instructions
    (cycles on a board); the same colour is the same operator type in every bar. PNG."""
    from matplotlib import colormaps

    rows = [(r, list(zip(r.operators, r.operator_shares))) for r in runs]
    kinds: list[str] = []
    for _, ops in rows:
        kinds += [str(op.get("operator")) for op, share in ops
                  if share is not None and str(op.get("operator")) not in kinds]
    colours = colormaps["tab20"]
    fig, ax = new_figure(8.0, 1.6 + 0.5 * len(rows))
    drawn: set = set()
    for i, (r, ops) in enumerate(rows):
        y, left = len(rows) - 1 - i, 0.0
        for op, share in ops:
            if share is None:
                continue
            kind = str(op.get("operator"))
            ax.barh(y, 100 * share, left=left, height=0.6, color=colours(kinds.index(kind) % 20), edgecolor="white",
                    linewidth=0.5, label=kind if kind not in drawn else None)
            if share >= 0.08:
                ax.text(left + 50 * share, y, f"{100 * share:.0f}%", ha="center", va="center", fontsize=7)
            drawn.add(kind)
            left += 100 * share
    ax.set_yticks(range(len(rows)), [f"{r.label} ({r.mcu.get('kernels') or '?'})" for r, _ in reversed(rows)],
                  fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of instructions per inference (%; cycles on a board)")
    ax.grid(True, axis="x", alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="operator", title_fontsize=7)
    return png_bytes(fig)


def _pad(ax, xs, ys):
    """Leave room around the points for labels and large markers."""
    if ax.get_xscale() == "linear":
        lo, hi = min(xs), max(xs)
        span = (hi - lo) or max(hi, 1.0) * 0.2
        ax.set_xlim(max(0.0, lo - 0.25 * span), hi + 0.35 * span)
    else:
        ax.set_xlim(min(xs) / 1.6, max(xs) * 2.0)
    lo, hi = min(ys), max(ys)
    margin = max(0.3 * (hi - lo), 1.0)
    ax.set_ylim(lo - margin, hi + margin)


def _axes_fraction(ax, x, y) -> tuple[float, float]:
    """Where (x, y) falls in the axes, 0..1 each way, on the axes' scales."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    if ax.get_xscale() == "log":
        x, x0, x1 = math.log(x), math.log(x0), math.log(x1)
    return (x - x0) / ((x1 - x0) or 1.0), (y - y0) / ((y1 - y0) or 1.0)


def plot_latency(runs: list[Run]) -> bytes:
    """One row per run: min–max whiskers, p50–p90 box, p99 bar, repeat medians as dots (log x). PNG."""
    from matplotlib.patches import Rectangle

    fig, ax = new_figure(8.0, 1.2 + 0.55 * len(runs))
    for i, r in enumerate(runs):
        lat, y = r.latency, len(runs) - 1 - i
        ax.hlines(y, lat["min_us"], lat["max_us"], color="grey", linewidth=1, zorder=1)
        ax.vlines([lat["min_us"], lat["max_us"]], y - 0.15, y + 0.15, color="grey", linewidth=1)
        ax.add_patch(Rectangle((lat["p50_us"], y - 0.25), max(lat["p90_us"] - lat["p50_us"], 1e-9), 0.5,
                               facecolor="#9ecae1", edgecolor="#08519c", zorder=2))
        ax.vlines(lat["p50_us"], y - 0.25, y + 0.25, color="#08519c", linewidth=2.5, zorder=3)
        ax.vlines(lat["p99_us"], y - 0.2, y + 0.2, color="#d62728", linewidth=2, zorder=3)
        reps = r.repeat_p50
        if reps:
            offsets = [(-0.12 + 0.24 * k / max(len(reps) - 1, 1)) if len(reps) > 1 else 0.0 for k in range(len(reps))]
            ax.scatter(reps, [y + o for o in offsets], s=14, color="black", zorder=4)
    ax.set_yticks(range(len(runs)), [r.label for r in reversed(runs)], fontsize=8)
    ax.set_ylim(-0.7, len(runs) - 0.3)
    ax.set_xscale("log")
    lows = [r.latency["min_us"] for r in runs]
    highs = [r.latency["max_us"] for r in runs]
    ax.set_xlim(min(lows) / 1.3, max(highs) * 1.3)
    ax.set_xlabel("latency per inference (µs, log scale)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    ax.legend(handles=[
        Line2D([], [], color="grey", label="min – max"),
        Rectangle((0, 0), 1, 1, facecolor="#9ecae1", edgecolor="#08519c", label="p50 – p90"),
        Line2D([], [], color="#d62728", marker="|", linestyle="", markersize=10, label="p99"),
        Line2D([], [], color="black", marker="o", linestyle="", markersize=4, label="repeat medians"),
    ], fontsize=8, loc="upper right", ncols=4, bbox_to_anchor=(1.0, 1.0 + 0.6 / (1.2 + 0.55 * len(runs))))
    return png_bytes(fig)


def plot_changes(comparisons: list[Comparison], threshold: float) -> bytes:
    """Horizontal bars of the p50 change against the baseline, red beyond +threshold, green below -threshold. PNG."""
    matched = [c for c in comparisons if c.change is not None]
    fig, ax = new_figure(8.0, 1.0 + 0.45 * len(matched))
    colours = {"regression": "#d62728", "faster": "#2ca02c"}
    for i, c in enumerate(matched):
        y = len(matched) - 1 - i
        ax.barh(y, 100 * c.change, color=colours.get(c.verdict, "#7f7f7f"), height=0.6)
    ax.set_yticks(range(len(matched)), [c.label for c in reversed(matched)], fontsize=8)
    for x in (-100 * threshold, 100 * threshold):
        ax.axvline(x, linestyle="--", color="black", linewidth=0.8)
    ax.axvline(0, color="black", linewidth=0.8)
    widest = max([abs(100 * c.change) for c in matched] + [100 * threshold]) * 1.2
    ax.set_xlim(-widest, widest)
    ax.set_xlabel("p50 change against the baseline (%)")
    ax.grid(True, axis="x", alpha=0.3)
    return png_bytes(fig)


_HTML_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="edgedl report">
<title>edgedl benchmark report</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
.meta { color: #666; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.regression td { background: #fde0e0; }
tr.faster td { background: #e2f5e2; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
.verdict { font-weight: bold; }
.verdict.bad { color: #b00; }
</style>
</head>
<body>"""
