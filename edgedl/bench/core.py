"""The measurement itself, as run on the device: load a bundle, time it, score it.

Only numpy and the runtime are imported, so the same function runs in a local child process and in
a remote agent. It returns plain JSON-able data in the harness's schema.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time

import numpy as np

from edgedl.bench.options import BenchOptions
from edgedl.bench.result import SCHEMA
from edgedl.bench.timing import time_invocations


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb) * (1 if sys.platform == "darwin" else 1024)


def measure(bundle: str, options: BenchOptions | None = None, *, x: np.ndarray | None = None,
            y: np.ndarray | None = None, progress=None, trusted: list[bytes] | None = None) -> dict:
    """Load ``bundle`` and measure it: init time, first inference, warm latency over ``repeats`` x
    ``runs`` (after ``warmup``), throughput, memory, and accuracy on ``x``/``y`` when given.

    Args:
        bundle: the bundle (folder or archive) to measure.
        options: a :class:`~edgedl.bench.options.BenchOptions`; its ``warmup``, ``runs``,
            ``repeats`` and ``threads`` are used (default: BenchOptions()).
        x, y: samples to score (float inputs, labels), or None.
        progress: optional callable(done, total) for a progress bar.
        trusted: Ed25519 public keys; when given, only a bundle signed by one of them is loaded
            (the agent's ``--trust``; see :func:`edgedl.runtime.load`).

    Returns:
        The measurement in schema edgedl.bench/1 (plain JSON-able data), with ``outputs_top1``.

    Example:
        >>> from edgedl.bench.options import BenchOptions
        >>> measure("lenet.edgedl", BenchOptions(runs=50, repeats=2))["timing"]["latency"]["runs"]  # doctest: +SKIP
        100
    """
    import edgedl.runtime as rt
    from edgedl.runtime.quant import quantize

    options = options or BenchOptions()
    rss_before = rss_bytes()
    t0 = time.perf_counter()
    model = rt.load(bundle, num_threads=options.threads, trusted=trusted)
    load_s = time.perf_counter() - t0
    spec = model.inputs[0]
    sample = x[:1] if x is not None and len(x) else np.zeros(model.input_shape, np.float32)
    raw = quantize(sample.reshape(model.input_shape), spec)
    t0 = time.perf_counter()
    model.invoke(raw)
    first_us = (time.perf_counter() - t0) * 1e6

    timed = options.repeats * options.runs
    total = timed + (len(x) if x is not None else 0)
    repeats_done = (lambda done, _: progress(done, total)) if progress else None
    timing = time_invocations(model.engine, raw, options.warmup, options.runs, options.repeats, repeats_done)
    manifest = model.manifest
    result = {
        "schema": SCHEMA,
        "bundle": {"path": str(bundle), "backend": manifest["backend"], "target": manifest["target"]["name"],
                   "source": manifest.get("source") or {}, "size_bytes": sum(f["bytes"] for f in manifest["files"]),
                   "engine": manifest["runtime"]["engine"]},
        "host": {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
                 "node": platform.node(), "cpus": os.cpu_count()},
        "settings": {"warmup": options.warmup, "runs": options.runs, "repeats": options.repeats,
                     "threads": options.threads},
        "timing": {"load_s": load_s, "first_inference_us": first_us, **timing.summary()},
        "memory": _memory(rss_before, manifest),
        "estimates": manifest.get("estimates") or {},
        "compile_fidelity": manifest.get("fidelity") or {},
    }
    if x is not None and len(x):
        result.update(_score(model, x, y, (lambda done: progress(timed + done, total)) if progress else None))
    return result


def _memory(rss_before: int, manifest: dict) -> dict:
    """The process's memory now (and at its peak) beside what it was before the load; the TFLM arena."""
    memory = {"rss_before_load_bytes": rss_before, "rss_after_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes()}
    arena = manifest["runtime"].get("arena_size")
    if arena:
        memory["arena_bytes"] = int(arena)
    return memory


def _score(model, x: np.ndarray, y: np.ndarray | None, progress=None) -> dict:
    """Run every sample once: the top-1 classes (for the harness's agreement figure) and the accuracy.

    ``progress`` is told the samples done, every 50 and at the end.
    """
    outputs = []
    for i in range(len(x)):
        outputs.append(model.predict(x[i:i + 1])[0])
        if progress and (i % 50 == 49 or i == len(x) - 1):
            progress(i + 1)
    top1 = np.stack(outputs).argmax(-1)
    accuracy = {"samples": int(len(x))}
    if y is not None:
        accuracy["accuracy"] = float(np.mean(top1 == y))
    return {"outputs_top1": top1.tolist(), "accuracy": accuracy}
