"""The main job end to end: train, quantize, compile with LiteRT and TVM, benchmark, compare."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.tvm
def test_quickstart_on_bundled_digits_compares_every_variant(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "EDGEDL_DATA"}
    proc = subprocess.run([sys.executable, "-m", "edgedl.cli.main", "quickstart", "--epochs", "4", "--runs", "30",
                           "--out", str(tmp_path / "qs"), "--json"], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    from edgedl.data import load_dataset

    assert result["dataset"] == "digits" and result["num_test"] == len(load_dataset("digits").y_test)
    rows = {(r["variant"], r["backend"]): r for r in result["rows"]}
    assert set(rows) == {("keras float32", "keras"), ("float32", "litert"), ("float32", "tvm"),
                         ("int8", "litert"), ("int8", "tvm")}
    keras_acc = rows[("keras float32", "keras")]["accuracy"]
    assert keras_acc > 0.85
    # float32 compiled models agree with Keras; int8 loses little.
    for backend in ("litert", "tvm"):
        assert rows[("float32", backend)]["agreement"] >= 0.99
        assert rows[("int8", backend)]["accuracy"] >= keras_acc - 0.03
        assert rows[("float32", backend)]["p50_us"] > 0
    # TVM's int8 LeNet is bit-exact with LiteRT's: the same accuracy to the sample.
    assert rows[("int8", "tvm")]["accuracy"] == rows[("int8", "litert")]["accuracy"]
    assert min(r["vs_fastest"] for r in result["rows"] if r["vs_fastest"]) == 1.0
    written = json.loads((tmp_path / "qs" / "results.json").read_text())
    assert written["rows"] == result["rows"]
    assert (tmp_path / "qs" / "lenet_int8.tflite").stat().st_size < (tmp_path / "qs" / "lenet_float32.tflite").stat().st_size * 0.3
