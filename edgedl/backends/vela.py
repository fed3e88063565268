"""Vela backend: an int8 ``.tflite`` compiled by Arm's Vela for an Ethos-U NPU, with Vela's estimates.

Vela replaces the operators the NPU runs with one ``ethos-u`` custom operator holding the command
stream; what it cannot place on the NPU stays as ordinary TFLite operators for the Cortex-M beside
it. The bundle holds that optimised ``.tflite``, Vela's summary CSV, its per-layer CSV
(``--verbose-performance``: cycles, MACs and memory access cycles of each operator, which
``edgedl.bench.profile.from_vela`` turns into an estimated per-operator profile) and its report.
The estimates are Vela's static performance model (cycles, time at the configured clock, memory
used), with the CPU fallback operators named one by one: they are never hidden. Nothing here can run the result
(there is no NPU on this host), so there is no fidelity check.
"""

from __future__ import annotations

import csv
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

from edgedl import _isolate, _lazy
from edgedl.backends.base import Backend, CompiledModel
from edgedl.errors import BackendError, InputFileError, OptionError, UnsupportedOperatorError
from edgedl.runtime.engines import TensorSpec

KIB = 1024
CONFIG_FILE = "Arm/vela.ini"          # Vela's bundled system configurations and memory modes
OPTIMISE = ("Performance", "Size")
NPU_OPERATOR = "ethos-u"
FLOAT_TYPES = ("float16", "float32", "float64")
PASS_THROUGH = ("QUANTIZE", "DEQUANTIZE")   # float only at the edges: a full-integer model with float I/O
VELA_TIMEOUT_S = 600.0                     # one Vela run; real models take seconds
PER_LAYER = "vela_per_layer.csv"           # Vela's --verbose-performance table, kept in the bundle


