"""The device agent: measures bundles sent by ``edgedl bench --device``, one client at a time per measurement.

Where it sits: ``edgedl serve`` runs this on the device; ``edgedl bench --device`` (through
:mod:`edgedl.bench.remote`) connects to it, uploads a bundle and calls the functions below, which run
:func:`edgedl.bench.core.measure` and the runtime here, on the device. A fleet of devices is TVM's
tracker's job: with ``tracker`` the agent registers there under a key, as
``python -m tvm.exec.rpc_server --tracker`` does, and clients ask the tracker for a free device.

The wire protocol
-----------------
A connection opens with TVM's RPC handshake (so TVM's tracker and its match keys work unchanged):
the client sends ``RPC_MAGIC``, a key length and ``client:MATCHKEY [-timeout=SECONDS]``; the agent
answers ``RPC_CODE_SUCCESS`` and ``server:KEY edgedl-agent/1`` (or ``RPC_CODE_MISMATCH``). After it,
the session speaks edgedl's own small protocol, not TVM's RPC: frames of an 8-byte little-endian
length and a body; a request is a JSON frame ``{"call": NAME, "args": {...}}`` naming one of

==========================  ==============================================================
``edgedl.agent.hello``      JSON about the agent: edgedl, Python and TVM versions, machine
``edgedl.agent.upload``     ``{"name", "bytes"}``: the agent says go (or why not), then one raw
                            frame of that many bytes is written to the session folder
``edgedl.agent.assemble``   move uploaded files into a bundle folder (uploads are flat)
``edgedl.bench.measure``    JSON request in, :func:`~edgedl.bench.core.measure`'s JSON out
``edgedl.bench.repeat``     one timed repeat on a model kept loaded in the session: raw times
``edgedl.bench.profile``    the per-operator profile of that model (``bench --profile``)
==========================  ==============================================================

and the answer is one JSON frame. Nothing else can be called: a TVM RPC server would load and run
any shared library or binary a client uploads, which no bundle signature could then guard.

What holds the agent up
-----------------------
- The listening thread only accepts; each handshake runs in its own thread with a deadline
  (``handshake_timeout``), so a client that sends nothing, or half a handshake, holds only its own
  connection. A wrong magic number, a key length out of range or a key that is not UTF-8 closes
  that connection, nothing else. At most :data:`MAX_PENDING` connections are in a handshake or
  waiting for a session at once; more are closed at once.
- Sessions run in forked processes, up to ``max_sessions`` at once; more clients wait (with their
  handshake done, up to their own time limit) until one ends. Each session's measurements take a
  device-wide lock, so concurrent sessions never time each other's inferences.
- A session is ended when the client sends nothing for ``idle_timeout`` seconds, when the time the
  client asked for (``-timeout``) is up, on a request over :data:`MAX_MESSAGE_BYTES`, on an upload
  that would take the session past ``max_upload_bytes`` or :data:`MAX_FILES` files, and on anything
  that is not the protocol. A session that crashes takes nothing else with it.
- With ``trusted`` keys, a bundle is accepted only when it is signed by one of them: checked in
  ``assemble`` on the uploaded ``manifest.json`` and ``signature.json`` before any file is put in
  place, and again by the runtime before an uploaded archive is unpacked.

Errors a user can cause come back as ``{"error": ..., "error_type": ...}`` JSON, so the client
raises the same typed :class:`~edgedl.errors.EdgeDLError` as a local run would.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import json
import logging
import math
import os
import platform
import queue
import random
import re
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgedl.errors import DeviceError, EdgeDLError, InputFileError, OptionError

log = logging.getLogger(__name__)

DEFAULT_PORT = 9090
DEFAULT_KEY = "edgedl"
FUNCTIONS = ("edgedl.agent.hello", "edgedl.agent.assemble", "edgedl.bench.measure", "edgedl.bench.repeat",
             "edgedl.bench.profile")
UPLOAD = "edgedl.agent.upload"
PROTOCOL = "edgedl-agent/1"

# TVM's RPC handshake constants (tvm.rpc.base), copied so the agent's front door needs no TVM import.
RPC_MAGIC = 0xFF271
RPC_TRACKER_MAGIC = 0x2F271
RPC_CODE_SUCCESS = RPC_MAGIC + 0
RPC_CODE_MISMATCH = RPC_MAGIC + 2

DEFAULT_MAX_SESSIONS = 4
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_UPLOAD_BYTES = 1 << 30
MAX_PENDING = 64  # connections in a handshake or waiting for a session slot
MAX_KEY_BYTES = 4096  # the handshake's key ("client:MATCHKEY -timeout=N")
MAX_MESSAGE_BYTES = 1 << 20  # one JSON request
MAX_FILES = 256  # files one session may upload
MEASURE_LOCK_WAIT_S = 600.0  # a measurement waits this long for another session's to finish
_UPLOAD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

# State of one session process (one client connection): the model ``repeat`` keeps loaded.
_session: dict = {}
# The limits and trusted keys of this agent, set before any session is forked.
_config: dict = {"trusted": None, "max_upload_bytes": DEFAULT_MAX_UPLOAD_BYTES, "lock": None}
# The pid of the process a fork is expected to come from (the agent, then each session in turn).
_parent_pid: int | None = None


@dataclass
class Agent:
    """A running agent: where it listens and, if any, the tracker and key it registered under."""

    host: str
    port: int
    tracker: str | None = None
    key: str | None = None
    max_sessions: int = DEFAULT_MAX_SESSIONS
    trusted: int = 0

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def device(self) -> str:
        """The ``--device`` value a client passes to reach this agent."""
        return f"tracker://{self.tracker}/{self.key}" if self.tracker else self.address


@dataclass
class AgentOptions:
    """How the agent listens, which bundles it runs, and its limits (``edgedl serve``'s options).

    Attributes:
        host: address to listen on; 127.0.0.1 (the default) takes connections from this machine
            only. Any other address needs ``trusted`` keys or ``insecure=True``: the agent runs the
            native code of the bundles it is sent.
        port: first port to try; the next ones up to ``port_end`` if it is taken.
        port_end: last port to try (default: ``port + 109``).
        tracker: ``"HOST:PORT"`` of a TVM tracker to register with; clients then ask for
            ``tracker://HOST:PORT/KEY``. Without it, clients connect to ``HOST:PORT`` directly.
        key: device key to register under with ``tracker``.
        trusted: Ed25519 public keys (:func:`edgedl.signing.load_public_keys`): only bundles signed
            by one of them are accepted. None accepts any bundle whose hashes verify.
        insecure: allow a non-loopback ``host`` without ``trusted``.
        max_sessions: clients served at once (their measurements take turns); more wait.
        handshake_timeout: seconds a new connection has to complete the handshake.
        idle_timeout: a session that receives nothing for this long is ended.
        max_upload_bytes: the most bytes one session may upload.

    Example:
        >>> AgentOptions(port=9090).last_port
        9199
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    port_end: int | None = None
    tracker: str | None = None
    key: str = DEFAULT_KEY
    trusted: list[bytes] | None = None
    insecure: bool = False
    max_sessions: int = DEFAULT_MAX_SESSIONS
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES

    @property
    def last_port(self) -> int:
        """The last port to try: ``port_end``, or ``port + 109``."""
        return self.port + 109 if self.port_end is None else self.port_end

    def validate(self) -> tuple[str, int] | None:
        """Refuse a bad port range, limit, exposure or tracker key; return the tracker's (host, port) or None.

        Raises:
            OptionError: what is wrong, by option name.
        """
        port, port_end = self.port, self.last_port
        if not 0 < port < 65536 or not port <= port_end < 65536:
            raise OptionError(f"--port and --port-end must satisfy 0 < port <= port-end < 65536, got {port} and "
                              f"{port_end}")
        for name, value, low, high in (("--max-sessions", self.max_sessions, 1, 1024),
                                       ("--handshake-timeout", self.handshake_timeout, 0.1, 3600),
                                       ("--idle-timeout", self.idle_timeout, 0.1, 86400),
                                       ("--max-upload-mb", self.max_upload_bytes / (1 << 20), 1 / (1 << 20), 1 << 20)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise OptionError(f"{name} must be from {low:g} to {high:g}, got {value!r}")
        check_exposure(self.host, self.trusted, self.insecure)
        tracker_addr = parse_host_port(self.tracker, "--tracker") if self.tracker else None
        if tracker_addr and (not self.key or any(c.isspace() or c in ":/" for c in self.key)):
            raise OptionError(f"--key got '{self.key}'; expected a name without spaces, ':' or '/', e.g. {DEFAULT_KEY}")
        return tracker_addr


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``[v6]:PORT`` too) -> ``(host, port)``; anything else is an OptionError."""
    host, sep, port = str(text).strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in "/ "):
        raise OptionError(f"{what} got '{text}'; expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, or a name that resolves to them)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%", 1)[0]).is_loopback for i in infos)


# ---------------------------------------------------------------------------------------------------
# Framing (both ends): an 8-byte little-endian length, then the body


class ProtocolError(ConnectionError):
    """The peer broke the protocol; the connection is closed."""


class Closed(ProtocolError):
    """The peer closed the connection."""


def _timeout(deadline: float | None, idle: float | None) -> float | None:
    if deadline is None:
        return idle
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left if idle is None else min(idle, left)


def recv_exact(sock: socket.socket, n: int, deadline: float | None = None, idle: float | None = None) -> bytes:
    """``n`` bytes from ``sock``; a TimeoutError past ``deadline`` (monotonic) or after ``idle`` seconds of
    silence (neither: the socket's own timeout)."""
    out = bytearray()
    while len(out) < n:
        if deadline is not None or idle is not None:
            sock.settimeout(_timeout(deadline, idle))
        chunk = sock.recv(min(n - len(out), 1 << 20))
        if not chunk:
            raise Closed("the connection was closed")
        out += chunk
    return bytes(out)


def send_frame(sock: socket.socket, body: bytes, deadline: float | None = None, idle: float | None = None) -> None:
    """One frame: the body's length (8 bytes, little-endian), then the body."""
    if deadline is not None or idle is not None:
        sock.settimeout(_timeout(deadline, idle))
    header = struct.pack("<Q", len(body))
    if len(body) <= 65536:
        sock.sendall(header + body)
    else:
        sock.sendall(header)
        sock.sendall(body)


def recv_length(sock: socket.socket, limit: int, deadline: float | None = None, idle: float | None = None) -> int:
    """The length of the next frame; a ProtocolError over ``limit``."""
    (n,) = struct.unpack("<Q", recv_exact(sock, 8, deadline, idle))
    if n > limit:
        raise ProtocolError(f"a message of {n} bytes (at most {limit} are accepted)")
    return n


def recv_json(sock: socket.socket, deadline: float | None = None, idle: float | None = None,
              limit: int | None = None):
    body = recv_exact(sock, recv_length(sock, limit or MAX_MESSAGE_BYTES, deadline, idle), deadline, idle)
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("a message that is not JSON") from None


def send_json(sock: socket.socket, value, deadline: float | None = None, idle: float | None = None) -> None:
    send_frame(sock, json.dumps(value).encode("utf-8"), deadline, idle)


# ---------------------------------------------------------------------------------------------------
# The remote functions (run in a session process, cwd = the session's temporary folder)


def _workpath(name: str) -> str:
    p = Path(str(name))
    if not str(name) or ".." in p.parts or p.is_absolute():
        raise InputFileError(name, "remote paths must stay inside the session folder")
    return str(Path.cwd() / p)


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
        except Exception as e:  # noqa: BLE001 - a bug on the device (or a malformed request): logged, reported
            log.exception("%s failed", func.__name__)
            return json.dumps({"error": f"{func.__name__} failed on the device with {type(e).__name__}: {e} "
                                        "(a bug in edgedl, or a request not sent by edgedl; the agent's log has "
                                        "the traceback)",
                               "error_type": "DeviceError"})

    return call


def hello(_: str = "") -> str:
    """Facts about the agent, as JSON."""
    from edgedl import __version__

    try:
        import tvm

        tvm_version = tvm.__version__
    except ImportError:
        tvm_version = None
    return json.dumps({"edgedl": __version__, "tvm": tvm_version, "python": platform.python_version(),
                       "machine": platform.machine(), "system": platform.system(), "node": platform.node(),
                       "cpus": os.cpu_count(), "pid": os.getpid(), "protocol": PROTOCOL,
                       "trusted_keys": len(_config["trusted"] or []),
                       "max_upload_bytes": _config["max_upload_bytes"]})


def _folder_usage(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            files += 1
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(dirpath, n)).st_size
    return files, size


def assemble(request: str) -> str:
    """Move flat uploads into a bundle folder: ``{"dir": "bundle", "files": {"rel/path": "upload"}}``.

    With trusted keys, the uploaded ``manifest.json`` must come with a ``signature.json`` by one of
    them; that is checked before any file is moved into place.
    """
    from edgedl.bundle import MANIFEST, SIGNATURE, check_trust

    req = json.loads(request)
    if not isinstance(req, dict) or not isinstance(req.get("dir"), str) or not isinstance(req.get("files"), dict):
        raise InputFileError("request", 'assemble takes {"dir": NAME, "files": {PATH: UPLOAD}}')
    if len(req["files"]) > MAX_FILES:
        raise InputFileError(req["dir"], f"a bundle of {len(req['files'])} files; the agent takes at most {MAX_FILES}")
    files, size = _folder_usage(Path.cwd())
    if size > _config["max_upload_bytes"] or files > MAX_FILES:
        raise InputFileError(req["dir"], f"the session folder holds {size} bytes in {files} files, over the agent's "
                                         f"limit ({_config['max_upload_bytes']} bytes, {MAX_FILES} files)")
    moves = []
    for rel, uploaded in req["files"].items():
        if not isinstance(rel, str) or not isinstance(uploaded, str):
            raise InputFileError(req["dir"], "assemble's files map bundle paths to upload names (strings)")
        src, dst = Path(_workpath(uploaded)), Path(_workpath(str(Path(req["dir"]) / rel)))
        if not src.is_file() or src.is_symlink():
            raise InputFileError(rel, f"was not uploaded (no upload named '{uploaded}')")
        moves.append((rel, src, dst))
    trusted = _config["trusted"]
    if trusted is not None:
        by_name = {rel: src for rel, src, _ in moves}
        if MANIFEST not in by_name:
            raise InputFileError(req["dir"], f"no {MANIFEST} was uploaded")
        signature = by_name[SIGNATURE].read_bytes() if SIGNATURE in by_name else None
        check_trust(by_name[MANIFEST].read_bytes(), signature, trusted, req["dir"])
    root = Path(_workpath(req["dir"]))
    for _, src, dst in moves:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    return json.dumps({"dir": str(root)})


def _samples(req: dict):
    """(x, y) of the uploaded samples: x one array, or a list of them for a bundle with several inputs."""
    from edgedl.bench.core import load_samples

    if not req.get("samples"):
        return None, None
    return load_samples(_workpath(req["samples"]))


@contextlib.contextmanager
def _measuring():
    """Hold the device-wide measurement lock (an flock, released even if the session dies)."""
    import fcntl

    path = _config.get("lock")
    if not path:
        yield
        return
    with open(path, "a+b") as f:
        deadline = time.monotonic() + MEASURE_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DeviceError(f"the device has been measuring for another client for over "
                                      f"{MEASURE_LOCK_WAIT_S:g} s; try again later") from None
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _int(req: dict, name: str, low: int, high: int) -> int:
    v = req.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise OptionError(f"the request's '{name}' must be an integer from {low} to {high}, got {v!r}")
    return v


def measure(request: str) -> str:
    """:func:`edgedl.bench.core.measure` on an uploaded bundle: JSON request in, JSON result out.

    The request holds ``bundle`` and ``samples`` (paths in the session folder), ``warmup``,
    ``runs``, ``repeats`` and ``threads``. The bundle's hashes (and, with trusted keys, its
    signature) are verified here, on the device.
    """
    from edgedl import _io
    from edgedl.bench.core import measure as run
    from edgedl.bench.options import BenchOptions

    req = json.loads(request)
    x, y = _samples(req)
    options = BenchOptions(warmup=_int(req, "warmup", 0, 10**7), runs=_int(req, "runs", 1, 10**8),
                           repeats=_int(req, "repeats", 1, 10**5), threads=_int(req, "threads", 1, 1024))
    with _measuring():
        result = run(_workpath(req["bundle"]), options, x=x, y=y, trusted=_config["trusted"])
    return json.dumps(result, default=_io._json_default)


def repeat(request: str) -> str:
    """One timed repeat: ``runs`` invocations of a model kept loaded for the session.

    The first call of a session loads the bundle (verifying it) and runs ``warmup`` untimed
    invocations; every call returns the raw per-inference times in seconds, so the client computes
    the same statistics as a local run over all repeats, and keeps finished repeats if the device
    is lost later.
    """
    from edgedl.bench.core import peak_rss_bytes, rss_bytes
    from edgedl.bench.timing import time_invocations

    req = json.loads(request)
    threads, runs = _int(req, "threads", 1, 1024), _int(req, "runs", 1, 10**8)
    with _measuring():
        # warm-up once per session: the model stays loaded and warm between repeats
        warmup = _int(req, "warmup", 0, 10**7) if _load_once(req, threads) else 0
        (times,) = time_invocations(_session["model"].engine, _session["raw"], warmup, runs).repeats
    return json.dumps({"times_s": times.tolist(), "rss_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes()})


def _load_once(req: dict, threads: int) -> bool:
    """Load the request's bundle into the session (verifying it) unless it is loaded already, with the
    raw input the timing loop runs; True when it was loaded now."""
    import edgedl.runtime as rt
    from edgedl.bench.core import raw_sample

    key = (req["bundle"], threads)
    if _session.get("key") == key:
        return False
    _session.clear()
    model = rt.load(_workpath(req["bundle"]), num_threads=threads, trusted=_config["trusted"])
    x, _ = _samples(req)
    _session.update(key=key, model=model, raw=raw_sample(model, x))
    return True


PROFILE_FIELDS = ("bundle", "samples", "threads", "warmup", "runs")


def profile(request: str) -> str:
    """The per-operator profile (:func:`edgedl.bench.profile.profile_model`) of the session's model,
    loaded (and verified) as ``repeat`` loads it, on the input the timing loop runs.

    The request holds ``bundle``, ``samples``, ``threads``, ``warmup`` and ``runs``, nothing else;
    the answer is the ``profile`` record of a local ``bench --profile``, measured here, on the device.
    """
    from edgedl.bench.profile import PROFILE_WARMUP, profile_model

    req = json.loads(request)
    if not isinstance(req, dict):
        raise OptionError("edgedl.bench.profile takes a JSON object")
    unknown = sorted(str(k)[:40] for k in req if k not in PROFILE_FIELDS)
    if unknown:
        raise OptionError(f"edgedl.bench.profile takes {', '.join(PROFILE_FIELDS)}; got also {', '.join(unknown)}")
    threads, runs = _int(req, "threads", 1, 1024), _int(req, "runs", 1, 10**8)
    warmup = _int(req, "warmup", 0, 10**7)
    with _measuring():
        _load_once(req, threads)
        record = profile_model(_session["model"], _session["raw"], warmup=min(warmup, PROFILE_WARMUP), runs=runs,
                               threads=threads)
    return json.dumps(record)


_FUNCTIONS = dict(zip(FUNCTIONS, (hello, assemble, measure, repeat, profile)))


# ---------------------------------------------------------------------------------------------------
# One session (a forked process; cwd = its folder)


class _SessionEnd(Exception):
    """Why a session ends early: logged as one line."""


def _session_loop(conn: socket.socket, addr: str, idle: float) -> None:
    """Answer requests until the client says bye, goes away, idles or breaks the protocol."""
    functions = {name: _guarded(func) for name, func in _FUNCTIONS.items()}
    uploaded = {"bytes": 0, "files": 0}
    cap = _config["max_upload_bytes"]
    while True:
        try:
            req = recv_json(conn, idle=idle)
        except Closed:
            return
        except ProtocolError as e:
            raise _SessionEnd(str(e)) from None
        except TimeoutError:
            raise _SessionEnd(f"nothing received for {idle:g} s (--idle-timeout)") from None
        if not isinstance(req, dict) or not isinstance(req.get("call"), str) or not isinstance(req.get("args", {}),
                                                                                                 dict):
            raise _SessionEnd('a request that is not {"call": NAME, "args": {...}}')
        name, args = req["call"], req.get("args", {})
        if name == "bye":
            return
        if name == UPLOAD:
            _upload(conn, args, uploaded, cap, idle)
            continue
        if name not in functions:
            send_json(conn, {"error": f"the agent has no function '{name[:100]}' (it offers {', '.join(FUNCTIONS)})",
                             "error_type": "DeviceError"}, idle=idle)
            raise _SessionEnd(f"a call of an unknown function '{name[:100]}'")
        send_frame(conn, functions[name](json.dumps(args)).encode("utf-8"), idle=idle)


def _upload(conn: socket.socket, args: dict, uploaded: dict, cap: int, idle: float) -> None:
    name, size = args.get("name"), args.get("bytes")
    refusal = None
    if not isinstance(name, str) or not _UPLOAD_NAME.match(name):
        refusal = InputFileError(str(name)[:100], "upload names are plain file names (letters, digits, '_', '.', '-')")
    elif isinstance(size, bool) or not isinstance(size, int) or size < 0:
        refusal = InputFileError(name, f"an upload's size must be a non-negative integer, got {size!r}")
    elif uploaded["files"] + 1 > MAX_FILES:
        refusal = InputFileError(name, f"one file too many: a session may upload at most {MAX_FILES} files")
    elif uploaded["bytes"] + size > cap:
        refusal = InputFileError(name, f"uploading '{name}' ({size} bytes) would take the session to "
                                       f"{uploaded['bytes'] + size} bytes, over the agent's limit of {cap} "
                                       "(edgedl serve --max-upload-mb)")
    if refusal is not None:
        send_json(conn, json.loads(_error(refusal)), idle=idle)
        raise _SessionEnd(f"refused an upload: {refusal}")
    send_json(conn, {"ok": True}, idle=idle)
    n = recv_length(conn, size, idle=idle)
    if n != size:
        raise _SessionEnd(f"an upload of {n} bytes after announcing {size}")
    path = _workpath(name)
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = recv_exact(conn, min(left, 1 << 20), idle=idle)
            f.write(chunk)
            left -= len(chunk)
    uploaded["bytes"] += size
    uploaded["files"] += 1
    send_json(conn, {"name": name, "bytes": size}, idle=idle)


def _run_session(conn: socket.socket, addr: str, folder: str, idle: float) -> int:
    """The body of a session process; returns its exit status."""
    try:
        os.chdir(folder)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _session_loop(conn, addr, idle)
        return 0
    except _SessionEnd as e:
        log.warning("ended the session from %s: %s", addr, e)
        return 0
    except (OSError, ProtocolError) as e:
        log.info("the session from %s ended: %s", addr, e)
        return 0
    except BaseException:  # noqa: BLE001 - logged; only this session ends
        log.exception("the session from %s failed", addr)
        return 1
    finally:
        with contextlib.suppress(OSError):
            conn.close()


# ---------------------------------------------------------------------------------------------------
# The server


def _after_fork() -> None:
    """Runs in every process forked from the agent (its sessions), right after the fork."""
    global _parent_pid
    expected, _parent_pid = _parent_pid, os.getpid()
    if expected is None:
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):
            pass
    # A session dies with its agent (Linux): killing the agent must not leave a session measuring.
    # (The signal follows the *thread* that forked: sessions are forked by the agent's main thread.)
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
    """A listening socket on the first free port in ``port..port_end``."""
    try:
        family = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
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
        sock.listen(128)
        return sock
    sock.close()
    raise OptionError(f"no free port in {port}..{port_end} on {host}; pick another range with --port and --port-end, "
                      "or stop the agent that holds them")


def _close(sock) -> None:
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class _Live:
    pid: int
    conn: socket.socket
    addr: str
    folder: str
    started: float
    limit: float | None


@dataclass
class _Server:
    """The accept thread, one thread per handshake, the tracker thread; sessions forked by the main thread."""

    sock: socket.socket
    port: int
    key: str
    tracker_addr: tuple[str, int] | None
    options: AgentOptions
    stop: threading.Event
    home: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: queue.Queue = field(default_factory=queue.Queue)
    sockets: set = field(default_factory=set)  # every socket a forked session must close
    sessions: dict = field(default_factory=dict)  # pid -> _Live
    pending: int = 0  # connections in a handshake or waiting for a slot
    active: int = 0  # slots taken (handshake done, session forked or about to be)
    matchkey: str | None = None  # the key the tracker hands out (tracker mode)
    tracker_sock: socket.socket | None = None

    # -- accepting --------------------------------------------------------------------------------

    def accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                readable, _, _ = select.select([self.sock], [], [], 0.2)
                if not readable:
                    continue
                conn, addr = self.sock.accept()
            except OSError as e:
                if self.stop.is_set():
                    return
                log.warning("accept failed (%s); going on", e)
                self.stop.wait(0.1)
                continue
            where = f"{addr[0]}:{addr[1]}"
            with self.lock:
                if self.pending >= MAX_PENDING:
                    full = True
                else:
                    full = False
                    self.pending += 1
                    self.sockets.add(conn)
            if full:
                log.warning("refused %s: %d connections are already waiting", where, MAX_PENDING)
                _close(conn)
                continue
            threading.Thread(target=self.handshake, args=(conn, where), daemon=True,
                             name=f"edgedl-handshake-{where}").start()

    def _drop(self, conn, where: str, why: str | None) -> None:
        if why:
            log.info("closed the connection from %s: %s", where, why)
        with self.lock:
            self.sockets.discard(conn)
        _close(conn)

    def handshake(self, conn: socket.socket, where: str) -> None:
        """TVM's RPC handshake with a deadline; then wait for a session slot; then hand over to the main thread."""
        handed = False
        try:
            deadline = time.monotonic() + self.options.handshake_timeout
            try:
                (magic,) = struct.unpack("<i", recv_exact(conn, 4, deadline))
                if magic != RPC_MAGIC:
                    return self._drop(conn, where, f"not an RPC client (magic {magic:#x})")
                (size,) = struct.unpack("<i", recv_exact(conn, 4, deadline))
                if not 0 < size <= MAX_KEY_BYTES:
                    return self._drop(conn, where, f"a handshake key of {size} bytes")
                text = recv_exact(conn, size, deadline).decode("utf-8")
            except TimeoutError:
                return self._drop(conn, where, f"no handshake within {self.options.handshake_timeout:g} s")
            except (OSError, UnicodeDecodeError, ProtocolError) as e:
                return self._drop(conn, where, f"a broken handshake ({e})")
            parts = text.split()
            if not parts or not self._key_matches(parts[0]):
                log.warning("mismatched key from %s", where)
                with contextlib.suppress(OSError):
                    conn.settimeout(1)
                    conn.sendall(struct.pack("<i", RPC_CODE_MISMATCH))
                return self._drop(conn, where, None)
            limit = None
            for opt in parts[1:]:
                if opt.startswith("-timeout="):
                    with contextlib.suppress(ValueError):
                        t = float(opt[len("-timeout="):])
                        limit = t if math.isfinite(t) and t > 0 else None
            if not self._wait_for_slot(conn, where, limit):
                return
            try:
                server_key = f"server:{self.key or DEFAULT_KEY} {PROTOCOL}".encode()
                conn.settimeout(self.options.handshake_timeout)
                conn.sendall(struct.pack("<i", RPC_CODE_SUCCESS) + struct.pack("<i", len(server_key)) + server_key)
            except OSError as e:
                self._release_slot()
                return self._drop(conn, where, f"gone before its session started ({e})")
            self.ready.put((conn, where, limit))
            handed = True
        finally:
            with self.lock:
                self.pending -= 1
            if not handed:
                self._drop(conn, where, None)

    def _key_matches(self, client_key: str) -> bool:
        if self.tracker_addr is None:
            return client_key == "client:"
        with self.lock:
            if self.matchkey is not None and client_key == "client:" + self.matchkey:
                self.matchkey = None  # one key, one session; the tracker thread offers a new one
                self.active += 1
                return True
        return False

    def _wait_for_slot(self, conn: socket.socket, where: str, limit: float | None) -> bool:
        """Take a session slot (tracker mode took it with the key); False when the client left first."""
        if self.tracker_addr is not None:
            return True
        deadline = time.monotonic() + (limit or 3600.0)
        while not self.stop.is_set() and time.monotonic() < deadline:
            with self.lock:
                if self.active < self.options.max_sessions:
                    self.active += 1
                    return True
            readable, _, _ = select.select([conn], [], [], 0.2)
            if readable:  # a waiting client sends nothing: this is it leaving (or garbage)
                self._drop(conn, where, "left (or sent data) while waiting for a session")
                return False
        self._drop(conn, where, "no session slot became free in its time")
        return False

    def _release_slot(self) -> None:
        with self.lock:
            self.active -= 1

    # -- sessions (main thread) -------------------------------------------------------------------

    def start_session(self, conn: socket.socket, where: str, limit: float | None) -> None:
        folder = tempfile.mkdtemp(prefix="edgedl-session-")
        try:
            pid = os.fork()
        except OSError as e:
            log.warning("cannot start a session for %s (%s)", where, e)
            self._release_slot()
            self._drop(conn, where, None)
            shutil.rmtree(folder, ignore_errors=True)
            return
        if pid == 0:  # the session process
            code = 1
            try:
                for s in list(self.sockets):
                    if s is not conn:
                        _close(s)
                _close(self.sock)
                if self.tracker_sock is not None:
                    _close(self.tracker_sock)
                code = _run_session(conn, where, folder, self.options.idle_timeout)
            finally:
                os._exit(code)
        log.info("session %d for %s in %s", pid, where, folder)
        self.sessions[pid] = _Live(pid, conn, where, folder, time.monotonic(), limit)

    def reap(self) -> None:
        now = time.monotonic()
        for pid, live in list(self.sessions.items()):
            if live.limit is not None and now - live.started > live.limit:
                log.warning("ended the session from %s: its %g s are up (the time its client asked for)",
                            live.addr, live.limit)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                live.limit = None
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            if os.WIFSIGNALED(status) or (os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0):
                how = (f"killed by {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
                       else f"exit status {os.WEXITSTATUS(status)}")
                (log.info if self.stop.is_set() else log.warning)(
                    "a session ended abnormally (%s, client %s); the agent goes on serving", how, live.addr)
            del self.sessions[pid]
            self._drop(live.conn, live.addr, None)
            shutil.rmtree(live.folder, ignore_errors=True)
            self._release_slot()

    def stop_sessions(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # ask, then insist
            for pid in list(self.sessions):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while self.sessions and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.05)
        while True:
            try:
                conn, where, _ = self.ready.get_nowait()
            except queue.Empty:
                break
            self._drop(conn, where, None)

    # -- the tracker --------------------------------------------------------------------------------

    def tracker_loop(self, ping_period: float = 1.0, unmatched_timeout: float = 6.0) -> None:
        """Register with TVM's tracker; offer one match key while the agent has no session.

        The tracker hands a key to one client; a key handed out but not used within
        ``unmatched_timeout`` is replaced (as TVM's own server does).
        """
        while not self.stop.is_set():
            try:
                self._tracker_session(ping_period, unmatched_timeout)
            except (OSError, ValueError, ProtocolError) as e:
                if self.stop.is_set():
                    return
                log.warning("lost the TVM tracker at %s:%d (%s); reconnecting", *self.tracker_addr, e)
                with self.lock:
                    self.matchkey = None
                self.stop.wait(2.0)
            finally:
                if self.tracker_sock is not None:
                    _close(self.tracker_sock)
                    with self.lock:
                        self.sockets.discard(self.tracker_sock)
                    self.tracker_sock = None

    def _tracker_call(self, value):
        sock = self.tracker_sock
        data = json.dumps(value).encode()
        sock.sendall(struct.pack("<i", len(data)) + data)
        (size,) = struct.unpack("<i", recv_exact(sock, 4))
        if not 0 <= size <= MAX_MESSAGE_BYTES:
            raise ProtocolError(f"a tracker message of {size} bytes")
        return json.loads(recv_exact(sock, size).decode())

    def _tracker_session(self, ping_period: float, unmatched_timeout: float) -> None:
        sock = socket.create_connection(self.tracker_addr, timeout=10)
        with self.lock:
            self.sockets.add(sock)
        self.tracker_sock = sock
        sock.settimeout(10)
        sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
        (magic,) = struct.unpack("<i", recv_exact(sock, 4))
        if magic != RPC_TRACKER_MAGIC:
            raise ProtocolError(f"{self.tracker_addr[0]}:{self.tracker_addr[1]} is not a TVM tracker")
        info = {"key": "server:" + self.key, "addr": [None, self.port]}
        if self._tracker_call([5, info]) != 0:  # UPDATE_INFO
            raise ProtocolError("the tracker refused our registration")
        offered, unmatched = None, 0.0
        while not self.stop.is_set():
            with self.lock:
                if self.matchkey is None and self.active == 0:
                    self.matchkey = f"{self.key}:{random.random()}"
                key = self.matchkey
            if key is not None and key != offered:
                if self._tracker_call([3, self.key, [self.port, key], None]) != 0:  # PUT
                    raise ProtocolError("the tracker refused our match key")
                offered, unmatched = key, 0.0
            if self.stop.wait(ping_period):
                return
            pending = self._tracker_call([7])  # GET_PENDING_MATCHKEYS
            with self.lock:
                if self.matchkey is not None and self.matchkey == offered and offered not in pending:
                    unmatched += ping_period  # handed to a client that has not connected yet
                    if unmatched > unmatched_timeout:
                        log.info("the key the tracker handed out was not used; offering a new one")
                        self.matchkey = None
                else:
                    unmatched = 0.0


def check_exposure(host: str, trusted, insecure: bool) -> bool:
    """Refuse a non-loopback ``host`` unless bundles must be signed or the user said ``insecure``.

    Returns True when the agent will listen beyond this machine without trusted keys (warn then).
    """
    if is_loopback(host) or trusted:
        return False
    if not insecure:
        raise OptionError(f"--host {host} takes connections from other machines, and anyone who reaches the port can "
                          "run native code on this one; pass --trust KEY.pub to accept only bundles signed by your key "
                          "(edgedl keygen), or --insecure on a network you trust")
    return True


def _import_before_forking(trusted) -> None:
    """Import what a session needs before any is forked, so every session starts warm."""
    import edgedl.bench.core  # noqa: F401
    import edgedl.bundle  # noqa: F401
    import edgedl.runtime  # noqa: F401

    with contextlib.suppress(ImportError):
        import tvm  # noqa: F401 - warm for TVM bundles

    if trusted is not None:
        import edgedl.signing  # noqa: F401


def serve(options: AgentOptions | None = None, ready=None) -> None:
    """Run the device agent until SIGINT or SIGTERM.

    Args:
        options: address, ports, tracker and key, trusted keys and limits (:class:`AgentOptions`;
            default: AgentOptions(), this machine only on port 9090 or the next free one).
        ready: called with the :class:`Agent` once it listens (the CLI prints the address).

    Raises:
        OptionError: a bad address, key, port range or limit, or a non-loopback host without
            ``trusted`` or ``insecure``. DeviceError: the tracker cannot be reached.

    Example:
        >>> from edgedl.serve import AgentOptions, serve
        >>> serve(AgentOptions(port=9090), ready=lambda agent: print("listening on", agent.address))  # doctest: +SKIP
    """
    global _parent_pid
    options = options or AgentOptions()
    tracker_addr = options.validate()
    if tracker_addr:
        _check_tracker(tracker_addr)
    if not hasattr(os, "fork"):
        raise DeviceError("the agent forks a process per session, which this platform cannot do (run it on Linux "
                          "or macOS)")
    trusted = options.trusted
    _import_before_forking(trusted)
    sock = _bind(options.host, options.port, options.last_port)
    state_dir = tempfile.mkdtemp(prefix="edgedl-agent-")
    _config.update(trusted=list(trusted) if trusted is not None else None,
                   max_upload_bytes=int(options.max_upload_bytes), lock=os.path.join(state_dir, "measure.lock"))
    if _parent_pid is None:
        os.register_at_fork(after_in_child=_after_fork)
    _parent_pid = os.getpid()

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    key = options.key if tracker_addr else None
    server = _Server(sock, sock.getsockname()[1], key or "", tracker_addr, options, stop, os.getcwd())
    server.sockets.add(sock)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads = []
    try:
        threads.append(threading.Thread(target=server.accept_loop, daemon=True, name="edgedl-agent-accept"))
        if tracker_addr:
            threads.append(threading.Thread(target=server.tracker_loop, daemon=True, name="edgedl-agent-tracker"))
        for t in threads:
            t.start()
        agent = Agent(options.host, server.port, f"{tracker_addr[0]}:{tracker_addr[1]}" if tracker_addr else None,
                      key, options.max_sessions, len(trusted or []))
        log.info("agent listening on %s (%s)", agent.address, agent.device)
        if ready:
            ready(agent)
        while not stop.is_set():
            try:
                conn, where, limit = server.ready.get(timeout=0.1)
            except queue.Empty:
                pass
            else:
                server.start_session(conn, where, limit)
            server.reap()
    finally:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop_sessions()
        for t in threads:
            t.join(5)
        _close(sock)
        shutil.rmtree(state_dir, ignore_errors=True)
        _parent_pid = None
    log.info("agent stopped")
