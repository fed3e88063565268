"""Benchmarks of microcontroller bundles on the device's own code: the bundle's firmware runs on the
emulated board of its core (``qemu-system-arm``, instructions counted exactly) or on a real board on
a serial port (cycles counted by its SysTick), and scores the data set there.

What a result says (the ``mcu`` object of schema edgedl.bench/1, see :mod:`edgedl.bench.result`):
instructions (or cycles) per inference and per operator, an estimated latency at the target's clock
(instructions times a stated cycles-per-instruction assumption: an estimate, never a measured
time), flash and RAM of the linked ELF, the arena the firmware used, and the firmware's agreement
with LiteRT's reference kernels (which TFLite Micro implements) on the same integer inputs.
Accuracy is computed from the outputs the firmware sent back.
"""

from __future__ import annotations

import platform
import statistics
import time

import numpy as np

from edgedl import _inputs
from edgedl.bench.result import SCHEMA
from edgedl.errors import BackendError

ZERO_SAMPLES = 3  # without data: inferences on zeros, for the counts alone


def has_firmware(manifest: dict) -> bool:
    """Whether a bundle carries a firmware for a microcontroller (what :func:`measure_mcu` runs)."""
    return bool((manifest.get("runtime") or {}).get("firmware"))


def measure_mcu(opened, x=None, y=None, device: str | None = None, timeout: float = 120.0, progress=None) -> dict:
    """Run an opened bundle's firmware over the samples and report what the firmware measured.

    Args:
        opened: the verified :class:`~edgedl.bundle.Bundle` (its manifest names the firmware).
        x, y: float samples (a list of arrays for several inputs) and labels, or None (a few zero
            inputs, for the counts alone).
        device: None for the emulated board of the firmware's core, or ``serial:///dev/ttyACM0`` for a
            board flashed with this firmware.
        timeout: seconds one inference may take before the run is abandoned.
        progress: optional callable(done, total).

    Returns:
        A result in schema edgedl.bench/1 with an ``mcu`` object and no ``timing`` (nothing here is
        a measured time).

    Raises:
        BackendError: no emulator, or the ELF is missing. DeviceError: the firmware faulted, hung or
        stopped answering (within ``timeout``).
    """
    from edgedl.mcu.boards import board_for
    from edgedl.mcu.emulate import run
    from edgedl.runtime.engines import TensorSpec
    from edgedl.runtime.quant import dequantize, quantize

    manifest = opened.manifest
    firmware = manifest["runtime"]["firmware"]
    elf = opened.directory / firmware["elf"]
    if device is None and not elf.is_file():
        raise BackendError(f"{opened.path}: the firmware {firmware['elf']} is not in the bundle")
    board = board_for(firmware["core"])
    specs_in = [TensorSpec.from_dict(d) for d in manifest["inputs"]]
    specs_out = [TensorSpec.from_dict(d) for d in manifest["outputs"]]
    if x is None:
        raw = [[np.zeros(s.shape, np.dtype(s.dtype)) for s in specs_in] for _ in range(ZERO_SAMPLES)]
    else:
        arrays = _inputs.as_list(x)
        raw = [[quantize(a[i:i + 1].reshape(s.shape), s) for a, s in zip(arrays, specs_in)]
               for i in range(_inputs.count(x))]
    start = time.perf_counter()
    emulated = run(None if device else elf, board.core, raw, timeout=timeout, device=device)
    if progress:
        progress(len(raw), len(raw))
    outputs = [np.stack([dequantize(o[k], spec)[0] for o in emulated.outputs]) for k, spec in enumerate(specs_out)]
    result = {
        "schema": SCHEMA,
        "bundle": {"path": str(opened.path), "backend": manifest["backend"], "target": manifest["target"]["name"],
                   "source": manifest.get("source") or {}, "size_bytes": sum(f["bytes"] for f in manifest["files"]),
                   "engine": manifest["runtime"]["engine"]},
        "host": {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
                 "node": platform.node(), "cpus": None},
        "device": device or f"emulated:{board.machine}",
        "settings": {"samples": len(raw), "timeout_s": timeout, "wall_s": round(time.perf_counter() - start, 2)},
        "mcu": _mcu_record(manifest, firmware, board, emulated, device),
        "memory": {"arena_bytes": int(emulated.info.arena_bytes)},
        "estimates": manifest.get("estimates") or {},
        "compile_fidelity": manifest.get("fidelity") or {},
    }
    result["mcu"]["fidelity"] = _against_reference_kernels(opened, raw, emulated.outputs, specs_out)
    top1 = outputs[0].argmax(-1) if outputs[0].ndim > 1 and outputs[0].shape[-1] > 1 else None
    if x is not None and y is not None and top1 is not None:
        result["accuracy"] = {"samples": int(len(y)), "accuracy": float(np.mean(top1 == y)),
                              "computed_on": "the firmware's outputs"}
    result["outputs_top1"] = [] if top1 is None else top1.tolist()
    return result


