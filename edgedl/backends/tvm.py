"""TVM backend: Relax from the ``.tflite`` (or ``.onnx``), built by LLVM for x86 and, by cross
compilation, for aarch64 and armv7; CUDA and OpenCL code generation for GPUs; MetaSchedule tuning
with a persistent database reused across compiles.

The export is a shared library that TVM's runtime loads (``tvm.runtime.load_module`` and the Relax
virtual machine), with ``kernel_layers.json``: which TFLite operator (and so which Keras layer) each
kernel call of the library computes, for ``edgedl bench --profile``. For GPU targets the device code is also kept as source (``model.cu``,
``model.cl``) and, for CUDA, checked by ``ptxas`` where the toolkit is installed, so a compile
without a GPU still proves the device code assembles.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

from edgedl import _lazy
from edgedl.backends.base import Backend, CompiledModel, check_inputs, check_outputs
from edgedl.errors import BackendError, DeviceError, InputFileError, OptionError, UnsupportedOperatorError
from edgedl.runtime.engines import TVMEngine

log = logging.getLogger(__name__)

KERNEL_MAP = "kernel_layers.json"
KERNEL_MAP_SCHEMA = "edgedl.tvm-kernels/1"


class TVMBackend(Backend):
    name = "tvm"
    extra = "tvm"

    def unsupported_ops(self, graph, target):
        """The operators TVM's TFLite frontend has no converter for, and those it refuses by how they
        are quantized: hybrid (dynamic-range) kernels, a quantized UNIDIRECTIONAL_SEQUENCE_LSTM and an
        int16x8 CONV_2D (each found by compiling such a model)."""
        known = supported_tflite_ops()
        out = {op: "TVM's TFLite frontend has no converter for it" for op in graph.op_counts if op not in known}
        return out | quantized_ops_refused(graph)

    def compile(self, model_path, target, out_dir, options):
        tvm = _lazy.require("tvm")
        from tvm import relax

        start = time.perf_counter()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model_path = Path(model_path)
        operators: list[dict] = []
        mod, specs_in, specs_out = import_model(model_path, exact_int8=options.get("exact_int8", True),
                                                record=operators)
        tvm_target, kind = make_target(target)
        cross = target.tvm.get("cross_compiler")
        if cross and shutil.which(cross) is None:
            package = target.tvm.get("cross_package", cross)
            raise BackendError(f"target '{target.name}' needs the cross compiler {cross}, which is not installed; "
                               f"install it with: apt-get install {package}")
        tuning = {"tuned": False}
        if kind == "llvm" and not options.get("tune"):
            tuning["schedules"] = ("edgedl default CPU schedules (vectorised, register-tiled; "
                                   "edgedl/backends/tvm_schedule.py)"
                                   if options.get("schedules", "edgedl") == "edgedl" else "TVM's stock lowering (unscheduled loops)")
        device_sources: dict[str, str] = {}
        try:
            with _lazy.quiet(), _capture_cuda_source(device_sources):
                if options.get("tune"):
                    from edgedl.backends.tvm_tune import tune_and_build

                    ex, tuning = tune_and_build(mod, tvm_target, target, trials=int(options.get("trials", 64)),
                                                minutes=options.get("tune_minutes"), db_dir=options.get("tuning_db"),
                                                device=options.get("tune_device"))
                elif kind in ("cuda", "opencl", "vulkan"):
                    ex = relax.build(gpu_schedule(mod, tvm_target), target=tvm_target)
                elif kind == "llvm" and options.get("schedules", "edgedl") == "edgedl":
                    from edgedl.backends.tvm_schedule import schedule

                    scheduled_mod = schedule(mod, tvm_target)
                    tuning["kernels"] = sum(1 for f in scheduled_mod.functions.values() if type(f).__name__ == "PrimFunc")
                    ex = relax.build(scheduled_mod, target=tvm_target)
                else:
                    ex = relax.build(mod, target=tvm_target)
            scheduled = kind == "llvm" and options.get("schedules", "edgedl") == "edgedl"
            kernel_map = _kernel_map_or_none(mod, operators, tvm_target, fused=bool(options.get("tune"))
                                             or kind in ("cuda", "opencl", "vulkan") or scheduled)
        except (BackendError, DeviceError, OptionError):
            raise
        except Exception as e:
            raise BackendError(f"TVM build for '{target.name}' failed: {' '.join(str(e).split())[:300]}") from None
        files = ["model.so"]
        if kernel_map is not None:
            from edgedl import _io

            _io.write_json(out_dir / KERNEL_MAP, kernel_map)
            files.append(KERNEL_MAP)
        lib = out_dir / "model.so"
        try:
            # LLVM's debug info is most of a small model's library (a 1.8 MiB LSTM library was 1.1 MiB of
            # DWARF); the symbols stay
            if cross:
                from tvm.support import cc

                ex.export_library(str(lib), fcompile=cc.cross_compiler(cross, options=[STRIP_DEBUG]))
            else:
                ex.export_library(str(lib), options=[STRIP_DEBUG])
        except Exception as e:
            lines = [ln for ln in str(e).splitlines() if "error" in ln.lower()] or str(e).splitlines()
            raise BackendError(f"linking the TVM library for '{target.name}' failed: {lines[0].strip()[:300]}") from None
        checks = {}
        for source_kind, text in _device_sources(ex, device_sources).items():
            name = {"cuda": "model.cu", "opencl": "model.cl"}.get(source_kind, f"model.{source_kind}")
            (out_dir / name).write_text(text)
            files.append(name)
            if source_kind == "cuda":
                checks["ptxas"] = ptxas_check(text, target.gpu.get("arch", "sm_80"), out_dir)
        runtime = {"engine": "tvm", "library": "model.so", "device": {"llvm": "cpu"}.get(kind, kind)}
        return CompiledModel(
            backend=self.name, target=target.name, directory=out_dir, files=files, runtime=runtime,
            inputs=specs_in, outputs=specs_out,
            options={"tvm_target": json.loads(json.dumps(dict(target.tvm["target"]))),
                     "host": target.tvm.get("host"), "cross_compiler": cross, **tuning},
            toolchain=_versions(tvm, cross),
            estimates={"device_code_check": checks} if checks else {},
            compile_time_s=time.perf_counter() - start,
        )

    def load(self, compiled, num_threads=1):
        return TVMEngine(Path(compiled.directory) / compiled.runtime["library"], compiled.inputs, compiled.outputs,
                         device=compiled.runtime.get("device", "cpu"), num_threads=num_threads)


STRIP_DEBUG = "-Wl,--strip-debug"  # linker flag: leave out the kernels' debug info


def quantized_ops_refused(graph) -> dict:
    """{operator: reason} for the operators TVM's TFLite frontend refuses by their quantization."""
    out = {op.name: ("dynamic-range (hybrid) kernel: TVM's TFLite frontend does not import dynamic-range "
                     "quantization; convert with --quantize int8 or float16")
           for op in graph.hybrid_ops()}
    for op in graph.ops:
        acts = graph.activation_dtypes(op)
        if op.name == "UNIDIRECTIONAL_SEQUENCE_LSTM" and acts & {"uint8", "int16"} and "int8" not in acts:
            out[op.name] = ("quantized LSTM other than int8 (int16 cell): edgedl's TVM importer converts "
                            "float and int8 LSTMs only")
        elif op.name == "CONV_2D" and "int16" in acts:
            out[op.name] = "int16x8 convolution: TVM's TFLite frontend lowers int8 convolutions only"
    return out


