"""TVM backend: Relax from the ``.tflite``, built by LLVM (or CUDA) into a shared library."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from edgedl import _lazy
from edgedl.backends.base import Backend, CompiledModel
from edgedl.errors import BackendError, UnsupportedOperatorError
from edgedl.runtime.engines import TVMEngine, TensorSpec


class TVMBackend(Backend):
    name = "tvm"
    extra = "tvm"

    def compile(self, tflite_path, target, out_dir, options):
        tvm = _lazy.require("tvm")
        tflite = _lazy.require("tflite")
        from tvm import relax
        from tvm.relax.frontend.tflite import from_tflite

        start = time.perf_counter()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        buf = Path(tflite_path).read_bytes()
        specs_in, specs_out = _tflite_io(tflite_path)
        try:
            mod = from_tflite(tflite.Model.GetRootAsModel(buf, 0))
        except Exception as e:
            msg = " ".join(str(e).split())
            raise UnsupportedOperatorError(f"TVM's TFLite frontend cannot import the model: {msg[:300]}") from None
        target_dict = dict(target.tvm["target"])
        host = target.tvm.get("host")
        tvm_target = tvm.target.Target(target_dict, host=host) if host else tvm.target.Target(target_dict)
        cross = target.tvm.get("cross_compiler")
        if cross and shutil.which(cross) is None:
            package = target.tvm.get("cross_package", cross)
            raise BackendError(
                f"target '{target.name}' needs the cross compiler {cross}, which is not installed; "
                f"install it with: apt-get install {package}"
            )
        try:
            with _lazy.quiet():
                ex = relax.build(mod, target=tvm_target)
        except Exception as e:
            raise BackendError(f"TVM build for '{target.name}' failed: {' '.join(str(e).split())[:300]}") from None
        lib = out_dir / "model.so"
        ex.export_library(str(lib))
        return CompiledModel(
            backend=self.name, target=target.name, directory=out_dir, files=["model.so"],
            runtime={"engine": "tvm", "library": "model.so", "device": "cpu"},
            inputs=specs_in, outputs=specs_out,
            options={"tvm_target": json.loads(json.dumps(target_dict)), "tuned": False},
            toolchain={"apache-tvm": tvm.__version__},
            compile_time_s=time.perf_counter() - start,
        )

    def load(self, compiled, num_threads=1):
        return TVMEngine(Path(compiled.directory) / compiled.runtime["library"], compiled.inputs, compiled.outputs,
                         device=compiled.runtime.get("device", "cpu"), num_threads=num_threads)


def _tflite_io(path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input/output specs of a .tflite, read with LiteRT (the reference for quantization parameters)."""
    from edgedl.runtime.engines import LiteRTEngine

    engine = LiteRTEngine(path)
    return engine.inputs, engine.outputs
