"""Microcontroller runs (issue 28) as data: a bench result with an ``mcu`` object and no ``timing`` is
read, checked field by field, printed with its latency called an estimate, and reported in tables of
its own, never in the latency tables, the regression check or the accuracy-vs-p50 Pareto front.

The results are written by hand here: they are data in the schema edgedl.bench/1 (the producer, a
firmware run on an emulated or real board, is tested with the firmware)."""

import copy
import json
import re
from html.parser import HTMLParser

import pytest

from edgedl.bench.result import SCHEMA, BenchResult, read_results
from edgedl.errors import InputFileError
from edgedl.report import build_report, compare, pareto_front

from cli_run import run_cli, the_error  # tests/cli_run.py


def mcu_result(**changes) -> dict:
    """DS-CNN on the emulated Cortex-M4 board with CMSIS-NN kernels; ``changes`` set dotted paths (None deletes)."""
    result = {
        "schema": SCHEMA, "created": "2026-01-01T00:00:00", "device": "emulated:mps2-an386",
        "bundle": {"path": "out/ds_cnn_m4.edgedl", "backend": "tflm", "target": "cortex_m4",
                   "source": {"path": "ds_cnn.keras"}, "size_bytes": 61000, "engine": "tflm"},
        "host": {"machine": "x86_64"}, "settings": {"samples": 100, "timeout_s": 120.0},
        "mcu": {"board": "mps2-an386", "core": "cortex-m4", "emulated": True, "kernels": "cmsis_nn",
                "instructions": 1480000, "instructions_range": [1479960, 1480040],
                "cycles": None, "cycles_range": None, "instructions_per_tick": 40.0,
                "clock_hz": 64000000, "cycles_per_instruction": 1.2,
                "cpi_basis": "an assumption, typical of the Cortex-M4 on int8 kernels",
                "estimated_latency_ms": 27.75,
                "latency_basis": "estimate: 1480000 instructions x 1.2 cycles per instruction / 64 MHz "
                                 "(cycles per instruction assumed)",
                "flash_bytes": 177300, "ram_bytes": 43588, "arena_bytes": 17360, "arena_used_bytes": 12000,
                "operators": [
                    {"operator": "CONV_2D", "count": 2, "instructions": 900000, "share": 0.61},
                    {"operator": "DEPTHWISE_CONV_2D", "count": 2, "instructions": 400000, "share": 0.27},
                    {"operator": "FULLY_CONNECTED", "count": 1, "instructions": 100000, "share": 0.0676},
                    {"operator": "AVERAGE_POOL_2D", "count": 1, "instructions": 50000, "share": 0.0338},
                    {"operator": "RESHAPE", "count": 1, "instructions": 20000, "share": 0.0135},
                    {"operator": "SOFTMAX", "count": 1, "instructions": 10000, "share": 0.0068}],
                "fidelity": {"reference": "LiteRT reference kernels on model.tflite", "samples": 100,
                             "top1_agreement": 1.0, "max_step_difference": 0, "identical_share": 1.0}},
        "accuracy": {"samples": 100, "accuracy": 0.84, "dataset": "digits", "split": "test"},
        "memory": {"arena_bytes": 17360},
        "estimates": {"arena_bytes": 17360}, "compile_fidelity": {"top1_agreement": 1.0},
        "estimates_vs_measured": {"arena_bytes": {"estimated": 17360, "measured": 12000,
                                                  "note": "used by the firmware's kernels on the device"}},
    }
    for path, value in changes.items():
        node = result
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return result


def board_result() -> dict:
    """The same model on a real board on a serial port: SysTick cycles, no instruction count."""
    r = mcu_result(device="serial:///dev/ttyACM0")
    r["mcu"].update(emulated=False, instructions=None, instructions_range=None, instructions_per_tick=0,
                    cycles=1720000, cycles_range=[1719000, 1722000], estimated_latency_ms=26.875,
                    latency_basis="estimate: 1720000 cycles / 64 MHz")
    for op in r["mcu"]["operators"]:
        op["cycles"] = op.pop("instructions")
    return r


