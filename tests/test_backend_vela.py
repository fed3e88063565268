"""Vela: an int8 model compiled for Ethos-U NPUs, with Vela's estimates and every CPU fallback named."""

import re

import numpy as np
import pytest

from edgedl.backends import get_backend
from edgedl.compile import CompileOptions, compile_model
from edgedl.errors import BackendError, UnsupportedOperatorError
from edgedl.graph import read_tflite
from edgedl.targets import load_target

pytest.importorskip("ethosu.vela")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lenet(trained_lenet, tmp_path_factory):
    """The shared trained LeNet: .keras (with its metrics JSON), int8 .tflite (int8 and float I/O), float."""
    from edgedl.convert import to_tflite
    from edgedl.data import load_dataset

    d = tmp_path_factory.mktemp("lenet")
    x = load_dataset("digits").x_train
    paths = {"keras": trained_lenet["keras"], "int8": trained_lenet["int8"]}
    for name, mode, io in (("int8_float_io", "int8", "float"), ("float", "none", "float")):
        paths[name] = d / f"lenet_{name}.tflite"
        paths[name].write_bytes(to_tflite(trained_lenet["model"], mode, representative=x, io_type=io))
    return paths


@pytest.fixture(scope="module")
def depth_to_space(tmp_path_factory):
    """A tiny int8 model with DEPTH_TO_SPACE, which no Ethos-U NPU runs: Vela leaves it to the CPU."""
    from edgedl import _lazy
    from edgedl.convert import to_tflite

    keras, tf = _lazy.keras(), _lazy.tf()
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Lambda(lambda t: tf.nn.depth_to_space(t, 2))(x)
    x = keras.layers.Conv2D(4, 1)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    calibration = np.random.default_rng(0).random((32, 8, 8, 4), dtype=np.float32)
    path = tmp_path_factory.mktemp("d2s") / "d2s_int8.tflite"
    path.write_bytes(to_tflite(model, "int8", representative=calibration, io_type="int8"))
    return path


@pytest.mark.parametrize("target, clock_mhz, accelerator", [
    ("ethos_u55_128", 500, "Ethos_U55_128"),
    ("ethos_u85_256", 1000, "Ethos_U85_256"),
])
def test_lenet_int8_compiles_with_vela_estimates(lenet, tmp_path, target, clock_mhz, accelerator):
    compiled = get_backend("vela").compile(lenet["int8"], load_target(target), tmp_path, {})
    e = compiled.estimates
    assert e["accelerator"] == accelerator and e["clock_mhz"] == clock_mhz
    assert e["cycles"] > e["npu_cycles"] > 0
    assert e["inference_time_ms"] == pytest.approx(e["cycles"] / (clock_mhz * 1e3), rel=1e-3)
    assert e["inferences_per_second"] == pytest.approx(1e3 / e["inference_time_ms"], rel=1e-3)
    assert 1024 < e["sram_used_bytes"] < 64 * 1024
    # The weights (about 60 KB) live off-chip: in flash on the U55's Shared_Sram, in DRAM on the U85's Dedicated_Sram.
    assert e["off_chip_flash_used_bytes"] + e["dram_used_bytes"] > 60_000
    assert e["npu_operators"] > 0 and e["cpu_operators"] == 0 and e["cpu_fallback"] == [] and e["fits"]
    assert sorted(compiled.files) == ["model_vela.tflite", "vela_per_layer.csv", "vela_report.txt", "vela_summary.csv"]
    ops = read_tflite(tmp_path / "model_vela.tflite").op_counts
    assert ops == {"ethos-u": 1}  # the whole network is one NPU command stream
    assert compiled.inputs[0].dtype == "int8" and compiled.inputs[0].shape == (1, 28, 28, 1)
    assert compiled.toolchain["ethos-u-vela"].startswith("5.2")


