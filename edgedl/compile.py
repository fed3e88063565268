"""Compilation: a model (Keras, ``.tflite`` or ``.onnx``) for a target, checked against its reference,
written as one deployable bundle.

``compile_model`` reads top-down, one call a stage: check the options -> load the source (a model
from elsewhere is first parsed in a child process) -> choose real samples -> convert a Keras model to
``.tflite`` -> compute the reference -> build with each candidate backend and check each build
against the reference where this host can run it -> choose one -> write the bundle with its manifest.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np

from edgedl import __version__, _io, _isolate
from edgedl.backends.base import check_inputs
from edgedl.bundle import Bundle
from edgedl.data.base import ModelInput
from edgedl.errors import BackendError, EdgeDLError, InputFileError, OptionError, UnsupportedOperatorError
from edgedl.modelio import metrics_beside
from edgedl.reference import (
    CHECK_TIMEOUT_S, Bounds, Reference, Samples, choose_samples, input_range, noise_samples, one_class_problem,
    range_problem, reference_all_outputs,
)

log = logging.getLogger(__name__)

SOURCE_SUFFIXES = (".keras", ".h5", ".hdf5", ".tflite", ".onnx")
SOURCE_FORMATS = ".keras, .h5, a SavedModel folder, .tflite or .onnx"
CALIBRATIONS = ("data", "random")
CALIBRATED = ("int8", "int16x8")   # quantization modes that calibrate activations on samples
QUANT_REPORT_FILE = "quant_report.json"  # --quant-report: the per-layer error, a file of the bundle
ENGINE_NAMES = {"litert": "LiteRT", "tflm": "TFLite Micro", "tvm": "TVM", "onnxruntime": "ONNX Runtime"}


@dataclass
class CompileOptions:
    """Everything that shapes a compile besides the model and the target.

    Example:
        >>> CompileOptions(backend="tvm", quantize="int8", tune=True, trials=200).check()
    """

    backend: str = "auto"
    quantize: str = "none"            # for Keras sources: none, dynamic, float16, int8, int16x8
    io_type: str = "float"
    dataset: str | None = None        # samples for calibration and the fidelity check
    calibration: str = "data"         # int8/int16x8 of a Keras model: "data" (real samples) or "random" (synthetic)
    data_dir: str | None = None
    data: str | None = None           # a .npz, .npy or folder of images/wav files (--data) instead of a data set
    preprocess: object = None         # for data: KEY=VALUE strings, a .toml or an edgedl.data.Preprocess
    num_samples: int = 100
    max_disagreement: float = 0.02    # fail when top-1 agreement with the reference is below 1 - this
    max_accuracy_drop: float = 0.05   # fail when accuracy on labelled samples drops more than this
    min_snr_db: float = 10.0          # fail when the outputs' SNR against the reference is below this
    tune: bool = False
    trials: int = 64
    tuning_db: str | None = None
    tune_minutes: float | None = None  # tvm --tune: wall-clock budget (trials bound it too)
    tune_device: str | None = None    # tvm --tune: measure on tracker://HOST:PORT/KEY or HOST:PORT (TVM RPC servers)
    num_threads: int = 1
    archive: bool = False
    force: bool = False               # replace an existing bundle at the output path (never anything else)
    sign_key: str | None = None       # Ed25519 private key file: sign the bundle's digest
    kernels: str | None = None        # tflm on an MCU: cmsis_nn or reference (None: the core's default)
    firmware: bool = True             # tflm on an MCU: build the firmware project and its ELF
    quant_report: bool = False        # Keras, int8/int16x8: per-layer error vs float32, kept in the bundle
    keep_float: tuple = ()            # Keras, int8/int16x8: layers left in float32 (edgedl.optimize.selective)
    int16: tuple = ()                 # Keras, int8: layers in int16x8
    backend_options: dict = field(default_factory=dict)

    def check(self) -> None:
        """Refuse settings no compile can use, by option name, before anything is loaded.

        Raises:
            OptionError: the option and what it takes.
        """
        if self.calibration not in CALIBRATIONS:
            raise OptionError(f"--calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        if not 0.0 <= self.max_disagreement <= 1.0:
            raise OptionError(f"--max-disagreement must be between 0 and 1, got {self.max_disagreement}")
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise OptionError(f"--max-accuracy-drop must be between 0 and 1, got {self.max_accuracy_drop}")
        if not -200.0 <= self.min_snr_db <= 200.0:
            raise OptionError(f"--min-snr must be between -200 and 200 dB, got {self.min_snr_db}")
        if self.num_samples < 1:
            raise OptionError(f"--samples must be a positive integer, got {self.num_samples}")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise OptionError(f"--data-dir '{self.data_dir}' is not a folder; give the folder holding the data sets "
                              "(mnist/, fsdd/, cifar10/) or leave it out")
        if self.data is not None or self.preprocess:  # a wrong --data or --preprocess, before the model loads
            from edgedl.data.user import Preprocess, data_kind

            if self.data is None or self.dataset is not None:
                raise OptionError("--preprocess applies to data given with --data: leave it out, or give --data"
                                  if self.data is None else "give one of --dataset (a built-in data set) and --data "
                                  "(a file or folder), not both")
            data_kind(self.data)  # there, and of a kind --data takes
            Preprocess.parse(self.preprocess)
        if self.sign_key:
            from edgedl.signing import load_private_key

            load_private_key(self.sign_key)
        self._check_precision()
        from edgedl.backends.tvm_tune import check_tune_options

        check_tune_options(self.tune, self.trials, self.tune_minutes, self.tune_device)

    def _check_precision(self) -> None:
        """--quant-report, --keep-float and --int16 look inside an integer model edgedl quantizes itself."""
        for name in ("keep_float", "int16"):  # one layer name, or several
            value = getattr(self, name) or ()
            setattr(self, name, (value,) if isinstance(value, str) else tuple(value))
        integer = f"-q {self.quantize}" if self.quantize != "none" else "no -q"
        if self.quant_report and self.quantize not in CALIBRATED:
            raise OptionError(f"--quant-report compares float and integer activations: it needs -q int8 or int16x8, "
                              f"not {integer}")
        if (self.keep_float or self.int16) and self.quantize not in CALIBRATED:
            raise OptionError(f"--keep-float and --int16 choose layers' precision in an integer model: give -q int8, "
                              f"not {integer}")
        if self.int16 and self.quantize != "int8":
            raise OptionError("--int16 puts layers in int16x8 within an int8 model: use -q int8 "
                              "(with -q int16x8 every layer is int16x8 already)")
        both = sorted(set(self.keep_float) & set(self.int16))
        if both:
            raise OptionError(f"layer(s) {', '.join(both)} asked in float (--keep-float) and in int16 (--int16): "
                              "give each once")

    def looks_inside(self) -> str:
        """The options that need a Keras source ("--quant-report, --keep-float"), or ""."""
        flags = [f for f, on in (("--quant-report", self.quant_report), ("--keep-float", self.keep_float),
                                 ("--int16", self.int16)) if on]
        return ", ".join(flags)

    def bounds(self) -> Bounds:
        """How far a build may stray from the reference."""
        return Bounds(self.max_disagreement, self.max_accuracy_drop, self.min_snr_db)

    def manifest_view(self) -> dict:
        d = asdict(self)
        for k in ("data_dir", "data", "preprocess", "archive", "force", "sign_key"):
            d.pop(k)
        return d

    def for_backend(self, name: str) -> dict:
        """The options one backend's ``compile`` takes."""
        opts = dict(self.backend_options)
        if name == "tvm":
            opts.update(tune=self.tune, trials=self.trials, tuning_db=self.tuning_db, tune_minutes=self.tune_minutes,
                        tune_device=self.tune_device)
        if name == "tflm":
            opts.update(firmware=self.firmware, **({"kernels": self.kernels} if self.kernels else {}))
        return opts


