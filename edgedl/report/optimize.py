"""The optimization report: what each stage of :func:`edgedl.optimize.optimize` did to accuracy, size and MACs.

:class:`OptimizeReport` is plain data that the pipeline fills in; it saves itself (the final
``model.keras`` and ``model.tflite``, ``report.json``, ``report.md`` and ``stages.png``, and
``quant_error.png`` with a per-layer quantization error; all or nothing) and formats itself as
Markdown; :func:`plot_stages` draws the stages side by side.

Example:
    >>> report = optimize("lenet.keras", OptimizeOptions(prune=0.8, quantize="int8"))  # doctest: +SKIP
    >>> print(report.to_markdown())                                                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgedl import _io
from edgedl.errors import OptionError
from edgedl.report.plots import png_bytes

FILES = {"model": "model.keras", "tflite": "model.tflite", "report": "report.json", "markdown": "report.md",
         "plot": "stages.png"}
QUANT_PLOT = "quant_error.png"  # with a quant_report: SNR per layer (edgedl.optimize.quant_report.plot_snr)
WORST_LAYERS = 10  # rows of report.md's per-layer error table


@dataclass(frozen=True)
class StageResult:
    """One measured stage: test ``accuracy``, ``size_bytes`` and ``gzip_bytes`` (of the float32
    ``.tflite`` for Keras stages, of the ``.tflite`` itself for a converted one), parameters
    (``params_total``, ``params_nonzero``), ``sparsity`` (the fraction of zero kernel weights) and
    ``macs``; ``wall_s`` is how long a stage that fine-tunes took, ``fake_quant_accuracy`` QAT's
    accuracy before conversion.

    Example:
        >>> row = report.stage("int8")  # doctest: +SKIP
        >>> row.markdown_row(report.stage("baseline").accuracy)  # doctest: +SKIP
        '| int8 | int8 post-training quantization | 98.90% | -0.12 | 72.8 KiB | ...'
    """

    stage: str
    description: str
    format: str
    accuracy: float
    size_bytes: int
    gzip_bytes: int
    params_total: int
    params_nonzero: int
    sparsity: float
    macs: int
    fake_quant_accuracy: float | None = None
    wall_s: float | None = None

    def to_dict(self) -> dict:
        """The stage as report.json records it (the optional timings only where measured)."""
        row = dataclasses.asdict(self)
        return {k: v for k, v in row.items() if v is not None or k not in ("fake_quant_accuracy", "wall_s")}

    def summary(self, baseline_accuracy: float) -> str:
        """One line: accuracy and its change, sizes, parameters, MACs and sparsity."""
        return (f"{self.stage}: {100 * self.accuracy:.2f}% ({self.change(baseline_accuracy):+.2f} pts), "
                f"{_kb(self.size_bytes)} ({_kb(self.gzip_bytes)} gzip'd), {self.params_nonzero:,} of "
                f"{self.params_total:,} parameters non-zero, {self.macs:,} MACs, {100 * self.sparsity:.1f}% zeros")

    def change(self, baseline_accuracy: float) -> float:
        """Accuracy against the baseline's, in percentage points."""
        return 100 * (self.accuracy - baseline_accuracy)

    def markdown_row(self, baseline_accuracy: float) -> str:
        """The stage as a row of the report's stage table."""
        return (f"| {self.stage} | {self.description} | {100 * self.accuracy:.2f}% | {self.change(baseline_accuracy):+.2f} | "
                f"{_kb(self.size_bytes)} | {_kb(self.gzip_bytes)} | {self.params_nonzero:,} / {self.params_total:,} | "
                f"{self.macs:,} | {100 * self.sparsity:.1f}% |")


