"""``edgedl explore``: Model Explorer node data from real profiles and quantization reports, on the node
ids Model Explorer's own TFLite adapter gives the graph (edgedl.explorer)."""

import json

import pytest

from cli_run import run_cli, the_error

LENET_LAYERS = {"conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "fc2", "probs"}  # models/lenet.py


@pytest.fixture(scope="module")
def made(trained_lenet, tmp_path_factory):
    """The trained LeNet as an int8 LiteRT bundle with its per-layer error (compile --quant-report), a
    float ONNX Runtime bundle benchmarked with --profile, and an optimize run with --quant-report."""
    from edgedl.bench.harness import bench
    from edgedl.bench.options import BenchOptions
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.optimize import OptimizeOptions, optimize

    d = tmp_path_factory.mktemp("explorer")
    keras = str(trained_lenet["keras"])
    litert = compile_model(keras, "x86_64", str(d / "litert.edgedl"),
                           CompileOptions(backend="litert", quantize="int8", quant_report=True, num_samples=40)).path
    onnx = compile_model(keras, "x86_64", str(d / "onnx.edgedl"), CompileOptions(backend="onnxruntime", num_samples=20))
    onnx_run = bench(str(onnx.path), BenchOptions(profile=True, warmup=5, runs=30, repeats=1, limit=10)).save(
        d / "onnx_run.json")
    plain_run = bench(str(litert), BenchOptions(warmup=5, runs=30, repeats=1, limit=10)).save(d / "plain_run.json")
    optimize(trained_lenet["model"], OptimizeOptions(quantize="int8", quant_report=True, dataset="digits", limit=128,
                                                     out_dir=str(d / "opt")), progress=False)
    return {"dir": d, "litert": litert, "onnx": onnx.path, "onnx_run": onnx_run, "plain_run": plain_run,
            "opt": d / "opt"}


def adapter_nodes(tflite) -> dict:
    """Model Explorer's own graph of a .tflite (its TFLite flatbuffer adapter): node id -> node."""
    adapter = pytest.importorskip("ai_edge_model_explorer_adapter")
    graphs = json.loads(adapter.ConvertFlatbufferDirectlyToJson(adapter.VisualizeConfig(), str(tflite)))
    (graph,) = graphs[0]["subgraphs"]
    assert graph["id"] == "main"
    return {n["id"]: n for n in graph["nodes"]}


def check_with_model_explorer(path):
    """The file reads back through Model Explorer's own node_data_builder, unchanged."""
    builder = pytest.importorskip("model_explorer.node_data_builder")
    data = json.loads(path.read_text())
    graph = builder.GraphNodeData(
        name=data["name"], results={k: builder.NodeDataResult(**v) for k, v in data["results"].items()},
        gradient=[builder.GradientItem(**g) for g in data["gradient"]])
    built = json.loads(graph.to_json_string())
    assert {k: v for k, v in built.items() if k in data} == data
    assert all(v in (False, []) for k, v in built.items() if k not in data)  # the rest: the builder's defaults


def test_onnx_runtime_profile_lands_on_the_litert_graphs_nodes_by_keras_layer(made, tmp_path, capsys):
    out = tmp_path / "nd"
    code, stdout, err = run_cli(capsys, "explore", made["litert"], "--profile", made["onnx_run"], "-o", out)
    assert code in (0, None), err
    model = made["litert"] / "model.tflite"
    latency_file, share_file = out / "latency_us.json", out / "share.json"
    assert f"model-explorer {model} --node_data_paths={latency_file},{share_file},{out / 'snr_db.json'}," \
           f"{out / 'rmse_rel.json'}" in stdout  # the bundle's own quant_report.json came along
    latency, share = json.loads(latency_file.read_text()), json.loads(share_file.read_text())
    assert latency["name"] == "latency (us), onnxruntime profile"
    nodes = adapter_nodes(model)
    profile = json.loads(made["onnx_run"].read_text())["profile"]
    by_layer = {}
    for row in profile["rows"]:
        if row["layer"]:
            by_layer[row["layer"]] = by_layer.get(row["layer"], 0.0) + row["time_us"]
    for layer in ("conv1", "conv2", "fc1", "pool1"):  # each layer's time sits on its operator's node
        (node_id,) = [i for i, n in nodes.items() if f"/{layer}_1/" in n["namespace"] and n["label"] != "pseudo_const"]
        assert latency["results"][node_id]["value"] == pytest.approx(by_layer[layer])
    assert set(latency["results"]) <= set(nodes) and set(latency["results"]) == set(share["results"])
    from edgedl.explorer import export_node_data

    export = export_node_data(made["litert"], tmp_path / "api", bench_result=made["onnx_run"])
    unplaced = [r for r in profile["rows"] if r["op"] in export.unplaced["profile"]]
    assert all(r["layer"] is None for r in unplaced)  # only rows of no Keras layer are left out
    assert export.placed["profile"] == len(profile["rows"]) - len(unplaced)
    placed = sum(r["value"] for r in latency["results"].values())
    assert placed == pytest.approx(profile["total"] - sum(r["time_us"] for r in unplaced), rel=1e-6)
    assert sum(r["value"] for r in share["results"].values()) <= 1.0 + 1e-6
    if unplaced:  # ONNX Runtime's layout changes belong to no operator of the .tflite: said, not guessed
        assert f"note: profile: {len(unplaced)} of {len(profile['rows'])} rows name no node" in err
    check_with_model_explorer(latency_file)
    check_with_model_explorer(share_file)


def test_the_bundles_quant_report_colours_each_layers_node(made, tmp_path):
    from edgedl.explorer import export_node_data

    export = export_node_data(made["litert"], tmp_path, quant_report=None)
    assert set(export.files) == {"snr_db", "rmse_rel"} and export.placed == {"quant_report": 8}
    snr = json.loads(export.files["snr_db"].read_text())
    assert snr["name"] == "quantization SNR (dB), int8 against float32"
    assert snr["gradient"][0]["bgColor"] == "#ea4335"  # the lowest SNR is the worst: red
    quant = json.loads((made["litert"] / "quant_report.json").read_text())
    nodes = adapter_nodes(made["litert"] / "model.tflite")
    for row in quant["layers"]:
        if row["layer"] in ("conv1", "conv2", "fc1", "fc2"):
            (node_id,) = [i for i, n in nodes.items()
                          if f"/{row['layer']}_1/" in n["namespace"] and n["label"] != "pseudo_const"]
            assert snr["results"][node_id]["value"] == row["snr_db"]
    softmax = next(i for i, n in nodes.items() if n["label"] == "softmax")  # the output layer: by its tensor
    assert snr["results"][softmax]["value"] == next(r["snr_db"] for r in quant["layers"] if r["layer"] == "probs")
    check_with_model_explorer(export.files["snr_db"])
    check_with_model_explorer(export.files["rmse_rel"])


def test_optimizes_report_on_its_own_tflite(made, tmp_path, capsys):
    code, stdout, err = run_cli(capsys, "explore", made["opt"] / "model.tflite", "--quant-report",
                                made["opt"] / "report.json", "-o", tmp_path, "--json")
    assert code in (0, None), err
    summary = json.loads(stdout)
    assert summary["placed"] == {"quant_report": 8} and summary["unplaced"] == {"quant_report": []}
    rmse = json.loads((tmp_path / "rmse_rel.json").read_text())
    report = json.loads((made["opt"] / "report.json").read_text())["quant_report"]
    assert sorted(r["value"] for r in rmse["results"].values()) == sorted(r["rmse_rel"] for r in report["layers"])
    assert set(rmse["results"]) <= set(adapter_nodes(made["opt"] / "model.tflite"))


def test_an_archive_bundles_tflite_is_copied_beside_the_node_data(trained_lenet, made, tmp_path):
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.explorer import export_node_data

    archive = compile_model(str(trained_lenet["keras"]), "x86_64", str(tmp_path / "a.edgedl"),
                            CompileOptions(backend="litert", quantize="int8", quant_report=True, archive=True,
                                           num_samples=20)).path
    export = export_node_data(archive, tmp_path / "nd", bench_result=made["onnx_run"])
    assert export.model == tmp_path / "nd" / "model.tflite" and export.model.is_file()
    assert set(export.files) == {"latency_us", "share", "snr_db", "rmse_rel"}
    assert export.command().startswith(f"model-explorer {export.model} --node_data_paths=")


def test_what_cannot_be_shown_is_one_line(made, tmp_path, capsys):
    def error(*args):
        code, _, err = run_cli(capsys, "explore", *args, "-o", tmp_path / "nd")
        return the_error(code, err)

    assert error(made["onnx"], "--profile", made["onnx_run"]) == (
        f"error: {made['onnx']}: this onnxruntime bundle holds model.onnx, no .tflite; give a LiteRT or TFLite Micro "
        "bundle of the same Keras model (or its .tflite) and this bundle's profile with --profile")
    assert error(made["opt"] / "model.tflite").startswith(
        "error: nothing to show on model.tflite: give a benchmark's profile (--profile run.json, from edgedl bench "
        "BUNDLE --profile -o run.json)")
    assert error(made["litert"], "--profile", made["plain_run"]) == (
        f"error: {made['plain_run']}: has no per-operator profile; make one with edgedl bench BUNDLE --profile -o "
        "run.json")
    assert error(made["litert"], "--quant-report", made["onnx_run"]).startswith(
        f"error: {made['onnx_run']}: holds no per-layer quantization error; make one with edgedl optimize")


def test_a_firmwares_counts_by_type_land_only_where_the_type_is_one_node(made):
    from edgedl.bench.profile import from_mcu
    from edgedl.explorer import graph_nodes, place_rows

    nodes = graph_nodes(made["litert"] / "model.tflite")
    profile = from_mcu({"instructions": 1000, "cycles": None, "operators": [
        {"operator": "CONV_2D", "count": 2, "instructions": 700},
        {"operator": "SOFTMAX", "count": 1, "instructions": 50},
        {"operator": "FULLY_CONNECTED", "count": 3, "instructions": 200}]})
    placed, missed = place_rows(nodes, profile["rows"])
    (softmax,) = [n.id for n in nodes if n.type == "SOFTMAX"]
    assert {node: [r["op"] for r in rows] for node, rows in placed.items()} == {softmax: ["SOFTMAX"]}
    assert sorted(r["op"] for r in missed) == ["CONV_2D", "FULLY_CONNECTED"]  # two and three nodes: which one?


def test_a_profile_of_another_model_is_refused(made, tmp_path, capsys):
    from edgedl.compile import CompileOptions, compile_model

    other = compile_model(str(made["opt"] / "model.keras"), "x86_64", str(tmp_path / "other.edgedl"),
                          CompileOptions(backend="litert", num_samples=20)).path
    code, _, err = run_cli(capsys, "explore", other, "--profile", made["onnx_run"], "-o", tmp_path / "nd")
    assert the_error(code, err) == ("error: the profile is of a build of lenet.keras and other.edgedl of model.keras "
                                    "(another sha256): profile a build of the same model")


def test_tvm_kernels_land_by_the_layers_they_name_or_are_refused_saying_why(trained_lenet, made, tmp_path):
    from edgedl.bench.harness import bench
    from edgedl.bench.options import BenchOptions
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.errors import OptionError
    from edgedl.explorer import export_node_data, graph_nodes

    tvm = compile_model(str(trained_lenet["keras"]), "x86_64", str(tmp_path / "tvm.edgedl"),
                        CompileOptions(backend="tvm", num_samples=20)).path
    run = bench(str(tvm), BenchOptions(profile=True, warmup=5, runs=30, repeats=1, limit=10))
    rows = run.data["profile"]["rows"]
    layers = {n.layer for n in graph_nodes(made["litert"] / "model.tflite")}
    named = [r for r in rows if r["layer"] in layers]  # a kernel the bundle's kernel map names after one layer
    if not named:
        with pytest.raises(OptionError, match="name no layer: TVM fuses operators"):
            export_node_data(made["litert"], tmp_path / "nd", bench_result=run)
        return
    export = export_node_data(made["litert"], tmp_path / "nd", bench_result=run)
    assert export.placed["profile"] == len(named)
    latency = json.loads(export.files["latency_us"].read_text())["results"]
    assert sum(v["value"] for v in latency.values()) == pytest.approx(sum(r["time_us"] for r in named), rel=1e-5)
    softmax = [r["time_us"] for r in named if r["type"] == "softmax"]  # probs' softmax, not probs' dense
    if softmax:
        (node,) = [n.id for n in graph_nodes(made["litert"] / "model.tflite") if n.type == "SOFTMAX"]
        assert latency[node]["value"] == pytest.approx(sum(softmax), rel=1e-5)
