"""The options of a benchmark: what to measure (samples, timing settings) and where (``--device``).

Where it sits: :func:`edgedl.bench.harness.bench` takes :class:`BenchOptions`;
:func:`edgedl.bench.core.measure` (on the device) reads its timing settings and
:mod:`edgedl.bench.remote` its device, parsed by :func:`parse_device`. Only the standard library is
imported, so every part of the bench package, the device agent included, can import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgedl.errors import OptionError

FORMS = ("HOST:PORT (an `edgedl serve` agent, e.g. 127.0.0.1:9090), tracker://HOST:PORT/KEY (a TVM tracker "
         "and the device key to ask it for, e.g. tracker://127.0.0.1:9190/edgedl) or serial:///dev/ttyACM0 (a "
         "microcontroller flashed with the bundle's firmware)")
_ADDRESS = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d{1,5})$")
_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Device:
    """Where to run: an agent's address, or a tracker's address and a device key."""

    host: str
    port: int
    key: str | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"tracker://{self.address}/{self.key}" if self.key else self.address


def parse_device(text: str) -> Device:
    """Parse ``HOST:PORT`` or ``tracker://HOST:PORT/KEY``.

    Raises:
        OptionError: anything else, showing the two accepted forms.

    Example:
        >>> parse_device("tracker://127.0.0.1:9190/rpi4")
        Device(host='127.0.0.1', port=9190, key='rpi4')
    """
    text = str(text or "").strip()
    address, key = text, None
    if text.startswith("tracker://"):
        address, _, key = text[len("tracker://"):].partition("/")
    m = _ADDRESS.match(address) if "://" not in address else None
    if m is None or not 0 < int(m["port"]) < 65536 or (key is not None and not _KEY.match(key)):
        raise OptionError(f"--device got '{text}'; expected {FORMS}")
    return Device(m["v6"] or m["host"], int(m["port"]), key)


@dataclass
class BenchOptions:
    """What to measure and where: the data set (or the file, ``data``, with its ``preprocess`` steps;
    default: those recorded in the bundle's manifest) to score, the timing settings, the device, and
    the float reference for the agreement figure (``edgedl bench``'s options).

    Example:
        >>> BenchOptions(runs=100, device="127.0.0.1:9090").validate()
    """

    dataset: str | None = None
    data_dir: str | None = None
    data: str | None = None            # a .npz, .npy or folder of images/wav files to score instead of a data set
    preprocess: object = None          # for data: KEY=VALUE strings, a .toml or an edgedl.data.Preprocess
    limit: int | None = 500
    warmup: int = 20
    runs: int = 200
    repeats: int = 5
    threads: int = 1
    device: str | None = None          # None: this machine; HOST:PORT or tracker://HOST:PORT/KEY: a remote agent
    timeout: float = 600.0
    retries: int = 0
    reference: str | None = None       # float model (.keras/.tflite) for the agreement figure
    profile: bool = False              # also profile per operator (the result's ``profile``; edgedl.bench.profile)
    label: str | None = None           # the run's name in the result and in reports (edgedl bench --label)

    def validate(self):
        """Refuse settings no benchmark can use, by option name, before anything is loaded."""
        import math
        from numbers import Integral, Real

        for name, low in (("warmup", 0), ("runs", 1), ("repeats", 1), ("threads", 1), ("retries", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
                raise OptionError(f"--{name} must be a {'non-negative' if low == 0 else 'positive'} integer, "
                                  f"got {value!r}")
        from edgedl.bench.result import check_label

        check_label(self.label)
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, Integral)
                                       or self.limit < 1):
            raise OptionError(f"--limit must be a positive integer (test samples to score), got {self.limit!r}")
        if (isinstance(self.timeout, bool) or not isinstance(self.timeout, Real) or not math.isfinite(self.timeout)
                or self.timeout <= 0):
            raise OptionError(f"--timeout must be a positive, finite number of seconds, got {self.timeout!r}")
        if self.device and not str(self.device).startswith("serial://"):
            parse_device(self.device)  # a malformed --device fails before any data is loaded
        elif self.device:
            from urllib.parse import urlparse

            if not urlparse(self.device).path:
                raise OptionError(f"--device got '{self.device}'; a board on a serial port is serial:///dev/ttyACM0 "
                                  "(optionally ?baud=115200)")
        if self.data is not None and self.dataset is not None:
            raise OptionError("give one of --dataset (a built-in data set) and --data (a file or folder), not both")
        if self.preprocess and self.data is None:
            raise OptionError("--preprocess applies to data given with --data: leave it out, or give --data")
        if self.data is not None:  # there, of a kind --data takes, with steps that parse: before the bundle runs
            from edgedl.data.user import Preprocess, data_kind

            data_kind(self.data)
            Preprocess.parse(self.preprocess)
