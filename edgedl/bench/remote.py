"""Benchmarks on a remote device: the client side of ``edgedl bench --device``.

Where it sits: :func:`edgedl.bench.harness.bench` calls :func:`run_remote` when a device is named.
The device runs ``edgedl serve`` (:mod:`edgedl.serve`), which offers edgedl's measurement and
nothing else. A connection opens with TVM's RPC handshake and then speaks the agent's own small
protocol (described in :mod:`edgedl.serve`); a fleet is reached through TVM's tracker
(``tracker://HOST:PORT/KEY``), which hands out a free device under the key and queues requests while
all are busy.

One run is a few remote calls on one session, each with a deadline:

1. upload the bundle (each file, ``manifest.json`` and ``signature.json`` when it is signed, or the
   one archive) and the samples;
2. ``edgedl.bench.measure``: load (verifying every sha256 on the device), first inference, memory,
   accuracy on the samples;
3. ``edgedl.bench.repeat`` once per repeat: warm-up on the first, then the raw times of ``runs``
   inferences, from which the same statistics as a local run are computed here;
4. with ``profile``, ``edgedl.bench.profile``: the per-operator profile of the same loaded model,
   measured on the device after the timed repeats, as a local ``bench --profile`` measures it.

Finished repeats are kept: a device lost mid-run is reconnected and the failed repeat run again
(``retries`` times); when it cannot be, the :class:`~edgedl.errors.DeviceError` says how many
repeats finished and where their result was written (also on the error as ``partial`` and
``partial_path``). Every read and write has the run's deadline (``timeout``) as its socket
timeout, so a hung device cannot block the caller.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from edgedl.bench.options import FORMS, Device, parse_device
from edgedl.bench.result import BenchResult
from edgedl.errors import DeviceError, EdgeDLError, InputFileError, MissingDependencyError, OptionError

log = logging.getLogger(__name__)

def run_remote(bundle, request: dict, options, progress=None) -> dict:
    """Measure ``bundle`` on ``options.device``; return the result in the schema of a local run.

    Args:
        bundle: the bundle (folder or archive) to upload.
        request: what to measure: ``warmup``, ``runs``, ``repeats``, ``threads``, ``samples``
            (a local .npz written by :func:`edgedl.bench.core.save_samples`, or None), and
            ``profile`` (optional: True for the per-operator profile, :mod:`edgedl.bench.profile`).
        options: ``device`` (``HOST:PORT`` or ``tracker://HOST:PORT/KEY``), ``timeout`` (seconds
            for the whole run, queueing at a tracker included) and ``retries`` (reconnects on a
            lost device).
        progress: optional callable(done, total).

    Raises:
        OptionError: a malformed device. DeviceError: unreachable,
            lost, hung, or no device free under the key. InputFileError: the device refused the bundle (a file named).

    Example:
        >>> from edgedl.bench.options import BenchOptions
        >>> run_remote("lenet.edgedl", {"warmup": 5, "runs": 50, "repeats": 3, "threads": 1, "samples": None},
        ...            BenchOptions(device="127.0.0.1:9090", timeout=60))  # doctest: +SKIP
    """
    device = parse_device(options.device)
    run = _RemoteMeasurement(Path(bundle), request, device, float(options.timeout), int(options.retries or 0), progress)
    return run.run()


def _lost(message: str) -> DeviceError:
    """A DeviceError for a failed connection: the run reconnects and goes on while retries are left."""
    err = DeviceError(message)
    err.retryable = True
    return err


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith(("File ", "  "))]
    text = next((ln for ln in reversed(lines) if ":" in ln), lines[-1] if lines else type(e).__name__)
    return text[:300]


class _Mismatch(ConnectionError):
    """The agent refused the handshake's key (it takes clients from a tracker only)."""


class _NotAgent(ConnectionError):
    """The peer answered the handshake but is not an edgedl agent."""