def supported_tflite_ops() -> set[str]:
    """The TFLite operators TVM's Relax frontend converts (read from its converter table)."""
    _lazy.require("tvm")
    from tvm.relax.frontend.tflite import tflite_frontend

    conv = tflite_frontend.OperatorConverter(None, None, None, None)
    return set(conv.convert_map)


def import_model(path: Path, exact_int8: bool = True, record: list | None = None):
    """Relax module and I/O specs from a ``.tflite`` (exact int8 lowering on) or an ``.onnx``.

    With ``record`` (a list; ``.tflite`` only), each TFLite operator of the main graph is appended to
    it as ``{"index", "op", "inputs", "outputs": [tensor names], "exprs": [the Relax expressions of its
    outputs]}``, for :func:`kernel_map`."""
    if path.suffix == ".onnx":
        from edgedl.backends.onnxruntime import onnx_io_specs

        onnx = _lazy.require("onnx")
        from tvm.relax.frontend.onnx import from_onnx

        specs_in, specs_out = onnx_io_specs(path)
        try:
            proto = onnx.load(str(path))
        except Exception as e:
            raise InputFileError(path, f"not a readable ONNX model ({' '.join(str(e).split())[:200]})") from None
        try:
            with _lazy.quiet():
                mod = from_onnx(proto, shape_dict={s.name: list(s.shape) for s in specs_in},
                                dtype_dict={s.name: s.dtype for s in specs_in})
        except Exception as e:
            raise UnsupportedOperatorError(f"TVM's ONNX frontend cannot import {path.name}: "
                                           f"{' '.join(str(e).split())[:300]}") from None
        return mod, specs_in, specs_out
    tflite = _lazy.require("tflite")
    from tvm.relax.frontend.tflite import from_tflite

    from edgedl.runtime.engines import LiteRTEngine

    engine = LiteRTEngine(path)
    check_inputs(path, [s.name for s in engine.inputs])
    check_outputs(path, [s.name for s in engine.outputs])
    buf = path.read_bytes()
    kwargs = {}
    if exact_int8:
        from edgedl.backends.tvm_int8 import ExactInt8Converter

        kwargs["op_converter"] = ExactInt8Converter
    if record is not None:
        from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter

        kwargs["op_converter"] = _recording(kwargs.get("op_converter", OperatorConverter), record)
    try:
        mod = from_tflite(tflite.Model.GetRootAsModel(buf, 0), **kwargs)
    except Exception as e:
        msg = " ".join(str(e).split())
        raise UnsupportedOperatorError(f"TVM's TFLite frontend cannot import the model: {msg[:300]}") from None
    return mod, engine.inputs, engine.outputs


