"""Cross-compiled TVM bundles checked under user-mode emulation (edgedl.emulate): a LeNet compiled for
the Raspberry Pi 4 (aarch64) runs under qemu-aarch64 through TVM's own aarch64 runtime on real digits,
its manifest's fidelity is measured and marked emulated (no latency), and its outputs match LiteRT on
this host. Skips, saying why, where qemu-user, the aarch64 C++ cross compiler or TVM's aarch64 runtime
(fetched from PyPI once) is missing."""

import json
import shutil

import numpy as np
import pytest

from edgedl.compile import CompileOptions, compile_model
from edgedl.errors import BackendError
from edgedl.targets import load_target

from litert_run import litert, run_litert

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

NUM_SAMPLES = 60


@pytest.fixture(scope="module")
def emulator():
    pytest.importorskip("tvm")
    from edgedl import emulate

    found, why = emulate.emulator_for(load_target("rpi4"), prepare=True)
    if found is None:
        pytest.skip(f"aarch64 TVM builds cannot be emulated here: {why}")
    return found


@pytest.fixture(scope="module")
def digits():
    from edgedl.data import load_dataset

    return load_dataset("digits").x_test[:NUM_SAMPLES].astype(np.float32)


def _specs(manifest, key):
    from edgedl.runtime.engines import TensorSpec

    return [TensorSpec.from_dict(d) for d in manifest[key]]


def _run_emulated(bundle, arrays):
    from edgedl import emulate

    return emulate.run_tvm(bundle.path / "model.so", _specs(bundle.manifest, "inputs"),
                           _specs(bundle.manifest, "outputs"), arrays, "aarch64")


def _assert_emulated(manifest, emulator):
    f = manifest["fidelity"]
    assert f["emulated"] is True and f["emulator"].startswith(emulator)
    assert [w["file"].split("-")[0] for w in f["emulated_runtime"]["wheels"]] == ["apache_tvm", "apache_tvm_ffi"]
    assert f["samples"] == NUM_SAMPLES and "checked" not in f
    assert "p50" not in json.dumps(manifest)  # time under emulation is not latency
    assert f"emulated by {f['emulator']} (no latency)" in manifest.fidelity_line()  # what compile prints


def test_auto_for_rpi4_ships_the_build_that_was_checked_under_emulation(trained_lenet, emulator, tmp_path):
    bundle = compile_model(str(trained_lenet["keras"]), "rpi4", str(tmp_path / "auto.edgedl"),
                           CompileOptions(num_samples=NUM_SAMPLES))
    selection = bundle.manifest["selection"]
    assert bundle.manifest["backend"] == "tvm" and "under emulation" in selection["reason"]
    unchecked = [c for c in selection["candidates"] if c["backend"] != "tvm" and c["ok"]]
    assert unchecked and all("not_checked" in c for c in unchecked)  # LiteRT's aarch64 build is not run here
    assert "--tune-device" in selection["note"]  # a cross target is tuned on the device


def test_float_lenet_for_rpi4_runs_under_emulation_and_matches_litert(trained_lenet, emulator, digits, tmp_path):
    from edgedl.convert import to_tflite

    bundle = compile_model(str(trained_lenet["keras"]), "rpi4", str(tmp_path / "f.edgedl"),
                           CompileOptions(backend="tvm", quantize="none", num_samples=NUM_SAMPLES))
    _assert_emulated(bundle.manifest, emulator)
    f = bundle.manifest["fidelity"]
    assert f["top1_agreement"] == 1.0 and f["snr_db"] > 80 and f["accuracy_drop"] == 0.0

    (outputs,) = _run_emulated(bundle, [digits])
    expected = run_litert(litert(to_tflite(trained_lenet["model"], "none"), "default"), digits)
    assert outputs.shape == expected.shape == (NUM_SAMPLES, 10)
    np.testing.assert_allclose(outputs, expected, atol=1e-5)


@pytest.fixture(scope="module")
def int8_bundle(trained_lenet, emulator, tmp_path_factory):
    """The full-integer LeNet (int8 inputs and outputs) compiled for rpi4."""
    return compile_model(str(trained_lenet["int8"]), "rpi4", str(tmp_path_factory.mktemp("cross") / "q.edgedl"),
                         CompileOptions(backend="tvm", num_samples=NUM_SAMPLES))


