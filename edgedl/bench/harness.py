"""The benchmark harness: measure a bundle here (in a child process) and add what only the host
knows: the data set, the float reference's agreement, and the estimates beside the measurements.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgedl import _io
from edgedl.bench.options import BenchOptions
from edgedl.bench.result import BenchResult
from edgedl.errors import DeviceError, EdgeDLError, OptionError

log = logging.getLogger(__name__)


def samples(manifest: dict, options: BenchOptions):
    """(x, y, description) from the file (``--data``) or data set asked for, or the data set the
    bundle was checked on (:func:`edgedl.reference.choose_samples`); (None, None, None) when none is
    named (a bundle checked on a file scores accuracy only with ``--data``).

    A file is preprocessed by ``--preprocess`` if given, else by the steps the manifest records for
    its kind of data (those compile applied to its ``--data``, or the preset of the data set the
    model was trained on), else by the defaults. For a bundle with several inputs ``x`` is a list of
    arrays in the bundle's input order (a ``.npz`` with one array per input name)."""
    from edgedl.reference import choose_samples

    from edgedl.data.base import ModelInput

    inputs = manifest["inputs"]
    shapes = [tuple(s["shape"][1:]) for s in inputs]
    model = ModelInput(shapes[0] if len(shapes) == 1 else shapes, [s.get("name") for s in inputs],
                       recorded=manifest.get("preprocessing"), taker="the bundle")
    chosen = choose_samples(model, dataset=options.dataset, data=options.data, preprocess=options.preprocess,
                            data_dir=options.data_dir, trained_on=manifest.get("samples"), limit=options.limit)
    if chosen is None:
        return None, None, None
    d = chosen.description
    desc = {"dataset": d["dataset"], "split": d["split"], "samples": d["num_samples"]}
    if d.get("file"):
        desc["file"] = d["file"]
        desc["preprocessing"] = d["preprocessing"]["spec"]
    return chosen.x, chosen.y, desc


def run_local(bundle: str, request: dict, timeout: float, progress=None) -> dict:
    """Run the worker in a child process; kill it past ``timeout`` seconds."""
    with tempfile.TemporaryDirectory(prefix="edgedl-bench-") as tmp:
        req_path, res_path = Path(tmp) / "request.json", Path(tmp) / "result.json"
        _io.write_json(req_path, request)
        scratch = Path(tmp) / "tmp"  # the worker's temp folder (an unpacked archive): goes with ours, even if it dies
        scratch.mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "edgedl.bench.worker", str(req_path), str(res_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=str(scratch)))
        deadline = time.monotonic() + timeout
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise DeviceError(f"benchmark of {bundle} did not finish within {timeout:g} s (the run hung or is "
                                  "too slow); raise --timeout or lower --runs")
            if sel.select(timeout=min(left, 1.0)):
                line = proc.stdout.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                    if progress:
                        progress(msg["done"], msg["total"])
                except (json.JSONDecodeError, KeyError):
                    log.debug("worker: %s", line.rstrip())
            elif proc.poll() is not None:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        stderr = proc.stderr.read()
        if not res_path.exists():
            if proc.returncode < 0:
                from edgedl._isolate import signal_name

                raise DeviceError(f"the benchmark process for {bundle} died of {signal_name(-proc.returncode)} while "
                                  "running the bundle's model; the model is malformed or the engine failed on it")
            tail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {proc.returncode}"
            raise DeviceError(f"benchmark process for {bundle} died ({tail[:300]})")
        result = json.loads(res_path.read_text())
    if "error" in result:
        raise _rebuild_error(result)
    return result


def _rebuild_error(result: dict) -> EdgeDLError:
    import edgedl.errors as errors

    cls = getattr(errors, result.get("error_type", ""), errors.EdgeDLError)
    err = cls.__new__(cls)
    Exception.__init__(err, result["error"])
    return err


def bench(bundle: str, options: BenchOptions | None = None, progress=None) -> BenchResult:
    """Benchmark a bundle here or on a remote device.

    Args:
        bundle: the bundle (folder or archive).
        options: data set, timing settings, device, timeout, retries, float reference.
        progress: optional callable(done, total) for a progress bar.

    Returns:
        BenchResult in the stable JSON schema edgedl.bench/1 (``save()`` writes it, ``to_text()``
        prints it).

    Raises:
        InputFileError: not a bundle / tampered; DeviceError: hung, killed or unreachable device;
        OptionError: bad settings or a data set that does not fit the bundle.

    Example:
        >>> result = bench("lenet.edgedl", BenchOptions(dataset="mnist", runs=100))  # doctest: +SKIP
        >>> result.p50, result.accuracy                                             # doctest: +SKIP
    """
    from edgedl.bundle import open_bundle

    options = options or BenchOptions()
    options.validate()
    opened = open_bundle(bundle)  # verify before anything runs
    if options.profile and opened.manifest["runtime"]["engine"] == "ethos-u":
        from edgedl.bench.profile import vela_refusal

        raise OptionError(vela_refusal(bundle, opened.manifest))
    x, y, desc = samples(opened.manifest, options)
    from edgedl.bench.mcu import has_firmware, measure_mcu

    serial = str(options.device or "").startswith("serial://")
    if serial and not has_firmware(opened.manifest):
        raise OptionError(f"{bundle} has no microcontroller firmware (compile it with --backend tflm for a Cortex-M "
                          f"target); a serial:// device runs that firmware")
    if has_firmware(opened.manifest) and (options.device is None or serial):
        result = measure_mcu(opened, x, y, device=options.device, timeout=options.timeout, progress=progress)
        if options.profile:
            from edgedl.bench.profile import from_mcu

            result["profile"] = from_mcu(result["mcu"], opened.directory / opened.manifest["runtime"]["model"])
        return _finish(result, options, opened, x, y, desc)
    with tempfile.TemporaryDirectory(prefix="edgedl-bench-") as tmp:
        request = {"bundle": str(Path(bundle).resolve()), "warmup": options.warmup, "runs": options.runs,
                   "repeats": options.repeats, "threads": options.threads, "samples": None}
        if options.profile:
            request["profile"] = True
        if x is not None:
            from edgedl.bench.core import save_samples

            request["samples"] = str(Path(tmp) / "samples.npz")
            save_samples(request["samples"], x, y)
        if options.device:
            from edgedl.bench.remote import run_remote

            result = run_remote(bundle, request, options, progress=progress)  # with the device's profile
        else:
            result = run_local(bundle, request, options.timeout, progress=progress)
    result["device"] = options.device or "local"
    return _finish(result, options, opened, x, y, desc)


