"""How a Conv2D's LiteRT latency follows its channel counts on this CPU; write JSON.

Structured pruning removes filters to save time, but a runtime computes output channels in tiles:
on x86 with AVX-512, XNNPACK's float32 convolution kernels produce 16 output channels at a time,
so a layer cut from 16 to 8 filters costs as much as before, while halving its *input* channels
halves its time. This measures one 3x3 Conv2D (32x32 feature map, ResNet-8's first stage) at
several (input, output) channel counts against the 16 -> 16 layer, both in the same run,
alternating, one thread, batch 1, median of repeats; float32 and int8.

It is why ``benchmarks/optimize.py`` measures ResNet-8 with the first stage's residual stream cut
(``--structured-layer conv0=0.5``): that narrows the inputs of the stage's convolutions, not just
their outputs.

How int8 behaves depends on the host. results/conv_channels.json was measured on an x86-64 host
where an int8 layer's time also followed its input channels (8 -> 16: 0.75x); on an Intel Xeon with
AVX-512 VNNI and AMX (results/conv_channels_xeon_amx.json) every int8 layer of the 32x32 map took
about 40 us whatever its channels (0.94-1.05x from a quarter to twice the MACs), so there channel
pruning buys float32 time only. The JSON's ``host`` names the CPU and its vector extensions.

    python benchmarks/conv_channels.py
    python benchmarks/conv_channels.py --out benchmarks/results/conv_channels_xeon_amx.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "results" / "conv_channels.json"
REFERENCE = (16, 16)
SHAPES = [(16, 4), (16, 8), (16, 12), (16, 24), (16, 32), (8, 16), (8, 8), (4, 16), (12, 16), (32, 16)]


def conv_model(cin: int, cout: int, size: int):
    import keras

    inputs = keras.Input((size, size, cin), batch_size=1)
    return keras.Model(inputs, keras.layers.Conv2D(cout, 3, padding="same", name="conv")(inputs))


def main(argv=None):
    from optimize import host, paired_latency

    from edgedl import _io
    from edgedl.convert import to_tflite

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=32, help="feature map height and width (%(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="latency repeats (median taken) (%(default)s)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON to write (%(default)s)")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)

    def tflite(cin, cout, fmt):
        model = conv_model(cin, cout, args.size)
        calibration = rng.random((50, args.size, args.size, cin), dtype=np.float32)
        return to_tflite(model, "none") if fmt == "float32" else to_tflite(model, "int8", calibration)

    rows = []
    reference = {fmt: tflite(*REFERENCE, fmt) for fmt in ("float32", "int8")}
    for cin, cout in SHAPES:
        row = {"in_channels": cin, "out_channels": cout,
               "macs_ratio": round(cin * cout / (REFERENCE[0] * REFERENCE[1]), 4)}
        for fmt in ("float32", "int8"):
            row[fmt] = paired_latency(reference[fmt], tflite(cin, cout, fmt), args.repeats)
        rows.append(row)
        print(f"{cin:>3} -> {cout:<3} MACs {row['macs_ratio']:.2f}x  float32 {row['float32']['ratio']:.2f}x  "
              f"int8 {row['int8']['ratio']:.2f}x", flush=True)
    command = "python benchmarks/conv_channels.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    _io.write_json(Path(args.out), {"command": command, "reference": {"in_channels": REFERENCE[0], "out_channels": REFERENCE[1],
                                                                      "size": args.size, "kernel": 3},
                                    "rows": rows, "host": host()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
