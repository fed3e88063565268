"""LiteRT backend: the ``.tflite`` itself, run by LiteRT with XNNPACK on CPUs."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from edgedl.backends.base import Backend, CompiledModel, check_one_input, check_outputs
from edgedl.runtime.engines import LiteRTEngine


class LiteRTBackend(Backend):
    name = "litert"
    extra = "runtime"

    def compile(self, tflite_path, target, out_dir, options):
        start = time.perf_counter()
        source = LiteRTEngine(tflite_path)
        check_one_input(tflite_path, [s.name for s in source.inputs])
        check_outputs(tflite_path, [s.name for s in source.outputs])
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tflite_path, out_dir / "model.tflite")
        xnnpack = bool(options.get("xnnpack", True))
        engine = LiteRTEngine(out_dir / "model.tflite", xnnpack=xnnpack)
        import ai_edge_litert

        return CompiledModel(
            backend=self.name, target=target.name, directory=out_dir, files=["model.tflite"],
            runtime={"engine": "litert", "model": "model.tflite", "xnnpack": xnnpack},
            inputs=engine.inputs, outputs=engine.outputs, options={"xnnpack": xnnpack},
            toolchain={"ai-edge-litert": getattr(ai_edge_litert, "__version__", "unknown")},
            compile_time_s=time.perf_counter() - start,
        )

    def load(self, compiled, num_threads=1):
        return LiteRTEngine(Path(compiled.directory) / compiled.runtime["model"], num_threads=num_threads,
                            xnnpack=compiled.runtime.get("xnnpack", True))
