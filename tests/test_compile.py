"""`edgedl compile`: targets x backends into one bundle, checked against the reference."""

import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from edgedl.bundle import open_bundle, read_manifest
from edgedl.compile import CompileOptions, compile_model
from edgedl.errors import BackendError, InputFileError, OptionError, TargetError


@pytest.fixture(scope="module")
def lenet(trained_lenet, tmp_path_factory):
    """The shared trained LeNet (.keras with its metrics JSON, int8 .tflite), and a folder of this module's own."""
    return dict(trained_lenet, dir=tmp_path_factory.mktemp("lenet"))


def opts(**kw):
    kw.setdefault("num_samples", 60)
    return CompileOptions(**kw)


def test_a_keras_model_compiled_for_litert_records_its_source_options_samples_and_preprocessing(lenet, tmp_path):
    from edgedl.data import load_dataset

    r = compile_model(str(lenet["keras"]), "x86_64", str(tmp_path / "a.edgedl"), opts(backend="litert", quantize="int8"))
    m = read_manifest(tmp_path / "a.edgedl")
    assert m == r.manifest
    assert m["format_version"] == 1 and m["backend"] == "litert" and m["target"]["name"] == "x86_64"
    assert len(m["source"]["sha256"]) == 64 and m["source"]["kind"] == "keras"
    assert m["options"]["quantize"] == "int8" and "ai-edge-litert" in m["toolchain"]
    assert m["inputs"][0]["shape"] == [1, 28, 28, 1]
    assert m["samples"]["dataset"] == "digits"  # from the metrics JSON beside the model
    assert m["fidelity"]["top1_agreement"] >= 0.98 and m["fidelity"]["samples"] == 60
    # How to feed the bundle on a device: the data set's own description, as training recorded it.
    pre = m["preprocessing"]
    assert pre == load_dataset("digits").preprocessing
    assert pre["scale"] == "x / 16" and pre["range"] == [0.0, 1.0] and pre["layout"] == "NHWC"
    assert pre["dtype"] == "float32" and pre["resize"]["to"] == [28, 28]
    assert [f["path"] for f in m["files"]] == ["model.tflite"]


def test_tvm_int8_is_bit_exact_with_litert_on_lenet(lenet, tmp_path):
    r = compile_model(str(lenet["int8"]), "x86_64", str(tmp_path / "t.edgedl"), opts(backend="tvm"))
    f = r.manifest["fidelity"]
    assert f["top1_agreement"] == 1.0 and f["max_abs_error"] == 0.0  # reference: LiteRT on the same .tflite


def test_the_same_inputs_give_the_same_bundle(lenet, tmp_path):
    for name in ("one", "two"):
        compile_model(str(lenet["int8"]), "x86_64", str(tmp_path / f"{name}.edgedl"), opts(backend="tvm"))
    a = (tmp_path / "one.edgedl")
    b = (tmp_path / "two.edgedl")
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    assert (a / "model.so").read_bytes() == (b / "model.so").read_bytes()


def test_auto_measures_the_backends_and_says_why(lenet, tmp_path):
    r = compile_model(str(lenet["int8"]), "x86_64", str(tmp_path / "auto.edgedl"), opts())
    sel = r.manifest["selection"]
    measured = [c for c in sel["candidates"] if "p50_us" in c]
    assert {c["backend"] for c in measured} >= {"litert", "tvm"}
    best = min(measured, key=lambda c: c["p50_us"])
    assert r.manifest["backend"] == best["backend"] and "fastest" in sel["reason"]
    tvm = next(c for c in sel["candidates"] if c["backend"] == "tvm")
    assert "TVM untuned (edgedl default CPU schedules)" in tvm["note"] and "--tune-minutes" in tvm["note"]


def test_auto_stops_timing_a_candidate_already_several_times_slower(lenet, tmp_path, monkeypatch):
    """With a fastest-so-far far below any real latency, every later candidate is cut after its first runs."""
    import edgedl.compile as compile_module

    monkeypatch.setattr(compile_module, "SLOW_FACTOR", 1e-6)
    r = compile_model(str(lenet["int8"]), "x86_64", str(tmp_path / "cut.edgedl"), opts())
    later = [c for c in r.manifest["selection"]["candidates"][1:] if "p50_us" in c]
    assert later and all(f"timed on {compile_module.FIRST_RUNS} runs only" in c["note"] for c in later)
    first = r.manifest["selection"]["candidates"][0]
    assert "runs only" not in (first.get("note") or "")  # the first has nothing to lose to


