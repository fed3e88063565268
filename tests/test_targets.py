"""Targets are TOML data files; the required devices are there and bad files are named."""

import pytest

from edgedl.errors import TargetError
from edgedl.targets import host_target, list_targets, load_target, target_names

REQUIRED = ["x86_64", "x86_64_avx512", "rpi4", "cortex_a7", "cuda_sm80", "cuda_sm90", "jetson_orin", "mali_g78",
            "ethos_u55_128", "ethos_u55_256", "ethos_u65_256", "ethos_u85_256", "cortex_m4", "cortex_m7"]


def test_the_required_devices_are_described():
    assert set(REQUIRED) <= set(target_names())


def test_every_target_loads_and_tvm_targets_are_dicts():
    for t in list_targets():
        assert t.backends
        if "tvm" in t.backends:
            assert isinstance(t.tvm["target"], dict) and "kind" in t.tvm["target"]


def test_microcontroller_budgets_are_in_bytes():
    m7 = load_target("cortex_m7")
    assert m7.ram_bytes == 640 * 1024 and m7.flash_bytes == 2 * 1024 * 1024


def test_npu_targets_name_accelerator_and_system_config():
    u55 = load_target("ethos_u55_128")
    assert u55.npu["accelerator"] == "ethos-u55-128" and u55.npu["system_config"]


def test_host_target_matches_this_machine():
    assert host_target().cpu["arch"] in ("x86_64", "aarch64")


def test_unknown_target_suggests_near_names():
    with pytest.raises(TargetError, match=r"unknown target 'rpi'. Did you mean rpi4"):
        load_target("rpi")


def test_users_add_their_own_target_file(tmp_path):
    f = tmp_path / "my_board.toml"
    f.write_text('description = "mine"\nkind = "mcu"\nbackends = ["tflm"]\n[memory]\nram_kb = 128\nflash_kb = 512\n')
    t = load_target(str(f))
    assert t.name == "my_board" and t.ram_bytes == 128 * 1024


@pytest.mark.parametrize("body, message", [
    ('kind = "toaster"\nbackends = ["tflm"]\n', "kind must be one of"),
    ('kind = "cpu"\nbackends = ["magic"]\n', "unknown backend"),
    ('kind = "cpu"\nbackends = ["tvm"]\n[tvm]\ntarget = "llvm -mcpu=znver4"\n', "a dict, not a string"),
    ('kind = "mcu"\nbackends = ["tflm"]\n[memory]\nram_kb = -1\n', "positive integer"),
    ('kind = "cpu" backends', "not valid TOML"),
])
def test_invalid_target_files_are_rejected_with_the_reason(tmp_path, body, message):
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises(TargetError, match=message):
        load_target(str(f))
