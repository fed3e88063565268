"""Lazy imports of the heavy toolchains, each failing with the extra that installs it."""

from __future__ import annotations

import importlib
import logging
import os

from edgedl.errors import MissingDependencyError

EXTRAS = {
    "tensorflow": "keras", "keras": "keras", "sklearn": "keras", "matplotlib": "keras",
    "tvm": "tvm", "tflite": "tvm", "ai_edge_litert": "runtime", "ethosu": "npu",
    "tflite_micro": "micro", "onnx": "onnx", "onnxruntime": "onnx",
}


def require(module: str):
    """Import ``module`` or raise MissingDependencyError naming the extra that installs it."""
    top = module.split(".")[0]
    if top in ("tensorflow", "keras"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        if top == "tensorflow" and "tensorflow" not in __import__("sys").modules:
            with quiet():  # TensorFlow's C++ start-up chatter (oneDNN, absl) on stderr
                mod = importlib.import_module(module)
        else:
            mod = importlib.import_module(module)
    except ImportError as e:
        if e.name and e.name.split(".")[0] == top:
            raise MissingDependencyError(top, EXTRAS.get(top, "all")) from None
        raise
    if top == "tensorflow":
        mod.get_logger().setLevel(logging.ERROR)
    return mod


def keras():
    require("tensorflow")
    return require("keras")


def tf():
    return require("tensorflow")


class captured_output:
    """Capture what C/C++ code writes on file descriptors 1 and 2; the text is in ``.text`` afterwards.

    Example:
        >>> with captured_output() as out:   # doctest: +SKIP
        ...     interpreter.print_allocations()
        >>> "Arena" in out.text               # doctest: +SKIP
    """

    def __enter__(self):
        import sys
        import tempfile

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        self.text = ""
        self._saved = [os.dup(1), os.dup(2)]
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 1)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        import sys

        _flush_c_stdio()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        return False


class quiet(captured_output):
    """Silence what C++ toolchains print on file descriptors 1 and 2 (TF converter chatter).

    Python-level logging still works; the captured text goes to the debug log.
    """

    def __exit__(self, *exc):
        super().__exit__(*exc)
        if self.text.strip():
            logging.getLogger("edgedl.toolchain").debug("%s", self.text[-4000:])
        return False


def _flush_c_stdio():
    """fflush(NULL): C's stdout is block-buffered when redirected to a file."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:
        pass
