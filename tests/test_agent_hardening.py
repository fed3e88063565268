"""The agent holds up: idle, slow, garbage and crowds of clients never stop a normal bench.

Every agent is a real `edgedl serve` process on loopback and every client a real socket to
127.0.0.1; nothing is mocked. Limits are set low (handshake 2 s, idle 3 s, 1 MiB uploads) so the
tests see them act within seconds. Every wait is bounded.
"""

import json
import socket
import struct
import threading
import time

import numpy as np
import pytest
from test_remote import agent_pool, edgedl, free_port, options, run_in_thread, wait_for

from edgedl.errors import InputFileError

pytestmark = [pytest.mark.tvm, pytest.mark.slow]
pytest.importorskip("tvm")
psutil = pytest.importorskip("psutil")

RPC_MAGIC = 0xFF271
LIMITS = ("--handshake-timeout", "2", "--idle-timeout", "3", "--max-upload-mb", "1", "--max-sessions", "2")
SHORT = {"warmup": 1, "runs": 20, "repeats": 2, "threads": 1, "samples": None}


@pytest.fixture(scope="module")
def bundle(trained_lenet, tmp_path_factory):
    from edgedl.compile import CompileOptions, compile_model

    out = tmp_path_factory.mktemp("hardening") / "litert.edgedl"
    compile_model(str(trained_lenet["keras"]), "x86_64", str(out),
                  CompileOptions(backend="litert", quantize="int8", io_type="int8", num_samples=30))
    return out


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """One agent with low limits, shared by the tests that only connect to it."""
    pool = agent_pool(tmp_path_factory.mktemp("agent"))
    yield next(pool)(1, *LIMITS)[0]
    pool.close()


def connect(agent) -> socket.socket:
    return socket.create_connection(("127.0.0.1", agent.port), timeout=5)


