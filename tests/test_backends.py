"""The shared backend harness: every backend in the registry, compiled into a bundle and run through
``edgedl.runtime`` on real digits, against a reference computed here, within the tolerance stated
for that backend.

The reference never goes through edgedl's own runtime: the int8 ``.tflite`` runs on LiteRT's
interpreter as shipped (XNNPACK on, its own quantization parameters), or, for a backend that
implements LiteRT's portable reference kernels (TFLite Micro), on those kernels; the float model on
Keras. A
backend that cannot run on this host (Vela's command stream needs an Ethos-U NPU) is held to what it
can do here: a bundle with its estimates, a manifest that says the check did not run and why, and a
runtime that refuses it by name.

A new backend in ``edgedl.backends.REGISTRY`` fails ``test_every_registered_backend_has_a_stated_tolerance``
until it gets a row in ``SPECS``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

import edgedl.runtime as rt
from edgedl.backends import backend_names, get_backend
from edgedl.compile import CompileOptions, compile_model
from edgedl.errors import BackendError
from edgedl.targets import load_target

pytestmark = pytest.mark.slow

NUM_SAMPLES = 100


@dataclass(frozen=True)
class Spec:
    """How one backend is held to the reference."""

    target: str                     # a target of targets/ that lists the backend
    source: str                     # "int8": the shared int8 .tflite (int8 I/O) on LiteRT as shipped;
                                    # "int8-reference": on LiteRT's reference kernels; "float": the trained .keras
    min_agreement: float = 1.0      # top-1 agreement with the reference, at least
    max_abs_error: float = 0.0      # on the dequantized / float outputs, at most (inclusive)
    runs_here: bool = True          # False: compiled and checked for its estimates only
    module: str = ""                # the optional package the backend needs


SPECS = {
    # LiteRT in the bundle is the reference interpreter itself: the same numbers, bit for bit.
    "litert": Spec("x86_64", "int8", module="ai_edge_litert"),
    # TVM's exact int8 lowering reproduces LiteRT's default (XNNPACK) kernels bit for bit.
    "tvm": Spec("x86_64", "int8", module="tvm"),
    # TFLite Micro implements LiteRT's reference kernels, and compile holds it to them; it still rounds
    # a few outputs differently (0.4% of this LeNet's, by up to 5 quanta of 1/256), rarely the top-1 class.
    "tflm": Spec("cortex_m7", "int8-reference", min_agreement=0.98, max_abs_error=8 / 256, module="tflite_micro"),
    # A float model converted to ONNX (via .tflite and tf2onnx): float32 round-off only.
    "onnxruntime": Spec("x86_64", "float", max_abs_error=1e-4, module="onnxruntime"),
    # Vela's output needs an Ethos-U NPU: compiled, estimated, refused by the runtime here.
    "vela": Spec("ethos_u55_128", "int8", runs_here=False, module="ethosu.vela"),
}


@pytest.fixture(scope="module")
def samples():
    """NUM_SAMPLES class-balanced digits from the test split: the ones compile checks against too."""
    from edgedl.data import load_dataset

    data = load_dataset("digits", limit=NUM_SAMPLES)
    return data.x_test[:NUM_SAMPLES], data.y_test[:NUM_SAMPLES]


def litert_reference(tflite_path, x: np.ndarray, reference_kernels: bool = False) -> np.ndarray:
    """LiteRT's interpreter as shipped (or on its reference kernels), on float samples: quantize, invoke
    one at a time, dequantize."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"experimental_op_resolver_type": OpResolverType.BUILTIN_REF} if reference_kernels else {}
    interpreter = Interpreter(model_path=str(tflite_path), **kwargs)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
    outputs = []
    for sample in x:
        q = np.clip(np.round(sample / s_in) + z_in, -128, 127).astype(inp["dtype"]) if s_in else sample
        interpreter.set_tensor(inp["index"], q[None].astype(inp["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0]
        outputs.append((y.astype(np.float32) - z_out) * s_out if s_out else y.astype(np.float32))
    return np.stack(outputs)


@pytest.fixture(scope="module", autouse=True)
def references(trained_lenet, samples):
    """The reference outputs on the samples, by source kind (computed once, before anything compiles:
    the Keras run here also keeps the first .tflite compile clear of the forked-probe crash that
    test_backend_litert.py's xfail pins, whichever test runs first)."""
    x, _ = samples
    return {"int8": litert_reference(trained_lenet["int8"], x),
            "int8-reference": litert_reference(trained_lenet["int8"], x, reference_kernels=True),
            "float": np.asarray(trained_lenet["model"].predict(x, batch_size=64, verbose=0), np.float32)}


def compile_for(name: str, trained_lenet, folder):
    """Compile the shared LeNet with backend ``name`` for its harness target; the bundle's manifest."""
    spec = SPECS[name]
    pytest.importorskip(spec.module)
    if name == "onnxruntime":
        pytest.importorskip("tf2onnx", reason="a Keras model reaches ONNX Runtime through tf2onnx")
    source = trained_lenet["int8"] if spec.source.startswith("int8") else trained_lenet["keras"]
    out = folder / f"{name}.edgedl"
    compile_model(str(source), spec.target, str(out),
                  CompileOptions(backend=name, dataset="digits", num_samples=NUM_SAMPLES))
    return out, json.loads((out / "manifest.json").read_text())


def test_every_registered_backend_has_a_stated_tolerance():
    assert sorted(SPECS) == backend_names()
    for name, spec in SPECS.items():
        target = load_target(spec.target)
        assert name in target.backends, f"{spec.target} does not list {name}"
        assert get_backend(name).runs_here(target)[0] is spec.runs_here, name


RUNNABLE = [n for n in backend_names() if n not in SPECS or SPECS[n].runs_here]


@pytest.mark.parametrize("name", RUNNABLE)
def test_the_bundles_runtime_matches_the_reference_within_the_backends_tolerance(name, trained_lenet, samples,
                                                                                references, tmp_path):
    spec = SPECS[name]
    bundle, manifest = compile_for(name, trained_lenet, tmp_path)
    x, y = samples
    reference = references[spec.source]
    model = rt.load(bundle)
    assert model.manifest["backend"] == name and model.manifest["runtime"]["engine"] == name
    outputs = model.predict(x)
    assert outputs.shape == reference.shape == (NUM_SAMPLES, 10) and outputs.dtype == np.float32
    agreement = float(np.mean(outputs.argmax(-1) == reference.argmax(-1)))
    max_abs = float(np.max(np.abs(outputs - reference)))
    assert agreement >= spec.min_agreement, f"{name}: top-1 agreement {agreement} < {spec.min_agreement}"
    assert max_abs <= spec.max_abs_error, f"{name}: max abs error {max_abs} > {spec.max_abs_error}"
    # The model classifies (the reference's accuracy, give or take the disagreements), not just agrees.
    accuracy = float(np.mean(outputs.argmax(-1) == y))
    assert accuracy > 0.7 and abs(accuracy - np.mean(reference.argmax(-1) == y)) <= 1.0 - spec.min_agreement
    # The bundle's own fidelity record is what running it gives: same samples, same reference.
    fidelity = manifest["fidelity"]
    assert fidelity["samples"] == NUM_SAMPLES
    assert fidelity["top1_agreement"] == pytest.approx(agreement, abs=1e-9)
    assert fidelity["max_abs_error"] == pytest.approx(max_abs, abs=1e-6)
    assert fidelity["accuracy"] == pytest.approx(accuracy, abs=1e-9)


def test_vela_compiles_for_the_npu_with_estimates_and_the_runtime_refuses_it_here(trained_lenet, tmp_path):
    bundle, manifest = compile_for("vela", trained_lenet, tmp_path)
    assert manifest["backend"] == "vela" and manifest["runtime"]["engine"] == "ethos-u"
    assert manifest["fidelity"]["checked"] is False and "NPU" in manifest["fidelity"]["reason"]
    e = manifest["estimates"]
    assert e["accelerator"] == "Ethos_U55_128" and e["clock_mhz"] == 500
    assert e["cycles"] >= e["npu_cycles"] > 0 and e["inference_time_ms"] > 0
    assert e["macs"] > 0 and e["sram_used_bytes"] > 0
    assert (bundle / "model_vela.tflite").stat().st_size > 0
    with pytest.raises(BackendError, match="NPU"):
        rt.load(bundle)