@dataclass
class ModelSource:
    """The model as given, its ``.tflite`` form (if any) and how to compute the reference."""

    path: Path
    kind: str                           # keras, tflite, onnx
    sha256: str
    tflite: Path | None
    reference: object                   # callable(float batch) -> list of float outputs, one per model output
    input_shape: tuple | list           # one sample's shape; a list of them for a model with several inputs
    metadata: dict
    keras_model: object = None
    input_range: tuple | list | None = None  # the float range a quantized input covers (None: float input)
    input_names: list = field(default_factory=list)  # in the order of the samples' arrays
    references: dict = field(default_factory=dict, repr=False)  # kernel set -> Reference, computed once
    interpreter: str = "litert"         # a .tflite's reference: LiteRT, or TFLite Micro's for ops only it has

    def record(self) -> dict:
        """What the manifest says of the source."""
        return {"path": self.path.name, "kind": self.kind, "sha256": self.sha256}

    def reference_label(self, kernels: str = "xnnpack") -> str:
        """What computes the reference: the Keras model in float, ONNX Runtime on the .onnx, or LiteRT
        on the .tflite with one of its kernel sets."""
        if self.kind == "keras":
            return "the Keras model (float)"
        if self.kind == "onnx":
            return f"ONNX Runtime on {self.path.name}"
        if self.interpreter == "tflm":
            return f"TFLite Micro's interpreter on {self.path.name}"
        return f"LiteRT on {self.path.name} ({kernels} kernels)"

    def reference_for(self, kernels: str | None, default: Reference) -> Reference:
        """The reference a build whose arithmetic is LiteRT's ``kernels`` is held to: for a ``.tflite``
        source, LiteRT running it with those kernels (TFLite Micro rounds like the reference kernels,
        not like XNNPACK); for a Keras or ONNX source, the source itself."""
        if self.kind != "tflite" or kernels in (None, "xnnpack") or self.interpreter != "litert":
            return default
        if kernels not in self.references:
            outputs = reference_all_outputs(self.path, default.samples.x, kernels=kernels)
            self.references[kernels] = Reference(default.samples, outputs[0], self.reference_label(kernels),
                                                 outputs[1:])
        return self.references[kernels]


