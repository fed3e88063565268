"""``edgedl bench``: measure a bundle's latency, memory and accuracy, here or on a remote device."""

import json

import click

from edgedl.cli._options import COUNT, COUNT_OR_ZERO, SECONDS


@click.command("bench")
@click.argument("bundle")
@click.option("--dataset", "-d", help="Score accuracy on this data set (default: the one the bundle was checked on).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data directory (default: $EDGEDL_DATA).")
@click.option("--data", "data", type=click.Path(),
              help="Score accuracy on a file instead: .npz (x, y), .npy, or a folder of images or wav files in class "
                   "sub-folders.")
@click.option("--preprocess", multiple=True, metavar="KEY=VALUE|TOML",
              help="How --data becomes model inputs (default: the steps the bundle's manifest records).")
@click.option("--limit", type=COUNT, default=500, show_default=True, help="Test samples to score.")
@click.option("--warmup", type=COUNT_OR_ZERO, default=20, show_default=True, help="Untimed runs first.")
@click.option("--runs", type=COUNT, default=200, show_default=True, help="Timed runs per repeat.")
@click.option("--repeats", type=COUNT, default=5, show_default=True, help="Repeats (their spread is reported).")
@click.option("--threads", type=COUNT, default=1, show_default=True, help="Engine threads.")
@click.option("--device", help="HOST:PORT of an `edgedl serve` agent, tracker://HOST:PORT/KEY, or serial:///dev/ttyACM0 "
                                "(a microcontroller flashed with the bundle's firmware) (default: here; a Cortex-M "
                                "bundle's firmware runs on the emulated board of its core).")
@click.option("--timeout", type=SECONDS, default=600, show_default=True, help="Seconds before a run counts as hung.")
@click.option("--retries", type=COUNT_OR_ZERO, default=0, show_default=True, help="Retries on a lost remote device.")
@click.option("--reference", type=click.Path(exists=True), help="Float model for top-1 agreement (.keras or .tflite).")
@click.option("--profile", is_flag=True,
              help="Also profile per operator (time, share, calls; the result JSON's profile) where the engine can.")
@click.option("--label", metavar="TEXT", help="Name this run in the result and in `edgedl report` (default: the bundle's).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Also write the result JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (schema edgedl.bench/1).")
def bench_command(bundle, dataset, data_dir, data, preprocess, limit, warmup, runs, repeats, threads, device, timeout,
                  retries, reference, profile, label, output, as_json):
    """Benchmark BUNDLE: load time, first and warm latency, throughput, memory, accuracy.

    A Cortex-M bundle (compiled with --backend tflm for a cortex_m* target) runs its own firmware:
    on the emulated board of its core (instructions counted exactly; latency an estimate at the
    target's clock) or on a board on a serial port (cycles), scoring the data set there, with flash
    and RAM read from the firmware.

    \b
    Examples:
      edgedl bench lenet.edgedl --dataset mnist
      edgedl bench model.edgedl --data photos/
      edgedl bench lenet.edgedl --device 127.0.0.1:9090 --json -o run.json
      edgedl bench lenet.edgedl --profile --label "int8 xnnpack" -o run.json
      edgedl bench lenet-m4.edgedl --device serial:///dev/ttyACM0
    """
    from edgedl import _io
    from edgedl.bench import BenchResult
    from edgedl.bench.harness import bench
    from edgedl.bench.options import BenchOptions
    from edgedl.errors import DeviceError

    if output:
        _io.check_writable(output, "--output", kind="file")
    options = BenchOptions(dataset=dataset, data_dir=data_dir, data=data, preprocess=list(preprocess) or None,
                           limit=limit, warmup=warmup, runs=runs, repeats=repeats, threads=threads, device=device,
                           timeout=timeout, retries=retries, reference=reference, profile=profile,
                           label=label)
    try:
        result = _run(bundle, options, as_json, bench)
    except DeviceError as e:
        partial = getattr(e, "partial", None)
        if output and partial:
            BenchResult(dict(partial, incomplete=True, error=str(e))).save(output)
        raise
    if output:
        result.save(output)
    click.echo(json.dumps(result.summary(), indent=2) if as_json else result.to_text())


def _run(bundle, options, as_json, bench):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if as_json:
        return bench(bundle, options)
    with Progress(TextColumn("benchmarking"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("bench", total=None)
        return bench(bundle, options, progress=lambda done, total: bar.update(task, completed=done, total=total))

