"""Node data for Google's Model Explorer (``edgedl explore``): per-operator latency and per-layer
quantization error, overlaid on the graph of a ``.tflite``.

Where it sits: after the measurements. ``edgedl bench BUNDLE --profile -o run.json`` records a
per-operator profile (:mod:`edgedl.bench.profile`), ``edgedl optimize ... --quant-report`` and
``edgedl compile ... --quant-report`` a per-layer error (:mod:`edgedl.optimize.quant_report`);
:func:`export_node_data` places their rows on the nodes of the ``.tflite`` and writes one node-data
file per metric, which Model Explorer (``pip install ai-edge-model-explorer``) colours the graph by::

    model-explorer model.tflite --node_data_paths=latency_us.json,snr_db.json

The format is Model Explorer's ``GraphNodeData`` (``model_explorer.node_data_builder``): ``{"name",
"results": {node id: {"value"}}, "gradient": [{"stop", "bgColor"}]}``, applied to the graph shown.
Its TFLite adapter gives each operator the node id of its index in the flatbuffer's subgraph (``"0"``,
``"1"``, ...), the order LiteRT lists them in; constants and the graph's inputs and outputs get the
ids after the operators. A row is placed on a node by, in this order: its operator ``index``; a
tensor it names (``tensor``, or ``op`` where that is a tensor name, as ONNX Runtime's node names
often are) that the node outputs; its Keras ``layer`` (that layer's node of the row's type, else the
one doing the most multiply-accumulates; the converter names every tensor after its Keras layer path,
and an output it names after the model belongs to the layer that feeds it); its operator ``type``
where exactly one node has it. Rows on the same node add up (latency, share) or keep the worst
(error). What cannot be placed is counted and said, never guessed: ONNX Runtime's layout changes,
TVM's kernels where the bundle has no kernel map, a firmware's per-type counts of repeated operators.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from edgedl import _io
from edgedl.errors import InputFileError, OptionError

log = logging.getLogger(__name__)

# metric -> (display name, higher is worse, how several rows on one node combine)
METRICS = {
    "latency_us": ("latency (us)", True, "sum"),
    "instructions": ("instructions", True, "sum"),
    "cycles": ("cycles", True, "sum"),
    "share": ("share of the profiled time", True, "sum"),
    "snr_db": ("quantization SNR (dB)", False, "min"),
    "rmse_rel": ("quantization RMSE / float range", True, "max"),
}
GOOD, MIDDLE, BAD = "#e6f4ea", "#fbbc04", "#ea4335"  # light green, amber, red
PASS_THROUGH = ("QUANTIZE", "DEQUANTIZE")
PROFILE_UNITS = {"us": ("time_us", "latency_us"), "instructions": ("instructions", "instructions"),
                 "cycles": ("cycles", "cycles")}
HOW_TO_PROFILE = "edgedl bench BUNDLE --profile -o run.json"
HOW_TO_QUANT_REPORT = "edgedl optimize MODEL -q int8 --quant-report -o DIR (DIR/report.json), or a bundle of " \
                      "edgedl compile MODEL -q int8 --quant-report"
QUANT_REPORT_FILE = "quant_report.json"  # where edgedl compile --quant-report keeps it in a bundle


@dataclass
class Node:
    """One operator of the ``.tflite`` as Model Explorer shows it."""

    id: str
    type: str
    tensors: list[str]
    layer: str | None
    macs: int = 0
    maker: str | None = None  # a (de)quantization's: the node whose output it converts


@dataclass
class ExplorerExport:
    """What :func:`export_node_data` wrote: the ``.tflite`` to open, a node-data file per metric, how
    many rows each source placed, and what it could not place."""

    model: Path
    files: dict = field(default_factory=dict)        # metric -> path of its node-data JSON
    placed: dict = field(default_factory=dict)       # source ("profile", "quant_report") -> rows placed
    unplaced: dict = field(default_factory=dict)     # source -> [row names not placed]
    notes: list = field(default_factory=list)        # what a person should know (a source with nothing placed)

    def command(self) -> str:
        """The command that opens the graph with the node data (Model Explorer's own CLI)."""
        paths = ",".join(str(p) for p in self.files.values())
        return f"model-explorer {shlex.quote(str(self.model))} --node_data_paths={shlex.quote(paths)}"

    def summary(self) -> dict:
        """JSON-able: the model, the files, the placed and unplaced rows, the command."""
        return {"model": str(self.model), "files": {k: str(v) for k, v in self.files.items()},
                "placed": self.placed, "unplaced": self.unplaced, "notes": self.notes, "command": self.command()}


def graph_nodes(tflite) -> list[Node]:
    """The operators of a ``.tflite``'s main subgraph with the node ids Model Explorer's TFLite adapter
    gives them (the operator's index), the tensors each outputs and the Keras layer it comes from.

    Example:
        >>> [(n.id, n.type, n.layer) for n in graph_nodes("lenet.tflite")][:2]  # doctest: +SKIP
        [('0', 'CONV_2D', 'conv1'), ('1', 'MAX_POOL_2D', 'pool1')]
    """
    from edgedl.bench.profile import keras_layer
    from edgedl.graph import read_tflite

    graph = read_tflite(tflite)
    nodes, made_by, by_id = [], {}, {}
    for op in graph.ops:
        if op.name == "DELEGATE":  # a delegate's node, added after the flatbuffer's operators
            continue
        names = [graph.tensors[i]["name"] for i in op.outputs if i in graph.tensors]
        layer = next((layer for layer in map(keras_layer, names) if layer), None)
        producer = made_by.get(op.inputs[0]) if op.inputs else None
        if layer is None and producer is not None:  # an output the converter names after the model (a softmax)
            layer = by_id[producer].layer
        node = Node(str(op.index), op.name, names, layer, op.macs, producer if op.name in PASS_THROUGH else None)
        nodes.append(node)
        by_id[node.id] = node
        made_by.update((i, node.id) for i in op.outputs)
    return nodes


def place_rows(nodes: list[Node], rows: list[dict]) -> tuple[dict[str, list[dict]], list[dict]]:
    """Each row on the node it belongs to: ``({node id: [rows]}, [rows not placed])`` (the rules are the
    module's docstring's)."""
    by_id = {n.id: n for n in nodes}
    by_tensor: dict[str, list[Node]] = {}
    for n in nodes:
        for t in n.tensors:
            by_tensor.setdefault(t, []).append(n)
    by_type: dict[str, list[Node]] = {}
    for n in nodes:
        by_type.setdefault(n.type, []).append(n)
    placed: dict[str, list[dict]] = {}
    missed = []
    for row in rows:
        node = _node_for(row, by_id, by_tensor, by_type, nodes)
        if node is None:
            missed.append(row)
        else:
            placed.setdefault(node.id, []).append(row)
    return placed, missed


def _node_for(row: dict, by_id, by_tensor, by_type, nodes: list[Node]) -> Node | None:
    index = row.get("index")
    if isinstance(index, int) and str(index) in by_id:
        return by_id[str(index)]
    kind = row.get("type") or row.get("op")
    for name in (row.get("tensor"), row.get("op")):
        candidates = by_tensor.get(name) if isinstance(name, str) else None
        if candidates:
            node = next((n for n in candidates if n.type == kind), None) or _main(candidates)
            if node.maker is not None and str(kind).upper() not in PASS_THROUGH:  # a float copy of an output
                node = by_id.get(node.maker, node)
            return node
    layer = row.get("layer")
    if layer:
        of_layer = [n for n in nodes if n.layer == layer]
        if of_layer:  # the layer's operator of the row's type (TVM's softmax, not its dense), else its main one
            return _main([n for n in of_layer if _same_type(n.type, row.get("type"))] or of_layer)
    same_type = by_type.get(row.get("type") or "")
    if same_type and len(same_type) == 1 and int(row.get("calls", 1)) == 1:
        return same_type[0]
    return None


def _same_type(tflite_type: str, other) -> bool:
    """Whether an engine's operator type names the TFLite one (``max_pool2d``, ``Softmax``: MAX_POOL_2D, SOFTMAX)."""
    return isinstance(other, str) and tflite_type.replace("_", "").lower() == other.replace("_", "").lower()


def _main(nodes: list[Node]) -> Node:
    """Of one layer's (or one tensor's) nodes, the one that computes: not a (de)quantization, the most
    multiply-accumulates, the last of equals."""
    computing = [n for n in nodes if n.type not in PASS_THROUGH] or nodes
    return max(reversed(computing), key=lambda n: n.macs)


def node_data(metric: str, values: dict[str, float], source: str) -> dict:
    """One metric as Model Explorer's ``GraphNodeData``: the value of each node id, coloured from green
    (best) to red (worst) over the values' range.

    Example:
        >>> node_data("snr_db", {"0": 31.5, "3": 18.2}, "int8")["results"]["3"]
        {'value': 18.2}
    """
    name, worse_high, _ = METRICS[metric]
    colours = [GOOD, MIDDLE, BAD] if worse_high else [BAD, MIDDLE, GOOD]
    return {"name": f"{name}, {source}", "results": {k: {"value": v} for k, v in values.items()},
            "gradient": [{"stop": s, "bgColor": c} for s, c in zip((0, 0.5, 1), colours)]}


def _combine(metric: str, rows: list[dict], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    if not values:
        return None
    how = METRICS[metric][2]
    value = sum(values) if how == "sum" else min(values) if how == "min" else max(values)
    return round(value, 6)


def profile_of(bench_result) -> dict:
    """The ``profile`` of a benchmark result (a path to ``edgedl bench -o`` JSON, or a BenchResult).

    Raises:
        InputFileError: not a result, or a result without a per-operator profile (and why it has none).
    """
    from edgedl.bench.result import BenchResult

    if isinstance(bench_result, BenchResult):
        result, where = bench_result, "the benchmark result"
    else:
        result, where = BenchResult.load(bench_result), bench_result
    profile = result.data.get("profile")
    if not profile:
        raise InputFileError(where, f"has no per-operator profile; make one with {HOW_TO_PROFILE}")
    if not profile.get("available") or not profile.get("rows"):
        raise InputFileError(where, f"its {profile.get('backend', 'engine')} run has no per-operator times "
                                    f"({profile.get('reason') or 'no rows'})")
    return {**profile, "bundle": result.data.get("bundle") or {}}


def quant_rows_of(path) -> dict:
    """The per-layer error in ``path``: ``edgedl optimize``'s report.json (its ``quant_report``), or the
    ``quant_report.json`` of a bundle compiled with ``--quant-report``.

    Raises:
        InputFileError: not JSON, or no per-layer error in it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputFileError(path, f"no such file; expected the report.json or quant_report.json of "
                                   f"{HOW_TO_QUANT_REPORT}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(path, f"not JSON ({e})") from None
    quant = data.get("quant_report") if isinstance(data, dict) and "quant_report" in data else data
    if not isinstance(quant, dict) or not isinstance(quant.get("layers"), list):
        raise InputFileError(path, f"holds no per-layer quantization error; make one with {HOW_TO_QUANT_REPORT}")
    return quant


def export_node_data(model, out_dir, bench_result=None, quant_report=None) -> ExplorerExport:
    """Write Model Explorer node data for MODEL's ``.tflite``: per-operator ``latency_us`` (or
    ``instructions``/``cycles`` from a firmware) and ``share`` from a benchmark's profile, per-layer
    ``snr_db`` and ``rmse_rel`` from a quantization report.

    Args:
        model: a bundle that holds a ``.tflite`` (a LiteRT or TFLite Micro build), or a ``.tflite``.
            An archive bundle's ``.tflite`` is copied into ``out_dir`` (Model Explorer opens a file).
        out_dir: the folder the node-data files are written to (made if missing).
        bench_result: ``edgedl bench --profile -o`` JSON (or a BenchResult). Its profile may come from
            another build of the same Keras model (ONNX Runtime's rows carry Keras layer names).
        quant_report: optimize's report.json or a bundle's quant_report.json; by default a bundle's own.

    Returns:
        The :class:`ExplorerExport`: files written, rows placed and not, and ``command()`` to open them.

    Raises:
        InputFileError: a file that is not what it should be, a bundle without a ``.tflite``.
        OptionError: nothing to export, a profile of another source model, or no row placed at all.

    Example:
        >>> export = export_node_data("lenet.edgedl", "lenet-explore", bench_result="run.json")  # doctest: +SKIP
        >>> export.command()  # doctest: +SKIP
        'model-explorer lenet.edgedl/model.tflite --node_data_paths=lenet-explore/latency_us.json,...'
    """
    out = Path(out_dir)
    tflite, source, bundled_quant = _tflite_of(Path(model), out)
    if quant_report is None and bundled_quant is not None:
        quant_report = bundled_quant
    if bench_result is None and quant_report is None:
        raise OptionError(f"nothing to show on {Path(model).name}: give a benchmark's profile (--profile run.json, "
                          f"from {HOW_TO_PROFILE}) or a per-layer error (--quant-report, from {HOW_TO_QUANT_REPORT})")
    nodes = graph_nodes(tflite)
    export = ExplorerExport(tflite)
    metrics: dict[str, dict] = {}
    if bench_result is not None:
        profile = profile_of(bench_result)
        made_from = profile["bundle"].get("source") or {}
        if source.get("sha256") and made_from.get("sha256") and made_from["sha256"] != source["sha256"]:
            raise OptionError(f"the profile is of a build of {made_from.get('path')} and {Path(model).name} of "
                              f"{source.get('path')} (another sha256): profile a build of the same model")
        unit = profile.get("unit", "us")
        if unit not in PROFILE_UNITS:
            raise OptionError(f"the profile counts '{unit}'; edgedl explore shows {', '.join(PROFILE_UNITS)}")
        unit_key, metric = PROFILE_UNITS[unit]
        label = f"{profile.get('backend')} {'estimate' if profile.get('estimated') else 'profile'}"
        placed = _place("profile", nodes, profile["rows"], export, tflite)
        metrics[metric] = node_data(metric, _values(metric, placed, unit_key), label)
        metrics["share"] = node_data("share", _values("share", placed, "share"), label)
    if quant_report is not None:
        quant = quant_rows_of(quant_report)
        label = f"{quant.get('mode', 'integer')} against float32"
        placed = _place("quant_report", nodes, quant["layers"], export, tflite)
        for metric in ("snr_db", "rmse_rel"):
            metrics[metric] = node_data(metric, _values(metric, placed, metric), label)
    out.mkdir(parents=True, exist_ok=True)
    for metric, data in metrics.items():
        if data["results"]:
            export.files[metric] = _io.write_json(out / f"{metric}.json", data)
    return export


def _place(source: str, nodes: list[Node], rows: list[dict], export: ExplorerExport, tflite: Path) -> dict:
    placed, missed = place_rows(nodes, rows)
    export.placed[source] = len(rows) - len(missed)
    export.unplaced[source] = [str(r.get("layer") or r.get("op") or r.get("tensor")) for r in missed]
    if not placed:
        what = {"profile": "profile", "quant_report": "quantization report"}[source]
        raise OptionError(f"none of the {len(rows)} rows of the {what} names an operator or Keras layer of "
                          f"{tflite.name}{_why_none(source, rows, nodes)}")
    if missed:
        export.notes.append(f"{source}: {len(missed)} of {len(rows)} rows name no node of {tflite.name} and are "
                            f"left out ({', '.join(export.unplaced[source][:5])}"
                            f"{', ...' if len(missed) > 5 else ''})")
    return placed


def _why_none(source: str, rows: list[dict], nodes: list[Node]) -> str:
    if not any(n.layer for n in nodes):
        return " (its tensors carry no Keras layer names: was it converted with --strip-names?)"
    if source == "profile" and not any(r.get("layer") for r in rows):
        return (" (this engine's rows are its own kernels, which name no layer: TVM fuses operators, a firmware "
                "counts by operator type)")
    return ""


def _values(metric: str, placed: dict[str, list[dict]], key: str) -> dict[str, float]:
    values = {node: _combine(metric, rows, key) for node, rows in placed.items()}
    return {node: v for node, v in sorted(values.items(), key=lambda kv: int(kv[0])) if v is not None}


def _tflite_of(path: Path, out: Path) -> tuple[Path, dict, Path | None]:
    """(the ``.tflite`` to open, the source model's record where a bundle keeps one (path, sha256), the
    bundle's quant_report.json if it holds one)."""
    if path.suffix.lower() == ".tflite" and path.is_file():
        return path, {}, None
    if not path.exists():
        raise InputFileError(path, "no such file or folder; expected a bundle (edgedl compile) or a .tflite")
    if path.is_file() and path.suffix.lower() in (".onnx", ".keras", ".h5"):
        raise InputFileError(path, "Model Explorer's node data here is placed on a .tflite graph: give the .tflite "
                                   "of the same Keras model (a LiteRT bundle of it, or optimize's model.tflite)")
    from edgedl.bundle import open_bundle

    with open_bundle(path) as bundle:
        names = [f["path"] for f in bundle.manifest.files]
        tflites = [n for n in names if n.endswith(".tflite")]
        if not tflites:
            raise InputFileError(path, f"this {bundle.manifest.backend} bundle holds {', '.join(names)}, no .tflite; "
                                       "give a LiteRT or TFLite Micro bundle of the same Keras model (or its .tflite) "
                                       "and this bundle's profile with --profile")
        model_name = bundle.manifest["runtime"].get("model")
        name = model_name if model_name in tflites else tflites[0]
        tflite, quant = bundle.file(name), None
        if QUANT_REPORT_FILE in names:
            quant = bundle.file(QUANT_REPORT_FILE)
        if bundle.directory != path:  # an archive, unpacked for now: keep copies where the node data goes
            out.mkdir(parents=True, exist_ok=True)
            tflite = Path(shutil.copyfile(tflite, out / Path(name).name))
            if quant is not None:
                quant = Path(shutil.copyfile(quant, out / QUANT_REPORT_FILE))
        source = bundle.manifest.get("source") or {}
    return tflite, source, quant