@dataclass
class Candidate:
    """One backend's try: its build, whether it passed, and what was measured or went wrong."""

    backend: str
    ok: bool
    compiled: object = None             # backends.base.CompiledModel
    error: str | None = None
    fidelity: dict | None = None
    p50_us: float | None = None
    not_checked: str | None = None      # why the build was not run here
    problems: list | None = None        # what broke the fidelity bounds
    note: str | None = None             # what its latency means (timing cut short, TVM untuned)

    def record(self) -> dict:
        """What the manifest's selection says of this candidate."""
        return {f.name: getattr(self, f.name) for f in fields(self)  # not asdict: it deep-copies the build
                if f.name != "compiled" and getattr(self, f.name) is not None}


def compile_model(model: str, target: str, out: str, options: CompileOptions | None = None,
                  status=None) -> Bundle:
    """Compile MODEL for TARGET into the bundle OUT (written atomically).

    Args:
        model: ``.keras``/``.h5``/SavedModel (converted to ``.tflite``, quantized as ``options.quantize``
            says), or a foreign ``.tflite``/``.onnx``.
        target: a target name (``edgedl targets``) or a TOML file.
        out: the bundle path (a folder, or one file with ``options.archive``).
        options: backend, quantization, fidelity bound, tuning, ...
        status: callable(str) told about each stage.

    Returns:
        The :class:`edgedl.bundle.Bundle` written: its path, manifest and digest; ``summary()`` says
        what a person wants to know of it.

    Raises:
        TargetError, InputFileError, UnsupportedOperatorError, BackendError, OptionError.

    Example:
        >>> bundle = compile_model("lenet.keras", "x86_64", "lenet.edgedl",
        ...                        CompileOptions(quantize="int8"))     # doctest: +SKIP
        >>> print("\n".join(bundle.summary()))                          # doctest: +SKIP
    """
    from edgedl.bundle import check_output
    from edgedl.targets import load_target

    options = options or CompileOptions()
    say = status or (lambda m: log.info(m))
    _check_keras_only(Path(model), options)
    options.check()
    check_source_path(model)
    check_output(out, force=options.force)
    tgt = load_target(target)
    with tempfile.TemporaryDirectory(prefix="edgedl-compile-") as tmp:
        work = Path(tmp)
        say(f"loading {model}")
        source = load_source(model, options, work)
        samples = samples_for(source, options)
        quant = None
        if source.kind == "keras":
            say(f"converting to .tflite ({options.quantize}{_precision_note(options)})")
            source.tflite = convert_source(source, options, samples, work)
            if options.quant_report:
                from edgedl.optimize.quant_report import NUM_SAMPLES

                say(f"comparing each layer's activations with float32 on {min(len(samples), NUM_SAMPLES)} samples")
                quant = layer_report(source, options, samples)
        outputs = source.reference(samples.x)
        reference = Reference(samples, outputs[0], source.reference_label(), outputs[1:])
        problem = one_class_problem(reference.outputs, samples)
        if problem:
            raise OptionError(f"{source.path.name}: {problem}")
        names = _backend_candidates(tgt, source, options)
        candidates = []
        for name in names:  # a candidate already several times slower than the fastest so far is not timed in full
            fastest = min((c.p50_us for c in candidates if c.ok and c.p50_us), default=None)
            candidates.append(build_and_check(name, source, tgt, reference, options, work, say,
                                              alone=len(names) == 1, beat_us=fastest))
        chosen, reason = _choose(candidates, options)
        manifest = _manifest(source, tgt, chosen, candidates, reason, samples, options)
        _refuse_unfaithful(chosen, tgt, options)
        if quant is not None:
            _keep_quant_report(manifest, quant, chosen.compiled.directory)
        say(f"writing {out}")
        return _write(out, manifest, chosen.compiled.directory, options)


