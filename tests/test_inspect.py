"""`edgedl inspect` and the compile errors that name operators, packages and budgets."""

import json
import subprocess
import sys

import numpy as np
import pytest


def edgedl(*args):
    return subprocess.run([sys.executable, "-m", "edgedl.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import keras

    from edgedl.convert import to_tflite
    from edgedl.zoo import get_model

    d = tmp_path_factory.mktemp("inspect")
    lenet = get_model("lenet").build()
    lenet.save(d / "lenet.keras")
    rep = np.random.default_rng(0).random((16, 28, 28, 1), dtype=np.float32)
    (d / "lenet_int8.tflite").write_bytes(to_tflite(lenet, "int8", rep, io_type="int8"))
    gelu = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(16),
                             keras.layers.Activation("gelu"), keras.layers.Dense(10, activation="softmax")])
    gelu.save(d / "gelu.keras")
    (d / "gelu.tflite").write_bytes(to_tflite(gelu, "none"))
    return d


def test_inspect_counts_operators_params_and_macs(models):
    proc = edgedl("inspect", models / "lenet_int8.tflite", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["op_counts"] == {"CONV_2D": 2, "MAX_POOL_2D": 2, "RESHAPE": 1, "FULLY_CONNECTED": 3, "SOFTMAX": 1}
    # LeNet-5 here: 28*28*6*25 + 10*10*16*150 + 400*120 + 120*84 + 84*10
    assert info["macs"] == 117600 + 240000 + 48000 + 10080 + 840
    assert info["quantized"] is True and info["inputs"][0]["dtype"] == "int8"


def test_inspect_a_keras_model_shows_backend_support_for_a_target(models):
    proc = edgedl("inspect", models / "gelu.keras", "--target", "cortex_m7", "--json")
    info = json.loads(proc.stdout)
    assert info["kind"] == "keras" and info["keras"]["num_params"] == 784 * 16 + 16 + 16 * 10 + 10
    assert info["support"]["tflm"]["ok"] is False and "GELU" in info["support"]["tflm"]["unsupported"]


def table_rows(stdout: str) -> tuple[list[str], dict]:
    """The operator table's header cells and {operator: [the other cells]} from inspect's output."""
    import re

    header, rows = [], {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]
        if not cells:
            continue
        if cells[0] == "operator":
            header = cells
        elif header and len(cells) == len(header):
            rows[cells[0]] = cells[1:]
    return header, rows


def test_the_table_gives_each_operators_count_macs_and_support_by_every_backend_of_the_target(models):
    proc = edgedl("inspect", models / "lenet_int8.tflite", "--target", "ethos_u55_128")
    assert proc.returncode == 0, proc.stderr
    header, rows = table_rows(proc.stdout)
    assert header == ["operator", "count", "MACs", "vela", "tflm"]
    assert rows == {"CONV_2D": ["2", "357,600", "yes", "yes"], "FULLY_CONNECTED": ["3", "58,920", "yes", "yes"],
                    "MAX_POOL_2D": ["2", "0", "yes", "yes"], "RESHAPE": ["1", "0", "yes", "yes"],
                    "SOFTMAX": ["1", "0", "yes", "yes"]}


def test_the_table_marks_what_each_backend_cannot_take_and_says_why(models):
    # A float model on an Ethos-U55: Vela takes none of it (float tensors), TFLite Micro all but GELU.
    proc = edgedl("inspect", models / "gelu.tflite", "--target", "ethos_u55_128")
    assert proc.returncode == 0, proc.stderr
    header, rows = table_rows(proc.stdout)
    assert header[-2:] == ["vela", "tflm"]
    assert {op: cells[-2:] for op, cells in rows.items()} == {
        "FULLY_CONNECTED": ["no", "yes"], "RESHAPE": ["no", "yes"], "GELU": ["no", "no"], "SOFTMAX": ["no", "yes"]}
    reasons = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith(("vela:", "tflm:"))]
    assert sum(r.startswith("vela:") and "float tensors" in r for r in reasons) == 4
    assert [r for r in reasons if r.startswith("tflm:")] == ["tflm: GELU: TFLite Micro's op resolver has no kernel for it"]


def test_an_operator_the_backend_lacks_is_named_with_the_backends_that_take_it(models, tmp_path):
    proc = edgedl("compile", models / "gelu.tflite", "--target", "cortex_m7", "--backend", "tflm",
                  "-o", tmp_path / "g.edgedl")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "GELU" in line and "backends that take all its operators:" in line and "litert" in line
    assert not (tmp_path / "g.edgedl").exists()


def test_a_missing_cross_compiler_names_the_package(models, tmp_path):
    board = tmp_path / "odd_board.toml"
    board.write_text('kind = "cpu"\nbackends = ["tvm"]\n[cpu]\narch = "aarch64"\n[tvm]\n'
                     'target = { kind = "llvm", mtriple = "aarch64-linux-gnu" }\n'
                     'cross_compiler = "no-such-gcc"\ncross_package = "gcc-no-such"\n')
    proc = edgedl("compile", models / "lenet_int8.tflite", "--target", board, "-o", tmp_path / "x.edgedl")
    assert proc.returncode != 0
    assert "needs the cross compiler no-such-gcc" in proc.stderr and "apt-get install gcc-no-such" in proc.stderr


