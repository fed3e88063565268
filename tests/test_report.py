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
    """The run rows (their cells), images (their attributes) and Pareto items of a report page."""

    def __init__(self, text):
        super().__init__()
        self.rows, self.images, self.pareto, self.comparisons = {}, [], [], {}
        self._row = self._cells = None
        self._in_td = self._in_li = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "tr" and ("run" in classes or "comparison" in classes):
            self._row, self._cells = (("run" if "run" in classes else "comparison"), a["data-run"], classes), []
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
            (self.rows if kind == "run" else self.comparisons)[key] = (self._cells, classes)
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
        assert cells[4] == f"{r['timing']['latency']['p50_us']:,.1f}"
        assert cells[7] == f"{r['timing']['throughput_per_s']:,.0f}"
        assert cells[8] == f"{100 * r['accuracy']['accuracy']:.1f}%"
        assert cells[9] == f"{r['bundle']['size_bytes'] / 1024:,.1f}"
        assert "MiB" in cells[10]
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
        assert re.search(rf"^\| {name} \| {backend} \| x86_64 \| local", text, re.M)
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