def timed_result(name="lenet", p50=100.0, accuracy=0.98) -> dict:
    """A normal (timed) result of LiteRT on the host."""
    lat = {"p50_us": p50, "p90_us": p50 * 1.2, "p99_us": p50 * 1.5, "mean_us": p50 * 1.05, "std_us": 9.5,
           "min_us": p50 * 0.9, "max_us": p50 * 1.6, "runs": 40}
    return {"schema": SCHEMA, "device": "local", "created": "2026-01-01T00:00:00",
            "bundle": {"path": f"out/{name}.edgedl", "backend": "litert", "target": "x86_64", "size_bytes": 61440,
                       "engine": "litert"},
            "host": {"machine": "x86_64"}, "settings": {"warmup": 1, "runs": 20, "repeats": 2, "threads": 1},
            "timing": {"load_s": 0.0123, "first_inference_us": 456.7, "latency": lat,
                       "repeat_p50_us": [p50 * 0.99, p50 * 1.01], "spread": {"relative": 0.02},
                       "throughput_per_s": 1e6 / p50},
            "memory": {"peak_rss_bytes": 50 * 2**20},
            "accuracy": {"samples": 50, "dataset": "digits", "accuracy": accuracy}}


def write(path, data):
    path.write_text(json.dumps(data))
    return path


# ----- reading -----

def test_an_mcu_result_is_read_with_its_figures_and_no_measured_latency(tmp_path):
    [r] = read_results(write(tmp_path / "m4.json", mcu_result()))
    assert r.is_mcu and r.p50 is None and r.latency == {} and r.repeat_p50 == [] and r.throughput is None
    assert (r.name, r.backend, r.target, r.device) == ("ds_cnn_m4", "tflm", "cortex_m4", "emulated:mps2-an386")
    assert (r.estimated_latency_ms, r.instructions, r.cycles) == (27.75, 1480000, None)
    assert (r.flash_bytes, r.ram_bytes, r.accuracy, r.count_unit) == (177300, 43588, 0.84, "instructions")
    assert [op["operator"] for op in r.operators][:2] == ["CONV_2D", "DEPTHWISE_CONV_2D"]
    assert BenchResult.load(tmp_path / "m4.json") == r

    board = BenchResult(board_result())
    assert board.is_mcu and (board.instructions, board.cycles, board.count_unit) == (None, 1720000, "cycles")

    timed = BenchResult(timed_result())
    assert not timed.is_mcu and timed.p50 == 100.0
    assert (timed.estimated_latency_ms, timed.instructions, timed.flash_bytes, timed.ram_bytes) == (None,) * 4


def test_a_list_may_mix_timed_and_mcu_results(tmp_path):
    results = read_results(write(tmp_path / "all.json", [timed_result(), mcu_result(), board_result()]))
    assert [r.is_mcu for r in results] == [False, True, True]


@pytest.mark.parametrize("changes, message", [
    ({"mcu": [1, 2]}, "mcu is a JSON array, not an object"),
    ({"mcu.estimated_latency_ms": None}, "it lacks mcu.estimated_latency_ms"),
    ({"mcu.estimated_latency_ms": "fast"}, "mcu.estimated_latency_ms is 'fast', not a number"),
    ({"mcu.estimated_latency_ms": float("nan")}, "mcu.estimated_latency_ms is nan, not a finite number"),
    ({"mcu.instructions": None}, "it lacks mcu.instructions or mcu.cycles"),
    ({"mcu.instructions": "many"}, "mcu.instructions is 'many', not a number"),
    ({"mcu.instructions": True}, "mcu.instructions is True, not a number"),
    ({"mcu.cycles": [1]}, "mcu.cycles is a JSON array, not a number"),
    ({"mcu.flash_bytes": "big"}, "mcu.flash_bytes is 'big', not a number"),
    ({"mcu.clock_hz": float("inf")}, "mcu.clock_hz is inf, not a finite number"),
    ({"mcu.instructions_range": [1, "x"]}, "mcu.instructions_range[1] is 'x', not a number"),
    ({"mcu.cycles_range": 5}, "mcu.cycles_range is 5, not a list of numbers"),
    ({"mcu.fidelity.top1_agreement": "all"}, "mcu.fidelity.top1_agreement is 'all', not a number"),
    ({"mcu.fidelity": 3}, "mcu.fidelity is 3, not an object"),
    ({"mcu.operators": {"CONV_2D": 1}}, "mcu.operators is a JSON object, not a list"),
    ({"mcu.operators": [{"operator": 7}]}, "mcu.operators[0].operator is 7, not an operator name"),
    ({"mcu.operators": [{"operator": "ADD", "share": "half"}]}, "mcu.operators[0].share is 'half', not a number"),
    ({"mcu.operators": ["ADD"]}, "mcu.operators[0] is 'ADD', not an object"),
    ({"bundle.target": None}, "it lacks bundle.target"),
])
def test_a_malformed_mcu_result_is_refused_naming_the_field(tmp_path, changes, message):
    if "mcu.instructions" in changes and changes["mcu.instructions"] is None:
        changes = dict(changes, **{"mcu.cycles": None})
    bad = write(tmp_path / "bad.json", mcu_result(**changes))
    with pytest.raises(InputFileError, match=r"bad\.json: is not a benchmark result: " + re.escape(message)):
        read_results(bad)