def test_a_model_with_stripped_tensor_names_compiles_and_still_names_its_cpu_fallbacks(lenet, depth_to_space, tmp_path):
    from edgedl.convert import strip_names

    stripped = tmp_path / "stripped.tflite"
    stripped.write_bytes(strip_names(lenet["int8"].read_bytes()))
    compiled = get_backend("vela").compile(stripped, load_target("ethos_u55_128"), tmp_path / "lenet", {})
    assert compiled.estimates["cpu_operators"] == 0 and compiled.inputs[0].name  # I/O names survive
    stripped_d2s = tmp_path / "d2s.tflite"
    stripped_d2s.write_bytes(strip_names(depth_to_space.read_bytes()))
    compiled = get_backend("vela").compile(stripped_d2s, load_target("ethos_u55_128"), tmp_path / "d2s", {})
    assert [f["op"] for f in compiled.estimates["cpu_fallback"]] == ["DEPTH_TO_SPACE"]


def test_an_operator_vela_cannot_place_is_named_as_cpu_fallback(depth_to_space, tmp_path):
    compiled = get_backend("vela").compile(depth_to_space, load_target("ethos_u55_128"), tmp_path, {})
    e = compiled.estimates
    assert e["cpu_operators"] == 1 and e["cpu_fallback_ops"] == ["DEPTH_TO_SPACE"]
    [fallback] = e["cpu_fallback"]
    assert fallback["op"] == "DEPTH_TO_SPACE" and "DepthToSpace" in fallback["output"]
    assert fallback["reason"] == "Unsupported opType"  # Vela's own words
    assert "CPU fallback: DEPTH_TO_SPACE" in e["note"]
    assert read_tflite(tmp_path / "model_vela.tflite").op_counts.get("DEPTH_TO_SPACE") == 1
    assert re.search(r"CPU: .*DepthToSpace", (tmp_path / "vela_report.txt").read_text())


def test_support_check_names_the_cpu_operators_before_compiling(lenet, depth_to_space):
    vela = get_backend("vela")
    for target in ("ethos_u55_128", "ethos_u85_256"):
        assert vela.unsupported_ops(read_tflite(lenet["int8"]), load_target(target)) == {}
        found = vela.cpu_fallback_ops(read_tflite(depth_to_space), load_target(target))
        assert list(found) == ["DEPTH_TO_SPACE"] and "CPU" in found["DEPTH_TO_SPACE"]
    floats = vela.unsupported_ops(read_tflite(lenet["float"]), load_target("ethos_u55_128"))
    assert "CONV_2D" in floats and "--quantize int8" in floats["CONV_2D"]


def test_float_input_and_output_conversions_run_on_the_cpu_and_are_named(lenet, tmp_path):
    e = get_backend("vela").compile(lenet["int8_float_io"], load_target("ethos_u55_128"), tmp_path, {}).estimates
    assert e["cpu_fallback_ops"] == ["DEQUANTIZE", "QUANTIZE"] and e["cpu_operators"] == 2
    assert "--io int8" in e["note"]


def test_a_float_model_is_refused_with_the_fix(lenet, tmp_path):
    with pytest.raises(UnsupportedOperatorError,
                       match=r"Vela needs a full-integer int8 \(or int16x8\) model; .* --quantize int8"):
        get_backend("vela").compile(lenet["float"], load_target("ethos_u55_128"), tmp_path, {})


def test_sram_over_the_target_budget_is_an_error_saying_by_how_much(lenet, tmp_path):
    toml = tmp_path / "tiny_npu.toml"
    toml.write_text('kind = "npu"\nbackends = ["vela"]\n[npu]\naccelerator = "ethos-u55-128"\n'
                    'system_config = "Ethos_U55_High_End_Embedded"\nmemory_mode = "Shared_Sram"\n'
                    '[memory]\nram_kb = 8\nflash_kb = 8192\n')
    with pytest.raises(BackendError,
                       match=r"does not fit tiny_npu: Vela's plan needs [\d.]+ KiB of SRAM, tiny_npu has 8 KiB of "
                             r"RAM: [\d.]+ KiB over"):
        get_backend("vela").compile(lenet["int8"], load_target(str(toml)), tmp_path / "out", {})