class _Connection:
    """One session with an agent: TVM's RPC handshake, then the agent's framed JSON requests.

    Every read and write is bounded by ``deadline`` (a ``time.monotonic()`` value).
    """

    MAX_ANSWER_BYTES = 1 << 28  # a measure result with the top-1 of many samples

    def __init__(self, sock: socket.socket):
        self.sock = sock

    @classmethod
    def open(cls, host: str, port: int, matchkey: str, session_timeout: int, deadline: float) -> "_Connection":
        from edgedl.serve import PROTOCOL, RPC_CODE_MISMATCH, RPC_CODE_SUCCESS, RPC_MAGIC, recv_exact

        sock = socket.create_connection((host, port), timeout=max(0.1, min(10.0, deadline - time.monotonic())))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            key = f"client:{matchkey} -timeout={session_timeout}".encode()
            sock.sendall(struct.pack("<ii", RPC_MAGIC, len(key)) + key)
            try:
                (code,) = struct.unpack("<i", recv_exact(sock, 4, deadline))
            except ConnectionResetError as e:
                raise ConnectionError(f"the agent closed the connection during the handshake ({e})") from None
            if code == RPC_CODE_MISMATCH:
                raise _Mismatch("mismatched key")
            if code != RPC_CODE_SUCCESS:
                raise _NotAgent("did not answer as an edgedl agent")
            (size,) = struct.unpack("<i", recv_exact(sock, 4, deadline))
            if not 0 < size <= 4096:
                raise _NotAgent("did not answer as an edgedl agent")
            server_key = recv_exact(sock, size, deadline).decode("utf-8", "replace")
            if PROTOCOL not in server_key.split():
                raise _NotAgent(f"is a TVM RPC server ('{server_key[:60]}') without edgedl's functions")
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def call(self, name: str, request: dict, deadline: float) -> dict:
        from edgedl.serve import recv_json, send_json

        send_json(self.sock, {"call": name, "args": request}, deadline)
        return self._answer(recv_json(self.sock, deadline, limit=self.MAX_ANSWER_BYTES))

    def upload(self, name: str, data: bytes, deadline: float) -> dict:
        """Send ``data`` as the session file ``name``; the agent's error JSON when it refuses."""
        from edgedl.serve import UPLOAD, recv_json, send_frame, send_json

        send_json(self.sock, {"call": UPLOAD, "args": {"name": name, "bytes": len(data)}}, deadline)
        go = self._answer(recv_json(self.sock, deadline))
        if "error" in go:
            return go
        send_frame(self.sock, data, deadline)
        return self._answer(recv_json(self.sock, deadline))

    @staticmethod
    def _answer(value) -> dict:
        if not isinstance(value, dict):
            raise _NotAgent("answered with something that is not a JSON object")
        return value

    def close(self) -> None:
        from edgedl.serve import send_json

        try:
            send_json(self.sock, {"call": "bye"}, time.monotonic() + 0.5)
        except (OSError, ValueError):
            pass
        self.sock.close()


