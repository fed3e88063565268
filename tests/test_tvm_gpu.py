"""TVM's CUDA bundles on a real GPU: fidelity against LiteRT on the CPU and latency against TVM on
the CPU. Runs only where a CUDA device is present (``pytest -m gpu``); without one it skips, and the
CUDA code is still generated and assembled by ``ptxas`` (tests/test_compile.py)."""

import pytest

pytestmark = [pytest.mark.tvm, pytest.mark.slow, pytest.mark.gpu]
tvm = pytest.importorskip("tvm")
if not tvm.cuda(0).exist:
    pytest.skip("no CUDA GPU on this machine", allow_module_level=True)


def _gpu_target() -> str:
    """The edgedl CUDA target for the GPU here (sm_90 for a Hopper card, sm_80 otherwise)."""
    major = int(str(tvm.cuda(0).compute_version).split(".")[0])
    return "cuda_sm90" if major >= 9 else "cuda_sm80"


@pytest.fixture(scope="module")
def lenet(trained_lenet):
    return trained_lenet


def test_a_cuda_bundle_runs_on_the_gpu_as_faithfully_as_on_the_cpu(lenet, tmp_path):
    from edgedl.bench import BenchOptions, bench
    from edgedl.compile import CompileOptions, compile_model

    target = _gpu_target()
    gpu = compile_model(str(lenet["keras"]), target, str(tmp_path / "g.edgedl"),
                        CompileOptions(backend="tvm", num_samples=100))
    cpu = compile_model(str(lenet["keras"]), "x86_64", str(tmp_path / "c.edgedl"),
                        CompileOptions(backend="tvm", num_samples=100))
    f = gpu.manifest["fidelity"]
    assert f.get("checked", True) is not False and f["samples"] == 100  # run on the GPU, not assumed
    assert f["top1_agreement"] >= 0.99 and f["snr_db"] > 60
    assert gpu.manifest["runtime"]["device"] == "cuda"
    on_gpu = bench(str(tmp_path / "g.edgedl"), BenchOptions(runs=100, repeats=3, limit=100)).data
    on_cpu = bench(str(tmp_path / "c.edgedl"), BenchOptions(runs=100, repeats=3, limit=100)).data
    assert on_gpu["timing"]["latency"]["p50_us"] > 0 and on_cpu["timing"]["latency"]["p50_us"] > 0
    assert on_gpu["accuracy"]["accuracy"] == pytest.approx(on_cpu["accuracy"]["accuracy"], abs=0.02)
