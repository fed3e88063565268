"""Targets: device descriptions as data, one TOML file per device in ``targets/``.

A target says what the compilers need (CPU architecture and features, the TVM target dict, a
cross compiler, the backends that apply, RAM/flash budgets, NPU configuration). Users add their
own file and pass its path wherever a target name is accepted.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgedl.errors import TargetError

KINDS = ("cpu", "gpu", "npu", "mcu")
KNOWN_BACKENDS = ("litert", "tvm", "vela", "tflm", "onnxruntime")
SECTIONS = ("description", "kind", "backends", "cpu", "gpu", "tvm", "npu", "memory")


@dataclass(frozen=True)
class Target:
    """One device: its facts as loaded from TOML (``targets/NAME.toml``, or a file of your own).

    Example:
        >>> rpi4 = load_target("rpi4")
        >>> rpi4.kind, rpi4.cpu["arch"], "tvm" in rpi4.backends
        ('cpu', 'aarch64', True)
    """

    name: str
    description: str
    kind: str
    backends: tuple[str, ...]
    cpu: dict = field(default_factory=dict)
    gpu: dict = field(default_factory=dict)
    tvm: dict = field(default_factory=dict)
    npu: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    path: str = ""

    @property
    def ram_bytes(self) -> int | None:
        kb = self.memory.get("ram_kb")
        return None if kb is None else int(kb) * 1024

    @property
    def flash_bytes(self) -> int | None:
        kb = self.memory.get("flash_kb")
        return None if kb is None else int(kb) * 1024

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "kind": self.kind,
                "backends": list(self.backends), "cpu": self.cpu, "gpu": self.gpu, "tvm": self.tvm,
                "npu": self.npu, "memory": self.memory}

    @classmethod
    def from_dict(cls, data: dict, where: str = "the manifest's target") -> Target:
        """The target recorded in a bundle's manifest (what :meth:`to_dict` wrote), checked as a file is.

        Raises:
            TargetError: the record is not a valid target.
        """
        if not isinstance(data, dict):
            raise TargetError(f"{where}: expected a table of target facts, got {type(data).__name__}")
        return _validate(Path(where), data)

    def runs_here(self) -> tuple[bool, str]:
        """(ok, reason): whether code compiled for this target can run on this machine.

        A CPU target runs here when its architecture is this machine's; a GPU target also needs its
        API's device (checked through TVM's runtime); NPU and microcontroller code never runs here.

        Example:
            >>> load_target("rpi4").runs_here()  # doctest: +SKIP
            (False, 'rpi4 is aarch64, this machine is x86_64')
        """
        import platform

        machine = platform.machine()
        arch = self.cpu.get("arch")
        if self.kind in ("npu", "mcu"):
            return False, f"{self.name} is a{'n' if self.kind == 'npu' else ''} {self.kind}; this host cannot run its code"
        if arch != machine:
            where = f"{self.name}'s host" if self.kind == "gpu" else self.name
            return False, f"{where} is {arch}, this machine is {machine}"
        if self.kind == "gpu":
            api = self.gpu.get("api", "cuda")
            try:
                import tvm

                if tvm.device(api, 0).exist:
                    return True, ""
            except Exception:  # no TVM, or a TVM built without this API: either way there is no device
                pass
            return False, f"no {api} device on this machine"
        return True, ""


def targets_dir() -> Path:
    from edgedl.zoo import resource_dir

    return resource_dir("targets")


def target_names() -> list[str]:
    return sorted(p.stem for p in targets_dir().glob("*.toml"))


def load_target(spec: str | Path) -> Target:
    """Load a target by name (a file in ``targets/``) or by the path of a TOML file.

    Raises:
        TargetError: unknown name (with the nearest names), unreadable or invalid file.

    Example:
        >>> load_target("rpi4").cpu["arch"]
        'aarch64'
    """
    path = Path(spec)
    if path.suffix != ".toml" and "/" not in str(spec):
        path = targets_dir() / f"{spec}.toml"
        if not path.is_file():
            names = target_names()
            near = difflib.get_close_matches(str(spec), names, n=3, cutoff=0.4)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise TargetError(f"unknown target '{spec}'.{hint} Known targets: {', '.join(names)}")
    if not path.is_file():
        raise TargetError(f"target file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TargetError(f"{path}: not valid TOML ({e})") from None
    return _validate(path, data)


def _validate(path: Path, data: dict) -> Target:
    unknown = set(data) - set(SECTIONS) - {"name"}
    if unknown:
        raise TargetError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(SECTIONS)}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise TargetError(f"{path}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    backends = data.get("backends")
    if not isinstance(backends, list) or not backends:
        raise TargetError(f"{path}: backends must be a non-empty list, e.g. [\"litert\", \"tvm\"]")
    bad = [b for b in backends if b not in KNOWN_BACKENDS]
    if bad:
        raise TargetError(f"{path}: unknown backend(s) {', '.join(bad)}; known: {', '.join(KNOWN_BACKENDS)}")
    if "tvm" in backends and not isinstance(data.get("tvm", {}).get("target"), dict):
        raise TargetError(f"{path}: backend tvm needs [tvm] target = {{ kind = \"llvm\", ... }} (a dict, not a string)")
    if "vela" in backends and "accelerator" not in data.get("npu", {}):
        raise TargetError(f"{path}: backend vela needs [npu] accelerator, e.g. \"ethos-u55-128\"")
    for key in ("ram_kb", "flash_kb"):
        v = data.get("memory", {}).get(key)
        if v is not None and (not isinstance(v, int) or v <= 0):
            raise TargetError(f"{path}: memory.{key} must be a positive integer (KiB), got {v!r}")
    return Target(name=data.get("name", path.stem), description=data.get("description", ""), kind=kind,
                  backends=tuple(backends), cpu=data.get("cpu", {}), gpu=data.get("gpu", {}),
                  tvm=data.get("tvm", {}), npu=data.get("npu", {}), memory=data.get("memory", {}),
                  path=str(path))


def list_targets() -> list[Target]:
    return [load_target(n) for n in target_names()]


def host_target() -> Target:
    """The target that describes this machine (x86-64, with AVX-512 when the CPU has it)."""
    import platform

    machine = platform.machine()
    if machine == "x86_64":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            flags = ""
        return load_target("x86_64_avx512" if " avx512f" in flags and " avx512bw" in flags else "x86_64")
    if machine in ("aarch64", "arm64"):
        return load_target("rpi4")
    raise TargetError(f"no built-in target describes this host ({machine}); pass --target with a TOML file")
