"""Untrusted model files are parsed and first run in a child process (edgedl._isolate): a native crash
(SIGSEGV, SIGABRT, SIGFPE) or a hang on a malformed ``.tflite`` is one ``error:`` line naming the file,
never a dead edgedl, a traceback or a temporary folder left behind.

The malformed files are real: the shared trained LeNet's int8 ``.tflite`` with one field of its
flatbuffer changed, each change one that crashed, hung or gave a traceback before.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edgedl import _isolate
from edgedl.errors import BackendError, InputFileError

pytest.importorskip("tflite_micro")


# -- the isolation itself ------------------------------------------------------------------------

def _die_of(number):
    os.kill(os.getpid(), number)
    time.sleep(10)


@pytest.mark.parametrize("number", [signal.SIGSEGV, signal.SIGABRT, signal.SIGFPE, signal.SIGBUS, signal.SIGKILL])
def test_a_child_killed_by_a_signal_is_one_error_naming_the_file_and_the_signal(number):
    with pytest.raises(InputFileError, match=rf"^m\.tflite: LiteRT crashed with {signal.Signals(number).name} "
                                             r"\(.*\) while loading it; the file is malformed") as e:
        _isolate.run(_die_of, number, file="m.tflite", tool="LiteRT", action="loading it", fresh=False)
    assert e.value.path == "m.tflite" and "\n" not in str(e.value)


def test_a_fresh_interpreter_child_that_dies_is_one_error_too():
    """The path LiteRT and TFLite Micro take once TensorFlow is loaded here (a fork would crash them)."""
    with pytest.raises(InputFileError, match=r"^m\.tflite: LiteRT crashed with SIGABRT .* while loading it"):
        _isolate.run(os.abort, file="m.tflite", tool="LiteRT", action="loading it", fresh=True)
    assert _isolate.run(np.arange, 3, file="m", tool="numpy", action="counting", fresh=True).tolist() == [0, 1, 2]


def test_a_child_that_dies_on_a_compiled_model_is_a_backend_error():
    with pytest.raises(BackendError, match="^b/model.so: TVM crashed with SIGSEGV"):
        _isolate.run(_die_of, signal.SIGSEGV, file="b/model.so", tool="TVM", action="running it", error=BackendError)


def test_a_child_past_its_timeout_is_stopped_and_reaped(tmp_path):
    pid_file = tmp_path / "pid"

    def hang():
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)

    start = time.monotonic()
    with pytest.raises(InputFileError, match=r"m\.tflite: LiteRT did not finish loading it within 0\.5 s"):
        _isolate.run(hang, file="m.tflite", tool="LiteRT", action="loading it", timeout=0.5, fresh=False)
    assert time.monotonic() - start < 10
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running or a zombie
        os.kill(int(pid_file.read_text()), 0)


def test_the_childs_result_and_its_edgedl_error_come_back_as_they_were():
    assert np.array_equal(_isolate.run(np.arange, 5, file="m", tool="numpy", action="counting"), np.arange(5))

    def refuse():
        raise InputFileError("/data/m.tflite", "not a TFLite flatbuffer")

    with pytest.raises(InputFileError, match=r"^/data/m\.tflite: not a TFLite flatbuffer$") as e:
        _isolate.run(refuse, file="m", tool="LiteRT", action="loading it", fresh=False)
    assert e.value.path == "/data/m.tflite"


def test_a_bug_in_the_child_is_raised_here_with_the_childs_traceback():
    def bug():
        return [][1]

    with pytest.raises(IndexError) as e:
        _isolate.run(bug, file="m", tool="LiteRT", action="loading it", fresh=False)
    assert any("in bug" in note for note in e.value.__notes__)


def test_what_the_child_prints_natively_stays_out_of_the_terminal(capfd):
    def noisy():
        os.write(2, b"malloc(): invalid size (unsorted)\n")
        os.abort()

    with pytest.raises(InputFileError, match=r"SIGABRT .*\(malloc\(\): invalid size \(unsorted\)\)$"):
        _isolate.run(noisy, file="m.tflite", tool="LiteRT", action="running it", fresh=False)
    assert "malloc" not in capfd.readouterr().err


# -- malformed models through the CLI --------------------------------------------------------------

def mutated(source, dest, change):
    """``source`` (a .tflite) with ``change(model)`` applied to its flatbuffer object tree, as ``dest``."""
    import flatbuffers
    from tflite_micro import runtime

    fb = runtime.schema_fb
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(source.read_bytes(), 0))
    change(model)
    builder = flatbuffers.Builder(len(source.read_bytes()) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dest.write_bytes(bytes(builder.Output()))
    return dest


def edgedl(tmp_path, *args):
    """The CLI with TMPDIR in the test's folder, so that what it leaves there can be seen."""
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "edgedl.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=os.environ | {"TMPDIR": str(temp)})


