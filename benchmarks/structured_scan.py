"""Which structured cuts of a model are fast enough: float32 LiteRT latency of each cut, no training; write JSON.

A fine-tuning run of ResNet-8 takes about an hour on two cores, so a cut is worth fine-tuning only if
its latency meets the goal (0.6x of the unpruned model). Float32 latency does not depend on the
weights' values, so this plans and rebuilds each cut of the untrained zoo model (as
``--structured RATIO --structured-residual RESIDUAL --structured-layer LAYER=SHARE`` would) and times
it against the unpruned model: float32, one thread, batch 1, alternating in one process, median of
repeats (``benchmarks/optimize.py``'s ``paired_latency``). Ratios differ between hosts (ResNet-8's
stem-12 cut: 0.60x on an Intel Xeon, 0.63x on an AMD EPYC), so scan on the host that will measure.
With a data directory (``--data-dir`` or ``$EDGEDL_DATA``) int8 is timed too, calibrated on real
samples of the recipe's data set, which makes an untrained cut's int8 time stand for a trained one's
(``structured_align.int8_reference``).

    EDGEDL_DATA=/work/shared/data python benchmarks/structured_scan.py
    python benchmarks/structured_scan.py --cut stem12:conv0=0.25 --cut mine:conv0=0.25,s1_conv1=0.75
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "results" / "structured_scan.json"
# ResNet-8 cuts with the residual stream kept and half of each block's inside removed, but for the
# layers named: the stem (conv0, the first stage's residual stream) and each stage's inside (sN_conv1).
# Each value is LAYER=SHARE entries, as --structured-layer takes them.
CUTS = {
    "inside50": "",
    "stem12": "conv0=0.25",
    "stem11": "conv0=0.3125",
    "stem10": "conv0=0.375",
    "stem8": "conv0=0.5",
    "stem12_s1inside6": "conv0=0.25,s1_conv1=0.625",
    "stem12_s1inside4": "conv0=0.25,s1_conv1=0.75",
    "stem12_s2inside12": "conv0=0.25,s2_conv1=0.625",
    "stem12_s1inside6_s2inside12": "conv0=0.25,s1_conv1=0.625,s2_conv1=0.625",
    "stem12_s1inside6_s2inside14": "conv0=0.25,s1_conv1=0.625,s2_conv1=0.5625",
    "stem12_s1inside6_s3inside28": "conv0=0.25,s1_conv1=0.625,s3_conv1=0.5625",
    "stem12_s3inside24": "conv0=0.25,s3_conv1=0.625",
    "stem10_s1inside6": "conv0=0.375,s1_conv1=0.625",
    "stem10_s2inside12": "conv0=0.375,s2_conv1=0.625",
    "stem8_s1inside12": "conv0=0.5,s1_conv1=0.25",
}


def main(argv=None):
    from optimize import host
    from structured_align import _int8_text, cut_row, int8_reference

    from edgedl import _io, zoo
    from edgedl.convert import to_tflite
    from edgedl.errors import EdgeDLError
    from edgedl.optimize import structured

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet8", help="zoo model (%(default)s)")
    p.add_argument("--ratio", type=float, default=0.5, help="share removed where no layer is named (%(default)s)")
    p.add_argument("--residual", default="keep", help="as --structured-residual: prune, keep or a share (%(default)s)")
    p.add_argument("--cut", action="append", metavar="NAME:LAYER=SHARE[,LAYER=SHARE]",
                   help="a cut to time (repeatable; default: the ResNet-8 cuts in CUTS)")
    p.add_argument("--repeats", type=int, default=15, help="latency repeats (median taken) (%(default)s)")
    p.add_argument("--data-dir", help="data directory, to time int8 calibrated on real samples (default: $EDGEDL_DATA)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON to write (%(default)s)")
    args = p.parse_args(argv)
    cuts = dict(c.partition(":")[::2] for c in args.cut) if args.cut else CUTS
    try:  # the project's own parsing, so a bad option is the one line the CLI would print
        structured.residual_ratio(args.residual)
        layers = {name: tuple(structured.layer_shares(filter(None, text.split(","))).items())
                  for name, text in cuts.items()}
    except EdgeDLError as error:
        raise SystemExit(f"error: {error}") from None

    model = zoo.get_model(args.model).build()
    reference = to_tflite(model, "none")
    int8 = int8_reference(model, args.model, args.data_dir)
    rows = []
    for name, text in cuts.items():
        try:
            row = cut_row(model, reference, args.ratio, args.residual, layers=layers[name], repeats=args.repeats, int8=int8)
        except EdgeDLError as error:  # a layer the model does not have: recorded, not measured
            rows.append({"cut": name, "layers": text, "error": str(error)})
            print(f"{name:<32} {error}", flush=True)
            continue
        rows.append({"cut": name, **row})
        print(f"{name:<32} kept {row['kept']}  MACs {row['macs_ratio']:.3f}x  params {row['params_ratio']:.3f}x  "
              f"float32 {row['float32']['ratio']:.3f}x{_int8_text(row)}", flush=True)
    command = "python benchmarks/structured_scan.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    _io.write_json(Path(args.out), {"command": command, "model": args.model, "ratio": args.ratio,
                                    "residual": args.residual, "rows": rows, "host": host()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
