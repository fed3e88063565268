"""The host side of the firmware harness's UART protocol, over any byte stream.

The harness (``edgedl/mcu/harness/main.cc``) and this client exchange frames: the 4 bytes ``EDGE``,
a type byte, the payload's length as a little-endian uint32, the payload. The full description is
``docs/mcu-protocol.md``. A :class:`Client` talks through a :class:`Transport`: :class:`FdTransport`
for file descriptors (the emulator's pipes, a pseudo-terminal, a socket) and :class:`SerialTransport`
for a real board's serial port (``serial:///dev/ttyACM0``, pyserial). Every read has a deadline, so
a board that stops answering ends in a :class:`~edgedl.errors.DeviceError`, never a hang.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlparse

import numpy as np

from edgedl.errors import DataError, DeviceError, OptionError

log = logging.getLogger(__name__)

MAGIC = b"EDGE"
HEADER = struct.Struct("<4sBI")
PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 << 20
DEFAULT_BAUD = 115200

# TfLiteType codes (tensorflow/lite/core/c/c_api_types.h) -> numpy dtypes.
TFLITE_TYPES = {1: "float32", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8",
                10: "float16", 11: "float64", 15: "uint32", 16: "uint16"}


# ----------------------------------------------------------------------------- transports


class Transport:
    """A byte stream to a board: ``read`` returns at most ``n`` bytes that arrive before
    ``deadline`` (``time.monotonic()``), ``b""`` at the deadline; ``closed`` says the other end left."""

    closed = False

    def read(self, n: int, deadline: float) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def write(self, data: bytes, deadline: float | None = None) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class FdTransport(Transport):
    """A transport over file descriptors: pipes, a pseudo-terminal, a socket.

    Example:
        >>> r, w = os.pipe()
        >>> t = FdTransport(r, w)
        >>> t.write(b"hi"); t.read(2, time.monotonic() + 1)
        b'hi'
    """

    def __init__(self, read_fd: int, write_fd: int | None = None):
        self.read_fd = read_fd
        self.write_fd = read_fd if write_fd is None else write_fd

    def read(self, n: int, deadline: float) -> bytes:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return b""
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if not ready:
                return b""
            try:
                data = os.read(self.read_fd, n)
            except OSError:  # a pty whose other side closed reads EIO
                data = b""
            if not data:
                self.closed = True
                return b""
            return data

    def write(self, data: bytes, deadline: float | None = None) -> None:
        view = memoryview(data)
        while view:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and (left <= 0 or not select.select([], [self.write_fd], [], left)[1]):
                raise DeviceError(f"the board took no more input for the time allowed ({len(view)} of "
                                  f"{len(data)} bytes unsent): it stopped reading")
            try:
                written = os.write(self.write_fd, view[:select.PIPE_BUF])  # never blocks once writable
            except OSError as e:
                self.closed = True
                raise DeviceError(f"the board's connection closed while sending ({e.strerror or e})") from None
            view = view[written:]


class SerialTransport(Transport):
    """A serial port through pyserial (a dependency of edgedl)."""

    def __init__(self, port: str, baudrate: int = DEFAULT_BAUD):
        import serial

        try:
            self.port = serial.Serial(port, baudrate=baudrate, timeout=0)
        except (OSError, ValueError) as e:
            raise DeviceError(f"could not open the serial port {port} ({e})") from None

    def read(self, n: int, deadline: float) -> bytes:
        import serial

        while time.monotonic() < deadline:
            self.port.timeout = max(0.0, min(0.2, deadline - time.monotonic()))
            try:
                data = self.port.read(n)
            except (serial.SerialException, OSError):  # unplugged, or the emulator behind a pty ended
                self.closed = True
                return b""
            if data:
                return data
        return b""

    def write(self, data: bytes, deadline: float | None = None) -> None:
        import serial

        if deadline is not None:
            self.port.write_timeout = max(0.1, deadline - time.monotonic())
        try:
            self.port.write(data)
            self.port.flush()
        except serial.SerialTimeoutException:
            raise DeviceError("the board took no more input for the time allowed: it stopped reading") from None
        except (serial.SerialException, OSError) as e:
            self.closed = True
            raise DeviceError(f"the serial port closed while sending ({e})") from None

    def close(self) -> None:
        self.port.close()


def open_device(url: str) -> Transport:
    """Open a board by URL: ``serial:///dev/ttyACM0`` (optionally ``?baud=921600``).

    Raises:
        OptionError: an unknown scheme.
        DeviceError: the port does not open.

    Example:
        >>> open_device("serial:///dev/ttyACM0?baud=921600")  # doctest: +SKIP
        <edgedl.mcu.protocol.SerialTransport object at ...>
    """
    parts = urlparse(url)
    if parts.scheme != "serial" or not parts.path:
        raise OptionError(f"unknown device URL {url!r}; expected serial:///dev/ttyACM0 (optionally ?baud=115200)")
    baud = int(parse_qs(parts.query).get("baud", [DEFAULT_BAUD])[0])
    return SerialTransport(parts.path, baud)


# ----------------------------------------------------------------------------- messages


@dataclass
class TensorSpec:
    dtype: str
    shape: list[int]
    bytes: int
    scale: float
    zero_point: int


@dataclass
class DeviceInfo:
    """The firmware's hello: protocol version, arena, the core's CPUID, input and output tensors."""

    version: int
    arena_bytes: int
    arena_used_bytes: int
    cpuid: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass
class Inference:
    """One inference on the board: outputs, the SysTick ticks of its Invoke, and the ticks of each
    operator node in execution order as ``(operator, ticks)``.

    On a real board SysTick runs at the processor clock, so ticks are cycles; on the emulator they
    are a fixed number of instructions each (:attr:`Board.instructions_per_tick
    <edgedl.mcu.boards.Board.instructions_per_tick>`).
    """

    outputs: list[np.ndarray]
    ticks: int
    operators: list[tuple[str, int]] = field(default_factory=list)


class _Reader:
    def __init__(self, payload: bytes):
        self.b, self.i = payload, 0

    def take(self, fmt: str):
        s = struct.Struct("<" + fmt)
        out = s.unpack_from(self.b, self.i)
        self.i += s.size
        return out if len(out) > 1 else out[0]

    def raw(self, n: int) -> bytes:
        out = self.b[self.i:self.i + n]
        if len(out) != n:
            raise struct.error("short payload")
        self.i += n
        return out


def _spec(r: _Reader) -> TensorSpec:
    code, nbytes, ndims = r.take("BIB")
    shape = [r.take("i") for _ in range(ndims)]
    scale, zero_point = r.take("fi")
    dtype = TFLITE_TYPES.get(code)
    if dtype is None:
        raise DeviceError(f"the firmware reports a tensor of TfLiteType {code}, which edgedl cannot exchange")
    return TensorSpec(dtype, shape, nbytes, float(scale), int(zero_point))


class Client:
    """Talks to a firmware running the edgedl harness.

    Args:
        transport: the byte stream to the board.
        timeout: seconds an answer may take (boot, one inference).
        name: how messages name the board.

    Example:
        >>> client = Client(open_device("serial:///dev/ttyACM0"))  # doctest: +SKIP
        >>> info = client.hello(request=True)  # doctest: +SKIP
        >>> result = client.infer([np.zeros(info.inputs[0].shape, info.inputs[0].dtype)])  # doctest: +SKIP
    """

    def __init__(self, transport: Transport, timeout: float = 60.0, name: str = "the board"):
        self.transport = transport
        self.timeout = timeout
        self.name = name
        self.info: DeviceInfo | None = None
        self.logs: list[str] = []
        self._buffer = bytearray()
        self.on_silence = None  # called with the deadline's cause to enrich a timeout message

    # -- frames

    def _fill(self, n: int, deadline: float, waiting_for: str, timeout: float) -> None:
        while len(self._buffer) < n:
            chunk = self.transport.read(max(4096, n - len(self._buffer)), deadline)
            if chunk:
                self._buffer += chunk
                continue
            if self.transport.closed:
                raise DeviceError(self._why(f"{self.name} closed the connection while edgedl waited for {waiting_for}"))
            raise DeviceError(self._why(f"{self.name} did not answer within {timeout:g} s "
                                        f"while edgedl waited for {waiting_for}"))

    def _why(self, message: str) -> str:
        extra = self.on_silence() if self.on_silence else ""
        return f"{message}{'; ' + extra if extra else ''}"

    def read_frame(self, waiting_for: str, timeout: float | None = None) -> tuple[str, bytes]:
        """The next frame as ``(type, payload)``; log frames are logged and skipped, a fault or an
        error frame raises :class:`DeviceError`."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            # Bytes before the magic (a boot banner, line noise) are skipped.
            while True:
                self._fill(len(MAGIC), deadline, waiting_for, timeout)
                at = self._buffer.find(MAGIC)
                if at >= 0:
                    del self._buffer[:at]
                    break
                del self._buffer[:len(self._buffer) - len(MAGIC) + 1]
            self._fill(HEADER.size, deadline, waiting_for, timeout)
            _, kind, length = HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME_BYTES:
                del self._buffer[:1]
                continue
            self._fill(HEADER.size + length, deadline, waiting_for, timeout)
            payload = bytes(self._buffer[HEADER.size:HEADER.size + length])
            del self._buffer[:HEADER.size + length]
            kind = chr(kind)
            if kind == "L":
                text = payload.decode("utf-8", "replace").strip()
                if text == "HALTED":  # TFLite Micro's TFLITE_ABORT: it prints this, then spins forever
                    said = f" after: {' / '.join(self.logs[-3:])}" if self.logs else ""
                    raise DeviceError(f"the firmware on {self.name} halted: TFLite Micro aborted{said}")
                if text:  # MicroPrintf ends each message with a separate line break
                    self.logs.append(text)
                    log.debug("%s: %s", self.name, text)
                continue
            if kind == "F":
                raise DeviceError(f"the firmware on {self.name} crashed: {payload.decode('ascii', 'replace').strip()}")
            if kind == "E":
                text = payload.decode("utf-8", "replace").strip()
                said = f" (TFLite Micro: {' / '.join(self.logs[-3:])})" if self.logs else ""
                raise DeviceError(f"the firmware on {self.name} reports: {text}{said}")
            return kind, payload

    def send(self, kind: str, payload: bytes = b"") -> None:
        """Send one frame; a board that stops reading ends it after the client's timeout."""
        self.transport.write(HEADER.pack(MAGIC, ord(kind), len(payload)) + payload, time.monotonic() + self.timeout)

    # -- commands

    def hello(self, request: bool = False, timeout: float | None = None) -> DeviceInfo:
        """Wait for the firmware's hello (sent at boot), or ask for it again with ``request``."""
        if request:
            self.send("H")
        kind, payload = self.read_frame("the firmware's hello", timeout)
        if kind != "H":
            raise DeviceError(f"{self.name} answered with a {kind!r} frame where a hello was expected")
        try:
            r = _Reader(payload)
            version, arena, used, cpuid, n_in, n_out = r.take("BIIIBB")
            if version != PROTOCOL_VERSION:
                raise DeviceError(f"the firmware speaks protocol version {version}; this edgedl speaks "
                                  f"{PROTOCOL_VERSION}: rebuild the firmware")
            inputs = [_spec(r) for _ in range(n_in)]
            outputs = [_spec(r) for _ in range(n_out)]
        except struct.error:
            raise DeviceError(f"{self.name} sent a malformed hello ({len(payload)} bytes)") from None
        self.info = DeviceInfo(version, arena, used, cpuid, inputs, outputs)
        return self.info

    def infer(self, arrays: list[np.ndarray], timeout: float | None = None) -> Inference:
        """Run one inference on ``arrays`` (one per model input, the model's dtype and shape).

        Raises:
            DataError: an array does not match its input tensor.
            DeviceError: the firmware faults, reports an error or does not answer in time.
        """
        info = self.info or self.hello(request=True)
        if len(arrays) != len(info.inputs):
            raise DataError(f"{len(arrays)} input array(s) given; the model takes {len(info.inputs)}")
        blobs = []
        for k, (array, spec) in enumerate(zip(arrays, info.inputs)):
            array = np.asarray(array)
            if array.dtype != np.dtype(spec.dtype) or array.size * array.itemsize != spec.bytes:
                raise DataError(f"input {k} is {array.dtype} {list(array.shape)}; the model takes "
                                f"{spec.dtype} {spec.shape}")
            blobs.append(np.ascontiguousarray(array).tobytes())
        self.send("I", b"".join(blobs))
        kind, payload = self.read_frame("the inference's result", timeout)
        while kind == "H":  # a hello the board sent at boot before the host listened
            kind, payload = self.read_frame("the inference's result", timeout)
        if kind != "R":
            raise DeviceError(f"{self.name} answered with a {kind!r} frame where a result was expected")
        try:
            r = _Reader(payload)
            _status, ticks, events = r.take("IQH")
            operators = []
            for _ in range(events):
                tag = r.raw(r.take("B")).decode("utf-8", "replace")
                operators.append((tag, int(r.take("Q"))))
            outputs = [np.frombuffer(r.raw(s.bytes), dtype=s.dtype).reshape(s.shape).copy() for s in info.outputs]
        except (struct.error, ValueError):
            raise DeviceError(f"{self.name} sent a malformed result ({len(payload)} bytes)") from None
        return Inference(outputs, int(ticks), operators)

    def self_test(self, what: str, timeout: float | None = None) -> tuple[str, bytes]:
        """Ask the firmware to fault (``"fault"``) or hang (``"hang"``): checks that the host reports
        both as errors in time. Returns only if the firmware answers anyway."""
        self.send("T", {"fault": b"F", "hang": b"L"}[what])
        return self.read_frame(f"the firmware after a {what} self-test", timeout)

    def calibrate(self, timeout: float | None = None) -> tuple[int, int]:
        """Run the firmware's calibration loop: ``(instructions executed, counter ticks)``."""
        self.send("T", b"C")
        kind, payload = self.read_frame("the calibration loop", timeout)
        if kind != "C" or len(payload) != 12:
            raise DeviceError(f"{self.name} answered the calibration with a {kind!r} frame")
        instructions, ticks = struct.unpack("<IQ", payload)
        return int(instructions), int(ticks)

    def quit(self, timeout: float = 5.0) -> None:
        """Ask the firmware to stop (it ends the emulator through semihosting when built with it)."""
        try:
            self.send("Q")
            self.read_frame("the firmware's goodbye", timeout)
        except DeviceError:
            pass
