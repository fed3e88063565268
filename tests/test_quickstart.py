"""The main job end to end: train, quantize, compile with LiteRT and TVM, benchmark, compare."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.tvm
def test_quickstart_on_bundled_digits_compares_every_variant(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "EDGEDL_DATA"}
    proc = subprocess.run([sys.executable, "-m", "edgedl.cli.main", "quickstart", "--epochs", "4", "--runs", "30",
                           "--out", str(tmp_path / "qs"), "--json"], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    from edgedl.data import load_dataset

    assert result["dataset"] == "digits" and result["num_test"] == len(load_dataset("digits").y_test)
    rows = {(r["variant"], r["backend"]): r for r in result["rows"]}
    assert set(rows) == {("keras float32", "keras"), ("float32", "litert"), ("float32", "tvm"),
                         ("int8", "litert"), ("int8", "tvm")}
    keras_acc = rows[("keras float32", "keras")]["accuracy"]
    assert keras_acc > 0.85
    # float32 compiled models agree with Keras; int8 loses little.
    for backend in ("litert", "tvm"):
        assert rows[("float32", backend)]["agreement"] >= 0.99
        assert rows[("int8", backend)]["accuracy"] >= keras_acc - 0.03
        assert rows[("float32", backend)]["p50_us"] > 0
    # TVM's int8 LeNet is bit-exact with LiteRT's: the same accuracy to the sample.
    assert rows[("int8", "tvm")]["accuracy"] == rows[("int8", "litert")]["accuracy"]
    assert min(r["vs_fastest"] for r in result["rows"] if r["vs_fastest"]) == 1.0
    written = json.loads((tmp_path / "qs" / "results.json").read_text())
    assert written["rows"] == result["rows"]
    assert (tmp_path / "qs" / "lenet_int8.tflite").stat().st_size < (tmp_path / "qs" / "lenet_float32.tflite").stat().st_size * 0.3


def test_the_quickstart_says_tvm_ran_untuned_and_ends_with_next_steps():
    from edgedl.cli.quickstart import next_steps

    rows = [{"variant": "int8", "backend": "litert"}, {"variant": "int8", "backend": "tvm"}]
    text = next_steps({"out_dir": "edgedl-quickstart", "model": "lenet", "target": "x86_64_avx512", "rows": rows})
    assert "note: TVM ran untuned" in text and "--tune" in text and "MetaSchedule" in text
    lines = text.splitlines()
    assert lines[0] == "results: edgedl-quickstart/results.json"
    steps = lines[lines.index("next:") + 1:]
    assert steps[0].split(":", 1)[1].split() == ["edgedl", "compile", "edgedl-quickstart/lenet.keras", "-t", "x86_64_avx512",
                                              "-q", "int8", "-o", "lenet.edgedl"]
    assert steps[1].split(":", 1)[1].split() == ["edgedl", "bench", "lenet.edgedl"]
    assert all(len(line) <= 100 for line in lines)


def test_the_quickstart_folder_is_ignored_by_git():
    from pathlib import Path

    from edgedl.cli.quickstart import quickstart

    default = next(p.default for p in quickstart.params if p.name == "out_dir")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(["git", "check-ignore", "-q", f"{default}/results.json"], cwd=root)
    if proc.returncode == 128:
        pytest.skip("not a git checkout")
    assert proc.returncode == 0, f"{default}/ would show up in git status after `make quickstart`"


def test_make_test_says_what_it_installs_and_how_long_before_it_starts(tmp_path):
    import shutil
    from pathlib import Path

    if not shutil.which("make"):
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parent.parent
    venv = tmp_path / "venv"  # not there yet: a fresh checkout
    plan = subprocess.run(["make", "-s", "plan-test", f"VENV={venv}"], cwd=root, capture_output=True, text=True,
                          timeout=60)
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()
    assert lines[0] == f"first: {venv} with edgedl and its toolchains (about 3 GB download, a few minutes; once)"
    assert lines[1].startswith("Debian packages")  # to install, missing (and why those tests skip), or all there
    assert lines[2].startswith("then: the test suite, about 15 minutes on two cores")
    assert not venv.exists()  # saying is not doing
    steps = subprocess.run(["make", "-n", "test", f"VENV={venv}"], cwd=root, capture_output=True, text=True,
                           timeout=60).stdout.splitlines()
    first_work = min(i for i, s in enumerate(steps) if s.startswith("python3 -m venv") or s == "sh scripts/system-deps.sh")
    assert any("system-deps.sh --plan" in s for s in steps[:first_work])


def test_the_quickstart_table_says_tvm_ran_untuned_and_its_title_fits_one_line():
    from rich.console import Console

    from edgedl.cli.quickstart import results_table

    row = {"accuracy": 0.98, "agreement": 1.0, "p50_us": 100.0, "vs_fastest": 1.0, "size_bytes": 72_000}
    result = {"model": "lenet", "dataset": "digits", "num_test": 359, "target": "x86_64_avx512",
              "rows": [dict(row, variant="int8", backend="litert"), dict(row, variant="int8", backend="tvm")]}
    console = Console(record=True, width=120)
    console.print(results_table(result))
    lines = console.export_text().splitlines()
    assert lines[0].strip() == "lenet on digits (359 test samples), target x86_64_avx512, batch 1, one thread"
    assert lines[-1].strip() == "TVM untuned: see the note below"
    result["rows"] = result["rows"][:1]
    console = Console(record=True, width=120)
    console.print(results_table(result))
    assert "untuned" not in console.export_text()
