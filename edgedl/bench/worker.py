"""The benchmark child process: ``python -m edgedl.bench.worker REQUEST.json RESULT.json``.

Runs :func:`edgedl.bench.core.measure` in a process of its own, so its memory figures are the
bundle's and not the harness's, and reports progress as JSON lines on stdout.
"""

from __future__ import annotations

import json
import sys


def main(argv=None) -> int:
    from edgedl import _io
    from edgedl.bench.core import load_samples, measure
    from edgedl.bench.options import BenchOptions
    from edgedl.errors import EdgeDLError

    request_path, result_path = (argv or sys.argv[1:])[:2]
    with open(request_path) as f:
        req = json.load(f)
    x = y = None
    if req.get("samples"):
        x, y = load_samples(req["samples"])

    def progress(done, total):
        print(json.dumps({"done": done, "total": total}), flush=True)

    try:
        options = BenchOptions(warmup=req["warmup"], runs=req["runs"], repeats=req["repeats"], threads=req["threads"],
                               profile=bool(req.get("profile")))
        result = measure(req["bundle"], options, x=x, y=y, progress=progress)
    except EdgeDLError as e:
        _io.write_json(result_path, {"error": str(e), "error_type": type(e).__name__})
        return 1
    _io.write_json(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