class _RemoteMeasurement:
    """One benchmark on a remote device: its sessions (a new one after a lost device), the repeats
    finished so far, and the result or the error with the partial result."""

    def __init__(self, bundle: Path, request: dict, device: Device, timeout: float, retries: int, progress):
        self.bundle, self.request, self.device = bundle, request, device
        self.timeout, self.retries, self.progress = timeout, retries, progress
        self.deadline = time.monotonic() + timeout
        self.session = None
        self.frame: dict | None = None
        self.times: list[np.ndarray] = []
        self.profile: dict | None = None
        self.memory: dict = {}
        self.agent: dict = {}
        self.sessions = 0
        self.upload = {"bytes": 0, "seconds": 0.0}
        self.remote_bundle = self.remote_samples = None
        self.num_samples = 0
        if request.get("samples"):
            from edgedl._inputs import count
            from edgedl.bench.core import load_samples

            self.num_samples = count(load_samples(request["samples"])[0])

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> dict:
        repeats, runs = int(self.request["repeats"]), int(self.request["runs"])
        retries_left = self.retries
        while True:
            try:
                if self.session is None:
                    self._open()
                if self.frame is None:
                    self.frame = self._remote("edgedl.bench.measure", "loading and scoring the bundle", dict(
                        self._remote_request(), warmup=0, runs=1, repeats=1))
                    self._report()
                while len(self.times) < repeats:
                    what = f"repeat {len(self.times) + 1} of {repeats}"
                    out = self._remote("edgedl.bench.repeat", what, dict(
                        self._remote_request(), warmup=int(self.request["warmup"]), runs=runs))
                    self.times.append(np.asarray(out["times_s"], dtype=np.float64))
                    self.memory = {"rss_after_bytes": out["rss_bytes"], "peak_rss_bytes": out["peak_rss_bytes"]}
                    self._report()
                if self.request.get("profile") and self.profile is None:
                    self.profile = self._profile()
                break
            except DeviceError as e:
                self._close()
                if not getattr(e, "retryable", False) or retries_left <= 0 or time.monotonic() >= self.deadline:
                    raise self._failed(str(e)) from None
                retries_left -= 1
                log.warning("%s; reconnecting (%d retr%s left)", e, retries_left, "y" if retries_left == 1 else "ies")
                time.sleep(min(1.0, max(0.0, self.deadline - time.monotonic())))
        self._close()
        return self._result()

    def _report(self):
        if self.progress:
            total = int(self.request["repeats"]) * int(self.request["runs"]) + self.num_samples
            self.progress(self.num_samples + sum(len(t) for t in self.times), total)

    def _profile(self) -> dict:
        """The device's per-operator profile of the loaded model; an agent that cannot give one (an older
        agent without ``edgedl.bench.profile``) leaves the run whole and says so in the record."""
        from edgedl.bench.profile import not_available

        request = dict(self._remote_request(), warmup=int(self.request["warmup"]), runs=int(self.request["runs"]))
        out = self._call("profiling each operator", lambda: self._remote_now("edgedl.bench.profile", request))
        if "error" in out and out.get("error_type") != "InputFileError":
            self._close()  # an agent that refuses the call ends the session
            backend = (self.frame or {}).get("bundle", {}).get("backend", "remote")
            return not_available(backend, f"the device {self.device} gave no profile: {str(out['error'])[:300]}")
        return self._check(out)

    def _remote_request(self) -> dict:
        return {"bundle": self.remote_bundle, "samples": self.remote_samples, "threads": int(self.request["threads"])}

    # -- connecting and uploading -------------------------------------------------------------------

    def _open(self):
        """Connect (directly or through the tracker), check it is an edgedl agent, upload."""
        session_timeout = int(self.timeout) + 10  # the agent ends a session we gave up on by itself
        if self.device.key:
            host, port, matchkey = self._ask_tracker()
            what = f"connecting to the device {host}:{port} the tracker gave"
        else:
            host, port, matchkey = self.device.host, self.device.port, ""
            what = "connecting"
        self.agent = {"address": f"{host}:{port}"}
        self.session = self._call(what, lambda: _Connection.open(host, port, matchkey, session_timeout,
                                                                 self.deadline))
        self.sessions += 1
        self.agent = dict(self._remote("edgedl.agent.hello", "checking the agent", {}), address=f"{host}:{port}")
        t0 = time.monotonic()
        self._call("uploading the bundle", self._upload)
        self.upload["seconds"] += time.monotonic() - t0

    def _close(self):
        if self.session is not None:
            self.session.close()
            self.session = None

    def _upload(self):
        from edgedl.bundle import MANIFEST, SIGNATURE, read_manifest

        session = self.session
        sent = 0
        if self.bundle.is_dir():
            manifest = read_manifest(self.bundle)
            names = [MANIFEST] + [e["path"] for e in manifest.get("files", [])]
            if (self.bundle / SIGNATURE).is_file():
                names.insert(1, SIGNATURE)
            files = {}
            for i, name in enumerate(names):
                path = self.bundle / name
                if not path.is_file():
                    raise InputFileError(self.bundle, f"bundle file '{name}' is missing")
                data = path.read_bytes()
                files[name] = f"upload-{i}"  # uploads are flat; the agent puts them in place
                self._check(session.upload(files[name], data, self.deadline))
                sent += len(data)
            self._check(self._remote_now("edgedl.agent.assemble", {"dir": "bundle", "files": files}))
            self.remote_bundle = "bundle"
        else:
            data = self.bundle.read_bytes()
            self._check(session.upload("bundle.edgedl", data, self.deadline))
            sent += len(data)
            self.remote_bundle = "bundle.edgedl"
        self.remote_samples = None
        if self.request.get("samples"):
            data = Path(self.request["samples"]).read_bytes()
            self._check(session.upload("samples.npz", data, self.deadline))
            sent += len(data)
            self.remote_samples = "samples.npz"
        self.upload["bytes"] += sent

    def _ask_tracker(self) -> tuple[str, int, str]:
        """Ask TVM's tracker for a free device under the key (it queues us while all are busy)."""
        try:
            from tvm.rpc import base
        except ImportError:
            raise MissingDependencyError("apache-tvm", "tvm") from None

        d = self.device
        left = self.deadline - time.monotonic()
        try:
            sock = socket.create_connection((d.host, d.port), timeout=min(10.0, max(0.1, left)))
        except OSError as e:
            raise _lost(f"cannot reach the TVM tracker at {d.address} ({e.strerror or e}); start one with: "
                        f"python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {d.port}") from None
        try:
            sock.settimeout(max(0.1, self.deadline - time.monotonic()))
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            try:
                magic = struct.unpack("<i", base.recvall(sock, 4))[0]
            except (ConnectionError, OSError) as e:
                if isinstance(e, TimeoutError):
                    raise
                magic = None
            if magic != base.RPC_TRACKER_MAGIC:
                raise DeviceError(f"{d.address} did not answer as a TVM tracker (is it an agent? then use --device "
                                  f"{d.address}); --device takes {FORMS}")
            base.sendjson(sock, [base.TrackerCode.SUMMARY])
            summary = base.recvjson(sock)[1]
            keys = sorted({s["key"].split(":", 1)[1] for s in summary.get("server_info", [])
                           if s.get("key", "").startswith("server:")})
            if d.key not in keys:
                known = ", ".join(keys) if keys else "none"
                raise DeviceError(f"the tracker at {d.address} has no device under the key '{d.key}' (its keys: "
                                  f"{known}); start an agent with: edgedl serve --tracker {d.address} --key {d.key}")
            base.sendjson(sock, [base.TrackerCode.REQUEST, d.key, "", 1])
            try:
                value = base.recvjson(sock)
            except TimeoutError:
                busy = sum(1 for s in summary["server_info"] if s.get("key") == f"server:{d.key}")
                raise DeviceError(f"no device under the key '{d.key}' at the tracker {d.address} became free within "
                                  f"{self.timeout:g} s ({busy} registered, all busy; the tracker's keys: "
                                  f"{', '.join(keys)}); raise --timeout or start more agents") from None
            if value[0] != base.TrackerCode.SUCCESS:
                raise DeviceError(f"the tracker at {d.address} refused the request for '{d.key}': {value}")
            host, port, matchkey = value[1]
            return host, int(port), matchkey
        except (ConnectionError, OSError) as e:
            if isinstance(e, TimeoutError):
                raise self._timed_out("asking the tracker") from None
            raise _lost(f"lost the connection to the tracker at {d.address} ({e})") from None
        finally:
            sock.close()

    # -- calls with a deadline ----------------------------------------------------------------------

    def _call(self, what: str, fn):
        """Run ``fn`` (socket work bounded by the run's deadline); turn its failures into DeviceErrors."""
        if time.monotonic() >= self.deadline:
            raise self._timed_out(what)
        try:
            return fn()
        except EdgeDLError:
            raise
        except TimeoutError:
            self._close()
            raise self._timed_out(what) from None
        except (OSError, ValueError) as e:
            self._close()
            raise self._classify(e, what) from None

    def _remote_now(self, name: str, request: dict) -> dict:
        """Call a remote edgedl function (inside a ``_call``)."""
        return self.session.call(name, request, self.deadline)

    def _remote(self, name: str, what: str, request: dict) -> dict:
        return self._check(self._call(what, lambda: self._remote_now(name, request)))

    def _check(self, out: dict) -> dict:
        """Raise the error a remote function returned, typed as on a local run."""
        if "error" not in out:
            return out
        import edgedl.errors as errors

        if out.get("error_type") == "InputFileError":
            detail = out["error"]
            if out.get("path") and detail.startswith(out["path"] + ": "):
                detail = detail[len(out["path"]) + 2:]
            raise InputFileError(self.bundle, f"{detail} (checked on the device {self.device})")
        cls = getattr(errors, out.get("error_type", ""), None)
        if not (isinstance(cls, type) and issubclass(cls, EdgeDLError)) or cls is InputFileError:
            cls = DeviceError
        err = cls.__new__(cls)
        Exception.__init__(err, f"on the device {self.device}: {out['error']}")
        raise err

    def _classify(self, error: BaseException, what: str) -> Exception:
        d = self.device
        if isinstance(error, _Mismatch):
            return DeviceError(f"the agent at {d.address} is registered with a TVM tracker and takes no direct "
                               "connections; use --device tracker://TRACKER_HOST:PORT/KEY")
        if isinstance(error, _NotAgent):
            return DeviceError(f"{d} {error}; run `edgedl serve` on the device (a plain TVM RPC server, "
                               "tvm.exec.rpc_server, cannot measure bundles)")
        if what.startswith("connecting") and isinstance(error, ConnectionRefusedError):
            if d.key:
                return _lost(f"cannot reach the device {self.agent.get('address', '')} that the tracker {d.address} "
                             f"gave for '{d.key}'")
            return _lost(f"cannot reach an edgedl agent at {d.address} (connection refused); start one on the "
                         f"device with: edgedl serve --host 0.0.0.0 --port {d.port} --trust KEY.pub (or check the "
                         "address)")
        return _lost(f"lost the connection to the device {d} while {what} ({_first_line(error)}): the agent "
                     "stopped, refused the connection or the device went away")

    def _timed_out(self, what: str) -> DeviceError:
        why = ("it hung, or the agent is busy: all its sessions are taken" if what.startswith("connecting")
               else "it hung, the run is too slow, or another client's measurement held the device")
        return DeviceError(f"the device {self.device} did not answer within {self.timeout:g} s ({what}): {why}; "
                           "raise --timeout or lower --runs")

    # -- results ------------------------------------------------------------------------------------

    def _result(self) -> dict:
        from edgedl.bench.timing import Timing

        r = json.loads(json.dumps(self.frame))
        req = self.request
        r["bundle"]["path"] = str(self.bundle)
        r["settings"] = {"warmup": int(req["warmup"]), "runs": int(req["runs"]), "repeats": int(req["repeats"]),
                         "threads": int(req["threads"])}
        r["timing"].update(Timing(self.times).summary())
        if self.profile is not None:
            r["profile"] = self.profile
        if self.memory:
            r["memory"]["rss_after_bytes"] = self.memory["rss_after_bytes"]
            r["memory"]["peak_rss_bytes"] = max(self.memory["peak_rss_bytes"], r["memory"]["peak_rss_bytes"])
        r["remote"] = {"device": str(self.device), "agent": self.agent, "sessions": self.sessions,
                       "upload_bytes": self.upload["bytes"], "upload_s": self.upload["seconds"],
                       "memory_note": "RSS of the agent's session process (TVM's RPC server included)"}
        return r

    def _failed(self, message: str) -> DeviceError:
        """The final error; finished repeats are written to a JSON file it names."""
        repeats = int(self.request["repeats"])
        if self.frame is None or not self.times:
            return DeviceError(message)
        partial = self._result()
        partial.pop("outputs_top1", None)
        partial["device"] = str(self.device)
        partial["partial"] = {"repeats_done": len(self.times), "repeats": repeats, "error": message}
        fd, path = tempfile.mkstemp(prefix="edgedl-bench-partial-", suffix=".json")
        os.close(fd)
        BenchResult(partial).save(path)
        err = DeviceError(f"{message}; {len(self.times)} of {repeats} repeats finished, their results are in {path}")
        err.partial, err.partial_path = partial, path
        return err
