"""TFLite Micro backend: the ``.tflite`` as a C array for a microcontroller, with its measured arena.

Compiling here means: run TFLM's own interpreter on the model to find the smallest tensor arena it
works in (a bisection over real allocations, not a formula), check arena and model against the
target's RAM and flash budgets, and write ``model_data.cc``/``model_data.h`` for the firmware beside
the ``.tflite``. The interpreter is TFLM's reference C++ code, so the fidelity check runs it here
for every target.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from edgedl import _io, _isolate
from edgedl.backends.base import Backend, CompiledModel
from edgedl.errors import BackendError, OptionError, UnsupportedOperatorError

KIB = 1024

# What the firmware needs besides the arena and the model, stated so the fit check can be read and
# overridden (backend options runtime_ram_kb and code_flash_kb):
RUNTIME_RAM_BYTES = 16 * KIB      # interpreter and op resolver objects, the call stack of the kernels, C runtime
CODE_FLASH_BYTES = 40 * KIB       # TFLM's interpreter, allocator and flatbuffer code ...
KERNEL_FLASH_BYTES = 4 * KIB      # ... plus about this much per distinct operator kernel linked in

ARENA_ALIGNMENT = 16              # TFLM aligns the arena to 16 bytes; sizes are searched in these steps
MAX_ARENA_BYTES = 1 << 30
OPTIONS = ("array_name", "runtime_ram_kb", "code_flash_kb", "firmware", "kernels")
KERNEL_SETS = ("cmsis_nn", "reference")
STEP_TIMEOUT_S = 120.0            # one build or run of TFLM's interpreter in a child process


class TFLMBackend(Backend):
    name = "tflm"
    extra = "micro"

    def runs_here(self, target):
        """TFLM's reference interpreter runs on this host for every target: the fidelity check is real."""
        return True, ""

    def unsupported_ops(self, graph, target):
        """The operators TFLM's op resolver lacks, found by building its interpreter on the model."""
        path = Path(graph.path)
        if not path.is_file():
            return {}
        missing = _isolate.run(find_missing_operators, path.read_bytes(), file=path, tool="TFLite Micro",
                               action="looking up its operators", timeout=STEP_TIMEOUT_S,
                               error=BackendError)
        return {op: "TFLite Micro's op resolver has no kernel for it" for op in missing} | quantized_ops_refused(graph)

    def compile(self, tflite_path, target, out_dir, options):
        start = time.perf_counter()
        opts = _check_options(options)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model = Path(tflite_path).read_bytes()
        # TFLite Micro is native code reading an untrusted model: every step that builds or runs its
        # interpreter here does so in a child process; a crash is a BackendError naming the file, so
        # that a target with other backends can still try them.
        if _isolate.fork_is_safe("TFLite Micro"):
            arena = _analyse(model, tflite_path)
        else:  # forks of this process would crash TFLite Micro: one fresh interpreter forks them instead
            arena = _isolate.run(_analyse, model, tflite_path, file=tflite_path, tool="TFLite Micro",
                                 action="analysing it", timeout=20 * STEP_TIMEOUT_S, error=BackendError, fresh=True)
        fit = fit_check(target, arena["arena_bytes"], len(model), arena["num_kernels"],
                        opts["runtime_ram_bytes"], opts["code_flash_bytes"])
        if not fit["fits"]:
            raise BackendError(f"the model does not fit {target.name}: {'; '.join(fit['problems'])}")
        firmware, no_firmware = None, None
        if opts["firmware"] and firmware_core(target):
            try:
                firmware = build_target_firmware(model, target, out_dir / "firmware", arena["arena_bytes"],
                                                 opts["kernels"])
            except UnsupportedOperatorError as e:  # e.g. the Signal library's ops: the C array still serves
                shutil.rmtree(out_dir / "firmware", ignore_errors=True)
                no_firmware = f"no firmware built: {e}"
            except BackendError as e:  # no compiler, no sources: the C array alone is still there to take
                if "does not fit" in str(e):
                    raise
                raise BackendError(f"{e} (or compile with --no-firmware for the model's C array alone)") from None
            else:
                fit = measured_fit(target, firmware)
        (out_dir / "model.tflite").write_bytes(model)
        sha = _io.sha256_file(out_dir / "model.tflite")
        source, header = c_array(model, opts["array_name"], sha, arena["arena_bytes"])
        (out_dir / "model_data.cc").write_text(source)
        (out_dir / "model_data.h").write_text(header)
        import tflite_micro

        estimates = {
            "arena_bytes": arena["arena_bytes"],
            "arena_search": arena["search"],
            "arena_breakdown": arena["breakdown"],
            "model_bytes": len(model),
            "operator_kernels": arena["kernels"],
            **{k: v for k, v in fit.items() if k != "problems"},
            "note": (f"arena found by bisection in {ARENA_ALIGNMENT}-byte steps with TFLM's reference kernels on "
                     "this 64-bit host: a 32-bit MCU needs the same or less for the same kernels (4-byte "
                     "pointers); optimised kernels (CMSIS-NN) may ask for other scratch buffers, so keep a margin. "
                     + (f"Flash and RAM are read from the linked firmware ({firmware.core}, {firmware.kernels} "
                        "kernels, its arena with a margin for the kernels' scratch buffers)" if firmware else
                        f"Runtime RAM ({fit['runtime_ram_bytes']} B) and code size ({fit['code_flash_bytes']} B) "
                        "are stated allowances, not measurements")),
        }
        files = ["model.tflite", "model_data.cc", "model_data.h"]
        runtime = {"engine": "tflm", "model": "model.tflite", "arena_size": arena["arena_bytes"]}
        if no_firmware:
            estimates["firmware"] = {"built": False, "reason": no_firmware}
        if firmware:
            estimates["firmware"] = firmware_record(firmware)
            (out_dir / "firmware" / "firmware.map").unlink(missing_ok=True)  # a build output `make` writes again
            files += sorted(str(f.relative_to(out_dir)) for f in (out_dir / "firmware").rglob("*")
                            if f.is_file() and "build" not in f.relative_to(out_dir / "firmware").parts)
            runtime["firmware"] = {"elf": "firmware/firmware.elf", "core": firmware.core, "board": firmware.board,
                                   "kernels": firmware.kernels, "arena_size": firmware.arena_bytes}
        return CompiledModel(
            backend=self.name, target=target.name, directory=out_dir,
            files=files,
            runtime=runtime,
            inputs=arena["inputs"], outputs=arena["outputs"],
            options={"array_name": opts["array_name"], "runtime_ram_bytes": opts["runtime_ram_bytes"],
                     "code_flash_bytes": opts["code_flash_bytes"], "firmware": bool(firmware),
                     **({"kernels": firmware.kernels} if firmware else {})},
            toolchain={"tflite-micro": getattr(tflite_micro, "__version__", "unknown"),
                       **({"arm-none-eabi-gcc": firmware.toolchain,
                           "tflite-micro-sources": firmware.sources} if firmware else {})},
            estimates=estimates, compile_time_s=time.perf_counter() - start,
        )

    def reference_kernels(self, compiled):
        """TFLite Micro's kernels are LiteRT's portable reference kernels (not XNNPACK's arithmetic)."""
        return "reference"

    def load(self, compiled, num_threads=1):
        from edgedl.runtime.tflm import TFLMEngine

        return TFLMEngine(Path(compiled.directory) / compiled.runtime["model"],
                          arena_size=compiled.runtime["arena_size"], num_threads=num_threads)


