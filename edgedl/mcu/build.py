"""Build a bare-metal firmware that runs one ``.tflite`` model with TFLite Micro on a Cortex-M core.

:func:`build_firmware` writes a complete project (the model as a C array, an operator resolver
generated for exactly the model's operators, the arena size, the harness ``main`` speaking the
protocol of :mod:`edgedl.mcu.protocol`, the board's startup code and linker script, and a Makefile
that rebuilds everything with ``arm-none-eabi-gcc``) and links it into an ELF whose flash and RAM it
reads back. It sits after ``compile`` (which measures the arena) and before
:mod:`edgedl.mcu.emulate` (which runs the ELF).

The TFLite Micro and CMSIS-NN objects are compiled once per (core, kernels, flags) into the user
cache (``<cache>/mcu/objects``), only the files the model's operators need, in parallel; another
model with the same operators then only compiles its own four files and links.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from edgedl.errors import BackendError, OptionError, UnsupportedOperatorError
from edgedl.mcu import sources as _sources
from edgedl.mcu.boards import Board, board_for

log = logging.getLogger(__name__)

KERNELS = ("cmsis_nn", "reference")
INSTALL_HINT = ("apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib "
                "(or scripts/system-deps.sh)")
TOOLCHAIN_PREFIX = "arm-none-eabi-"
COMPILE_TIMEOUT_S = 300
STACK_BYTES = 16 * 1024
HEAP_BYTES = 8 * 1024
UART_BAUDDIV = 16
HARNESS = Path(__file__).with_name("harness") / "main.cc"

TFLM = "tensorflow/lite/micro"
KERNEL_DIR = f"{TFLM}/kernels"
CMSIS_NN_KERNEL_DIR = f"{KERNEL_DIR}/cmsis_nn"
# TFLite's shared files TFLite Micro compiles (its sources.inc TFL_CC_SRCS, without array.cc).
TFL_SOURCES = (
    "tensorflow/lite/kernels/kernel_util.cc",
    "tensorflow/lite/kernels/internal/runtime_shape.cc",
    "tensorflow/lite/kernels/internal/portable_tensor_utils.cc",
    "tensorflow/lite/kernels/internal/tensor_ctypes.cc",
    "tensorflow/lite/kernels/internal/reference/portable_tensor_utils.cc",
    "tensorflow/lite/kernels/internal/common.cc",
    "tensorflow/lite/kernels/internal/quantization_util.cc",
    "tensorflow/lite/kernels/internal/tensor_utils.cc",
    "tensorflow/lite/core/api/flatbuffer_conversions.cc",
    "tensorflow/lite/core/api/tensor_utils.cc",
    "tensorflow/lite/core/c/common.cc",
    "tensorflow/compiler/mlir/lite/schema/schema_utils.cc",
    "tensorflow/compiler/mlir/lite/core/api/error_reporter.cc",
)
# Kernel files every model links (helpers the kernels share).
KERNEL_ALWAYS = ("kernel_util.cc", "micro_tensor_utils.cc")
# Kernel files that call into shared files defining no operator of their own (so no Register_ names them).
KERNEL_HELPERS = {"unidirectional_sequence_lstm.cc": ("lstm_eval.cc", "lstm_eval_common.cc")}
# Files of the interpreter's folder that a firmware does not need (tests' helpers, recorders).
CORE_SKIPPED = ("test_helpers.cc", "test_helper_custom_ops.cc", "fake_micro_context.cc", "mock_micro_graph.cc",
                "recording_micro_allocator.cc", "debug_log.cc")


@dataclass
class FirmwareBuild:
    """A linked firmware and the project it was built from.

    ``flash_bytes`` is text + data of the ELF (code, read-only data with the model, initialised
    data's load image); ``ram_bytes`` is data + bss (the arena, stack and heap included).
    """

    elf: Path
    project_dir: Path
    core: str
    board: str
    kernels: str
    operators: list[str]
    arena_bytes: int
    model_bytes: int
    flash_bytes: int
    ram_bytes: int
    text_bytes: int
    data_bytes: int
    bss_bytes: int
    library_files: int
    library_compiled: int
    library_seconds: float
    build_seconds: float
    toolchain: str
    sources: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """The build as JSON-ready data (paths as strings)."""
        out = asdict(self)
        out["elf"], out["project_dir"] = str(self.elf), str(self.project_dir)
        return out


@dataclass(frozen=True)
class _Unit:
    """One compilation: a source, the object it makes, how it is compiled."""

    source: Path
    obj: str          # object path relative to the object folder
    lang: str         # "c" or "c++"
    opt: str          # "-Os" or "-O2"
    root: str         # the source tree it belongs to (a key of the Makefile's variables)
    rel: str          # path inside that tree
    group: str = "core"  # "core" (interpreter, same for all kernel sets), "kernels" or "app"


# ----------------------------------------------------------------------------- toolchain


@lru_cache(maxsize=None)
def toolchain() -> dict:
    """Find arm-none-eabi-gcc/g++/size with newlib (nano) and the newlib C++ library.

    Returns:
        {"gcc", "g++", "size", "version"}.

    Raises:
        BackendError: one of them is missing; the message gives the apt-get line.

    Example:
        >>> toolchain()["version"].startswith("arm-none-eabi-gcc")  # doctest: +SKIP
        True
    """
    tools = {}
    for tool in ("gcc", "g++", "size"):
        path = shutil.which(TOOLCHAIN_PREFIX + tool)
        if not path:
            raise BackendError(f"{TOOLCHAIN_PREFIX}{tool} is not installed (needed to build MCU firmware); "
                               f"install it with: {INSTALL_HINT}")
        tools[tool] = path
    specs = _run([tools["gcc"], "-print-file-name=nano.specs"], "locating newlib").strip()
    if not os.path.isabs(specs):
        raise BackendError(f"newlib for {TOOLCHAIN_PREFIX}gcc is not installed (no nano.specs); "
                           f"install it with: {INSTALL_HINT}")
    probe = subprocess.run([tools["g++"], "-mthumb", "-mcpu=cortex-m4", "-x", "c++", "-E", "-", "-o", os.devnull],
                           input="#include <cstdint>\n#include <new>\n", capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        raise BackendError(f"the newlib C++ library for {TOOLCHAIN_PREFIX}g++ is not installed (<cstdint> not "
                           f"found); install it with: {INSTALL_HINT}")
    tools["version"] = _run([tools["gcc"], "--version"], "reading its version").splitlines()[0].strip()
    return tools


def _run(cmd: list[str], what: str, cwd=None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise BackendError(f"{Path(cmd[0]).name} took over {COMPILE_TIMEOUT_S} s {what}") from None
    if done.returncode != 0:
        raise BackendError(f"{Path(cmd[0]).name} failed {what}: {_tail(done.stderr or done.stdout)}")
    return done.stdout


def _tail(text: str, n: int = 400) -> str:
    lines = [x for x in text.splitlines() if "error" in x.lower()] or text.splitlines()
    return " ".join(" ".join(lines[:3]).split())[:n]


# ----------------------------------------------------------------------------- the model's operators


def model_operators(model: bytes) -> list[str]:
    """The operator names (builtin names, or custom codes) used anywhere in ``model``, sorted.

    Example:
        >>> model_operators(open("lenet_int8.tflite", "rb").read())  # doctest: +SKIP
        ['CONV_2D', 'FULLY_CONNECTED', 'MAX_POOL_2D', 'RESHAPE', 'SOFTMAX']
    """
    return _read_operators(model)[0]


def _read_operators(model: bytes) -> tuple[list[str], int]:
    """(sorted operator names, number of operator nodes in all subgraphs)."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    try:
        root = schema.Model.GetRootAs(model, 0)
        ops = set()
        for i in range(root.OperatorCodesLength()):
            code = root.OperatorCodes(i)
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin == schema.BuiltinOperator.CUSTOM:
                ops.add((code.CustomCode() or b"CUSTOM").decode("utf-8", "replace"))
            else:
                ops.add(names.get(builtin, str(builtin)))
        nodes = sum(root.Subgraphs(k).OperatorsLength() for k in range(root.SubgraphsLength()))
    except Exception as e:  # a flatbuffer that is not a TFLite model fails in many ways
        raise BackendError(f"could not read the operators of the model ({' '.join(str(e).split())[:120]})") from None
    return sorted(ops), nodes


def resolver_table(tflm: Path) -> dict[str, tuple[str, str]]:
    """``{operator: (MicroMutableOpResolver method, Register_ function)}`` read from TFLite Micro's
    ``micro_mutable_op_resolver.h`` (custom operators by their custom code)."""
    text = (tflm / TFLM / "micro_mutable_op_resolver.h").read_text()
    table = {}
    for m in re.finditer(r"TfLiteStatus (Add\w+)\((.*?)\)\s*\{(.*?)\n  \}", text, re.S):
        method, params, body = m.groups()
        reg = re.search(r"Register_(\w+)\(\)", params + body)
        builtin = re.search(r"BuiltinOperator_(\w+)", body)
        custom = re.search(r'AddCustom\(\s*"(\w+)"', body)
        if method in ("AddBuiltin", "AddCustom") or not reg:
            continue
        if builtin:
            table.setdefault(builtin.group(1), (method, reg.group(1)))
        elif custom:
            table.setdefault(custom.group(1), (method, reg.group(1)))
    return table


def _definitions(folder: Path) -> dict[str, str]:
    """``{registration name: file name}`` of the ``Register_X()`` functions defined in ``folder``."""
    out = {}
    for path in sorted(folder.glob("*.cc")):
        if path.name.endswith("_test.cc"):
            continue
        for name in re.findall(r"TFLMRegistration\s+Register_(\w+)\s*\(\s*\)\s*\{", path.read_text(errors="replace")):
            out.setdefault(name, path.name)
    return out


# ----------------------------------------------------------------------------- compilation units


def _flags(board: Board, kernels: str) -> dict[str, list[str]]:
    defines = ["-DTF_LITE_STATIC_MEMORY", "-DTF_LITE_DISABLE_X86_NEON", "-DTF_LITE_MCU_DEBUG_LOG",
               f'-DCMSIS_DEVICE_ARM_CORTEX_M_XX_HEADER_FILE="{board.device}.h"', f"-D{board.device}",
               *(f"-D{d}" for d in board.device_defines)]
    kernel_defines = ["-DCMSIS_NN", "-DARM_NN_ENABLE_F16=0", "-DARM_NN_ENABLE_F32=0"] if kernels == "cmsis_nn" else []
    common = [*board.cpu_flags, "-mlittle-endian", "-fsigned-char", "-ffunction-sections", "-fdata-sections",
              "-fno-unwind-tables", "-fno-asynchronous-unwind-tables", "-fomit-frame-pointer", "-fmessage-length=0"]
    return {"common": common, "defines": defines, "kernel_defines": kernel_defines,
            "c++": ["-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics"], "c": ["-std=c11"]}


ROOTS = {"tflite-micro": "TFLM", "flatbuffers": "FLATBUFFERS", "gemmlowp": "GEMMLOWP", "ruy": "RUY",
         "cmsis": "CMSIS", "cmsis-nn": "CMSIS_NN", "cortex-dfp": "CORTEX_DFP"}


def _includes(board: Board, kernels: str) -> list[tuple[str, str]]:
    """(root, sub-folder) pairs of the include path."""
    inc = [("tflite-micro", ""), ("flatbuffers", "include"), ("gemmlowp", ""), ("ruy", ""),
           ("cmsis", ""), ("cmsis", "CMSIS/Core/Include"), ("cortex-dfp", f"Device/{board.device}/Include")]
    if kernels == "cmsis_nn":
        inc += [("cmsis-nn", ""), ("cmsis-nn", "Include")]
    return inc


def _library_units(src: dict[str, Path], kernels: str, operators: list[str], everything: bool = False
                   ) -> tuple[list[_Unit], dict[str, str]]:
    """The library's compilation units for these operators, and ``{operator: resolver method}``."""
    tflm = src["tflite-micro"]
    table = resolver_table(tflm)
    missing = [op for op in operators if op not in table]
    if missing:
        raise UnsupportedOperatorError(f"TFLite Micro's op resolver has no kernel for {', '.join(missing)}; "
                                       "the firmware cannot run this model")
    units: list[_Unit] = []

    def add(root: str, rel: str, opt: str, group: str = "core") -> None:
        lang = "c" if rel.endswith(".c") else "c++"
        units.append(_Unit(src[root] / rel, f"{root}/{rel}.o", lang, opt, root, rel, group))

    core = [f"{TFLM}/{p.name}" for p in sorted((tflm / TFLM).glob("*.cc"))
            if not p.name.endswith("_test.cc") and p.name not in CORE_SKIPPED]
    for sub in ("arena_allocator", "memory_planner", "tflite_bridge"):
        core += [f"{TFLM}/{sub}/{p.name}" for p in sorted((tflm / TFLM / sub).glob("*.cc"))
                 if not p.name.endswith("_test.cc") and not p.name.startswith("recording_")]
    core += [f"{TFLM}/cortex_m_generic/debug_log.cc", *TFL_SOURCES]
    for rel in core:
        add("tflite-micro", rel, "-Os")

    reference = _definitions(tflm / KERNEL_DIR)
    optimised = _definitions(tflm / CMSIS_NN_KERNEL_DIR) if kernels == "cmsis_nn" else {}
    optimised_files = set(optimised.values())
    files: dict[str, str] = {}  # file name -> folder
    if everything:
        for name in sorted({*reference.values()}):
            files[name] = CMSIS_NN_KERNEL_DIR if name in optimised_files else KERNEL_DIR
    for name in KERNEL_ALWAYS:
        files.setdefault(name, KERNEL_DIR)
    methods = {}
    for op in operators:
        method, registration = table[op]
        methods[op] = method
        if registration in optimised:
            files[optimised[registration]] = CMSIS_NN_KERNEL_DIR
        elif registration in reference:
            files.setdefault(reference[registration], KERNEL_DIR)
        else:
            raise UnsupportedOperatorError(f"no TFLite Micro source defines Register_{registration}() for {op}")
    for name in list(files):
        for helper in KERNEL_HELPERS.get(name, ()):
            files.setdefault(helper, KERNEL_DIR)
    for name in list(files):
        common = name[:-3] + "_common.cc"
        if (tflm / KERNEL_DIR / common).is_file():
            files.setdefault(common, KERNEL_DIR)
    for name, folder in sorted(files.items()):
        add("tflite-micro", f"{folder}/{name}", "-O2", "kernels")

    if kernels == "cmsis_nn":
        nn = src["cmsis-nn"]
        for path in sorted((nn / "Source").rglob("*.c")):
            if path.name.endswith(("_f16.c", "_f32.c")) or path.name == "arm_nntables_flt.c":
                continue
            add("cmsis-nn", str(path.relative_to(nn)), "-O2", "kernels")
    return units, methods


def _command(unit: _Unit, obj: Path, flags: dict, includes: list[str], tools: dict) -> list[str]:
    compiler = tools["g++"] if unit.lang == "c++" else tools["gcc"]
    defines = flags["defines"] + (flags["kernel_defines"] if unit.group != "core" else [])
    return [compiler, *flags["common"], *flags[unit.lang], unit.opt, *defines, *includes,
            "-c", str(unit.source), "-o", str(obj)]


def _compile_all(jobs: list[tuple[list[str], Path]], workers: int) -> None:
    """Run compile commands in parallel; each object is written beside its place and renamed in."""

    def one(job):
        cmd, obj = job
        obj.parent.mkdir(parents=True, exist_ok=True)
        tmp = obj.with_name(f".{obj.name}.{os.getpid()}.{id(job)}.tmp")
        cmd = cmd[:-1] + [str(tmp)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"{Path(cmd[-3]).name}: the compiler took over {COMPILE_TIMEOUT_S} s"
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            return f"{Path(cmd[-3]).name}: {_tail(done.stderr)}"
        os.replace(tmp, obj)
        return None

    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        errors = [e for e in pool.map(one, jobs) if e]
    if errors:
        raise BackendError(f"{TOOLCHAIN_PREFIX}gcc failed on {len(errors)} file(s): {errors[0]}")


def library_dirs(core: str, kernels: str | None = None) -> dict[str, Path]:
    """Where the compiled objects for ``core`` are cached: ``{"core": interpreter objects (shared by
    both kernel sets), "kernels": the kernel set's objects}``, each folder named by a hash of the
    flags, the compiler and the pinned sources.

    Example:
        >>> library_dirs("cortex-m4", "cmsis_nn")["kernels"].parent.name  # doctest: +SKIP
        'objects'
    """
    board = board_for(core)
    kernels = _check_kernels(board, kernels)
    tools = toolchain()
    flags = _flags(board, kernels)
    pins = sorted((s.name, s.commit) for s in _sources.SOURCES.values())
    root = _sources.cache_dir() / "objects"

    def key(*parts) -> str:
        return hashlib.sha256(repr((*parts, tools["version"], pins)).encode()).hexdigest()[:12]

    core_flags = {k: v for k, v in flags.items() if k != "kernel_defines"}
    return {"core": root / f"{board.core}-core-{key(board.core, core_flags, _includes(board, 'reference'))}",
            "kernels": root / f"{board.core}-{kernels}-{key(board.core, kernels, flags, _includes(board, kernels))}"}


def _check_kernels(board: Board, kernels: str | None) -> str:
    kernels = kernels or board.default_kernels
    if kernels not in KERNELS:
        raise OptionError(f"kernels {kernels!r} is not one of {', '.join(KERNELS)}")
    if kernels == "cmsis_nn" and not board.cmsis_nn:
        raise OptionError(f"CMSIS-NN has no kernels for {board.core}; use kernels='reference'")
    return kernels


# ----------------------------------------------------------------------------- the project


def build_firmware(model: bytes | str | os.PathLike, core: str = "cortex-m4", kernels: str | None = None,
                   out_dir: str | os.PathLike = "firmware", arena_bytes: int | None = None,
                   mirror: str | os.PathLike | None = None, jobs: int | None = None,
                   semihosting: bool = True) -> FirmwareBuild:
    """Write a firmware project for ``model`` on ``core`` into ``out_dir`` and build its ELF.

    Args:
        model: the ``.tflite`` flatbuffer, or its path.
        core: ``cortex-m4``, ``cortex-m7`` or ``cortex-m55`` (``cortex_m4`` and ``m4`` work too).
        kernels: ``"cmsis_nn"`` (the default where the core has it) or ``"reference"``.
        out_dir: the project folder (created; files edgedl writes there are replaced).
        arena_bytes: the tensor arena; default: TFLite Micro's measured arena on this host plus a
            quarter and 4 KiB for the target's kernels' scratch buffers.
        mirror: where the sources come from when they are not cached yet (see
            :func:`edgedl.mcu.sources.fetch`).
        jobs: parallel compiler processes (default: the number of CPUs).
        semihosting: end the emulator through semihosting on quit or fault; turn off for a real
            board without a debugger attached.

    Returns:
        The :class:`FirmwareBuild`, with the ELF's flash and RAM.

    Raises:
        BackendError: the toolchain is missing, a compile or the link fails, or the model does not
            fit the board's memory (the message gives the numbers).
        UnsupportedOperatorError: TFLite Micro has no kernel for one of the model's operators.
        OptionError: unknown kernels, or CMSIS-NN asked for a core it has no kernels for.

    Example:
        >>> fw = build_firmware(Path("lenet_int8.tflite").read_bytes(), "cortex-m4",
        ...                     out_dir="fw", arena_bytes=32768)  # doctest: +SKIP
        >>> fw.flash_bytes > 0  # doctest: +SKIP
        True
    """
    start = time.perf_counter()
    if not isinstance(model, (bytes, bytearray)):
        model = Path(model).read_bytes()
    model = bytes(model)
    board = board_for(core)
    kernels = _check_kernels(board, kernels)
    tools = toolchain()
    operators = model_operators(model)
    if arena_bytes is None:
        arena_bytes = default_arena(model)
    arena_bytes = int(arena_bytes + 15) // 16 * 16
    src = _sources.fetch(mirror)
    flags = _flags(board, kernels)
    workers = jobs or os.cpu_count() or 1

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    dirs = library_dirs(board.core, kernels)

    units, methods = _library_units(src, kernels, operators)
    app = _write_project_files(out, model, board, kernels, operators, methods, arena_bytes, semihosting)
    def inc(kind: str) -> list[str]:
        return [f"-I{src[root] / sub}" if sub else f"-I{src[root]}" for root, sub in _includes(board, kind)]

    includes = {"core": inc("reference"), "kernels": inc(kernels), "app": [f"-I{out}", *inc(kernels)]}
    device = src["cortex-dfp"] / "Device" / board.device / "Source"
    app_units = [
        _Unit(out / "main.cc", "app/main.o", "c++", "-Os", "", "main.cc", "app"),
        _Unit(out / "model_data.cc", "app/model_data.o", "c++", "-Os", "", "model_data.cc", "app"),
        _Unit(out / "op_resolver.cc", "app/op_resolver.o", "c++", "-Os", "", "op_resolver.cc", "app"),
        _Unit(device / f"startup_{board.device}.c", "app/startup.o", "c", "-Os", "cortex-dfp",
              f"Device/{board.device}/Source/startup_{board.device}.c", "app"),
        _Unit(device / f"system_{board.device}.c", "app/system.o", "c", "-Os", "cortex-dfp",
              f"Device/{board.device}/Source/system_{board.device}.c", "app"),
    ]
    if board.boot is not None:
        app_units.append(_Unit(out / "boot.c", "app/boot.o", "c", "-Os", "", "boot.c", "app"))

    dirs["app"] = out / "build"

    def compile_units(todo: list[_Unit]) -> None:
        _compile_all([(_command(u, dirs[u.group] / u.obj, flags, includes[u.group], tools), dirs[u.group] / u.obj)
                      for u in todo], workers)

    lib_start = time.perf_counter()
    todo = [u for u in units if not (dirs[u.group] / u.obj).is_file()]
    log.info("TFLite Micro for %s (%s): %d of %d files to compile", board.core, kernels, len(todo), len(units))
    compile_units(todo)
    lib_seconds = time.perf_counter() - lib_start
    compile_units(app_units)

    elf = out / "firmware.elf"
    elf.unlink(missing_ok=True)  # a failed link must not leave an older firmware looking current
    _write_makefile(out, board, kernels, src, flags, app_units + units, tools)
    objects = [dirs[u.group] / u.obj for u in app_units + units]
    link_error = _link(tools, board, out, objects, elf)
    if link_error and "undefined reference" in link_error:
        # An operator needs a kernel file the per-operator list did not name: take all of them.
        log.warning("linking needed more TFLite Micro kernels than the operators name; compiling all of them")
        units, _ = _library_units(src, kernels, operators, everything=True)
        more = [u for u in units if not (dirs[u.group] / u.obj).is_file()]
        compile_units(more)
        todo += more
        objects = [dirs[u.group] / u.obj for u in app_units + units]
        link_error = _link(tools, board, out, objects, elf)
    if link_error:
        raise BackendError(link_error)
    _write_makefile(out, board, kernels, src, flags, app_units + units, tools)  # the units may have grown

    text, data, bss = elf_sizes(elf)
    return FirmwareBuild(
        elf=elf, project_dir=out, core=board.core, board=board.machine, kernels=kernels, operators=operators,
        arena_bytes=arena_bytes, model_bytes=len(model), flash_bytes=text + data, ram_bytes=data + bss,
        text_bytes=text, data_bytes=data, bss_bytes=bss, library_files=len(units), library_compiled=len(todo),
        library_seconds=round(lib_seconds, 2), build_seconds=round(time.perf_counter() - start, 2),
        toolchain=tools["version"],
        sources={n: s.commit for n, s in _sources.SOURCES.items()})


def default_arena(model: bytes) -> int:
    """The arena a firmware gets when none is given: TFLite Micro's arena measured on this host plus
    a quarter and 4 KiB (CMSIS-NN's scratch buffers are not in the host's measurement)."""
    from edgedl.backends.tflm import find_arena_size

    measured = find_arena_size(model)["arena_bytes"]
    return measured + measured // 4 + 4096


def _link(tools: dict, board: Board, out: Path, objects: list[Path], elf: Path) -> str | None:
    cmd = [tools["g++"], *board.cpu_flags, "--specs=nano.specs", "--specs=nosys.specs", "-T", str(out / "board.ld"),
           "-Wl,--gc-sections", f"-Wl,-Map={out / 'firmware.map'}", *map(str, objects), "-lm", "-o", str(elf)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"the linker took over {COMPILE_TIMEOUT_S} s"
    if done.returncode == 0:
        return None
    overflow = re.findall(r"region `(\w+)' overflowed by (\d+) bytes", done.stderr)
    if overflow:
        parts = [f"{region} by {int(n)} bytes" for region, n in overflow]
        sizes = {"FLASH": board.flash.size, "RAM": board.ram.size}
        have = ", ".join(f"{r} {sizes[r]} bytes" for r, _ in overflow if r in sizes)
        return (f"the firmware does not fit the {board.machine} board's memory ({have}): it overflows "
                f"{', '.join(parts)}; use a smaller model or arena, or a core with more memory")
    return f"linking the firmware failed: {_tail(done.stderr)}"


def elf_sizes(elf: str | os.PathLike) -> tuple[int, int, int]:
    """(text, data, bss) of an ELF as ``arm-none-eabi-size`` (Berkeley format) reports them."""
    text = _run([toolchain()["size"], "-B", str(elf)], "reading the ELF's sizes")
    fields = text.splitlines()[-1].split()
    return int(fields[0]), int(fields[1]), int(fields[2])


def _write(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def _write_project_files(out: Path, model: bytes, board: Board, kernels: str, operators: list[str],
                         methods: dict[str, str], arena_bytes: int, semihosting: bool) -> None:
    from edgedl.backends.tflm import c_array

    sha = hashlib.sha256(model).hexdigest()
    source, header = c_array(model, "g_model_data", sha, arena_bytes)
    _write(out / "model_data.cc", source)
    _write(out / "model_data.h", header)
    calls = "\n".join(f"  if (resolver.{methods[op]}() != kTfLiteOk) return kTfLiteError;  // {op}"
                      for op in operators)
    stamp = f"// Generated by edgedl for a model with sha256 {sha}.\n"
    _write(out / "op_resolver.h", stamp + (
        "#ifndef EDGEDL_OP_RESOLVER_H_\n#define EDGEDL_OP_RESOLVER_H_\n\n"
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n\n'
        f"// The model uses {len(operators)} operator(s): {', '.join(operators)}.\n"
        f"#define EDGEDL_NUM_OPERATORS {len(operators)}\n\n"
        "TfLiteStatus edgedl_register_ops(tflite::MicroMutableOpResolver<EDGEDL_NUM_OPERATORS>& resolver);\n\n"
        "#endif  // EDGEDL_OP_RESOLVER_H_\n"))
    _write(out / "op_resolver.cc", stamp + (
        '#include "op_resolver.h"\n\n'
        "TfLiteStatus edgedl_register_ops(tflite::MicroMutableOpResolver<EDGEDL_NUM_OPERATORS>& resolver) {\n"
        f"{calls}\n  return kTfLiteOk;\n}}\n"))
    num_nodes = _read_operators(model)[1]
    _write(out / "edgedl_config.h", stamp + (
        "#ifndef EDGEDL_CONFIG_H_\n#define EDGEDL_CONFIG_H_\n\n"
        f"// Board {board.machine} ({board.core}), {kernels} kernels.\n"
        f'#define EDGEDL_DEVICE_HEADER "{board.device}.h"\n'
        f"#define EDGEDL_UART_BASE 0x{board.uart_base:08x}u\n"
        f"#define EDGEDL_UART_BAUDDIV {UART_BAUDDIV}\n"
        f"#define EDGEDL_ARENA_BYTES {arena_bytes}\n"
        "// Profiler events per inference: one per operator node, with room for nested ones.\n"
        f"#define EDGEDL_MAX_EVENTS {num_nodes + 16}\n"
        "// An address no memory answers at, for the fault self-test.\n"
        "#define EDGEDL_FAULT_ADDRESS 0xfffffff0u\n"
        "#ifndef EDGEDL_SEMIHOSTING\n"
        f"#define EDGEDL_SEMIHOSTING {1 if semihosting else 0}\n"
        "#endif\n\n#endif  // EDGEDL_CONFIG_H_\n"))
    _write(out / "main.cc", HARNESS.read_text())
    _write(out / "board.ld", linker_script(board))
    if board.boot is not None:
        _write(out / "boot.c", (
            f"/* The reset vector for {board.machine}: the core starts from 0x{board.boot:08x}; SystemInit then\n"
            "   points VTOR at the full vector table in flash. Generated by edgedl. */\n"
            "#include <stdint.h>\n\nextern uint32_t __StackTop;\nextern void Reset_Handler(void);\n\n"
            '__attribute__((section(".edgedl_boot"), used))\n'
            "const void* const edgedl_boot_vectors[2] = {&__StackTop, (const void*)Reset_Handler};\n"))
    _write(out / "README.md", (
        f"# Firmware for {board.machine} ({board.core}), {kernels} kernels\n\n"
        f"Generated by edgedl. The model (sha256 `{sha}`) runs with TFLite Micro in a {arena_bytes}-byte "
        f"arena; the operators registered are {', '.join(operators)}.\n\n"
        "| file | what |\n| --- | --- |\n"
        "| `model_data.cc/.h` | the model as a 16-byte aligned C array |\n"
        "| `op_resolver.cc/.h` | the operator resolver, for exactly the model's operators |\n"
        "| `edgedl_config.h` | arena size, UART address, board settings |\n"
        "| `main.cc` | the harness: the edgedl MCU protocol over UART0 (edgedl's docs/mcu-protocol.md) |\n"
        f"| `board.ld` | the Cortex DFP's linker script for {board.device}, with this board's memory map |\n"
        "| `Makefile` | rebuilds `build/make/firmware.elf` with arm-none-eabi-gcc (`make -j`) |\n"
        "| `firmware.elf` | the firmware edgedl built |\n\n"
        "Run it on the emulated board (UART0 on stdio, one instruction per virtual nanosecond):\n\n"
        "```\n" + " ".join(_qemu(board)) + " -kernel firmware.elf\n```\n\n"
        f"On another board with a {board.core}: port `UartInit`/`PutByte`/`GetByte` in `main.cc` to its UART "
        "and `board.ld` to its memory, build with `make -j EXTRA_FLAGS=-DEDGEDL_SEMIHOSTING=0` (no debugger to "
        "end a run), flash it, and run `edgedl bench --device serial:///dev/ttyACM0`.\n"))


def _qemu(board: Board) -> list[str]:
    from edgedl.mcu.emulate import qemu_command

    return qemu_command("firmware.elf", board)[:-2]


def linker_script(board: Board) -> str:
    """The Cortex DFP's GCC linker script for the board's device, with the board's memory map and
    the harness's stack and heap sizes."""
    src = _sources.fetch(names=["cortex-dfp"])["cortex-dfp"]
    text = (src / "Device" / board.device / "Config" / f"{board.device}_gcc.ld").read_text()
    values = {"__ROM_BASE": board.flash.origin, "__ROM_SIZE": board.flash.size, "__RAM_BASE": board.ram.origin,
              "__RAM_SIZE": board.ram.size, "__STACK_SIZE": STACK_BYTES, "__HEAP_SIZE": HEAP_BYTES}
    for name, value in values.items():
        text, n = re.subn(rf"^{name}\s*=\s*0x[0-9A-Fa-f]+;", f"{name} = 0x{value:08X};", text, flags=re.M)
        if n != 1:
            raise BackendError(f"the Cortex DFP linker script of {board.device} has no single {name} to set")
    if board.boot is not None:
        text += (f"\n/* edgedl: the reset vector stub (boot.c) where the core reads it at reset. */\n"
                 f"SECTIONS\n{{\n  .edgedl_boot 0x{board.boot:08X} :\n  {{\n    KEEP(*(.edgedl_boot))\n  }}\n}}\n")
    return (f"/* edgedl: the Cortex DFP's {board.device}_gcc.ld for the {board.machine} board "
            f"(memory map and stack/heap set by edgedl). */\n" + text)


def _write_makefile(out: Path, board: Board, kernels: str, src: dict[str, Path], flags: dict,
                    units: list[_Unit], tools: dict) -> None:
    roots = {name: var for name, var in ROOTS.items() if name in src}
    lines = [
        f"# Firmware for {board.machine} ({board.core}), {kernels} kernels. Generated by edgedl;",
        "# rebuild with `make -j` (needs arm-none-eabi-gcc with newlib). The source folders are the",
        "# pinned archives edgedl fetched (`edgedl toolchain fetch`); override them on the command line.",
        "",
        *(f"{var} ?= {src[name]}" for name, var in roots.items()),
        "",
        f"CC = {TOOLCHAIN_PREFIX}gcc",
        f"CXX = {TOOLCHAIN_PREFIX}g++",
        f"SIZE = {TOOLCHAIN_PREFIX}size",
        "BUILD ?= build/make",
        f"COMMON = {' '.join(flags['common'])}",
        f"DEFINES = {' '.join(_make_quote(d) for d in flags['defines'])}",
        "INCLUDES = -I. " + " ".join(f"-I$({roots[r]})/{s}" if s else f"-I$({roots[r]})"
                                     for r, s in _includes(board, kernels)),
        f"KERNEL_DEFINES = {' '.join(flags['kernel_defines'])}",
        "EXTRA_FLAGS ?=",
        f"CXXFLAGS = $(COMMON) {' '.join(flags['c++'])} $(DEFINES) $(INCLUDES) $(EXTRA_FLAGS)",
        f"CFLAGS = $(COMMON) {' '.join(flags['c'])} $(DEFINES) $(INCLUDES) $(EXTRA_FLAGS)",
        f"LDFLAGS = {' '.join(board.cpu_flags)} --specs=nano.specs --specs=nosys.specs -T board.ld "
        "-Wl,--gc-sections -Wl,-Map=$(BUILD)/firmware.map",
        "",
        "OBJS = \\",
        *(f"  $(BUILD)/{u.obj} \\" for u in units),
        "",
        ".PHONY: all clean",
        "all: $(BUILD)/firmware.elf",
        "",
        "$(BUILD)/firmware.elf: $(OBJS) board.ld",
        "\t$(CXX) $(LDFLAGS) $(OBJS) -lm -o $@",
        "\t$(SIZE) $@",
        "",
    ]
    for u in units:
        dep = f"$({roots[u.root]})/{u.rel}" if u.root else u.rel
        tool, fl = ("$(CXX)", "$(CXXFLAGS)") if u.lang == "c++" else ("$(CC)", "$(CFLAGS)")
        extra = " $(KERNEL_DEFINES)" if u.group != "core" else ""
        lines += [f"$(BUILD)/{u.obj}: {dep}", "\t@mkdir -p $(@D)", f"\t{tool} {fl}{extra} {u.opt} -c $< -o $@", ""]
    lines += ["clean:", "\trm -rf $(BUILD)", ""]
    _write(out / "Makefile", "\n".join(lines))


def _make_quote(define: str) -> str:
    return f"'{define}'" if '"' in define else define
