"""`edgedl report`: real benchmark results as a self-contained HTML page (checked in a headless browser)
or Markdown, the Pareto front of accuracy vs latency, and the regression check against a baseline."""

import base64
import copy
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from edgedl.errors import InputFileError, OptionError
from edgedl.report import SCHEMA, build_report, load_results, pareto_front

pytestmark = pytest.mark.slow

VARIANTS = [  # (bundle name, backend, quantize, io)
    ("lenet_float32", "litert", "none", "float"),
    ("lenet_int8", "litert", "int8", "float"),
    ("lenet_tvm_int8", "tvm", "int8", "int8"),
]
PRECISIONS = {"lenet_float32": "float32", "lenet_int8": "int8, I/O float32", "lenet_tvm_int8": "int8, I/O int8"}


@pytest.fixture(scope="module")
def runs(trained_lenet, tmp_path_factory):
    """Three real benchmark results: the shared trained LeNet, compiled three ways, benchmarked here."""
    pytest.importorskip("tvm")
    from edgedl.bench.harness import bench
    from edgedl.bench.options import BenchOptions
    from edgedl.compile import CompileOptions, compile_model
    d = tmp_path_factory.mktemp("report")
    keras_path = trained_lenet["keras"]
    files = []
    for name, backend, quantize, io_type in VARIANTS:
        bundle = d / f"{name}.edgedl"
        compile_model(str(keras_path), "x86_64", str(bundle),
                      CompileOptions(backend=backend, quantize=quantize, io_type=io_type, num_samples=50))
        files.append(bench(str(bundle), BenchOptions(runs=50, repeats=2, limit=100)).save(d / f"{name}.json"))
    return files