def _recording(converter: type, sink: list) -> type:
    """``converter`` (a TFLite frontend operator converter class) that, once it has converted a
    graph, lists its operators in ``sink``: index, type, output tensor names and the Relax
    expressions the frontend bound them to (the frontend itself keeps no names on the Relax side)."""
    from tvm.relax.frontend.tflite.tflite_frontend import get_tensor_name

    class Recording(converter):
        def convert_op_to_relax(self):
            super().convert_op_to_relax()
            ops = []  # a nested subgraph converts first; the main graph's, finishing last, is kept
            for i in range(self.subgraph.OperatorsLength()):
                op = self.subgraph.Operators(i)
                names = [get_tensor_name(self.subgraph, t.tensor_idx) for t in self.get_output_tensors(op)]
                inputs = [get_tensor_name(self.subgraph, t.tensor_idx) for t in self.get_input_tensors(op)
                          if t.tensor_idx >= 0]
                exprs = []
                for name in names:
                    try:
                        exprs.append(self.exp_tab.get_expr(name))
                    except (KeyError, AttributeError):
                        continue
                ops.append({"index": i, "op": self.get_op_code_str(op), "inputs": inputs, "outputs": names,
                            "exprs": exprs})
            sink[:] = ops

    return Recording


def _bindings(func) -> list:
    """A Relax function's bindings, in order (all blocks)."""
    return [b for block in func.body.blocks for b in block.bindings]


def _kernel_of(value) -> str | None:
    """The PrimFunc a binding's value calls with ``call_tir`` (its name is the library's symbol)."""
    op = getattr(value, "op", None)
    if getattr(op, "name", "") != "relax.call_tir":
        return None
    return str(value.args[0].name_hint)