def test_a_vela_failure_is_a_backend_error_in_velas_words(lenet, tmp_path):
    toml = tmp_path / "odd_npu.toml"
    toml.write_text('kind = "npu"\nbackends = ["vela"]\n[npu]\naccelerator = "ethos-u55-128"\n'
                    'system_config = "No_Such_System"\nmemory_mode = "Shared_Sram"\n')
    with pytest.raises(BackendError, match=r"Vela failed for ethos-u55-128 on lenet_int8.tflite \(exit 1\): Error: "
                                           r"Incorrect argument .*System_Config.No_Such_System not found"):
        get_backend("vela").compile(lenet["int8"], load_target(str(toml)), tmp_path / "out", {})


def test_nothing_runs_here_and_loading_says_why(lenet, tmp_path):
    vela, target = get_backend("vela"), load_target("ethos_u55_128")
    ok, why = vela.runs_here(target)
    assert not ok and "no NPU" in why
    compiled = vela.compile(lenet["int8"], target, tmp_path, {})
    with pytest.raises(BackendError, match="runs only on an Ethos-U NPU"):
        vela.load(compiled)


def test_the_pipeline_writes_a_bundle_with_vela_estimates(lenet, tmp_path):
    out = tmp_path / "b.edgedl"
    r = compile_model(str(lenet["keras"]), "ethos_u55_128", str(out),
                      CompileOptions(quantize="int8", io_type="int8", backend="vela", num_samples=20))
    m = r.manifest
    assert m["backend"] == "vela" and m["estimates"]["cycles"] > 0 and m["estimates"]["sram_used_bytes"] > 0
    assert m["estimates"]["cpu_fallback"] == []
    assert m["fidelity"]["checked"] is False and "no NPU" in m["fidelity"]["reason"]
    assert m["toolchain"]["ethos-u-vela"] and m["options"]["backend_specific"]["accelerator"] == "ethos-u55-128"
    assert read_tflite(out / "model_vela.tflite").op_counts == {"ethos-u": 1}


def test_velas_per_layer_estimate_is_kept_and_profiled_per_keras_layer_never_as_a_measurement(lenet, tmp_path):
    from edgedl.bench.harness import bench
    from edgedl.bench.options import BenchOptions
    from edgedl.bench.profile import MIN_COVERAGE, from_vela
    from edgedl.errors import OptionError

    out = tmp_path / "u55.edgedl"
    m = compile_model(str(lenet["int8"]), "ethos_u55_128", str(out), CompileOptions(backend="vela")).manifest
    assert "vela_per_layer.csv" in {f["path"] for f in m["files"]}  # hashed: verified with the bundle
    summary = m["estimates"]["per_layer"]
    assert summary["file"] == "vela_per_layer.csv" and summary["operators"] >= 9
    assert summary["cycles"] == m["estimates"]["cycles"] and "fc1" in summary["slowest_layer"]

    profile = from_vela(out)
    assert profile["estimated"] is True and profile["unit"] == "cycles" and "measured_total" not in profile
    assert "an estimate, not a measurement" in profile["source"] and "Ethos_U55_128" in profile["source"]
    rows = profile["rows"]
    assert len(rows) == summary["operators"] and all(r["target"] == "NPU" and r["calls"] == 1 for r in rows)
    assert [r["cycles"] for r in rows] == sorted((r["cycles"] for r in rows), reverse=True)
    assert profile["total"] == sum(r["cycles"] for r in rows) == profile["estimated_total"] == m["estimates"]["cycles"]
    assert MIN_COVERAGE["vela"] <= profile["coverage"] <= 1.05 and profile["within_tolerance"] is True
    assert {r["layer"] for r in rows if r["original_op"] == "Conv2D"} == {"conv1", "conv2"}
    assert {r["layer"] for r in rows if r["original_op"] == "FullyConnected"} == {"fc1", "fc2", "probs"}
    assert all(r["layer"] for r in rows)  # a Softmax Vela splits into steps keeps the layer of its input
    assert sum(r["macs"] for r in rows) >= m["estimates"]["macs"] * 0.9

    with pytest.raises(OptionError, match=r"nothing can be measured here\. Vela estimates [\d,]+ cycles, most in "
                                          r"fc1 [\d.]+%.*an estimate, not a measurement"):
        bench(str(out), BenchOptions(profile=True))
