"""Facts about the Cortex-M cores edgedl builds firmware for, and the emulated boards that run it.

Each :class:`Board` says how to compile for its core (gcc's CPU and FPU flags), which CMSIS device
header and startup code of ARM's Cortex device family pack it uses, where its code and RAM live
(for the linker script), where its UART is (for the harness protocol), whether CMSIS-NN has
optimised kernels for it (DSP extension on M4/M7, Helium/MVE on M55), and the cycles-per-instruction
assumption that turns the emulator's exact instruction counts into an *estimated* latency.

The memory maps are those of QEMU's models of ARM's MPS2/MPS3 FPGA boards (read with
``info mtree`` of ``qemu-system-arm`` 7.2): ``mps2-an386`` (Cortex-M4), ``mps2-an500`` (Cortex-M7)
and ``mps3-an547`` (Cortex-M55, the Corstone-300 subsystem).  They are the emulated board's memories,
not a product's flash and RAM budget: the target description holds those.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgedl.errors import TargetError

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Region:
    origin: int
    size: int


@dataclass(frozen=True)
class Board:
    """One core and the emulated board edgedl runs it on.

    Attributes:
        core: gcc's name of the core (``cortex-m4``).
        machine: the ``qemu-system-arm -M`` board.
        cpu_flags: gcc flags for the core (CPU, FPU, float ABI, Thumb).
        device: the CMSIS device of the Cortex DFP (``ARMCM4``): ``Device/<device>/Include/<device>.h``,
            ``Source/startup_<device>.c``, ``Source/system_<device>.c``, ``Config/<device>_gcc.ld``.
        device_defines: preprocessor symbols the device header reads (which FPU variant).
        flash: where code and read-only data are linked.
        ram: where data, bss, heap, stack and the tensor arena are linked.
        boot: where the core reads its reset vector when that is not the start of ``flash``: a
            two-word stub (initial stack pointer, reset handler) is linked there, and the startup
            code points VTOR at the full vector table in flash.
        uart_base: the CMSDK APB UART0 the harness speaks its protocol on.
        systick_hz: the emulated board's SysTick (processor) clock. Under ``-icount shift=0`` QEMU
            runs one instruction per virtual nanosecond, so one SysTick tick is
            ``1e9 / systick_hz`` instructions (:attr:`instructions_per_tick`).
        cmsis_nn: whether CMSIS-NN has optimised kernels for the core.
        cmsis_nn_extension: the instruction set extension those kernels use (``DSP``, ``MVE``).
        cycles_per_instruction: the stated assumption that turns instructions into cycles.
        cpi_basis: where that number comes from.
        clock_hz: a typical clock of a microcontroller with this core, for estimates only.
    """

    core: str
    machine: str
    cpu_flags: tuple[str, ...]
    device: str
    device_defines: tuple[str, ...]
    flash: Region
    ram: Region
    boot: int | None
    uart_base: int
    systick_hz: int
    cmsis_nn: bool
    cmsis_nn_extension: str
    cycles_per_instruction: float
    cpi_basis: str
    clock_hz: int

    @property
    def instructions_per_tick(self) -> float:
        """Executed instructions per SysTick tick on the emulated board (``-icount shift=0``)."""
        return 1e9 / self.systick_hz

    @property
    def default_kernels(self) -> str:
        """``"cmsis_nn"`` where the core has CMSIS-NN's optimised kernels, else ``"reference"``."""
        return "cmsis_nn" if self.cmsis_nn else "reference"


_CPI_BASIS = ("an assumption, not a measurement: the emulator counts instructions, not cycles. "
              "{detail} Calibrate against a board (MLPerf Tiny's published results are one anchor).")

BOARDS: dict[str, Board] = {b.core: b for b in (
    Board(
        core="cortex-m4", machine="mps2-an386",
        cpu_flags=("-mthumb", "-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"),
        device="ARMCM4", device_defines=("ARMCM4_FP",),
        flash=Region(0x00000000, 4 * MIB), ram=Region(0x20000000, 4 * MIB), boot=None,  # SSRAM1, SSRAM2/3
        uart_base=0x40004000, systick_hz=25_000_000, cmsis_nn=True, cmsis_nn_extension="DSP",
        cycles_per_instruction=1.2,
        cpi_basis=_CPI_BASIS.format(detail=(
            "Cortex-M4 is single-issue: most instructions take 1 cycle, loads 2 and taken branches 2-4 "
            "(ARM Cortex-M4 Technical Reference Manual, instruction timings); flash wait states add more.")),
        clock_hz=120_000_000),  # MLPerf Tiny's Cortex-M4 reference board runs at 120 MHz
    Board(
        core="cortex-m7", machine="mps2-an500",
        cpu_flags=("-mthumb", "-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard"),
        device="ARMCM7", device_defines=("ARMCM7_DP",),
        flash=Region(0x00000000, 4 * MIB), ram=Region(0x20000000, 4 * MIB), boot=None,
        uart_base=0x40004000, systick_hz=25_000_000, cmsis_nn=True, cmsis_nn_extension="DSP",
        cycles_per_instruction=0.7,
        cpi_basis=_CPI_BASIS.format(detail=(
            "Cortex-M7 dual-issues; ARM quotes 2.14 DMIPS/MHz against the Cortex-M4's 1.25, "
            "about 0.6x its cycles for the same instructions, less with caches missing.")),
        clock_hz=216_000_000),
    Board(
        core="cortex-m55", machine="mps3-an547",
        cpu_flags=("-mthumb", "-mcpu=cortex-m55", "-mfloat-abi=hard"),
        device="ARMCM55", device_defines=(),
        # The Corstone-300 boots secure, so everything uses the secure aliases (address bit 28):
        # code in the 8 MiB QSPI flash, data in the 4 MiB of ISRAM0/1, the reset vector in ITCM
        # (where the secure vector table is at reset), UART0 at its secure address.
        flash=Region(0x38000000, 8 * MIB), ram=Region(0x31000000, 4 * MIB), boot=0x10000000,
        uart_base=0x59303000, systick_hz=32_000_000, cmsis_nn=True, cmsis_nn_extension="MVE",
        cycles_per_instruction=1.0,
        cpi_basis=_CPI_BASIS.format(detail=(
            "Cortex-M55 is single-issue for scalar code and processes a 128-bit MVE instruction in two "
            "beats (ARM Cortex-M55 Technical Reference Manual): one cycle per instruction on average is "
            "taken.")),
        clock_hz=160_000_000),
)}

CORE_ALIASES = {name.replace("-", "_"): name for name in BOARDS} | {name[7:]: name for name in BOARDS}


def board_for(core: str) -> Board:
    """The :class:`Board` of a core: ``cortex-m4``, ``cortex_m4`` and ``m4`` all name the same one.

    Raises:
        TargetError: no board for that core.

    Example:
        >>> board_for("cortex_m4").machine
        'mps2-an386'
    """
    key = str(core).strip().lower()
    name = key if key in BOARDS else CORE_ALIASES.get(key)
    if name is None:
        raise TargetError(f"no MCU board for the core {core!r}; expected one of {', '.join(BOARDS)}")
    return BOARDS[name]
