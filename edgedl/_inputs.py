"""Samples for models with several inputs: one array (N, ...) for a one-input model, a list of arrays
(each (N, ...), the same N) for a model with several, in the order of the model's inputs.

A model's inputs are not in the same order everywhere: the TFLite converter may order a Keras
model's inputs by name, ONNX keeps its graph's order. :func:`order_for` matches them by name (the
converter names a Keras input ``a`` as ``serving_default_a:0``), else by shape where that leaves no
doubt, and says which input it cannot place.
"""

from __future__ import annotations

import re

import numpy as np

from edgedl.errors import BackendError


def as_list(x) -> list:
    """The arrays of ``x``: itself in a list for one array."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


def like(x, arrays: list):
    """``arrays`` in the form of ``x``: one array when ``x`` was one, else the list."""
    return arrays if isinstance(x, (list, tuple)) else arrays[0]


def count(x) -> int:
    """How many samples ``x`` holds."""
    return len(as_list(x)[0])


def take(x, index):
    """``x[index]`` of every array of ``x`` (a slice, or an index array), in the form of ``x``."""
    return like(x, [a[index] for a in as_list(x)])


def sample_shapes(x) -> list[tuple]:
    """One sample's shape per input."""
    return [tuple(a.shape[1:]) for a in as_list(x)]


def short_name(name: str) -> str:
    """An input's name as its user wrote it: without the converter's ``serving_default_`` and the
    tensor suffix ``:0``.

    Example:
        >>> short_name("serving_default_audio:0")
        'audio'
    """
    name = re.sub(r":\d+$", "", str(name))
    return name.removeprefix("serving_default_")


def order_for(names: list[str], shapes: list[tuple], specs, where: str) -> list[int]:
    """For each of ``specs`` (an engine's inputs, TensorSpec-like with ``name`` and batch-first
    ``shape``), the index of the input among ``names``/``shapes`` (the samples' order) that feeds it.

    Raises:
        BackendError: the counts differ, or an input can be matched neither by name nor by shape.

    Example:
        >>> from types import SimpleNamespace as S
        >>> order_for(["a", "b"], [(8,), (4,)], [S(name="serving_default_b:0", shape=(1, 4)),
        ...                                      S(name="serving_default_a:0", shape=(1, 8))], "m")
        [1, 0]
    """
    specs = list(specs)
    if len(specs) != len(names):
        raise BackendError(f"{where} takes {len(specs)} input(s), the samples have {len(names)}")
    if len(specs) == 1:
        return [0]
    wanted = [short_name(n) for n in names]
    order = []
    for spec in specs:
        short = short_name(spec.name)
        by_name = [i for i, n in enumerate(wanted) if n == short]
        by_shape = [i for i, s in enumerate(shapes) if tuple(s) == tuple(spec.shape[1:])]
        found = by_name or (by_shape if len(by_shape) == 1 else [])
        if len(found) != 1 or found[0] in order:
            raise BackendError(f"{where}: cannot tell which of the inputs ({', '.join(map(repr, wanted))}) feeds its "
                               f"input '{spec.name}' of shape {tuple(spec.shape)} (neither its name nor its shape "
                               "is unique among them)")
        order.append(found[0])
    return order


def reorder(x, order: list[int]):
    """The arrays of ``x`` in ``order`` (from :func:`order_for`)."""
    arrays = as_list(x)
    return like(x, [arrays[i] for i in order])


def as_float(x):
    """Every array of ``x`` as float32."""
    return like(x, [np.asarray(a, dtype=np.float32) for a in as_list(x)])
