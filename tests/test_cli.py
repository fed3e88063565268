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
    ["train", "lenet", "--dataset", "digits", "--epochs", "1", "--out", "{blocked}/lenet.keras"],
    ["optimize", "lenet", "--dataset", "digits", "--quantize", "int8", "--out", "{blocked}/opt"],
    ["compile", "{model}", "--target", "x86_64", "-o", "{blocked}/lenet.edgedl"],
    ["bench", "{model}", "-o", "{blocked}/run.json"],
    ["report", "{model}", "-o", "{blocked}/report.html"],
    ["quickstart", "--out", "{blocked}/quick"],
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
