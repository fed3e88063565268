"""`edgedl bench --profile`: per-operator profiles from each engine that gives one, adding up to the
measured inference within the stated tolerance, and an honest "not available" from those that don't."""

import json

import pytest

from cli_run import run_cli  # tests/cli_run.py
from edgedl.bench.harness import bench
from edgedl.bench.options import BenchOptions
from edgedl.bench.profile import MAX_COVERAGE, MIN_COVERAGE, from_mcu, keras_layer, onnxruntime_rows

QUICK = dict(profile=True, warmup=5, runs=30, repeats=1, limit=10)


@pytest.fixture(scope="module")
def bundles(trained_lenet, tmp_path_factory):
    """The trained LeNet compiled for this host with ONNX Runtime and TVM (float), LiteRT (int8), and
    for TFLite Micro without a firmware (its interpreter runs here)."""
    from edgedl.compile import CompileOptions, compile_model

    d = tmp_path_factory.mktemp("profile")
    plans = {"onnxruntime": ("x86_64", "none"), "tvm": ("x86_64", "none"), "litert": ("x86_64", "int8"),
             "tflm": ("cortex_m4", "int8")}
    return {backend: compile_model(str(trained_lenet["keras"]), target, str(d / f"{backend}.edgedl"),
                                   CompileOptions(backend=backend, quantize=quantize, num_samples=20,
                                                  firmware=False)).path
            for backend, (target, quantize) in plans.items()}


def check_adds_up(profile, backend, unit_key="time_us"):
    rows = profile["rows"]
    assert profile["available"] is True and profile["backend"] == backend and rows
    assert [r[unit_key] for r in rows] == sorted((r[unit_key] for r in rows), reverse=True)  # slowest first
    assert all(r[unit_key] >= 0 and r["calls"] >= 1 and r["op"] and r["type"] for r in rows)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert profile["total"] == pytest.approx(sum(r[unit_key] for r in rows))
    assert profile["coverage"] == pytest.approx(profile["total"] / profile["measured_total"])
    assert MIN_COVERAGE[backend] <= profile["coverage"] <= MAX_COVERAGE and profile["within_tolerance"] is True
    assert f"{MIN_COVERAGE[backend]:.0%}" in profile["tolerance"]


def test_onnx_runtime_profiles_each_node_under_its_keras_layer(bundles):
    result = bench(str(bundles["onnxruntime"]), BenchOptions(**QUICK))
    profile = result.data["profile"]
    check_adds_up(profile, "onnxruntime")
    assert profile["unit"] == "us" and "session profiling" in profile["source"]
    types = {r["type"] for r in profile["rows"]}
    assert "Conv" in types and types & {"MatMul", "Gemm", "FusedGemm"}, types
    convs = [r for r in profile["rows"] if r["type"] == "Conv"]
    assert len(convs) == 2 and {r["layer"] for r in convs} == {"conv1", "conv2"}  # LeNet's Keras layer names
    assert result.data["timing"]["latency"]["runs"] == 30  # the timed runs are still the benchmark's


def test_tvm_times_each_kernel_the_relax_vm_calls_under_its_keras_layer(bundles):
    profile = bench(str(bundles["tvm"]), BenchOptions(**QUICK)).data["profile"]
    check_adds_up(profile, "tvm")
    types = {r["type"] for r in profile["rows"]}
    assert "conv2d" in types and types & {"matmul", "dense"}, types
    assert "time_evaluator" in profile["source"] and "kernel map" in profile["source"]
    convs = [r for r in profile["rows"] if r["type"] == "conv2d"]
    assert sorted(r["layer"] for r in convs) == ["conv1", "conv2"]  # LeNet's Keras layer names
    assert {r["layer"] for r in profile["rows"] if r["type"] == "matmul"} == {"fc1", "fc2", "probs"}
    assert all(r["layer"] for r in profile["rows"])  # every kernel of the float model comes from a layer


