"""Compilation: a model (Keras, ``.tflite`` or ``.onnx``) for a target, checked against its reference,
written as one deployable bundle.

The stages, in order: load the source and its reference -> convert to ``.tflite`` where needed ->
pick the backend(s) -> compile -> run on real samples against the reference where this host can
run the result -> write the bundle with its manifest.
"""

from __future__ import annotations

import logging
import math
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from edgedl import __version__, _io, _isolate
from edgedl.errors import BackendError, EdgeDLError, InputFileError, OptionError, UnsupportedOperatorError
from edgedl.modelio import metrics_beside

log = logging.getLogger(__name__)

MAX_SAMPLE_ELEMENTS = 1 << 26  # one input sample; beyond this a shape is a malformed file, not a model to check
SOURCE_SUFFIXES = (".keras", ".h5", ".hdf5", ".tflite", ".onnx")
CHECK_TIMEOUT_S = 300.0   # the first load, the reference and each fidelity run of an untrusted model, in a child
ENGINE_NAMES = {"litert": "LiteRT", "tflm": "TFLite Micro", "tvm": "TVM", "onnxruntime": "ONNX Runtime"}


@dataclass
class CompileOptions:
    """Everything that shapes a compile besides the model and the target."""

    backend: str = "auto"
    quantize: str = "none"            # for Keras sources: none, dynamic, float16, int8, int16x8
    io_type: str = "float"
    dataset: str | None = None        # samples for calibration and the fidelity check
    data_dir: str | None = None
    num_samples: int = 100
    max_disagreement: float = 0.02    # fail when top-1 agreement with the reference is below 1 - this
    tune: bool = False
    trials: int = 64
    tuning_db: str | None = None
    num_threads: int = 1
    archive: bool = False
    force: bool = False               # replace an existing bundle at the output path (never anything else)
    sign_key: str | None = None       # Ed25519 private key file: sign the bundle's digest
    backend_options: dict = field(default_factory=dict)

    def manifest_view(self) -> dict:
        d = asdict(self)
        for k in ("data_dir", "archive", "force", "sign_key"):
            d.pop(k)
        return d


@dataclass
class Source:
    """The model as given, its ``.tflite`` form (if any) and how to compute the reference."""

    path: Path
    kind: str                           # keras, tflite, onnx
    sha256: str
    tflite: Path | None
    reference: object                   # callable(float batch) -> float outputs
    input_shape: tuple
    metadata: dict


def load_source(path: str, options: CompileOptions, workdir: Path) -> Source:
    """Load MODEL, convert a Keras model to ``.tflite`` (quantized as asked), set up its reference."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "no such file or folder; expected .keras, .h5, SavedModel, .tflite or .onnx")
    sha = _io.sha256_file(p) if p.is_file() else _dir_sha(p)
    meta = metrics_beside(p) if p.is_file() else {}
    # A .tflite or .onnx from elsewhere is parsed, allocated and run for the first time in a child
    # process (edgedl._isolate): a native crash on a malformed file is one error line naming it.
    if p.suffix == ".tflite":
        probe = _isolate.run(_probe_tflite, p, file=p, tool="LiteRT", action="loading it", timeout=CHECK_TIMEOUT_S)
        if options.quantize != "none":
            raise OptionError(f"--quantize applies to Keras models; {p.name} is already a .tflite "
                              f"({'quantized' if probe['quantized'] else 'float'})")
        reference = partial(_isolated_reference, _reference_tflite, p, "LiteRT")
        return Source(p, "tflite", sha, p, reference, probe["input_shape"], meta)
    if p.suffix == ".onnx":
        shape = _isolate.run(_probe_onnx, p, file=p, tool="ONNX Runtime", action="loading it",
                             timeout=CHECK_TIMEOUT_S)
        return Source(p, "onnx", sha, None, partial(_isolated_reference, _reference_onnx, p, "ONNX Runtime"),
                      shape, meta)
    from edgedl.modelio import load_model
    from edgedl.keras_utils import predict as keras_predict

    model = load_model(str(p))
    shape = tuple(model.input_shape[1:])
    source = Source(p, "keras", sha, None, lambda x: keras_predict(model, x), shape, meta)
    source.keras_model = model
    return source


def _probe_tflite(path: Path) -> dict:
    """Parse and allocate a ``.tflite`` with LiteRT (in a child process): whether it is quantized and
    its input shape without the batch."""
    from edgedl.graph import read_tflite
    from edgedl.runtime.engines import LiteRTEngine

    graph = read_tflite(path)
    if not graph.inputs or not graph.outputs:
        raise InputFileError(path, f"the model has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; "
                                   "edgedl needs one input and at least one output")
    engine = LiteRTEngine(path)
    problem = _io_problem(engine)
    if problem:
        raise InputFileError(path, problem)
    return {"quantized": graph.is_quantized, "input_shape": tuple(engine.inputs[0].shape[1:])}


def _io_problem(engine) -> str:
    """What is wrong with an engine's first input and output for edgedl, or "" (one input and an
    output, each with a batch axis of 1 and fixed, positive sizes)."""
    if not engine.inputs or not engine.outputs:
        return (f"the model has {len(engine.inputs)} inputs and {len(engine.outputs)} outputs; edgedl needs one "
                "input and at least one output")
    for kind, spec in (("input", engine.inputs[0]), ("output", engine.outputs[0])):
        if len(spec.shape) < 1 or spec.shape[0] != 1 or min(spec.shape) < 1:
            return (f"its {kind} '{spec.name[:80]}' has the shape {list(spec.shape)}; edgedl needs a batch axis "
                    "of 1 first and fixed, positive sizes")
    return ""


def _reference_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    """LiteRT's outputs of a ``.tflite`` on float samples (in a child process)."""
    from edgedl.runtime.engines import LiteRTEngine
    from edgedl.runtime.quant import predict

    engine = LiteRTEngine(path)
    try:
        return predict(engine, x)
    except (ValueError, RuntimeError) as e:  # "Tensor data is null": no operator writes the output
        raise InputFileError(path, f"LiteRT cannot run it ({' '.join(str(e).split())[:200]})") from None


