"""Per-operator profiles (``edgedl bench --profile``): which operator of a bundle's model takes the time.

Where it sits: :func:`edgedl.bench.core.measure` calls :func:`profile_model` on the device after the
timing loop (so profiling never slows the timed runs), and the harness turns a microcontroller
firmware's per-operator counts into the same record with :func:`from_mcu`. Each engine is asked
for what it measures itself:

- ONNX Runtime: session profiling (``SessionOptions.enable_profiling``); its trace has one event per
  node per run and one ``model_run`` event per run, the measured total.
- TVM: the Relax VM's instrument hook lists the kernel calls of one run with their arguments, and
  TVM's own timer (``time_evaluator``) times each kernel on them and the whole ``main``, the
  measured total (TVM 0.27's VM has no ``profile`` function any more).
- LiteRT and TFLite Micro on the host: their Python interpreters expose no op profiler, so the
  record says so (``available: false`` and why) rather than guessing per-op times.
- A microcontroller firmware: TFLite Micro's MicroProfiler counts instructions (emulated board) or
  cycles (real board) per operator.
- A Vela bundle (Ethos-U NPU, which this host has not): Vela's own per-operator estimate
  (``--verbose-performance``, kept in the bundle), :func:`from_vela`. Its record says
  ``estimated: true`` and has no ``measured_total``: nothing in it was measured.

Only numpy and the runtimes are imported, so this runs in a remote agent too. The record (the
``profile`` object of schema edgedl.bench/1)::

    {"backend", "unit": "us" | "instructions" | "cycles", "rows": [{"op", "layer", "type", <unit key>,
     "share", "calls"}, ...] (slowest first), "total", "measured_total", "coverage", "tolerance",
     "within_tolerance", "source"}

``total`` is the sum of the rows (per inference), ``measured_total`` the engine's own measure of a
whole inference, and ``coverage`` their ratio: the part of an inference spent inside operators.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

UNIT_KEYS = {"us": "time_us", "instructions": "instructions", "cycles": "cycles"}
# The operators' times must add up to the measured inference within this much (coverage in
# [MIN_COVERAGE, MAX_COVERAGE]); the rest is the engine's own work between operators (scheduling,
# memory allocation), which no operator owns. ONNX Runtime's profiler adds its own bookkeeping
# between nodes to each run: on LeNet (12 nodes of a few microseconds) the nodes are ~55% of the
# run; the larger the operators, the nearer 100%.
MIN_COVERAGE = {"onnxruntime": 0.4, "tvm": 0.5, "mcu": 0.8, "vela": 0.95}
MAX_COVERAGE = 1.05
PROFILE_RUNS = 100  # at most this many profiled inferences: the profile is of the mean inference
PROFILE_WARMUP = 10  # at most this many unprofiled inferences first
TVM_KERNEL_MAP = "kernel_layers.json"  # a TVM bundle's kernel -> TFLite operator -> Keras layer map


def not_available(backend: str, reason: str) -> dict:
    """The honest record of an engine that gives no per-operator times: no rows, and why.

    Example:
        >>> not_available("litert", "no op profiler")["available"]
        False
    """
    return {"backend": backend, "available": False, "reason": reason, "rows": []}


def keras_layer(name: str) -> str | None:
    """The Keras layer a node or tensor name comes from, where the name carries the layer path
    (``model/layer/op``, as TensorFlow's converter names what it converts from Keras); else None.

    Of a fused name (``a;b;c``) the first part counts; a model scope repeated at its start
    (``lenet_1/lenet_1/conv1_1``) counts once. TensorFlow names a scope again with ``_1``, ``_2``, ...;
    where the model's own scope carries such a suffix the layer's suffix is TensorFlow's too and is
    dropped.

    Example:
        >>> keras_layer("lenet_1/lenet_1/conv1_1/Relu;lenet_1/lenet_1/conv1_1/BiasAdd")
        'conv1'
        >>> keras_layer("sequential/conv2d/Relu"), keras_layer("Relu__5:0_nchwc")
        ('conv2d', None)
    """
    first = str(name).split(";")[0]
    first = first[len("fused "):] if first.startswith("fused ") else first
    parts = [p for p in first.split(":")[0].split("/") if p]
    while len(parts) > 1 and parts[1] == parts[0]:
        parts.pop(0)
    if len(parts) < 3:
        return None
    suffix = re.search(r"_\d+$", parts[0])
    layer = parts[1]
    if suffix and layer.endswith(suffix.group(0)):
        layer = layer[: -len(suffix.group(0))]
    return layer or None


def finish(backend: str, unit: str, rows: list[dict], measured_total: float, source: str,
           minimum: float | None = None) -> dict:
    """A profile record from rows (each with ``op``, ``type``, ``calls`` and the unit's key, per
    inference): shares, the total, its coverage of ``measured_total`` and whether that is within
    the tolerance.

    Example:
        >>> p = finish("tvm", "us", [{"op": "a", "type": "a", "calls": 1, "time_us": 3.0},
        ...                          {"op": "b", "type": "b", "calls": 1, "time_us": 1.0}], 4.0, "test")
        >>> [r["op"] for r in p["rows"]], p["coverage"], p["within_tolerance"]
        (['a', 'b'], 1.0, True)
    """
    key = UNIT_KEYS[unit]
    rows = sorted(rows, key=lambda r: -r[key])
    total = float(sum(r[key] for r in rows))
    for r in rows:
        r["share"] = r[key] / total if total else 0.0
    low = MIN_COVERAGE.get(backend, 0.5) if minimum is None else minimum
    coverage = total / measured_total if measured_total else 0.0
    return {"backend": backend, "available": True, "unit": unit, "rows": rows, "total": total,
            "measured_total": float(measured_total), "coverage": coverage,
            "tolerance": (f"the operators add up to {low:.0%} to {MAX_COVERAGE:.0%} of the measured inference; "
                          "the rest is the engine's work between operators"),
            "within_tolerance": bool(low <= coverage <= MAX_COVERAGE), "source": source}


def profile_model(model, raw, warmup: int = 10, runs: int = PROFILE_RUNS, threads: int = 1) -> dict:
    """Profile a loaded bundle (:func:`edgedl.runtime.load`) per operator on one raw input.

    Args:
        model: the loaded model (its engine and manifest say how to profile it).
        raw: the raw (quantized) input its engine takes, as the timing loop runs it.
        warmup: unprofiled inferences first.
        runs: profiled inferences (at most :data:`PROFILE_RUNS`).
        threads: the engine threads the benchmark used.

    Returns:
        The ``profile`` record (see the module docstring), or :func:`not_available`'s record.

    Example:
        >>> import edgedl.runtime as rt
        >>> model = rt.load("lenet.edgedl")                          # doctest: +SKIP
        >>> profile_model(model, raw_sample(model))["rows"][0]["type"]  # doctest: +SKIP
        'Conv'
    """
    runs = max(1, min(int(runs), PROFILE_RUNS))
    engine = model.engine
    name = getattr(engine, "name", "")
    if name == "onnxruntime":
        runtime = model.manifest["runtime"]
        return profile_onnxruntime(model.bundle.directory / runtime["model"], raw, warmup, runs, threads,
                                   device=runtime.get("device", "cpu"))
    if name == "tvm":
        files = {f["path"] for f in model.manifest.get("files", [])}
        kernels = model.bundle.directory / TVM_KERNEL_MAP if TVM_KERNEL_MAP in files else None
        return profile_tvm(engine, raw, runs, model.bundle.directory / model.manifest["runtime"]["library"], kernels)
    if name == "litert":
        from edgedl.runtime.engines import litert_interpreter_class

        module = litert_interpreter_class().__module__.split(".")[0]
        return not_available("litert", f"{module}'s Python Interpreter exposes no per-operator profiler (LiteRT's "
                                       "is in the C++ benchmark_model tool, --enable_op_profiling)")
    if name == "tflm":
        return not_available("tflm", "the tflite_micro Python interpreter takes no MicroProfiler; compile for a "
                                     "Cortex-M target (--backend tflm) and bench its firmware for per-operator counts")
    return not_available(name or "unknown", f"no per-operator profiler for the {name or 'unknown'} engine")


def profile_onnxruntime(model_path, raw, warmup: int, runs: int, threads: int = 1, device: str = "cpu") -> dict:
    """ONNX Runtime's session profile of ``runs`` inferences (after ``warmup``): per node, the mean of
    its kernel times; the measured total is the mean of ONNX Runtime's ``model_run`` events."""
    from edgedl.runtime.onnx import PROVIDERS, _ort

    ort = _ort()
    with tempfile.TemporaryDirectory(prefix="edgedl-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 4
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        providers = PROVIDERS.get(device, PROVIDERS["cpu"])
        sess = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        arrays = raw if isinstance(raw, (list, tuple)) else [raw]
        feed = {i.name: a for i, a in zip(sess.get_inputs(), arrays)}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    return onnxruntime_rows(events, skip=warmup, layer_of=onnx_layers(model_path))


def onnx_layers(model_path):
    """A function from an ONNX Runtime node name to its Keras layer: the layer path in the name,
    else that of the node in the ``.onnx`` it came from, else that of the node producing its first
    input (a ``Relu__5`` that tf2onnx split off ``conv1``'s convolution belongs to ``conv1``).

    ONNX Runtime names a node it rewrites after the original's name or output (``Relu__5:0_nchwc``,
    ``fused ...``); a node it adds (``ReorderOutput``, a layout change) maps to no layer. Without the
    ``onnx`` package only the names themselves are read.

    Example:
        >>> onnx_layers("lenet.onnx")("Relu__5:0_nchwc")  # doctest: +SKIP
        'conv1'
    """
    try:
        import onnx

        graph = onnx.load(str(model_path), load_external_data=False).graph
    except Exception as e:  # noqa: BLE001 - no onnx package here, or a model it cannot read
        log.debug("profile: no ONNX graph for layer names (%s)", str(e)[:120])
        return keras_layer
    by_name = {n.name: n for n in graph.node}
    by_output = {o: n for n in graph.node for o in n.output}

    def layer_of(name: str) -> str | None:
        layer = keras_layer(name)
        if layer:
            return layer
        base = name.removesuffix("_nchwc")
        node = by_name.get(base) or by_output.get(base) or by_name.get(base.split(":")[0])
        if node is None:
            return None
        producer = by_output.get(node.input[0]) if node.input else None
        return keras_layer(node.name) or (keras_layer(producer.name) if producer is not None else None)

    return layer_of


def onnxruntime_rows(events: list[dict], skip: int = 0, layer_of=keras_layer) -> dict:
    """The profile record of an ONNX Runtime trace (its JSON events), leaving out the first ``skip``
    runs; ``layer_of`` names each node's Keras layer (by default from the name alone).

    Example:
        >>> ev = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 10},
        ...       {"cat": "Node", "name": "m_1/conv_1/Conv_kernel_time", "ts": 1, "dur": 8,
        ...        "args": {"op_name": "Conv"}}]
        >>> onnxruntime_rows(ev)["rows"][0]["layer"], onnxruntime_rows(ev)["coverage"]
        ('conv', 0.8)
    """
    run_events = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[skip:]
    if not run_events:
        return not_available("onnxruntime", "ONNX Runtime's trace holds no profiled run")
    starts = [e["ts"] for e in run_events]
    per_run: dict[str, dict] = {}  # node -> its row and its time and calls in each run
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < starts[0]:
            continue
        run = bisect.bisect_right(starts, e["ts"]) - 1
        name = e["name"][: -len("_kernel_time")]
        node = per_run.setdefault(name, {"row": {"op": name, "layer": layer_of(name),
                                                 "type": (e.get("args") or {}).get("op_name", "?")},
                                         "us": np.zeros(len(starts)), "calls": np.zeros(len(starts))})
        node["us"][run] += float(e["dur"])
        node["calls"][run] += 1
    rows = [dict(n["row"], time_us=float(np.median(n["us"])), calls=max(1, round(float(np.median(n["calls"])))))
            for n in per_run.values()]
    measured = float(np.median([e["dur"] for e in run_events]))
    return finish("onnxruntime", "us", rows, measured,
                  f"ONNX Runtime session profiling, median of {len(starts)} run(s): each node's kernel time against "
                  "its model_run time (profiling slows each run; the result's timing is of unprofiled runs)")


def kernel_type(symbol: str) -> str:
    """The operator a TVM kernel computes, from its symbol: ``conv2d1`` and ``fused_conv2d1_add1_relu``
    (a fused kernel is named after its parts, the first being the one that does the work) are
    ``conv2d``; ``max_pool2d1`` is ``max_pool2d``.

        >>> kernel_type("fused_conv2d1_add1_relu"), kernel_type("max_pool2d1"), kernel_type("fused_matmul_relu2")
        ('conv2d', 'max_pool2d', 'matmul')
    """
    if symbol.startswith("fused_"):
        symbol = symbol.removeprefix("fused_").split("_")[0]
    return re.sub(r"\d+$", "", symbol)


def profile_tvm(engine, raw, runs: int, library_path, kernel_map_path=None) -> dict:
    """TVM's timer on each kernel the Relax VM calls in one inference (on that inference's own
    arguments), against the same timer on the whole ``main``; the VM's builtins (allocation, shape
    checks) are the rest of the measured total.

    With the bundle's kernel map (``kernel_layers.json``, written by the TVM backend), each call is
    named after the Keras layer(s) its TFLite operator(s) came from (:func:`tvm_call_layers`): a
    kernel shared by several layers gives one row per layer."""
    tvm = engine._tvm
    tensors = [engine._tensor(a) for a in engine.check_inputs(raw)]
    vm = engine.vm
    calls: list[tuple[str, list]] = []

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            calls.append((str(symbol), list(args)))
        return 0

    vm.set_instrument(instrument)
    try:
        vm["main"](*tensors)
    finally:
        vm.set_instrument(None)
    library = next(iter(_imports(tvm.runtime.load_module(str(library_path)))), None)
    if library is None:
        return not_available("tvm", "the bundle's TVM library holds no kernel module to time")
    repeat = 5
    number = max(1, runs // repeat)

    def timed_us(function, *args) -> float:  # the median of the repeats: a preempted repeat does not count
        return float(np.median(function(*args).results)) * 1e6

    kernels = [symbol for symbol, _ in calls if not symbol.startswith("vm.builtin.")]
    layers, mapped = tvm_call_layers(kernels, kernel_map_path)
    rows: dict[tuple, dict] = {}
    for (symbol, args), layer in zip(((s, a) for s, a in calls if not s.startswith("vm.builtin.")), layers):
        try:
            us = timed_us(library.time_evaluator(symbol, engine.device, number=number, repeat=repeat), *args)
        except Exception as e:  # noqa: BLE001 - a call that is not one of the library's kernels
            log.debug("TVM profile: %s not timed (%s)", symbol, str(e)[:120])
            continue
        row = rows.setdefault((symbol, layer), {"op": symbol, "layer": layer,
                                                "type": kernel_type(symbol),
                                                "time_us": 0.0, "calls": 0})
        row["time_us"] += us
        row["calls"] += 1
    if not rows:
        return not_available("tvm", "TVM's timer could time none of the kernels the VM called")
    whole = timed_us(vm.time_evaluator("main", engine.device, number=number, repeat=repeat), *tensors)
    return finish("tvm", "us", list(rows.values()), whole,
                  f"TVM time_evaluator, median of {repeat} repeats of {number} run(s) of each kernel the Relax VM "
                  "called (its instrument hook, on that call's arguments) against the same timer on main; "
                  + mapped)


def tvm_call_layers(kernels: list[str], kernel_map_path=None) -> tuple[list, str]:
    """The Keras layer(s) of each kernel call of one inference (``kernels``: the symbols the Relax VM
    called, in order), from a TVM bundle's kernel map, and how they were named.

    The map lists the library's kernel calls in the VM's order, each with the TFLite operators it
    computes; the n-th call of a kernel here is the n-th of that kernel there. Where the calls of a
    kernel do not line up with the map (a library the map was not made for) the kernel gets all the
    layers the map gives it.

    Example:
        >>> import json, tempfile
        >>> path = tempfile.mktemp(suffix=".json")
        >>> _ = open(path, "w").write(json.dumps({"method": "m", "calls": [
        ...     {"kernel": "conv2d", "operators": [{"layer": "conv1"}]},
        ...     {"kernel": "conv2d", "operators": [{"layer": "conv2"}]}]}))
        >>> tvm_call_layers(["conv2d", "conv2d"], path)[0]
        ['conv1', 'conv2']
    """
    if kernel_map_path is None or not Path(kernel_map_path).is_file():
        return [None] * len(kernels), "no kernel map in the bundle: kernels are not named after layers"
    with open(kernel_map_path) as f:
        kernel_map = json.load(f)
    by_kernel: dict[str, list] = {}
    for call in kernel_map.get("calls", []):
        names = list(dict.fromkeys(o["layer"] for o in call.get("operators", []) if o.get("layer")))
        by_kernel.setdefault(call["kernel"], []).append(", ".join(names) or None)
    seen: dict[str, int] = {}
    for k in kernels:
        seen[k] = seen.get(k, 0) + 1
    out, index = [], {}
    for k in kernels:
        known = by_kernel.get(k, [])
        if len(known) == seen[k]:
            out.append(known[index.get(k, 0)])
            index[k] = index.get(k, 0) + 1
        else:  # not the calls the map was made for: every layer it gives the kernel
            out.append(", ".join(dict.fromkeys(n for layer in known if layer for n in layer.split(", "))) or None)
    return out, ("kernels named after Keras layers by the bundle's kernel map, made at compile time: "
                 + kernel_map.get("method", "TVM kernel -> TFLite operator -> its tensor's layer path"))


def _imports(module) -> list:
    """The modules a TVM library imports: the compiled kernels (the outer module is the VM's executable)."""
    return list(getattr(module, "imports", None) or getattr(module, "imported_modules", None) or [])


def from_mcu(mcu: dict, model=None) -> dict:
    """The profile record of a microcontroller benchmark's ``mcu`` object: its per-operator counts
    (instructions on the emulated board, cycles on a real one, from TFLite Micro's MicroProfiler in
    the firmware) against the whole inference's count.

    The firmware reports one event per node, in the order it runs them, named by operator type. With
    the bundle's ``.tflite`` (``model``, a path) whose operators those nodes are, a row is one node:
    its ``index`` in the subgraph, the ``tensor`` it outputs and the Keras ``layer`` that names.
    Without it (or where the events do not match the model's operators, or an older result has no
    ``nodes``), a row is one operator type with its nodes summed (``calls``).

    Example:
        >>> p = from_mcu({"instructions": 1000, "cycles": None, "operators": [
        ...     {"operator": "CONV_2D", "count": 2, "instructions": 900, "share": 0.9}]})
        >>> p["unit"], p["rows"][0]["calls"], p["coverage"]
        ('instructions', 2, 0.9)
    """
    unit = "instructions" if mcu.get("instructions") else "cycles"
    operators = mcu.get("operators") or []
    if not operators or not mcu.get(unit):
        return not_available("mcu", "the firmware reported no per-operator counts")
    where = "the emulated board's instruction count" if unit == "instructions" else "the board's SysTick cycles"
    source = (f"TFLite Micro's MicroProfiler in the firmware ({where}), one inference, against the whole "
              "inference's median count")
    nodes = _mcu_nodes(mcu.get("nodes") or [], unit, model)
    if nodes:
        return finish("mcu", unit, nodes, float(mcu[unit]), source + "; a row per node of the model, in the "
                      "order the firmware ran them")
    rows = [{"op": o["operator"], "layer": None, "type": o["operator"], unit: float(o[unit]),
             "calls": int(o.get("count", 1))} for o in operators]
    return finish("mcu", unit, rows, float(mcu[unit]), source + "; a row per operator type")


def _mcu_nodes(nodes: list[dict], unit: str, model) -> list[dict]:
    """Per-node rows where the firmware's events are the model's operators one for one, else []."""
    if not nodes or model is None:
        return []
    try:
        from edgedl.graph import read_tflite

        graph = read_tflite(model)
    except Exception:  # noqa: BLE001 - no readable model: the per-type rows still stand
        return []
    if [op.name for op in graph.ops] != [n["operator"] for n in nodes]:
        return []
    rows = []
    for op, node in zip(graph.ops, nodes):
        tensor = (graph.tensors.get(op.outputs[0]) or {}).get("name") if op.outputs else None
        rows.append({"op": tensor or f"{op.name}#{op.index}", "layer": keras_layer(tensor) if tensor else None,
                     "type": op.name, "index": op.index, "tensor": tensor, unit: float(node[unit]), "calls": 1})
    return rows


def from_vela(bundle) -> dict:
    """Vela's estimated per-operator profile of a Vela bundle: the cycles, MACs and memory access
    cycles its performance model gives each operator it scheduled for the Ethos-U NPU
    (``vela_per_layer.csv``, from ``--verbose-performance`` at compile time), against its network
    total; each row named after the Keras layer its output tensor comes from.

    Nothing here is measured (the NPU is not on this host): the record has ``estimated: true``,
    ``unit: "cycles"``, and ``estimated_total`` where a measured profile has ``measured_total``.
    Vela's rows are its own operators after its rewrites (a Conv2D and its ReLU, each step of a
    Softmax); an operator it leaves to the CPU has no cycles in its model (``target: "CPU"``).

    Args:
        bundle: a bundle (folder or archive) compiled with ``--backend vela``.

    Returns:
        The ``profile`` record, or :func:`not_available`'s (a bundle compiled before the table was
        kept, or not a Vela bundle).

    Example:
        >>> p = from_vela("lenet_u55.edgedl")                     # doctest: +SKIP
        >>> p["estimated"], p["unit"], p["rows"][0]["layer"]      # doctest: +SKIP
        (True, 'cycles', 'fc1')
    """
    from edgedl.backends.vela import PER_LAYER, read_per_layer
    from edgedl.bundle import open_bundle

    opened = open_bundle(str(bundle))
    manifest = opened.manifest
    if manifest["backend"] != "vela":
        return not_available(manifest["backend"], "not a Vela bundle: Vela's estimates are for Ethos-U NPU bundles")
    if PER_LAYER not in {f["path"] for f in manifest.get("files", [])}:
        return not_available("vela", f"the bundle has no {PER_LAYER} (compiled before edgedl kept Vela's per-layer "
                                     "table); compile it again")
    rows, previous = [], None
    for i, r in enumerate(read_per_layer(opened.file(PER_LAYER))):
        layer = keras_layer(r["name"])
        if layer is None and previous and previous["original_op"] == r["original_op"]:
            layer = previous["layer"]  # a step of an operator Vela split, named after its output only
        row = {"op": r["name"] or f"operator {i}", "layer": layer, "type": r["op"], "original_op": r["original_op"],
               "target": r["target"], "cycles": float(r["cycles"] or 0), "calls": 1}
        row |= {k: r[k] for k in ("npu_cycles", "macs", "sram_access_cycles", "dram_access_cycles",
                                  "on_chip_flash_access_cycles", "off_chip_flash_access_cycles", "staging_bytes")}
        rows.append(row)
        previous = row
    estimates = manifest.get("estimates") or {}
    total = estimates.get("cycles") or sum(r["cycles"] for r in rows)
    record = finish("vela", "cycles", rows, float(total),
                    f"Vela {manifest.get('toolchain', {}).get('ethos-u-vela', '')} performance model "
                    f"(--verbose-performance) for {estimates.get('accelerator') or 'the NPU'} at "
                    f"{estimates.get('clock_mhz') or '?'} MHz: an estimate, not a measurement; CPU fallback "
                    "operators have no cycles in it")
    record["estimated"] = True
    record["estimated_total"] = record.pop("measured_total")
    record["tolerance"] = (f"Vela's operators add up to {MIN_COVERAGE['vela']:.0%} to {MAX_COVERAGE:.0%} of its "
                           "network total")
    return record


def vela_refusal(bundle, manifest: dict) -> str:
    """What ``edgedl bench --profile`` says of a Vela bundle, which nothing here can run: where Vela's
    estimated profile is, with its costliest layers (estimates, so never shown as a benchmark).

    Example:
        >>> print(vela_refusal("u55.edgedl", read_manifest("u55.edgedl")))  # doctest: +SKIP
        u55.edgedl runs only on an Ethos-U NPU (ethos-u55-128) ...
    """
    accelerator = (manifest.get("runtime") or {}).get("accelerator", "Ethos-U")
    text = (f"{bundle} runs only on an Ethos-U NPU ({accelerator}), which this host has not: nothing can be measured "
            "here. ")
    profile = from_vela(bundle)
    if not profile.get("available"):
        return text + f"Vela's per-layer estimate: {profile['reason']}"
    by_layer: dict[str, float] = {}
    for r in profile["rows"]:
        by_layer[r["layer"] or r["op"]] = by_layer.get(r["layer"] or r["op"], 0.0) + r["share"]
    top = ", ".join(f"{name} {100 * share:.1f}%" for name, share in sorted(by_layer.items(), key=lambda kv: -kv[1])[:3])
    return text + (f"Vela estimates {profile['estimated_total']:,.0f} cycles, most in {top} (an estimate, not a "
                   f"measurement); every operator's estimate: edgedl.bench.profile.from_vela('{bundle}'), or the "
                   "bundle's vela_per_layer.csv")
