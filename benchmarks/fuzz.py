"""Fuzz edgedl with mutated models, tampered bundles and bad options; count what happens to each case.

The seeds are made here (LeNet trained one epoch on scikit-learn's digits, converted to float and
int8 ``.tflite``, ``.onnx``, ``.keras`` and ``.h5``, and compiled into a bundle by every backend that
works on this host), then mutated: byte flips and truncation, field mutations of the ``.tflite``
flatbuffer (shapes, tensor types, buffer and opcode indices, custom and recoded operators, tensor
names with rich markup or 100,000 characters), zip and HDF5 corruption, protobuf mutations of the
``.onnx``, tampered manifests and tampered archives, existing output folders and bad numeric options.

Every case runs the real CLI (``edgedl inspect``, ``compile``, ``bench``) or ``edgedl.runtime.load``
in its own child process with a timeout, with ``TMPDIR`` in a per-case folder and ``HOME`` and the
working folder in a per-case scratch folder. Beside the case sits an ``outside/`` folder the
tampered manifests point at: a valid ``other.tflite`` and an ``evil.so`` whose constructor leaves a
mark when any process loads it. Each case gets one outcome class (the worst that applies):

    crash               killed by a signal (or "Fatal Python error")
    hang                still running at the timeout
    loaded_outside      ran code or a model from outside the bundle (evil.so's mark, or exit 0 on a
                        manifest whose runtime file points outside)
    touched_outside     created or changed a file outside the output folder and the case's scratch
    destroyed_output    compile removed or changed a user's file at the -o path
    tampered_loaded     exit 0 on a bundle whose files do not match its manifest (or that lists none)
    half_written_output the -o path is not a complete bundle after the run, or a staging file is left
    traceback           a Python traceback instead of a one-line error
    wrongly_accepted    exit 0 on an input that must be refused (-o "", nan options, missing --data-dir)
    leftover_temp       an edgedl-* folder left in the case's TMPDIR
    unclear_error       non-zero exit without an ``error:`` line
    clean_error         non-zero exit, one ``error:`` line, nothing else wrong
    accepted            exit 0, nothing else wrong

Usage (about 25 minutes for 1,000 cases with two jobs on a 2-core machine)::

    .venv/bin/python benchmarks/fuzz.py --cases 1000 --jobs 2 --seed 0
    .venv/bin/python benchmarks/fuzz.py --repo /tmp/edgedl-before --out benchmarks/results/fuzz_before.json

The counts per class and per mutation kind, with the first stderr line of every non-clean case,
are written atomically to ``benchmarks/results/fuzz.json``. ``tests/test_fuzz.py`` runs a cheap
seeded subset of the same cases in the test suite.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLI = "import sys; sys.argv[0] = 'edgedl'; from edgedl.cli.main import main; main()"
LOAD = """
import sys
import numpy as np
import edgedl.runtime as rt
from edgedl.errors import EdgeDLError
try:
    model = rt.load(sys.argv[1])
    model.predict(np.zeros((1,) + tuple(model.input_shape[1:]), np.float32))
except EdgeDLError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
"""
EVIL_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void edgedl_fuzz_mark(void) {
    const char *p = getenv("EDGEDL_FUZZ_MARK");
    FILE *f = fopen(p ? p : "/tmp/edgedl-fuzz-evil-ran", "w");
    if (f) { fputs("evil.so was loaded\n", f); fclose(f); }
}
int edgedl_fuzz_evil(void) { return 42; }
"""

# Worst first: a case's class is the first of these that applies.
CLASSES = ["crash", "hang", "loaded_outside", "touched_outside", "destroyed_output", "tampered_loaded",
           "half_written_output", "traceback", "wrongly_accepted", "leftover_temp", "unclear_error",
           "clean_error", "accepted", "skipped"]
GOOD = {"clean_error", "accepted"}

# kind -> weight in a full run; the test suite's subset takes only the cheap kinds.
KINDS = {"manifest": 300, "archive": 110, "tflite_bytes": 110, "tflite_field": 190, "bundle_model": 60,
         "onnx": 80, "keras": 35, "h5": 35, "output": 40, "options": 40}
CHEAP_KINDS = ("manifest", "archive", "tflite_bytes", "bundle_model")


# ----------------------------------------------------------------------------------------------- seeds

SEED_SCRIPT = r"""
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
from edgedl.convert import to_tflite
from edgedl.data import load_dataset
from edgedl.train import TrainOptions, train
result = train("lenet", TrainOptions(dataset="digits", epochs=1, seed=0, limit=400), progress=False)
result.save(d / "lenet.keras")
result.model.save(str(d / "lenet.h5"))
x = load_dataset("digits").x_train
(d / "lenet_float.tflite").write_bytes(to_tflite(result.model, "none"))
(d / "lenet_int8.tflite").write_bytes(to_tflite(result.model, "int8", x, io_type="int8"))
try:
    from edgedl.backends.onnxruntime import export_onnx
    export_onnx(result.model, d / "lenet.onnx")
except Exception as e:  # no tf2onnx: a small Gemm model with the same input instead
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["h"]),
         helper.make_node("Softmax", ["h"], ["y"], axis=-1)],
        "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 28, 28, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(rng.normal(size=(784, 10)).astype("float32"), "w"),
         numpy_helper.from_array(np.zeros(10, "float32"), "b")])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(d / "lenet.onnx"))
"""

# name -> (source seed, target, backend, archive)
BUNDLES = {
    "litert": ("lenet_float.tflite", "x86_64", "litert", False),
    "litert_tar": ("lenet_float.tflite", "x86_64", "litert", True),
    "tvm": ("lenet_float.tflite", "x86_64", "tvm", False),
    "tvm_tar": ("lenet_float.tflite", "x86_64", "tvm", True),
    "onnxruntime": ("lenet.onnx", "x86_64", "onnxruntime", False),
    "tflm": ("lenet_int8.tflite", "cortex_m4", "tflm", False),
    "vela": ("lenet_int8.tflite", "ethos_u55_128", "vela", False),
}


def child_env(repo: Path, case: Path | None = None, data: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "EDGEDL_"))}
    env.update(PYTHONPATH=str(repo), TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1", TVM_NUM_THREADS="1",
               PYTHONHASHSEED="0", COLUMNS="120", NO_COLOR="1", TERM="dumb")
    if data:
        env["EDGEDL_DATA"] = data
    if case is not None:
        env.update(TMPDIR=str(case / "tmp"), HOME=str(case / "home"), XDG_CACHE_HOME=str(case / "home" / ".cache"),
                   EDGEDL_FUZZ_MARK=str(case / "outside" / "EVIL_RAN"), KERAS_HOME=str(case / "home" / ".keras"))
    return env


