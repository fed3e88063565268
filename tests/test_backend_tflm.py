"""TFLite Micro: the model as a C array, the smallest arena that works (measured), the fit against the
target's RAM and flash, and outputs equal to LiteRT's on real samples."""

import re

import numpy as np
import pytest

from edgedl.backends import get_backend
from edgedl.backends.tflm import RUNTIME_RAM_BYTES
from edgedl.compile import CompileOptions, compile_model
from edgedl.errors import BackendError, UnsupportedOperatorError
from edgedl.graph import read_tflite
from edgedl.targets import load_target

pytest.importorskip("tflite_micro")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lenet(trained_lenet):
    """The shared trained LeNet: .keras (with its metrics JSON) and int8 .tflite with int8 I/O."""
    return trained_lenet


@pytest.fixture(scope="module")
def compiled(lenet, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflm")
    return get_backend("tflm").compile(lenet["int8"], load_target("cortex_m7"), out, {})


def tiny_target(tmp_path, ram_kb, flash_kb):
    toml = tmp_path / "tiny_mcu.toml"
    toml.write_text(f'kind = "mcu"\nbackends = ["tflm"]\n[memory]\nram_kb = {ram_kb}\nflash_kb = {flash_kb}\n')
    return load_target(str(toml))


def test_the_arena_is_the_smallest_that_works(lenet, compiled):
    from edgedl.runtime.tflm import build_interpreter

    model = lenet["int8"].read_bytes()
    arena = compiled.estimates["arena_bytes"]
    assert arena % 16 == 0 and 4 * 1024 < arena < 64 * 1024
    assert build_interpreter(model, arena)[0] is not None
    interpreter, log = build_interpreter(model, arena - 16)
    assert interpreter is None and "missing" in log  # TFLM's own words for a short arena
    assert compiled.estimates["arena_search"]["largest_failing_bytes"] == arena - 16
    assert compiled.runtime["arena_size"] == arena


def test_the_arena_breakdown_is_tflms_own(compiled):
    breakdown = {b["what"]: b for b in compiled.estimates["arena_breakdown"]}
    assert breakdown["arena total"]["bytes"] <= compiled.estimates["arena_bytes"]
    assert breakdown["arena head"]["bytes"] + breakdown["arena tail"]["bytes"] == breakdown["arena total"]["bytes"]
    assert breakdown["NodeAndRegistration struct"]["count"] >= 5  # one per operator


def test_the_c_array_round_trips_to_the_tflite(lenet, compiled):
    model = lenet["int8"].read_bytes()
    source = (compiled.directory / "model_data.cc").read_text()
    header = (compiled.directory / "model_data.h").read_text()
    body = source[source.index("g_model_data[] = {"):source.index("};")]
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body)) == model
    assert "alignas(16) const unsigned char g_model_data[] = {" in source
    assert f"const unsigned int g_model_data_len = {len(model)};" in source
    import hashlib

    sha = hashlib.sha256(model).hexdigest()
    assert f"sha256 {sha}" in source and f"sha256 {sha}" in header
    assert header.count("EDGEDL_G_MODEL_DATA_H_") == 3  # #ifndef, #define, #endif
    assert "extern const unsigned char g_model_data[];" in header
    assert f"g_model_data_arena_size = {compiled.estimates['arena_bytes']};" in header
    assert (compiled.directory / "model.tflite").read_bytes() == model
    top = sorted(f for f in compiled.files if "/" not in f)
    assert top == ["model.tflite", "model_data.cc", "model_data.h"]
    firmware = {f.removeprefix("firmware/") for f in compiled.files if f.startswith("firmware/")}
    assert {"firmware.elf", "main.cc", "op_resolver.cc", "board.ld", "Makefile", "model_data.cc"} <= firmware


def test_flash_and_ram_on_cortex_m7_are_read_from_the_linked_firmware(lenet, compiled):
    e = compiled.estimates
    firmware = e["firmware"]
    assert e["fits"] is True and firmware["built"] and firmware["core"] == "cortex-m7"
    assert e["ram_needed_bytes"] == firmware["ram_bytes"] == firmware["data_bytes"] + firmware["bss_bytes"]
    assert e["ram_needed_bytes"] > firmware["arena_bytes"] > e["arena_bytes"]  # arena, stack, heap; a margin on the arena
    assert e["flash_needed_bytes"] == firmware["flash_bytes"] > e["model_bytes"] == lenet["int8"].stat().st_size
    assert e["ram_budget_bytes"] == 640 * 1024 and e["flash_budget_bytes"] == 2 << 20
    assert "read from the linked firmware" in e["note"]


