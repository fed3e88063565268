"""`edgedl bench` on this machine: the stable JSON schema, real numbers, clear errors."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from edgedl.bench import SCHEMA, BenchResult, Timing, time_invocations
from edgedl.errors import InputFileError


@pytest.fixture(scope="module")
def bundle(trained_lenet, tmp_path_factory):
    from edgedl.compile import CompileOptions, compile_model

    d = tmp_path_factory.mktemp("bench")
    keras_path = trained_lenet["keras"]
    out = d / "lenet.edgedl"
    compile_model(str(keras_path), "x86_64", str(out),
                  CompileOptions(backend="litert", quantize="int8", io_type="int8", num_samples=50))
    return {"bundle": out, "keras": keras_path}


def edgedl(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edgedl.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_bench_json_has_the_stable_schema_and_real_numbers(bundle, tmp_path):
    out = tmp_path / "run.json"
    proc = edgedl("bench", bundle["bundle"], "--runs", 50, "--repeats", 3, "--reference", bundle["keras"],
                  "--json", "-o", out)
    assert proc.returncode == 0, proc.stderr[-1500:]
    r = json.loads(proc.stdout)
    assert r == json.loads(out.read_text())
    assert r["schema"] == "edgedl.bench/1" and r["device"] == "local"
    assert {"bundle", "host", "settings", "timing", "memory", "accuracy", "estimates", "created"} <= set(r)
    lat = r["timing"]["latency"]
    assert lat["runs"] == 150 and 0 < lat["min_us"] <= lat["p50_us"] <= lat["p90_us"] <= lat["p99_us"] <= lat["max_us"]
    assert len(r["timing"]["repeat_p50_us"]) == 3 and r["timing"]["throughput_per_s"] > 0
    assert r["timing"]["load_s"] > 0 and r["timing"]["first_inference_us"] > 0
    assert r["memory"]["peak_rss_bytes"] > r["memory"]["rss_before_load_bytes"] > 0
    acc = r["accuracy"]
    assert acc["dataset"] == "digits" and acc["samples"] > 300 and acc["accuracy"] > 0.8
    assert acc["reference_agreement"] > 0.95


def test_the_summary_prints_measured_latencies_and_the_accuracy_the_bundle_gives_on_the_same_samples(bundle, tmp_path):
    import re

    import edgedl.runtime as rt
    from edgedl.data import load_dataset

    out = tmp_path / "run.json"
    proc = edgedl("bench", bundle["bundle"], "--runs", 20, "--repeats", 2, "--limit", 50, "-o", out)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout == BenchResult.load(out).to_text() + "\n"  # the CLI prints what the result renders
    latency = re.search(r"latency p50 ([\d.]+) us\s+p90 ([\d.]+)\s+p99 ([\d.]+)", proc.stdout)
    assert latency, proc.stdout
    p50, p90, p99 = map(float, latency.groups())
    assert 0 < p50 <= p90 <= p99
    accuracy = re.search(r"accuracy ([\d.]+)% on (\d+) digits samples", proc.stdout)
    assert accuracy, proc.stdout
    # The same 50 samples bench scores (the data set and split the bundle was checked on, --limit 50),
    # through the bundle's own runtime.
    model = rt.load(bundle["bundle"])
    data = load_dataset("digits", limit=50, split=model.manifest["samples"]["split"])
    expected = 100 * float(np.mean(model.predict(data.x_test).argmax(-1) == data.y_test))
    assert int(accuracy.group(2)) == 50 and float(accuracy.group(1)) == pytest.approx(expected, abs=0.005)


def test_a_run_past_its_timeout_is_stopped_with_a_clear_error(bundle):
    proc = edgedl("bench", bundle["bundle"], "--runs", 10_000_000, "--repeats", 1, "--timeout", 5, timeout=120)
    assert proc.returncode != 0
    assert "did not finish within 5 s" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--runs", "0"], "--runs must be a positive integer"),
    (["--dataset", "fsdd"], "data set 'fsdd' gives inputs of shape (61, 40, 1); the bundle takes (28, 28, 1)"),
])
def test_bad_settings_are_one_line_errors(bundle, args, message):
    proc = edgedl("bench", bundle["bundle"], *args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


def test_a_tampered_bundle_is_refused(bundle, tmp_path):
    import shutil

    copy = tmp_path / "t.edgedl"
    shutil.copytree(bundle["bundle"], copy)
    with open(copy / "model.tflite", "ab") as f:
        f.write(b"x")
    proc = edgedl("bench", copy)
    assert proc.returncode != 0 and "'model.tflite' does not match its size in the manifest" in proc.stderr


def test_not_a_bundle_is_named(tmp_path):
    junk = tmp_path / "junk.edgedl"
    junk.write_bytes(b"\x00" * 64)
    proc = edgedl("bench", junk)
    assert proc.returncode != 0 and "junk.edgedl: not an edgedl bundle" in proc.stderr


# -- the timing loop and the result, without a model -----------------------------------------------


class CountingEngine:
    """An engine that counts its invocations and takes a known time for each (``invoke_fast`` preferred)."""

    def __init__(self, seconds=0.0):
        self.calls, self.seconds = 0, seconds

    def invoke(self, x):
        raise AssertionError("the loop must use invoke_fast where the engine has it")

    def invoke_fast(self, x):
        self.calls += 1
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass


def test_the_timing_loop_warms_up_once_then_times_every_repeat_and_reports_progress():
    engine, progress = CountingEngine(seconds=200e-6), []
    timing = time_invocations(engine, np.zeros(1), warmup=7, runs=25, repeats=4,
                              progress=lambda done, total: progress.append((done, total)))
    assert engine.calls == 7 + 25 * 4 and [len(t) for t in timing.repeats] == [25] * 4
    assert progress == [(25, 100), (50, 100), (75, 100), (100, 100)]
    summary = timing.summary()
    lat = summary["latency"]
    assert lat["runs"] == 100
    assert 200 <= lat["min_us"] <= lat["p50_us"] <= lat["p90_us"] <= lat["p99_us"] <= lat["max_us"]
    assert len(summary["repeat_p50_us"]) == 4 and all(v >= 200 for v in summary["repeat_p50_us"])
    assert summary["throughput_per_s"] == pytest.approx(1e6 / lat["mean_us"])
    spread = summary["spread"]
    assert (spread["p50_min_us"], spread["p50_max_us"]) == (min(summary["repeat_p50_us"]), max(summary["repeat_p50_us"]))


def test_the_median_repeat_is_the_one_whose_p50_is_in_the_middle():
    timing = Timing([np.full(5, 3e-3), np.full(5, 1e-3), np.full(5, 2e-3)])
    assert timing.repeat_p50_us == pytest.approx([3000, 1000, 2000])
    assert timing.median_repeat()["p50_us"] == pytest.approx(2000) and timing.median_repeat()["runs"] == 5
    assert timing.latency["runs"] == 15 and timing.latency["p50_us"] == pytest.approx(2000)
    assert timing.summary()["spread"]["relative"] == pytest.approx((3000 - 1000) / 2000)


def a_result(**timing):
    lat = {"p50_us": 100.0, "p90_us": 120.0, "p99_us": 150.0, "mean_us": 105.0, "std_us": 9.5, "min_us": 90.0,
           "max_us": 160.0, "runs": 40}
    return {"schema": SCHEMA, "device": "local", "created": "2026-01-01T00:00:00",
            "bundle": {"path": "out/lenet.edgedl", "backend": "litert", "target": "x86_64", "size_bytes": 61440,
                       "engine": "litert"},
            "host": {"machine": "x86_64"}, "settings": {"warmup": 1, "runs": 20, "repeats": 2, "threads": 1},
            "timing": dict({"load_s": 0.0123, "first_inference_us": 456.7, "latency": lat,
                            "repeat_p50_us": [99.0, 101.0], "spread": {"relative": 0.02}, "throughput_per_s": 9523.8},
                           **timing),
            "memory": {"peak_rss_bytes": 50 * 2**20, "arena_bytes": 2048},
            "accuracy": {"samples": 50, "dataset": "digits", "accuracy": 0.98, "reference_agreement": 0.99},
            "estimates_vs_measured": {"latency_us": {"estimated": 80.0, "measured_p50": 100.0, "note": "for the NPU"}}}


def test_a_result_saves_loads_and_renders_itself(tmp_path):
    result = BenchResult(a_result())
    path = result.save(tmp_path / "run.json")
    assert json.loads(path.read_text()) == result.data and BenchResult.load(path) == result
    assert (result.name, result.backend, result.target, result.device) == ("lenet", "litert", "x86_64", "local")
    assert result.p50 == 100.0 and result.accuracy == 0.98 and result.arena_bytes == 2048
    assert result.to_text().splitlines() == [
        "out/lenet.edgedl: litert for x86_64 on local (x86_64)",
        "  load 12.3 ms   first inference 456.7 us",
        "  latency p50 100.0 us  p90 120.0  p99 150.0  mean 105.0 ± 9.5  min 90.0  max 160.0",
        "  repeat medians 99.0, 101.0 us (spread 2.0%)   throughput 9524/s",
        "  memory: peak RSS 50.0 MiB, TFLM arena 2.0 KiB   bundle 60.0 KiB",
        "  accuracy 98.00% on 50 digits samples; top-1 agreement with the float reference 99.00%",
        "  latency_us: estimated 80.0 vs measured 100.0 (for the NPU)",
    ]


def test_loading_what_is_not_one_result_names_the_file_and_the_problem(tmp_path):
    several = tmp_path / "two.json"
    several.write_text(json.dumps([a_result(), a_result()]))
    with pytest.raises(InputFileError, match=r"two.json: holds 2 benchmark results, not one"):
        BenchResult.load(several)
    broken = tmp_path / "nan.json"
    broken.write_text(json.dumps(a_result(throughput_per_s="fast")))
    with pytest.raises(InputFileError, match=r"nan.json: is not a benchmark result: timing.throughput_per_s is "
                                             r"'fast', not a number; expected a result of `edgedl bench"):
        BenchResult.load(broken)
