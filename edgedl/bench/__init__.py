"""Benchmarks, the pipeline's last measuring stage: a bundle's latency, memory, accuracy and agreement.

* :mod:`edgedl.bench.options`: :class:`~edgedl.bench.options.BenchOptions`, what to measure and where;
* :mod:`edgedl.bench.timing`: the one timing loop (warm-up, runs, repeats) and its statistics;
* :mod:`edgedl.bench.core`: the measurement as run where the bundle runs (a child process, or an agent);
* :mod:`edgedl.bench.harness`: ``bench()``, here or through :mod:`edgedl.bench.remote` on a device;
* :mod:`edgedl.bench.result`: :class:`BenchResult`, what ``bench()`` returns, saves and prints.

Only numpy and the standard library are imported here, so the device agent imports this package
without TensorFlow.
"""

from edgedl.bench.result import SCHEMA, BenchResult  # noqa: F401
from edgedl.bench.timing import Timing, latency_stats, measure_latency, time_invocations  # noqa: F401
from edgedl.bench.options import BenchOptions  # noqa: F401,E402
from edgedl.bench.harness import bench  # noqa: F401,E402

from edgedl._stage import callable_module  # noqa: E402

callable_module(__name__)  # edgedl.bench(...) is edgedl.bench.bench(...)
