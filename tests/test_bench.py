"""`edgedl bench` on this machine: the stable JSON schema, real numbers, clear errors."""

import json
import subprocess
import sys

import numpy as np
import pytest


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


def test_the_summary_prints_measured_latencies_and_the_accuracy_the_bundle_gives_on_the_same_samples(bundle):
    import re

    import edgedl.runtime as rt
    from edgedl.data import load_dataset

    proc = edgedl("bench", bundle["bundle"], "--runs", 20, "--repeats", 2, "--limit", 50)
    assert proc.returncode == 0, proc.stderr[-1500:]
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
