"""TVM tuning (edgedl.backends.tvm_tune): a clock and a trial budget, the per-target database reused and
refused for another target, and candidates measured on the device through TVM's RPC runner.

The tracker and the RPC server are TVM's own (``python -m tvm.exec.rpc_tracker`` and
``python -m tvm.exec.rpc_server``) on loopback; nothing is mocked. One tuning run is shared by the
tests that look at its manifest, the database it leaves and the server that measured it.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgedl.errors import DeviceError, OptionError

pytestmark = [pytest.mark.tvm, pytest.mark.slow]
pytest.importorskip("tvm.rpc")
pytest.importorskip("tornado", reason="TVM's tracker needs tornado (pip install tornado)")

KEY = "edgedl-tune-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def servers_under(tracker: str, key: str) -> int:
    from tvm.rpc import connect_tracker

    host, port = tracker.rsplit(":", 1)
    return sum(1 for s in connect_tracker(host, int(port)).summary()["server_info"] if s["key"] == f"server:{key}")


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("tune-logs")


@pytest.fixture(scope="module")
def tracker(logs):
    port = free_port()
    proc = start(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)],
                 logs / "tracker.log")
    wait_for(lambda: listening(port) or proc.poll() is not None, 30, "the tracker")
    assert proc.poll() is None, (logs / "tracker.log").read_text()[-2000:]
    yield f"127.0.0.1:{port}"
    stop(proc)


@pytest.fixture(scope="module")
def device(tracker, logs):
    """One TVM RPC server registered with the tracker under KEY; its log records each session."""
    port = free_port()
    log = logs / "rpc_server.log"
    proc = start(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1),
                  "--tracker", tracker, "--key", KEY], log)
    wait_for(lambda: servers_under(tracker, KEY) == 1 or proc.poll() is not None, 60, "the RPC server to register")
    assert proc.poll() is None, log.read_text()[-2000:]
    yield {"device": f"tracker://{tracker}/{KEY}", "log": log, "port": port}
    stop(proc)


@pytest.fixture(scope="module")
def small_tflite(tmp_path_factory):
    """A LeNet-sized float .tflite (conv, pool, dense): five tuning tasks."""
    import keras

    from edgedl.convert import to_tflite

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    path = tmp_path_factory.mktemp("tune-model") / "small.tflite"
    path.write_bytes(to_tflite(model, "none", None))
    return path


def opts(**kw):
    from edgedl.compile import CompileOptions

    return CompileOptions(**dict(dict(backend="tvm", num_samples=20, force=True), **kw))


@pytest.fixture(scope="module")
def tuned(small_tflite, device, tmp_path_factory):
    """Tune on the device with a clock far shorter than the trials need: one batch per task, then stop."""
    from edgedl.compile import compile_model

    work = tmp_path_factory.mktemp("tuned")
    sessions_before = device["log"].read_text().count("start serving")
    t0 = time.monotonic()
    result = compile_model(str(small_tflite), "x86_64", str(work / "t.edgedl"),
                           opts(tune=True, trials=500, tune_minutes=0.05, tune_device=device["device"],
                                tuning_db=str(work / "db")))
    return {"result": result, "db": work / "db", "work": work, "seconds": time.monotonic() - t0,
            "sessions": device["log"].read_text().count("start serving") - sessions_before}


def test_tuning_on_the_device_stops_on_the_clock_and_matches_litert(tuned, device):
    spec = tuned["result"].manifest["options"]["backend_specific"]
    assert spec["tuned"] and spec["measured_on"] == device["device"]
    assert spec["stopped_by"] == "minutes" and spec["minutes_budget"] == 0.05 and spec["trials_budget"] == 500
    # The clock was up before the first batch came back: every task measured one batch of one candidate.
    assert spec["tasks"] == 5 and spec["tasks_from_db"] == 0
    assert spec["trials_run"] == spec["tasks"] and spec["trials_failed"] == 0
    assert spec["tuning_minutes"] == pytest.approx(spec["tuning_time_s"] / 60, abs=0.01)
    # Each candidate was uploaded to the RPC server and run there (one session each, plus the check).
    assert tuned["sessions"] >= spec["trials_run"]
    fidelity = tuned["result"].manifest["fidelity"]
    assert "LiteRT" in fidelity["reference"] and fidelity["top1_agreement"] == 1.0
    assert fidelity["max_abs_error"] < 1e-5
    import json

    identity = json.loads((tuned["db"] / "edgedl_tuning.json").read_text())
    assert identity["target"] == "x86_64" and identity["measured_on"] == [device["device"]]


def test_a_second_compile_runs_no_trials_and_needs_no_device(tuned, small_tflite):
    from edgedl.compile import compile_model

    first = tuned["result"].manifest["options"]["backend_specific"]
    unreachable = f"tracker://127.0.0.1:{free_port()}/{KEY}"  # every task is in the database: never contacted
    second = compile_model(str(small_tflite), "x86_64", str(tuned["work"] / "t2.edgedl"),
                           opts(tune=True, trials=500, tune_device=unreachable, tuning_db=str(tuned["db"])))
    spec = second.manifest["options"]["backend_specific"]
    assert spec["trials_run"] == 0 and spec["tasks_from_db"] == spec["tasks"] == first["tasks"]
    assert spec["stopped_by"] == "the database" and spec["measured_on"] == "the database"
    assert second.manifest["fidelity"]["top1_agreement"] == 1.0


def test_a_database_tuned_for_another_target_is_refused_by_name(tuned, small_tflite):
    from edgedl.compile import compile_model

    with pytest.raises(OptionError, match=r"was tuned for the target 'x86_64' \(llvm mtriple=x86_64-linux-gnu "
                                          r"mcpu=x86-64-v3\), not 'x86_64_avx512'.*give another --tuning-db"):
        compile_model(str(small_tflite), "x86_64_avx512", str(tuned["work"] / "t3.edgedl"),
                      opts(tune=True, trials=8, tuning_db=str(tuned["db"])))


def test_a_cross_compiled_target_is_not_tuned_on_this_host(small_tflite, tmp_path):
    import shutil

    from edgedl.compile import compile_model

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed")
    with pytest.raises(OptionError, match=r"--tune for 'rpi4' measures candidates built for aarch64-linux-gnu, which "
                                          r"do not run on this host: add --tune-device"):
        compile_model(str(small_tflite), "rpi4", str(tmp_path / "r.edgedl"),
                      opts(tune=True, trials=8, tuning_db=str(tmp_path / "db")))


def test_an_unreachable_tracker_is_a_quick_one_line_cli_error(small_tflite, tmp_path):
    port = free_port()
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edgedl.cli.main", "compile", str(small_tflite), "--target", "x86_64",
                           "--backend", "tvm", "--tune", "--tune-device", f"tracker://127.0.0.1:{port}/{KEY}",
                           "--tuning-db", str(tmp_path / "db"), "--samples", "5", "-o", str(tmp_path / "u.edgedl")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach the TVM tracker at 127.0.0.1:{port} (Connection refused); start "
                           f"one with: python -m tvm.exec.rpc_tracker"), proc.stderr[-2000:]
    assert not (tmp_path / "u.edgedl").exists() and time.monotonic() - t0 < 120


def test_a_tracker_without_the_key_names_the_keys_it_has(device, tracker):
    from edgedl.backends.tvm_tune import check_device, parse_tune_device

    t0 = time.monotonic()
    with pytest.raises(DeviceError, match=rf"the tracker at {tracker} has no server under the key 'rpi9' \(its keys: "
                                          rf"{KEY}\); on the device run: python -m tvm.exec.rpc_server --tracker "
                                          rf"{tracker} --key rpi9"):
        check_device(parse_tune_device(f"tracker://{tracker}/rpi9"), timeout=20)
    assert time.monotonic() - t0 < 20


def test_a_server_registered_with_a_tracker_is_not_taken_directly(device):
    from edgedl.backends.tvm_tune import check_device, parse_tune_device

    with pytest.raises(DeviceError, match=rf"the TVM RPC server at 127.0.0.1:{device['port']} is registered with a "
                                          r"tracker and takes no direct sessions: give tracker://"):
        check_device(parse_tune_device(f"127.0.0.1:{device['port']}"), timeout=20)


def test_a_direct_rpc_server_gives_a_session_and_a_closed_port_says_how_to_start_one(logs):
    from edgedl.backends.tvm_tune import check_device, parse_tune_device

    port = free_port()
    proc = start(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)],
                 logs / "direct.log")
    try:
        wait_for(lambda: listening(port) or proc.poll() is not None, 60, "the RPC server")
        check_device(parse_tune_device(f"127.0.0.1:{port}"), timeout=30)  # a session, and random fill is there
    finally:
        stop(proc)
    with pytest.raises(DeviceError, match=rf"cannot reach a TVM RPC server at 127.0.0.1:{port} .*; on the device run: "
                                          rf"python -m tvm.exec.rpc_server --host 0.0.0.0 --port {port}"):
        check_device(parse_tune_device(f"127.0.0.1:{port}"), timeout=10)


@pytest.mark.parametrize("settings, message", [
    (dict(tune=True, tune_minutes=0), "--tune-minutes must be a positive number of minutes, got 0"),
    (dict(tune=True, tune_minutes=float("nan")), "--tune-minutes must be a positive number of minutes, got nan"),
    (dict(tune=True, trials=0), "--trials must be a positive integer, got 0"),
    (dict(tune=True, tune_device="tracker://127.0.0.1:9190"), "--tune-device got 'tracker://127.0.0.1:9190'; "
                                                                "expected HOST:PORT \\(a TVM RPC server"),
    (dict(tune_minutes=5), "--tune-minutes applies to tuning: add --tune"),
    (dict(tune_device="127.0.0.1:9090"), "--tune-device applies to tuning: add --tune"),
])
def test_bad_tuning_options_are_refused_by_name(settings, message):
    with pytest.raises(OptionError, match=message):
        opts(**settings).check()


def test_a_bad_tune_minutes_is_a_one_line_cli_error(small_tflite):
    proc = subprocess.run([sys.executable, "-m", "edgedl.cli.main", "compile", str(small_tflite), "--target", "x86_64",
                           "--backend", "tvm", "--tune", "--tune-minutes", "-1"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--tune-minutes" in proc.stderr and "more than 0" in proc.stderr


def test_the_batch_shares_the_trials_among_tasks_and_fits_the_clock():
    from edgedl.backends.tvm_tune import _batch

    assert _batch(64, None, 1) == 64 and _batch(1000, None, 5) == 64 and _batch(8, None, 5) == 1
    assert _batch(500, 0.05, 5) == 1 and _batch(500, 1, 5) == 12 and _batch(500, 30, 5) == 64
    assert np.all([_batch(t, m, n) >= 1 for t in (1, 7) for m in (None, 0.001) for n in (1, 9)])


def test_candidates_for_a_cross_compiled_target_are_exported_as_its_shared_libraries():
    import shutil

    import tvm
    from tvm import te

    from edgedl.backends.tvm_tune import _export_shared
    from edgedl.targets import load_target

    target = load_target("rpi4")
    if shutil.which(target.tvm["cross_compiler"]) is None:
        pytest.skip(f"{target.tvm['cross_compiler']} not installed")
    a = te.placeholder((16,), name="a")
    doubled = te.compute((16,), lambda i: a[i] * 2, name="doubled")
    built = tvm.compile(te.create_prim_func([a, doubled]), target=tvm.target.Target(dict(target.tvm["target"])))
    library = Path(_export_shared(target.tvm["cross_compiler"], built)).read_bytes()
    assert library[:4] == b"\x7fELF" and int.from_bytes(library[18:20], "little") == 183  # EM_AARCH64


def test_no_free_device_is_an_error_within_the_timeout(device, tracker):
    from tvm import rpc

    from edgedl.backends.tvm_tune import check_device, parse_tune_device

    host, port = tracker.rsplit(":", 1)
    held = rpc.connect_tracker(host, int(port)).request(KEY, session_timeout=60)  # the only server, now busy
    try:
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match=rf"no TVM RPC server at tracker://{tracker}/{KEY} gave a session "
                                              r"within 5 s \(all busy, or not a TVM RPC server"):
            check_device(parse_tune_device(device["device"]), timeout=5)
        assert time.monotonic() - t0 < 15
    finally:
        del held
