"""edgedl: from a Keras model to a measured result on an edge device.

The pipeline, one stage a module, each handing the next a plain artifact:

    >>> import edgedl
    >>> trained = edgedl.train("lenet", edgedl.TrainOptions(dataset="digits"))    # doctest: +SKIP
    >>> trained.save("lenet.keras")                                               # doctest: +SKIP
    >>> report = edgedl.optimize("lenet.keras", edgedl.OptimizeOptions(            # doctest: +SKIP
    ...     prune=0.8, quantize="int8", out_dir="lenet-opt"))
    >>> bundle = edgedl.compile_model("lenet.keras", "x86_64", "lenet.edgedl",    # doctest: +SKIP
    ...                               edgedl.CompileOptions(quantize="int8"))
    >>> print("\n".join(bundle.summary()))                                        # doctest: +SKIP
    >>> result = edgedl.bench("lenet.edgedl", edgedl.BenchOptions(runs=200))      # doctest: +SKIP
    >>> print(result.to_text())                                                   # doctest: +SKIP
    >>> model = edgedl.runtime.load("lenet.edgedl")                               # doctest: +SKIP
    >>> probs = model.predict(images)                                             # doctest: +SKIP

The public API (everything else is internal and may change):

* ``edgedl.train(model, options)``: train a zoo model on a data set (:mod:`edgedl.train`, options in
  :class:`TrainOptions`);
* ``edgedl.optimize(model, options, ...)``: prune, fine-tune and quantize a Keras model
  (:mod:`edgedl.optimize`, options in :class:`OptimizeOptions`);
* ``edgedl.compile_model(model, target, out, options)``: compile for a target into a checked,
  hashed :class:`Bundle` (:mod:`edgedl.compile`, options in :class:`CompileOptions`);
* ``edgedl.bench(bundle, options)``: measure a bundle here or on a device (:mod:`edgedl.bench`,
  options in :class:`BenchOptions`);
* ``edgedl.load_target(name_or_toml)``: a device's facts (:mod:`edgedl.targets`);
* ``edgedl.runtime.load(bundle)``: run a bundle in an application (:mod:`edgedl.runtime`, which
  imports no TensorFlow).

``edgedl.train``, ``edgedl.optimize`` and ``edgedl.bench`` are both the stage's module and, called,
its function. Heavy toolchains (TensorFlow, TVM, Vela, TFLite Micro) are imported lazily inside the
stage that needs them, so importing edgedl is cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from edgedl.errors import EdgeDLError  # noqa: E402,F401

# name -> (module, attribute): imported on first use
_LAZY = {
    "compile_model": ("edgedl.compile", "compile_model"),
    "CompileOptions": ("edgedl.compile", "CompileOptions"),
    "TrainOptions": ("edgedl.train", "TrainOptions"),
    "OptimizeOptions": ("edgedl.optimize", "OptimizeOptions"),
    "BenchOptions": ("edgedl.bench.options", "BenchOptions"),
    "BenchResult": ("edgedl.bench", "BenchResult"),
    "Bundle": ("edgedl.bundle", "Bundle"),
    "open_bundle": ("edgedl.bundle", "open_bundle"),
    "load_target": ("edgedl.targets", "load_target"),
    "Target": ("edgedl.targets", "Target"),
}
_STAGES = ("train", "optimize", "bench", "runtime")

__all__ = ["__version__", "EdgeDLError", *_STAGES, *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    if name in _STAGES:
        return importlib.import_module(f"edgedl.{name}")
    raise AttributeError(f"module 'edgedl' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