def test_archive_is_one_file_and_loads_with_hash_checks(lenet, tmp_path):
    out = tmp_path / "a.edgedl"
    compile_model(str(lenet["int8"]), "x86_64", str(out), opts(backend="litert", archive=True))
    assert out.is_file() and tarfile.is_tarfile(out)
    with open_bundle(out) as bundle:
        unpacked = bundle.directory
        assert bundle.file("model.tflite").is_file() and unpacked != out
    assert not unpacked.exists()  # closing the bundle removes what the archive was unpacked into


def test_a_tampered_bundle_is_refused_naming_the_file(lenet, tmp_path):
    out = tmp_path / "b.edgedl"
    compile_model(str(lenet["int8"]), "x86_64", str(out), opts(backend="litert"))
    with open(out / "model.tflite", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01")
    with pytest.raises(InputFileError, match="'model.tflite' does not match its sha256"):
        open_bundle(out)


def test_a_newer_bundle_format_is_refused(lenet, tmp_path):
    out = tmp_path / "c.edgedl"
    compile_model(str(lenet["int8"]), "x86_64", str(out), opts(backend="litert"))
    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputFileError, match="format version 99 is newer"):
        read_manifest(out)


@pytest.mark.parametrize("target, arch", [("rpi4", "AArch64"), ("cortex_a7", "ARM")])
def test_tvm_cross_compiles_for_arm_boards(lenet, tmp_path, target, arch):
    import shutil

    from edgedl.targets import load_target

    if shutil.which(load_target(target).tvm["cross_compiler"]) is None:
        pytest.skip("cross compiler not installed (scripts/system-deps.sh installs it)")
    r = compile_model(str(lenet["int8"]), target, str(tmp_path / "x.edgedl"), opts(backend="tvm"))
    so = (tmp_path / "x.edgedl" / "model.so").read_bytes()
    machine = int.from_bytes(so[18:20], "little")
    assert so[:4] == b"\x7fELF" and machine == {"AArch64": 183, "ARM": 40}[arch]
    fidelity = r.manifest["fidelity"]
    if fidelity.get("emulated"):  # run under qemu-user where it is installed (tests/test_tvm_cross.py)
        assert target == "rpi4" and fidelity["samples"] > 0
    else:
        assert fidelity["checked"] is False and "x86_64" in fidelity["reason"]


def test_cuda_code_is_generated_and_assembled_without_a_gpu(lenet, tmp_path):
    import shutil

    if not (shutil.which("nvcc") or __import__("os").path.exists("/usr/local/cuda/bin/nvcc")):
        pytest.skip("nvcc not installed")
    r = compile_model(str(lenet["int8"]), "cuda_sm80", str(tmp_path / "g.edgedl"), opts(backend="tvm"))
    assert "model.cu" in [f["path"] for f in r.manifest["files"]]
    assert "__global__" in (tmp_path / "g.edgedl" / "model.cu").read_text()
    check = r.manifest["estimates"]["device_code_check"]["ptxas"]
    assert check["ok"] is True and check["cubin_bytes"] > 0 and check["arch"] == "sm_80"


def test_tvm_writes_opencl_kernels_for_a_mobile_gpu_and_records_that_they_were_not_run(lenet, tmp_path):
    r = compile_model(str(lenet["int8"]), "mali_g78", str(tmp_path / "m.edgedl"), opts(backend="tvm"))
    assert "__kernel" in (tmp_path / "m.edgedl" / "model.cl").read_text()
    assert r.manifest["fidelity"]["checked"] is False


@pytest.mark.slow
def test_tvm_tuning_fills_a_database_that_the_next_compile_reuses(tmp_path):
    import keras

    from edgedl.convert import to_tflite

    # One dense layer: three tuning tasks, so a few trials cover it (MetaSchedule's start-up dominates).
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    src = tmp_path / "dense_int8.tflite"
    src.write_bytes(to_tflite(model, "int8", np.random.default_rng(0).random((32, 28, 28, 1), dtype=np.float32),
                              io_type="int8"))
    db = tmp_path / "db"
    first = compile_model(str(src), "x86_64", str(tmp_path / "t1.edgedl"),
                          opts(backend="tvm", tune=True, trials=6, tuning_db=str(db)))
    spec = first.manifest["options"]["backend_specific"]
    assert spec["tuned"] and spec["trials_run"] == 6 and spec["tasks"] > 0
    records = (db / "database_tuning_record.json").read_text().splitlines()
    assert len(records) >= 1  # measured schedules landed in the database
    assert first.manifest["fidelity"]["top1_agreement"] == 1.0
    second = compile_model(str(src), "x86_64", str(tmp_path / "t2.edgedl"),
                           opts(backend="tvm", tune=True, trials=6, tuning_db=str(db)))
    spec2 = second.manifest["options"]["backend_specific"]
    assert spec2["trials_run"] == 0 and spec2["tasks_from_db"] == spec2["tasks"]


