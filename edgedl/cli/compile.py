"""``edgedl compile``: a model for a target, checked against its reference, into one bundle."""

import json

import click

from edgedl.cli._options import COUNT, Number


@click.command("compile")
@click.argument("model")
@click.option("--target", "-t", required=True, help="Target name (`edgedl targets`) or a TOML file.")
@click.option("--backend", "-b", default="auto", show_default=True,
              help="litert, tvm, vela, tflm, onnxruntime, or auto (measure what runs here, pick the fastest that passes).")
@click.option("--output", "-o", "out", help="Bundle path (default: MODEL's stem + .edgedl).")
@click.option("--archive", is_flag=True, help="Write the bundle as one tar file instead of a folder.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at the output path (never anything else).")
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False),
              help="Sign the bundle's digest with this Ed25519 private key (`edgedl keygen NAME` makes NAME.key).")
@click.option("--quantize", "-q", type=click.Choice(["none", "dynamic", "float16", "int8", "int16x8"]), default="none",
              show_default=True, help="Quantization of a Keras model on its way to .tflite.")
@click.option("--io", "io_type", type=click.Choice(["float", "int8", "uint8"]), default="float", show_default=True,
              help="Input/output type of an int8 model.")
@click.option("--dataset", "-d", help="Data set for calibration and the fidelity check (default: the model's).")
@click.option("--data", "data", type=click.Path(),
              help="Samples from a file instead of a data set: .npz (x, y), .npy, or a folder of images or wav files "
                   "in class sub-folders.")
@click.option("--preprocess", multiple=True, metavar="KEY=VALUE|TOML",
              help="How --data becomes model inputs: resize=HxW, channels=rgb|bgr|gray, scale=1/255, offset, "
                   "mean, std, dtype, features=logmel|mfcc; or a .toml of them (default: preprocess.toml beside the "
                   "data or the model). Recorded in the manifest.")
@click.option("--quant-report", is_flag=True,
              help="Keras, -q int8/int16x8: per-layer error vs float32, kept in the bundle (quant_report.json).")
@click.option("--keep-float", "keep_float", multiple=True, metavar="LAYER",
              help="Keras, -q int8/int16x8: leave Keras layer LAYER in float32 (repeatable).")
@click.option("--int16", "int16", multiple=True, metavar="LAYER",
              help="Keras, -q int8: put layer LAYER in int16x8 (repeatable).")
@click.option("--calibration", type=click.Choice(["data", "random"]), default="data", show_default=True,
              help="int8/int16x8 of a Keras model: calibrate on real samples, or on synthetic ones (recorded).")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False),
              help="Data directory (default: $EDGEDL_DATA).")
@click.option("--samples", "num_samples", type=COUNT, default=100, show_default=True, help="Samples for the fidelity check.")
@click.option("--max-disagreement", type=Number(0, 1), default=0.02, show_default=True,
              help="Fail when top-1 agreement with the reference falls below 1 minus this.")
@click.option("--max-accuracy-drop", type=Number(0, 1), default=0.05, show_default=True,
              help="Fail when accuracy on labelled samples is more than this below the reference's (0.05: 5 points).")
@click.option("--min-snr", "min_snr_db", type=Number(-200, 200), default=10.0, show_default=True,
              help="Fail when the outputs' signal-to-noise ratio against the reference is below this (dB).")
@click.option("--tune", is_flag=True, help="TVM: tune with MetaSchedule (tuning database kept and reused).")
@click.option("--trials", type=COUNT, default=64, show_default=True, help="TVM: MetaSchedule trials in total.")
@click.option("--tune-minutes", type=Number(0, min_open=True),
              help="TVM --tune: stop tuning after about this many minutes (--trials bounds it too).")
@click.option("--tune-device", metavar="tracker://HOST:PORT/KEY|HOST:PORT",
              help="TVM --tune: measure candidates on the device, through TVM's RPC server there "
                   "(python -m tvm.exec.rpc_server; it runs what it is sent, so trusted networks only).")
@click.option("--tuning-db", type=click.Path(file_okay=False),
              help="TVM: tuning database folder (default: user cache; copy it to machines of the same target).")
@click.option("--kernels", type=click.Choice(["cmsis_nn", "reference"]),
              help="TFLite Micro on a Cortex-M: CMSIS-NN's optimised kernels or the reference ones (default: "
                   "CMSIS-NN where the core has them).")
@click.option("--no-firmware", "no_firmware", is_flag=True,
              help="TFLite Micro on a Cortex-M: write the model's C array only, no firmware project and ELF.")