def _probe_onnx(path: Path) -> tuple:
    from edgedl.backends.onnxruntime import onnx_reference

    return tuple(onnx_reference(path)[1])


def _reference_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    from edgedl.backends.onnxruntime import onnx_reference

    return onnx_reference(path)[0](x)


def _isolated_reference(fn, path: Path, tool: str, x: np.ndarray) -> np.ndarray:
    return _isolate.run(fn, path, x, file=path, tool=tool, action=f"computing the reference on {len(x)} samples",
                        timeout=CHECK_TIMEOUT_S)


def _check_compiled(source: Path, name: str, compiled, x: np.ndarray, num_threads: int, timed: bool) -> dict:
    """Run a compiled model on the samples (in a child process): its float outputs, and its median
    latency on one sample where ``timed``."""
    from edgedl.backends import get_backend
    from edgedl.runtime.quant import predict

    engine = get_backend(name).load(compiled, num_threads=num_threads)
    problem = _io_problem(engine)
    if problem:
        raise BackendError(f"{source}: built with {name}, {problem}")
    try:
        result = {"outputs": predict(engine, x)}
    except (ValueError, RuntimeError) as e:
        raise BackendError(f"{source}: {name} cannot run its build ({' '.join(str(e).split())[:200]})") from None
    if timed:
        from edgedl.bench import measure_latency
        from edgedl.runtime.quant import quantize

        result["p50_us"] = measure_latency(engine, quantize(x[:1], engine.inputs[0]), 10, 100)["p50_us"]
    return result