def kernel_map(source, legalized, operators: list[dict], fused=None) -> dict:
    """Which TFLite operator each kernel call of the built library computes, in the Relax VM's order.

    The TFLite frontend keeps no operator names in Relax, so each binding of ``source``'s ``main`` is
    given to the operator whose output it leads to (the first operator output bound at or after it: a
    convolution's ``add`` and ``relu`` belong to it); ``legalized`` (LegalizeOps keeps the bindings'
    names) names the kernel each binding calls, which is the library's symbol (the default CPU build
    adds no fusion). ``fused`` (the module after TVM's
    fusion, for tuned and GPU builds) names fused kernels after their parts in order
    (``fused_conv2d_add_relu``); each fused call takes the parts' operators, matched in order.

    Returns:
        ``{"schema", "method", "calls": [{"kernel", "operators": [{"index", "op", "tensor", "layer"}]}]}``
        with ``layer`` the Keras layer the operator's output tensor names, else that of the operator
        producing its first input (a SOFTMAX split off a Dense layer's activation), else None.
    """
    from edgedl.bench.profile import keras_layer

    bindings = _bindings(source["main"])
    position = {b.var.name: i for i, b in enumerate(bindings)}
    owners: list[tuple[int, dict]] = []
    for op in operators:
        places = [position[e.name] for e in op["exprs"] if getattr(e, "name", None) in position]
        places += [i for e in op["exprs"] if not places for i, b in enumerate(bindings) if b.value.same_as(e)]
        if places:
            owners.append((max(places), op))
    owners.sort(key=lambda o: o[0])
    producer = {name: op for op in operators for name in op["outputs"]}

    def describe(op: dict) -> dict:
        tensor = op["outputs"][0] if op["outputs"] else ""
        layer = keras_layer(tensor)
        source = producer.get(op["inputs"][0]) if op.get("inputs") else None
        if layer is None and source is not None and source["outputs"]:
            layer = keras_layer(source["outputs"][0])
        return {"index": op["index"], "op": op["op"], "tensor": tensor, "layer": layer}

    described = {op["index"]: describe(op) for _, op in owners}
    unbound = [op for op in operators if op["index"] not in described]
    last = unbound[-1] if unbound else (owners[-1][1] if owners else None)
    if last is not None and last["index"] not in described:
        described[last["index"]] = describe(last)
    calls = []
    lowered = _bindings(legalized["main"])
    for j, b in enumerate(lowered):
        kernel = _kernel_of(b.value)
        if kernel is None:
            continue
        # a binding LegalizeOps added has no place in the source: it belongs with the next one that has
        i = next((position[c.var.name] for c in lowered[j:] if c.var.name in position), len(bindings))
        owner = next((op for place, op in owners if place >= i), last)
        calls.append({"kernel": kernel, "operators": [] if owner is None else [described[owner["index"]]]})
    method = ("each Relax binding given to the TFLite operator whose output it leads to, in the frontend's "
              "order (the frontend keeps no names); the kernel is the one LegalizeOps gives that binding")
    if fused is not None:
        calls = _fused_calls(fused, calls)
        method += "; fused kernels take their parts' operators, matched by name in order"
    return {"schema": KERNEL_MAP_SCHEMA, "method": method, "calls": calls}


def _fused_calls(fused, parts: list[dict]) -> list[dict]:
    """The calls of a fused module, each with the operators of the unfused calls it is made of: a
    fused kernel ``fused_a_b1_c`` takes the next calls of ``a``, ``b1`` and ``c`` in order (a call
    that fusion folded away, a transpose of constant weights, is passed over)."""
    out, cursor = [], 0
    for b in _bindings(fused["main"]):
        kernel = _kernel_of(b.value)
        if kernel is None:
            continue
        rest, taken, scan = kernel.removeprefix("fused_"), [], cursor
        while rest and scan < len(parts):
            name = parts[scan]["kernel"]
            if rest == name or rest.startswith(name + "_"):
                taken.append(parts[scan])
                rest = rest[len(name) + 1:]
                cursor = scan + 1
            scan += 1
        operators = []
        for part in taken:
            operators += [o for o in part["operators"] if o not in operators]
        out.append({"kernel": kernel, "operators": operators})
    return out


def _kernel_map_or_none(mod, operators: list[dict], tvm_target, fused: bool) -> dict | None:
    """:func:`kernel_map` for the build of ``mod``, whose first steps are run again here as the build
    runs them (they name kernels the same way each time): the default build's dispatch and
    LegalizeOps, and for a ``fused`` one (tuned, GPU) TVM's fusion pipeline. None for an ``.onnx``
    source, or a module it cannot follow: the profile then names kernels only."""
    if not operators:
        return None
    import tvm
    from tvm import relax
    from tvm.relax import backend

    try:
        with tvm_target:
            legalized = tvm.transform.Sequential([backend.DispatchSampling(), backend.DispatchSortScan(),
                                                  relax.transform.LegalizeOps()])(mod)
            after = relax.get_pipeline("zero")(mod) if fused else None
        return kernel_map(mod, legalized, operators, after)
    except Exception as e:  # noqa: BLE001 - the map only names layers; the build stands without it
        log.warning("TVM: no kernel-to-layer map (%s)", " ".join(str(e).split())[:200])
        return None


