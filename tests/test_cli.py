"""The command line: every command has help, lists read well, and user errors are one line."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgedl.cli.main import COMMANDS, cli


def edgedl(*args, env=None):
    """Run the real console entry point in a subprocess: exit code, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "edgedl.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


def test_models_lists_the_zoo_as_json():
    result = CliRunner().invoke(cli, ["models", "--json"])
    names = [m["name"] for m in json.loads(result.output)]
    assert "lenet" in names and "resnet8" in names


def test_targets_lists_and_shows_one():
    result = CliRunner().invoke(cli, ["targets", "--json"])
    assert {"rpi4", "ethos_u55_128"} <= {t["name"] for t in json.loads(result.output)}
    result = CliRunner().invoke(cli, ["targets", "rpi4"])
    assert "cortex-a72" in result.output


@pytest.mark.parametrize("args, message", [
    (["train", "lenett"], "unknown model 'lenett'"),
    (["targets", "rpi"], "unknown target 'rpi'"),
    (["train", "lenet", "--dataset", "imagenet"], "unknown data set"),
    (["train", "lenet", "--epochs", "0", "--dataset", "digits"], "--epochs must be a positive integer"),
    (["train", "/nonexistent/model.keras", "--dataset", "digits"], "no such file"),
])
def test_user_errors_are_one_line_and_exit_nonzero(args, message):
    code, out, err = edgedl(*args)
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message.lower() in lines[0].lower(), err


@pytest.mark.parametrize("name, content, message", [
    ("notes.keras", b"this is not a zip archive", "notes.keras: not a .keras model: the file is not a zip archive"),
    ("weights.h5", b"PK\x03\x04 a zip, not HDF5", "weights.h5: not an .h5 model: the file is not HDF5"),
])
def test_a_file_that_is_not_a_model_is_named(tmp_path, name, content, message):
    bogus = tmp_path / name
    bogus.write_bytes(content)
    code, out, err = edgedl("train", str(bogus), "--dataset", "digits")
    assert code != 0 and "Traceback" not in err
    assert message in err


@pytest.mark.parametrize("command", [
    ["train", "lenet", "--dataset", "digits", "--epochs", "1", "-o", "{blocked}/lenet.keras"],
    ["optimize", "lenet", "--dataset", "digits", "--quantize", "int8", "--output", "{blocked}/opt"],
    ["compile", "{model}", "--target", "x86_64", "-o", "{blocked}/lenet.edgedl"],
    ["bench", "{model}", "-o", "{blocked}/run.json"],
    ["report", "{model}", "-o", "{blocked}/report.html"],
    ["quickstart", "--out", "{blocked}/quick"],  # the old spelling still works
])
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(tmp_path, command):
    blocked = tmp_path / "notes.txt"  # a file where the output's folder should be
    blocked.write_text("keep me")
    model = tmp_path / "model.keras"
    model.write_bytes(b"never read: the output is checked first")
    args = [a.format(blocked=blocked, model=model) for a in command]
    code, out, err = edgedl(*args)
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"cannot be written: '{blocked}' is a file, not a folder" in lines[0], err
    assert blocked.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "notes.txt"]


def test_an_os_error_while_working_is_one_line_that_names_the_file(monkeypatch, capsys):
    import edgedl.train
    from edgedl.cli.main import main

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", "/data/lenet.keras")

    monkeypatch.setattr(edgedl.train, "train", full_disk)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "lenet", "--dataset", "digits"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: /data/lenet.keras: No space left on device\n"


@pytest.mark.parametrize("command", ["train", "optimize", "quickstart", "compile", "bench", "report"])
def test_every_command_that_writes_names_its_output_dash_o_output(command):
    help_text = CliRunner().invoke(cli, [command, "--help"]).output
    assert "-o, --output" in help_text
    assert "--out " not in help_text and "--out," not in help_text  # the old alias works but is not advertised


def test_a_misspelled_command_gets_a_did_you_mean():
    code, out, err = edgedl("complie", "lenet.keras")
    assert code == 2
    assert err.strip() == "error: no such command 'complie'; did you mean 'compile'? (see 'edgedl --help')"


def test_an_unknown_command_with_nothing_close_lists_the_commands():
    code, out, err = edgedl("frobnicate")
    assert code == 2 and "did you mean" not in err and "the commands are: bench, compile," in err


def test_a_misspelled_backend_is_refused_before_tensorflow_loads(tmp_path):
    import time

    start = time.perf_counter()
    code, out, err = edgedl("compile", str(tmp_path / "lenet.keras"), "-t", "x86_64", "--backend", "tmv")
    assert code != 0 and time.perf_counter() - start < 5
    assert err.strip() == ("error: unknown backend 'tmv' (did you mean 'tvm'?); --backend takes "
                           "litert, onnxruntime, tflm, tvm, vela or auto")