def _mcu_record(manifest: dict, firmware: dict, board, emulated, device) -> dict:
    """The ``mcu`` object: counts, the latency estimate and what it assumes, flash, RAM, operators."""
    target = manifest["target"]
    clock_mhz = (target.get("cpu") or {}).get("clock_mhz")
    clock_hz = int(clock_mhz * 1e6) if clock_mhz else board.clock_hz
    built = (manifest.get("estimates") or {}).get("firmware") or {}
    record = {"board": emulated.board, "core": board.core, "emulated": device is None,
              "kernels": firmware.get("kernels"), "instructions": None, "instructions_range": None,
              "cycles": None, "cycles_range": None, "instructions_per_tick": emulated.instructions_per_tick or None,
              "clock_hz": clock_hz, "cycles_per_instruction": board.cycles_per_instruction,
              "cpi_basis": board.cpi_basis, "flash_bytes": built.get("flash_bytes"),
              "ram_bytes": built.get("ram_bytes"), "arena_bytes": int(emulated.info.arena_bytes),
              "arena_used_bytes": int(emulated.info.arena_used_bytes)}
    mhz = f"{clock_hz / 1e6:g} MHz"
    if emulated.instructions:
        median = int(statistics.median(emulated.instructions))
        record.update(instructions=median, instructions_range=[min(emulated.instructions), max(emulated.instructions)])
        record["estimated_latency_ms"] = median * board.cycles_per_instruction / clock_hz * 1e3
        record["latency_basis"] = (f"estimate: {median:,} instructions x {board.cycles_per_instruction:g} cycles per "
                                   f"instruction (assumed) / {mhz} ({target['name']}'s clock)")
        unit = "instructions"
    else:
        median = int(statistics.median(emulated.cycles))
        record.update(cycles=median, cycles_range=[min(emulated.cycles), max(emulated.cycles)])
        record["estimated_latency_ms"] = median / clock_hz * 1e3
        record["latency_basis"] = f"{median:,} cycles counted by the board's SysTick / {mhz} ({target['name']}'s clock)"
        unit = "cycles"
    events = emulated.operators[0] if emulated.operators else []
    record["operators"] = _per_operator(events, unit)
    # one MicroProfiler event per node, in the order the interpreter runs them (the subgraph's order)
    record["nodes"] = [{"index": k, "operator": name, unit: int(n)} for k, (name, n) in enumerate(events)]
    return record


def _per_operator(events: list[tuple[str, int]], unit: str) -> list[dict]:
    """Per operator type: how many nodes, their counts summed, and their share of the inference."""
    by_type: dict[str, list[int]] = {}
    for name, n in events:
        by_type.setdefault(name, []).append(int(n))
    total = sum(sum(v) for v in by_type.values()) or 1
    rows = [{"operator": name, "count": len(v), unit: sum(v), "share": sum(v) / total} for name, v in by_type.items()]
    return sorted(rows, key=lambda r: -r[unit])


def _against_reference_kernels(opened, raw: list, outputs: list, specs_out) -> dict:
    """The firmware's raw outputs against LiteRT's reference kernels on the same integer inputs:
    the largest difference in quantization steps, the share of identical outputs, top-1 agreement."""
    from edgedl.runtime.engines import LiteRTEngine

    model = opened.directory / opened.manifest["runtime"]["model"]
    try:
        engine = LiteRTEngine(model, kernels="reference")
    except Exception as e:  # noqa: BLE001 - a model only TFLite Micro runs (custom ops): no LiteRT reference
        return {"reference": "LiteRT reference kernels", "checked": False, "reason": str(e)[:200]}
    ref = [engine.invoke_all(sample if len(sample) > 1 else sample[0]) for sample in raw]
    same = float(np.mean([np.array_equal(r[0], o[0]) for r, o in zip(ref, outputs)]))
    record = {"reference": f"LiteRT reference kernels on {model.name}", "samples": len(raw), "identical_share": same}
    if np.dtype(specs_out[0].dtype).kind in "iu":  # integer output: the difference in quantization steps
        record["max_step_difference"] = max(int(np.max(np.abs(r[0].astype(np.int64) - o[0].astype(np.int64))))
                                            for r, o in zip(ref, outputs))
    else:  # a float output (the model dequantizes at its end)
        record["max_abs_difference"] = max(float(np.max(np.abs(r[0] - o[0]))) for r, o in zip(ref, outputs))
    if len(specs_out[0].shape) > 1 and specs_out[0].shape[-1] > 1:
        agree = [int(np.argmax(r[0])) == int(np.argmax(o[0])) for r, o in zip(ref, outputs)]
        record["top1_agreement"] = float(np.mean(agree))
    record["tflm_interpreter"] = _against_tflm(opened, raw, outputs)
    return record


def _against_tflm(opened, raw: list, outputs: list) -> dict:
    """The firmware against TFLite Micro's own interpreter on this host (its reference kernels):
    identical for a firmware with reference kernels, where LiteRT's reference kernels round a few
    FULLY_CONNECTED outputs one step otherwise."""
    from edgedl.runtime.tflm import TFLMEngine

    runtime = opened.manifest["runtime"]
    engine = TFLMEngine(opened.directory / runtime["model"], arena_size=runtime.get("arena_size"))
    ref = [engine.invoke_all(sample if len(sample) > 1 else sample[0]) for sample in raw]
    return {"identical_share": float(np.mean([np.array_equal(r[0], o[0]) for r, o in zip(ref, outputs)])),
            "max_abs_difference": max(float(np.max(np.abs(r[0].astype(np.float64) - o[0].astype(np.float64))))
                                      for r, o in zip(ref, outputs))}
