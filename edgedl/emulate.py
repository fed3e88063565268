"""Cross-compiled TVM builds run under user-mode emulation, so their fidelity is measured.

Where it sits: ``edgedl compile`` builds a TVM library for an Arm Linux board (``--target rpi4``)
that this x86_64 host cannot run. Instead of leaving the bundle's fidelity unchecked, the compile
runs the library here under ``qemu-user`` (``qemu-aarch64-static -L /usr/aarch64-linux-gnu``,
Debian's cross runtime libraries) through TVM's own C++ runtime built for that CPU, on the same
real samples a native build is checked on, and compares its outputs with the reference. The
manifest's fidelity then says ``"emulated": true`` and names the emulator. Time under emulation
says nothing about the board, so no latency is measured or reported.

The device runtime is TVM's, unchanged: ``libtvm_runtime.so`` and ``libtvm_ffi.so`` (with the
headers) from the aarch64 wheels of the very ``apache-tvm`` and ``apache-tvm-ffi`` versions that
built the library, fetched once from PyPI by ``pip download`` (so pip's index settings apply) into
the user cache (``$EDGEDL_CACHE/tvm-runtime`` or ``~/.cache/edgedl/tvm-runtime``). A small runner,
``emulate_harness.cc`` beside this module, is cross-compiled against them with the target's C++
cross compiler: it loads the library, starts the Relax virtual machine on the CPU and runs ``main``
on raw samples.

armv7 (``--target cortex_a7``) is not emulated: TVM publishes no armv7 build of its runtime on
PyPI, so its bundles stay "not checked" with that reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from edgedl import _io
from edgedl.errors import BackendError, MissingDependencyError

log = logging.getLogger(__name__)

HARNESS_SOURCE = Path(__file__).with_name("emulate_harness.cc")
RUNTIME_PACKAGES = ("apache-tvm", "apache-tvm-ffi")
EMULATION_TIMEOUT_S = 600
INSTALL_HINT = "apt-get install qemu-user-static (or scripts/system-deps.sh)"
# DLPack's type codes, for the runner's input specs and its outputs.txt.
_DLPACK_CODES = {"i": 0, "u": 1, "f": 2}
_NUMPY_KINDS = {code: kind for kind, code in _DLPACK_CODES.items()}


@dataclass(frozen=True)
class Arch:
    """How code for one CPU architecture runs here: the emulators that run it (first found wins),
    the sysroot of Debian's cross runtime libraries, the C++ cross compiler that builds the runner,
    and the wheel platform of TVM's runtime for it (None: there is none, ``no_runtime`` says why)."""

    name: str
    emulators: tuple[str, ...]
    sysroot: str
    cxx: str
    cxx_package: str
    wheel_platform: str | None
    no_runtime: str = ""


ARCHES = {
    "aarch64": Arch("aarch64", ("qemu-aarch64-static", "qemu-aarch64"), "/usr/aarch64-linux-gnu",
                    "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu", "manylinux_2_28_aarch64"),
    "armv7": Arch("armv7", ("qemu-arm-static", "qemu-arm"), "/usr/arm-linux-gnueabihf",
                  "arm-linux-gnueabihf-g++", "g++-arm-linux-gnueabihf", None,
                  no_runtime="TVM publishes no armv7 build of its runtime on PyPI (its wheels are for x86_64 and "
                             "aarch64; apache-tvm has no source distribution)"),
}


def emulator_for(target, prepare: bool = False, say=None) -> tuple[str | None, str]:
    """(emulator, reason): the user-mode emulator that runs ``target``'s TVM builds here, or None and
    why none does.

    Args:
        target: a :class:`~edgedl.targets.Target`.
        prepare: also make the device runtime present (:func:`device_runtime`: fetched and the runner
            built on first use); if that fails, None and why. Without it nothing is fetched or built.
        say: as for :func:`device_runtime`.

    Example:
        >>> from edgedl.targets import load_target
        >>> emulator_for(load_target("cortex_a7"))[1][:38]  # doctest: +SKIP
        'TVM publishes no armv7 build of its r'
    """
    arch = ARCHES.get((target.cpu or {}).get("arch", ""))
    if target.kind != "cpu" or not target.tvm.get("cross_compiler"):
        return None, f"{target.name} is not a cross-compiled CPU target"
    if arch is None:
        return None, f"edgedl cannot emulate {target.cpu.get('arch')}"
    if platform.machine() not in ("x86_64", "AMD64"):
        return None, f"emulation runs on x86_64 hosts, this one is {platform.machine()}"
    if arch.wheel_platform is None:
        return None, arch.no_runtime
    emulator = next((e for e in arch.emulators if shutil.which(e)), None)
    if emulator is None:
        return None, f"{arch.emulators[0]} is not installed ({INSTALL_HINT})"
    if shutil.which(arch.cxx) is None:
        return None, f"the C++ cross compiler {arch.cxx} is not installed (apt-get install {arch.cxx_package})"
    if not Path(arch.sysroot, "lib").is_dir():
        return None, (f"Debian's {arch.name} runtime libraries are not at {arch.sysroot} "
                      f"(apt-get install {arch.cxx_package})")
    try:
        _runtime_versions()
        if prepare:
            device_runtime(arch.name, say)
    except (MissingDependencyError, BackendError) as e:
        return None, str(e)
    return emulator, ""