def test_a_model_too_big_for_the_microcontroller_says_by_how_much(models, tmp_path):
    tiny = tmp_path / "tiny_mcu.toml"
    tiny.write_text('kind = "mcu"\nbackends = ["tflm"]\n[memory]\nram_kb = 8\nflash_kb = 64\n')
    proc = edgedl("compile", models / "lenet_int8.tflite", "--target", tiny, "-o", tmp_path / "t.edgedl")
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert "does not fit tiny_mcu" in line and "over" in line


# What inspect predicts against what compile does: each backend's unsupported_ops is what inspect's
# support column shows, and it must name a reason exactly when that backend's compile refuses the model.
BACKENDS = {"litert": "x86_64", "tvm": "x86_64", "onnxruntime": "x86_64", "tflm": "cortex_m7", "vela": "ethos_u55_128"}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """Tiny models in each quantization the converter makes, as .tflite files: weights of 1024
    elements or more (the converter leaves smaller ones in float in dynamic-range mode). An int8 or
    int16x8 LSTM cannot be made here: TensorFlow's calibrator crashes on Keras 3 recurrent layers, and
    to_tflite refuses them (a Keras 3 LSTM converts to a WHILE loop, not UNIDIRECTIONAL_SEQUENCE_LSTM)."""
    import keras

    from edgedl.convert import to_tflite

    d = tmp_path_factory.mktemp("quantized")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    dense = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(4)])
    conv = keras.Sequential([keras.Input((8, 8, 8)), keras.layers.Conv2D(16, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(4)])
    lstm = keras.Sequential([keras.Input((5, 16)), keras.layers.LSTM(32), keras.layers.Dense(4)])
    made = {}
    for name, model, mode, io in (("dense_float", dense, "none", "float"), ("dense_int8", dense, "int8", "int8"),
                                  ("dense_dynamic", dense, "dynamic", "float"), ("dense_float16", dense, "float16", "float"),
                                  ("conv_dynamic", conv, "dynamic", "float"), ("conv_int16x8", conv, "int16x8", "float"),
                                  ("lstm_dynamic", lstm, "dynamic", "float")):
        rep = rng.random((20, *model.input_shape[1:]), dtype=np.float32)
        made[name] = d / f"{name}.tflite"
        made[name].write_bytes(to_tflite(model, mode, rep, io_type=io))
    return made


@pytest.fixture(scope="module")
def compiled(quantized, tmp_path_factory):
    """{(model, backend): the bundle, or None where compile refused it} for every model and backend."""
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.errors import EdgeDLError

    d = tmp_path_factory.mktemp("bundles")
    out = {}
    for name, path in quantized.items():
        for backend, target in BACKENDS.items():
            bundle = d / f"{name}_{backend}.edgedl"
            try:
                compile_model(str(path), target, str(bundle), CompileOptions(backend=backend, num_samples=20))
            except EdgeDLError:
                bundle = None
            out[name, backend] = bundle
    return out


def test_the_quantization_kind_is_read_from_the_operators(quantized):
    from edgedl.graph import read_tflite

    kinds = {name: read_tflite(path).quantization_kind for name, path in quantized.items()}
    assert kinds == {"dense_float": "float", "dense_int8": "int8", "dense_dynamic": "dynamic",
                     "dense_float16": "float16", "conv_dynamic": "dynamic", "conv_int16x8": "int16x8",
                     "lstm_dynamic": "dynamic"}  # the LSTM's int8 weights are in its loop body
    assert [op.name for op in read_tflite(quantized["conv_dynamic"]).hybrid_ops()] == ["CONV_2D", "FULLY_CONNECTED"]
    assert read_tflite(quantized["dense_float16"]).is_quantized is False


def test_inputs_and_outputs_show_dtype_scale_and_zero_point(quantized):
    proc = edgedl("inspect", quantized["dense_int8"], "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["quantization"]["kind"] == "int8" and info["quantized"] is True
    [x], [y] = info["inputs"], info["outputs"]
    assert x["dtype"] == y["dtype"] == "int8" and x["scale"] > 0 and y["scale"] > 0
    assert -128 <= x["zero_point"] <= 127 and -128 <= y["zero_point"] <= 127
    proc = edgedl("inspect", quantized["dense_int8"])
    assert f"input: {x['name']} [1, 32] int8, scale {x['scale']:.6g}, zero point {x['zero_point']}" in proc.stdout
    assert "quantization: int8 (full integer" in proc.stdout


def test_predicted_support_is_what_compile_does(quantized, compiled, tmp_path):
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.errors import EdgeDLError
    from edgedl.inspect import inspect_path

    predicted, actual = {}, {}
    for name, path in quantized.items():
        for backend, target in BACKENDS.items():
            predicted[name, backend] = inspect_path(str(path), target)["support"][backend]["ok"]
            actual[name, backend] = compiled[name, backend] is not None
    # Vela's output holds its own custom operator: no CPU backend takes it, as inspect says.
    npu_model = compiled["dense_int8", "vela"] / "model_vela.tflite"
    for backend in ("litert", "tvm", "onnxruntime"):
        support = inspect_path(str(npu_model), "x86_64")["support"][backend]
        predicted["vela_output", backend] = support["ok"]
        assert "ethos-u" in support["unsupported"], backend
        with pytest.raises(EdgeDLError):
            compile_model(str(npu_model), "x86_64", str(tmp_path / f"{backend}.edgedl"), CompileOptions(backend=backend))
        actual["vela_output", backend] = False
    assert predicted == actual
    # and the cases the issue named are among them, refused both ways:
    refused = {k for k, ok in actual.items() if not ok}
    assert {("dense_dynamic", "tvm"), ("dense_dynamic", "tflm"), ("lstm_dynamic", "tvm"), ("dense_float16", "tflm"),
            ("conv_int16x8", "onnxruntime"), ("dense_float", "vela")} <= refused
    assert {("dense_int8", b) for b in BACKENDS} | {("conv_int16x8", "vela"), ("lstm_dynamic", "onnxruntime")} <= \
        {k for k, ok in actual.items() if ok}


def test_a_bundle_of_every_backend_shows_its_io_estimates_and_fidelity(compiled):
    for backend in BACKENDS:
        proc = edgedl("inspect", compiled["dense_int8", backend], "--json")
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        b = info["bundle"]
        assert b["backend"] == backend and isinstance(b["estimates"], dict) and b["fidelity_line"], backend
        [x], [y] = info["inputs"], info["outputs"]
        assert x["dtype"] == "int8" and x["shape"] == [1, 32] and x["scale"] > 0 and "zero_point" in x, backend
        assert y["dtype"] == "int8" and y["shape"] == [1, 4] and y["scale"] > 0 and "zero_point" in y, backend
        text = edgedl("inspect", compiled["dense_int8", backend]).stdout
        assert f"input: {x['name']} [1, 32] int8, scale {x['scale']:.6g}, zero point {x['zero_point']}" in text
        assert "fidelity: " in text and "estimates:" in text, backend
        if backend == "vela":
            assert "fidelity: not run here" in text
        else:
            assert b["fidelity"]["top1_agreement"] == 1.0 and "top-1 agreement 100.0%" in text, backend


def test_a_tflite_micro_bundle_shows_its_arena(compiled):
    info = json.loads(edgedl("inspect", compiled["dense_int8", "tflm"], "--json").stdout)
    arena = info["bundle"]["arena_bytes"]
    assert arena > 0 and arena == info["bundle"]["estimates"]["arena_bytes"]
    assert f"arena: {arena:,} B" in edgedl("inspect", compiled["dense_int8", "tflm"]).stdout


def test_a_vela_bundle_counts_its_npu_operators_macs_and_names_it_as_velas_own(quantized, compiled):
    source = json.loads(edgedl("inspect", quantized["dense_int8"], "--json").stdout)
    proc = edgedl("inspect", compiled["dense_int8", "vela"], "--json")
    info = json.loads(proc.stdout)
    assert info["operators"]["ethos-u"]["macs"] == source["macs"] == 32 * 64 + 64 * 4
    assert info["macs"] == source["macs"]
    vela = info["support"]["vela"]
    assert vela["ok"] is True and "ethos-u" not in vela["unsupported"] and "ethos-u" not in vela.get("cpu_fallback", {})
    header, rows = table_rows(edgedl("inspect", compiled["dense_int8", "vela"]).stdout)
    assert rows["ethos-u"][:3] == ["1", f"{source['macs']:,}", "yes"]
    assert "not an Ethos-U" not in proc.stdout


def test_vela_names_the_operators_it_leaves_to_the_cpu_without_refusing_the_model(quantized, compiled):
    # Float input and output around an int16x8 model: Vela compiles it, with the conversions on the CPU.
    info = json.loads(edgedl("inspect", quantized["conv_int16x8"], "--target", "ethos_u55_128", "--json").stdout)
    vela = info["support"]["vela"]
    assert vela["ok"] is True and vela["unsupported"] == {} and "DEQUANTIZE" in vela["cpu_fallback"]
    assert compiled["conv_int16x8", "vela"] is not None
    header, rows = table_rows(edgedl("inspect", quantized["conv_int16x8"], "--target", "ethos_u55_128").stdout)
    assert rows["DEQUANTIZE"][header.index("vela") - 1] == "cpu"


def test_a_bundle_for_a_target_file_is_inspected_against_the_target_it_records(quantized, tmp_path):
    from edgedl.compile import CompileOptions, compile_model

    board = tmp_path / "my_board.toml"
    board.write_text('kind = "mcu"\nbackends = ["tflm"]\n[memory]\nram_kb = 256\nflash_kb = 1024\n')
    compile_model(str(quantized["dense_int8"]), str(board), str(tmp_path / "b.edgedl"), CompileOptions(num_samples=20))
    board.unlink()  # the bundle carries its target: the file is not needed to read it
    proc = edgedl("inspect", tmp_path / "b.edgedl", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["target"] == "my_board" and info["support"]["tflm"]["ok"] is True and info["bundle"]["arena_bytes"] > 0