def _analyse(model: bytes, name) -> dict:
    """The operators TFLite Micro lacks (an UnsupportedOperatorError), else :func:`find_arena_size`."""
    missing = _isolate.run(find_missing_operators, model, file=name, tool="TFLite Micro",
                           action="looking up its operators", timeout=STEP_TIMEOUT_S, error=BackendError)
    if missing:
        raise UnsupportedOperatorError(
            f"TFLite Micro has no kernel for operator(s) {', '.join(missing)}; replace them in the model "
            "or run it with another backend")
    return find_arena_size(model, name=name)


def quantized_ops_refused(graph) -> dict:
    """{operator: reason} for the operators whose kernels TFLite Micro has but refuses as they are
    quantized (its interpreter fails to prepare them): hybrid (dynamic-range) kernels, and DEQUANTIZE
    of float16 weights."""
    out = {op.name: ("dynamic-range (hybrid) kernel: TFLite Micro takes no hybrid models; convert with "
                     "--quantize int8") for op in graph.hybrid_ops()}
    for g in (graph, *graph.nested):
        for op in g.ops:
            if op.name == "DEQUANTIZE" and op.inputs and g.tensors.get(op.inputs[0], {}).get("dtype") == "float16":
                out[op.name] = ("float16 weights: TFLite Micro's DEQUANTIZE takes int8, uint8 or int16 input; "
                                "convert with --quantize int8 or none")
    return out