def handshake(agent, key="client:") -> socket.socket:
    """A connection with TVM's RPC handshake done (as any client, edgedl's or TVM's, opens one)."""
    s = connect(agent)
    s.sendall(struct.pack("<ii", RPC_MAGIC, len(key)) + key.encode())
    s.settimeout(10)
    code, size = struct.unpack("<ii", s.recv(8, socket.MSG_WAITALL))
    assert code == RPC_MAGIC, hex(code)
    assert b"edgedl-agent/1" in s.recv(size, socket.MSG_WAITALL)
    return s


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the agent closes ``sock`` within ``within`` seconds (whatever it sent before)."""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def short_bench(bundle, agent, **kw):
    from edgedl.bench.remote import run_remote

    t0 = time.monotonic()
    r = run_remote(bundle, dict(SHORT, **kw), options(device=agent.device, timeout=60))
    assert r["timing"]["latency"]["runs"] == SHORT["runs"] * SHORT["repeats"]
    return time.monotonic() - t0


def healthy(agent):
    log = agent.log.read_text()
    assert agent.proc.poll() is None and "Traceback" not in log, log[-3000:]


def test_idle_and_half_handshake_clients_do_not_block_a_bench_and_are_dropped(bundle, agent):
    silent = [connect(agent) for _ in range(5)]
    two_bytes = [connect(agent) for _ in range(5)]
    for s in two_bytes:
        s.sendall(struct.pack("<i", RPC_MAGIC)[:2])
    no_key = [connect(agent) for _ in range(3)]
    for s in no_key:
        s.sendall(struct.pack("<ii", RPC_MAGIC, 40) + b"client:")  # 7 of the 40 key bytes
    held_since = time.monotonic()
    try:
        assert short_bench(bundle, agent) < 20
        # ...and every half-open connection is closed once its 2 s handshake time is up.
        assert all(closed_by_peer(s, 6) for s in silent + two_bytes + no_key)
        assert time.monotonic() - held_since < 10
    finally:
        for s in silent + two_bytes + no_key:
            s.close()
    healthy(agent)


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    struct.pack("<i", 0x2F271),                                  # the tracker's magic
    struct.pack("<ii", RPC_MAGIC, 0x7FFFFFFF),                    # a 2 GiB key
    struct.pack("<ii", RPC_MAGIC, -8),                            # a negative key length
    struct.pack("<ii", RPC_MAGIC, 5) + b"\xff\xfe\xfd\xfc\xfb",  # a key that is not UTF-8
    struct.pack("<ii", RPC_MAGIC, 12) + b"client:nope!",          # the wrong key: told so, then closed
    bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
], ids=["http", "tracker-magic", "huge-key", "negative-key", "not-utf8", "wrong-key", "random"])
def test_garbage_closes_that_connection_only(agent, garbage):
    bystander = connect(agent)  # a silent client, connected before: it is not dropped by others' garbage
    s = connect(agent)
    try:
        s.sendall(garbage)
        t0 = time.monotonic()
        assert closed_by_peer(s, 3) and time.monotonic() - t0 < 3
        bystander.settimeout(0.2)
        with pytest.raises(TimeoutError):
            bystander.recv(1)
    finally:
        s.close()
        bystander.close()
    healthy(agent)


def test_garbage_inside_a_session_ends_that_session_only(bundle, agent):
    oversized = handshake(agent)
    oversized.sendall(struct.pack("<Q", 1 << 40))  # a 1 TiB request
    unknown = handshake(agent)
    body = json.dumps({"call": "tvm.rpc.server.load_module", "args": {}}).encode()
    unknown.sendall(struct.pack("<Q", len(body)) + body)
    not_json = handshake(agent)
    not_json.sendall(struct.pack("<Q", 4) + b"\x00\x01\x02\x03")
    try:
        assert closed_by_peer(oversized, 5) and closed_by_peer(not_json, 5)
        unknown.settimeout(5)
        (size,) = struct.unpack("<Q", unknown.recv(8, socket.MSG_WAITALL))
        answer = json.loads(unknown.recv(size, socket.MSG_WAITALL))
        assert "has no function 'tvm.rpc.server.load_module'" in answer["error"]
        assert closed_by_peer(unknown, 5)
    finally:
        for s in (oversized, unknown, not_json):
            s.close()
    short_bench(bundle, agent)
    log = agent.log.read_text()
    assert "a message of 1099511627776 bytes" in log and "unknown function" in log
    healthy(agent)


def test_fifty_concurrent_connections_while_a_bench_completes(bundle, agent):
    """Silent, half-handshaking, garbage and connect-and-leave clients, 50 at once, around a bench."""
    # Handshakes that then idle hold a session slot until --idle-timeout: two of them (the agent's two slots).
    kinds = ["silent", "two-bytes", "garbage", "handshake-and-leave"] * 12 + ["handshake-and-idle"] * 2
    release = threading.Event()
    started = threading.Barrier(51, timeout=30)
    outcomes = []

    def client(kind):
        s = None
        try:
            s = connect(agent)
            started.wait()
            if kind == "two-bytes":
                s.sendall(struct.pack("<i", RPC_MAGIC)[:2])
            elif kind == "garbage":
                s.sendall(b"\x00" * 64)
            elif kind.startswith("handshake"):
                key = b"client:"
                s.sendall(struct.pack("<ii", RPC_MAGIC, len(key)) + key)
                if kind == "handshake-and-leave":
                    s.close()
                    s = None
            release.wait(30)
            outcomes.append(kind)
        except OSError as e:
            outcomes.append(f"{kind}: {e}")
        finally:
            if s is not None:
                s.close()

    threads = [threading.Thread(target=client, args=(kinds[i],), daemon=True) for i in range(len(kinds))]
    for t in threads:
        t.start()
    started.wait()
    most_sessions = 0

    def watch():
        nonlocal most_sessions
        while not release.is_set():
            most_sessions = max(most_sessions, len(agent.sessions()))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert short_bench(bundle, agent) < 30
    finally:
        release.set()
        for t in threads:
            t.join(10)
        watcher.join(5)
    assert sorted(outcomes) == sorted(kinds)
    assert 1 <= most_sessions <= 2  # --max-sessions 2: the crowd never forks more
    wait_for(lambda: not agent.sessions(), 10, "the crowd's sessions to end")
    healthy(agent)


def test_an_idle_session_is_ended_and_a_waiting_client_then_gets_its_turn(bundle, agent):
    """Both of the agent's 2 session slots held by idle clients: a bench waits, then runs once they are ended."""
    idle = [handshake(agent) for _ in range(2)]
    try:
        wait_for(lambda: len(agent.sessions()) == 2, 10, "two sessions")
        seconds = short_bench(bundle, agent)
        assert 1.5 < seconds < 15  # waited for the 3 s --idle-timeout, not for ever
        assert all(closed_by_peer(s, 1) for s in idle)
    finally:
        for s in idle:
            s.close()
    assert "nothing received for 3 s (--idle-timeout)" in agent.log.read_text()
    healthy(agent)


def test_concurrent_benches_on_one_agent_all_succeed(bundle, agent):
    runs = [run_in_thread(lambda: short_bench(bundle, agent)) for _ in range(3)]
    for thread, _ in runs:
        thread.join(60)
    assert all("result" in box for _, box in runs), [box.get("error") for _, box in runs]


