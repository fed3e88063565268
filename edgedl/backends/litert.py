"""LiteRT backend: the ``.tflite`` itself, run by LiteRT with XNNPACK on CPUs."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from edgedl.backends.base import Backend, CompiledModel, check_inputs, check_outputs
from edgedl.errors import BackendError
from edgedl.runtime.engines import LiteRTEngine


class LiteRTBackend(Backend):
    name = "litert"
    extra = "runtime"

    def unsupported_ops(self, graph, target):
        """The operators LiteRT's interpreter cannot prepare (a custom operator it has no kernel for,
        such as Vela's ``ethos-u``), found by allocating the model as compile does.

        Raises:
            BackendError: LiteRT cannot load the model for a reason no operator names.
        """
        from edgedl._lazy import quiet
        from edgedl.runtime.engines import litert_interpreter_class

        path = Path(graph.path)
        if not path.is_file():
            return {}
        try:
            with quiet():
                litert_interpreter_class()(model_path=str(path)).allocate_tensors()
        except (ValueError, RuntimeError) as e:
            text = " ".join(str(e).split())
            custom = re.search(r"unresolved custom op: ([^\s]+?)\.?(\s|$)", text)
            if custom:
                return {custom.group(1): "a custom operator LiteRT has no kernel for"}
            node = re.search(r"Node number \d+ \((\w+)\) failed to prepare", text)
            if node:
                return {node.group(1): f"LiteRT cannot prepare it: {text[:200]}"}
            raise BackendError(f"LiteRT cannot load {path.name}: {text[:200]}") from None
        return {}

    def compile(self, tflite_path, target, out_dir, options):
        start = time.perf_counter()
        source = LiteRTEngine(tflite_path)
        check_inputs(tflite_path, [s.name for s in source.inputs])
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

    def reference_kernels(self, compiled):
        """The build is the source .tflite on LiteRT: its kernels are the ones it runs with."""
        return "xnnpack" if compiled.runtime.get("xnnpack", True) else "builtin"

    def load(self, compiled, num_threads=1):
        return LiteRTEngine(Path(compiled.directory) / compiled.runtime["model"], num_threads=num_threads,
                            xnnpack=compiled.runtime.get("xnnpack", True))
