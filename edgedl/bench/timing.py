"""The one timing loop: warm-up, timed runs in repeats, and their statistics.

Where it sits: every latency figure edgedl reports comes from here: ``edgedl bench`` (locally in
:func:`edgedl.bench.core.measure`, remotely one repeat per call of the agent's
``edgedl.bench.repeat``, the statistics then computed by the client), compile's latency column
and the quick start. Only numpy is imported, so a device agent can run it without TensorFlow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


def latency_stats(samples_s) -> dict:
    """Summary statistics in microseconds of per-inference times given in seconds.

    Example:
        >>> latency_stats([0.001, 0.002, 0.003])["p50_us"]
        2000.0
    """
    us = np.asarray(samples_s, dtype=np.float64) * 1e6
    return {
        "p50_us": float(np.percentile(us, 50)), "p90_us": float(np.percentile(us, 90)),
        "p99_us": float(np.percentile(us, 99)), "mean_us": float(us.mean()), "std_us": float(us.std()),
        "min_us": float(us.min()), "max_us": float(us.max()), "runs": int(us.size),
    }


@dataclass
class Timing:
    """The per-inference times (seconds) of one or more repeats, and the statistics over them."""

    repeats: list[np.ndarray] = field(default_factory=list)

    @property
    def latency(self) -> dict:
        """:func:`latency_stats` over every timed run of every repeat."""
        return latency_stats(np.concatenate(self.repeats))

    @property
    def repeat_p50_us(self) -> list[float]:
        """The median of each repeat, in microseconds."""
        return [float(np.median(t) * 1e6) for t in self.repeats]

    def median_repeat(self) -> dict:
        """:func:`latency_stats` of the repeat whose median is the median of the repeats' medians."""
        order = np.argsort(self.repeat_p50_us, kind="stable")
        return latency_stats(self.repeats[int(order[len(order) // 2])])

    def summary(self) -> dict:
        """The ``timing`` figures of a benchmark result (schema edgedl.bench/1): latency statistics,
        each repeat's median, their spread and the throughput."""
        stats, per_repeat = self.latency, self.repeat_p50_us
        return {
            "latency": stats, "repeat_p50_us": per_repeat,
            "spread": {"p50_min_us": min(per_repeat), "p50_max_us": max(per_repeat),
                       "relative": (max(per_repeat) - min(per_repeat)) / float(np.median(per_repeat))},
            "throughput_per_s": 1e6 / stats["mean_us"],
        }


def time_invocations(engine, x, warmup: int = 20, runs: int = 200, repeats: int = 1,
                     progress=None) -> Timing:
    """Time ``engine.invoke`` (``invoke_fast`` where the engine has it) on one raw input.

    Args:
        engine: a runtime engine (anything with ``invoke(x)``).
        x: the raw (already quantized) input it takes: one array, or a list of them (one per input).
        warmup: untimed invocations first.
        runs: timed invocations per repeat.
        repeats: how many times to time ``runs`` invocations (their spread says how noisy the host is).
        progress: optional callable(done, total), told after each repeat (``total`` is repeats x runs).

    Returns:
        Timing with the raw times of each repeat.

    Example:
        >>> class Noop:
        ...     def invoke(self, x):
        ...         return x
        >>> time_invocations(Noop(), np.zeros(1), warmup=2, runs=10, repeats=3).latency["runs"]
        30
    """
    invoke = getattr(engine, "invoke_fast", engine.invoke)
    for _ in range(warmup):
        invoke(x)
    timing = Timing()
    clock = time.perf_counter
    for _ in range(repeats):
        times = np.empty(runs)
        for i in range(runs):
            t = clock()
            invoke(x)
            times[i] = clock() - t
        timing.repeats.append(times)
        if progress:
            progress(len(timing.repeats) * runs, repeats * runs)
    return timing


def measure_latency(engine, x, warmup: int = 20, runs: int = 200) -> dict:
    """Time ``engine.invoke`` on one raw input (a list of them for several inputs): ``warmup`` untimed runs, then ``runs`` timed ones;
    their :func:`latency_stats`.

    Example:
        >>> class Noop:
        ...     def invoke(self, x):
        ...         return x
        >>> measure_latency(Noop(), np.zeros(1), warmup=0, runs=5)["runs"]
        5
    """
    return time_invocations(engine, x, warmup=warmup, runs=runs).latency
