"""Backends: one module per toolchain behind one interface (``base.Backend``), registered by name.

A new backend is one new file here plus one line in ``REGISTRY``.
"""

from __future__ import annotations

import importlib

from edgedl.errors import OptionError

REGISTRY = {
    "litert": "edgedl.backends.litert:LiteRTBackend",
    "tvm": "edgedl.backends.tvm:TVMBackend",
    "vela": "edgedl.backends.vela:VelaBackend",
    "tflm": "edgedl.backends.tflm:TFLMBackend",
    "onnxruntime": "edgedl.backends.onnxruntime:ONNXRuntimeBackend",
}


def get_backend(name: str):
    """The backend called ``name`` (an instance).

    Raises:
        OptionError: unknown backend name (the known ones are listed).
    """
    if name not in REGISTRY:
        raise OptionError(f"unknown backend '{name}'; known backends: {', '.join(sorted(REGISTRY))}")
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)()


def backend_names() -> list[str]:
    return sorted(REGISTRY)