def build_seeds(seeds_dir: Path, repo: Path, data: str | None, log=print, bundles=tuple(BUNDLES)) -> dict:
    """Make (or reuse) the seed files and bundles; return {name: path} of what exists."""
    seeds_dir.mkdir(parents=True, exist_ok=True)
    env = child_env(repo, data=data)
    if not (seeds_dir / "lenet_int8.tflite").exists():
        log(f"seeds: training LeNet on digits and converting it into {seeds_dir}")
        subprocess.run([PY, "-c", SEED_SCRIPT, str(seeds_dir)], env=env, check=True, cwd=seeds_dir,
                       stdout=subprocess.DEVNULL)
    evil_library(seeds_dir)
    for name in bundles:
        src, target, backend, archive = BUNDLES[name]
        out = seeds_dir / f"{name}.edgedl"
        failed = seeds_dir / f"{name}.failed"
        if out.exists() or failed.exists():
            continue
        log(f"seeds: compiling {src} for {target} with {backend}")
        args = [PY, "-c", CLI, "compile", str(seeds_dir / src), "--target", target, "--backend", backend,
                "-o", str(out), "--samples", "20"] + (["--archive"] if archive else [])
        r = subprocess.run(args, env=env, cwd=seeds_dir, capture_output=True, text=True)
        if r.returncode != 0:
            failed.write_text(r.stderr)
            log(f"seeds: {name} does not compile here: {last_line(r.stderr)}")
    return {p.name: p for p in sorted(seeds_dir.iterdir()) if not p.name.endswith((".failed", ".c", ".json"))}


def evil_library(seeds_dir: Path) -> Path | None:
    """``evil.so``: a shared library whose constructor writes $EDGEDL_FUZZ_MARK when any process loads it."""
    path = seeds_dir / "evil.so"
    if not path.exists() and shutil.which("cc"):
        (seeds_dir / "evil.c").write_text(EVIL_C)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(path), str(seeds_dir / "evil.c")], check=True)
    return path if path.exists() else None


# ------------------------------------------------------------------------------------------- mutations

def flip_bytes(data: bytes, rng: random.Random, count: int | None = None, lo: int = 0) -> bytes:
    b = bytearray(data)
    for _ in range(count or rng.choice([1, 1, 2, 4, 16])):
        i = rng.randrange(lo, len(b))
        b[i] = rng.choice([b[i] ^ (1 << rng.randrange(8)), 0, 0xFF, rng.randrange(256)])
    return bytes(b)


