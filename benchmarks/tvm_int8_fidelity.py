"""Measure how closely TVM's int8 models follow LiteRT: the stock TFLite frontend against edgedl's exact
int8 converters, on briefly trained zoo models and real test samples; write JSON.

For each model: train it briefly with its recipe (fewer epochs, fewer samples: said in the JSON),
convert it to full-integer int8 with int8 I/O, and run N real test samples through

- LiteRT in three configurations: ``default`` (the interpreter as ``LiteRTEngine`` creates it,
  XNNPACK delegate on), ``builtin`` (builtin kernels, no delegate), ``reference``
  (``OpResolverType.BUILTIN_REF``);
- TVM (LLVM, x86-64, one core) with the stock converter and with each of edgedl's converters
  (``ExactInt8Converter`` for default, ``BuiltinInt8Converter``, ``ReferenceInt8Converter``).

For every (TVM lowering, LiteRT configuration) pair: the largest output difference in quantization
steps, the fraction of outputs that differ, and top-1 agreement. For the builtin and reference
configurations, whose intermediate tensors LiteRT can keep, also the same after every operator
("cutting the model after each operator"), which shows where the stock lowering drifts.

Results merge into the JSON file by model, so models can be run one at a time.

    EDGEDL_DATA=/work/shared/data python benchmarks/tvm_int8_fidelity.py
    EDGEDL_DATA=/work/shared/data python benchmarks/tvm_int8_fidelity.py --models resnet8 --samples 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))
from litert_run import litert, run_litert  # noqa: E402 - the tests' LiteRT reference, one copy

DEFAULT_OUT = ROOT / "results" / "tvm_int8_fidelity.json"
TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4", "num-cores": 1}
CONFIGS = ("default", "builtin", "reference")
# Brief training: enough for the outputs to depend on the input, far from the recipe's accuracy.
TRAINING = {"ds_cnn": {"epochs": 4, "limit": 1500}, "resnet8": {"epochs": 3, "limit": 2000},
            "mobilenet_v1": {"epochs": 3, "limit": 2000}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="ds_cnn,resnet8,mobilenet_v1", help="comma-separated zoo names (%(default)s)")
    p.add_argument("--samples", type=int, default=300, help="real test samples per model (%(default)s)")
    p.add_argument("--epochs", type=int, help="training epochs (default: per model, see TRAINING)")
    p.add_argument("--limit", type=int, help="samples per split for training (default: per model)")
    p.add_argument("--data-dir", default=os.environ.get("EDGEDL_DATA"), help="data directory ($EDGEDL_DATA)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "edgedl-bench-tvm-int8"),
                   help="where trained models are kept between runs (%(default)s)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON to write (%(default)s)")
    args = p.parse_args(argv)

    from edgedl import _io

    os.environ.setdefault("TVM_NUM_THREADS", "1")
    command = " ".join(["python", "benchmarks/tvm_int8_fidelity.py",
                        *(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))])
    if args.data_dir and os.environ.get("EDGEDL_DATA") == args.data_dir:
        command = f"EDGEDL_DATA={shlex.quote(args.data_dir)} {command}"
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"entries": []}
    for name in args.models.split(","):
        start = time.perf_counter()
        entry = measure(name, args)
        entry.update(model=name, command=command, wall_time_s=round(time.perf_counter() - start, 1))
        print(json.dumps(entry["summary"]), flush=True)
        results["entries"] = [e for e in results["entries"] if e["model"] != name] + [entry]
        results["host"] = host()
        _io.write_json(out, results)
    print(f"wrote {out}")


def measure(name, args):
    from edgedl.convert import to_tflite
    from edgedl.data import load_dataset

    model, training = trained_model(name, args)
    data = load_dataset(training["dataset"], data_dir=args.data_dir, limit=training["limit"])
    buf = to_tflite(model, "int8", data.x_train[:200], io_type="int8")
    interpreters = {config: litert(buf, config) for config in CONFIGS}
    xs = quantize_inputs(interpreters["reference"], data.x_test[:args.samples])
    labels = data.y_test[:args.samples]
    litert_out = {config: run_litert(it, xs) for config, it in interpreters.items()}

    tvm_out, build, latency = {}, {}, {}
    for lowering, converter in lowerings().items():
        t = time.perf_counter()
        mod = import_tflite(buf, converter)
        vm = compile_vm(mod)
        build[lowering] = round(time.perf_counter() - t, 1)
        tvm_out[lowering] = np.stack([run_vm(vm, x) for x in xs]).reshape(litert_out["reference"].shape)
        timer = vm.time_evaluator("main", device(), number=20, repeat=5)
        latency[lowering] = round(1000 * float(np.median(timer(tensor(xs[:1])).results)), 3)

    def compare(a, b):
        largest, fraction = steps(a, b)
        return {"max_steps": largest, "outputs_differing_pct": round(100 * fraction, 2),
                "top1_agreement_pct": round(100 * float(np.mean(a.argmax(-1) == b.argmax(-1))), 2)}

    pairs = {f"{lowering} vs litert_{config}": compare(tvm_out[lowering], litert_out[config])
             for lowering in tvm_out for config in CONFIGS}
    litert_pairs = {f"litert_{a} vs litert_{b}": compare(litert_out[a], litert_out[b])
                    for i, a in enumerate(CONFIGS) for b in CONFIGS[i + 1:]}
    matching = {"default": "exact", "builtin": "exact_builtin", "reference": "exact_reference"}
    summary = {"model": name, **{f"vs litert_{c}": {"stock": pairs[f"stock vs litert_{c}"],
                                                    "exact": pairs[f"{matching[c]} vs litert_{c}"]}
                                 for c in CONFIGS}}
    return {
        "summary": summary,
        "training": training,
        "samples": int(len(xs)),
        "ops": [op["op_name"] for op in interpreters["reference"]._get_ops_details()],
        "tvm_vs_litert": pairs,
        "litert_vs_litert": litert_pairs,
        "accuracy_pct": {**{f"litert_{c}": round(100 * float(np.mean(o.argmax(-1) == labels)), 2)
                            for c, o in litert_out.items()},
                         **{f"tvm_{k}": round(100 * float(np.mean(o.argmax(-1) == labels)), 2)
                            for k, o in tvm_out.items()}},
        "per_operator": per_operator(buf, xs[: min(len(xs), 50)]),
        "tvm_build_s": build,
        "tvm_latency_ms": {"median": latency, "threads": 1, "batch": 1,
                           "note": "time_evaluator, 20 runs x 5 repeats; a shared host, indicative only"},
        "toolchain": versions(),
    }


def lowerings():
    from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter

    from edgedl.backends.tvm_int8 import BuiltinInt8Converter, ExactInt8Converter, ReferenceInt8Converter

    return {"stock": OperatorConverter, "exact": ExactInt8Converter, "exact_builtin": BuiltinInt8Converter,
            "exact_reference": ReferenceInt8Converter}


def per_operator(buf, xs):
    """Differences after every operator, against the LiteRT configurations that keep intermediates."""
    rows = []
    reference = litert(buf, "reference", keep_tensors=True)
    ops = reference._get_ops_details()
    names = {t["index"]: t["name"] for t in reference.get_tensor_details()}
    outputs = [int(op["outputs"][0]) for op in ops]
    expected = {c: intermediates(litert(buf, c, keep_tensors=True), xs, outputs) for c in ("builtin", "reference")}
    matching = {"builtin": "exact_builtin", "reference": "exact_reference"}
    actual = {}
    for lowering, converter in lowerings().items():
        if lowering in ("stock", *matching.values()):
            vm = compile_vm(import_tflite(buf, converter, [names[i] for i in outputs]))
            actual[lowering] = [[o.numpy() for o in vm["main"](tensor(x[None]))] for x in xs]
    for k, op in enumerate(ops):
        row = {"index": k, "op": op["op_name"]}
        for config in ("builtin", "reference"):
            want = np.stack([sample[k] for sample in expected[config]])
            for lowering in ("stock", matching[config]):
                got = np.stack([sample[k] for sample in actual[lowering]]).reshape(want.shape)
                largest, fraction = steps(got, want)
                row[f"{lowering} vs litert_{config}"] = [largest, round(100 * fraction, 2)]
        rows.append(row)
    return {"columns": "[max steps, % differing] after the operator, same input samples", "rows": rows}


def intermediates(interpreter, xs, indices):
    index_in = interpreter.get_input_details()[0]["index"]
    result = []
    for x in xs:
        interpreter.set_tensor(index_in, x[None])
        interpreter.invoke()
        result.append([interpreter.get_tensor(i).copy() for i in indices])
    return result


def trained_model(name, args):
    """The zoo model trained briefly (cached in --work) and what its training was."""
    import keras

    from edgedl import zoo
    from edgedl.train import TrainOptions, train

    plan = dict(TRAINING.get(name, {"epochs": 3, "limit": 2000}))
    plan.update({k: v for k, v in (("epochs", args.epochs), ("limit", args.limit)) if v})
    dataset = zoo.get_model(name).recipe["dataset"]
    path = Path(args.work) / f"{name}-e{plan['epochs']}-l{plan['limit']}.keras"
    if not path.is_file():
        result = train(name, TrainOptions(epochs=plan["epochs"], data_dir=args.data_dir, limit=plan["limit"]),
                       progress=False)
        result.save(path)
    metrics = json.loads(path.with_suffix(".json").read_text())
    return keras.models.load_model(path), {
        "dataset": dataset, "epochs": plan["epochs"], "limit": plan["limit"],
        "recipe_epochs": zoo.get_model(name).recipe["epochs"], "float_test_accuracy": metrics["accuracy"]}


def quantize_inputs(interpreter, x):
    scale, zero_point = interpreter.get_input_details()[0]["quantization"]
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)


def import_tflite(buf, converter, outputs=None):
    """``from_tflite`` with ``converter``; with ``outputs`` (tensor names), a module returning those."""
    import tflite
    import tvm
    from tvm import relax
    from tvm.relax.frontend.tflite import tflite_frontend as frontend

    model = tflite.Model.GetRootAsModel(buf, 0)
    if outputs is None:
        return frontend.from_tflite(model, op_converter=converter)
    shapes, dtypes = frontend._input_type(model)
    subgraph = model.Subgraphs(0)
    bb = relax.BlockBuilder()
    with bb.function("main"):
        with bb.dataflow():
            table = frontend.ExprTable()
            inputs = []
            for index in subgraph.InputsAsNumpy():
                name = frontend.get_tensor_name(subgraph, index)
                var = relax.Var(name, relax.TensorType(shape=shapes[name], dtype=dtypes[name]))
                table.set_expr(name, var)
                inputs.append(var)
            converter(model, subgraph, table, bb).convert_op_to_relax()
            result = bb.emit_output(relax.Tuple([table.get_expr(n) for n in outputs]))
        bb.emit_func_output(result, inputs)
    mod = bb.get()
    params = [tvm.runtime.tensor(value) for _, value in table.params.values()] if table.params else []
    mod["main"] = mod["main"].with_attrs({"num_input": len(inputs), "params": params})
    return mod


def compile_vm(mod):
    import tvm
    from tvm import relax

    return relax.VirtualMachine(relax.build(mod, target=tvm.target.Target(TARGET)), device())


def tensor(x):
    import tvm

    return tvm.runtime.tensor(x)


def device():
    import tvm

    return tvm.cpu()


def run_vm(vm, x):
    return vm["main"](tensor(x[None])).numpy()[0]


def steps(a, b):
    d = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return int(d.max()), float((d > 0).mean())


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("apache-tvm", "ai-edge-litert", "tensorflow-cpu", "keras")}


def host() -> dict:
    import platform

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


if __name__ == "__main__":
    main()