def one_error_line(proc, tmp_path, path) -> str:
    """The one ``error:`` line of a failed run, which names ``path``; no traceback, nothing left in TMPDIR."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr and "Fatal Python error" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and path.name in errors[0], proc.stderr
    assert not [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("edgedl-")]
    return errors[0]


def first_op(model, name):
    """The index of the first operator code called ``name`` (a BuiltinOperator name)."""
    from tflite_micro import runtime

    code = getattr(runtime.schema_fb.BuiltinOperator, name)
    return next(i for i, c in enumerate(model.operatorCodes) if max(c.builtinCode, c.deprecatedBuiltinCode) == code)


def recode_as_custom(model):
    """RESHAPE's operator code turned into TFLite's detection post-processing custom op (LiteRT
    reads RESHAPE's builtin options as the custom op's flexbuffer: SIGSEGV)."""
    code = model.operatorCodes[first_op(model, "RESHAPE")]
    code.builtinCode = code.deprecatedBuiltinCode = 32  # CUSTOM
    code.customCode = b"TFLite_Detection_PostProcess"


@pytest.fixture(scope="module")
def lenet(trained_lenet):
    return trained_lenet["int8"]


def test_a_recoded_custom_op_that_crashes_litert_is_one_error_in_inspect(lenet, tmp_path):
    bad = mutated(lenet, tmp_path / "custom.tflite", recode_as_custom)
    line = one_error_line(edgedl(tmp_path, "inspect", bad), tmp_path, bad)
    assert "LiteRT crashed with SIGSEGV" in line and "malformed" in line


def test_a_recoded_custom_op_that_crashes_litert_is_one_error_in_compile(lenet, tmp_path):
    bad = mutated(lenet, tmp_path / "custom.tflite", recode_as_custom)
    proc = edgedl(tmp_path, "compile", bad, "--target", "x86_64", "--backend", "litert", "-o", tmp_path / "c.edgedl")
    assert "LiteRT crashed with SIGSEGV" in one_error_line(proc, tmp_path, bad)
    assert not (tmp_path / "c.edgedl").exists()


def test_a_model_without_operators_is_one_error_in_compile(lenet, tmp_path):
    def drop_operators(model):
        model.subgraphs[0].operators = []

    bad = mutated(lenet, tmp_path / "no_ops.tflite", drop_operators)
    proc = edgedl(tmp_path, "compile", bad, "--target", "x86_64", "--backend", "litert", "-o", tmp_path / "n.edgedl")
    assert "Tensor data is null" in one_error_line(proc, tmp_path, bad)


def test_a_weight_tensor_without_its_buffer_is_one_error_in_compile(lenet, tmp_path):
    def lose_conv_weights(model):
        subgraph = model.subgraphs[0]
        conv = next(op for op in subgraph.operators if op.opcodeIndex == first_op(model, "CONV_2D"))
        subgraph.tensors[conv.inputs[1]].buffer = 0  # buffer 0 is the empty one

    bad = mutated(lenet, tmp_path / "no_buffer.tflite", lose_conv_weights)
    proc = edgedl(tmp_path, "compile", bad, "--target", "cortex_m7", "-o", tmp_path / "b.edgedl")
    assert "lacks data" in one_error_line(proc, tmp_path, bad)


def test_an_operator_recoded_to_one_with_more_inputs_counts_no_macs_for_it(lenet, tmp_path):
    def fully_connected_as_depthwise(model):
        code = model.operatorCodes[first_op(model, "FULLY_CONNECTED")]
        code.builtinCode = code.deprecatedBuiltinCode = 4  # DEPTHWISE_CONV_2D: its weights are 4-D, these 2-D

    bad = mutated(lenet, tmp_path / "recoded.tflite", fully_connected_as_depthwise)
    proc = edgedl(tmp_path, "inspect", bad, "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert '"DEPTHWISE_CONV_2D"' in proc.stdout and '"macs": 357600' in proc.stdout  # the two convolutions only


@pytest.mark.parametrize("name", ["[bold]x[/", "[/]", "a\\[b]", "[link=file:///etc/passwd]x[/link]"])
def test_a_tensor_name_with_markup_is_printed_as_it_is(lenet, tmp_path, name):
    def rename_input(model):
        model.subgraphs[0].tensors[model.subgraphs[0].inputs[0]].name = name.encode()

    bad = mutated(lenet, tmp_path / "markup.tflite", rename_input)
    proc = edgedl(tmp_path, "inspect", bad)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"input: {name} [1, 28, 28, 1] int8" in proc.stdout


def test_a_100000_character_tensor_name_is_cut_for_the_terminal(lenet, tmp_path):
    def rename_input(model):
        model.subgraphs[0].tensors[model.subgraphs[0].inputs[0]].name = b"a" * 100_000

    bad = mutated(lenet, tmp_path / "long.tflite", rename_input)
    start = time.monotonic()
    proc = edgedl(tmp_path, "inspect", bad)
    assert time.monotonic() - start < 60 and proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("input:"))
    assert "(100,000 chars)" in line and len(line) < 200


@pytest.mark.slow  # about 10 s: the arena search runs before TFLM's crash in the found arena
def test_an_empty_shape_that_crashes_tflite_micro_is_one_error_in_compile(lenet, tmp_path):
    def empty_pool_output(model):
        subgraph = model.subgraphs[0]
        pool = next(op for op in subgraph.operators if op.opcodeIndex == first_op(model, "MAX_POOL_2D"))
        subgraph.tensors[pool.outputs[0]].shape = []

    bad = mutated(lenet, tmp_path / "empty_shape.tflite", empty_pool_output)
    proc = edgedl(tmp_path, "compile", bad, "--target", "cortex_m7", "-o", tmp_path / "e.edgedl")
    assert "TFLite Micro crashed with SIG" in one_error_line(proc, tmp_path, bad)
    assert not (tmp_path / "e.edgedl").exists()


def test_an_output_without_a_batch_axis_is_one_error_in_compile(lenet, tmp_path):
    def scalar_output(model):
        model.subgraphs[0].tensors[model.subgraphs[0].outputs[0]].shape = []

    bad = mutated(lenet, tmp_path / "scalar.tflite", scalar_output)
    proc = edgedl(tmp_path, "compile", bad, "--target", "cortex_m7", "-o", tmp_path / "s.edgedl")
    assert "has the shape []; edgedl needs a batch axis" in one_error_line(proc, tmp_path, bad)


def test_a_mutated_output_type_is_one_error_in_compile(lenet, tmp_path):
    def float_output(model):
        model.subgraphs[0].tensors[model.subgraphs[0].outputs[0]].type = 0  # FLOAT32 behind an int8 softmax

    bad = mutated(lenet, tmp_path / "typed.tflite", float_output)
    proc = edgedl(tmp_path, "compile", bad, "--target", "x86_64", "--backend", "litert", "-o", tmp_path / "t.edgedl")
    assert "LiteRT cannot run it" in one_error_line(proc, tmp_path, bad)


@pytest.mark.parametrize("field", ["inputs", "outputs"])
def test_a_model_without_inputs_or_outputs_is_one_error_in_compile(lenet, tmp_path, field):
    def drop(model):
        setattr(model.subgraphs[0], field, [])

    bad = mutated(lenet, tmp_path / f"no_{field}.tflite", drop)
    proc = edgedl(tmp_path, "compile", bad, "--target", "x86_64", "--backend", "litert", "-o", tmp_path / "n.edgedl")
    assert "edgedl needs at least one of each" in one_error_line(proc, tmp_path, bad)


@pytest.fixture(scope="module")
def lenet_float(trained_lenet, tmp_path_factory):
    from edgedl.convert import to_tflite

    path = tmp_path_factory.mktemp("float") / "lenet_float.tflite"
    path.write_bytes(to_tflite(trained_lenet["model"], "none"))
    return path


def test_a_mutated_tensor_type_that_crashes_litert_is_one_error_in_compile(lenet_float, tmp_path):
    def string_output(model):
        model.subgraphs[0].tensors[model.subgraphs[0].outputs[0]].type = 5  # STRING

    bad = mutated(lenet_float, tmp_path / "string_output.tflite", string_output)
    proc = edgedl(tmp_path, "compile", bad, "--target", "x86_64", "--backend", "litert", "-o", tmp_path / "s.edgedl")
    line = one_error_line(proc, tmp_path, bad)
    assert "LiteRT crashed with SIGSEGV" in line and "computing the reference" in line
