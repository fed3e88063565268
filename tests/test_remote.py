"""Remote devices: `edgedl serve` agents (TVM RPC) on loopback, TVM's tracker, and their faults.

Every agent here is a real `edgedl serve` process and the tracker is TVM's own; nothing is mocked.
Each test bounds its waits, and the fixtures kill what they started.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgedl.errors import DeviceError, InputFileError, OptionError

pytestmark = [pytest.mark.tvm, pytest.mark.slow]
pytest.importorskip("tvm.rpc")
psutil = pytest.importorskip("psutil")

KEY = "edgedl-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edgedl(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "edgedl.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


class Agent:
    """An `edgedl serve` process in a session of its own (so its session processes can be signalled too)."""

    def __init__(self, *args, log_dir: Path):
        self.port = free_port()
        self.log = log_dir / f"agent-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgedl.cli.main", "serve", "--port", str(self.port), "--port-end", str(self.port),
             *args],
            stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True, start_new_session=True,
            env=dict(os.environ, TMPDIR=str(log_dir)))  # a bundle a killed session unpacked stays out of /tmp
        self.device = f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        lines = []

        def read():
            for line in self.proc.stdout:
                lines.append(line)
                if "listening on" in line:
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(max(0.1, deadline - time.monotonic()))
        assert any("listening on" in ln for ln in lines), f"agent did not start: {lines} {self.log.read_text()[-2000:]}"
        assert f"127.0.0.1:{self.port}" in lines[0]
        return self

    def sessions(self) -> list:
        """The agent's session processes (one per connected client)."""
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def kill(self, sig=signal.SIGKILL, group=False):
        try:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self):
        if self.proc.poll() is None:
            self.kill(signal.SIGCONT, group=True)
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        self.kill(signal.SIGKILL, group=True)
        self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def bundles(trained_lenet, tmp_path_factory):
    from edgedl.compile import CompileOptions, compile_model

    d = tmp_path_factory.mktemp("remote")
    keras_path = trained_lenet["keras"]
    out = {"litert": d / "litert.edgedl", "tvm": d / "tvm.edgedl"}
    compile_model(str(keras_path), "x86_64", str(out["litert"]),
                  CompileOptions(backend="litert", quantize="int8", io_type="int8", num_samples=30))
    compile_model(str(keras_path), "x86_64", str(out["tvm"]), CompileOptions(backend="tvm"))
    return out


def agent_pool(log_dir):
    """Start agents on demand (all in parallel, then wait); stop them all when done."""
    started = []

    def start(count=1, *args):
        new = [Agent(*args, log_dir=log_dir) for _ in range(count)]
        started.extend(new)
        return [a.wait_ready() for a in new]

    try:
        yield start
    finally:
        for a in started:
            a.stop()


@pytest.fixture
def agents(tmp_path):
    """Agents of one test, stopped after it (before the module's tracker goes)."""
    yield from agent_pool(tmp_path)


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """One direct agent shared by the module's tests that only use it."""
    pool = agent_pool(tmp_path_factory.mktemp("agent"))
    yield next(pool)(1)[0]
    pool.close()


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    pytest.importorskip("tornado", reason="TVM's tracker needs tornado (pip install tornado)")
    port = free_port()
    log = tmp_path_factory.mktemp("tracker") / "tracker.log"
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                             "--port-end", str(port + 1)], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def tracker_servers(address: str, key: str) -> int:
    from tvm.rpc import connect_tracker

    host, port = address.rsplit(":", 1)
    summary = connect_tracker(host, int(port)).summary()
    return sum(1 for s in summary["server_info"] if s["key"] == f"server:{key}")


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def options(**kw):
    from edgedl.bench.options import BenchOptions

    return BenchOptions(**dict(dict(limit=100, warmup=10, runs=200, repeats=3, timeout=60), **kw))