def test_without_firmware_the_fit_check_uses_stated_allowances(lenet, tmp_path):
    e = get_backend("tflm").compile(lenet["int8"], load_target("cortex_m7"), tmp_path, {"firmware": False}).estimates
    assert e["fits"] is True and "firmware" not in e
    assert e["ram_needed_bytes"] == e["arena_bytes"] + RUNTIME_RAM_BYTES
    assert e["flash_needed_bytes"] == e["model_bytes"] + e["code_flash_bytes"]
    assert "allowances" in e["note"]


def test_a_model_over_the_ram_budget_is_refused_saying_by_how_much(lenet, tmp_path):
    with pytest.raises(BackendError, match=r"does not fit tiny_mcu: needs [\d.]+ KiB of RAM \(arena [\d.]+ KiB \+ "
                                           r"16 KiB runtime\), tiny_mcu has 8 KiB: [\d.]+ KiB over$"):
        get_backend("tflm").compile(lenet["int8"], tiny_target(tmp_path, 8, 4096), tmp_path / "out", {})


def test_a_model_over_the_flash_budget_is_refused_saying_by_how_much(lenet, tmp_path):
    with pytest.raises(BackendError, match=r"needs [\d.]+ KiB of flash \(model [\d.]+ KiB \+ [\d.]+ KiB code\), "
                                           r"tiny_mcu has 64 KiB: [\d.]+ KiB over"):
        get_backend("tflm").compile(lenet["int8"], tiny_target(tmp_path, 1024, 64), tmp_path / "out", {})


def test_tflm_computes_what_litert_computes_on_real_digits(lenet, compiled):
    """Measured on LeNet int8 over the 359 digits test samples, three training seeds: TFLM equals LiteRT's
    builtin kernels bit for bit but for at most one output one step apart (1 of 3590); XNNPACK rounds
    differently and lands up to 5 steps away, never changing the top-1 class."""
    from edgedl.data import load_dataset
    from edgedl.runtime.engines import LiteRTEngine
    from edgedl.runtime.quant import quantize

    x = load_dataset("digits").x_test
    tflm = get_backend("tflm").load(compiled)
    builtin, xnnpack = LiteRTEngine(lenet["int8"], xnnpack=False), LiteRTEngine(lenet["int8"])
    assert tflm.inputs == builtin.inputs and tflm.outputs == builtin.outputs
    raw = [quantize(s[None], tflm.inputs[0]) for s in x]
    y = np.stack([tflm.invoke(r) for r in raw]).astype(int)
    assert y.shape == (len(x), 1, 10)
    off = np.abs(y - np.stack([builtin.invoke(r) for r in raw]))
    assert off.max() <= 1 and np.count_nonzero(off) <= 2
    y_xnnpack = np.stack([xnnpack.invoke(r) for r in raw]).astype(int)
    assert np.abs(y - y_xnnpack).max() <= 8
    assert np.mean(y.argmax(-1) == y_xnnpack.argmax(-1)) >= 0.99