def _check_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise OptionError(f"unknown tflm option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    name = options.get("array_name", "g_model_data")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise OptionError(f"tflm option array_name must be a C identifier, got {name!r}")
    kernels = options.get("kernels")
    if kernels is not None and kernels not in KERNEL_SETS:
        raise OptionError(f"--kernels must be one of {', '.join(KERNEL_SETS)}, got {kernels!r}")
    firmware = options.get("firmware", True)
    if not isinstance(firmware, bool):
        raise OptionError(f"tflm option firmware must be true or false, got {firmware!r}")
    out = {"array_name": name, "kernels": kernels, "firmware": firmware}
    for key, default in (("runtime_ram_kb", RUNTIME_RAM_BYTES), ("code_flash_kb", CODE_FLASH_BYTES)):
        value = options.get(key)
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise OptionError(f"tflm option {key} must be a non-negative number of KiB, got {value!r}")
        out[key.replace("_kb", "_bytes")] = default if value is None else int(value * KIB)
    return out


def find_missing_operators(model: bytes) -> list[str]:
    """Every operator of ``model`` that TFLM's op resolver lacks.

    TFLM stops at the first operator it cannot resolve, so the search builds the interpreter, drops
    the operators it named from a copy of the model, and tries again until nothing more is missing.
    """
    from edgedl.runtime.tflm import build_interpreter, missing_operators

    arena = 10 * len(model) + 64 * KIB
    found: list[str] = []
    current = model
    for _ in range(256):
        interpreter, log = build_interpreter(current, arena)
        new = [op for op in missing_operators(log) if op not in found]
        if interpreter is not None or not new:
            break
        found += new
        current = _without_operators(model, set(found))
    return found


def _without_operators(model: bytes, names: set[str]) -> bytes:
    """A copy of ``model`` without the operators called ``names`` (for the missing-kernel search only)."""
    import flatbuffers
    from tflite_micro import runtime

    fb = runtime.schema_fb
    obj = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(model, 0))
    codes = [_op_name(c) for c in obj.operatorCodes]
    for subgraph in obj.subgraphs:
        subgraph.operators = [op for op in (subgraph.operators or [])
                              if op.opcodeIndex >= len(codes) or codes[op.opcodeIndex] not in names]
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(obj.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


_BUILTIN_NAMES: dict = {}


def _op_name(code) -> str:
    """The operator name TFLM prints for an operator code (builtin name, or the custom code)."""
    from tflite_micro import runtime

    fb = runtime.schema_fb
    if not _BUILTIN_NAMES:
        _BUILTIN_NAMES.update({v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")})
    builtin = runtime.get_builtin_code_from_operator_code(code)
    if builtin == fb.BuiltinOperator.CUSTOM:
        # an OperatorCodeT (object API) has .customCode; a flatbuffer OperatorCode has CustomCode()
        custom = code.customCode if hasattr(code, "customCode") else code.CustomCode()
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    return _BUILTIN_NAMES.get(builtin, str(builtin))


def _kernels(model: bytes) -> list[str]:
    from tflite_micro import runtime

    fb = runtime.schema_fb
    obj = fb.Model.GetRootAsModel(model, 0)
    return sorted({_op_name(obj.OperatorCodes(i)) for i in range(obj.OperatorCodesLength())})


def find_arena_size(model: bytes, name: str | os.PathLike = "model.tflite") -> dict:
    """The smallest tensor arena (a multiple of 16 bytes) TFLM builds and runs ``model`` in.

    Doubles from 4 KiB until the interpreter builds, then bisects between the last failure and the
    first success. Each size is tried in a child process: TFLM can crash (SIGSEGV, seen on DS-CNN)
    on an arena that is too small instead of failing, and such a crash counts as "too small". The
    found size is checked in one more child with an inference on zeros, which also reads the
    allocation breakdown and the input and output specs; the size 16 bytes smaller is a recorded
    failure.

    Args:
        model: the ``.tflite`` flatbuffer.
        name: the file it came from, for messages.

    Returns:
        {"arena_bytes", "search": {...}, "breakdown": [...], "kernels": [...], "num_kernels",
        "inputs", "outputs"}.

    Raises:
        BackendError: TFLM does not build the model even in a 1 GiB arena (its log, or the signal
            it died of, says why).
            A crash or a hang of TFLM running the model in the arena it was built in is one too (another
            backend may still take the model).
    """
    attempts = 0
    crashes: list[str] = []

    def works(size):
        nonlocal attempts
        attempts += 1
        answer, died = _isolate.died(_try_arena, model, size, timeout=STEP_TIMEOUT_S)
        if died:
            crashes.append(died)
            return False, f"TFLite Micro died of {died}"
        return answer

    low, high = 0, 4 * KIB                          # low fails (or is 0), high is being tried
    ok, log = works(high)
    while not ok:
        if high >= MAX_ARENA_BYTES:
            why = (f"it crashed with {crashes[-1]} in every arena tried" if len(crashes) == attempts
                   else ' '.join(log.split())[-200:])
            raise BackendError(f"TFLite Micro cannot set up {Path(name).name} even in a {MAX_ARENA_BYTES >> 20} "
                               f"MiB arena ({why}); the file is malformed or needs another backend")
        low, high = high, high * 2
        ok, log = works(high)
    while high - low > ARENA_ALIGNMENT:
        mid = (low + high) // 2 // ARENA_ALIGNMENT * ARENA_ALIGNMENT
        if mid <= low:
            break
        ok, _ = works(mid)
        if ok:
            high = mid
        else:
            low = mid
    checked = _isolate.run(_check_arena, model, high, file=name, tool="TFLite Micro",
                           action=f"running it in its {high}-byte arena", timeout=STEP_TIMEOUT_S, error=BackendError)
    kernels = _kernels(model)
    return {"arena_bytes": high, "breakdown": checked["breakdown"], "kernels": kernels, "num_kernels": len(kernels),
            "search": {"step_bytes": ARENA_ALIGNMENT, "attempts": attempts, "largest_failing_bytes": low},
            "inputs": checked["inputs"], "outputs": checked["outputs"]}


def _try_arena(model: bytes, size: int) -> tuple[bool, str]:
    """(builds, TFLM's log tail) for one arena size (run in a child process)."""
    from edgedl.runtime.tflm import build_interpreter

    interpreter, log = build_interpreter(model, size)
    return interpreter is not None, log[-300:]


def _check_arena(model: bytes, size: int) -> dict:
    """Build TFLM in ``size`` bytes, run it once on zeros, and read its allocations and I/O specs
    (run in a child process)."""
    import numpy as np

    from edgedl.runtime.tflm import allocation_report, build_interpreter, io_specs

    best, log = build_interpreter(model, size)
    if best is None:
        raise BackendError(f"TFLite Micro did not rebuild the model in its {size}-byte arena: "
                           f"{' '.join(log.split())[-200:]}")
    inputs, outputs = io_specs(model, best)
    for i, spec in enumerate(inputs):
        best.set_input(np.zeros(spec.shape, dtype=spec.dtype), i)
    try:
        best.invoke()
    except RuntimeError as e:
        raise BackendError(f"TFLite Micro failed to run the model in its {size}-byte arena: {e}") from None
    breakdown, _ = allocation_report(best)
    return {"breakdown": breakdown, "inputs": inputs, "outputs": outputs}


def fit_check(target, arena_bytes: int, model_bytes: int, num_kernels: int,
              runtime_ram_bytes: int = RUNTIME_RAM_BYTES, code_flash_bytes: int = CODE_FLASH_BYTES) -> dict:
    """RAM (arena + runtime) and flash (model + code) needed against the target's budgets.

    Returns a dict with the needs, the budgets, ``fits`` and ``problems`` (one sentence per budget
    exceeded, naming the budget and by how much). A target without a budget passes that check.
    """
    code = code_flash_bytes + KERNEL_FLASH_BYTES * num_kernels
    ram_needed = arena_bytes + runtime_ram_bytes
    flash_needed = model_bytes + code
    problems = []
    ram, flash = target.ram_bytes, target.flash_bytes
    if ram is not None and ram_needed > ram:
        problems.append(f"needs {_kib(ram_needed)} of RAM (arena {_kib(arena_bytes)} + {_kib(runtime_ram_bytes)} "
                        f"runtime), {target.name} has {_kib(ram)}: {_kib(ram_needed - ram)} over")
    if flash is not None and flash_needed > flash:
        problems.append(f"needs {_kib(flash_needed)} of flash (model {_kib(model_bytes)} + {_kib(code)} code), "
                        f"{target.name} has {_kib(flash)}: {_kib(flash_needed - flash)} over")
    return {"ram_needed_bytes": ram_needed, "ram_budget_bytes": ram, "runtime_ram_bytes": runtime_ram_bytes,
            "flash_needed_bytes": flash_needed, "flash_budget_bytes": flash, "code_flash_bytes": code,
            "fits": not problems, "problems": problems}


def firmware_core(target) -> str | None:
    """The Cortex-M core edgedl builds a firmware for on an MCU target (None: not an MCU, or a core
    without an emulated board)."""
    if target.kind != "mcu":
        return None
    from edgedl.mcu.boards import BOARDS

    arch = str(target.cpu.get("arch", ""))
    return arch if arch in BOARDS else None


def build_target_firmware(model: bytes, target, out: Path, arena_bytes: int, kernels: str | None):
    """The firmware project and ELF for ``target``'s core (:func:`edgedl.mcu.build.build_firmware`),
    with the measured arena plus a quarter and 4 KiB for the optimised kernels' scratch buffers."""
    from edgedl.mcu.build import build_firmware

    return build_firmware(model, core=firmware_core(target), kernels=kernels, out_dir=out,
                          arena_bytes=arena_bytes + arena_bytes // 4 + 4096)


def measured_fit(target, firmware) -> dict:
    """Flash (text + data) and RAM (data + bss: arena, stack, heap) of the linked firmware against the
    target's budgets; a BackendError with the numbers when it does not fit."""
    problems = []
    ram, flash = target.ram_bytes, target.flash_bytes
    if ram is not None and firmware.ram_bytes > ram:
        problems.append(f"the firmware needs {_kib(firmware.ram_bytes)} of RAM (arena {_kib(firmware.arena_bytes)}, "
                        f"data, stack and heap), {target.name} has {_kib(ram)}: {_kib(firmware.ram_bytes - ram)} over")
    if flash is not None and firmware.flash_bytes > flash:
        problems.append(f"the firmware needs {_kib(firmware.flash_bytes)} of flash (model {_kib(firmware.model_bytes)} "
                        f"and code), {target.name} has {_kib(flash)}: {_kib(firmware.flash_bytes - flash)} over")
    if problems:
        raise BackendError(f"the model does not fit {target.name}: {'; '.join(problems)}")
    return {"ram_needed_bytes": firmware.ram_bytes, "ram_budget_bytes": ram, "flash_needed_bytes": firmware.flash_bytes,
            "flash_budget_bytes": flash, "fits": True, "measured": "read from the linked firmware's ELF"}


def firmware_record(firmware) -> dict:
    """What the manifest says of a firmware build."""
    return {"built": True, "core": firmware.core, "board": firmware.board, "kernels": firmware.kernels,
            "operators": firmware.operators, "flash_bytes": firmware.flash_bytes, "ram_bytes": firmware.ram_bytes,
            "text_bytes": firmware.text_bytes, "data_bytes": firmware.data_bytes, "bss_bytes": firmware.bss_bytes,
            "arena_bytes": firmware.arena_bytes, "build_seconds": firmware.build_seconds,
            "library_compiled": firmware.library_compiled, "library_files": firmware.library_files}


def _kib(n: int) -> str:
    kib = n / KIB
    return f"{kib:.0f} KiB" if kib == int(kib) else f"{kib:.1f} KiB"


def c_array(model: bytes, name: str, sha256: str, arena_bytes: int) -> tuple[str, str]:
    """(``model_data.cc``, ``model_data.h``): the model as an aligned ``const unsigned char`` array.

    Example:
        >>> source, header = c_array(b"\\x1c\\x00\\x00\\x00TFL3", "g_model_data", "ab" * 32, 1024)
        >>> "alignas(16) const unsigned char g_model_data[]" in source
        True
    """
    guard = f"EDGEDL_{name.upper()}_H_"
    stamp = (f"// Generated by edgedl from model.tflite ({len(model)} bytes, sha256 {sha256}).\n"
             "// Do not edit: recompile the model instead.\n")
    rows = []
    for i in range(0, len(model), 12):
        rows.append("  " + ", ".join(f"0x{b:02x}" for b in model[i:i + 12]) + ",")
    source = (stamp + f'\n#include "model_data.h"\n\n'
              f"// TFLite Micro reads the flatbuffer in place: keep it 16-byte aligned.\n"
              f"alignas(16) const unsigned char {name}[] = {{\n" + "\n".join(rows) + "\n};\n"
              f"const unsigned int {name}_len = {len(model)};\n")
    header = (stamp + f"\n#ifndef {guard}\n#define {guard}\n\n"
              f"extern const unsigned char {name}[];\n"
              f"extern const unsigned int {name}_len;\n\n"
              f"// The smallest tensor arena TFLite Micro's reference kernels ran this model in (measured by\n"
              f"// edgedl); add a margin for optimised kernels such as CMSIS-NN.\n"
              f"constexpr unsigned int {name}_arena_size = {arena_bytes};\n\n"
              f"#endif  // {guard}\n")
    return source, header