def run_in_thread(fn):
    """Run ``fn`` in a thread; return (thread, box) where box gets "result" or "error" and "seconds"."""
    box = {}

    def target():
        t0 = time.monotonic()
        try:
            box["result"] = fn()
        except Exception as e:  # noqa: BLE001
            box["error"] = e
        box["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


# -- a direct agent --------------------------------------------------------------------------------


def test_a_bench_through_an_agent_matches_the_local_one(bundles, agent):
    from edgedl.bench.harness import bench

    local = bench(str(bundles["litert"]), options()).data
    remote = bench(str(bundles["litert"]), options(device=agent.device)).data
    assert remote["schema"] == "edgedl.bench/1" and remote["device"] == agent.device
    assert set(local) <= set(remote) and remote["remote"]["agent"]["edgedl"]
    assert remote["bundle"]["path"] == str(bundles["litert"]) and remote["settings"] == local["settings"]
    assert remote["accuracy"] == local["accuracy"] and remote["accuracy"]["samples"] == 100
    lat = remote["timing"]["latency"]
    assert lat["runs"] == 600 and len(remote["timing"]["repeat_p50_us"]) == 3
    assert 0 < lat["min_us"] <= lat["p50_us"] <= lat["p90_us"] <= lat["max_us"]
    ratio = lat["p50_us"] / local["timing"]["latency"]["p50_us"]
    assert 1 / 3 < ratio < 3, f"remote p50 {lat['p50_us']:.1f} us vs local {local['timing']['latency']['p50_us']:.1f}"
    assert remote["memory"]["peak_rss_bytes"] > 0 and remote["timing"]["load_s"] > 0


def test_a_tvm_bundle_runs_through_an_agent(bundles, agent, tmp_path):
    out = tmp_path / "tvm.json"
    proc = edgedl("bench", bundles["tvm"], "--device", agent.device, "--limit", 50, "--runs", 50, "--repeats", 2,
                  "--json", "-o", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["bundle"]["engine"] == "tvm" and r["device"] == agent.device
    assert r["accuracy"]["samples"] == 50 and r["accuracy"]["accuracy"] > 0.5
    assert r["timing"]["latency"]["runs"] == 100


def test_a_bundle_with_two_inputs_is_timed_and_scored_through_an_agent(agent, tmp_path):
    """The samples of each input travel to the device, and it times and scores the model as here."""
    import keras
    import numpy as np

    from edgedl.bench.harness import bench
    from edgedl.compile import CompileOptions, compile_model

    keras.utils.set_random_seed(0)
    a, b = keras.Input((8,), name="a"), keras.Input((4,), name="b")
    model = keras.Model([a, b], keras.layers.Dense(3, activation="softmax")(keras.layers.Concatenate()([a, b])))
    model.save(tmp_path / "two.keras")
    rng = np.random.default_rng(0)
    xa, xb = rng.random((30, 8), np.float32), rng.random((30, 4), np.float32)
    np.savez(tmp_path / "two.npz", a=xa, b=xb, y=model.predict([xa, xb], verbose=0).argmax(-1))
    bundle = tmp_path / "two.edgedl"
    compile_model(str(tmp_path / "two.keras"), "x86_64", str(bundle),
                  CompileOptions(backend="litert", data=str(tmp_path / "two.npz")))
    local = bench(str(bundle), options(data=str(tmp_path / "two.npz"))).data
    remote = bench(str(bundle), options(data=str(tmp_path / "two.npz"), device=agent.device)).data
    assert remote["device"] == agent.device and remote["timing"]["latency"]["runs"] == 600
    assert remote["accuracy"] == local["accuracy"] and remote["accuracy"]["accuracy"] == 1.0


def test_an_archive_bundle_is_uploaded_as_one_file(bundles, agent, tmp_path):
    from edgedl.bench.remote import run_remote
    from edgedl.bundle import read_manifest, write_bundle

    archive = tmp_path / "lenet.edgedl.tar"
    manifest = read_manifest(bundles["litert"])
    write_bundle(archive, dict(manifest, files=[f["path"] for f in manifest["files"]]), bundles["litert"],
                 archive=True)
    r = run_remote(archive, {"warmup": 2, "runs": 20, "repeats": 2, "threads": 1, "samples": None},
                   options(device=agent.device))
    assert r["remote"]["upload_bytes"] == archive.stat().st_size and r["timing"]["latency"]["runs"] == 40


def test_a_tampered_bundle_is_refused_on_the_device_with_the_file_named(bundles, agent, tmp_path):
    import shutil

    from edgedl.bench.remote import run_remote

    copy = tmp_path / "tampered.edgedl"
    shutil.copytree(bundles["litert"], copy)
    data = bytearray((copy / "model.tflite").read_bytes())
    data[-1] ^= 0xFF  # same size, another sha256
    (copy / "model.tflite").write_bytes(bytes(data))
    # run_remote directly: `edgedl bench` would already refuse it here, before uploading.
    with pytest.raises(InputFileError, match=r"tampered.edgedl: bundle file 'model.tflite' does not match its sha256"
                                             r".*checked on the device 127.0.0.1"):
        run_remote(copy, {"warmup": 1, "runs": 5, "repeats": 1, "threads": 1, "samples": None},
                   options(device=agent.device))


# -- TVM's tracker ---------------------------------------------------------------------------------


def test_parallel_benches_through_a_tracker_all_succeed(bundles, agents, tracker):
    from edgedl.bench.harness import bench

    fleet = agents(3, "--tracker", tracker, "--key", KEY)
    wait_for(lambda: tracker_servers(tracker, KEY) == 3, 30, "three agents at the tracker")
    runs = [run_in_thread(lambda: bench(str(bundles["litert"]), options(device=f"tracker://{tracker}/{KEY}",
                                                                         runs=100, limit=50)))
            for _ in range(4)]
    for thread, _ in runs:
        thread.join(120)
    errors = [box.get("error") for _, box in runs if "result" not in box]
    assert not errors, errors
    results = [box["result"].data for _, box in runs]
    assert all(r["device"] == f"tracker://{tracker}/{KEY}" and r["timing"]["latency"]["runs"] == 300
               for r in results)
    used = {r["remote"]["agent"]["address"] for r in results}
    assert used <= {f"127.0.0.1:{a.port}" for a in fleet} and len(used) >= 2  # the tracker spread the work


def test_a_key_with_no_device_names_the_keys_the_tracker_knows(bundles, agents, tracker):
    from edgedl.bench.harness import bench

    agents(1, "--tracker", tracker, "--key", KEY)
    wait_for(lambda: tracker_servers(tracker, KEY) >= 1, 30, "an agent at the tracker")
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match=rf"tracker at {tracker} has no device under the key 'rpi4' "
                                          rf"\(its keys: {KEY}\); start an agent with: edgedl serve"):
        bench(str(bundles["litert"]), options(device=f"tracker://{tracker}/rpi4"))
    assert time.monotonic() - t0 < 10


def test_a_lost_device_is_retried_on_another_one_from_the_tracker(bundles, agents, tracker):
    from edgedl.bench.harness import bench

    key = KEY + "-retry"
    fleet = agents(2, "--tracker", tracker, "--key", key)
    wait_for(lambda: tracker_servers(tracker, key) == 2, 30, "two agents at the tracker")
    progress = []
    thread, box = run_in_thread(lambda: bench(
        str(bundles["litert"]), options(device=f"tracker://{tracker}/{key}", runs=5000, repeats=8, limit=20,
                                        retries=2), progress=lambda done, total: progress.append(done)))
    wait_for(lambda: len(progress) >= 3 or not thread.is_alive(), 60, "two repeats")
    busy = [a for a in fleet if a.sessions()]
    assert len(busy) == 1
    busy[0].kill()
    thread.join(90)
    assert "result" in box, box.get("error")
    r = box["result"].data
    assert r["remote"]["sessions"] == 2 and r["timing"]["latency"]["runs"] == 5000 * 8
    assert len(r["timing"]["repeat_p50_us"]) == 8


# -- faults ----------------------------------------------------------------------------------------


def test_an_agent_killed_mid_run_is_a_quick_error_and_finished_repeats_are_kept(bundles, agents):
    from edgedl.bench.harness import bench

    victim = agents(1)[0]
    progress = []
    thread, box = run_in_thread(lambda: bench(
        str(bundles["litert"]), options(device=victim.device, runs=5000, repeats=50, limit=20, timeout=300),
        progress=lambda done, total: progress.append(done)))
    wait_for(lambda: len(progress) >= 3 or not thread.is_alive(), 60, "two repeats")
    sessions = victim.sessions()
    assert len(sessions) == 1
    killed_at = time.monotonic()
    victim.kill()  # the agent only: its session must die with it
    thread.join(30)
    assert not thread.is_alive() and time.monotonic() - killed_at < 10
    err = box["error"]
    assert isinstance(err, DeviceError), err
    assert f"lost the connection to the device {victim.device}" in str(err) and "\n" not in str(err)
    assert "of 50 repeats finished, their results are in" in str(err)
    partial = json.loads(Path(err.partial_path).read_text())
    Path(err.partial_path).unlink()
    assert partial["partial"]["repeats_done"] >= 2 and partial["partial"]["repeats"] == 50
    assert partial["timing"]["latency"]["runs"] == 5000 * partial["partial"]["repeats_done"]
    assert partial["schema"] == "edgedl.bench/1" and partial["accuracy"]["samples"] == 20
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in sessions), 10,
             "the session to die with its agent")