class VelaBackend(Backend):
    name = "vela"
    extra = "npu"

    def runs_here(self, target):
        """Vela's output needs an Ethos-U NPU for its ``ethos-u`` operator: never on this host."""
        return False, (f"{target.name} is an Ethos-U NPU ({target.npu.get('accelerator', '?')}); Vela's command "
                       "stream runs only there, this host has no NPU")

    def unsupported_ops(self, graph, target):
        """The operators that make Vela refuse the model: those computing in float (Vela takes
        full-integer int8 or int16x8 models). An integer operator the NPU lacks does not stop a
        compile: Vela leaves it to the CPU (:meth:`cpu_fallback_ops`)."""
        out = {}
        for op in graph.ops:
            floats = [i for i in op.outputs if graph.tensors.get(i, {}).get("dtype") in FLOAT_TYPES]
            if floats and op.name not in PASS_THROUGH:
                out[op.name] = ("float tensors: Vela takes full-integer int8 or int16x8 models "
                                "(convert with --quantize int8)")
        return out

    def cpu_fallback_ops(self, graph, target) -> dict:
        """{operator: reason} for the operators of a model Vela takes that it leaves on the CPU beside
        ``target``'s NPU, by type (from Vela's own constraint table); its own ``ethos-u`` operator (in a
        model Vela already compiled) runs on the NPU.

        Vela may still leave an operator of a supported type on the CPU when a parameter is out of
        range (a stride, a shape); compiling names those too.
        """
        regor = _lazy.require("ethosu.regor")
        family = _family(target)
        supported = {op.replace("ARGMAX", "ARG_MAX") for op in regor.tflite_operator_constraints(family)}
        refused = self.unsupported_ops(graph, target)
        return {op.name: f"not an {_family_name(family)} operator: Vela leaves it to the CPU"
                for op in graph.ops if op.name not in supported and op.name != NPU_OPERATOR and op.name not in refused}

    def compile(self, tflite_path, target, out_dir, options):
        _lazy.require("ethosu.vela")
        start = time.perf_counter()
        optimise = options.get("optimise", "Performance")
        if optimise not in OPTIMISE:
            raise OptionError(f"vela option optimise must be one of {', '.join(OPTIMISE)}, got {optimise!r}")
        tflite_path = Path(tflite_path)
        model = read_flatbuffer(tflite_path)
        floats = sorted({op["op"] for op in model["ops"]
                         if op["op"] not in PASS_THROUGH and any(d in FLOAT_TYPES for d in op["output_dtypes"])})
        if floats:
            integer = any(op["op"] not in PASS_THROUGH and not any(d in FLOAT_TYPES for d in op["output_dtypes"])
                          for op in model["ops"])
            fix = ("the converter left these operators in float in an otherwise integer model: change the layer "
                   "that makes them, or compile it with another backend" if integer
                   else "quantize it with --quantize int8 (and a representative data set)")
            raise UnsupportedOperatorError(
                f"Vela needs a full-integer int8 (or int16x8) model; {tflite_path.name} computes in float "
                f"({', '.join(floats)}); {fix}")
        npu = target.npu
        accelerator = npu["accelerator"]
        out_dir = Path(out_dir)
        work = out_dir / "_vela"
        shutil.rmtree(work, ignore_errors=True)
        (work / "output").mkdir(parents=True)
        shutil.copyfile(tflite_path, work / "model.tflite")
        command = [sys.executable, "-m", "ethosu.vela", str(work / "model.tflite"),
                   "--accelerator-config", accelerator,
                   "--output-dir", str(work / "output"), "--optimise", optimise, "--show-cpu-operations",
                   "--verbose-performance"]
        # Vela takes a configuration file only with a named system configuration and memory mode;
        # with neither it uses its internal defaults for the accelerator.
        config = npu.get("config", CONFIG_FILE) if npu.get("system_config") or npu.get("memory_mode") else None
        if config:
            command += ["--config", config]
        if npu.get("system_config"):
            command += ["--system-config", npu["system_config"]]
        if npu.get("memory_mode"):
            command += ["--memory-mode", npu["memory_mode"]]
        try:
            try:
                done = subprocess.run(command, capture_output=True, text=True, cwd=work, timeout=VELA_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise InputFileError(tflite_path, f"Vela did not finish compiling it for {accelerator} within "
                                                  f"{VELA_TIMEOUT_S:g} s and was stopped; the file is malformed or "
                                                  "too large for Vela") from None
            report = done.stdout + ("\n" + done.stderr if done.stderr.strip() else "")
            if done.returncode < 0:  # Vela runs in its own process: a native crash there is its exit status
                raise InputFileError(tflite_path, f"Vela crashed with {_isolate.signal_name(-done.returncode)} while "
                                                  f"compiling it for {accelerator}; the file is malformed or not one "
                                                  "Vela can read")
            if done.returncode != 0:
                lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
                tail = re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1].strip()).strip("'\"")
                raise BackendError(f"Vela failed for {accelerator} on {tflite_path.name} (exit {done.returncode}): "
                                   f"{tail[-400:]}")
            summaries = sorted((work / "output").glob("*_summary_*.csv"))
            optimised = work / "output" / "model_vela.tflite"
            if not summaries or not optimised.is_file():
                raise BackendError(f"Vela wrote no optimised model or summary in {work / 'output'}: {report[-300:]}")
            row = _read_summary(summaries[0])
            compiled_ops = read_flatbuffer(optimised)
            estimates = _estimates(row, report, compiled_ops, target)
            per_layer = sorted((work / "output").glob("*_per-layer.csv"))
            if per_layer:
                estimates["per_layer"] = per_layer_summary(read_per_layer(per_layer[0]), estimates.get("cycles"))
            _fit_check(estimates, target)
            shutil.copyfile(optimised, out_dir / "model_vela.tflite")
            shutil.copyfile(summaries[0], out_dir / "vela_summary.csv")
            if per_layer:
                shutil.copyfile(per_layer[0], out_dir / PER_LAYER)
            (out_dir / "vela_report.txt").write_text(report)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        import ethosu.vela

        return CompiledModel(
            backend=self.name, target=target.name, directory=out_dir,
            files=["model_vela.tflite", "vela_summary.csv", "vela_report.txt"] + ([PER_LAYER] if per_layer else []),
            runtime={"engine": "ethos-u", "model": "model_vela.tflite", "accelerator": accelerator},
            inputs=compiled_ops["inputs"], outputs=compiled_ops["outputs"],
            options={"accelerator": accelerator, "system_config": npu.get("system_config"),
                     "memory_mode": npu.get("memory_mode"), "config": config,
                     "optimise": optimise},
            toolchain={"ethos-u-vela": getattr(ethosu.vela, "__version__", "unknown")},
            estimates=estimates, compile_time_s=time.perf_counter() - start,
        )

    def load(self, compiled, num_threads=1):
        raise BackendError(f"Vela's output for {compiled.target} runs only on an Ethos-U NPU (the ethos-u "
                           "operator holds its command stream); this host has none. Deploy "
                           f"{compiled.runtime['model']} with TFLite Micro and the Ethos-U driver on the device")


