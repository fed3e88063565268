"""Run a firmware built by :mod:`edgedl.mcu.build` on QEMU's model of its board.

``qemu-system-arm -M <board> -icount shift=0`` executes the ELF with one virtual nanosecond per
instruction, so the board's SysTick (the harness's counter) counts executed instructions exactly
and repeatably (see ``docs/mcu-protocol.md`` for the calibration). The board's UART0 is the
emulator's stdin/stdout, driven by the same :class:`~edgedl.mcu.protocol.Client` that talks to a
real board over a serial port. Every wait has a timeout, and the emulator process is always killed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgedl.errors import BackendError, DeviceError
from edgedl.mcu.boards import Board, board_for
from edgedl.mcu.protocol import Client, DeviceInfo, FdTransport, Inference

log = logging.getLogger(__name__)

QEMU = "qemu-system-arm"
INSTALL_HINT = "apt-get install qemu-system-arm (or scripts/system-deps.sh)"
BOOT_TIMEOUT_S = 30.0
INFERENCE_TIMEOUT_S = 120.0


@dataclass
class EmulationResult:
    """What the firmware reported for each sample: outputs, instructions of the Invoke, and
    instructions per operator node (``(operator, instructions)`` in execution order).

    Instructions are SysTick ticks times :attr:`instructions_per_tick` (exact to one tick: the
    count is repeatable, its resolution is ``instructions_per_tick`` instructions). On a real
    board (``instructions_per_tick`` 0) the ticks are processor cycles: ``cycles`` holds them and
    ``operators`` counts cycles.
    """

    board: str
    core: str
    info: DeviceInfo
    instructions_per_tick: float
    outputs: list[list[np.ndarray]] = field(default_factory=list)
    instructions: list[int] = field(default_factory=list)
    operators: list[list[tuple[str, int]]] = field(default_factory=list)
    ticks: list[int] = field(default_factory=list)
    cycles: list[int] = field(default_factory=list)

    @property
    def arena_used_bytes(self) -> int:
        return self.info.arena_used_bytes

    def summary(self) -> dict:
        """Counts as JSON-ready data (outputs left out): instructions per inference (min, max,
        mean), per-operator instructions of the first inference, the arena."""
        def stats(xs):
            return {"min": min(xs), "max": max(xs), "mean": sum(xs) / len(xs)} if xs else None

        unit = "instructions" if self.instructions_per_tick else "cycles"
        return {"board": self.board, "core": self.core, "num_inferences": len(self.ticks),
                "instructions_per_tick": self.instructions_per_tick,
                "instructions": stats(self.instructions), "cycles": stats(self.cycles),
                "operators": [{"operator": t, unit: c} for t, c in (self.operators[0] if self.operators else [])],
                "arena_bytes": self.info.arena_bytes, "arena_used_bytes": self.info.arena_used_bytes}


def qemu_command(elf: str | os.PathLike, board: Board, serial: str = "stdio") -> list[str]:
    """The ``qemu-system-arm`` command line that runs ``elf`` on ``board``.

    ``serial`` is where UART0 goes: ``stdio`` (the default), or a terminal device such as the slave
    side of a pseudo-terminal, which makes the emulator look like a board on a serial port.

    Example:
        >>> from edgedl.mcu.boards import board_for
        >>> " ".join(qemu_command("fw.elf", board_for("m4"))[:5])
        'qemu-system-arm -M mps2-an386 -icount shift=0'
    """
    return [QEMU, "-M", board.machine, "-icount", "shift=0", "-display", "none", "-monitor", "none",
            "-nodefaults", "-serial", serial, "-semihosting-config", "enable=on,target=native",
            "-kernel", str(elf)]


class Emulator:
    """A running emulator with a protocol client on its UART; use as a context manager.

    Example:
        >>> with Emulator("fw/firmware.elf", "cortex-m4") as emu:  # doctest: +SKIP
        ...     result = emu.client.infer([x])
    """

    def __init__(self, elf: str | os.PathLike, core: str | Board, timeout: float = INFERENCE_TIMEOUT_S,
                 boot_timeout: float = BOOT_TIMEOUT_S):
        self.board = core if isinstance(core, Board) else board_for(core)
        self.elf = Path(elf)
        if not self.elf.is_file():
            raise BackendError(f"{self.elf}: no such firmware ELF")
        if not shutil.which(QEMU):
            raise BackendError(f"{QEMU} is not installed (needed to run MCU firmware); install it with: {INSTALL_HINT}")
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(qemu_command(self.elf, self.board), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._stderr)
        self.client = Client(FdTransport(self.process.stdout.fileno(), self.process.stdin.fileno()),
                             timeout=timeout, name=f"the emulated {self.board.machine} board")
        self.client.on_silence = self._state
        try:
            self.info = self.client.hello(timeout=boot_timeout)
        except BaseException:
            self.close()
            raise

    def _state(self) -> str:
        code = self.process.poll()
        if code is None:
            return ""
        self._stderr.seek(0)
        err = " ".join(self._stderr.read().decode("utf-8", "replace").split())[-200:]
        return f"{QEMU} exited with status {code}" + (f" ({err})" if err else "")

    def close(self) -> None:
        """Stop the emulator: ask the firmware to quit, then kill it whatever happened."""
        if self.process.poll() is None:
            try:
                self.client.quit(timeout=2.0)
                self.process.wait(timeout=2.0)
            except (DeviceError, subprocess.TimeoutExpired, OSError):
                pass
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
            pass
        for f in (self.process.stdin, self.process.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._stderr.close()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run(elf: str | os.PathLike | None, core: str, inputs: list[list[np.ndarray]], timeout: float = INFERENCE_TIMEOUT_S,
        boot_timeout: float = BOOT_TIMEOUT_S, device: str | None = None) -> EmulationResult:
    """Run ``elf`` on the emulated board of ``core`` (or on a real board at ``device``) over
    ``inputs`` (per sample, one array per model input) and collect what the firmware reports.

    Args:
        elf: the firmware (:attr:`FirmwareBuild.elf <edgedl.mcu.build.FirmwareBuild.elf>`); unused
            with ``device`` (the board runs what was flashed on it).
        core: its core (``cortex-m4``, ``cortex-m7``, ``cortex-m55``).
        inputs: ``[[input0, input1, ...], ...]``, one list per sample, in the model's dtypes.
        timeout: seconds one inference may take (wall clock) before the run is abandoned.
        boot_timeout: seconds the firmware has to say hello.
        device: a real board speaking the harness protocol, e.g. ``serial:///dev/ttyACM0``: its
            counts are SysTick ticks at the processor clock, i.e. cycles (``result.cycles``), and
            ``result.instructions`` stays empty.

    Returns:
        An :class:`EmulationResult`.

    Raises:
        DeviceError: the firmware faults, reports an error or stops answering.
        BackendError: ``qemu-system-arm`` is missing or the ELF does not exist.

    Example:
        >>> result = run("fw/firmware.elf", "cortex-m4", [[x] for x in samples])  # doctest: +SKIP
        >>> result.instructions[0] > 0  # doctest: +SKIP
        True
    """
    start = time.perf_counter()
    board = board_for(core)
    if device is not None:
        from edgedl.mcu.protocol import open_device

        transport = open_device(device)
        try:
            client = Client(transport, timeout=timeout, name=device)
            info = client.hello(request=True, timeout=boot_timeout)
            result = EmulationResult(device, board.core, info, 0.0)
            _collect(client, inputs, result, None)
        finally:
            transport.close()
    else:
        with Emulator(elf, board, timeout=timeout, boot_timeout=boot_timeout) as emu:
            result = EmulationResult(board.machine, board.core, emu.info, board.instructions_per_tick)
            _collect(emu.client, inputs, result, board.instructions_per_tick)
    log.info("%d inference(s) on %s in %.2f s", len(inputs), result.board, time.perf_counter() - start)
    return result


def _collect(client: Client, inputs, result: EmulationResult, per_tick: float | None) -> None:
    for sample in inputs:
        inference: Inference = client.infer(list(sample))
        result.outputs.append(inference.outputs)
        result.ticks.append(inference.ticks)
        if per_tick:  # emulated: ticks are a fixed number of instructions
            result.instructions.append(round(inference.ticks * per_tick))
            result.operators.append([(op, round(t * per_tick)) for op, t in inference.operators])
        else:  # a real board: SysTick at the processor clock counts cycles
            result.cycles.append(inference.ticks)
            result.operators.append(list(inference.operators))