def make_target(target):
    """A ``tvm.target.Target`` from the target file's dict (TVM 0.27 takes only dicts)."""
    tvm = _lazy.require("tvm")
    spec = dict(target.tvm["target"])
    kind = spec.get("kind")
    if kind == "vulkan" and not _has_codegen("vulkan"):
        raise BackendError("this TVM build has no Vulkan (SPIR-V) code generator; use the opencl target "
                           "or a TVM built with USE_VULKAN=ON")
    host = target.tvm.get("host")
    try:
        return (tvm.target.Target(spec, host=host) if host else tvm.target.Target(spec)), kind
    except Exception as e:
        raise BackendError(f"target '{target.name}': TVM rejects its target dict {spec}: "
                           f"{' '.join(str(e).split())[:200]}") from None


def _has_codegen(kind: str) -> bool:
    import tvm_ffi

    return tvm_ffi.get_global_func(f"target.build.{kind}", allow_missing=True) is not None


def gpu_schedule(mod, target):
    """Legalize and give every GPU kernel a thread binding with dlight's default rules."""
    from tvm import relax
    from tvm.s_tir import dlight as dl

    with target:
        mod = relax.get_pipeline("zero")(mod)
        mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                      dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
    return mod


class _capture_cuda_source:
    """Keep the CUDA C source TVM generates (it compiles it with nvcc and drops the text)."""

    def __init__(self, sink: dict):
        self.sink = sink

    def __enter__(self):
        import tvm_ffi

        self.previous = tvm_ffi.get_global_func("tvm_callback_cuda_postproc", allow_missing=True)
        sink, previous = self.sink, self.previous

        def postproc(code, target):
            sink["cuda"] = sink.get("cuda", "") + code
            return previous(code, target) if previous is not None else code

        tvm_ffi.register_global_func("tvm_callback_cuda_postproc", postproc, override=True)
        return self

    def __exit__(self, *exc):
        import tvm_ffi

        if self.previous is not None:
            tvm_ffi.register_global_func("tvm_callback_cuda_postproc", self.previous, override=True)
        else:
            tvm_ffi.register_global_func("tvm_callback_cuda_postproc", lambda code, target: code, override=True)
        return False


def _device_sources(ex, captured: dict) -> dict:
    sources = dict(captured)

    def walk(m):
        for sub in m.imports:
            if sub.kind == "opencl":
                try:
                    sources["opencl"] = sub.inspect_source("cl")
                except Exception:
                    pass
            walk(sub)

    walk(ex.mod)
    return {k: v for k, v in sources.items() if v}


def ptxas_check(cuda_source: str, arch: str, work: Path) -> dict:
    """Compile the CUDA source to PTX and assemble it for ``arch`` with nvcc/ptxas, without a GPU."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not Path(nvcc).exists():
        return {"ok": None, "note": "nvcc not installed; device code not assembled"}
    cu = work / ".check.cu"
    cu.write_text(cuda_source)
    try:
        proc = subprocess.run([nvcc, "--cubin", f"-arch={arch}", "-o", str(work / ".check.cubin"), str(cu)],
                              capture_output=True, text=True, timeout=600)
    finally:
        cu.unlink(missing_ok=True)
    cubin = work / ".check.cubin"
    size = cubin.stat().st_size if cubin.exists() else 0
    cubin.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise BackendError(f"nvcc/ptxas rejects the generated CUDA code for {arch}: {proc.stderr.strip()[:300]}")
    return {"ok": True, "tool": "nvcc --cubin", "arch": arch, "cubin_bytes": size}


def _versions(tvm, cross) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"apache-tvm": tvm.__version__}
    try:
        out["apache-tvm-ffi"] = version("apache-tvm-ffi")
    except PackageNotFoundError:
        pass
    if cross:
        try:
            out[cross] = subprocess.run([cross, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            pass
    return out