def test_without_mcu_a_result_still_needs_its_timing(tmp_path):
    bad = write(tmp_path / "bad.json", mcu_result(mcu=None))
    with pytest.raises(InputFileError, match="it lacks timing.latency.p50_us"):
        read_results(bad)


def test_a_malformed_mcu_result_is_one_error_line_in_the_cli(capsys, tmp_path):
    bad = write(tmp_path / "bad.json", mcu_result(**{"mcu.instructions": "many"}))
    for args in (["report", bad], ["report", bad, "--json"]):
        line = the_error(*run_cli(capsys, *args)[::2])
        assert line.startswith(f"error: {bad}: ") and "mcu.instructions is 'many', not a number" in line


# ----- printing -----

def test_an_emulated_run_prints_instructions_and_an_estimate_never_a_measured_latency():
    assert BenchResult(mcu_result()).to_text().splitlines() == [
        "out/ds_cnn_m4.edgedl: tflm for cortex_m4 on emulated:mps2-an386 (x86_64)",
        "  ran on the emulated board mps2-an386 (cortex-m4); cmsis_nn kernels",
        "  instructions per inference 1,480,000 (median over 100 samples, min 1,479,960, max 1,480,040; "
        "resolution 40 instructions)",
        "  latency: estimated 27.75 ms at 64 MHz (assumes CPI 1.2; an estimate, not a measurement)",
        "  memory: flash 173.1 KiB (177,300 B), RAM 42.6 KiB (43,588 B) from the ELF, arena 17.0 KiB (11.7 KiB used)",
        "  accuracy 84.00% on 100 digits test samples (computed by the firmware)",
        "  fidelity vs LiteRT reference kernels on model.tflite on 100 samples: top-1 agreement 100.00%, "
        "max step difference 0, identical outputs 100.00%",
        "  top operators by instructions: CONV_2D x2 61.0% (900,000); DEPTHWISE_CONV_2D x2 27.0% (400,000); "
        "FULLY_CONNECTED x1 6.8% (100,000); AVERAGE_POOL_2D x1 3.4% (50,000); RESHAPE x1 1.4% (20,000)",
        "  arena_bytes: estimated 17,360 vs measured 12,000 (used by the firmware's kernels on the device)",
    ]


def test_a_board_run_prints_cycles_and_an_estimate():
    text = BenchResult(board_result()).to_text()
    assert "ran on the board mps2-an386 (cortex-m4) on /dev/ttyACM0; cmsis_nn kernels" in text
    assert "cycles per inference 1,720,000 (median over 100 samples, min 1,719,000, max 1,722,000" in text
    assert "estimated 26.88 ms at 64 MHz" in text and "an estimate, not a measurement" in text
    assert "instructions per inference" not in text and "top operators by cycles: CONV_2D x2" in text
    assert "p50" not in text


# ----- reporting -----