def test_a_hung_device_times_out_within_the_timeout(bundles, agents):
    from edgedl.bench.harness import bench

    frozen = agents(1)[0]
    progress = []
    thread, box = run_in_thread(lambda: bench(
        str(bundles["litert"]), options(device=frozen.device, runs=5000, repeats=100, limit=20, timeout=8),
        progress=lambda done, total: progress.append(done)))
    wait_for(lambda: len(progress) >= 2 or not thread.is_alive(), 30, "a repeat")
    frozen.kill(signal.SIGSTOP, group=True)  # agent and session stop answering; the socket stays open
    thread.join(20)
    try:
        assert not thread.is_alive() and box["seconds"] < 8 + 6
        assert isinstance(box["error"], DeviceError)
        assert f"the device {frozen.device} did not answer within 8 s" in str(box["error"])
        assert "repeats finished, their results are in" in str(box["error"])
        Path(box["error"].partial_path).unlink()
    finally:
        frozen.kill(signal.SIGCONT, group=True)


def test_an_unreachable_device_says_how_to_start_an_agent(bundles):
    port = free_port()
    proc = edgedl("bench", bundles["litert"], "--device", f"127.0.0.1:{port}", "--limit", 10, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach an edgedl agent at 127.0.0.1:{port}")
    assert f"edgedl serve --host 0.0.0.0 --port {port}" in last


def test_an_unreachable_tracker_is_named():
    from edgedl.bench.remote import run_remote

    port = free_port()
    with pytest.raises(DeviceError, match=rf"cannot reach the TVM tracker at 127.0.0.1:{port}.*rpc_tracker"):
        run_remote("unused", {"warmup": 1, "runs": 1, "repeats": 1, "threads": 1, "samples": None},
                   options(device=f"tracker://127.0.0.1:{port}/{KEY}", timeout=10))


@pytest.mark.parametrize("device", ["localhost", "127.0.0.1:", "127.0.0.1:99999", "http://host:9090",
                                    "tracker://127.0.0.1:9190", "tracker://127.0.0.1:9190/", "tracker://h/k",
                                    "host:90:90"])
def test_a_malformed_device_shows_the_accepted_forms(device):
    from edgedl.bench.options import parse_device

    with pytest.raises(OptionError,
                       match=r"expected HOST:PORT .*, tracker://HOST:PORT/KEY .* or serial:///dev/ttyACM0"):
        parse_device(device)


def test_a_malformed_device_is_a_one_line_cli_error(bundles):
    proc = edgedl("bench", bundles["litert"], "--device", "tracker:/x", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: --device got 'tracker:/x'; expected HOST:PORT" in proc.stderr


def test_good_devices_parse():
    from edgedl.bench.options import Device, parse_device

    assert parse_device("127.0.0.1:9090") == Device("127.0.0.1", 9090)
    assert parse_device("[::1]:9090") == Device("::1", 9090)
    assert str(parse_device("tracker://rpc.lab:9190/rpi4")) == "tracker://rpc.lab:9190/rpi4"


# -- the agent itself ------------------------------------------------------------------------------


def test_serve_help_says_it_listens_on_loopback_by_default_and_how_to_trust_bundles():
    proc = edgedl("serve", "--help", timeout=60)
    assert proc.returncode == 0 and "It listens on 127.0.0.1 unless --host" in proc.stdout
    assert "--trust" in proc.stdout and "--insecure" in proc.stdout


@pytest.mark.parametrize("settings, message", [
    ({"port": 9100, "port_end": 9000}, "--port and --port-end must satisfy 0 < port <= port-end < 65536, got 9100 and "
                                       "9000"),
    ({"max_sessions": 0}, "--max-sessions must be from 1 to 1024, got 0"),
    ({"idle_timeout": float("nan")}, "--idle-timeout must be from 0.1 to 86400, got nan"),
    ({"host": "0.0.0.0"}, "--host 0.0.0.0 takes connections from other machines"),
    ({"tracker": "127.0.0.1:9190", "key": "a/b"}, "--key got 'a/b'; expected a name without spaces, ':' or '/'"),
])
def test_agent_options_are_refused_by_option_name_before_listening(settings, message):
    from edgedl.serve import AgentOptions

    with pytest.raises(OptionError) as caught:
        AgentOptions(**settings).validate()
    assert message in str(caught.value)


def test_agent_options_default_to_this_machine_and_a_range_of_ports():
    from edgedl.serve import AgentOptions

    options = AgentOptions(port=9300)
    assert options.validate() is None and options.last_port == 9409
    assert AgentOptions(tracker="127.0.0.1:9190", port_end=9301).validate() == ("127.0.0.1", 9190)


def test_serve_refuses_a_taken_port_and_an_unreachable_tracker(agent):
    proc = edgedl("serve", "--port", agent.port, "--port-end", agent.port, timeout=60)
    assert proc.returncode == 2 and f"no free port in {agent.port}..{agent.port}" in proc.stderr
    port = free_port()
    proc = edgedl("serve", "--port", free_port(), "--tracker", f"127.0.0.1:{port}", timeout=60)
    assert proc.returncode != 0 and f"cannot reach the TVM tracker at 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def long_bench(bundle, device, **kw):
    """Start a long bench in a thread; return (thread, box) once two repeats are done."""
    from edgedl.bench.harness import bench

    progress = []
    thread, box = run_in_thread(lambda: bench(
        str(bundle), options(device=device, **dict(dict(runs=5000, repeats=50, limit=20, timeout=120), **kw)),
        progress=lambda done, total: progress.append(done)))
    wait_for(lambda: len(progress) >= 3 or not thread.is_alive(), 60, "two repeats")
    assert thread.is_alive(), box
    return thread, box


def test_a_crashed_session_fails_its_client_but_not_the_agent(bundles, agents):
    from edgedl.bench.harness import bench

    a = agents(1)[0]
    thread, box = long_bench(bundles["litert"], a.device)
    (session,) = a.sessions()
    session.kill()
    thread.join(30)
    assert isinstance(box.get("error"), DeviceError) and "lost the connection" in str(box["error"])
    Path(box["error"].partial_path).unlink()
    r = bench(str(bundles["litert"]), options(device=a.device, runs=50, repeats=1, limit=10))
    assert r.latency["runs"] == 50 and a.proc.poll() is None
    assert "a session ended abnormally" in a.log.read_text()


def test_the_agent_stops_cleanly_on_sigterm_even_mid_run(bundles, agents):
    a = agents(1)[0]
    thread, box = long_bench(bundles["litert"], a.device)
    sessions = a.sessions()
    a.kill(signal.SIGTERM)
    assert a.proc.wait(15) == 0
    thread.join(30)
    assert isinstance(box.get("error"), DeviceError) and "repeats finished" in str(box["error"])
    Path(box["error"].partial_path).unlink()
    log = a.log.read_text()
    assert "edgedl agent stopped" in log and "Traceback" not in log
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in sessions)
