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
