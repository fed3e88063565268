"""What ``--structured-align`` costs in LiteRT latency and buys in MACs on ResNet-8; write JSON.

LiteRT's float32 convolutions compute output channels in tiles (16 on x86-64 with AVX-512, see
``benchmarks/conv_channels.py``), so rounding the channels a structured cut keeps up to a multiple
of the tile should add capacity (MACs, parameters) for less time than it adds MACs: the extra
output channels are computed anyway, only the layers reading them pay for wider inputs.

This plans ResNet-8 cuts with and without an alignment, rebuilds them and times each against the
unpruned model (float32, one thread, batch 1, alternating in one process, median of repeats).
Float32 latency does not depend on the weights' values, so the models are untrained and nothing is
fine-tuned: this measures the cost side only; what the kept channels buy in accuracy needs a
fine-tuning run (``benchmarks/optimize.py``). With a data directory (``--data-dir`` or
``$EDGEDL_DATA``) int8 is timed too, each model calibrated on 200 real samples of its recipe's
training split: int8 latency does depend on the calibration (on random data every cut timed
0.95-1.0x of the unpruned model), but calibrated on real samples an untrained cut times as the same
cut trained and fine-tuned does (see :func:`int8_reference`).

    EDGEDL_DATA=/work/shared/data python benchmarks/structured_align.py
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "results" / "structured_align.json"
# (fraction removed, residual, alignment)
CUTS = [(ratio, residual, align) for ratio in (0.5, 0.6) for residual in ("prune", "keep") for align in (1, 8, 16)]


def main(argv=None):
    from optimize import host

    from edgedl import _io, zoo
    from edgedl.convert import to_tflite
    from edgedl.errors import OptionError

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet8", help="zoo model (%(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="latency repeats (median taken) (%(default)s)")
    p.add_argument("--data-dir", help="data directory, to time int8 calibrated on real samples (default: $EDGEDL_DATA)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON to write (%(default)s)")
    args = p.parse_args(argv)

    model = zoo.get_model(args.model).build()
    reference = to_tflite(model, "none")
    int8 = int8_reference(model, args.model, args.data_dir)
    rows = []
    for ratio, residual, align in CUTS:
        try:
            row = cut_row(model, reference, ratio, residual, align=align, repeats=args.repeats, int8=int8)
        except OptionError as error:  # an alignment that keeps every group whole: recorded, not measured
            rows.append({"ratio": ratio, "residual": residual, "align": align, "error": str(error)})
            continue
        rows.append(row)
        print(f"{100 * ratio:.0f}% residual {residual:<5} align {align:<2}  MACs {row['macs_ratio']:.3f}x  "
              f"float32 {row['float32']['ratio']:.3f}x{_int8_text(row)}", flush=True)
    command = "python benchmarks/structured_align.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    _io.write_json(Path(args.out), {"command": command, "model": args.model, "rows": rows, "host": host()})
    print(f"wrote {args.out}")


def cut_row(model, reference: bytes, ratio, residual, *, align=1, layers=(), repeats=5, int8=None) -> dict:
    """Plan and rebuild one cut of ``model``; its kept widths, MACs and parameters against the model, and
    its float32 LiteRT latency against ``reference`` (the model's .tflite), paired as in optimize.py.
    With ``int8`` = (the model's int8 .tflite, calibration samples), the cut's int8 latency against it too."""
    from optimize import paired_latency

    from edgedl.convert import to_tflite
    from edgedl.optimize import metrics, structured

    the_plan = structured.plan_channels(model, structured.StructuredSpec(ratio, residual=residual, layers=layers,
                                                                         align=align))
    smaller = structured.rebuild(model, the_plan)
    row = {"ratio": ratio, "residual": residual, "align": align, "layers": dict(layers),
           "kept": {g.producers[0]: len(g.keep) for g in the_plan.groups.values() if g.keep is not None},
           "frozen_by_align": [g.producers[0] for g in the_plan.groups.values()
                               if g.reason and g.reason.endswith(f"(--structured-align {align})")],
           "macs_ratio": round(metrics.count_macs(smaller) / metrics.count_macs(model), 4),
           "params_ratio": round(smaller.count_params() / model.count_params(), 4),
           "float32": paired_latency(reference, to_tflite(smaller, "none"), repeats)}
    if int8 is not None:
        reference_int8, calibration = int8
        row["int8"] = paired_latency(reference_int8, to_tflite(smaller, "int8", calibration), repeats)
    return row


def _int8_text(row) -> str:
    return f"  int8 {row['int8']['ratio']:.3f}x" if "int8" in row else ""


def int8_reference(model, name: str, data_dir):
    """(``model``'s int8 .tflite, calibration samples) for :func:`cut_row`, calibrated on 200 samples drawn from
    the first 2,000 of its recipe's training split, as ``edgedl optimize --limit 2000`` would; None (said on stdout) without a
    data directory. A data directory without that data set exits with its one-line error.

    Real samples matter: calibrated on random data, every ResNet-8 cut timed 0.95-1.0x of the unpruned
    model in int8, while calibrated on CIFAR-10 the untrained stem-12 / s1-inside-6 / s2-inside-12 cut
    times 0.741x, as the same cut trained and fine-tuned for 110 epochs does (0.739x, one process).
    """
    import os

    from edgedl import zoo
    from edgedl.convert import to_tflite
    from edgedl.data import load_dataset
    from edgedl.errors import EdgeDLError
    from edgedl.optimize.measure import calibration_samples

    data_dir = data_dir or os.environ.get("EDGEDL_DATA")
    if not data_dir:
        print("no data directory (--data-dir or $EDGEDL_DATA): timing float32 only", flush=True)
        return None
    recipe = zoo.get_model(name).recipe
    try:
        data = load_dataset(recipe["dataset"], data_dir=data_dir, split=recipe["split"], limit=2000)
    except EdgeDLError as error:
        raise SystemExit(f"error: {error}") from None
    calibration = calibration_samples(data.x_train, 200, 0)
    return to_tflite(model, "int8", calibration), calibration


if __name__ == "__main__":
    main()
