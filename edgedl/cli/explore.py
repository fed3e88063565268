"""``edgedl explore``: node data for Google's Model Explorer, per-operator latency and per-layer
quantization error overlaid on a bundle's ``.tflite`` graph."""

import json

import click


@click.command("explore")
@click.argument("model")
@click.option("--profile", "profile", type=click.Path(dir_okay=False),
              help="A benchmark result with a per-operator profile (edgedl bench BUNDLE --profile -o run.json).")
@click.option("--quant-report", "quant_report", type=click.Path(dir_okay=False),
              help="Per-layer quantization error: optimize's report.json (default: the bundle's quant_report.json "
                   "from compile --quant-report).")
@click.option("--output", "-o", "out", help="Folder for the node-data files (default: MODEL's stem + -explore).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def explore_command(model, profile, quant_report, out, as_json):
    """Write Model Explorer node data for MODEL (a bundle holding a .tflite, or a .tflite): one file per metric
    (latency_us, share, snr_db, rmse_rel), and print the command that opens them on the graph.

    \b
    Examples:
      edgedl bench lenet.edgedl --profile -o run.json
      edgedl explore lenet.edgedl --profile run.json
      edgedl explore out/model.tflite --quant-report out/report.json
      model-explorer lenet.edgedl/model.tflite --node_data_paths=lenet-explore/latency_us.json
    """
    from pathlib import Path

    from edgedl.explorer import export_node_data

    out = f"{Path(model.rstrip('/')).stem}-explore" if out is None else out
    export = export_node_data(model, out, bench_result=profile, quant_report=quant_report)
    if as_json:
        click.echo(json.dumps(export.summary(), indent=2))
        return
    for metric, path in export.files.items():
        click.echo(f"wrote {path} ({metric})")
    for note in export.notes:
        click.echo(f"note: {note}", err=True)
    click.echo("open it with Model Explorer (pip install ai-edge-model-explorer):")
    click.echo(f"  {export.command()}")