def test_operators_tflm_lacks_are_all_named(tmp_path):
    from edgedl import _lazy
    from edgedl.convert import to_tflite

    keras, tf = _lazy.keras(), _lazy.tf()
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, activation="gelu")(inputs)
    x = keras.layers.Lambda(lambda t: tf.tile(t, [1, 2]))(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    path = tmp_path / "gelu_tile.tflite"
    path.write_bytes(to_tflite(model, "int8", np.random.default_rng(0).random((16, 4), dtype=np.float32), "int8"))
    tflm = get_backend("tflm")
    assert set(tflm.unsupported_ops(read_tflite(path), load_target("cortex_m4"))) == {"GELU", "TILE"}
    with pytest.raises(UnsupportedOperatorError, match="TFLite Micro has no kernel for operator.s. GELU, TILE"):
        tflm.compile(path, load_target("cortex_m4"), tmp_path / "out", {})


def test_the_reference_interpreter_runs_here_for_every_target():
    tflm = get_backend("tflm")
    for name in ("cortex_m4", "cortex_m7", "ethos_u55_128"):
        assert tflm.runs_here(load_target(name)) == (True, "")


def test_the_pipeline_writes_a_checked_bundle_for_cortex_m7(lenet, tmp_path):
    out = tmp_path / "m7.edgedl"
    r = compile_model(str(lenet["keras"]), "cortex_m7", str(out),
                      CompileOptions(quantize="int8", io_type="int8", backend="tflm", num_samples=100))
    m = r.manifest
    assert m["backend"] == "tflm" and m["runtime"]["engine"] == "tflm"
    assert m["runtime"]["arena_size"] == m["estimates"]["arena_bytes"] > 0 and m["estimates"]["fits"]
    f = m["fidelity"]
    assert f["samples"] == 100 and f["top1_agreement"] >= 0.98  # TFLM int8 against the float Keras model
    assert f["max_abs_error"] < 0.1
    assert sorted(e["path"] for e in m["files"] if "/" not in e["path"]) == ["model.tflite", "model_data.cc",
                                                                              "model_data.h"]
    assert "firmware/firmware.elf" in {e["path"] for e in m["files"]}
    assert m["toolchain"]["tflite-micro"]


def test_a_stripped_model_runs_in_tflm_exactly_as_the_full_one(lenet, compiled, tmp_path):
    """--strip-names shares the empty buffer and repeated tables; TFLM reads the weights in place all the same."""
    from edgedl.convert import strip_names
    from edgedl.data import load_dataset
    from edgedl.runtime.quant import quantize

    stripped = tmp_path / "stripped.tflite"
    stripped.write_bytes(strip_names(lenet["int8"].read_bytes()))
    small = get_backend("tflm").compile(stripped, load_target("cortex_m7"), tmp_path / "out", {})
    assert small.estimates["arena_bytes"] == compiled.estimates["arena_bytes"]
    full, lean = get_backend("tflm").load(compiled), get_backend("tflm").load(small)
    raw = [quantize(s[None], full.inputs[0]) for s in load_dataset("digits").x_test[:40]]
    np.testing.assert_array_equal(np.stack([lean.invoke(r) for r in raw]), np.stack([full.invoke(r) for r in raw]))


def signal_model(path, n=16):
    """A .tflite with one of TFLite Micro's Signal operators (SignalFftAutoScale, of its audio front
    end), which LiteRT's Python runtime does not have: int16 [1, n] -> reshape -> auto-scale -> reshape."""
    import flatbuffers
    from tflite_micro import runtime

    fb = runtime.schema_fb

    def tensor(name, shape, ttype, buffer=0):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), shape, ttype, buffer
        return t

    def code(builtin, custom=None):
        c = fb.OperatorCodeT()
        c.builtinCode = c.deprecatedBuiltinCode = builtin
        c.customCode, c.version = custom, 1
        return c

    def op(index, inputs, outputs):
        o = fb.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = index, inputs, outputs
        return o

    T = fb.TensorType
    model = fb.ModelT()
    model.version, model.buffers = 3, [fb.BufferT() for _ in range(3)]
    model.buffers[1].data = list(np.array([n], np.int32).tobytes())
    model.buffers[2].data = list(np.array([1, n], np.int32).tobytes())
    graph = fb.SubGraphT()
    graph.tensors = [tensor("input", [1, n], T.INT16), tensor("flat", [n], T.INT16), tensor("scaled", [n], T.INT16),
                     tensor("scale_bit", [], T.INT32), tensor("output", [1, n], T.INT16),
                     tensor("flat_shape", [1], T.INT32, 1), tensor("out_shape", [2], T.INT32, 2)]
    model.operatorCodes = [code(fb.BuiltinOperator.RESHAPE), code(fb.BuiltinOperator.CUSTOM, b"SignalFftAutoScale")]
    graph.operators = [op(0, [0, 5], [1]), op(1, [1], [2, 3]), op(0, [2, 6], [4])]
    graph.inputs, graph.outputs, graph.name = [0], [4], b"main"
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
    return path


def test_a_model_with_operators_only_tflite_micro_has_compiles_for_it_checked_against_its_interpreter(tmp_path):
    from edgedl.errors import InputFileError, OptionError
    from edgedl.runtime.engines import LiteRTEngine

    model = signal_model(tmp_path / "autoscale.tflite")
    with pytest.raises(InputFileError, match="unresolved custom op: SignalFftAutoScale"):
        LiteRTEngine(model)  # what made compile refuse it for every target before
    bundle = compile_model(str(model), "cortex_m7", str(tmp_path / "m7.edgedl"), CompileOptions(num_samples=20))
    m = bundle.manifest
    assert m.backend == "tflm" and "SignalFftAutoScale" in m["estimates"]["operator_kernels"]
    assert m.fidelity["reference"] == "TFLite Micro's interpreter on autoscale.tflite"
    assert m.fidelity["max_abs_error"] == 0.0 and m["samples"]["synthetic"] == [-32768.0, 32767.0]
    # the firmware harness links TFLite Micro's built-in kernels, not its Signal library: said, not hidden
    assert m["estimates"]["firmware"]["built"] is False
    assert "Register_FFT_AUTO_SCALE" in m["estimates"]["firmware"]["reason"]
    x = np.arange(16, dtype=np.int16).reshape(1, 16) * 10 - 50
    from edgedl.runtime import load

    y = load(bundle.path).predict_raw(x)
    assert np.array_equal(y, x * 256)  # auto-scaled: shifted left as far as int16 holds its largest value (100)
    with pytest.raises(OptionError, match="autoscale.tflite has operators only TFLite Micro runs; target 'x86_64' "
                                          "takes litert, tvm, onnxruntime, not tflm"):
        compile_model(str(model), "x86_64", str(tmp_path / "x86.edgedl"), CompileOptions(num_samples=20))