def check_emulated(compiled, samples, target, emulator: str | None = None, say=None) -> list[np.ndarray]:
    """A cross-compiled TVM build's float outputs on the fidelity samples, under emulation (for
    :func:`edgedl.compile.build_and_check`; several inputs are matched to the build's by name).

    Args:
        compiled: the :class:`~edgedl.backends.base.CompiledModel`.
        samples: the :class:`~edgedl.reference.Samples` (``x``, ``names``).
        target: the :class:`~edgedl.targets.Target` it was built for.
        emulator, say: as for :func:`run_tvm`.

    Returns:
        Every output of the build, as float (N, ...), in the build's order.

    Raises:
        BackendError: as for :func:`run_tvm`.

    Example:
        >>> outputs = check_emulated(compiled, reference.samples, load_target("rpi4"))  # doctest: +SKIP
    """
    from edgedl import _inputs

    x = samples.x
    if isinstance(x, list):
        x = _inputs.reorder(x, _inputs.order_for(samples.names, _inputs.sample_shapes(x), compiled.inputs,
                                                 f"the TVM build for {target.name}"))
    return predict_emulated(compiled, x, target.cpu["arch"], emulator, say)


def record(emulator: str, target) -> dict:
    """What a fidelity measured under emulation adds to the manifest: ``emulated``, the emulator
    with its version, and the device runtime it ran (the wheels' platform, files and sha256).

    Example:
        >>> record("qemu-aarch64-static", load_target("rpi4"))["emulator"]  # doctest: +SKIP
        'qemu-aarch64-static 7.2.22'
    """
    out = {"emulated": True, "emulator": emulator_name(emulator)}
    try:
        folder = device_runtime(target.cpu["arch"])
        runtime = json.loads((folder / "runtime.json").read_text())
        out["emulated_runtime"] = {"platform": runtime["platform"], "wheels": runtime["wheels"]}
    except (BackendError, MissingDependencyError, OSError, ValueError, KeyError):
        pass
    return out


def emulator_name(emulator: str) -> str:
    """``qemu-aarch64-static 7.2.19``: the emulator and its version, for the manifest."""
    try:
        first = subprocess.run([emulator, "--version"], capture_output=True, text=True, timeout=30).stdout
        words = first.split()
        return f"{emulator} {words[2]}" if len(words) > 2 and words[1] == "version" else emulator
    except (OSError, subprocess.SubprocessError):
        return emulator


def cache_dir() -> Path:
    """Where device runtimes are kept: ``$EDGEDL_CACHE/tvm-runtime``, else ``~/.cache/edgedl/tvm-runtime``.

    Example:
        >>> cache_dir().name
        'tvm-runtime'
    """
    from edgedl.data.base import decoded_cache_dir

    return decoded_cache_dir() / "tvm-runtime"


def device_runtime(arch_name: str, say=None) -> Path:
    """The folder holding TVM's runtime for ``arch_name`` and the runner built against it, fetched and
    built on first use (the same TVM versions as this host's).

    Args:
        arch_name: ``aarch64``.
        say: callable(str) told when the runtime is fetched or the runner built.

    Returns:
        The folder: ``lib/`` (``libtvm_runtime.so``, ``libtvm_ffi.so``), ``include/``,
        ``runtime.json`` (which wheels, their sha256) and ``edgedl_tvm_run-<hash>``.

    Raises:
        BackendError: no runtime for that CPU, pip could not fetch the wheels, or the runner did not build.

    Example:
        >>> (device_runtime("aarch64") / "lib" / "libtvm_runtime.so").is_file()  # doctest: +SKIP
        True
    """
    arch = ARCHES[arch_name]
    if arch.wheel_platform is None:
        raise BackendError(f"cannot run {arch.name} builds under emulation: {arch.no_runtime}")
    versions = _runtime_versions()
    folder = cache_dir() / f"{arch.name}-tvm-{versions['apache-tvm']}-ffi-{versions['apache-tvm-ffi']}"
    if not (folder / "runtime.json").is_file():
        (say or log.info)(f"fetching TVM's {arch.name} runtime from PyPI (once, into {folder})")
        _fetch_runtime(arch, versions, folder)
    _runner(arch, folder, say)
    return folder


