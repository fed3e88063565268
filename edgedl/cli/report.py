"""``edgedl report``: benchmark results side by side (HTML with plots, or Markdown), with a regression check;
microcontroller runs (estimated latencies) in tables of their own; per-operator profiles of the runs, and
the per-layer quantization error of optimize outputs given beside them."""

import json

import click

from edgedl.cli._options import Number


@click.command("report")
@click.argument("results", nargs=-1, required=True, metavar="RUN.json|OPTIMIZE_OUT...")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the report here: .html (self-contained, with plots) or .md (default: Markdown to stdout).")
@click.option("--baseline", "-b", multiple=True, metavar="BASE.json",
              help="Baseline results to check against (repeat for several files).")
@click.option("--threshold", type=Number(min=0, min_open=True), default=0.10, show_default=True,
              help="Relative p50 slowdown that counts as a regression (0.10: 10% slower).")
@click.option("--fail-on-regression", is_flag=True, help="Exit non-zero when the check finds a regression.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (runs, Pareto front, check) as JSON.")
def report(results, output, baseline, threshold, fail_on_regression, as_json):
    """Report on benchmark RESULTS (files of `edgedl bench -o`, one result or a list each) and on the
    per-layer quantization error of `edgedl optimize ... --quant-report` outputs (the folder or its report.json).

    \b
    Examples:
      edgedl report float.json int8.json tvm.json -o report.html
      edgedl report int8.json optimized/ -o report.html
      edgedl report new/*.json --baseline main/*.json -o report.md --fail-on-regression
    """
    from edgedl.errors import EdgeDLError
    from edgedl.report import build_report

    if output:
        from edgedl._io import check_writable

        check_writable(output, "--output", kind="file")
    rep = build_report(results, baseline=baseline, threshold=threshold)
    if output:
        rep.save(output)
    if as_json:
        click.echo(json.dumps(rep.summary(), indent=2))
    elif output:
        front = ", ".join(r.label for r in rep.pareto) or ("none (no timed run has an accuracy)" if rep.mcu_runs
                                                          else "none (no accuracy)")
        on_mcu = f" ({len(rep.mcu_runs)} on microcontrollers, latency estimated)" if rep.mcu_runs else ""
        quant = f"; per-layer quantization error of {len(rep.quant_errors)} model(s)" if rep.quant_errors else ""
        if rep.runs:
            click.echo(f"wrote {output}: {len(rep.runs)} run(s){on_mcu}; Pareto front: {front}{quant}")
        else:
            click.echo(f"wrote {output}{quant}. {rep.no_runs_note()}")
        if rep.baseline:
            click.echo(rep.regression_summary())
    else:
        click.echo(rep.to_markdown())
    if fail_on_regression and rep.regressions:
        worst = ", ".join(f"{c.label} p50 {c.baseline_p50:.1f} -> {c.p50:.1f} us ({100 * c.change:+.1f}%)"
                          for c in rep.regressions)
        raise EdgeDLError(f"{len(rep.regressions)} regression(s) beyond {100 * threshold:g}%: {worst}")
