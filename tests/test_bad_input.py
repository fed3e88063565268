"""Bad input through the real command line: out-of-range numbers, malformed ONNX files, models with two
inputs and unreadable report files each end in one ``error:`` line that names what was wrong, a
non-zero exit and no traceback."""

import json
import subprocess
import sys

import numpy as np
import pytest

from edgedl.cli.main import main

from cli_run import run_cli, the_error  # tests/cli_run.py


# --- numbers out of range: refused as click parses them, before any model, data set or bundle is read ---

SEED_RANGE = "--seed must be a whole number from 0 to 4294967295"


@pytest.mark.parametrize("args, message", [
    (["train", "lenet", "--seed", "-1"], f"{SEED_RANGE}, got -1"),
    (["train", "lenet", "--seed", str(2**70)], f"{SEED_RANGE}, got {2**70}"),
    (["train", "lenet", "--seed", str(2**32)], f"{SEED_RANGE}, got {2**32}"),
    (["train", "lenet", "--seed", "one"], f"{SEED_RANGE}, got 'one'"),
    (["train", "lenet", "--batch-size", "-4"], "--batch-size must be a positive integer, got -4"),
    (["train", "lenet", "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["train", "lenet", "--epochs", "0"], "--epochs must be a positive integer, got 0"),
    (["train", "lenet", "--limit", "0"], "--limit must be a positive integer, got 0"),
    (["optimize", "lenet", "-q", "int8", "-o", "out", "--seed", "-1"], f"{SEED_RANGE}, got -1"),
    (["optimize", "lenet", "-q", "int8", "-o", "out", "--prune-block", "0"],
     "--prune-block must be a whole number from 1 to 64, got 0"),
    (["optimize", "lenet", "-q", "int8", "-o", "out", "--num-calibration", "0"],
     "--num-calibration must be a positive integer, got 0"),
    (["optimize", "lenet", "-q", "int8", "-o", "out", "--epochs", "-2"], "--epochs must be a positive integer, got -2"),
    (["optimize", "lenet", "-q", "int8", "-o", "out", "--limit", "0"], "--limit must be a positive integer, got 0"),
    (["optimize", "lenet", "--prune", "0.5", "-o", "out", "--distill", "--distill-alpha", "nan"],
     "--distill-alpha must be in [0, 1), the share of the loss on the labels (the rest is on the teacher; 0: the "
     "teacher alone), got nan"),
    (["optimize", "lenet", "--prune", "0.5", "-o", "out", "--lr-scale", "inf"],
     "--lr-scale must be a number in (0, 10], a multiple of the recipe's learning rate, got inf"),
    (["optimize", "lenet", "--prune", "0.5", "-o", "out", "--lr-scale", "0"],
     "--lr-scale must be a number in (0, 10], a multiple of the recipe's learning rate, got 0.0"),
    (["optimize", "lenet", "-o", "out", "--prune", "nan"], "--prune must be between 0 and 1 (exclusive), got nan"),
    (["bench", "b.edgedl", "--timeout", "nan"], "--timeout must be a finite number more than 0, got nan"),
    (["bench", "b.edgedl", "--timeout", "inf"], "--timeout must be a finite number more than 0, got inf"),
    (["bench", "b.edgedl", "--timeout", "0"], "--timeout must be a number more than 0, got 0"),
    (["bench", "b.edgedl", "--limit", "0"], "--limit must be a positive integer, got 0"),
    (["bench", "b.edgedl", "--runs", "0"], "--runs must be a positive integer, got 0"),
    (["bench", "b.edgedl", "--repeats", "-3"], "--repeats must be a positive integer, got -3"),
    (["bench", "b.edgedl", "--threads", "0"], "--threads must be a positive integer, got 0"),
    (["bench", "b.edgedl", "--warmup", "-1"], "--warmup must be a non-negative integer, got -1"),
    (["bench", "b.edgedl", "--retries", "-1"], "--retries must be a non-negative integer, got -1"),
    (["report", "run.json", "--threshold", "nan"], "--threshold must be a finite number more than 0, got nan"),
    (["report", "run.json", "--threshold", "-0.1"], "--threshold must be a number more than 0, got -0.1"),
    (["quickstart", "--runs", "0"], "--runs must be a positive integer, got 0"),
    (["quickstart", "--seed", "-5"], f"{SEED_RANGE}, got -5"),
])
def test_a_number_out_of_range_is_one_error_line_naming_the_option(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, it would land here
    line = the_error(*run_cli(capsys, *args)[::2])
    assert line == f"error: {message}"
    assert list(tmp_path.iterdir()) == []


def test_the_checks_run_before_any_heavy_import():
    """`train --seed -1` answers without importing TensorFlow (checked in a fresh interpreter)."""
    code = ("import sys\nfrom edgedl.cli.main import main\ntry:\n    main(['train', 'lenet', '--seed', '-1'])\n"
            "except SystemExit as e:\n    print(e.code, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stderr
    assert proc.stderr.strip() == f"error: {SEED_RANGE}, got -1"


def test_the_python_apis_refuse_the_same_numbers():
    from edgedl.bench.options import BenchOptions
    from edgedl.errors import OptionError
    from edgedl.train import TrainOptions, train

    for bad, message in (({"seed": -1}, SEED_RANGE), ({"seed": 2**70}, SEED_RANGE),
                         ({"batch_size": 0}, "--batch-size must be a positive integer, got 0"),
                         ({"limit": -3}, "--limit must be a positive integer, got -3")):
        with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
            train("lenet", TrainOptions(**bad))
    for bad, message in (({"timeout": float("nan")}, "--timeout must be a positive, finite number of seconds"),
                         ({"timeout": float("inf")}, "--timeout must be a positive, finite number of seconds"),
                         ({"limit": 0}, "--limit must be a positive integer"),
                         ({"runs": 2.5}, "--runs must be a positive integer")):
        with pytest.raises(OptionError, match=message):
            BenchOptions(**bad).validate()


# --- report files that are not what they claim ---

def bench_result(**changes) -> dict:
    """The least a benchmark result holds, as `edgedl bench -o` writes it."""
    from edgedl.report import SCHEMA

    result = {"schema": SCHEMA, "bundle": {"path": "lenet.edgedl", "backend": "litert", "target": "x86_64"},
              "timing": {"latency": {"p50_us": 10.0, "p90_us": 11.0, "p99_us": 12.0, "min_us": 9.0, "max_us": 13.0}}}
    for path, value in changes.items():
        node = result
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return result


def test_a_report_of_a_well_formed_result_works(capsys, tmp_path):
    run = tmp_path / "run.json"
    run.write_text(json.dumps(bench_result()))
    code, out, err = run_cli(capsys, "report", run)
    assert code == 0 and "lenet" in out, err


@pytest.mark.parametrize("text, message", [
    ('{"schema": "edgedl.bench/1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "nests JSON arrays or objects too deeply to read"),
    (json.dumps(bench_result()).replace('"p50_us": 10.0', '"p50_us": 1' + "0" * 5000),
     "is not JSON this reads (Exceeds the limit (4300 digits) for integer string conversion)"),
    (json.dumps(bench_result()).replace('"p50_us": 10.0', '"p50_us": 1' + "0" * 400),
     "timing.latency.p50_us is an integer too large for a float, not a finite number"),
    (json.dumps(bench_result(**{"timing.latency.p50_us": "fast"})), "timing.latency.p50_us is 'fast', not a number"),
    (json.dumps(bench_result(accuracy=[0.9])), "accuracy is a JSON array, not an object"),
    (json.dumps(bench_result(**{"memory.peak_rss_bytes": "lots"})), "memory.peak_rss_bytes is 'lots', not a number"),
    (json.dumps(bench_result(**{"timing.repeat_p50_us": [10.0, None]})),
     "timing.repeat_p50_us[1] is None, not a number"),
    (json.dumps(bench_result(**{"timing.throughput_per_s": 1e400})),  # json writes Infinity
     "timing.throughput_per_s is inf, not a finite number"),
])
def test_a_report_file_that_cannot_be_read_is_named_in_one_line(capsys, tmp_path, text, message):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    for args in (["report", bad], ["report", bad, "-o", tmp_path / "r.html"], ["report", bad, "--json"]):
        line = the_error(*run_cli(capsys, *args)[::2])
        assert line.startswith(f"error: {bad}: ") and message in line
    assert not (tmp_path / "r.html").exists()


# --- ONNX files: made with onnx's helper API, no converter involved ---

onnx = pytest.importorskip("onnx")


def dense_onnx(path, input_shape=("N", 6), outputs=True, second_input=False, reshape_to=None):
    """softmax(relu(x W + b)) over ``input_shape``; the variants break it the ways downloaded files are broken."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b")]
    nodes, x = [], "x"
    if reshape_to is not None:
        init.append(numpy_helper.from_array(np.array(reshape_to, np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["x", "shape"], ["flat"]))
        x = "flat"
    nodes += [helper.make_node("MatMul", [x, "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["h"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))]
    if second_input:
        inputs.append(helper.make_tensor_value_info("bias2", TensorProto.FLOAT, [1, 4]))
        nodes.append(helper.make_node("Add", ["h", "bias2"], ["h2"]))
    nodes += [helper.make_node("Relu", ["h2" if second_input else "h"], ["r"]),
              helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])] if outputs else []
    model = helper.make_model(helper.make_graph(nodes, "dense", inputs, outs, init),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("variant, message", [
    ({"outputs": False}, "the model declares no outputs"),
    ({"input_shape": (1, "features")}, "its input 'x' has the shape [1, 'features']; edgedl needs a batch axis and "
                                       "fixed, positive sizes on the others"),
    ({"input_shape": (1, 0)}, "ONNX Runtime cannot load it (Load model from"),
    ({"input_shape": (7, 6)}, "its input 'x' has a fixed batch of 7; edgedl runs one sample per inference"),
    ({"input_shape": (1, 7, 1), "reshape_to": (1, 6)},
     "ONNX Runtime cannot run it on inputs of the shape it declares [1, 7, 1]"),
    ({"input_shape": (1, 7)}, "ONNX Runtime cannot load it (Load model from"),
])
@pytest.mark.parametrize("backend", ["tvm", "onnxruntime", "auto"])
def test_a_malformed_onnx_file_is_one_error_line_naming_it(capsys, tmp_path, variant, message, backend):
    model = dense_onnx(tmp_path / "model.onnx", **variant)
    line = the_error(*run_cli(capsys, "compile", model, "-t", "x86_64", "-b", backend, "-o",
                              tmp_path / "out.edgedl", "--samples", 5)[::2])
    assert line.startswith(f"error: {model}: ") and message in line
    assert not (tmp_path / "out.edgedl").exists()


def test_the_backends_compile_a_two_input_onnx_file_and_the_engine_runs_it(tmp_path):
    """Through the Python API too: each backend takes the inputs by name, the engine a list in their order."""
    from edgedl.backends import get_backend
    from edgedl.targets import load_target

    model = dense_onnx(tmp_path / "two.onnx", input_shape=(1, 6), second_input=True)
    x, bias = np.random.default_rng(3).random((1, 6), np.float32), np.full((1, 4), 0.5, np.float32)
    outputs = []
    for name in ("tvm", "onnxruntime"):
        backend = get_backend(name)
        compiled = backend.compile(model, load_target("x86_64"), tmp_path / name, {})
        assert [s.name for s in compiled.inputs] == ["x", "bias2"]
        outputs.append(backend.load(compiled).invoke([x, bias]))
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


@pytest.mark.slow
def test_a_two_input_model_without_data_compiles_on_synthetic_inputs_with_every_backend(capsys, tmp_path):
    """A Keras model with two inputs of one shape, and its .tflite, under litert, tvm, onnxruntime and
    auto: checked on noise (said so), fed by input name."""
    keras = pytest.importorskip("keras")
    from edgedl.bundle import read_manifest
    from edgedl.convert import to_tflite

    a, b = keras.Input((6,), name="left"), keras.Input((6,), name="right")
    model = keras.Model([a, b], keras.layers.Dense(4, activation="softmax")(
        keras.layers.Concatenate()([a, keras.layers.Dense(6)(b)])))
    model.save(tmp_path / "two.keras")
    (tmp_path / "two.tflite").write_bytes(to_tflite(model))
    for source in ("two.keras", "two.tflite"):
        for backend in ("litert", "tvm", "onnxruntime", "auto"):
            out = tmp_path / f"{source}-{backend}.edgedl"
            code, _, err = run_cli(capsys, "compile", tmp_path / source, "-t", "x86_64", "-b", backend,
                                   "-o", out, "--samples", 5)
            assert code == 0, err
            manifest = read_manifest(out)
            assert len(manifest["inputs"]) == 2 and "synthetic" in manifest["samples"]
            assert manifest["fidelity"]["snr_db"] > 40
