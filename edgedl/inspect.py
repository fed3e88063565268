"""Inspection: what a model or a bundle holds (operators, parameters, MACs, sizes) and which
backends of a target take each operator.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgedl import _isolate
from edgedl.errors import EdgeDLError, InputFileError

READ_TIMEOUT_S = 120.0  # parsing, allocating and the support checks of one model; seconds for real ones


def inspect_path(path: str, target: str | None = None) -> dict:
    """Describe a ``.tflite``, a Keras model (converted to float ``.tflite`` first) or a bundle.

    Args:
        path: the model file or bundle.
        target: a target whose backends are checked per operator (default: the bundle's, or the host's).

    Returns:
        A JSON-able dict: kind, size, operators with counts and MACs, parameters, inputs/outputs,
        and per-backend support (``{backend: {"ok": bool, "unsupported": {op: reason}}}``).
    """
    from edgedl.targets import host_target, load_target

    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "no such file or folder")
    info = {"path": str(p)}
    bundle_manifest = None
    with tempfile.TemporaryDirectory(prefix="edgedl-inspect-") as tmp:
        if p.is_dir() and (p / "manifest.json").exists() or (p.is_file() and p.suffix == ".edgedl"):
            from edgedl.bundle import open_bundle

            bundle = open_bundle(p)
            bundle_manifest, directory = bundle.manifest, bundle.directory
            kind = info["kind"] = "bundle"
            info["bundle"] = {k: bundle_manifest.get(k) for k in ("backend", "source", "fidelity", "estimates", "files")}
            info["bundle"]["target"] = bundle_manifest.target_name
            info["bundle"]["digest"] = bundle.digest  # sha256 of manifest.json: what a signature signs
            info["bundle"]["signed_by"] = bundle.signed_by
            tfl = next((directory / f["path"] for f in bundle_manifest["files"] if f["path"].endswith(".tflite")), None)
            if tfl is None:
                info["size_bytes"] = bundle_manifest.size_bytes
                return info
            tfl_name = p / tfl.relative_to(directory)
            tfl_copy = Path(tmp) / "model.tflite"
            tfl_copy.write_bytes(tfl.read_bytes())
            tfl = tfl_copy
        elif p.suffix == ".tflite":
            kind = info["kind"] = "tflite"
            tfl = p
        elif p.suffix == ".onnx":
            return _inspect_onnx(p, info)
        else:
            from edgedl.convert import to_tflite
            from edgedl.modelio import load_model

            model = load_model(str(p))
            kind = info["kind"] = "keras"
            info["keras"] = {"name": model.name, "num_params": int(model.count_params()),
                             "layers": len(model.layers)}
            tfl = Path(tmp) / "model.tflite"
            tfl.write_bytes(to_tflite(model, "none"))
        tgt = load_target(target) if target else (
            load_target(bundle_manifest["target"]["name"]) if bundle_manifest else host_target())
        # The first parse of an untrusted .tflite runs in a child process: a native crash there is
        # one error line, not a dead edgedl (TFLite Micro's support check forks its own child, and a
        # crash there is noted in the support table).
        info.update(_isolate.run(_describe_tflite, tfl, tgt, file=p if kind != "bundle" else tfl_name,
                                 tool="LiteRT", action="reading its operators", timeout=READ_TIMEOUT_S))
        info["path"] = str(p)
        info["size_bytes"] = p.stat().st_size if p.is_file() else info["size_bytes"]
        info["target"] = tgt.name
    return info


def _describe_tflite(path: Path, target) -> dict:
    """Graph summary, operators with counts and MACs, and backend support of one ``.tflite`` (run in a
    child process by :func:`inspect_path`)."""
    from edgedl.graph import read_tflite

    graph = read_tflite(path)
    info = graph.summary()
    ops = {}
    for op in graph.ops:
        entry = ops.setdefault(op.name, {"count": 0, "macs": 0})
        entry["count"] += 1
        entry["macs"] += op.macs
    info["operators"] = ops
    info["support"] = backend_support(graph, target)
    return info


def backend_support(graph, target) -> dict:
    """For each backend of ``target``: whether it takes every operator, and why not where it does not."""
    from edgedl.backends import backend_names, get_backend

    support = {}
    for name in target.backends:
        if name not in backend_names():
            support[name] = {"ok": False, "unsupported": {}, "note": "backend not available in this edgedl"}
            continue
        try:
            unsupported = get_backend(name).unsupported_ops(graph, target)
        except EdgeDLError as e:
            support[name] = {"ok": False, "unsupported": {}, "note": str(e)}
            continue
        support[name] = {"ok": not unsupported, "unsupported": unsupported}
    return support


def _inspect_onnx(p: Path, info: dict) -> dict:
    from edgedl import _lazy

    onnx = _lazy.require("onnx")
    try:
        model = onnx.load(str(p))
    except Exception as e:
        raise InputFileError(p, f"not a readable ONNX model ({' '.join(str(e).split())[:160]})") from None
    counts = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    init = sum(int(__import__("numpy").prod(t.dims)) for t in model.graph.initializer)
    info.update(kind="onnx", size_bytes=p.stat().st_size, op_counts=counts, num_params=init,
                opset=[o.version for o in model.opset_import])
    return info
