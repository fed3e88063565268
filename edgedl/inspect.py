"""Inspection: what a model or a bundle holds (operators, parameters, MACs, sizes, how it is
quantized, its inputs and outputs with their scale and zero point) and which backends of a target
compile it: each backend's ``unsupported_ops`` names what its compile refuses, so the support
column agrees with compile. A bundle adds what its manifest records (estimates, arena, fidelity).
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
        A JSON-able dict: kind, size, operators with counts and MACs, parameters, the quantization
        kind read from the operators, inputs/outputs (dtype, shape, scale, zero point) and
        per-backend support (``{backend: {"ok": bool, "unsupported": {op: reason}}}``, with
        ``"cpu_fallback"`` where a backend leaves operators to a CPU). A bundle adds what its
        manifest records: backend, target, estimates, arena (TFLite Micro) and fidelity.

    Raises:
        InputFileError: no such file, or one that is not a model or bundle edgedl reads.

    Example:
        >>> info = inspect_path("lenet_int8.tflite", "ethos_u55_128")     # doctest: +SKIP
        >>> info["quantization"]["kind"], info["support"]["vela"]["ok"]   # doctest: +SKIP
        ('int8', True)
    """
    from edgedl.targets import host_target, load_target

    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "no such file or folder")
    info = {"path": str(p)}
    with tempfile.TemporaryDirectory(prefix="edgedl-inspect-") as tmp:
        if p.is_dir() and (p / "manifest.json").exists() or (p.is_file() and p.suffix == ".edgedl"):
            return _inspect_bundle(p, info, target, Path(tmp))
        if p.suffix == ".tflite":
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
        tgt = load_target(target) if target else host_target()
        info.update(_describe(tfl, tgt, p))
        info["path"] = str(p)
        info["size_bytes"] = p.stat().st_size if p.is_file() else info["size_bytes"]
        info["target"] = tgt.name
    return info


def _describe(tfl: Path, target, shown_as: Path) -> dict:
    """:func:`_describe_tflite` in a child process: the first parse of an untrusted ``.tflite`` there
    makes a native crash one error line, not a dead edgedl (TFLite Micro's support check forks its
    own child, and a crash there is noted in the support table)."""
    return _isolate.run(_describe_tflite, tfl, target, file=shown_as, tool="LiteRT", action="reading its operators",
                        timeout=READ_TIMEOUT_S)


def _inspect_bundle(p: Path, info: dict, target: str | None, tmp: Path) -> dict:
    """A bundle: what its manifest records (backend, target, I/O, estimates, arena, fidelity) and the
    operators of the model file it holds (``.tflite`` or ``.onnx``; a TVM library has none to read)."""
    from edgedl.bundle import open_bundle
    from edgedl.targets import load_target

    with open_bundle(p) as bundle:
        m = bundle.manifest
        info["kind"] = "bundle"
        info["bundle"] = bundle_facts(bundle)
        model_files = [f["path"] for f in m.files if f["path"].endswith((".tflite", ".onnx"))]
        # A file the bundle holds is read from a copy: an archive's folder goes away when it closes.
        model = tmp / Path(model_files[0]).name if model_files else None
        if model is not None:
            model.write_bytes((bundle.directory / model_files[0]).read_bytes())
            shown_as = p / model_files[0]
    if model is not None and model.suffix == ".onnx":
        info.update(onnx_facts(model))
    elif model is not None:
        tgt = load_target(target) if target else m.target()  # the target as recorded: a TOML file's too
        info.update(_describe(model, tgt, shown_as))
        info["target"] = tgt.name
        _count_npu_macs(info)
    info["path"] = str(p)
    info["size_bytes"] = p.stat().st_size if p.is_file() else m.size_bytes  # what the device stores
    # What the bundle runs with, as its manifest records it (the compiled model's own I/O).
    info["inputs"], info["outputs"] = m.get("inputs") or [], m.get("outputs") or []
    return info


