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


def cpu_model() -> str | None:
    """The processor's name: /proc/cpuinfo's ``model name`` (x86; ``Model`` or ``Hardware`` on boards
    such as a Raspberry Pi), else :func:`platform.processor`; None where neither tells.

    Example:
        >>> cpu_model()  # doctest: +SKIP
        'AMD EPYC 7B13'
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        fields = {}
    fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
    for key in ("model name", "model", "hardware", "cpu model", "processor"):
        value = fields.get(key)
        if value and not value.isdigit():  # "processor: 0" on x86 is an index, not a name
            return " ".join(value.split())
    return platform.processor() or None


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
            ``repeats``, ``threads`` and ``profile`` are used (default: BenchOptions()).
        x, y: samples to score (float inputs, labels), or None. For a bundle with several inputs
            ``x`` is a list of float arrays, one per input in the bundle's order, each (N, ...).
        progress: optional callable(done, total) for a progress bar.
        trusted: Ed25519 public keys; when given, only a bundle signed by one of them is loaded
            (the agent's ``--trust``; see :func:`edgedl.runtime.load`).

    Returns:
        The measurement in schema edgedl.bench/1 (plain JSON-able data), with ``outputs_top1`` (and
        with ``profile`` where ``options.profile``; see :mod:`edgedl.bench.profile`).

    Example:
        >>> from edgedl.bench.options import BenchOptions
        >>> measure("lenet.edgedl", BenchOptions(runs=50, repeats=2))["timing"]["latency"]["runs"]  # doctest: +SKIP
        100
    """
    import edgedl.runtime as rt

    options = options or BenchOptions()
    rss_before = rss_bytes()
    t0 = time.perf_counter()
    model = rt.load(bundle, num_threads=options.threads, trusted=trusted)
    load_s = time.perf_counter() - t0
    raw = raw_sample(model, x)
    t0 = time.perf_counter()
    model.invoke(raw)
    first_us = (time.perf_counter() - t0) * 1e6

    num_samples = count_samples(x)
    timed = options.repeats * options.runs
    total = timed + num_samples
    repeats_done = (lambda done, _: progress(done, total)) if progress else None
    timing = time_invocations(model.engine, raw, options.warmup, options.runs, options.repeats, repeats_done)
    manifest = model.manifest
    result = {
        "schema": SCHEMA,
        "bundle": {"path": str(bundle), "backend": manifest["backend"], "target": manifest["target"]["name"],
                   "source": manifest.get("source") or {}, "size_bytes": sum(f["bytes"] for f in manifest["files"]),
                   "engine": manifest["runtime"]["engine"]},
        "host": {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
                 "node": platform.node(), "cpus": os.cpu_count(), "cpu_model": cpu_model()},
        "settings": {"warmup": options.warmup, "runs": options.runs, "repeats": options.repeats,
                     "threads": options.threads},
        "timing": {"load_s": load_s, "first_inference_us": first_us, **timing.summary()},
        "memory": _memory(rss_before, manifest),
        "estimates": manifest.get("estimates") or {},
        "compile_fidelity": manifest.get("fidelity") or {},
    }
    if options.profile:  # after the timed runs, which it would slow
        from edgedl.bench.profile import PROFILE_WARMUP, profile_model

        result["profile"] = profile_model(model, raw, warmup=min(options.warmup, PROFILE_WARMUP), runs=options.runs,
                                          threads=options.threads)
    if num_samples:
        result.update(_score(model, x, y, (lambda done: progress(timed + done, total)) if progress else None))
    return result


def _memory(rss_before: int, manifest: dict) -> dict:
    """The process's memory now (and at its peak) beside what it was before the load; the TFLM arena."""
    memory = {"rss_before_load_bytes": rss_before, "rss_after_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes()}
    arena = manifest["runtime"].get("arena_size")
    if arena:
        memory["arena_bytes"] = int(arena)
    return memory


def save_samples(path, x, y=None) -> None:
    """Write samples for the worker or the agent: ``x`` (and ``y``) in an ``.npz``; the arrays of a
    bundle with several inputs as ``x_0``, ``x_1``, ... in the bundle's input order."""
    arrays = {f"x_{i}": a for i, a in enumerate(x)} if isinstance(x, (list, tuple)) else {"x": x}
    np.savez(path, **arrays, **({} if y is None else {"y": y}))


def load_samples(path) -> tuple:
    """(x, y) from a :func:`save_samples` file: x an array, or a list of them (several inputs)."""
    with np.load(path, allow_pickle=False) as data:
        y = data["y"] if "y" in data.files else None
        if "x" in data.files:
            return data["x"], y
        return [data[f"x_{i}"] for i in range(sum(1 for k in data.files if k.startswith("x_")))], y


def count_samples(x) -> int:
    """How many samples ``x`` holds: an array (N, ...), a list of them (one per input), or None (0)."""
    from edgedl._inputs import count

    return 0 if x is None or (isinstance(x, (list, tuple)) and not x) else int(count(x))


def raw_sample(model, x=None):
    """What the timing loop runs: the first sample of ``x`` (real data where the bench has samples),
    else zeros, quantized per input; one array for a model with one input, else a list of them in
    the order of ``model.inputs``.

    Example:
        >>> raw_sample(load("lenet.edgedl")).shape  # doctest: +SKIP
        (1, 28, 28, 1)
    """
    from edgedl._inputs import take
    from edgedl.runtime.quant import quantize

    if count_samples(x):
        arrays = model.arrange(take(x, slice(0, 1)))
    else:
        arrays = [np.zeros(spec.shape, np.float32) for spec in model.inputs]
    raw = [quantize(a.reshape(spec.shape), spec) for a, spec in zip(arrays, model.inputs)]
    return raw[0] if len(raw) == 1 else raw


def _score(model, x, y: np.ndarray | None, progress=None) -> dict:
    """Run every sample once: the top-1 classes of the first output (for the harness's agreement
    figure) and the accuracy. ``x``: an array, or a list of arrays (one per input).

    ``progress`` is told the samples done, every 50 and at the end.
    """
    from edgedl._inputs import take

    num = count_samples(x)
    outputs = []
    for i in range(num):
        out = model.predict(take(x, slice(i, i + 1)))
        outputs.append((out[0] if isinstance(out, list) else out)[0])
        if progress and (i % 50 == 49 or i == num - 1):
            progress(i + 1)
    top1 = np.stack(outputs).argmax(-1)
    accuracy = {"samples": num}
    if y is not None:
        accuracy["accuracy"] = float(np.mean(top1 == y))
    return {"outputs_top1": top1.tolist(), "accuracy": accuracy}
