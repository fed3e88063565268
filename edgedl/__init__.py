"""edgedl: from a Keras model to a measured result on an edge device.

The pipeline, one stage a module: ``data`` (real data sets) -> ``zoo`` / ``train`` (Keras models)
-> ``convert`` (.tflite with quantization) -> ``backends`` (LiteRT, TVM, ...) -> ``bench``.
Heavy toolchains are imported lazily inside the stage that needs them.
"""

__version__ = "0.1.0"

from edgedl.errors import EdgeDLError  # noqa: F401