def bundle_facts(bundle) -> dict:
    """What a bundle's manifest says of it: backend, target, source, files, digest and signer,
    estimates, the tensor arena (TFLite Micro) and the fidelity check (as recorded and in a line).

    Example:
        >>> from edgedl.bundle import open_bundle
        >>> with open_bundle("lenet.edgedl") as bundle:          # doctest: +SKIP
        ...     bundle_facts(bundle)["fidelity_line"]
        'top-1 agreement 100.0%, max abs error 0.0039 on 100 samples of mnist'
    """
    m = bundle.manifest
    facts = {k: m.get(k) for k in ("backend", "source", "fidelity", "estimates", "files")}
    facts["target"] = m.target_name
    facts["digest"] = bundle.digest  # sha256 of manifest.json: what a signature signs
    facts["signed_by"] = bundle.signed_by
    facts["runtime"] = m.get("runtime")
    facts["arena_bytes"] = (m.get("runtime") or {}).get("arena_size") or m.estimates.get("arena_bytes")
    facts["fidelity_line"] = m.fidelity_line()
    return facts


def _count_npu_macs(info: dict) -> None:
    """In a Vela bundle, give Vela's NPU operator the MACs Vela counted in the source operators it
    replaced (its command stream has no shapes to count them from) and add them to the model's
    total; and mark the operators Vela's compile left to the CPU as such, with Vela's reasons."""
    from edgedl.backends.vela import NPU_OPERATOR

    if info["bundle"].get("backend") != "vela":
        return
    estimates = info["bundle"].get("estimates") or {}
    npu = info.get("operators", {}).get(NPU_OPERATOR)
    macs = estimates.get("macs")
    if npu is not None and isinstance(macs, int):
        npu["macs"] = macs
        info["macs"] = info.get("macs", 0) + macs
    vela = info.get("support", {}).get("vela")
    fallback = [f for f in estimates.get("cpu_fallback") or [] if isinstance(f, dict) and "op" in f]
    if vela is not None and fallback:
        vela.setdefault("cpu_fallback", {}).update(
            {f["op"]: f"left to the CPU by Vela: {f.get('reason', 'not placed on the NPU')}" for f in fallback})


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
    """For each backend of ``target``: whether it compiles the model (``ok``: each backend's
    ``unsupported_ops`` names what its compile refuses, and why), and the operators it leaves to a CPU
    beside an accelerator (``cpu_fallback``), where it does.

    Example:
        >>> from edgedl.graph import read_tflite
        >>> from edgedl.targets import load_target
        >>> backend_support(read_tflite("dense_dynamic.tflite"), load_target("x86_64"))["tvm"]["ok"]  # doctest: +SKIP
        False
    """
    from edgedl.backends import backend_names, get_backend

    support = {}
    for name in target.backends:
        if name not in backend_names():
            support[name] = {"ok": False, "unsupported": {}, "note": "backend not available in this edgedl"}
            continue
        backend = get_backend(name)
        try:
            unsupported = backend.unsupported_ops(graph, target)
            cpu = backend.cpu_fallback_ops(graph, target)
        except EdgeDLError as e:
            support[name] = {"ok": False, "unsupported": {}, "note": str(e)}
            continue
        support[name] = {"ok": not unsupported, "unsupported": unsupported}
        if cpu:
            support[name]["cpu_fallback"] = cpu
    return support


def _inspect_onnx(p: Path, info: dict) -> dict:
    info.update(kind="onnx", size_bytes=p.stat().st_size, **onnx_facts(p))
    return info


def onnx_facts(p: Path) -> dict:
    """Operator counts, parameters and opsets of an ``.onnx`` model.

    Raises:
        InputFileError: not a readable ONNX model.

    Example:
        >>> onnx_facts(Path("model.onnx"))["op_counts"]   # doctest: +SKIP
        {'Gemm': 1, 'Relu': 1, 'Softmax': 1}
    """
    import numpy as np

    from edgedl import _lazy

    onnx = _lazy.require("onnx")
    try:
        model = onnx.load(str(p))
    except Exception as e:
        raise InputFileError(p, f"not a readable ONNX model ({' '.join(str(e).split())[:160]})") from None
    counts = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    init = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return {"op_counts": counts, "num_params": init, "opset": [o.version for o in model.opset_import]}