def test_a_file_of_unknown_kind_is_told_every_accepted_model_format(tmp_path):
    notes = tmp_path / "model.txt"
    notes.write_text("not a model")
    code, out, err = edgedl("compile", str(notes), "-t", "x86_64")
    assert code != 0
    assert err.strip() == (f"error: {notes}: unknown model format '.txt'; expected .keras, .h5, a SavedModel folder, "
                           ".tflite or .onnx")


def test_the_python_api_refuses_a_file_of_unknown_kind_with_the_same_words(tmp_path):
    from edgedl.compile import compile_model
    from edgedl.errors import InputFileError

    notes = tmp_path / "model.txt"
    notes.write_text("not a model")
    with pytest.raises(InputFileError, match=r"unknown model format '\.txt'; expected \.keras, \.h5, a SavedModel "
                                             r"folder, \.tflite or \.onnx"):
        compile_model(str(notes), "x86_64", str(tmp_path / "out.edgedl"))
    assert not (tmp_path / "out.edgedl").exists()


def test_a_float_model_for_an_npu_target_is_told_to_quantize(trained_lenet, tmp_path):
    code, out, err = edgedl("compile", str(trained_lenet["keras"]), "-t", "ethos_u55_128", "-o", str(tmp_path / "u.edgedl"))
    assert code != 0 and not (tmp_path / "u.edgedl").exists()
    assert err.strip() == ("error: target 'ethos_u55_128' runs a model on its NPU only when the model is full-integer, "
                           "and this one is float: add -q int8 (calibrated on the model's data set), or --backend tflm "
                           "to run it in float on its cortex-m55")


def test_a_float_tflite_for_an_npu_target_is_told_to_quantize_too(trained_lenet, tmp_path):
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.convert import to_tflite
    from edgedl.errors import OptionError

    float_tflite = tmp_path / "lenet.tflite"
    float_tflite.write_bytes(to_tflite(trained_lenet["model"], "none"))
    with pytest.raises(OptionError, match="runs a model on its NPU only when the model is full-integer.*add -q int8"):
        compile_model(str(float_tflite), "ethos_u55_128", str(tmp_path / "u.edgedl"), CompileOptions(num_samples=10))


def test_targets_piped_never_cut_a_name_and_wrap_only_descriptions():
    from edgedl.targets import list_targets

    env = {k: v for k, v in __import__("os").environ.items() if k != "COLUMNS"}
    for columns in (None, "80", "50"):
        code, out, err = edgedl("targets", env=env if columns is None else dict(env, COLUMNS=columns))
        assert code == 0, err
        words = out.split()
        assert "…" not in out and "..." not in out
        for t in list_targets():
            assert t.name in words and t.kind in words
            assert all(b in out for b in t.backends)
        if columns:
            assert max(len(line) for line in out.splitlines()) <= max(int(columns), 78)


def test_estimates_read_as_sizes_and_rounded_numbers_not_python_reprs():
    from edgedl.report.format import estimate_lines

    lines = estimate_lines({"cycles": 123456, "clock_mhz": 500.0, "inference_time_ms": 0.17772400000000002,
                            "sram_used_bytes": 51234.0, "model_bytes": 900, "fits": True, "memory_mode": None,
                            "ram_budget_bytes": 2097152,
                            "cpu_fallback": [{"op": "QUANTIZE", "output": "x", "reason": "float input"}],
                            "cpu_fallback_ops": ["QUANTIZE"], "op_counts": {"Conv": 2, "Gemm": 1},
                            "note": "Vela's static model. " * 8})
    assert lines[:8] == ["cycles: 123,456", "clock mhz: 500.0", "inference time ms: 0.1777",
                         "sram used: 50.0 KiB (51,234 B)", "model: 900 B", "fits: yes",
                         "ram budget: 2 MiB (2,097,152 B)", "cpu fallback: QUANTIZE (float input)"]
    assert lines[8:10] == ["cpu fallback ops: QUANTIZE", "op counts: Conv 2, Gemm 1"]
    assert lines[10].startswith("note: Vela's static model.") and all(len(line) <= 96 for line in lines)
    assert not any("{" in line or "[" in line or "'" in line.split(":", 1)[1] for line in lines[:10])


def test_optimize_help_fits_on_two_screens():
    text = CliRunner().invoke(cli, ["optimize", "--help"]).output
    assert len(text.splitlines()) <= 105  # the details live in benchmarks/README.md, not in option help