def run_tvm(library, inputs: list, outputs: list, arrays: list[np.ndarray], arch_name: str,
            emulator: str | None = None, say=None) -> list[np.ndarray]:
    """Run a TVM library built for ``arch_name`` under emulation, one sample at a time.

    Args:
        library: the ``model.so`` (a Relax virtual machine executable).
        inputs: the build's input specs (``TensorSpec``: dtype and batch-first shape), in its order.
        outputs: its output specs, in its order.
        arrays: one array (N, ...) per input, already in the input's dtype (quantized).
        arch_name: ``aarch64``.
        emulator: the emulator to use (default: the first of the architecture's that is installed).
        say: as for :func:`device_runtime`.

    Returns:
        One raw array per output, (N, ...) without the build's batch of 1, in its dtype.

    Raises:
        BackendError: the library does not load or run (one line, from TVM's runtime or the emulator).

    Example:
        >>> run_tvm("model.so", compiled.inputs, compiled.outputs, [x_int8], "aarch64")  # doctest: +SKIP
    """
    arch = ARCHES[arch_name]
    emulator = emulator or next((e for e in arch.emulators if shutil.which(e)), None)
    if emulator is None:
        raise BackendError(f"cannot run {arch.name} builds: {arch.emulators[0]} is not installed ({INSTALL_HINT})")
    folder = device_runtime(arch_name, say)
    runner = _runner(arch, folder, say)
    library = Path(library)
    if len(arrays) != len(inputs):
        raise BackendError(f"{library}: the build takes {len(inputs)} inputs, got {len(arrays)}")
    num = len(arrays[0])
    with tempfile.TemporaryDirectory(prefix="edgedl-emulate-") as tmp:
        work = Path(tmp)
        shutil.copyfile(library, work / "model.so")
        specs = []
        for i, a in enumerate(arrays):
            a = np.ascontiguousarray(a)
            if a.dtype.kind not in _DLPACK_CODES:
                raise BackendError(f"{library}: input {i} has dtype {a.dtype}, which the emulated runner does not feed")
            a.tofile(work / f"in{i}.bin")
            shape = "x".join(map(str, (1, *a.shape[1:])))  # one sample, the build's batch of 1
            specs.append(f"{_DLPACK_CODES[a.dtype.kind]}:{a.dtype.itemsize * 8}:{shape}")
        command = [emulator, "-L", arch.sysroot, "-E", "TVM_NUM_THREADS=1", str(runner), "./model.so", str(num), *specs]
        try:
            done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=EMULATION_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BackendError(f"{library}: its {arch.name} build ran longer than {EMULATION_TIMEOUT_S} s under "
                               f"{emulator} on {num} samples") from None
        if done.returncode != 0:
            raise BackendError(f"{library}: its {arch.name} build failed under {emulator}: {_why(done)}")
        return _read_outputs(work, num, len(outputs), library)


def predict_emulated(compiled, x, arch_name: str, emulator: str | None = None, say=None) -> list[np.ndarray]:
    """Float samples through a cross-compiled TVM build under emulation: every output as float (N, ...),
    as :func:`edgedl.runtime.quant.predict_outputs` gives them for a build that runs here.

    Args:
        compiled: the :class:`~edgedl.backends.base.CompiledModel` (its ``model.so``, inputs, outputs).
        x: a float array (N, ...) for one input, or a list of them in the build's input order.
        arch_name: ``aarch64``.
        emulator, say: as for :func:`run_tvm`.

    Returns:
        Every output, dequantized, (N, ...).

    Raises:
        BackendError: as for :func:`run_tvm`.

    Example:
        >>> outputs = predict_emulated(compiled, samples.x, "aarch64")  # doctest: +SKIP
    """
    from edgedl.runtime.quant import dequantize, quantize_inputs

    arrays = quantize_inputs(x, compiled.inputs)
    library = Path(compiled.directory) / compiled.runtime["library"]
    raw = run_tvm(library, compiled.inputs, compiled.outputs, arrays, arch_name, emulator, say)
    return [dequantize(r, spec) for r, spec in zip(raw, compiled.outputs)]


def _runtime_versions() -> dict[str, str]:
    """This host's apache-tvm and apache-tvm-ffi versions: the device runtime must be the same."""
    try:
        return {name: version(name) for name in RUNTIME_PACKAGES}
    except PackageNotFoundError:
        raise MissingDependencyError("tvm", "tvm") from None