def test_unknown_target_suggests_names(lenet, tmp_path):
    with pytest.raises(TargetError, match="Did you mean"):
        compile_model(str(lenet["int8"]), "x86-64", str(tmp_path / "z.edgedl"))


def test_a_backend_the_target_does_not_take_is_refused(lenet, tmp_path):
    with pytest.raises(OptionError, match="does not take backend 'litert'; it takes: vela, tflm"):
        compile_model(str(lenet["int8"]), "ethos_u55_128", str(tmp_path / "z.edgedl"), opts(backend="litert"))


def test_fidelity_bound_fails_the_compile_and_writes_nothing(tmp_path):
    # Ten nearly equal logits: int8 rounding flips the top-1 class on many samples.
    import keras

    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.layers[-1].set_weights([rng.normal(0, 1e-3, (784, 10)).astype("float32"), np.zeros(10, "float32")])
    src = tmp_path / "src"
    src.mkdir()
    model.save(src / "flat.keras")
    out = tmp_path / "f.edgedl"
    with pytest.raises(BackendError, match=r"fidelity check failed for litert on x86_64: top-1 agreement .* below 100.0%"):
        compile_model(str(src / "flat.keras"), "x86_64", str(out),
                      opts(backend="litert", quantize="int8", dataset="digits", max_disagreement=0.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written, not even a temp folder


def _fuzzed(data: bytes, rng):
    kind = rng.integers(3)
    if kind == 0:
        return data[: rng.integers(1, len(data))]
    b = bytearray(data)
    for i in rng.integers(0, len(b), size=int(rng.integers(1, 64))):
        b[i] = int(rng.integers(256))
    return bytes(b)


def test_corrupt_and_fuzzed_models_give_one_line_errors(lenet, tmp_path):
    data = lenet["int8"].read_bytes()
    rng = np.random.default_rng(7)
    for i in range(12):
        bad = tmp_path / f"fuzz{i}.tflite"
        bad.write_bytes(_fuzzed(data, rng) if i else b"")
        proc = subprocess.run([sys.executable, "-m", "edgedl.cli.main", "compile", str(bad), "-t", "x86_64",
                               "--backend", "litert", "-o", str(tmp_path / f"o{i}.edgedl")],
                              capture_output=True, text=True, timeout=300)
        assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
        assert proc.returncode in (0, 1, 2), (i, proc.returncode, proc.stderr[-500:])  # no crash by signal
        if proc.returncode:
            assert proc.stderr.strip().splitlines()[-1].startswith("error:")


def test_int8_of_a_recurrent_layer_it_cannot_convert_is_refused_not_crashed(tmp_path):
    import keras

    inputs = keras.Input((4, 8, 1))  # a ConvLSTM: neither fused nor unrolled (edgedl.recurrent)
    x = keras.layers.Flatten()(keras.layers.ConvLSTM1D(2, 3, name="gru")(inputs))
    keras.Model(inputs, keras.layers.Dense(4)(x), name="conv").save(tmp_path / "gru.keras")
    proc = subprocess.run([sys.executable, "-m", "edgedl.cli.main", "compile", str(tmp_path / "gru.keras"), "-t",
                           "x86_64", "--backend", "litert", "--quantize", "int8", "--calibration", "random", "-o",
                           str(tmp_path / "g.edgedl")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in (1, 2), proc.stderr[-500:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "g.edgedl").exists()
    assert "recurrent layer(s) gru (ConvLSTM1D is not an LSTM, GRU or SimpleRNN)" in proc.stderr, proc.stderr[-500:]


def test_a_stripped_model_compiles_with_tvm_bit_exact_with_litert(lenet, tmp_path):
    from edgedl.convert import strip_names

    stripped = tmp_path / "stripped.tflite"
    stripped.write_bytes(strip_names(lenet["int8"].read_bytes()))
    r = compile_model(str(stripped), "x86_64", str(tmp_path / "s.edgedl"), opts(backend="tvm"))
    f = r.manifest["fidelity"]
    assert f["top1_agreement"] == 1.0 and f["max_abs_error"] == 0.0
    assert r.manifest["inputs"][0]["name"] and r.manifest["inputs"][0]["shape"] == [1, 28, 28, 1]
