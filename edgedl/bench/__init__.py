"""Benchmark harness: latency statistics, accuracy and agreement of a compiled model on this host."""

from __future__ import annotations

import time

import numpy as np


def latency_stats(samples_s) -> dict:
    """Summary statistics in microseconds of per-inference times given in seconds."""
    us = np.asarray(samples_s, dtype=np.float64) * 1e6
    return {
        "p50_us": float(np.percentile(us, 50)), "p90_us": float(np.percentile(us, 90)),
        "p99_us": float(np.percentile(us, 99)), "mean_us": float(us.mean()), "std_us": float(us.std()),
        "min_us": float(us.min()), "max_us": float(us.max()), "runs": int(us.size),
    }


def measure_latency(engine, x: np.ndarray, warmup: int = 20, runs: int = 200) -> dict:
    """Time ``engine.invoke`` on one raw input: ``warmup`` untimed runs, then ``runs`` timed ones."""
    invoke = getattr(engine, "invoke_fast", engine.invoke)
    for _ in range(warmup):
        invoke(x)
    times = np.empty(runs)
    clock = time.perf_counter
    for i in range(runs):
        t0 = clock()
        invoke(x)
        times[i] = clock() - t0
    return latency_stats(times)