def test_a_tvm_bundle_keeps_its_kernel_map_under_the_manifest_hashes(bundles):
    from edgedl.bundle import read_manifest

    files = {f["path"]: f for f in read_manifest(bundles["tvm"])["files"]}
    assert files["kernel_layers.json"]["sha256"]  # verified with the library on every load
    kernel_map = json.loads((bundles["tvm"] / "kernel_layers.json").read_text())
    assert kernel_map["schema"] == "edgedl.tvm-kernels/1" and "order" in kernel_map["method"]
    # the default CPU build fuses each convolution with its bias and activation (fused_conv2d_add_relu)
    conv = [c for c in kernel_map["calls"] if c["kernel"].removeprefix("fused_").startswith("conv2d")]
    assert [[(o["op"], o["layer"]) for o in c["operators"]] for c in conv] == [[("CONV_2D", "conv1")],
                                                                             [("CONV_2D", "conv2")]]


def test_fused_tvm_kernels_take_the_layers_of_their_parts(trained_lenet):
    """A tuned or GPU build fuses kernels (fused_conv2d_add_relu): the map follows the fusion."""
    import tvm

    from edgedl.backends.tvm import _kernel_map_or_none, import_model

    operators = []
    mod, _, _ = import_model(trained_lenet["int8"], record=operators)
    kernel_map = _kernel_map_or_none(mod, operators, tvm.target.Target({"kind": "llvm"}), fused=True)
    assert "fused kernels take their parts' operators" in kernel_map["method"]
    conv = [c for c in kernel_map["calls"] if c["kernel"].startswith("fused_conv2d")]
    assert [{o["layer"] for o in c["operators"]} for c in conv] == [{"conv1"}, {"conv2"}]
    assert all(c["operators"] for c in kernel_map["calls"])


def test_kernel_calls_that_do_not_line_up_with_the_map_get_all_its_layers(tmp_path):
    from edgedl.bench.profile import tvm_call_layers

    path = tmp_path / "kernel_layers.json"
    path.write_text(json.dumps({"method": "m", "calls": [{"kernel": "conv2d", "operators": [{"layer": "a"}]},
                                                         {"kernel": "conv2d", "operators": [{"layer": "b"}]},
                                                         {"kernel": "relu", "operators": [{"layer": None}]}]}))
    assert tvm_call_layers(["conv2d", "conv2d", "relu"], path)[0] == ["a", "b", None]
    assert tvm_call_layers(["conv2d"], path)[0] == ["a, b"]  # one call where the map has two
    layers, how = tvm_call_layers(["conv2d"], tmp_path / "absent.json")
    assert layers == [None] and "no kernel map" in how


@pytest.mark.parametrize("backend, says", [("litert", "no per-operator profiler"), ("tflm", "no MicroProfiler")])
def test_engines_without_a_profiler_say_so_and_invent_nothing(bundles, backend, says):
    result = bench(str(bundles[backend]), BenchOptions(**QUICK))
    profile = result.data["profile"]
    assert profile["available"] is False and profile["rows"] == [] and says in profile["reason"]
    assert "timing" in result.data  # the benchmark itself is whole


def test_the_cli_flag_puts_the_profile_in_the_result_json_and_leaves_it_out_without(bundles, capsys, tmp_path):
    for flag, has in ((["--profile"], True), ([], False)):
        out = tmp_path / f"run{len(flag)}.json"
        code, _, err = run_cli(capsys, "bench", bundles["onnxruntime"], "--runs", 20, "--repeats", 1, "--limit", 5,
                               "-o", out, *flag)
        assert code == 0, err
        assert ("profile" in json.loads(out.read_text())) is has