def _dir_sha(p: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(_io.sha256_file(f).encode())
    return h.hexdigest()


def samples_for(source: Source, options: CompileOptions) -> tuple[np.ndarray, np.ndarray | None, dict, np.ndarray | None]:
    """Real samples for calibration and fidelity: (x_test, y_test, description, x_train).

    The data set is ``--dataset``, else the one the model was trained on, else the first data set
    whose input shape matches. Without any, the check runs on seeded uniform noise and says so.
    """
    from edgedl.backends.base import check_one_input
    from edgedl.data import DATASETS, load_dataset

    if source.kind == "keras":  # a .tflite or .onnx is checked as it loads; a Keras model before its samples
        check_one_input(source.path, [getattr(t, "name", "?") for t in source.keras_model.inputs])
    name = options.dataset or source.metadata.get("dataset")
    # unnamed: only data sets whose inputs can fit (loading FSDD or CIFAR-10 to find they do not costs seconds)
    candidates = [name] if name else [n for n, info in DATASETS.items()
                                      if tuple(info.input_shape) == tuple(source.input_shape)]
    for n in candidates:
        try:
            data = load_dataset(n, data_dir=options.data_dir, limit=max(options.num_samples, 10),
                                split=source.metadata.get("split") if n == source.metadata.get("dataset") else None)
        except EdgeDLError as e:
            if name:
                raise
            log.debug("data set %s not usable: %s", n, e)
            continue
        if tuple(data.input_shape) == tuple(source.input_shape):
            desc = {"dataset": data.name, "split": data.split, "num_samples": int(len(data.x_test[:options.num_samples])),
                    "preprocessing": data.preprocessing}
            return data.x_test[:options.num_samples], data.y_test[:options.num_samples], desc, data.x_train
        if name:
            raise OptionError(f"data set '{n}' gives inputs of shape {tuple(data.input_shape)}, "
                              f"the model takes {tuple(source.input_shape)}")
    per_sample = math.prod(int(d) for d in source.input_shape)
    if per_sample > MAX_SAMPLE_ELEMENTS:
        raise InputFileError(source.path, f"its input shape {tuple(source.input_shape)} has {per_sample:,} elements per "
                                          f"sample (more than {MAX_SAMPLE_ELEMENTS:,}); the file is malformed or not "
                                          "a model edgedl can check")
    rng = np.random.default_rng(0)
    x = rng.random((options.num_samples, *source.input_shape), dtype=np.float32)
    return x, None, {"dataset": None, "num_samples": len(x), "note": "no data set matches; uniform noise in [0, 1)"}, x


def fidelity(reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None) -> dict:
    """Top-1 agreement and max absolute error of outputs against the reference (and accuracy)."""
    ref_top1, top1 = reference.argmax(-1), outputs.argmax(-1)
    result = {"samples": int(len(reference)), "top1_agreement": float(np.mean(ref_top1 == top1)),
              "max_abs_error": float(np.max(np.abs(outputs - reference))),
              "mean_abs_error": float(np.mean(np.abs(outputs - reference)))}
    if labels is not None:
        result["accuracy"] = float(np.mean(top1 == labels))
        result["reference_accuracy"] = float(np.mean(ref_top1 == labels))
    return result


def runs_here(target) -> tuple[bool, str]:
    """Whether a compiled artifact for ``target`` can run on this machine (same CPU architecture)."""
    machine = platform.machine()
    arch = target.cpu.get("arch")
    if target.kind in ("npu", "mcu"):
        return False, f"{target.name} is a {target.kind}; this host cannot run its code"
    if target.kind == "gpu":
        api = target.gpu.get("api", "cuda")
        if arch != machine:
            return False, f"{target.name}'s host is {arch}, this machine is {machine}"
        try:
            import tvm

            dev = tvm.device(api, 0)
            if dev.exist:
                return True, ""
        except Exception:
            pass
        return False, f"no {api} device on this machine"
    if arch != machine:
        return False, f"{target.name} is {arch}, this machine is {machine}"
    return True, ""


@dataclass
class CompileResult:
    path: Path
    manifest: dict
    digest: str = ""       # the bundle digest (sha256 of manifest.json), what a signature signs


def compile_model(model: str, target: str, out: str, options: CompileOptions | None = None,
                  status=None) -> CompileResult:
    """Compile MODEL for TARGET into the bundle OUT (written atomically).

    Args:
        model: ``.keras``/``.h5``/SavedModel (converted to ``.tflite``, quantized as ``options.quantize``
            says), or a foreign ``.tflite``/``.onnx``.
        target: a target name (``edgedl targets``) or a TOML file.
        out: the bundle path (a folder, or one file with ``options.archive``).
        options: backend, quantization, fidelity bound, tuning, ...
        status: callable(str) told about each stage.

    Returns:
        CompileResult with the bundle path and its manifest.

    Raises:
        TargetError, InputFileError, UnsupportedOperatorError, BackendError, OptionError.

    Example:
        >>> compile_model("lenet.keras", "x86_64", "lenet.edgedl")  # doctest: +SKIP
    """
    from edgedl.backends import get_backend
    from edgedl.targets import load_target

    options = options or CompileOptions()
    say = status or (lambda m: log.info(m))
    if not 0.0 <= options.max_disagreement <= 1.0:
        raise OptionError(f"--max-disagreement must be between 0 and 1, got {options.max_disagreement}")
    if options.num_samples < 1:
        raise OptionError(f"--samples must be a positive integer, got {options.num_samples}")
    if options.data_dir is not None and not Path(options.data_dir).is_dir():
        raise OptionError(f"--data-dir '{options.data_dir}' is not a folder; give the folder holding the data sets "
                          "(mnist/, fsdd/, cifar10/) or leave it out")
    from edgedl.bundle import check_output

    check_output(out, force=options.force)
    if options.sign_key:
        from edgedl.signing import load_private_key

        load_private_key(options.sign_key)
    tgt = load_target(target)
    with tempfile.TemporaryDirectory(prefix="edgedl-compile-") as tmp:
        work = Path(tmp)
        say(f"loading {model}")
        source = load_source(model, options, work)
        x, y, sample_info, x_train = samples_for(source, options)
        if source.kind == "keras":
            say(f"converting to .tflite ({options.quantize})")
            from edgedl.convert import to_tflite

            blob = to_tflite(source.keras_model, options.quantize, representative=x_train, io_type=options.io_type)
            source.tflite = _io.write_bytes(work / "source.tflite", blob)
        reference = source.reference(x)
        names = _backend_candidates(tgt, source, options)
        target_here, _ = runs_here(tgt)  # only then do measured latencies say anything about the target
        results = []
        for name in names:
            backend = get_backend(name)
            say(f"compiling with {name} for {tgt.name}")
            try:
                model_file = source.path if source.kind == "onnx" else source.tflite
                compiled = backend.compile(model_file, tgt, work / name, _backend_options(options, name))
            except UnsupportedOperatorError as e:
                if len(names) == 1:
                    raise UnsupportedOperatorError(f"{e}{_who_takes(source, name)}") from None
                results.append({"backend": name, "ok": False, "error": str(e)})
                continue
            except BackendError as e:
                if len(names) == 1:
                    raise
                results.append({"backend": name, "ok": False, "error": str(e)})
                continue
            entry = {"backend": name, "compiled": compiled, "ok": True}
            here, why_not = backend.runs_here(tgt)
            if not here:
                entry["not_checked"] = why_not
            else:
                say(f"checking {name} against the reference on {len(x)} samples")
                # The compiled model's first run is in a child process, like the source's.
                try:
                    timed = len(names) > 1 and target_here
                    checked = _isolate.run(_check_compiled, source.path, name, compiled, x, options.num_threads, timed,
                                           file=source.path, tool=ENGINE_NAMES.get(name, name),
                                           action=f"running its {name} build on {len(x)} samples",
                                           timeout=CHECK_TIMEOUT_S)
                    if np.shape(checked["outputs"]) != np.shape(reference):
                        raise BackendError(f"{name}'s build of {source.path.name} gives outputs of shape "
                                           f"{np.shape(checked['outputs'])}, the reference {np.shape(reference)}")
                except EdgeDLError as e:
                    if len(names) == 1:
                        raise
                    results.append({"backend": name, "ok": False, "error": str(e)})
                    continue
                entry["fidelity"] = fidelity(reference, checked["outputs"], y)
                entry["ok"] = entry["fidelity"]["top1_agreement"] >= 1.0 - options.max_disagreement
                if "p50_us" in checked:
                    entry["p50_us"] = checked["p50_us"]
            results.append(entry)
        chosen, reason = _choose(results, options)
        compiled = chosen["compiled"]
        manifest = {
            "edgedl_version": __version__,
            "source": {"path": source.path.name, "kind": source.kind, "sha256": source.sha256},
            "target": tgt.to_dict(),
            "backend": compiled.backend,
            "selection": {"reason": reason, "candidates": [
                {k: v for k, v in r.items() if k != "compiled"} for r in results]} if len(results) > 1 else {"reason": reason},
            "options": options.manifest_view() | {"backend": compiled.backend} | {"backend_specific": compiled.options},
            "toolchain": compiled.toolchain | {"edgedl": __version__},
            "runtime": compiled.runtime,
            "inputs": [s.to_dict() for s in compiled.inputs],
            "outputs": [s.to_dict() for s in compiled.outputs],
            "preprocessing": source.metadata.get("preprocessing") or sample_info.get("preprocessing"),
            "samples": {k: v for k, v in sample_info.items() if k != "preprocessing"},
            "estimates": compiled.estimates,
            "fidelity": chosen.get("fidelity") or {"checked": False, "reason": chosen.get("not_checked", "")},
            "files": compiled.files,
        }
        if "fidelity" in chosen and not chosen["ok"]:
            f = chosen["fidelity"]
            raise BackendError(
                f"fidelity check failed for {compiled.backend} on {tgt.name}: top-1 agreement with the reference "
                f"{100 * f['top1_agreement']:.1f}% is below {100 * (1 - options.max_disagreement):.1f}% "
                f"(max abs error {f['max_abs_error']:.4g}); raise --max-disagreement to accept it"
            )
        say(f"writing {out}")
        from edgedl.bundle import check_output, digest_of, write_bundle

        check_output(out, force=options.force)  # again: something may have appeared there meanwhile
        written = write_bundle(out, manifest, compiled.directory, archive=options.archive, sign_key=options.sign_key)
        return CompileResult(Path(out), written, digest_of(out))


def _who_takes(source: Source, failed: str) -> str:
    """"; backends that take every operator: ..." for an error message (empty when none or unknown)."""
    from edgedl.backends import backend_names, get_backend
    from edgedl.graph import read_tflite
    from edgedl.targets import list_targets

    if source.tflite is None:
        return ""
    try:
        graph = read_tflite(source.tflite)
    except EdgeDLError:
        return ""
    takers = []
    targets = list_targets()
    for name in backend_names():
        target = next((t for t in targets if name in t.backends), None)
        if name == failed or target is None:
            continue
        try:
            if not get_backend(name).unsupported_ops(graph, target):
                takers.append(name)
        except EdgeDLError:
            continue
    return f"; backends that take all its operators: {', '.join(takers)}" if takers else ""


def _backend_options(options: CompileOptions, name: str) -> dict:
    opts = dict(options.backend_options)
    if name == "tvm":
        opts.update(tune=options.tune, trials=options.trials, tuning_db=options.tuning_db)
    return opts


def _backend_candidates(tgt, source, options) -> list[str]:
    from edgedl.backends import backend_names

    if options.backend != "auto":
        if options.backend not in backend_names():
            raise OptionError(f"unknown backend '{options.backend}'; known: {', '.join(backend_names())}")
        if options.backend not in tgt.backends:
            raise OptionError(f"target '{tgt.name}' does not take backend '{options.backend}'; "
                              f"it takes: {', '.join(tgt.backends)}")
        names = [options.backend]
    else:
        names = [b for b in tgt.backends if b in backend_names()]
    if source.kind == "onnx":
        onnx_ok = [n for n in names if n in ("onnxruntime", "tvm")]
        if not onnx_ok:
            raise OptionError(f"an .onnx model compiles with onnxruntime or tvm; target '{tgt.name}' takes "
                              f"{', '.join(tgt.backends)}")
        names = onnx_ok
    if not names:
        raise OptionError(f"no installed backend serves target '{tgt.name}' (it lists {', '.join(tgt.backends)})")
    if options.backend == "auto" and source.kind != "onnx":
        from edgedl.graph import read_tflite

        problem = float_for_npu(tgt, read_tflite(source.tflite).is_quantized)
        if problem:
            raise OptionError(problem)
    return names


def float_for_npu(tgt, quantized: bool) -> str:
    """Why a float model must not go to an NPU target with ``--backend auto`` ("" when it may): Vela,
    the only backend there that uses the NPU, takes full-integer models, and the model would silently
    run on the CPU beside it instead."""
    if tgt.kind != "npu" or quantized or "vela" not in tgt.backends:
        return ""
    cpu_backends = [b for b in tgt.backends if b != "vela"]
    fallback = (f", or --backend {cpu_backends[0]} to run it in float on its {tgt.cpu.get('arch', 'CPU')}"
                if cpu_backends else "")
    return (f"target '{tgt.name}' runs a model on its NPU only when the model is full-integer, and this one is "
            f"float: add -q int8 (calibrated on the model's data set){fallback}")


def _choose(results, options):
    ok = [r for r in results if r["ok"]]
    if not ok:
        errors = "; ".join(f"{r['backend']}: {r.get('error') or 'failed the fidelity check'}" for r in results)
        if len(results) == 1 and "fidelity" in results[0]:
            return results[0], "the only backend asked for"
        raise UnsupportedOperatorError(f"no backend could compile the model: {errors}")
    if len(results) == 1:
        return ok[0], f"backend {ok[0]['backend']} {'chosen with --backend' if options.backend != 'auto' else 'is the only one for this target'}"
    timed = [r for r in ok if "p50_us" in r]
    if timed:
        best = min(timed, key=lambda r: r["p50_us"])
        others = ", ".join(f"{r['backend']} {r['p50_us']:.1f} us" for r in timed if r is not best)
        return best, (f"fastest of the backends that pass the fidelity check, measured here: {best['backend']} "
                      f"{best['p50_us']:.1f} us" + (f" (vs {others})" if others else ""))
    return ok[0], (f"first of the target's backends that compiles the model ({ok[0]['backend']}); "
                   f"not measured: {ok[0].get('not_checked') or 'cannot run here'}")