@dataclass
class OptimizeReport:
    """What :func:`optimize` made and measured.

    ``stages`` has one :class:`StageResult` per step (``baseline`` first), each measured the same way.
    """

    model: object = field(repr=False)  # the final Keras model
    tflite: bytes = field(repr=False)  # the final .tflite
    source: dict
    data: dict
    options: dict
    finetuning: dict
    stages: list[StageResult]
    pruned_layers: list[dict] = field(default_factory=list)
    skipped_layers: list[dict] = field(default_factory=list)
    structured: dict | None = None
    qat: dict | None = None
    quant_report: dict | None = None  # per-layer error of the integer model (edgedl.optimize.quant_report)
    selective: dict | None = None  # layers kept float32 or int16x8, --max-drop's steps (edgedl.optimize.selective)
    versions: dict = field(default_factory=dict)
    wall_time_s: float = 0.0
    files: dict = field(default_factory=dict)

    def stage(self, name: str) -> StageResult:
        """The stage called ``name`` (``baseline``, ``structured``, ``pruned``, ``qat``, ``ptq`` ...)."""
        for row in self.stages:
            if row.stage == name:
                return row
        raise KeyError(f"no stage '{name}'; stages: {', '.join(r.stage for r in self.stages)}")

    def summary(self) -> list[str]:
        """One line per stage (what :meth:`StageResult.summary` says), then the files written."""
        base = self.stages[0].accuracy
        return [s.summary(base) for s in self.stages] + [f"wrote {path}" for path in self.files.values()]

    def to_dict(self) -> dict:
        return {
            "source": self.source, "data": self.data, "options": self.options, "finetuning": self.finetuning,
            "stages": [s.to_dict() for s in self.stages], "pruned_layers": self.pruned_layers, "skipped_layers": self.skipped_layers,
            "structured": self.structured, "qat": self.qat, "quant_report": self.quant_report,
            "selective": self.selective, "versions": self.versions,
            "wall_time_s": self.wall_time_s, "files": self.files,
        }

    def to_markdown(self) -> str:
        """A readable report: the stage table, then per-layer detail."""
        d = self.data
        lines = [f"# Optimization report: {self.source['name']} on {d['dataset']} ({d['split']})", ""]
        lines += [f"Options: {_options_text(self.options)}. Fine-tuning: {_finetune_text(self.finetuning)}.", ""]
        lines += ["| stage | what | accuracy | change | size | gzip'd | params (non-zero / total) | MACs | sparsity |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [r.markdown_row(self.stages[0].accuracy) for r in self.stages]
        lines += ["", "Sizes are of the .tflite: float32 for the Keras stages, the converted model for the last one.",
                  "Change is in percentage points of test accuracy against the baseline.", ""]
        if self.pruned_layers:
            lines += ["## Pruned layers", ""]
            if self.options.get("prune_block", 1) > 1:
                lines += [f"Pruned in runs of {self.options['prune_block']} weights along the input channels "
                          "(contiguous in the .tflite), ranked by mean magnitude.", ""]
            if self.options.get("prune_scope") == "erk":
                lines += ["ERK scope: the target is reached on average over all these kernels; each layer's "
                          "share follows the Erdos-Renyi-Kernel rule, so small layers keep more of their weights.", ""]
            if self.options.get("prune_scope") == "global":
                lines += ["Global scope: one magnitude threshold over all these kernels reaches the target overall, "
                          "so each layer ends up as sparse as its weights are small.", ""]
            lines += ["| layer | kind | target | sparsity | non-zero / total |", "|---|---|---|---|---|"]
            lines += [f"| {r['layer']} | {r['kind']} | {100 * r['target']:.0f}% | {100 * r['sparsity']:.1f}% | "
                      f"{r['nonzero']:,} / {r['total']:,} |" for r in self.pruned_layers]
            lines.append("")
        if self.skipped_layers:
            lines += ["## Layers not pruned", "", "| layer | kind | why |", "|---|---|---|"]
            lines += [f"| {r['layer']} | {r['kind']} | {r['reason']} |" for r in self.skipped_layers]
            lines.append("")
        if self.structured:
            from edgedl.optimize.structured import describe_cut

            residual = describe_cut(self.structured.get("residual", "prune"), self.structured.get("layers"),
                                    self.structured.get("align", 1), self.structured.get("schedule", "oneshot"),
                                    (self.finetuning or {}).get("epochs"))
            lines += ["## Structured pruning", "", f"Removed {100 * self.structured['ratio']:.0f}% of the channels "
                      f"of every group not frozen (lowest L1 norm first){'; ' + residual if residual else ''}.", "",
                      "| layers (pruned together) | channels | kept | frozen because |", "|---|---|---|---|"]
            for g in self.structured["pruned_groups"] + self.structured["frozen_groups"]:
                lines.append(f"| {', '.join(g['layers'])} | {g['channels']} | {g['kept']} | {g['frozen'] or ''} |")
            lines.append("")
        if self.qat:
            lines += ["## Quantization-aware training", "", self.qat["method"], ""]
            if self.qat.get("folded"):
                lines += ["Batch norm folded: " + ", ".join(f"{b} into {p}" for p, b in self.qat["folded"]), ""]
            if self.qat.get("not_fake_quantized"):
                lines += ["Kernels trained without fake quantization (the int8 export quantizes them all the same): "
                          + ", ".join(f"{r['layer']} ({r['kind']}: {r['reason']})" for r in self.qat["not_fake_quantized"]), ""]
        if self.selective:
            lines += _selective_lines(self.selective)
        if self.quant_report:
            lines += _quant_lines(self.quant_report, self.files.get("quant_plot"))
        if self.files.get("plot"):
            lines += [f"![accuracy, size and MACs after each stage]({Path(self.files['plot']).name})", ""]
        if self.files:
            lines += ["## Files", ""] + [f"- {k}: `{v}`" for k, v in self.files.items()] + [""]
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> dict:
        """Write the Keras model, the .tflite, report.md, report.json and stages.png into ``out_dir``.

        All or nothing: the files are written into a new folder beside ``out_dir`` and moved into it
        only once every one is complete (the whole folder in one rename when ``out_dir`` is new), so a
        failure leaves neither a partial set nor old files mixed with new ones.

        Returns:
            ``{"model": path, "tflite": path, "report": path, "markdown": path, "plot": path}``, and
            ``"quant_plot"`` with a ``quant_report`` (also kept in ``files``).
        """
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise OptionError(f"-o/--output must be a folder, but '{out}' is a file")
        check_out_files(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        names = {**FILES, **({"quant_plot": QUANT_PLOT} if self.quant_report else {})}
        files = {k: str(out / name) for k, name in names.items()}
        staging = out.parent / f".{out.name}.{secrets.token_hex(4)}"
        staging.mkdir()  # not mkdtemp: its 0700 would become the output folder's when the folder is renamed into place
        try:
            self.model.save(staging / FILES["model"])
            (staging / FILES["tflite"]).write_bytes(self.tflite)
            (staging / FILES["plot"]).write_bytes(plot_stages(self.stages))
            if self.quant_report:
                from edgedl.optimize.quant_report import plot_snr

                (staging / QUANT_PLOT).write_bytes(plot_snr(self.quant_report["layers"]))
            self.files = files
            (staging / FILES["markdown"]).write_text(self.to_markdown())
            _io.write_json(staging / FILES["report"], self.to_dict())
            if not out.exists():
                os.replace(staging, out)
            else:
                for name in names.values():
                    os.replace(staging / name, out / name)
                if not self.quant_report and (out / QUANT_PLOT).is_file():  # an earlier run's, not this one's
                    (out / QUANT_PLOT).unlink()
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return files


def check_out_files(out: Path) -> None:
    """OptionError if a file the report writes into ``out`` would replace a folder."""
    for name in (*FILES.values(), QUANT_PLOT):
        if (out / name).is_dir():
            raise OptionError(f"-o/--output '{out}' holds a folder named '{name}', where edgedl writes a file: "
                              "move it away or choose another -o/--output")


def plot_stages(stages: list[StageResult]) -> bytes:
    """Accuracy, .tflite size (and gzip'd) and MACs after each stage, side by side, as a PNG.

    The baseline's accuracy is drawn as a line across the first panel, and each bar is labelled with
    its change in points, so the cost of every step reads at a glance.
    """
    from matplotlib.figure import Figure

    names = [r.stage for r in stages]
    xs = np.arange(len(stages))
    fig = Figure(figsize=(3.0 + 1.6 * len(stages), 3.6), dpi=100, layout="constrained")
    acc_ax, size_ax, macs_ax = fig.subplots(1, 3)
    accuracy = [100 * r.accuracy for r in stages]
    acc_ax.bar(xs, accuracy, color="tab:blue")
    acc_ax.axhline(accuracy[0], color="black", linewidth=0.8, linestyle="--")
    low, high = min(accuracy), max(accuracy)
    acc_ax.set_ylim(max(0.0, low - max(2.0, 0.5 * (high - low))), min(100.0, high + max(1.0, 0.3 * (high - low))))
    for x, a in zip(xs, accuracy):
        acc_ax.annotate(f"{a - accuracy[0]:+.2f}", (x, a), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
    acc_ax.set_title("test accuracy (%)", fontsize=10)
    width = 0.4
    size_ax.bar(xs - width / 2, [r.size_bytes / 1024 for r in stages], width, label=".tflite", color="tab:orange")
    size_ax.bar(xs + width / 2, [r.gzip_bytes / 1024 for r in stages], width, label="gzip'd", color="tab:green")
    size_ax.set_title("size (KiB)", fontsize=10)
    size_ax.legend(fontsize=8)
    macs_ax.bar(xs, [r.macs / 1e6 for r in stages], color="tab:purple")
    macs_ax.set_title("MACs (millions)", fontsize=10)
    for ax in (acc_ax, size_ax, macs_ax):
        ax.set_xticks(xs, names, rotation=30, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    return png_bytes(fig)


def _quant_lines(quant: dict, plot: str | None) -> list[str]:
    """report.md's per-layer error section: how it was measured, the worst layers, the plot."""
    rows = quant["layers"]
    lines = ["## Per-layer quantization error", "",
             f"{quant.get('mode', 'integer')} model against the float32 one on {quant['samples']} test samples: "
             f"{quant['method']}. RMSE is relative to the float activations' range; SNR in dB (higher is "
             f"better). The {min(WORST_LAYERS, len(rows))} worst of {len(rows)} layers:", ""]
    if not rows:
        return lines[:2] + ["No tensor of the integer model matched one of the float model by name.", ""]
    lines += ["| layer | op | SNR (dB) | cosine | RMSE / range | tensor |", "|---|---|---|---|---|---|"]
    for r in rows[:WORST_LAYERS]:
        lines.append(f"| {r['layer'] or '?'} | {r['op']} | {_num(r['snr_db'], '.1f')} | "
                     f"{_num(r['cosine'], '.5f')} | {_num(r['rmse_rel'], '.2e')} | `{r['tensor'][:60]}` |")
    lines.append("")
    if plot:
        lines += [f"![SNR per layer, worst first]({Path(plot).name})", ""]
    return lines


def _selective_lines(sel: dict) -> list[str]:
    """report.md's selective-precision section: what was kept, and each step of --max-drop."""
    kept = ", ".join(sel["keep_float"]) or "none"
    lines = ["## Selective precision", "", f"{sel['method']} ({sel['library']}).", "",
             f"Kept in float32: {kept}. In int16x8: {', '.join(sel['int16']) or 'none'}. "
             f"Float32 .tflite accuracy: {100 * sel['float_accuracy']:.2f}%.", ""]
    if sel.get("max_drop") is not None:
        verdict = "met" if sel["met"] else "not met: no layer left to keep in float32"
        lines += [f"Accuracy-aware: at most {100 * sel['max_drop']:.2f} points below float32 ({verdict}); each step "
                  "keeps the layer whose own quantization error is worst (lowest SNR with the layer quantized "
                  "alone, on float inputs) in float32 for the next.", "",
                  "| step | kept in float32 | accuracy | drop (pts) | size | worst layer (SNR dB) |",
                  "|---|---|---|---|---|---|"]
        for k, s in enumerate(sel["steps"]):
            worst = f"{s['worst_layer']} ({_num(s.get('worst_snr_db'), '.1f')})" if s.get("worst_layer") else ""
            lines.append(f"| {k} | {', '.join(s['kept_float']) or 'none'} | {100 * s['accuracy']:.2f}% | "
                         f"{100 * s['drop']:.2f} | {_kb(s['size_bytes'])} | {worst} |")
        lines.append("")
    return lines


def _num(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _options_text(o: dict) -> str:
    parts = []
    if o.get("structured"):
        from edgedl.optimize.structured import describe_cut

        residual = describe_cut(o.get("structured_residual", "prune"), o.get("structured_layers"),
                                o.get("structured_align") or 1, o.get("structured_schedule") or "oneshot")
        residual = f", {residual}" if residual else ""
        parts.append(f"structured {o['structured']:g}{residual}")
    if o.get("prune") or o.get("prune_layers"):
        block = f", blocks of {o['prune_block']}" if o.get("prune_block", 1) > 1 else ""
        what = "per layer" if isinstance(o["prune"], dict) or o["prune"] is None else f"{o['prune']:g}"
        if o.get("prune_layers"):
            what += ", " + ", ".join(f"{name}={share:g}" for name, share in o["prune_layers"].items())
        parts.append(f"prune {what} ({o['prune_scope']}, {o['prune_schedule']}{block})")
    if o.get("qat"):
        parts.append("QAT")
    if o.get("distill"):
        weight = o.get("distill_alpha")
        parts.append("distilled from the baseline" + ("" if weight is None else f" ({weight:g} of the loss on the labels)"))
    parts.append(f"quantize {o['quantize'] or 'none (float32)'}")
    if o.get("io_type", "float") != "float":
        parts.append(f"I/O {o['io_type']}")
    return ", ".join(parts)


def _finetune_text(f: dict) -> str:
    return (f"{f['epochs']} epoch(s) per stage, {f['optimizer']} at {f['learning_rate']:g} "
            f"(x{f['lr_scale']:g} of the recipe's; x{f['qat_lr_scale']:g} for QAT), batch {f['batch_size']}, "
            f"recipe from {f['recipe_from']}{', deterministic' if f.get('deterministic') else ''}")


QUANT_HOW_TO_MAKE = ("expected the output folder (or its report.json) of `edgedl optimize MODEL -q int8 --quant-report "
                     "-o OUT`, or a bundle folder of `edgedl compile ... --quant-report` (its quant_report.json)")
BUNDLE_QUANT_FILE = "quant_report.json"  # edgedl.compile.QUANT_REPORT_FILE: the per-layer error kept in a bundle
QUANT_ROW_NUMBERS = ("rmse_rel", "cosine", "snr_db")


@dataclass
class QuantError:
    """The per-layer quantization error an ``edgedl optimize --quant-report`` output holds, read back
    for ``edgedl report``: ``layers`` as :func:`edgedl.optimize.quant_report.layer_errors` wrote them
    (worst first), where they came from (``source``) and of which model (``name``)."""

    source: str
    name: str
    mode: str
    samples: int | None
    method: str
    layers: list[dict]
    label: str = ""

    def worst(self, count: int = WORST_LAYERS) -> list[dict]:
        """The ``count`` layers with the lowest SNR (the file lists them worst first)."""
        return self.layers[:count]


def is_optimize_output(path) -> bool:
    """Whether ``path`` holds a per-layer quantization error: a folder (an optimize output or a
    bundle), an optimize report.json (``stages`` and ``quant_report``) or a bundle's
    quant_report.json (``method`` and ``layers``). Anything else is left to the benchmark result reader."""
    import json

    p = Path(path)
    if p.is_dir():
        return True
    if not p.is_file() or p.suffix.lower() != ".json":
        return False
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and ("stages" in data and "quant_report" in data
                                       or "layers" in data and "method" in data and "schema" not in data)


def load_quant_error(path) -> QuantError:
    """Read the per-layer quantization error of an ``edgedl optimize --quant-report`` output.

    Args:
        path: its output folder, or the report.json in it; or a bundle folder compiled with
            ``--quant-report``, or the quant_report.json in it.

    Returns:
        The :class:`QuantError`.

    Raises:
        InputFileError: no report.json there, not JSON, a report without a quant_report (optimize
            ran without --quant-report), or rows that are not per-layer errors (the file named, the
            field and what is expected said).

    Example:
        >>> load_quant_error("out/").worst(3)[0]["layer"]  # doctest: +SKIP
        'fc1'
    """
    import json
    import math

    from edgedl.errors import InputFileError

    p = Path(path)
    if p.is_dir():
        if (p / "manifest.json").is_file():  # a bundle: compile --quant-report kept the error in it
            if not (p / BUNDLE_QUANT_FILE).is_file():
                raise InputFileError(p, f"is a bundle without {BUNDLE_QUANT_FILE} (compiled without --quant-report); "
                                        f"{QUANT_HOW_TO_MAKE}, or a result of `edgedl bench -o run.json`")
            p = p / BUNDLE_QUANT_FILE
        elif not (p / FILES["report"]).is_file():
            raise InputFileError(p, f"is a folder without {FILES['report']}; {QUANT_HOW_TO_MAKE}, or a result of "
                                    "`edgedl bench -o run.json`")
        else:
            p = p / FILES["report"]
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(p, "no such file") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputFileError(p, f"is not JSON ({str(e)[:80]}); {QUANT_HOW_TO_MAKE}") from None
    in_bundle = isinstance(data, dict) and "stages" not in data and "layers" in data
    if not isinstance(data, dict) or ("stages" not in data and not in_bundle):
        raise InputFileError(p, f"is not an optimize report (no \"stages\"); {QUANT_HOW_TO_MAKE}")
    quant = data if in_bundle else data.get("quant_report")
    if quant is None:
        raise InputFileError(p, "holds no per-layer quantization error (quant_report is null: optimize ran without "
                                f"--quant-report); {QUANT_HOW_TO_MAKE}")
    field_name = "layers" if in_bundle else "quant_report.layers"
    if not isinstance(quant, dict) or not isinstance(quant.get("layers"), list):
        raise InputFileError(p, f"{field_name} is not a list of layers; {QUANT_HOW_TO_MAKE}")
    for j, row in enumerate(quant["layers"]):
        where = f"{field_name}[{j}]"
        if not isinstance(row, dict):
            raise InputFileError(p, f"{where} is not an object; {QUANT_HOW_TO_MAKE}")
        if not isinstance(row.get("tensor"), str):
            raise InputFileError(p, f"{where} lacks its tensor name; {QUANT_HOW_TO_MAKE}")
        for key in QUANT_ROW_NUMBERS:
            v = row.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise InputFileError(p, f"{where}.{key} is {str(v)[:40]!r}, not a number; {QUANT_HOW_TO_MAKE}")
    source = data.get("source") if isinstance(data.get("source"), dict) else {}
    folder = p.parent.name.removesuffix(".edgedl") if in_bundle else p.parent.name
    name = str(source.get("name") or (folder if p.name in (FILES["report"], BUNDLE_QUANT_FILE) else p.stem))
    samples = quant.get("samples")
    return QuantError(str(p), name, str(quant.get("mode") or "integer"),
                      int(samples) if isinstance(samples, (int, float)) and not isinstance(samples, bool) else None,
                      str(quant.get("method") or ""), quant["layers"])
