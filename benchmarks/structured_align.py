"""What ``--structured-align`` costs in LiteRT latency and buys in MACs on ResNet-8; write JSON.

LiteRT's float32 convolutions compute output channels in tiles (16 on x86-64 with AVX-512, see
``benchmarks/conv_channels.py``), so rounding the channels a structured cut keeps up to a multiple
of the tile should add capacity (MACs, parameters) for less time than it adds MACs: the extra
output channels are computed anyway, only the layers reading them pay for wider inputs.

This plans ResNet-8 cuts with and without an alignment, rebuilds them and times each against the
unpruned model (float32, one thread, batch 1, alternating in one process, median of repeats).
Float32 latency does not depend on the weights' values, so the models are untrained and nothing is
fine-tuned: this measures the cost side only; what the kept channels buy in accuracy needs a
fine-tuning run (``benchmarks/optimize.py``). int8 is left out: converted from these untrained
models (random calibration data), every cut measured about the unpruned model's time (0.95-1.0x,
where trained cuts in results/optimize.json measure 0.6-0.8x), so those timings do not stand for
a trained model's.

    python benchmarks/structured_align.py
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
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON to write (%(default)s)")
    args = p.parse_args(argv)

    model = zoo.get_model(args.model).build()
    reference = to_tflite(model, "none")
    rows = []
    for ratio, residual, align in CUTS:
        try:
            row = cut_row(model, reference, ratio, residual, align=align, repeats=args.repeats)
        except OptionError as error:  # an alignment that keeps every group whole: recorded, not measured
            rows.append({"ratio": ratio, "residual": residual, "align": align, "error": str(error)})
            continue
        rows.append(row)
        print(f"{100 * ratio:.0f}% residual {residual:<5} align {align:<2}  MACs {row['macs_ratio']:.3f}x  "
              f"float32 {row['float32']['ratio']:.3f}x", flush=True)
    command = "python benchmarks/structured_align.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    _io.write_json(Path(args.out), {"command": command, "model": args.model, "rows": rows, "host": host()})
    print(f"wrote {args.out}")


def cut_row(model, reference: bytes, ratio, residual, *, align=1, layers=(), repeats=5) -> dict:
    """Plan and rebuild one cut of ``model``; its kept widths, MACs and parameters against the model, and
    its float32 LiteRT latency against ``reference`` (the model's .tflite), paired as in optimize.py."""
    from optimize import paired_latency

    from edgedl.convert import to_tflite
    from edgedl.optimize import metrics, structured

    the_plan = structured.plan(model, ratio, residual=residual, layers=layers, align=align)
    smaller = structured.rebuild(model, the_plan)
    return {"ratio": ratio, "residual": residual, "align": align, "layers": dict(layers),
            "kept": {g.producers[0]: len(g.keep) for g in the_plan.groups.values() if g.keep is not None},
            "frozen_by_align": [g.producers[0] for g in the_plan.groups.values()
                                if g.reason and g.reason.endswith(f"(--structured-align {align})")],
            "macs_ratio": round(metrics.count_macs(smaller) / metrics.count_macs(model), 4),
            "params_ratio": round(smaller.count_params() / model.count_params(), 4),
            "float32": paired_latency(reference, to_tflite(smaller, "none"), repeats)}


if __name__ == "__main__":
    main()