def check_source_path(path) -> Path:
    """Refuse a model path compile cannot read (missing, or a file of another format), before
    anything is loaded.

    Raises:
        InputFileError: the path and the formats compile takes.
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, f"no such file or folder; expected {SOURCE_FORMATS}")
    if p.is_file() and p.suffix.lower() not in SOURCE_SUFFIXES:
        raise InputFileError(p, f"unknown model format '{p.suffix or '(no suffix)'}'; expected {SOURCE_FORMATS}")
    return p


def _check_keras_only(path: Path, options: CompileOptions) -> None:
    """Refuse --quant-report, --keep-float and --int16 for a model edgedl does not quantize itself."""
    flags = options.looks_inside()
    if flags and path.suffix.lower() in (".tflite", ".onnx"):
        raise OptionError(f"{flags} {'apply' if ',' in flags else 'applies'} to Keras models, which edgedl converts "
                          f"and quantizes itself, not to {path.name}: give the Keras model it was made from")


def _precision_note(options: CompileOptions) -> str:
    """", conv1 in float32, fc1 in int16x8" for the status line (empty without selective precision)."""
    parts = [f"{', '.join(names)} in {what}" for names, what in ((options.keep_float, "float32"),
                                                                   (options.int16, "int16x8")) if names]
    return "".join(f", {p}" for p in parts)


def layer_report(source: ModelSource, options: CompileOptions, samples: Samples) -> dict:
    """The converted model's error layer by layer against the float32 one, on the fidelity samples
    (:func:`edgedl.optimize.quant_report.quant_report`: RMSE over the float range, cosine, SNR).

    Example:
        >>> layer_report(source, CompileOptions(quantize="int8"), samples)["layers"][0]["layer"]  # doctest: +SKIP
        'probs'
    """
    from edgedl.optimize.measure import Export
    from edgedl.optimize.quant_report import quant_report

    export = Export(samples.calibration if samples.calibration is not None else samples.x, options.io_type)
    return quant_report(source.keras_model, source.tflite.read_bytes(), options.quantize, export, samples.x)


def _keep_quant_report(manifest: dict, quant: dict, files_dir: Path) -> None:
    """Put the per-layer error in the bundle (a file the manifest lists, so verification covers it) and
    its worst layers in the manifest."""
    _io.write_json(files_dir / QUANT_REPORT_FILE, quant)
    manifest["files"] = [*manifest["files"], QUANT_REPORT_FILE]
    worst = [{"layer": r["layer"] or r["tensor"], "snr_db": r["snr_db"]} for r in quant["layers"][:3]]
    manifest["quant_report"] = {"file": QUANT_REPORT_FILE, "mode": quant["mode"], "samples": quant["samples"],
                                "layers": len(quant["layers"]), "worst": worst}


def load_source(path: str, options: CompileOptions, workdir: Path) -> ModelSource:
    """Load MODEL and set up its reference (a Keras model is converted later, by :func:`convert_source`)."""
    p = check_source_path(path)
    sha = _io.sha256_file(p) if p.is_file() else _dir_sha(p)
    meta = metrics_beside(p) if p.is_file() else {}
    # A .tflite or .onnx from elsewhere is parsed, allocated and run for the first time in a child
    # process (edgedl._isolate): a native crash on a malformed file is one error line naming it.
    if p.suffix.lower() == ".tflite":
        probe = _isolate.run(_probe_tflite, p, file=p, tool="LiteRT", action="loading it", timeout=CHECK_TIMEOUT_S)
        if options.quantize != "none":
            raise OptionError(f"--quantize applies to Keras models; {p.name} is already a .tflite "
                              f"({'quantized' if probe['quantized'] else 'float'})")
        return ModelSource(p, "tflite", sha, p, partial(reference_all_outputs, p, interpreter=probe["interpreter"]),
                           probe["input_shape"], meta, input_range=probe["input_range"],
                           interpreter=probe["interpreter"], input_names=probe["input_names"])
    if p.suffix.lower() == ".onnx":
        shapes, names = _isolate.run(_probe_onnx, p, file=p, tool="ONNX Runtime", action="loading it",
                                     timeout=CHECK_TIMEOUT_S)
        return ModelSource(p, "onnx", sha, None, partial(reference_all_outputs, p), _one_or_list(shapes), meta,
                           input_names=names)
    from edgedl.modelio import load_model

    model = load_model(str(p))
    check_inputs(p, model.inputs)
    for k, t in enumerate(model.inputs):
        if any(d is None for d in t.shape[1:]):  # a time axis of any length: nothing converts or runs it batch-1
            raise InputFileError(p, f"its input '{getattr(t, 'name', k)}' has the shape {tuple(t.shape)}; edgedl "
                                    "compiles fixed sizes: give every axis but the batch a size (keras.Input((steps, "
                                    "features)))")
    shapes = [tuple(int(d) for d in t.shape[1:]) for t in model.inputs]
    return ModelSource(p, "keras", sha, None, partial(reference_all_outputs, model), _one_or_list(shapes), meta,
                       keras_model=model, input_names=[getattr(t, "name", f"input_{k}") for k, t in enumerate(model.inputs)])


def _one_or_list(items: list):
    """One input's item itself; several inputs' as the list."""
    return items[0] if len(items) == 1 else list(items)


def samples_for(source: ModelSource, options: CompileOptions) -> Samples:
    """Real samples for calibration and fidelity (:func:`edgedl.reference.choose_samples`): ``--data`` (a
    file or folder, with its ``--preprocess`` steps), ``--dataset``, else the one the model was trained on,
    else the first data set whose input shape matches. Without any, the check runs on seeded uniform noise
    and says so."""
    names = source.input_names or None
    samples = choose_samples(ModelInput(source.input_shape, names, source.path), dataset=options.dataset,
                             data=options.data, preprocess=options.preprocess, data_dir=options.data_dir,
                             trained_on=source.metadata, limit=options.num_samples, search=True)
    if samples is not None:
        problem = range_problem(samples.x, source.input_range, f"data set '{samples.description['dataset']}'")
        if problem:
            raise OptionError(f"{source.path.name}: {problem}")
        return samples
    if source.kind == "keras" and options.quantize in CALIBRATED and options.calibration != "random":
        raise OptionError(f"{source.path.name}: -q {options.quantize} calibrates on real samples and no data set fits "
                          f"its input {tuple(source.input_shape)}; give your own with --data (a .npz, .npy or a folder of images or wavs), "
                          "name one with --dataset, or calibrate on synthetic inputs with --calibration random "
                          "(recorded; accuracy usually suffers)")
    samples = noise_samples(source.input_shape, options.num_samples, source.path, source.input_range)
    samples.names = names if isinstance(samples.x, list) else None
    return samples


def convert_source(source: ModelSource, options: CompileOptions, samples: Samples, work: Path) -> Path:
    """The Keras model as ``.tflite``, quantized as asked (int8 calibrated on the samples' training split,
    or on synthetic inputs with ``--calibration random``)."""
    from edgedl.convert import to_tflite

    calibration = samples.calibration
    if options.calibration == "random" and "synthetic" not in samples.description:  # asked for, though real samples exist
        calibration = noise_samples(source.input_shape, max(len(samples), 100), source.path).x
    blob = to_tflite(source.keras_model, options.quantize, representative=calibration, io_type=options.io_type,
                     keep_float=options.keep_float, int16=options.int16)
    return _io.write_bytes(work / "source.tflite", blob)


def build_and_check(name: str, source: ModelSource, tgt, reference: Reference, options: CompileOptions, work: Path,
                    say, alone: bool, beat_us: float | None = None) -> Candidate:
    """Compile with one backend and, where this host runs the build, check it against the reference
    (in a child process) and time it when there are others to choose from (``beat_us``: the fastest
    so far; a build :data:`SLOW_FACTOR` times slower after a few runs is not timed further). Alone, a
    failure raises; among several it is recorded and the others go on."""
    from edgedl.backends import get_backend

    backend = get_backend(name)
    say(f"compiling with {name} for {tgt.name}")
    try:
        compiled = backend.compile(source.path if source.kind == "onnx" else source.tflite, tgt, work / name,
                                   options.for_backend(name))
    except UnsupportedOperatorError as e:
        if alone:
            raise UnsupportedOperatorError(f"{e}{_who_takes(source, name)}") from None
        return Candidate(name, False, error=str(e))
    except BackendError as e:
        if alone:
            raise
        return Candidate(name, False, error=str(e))
    here, why_not = backend.runs_here(tgt)
    emulator = None
    if not here and name == "tvm":  # a cross-compiled TVM build runs under qemu-user (edgedl.emulate)
        from edgedl import emulate

        emulator, no_emulation = emulate.emulator_for(tgt, prepare=True, say=say)
        why_not = f"{why_not}; not emulated: {no_emulation}" if emulator is None else why_not
    if not here and emulator is None:
        return Candidate(name, True, compiled, not_checked=why_not)
    reference = source.reference_for(backend.reference_kernels(compiled), reference)
    samples = reference.samples
    say(f"checking {name} against {reference.label} on {len(samples)} samples"
        + (f" under {emulator} (emulated: no latency)" if emulator else ""))
    try:
        if emulator:
            checked = {"outputs": emulate.check_emulated(compiled, samples, tgt, emulator, say)}
        else:
            timed = not alone and tgt.runs_here()[0]  # only then do measured latencies say anything about the target
            checked = _isolate.run(_check_compiled, source.path, name, compiled, samples, options.num_threads, timed,
                                   beat_us, file=source.path, tool=ENGINE_NAMES.get(name, name),
                                   action=f"running its {name} build on {len(samples)} samples", timeout=CHECK_TIMEOUT_S)
        outputs = _in_reference_order(checked["outputs"], [reference.outputs, *reference.more], name, source)
    except EdgeDLError as e:
        if alone:
            raise
        return Candidate(name, False, error=str(e))
    result = reference.compare(outputs)
    if emulator:
        result |= emulate.record(emulator, tgt)
    problems = options.bounds().check(result)
    return Candidate(name, not problems, compiled, fidelity=result, p50_us=checked.get("p50_us"),
                     note=_latency_note(name, compiled, checked.get("timing")),
                     problems=problems or None)


def _manifest(source: ModelSource, tgt, chosen: Candidate, candidates: list[Candidate], reason: str,
              samples: Samples, options: CompileOptions) -> dict:
    """The manifest of the chosen build: how every number in it was made (``files`` is filled in as
    the bundle is written)."""
    compiled = chosen.compiled
    selection = {"reason": reason}
    if chosen.note:
        selection["note"] = chosen.note
    if len(candidates) > 1:
        selection["candidates"] = [c.record() for c in candidates]
    return {
        "edgedl_version": __version__,
        "source": source.record() | _recurrent_record(source, options),
        "target": tgt.to_dict(),
        "backend": compiled.backend,
        "selection": selection,
        "options": options.manifest_view() | {"backend": compiled.backend} | {"backend_specific": compiled.options},
        "toolchain": compiled.toolchain | {"edgedl": __version__},
        "runtime": compiled.runtime,
        "inputs": [s.to_dict() for s in compiled.inputs],
        "outputs": [s.to_dict() for s in compiled.outputs],
        "preprocessing": (samples.description.get("file") and samples.description.get("preprocessing")
                          or source.metadata.get("preprocessing") or samples.description.get("preprocessing")),
        "samples": {k: v for k, v in samples.description.items() if k != "preprocessing"},
        "estimates": compiled.estimates,
        "fidelity": chosen.fidelity or {"checked": False, "reason": chosen.not_checked or ""},
        "files": compiled.files,
    }


def _refuse_unfaithful(chosen: Candidate, tgt, options: CompileOptions) -> None:
    """Refuse a build whose outputs strayed from the reference beyond the bounds (``--max-disagreement``,
    ``--max-accuracy-drop``, ``--min-snr``)."""
    if chosen.fidelity is None or chosen.ok:
        return
    raise BackendError(f"fidelity check failed for {chosen.backend} on {tgt.name}: {'; '.join(chosen.problems)}")


def _write(out: str, manifest: dict, files_dir: Path, options: CompileOptions) -> Bundle:
    from edgedl.bundle import check_output, write_bundle

    check_output(out, force=options.force)  # again: something may have appeared there meanwhile
    write_bundle(out, manifest, files_dir, archive=options.archive, sign_key=options.sign_key)
    return Bundle.at(out)


def _probe_tflite(path: Path) -> dict:
    """Parse and allocate a ``.tflite`` with LiteRT (in a child process): whether it is quantized and
    its input shape without the batch."""
    from edgedl.graph import read_tflite
    from edgedl.runtime.engines import LiteRTEngine

    graph = read_tflite(path)
    if not graph.inputs or not graph.outputs:
        raise InputFileError(path, f"the model has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; "
                                   "edgedl needs at least one of each")
    interpreter = "litert"
    try:
        engine = LiteRTEngine(path)
    except InputFileError as e:
        if "unresolved custom op" not in str(e):
            raise
        engine, interpreter = _tflm_only(path, e), "tflm"
    problem = _io_problem(engine)
    if problem:
        raise InputFileError(path, problem)
    return {"quantized": graph.is_quantized, "input_shape": _one_or_list([tuple(s.shape[1:]) for s in engine.inputs]),
            "input_range": _one_or_list([input_range(s) for s in engine.inputs]), "interpreter": interpreter,
            "input_names": [s.name for s in engine.inputs]}


def _tflm_only(path: Path, litert_error: InputFileError):
    """TFLite Micro's interpreter on a model with custom operators LiteRT's Python runtime lacks (TFLite
    Micro's Signal ops for audio front ends): the model is compiled for TFLite Micro and checked
    against its interpreter. Neither runs it: LiteRT's error, with TFLite Micro's."""
    from edgedl.runtime.tflm import TFLMEngine

    try:
        return TFLMEngine(path)
    except EdgeDLError as e:
        raise InputFileError(path, f"{str(litert_error).removeprefix(f'{path}: ')}; TFLite Micro cannot run it "
                                   f"either ({str(e).removeprefix(f'{path}: ')})") from None


def _io_problem(engine) -> str:
    """What is wrong with an engine's inputs and first output for edgedl, or "" (inputs and an output,
    each with a batch axis of 1 and fixed, positive sizes)."""
    if not engine.inputs or not engine.outputs:
        return (f"the model has {len(engine.inputs)} inputs and {len(engine.outputs)} outputs; edgedl needs at "
                "least one of each")
    for kind, spec in [("input", s) for s in engine.inputs] + [("output", engine.outputs[0])]:
        if len(spec.shape) < 1 or spec.shape[0] != 1 or min(spec.shape) < 1:
            return (f"its {kind} '{spec.name[:80]}' has the shape {list(spec.shape)}; edgedl needs a batch axis "
                    "of 1 first and fixed, positive sizes")
    return ""


def _in_reference_order(built: list, wanted: list, name: str, source: ModelSource) -> list:
    """The build's outputs in the reference's order. The TFLite converter may order a model's outputs
    differently from Keras; they are matched by shape, which must leave no doubt."""
    built_shapes, wanted_shapes = [np.shape(o) for o in built], [np.shape(o) for o in wanted]
    if built_shapes == wanted_shapes:
        return list(built)
    if sorted(map(str, built_shapes)) == sorted(map(str, wanted_shapes)) and len(set(wanted_shapes)) == len(wanted):
        return [built[built_shapes.index(shape)] for shape in wanted_shapes]
    shown = lambda shapes: ", ".join(str(s) for s in shapes)  # noqa: E731
    raise BackendError(f"{name}'s build of {source.path.name} gives outputs of shape {shown(built_shapes)}, the "
                       f"reference {shown(wanted_shapes)}")


#: a candidate this many times slower than the fastest so far, after its first runs, is not timed further
SLOW_FACTOR = 3.0
FIRST_RUNS = 20


def _recurrent_record(source, options) -> dict:
    """``{"recurrent": [...]}``: how each recurrent layer of a Keras source went into the ``.tflite``
    (fused LSTM operator or unrolled over its steps; :func:`edgedl.recurrent.plan_for`), for the
    modes that convert them so (dynamic-range keeps TensorFlow's loop); {} for other sources."""
    model = getattr(source, "keras_model", None)
    if source.kind != "keras" or model is None or options.quantize == "dynamic":
        return {}
    from edgedl import recurrent

    plan = recurrent.plan_for(model, options.quantize)
    return {"recurrent": [p.to_dict() for p in plan]} if plan else {}


def _latency_note(name: str, compiled, timing: str | None) -> str | None:
    """What a candidate's latency means, for the manifest and the compile summary: a timing cut short,
    and a TVM build that ran untuned (with what tuning it would take)."""
    notes = [timing] if timing else []
    options = getattr(compiled, "options", None) or {}
    if name == "tvm" and options.get("tuned") is False:
        kernels = options.get("kernels")
        notes.append(f"TVM untuned ({'edgedl default CPU schedules' if 'edgedl' in str(options.get('schedules', '')) else 'stock lowering'}); "
                     f"--backend tvm --tune --tune-minutes N searches schedules for its "
                     f"{kernels or 'fused'} kernels with MetaSchedule "
                     + ("on the device (add --tune-device tracker://HOST:PORT/KEY)" if options.get("cross_compiler")
                        else "on this host") + " (minutes; the database is reused)")
    return "; ".join(notes) or None


def _check_compiled(source: Path, name: str, compiled, samples: Samples, num_threads: int, timed: bool,
                    beat_us: float | None = None) -> dict:
    """Run a compiled model on the samples (in a child process): its float outputs, and its median
    latency on one sample where ``timed``; with ``beat_us`` (the fastest candidate so far), timing
    stops after :data:`FIRST_RUNS` runs when those are already :data:`SLOW_FACTOR` times slower.
    Several inputs are fed by name (the build may order them otherwise than the source)."""
    from edgedl import _inputs
    from edgedl.backends import get_backend
    from edgedl.runtime.quant import predict_outputs

    engine = get_backend(name).load(compiled, num_threads=num_threads)
    problem = _io_problem(engine)
    if problem:
        raise BackendError(f"{source}: built with {name}, {problem}")
    x = samples.x
    if isinstance(x, list):
        x = _inputs.reorder(x, _inputs.order_for(samples.names, _inputs.sample_shapes(x), engine.inputs,
                                                 f"{name}'s build of {source.name}"))
    try:
        result = {"outputs": predict_outputs(engine, x)}
    except (ValueError, RuntimeError) as e:
        raise BackendError(f"{source}: {name} cannot run its build ({' '.join(str(e).split())[:200]})") from None
    if timed:
        from edgedl.bench import measure_latency
        from edgedl.runtime.quant import quantize

        first = _inputs.like(x, [quantize(a[:1], spec) for a, spec in zip(_inputs.as_list(x), engine.inputs)])
        if beat_us:
            quick = measure_latency(engine, first, 5, FIRST_RUNS)["p50_us"]
            if quick > SLOW_FACTOR * beat_us:
                result["p50_us"] = quick
                result["timing"] = (f"timed on {FIRST_RUNS} runs only: already {quick / beat_us:.1f}x slower than "
                                    f"the fastest so far ({beat_us:.0f} us)")
                return result
        result["p50_us"] = measure_latency(engine, first, 10, 100)["p50_us"]
    return result


def _probe_onnx(path: Path) -> tuple[list, list]:
    from edgedl.backends.onnxruntime import onnx_reference

    _, shapes, names = onnx_reference(path)
    return shapes, names


def _dir_sha(p: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(_io.sha256_file(f).encode())
    return h.hexdigest()


def _who_takes(source: ModelSource, failed: str) -> str:
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
    if source.interpreter == "tflm":  # custom operators only TFLite Micro has
        if "tflm" not in names:
            raise OptionError(f"{source.path.name} has operators only TFLite Micro runs; target '{tgt.name}' takes "
                              f"{', '.join(tgt.backends)}, not tflm")
        return ["tflm"]
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

        problem = float_for_npu(tgt, read_tflite(source.tflite).quantization_kind)
        if problem:
            raise OptionError(problem)
    return names


def float_for_npu(tgt, kind: str) -> str:
    """Why a model that is not full-integer must not go to an NPU target with ``--backend auto`` (""
    when it may): Vela, the only backend there that uses the NPU, takes full-integer models, and the
    model would silently run on the CPU beside it instead. ``kind``: the model's quantization
    (:attr:`edgedl.graph.Graph.quantization_kind`: float, float16, dynamic, mixed, int8, int16x8)."""
    if tgt.kind != "npu" or kind in ("int8", "int16x8") or "vela" not in tgt.backends:
        return ""
    described = {"float": "float", "float16": "float16 (float arithmetic)",
                 "dynamic": "dynamic-range (float activations)", "mixed": "only partly integer"}.get(kind, kind)
    cpu_backends = [b for b in tgt.backends if b != "vela"]
    fallback = (f", or --backend {cpu_backends[0]} to run it in float on its {tgt.cpu.get('arch', 'CPU')}"
                if cpu_backends else "")
    return (f"target '{tgt.name}' runs a model on its NPU only when the model is full-integer, and this one is "
            f"{described}: add -q int8 (calibrated on the model's data set){fallback}")


def _choose(candidates: list[Candidate], options: CompileOptions) -> tuple[Candidate, str]:
    """The build to ship and why: the fastest measured of those that pass the fidelity check, else
    the first that compiled; a lone build that failed the check is returned for the caller to refuse."""
    ok = [c for c in candidates if c.ok]
    if not ok:
        if len(candidates) == 1 and candidates[0].fidelity is not None:
            return candidates[0], "the only backend asked for"
        errors = "; ".join(f"{c.backend}: {c.error or 'failed the fidelity check (' + ', '.join(c.problems or []) + ')'}"
                           for c in candidates)
        raise UnsupportedOperatorError(f"no backend could compile the model: {errors}")
    if len(candidates) == 1:
        how = "chosen with --backend" if options.backend != "auto" else "is the only one for this target"
        return ok[0], f"backend {ok[0].backend} {how}"
    timed = [c for c in ok if c.p50_us is not None]
    if timed:
        best = min(timed, key=lambda c: c.p50_us)
        others = ", ".join(f"{c.backend} {c.p50_us:.1f} us" for c in timed if c is not best)
        return best, (f"fastest of the backends that pass the fidelity check, measured here: {best.backend} "
                      f"{best.p50_us:.1f} us" + (f" (vs {others})" if others else ""))
    # a cross target's build run under emulation (fidelity measured, no latency) goes before builds that
    # could not run at all; an NPU target keeps its order (its TFLite Micro build runs here, Vela's never)
    emulated = [c for c in ok if c.fidelity is not None and c.fidelity.get("emulated")]
    if emulated and len(emulated) < len(ok):
        c = emulated[0]
        return c, (f"the first of the target's backends whose build was checked against the reference under "
                   f"emulation ({c.backend}); the others could not be run here, and no latency was measured")
    return ok[0], (f"first of the target's backends that compiles the model ({ok[0].backend}); "
                   f"not measured: {ok[0].not_checked or 'cannot run here'}")