def _family(target) -> str:
    accelerator = target.npu.get("accelerator", "")
    return "EthosU85" if accelerator.startswith("ethos-u85") else "EthosU55"


def _family_name(family: str) -> str:
    return {"EthosU55": "Ethos-U55/U65", "EthosU85": "Ethos-U85"}[family]


def read_flatbuffer(path: Path) -> dict:
    """The operators (name, output tensor names and dtypes) and I/O specs of a ``.tflite``, read with
    Vela's own flatbuffer schema (so this backend needs no TFLite interpreter).

    Raises:
        InputFileError: not a TFLite flatbuffer, or one whose offsets or indices point outside it.
    """
    from edgedl.runtime.engines import read_tflite_file

    data = read_tflite_file(path)
    try:
        return _read_flatbuffer(data)
    except (IndexError, ValueError, TypeError, AttributeError, struct.error) as e:
        # The generated reader follows offsets without checks: what it raises on a corrupt file varies.
        raise InputFileError(path, f"corrupt TFLite flatbuffer ({' '.join(str(e).split())[:160]})") from None


def _read_flatbuffer(data: bytes) -> dict:
    from ethosu.vela.tflite import BuiltinOperator, Model, TensorType

    names = {v: k for k, v in vars(BuiltinOperator.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(TensorType.TensorType).items() if not k.startswith("_")}
    model = Model.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() < 1:
        raise ValueError("it has no subgraph")
    subgraph = model.Subgraphs(0)

    def tensor(i):
        if not 0 <= i < subgraph.TensorsLength():
            raise IndexError(f"tensor index {i} is out of range (the subgraph has {subgraph.TensorsLength()})")
        return subgraph.Tensors(i)

    def op_name(code):
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == BuiltinOperator.BuiltinOperator.CUSTOM:
            return code.CustomCode().decode("utf-8", "replace")
        return names.get(builtin, str(builtin))

    def spec(i):
        t = tensor(i)
        q = t.Quantization()
        scale = float(q.Scale(0)) if q is not None and q.ScaleLength() else 0.0
        zero = int(q.ZeroPoint(0)) if q is not None and q.ZeroPointLength() else 0
        return TensorSpec(tensor_name(t, i), tuple(int(s) for s in t.ShapeAsNumpy()),
                          types.get(t.Type(), "unknown"), scale, zero)

    ops = []
    for k in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(k)
        outs = [op.Outputs(j) for j in range(op.OutputsLength()) if op.Outputs(j) >= 0]
        if op.OpcodeIndex() >= model.OperatorCodesLength():
            raise IndexError(f"operator {k} has opcode index {op.OpcodeIndex()}, the model has "
                             f"{model.OperatorCodesLength()} operator codes")
        ops.append({"op": op_name(model.OperatorCodes(op.OpcodeIndex())),
                    "outputs": [tensor_name(tensor(i), i) for i in outs],
                    "output_dtypes": [types.get(tensor(i).Type(), "unknown") for i in outs]})
    return {"ops": ops, "inputs": [spec(subgraph.Inputs(i)) for i in range(subgraph.InputsLength())],
            "outputs": [spec(subgraph.Outputs(i)) for i in range(subgraph.OutputsLength())]}


def tensor_name(tensor, index: int) -> str:
    """A tensor's name, or ``tensor<index>`` for one without (``--strip-names`` drops them)."""
    name = tensor.Name()
    return name.decode("utf-8", "replace") if name else f"tensor{index}"


def _read_summary(path: Path) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise BackendError(f"Vela's summary {path.name} is empty")
    return rows[0]


# Vela 5.2's per-layer CSV columns -> the keys of a row of :func:`read_per_layer` (access cycles: "AC")
PER_LAYER_COLUMNS = {"Original Operator": "original_op", "NNG Operator": "op", "Target": "target",
                     "Staging Usage": "staging_bytes", "Op Cycles": "cycles", "NPU": "npu_cycles",
                     "SRAM AC": "sram_access_cycles", "DRAM AC": "dram_access_cycles",
                     "OnFlash AC": "on_chip_flash_access_cycles", "OffFlash AC": "off_chip_flash_access_cycles",
                     "MAC Count": "macs", "Util% (MAC)": "mac_utilisation_percent", "Name": "name"}


def read_per_layer(path) -> list[dict]:
    """Vela's per-layer CSV (``--verbose-performance``) as rows, in Vela's order: each operator Vela
    scheduled (after its own rewrites: a Conv2D's fused ReLU, a Softmax's many steps are rows of their
    own) with its estimated cycles, MACs, memory access cycles and its output tensor ``name``.

    Example:
        >>> rows = read_per_layer("lenet.edgedl/vela_per_layer.csv")    # doctest: +SKIP
        >>> rows[0]["original_op"], rows[0]["cycles"], rows[0]["target"]  # doctest: +SKIP
        ('Conv2D', 12638, 'NPU')
    """
    with open(path, newline="") as f:
        raw = list(csv.DictReader(f))
    rows = []
    for r in raw:
        row = {}
        for column, key in PER_LAYER_COLUMNS.items():
            value = (r.get(column) or "").strip()
            if key in ("original_op", "op", "target", "name"):
                row[key] = value
            else:
                try:
                    row[key] = float(value) if key == "mac_utilisation_percent" else int(float(value))
                except ValueError:
                    row[key] = None
        rows.append(row)
    return rows


def per_layer_summary(rows: list[dict], total_cycles) -> dict:
    """The per-layer table in a few numbers for the estimates (the table itself is :data:`PER_LAYER`
    in the bundle; ``edgedl.bench.profile.from_vela`` reads it): operators, their cycles, the Keras
    layer that costs most and its share of Vela's total."""
    from edgedl.bench.profile import keras_layer

    cycles = sum(r["cycles"] or 0 for r in rows)
    by_layer: dict[str, int] = {}
    for r in rows:
        name = keras_layer(r["name"]) or r["name"]
        by_layer[name] = by_layer.get(name, 0) + (r["cycles"] or 0)
    top = max(by_layer, key=by_layer.get) if by_layer else None
    total = total_cycles or cycles
    return {"file": PER_LAYER, "operators": len(rows), "cycles": cycles,
            "slowest_layer": f"{top[:60]} ({100 * by_layer[top] / total:.1f}% of the cycles)" if top and total else None}


def _reasons(report: str) -> dict:
    """{output tensor name: reason} from Vela's "Warning (supported operators)" paragraphs."""
    reasons = {}
    for m in re.finditer(r"Warning \(supported operators\) operator: (\w+), ofm: '([^']*)'\n((?:.+\n?)+)", report):
        text = " ".join(line.strip() for line in m.group(3).strip().splitlines())
        reasons[m.group(2)] = text.removeprefix("Reason: ")
    return reasons


def _estimates(row: dict, report: str, compiled: dict, target) -> dict:
    def number(key, kind=float):
        try:
            return kind(float(row[key]))
        except (KeyError, ValueError):
            return None

    def kib_to_bytes(key):
        v = number(key)
        return None if v is None else int(round(v * KIB))

    counts = {}
    for which in ("CPU", "NPU"):
        m = re.search(rf"^{which} operators = (\d+)", report, re.MULTILINE)
        counts[which] = int(m.group(1)) if m else None
    reasons = _reasons(report)
    fallback = []
    for op in compiled["ops"]:
        if op["op"] == NPU_OPERATOR:
            continue
        name = op["outputs"][0] if op["outputs"] else ""
        fallback.append({"op": op["op"], "output": name,
                         "reason": reasons.get(name, "not placed on the NPU by Vela")})
    clock = number("core_clock")
    seconds = number("inference_time")
    estimates = {
        "accelerator": row.get("accelerator_configuration"),
        "system_config": row.get("system_config"),
        "memory_mode": row.get("memory_mode"),
        "clock_hz": clock,
        "clock_mhz": None if clock is None else clock / 1e6,
        "cycles": number("cycles_total", int),
        "npu_cycles": number("cycles_npu", int),
        "inference_time_ms": None if seconds is None else seconds * 1e3,
        "inferences_per_second": number("inferences_per_second"),
        "macs": number("nn_macs", int),
        "sram_used_bytes": kib_to_bytes("sram_memory_used"),
        "dram_used_bytes": kib_to_bytes("dram_memory_used"),
        "on_chip_flash_used_bytes": kib_to_bytes("on_chip_flash_memory_used"),
        "off_chip_flash_used_bytes": kib_to_bytes("off_chip_flash_memory_used"),
        "weights_original_bytes": number("total_original_weights", int),
        "weights_encoded_bytes": number("total_npu_encoded_weights", int),
        "npu_operators": counts["NPU"],
        "cpu_operators": counts["CPU"],
        "cpu_fallback": fallback,
        "cpu_fallback_ops": sorted({f["op"] for f in fallback}),
        "ram_budget_bytes": target.ram_bytes,
        "flash_budget_bytes": target.flash_bytes,
        "note": ("Vela's static performance model of the NPU alone (operator counts are Vela's, after its own "
                 "rewrites); the CPU fallback operators run on the Cortex-M and their time is not included"),
    }
    if fallback:
        estimates["note"] += f"; CPU fallback: {', '.join(estimates['cpu_fallback_ops'])}"
        if {"QUANTIZE", "DEQUANTIZE"} & set(estimates["cpu_fallback_ops"]) and any(
                s.dtype in FLOAT_TYPES for s in compiled["inputs"] + compiled["outputs"]):
            if any("int16" in op["output_dtypes"] for op in compiled["ops"] if op["op"] == "QUANTIZE"):
                # edgedl.convert gives int16x8 models float I/O only (the converter's int16 I/O is not offered)
                estimates["note"] += (" (the float input/output conversions of an int16x8 model, which takes "
                                      "float I/O: they stay on the CPU)")
            else:
                estimates["note"] += " (the float input/output conversions: convert with --io int8 to drop them)"
    return estimates


def _fit_check(estimates: dict, target) -> None:
    """Vela's SRAM and off-chip flash use against the target's RAM and flash budgets."""
    problems = []
    for used_key, budget, memory, budget_name in (
            ("sram_used_bytes", target.ram_bytes, "SRAM", "RAM"),
            ("off_chip_flash_used_bytes", target.flash_bytes, "off-chip flash", "flash")):
        used = estimates.get(used_key)
        if budget is not None and used is not None and used > budget:
            problems.append(f"Vela's plan needs {_kib(used)} of {memory}, {target.name} has {_kib(budget)} of "
                            f"{budget_name}: {_kib(used - budget)} over")
    estimates["fits"] = not problems
    if problems:
        raise BackendError(f"the model does not fit {target.name}: {'; '.join(problems)}")


def _kib(n: int) -> str:
    kib = n / KIB
    return f"{kib:.0f} KiB" if kib == int(kib) else f"{kib:.1f} KiB"