def _finish(result: dict, options: BenchOptions, opened, x, y, desc) -> BenchResult:
    """What only the host adds to a device's measurement: the data set, the float reference's
    agreement, the estimates beside the measurements, the time."""
    if desc:
        result.setdefault("accuracy", {}).update(desc)
    top1 = np.asarray(result.pop("outputs_top1", []))
    if options.reference and x is not None:
        ref = reference_top1(options.reference, x, opened.manifest)
        result["accuracy"]["reference"] = str(options.reference)
        result["accuracy"]["reference_agreement"] = float(np.mean(ref == top1))
        if y is not None:
            result["accuracy"]["reference_accuracy"] = float(np.mean(ref == y))
    acc = result.get("accuracy") or {}
    if acc.get("accuracy") is not None and acc.get("samples"):
        from edgedl.bench.result import wilson_interval

        acc["ci95"] = list(wilson_interval(round(acc["accuracy"] * acc["samples"]), acc["samples"]))
    result["bundle"]["precision"] = _precision(opened)
    if options.label:
        result["label"] = options.label.strip()
    result["estimates_vs_measured"] = _estimates_vs_measured(result)
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return BenchResult(result)


def _precision(opened) -> dict:
    """The bundle's precision and I/O types (:func:`edgedl.bench.result.precision_of`); a model
    compile did not quantize itself is read from its ``.tflite`` where the bundle holds one."""
    from edgedl.bench.result import precision_of

    manifest, kind = opened.manifest, None
    model = str((manifest.get("runtime") or {}).get("model") or "")
    if (manifest.get("options") or {}).get("quantize", "none") == "none" and model.endswith(".tflite"):
        try:
            from edgedl.graph import read_tflite

            kind = read_tflite(str(opened.file(model))).quantization_kind
        except (EdgeDLError, OSError) as e:  # the precision is a label: a model it cannot read goes without
            log.debug("precision of %s not read: %s", model, e)
    return precision_of(manifest, kind)


def reference_top1(path: str, x, manifest: dict | None = None) -> np.ndarray:
    """Top-1 classes of the float reference model (Keras, .tflite or .onnx) on ``x``.

    With a bundle's ``manifest``, samples of several inputs (a list in the bundle's input order) go
    to the reference's inputs by name (or by shape where that leaves no doubt), and of a reference
    with several outputs the one shaped like the bundle's first output is taken.
    """
    from edgedl.reference import reference_all_outputs

    model = path
    if manifest is not None and isinstance(x, (list, tuple)):
        model, x = _in_reference_order(path, x, manifest)
    outputs = reference_all_outputs(model, x)
    if manifest is not None and len(outputs) > 1:
        want = tuple(manifest["outputs"][0]["shape"][1:])
        same = [o for o in outputs if tuple(o.shape[1:]) == want]
        if len(same) == 1:
            return same[0].argmax(-1)
    return outputs[0].argmax(-1)


def _in_reference_order(path: str, x: list, manifest: dict) -> tuple:
    """(the reference to run, ``x`` in the order of its inputs): a loaded Keras model runs as it is."""
    from types import SimpleNamespace

    from edgedl import _inputs
    from edgedl.compile import CompileOptions, load_source

    with tempfile.TemporaryDirectory(prefix="edgedl-bench-") as work:
        source = load_source(str(path), CompileOptions(), Path(work))
    shapes = source.input_shape if isinstance(source.input_shape, list) else [source.input_shape]
    specs = [SimpleNamespace(name=n, shape=(1, *s)) for n, s in zip(source.input_names, shapes)]
    names = [s.get("name", "") for s in manifest["inputs"]]
    order = _inputs.order_for(names, _inputs.sample_shapes(x), specs, f"the reference {Path(path).name}")
    return (source.keras_model if source.keras_model is not None else path), _inputs.reorder(list(x), order)


def _estimates_vs_measured(result: dict) -> dict:
    """Put each estimate beside the measurement of the same quantity, where both exist."""
    est = result.get("estimates") or {}
    out = {}
    if "mcu" in result:  # the firmware's own arena use against the arena measured on this host
        if est.get("arena_bytes"):
            out["arena_bytes"] = {"estimated": est["arena_bytes"], "measured": result["mcu"]["arena_used_bytes"],
                                  "note": "used by the firmware's kernels on the device"}
        return out
    ms = est.get("inference_time_ms")
    if ms is not None:
        out["latency_us"] = {"estimated": float(ms) * 1000.0, "measured_p50": result["timing"]["latency"]["p50_us"],
                             "note": "estimate is for the NPU; the measurement is of this host's run" if
                             result["bundle"]["engine"] != "ethos-u" else ""}
    arena = est.get("arena_bytes") or (est.get("tflm") or {}).get("arena_bytes")
    if arena and "arena_bytes" in result.get("memory", {}):
        out["arena_bytes"] = {"estimated": arena, "measured": result["memory"]["arena_bytes"]}
    return out