def byte_mutation(data: bytes, rng: random.Random, header: int = 0) -> tuple[str, bytes]:
    how = rng.choice(["flip", "flip", "flip", "flip_header", "truncate", "truncate_tail", "zero_block",
                      "insert", "empty", "duplicate"])
    if how == "flip":
        return how, flip_bytes(data, rng)
    if how == "flip_header":
        return how, flip_bytes(data, rng, lo=0, count=rng.choice([1, 2])) if len(data) < 64 else \
            flip_bytes(data[:64], rng, count=rng.choice([1, 2])) + data[64:]
    if how == "truncate":
        return how, data[:rng.randrange(0, max(1, len(data) // 2))]
    if how == "truncate_tail":
        return how, data[:len(data) - rng.randrange(1, min(len(data), 4096))]
    if how == "zero_block":
        i = rng.randrange(len(data))
        n = rng.choice([4, 64, 1024])
        return how, data[:i] + bytes(min(n, len(data) - i)) + data[i + n:]
    if how == "insert":
        i = rng.randrange(len(data))
        return how, data[:i] + rng.randbytes(rng.choice([1, 7, 100])) + data[i:]
    if how == "empty":
        return how, b""
    return how, data + data


_SCHEMA = None


def tflite_schema():
    """TFLite's generated flatbuffer classes with the object API, loaded without importing TensorFlow."""
    global _SCHEMA
    if _SCHEMA is None:
        import importlib.util

        spec = importlib.util.find_spec("tensorflow")
        path = Path(spec.submodule_search_locations[0]) / "lite" / "python" / "schema_py_generated.py"
        module_spec = importlib.util.spec_from_file_location("edgedl_fuzz_tflite_schema", path)
        _SCHEMA = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(_SCHEMA)
    return _SCHEMA


def pack_tflite(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


MARKUP_NAMES = ["[bold]x", "[/]", "[red]a[/red][/]", "[link=file:///etc/passwd]x[/link]", "[bold", "x[/bold]]",
                ":smile: [b]", "\x1b[31mred\x1b[0m", "name\nwith\nnewlines"]


def tflite_field_mutation(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One field of the flatbuffer changed through the object API (the rest of the model as it was)."""
    s = tflite_schema()
    model = s.ModelT.InitFromObj(s.Model.GetRootAs(bytearray(data), 0))
    sg = model.subgraphs[0]
    tensor = rng.choice(sg.tensors)
    op = rng.choice(sg.operators)
    how = rng.choice(["shape", "shape", "empty_shape", "tensor_type", "tensor_type", "buffer_index", "opcode_index",
                      "opcode_index", "custom_op", "recoded_op", "markup_name", "long_name", "bad_utf8_name",
                      "no_operators", "missing_buffer", "io_index", "op_tensor_index", "no_subgraphs", "version",
                      "quantization", "shape_signature"])
    if how == "shape":
        shape = list(tensor.shape) if tensor.shape is not None else [1]
        shape[rng.randrange(len(shape))] = rng.choice([0, -1, -7, 3, 65535, 2**31 - 1])
        tensor.shape = shape
    elif how == "empty_shape":
        tensor.shape = []
    elif how == "tensor_type":
        tensor.type = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 15, 16, 17, 20, 99, 127, -1, -128])
    elif how == "buffer_index":
        tensor.buffer = rng.choice([len(model.buffers), len(model.buffers) + 7, 9999, 2**32 - 1])
    elif how == "opcode_index":
        op.opcodeIndex = rng.choice([len(model.operatorCodes), 255, 65535, 2**32 - 1])
    elif how == "custom_op":
        code = rng.choice(model.operatorCodes)
        code.builtinCode = code.deprecatedBuiltinCode = 32
        code.customCode = rng.choice([b"EvilOp", b"[bold]Evil[/]", b"", b"\xff\xfe", b"A" * 5000])
    elif how == "recoded_op":
        code = rng.choice(model.operatorCodes)
        value = rng.choice([0, 1, 3, 9, 17, 22, 25, 40, 97, 126, 150, 200])
        code.builtinCode = value
        code.deprecatedBuiltinCode = min(value, 127)
    elif how == "markup_name":
        tensor.name = rng.choice(MARKUP_NAMES).encode()
    elif how == "long_name":
        tensor.name = b"n" * 100_000
    elif how == "bad_utf8_name":
        tensor.name = b"\xff\xfe\xc3("
    elif how == "no_operators":
        sg.operators = []
    elif how == "missing_buffer":
        constants = [t for t in sg.tensors if t.buffer and model.buffers[t.buffer].data is not None]
        tensor = rng.choice(constants or sg.tensors)
        model.buffers[tensor.buffer].data = None
    elif how == "io_index":
        which = rng.choice(["inputs", "outputs"])
        setattr(sg, which, rng.choice([[len(sg.tensors) + 3], [], [-1], [0, 0]]))
    elif how == "op_tensor_index":
        op.inputs = list(op.inputs)
        op.inputs[rng.randrange(len(op.inputs))] = rng.choice([len(sg.tensors), 9999, -5, -1])
    elif how == "no_subgraphs":
        model.subgraphs = []
    elif how == "version":
        model.version = rng.choice([0, 2, 99, 2**32 - 1])
    elif how == "quantization":
        q = s.QuantizationParametersT()
        q.scale = rng.choice([[0.0], [float("nan")], [-1.0], [1e-45, 1.0], []])
        q.zeroPoint = rng.choice([[0], [1000], [-2**40], []])
        tensor.quantization = q
    elif how == "shape_signature":
        tensor.shapeSignature = rng.choice([[-1, -1, -1, -1], [-1], [], [2**31 - 1, 1]])
    return how, pack_tflite(model)


def onnx_mutation(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    import onnx
    from onnx import TensorProto, helper

    how = rng.choice(["delete_output", "symbolic_dim", "change_dim", "second_input", "second_input_used",
                      "input_type", "drop_initializer", "opset", "unknown_op", "no_nodes", "bytes", "bytes"])
    if how == "bytes":
        sub, out = byte_mutation(data, rng)
        return f"bytes_{sub}", out
    m = onnx.load_from_string(data)
    g = m.graph
    inp = g.input[0]
    dims = inp.type.tensor_type.shape.dim
    if how == "delete_output":
        del g.output[:]
    elif how == "symbolic_dim":
        dims[rng.randrange(len(dims))].dim_param = rng.choice(["H", "batch", "[bold]"])
    elif how == "change_dim":
        dims[rng.randrange(len(dims))].dim_value = rng.choice([0, 3, 1000, 2**40])
    elif how in ("second_input", "second_input_used"):
        second = copy.deepcopy(inp)
        second.name = "x2"
        g.input.append(second)
        if how == "second_input_used":
            g.node.insert(0, helper.make_node("Add", [inp.name, "x2"], ["x_sum"]))
            for node in g.node[1:]:
                node.input[:] = ["x_sum" if i == inp.name else i for i in node.input]
    elif how == "input_type":
        inp.type.tensor_type.elem_type = rng.choice([TensorProto.INT8, TensorProto.STRING, TensorProto.BOOL, 99])
    elif how == "drop_initializer":
        if len(g.initializer):
            del g.initializer[rng.randrange(len(g.initializer))]
    elif how == "opset":
        m.opset_import[0].version = rng.choice([1, 99, 2**40])
    elif how == "unknown_op":
        g.node[rng.randrange(len(g.node))].op_type = rng.choice(["EvilOp", "[bold]Op"])
    elif how == "no_nodes":
        del g.node[:]
    return how, m.SerializeToString()


def keras_mutation(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    how = rng.choice(["bytes", "bytes", "drop_member", "config_garbage", "config_class", "config_nested",
                      "weights_garbage", "zip_slip", "not_zip"])
    if how == "bytes":
        sub, out = byte_mutation(data, rng)
        return f"bytes_{sub}", out
    if how == "not_zip":
        return how, rng.randbytes(2000)
    src = zipfile.ZipFile(io.BytesIO(data))
    members = {i.filename: src.read(i.filename) for i in src.infolist()}
    if how == "drop_member":
        members.pop(rng.choice(sorted(members)))
    elif how == "config_garbage":
        members["config.json"] = rng.choice([b"{", b"[]", b"null", b"\xff\xfe", b'{"class_name": 5}'])
    elif how == "config_class":
        config = json.loads(members["config.json"])
        config["class_name"] = rng.choice(["Evil", "Lambda", "[bold]x", ""])
        members["config.json"] = json.dumps(config).encode()
    elif how == "config_nested":
        members["config.json"] = b"[" * 100_000 + b"]" * 100_000
    elif how == "weights_garbage":
        members["model.weights.h5"] = rng.randbytes(1000)
    elif how == "zip_slip":
        members["../../zip_slip.txt"] = b"written outside\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)
    return how, buf.getvalue()


def h5_mutation(path: Path, rng: random.Random) -> str:
    """Mutate an HDF5 Keras model in place."""
    data = path.read_bytes()
    how = rng.choice(["bytes", "bytes", "bytes", "drop_weights", "config_garbage", "config_class", "drop_config",
                      "weight_shape"])
    if how == "bytes":
        sub, out = byte_mutation(data, rng)
        path.write_bytes(out)
        return f"bytes_{sub}"
    import h5py
    import numpy as np

    with h5py.File(path, "r+") as f:
        if how == "drop_weights":
            del f["model_weights"]
        elif how == "config_garbage":
            f.attrs["model_config"] = rng.choice(["{", "[]", "null", "[" * 50_000 + "]" * 50_000])
        elif how == "config_class":
            config = json.loads(f.attrs["model_config"])
            config["class_name"] = rng.choice(["Evil", "Lambda", "[bold]x"])
            f.attrs["model_config"] = json.dumps(config)
        elif how == "drop_config":
            del f.attrs["model_config"]
        elif how == "weight_shape":
            names = []
            f["model_weights"].visit(lambda n: names.append(n) if isinstance(f["model_weights"][n], h5py.Dataset)
                                     else None)
            name = rng.choice(names)
            del f["model_weights"][name]
            f["model_weights"][name] = np.zeros(rng.choice([(1,), (3, 3), (0,)]), np.float32)
    return how


# ------------------------------------------------------------------------------------- bundle tampering

def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundle_members(seed: Path) -> dict:
    """{relative path: bytes} of a bundle folder or archive."""
    if seed.is_dir():
        return {str(p.relative_to(seed)): p.read_bytes() for p in sorted(seed.rglob("*")) if p.is_file()}
    with tarfile.open(seed) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def write_bundle_folder(dst: Path, members: dict, manifest_text: str | bytes | None):
    dst.mkdir(parents=True)
    for name, content in members.items():
        if name == "manifest.json":
            continue
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).write_bytes(content)
    if manifest_text is not None:
        (dst / "manifest.json").write_bytes(manifest_text.encode() if isinstance(manifest_text, str) else manifest_text)


def tar_add(tar, name, data=b"", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def write_bundle_archive(dst: Path, members: dict, manifest_text, extra=()):
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tar:
        if manifest_text is not None:
            tar_add(tar, "manifest.json", manifest_text.encode() if isinstance(manifest_text, str) else manifest_text)
        for name, content in members.items():
            if name != "manifest.json":
                tar_add(tar, name, content)
        for args in extra:
            tar_add(tar, *args)


def runtime_file(manifest: dict) -> str:
    rt = manifest.get("runtime", {})
    return rt.get("model") or rt.get("library") or manifest["files"][0]["path"]


WEIRD_VALUES = [None, True, 0, -1, 1.5, "x", "", [], {}, [1, "a"], {"a": {"b": None}}, 2**70, -2**63, "[bold]x[/]"]


def manifest_mutation(manifest: dict, members: dict, rng: random.Random, case: Path, outside: Path) -> dict:
    """Change the manifest (and perhaps the files) of a bundle.

    Returns {"how", "manifest" (dict) or "text" (raw), "members", "tampered", "outside"}: ``tampered``
    when a correct edgedl must refuse to load the result, ``outside`` when its runtime points outside.
    """
    m = copy.deepcopy(manifest)
    members = dict(members)
    tampered = outside_ref = False
    text = None
    rt = m.setdefault("runtime", {})
    key = "library" if "library" in rt else "model"
    how = rng.choice(["runtime_abs", "runtime_dotdot", "library_evil_abs", "library_evil_dotdot", "runtime_unlisted",
                      "files_empty_list", "files_empty_dict", "files_missing", "file_changed", "file_changed_rehashed",
                      "file_symlink_outside", "file_entry_dotdot", "wrong_type", "wrong_type", "wrong_type",
                      "runtime_wrong_type", "runtime_wrong_type", "missing_key", "missing_key", "runtime_missing_key",
                      "deep_nesting", "huge_number", "huge_integer_text", "nan_text", "arena_size", "format_version",
                      "tensor_specs", "engine", "not_object", "not_json", "manifest_dir", "manifest_symlink_outside"])
    if how == "runtime_abs":
        rt[key] = str(outside / ("evil.so" if key == "library" else "other.tflite"))
        tampered = outside_ref = True
    elif how == "runtime_dotdot":
        rt[key] = "../../outside/" + ("evil.so" if key == "library" else "other.tflite")
        tampered = outside_ref = True
    elif how in ("library_evil_abs", "library_evil_dotdot"):
        rt.update(engine="tvm", library=str(outside / "evil.so") if how.endswith("abs") else "../../outside/evil.so")
        m.setdefault("target", {}).setdefault("cpu", {})["arch"] = "x86_64"
        tampered = outside_ref = True
    elif how == "runtime_unlisted":
        members["extra/" + Path(rt.get(key) or "model.tflite").name] = members.get(rt.get(key), b"")
        rt[key] = "extra/" + Path(rt.get(key) or "model.tflite").name
        tampered = True
    elif how == "files_empty_list":
        m["files"] = []
        members[runtime_file(manifest)] = flip_bytes(members[runtime_file(manifest)], rng, count=1)
        tampered = True
    elif how == "files_empty_dict":
        m["files"] = {}
        tampered = True
    elif how == "files_missing":
        m.pop("files")
        tampered = True
    elif how == "file_changed":
        name = rng.choice([e["path"] for e in m["files"]])
        members[name] = flip_bytes(members[name], rng, count=1) if members[name] else b"x"
        tampered = True
    elif how == "file_changed_rehashed":
        name = runtime_file(m)
        members[name] = flip_bytes(members[name], rng)
        for e in m["files"]:
            if e["path"] == name:
                e["sha256"] = sha256(members[name])
                e["bytes"] = len(members[name])
    elif how == "file_symlink_outside":
        name = runtime_file(m)
        target = outside / ("evil.so" if name.endswith(".so") else "other.tflite")
        members[name] = ("SYMLINK", str(target))
        for e in m["files"]:
            if e["path"] == name:
                e["sha256"] = sha256(target.read_bytes())
                e["bytes"] = target.stat().st_size
        tampered = outside_ref = True
    elif how == "file_entry_dotdot":
        target = outside / "other.tflite"
        m["files"].append({"path": "../../outside/other.tflite", "bytes": target.stat().st_size,
                           "sha256": sha256(target.read_bytes())})
        if key == "model":
            rt[key] = "../../outside/other.tflite"
        tampered = outside_ref = True
    elif how == "wrong_type":
        field = rng.choice(sorted(m))
        m[field] = rng.choice(WEIRD_VALUES)
        tampered = field in ("files", "runtime")
    elif how == "runtime_wrong_type":
        field = rng.choice(sorted(rt) or ["model"])
        rt[field] = rng.choice(WEIRD_VALUES)
        tampered = field in ("model", "library")
    elif how == "missing_key":
        field = rng.choice(sorted(m))
        m.pop(field)
        tampered = field in ("files", "runtime")
    elif how == "runtime_missing_key":
        if rt:
            rt.pop(rng.choice(sorted(rt)))
    elif how == "deep_nesting":
        field = rng.choice(sorted(m))
        m[field] = "@@DEEP@@"
        tampered = field in ("files", "runtime")
    elif how == "huge_number":
        field = rng.choice(["format_version", "inputs", "outputs", "runtime"])
        if field == "runtime":
            rt[rng.choice(["arena_size", "xnnpack", "model"])] = rng.choice([1e308, 2**64, -2**100])
        elif field in ("inputs", "outputs") and isinstance(m.get(field), list) and m[field]:
            m[field][0]["shape"] = [1, rng.choice([2**40, 10**18, -3])] + list(m[field][0].get("shape", []))[2:]
        else:
            m[field] = rng.choice([1e308, 2**64, -2**100])
    elif how == "huge_integer_text":
        m[rng.choice(["format_version", "inputs", "estimates"])] = "@@HUGEINT@@"
    elif how == "nan_text":
        m[rng.choice(["format_version", "estimates", "fidelity"])] = "@@NAN@@"
    elif how == "arena_size":
        rt["arena_size"] = rng.choice([-5, -1, 0, 1, 2**63, "big", 1e30, None])
        if rt.get("engine") != "tflm":
            rt.update(engine="tflm", model=rt.get("model", "model.tflite"))
    elif how == "format_version":
        m["format_version"] = rng.choice([0, -1, 2, "1", 1.0, True, None, [1]])
    elif how == "tensor_specs":
        which = rng.choice(["inputs", "outputs"])
        spec = rng.choice([[], [{}], [{"shape": [], "dtype": "float32"}], [{"shape": [-1, 5], "dtype": "evil"}],
                           [{"shape": "x", "dtype": 5}], [{"shape": [1, 0, 0], "dtype": "float32"}],
                           [{"name": "[bold]", "shape": [1, 28, 28, 1], "dtype": "int8",
                             "quantization": {"scale": 0.0, "zero_point": 99999}}]])
        m[which] = spec
    elif how == "engine":
        rt["engine"] = rng.choice(["unknown", None, "ethos-u", 5, "[bold]", "litert", "tvm", "tflm", "onnxruntime"])
    elif how == "not_object":
        text = rng.choice(["[]", '"x"', "null", "5", ""])
    elif how == "not_json":
        text = rng.choice([b"{", b"\xff\xfe{}", b"\xef\xbb\xbf{}", b"{" * 200_000, json.dumps(m)[:50].encode()])
    elif how == "manifest_dir":
        text = "@@DIR@@"
    elif how == "manifest_symlink_outside":
        text = "@@SYMLINK@@"
        tampered = outside_ref = True
    return {"how": how, "manifest": m, "text": text, "members": members, "tampered": tampered,
            "outside": outside_ref}


def render_manifest(m: dict) -> str:
    text = json.dumps(m, indent=2)
    return (text.replace('"@@DEEP@@"', "[" * 100_000 + "]" * 100_000)
            .replace('"@@HUGEINT@@"', "9" * 5000).replace('"@@NAN@@"', "NaN"))


def materialise_bundle(dst: Path, mutation: dict, archive: bool, case: Path, outside: Path):
    members = mutation["members"]
    text = mutation["text"]
    if text is None:
        text = render_manifest(mutation["manifest"])
    links = {k: v[1] for k, v in members.items() if isinstance(v, tuple)}
    plain = {k: v for k, v in members.items() if not isinstance(v, tuple)}
    special = text in ("@@DIR@@", "@@SYMLINK@@")
    if archive:
        extra = [(k, b"", tarfile.SYMTYPE, v) for k, v in links.items()]
        if text == "@@SYMLINK@@":
            (outside / "manifest.json").write_text(render_manifest(mutation["manifest"]))
            extra.append(("manifest.json", b"", tarfile.SYMTYPE, str(outside / "manifest.json")))
        write_bundle_archive(dst, plain, None if special else text, extra)
        return
    write_bundle_folder(dst, plain, None if special else text)
    for k, v in links.items():
        (dst / k).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(v, dst / k)
    if text == "@@DIR@@":
        (dst / "manifest.json").mkdir()
    elif text == "@@SYMLINK@@":
        (outside / "manifest.json").write_text(render_manifest(mutation["manifest"]))
        os.symlink(outside / "manifest.json", dst / "manifest.json")


def archive_mutation(manifest: dict, members: dict, rng: random.Random, case: Path, outside: Path):
    """A tampered tar bundle: returns (how, tampered, outside_ref, writer(dst))."""
    m = copy.deepcopy(manifest)
    members = {k: v for k, v in members.items() if k != "manifest.json"}
    how = rng.choice(["member_dotdot", "member_abs", "member_symlink", "member_hardlink", "member_device",
                      "member_fifo", "member_dir", "missing_manifest", "duplicate_member", "bytes", "bytes",
                      "truncated", "gzip", "not_tar", "many_members"])
    extra = []
    tampered = outside_ref = False
    payload = b"written by a tampered archive\n"

    def listed(name, data):
        m["files"].append({"path": name, "bytes": len(data), "sha256": sha256(data)})

    if how == "member_dotdot":
        name = "../../dotdot_written.txt"
        extra.append((name, payload))
        listed(name, payload)
        tampered = True
    elif how == "member_abs":
        name = str(outside / "abs_written.txt")
        extra.append((name, payload))
        listed(name, payload)
        tampered = True
    elif how in ("member_symlink", "member_hardlink"):
        name = runtime_file(m)
        target = outside / "other.tflite"
        members.pop(name, None)
        extra.append((name, b"", tarfile.SYMTYPE if how == "member_symlink" else tarfile.LNKTYPE, str(target)))
        for e in m["files"]:
            if e["path"] == name:
                e.update(sha256=sha256(target.read_bytes()), bytes=target.stat().st_size)
        tampered = outside_ref = True
    elif how in ("member_device", "member_fifo"):
        name = runtime_file(m)
        members.pop(name, None)
        extra.append((name, b"", tarfile.CHRTYPE if how == "member_device" else tarfile.FIFOTYPE))
        tampered = True
    elif how == "member_dir":
        name = runtime_file(m)
        members.pop(name, None)
        extra.append((name, b"", tarfile.DIRTYPE))
        tampered = True
    elif how == "duplicate_member":
        name = runtime_file(m)
        extra.append((name, flip_bytes(members[name], rng, count=1)))
        tampered = True
    elif how == "many_members":
        for i in range(2000):
            extra.append((f"junk/{i}.bin", b"x"))

    def write(dst: Path):
        text = None if how == "missing_manifest" else render_manifest(m)
        write_bundle_archive(dst, members, text, extra)
        if how in ("bytes", "truncated", "gzip", "not_tar"):
            data = dst.read_bytes()
            if how == "bytes":
                data = flip_bytes(data, rng)
            elif how == "truncated":
                data = data[:rng.randrange(len(data))]
            elif how == "gzip":
                import gzip

                data = gzip.compress(data)
            else:
                data = rng.randbytes(5000)
            dst.write_bytes(data)

    return how, tampered, outside_ref, write


# ------------------------------------------------------------------------------------------ the cases

def make_cases(n: int, seed: int, seeds: dict, kinds: list[str], runners: set | None = None) -> list[dict]:
    """The case list: each a kind, a runner and a per-case random seed (mutations are made when run)."""
    rng = random.Random(seed)
    bundles = [k for k in seeds if k.endswith(".edgedl")]
    weights = [KINDS[k] for k in kinds]
    cases = []
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        case = {"id": i, "kind": kind, "rng": f"{seed}:{i}"}
        if kind in ("manifest", "bundle_model"):
            case["seed"] = rng.choice(bundles)
            case["runner"] = rng.choice(["bench", "bench", "load", "load", "inspect"])
        elif kind == "archive":
            case["seed"] = rng.choice(bundles)
            case["runner"] = rng.choice(["bench", "load", "inspect"])
        elif kind in ("tflite_bytes", "tflite_field"):
            case["seed"] = rng.choice(["lenet_float.tflite", "lenet_int8.tflite"])
            case["runner"] = rng.choice(["inspect", "inspect", "compile"])
            if case["runner"] == "compile":
                case["backend"] = rng.choice(["litert", "litert", "tflm", "tvm", "auto"])
        elif kind == "onnx":
            case["seed"] = "lenet.onnx"
            case["runner"] = rng.choice(["inspect", "compile", "compile"])
            case["backend"] = rng.choice(["onnxruntime", "tvm", "auto"])
        elif kind in ("keras", "h5"):
            case["seed"] = "lenet.keras" if kind == "keras" else "lenet.h5"
            case["runner"] = rng.choice(["inspect", "compile"])
            case["backend"] = "litert"
        elif kind == "output":
            case["seed"] = "lenet_float.tflite"
            case["runner"] = "compile"
            case["backend"] = "litert"
            case["how"] = rng.choice(["existing_folder", "existing_folder_archive", "existing_bundle",
                                      "existing_bundle_force", "existing_file", "empty", "unwritable", "fresh",
                                      "fresh_archive"])
        elif kind == "options":
            case["runner"], case["how"], case["args"] = rng.choice(OPTION_CASES)
            case["seed"] = "litert.edgedl" if case["runner"] == "bench" else "lenet_float.tflite"
        cases.append(case)
        if case["runner"] == "inspect" and rng.random() < 0.6:
            case["target"] = rng.choice(["cortex_m4", "cortex_m4", "ethos_u55_128"])
    if runners:
        cases = [c for c in cases if c["runner"] in runners]
    return cases


def quick_cases(n: int, seed: int, seeds: dict) -> list[dict]:
    """The test suite's subset: manifests, archives and byte flips through runtime.load, bench and inspect.

    Only the cheap runners: no compile, and inspect checks support for a microcontroller target (an
    x86_64 check imports TVM, seconds per case). About 0.6 s per case on two jobs.
    """
    rng = random.Random(f"quick:{seed}")
    cases = make_cases(n, seed, seeds, list(CHEAP_KINDS))
    for c in cases:
        if c["kind"] != "tflite_bytes":
            c["runner"] = rng.choices(["load", "bench", "inspect"], [55, 25, 20])[0]
        else:
            c["runner"] = "inspect"
            c.pop("backend", None)
        if c["runner"] == "inspect":
            c["target"] = "cortex_m4"
    return cases


# (runner, name, extra args); the ones marked must-refuse below are wrong when they exit 0.
OPTION_CASES = [
    ("bench", "timeout_nan", ["--timeout", "nan"]), ("bench", "timeout_negative", ["--timeout", "-1"]),
    ("bench", "timeout_zero", ["--timeout", "0"]), ("bench", "timeout_inf", ["--timeout", "inf"]),
    ("bench", "runs_zero", ["--runs", "0"]), ("bench", "runs_negative", ["--runs", "-5"]),
    ("bench", "repeats_zero", ["--repeats", "0"]), ("bench", "warmup_negative", ["--warmup", "-1"]),
    ("bench", "threads_zero", ["--threads", "0"]), ("bench", "threads_negative", ["--threads", "-2"]),
    ("bench", "limit_negative", ["--limit", "-1"]), ("bench", "retries_negative", ["--retries", "-1"]),
    ("bench", "device_garbage", ["--device", "[bold]:x"]), ("bench", "data_dir_missing", ["--data-dir", "/nonexistent"]),
    ("compile", "samples_zero", ["--samples", "0"]), ("compile", "samples_negative", ["--samples", "-1"]),
    ("compile", "disagreement_nan", ["--max-disagreement", "nan"]),
    ("compile", "disagreement_negative", ["--max-disagreement", "-1"]),
    ("compile", "threads_zero", ["--threads", "0"]), ("compile", "data_dir_missing", ["--data-dir", "/nonexistent"]),
    ("compile", "target_missing", ["--target", "no_such_target"]), ("compile", "dataset_missing", ["--dataset", "nope"]),
    ("compile", "target_not_toml", ["--target", "@@OUTSIDE@@/other.tflite"]),
    ("train", "seed_negative", ["--seed", "-1"]), ("train", "seed_huge", ["--seed", str(2**70)]),
    ("train", "batch_size_negative", ["--batch-size", "-4"]), ("train", "batch_size_zero", ["--batch-size", "0"]),
    ("train", "epochs_negative", ["--epochs", "-1"]),
    ("report", "deeply_nested_json", []), ("report", "huge_integer_json", []),
]
MUST_REFUSE = {"timeout_nan", "timeout_negative", "timeout_zero", "runs_zero", "runs_negative", "repeats_zero",
               "warmup_negative", "threads_zero", "threads_negative", "limit_negative", "retries_negative",
               "data_dir_missing", "samples_zero", "samples_negative", "disagreement_nan", "disagreement_negative",
               "seed_negative", "seed_huge", "batch_size_negative", "batch_size_zero", "epochs_negative",
               "target_not_toml", "empty", "existing_folder", "existing_folder_archive", "existing_bundle",
               "existing_file"}

BENCH_ARGS = ["--warmup", "1", "--runs", "3", "--repeats", "1", "--limit", "20", "--json"]


def prepare(case: dict, seeds: dict, case_dir: Path) -> dict:
    """Write the case's input under case_dir and return how to run it: argv, out path, expectations."""
    rng = random.Random(case["rng"])
    for sub in ("input", "outside", "home", "tmp", "out"):
        (case_dir / sub).mkdir(parents=True)
    outside = case_dir / "outside"
    shutil.copyfile(seeds["lenet_float.tflite"], outside / "other.tflite")
    if "evil.so" in seeds:
        shutil.copyfile(seeds["evil.so"], outside / "evil.so")
    (outside / "victim.txt").write_text("a file outside every bundle\n")
    kind, runner = case["kind"], case["runner"]
    run = {"tampered": False, "outside": False, "must_refuse": False, "out": None, "precious": None}
    src = seeds.get(case.get("seed"))
    target = None
    if kind in ("manifest", "bundle_model"):
        archive = src.is_file()
        members = bundle_members(src)
        manifest = json.loads(members["manifest.json"])
        if kind == "manifest":
            mut = manifest_mutation(manifest, members, rng, case_dir, outside)
        else:
            name = runtime_file(manifest)
            sub, data = (byte_mutation(members[name], rng) if rng.random() < 0.5 or not name.endswith(".tflite")
                         else tflite_field_mutation(members[name], rng))
            members[name] = data
            for e in manifest["files"]:
                if e["path"] == name:
                    e.update(sha256=sha256(data), bytes=len(data))
            mut = {"how": sub, "manifest": manifest, "text": None, "members": members, "tampered": False,
                   "outside": False}
        target = case_dir / "input" / ("b.edgedl" if archive else "b.edgedl")
        materialise_bundle(target, mut, archive, case_dir, outside)
        run.update(how=mut["how"], tampered=mut["tampered"], outside=mut["outside"])
    elif kind == "archive":
        members = bundle_members(src)
        manifest = json.loads(members["manifest.json"])
        how, tampered, outside_ref, write = archive_mutation(manifest, members, rng, case_dir, outside)
        target = case_dir / "input" / "b.edgedl"
        write(target)
        run.update(how=how, tampered=tampered, outside=outside_ref)
    elif kind in ("tflite_bytes", "tflite_field", "onnx", "keras", "h5"):
        target = case_dir / "input" / f"m{src.suffix}"
        data = src.read_bytes()
        if kind == "tflite_bytes":
            how, data = byte_mutation(data, rng)
        elif kind == "tflite_field":
            how, data = tflite_field_mutation(data, rng)
        elif kind == "onnx":
            how, data = onnx_mutation(data, rng)
        elif kind == "keras":
            how, data = keras_mutation(data, rng)
        target.write_bytes(data)
        if kind == "h5":
            how = h5_mutation(target, rng)
        run["how"] = how
    elif kind == "output":
        target = case_dir / "input" / "m.tflite"
        shutil.copyfile(src, target)
        run["how"] = case["how"]
    elif kind == "options":
        run["how"] = case["how"]
        if runner == "bench":
            target = case_dir / "input" / "b.edgedl"
            shutil.copytree(src, target)
        elif runner == "compile":
            target = case_dir / "input" / "m.tflite"
            shutil.copyfile(src, target)
        elif runner == "report":
            target = case_dir / "input" / "r.json"
            target.write_text("[" * 100_000 + "]" * 100_000 if case["how"] == "deeply_nested_json"
                              else '{"schema": "edgedl.bench/1", "x": ' + "9" * 5000 + "}")
    run["must_refuse"] = kind in ("output", "options") and run["how"] in MUST_REFUSE
    if runner == "inspect":
        argv = [PY, "-c", CLI, "inspect", str(target)] + (["--target", case["target"]] if case.get("target") else [])
    elif runner == "bench":
        argv = [PY, "-c", CLI, "bench", str(target)] + BENCH_ARGS + case.get("args", [])
    elif runner == "load":
        argv = [PY, "-c", LOAD, str(target)]
    elif runner == "train":
        argv = [PY, "-c", CLI, "train", "lenet", "--dataset", "digits", "--epochs", "1", "--limit", "64",
                "--out", str(case_dir / "out" / "t.keras")] + case["args"]
    elif runner == "report":
        argv = [PY, "-c", CLI, "report", str(target), "-o", str(case_dir / "out" / "report.html")]
    else:
        backend = case.get("backend", "litert")
        tgt = {"tflm": "cortex_m4", "vela": "ethos_u55_128"}.get(backend, "x86_64")
        out = case_dir / "out" / "m.edgedl"
        extra = []
        how = case.get("how")
        if kind == "output":
            if how in ("existing_folder", "existing_folder_archive"):
                out.mkdir()
                (out / "precious.txt").write_text("user data\n")
                run["precious"] = out / "precious.txt"
            elif how in ("existing_bundle", "existing_bundle_force"):
                shutil.copytree(seeds["litert.edgedl"], out)
                run["precious"] = out / "manifest.json" if how == "existing_bundle" else None
                extra = ["--force"] if how == "existing_bundle_force" else []
            elif how == "existing_file":
                out.write_text("user data\n")
                run["precious"] = out
            elif how == "unwritable":
                (case_dir / "out" / "ro").mkdir()
                out = case_dir / "out" / "ro" / "m.edgedl"
                os.chmod(out.parent, 0o555)
            if how.endswith("archive"):
                extra.append("--archive")
        args = [a.replace("@@OUTSIDE@@", str(outside)) for a in case.get("args", [])]
        if "--target" not in args:
            args = ["--target", tgt] + args
        argv = [PY, "-c", CLI, "compile", str(target), "--backend", backend, "--samples", "20",
                "-o", "" if how == "empty" else str(out)] + extra + args
        run["out"] = out
        run["precious_bytes"] = run["precious"].read_bytes() if run["precious"] else None
        run["out_existed"] = out.exists() or out.is_symlink()
    run["argv"] = argv
    return run


# ------------------------------------------------------------------------------------------- running

def snapshot(case_dir: Path) -> dict:
    """Every file of the case outside its scratch (home, tmp) and output folder: path -> (size, mtime)."""
    seen = {}
    for root, dirs, files in os.walk(case_dir, followlinks=False):
        rel = Path(root).relative_to(case_dir)
        if rel.parts[:1] in (("home",), ("tmp",), ("out",)):
            dirs[:] = []
            continue
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            p = os.path.join(root, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            seen[os.path.relpath(p, case_dir)] = (st.st_size, st.st_mtime_ns)
    return seen


def bundle_complete(out: Path) -> str | None:
    """None if ``out`` is a complete bundle (manifest plus every listed file with its sha256), else why not."""
    try:
        members = bundle_members(out) if out.is_file() or out.is_dir() else None
        if members is None:
            return "missing"
        manifest = json.loads(members["manifest.json"])
        for e in manifest["files"]:
            if sha256(members[e["path"]]) != e["sha256"]:
                return f"{e['path']} does not match its sha256"
    except Exception as e:  # anything unreadable is not a complete bundle
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        if line.startswith(("error:", "Error:", "Fatal Python error")) or "Error:" in line[:60]:
            return line[:300]
    return last_line(stderr)


def run_case(case: dict, seeds: dict, work: Path, repo: Path, data: str | None, timeout: float,
             keep: bool = False) -> dict:
    case_dir = work / f"case{case['id']:05d}"
    try:
        run = prepare(case, seeds, case_dir)
    except Exception as e:
        shutil.rmtree(case_dir, ignore_errors=True)
        return dict(case, outcome="skipped", how="?", detail=f"could not make the case: {type(e).__name__}: {e}")
    before = snapshot(case_dir)
    slow = case["runner"] in ("compile", "train") or case["kind"] in ("keras", "h5")  # these import TensorFlow
    limit = timeout * (4 if slow else 1)
    start = time.monotonic()
    proc = subprocess.Popen(run["argv"], cwd=case_dir / "home", env=child_env(repo, case_dir, data),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        hung = True
    seconds = time.monotonic() - start
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything the case left running
    except ProcessLookupError:
        pass
    out = out.decode("utf-8", "replace")
    err = err.decode("utf-8", "replace")
    rc = proc.returncode
    flags = {}  # class -> what happened
    error = first_error(err)
    if hung:
        flags["hang"] = f"no exit within {limit:.0f} s; " + (last_line(err) or "no output")
    elif rc < 0 or "Fatal Python error" in err:
        sig = signal.Signals(-rc).name if rc < 0 else "abort"
        flags["crash"] = f"{sig}; " + (last_line(err) or "no output")
    if (case_dir / "outside" / "EVIL_RAN").exists():
        flags["loaded_outside"] = f"evil.so from outside the bundle was loaded (its constructor ran); exit {rc}"
    elif rc == 0 and run["outside"] and case["runner"] in ("bench", "load"):
        flags["loaded_outside"] = "exit 0 with a runtime file outside the bundle"
    after = snapshot(case_dir)
    touched = sorted(p for p in after if p not in before or after[p] != before[p])
    touched = [p for p in touched if p != "outside/EVIL_RAN"]
    if touched:
        flags["touched_outside"] = f"wrote {touched[0]} (exit {rc}); {error}"
    if run["precious"] is not None:
        p, was = run["precious"], run["precious_bytes"]
        if not p.is_file() or p.is_symlink() or p.read_bytes() != was:
            flags["destroyed_output"] = f"-o {p.relative_to(case_dir)} was removed or replaced (exit {rc})"
    if rc == 0 and run["tampered"]:
        flags["tampered_loaded"] = "exit 0 on a tampered bundle" + (" pointing outside" if run["outside"] else "")
    if run["out"] is not None and not hung:
        o = run["out"]
        staging = [x.name for x in o.parent.glob(f".{o.name}*")] if o.parent.exists() else []
        if staging:
            flags["half_written_output"] = f"staging file {staging[0]} left (exit {rc})"
        elif rc == 0 and case.get("how") != "empty":
            why = bundle_complete(o)
            if why:
                flags["half_written_output"] = f"exit 0 but -o is not a complete bundle: {why}"
        elif rc != 0 and not run["out_existed"] and (o.exists() or o.is_symlink()):
            flags["half_written_output"] = f"exit {rc} but {o.name} was left; {error}"
    if "Traceback (most recent call last)" in err or "Traceback (most recent call last)" in out:
        flags["traceback"] = last_line(err) or last_line(out)
    if rc == 0 and run["must_refuse"]:
        flags["wrongly_accepted"] = "exit 0"
    leftovers = sorted(x.name for x in (case_dir / "tmp").glob("edgedl-*")) if (case_dir / "tmp").exists() else []
    if leftovers:
        flags["leftover_temp"] = f"left {leftovers[0]} in TMPDIR (exit {rc}); {error}"
    if not hung and rc > 0 and "crash" not in flags and "traceback" not in flags:
        if any(line.startswith(("error:", "Error:")) for line in err.splitlines()):
            flags["clean_error"] = error
        else:
            flags["unclear_error"] = f"exit {rc}; {error or 'no output'}"
    if rc == 0:
        flags["accepted"] = ""
    outcome = next(c for c in CLASSES if c in flags)
    detail = flags[outcome]
    result = dict(case, outcome=outcome, flags=sorted(flags), how=run["how"], rc=rc, seconds=round(seconds, 2),
                  detail=" ".join(detail.split())[:300], argv=[a if len(a) < 200 else a[:60] + "..." for a in
                                                                run["argv"][3:]])
    if leftovers:
        result["leftovers"] = leftovers
    if not keep:
        os.chmod(case_dir / "out", 0o755)
        for p in (case_dir / "out").rglob("*"):
            if p.is_dir() and not p.is_symlink():
                os.chmod(p, 0o755)
        shutil.rmtree(case_dir, ignore_errors=True)
    return result


def run_fuzz(cases: list[dict], seeds: dict, repo: Path, data: str | None, jobs: int, timeout: float,
             work: Path | None = None, log=None, keep: bool = False) -> list[dict]:
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="edgedl-fuzz-")) if own else work
    results = []
    lock = threading.Lock()
    start = time.monotonic()

    def one(case):
        r = run_case(case, seeds, work, repo, data, timeout, keep)
        with lock:
            results.append(r)
            if log and (len(results) % 25 == 0 or r["outcome"] not in GOOD):
                log(f"[{len(results)}/{len(cases)} {time.monotonic() - start:.0f}s] {r['kind']}/{r['how']} "
                    f"{r['runner']}: {r['outcome']} {r.get('detail', '')[:150]}")
        return r

    try:
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, cases))
    finally:
        if own and not keep:
            shutil.rmtree(work, ignore_errors=True)
    return sorted(results, key=lambda r: r["id"])


def summarise(results: list[dict], examples: int = 8) -> dict:
    counts = {c: 0 for c in CLASSES}
    by_kind, by_runner, distinct = {}, {}, {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        k = by_kind.setdefault(r["kind"], {})
        k[r["outcome"]] = k.get(r["outcome"], 0) + 1
        k = by_runner.setdefault(r["runner"], {})
        k[r["outcome"]] = k.get(r["outcome"], 0) + 1
        if r["outcome"] not in GOOD:
            key = (r["outcome"], r["kind"], r["how"], r["runner"], r.get("detail", "")[:120])
            distinct.setdefault(key, []).append(r)
    flagged = {}
    for r in results:
        for f in r.get("flags", []):
            flagged[f] = flagged.get(f, 0) + 1
    failures = {}
    for (outcome, kind, how, runner, detail), rs in sorted(distinct.items()):
        failures.setdefault(outcome, []).append({"kind": kind, "mutation": how, "runner": runner, "count": len(rs),
                                                 "detail": rs[0].get("detail", ""), "case": rs[0]["id"],
                                                 "argv": rs[0].get("argv")})
    seconds = {}
    for r in results:
        seconds.setdefault(r["runner"], []).append(r.get("seconds", 0))
    mean_s = {k: round(sum(v) / len(v), 2) for k, v in sorted(seconds.items())}
    return {"counts": {c: n for c, n in counts.items() if n}, "flags": flagged, "mean_seconds_by_runner": mean_s,
            "by_kind": dict(sorted(by_kind.items())), "by_runner": dict(sorted(by_runner.items())),
            "failures": failures}


def commit_of(repo: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_import(repo: Path) -> str:
    """Where a child process imports edgedl from (must be inside ``repo``)."""
    r = subprocess.run([PY, "-c", "import edgedl; print(edgedl.__file__)"], env=child_env(repo),
                       capture_output=True, text=True, cwd=tempfile.gettempdir())
    path = r.stdout.strip()
    if not path or not Path(path).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"a child imports edgedl from {path or r.stderr.strip()!r}, not from {repo}")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=30,
                    help="seconds per case (compile, train and Keras models get 4x: they import TensorFlow)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz.json")
    ap.add_argument("--seeds-dir", type=Path, help="seed cache (default: ~/.cache/edgedl-fuzz/<commit of --repo>)")
    ap.add_argument("--subset", help=f"comma-separated kinds ({', '.join(KINDS)}); default all")
    ap.add_argument("--repo", type=Path, default=ROOT, help="the edgedl checkout the children import")
    ap.add_argument("--data", default=os.environ.get("EDGEDL_DATA"), help="EDGEDL_DATA for the children")
    ap.add_argument("--keep", action="store_true", help="keep every case's folder (printed)")
    args = ap.parse_args(argv)
    repo = args.repo.resolve()
    kinds = args.subset.split(",") if args.subset else list(KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        ap.error(f"unknown kinds {unknown}; choose from {list(KINDS)}")
    imported = check_import(repo)
    commit = commit_of(repo)
    seeds_dir = args.seeds_dir or Path.home() / ".cache" / "edgedl-fuzz" / commit[:12]
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"children import {imported} (commit {commit})")
    start = time.monotonic()
    seeds = build_seeds(seeds_dir, repo, args.data, log)
    seed_s = time.monotonic() - start
    cases = make_cases(args.cases, args.seed, seeds, kinds)
    work = Path(tempfile.mkdtemp(prefix="edgedl-fuzz-")) if args.keep else None
    if work:
        log(f"case folders kept in {work}")
    results = run_fuzz(cases, seeds, repo, args.data, args.jobs, args.timeout, work=work, log=log, keep=args.keep)
    summary = summarise(results)
    report = {"commit": commit, "repo": str(repo), "edgedl_imported_from": imported, "seed": args.seed,
              "cases": len(results), "jobs": args.jobs, "timeout_s": args.timeout, "kinds": kinds,
              "seeds": sorted(seeds), "seed_build_s": round(seed_s, 1),
              "wall_s": round(time.monotonic() - start, 1), "host": os.uname().nodename, "cpus": os.cpu_count(),
              **summary}
    write_json_atomic(args.out, report)
    log(json.dumps(summary["counts"]))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