@click.option("--threads", "num_threads", type=COUNT, default=1, show_default=True, help="Threads for the checks.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def compile_command(model, target, backend, out, archive, force, sign_key, quantize, io_type, dataset, data,
                    preprocess, quant_report, keep_float, int16, calibration, data_dir, num_samples, max_disagreement,
                    max_accuracy_drop, min_snr_db, tune, trials, tune_minutes, tune_device, tuning_db, kernels,
                    no_firmware, num_threads, as_json):
    """Compile MODEL (.keras, .h5, SavedModel, .tflite or .onnx) for TARGET into a deployable bundle.

    \b
    Examples:
      edgedl compile lenet.keras --target x86_64 --quantize int8
      edgedl compile model.tflite --target rpi4 --backend tvm -o model-rpi4.edgedl
      edgedl compile lenet.keras --target ethos_u55_128 --quantize int8
      edgedl compile lenet.keras --target cortex_m4 --quantize int8 --kernels cmsis_nn
      edgedl compile model.keras --target x86_64 -q int8 --data photos/ --preprocess resize=96x96
      edgedl compile lenet.keras --target x86_64 -q int8 --quant-report --keep-float probs
    """
    from pathlib import Path

    from rich.console import Console

    _check_cheap(model, target, backend, quantize)  # a typo answered in a second, not after loading TensorFlow
    from edgedl.compile import CompileOptions, compile_model

    options = CompileOptions(backend=backend, quantize=quantize, io_type=io_type, dataset=dataset, calibration=calibration,
                             data_dir=data_dir, data=data, preprocess=list(preprocess) or None,
                             num_samples=num_samples, max_disagreement=max_disagreement,
                             max_accuracy_drop=max_accuracy_drop, min_snr_db=min_snr_db, tune=tune, trials=trials,
                             tuning_db=tuning_db, tune_minutes=tune_minutes, tune_device=tune_device,
                             num_threads=num_threads, archive=archive, force=force,
                             sign_key=sign_key, kernels=kernels, firmware=not no_firmware, quant_report=quant_report,
                             keep_float=keep_float, int16=int16)
    out = f"{Path(model.rstrip('/')).stem}.edgedl" if out is None else out  # compile_model checks it before any work
    console = Console(stderr=True)
    status = None if as_json else (lambda m: console.print(f"[bold]>[/] {m}"))
    result = compile_model(model, target, out, options, status=status)
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2))
        return
    lines = result.summary()
    click.echo(f"wrote {lines[0]}")
    for line in lines[1:]:
        click.echo(line)
    for line in _precision_lines(result.manifest):
        click.echo(line)


def _precision_lines(manifest) -> list[str]:
    """The bundle's layers at another precision and its worst layers after quantization, where asked."""
    options, lines = manifest.get("options") or {}, []
    kept = [f"{', '.join(options.get(k) or [])} in {what}" for k, what in (("keep_float", "float32"),
                                                                          ("int16", "int16x8")) if options.get(k)]
    if kept:
        lines.append(f"  precision: {'; '.join(kept)}, the rest {options.get('quantize')}")
    quant = manifest.get("quant_report")
    if quant:
        worst = ", ".join(f"{w['layer']} {w['snr_db']:.1f} dB" if w["snr_db"] is not None else f"{w['layer']} n/a"
                          for w in quant["worst"])
        lines.append(f"  worst layers after quantization (SNR): {worst} (all {quant['layers']} in {quant['file']})")
    return lines


def _check_cheap(model, target, backend, quantize):
    """What can be checked without TensorFlow: the backend's name, the model's kind, and that a float
    Keras model is not about to miss the NPU it was compiled for."""
    from pathlib import Path

    from edgedl.backends import backend_names
    from edgedl.errors import OptionError

    if backend != "auto" and backend not in backend_names():
        import difflib

        close = difflib.get_close_matches(backend, backend_names(), n=1)
        raise OptionError(f"unknown backend '{backend}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                          + f"; --backend takes {', '.join(backend_names())} or auto")
    from edgedl.compile import check_source_path

    path = Path(model)
    if path.exists():  # a missing one is named by compile_model
        check_source_path(path)
    if backend == "auto" and quantize not in ("int8", "int16x8") and (path.is_dir() or path.suffix in (".keras", ".h5")):
        from edgedl.compile import float_for_npu
        from edgedl.targets import load_target

        problem = float_for_npu(load_target(target), "float")
        if problem:
            raise OptionError(problem)
