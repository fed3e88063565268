"""A seeded subset of benchmarks/fuzz.py: tampered manifests and archives and mutated models, each run
through ``edgedl.runtime.load``, ``edgedl bench`` or ``edgedl inspect`` in its own child process.

Nothing that comes in may hurt: every case ends in a one-line error or a clean run; none gives a
traceback, a crash, a hang, a file written outside its scratch, a model or library loaded from
outside the bundle, a tampered bundle loaded, or an edgedl-* folder left in the temp dir.
"""

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUM_CASES = 200
MUST_BE_ZERO = ("crash", "hang", "loaded_outside", "touched_outside", "destroyed_output", "tampered_loaded",
                "half_written_output", "traceback", "wrongly_accepted", "leftover_temp", "unclear_error", "skipped")


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("edgedl_benchmarks_fuzz", ROOT / "benchmarks" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fuzz():
    return _fuzz_module()


@pytest.fixture(scope="module")
def seeds(trained_lenet, tmp_path_factory, fuzz) -> dict:
    """Float and int8 .tflite, LiteRT bundles (folder and archive), a TFLite Micro bundle and evil.so."""
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.convert import to_tflite

    d = tmp_path_factory.mktemp("fuzz_seeds")
    (d / "lenet_float.tflite").write_bytes(to_tflite(trained_lenet["model"], "none"))
    (d / "lenet_int8.tflite").write_bytes(trained_lenet["int8"].read_bytes())
    for name, model, target, backend, archive in [
        ("litert", "lenet_float.tflite", "x86_64", "litert", False),
        ("litert_tar", "lenet_float.tflite", "x86_64", "litert", True),
        ("tflm", "lenet_int8.tflite", "cortex_m4", "tflm", False),
    ]:
        options = CompileOptions(backend=backend, dataset="digits", num_samples=20, archive=archive)
        compile_model(str(d / model), target, str(d / f"{name}.edgedl"), options)
    fuzz.evil_library(d)
    return {p.name: p for p in sorted(d.iterdir()) if p.suffix in (".tflite", ".edgedl", ".so")}


@pytest.fixture(scope="module")
def outcome(fuzz, seeds, tmp_path_factory) -> dict:
    cases = fuzz.quick_cases(NUM_CASES, 0, seeds)
    results = fuzz.run_fuzz(cases, seeds, ROOT, os.environ.get("EDGEDL_DATA"), jobs=2, timeout=30,
                            work=tmp_path_factory.mktemp("fuzz_cases"))
    return fuzz.summarise(results)


def test_the_children_import_this_checkout(fuzz):
    assert Path(fuzz.check_import(ROOT)).resolve() == (ROOT / "edgedl" / "__init__.py").resolve()


def test_the_subset_covers_every_cheap_kind_and_runner(fuzz, seeds):
    cases = fuzz.quick_cases(NUM_CASES, 0, seeds)
    assert len(cases) == NUM_CASES
    assert {c["kind"] for c in cases} == set(fuzz.CHEAP_KINDS)
    assert {c["runner"] for c in cases} == {"load", "bench", "inspect"}
    assert cases == fuzz.quick_cases(NUM_CASES, 0, seeds), "the subset must be the same on every run"


def test_the_evil_library_leaves_its_mark_when_loaded(seeds, tmp_path):
    import subprocess
    import sys

    if "evil.so" not in seeds:
        pytest.skip("no C compiler here to build evil.so")
    mark = tmp_path / "EVIL_RAN"
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(seeds['evil.so'])!r})"],
                   env=dict(os.environ, EDGEDL_FUZZ_MARK=str(mark)), check=True)
    assert mark.exists()


@pytest.mark.slow
@pytest.mark.parametrize("outcome_class", MUST_BE_ZERO)
def test_no_fuzzed_case_ends_in(outcome, outcome_class):
    found = outcome["failures"].get(outcome_class, [])
    shown = "\n".join(f"  {f['count']}x {f['kind']}/{f['mutation']} via {f['runner']}: {f['detail']}" for f in found)
    assert not found, f"{sum(f['count'] for f in found)} fuzzed cases ended in {outcome_class}:\n{shown}"