def test_int8_lenet_for_rpi4_runs_under_emulation_bit_exact_with_litert(trained_lenet, int8_bundle, emulator, digits):
    bundle = int8_bundle
    _assert_emulated(bundle.manifest, emulator)
    f = bundle.manifest["fidelity"]
    assert "LiteRT" in f["reference"] and f["top1_agreement"] == 1.0

    from edgedl.runtime.quant import quantize

    (spec_in,), (spec_out,) = _specs(bundle.manifest, "inputs"), _specs(bundle.manifest, "outputs")
    assert spec_in.dtype == spec_out.dtype == "int8"
    x = quantize(digits, spec_in)
    (outputs,) = _run_emulated(bundle, [x])
    expected = run_litert(litert(trained_lenet["int8"].read_bytes(), "default"), x)
    assert outputs.dtype == np.int8 and np.array_equal(outputs, expected)


def test_a_broken_library_fails_under_emulation_in_one_line(int8_bundle, tmp_path):
    bundle = int8_bundle
    broken = tmp_path / "broken.so"
    data = (bundle.path / "model.so").read_bytes()
    broken.write_bytes(data[:len(data) // 3])
    from edgedl import emulate

    inputs = _specs(bundle.manifest, "inputs")
    with pytest.raises(BackendError, match=r"broken.so: its aarch64 build failed under qemu-aarch64") as e:
        emulate.run_tvm(broken, inputs, _specs(bundle.manifest, "outputs"),
                        [np.zeros((2, *inputs[0].shape[1:]), np.int8)], "aarch64")
    assert "\n" not in str(e.value) and len(str(e.value)) < 500


def test_armv7_builds_say_why_they_are_not_emulated():
    from edgedl import emulate

    found, why = emulate.emulator_for(load_target("cortex_a7"))
    assert found is None and "armv7" in why and "PyPI" in why


def test_a_missing_emulator_is_named_with_how_to_install_it(monkeypatch):
    from edgedl import emulate

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name.startswith("qemu-") else real(name))
    found, why = emulate.emulator_for(load_target("rpi4"))
    assert found is None and why.startswith("qemu-aarch64-static is not installed") and "qemu-user-static" in why


def test_a_runtime_pip_cannot_fetch_leaves_the_build_unchecked_with_pips_reason(monkeypatch, tmp_path):
    import dataclasses

    pytest.importorskip("tvm")
    from edgedl import emulate

    if emulate.emulator_for(load_target("rpi4"))[0] is None:
        pytest.skip("no aarch64 emulation here")
    monkeypatch.setenv("EDGEDL_CACHE", str(tmp_path))
    monkeypatch.setitem(emulate.ARCHES, "aarch64",
                        dataclasses.replace(emulate.ARCHES["aarch64"], wheel_platform="manylinux_2_28_riscv64"))
    found, why = emulate.emulator_for(load_target("rpi4"), prepare=True)
    assert found is None
    assert why.startswith("could not fetch TVM's aarch64 runtime (apache-tvm==") and "pip download" in why
    assert not any((tmp_path / "tvm-runtime").iterdir())  # nothing half-fetched is left to be trusted later


def test_a_model_with_two_inputs_and_two_outputs_runs_under_emulation(emulator, tmp_path):
    import keras

    a, b = keras.Input((8,), name="a"), keras.Input((4,), name="b")
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], [keras.layers.Dense(3, activation="softmax", name="p")(hidden),
                                 keras.layers.Dense(2, name="r")(hidden)])
    model.save(tmp_path / "two.keras")
    bundle = compile_model(str(tmp_path / "two.keras"), "rpi4", str(tmp_path / "two.edgedl"),
                           CompileOptions(backend="tvm", num_samples=NUM_SAMPLES))
    _assert_emulated(bundle.manifest, emulator)
    outputs = bundle.manifest["fidelity"]["outputs"]
    assert [o["index"] for o in outputs] == [0, 1] and all(o["max_abs_error"] < 1e-5 for o in outputs)
