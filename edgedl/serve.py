"""The device agent: a TVM RPC server that also offers edgedl's measurement as remote functions.

Where it sits: ``edgedl serve`` runs this on the device; ``edgedl bench --device`` (through
:mod:`edgedl.bench.remote`) connects to it, uploads a bundle and calls the functions below, which run
:func:`edgedl.bench.core.measure` and the runtime here, on the device. A fleet of devices is TVM's
tracker's job: with ``tracker`` the agent registers there under a key, exactly like
``python -m tvm.exec.rpc_server --tracker``.

The RPC machinery is TVM's own (``tvm.rpc.server``): the agent listens in this process and forks one
session process per connection (TVM's server runs one session at a time, so one agent is one
device). The edgedl functions are registered as global packed functions *before* the server
starts, and sessions are forked, so every session has them:

==========================  ==============================================================
``edgedl.agent.hello``      JSON about the agent: edgedl, Python and TVM versions, machine
``edgedl.agent.assemble``   move uploaded files into a bundle folder (uploads are flat)
``edgedl.bench.measure``    JSON request in, :func:`~edgedl.bench.core.measure`'s JSON out
``edgedl.bench.repeat``     one timed repeat on a model kept loaded in the session: raw times
==========================  ==============================================================

Errors a user can cause come back as ``{"error": ..., "error_type": ...}`` JSON, so the client
raises the same typed :class:`~edgedl.errors.EdgeDLError` as a local run would.

Like any TVM RPC server, the agent runs what it is sent: it listens on 127.0.0.1 unless told
otherwise, and belongs on trusted networks only.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import platform
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgedl.errors import DeviceError, EdgeDLError, InputFileError, MissingDependencyError, OptionError

log = logging.getLogger(__name__)

DEFAULT_PORT = 9090
DEFAULT_KEY = "edgedl"
FUNCTIONS = ("edgedl.agent.hello", "edgedl.agent.assemble", "edgedl.bench.measure", "edgedl.bench.repeat")

# State of one session process (one client connection): the model ``repeat`` keeps loaded.
_session: dict = {}
# The pid of the process a fork is expected to come from (the agent, then each session in turn).
_parent_pid: int | None = None


@dataclass
class Agent:
    """A running agent: where it listens and, if any, the tracker and key it registered under."""

    host: str
    port: int
    tracker: str | None = None
    key: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def device(self) -> str:
        """The ``--device`` value a client passes to reach this agent."""
        return f"tracker://{self.tracker}/{self.key}" if self.tracker else self.address


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``[v6]:PORT`` too) -> ``(host, port)``; anything else is an OptionError."""
    host, sep, port = str(text).strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in "/ "):
        raise OptionError(f"{what} got '{text}'; expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


# ---------------------------------------------------------------------------------------------------
# The remote functions (run in a session process, cwd = the session's temporary folder)


def _workpath(name: str) -> str:
    import tvm_ffi

    if ".." in Path(name).parts or Path(name).is_absolute():
        raise InputFileError(name, "remote paths must stay inside the session folder")
    return tvm_ffi.get_global_func("tvm.rpc.server.workpath")(name)


def _error(e: EdgeDLError) -> str:
    out = {"error": str(e), "error_type": type(e).__name__}
    if isinstance(e, InputFileError):
        out["path"] = e.path
    return json.dumps(out)


def _guarded(func):
    """Return a remote function's errors as JSON: typed for user errors, a DeviceError for bugs."""

    @functools.wraps(func)
    def call(request: str) -> str:
        try:
            return func(request)
        except EdgeDLError as e:
            return _error(e)
        except Exception as e:  # noqa: BLE001 - a bug on the device: logged here, reported there
            log.exception("%s failed", func.__name__)
            return json.dumps({"error": f"{func.__name__} failed on the device with {type(e).__name__}: {e} "
                                        "(a bug in edgedl; the agent's log has the traceback)",
                               "error_type": "DeviceError"})

    return call


def hello(_: str = "") -> str:
    """Facts about the agent, as JSON (also proves the edgedl functions are there)."""
    import tvm

    from edgedl import __version__

    return json.dumps({"edgedl": __version__, "tvm": tvm.__version__, "python": platform.python_version(),
                       "machine": platform.machine(), "system": platform.system(), "node": platform.node(),
                       "cpus": os.cpu_count(), "pid": os.getpid()})


def assemble(request: str) -> str:
    """Move flat uploads into a bundle folder: ``{"dir": "bundle", "files": {"rel/path": "upload"}}``."""
    req = json.loads(request)
    root = Path(_workpath(req["dir"]))
    for rel, uploaded in req["files"].items():
        dst = Path(_workpath(str(Path(req["dir"]) / rel)))
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(_workpath(uploaded), dst)
    return json.dumps({"dir": str(root)})


def _samples(req: dict):
    import numpy as np

    if not req.get("samples"):
        return None, None
    data = np.load(_workpath(req["samples"]))
    return data["x"], (data["y"] if "y" in data.files else None)


def measure(request: str) -> str:
    """:func:`edgedl.bench.core.measure` on an uploaded bundle: JSON request in, JSON result out.

    The request holds ``bundle`` and ``samples`` (paths in the session folder), ``warmup``,
    ``runs``, ``repeats`` and ``threads``. The bundle's hashes are verified here, on the device.
    """
    from edgedl import _io
    from edgedl.bench.core import measure as run

    req = json.loads(request)
    x, y = _samples(req)
    result = run(_workpath(req["bundle"]), warmup=req["warmup"], runs=req["runs"], repeats=req["repeats"],
                 num_threads=req["threads"], x=x, y=y)
    return json.dumps(result, default=_io._json_default)


def repeat(request: str) -> str:
    """One timed repeat: ``runs`` invocations of a model kept loaded for the session.

    The first call of a session loads the bundle (verifying it) and runs ``warmup`` untimed
    invocations; every call returns the raw per-inference times in seconds, so the client computes
    the same statistics as a local run over all repeats, and keeps finished repeats if the device
    is lost later.
    """
    import numpy as np

    import edgedl.runtime as rt
    from edgedl.bench.core import peak_rss_bytes, rss_bytes
    from edgedl.runtime.quant import quantize

    req = json.loads(request)
    key = (req["bundle"], req["threads"])
    if _session.get("key") != key:
        _session.clear()
        model = rt.load(_workpath(req["bundle"]), num_threads=req["threads"])
        x, _ = _samples(req)
        sample = x[:1] if x is not None and len(x) else np.zeros(model.input_shape, np.float32)
        raw = quantize(sample.reshape(model.input_shape), model.inputs[0])
        invoke = getattr(model.engine, "invoke_fast", model.engine.invoke)
        for _ in range(req["warmup"]):
            invoke(raw)
        _session.update(key=key, model=model, raw=raw, invoke=invoke)
    invoke, raw = _session["invoke"], _session["raw"]
    runs = int(req["runs"])
    times = np.empty(runs)
    clock = time.perf_counter
    for i in range(runs):
        t = clock()
        invoke(raw)
        times[i] = clock() - t
    return json.dumps({"times_s": times.tolist(), "rss_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes()})


def register() -> None:
    """Register the edgedl functions as global packed functions of this process (idempotent)."""
    import tvm_ffi

    for name, func in zip(FUNCTIONS, (hello, assemble, measure, repeat)):
        tvm_ffi.register_global_func(name, _guarded(func), override=True)


# ---------------------------------------------------------------------------------------------------
# The server


def _after_fork() -> None:
    """Runs in every process forked from the agent (its sessions), right after the fork."""
    global _parent_pid
    expected, _parent_pid = _parent_pid, os.getpid()
    # Default signal handling: a Python handler would never run while the session sits in TVM's C++
    # server loop, and TVM ends an expired session with SIGTERM.
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):
            pass
    # A session dies with its agent (Linux): killing the agent must not leave a session measuring.
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != expected:  # the agent died before the line above
        os._exit(1)


def _check_tracker(addr: tuple[str, int]) -> None:
    try:
        socket.create_connection(addr, timeout=5).close()
    except OSError as e:
        raise DeviceError(f"cannot reach the TVM tracker at {addr[0]}:{addr[1]} ({e.strerror or e}); start one "
                          f"with: python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {addr[1]}") from None


def _bind(host: str, port: int, port_end: int) -> socket.socket:
    """A listening socket on the first free port in ``port..port_end`` (as TVM's server binds)."""
    from tvm.rpc import base

    try:
        sock = socket.socket(base.get_addr_family((host, port)), socket.SOCK_STREAM)
    except OSError as e:
        raise OptionError(f"cannot listen on {host}: {e}") from None
    if sys.platform != "win32":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for candidate in range(port, port_end + 1):
        try:
            sock.bind((host, candidate))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                continue
            sock.close()
            raise OptionError(f"cannot listen on {host}:{candidate} ({e.strerror or e}); --host must be an address of "
                              "this machine (127.0.0.1 for this machine only, 0.0.0.0 for every interface)") from None
        sock.listen(8)  # clients of a busy agent wait here
        return sock
    sock.close()
    raise OptionError(f"no free port in {port}..{port_end} on {host}; pick another range with --port and --port-end, "
                      "or stop the agent that holds them")


class _StoppableSocket:
    """The listening socket as TVM's loop sees it: once the agent stops, ``accept`` ends the loop."""

    def __init__(self, sock: socket.socket, stop: threading.Event):
        self._sock, self._stop = sock, stop

    def fileno(self) -> int:
        return self._sock.fileno()

    def accept(self):
        conn, addr = self._sock.accept()
        if self._stop.is_set():
            conn.close()
            raise RuntimeError("the agent is stopping")  # TVM's loop lets RuntimeError through
        return conn, addr


def _wake(sock: socket.socket) -> None:
    """Connect to our own socket so a loop blocked in ``accept`` sees the stop."""
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        pass


def _serve_forever(sock: socket.socket, tracker_addr, key: str, stop: threading.Event) -> None:
    """TVM's listening loop, started again whenever a session ends abnormally.

    TVM's loop (``tvm.rpc.server._listen_loop``, what ``tvm.rpc.Server`` runs) accepts a connection,
    registers with the tracker, forks a session and waits for it; it raises when a session process
    crashed or was killed. One bad session must not take the device down, so the loop is entered
    again on the same socket: clients waiting in its backlog are not lost.
    """
    from tvm.rpc.server import _listen_loop

    port = sock.getsockname()[1]
    home = os.getcwd()
    while not stop.is_set():
        started = time.monotonic()
        try:
            _listen_loop(_StoppableSocket(sock, stop), port, key, tracker_addr, None, None)
        except Exception as e:  # noqa: BLE001 - logged; the agent goes on serving
            if stop.is_set():
                return
            log.warning("a session ended abnormally (%s: %s); serving again on port %d", type(e).__name__, e, port)
            os.chdir(home)  # TVM left us in the failed session's folder, which it may remove
            stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))  # no busy loop on a lasting failure


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, port_end: int | None = None,
          tracker: str | None = None, key: str = DEFAULT_KEY, ready=None) -> None:
    """Run the device agent until SIGINT or SIGTERM.

    Args:
        host: address to listen on; 127.0.0.1 (the default) takes connections from this machine
            only, 0.0.0.0 from the network (the agent runs what it is sent: trusted networks only).
        port: first port to try; the next ones up to ``port_end`` if it is taken.
        port_end: last port to try (default: ``port + 109``).
        tracker: ``"HOST:PORT"`` of a TVM tracker to register with; clients then ask for
            ``tracker://HOST:PORT/KEY``. Without it, clients connect to ``HOST:PORT`` directly.
        key: device key to register under with ``tracker``.
        ready: called with the :class:`Agent` once it listens (the CLI prints the address).

    Raises:
        OptionError: a bad address, key or port range. DeviceError: the tracker cannot be reached.

    Example:
        >>> from edgedl.serve import serve
        >>> serve(port=9090, ready=lambda agent: print("listening on", agent.address))  # doctest: +SKIP
    """
    import multiprocessing

    global _parent_pid
    port_end = port + 109 if port_end is None else port_end
    if not 0 < port < 65536 or not port <= port_end < 65536:
        raise OptionError(f"--port and --port-end must satisfy 0 < port <= port-end < 65536, got {port} and "
                          f"{port_end}")
    tracker_addr = parse_host_port(tracker, "--tracker") if tracker else None
    if tracker_addr and (not key or any(c.isspace() or c in ":/" for c in key)):
        raise OptionError(f"--key got '{key}'; expected a name without spaces, ':' or '/', e.g. {DEFAULT_KEY}")
    if tracker_addr:
        _check_tracker(tracker_addr)

    try:
        import tvm.rpc.server  # noqa: F401
    except ImportError:
        raise MissingDependencyError("apache-tvm", "tvm") from None
    # Load what a session needs before forking, so every session starts warm.
    import edgedl.bench.core  # noqa: F401
    import edgedl.runtime  # noqa: F401

    register()
    # Sessions must be forked from this process to inherit the registered functions (TVM's server
    # starts them with multiprocessing's default context, which is not fork everywhere).
    if hasattr(os, "fork"):
        multiprocessing.set_start_method("fork", force=True)
        if _parent_pid is None:
            os.register_at_fork(after_in_child=_after_fork)
        _parent_pid = os.getpid()

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    sock = _bind(host, port, port_end)
    # TVM's server logs each session at INFO on its own logger; quiet unless -v.
    logging.getLogger("RPCServer").setLevel(logging.INFO if log.isEnabledFor(logging.INFO) else logging.WARNING)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = None
    try:
        # Without a tracker the match key is empty, so a plain HOST:PORT client is accepted.
        server = threading.Thread(target=_serve_forever, args=(sock, tracker_addr, key if tracker_addr else "", stop),
                                  daemon=True, name="edgedl-agent")
        server.start()
        agent = Agent(host, sock.getsockname()[1], f"{tracker_addr[0]}:{tracker_addr[1]}" if tracker_addr else None,
                      key if tracker_addr else None)
        log.info("agent listening on %s (%s)", agent.address, agent.device)
        if ready:
            ready(agent)
        while not stop.wait(0.2):
            pass
    finally:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in multiprocessing.active_children():  # a session still running
            child.terminate()
            child.join(5)
        if server is not None:
            _wake(sock)
            server.join(5)
        sock.close()
    log.info("agent stopped")