class Tables(HTMLParser):
    """Per table id: the data-run key of each row and the ids of the images of an HTML report."""

    def __init__(self, text):
        super().__init__()
        self.tables, self.images, self._table = {}, [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id"), [])
        elif tag == "tr" and self._table is not None and "data-run" in a:
            self._table.append(a["data-run"])
        elif tag == "img":
            self.images.append(a["id"])

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None


@pytest.fixture
def mixed(tmp_path):
    """A timed LeNet, and DS-CNN on the emulated board and on a real board (more accurate than LeNet's
    variant below, so a Pareto front that took them in would change)."""
    return [write(tmp_path / "lenet.json", timed_result()),
            write(tmp_path / "m4.json", mcu_result(**{"accuracy.accuracy": 0.99, "estimates_vs_measured.latency_us": {
                "estimated": 20000.0, "measured_p50": 27750.0}})),
            write(tmp_path / "board.json", board_result())]


def section(markdown: str, title: str) -> str:
    """The text of one ``## title`` section of a Markdown report."""
    return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_a_mixed_markdown_report_keeps_mcu_runs_out_of_the_latency_parts(capsys, mixed, tmp_path):
    base = [write(tmp_path / "base_lenet.json", timed_result(p50=80.0)),
            write(tmp_path / "base_m4.json", mcu_result(**{"mcu.estimated_latency_ms": 5.0}))]
    out = tmp_path / "report.md"
    code, stdout, stderr = run_cli(capsys, "report", *mixed, "--baseline", base[0], "--baseline", base[1], "-o", out)
    assert code in (0, None), stderr
    assert "wrote" in stdout and "3 run(s) (2 on microcontrollers, latency estimated)" in stdout
    assert "Pareto front: lenet" in stdout and "1 regression of 1 matched" in stdout
    text = out.read_text()
    runs, pareto = section(text, "Runs"), section(text, "Pareto front: accuracy vs p50 latency")
    regression, details = section(text, "Regression check"), section(text, "Measurement details")
    assert re.search(r"^\| lenet \| litert \| x86_64 \| local", runs, re.M)
    for part in (runs, pareto, regression, details):
        assert "ds_cnn" not in part and "cortex_m4" not in part
    assert "| lenet | x86_64 | local | 80.0 | 100.0 | +25.0% | regression |" in regression

    mcu = section(text, "Microcontroller runs")
    assert "estimates" in mcu and "not measurements" in mcu
    assert ("| bundle | target | board | kernels | instructions per inference | estimated latency (ms, estimate) | "
            "flash (KiB) | RAM (KiB) | arena used (KiB) | accuracy | top-1 agreement with reference kernels |") in mcu
    assert ("| ds_cnn_m4 (cortex_m4, emulated:mps2-an386) | cortex_m4 | mps2-an386 (emulated) | cmsis_nn | 1,480,000 | "
            "≈ 27.75 | 173.1 | 42.6 | 11.7 of 17.0 | 99.0% | 100.0% |") in mcu
    assert ("| ds_cnn_m4 (cortex_m4, serial:///dev/ttyACM0) | cortex_m4 | mps2-an386 (serial:///dev/ttyACM0) | "
            "cmsis_nn | 1,720,000 cycles | ≈ 26.88 |") in mcu
    assert "lenet" not in mcu
    assert "* ds_cnn_m4 (cortex_m4, emulated:mps2-an386): ≈ 27.75 ms, estimate: 1480000 instructions x 1.2" in mcu
    assert "| ds_cnn_m4 (cortex_m4, emulated:mps2-an386) | CONV_2D | 2 | 900,000 | 61.0% |" in mcu
    assert "| ds_cnn_m4 (cortex_m4, serial:///dev/ttyACM0) | SOFTMAX | 1 | 10,000 cycles | 0.7% |" in mcu
    # Compile's arena estimate beside the firmware's use is a size, not a latency: it is listed with the others.
    assert ("| ds_cnn_m4 (cortex_m4, emulated:mps2-an386) | arena_bytes | 17,360.0 | 12,000.0 | used by the "
            "firmware's kernels on the device |") in section(text, "Estimates vs measurements")
    assert "latency_us" not in text and "27,750" not in text


def test_a_mixed_html_report_has_separate_tables_and_plots(mixed, tmp_path):
    out = build_report(mixed).save(tmp_path / "report.html")
    page = Tables(out.read_text())
    assert page.tables["runs-table"] == ["lenet"] and page.tables["details-table"] == ["lenet"]
    m4, board = "ds_cnn_m4 (cortex_m4, emulated:mps2-an386)", "ds_cnn_m4 (cortex_m4, serial:///dev/ttyACM0)"
    assert page.tables["mcu-table"] == [m4, board]
    assert page.tables["mcu-operators-table"][:2] == [f"{m4}: CONV_2D", f"{m4}: DEPTHWISE_CONV_2D"]
    assert len(page.tables["mcu-operators-table"]) == 12
    assert page.images == ["plot-tradeoff", "plot-latency", "plot-mcu-operators"]
    assert 'data-run="lenet"' in out.read_text().split('id="pareto"', 1)[1].split("</ol>", 1)[0]


def test_the_json_summary_lists_mcu_runs_apart(capsys, mixed):
    code, stdout, stderr = run_cli(capsys, "report", *mixed, "--json")
    assert code in (0, None), stderr
    summary = json.loads(stdout)
    assert [r["bundle"] for r in summary["runs"]] == ["lenet"] and summary["pareto"] == ["lenet"]
    [m4, board] = summary["mcu_runs"]
    assert m4["estimated_latency_ms"] == 27.75 and m4["latency_is_estimate"] is True and "p50_us" not in m4
    assert (m4["board"], m4["emulated"], m4["kernels"], m4["instructions"], m4["cycles"]) == (
        "mps2-an386", True, "cmsis_nn", 1480000, None)
    assert (m4["flash_bytes"], m4["ram_bytes"], m4["arena_used_bytes"], m4["top1_agreement"]) == (177300, 43588, 12000,
                                                                                                   1.0)
    assert m4["operators"][0] == {"operator": "CONV_2D", "count": 2, "instructions": 900000, "share": 0.61}
    assert (board["instructions"], board["cycles"], board["device"]) == (None, 1720000, "serial:///dev/ttyACM0")


def test_a_report_of_only_mcu_runs_works_in_every_format(capsys, tmp_path):
    runs = [write(tmp_path / "m4.json", mcu_result()), write(tmp_path / "board.json", board_result())]
    # Operators without a share: it is computed from their counts.
    unshared = mcu_result(**{"bundle.path": "out/kws.edgedl"})
    for op in unshared["mcu"]["operators"]:
        del op["share"]
    runs.append(write(tmp_path / "kws.json", unshared))
    assert "top operators by instructions: CONV_2D x2 60.8% (900,000);" in BenchResult(unshared).to_text()
    report = build_report(runs, baseline=runs[:1])
    assert report.timed == [] and len(report.mcu_runs) == 3
    assert report.comparisons == [] and report.regressions == [] and report.pareto == []
    text = report.to_markdown()
    assert "No timed runs" in section(text, "Runs") and "## Measurement details" not in text
    assert "No timed run has an accuracy" in text
    assert re.search(r"^\| kws \| CONV_2D \| 2 \| 900,000 \| 60\.8% \|$", text, re.M)
    page = Tables(report.save(tmp_path / "r.html").read_text())
    assert "runs-table" not in page.tables and len(page.tables["mcu-table"]) == 3
    assert page.images == ["plot-mcu-operators"]
    code, stdout, _ = run_cli(capsys, "report", *runs, "-o", tmp_path / "r.md")
    assert code in (0, None) and stdout.startswith(f"wrote {tmp_path / 'r.md'}: 3 run(s) (3 on microcontrollers, "
                                                   "latency estimated); Pareto front: none (no timed run has an accuracy)")
    code, stdout, _ = run_cli(capsys, "report", *runs, "--json")
    assert code in (0, None) and json.loads(stdout)["runs"] == [] and len(json.loads(stdout)["mcu_runs"]) == 3


def test_compare_and_the_pareto_front_leave_mcu_runs_out():
    from edgedl.report import Run

    timed = Run(timed_result(p50=100.0, accuracy=0.9), "a.json", "lenet")
    mcu = Run(mcu_result(**{"accuracy.accuracy": 0.99}), "b.json", "ds_cnn")
    assert pareto_front([timed, mcu]) == [timed]
    slower = Run(copy.deepcopy(timed.data), "c.json", "lenet")
    slower.data["timing"]["latency"]["p50_us"] = 200.0
    [c] = compare([slower, mcu], [timed, mcu])
    assert (c.name, c.verdict) == ("lenet", "regression")