def test_a_firmware_profile_is_its_micro_profiler_counts():
    mcu = {"instructions": 1_000_000, "cycles": None, "operators": [
        {"operator": "FULLY_CONNECTED", "count": 3, "instructions": 150_000, "share": 0.16},
        {"operator": "CONV_2D", "count": 2, "instructions": 780_000, "share": 0.84}]}
    profile = from_mcu(mcu)
    assert profile["unit"] == "instructions" and [r["op"] for r in profile["rows"]] == ["CONV_2D", "FULLY_CONNECTED"]
    assert profile["rows"][0]["calls"] == 2 and profile["coverage"] == pytest.approx(0.93)
    assert profile["within_tolerance"] is True and "MicroProfiler" in profile["source"]
    on_board = from_mcu({"instructions": None, "cycles": 500, "operators": [
        {"operator": "CONV_2D", "count": 2, "cycles": 450, "share": 1.0}]})
    assert on_board["unit"] == "cycles" and on_board["rows"][0]["cycles"] == 450
    assert from_mcu({"instructions": 10, "operators": []})["available"] is False


def test_onnx_runtime_traces_leave_out_the_warm_up_runs_and_average_the_rest():
    def run(ts, conv_us, total_us):
        return [{"cat": "Session", "name": "model_run", "ts": ts, "dur": total_us},
                {"cat": "Node", "name": "m_1/conv_1/Conv_kernel_time", "ts": ts + 1, "dur": conv_us,
                 "args": {"op_name": "Conv"}}]

    events = run(0, 500, 1000) + run(2000, 8, 10) + run(3000, 6, 10)  # the first run is a slow warm-up
    profile = onnxruntime_rows(events, skip=1)
    assert profile["rows"] == [{"op": "m_1/conv_1/Conv", "layer": "conv", "type": "Conv", "time_us": 7.0,
                                "calls": 1, "share": 1.0}]
    assert profile["measured_total"] == 10.0 and profile["coverage"] == pytest.approx(0.7)


@pytest.mark.parametrize("name, layer", [("lenet_1/conv1_1/Relu:0_nchwc", "conv1"),
                                         ("sequential/conv2d_1/Relu", "conv2d_1"),
                                         ("fused lenet_1/fc1_1/MatMul_Gemm__6", "fc1"),
                                         ("ReorderOutput_token_5", None), ("conv2d1", None)])
def test_node_names_map_back_to_keras_layers_where_they_carry_the_path(name, layer):
    assert keras_layer(name) == layer


# -- through an `edgedl serve` agent (a real one on loopback, started as tests/test_remote.py starts it) --


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    test_remote = pytest.importorskip("test_remote", reason="remote benches need TVM's RPC and psutil")
    pool = test_remote.agent_pool(tmp_path_factory.mktemp("agent"))
    yield next(pool)(1)[0]
    pool.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
def test_a_bench_through_an_agent_returns_the_profile_measured_on_the_agent(bundles, agent, backend):
    result = bench(str(bundles[backend]), BenchOptions(**QUICK, device=agent.device, timeout=120)).data
    profile = result["profile"]
    check_adds_up(profile, backend)
    assert result["device"] == agent.device and result["remote"]["sessions"] == 1
    assert result["timing"]["latency"]["runs"] == 30  # the timed repeats are whole beside the profile
    if backend == "onnxruntime":
        convs = [r for r in profile["rows"] if r["type"] == "Conv"]
        assert {r["layer"] for r in convs} == {"conv1", "conv2"}
    else:
        assert "conv2d" in {r["type"] for r in profile["rows"]} and "time_evaluator" in profile["source"]


@pytest.mark.slow
def test_an_engine_without_a_profiler_says_so_through_an_agent_too(bundles, agent):
    profile = bench(str(bundles["litert"]), BenchOptions(**QUICK, device=agent.device, timeout=120)).data["profile"]
    assert profile["available"] is False and "no per-operator profiler" in profile["reason"]


def test_the_agent_refuses_a_profile_request_with_fields_it_does_not_take():
    from edgedl.errors import OptionError
    from edgedl.serve import profile

    request = {"bundle": "bundle", "samples": None, "threads": 1, "warmup": 1, "runs": 1, "library": "/tmp/x.so"}
    with pytest.raises(OptionError, match="takes bundle, samples, threads, warmup, runs; got also library"):
        profile(json.dumps(request))