def test_an_upload_over_the_cap_is_refused_and_ends_that_session(bundle, agent, tmp_path):
    from edgedl.bench.remote import run_remote

    samples = tmp_path / "big.npz"
    np.savez(samples, x=np.zeros((40, 8, 8, 1), np.float32), pad=np.zeros(2 << 20, np.uint8))  # 2 MiB > 1 MiB
    t0 = time.monotonic()
    with pytest.raises(InputFileError, match=r"uploading 'samples.npz' \(\d+ bytes\) would take the session to \d+ bytes, over the "
                                             r"agent's limit of 1048576 \(edgedl serve --max-upload-mb\)"):
        run_remote(bundle, dict(SHORT, samples=str(samples)), options(device=agent.device, timeout=30))
    assert time.monotonic() - t0 < 10
    # A client that announces a small upload and then sends a huge frame is cut off.
    s = handshake(agent)
    try:
        body = json.dumps({"call": "edgedl.agent.upload", "args": {"name": "x.bin", "bytes": 10}}).encode()
        s.sendall(struct.pack("<Q", len(body)) + body)
        (size,) = struct.unpack("<Q", s.recv(8, socket.MSG_WAITALL))
        assert json.loads(s.recv(size, socket.MSG_WAITALL)) == {"ok": True}
        s.sendall(struct.pack("<Q", 1 << 33))
        assert closed_by_peer(s, 5)
    finally:
        s.close()
    short_bench(bundle, agent)
    healthy(agent)


# -- who may reach the agent -----------------------------------------------------------------------


def test_a_non_loopback_host_without_trust_or_insecure_is_refused_before_listening():
    port = free_port()
    t0 = time.monotonic()
    proc = edgedl("serve", "--host", "0.0.0.0", "--port", port, "--port-end", port, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: --host 0.0.0.0 takes connections from other machines, and anyone who reaches "
                           "the port can run native code on this one; pass --trust KEY.pub")
    assert "or --insecure" in line and time.monotonic() - t0 < 30
    with pytest.raises(ConnectionRefusedError):  # it never listened
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_insecure_warns_and_goes_on():
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: past the warning, binding fails at once.
    proc = edgedl("serve", "--host", "192.0.2.1", "--insecure", "--port", free_port(), timeout=60)
    assert "warning: --insecure: the agent on 192.0.2.1 runs any bundle it is sent" in proc.stderr
    assert proc.returncode == 2 and "error: cannot listen on 192.0.2.1" in proc.stderr


# -- signed bundles --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    pytest.importorskip("cryptography")
    d = tmp_path_factory.mktemp("keys")
    proc = edgedl("keygen", d / "fleet", timeout=60)
    assert proc.returncode == 0, proc.stderr
    proc = edgedl("keygen", d / "other", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {"fleet": (d / "fleet.key", d / "fleet.pub"), "other": (d / "other.key", d / "other.pub")}


def resign(bundle, out, key=None, archive=False):
    from edgedl.bundle import read_manifest, write_bundle

    manifest = read_manifest(bundle)
    write_bundle(out, dict(manifest, files=[f["path"] for f in manifest["files"]]), bundle, archive=archive,
                 sign_key=key)
    return out


@pytest.fixture(scope="module")
def trusting_agent(keys, tmp_path_factory):
    pool = agent_pool(tmp_path_factory.mktemp("trusting"))
    yield next(pool)(1, "--trust", keys["fleet"][1])[0]
    pool.close()


def test_an_agent_with_trust_runs_bundles_signed_by_a_trusted_key(bundle, keys, trusting_agent, tmp_path):
    short_bench(resign(bundle, tmp_path / "signed.edgedl", keys["fleet"][0]), trusting_agent)
    short_bench(resign(bundle, tmp_path / "signed.edgedl.tar", keys["fleet"][0], archive=True), trusting_agent)
    healthy(trusting_agent)


@pytest.mark.parametrize("case", ["unsigned", "unsigned-archive", "other-key", "manifest-changed",
                                  "signature-swapped"])
def test_an_agent_with_trust_refuses_other_bundles_before_unpacking(bundle, keys, trusting_agent, tmp_path, case):
    from edgedl.bench.remote import run_remote

    if case == "unsigned":
        b, why = resign(bundle, tmp_path / "b.edgedl"), "the bundle is not signed"
    elif case == "unsigned-archive":
        b, why = resign(bundle, tmp_path / "b.edgedl.tar", archive=True), "the bundle is not signed"
    elif case == "other-key":
        b, why = resign(bundle, tmp_path / "b.edgedl", keys["other"][0]), "which is not trusted here"
    elif case == "manifest-changed":  # still self-consistent (hashes verify), but not what was signed
        b = resign(bundle, tmp_path / "b.edgedl", keys["fleet"][0])
        m = json.loads((b / "manifest.json").read_text())
        m["source"]["path"] = "evil.keras"
        (b / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
        why = "signature.json signs another manifest"
    else:  # a trusted signature of one bundle copied beside another
        good = resign(bundle, tmp_path / "good.edgedl", keys["fleet"][0])
        b = resign(bundle, tmp_path / "b.edgedl", keys["other"][0])
        m = json.loads((b / "manifest.json").read_text())
        m["source"]["path"] = "other.keras"
        (b / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
        (b / "signature.json").write_bytes((good / "signature.json").read_bytes())
        why = "signature.json signs another manifest"
    with pytest.raises(InputFileError, match=rf"{why}.*checked on the device 127\.0\.0\.1"):
        run_remote(b, SHORT, options(device=trusting_agent.device, timeout=30))
    healthy(trusting_agent)