def edgedl(*args):
    proc = subprocess.run([sys.executable, "-m", "edgedl.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def slowed(path: Path, out: Path, factor: float) -> Path:
    """A copy of a real result whose latencies are all ``factor`` times the measured ones."""
    r = json.loads(path.read_text())
    lat = r["timing"]["latency"]
    for k in ("p50_us", "p90_us", "p99_us", "mean_us", "min_us", "max_us"):
        lat[k] *= factor
    r["timing"]["repeat_p50_us"] = [v * factor for v in r["timing"]["repeat_p50_us"]]
    out.write_text(json.dumps(r))
    return out


class DOM(HTMLParser):
    """The run rows (their cells), images (their attributes) and Pareto items of a report page; the
    rows of every other table by their class (``tables["detail"][label]``: a list of rows' cells)."""

    def __init__(self, text):
        super().__init__()
        self.rows, self.images, self.pareto, self.comparisons, self.tables = {}, [], [], {}, {}
        self._row = self._cells = None
        self._in_td = self._in_li = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "tr" and classes:
            self._row, self._cells = (classes[0], a["data-run"], classes), []
        elif tag == "td" and self._row:
            self._in_td = True
            self._cells.append("")
        elif tag == "img":
            self.images.append(a)
        elif tag == "li" and "pareto" in classes:
            self.pareto.append(a["data-run"])

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_td = False
        elif tag == "tr" and self._row:
            kind, key, classes = self._row
            if kind in ("run", "comparison"):
                (self.rows if kind == "run" else self.comparisons)[key] = (self._cells, classes)
            self.tables.setdefault(kind, {}).setdefault(key, []).append(self._cells)
            self._row = None

    def handle_data(self, data):
        if self._in_td:
            self._cells[-1] += data


def png_size(data_uri: str) -> tuple[int, int]:
    from PIL import Image

    assert data_uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).size


def test_html_report_holds_the_runs_the_plots_and_the_pareto_front(runs, tmp_path):
    out = tmp_path / "report.html"
    code, stdout, stderr = edgedl("report", *runs, "-o", out)
    assert code == 0, stderr
    assert "wrote" in stdout and "Pareto front" in stdout
    text = out.read_text()
    dom = DOM(text)
    results = [json.loads(p.read_text()) for p in runs]
    assert set(dom.rows) == {name for name, *_ in VARIANTS}
    for (name, backend, *_), r in zip(VARIANTS, results):
        cells, _ = dom.rows[name]
        assert cells[1] == backend and cells[2] == "x86_64" and cells[3].startswith("local")
        assert cells[4] == PRECISIONS[name]
        assert cells[5] == f"{r['timing']['latency']['p50_us']:,.1f}"
        assert cells[8] == f"{r['timing']['throughput_per_s']:,.0f}"
        lo, hi = r["accuracy"]["ci95"]
        assert cells[9] == f"{100 * r['accuracy']['accuracy']:.1f}% ({100 * lo:.1f}–{100 * hi:.1f}, n=100)"
        assert cells[10] == f"{r['bundle']['size_bytes'] / 1024:,.1f}"
        assert "MiB" in cells[11]
    # Self-contained: every image is inline, nothing is fetched.
    assert not re.search(r'(src|href)="(?!data:)', text)
    ids = {img["id"]: png_size(img["src"]) for img in dom.images}
    assert set(ids) == {"plot-tradeoff", "plot-latency"}
    assert all(w >= 600 and h >= 200 for w, h in ids.values())
    # The Pareto front is exactly the runs that no other run beats on accuracy and latency.
    points = {name: (r["accuracy"]["accuracy"], r["timing"]["latency"]["p50_us"])
              for (name, *_), r in zip(VARIANTS, results)}
    front = {n for n, (a, t) in points.items()
             if not any(a2 >= a and t2 <= t and (a2, t2) != (a, t) for a2, t2 in points.values())}
    assert set(dom.pareto) == front and front
    assert "No baseline given" in text


def test_the_report_renders_in_a_headless_browser(runs, tmp_path):
    """Chromium loads the page: the run rows are in the DOM and every plot decodes to its full size."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    page = tmp_path / "report.html"
    build_report(runs).save(page)
    probe = tmp_path / "probe.html"  # the report plus a script that records what the browser decoded
    probe.write_text(page.read_text().replace("</body>", """<script>
window.addEventListener("load", () => {
  for (const img of document.images) {
    img.setAttribute("data-natural-width", img.naturalWidth);
    img.setAttribute("data-natural-height", img.naturalHeight);
    img.setAttribute("data-complete", img.complete);
  }
  document.body.setAttribute("data-probed", "yes");
});
</script></body>"""))
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    proc = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-probed="yes"' in proc.stdout, proc.stdout[:500]
    dom = DOM(proc.stdout)
    assert set(dom.rows) == {name for name, *_ in VARIANTS}
    assert len(dom.images) == 2
    for img in dom.images:
        assert img["data-complete"] == "true"
        assert (int(img["data-natural-width"]), int(img["data-natural-height"])) == png_size(img["src"])

    shot = tmp_path / "shot.png"
    proc = subprocess.run([*flags, "--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={shot}",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    from PIL import Image, ImageStat

    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2000)
    assert ImageStat.Stat(image).stddev[0] > 20  # tables and plots, not a blank page


def test_markdown_report_has_the_same_tables(runs, tmp_path):
    out = tmp_path / "report.md"
    code, _, stderr = edgedl("report", *runs, "-o", out)
    assert code == 0, stderr
    text = out.read_text()
    for name, backend, *_ in VARIANTS:
        assert re.search(rf"^\| {name} \| {backend} \| x86_64 \| local \([^)]*\) \| {PRECISIONS[name]} \|", text, re.M)
    assert "## Pareto front" in text and "## Regression check" in text and "data:image" not in text
    code, stdout, _ = edgedl("report", *runs)  # no -o: Markdown on stdout
    assert code == 0 and stdout.startswith("# Benchmark report") and "| lenet_int8 |" in stdout
    code, stdout, _ = edgedl("report", *runs, "--json")
    summary = json.loads(stdout)
    assert code == 0 and [r["bundle"] for r in summary["runs"]] == [name for name, *_ in VARIANTS]
    assert summary["pareto"] and set(summary["pareto"]) <= {name for name, *_ in VARIANTS}


def test_a_file_may_hold_a_list_of_results(runs, tmp_path):
    both = tmp_path / "all.json"
    both.write_text(json.dumps([json.loads(p.read_text()) for p in runs]))
    report = build_report([both])
    assert [r.label for r in report.runs] == [name for name, *_ in VARIANTS]
    assert all(r.source == str(both) for r in report.runs)


def test_the_same_bundle_twice_gets_distinct_labels(runs):
    report = build_report([runs[0], runs[0]])
    assert [r.label for r in report.runs] == ["lenet_float32 (x86_64, local) #1", "lenet_float32 (x86_64, local) #2"]


def test_a_slowdown_beyond_the_threshold_is_a_regression(runs, tmp_path):
    # The same bundles "measured again": 5 % slower, twice as fast, 50 % slower.
    new = [slowed(runs[0], tmp_path / "float32.json", 1.05), slowed(runs[1], tmp_path / "int8.json", 0.5),
           slowed(runs[2], tmp_path / "tvm.json", 1.5)]
    report = build_report(new, baseline=runs, threshold=0.10)
    verdicts = {c.name: (c.verdict, round(c.change, 3)) for c in report.comparisons}
    assert verdicts == {"lenet_float32": ("unchanged", 0.05), "lenet_int8": ("faster", -0.5),
                        "lenet_tvm_int8": ("regression", 0.5)}
    assert [c.name for c in report.regressions] == ["lenet_tvm_int8"]
    assert [c.name for c in build_report(new, baseline=runs, threshold=0.6).regressions] == []

    out = tmp_path / "check.html"
    code, stdout, stderr = edgedl("report", *new, "--baseline", runs[0], "--baseline", runs[1], "--baseline", runs[2],
                                  "-o", out)
    assert code == 0, stderr  # found, but not asked to fail
    assert "1 regression of 3 matched" in stdout
    dom = DOM(out.read_text())
    base_p50 = json.loads(runs[2].read_text())["timing"]["latency"]["p50_us"]
    cells, classes = dom.comparisons["lenet_tvm_int8 (x86_64, local)"]
    assert cells[3] == f"{base_p50:,.1f}" and cells[4] == f"{1.5 * base_p50:,.1f}"
    assert cells[5] == "+50.0%" and cells[6] == "regression" and "regression" in classes
    assert dom.comparisons["lenet_int8 (x86_64, local)"][0][6] == "faster"
    assert {img["id"] for img in dom.images} == {"plot-tradeoff", "plot-latency", "plot-regression"}

    code, _, stderr = edgedl("report", *new, "--baseline", runs[2], "--fail-on-regression", "-o", tmp_path / "r.md")
    assert code != 0 and "Traceback" not in stderr
    assert re.search(r"^error: 1 regression\(s\) beyond 10%: lenet_tvm_int8 .*\(\+50\.0%\)$", stderr, re.M), stderr
    assert (tmp_path / "r.md").is_file()  # the report is written before the exit code says why
    code, _, stderr = edgedl("report", *new, "--baseline", runs[2], "--threshold", 0.6, "--fail-on-regression")
    assert code == 0, stderr


def test_runs_without_a_baseline_match_are_new_and_missing_ones_not_run(runs):
    report = build_report(runs[:2], baseline=runs[1:])
    assert {c.name: c.verdict for c in report.comparisons} == {
        "lenet_float32": "new", "lenet_int8": "unchanged", "lenet_tvm_int8": "not run"}
    assert not report.regressions


def test_pareto_front_keeps_only_undominated_runs(runs):
    def variant(path, accuracy, p50):
        r = copy.deepcopy(json.loads(path.read_text()))
        r["accuracy"]["accuracy"], r["timing"]["latency"]["p50_us"] = accuracy, p50
        return r

    from edgedl.report import Run

    points = [Run(variant(runs[0], 0.95, 100.0), "a", "slow-accurate"), Run(variant(runs[1], 0.90, 20.0), "b", "fast"),
              Run(variant(runs[2], 0.85, 50.0), "c", "dominated"), Run(variant(runs[1], 0.95, 100.0), "d", "tie")]
    assert [r.label for r in pareto_front(points)] == ["fast", "slow-accurate", "tie"]


@pytest.mark.parametrize("content, message", [
    ("this is not json", "is not JSON"),
    ('{"format_version": 1, "backend": "litert", "files": []}', 'no "schema" field'),
    ('{"schema": "edgedl.bench/9"}', "its schema edgedl.bench/9 is not edgedl.bench/1"),
    ("[]", "holds an empty list"),
    ('{"schema": "edgedl.bench/1", "bundle": {"path": "x", "backend": "litert", "target": "x86_64"}}',
     "lacks timing.latency.p50_us"),
])
def test_a_file_that_is_not_a_bench_result_is_named_in_one_line(runs, tmp_path, content, message):
    bad = tmp_path / "notes.json"
    bad.write_text(content)
    code, _, stderr = edgedl("report", runs[0], bad, "-o", tmp_path / "r.html")
    assert code != 0 and "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "notes.json" in lines[0] and message in lines[0], stderr
    assert not (tmp_path / "r.html").exists()


def test_a_bundle_manifest_and_a_bad_list_item_are_refused(runs, tmp_path):
    manifest = Path(json.loads(runs[0].read_text())["bundle"]["path"]) / "manifest.json"
    with pytest.raises(InputFileError, match=r"manifest\.json: is not a benchmark result"):
        load_results([manifest])
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([json.loads(runs[0].read_text()), {"schema": SCHEMA}]))
    with pytest.raises(InputFileError, match=r"mixed\.json: item 1 is not a benchmark result: it lacks bundle\.path"):
        load_results([mixed])
    with pytest.raises(InputFileError, match="no such file"):
        load_results([tmp_path / "missing.json"])


def test_bad_options_are_refused(runs, tmp_path):
    with pytest.raises(OptionError, match="--threshold must be a positive fraction"):
        build_report(runs, baseline=runs, threshold=0)
    with pytest.raises(OptionError, match="end the file name in .html"):
        build_report(runs).save(tmp_path / "report.pdf")
    assert not (tmp_path / "report.pdf").exists()


def test_the_report_is_written_atomically(runs, tmp_path, monkeypatch):
    import edgedl.report.bench as report_module

    out = tmp_path / "report.html"
    build_report(runs).save(out)
    before = out.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temporary files left

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report_module, "plot_latency", broken)
    with pytest.raises(RuntimeError):
        build_report(runs).save(out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


# ----- what the report shows of each run besides its latency (issue 29: see inside) -----

@pytest.fixture(scope="module")
def inside(runs, trained_lenet, tmp_path_factory):
    """Real results that carry everything a report shows: two of the bundles above benchmarked again
    with --profile and --label (TVM gives a per-operator profile, LiteRT says why it gives none), a
    TFLite Micro bundle for a Cortex-M4 whose firmware runs on the emulated board (compile's arena
    estimate beside the arena the firmware used; instructions per operator), and a real
    `edgedl optimize -q int8 --quant-report` output."""
    from edgedl.bench.harness import bench
    from edgedl.bench.options import BenchOptions
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.optimize import OptimizeOptions, optimize

    d = tmp_path_factory.mktemp("inside")
    bundles = {name: json.loads(path.read_text())["bundle"]["path"] for (name, *_), path in zip(VARIANTS, runs)}
    files = {}
    for key, bundle, label in (("tvm", bundles["lenet_tvm_int8"], "tvm int8, profiled"),
                               ("litert", bundles["lenet_int8"], "int8 xnnpack")):
        files[key] = bench(bundle, BenchOptions(runs=30, repeats=2, limit=100, profile=True, label=label)).save(
            d / f"{key}.json")
    tflm = d / "lenet_tflm.edgedl"
    compile_model(str(trained_lenet["keras"]), "cortex_m4", str(tflm),
                  CompileOptions(backend="tflm", quantize="int8", io_type="int8", num_samples=50))
    files["tflm"] = bench(str(tflm), BenchOptions(limit=100, profile=True)).save(d / "tflm.json")
    report = optimize(trained_lenet["model"], OptimizeOptions(quantize="int8", quant_report=True, dataset="digits",
                                                              limit=128), progress=False)
    report.save(d / "optimized")
    files["optimized"] = d / "optimized"
    files["bundle"] = d / "lenet_quant.edgedl"  # compile --quant-report keeps the error in the bundle
    compile_model(str(trained_lenet["keras"]), "x86_64", str(files["bundle"]),
                  CompileOptions(quantize="int8", num_samples=50, quant_report=True))
    return files


def test_wilson_interval_matches_the_known_values():
    from edgedl.bench.result import accuracy_ci95, wilson_interval

    lo, hi = wilson_interval(450, 500)  # 90% of 500: Wilson (1927), z = 1.96
    assert (round(lo, 4), round(hi, 4)) == (0.8706, 0.9233)
    lo, hi = wilson_interval(0, 10)  # never empty at 0%: the upper bound of 0 of 10 is 27.75%
    assert lo == 0.0 and round(hi, 4) == 0.2775
    assert wilson_interval(5, 0) is None
    # an older result without ci95: computed from its accuracy and samples
    assert accuracy_ci95({"accuracy": 0.9, "samples": 500}) == pytest.approx([0.8706, 0.9233], abs=1e-4)
    assert accuracy_ci95({"accuracy": 0.9}) is None


def test_bench_records_precision_host_interval_label_and_profile(inside, runs):
    from edgedl.bench.core import cpu_model
    from edgedl.bench.result import BenchResult, wilson_interval

    tvm = BenchResult.load(inside["tvm"])
    assert tvm.data["label"] == "tvm int8, profiled"
    assert tvm.precision == {"mode": "int8", "inputs": ["int8"], "outputs": ["int8"],
                             "basis": "compiled with --quantize int8"}
    assert BenchResult.load(runs[0]).precision["mode"] == "float32"
    tflm = BenchResult.load(inside["tflm"])
    assert tflm.precision["mode"] == "int8"
    host = tvm.data["host"]
    assert host["cpu_model"] == cpu_model() and host["cpu_model"] and host["cpus"] >= 1
    acc = tvm.data["accuracy"]
    assert acc["samples"] == 100
    assert acc["ci95"] == list(wilson_interval(round(acc["accuracy"] * 100), 100))
    text = tvm.to_text().splitlines()
    assert text[0].startswith(f"{tvm.data['bundle']['path']} [tvm int8, profiled]: tvm for x86_64 on local")
    assert re.search(r"accuracy [\d.]+% on 100 digits samples \(95% interval [\d.]+–[\d.]+%\)", tvm.to_text())
    assert tvm.profile["available"] and tvm.profile["rows"]
    assert not BenchResult.load(inside["litert"]).profile["available"]


def test_the_report_shows_what_each_run_is_and_what_is_inside(inside, tmp_path):
    from edgedl.bench.core import cpu_model
    from edgedl.bench.result import BenchResult

    files = [inside["tvm"], inside["litert"], inside["tflm"]]
    out = tmp_path / "inside.html"
    code, stdout, stderr = edgedl("report", *files, inside["optimized"], "-o", out)
    assert code == 0, stderr
    assert "per-layer quantization error of 1 model(s)" in stdout
    text = out.read_text()
    dom = DOM(text)
    results = {k: BenchResult.load(inside[k]) for k in ("tvm", "litert", "tflm")}
    # 5: the labels given to bench; a run without one keeps its bundle's name
    assert set(dom.rows) == {"tvm int8, profiled", "int8 xnnpack"}
    assert set(dom.tables["mcu-run"]) == {"lenet_tflm"}  # its firmware, on the emulated board of its core
    # 1: precision
    assert dom.rows["tvm int8, profiled"][0][4] == "int8, I/O int8"
    assert dom.rows["int8 xnnpack"][0][4] == "int8, I/O float32"
    # 4: accuracy with its interval and samples
    r = results["tvm"]
    lo, hi = r.accuracy_ci95
    assert dom.rows["tvm int8, profiled"][0][9] == f"{100 * r.accuracy:.1f}% ({100 * lo:.1f}–{100 * hi:.1f}, n=100)"
    # 2: host CPU, cores and engine threads in the details
    (detail,) = dom.tables["detail"]["tvm int8, profiled"]
    assert detail[7] == f"{cpu_model()} ({r.data['host']['cpus']})" and detail[8] == "1"
    assert detail[9] == "int8, I/O int8 (compiled with --quantize int8)"
    # 3: the arena TFLite Micro was estimated to need beside the one it used, with their ratio
    estimates = {row[1]: row for row in dom.tables["estimate"]["lenet_tflm"]}
    paired = results["tflm"].data["estimates_vs_measured"]["arena_bytes"]
    cells = estimates["arena_bytes"]
    assert cells[2:4] == [f"{paired['estimated']:,.1f}", f"{paired['measured']:,.1f}"]
    assert cells[5] == f"{paired['measured'] / paired['estimated']:.2f}×"
    assert estimates["flash_needed_bytes"][3:] == ["–", "not measured by this run", "–"]
    # 6: TVM's slowest operators, and LiteRT's reason for having none
    profile = results["tvm"].profile
    rows = dom.tables["profile-op"]["tvm int8, profiled"]
    assert len(rows) == min(15, len(profile["rows"]))
    for cells, row in zip(rows, profile["rows"]):
        assert cells[1] == row["op"] and cells[3] == row["type"] and cells[4] == f"{row['time_us']:,.1f} µs"
        assert cells[5] == f"{100 * row['share']:.1f}%" and cells[2] == (row.get("layer") or "–")
    mcu_profile = results["tflm"].profile
    assert mcu_profile["unit"] == "instructions"
    first = mcu_profile["rows"][0]
    assert dom.tables["profile-op"]["lenet_tflm"][0][4] == f"{int(first['instructions']):,} instructions"
    reason = results["litert"].profile["reason"]
    assert f"int8 xnnpack: no per-operator profile ({reason})." in text.replace("&#x27;", "'")
    # 7: the worst layers of the optimize output, in the file's order (worst first)
    quant = json.loads((inside["optimized"] / "report.json").read_text())["quant_report"]
    layers = [row[0] for rows in dom.tables["quant-layer"].values() for row in rows]
    assert layers == [row["layer"] for row in quant["layers"][:10]]
    worst = dom.tables["quant-layer"][quant["layers"][0]["layer"]][0]
    assert worst[4] == f"{quant['layers'][0]['snr_db']:.1f}" and worst[3] == f"{quant['layers'][0]['cosine']:.5f}"
    ids = {img["id"]: png_size(img["src"]) for img in dom.images}
    assert set(ids) == {"plot-tradeoff", "plot-latency", "plot-profile-1", "plot-profile-2", "plot-quant-1",
                        "plot-mcu-operators"}
    assert all(w >= 400 and h >= 100 for w, h in ids.values())

    # The same in Markdown
    md = tmp_path / "inside.md"
    code, _, stderr = edgedl("report", *files, inside["optimized"] / "report.json", "-o", md)
    assert code == 0, stderr
    text = md.read_text()
    assert re.search(rf"^\| tvm int8, profiled \| tvm \| x86_64 \| local \(x86_64\) \| int8, I/O int8 \| .*\| "
                     rf"{100 * r.accuracy:.1f}% \({100 * lo:.1f}–{100 * hi:.1f}, n=100\) \|", text, re.M)
    assert f"| {cpu_model()} ({r.data['host']['cpus']}) | 1 |" in text
    assert f"| lenet_tflm | arena_bytes | {paired['estimated']:,.1f} | {paired['measured']:,.1f} |" in text
    first = profile["rows"][0]
    assert f"| tvm int8, profiled | {first['op']} | {first.get('layer') or '–'} | {first['type']} |" in text
    assert f"* int8 xnnpack: no per-operator profile ({reason})." in text
    assert "## Per-layer quantization error: lenet" in text
    top = quant["layers"][0]
    assert f"| {top['layer']} | {top['op']} | {top['rmse_rel']:.2e} | {top['cosine']:.5f} | {top['snr_db']:.1f} |" in text
    summary = build_report([*files, inside["optimized"]]).summary()
    assert [q["worst"][0]["layer"] for q in summary["quant_errors"]] == [top["layer"]]
    assert summary["runs"][0]["accuracy_ci95"] == [lo, hi]


def test_accuracy_within_the_interval_is_not_called_more_accurate(runs, tmp_path):
    """500 samples at 98.0% and 98.2%: the intervals overlap, so the faster run is not beaten on accuracy."""
    def variant(path, name, accuracy, p50):
        r = json.loads(path.read_text())
        r["accuracy"].update(accuracy=accuracy, samples=500)
        r["accuracy"].pop("ci95", None)  # as an older result: the interval is computed from accuracy and samples
        r["timing"]["latency"]["p50_us"] = p50
        r["label"] = name
        out = tmp_path / f"{name}.json"
        out.write_text(json.dumps(r))
        return out

    fast, slow = variant(runs[1], "fast", 0.980, 50.0), variant(runs[0], "slow", 0.982, 100.0)
    far = variant(runs[2], "far", 0.90, 20.0)
    report = build_report([fast, slow, far])
    assert [(a.label, b.label) for a, b in report.ties] == [("fast", "slow")]
    items = dict(zip([r.label for r in report.pareto], report._pareto_items()))
    assert "its accuracy lead over fast is within the 95% intervals" in items["slow"]
    assert "within" not in items["far"] and "within" not in items["fast"]
    md = report.to_markdown()
    assert "Accuracy differences within the interval" in md
    assert "* slow at 98.2% (96.6–99.1, n=500) vs fast at 98.0% (96.4–98.9, n=500): 0.2 points apart" in md
    dom = DOM(report.to_html())
    assert dom.rows["fast"][0][9] == "98.0% (96.4–98.9, n=500)"  # the accuracy column
    assert "Accuracy differences within the interval" in report.to_html()


def test_older_results_without_the_new_fields_still_report(runs, tmp_path):
    r = json.loads(runs[1].read_text())
    for key in ("ci95",):
        r["accuracy"].pop(key)
    r["bundle"].pop("precision")
    r["host"].pop("cpu_model")
    r.pop("label", None)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(r))
    report = build_report([old])
    (run,) = report.runs
    assert run.label == "lenet_int8" and run.precision is None
    assert run.accuracy_ci95 == pytest.approx(list(__import__("edgedl.bench.result", fromlist=["x"]).wilson_interval(
        round(r["accuracy"]["accuracy"] * 100), 100)))
    head, rows = report.run_rows()
    assert rows[0][4] == "–" and "n=100" in rows[0][9]
    assert report.detail_rows()[1][0][7] == "x86_64 (" + str(r["host"]["cpus"]) + ")"
    report.save(tmp_path / "old.html")


def test_the_same_label_twice_is_told_apart(inside):
    report = build_report([inside["tvm"], inside["tvm"]])
    assert [r.label for r in report.runs] == ["tvm int8, profiled #1", "tvm int8, profiled #2"]


@pytest.mark.parametrize("label, message", [
    ("", "--label is empty"), ("two\nlines", "--label holds a line break"), ("x" * 81, "--label is 81 characters long"),
])
def test_a_bad_label_is_refused_in_one_line(runs, label, message):
    bundle = json.loads(runs[0].read_text())["bundle"]["path"]
    code, stdout, stderr = edgedl("bench", bundle, "--label", label)
    assert code != 0 and "Traceback" not in stderr and not stdout
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}") and "at most 80 characters" in lines[0], stderr


def test_an_optimize_output_that_is_not_one_is_named_in_one_line(inside, tmp_path):
    report = json.loads((inside["optimized"] / "report.json").read_text())
    cases = {}
    empty = tmp_path / "empty"
    empty.mkdir()
    cases[empty] = "is a folder without report.json; expected the output folder"
    no_quant = tmp_path / "no_quant.json"
    no_quant.write_text(json.dumps(dict(report, quant_report=None)))
    cases[no_quant] = "holds no per-layer quantization error (quant_report is null"
    bad_row = tmp_path / "bad_row.json"
    layers = [dict(report["quant_report"]["layers"][0], snr_db="high")]
    bad_row.write_text(json.dumps(dict(report, quant_report=dict(report["quant_report"], layers=layers))))
    cases[bad_row] = "quant_report.layers[0].snr_db is 'high', not a number"
    for path, message in cases.items():
        code, _, stderr = edgedl("report", inside["tvm"], path, "-o", tmp_path / "r.html")
        assert code != 0 and "Traceback" not in stderr
        lines = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and path.name in lines[0] and message in lines[0], stderr
        assert "--quant-report" in lines[0]
    assert not (tmp_path / "r.html").exists()
    other = tmp_path / "notes.json"
    other.write_text('{"hello": 1}')
    code, _, stderr = edgedl("report", other)
    assert code != 0 and 'no "schema" field' in stderr and "edgedl bench BUNDLE -o run.json" in stderr
    assert "--quant-report" in stderr  # says both kinds of file a report reads


def test_a_bundle_compiled_with_quant_report_shows_its_per_layer_error(inside, runs, tmp_path):
    quant = json.loads((inside["bundle"] / "quant_report.json").read_text())
    for given in (inside["bundle"], inside["bundle"] / "quant_report.json"):
        report = build_report([inside["tvm"], given])
        (q,) = report.quant_errors
        assert q.label == "lenet_quant" and q.mode == "int8" and q.layers == quant["layers"]
        md = report.to_markdown()
        top = quant["layers"][0]
        assert "## Per-layer quantization error: lenet_quant" in md
        assert f"| {top['layer']} | {top['op']} | {top['rmse_rel']:.2e} | {top['cosine']:.5f} | {top['snr_db']:.1f} |" in md
    plain = json.loads(runs[1].read_text())["bundle"]["path"]  # compiled without --quant-report
    code, _, stderr = edgedl("report", inside["tvm"], plain)
    assert code != 0 and "Traceback" not in stderr
    assert re.search(r"^error: .*lenet_int8\.edgedl: is a bundle without quant_report\.json \(compiled without "
                     r"--quant-report\)", stderr, re.M), stderr


def test_bench_label_from_the_command_line_names_the_run(runs, tmp_path):
    bundle = json.loads(runs[0].read_text())["bundle"]["path"]
    out = tmp_path / "labelled.json"
    code, stdout, stderr = edgedl("bench", bundle, "--label", "  fp32 baseline ", "--runs", 5, "--repeats", 1,
                                  "--limit", 20, "-o", out)
    assert code == 0, stderr
    assert stdout.splitlines()[0].startswith(f"{bundle} [fp32 baseline]: litert for x86_64 on local")
    assert re.search(r"accuracy [\d.]+% on 20 digits samples \(95% interval [\d.]+–[\d.]+%\)", stdout)
    assert json.loads(out.read_text())["label"] == "fp32 baseline"
    assert [r.label for r in build_report([out, runs[0]]).runs] == ["fp32 baseline", "lenet_float32"]


# ----- optimize outputs alone: nothing compiled or benchmarked yet -----

@pytest.fixture(scope="module")
def optimized_only(trained_lenet, tmp_path_factory):
    """A real `edgedl optimize -q int8 --quant-report` output folder, and nothing else: no bundle, no result."""
    from edgedl.optimize import OptimizeOptions, optimize

    out = tmp_path_factory.mktemp("optimized_only") / "optimized"
    optimize(trained_lenet["model"], OptimizeOptions(quantize="int8", quant_report=True, dataset="digits", limit=128),
             progress=False).save(out)
    return out


def test_a_report_of_optimize_outputs_alone_has_no_empty_runs_front_or_check_and_says_how_to_get_them(
        optimized_only, tmp_path):
    code, stdout, stderr = edgedl("report", optimized_only)
    assert code == 0, stderr
    for empty in ("## Runs", "## Pareto front", "## Regression check", "No run has an accuracy", "No baseline given"):
        assert empty not in stdout
    (note,) = [line for line in stdout.splitlines() if line.startswith("No benchmark results")]
    model = optimized_only / "model.tflite"
    assert note == ("No benchmark results given, so no runs, Pareto front or regression check: no compiled bundles in "
                    f"{optimized_only}: run `edgedl compile {model} --target TARGET -o optimized.edgedl` and "
                    "`edgedl bench optimized.edgedl -o run.json`, then report run.json with it.")
    assert "## Per-layer quantization error: lenet" in stdout
    assert "The per-layer SNR plots are in the HTML report" in stdout

    page = tmp_path / "report.html"
    code, stdout, stderr = edgedl("report", optimized_only, "-o", page)
    assert code == 0, stderr
    assert stdout.strip() == f"wrote {page}; per-layer quantization error of 1 model(s). {note}"
    text = page.read_text()
    for section in ('id="runs"', 'id="tradeoff"', 'id="pareto"', 'id="regression"', 'id="latency"'):
        assert section not in text
    assert f'<p id="no-runs">{note}</p>' in text.replace("&#x27;", "'")
    assert [img["id"] for img in DOM(text).images] == ["plot-quant-1"]

    # Doing what the note says gives the report its runs and front back.
    commands = [c.replace("TARGET", "x86_64") for c in re.findall(r"`(edgedl [^`]+)`", note)]
    commands[0] += " --backend litert"
    commands[1] += " --runs 20 --repeats 1 --limit 50"
    for command in commands:
        proc = subprocess.run([sys.executable, "-m", "edgedl.cli.main", *command.split()[1:]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    code, stdout, stderr = edgedl("report", tmp_path / "run.json", optimized_only)
    assert code == 0, stderr
    assert "## Runs" in stdout and "## Pareto front" in stdout and "No benchmark results" not in stdout
    assert "1. optimized: " in stdout


def test_a_bundle_alone_is_called_not_benchmarked_and_a_baseline_keeps_the_check(optimized_only, trained_lenet,
                                                                                 tmp_path):
    from edgedl.bench.harness import bench
    from edgedl.bench.options import BenchOptions
    from edgedl.compile import CompileOptions, compile_model

    bundle = tmp_path / "lenet_quant.edgedl"
    compile_model(str(trained_lenet["keras"]), "x86_64", str(bundle),
                  CompileOptions(backend="litert", quantize="int8", num_samples=50, quant_report=True))
    md = build_report([bundle]).to_markdown()
    assert (f"No benchmark results given, so no runs, Pareto front or regression check: {bundle} is compiled but not "
            f"benchmarked: run `edgedl bench {bundle} -o run.json`, then report run.json with it.") in md
    assert "## Per-layer quantization error: lenet_quant" in md and "## Runs" not in md

    # with a baseline the regression check stays: its runs were not run this time
    plain = tmp_path / "lenet_float32.edgedl"
    compile_model(str(trained_lenet["keras"]), "x86_64", str(plain), CompileOptions(backend="litert", num_samples=20))
    base = bench(str(plain), BenchOptions(runs=10, repeats=1, limit=20)).save(tmp_path / "base.json")
    report = build_report([optimized_only], baseline=[base])
    md = report.to_markdown()
    assert "No benchmark results given, so no runs or Pareto front: no compiled bundles in" in md
    assert "## Runs" not in md and "## Pareto front" not in md
    assert "## Regression check" in md and "| lenet_float32 | x86_64 | local |" in md and "| not run |" in md
    assert [c.verdict for c in report.comparisons] == ["not run"] and not report.regressions
