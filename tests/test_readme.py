"""The README's walkthrough, run as written: every line of its "Ten lines, end to end" block."""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINE_TIMEOUT_S = 300


def walkthrough() -> list[str]:
    """The lines of the first ```sh block under the README's "Ten lines" heading, comments kept."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Ten lines, end to end"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_the_walkthrough_is_ten_lines_that_all_name_their_outputs():
    lines = walkthrough()
    assert len(lines) == 10
    writers = [line for line in lines if re.match(r"edgedl (train|optimize|compile|report)\b", line)]
    assert writers and all(" -o " in line for line in writers)  # nothing written to a default that another line reuses
    outputs = [shlex.split(line.split("#")[0])[shlex.split(line.split("#")[0]).index("-o") + 1] for line in writers]
    assert len(set(outputs)) == len(outputs), outputs


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(tmp_path, data_dir):
    pytest.importorskip("keras")
    pytest.importorskip("ethosu.vela")
    env = dict(os.environ, EDGEDL_DATA=str(data_dir), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("COLUMNS", None)
    port = next(p for p in (9090, *range(19090, 19190)) if _free(p))  # the README's port unless it is taken here
    agent = None
    ran = []
    try:
        for line in walkthrough():
            command = line.replace("9090", str(port))
            if command.startswith("source .venv/bin/activate"):
                assert (ROOT / ".venv" / "bin" / "activate").exists() or "VIRTUAL_ENV" not in os.environ
                continue  # the test's python is the venv's: its bin/ leads PATH
            if command.startswith("export "):
                name = command.split()[1].split("=")[0]
                assert name == "EDGEDL_DATA"  # set above, to the data sets this run uses
                continue
            if command.startswith("kill %1"):
                assert agent is not None and agent.poll() is None, "the agent stopped before it was told to"
                os.killpg(agent.pid, signal.SIGTERM)
                agent.wait(timeout=30)
                agent = None
                continue
            if re.search(r"(?<![&])&(?![&])", command.split("#")[0]):
                background, command = re.split(r"(?<![&])&(?![&])", command, maxsplit=1)
                agent = subprocess.Popen(["bash", "-c", background], cwd=tmp_path, env=env, start_new_session=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=LINE_TIMEOUT_S)
            assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            ran.append((line, proc.stdout))
    finally:
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
    import json

    assert len(ran) == 7
    assert (tmp_path / "lenet.json").exists() and (tmp_path / "lenet-opt" / "model.tflite").exists()
    x86 = json.loads((tmp_path / "lenet.edgedl" / "manifest.json").read_text())
    u55 = json.loads((tmp_path / "lenet-u55.edgedl" / "manifest.json").read_text())
    assert x86["target"]["name"] == "x86_64" and x86["fidelity"]["top1_agreement"] >= 0.98
    assert u55["backend"] == "vela" and u55["estimates"]["cycles"] > 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["accuracy"]["accuracy"] > 0.9 and run["timing"]["latency"]["p50_us"] > 0
    remote = next(out for line, out in ran if "--device" in line)
    assert f"on 127.0.0.1:{port}" in remote and "accuracy" in remote
    assert (tmp_path / "report.html").stat().st_size > 1000


def python_block() -> str:
    """The ```python block under "The same pipeline from Python"."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("The same pipeline from Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_python_pipeline_runs_as_written(tmp_path):
    pytest.importorskip("keras")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("EDGEDL_DATA", None)  # it names digits: no data folder needed
    proc = subprocess.run([sys.executable, "-c", python_block()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=2 * LINE_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("lenet.edgedl: ") for line in lines)
    assert any(line.startswith("  digest: sha256:") for line in lines)
    assert any(line.startswith("  fidelity: accuracy ") for line in lines)
    assert (tmp_path / "lenet-opt" / "model.tflite").exists() and (tmp_path / "run.json").exists()
    import json

    run = json.loads((tmp_path / "run.json").read_text())
    assert run["schema"] == "edgedl.bench/1" and run["accuracy"]["accuracy"] > 0.8
