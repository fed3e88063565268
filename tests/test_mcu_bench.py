"""`edgedl bench` of a Cortex-M bundle runs its firmware: on the emulated board of its core without
--device, on a board on a serial port with --device serial://... (here QEMU's UART on a pseudo-terminal
stands in for the USB serial port of a board). The firmware scores the data set; instructions are
exact, latency is an estimate and says so; flash and RAM come from the linked ELF.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import time

import numpy as np
import pytest

from cli_run import run_cli, the_error  # tests/cli_run.py

pytestmark = pytest.mark.skipif(not (shutil.which("arm-none-eabi-g++") and shutil.which("qemu-system-arm")),
                                reason="needs gcc-arm-none-eabi and qemu-system-arm (scripts/system-deps.sh)")


@pytest.fixture(scope="module")
def bundles(trained_lenet, tmp_path_factory):
    """The trained LeNet, int8, compiled for the Cortex-M4 with CMSIS-NN and with reference kernels."""
    from edgedl.compile import CompileOptions, compile_model

    d = tmp_path_factory.mktemp("mcu_bench")
    out = {}
    for kernels in ("cmsis_nn", "reference"):
        out[kernels] = compile_model(str(trained_lenet["keras"]), "cortex_m4", str(d / f"m4-{kernels}.edgedl"),
                                     CompileOptions(quantize="int8", kernels=kernels, num_samples=50)).path
    return out


def bench_json(capsys, tmp_path, bundle, *args):
    out = tmp_path / f"{bundle.name}.json"
    code, _, err = run_cli(capsys, "bench", bundle, "--limit", 60, "-o", out, *args)
    assert code == 0, err
    return json.loads(out.read_text())


def test_the_firmware_scores_the_data_set_on_the_emulated_board(bundles, capsys, tmp_path):
    from edgedl.bundle import read_manifest

    r = bench_json(capsys, tmp_path, bundles["cmsis_nn"])
    mcu, manifest = r["mcu"], read_manifest(bundles["cmsis_nn"])
    assert r["device"] == "emulated:mps2-an386" and "timing" not in r  # nothing here is a measured time
    assert mcu["board"] == "mps2-an386" and mcu["kernels"] == "cmsis_nn" and mcu["emulated"] is True
    assert r["accuracy"]["samples"] == 60 and r["accuracy"]["computed_on"] == "the firmware's outputs"
    assert abs(r["accuracy"]["accuracy"] - manifest["fidelity"]["accuracy"]) < 0.1  # the same model, other samples
    # CMSIS-NN rounds a few outputs differently from the reference kernels, the top class hardly ever
    assert mcu["fidelity"]["top1_agreement"] >= 0.98 and mcu["fidelity"]["max_abs_difference"] < 0.05
    low, high = mcu["instructions_range"]
    assert 0 < low <= mcu["instructions"] <= high < 1.01 * low  # one model, one path: nearly equal counts
    assert mcu["estimated_latency_ms"] == pytest.approx(
        mcu["instructions"] * mcu["cycles_per_instruction"] / mcu["clock_hz"] * 1e3)
    assert mcu["clock_hz"] == 64_000_000 and "assumed" in mcu["latency_basis"]
    firmware = manifest["estimates"]["firmware"]
    assert (mcu["flash_bytes"], mcu["ram_bytes"]) == (firmware["flash_bytes"], firmware["ram_bytes"])
    assert 0 < mcu["arena_used_bytes"] <= mcu["arena_bytes"] == firmware["arena_bytes"]
    ops = {o["operator"]: o for o in mcu["operators"]}
    assert ops["CONV_2D"]["count"] == 2 and sum(o["instructions"] for o in mcu["operators"]) <= mcu["instructions"]
    assert mcu["operators"][0]["operator"] == "CONV_2D"  # the convolutions dominate LeNet
    assert sum(o["share"] for o in mcu["operators"]) == pytest.approx(1.0)


def test_reference_kernels_are_bit_exact_and_cmsis_nn_needs_fewer_instructions(bundles, capsys, tmp_path):
    ref = bench_json(capsys, tmp_path, bundles["reference"])["mcu"]
    fast = bench_json(capsys, tmp_path, bundles["cmsis_nn"])["mcu"]
    # bit-exact with TFLite Micro's interpreter here; LiteRT's reference kernels round a few
    # FULLY_CONNECTED outputs a step otherwise, never the top class
    assert ref["fidelity"]["tflm_interpreter"] == {"identical_share": 1.0, "max_abs_difference": 0.0}
    assert ref["fidelity"]["top1_agreement"] == 1.0 and ref["fidelity"]["identical_share"] >= 0.9
    assert fast["instructions"] < ref["instructions"] / 2  # measured: about a fifth on the M4
    assert fast["flash_bytes"] != ref["flash_bytes"]


def test_a_board_on_a_serial_port_reports_cycles_not_instructions(bundles, capsys, tmp_path):
    """QEMU makes a pseudo-terminal for the board's UART; edgedl opens it as it opens /dev/ttyACM0."""
    from edgedl.mcu.boards import board_for
    from edgedl.mcu.emulate import qemu_command

    elf = bundles["cmsis_nn"] / "firmware" / "firmware.elf"
    process = subprocess.Popen(qemu_command(elf, board_for("cortex-m4"), serial="pty"), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        said, deadline = b"", time.monotonic() + 20
        while not re.search(rb"/dev/pts/\d+", said) and time.monotonic() < deadline:
            if select.select([process.stdout], [], [], 1)[0]:
                said += os.read(process.stdout.fileno(), 1024)
        port = re.search(rb"/dev/pts/\d+", said).group().decode()
        r = bench_json(capsys, tmp_path, bundles["cmsis_nn"], "--device", f"serial://{port}?baud=921600",
                       "--limit", 10)
    finally:
        process.kill()
        process.wait()
    mcu = r["mcu"]
    assert r["device"].startswith("serial:///dev/pts/") and mcu["emulated"] is False
    assert mcu["instructions"] is None and mcu["cycles"] > 0  # a board's SysTick counts cycles
    assert mcu["estimated_latency_ms"] == pytest.approx(mcu["cycles"] / mcu["clock_hz"] * 1e3)
    assert r["accuracy"]["samples"] == 10 and mcu["fidelity"]["top1_agreement"] >= 0.9


def test_a_serial_device_needs_a_bundle_with_firmware(trained_lenet, capsys, tmp_path):
    from edgedl.compile import CompileOptions, compile_model

    bundle = compile_model(str(trained_lenet["keras"]), "x86_64", str(tmp_path / "x86.edgedl"),
                           CompileOptions(backend="litert", num_samples=20)).path
    line = the_error(*run_cli(capsys, "bench", bundle, "--device", "serial:///dev/ttyACM0")[::2])
    assert "has no microcontroller firmware" in line and "--backend tflm for a Cortex-M target" in line


def test_a_missing_serial_port_is_one_line(bundles, capsys):
    line = the_error(*run_cli(capsys, "bench", bundles["cmsis_nn"], "--device", "serial:///dev/no-such-board")[::2])
    assert "/dev/no-such-board" in line


def test_the_estimate_never_reads_as_a_measured_time(bundles, capsys, tmp_path):
    code, out, err = run_cli(capsys, "bench", bundles["cmsis_nn"], "--limit", 5)
    assert code == 0, err
    assert "estimate" in out and " us " not in out.replace("µs", "us")
    np.testing.assert_equal(True, "instructions" in out)


def test_toolchain_fetch_takes_a_mirror_and_status_says_what_is_cached(capsys, tmp_path, monkeypatch):
    from pathlib import Path

    mirror = Path(os.environ["EDGEDL_MIRROR"])  # tests/conftest.py points it at ../shared/mirror
    monkeypatch.setenv("EDGEDL_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(capsys, "toolchain", "status", "--json")
    assert code == 0, err
    assert not any(s["cached"] for s in json.loads(out)["sources"])
    code, out, err = run_cli(capsys, "toolchain", "fetch", "--mirror", mirror, "--json")
    assert code == 0, err
    fetched = {s["name"]: s for s in json.loads(out)}
    assert fetched["tflite-micro"]["commit"] == "90b983c2b3f1480642e040bbd2ddb37b998f3424"
    assert all(s["cached"] and Path(s["path"]).is_dir() for s in fetched.values())
    assert (Path(fetched["cmsis-nn"]["path"]) / "Include" / "arm_nnfunctions.h").is_file()
    monkeypatch.setenv("EDGEDL_CACHE", str(tmp_path / "other"))
    line = the_error(*run_cli(capsys, "toolchain", "fetch", "--mirror", tmp_path / "empty")[::2])
    assert "is not in the mirror" in line and "--mirror DIR" in line


def test_a_firmware_over_the_targets_ram_is_refused_with_the_measured_numbers(trained_lenet, capsys, tmp_path):
    """The stated allowance (arena + 16 KiB) fits 40 KiB; the linked firmware (arena with its margin,
    stack, heap) does not, and the ELF's numbers are what the error gives."""
    target = tmp_path / "small_m4.toml"
    target.write_text('kind = "mcu"\nbackends = ["tflm"]\n[cpu]\narch = "cortex-m4"\nclock_mhz = 48\n'
                      "[memory]\nram_kb = 40\nflash_kb = 1024\n")
    line = the_error(*run_cli(capsys, "compile", trained_lenet["keras"], "-t", target, "-q", "int8", "--samples", 20,
                              "-o", tmp_path / "small.edgedl")[::2])
    assert re.search(r"does not fit small_m4: the firmware needs [\d.]+ KiB of RAM \(arena [\d.]+ KiB, data, stack "
                     r"and heap\), small_m4 has 40 KiB: [\d.]+ KiB over", line), line
    assert not (tmp_path / "small.edgedl").exists()


def test_a_firmware_profile_has_a_row_per_node_named_by_keras_layer(bundles, capsys, tmp_path):
    from edgedl.graph import read_tflite

    result = bench_json(capsys, tmp_path, bundles["cmsis_nn"], "--profile")
    profile, mcu = result["profile"], result["mcu"]
    ops = read_tflite(bundles["cmsis_nn"] / "model.tflite").ops
    assert [n["operator"] for n in mcu["nodes"]] == [op.name for op in ops]  # one event per node, in order
    rows = sorted(profile["rows"], key=lambda r: r["index"])
    assert [r["index"] for r in rows] == list(range(len(ops))) and all(r["calls"] == 1 for r in rows)
    assert profile["total"] == sum(n["instructions"] for n in mcu["nodes"])
    assert {r["layer"] for r in rows if r["type"] == "CONV_2D"} == {"conv1", "conv2"}
    assert "a row per node" in profile["source"] and profile["within_tolerance"] is True