def _fetch_runtime(arch: Arch, versions: dict[str, str], folder: Path) -> None:
    """``pip download`` the architecture's wheels of TVM and TVM FFI and keep their runtime libraries
    and headers in ``folder`` (written whole or not at all; the wheels are not kept)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder.parent) as tmp:
        wheels, staging = Path(tmp, "wheels"), Path(tmp, "runtime")
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--platform", arch.wheel_platform, "--python-version", f"{sys.version_info[0]}{sys.version_info[1]}",
                   "--dest", str(wheels), *(f"{name}=={v}" for name, v in versions.items())]
        mirror = os.environ.get("EDGEDL_MIRROR")
        if mirror and Path(mirror).is_dir():
            command[4:4] = ["--find-links", mirror]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BackendError(f"could not fetch TVM's {arch.name} runtime with pip: {e}") from None
        if done.returncode != 0:
            pins = ", ".join(f"{n}=={v}" for n, v in versions.items())
            raise BackendError(f"could not fetch TVM's {arch.name} runtime ({pins} for {arch.wheel_platform}) "
                               f"with pip download: {_why(done)}")
        record = {"platform": arch.wheel_platform, "source": "PyPI, by pip download", "wheels": []}
        wanted = {"tvm/lib/libtvm_runtime.so": "lib/libtvm_runtime.so",
                  "tvm_ffi/lib/libtvm_ffi.so": "lib/libtvm_ffi.so"}
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as z:
                for member in z.namelist():
                    target = wanted.get(member)
                    if target is None and member.startswith("tvm_ffi/include/") and not member.endswith("/"):
                        target = "include/" + member.removeprefix("tvm_ffi/include/")
                    if target:
                        out = staging / target
                        out.parent.mkdir(parents=True, exist_ok=True)
                        with z.open(member) as src, open(out, "wb") as dst:
                            shutil.copyfileobj(src, dst)
            record["wheels"].append({"file": wheel.name, "sha256": _io.sha256_file(wheel)})
        missing = [t for t in wanted.values() if not (staging / t).is_file()]
        if missing or not (staging / "include" / "tvm" / "ffi").is_dir():
            raise BackendError(f"TVM's {arch.name} wheels ({', '.join(w['file'] for w in record['wheels'])}) lack "
                               f"{', '.join(missing) or 'the tvm_ffi headers'}")
        (staging / "runtime.json").write_text(json.dumps(record | {"versions": versions}, indent=2) + "\n")
        if folder.exists() and not (folder / "runtime.json").is_file():
            shutil.rmtree(folder)  # a partial folder from before runtime.json was the last file written
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "runtime.json").is_file():  # else another compile fetched it meanwhile
                raise BackendError(f"could not keep TVM's {arch.name} runtime in {folder}") from None


def _runner(arch: Arch, folder: Path, say=None) -> Path:
    """The runner cross-compiled against the runtime in ``folder``, built once per version of its source."""
    source = HARNESS_SOURCE.read_bytes()
    runner = folder / f"edgedl_tvm_run-{hashlib.sha256(source).hexdigest()[:12]}"
    if runner.is_file():
        return runner
    if shutil.which(arch.cxx) is None:
        raise BackendError(f"the C++ cross compiler {arch.cxx} is not installed (apt-get install {arch.cxx_package})")
    (say or log.info)(f"building the {arch.name} TVM runner with {arch.cxx}")
    partial = runner.with_name(f"{runner.name}.{os.getpid()}.partial")  # another compile may build it too
    command = [arch.cxx, "-std=c++17", "-O2", f"-I{folder / 'include'}", str(HARNESS_SOURCE), "-o", str(partial),
               f"-L{folder / 'lib'}", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN/lib"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BackendError(f"building the {arch.name} TVM runner with {arch.cxx} failed: {_why(done)}")
    partial.replace(runner)
    return runner


def _read_outputs(work: Path, num: int, expected: int, library: Path) -> list[np.ndarray]:
    lines = (work / "outputs.txt").read_text().splitlines() if (work / "outputs.txt").is_file() else []
    if len(lines) != expected:
        raise BackendError(f"{library}: its build returned {len(lines)} outputs, the manifest lists {expected}")
    out = []
    for k, line in enumerate(lines):
        code, bits, dims = line.split()
        shape = tuple(int(d) for d in dims.split("x")) if dims else ()
        dtype = np.dtype(f"{_NUMPY_KINDS[int(code)]}{int(bits) // 8}")
        data = np.fromfile(work / f"out{k}.bin", dtype=dtype)
        if data.size != num * int(np.prod(shape)):
            raise BackendError(f"{library}: output {k} has {data.size} values, expected {num} samples of {shape}")
        out.append(data.reshape(num, *shape)[:, 0] if shape else data)  # each sample's first, as predict_outputs
    return out


def _why(done: subprocess.CompletedProcess) -> str:
    """The one line that says why a child failed: the runner's "error: ..." line, else the last line."""
    lines = [ln.strip() for ln in (done.stderr or done.stdout or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    line = errors[-1].removeprefix("error: ") if errors else (lines[-1] if lines else f"exit status {done.returncode}")
    return line[:300]
