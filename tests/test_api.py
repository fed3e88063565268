"""The public Python API: ``import edgedl`` is cheap, names the pipeline's stages and their option
and artifact types, each documented with an example, and the stages chain through the artifacts
they return (a trained model, a Bundle, a BenchResult) the way the README shows."""

import inspect
import subprocess
import sys

import numpy as np
import pytest

import edgedl

TOOLCHAINS = ("tensorflow", "keras", "tvm", "ethosu", "tflite_micro", "onnxruntime", "click", "rich", "matplotlib")


def test_importing_edgedl_and_every_public_name_loads_no_toolchain():
    code = ("import sys, edgedl\n"
            "[getattr(edgedl, name) for name in edgedl.__all__]\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({TOOLCHAINS!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_public_names_are_the_stages_and_their_types():
    assert {"train", "optimize", "compile_model", "bench", "load_target", "runtime"} <= set(edgedl.__all__)
    assert {"TrainOptions", "OptimizeOptions", "CompileOptions", "BenchOptions", "Bundle", "BenchResult"} <= set(
        edgedl.__all__)
    with pytest.raises(AttributeError, match="module 'edgedl' has no attribute 'compile_modle'"):
        edgedl.compile_modle  # noqa: B018


def _documented(name):
    obj = getattr(edgedl, name)
    if inspect.ismodule(obj) and callable(obj):  # a stage module: its function is what a user calls
        obj = getattr(obj, name)
    return inspect.getdoc(obj) or ""


@pytest.mark.parametrize("name", [n for n in edgedl.__all__ if n not in ("__version__", "EdgeDLError")])
def test_every_public_name_is_documented_with_an_example(name):
    doc = _documented(name)
    assert doc, f"edgedl.{name} has no docstring"
    assert ">>>" in doc, f"edgedl.{name}'s docstring shows no example of its use"


def test_a_stage_module_called_runs_its_function_even_after_its_submodules_are_imported():
    import edgedl.bench.harness  # noqa: F401 - importing a submodule must not unbind the callable
    import edgedl.train as train_module

    assert edgedl.train is train_module and callable(edgedl.train) and callable(edgedl.bench)
    with pytest.raises(edgedl.EdgeDLError, match="unknown model 'lenett'"):
        edgedl.train("lenett", edgedl.TrainOptions(dataset="digits", epochs=1), progress=False)


@pytest.mark.slow
def test_the_stages_chain_through_the_artifacts_they_return(trained_lenet, tmp_path):
    bundle = edgedl.compile_model(str(trained_lenet["keras"]), "x86_64", str(tmp_path / "lenet.edgedl"),
                                  edgedl.CompileOptions(backend="litert", quantize="int8", num_samples=50))
    assert isinstance(bundle, edgedl.Bundle)
    assert (bundle.manifest.backend, bundle.manifest.target_name, bundle.manifest.engine) == ("litert", "x86_64",
                                                                                              "litert")
    lines = bundle.summary()
    assert lines[0].startswith(f"{bundle.path}: litert for x86_64, ") and lines[1] == f"  digest: sha256:{bundle.digest}"
    assert bundle.manifest.fidelity["top1_agreement"] >= 0.98 and "top-1 agreement" in lines[3]

    result = edgedl.bench(str(bundle.path), edgedl.BenchOptions(warmup=5, runs=50, repeats=2, limit=100))
    assert isinstance(result, edgedl.BenchResult)
    assert result.backend == "litert" and result.p50 > 0 and result.accuracy > 0.8
    saved = result.save(tmp_path / "run.json")
    assert edgedl.BenchResult.load(saved).to_text() == result.to_text()

    with edgedl.open_bundle(bundle.path) as opened:
        model = edgedl.runtime.load(opened.path)
        x = np.zeros((2, *model.input_shape[1:]), np.float32)
        assert model.predict(x).shape == (2, 10)
