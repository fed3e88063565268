"""Unstructured magnitude pruning for Keras 3 models (TFMOT does not support Keras 3).

The smallest-magnitude weights of each kernel are set to zero, a little more at a time over a
fine-tuning run (a polynomial-decay schedule, or all at once with a constant one). A :class:`Masker`
keeps the masks and reapplies them after every training batch, so weights the optimizer moves stay
zero; at the end the masks are applied one last time and the model is copied into a plain Keras
model, with no wrappers and no optimizer state: the zeros are simply part of its weights.

With ``block=N`` (> 1) weights are pruned N at a time: runs of N neighbours along the input
channels, which is the axis .tflite files store contiguously (``[out, in]`` for fully connected,
``[out, h, w, in]`` for convolutions), so the zeros of a block sit side by side in the file and
compress far better than scattered ones (and suit block-sparse kernels). Blocks are ranked by the
mean magnitude of their weights. Which axis is the input's comes from the layer (see
:func:`input_axes`): the second-to-last for Dense (``[in, out]``), convolutions (``[h, w, in, out]``)
and recurrent kernels, and for an EinsumDense the axes its equation sums over: ``d_model`` of an
attention query, key or value kernel (``[d_model, heads, key_dim]``), and ``heads`` and
``value_dim`` together, as one axis, of its output kernel (``[heads, value_dim, d_model]``).

What is pruned: the kernels of Dense, Conv1D/2D/3D, DepthwiseConv1D/2D, SeparableConv1D/2D, the
input and recurrent kernels of LSTM, GRU and SimpleRNN, the kernels of EinsumDense layers that
contract an axis (a matrix product; an element-wise one, such as a learned per-position scale, is a
scale, not a weight matrix), and the query, key, value and output kernels of MultiHeadAttention
(EinsumDense layers inside it, pruned as one layer). Biases are never pruned. Every other layer with
weights is listed, with the reason, in :attr:`PruneResult.skipped`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from edgedl import _lazy
from edgedl.errors import ModelError, OptionError
from edgedl.optimize import keras_graph
from edgedl.optimize.metrics import KERNEL_NAMES

log = logging.getLogger(__name__)

PRUNABLE_KINDS = ("Dense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D",
                  "SeparableConv1D", "SeparableConv2D", "LSTM", "GRU", "SimpleRNN", "EinsumDense",
                  "MultiHeadAttention")
SPARSITY_SCHEDULES = ("polynomial", "constant")
SCOPES = ("layer", "global", "erk")
MASK_SCOPES = ("layer", "global")
MAX_BLOCK = 64

# The polynomial schedule reaches the target this far into fine-tuning; the rest recovers at it.
END_FRACTION = 0.7
# ... updating the masks this many times on the way.
NUM_UPDATES = 10

_NOT_PRUNED = {
    "BatchNormalization": "normalization scale, offset and statistics are one number per channel, not a "
                          "weight matrix (folded into the layer before it on export)",
    "LayerNormalization": "normalization scale and offset are one number per feature, not a weight matrix",
    "GroupNormalization": "normalization scale and offset are one number per feature, not a weight matrix",
    "Embedding": "embedding tables are looked up, not multiplied; pruning them saves no compute",
    "PReLU": "PReLU slopes are one number per feature, not a weight matrix",
}


def check_fraction(value, option: str) -> float:
    """``value`` as a float strictly between 0 and 1, else an OptionError naming ``option``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{option} must be a number between 0 and 1 (exclusive), got {value!r}") from None
    if not 0.0 < v < 1.0:
        raise OptionError(f"{option} must be between 0 and 1 (exclusive), got {value:g}")
    return v


def layer_shares(layers, option: str = "--structured-layer", zero: str = "keeps its channels whole") -> dict[str, float]:
    """``layers`` ((name, fraction) pairs, or ``NAME=FRACTION`` strings) as {name: fraction in [0, 1)};
    OptionError naming ``option`` and the entry otherwise (``zero`` says what a share of 0 means)."""
    shares: dict[str, float] = {}
    for entry in layers or ():
        if isinstance(entry, str):
            name, sep, value = entry.partition("=")
            if not sep or not name.strip():
                raise OptionError(f"{option} takes NAME=FRACTION (e.g. conv0=0.5), got '{entry}'")
            entry = (name.strip(), value.strip())
        name, value = entry
        try:
            share = 0.0 if value == "keep" else float(value)
        except (TypeError, ValueError):
            share = -1.0
        if not 0.0 <= share < 1.0:
            raise OptionError(f"{option} {name} takes a fraction in [0, 1) (0 {zero}), got {value!r}")
        if name in shares and shares[name] != share:
            raise OptionError(f"{option} {name} is given twice ({shares[name]:g} and {share:g})")
        shares[name] = share
    return shares


def prune_layer_shares(layers) -> dict[str, float]:
    """--prune-layer's ``(name, sparsity)`` pairs or ``NAME=FRACTION`` strings as {name: sparsity in [0, 1)}."""
    return layer_shares(layers, "--prune-layer", "keeps the layer dense")


@dataclass(frozen=True)
class Schedule:
    """How sparsity grows over fine-tuning steps.

    ``polynomial``: from 0 at ``begin_step`` to the target at ``end_step`` as
    ``target * (1 - (1 - progress) ** power)`` (fast at first, gentle near the end), with the masks
    recomputed every ``frequency`` steps. ``constant``: the target from the first step on.
    """

    kind: str = "polynomial"
    begin_step: int = 0
    end_step: int = 1000
    frequency: int = 100
    power: float = 3.0

    def fraction(self, step: int) -> float:
        """The fraction of the target sparsity to hold at ``step``."""
        if self.kind == "constant" or step >= self.end_step:
            return 1.0
        if step < self.begin_step:
            return 0.0
        progress = (step - self.begin_step) / max(1, self.end_step - self.begin_step)
        return 1.0 - (1.0 - progress) ** self.power

    def updates_at(self, step: int) -> bool:
        """Whether the masks are recomputed after ``step`` steps."""
        if self.kind == "constant":
            return False
        if step == self.end_step:
            return True
        return self.begin_step <= step < self.end_step and (step - self.begin_step) % self.frequency == 0


def make_schedule(kind: str, total_steps: int) -> Schedule:
    """A schedule for ``total_steps`` fine-tuning steps: ``polynomial`` or ``constant``."""
    if kind not in SPARSITY_SCHEDULES:
        raise OptionError(f"unknown pruning schedule '{kind}'; choose one of {', '.join(SPARSITY_SCHEDULES)}")
    end = max(1, round(total_steps * END_FRACTION))
    return Schedule(kind=kind, begin_step=0, end_step=end, frequency=max(1, end // NUM_UPDATES))


@dataclass(frozen=True)
class PruneSpec:
    """What unstructured pruning should reach, and how.

    ``sparsity``: the fraction of kernel weights to zero, in (0, 1), for every prunable layer, or
    ``{layer_name: sparsity}``; ``scope``: ``layer``, ``global`` or ``erk``; ``schedule``: ``polynomial`` or
    ``constant``; ``block``: prune runs of this many weights along the input channels (1: single weights);
    ``layers``: ``(name, sparsity)`` pairs that override ``sparsity`` for those layers (0 keeps a layer
    dense); with ``sparsity`` None only these layers are pruned.

    A spec is checked when it is made (OptionError for anything out of range), so whatever takes one
    takes it as it is.

    Example:
        >>> PruneSpec(0.8, scope="erk", block=4).scope
        'erk'
    """

    sparsity: float | dict | None
    scope: str = "layer"
    schedule: str = "polynomial"
    block: int = 1
    layers: tuple = ()

    def __post_init__(self):
        option = "--prune"
        shares = prune_layer_shares(self.layers)
        if shares and self.scope == "global":
            raise OptionError("--prune-layer sets one layer's sparsity, but --prune-scope global holds one magnitude "
                              "threshold over all layers: use --prune-scope layer or erk")
        if self.sparsity is None:
            if not shares:
                raise OptionError("nothing to prune: give --prune FRACTION or --prune-layer NAME=FRACTION")
            dense = [name for name, share in shares.items() if share == 0]
            if dense:
                raise OptionError(f"--prune-layer {dense[0]}=0 keeps a layer dense under --prune, but --prune is not "
                                  "given (without it only the named layers are pruned): leave the layer out")
        elif isinstance(self.sparsity, dict):
            if self.scope in ("global", "erk"):
                raise OptionError(f"{self.scope} pruning takes one sparsity for all layers, not one per layer")
            for name, v in self.sparsity.items():
                check_fraction(v, f"{option} for layer '{name}'")
        else:
            check_fraction(self.sparsity, option)
        if self.scope not in SCOPES:
            raise OptionError(f"unknown pruning scope '{self.scope}'; choose one of {', '.join(SCOPES)}")
        if self.schedule not in SPARSITY_SCHEDULES:
            raise OptionError(f"unknown pruning schedule '{self.schedule}'; choose one of {', '.join(SPARSITY_SCHEDULES)}")
        if isinstance(self.block, bool) or not isinstance(self.block, int) or not 1 <= self.block <= MAX_BLOCK:
            raise OptionError(f"--prune-block must be a whole number from 1 to {MAX_BLOCK}, got {self.block!r}")
        object.__setattr__(self, "layers", tuple(shares.items()))


def erk_targets(kernels: dict[str, list], sparsity: float) -> dict[str, float]:
    """Per-layer sparsities that average to ``sparsity`` over all weights, small layers kept denser.

    The Erdos-Renyi-Kernel allocation (Evci et al., "Rigging the Lottery", 2020): a layer's density
    is proportional to (sum of its kernel's dimensions) / (their product), so a 3x3 depthwise kernel
    or a classifier keeps far more of its few weights than a wide pointwise or dense layer; layers
    that would need a density above 1 stay dense and the rest share what is left.
    """
    shapes = {name: [tuple(int(d) for d in v.shape) for v in vs] for name, vs in kernels.items()}
    sizes = {name: sum(int(np.prod(s)) for s in ss) for name, ss in shapes.items()}
    raw = {name: sum(sum(s) for s in ss) / sizes[name] for name, ss in shapes.items()}
    budget = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        rest = [n for n in sizes if n not in dense]
        eps = (budget - sum(sizes[n] for n in dense)) / sum(raw[n] * sizes[n] for n in rest)
        over = {n for n in rest if eps * raw[n] > 1.0}
        if not over:
            break
        dense |= over
    return {n: 0.0 if n in dense else float(1.0 - eps * raw[n]) for n in sizes}


def prunable_kind(layer) -> str | None:
    """The Keras layer type (Dense, Conv2D ...) whose kernels ``layer`` has, if edgedl prunes that type."""
    for cls in type(layer).__mro__:
        if cls.__name__ in PRUNABLE_KINDS and (cls.__module__ or "").startswith("keras."):
            return cls.__name__
    return None


def _layers(model):
    """(step, layer) of every layer call, nested models excluded."""
    return [(s, s.layer) for s in keras_graph.trace(model)]


def find_prunable(model) -> tuple[dict[str, list], list[dict]]:
    """The kernels that can be pruned, by layer name, and the layers with weights that cannot be.

    Returns:
        ``(kernels, skipped)``: ``kernels`` maps a layer name to its prunable variables;
        ``skipped`` lists ``{"layer", "kind", "reason"}`` for every other layer that holds weights.
    """
    kernels: dict[str, list] = {}
    skipped: list[dict] = []
    for step, layer in _layers(model):
        if not layer.weights:
            continue
        found = [w for w in layer.weights if w.name in KERNEL_NAMES] if prunable_kind(layer) else []
        if found and prunable_kind(layer) == "EinsumDense" and not _contracts(layer.equation):
            skipped.append({"layer": step.name, "kind": step.kind, "reason": (
                f"EinsumDense '{layer.equation}' contracts no axis: its kernel scales the input element by "
                "element (e.g. a learned per-position scale), it is not a weight matrix")})
            continue
        if found:
            kernels[step.name] = found
            continue
        reason = _NOT_PRUNED.get(step.kind) or (
            f"'{step.kind}' is not a layer type edgedl prunes (it prunes the kernels of "
            f"{', '.join(PRUNABLE_KINDS)})"
        )
        skipped.append({"layer": step.name, "kind": step.kind, "reason": reason})
    return kernels, skipped


def _contracts(equation: str) -> bool:
    """Whether an einsum ``x,kernel->out`` sums over an index (one in the kernel but not in the output)."""
    return bool(einsum_input_axes(equation))


def einsum_input_axes(equation: str) -> tuple[int, ...]:
    """The kernel axes an einsum ``x,kernel->out`` sums over (those it contracts with the input).

    Example:
        >>> einsum_input_axes("abc,cde->abde")  # an attention query: kernel [d_model, heads, key_dim]
        (0,)
        >>> einsum_input_axes("abcd,cde->abe")  # its output: kernel [heads, value_dim, d_model]
        (0, 1)
    """
    inputs, out = equation.replace(" ", "").split("->")
    kernel = inputs.split(",")[1]
    return tuple(i for i, letter in enumerate(kernel) if letter not in out)


def input_axes(model) -> dict[str, list[tuple[int, ...]]]:
    """For each prunable layer, by name, the input axes of each of its kernels (as :func:`find_prunable`
    lists them): the axes that meet the layer's input, along which ``block`` pruning cuts its runs.

    An EinsumDense kernel's are the axes its equation sums over (a MultiHeadAttention's four kernels
    are those of its EinsumDense projections); every other kernel's is its second-to-last axis
    (``[in, out]`` for Dense and recurrent kernels, ``[*window, in, out]`` for convolutions).

    Example:
        >>> input_axes(transformer)["attention"]  # doctest: +SKIP
        [(0,), (0,), (0,), (0, 1)]
    """
    kernels, _ = find_prunable(model)
    layers = {step.name: layer for step, layer in _layers(model) if step.name in kernels}
    return {name: [_kernel_input_axes(layers[name], v) for v in variables] for name, variables in kernels.items()}


def _kernel_input_axes(layer, variable) -> tuple[int, ...]:
    kind = prunable_kind(layer)
    einsums = [layer] if kind == "EinsumDense" else []
    if kind == "MultiHeadAttention":  # as edgedl.optimize.metrics counts its MACs: its four projections
        einsums = [layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense]
    for dense in einsums:
        if dense.kernel is variable:
            return einsum_input_axes(dense.equation)
    return (len(variable.shape) - 2,) if len(variable.shape) >= 2 else ()


def resolve_targets(kernels: dict[str, list], sparsity, option: str = "--prune", scope: str = "layer",
                    layers=()) -> dict[str, float]:
    """Per-layer target sparsity from one number or a {layer: sparsity} dict, then ``layers``.

    One number applies to every prunable layer, except with ``scope="erk"``, where it is the
    average and :func:`erk_targets` shares it out by layer shape. ``layers`` (``(name, sparsity)``
    pairs, as --prune-layer gives them) then set those layers' targets, 0 keeping a layer dense; with
    ``sparsity`` None they are the only targets.
    """
    targets = {} if sparsity is None else _base_targets(kernels, sparsity, option, scope)
    for name, share in prune_layer_shares(layers).items():
        if name not in kernels:
            raise OptionError(f"--prune-layer {name}: no prunable layer of that name; the prunable layers are "
                              f"{', '.join(kernels) or 'none'}")
        if share == 0:
            targets.pop(name, None)
        else:
            targets[name] = share
    return targets


def _base_targets(kernels: dict[str, list], sparsity, option: str, scope: str) -> dict[str, float]:
    if isinstance(sparsity, dict):
        unknown = sorted(set(sparsity) - set(kernels))
        if unknown:
            raise OptionError(
                f"cannot prune layer(s) {', '.join(unknown)}: the prunable layers are {', '.join(kernels) or 'none'}"
            )
        return {name: check_fraction(v, f"{option} for layer '{name}'") for name, v in sparsity.items()}
    value = check_fraction(sparsity, option)
    if scope == "erk":
        return erk_targets(kernels, value)
    return {name: value for name in kernels}


class Masker:
    """Holds a 0/1 mask per pruned kernel; recomputes masks by magnitude and applies them.

    ``targets`` maps a layer name to its final sparsity. With ``scope="layer"`` each kernel reaches its
    layer's target; with ``scope="global"`` one magnitude threshold over all the kernels reaches the
    (single) target overall, so layers with many small weights give up more of them. With ``block`` > 1
    runs of that many weights are kept or dropped together, along the input axes ``axes`` gives per
    kernel (as :func:`input_axes` returns them; without it, each kernel's second-to-last axis).
    """

    def __init__(self, kernels: dict[str, list], targets: dict[str, float], schedule: Schedule | None,
                 scope: str = "layer", block: int = 1, axes: dict[str, list] | None = None):
        if scope not in MASK_SCOPES:  # erk is a way to set per-layer targets: its masks are per layer
            raise OptionError(f"unknown masking scope '{scope}'; choose one of {', '.join(MASK_SCOPES)}")
        if scope == "global" and len(set(targets.values())) > 1:
            raise OptionError("global pruning takes one sparsity for all layers, not one per layer")
        self.kernels = {name: kernels[name] for name in targets}
        self.targets = dict(targets)
        self.schedule = schedule
        self.scope = scope
        self.block = block
        self.axes = {name: (axes or {}).get(name) or [None] * len(self.kernels[name]) for name in self.kernels}
        self.step = 0
        self.masks: dict[str, list[np.ndarray]] = {}

    @classmethod
    def keep_zeros(cls, model, layer_names=None) -> "Masker":
        """A masker that holds today's zeros at zero (so fine-tuning keeps a pruned model sparse)."""
        kernels, _ = find_prunable(model)
        names = [n for n in kernels if layer_names is None or n in layer_names]
        masks = {n: [(np.asarray(v) != 0).astype(np.float32) for v in kernels[n]] for n in names}
        sparsity = {n: 1.0 - sum(m.sum() for m in ms) / sum(m.size for m in ms) for n, ms in masks.items()}
        masker = cls(kernels, sparsity, schedule=None)
        masker.masks = masks
        return masker

    def update(self, fraction: float = 1.0) -> None:
        """Recompute the masks to hold ``fraction`` of each target sparsity, by weight (or block) magnitude."""
        if self.scope == "global" and self.targets:
            target = next(iter(self.targets.values())) * fraction
            flat = [(n, i, _Blocks(np.asarray(v), self.block, self.axes[n][i]))
                    for n, vs in self.kernels.items() for i, v in enumerate(vs)]
            scores = np.concatenate([b.scores for _, _, b in flat])
            sizes = np.concatenate([b.sizes for _, _, b in flat])
            keep = _keep_blocks(scores, sizes, target)
            self.masks = {n: [None] * len(vs) for n, vs in self.kernels.items()}
            offset = 0
            for n, i, b in flat:
                self.masks[n][i] = b.mask(keep[offset:offset + b.scores.size])
                offset += b.scores.size
            return
        self.masks = {}
        for name, variables in self.kernels.items():
            target = self.targets[name] * fraction
            self.masks[name] = []
            for v, axes in zip(variables, self.axes[name]):
                b = _Blocks(np.asarray(v), self.block, axes)
                self.masks[name].append(b.mask(_keep_blocks(b.scores, b.sizes, target)))

    def apply(self) -> None:
        """Zero the masked weights."""
        for name, variables in self.kernels.items():
            for v, mask in zip(variables, self.masks.get(name, [])):
                v.assign(np.asarray(v) * mask)

    def on_batch_end(self) -> None:
        self.step += 1
        if self.schedule is not None and self.schedule.updates_at(self.step):
            self.update(self.schedule.fraction(self.step))
        self.apply()

    def start(self) -> None:
        if self.schedule is not None:
            self.update(self.schedule.fraction(0))
        self.apply()

    def finish(self) -> None:
        """Reach the final targets (also when fine-tuning stopped early) and apply them."""
        if self.schedule is not None:
            self.update(1.0)
        self.apply()


class _Blocks:
    """A kernel cut into runs of ``block`` weights along its input axes ``axes`` (default: the second to
    last; several axes, such as the ``heads`` and ``value_dim`` of an attention output kernel, are read as
    one, flattened in the kernel's order).

    ``scores`` is the mean magnitude of each run, ``sizes`` how many weights it holds (the last run
    of an axis whose length ``block`` does not divide is shorter); :meth:`mask` spreads a keep/drop
    decision per run back over the kernel. With ``block=1`` every weight is its own run.
    """

    def __init__(self, kernel: np.ndarray, block: int, axes: tuple[int, ...] | None = None):
        self.shape = kernel.shape
        a = np.abs(kernel.astype(np.float32))
        if axes is None:
            axes = (a.ndim - 2,) if a.ndim >= 2 else ()
        if block <= 1 or not axes:
            self.block, self.axes, self.length = 1, None, None
            self.scores, self.sizes = a.ravel(), np.ones(a.size, dtype=np.int64)
            return
        self.block, self.axes = block, tuple(sorted(axis % a.ndim for axis in axes))
        # the other axes first, then the input axes (one run axis once flattened)
        self._order = [i for i in range(a.ndim) if i not in self.axes] + list(self.axes)
        transposed = np.transpose(a, self._order)
        self._transposed_shape = transposed.shape
        moved = transposed.reshape(*transposed.shape[:a.ndim - len(self.axes)], -1)
        self.length = moved.shape[-1]
        pad = (-self.length) % block
        padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)])
        runs = padded.reshape(*moved.shape[:-1], -1, block)
        counts = np.full(runs.shape[-2], block, dtype=np.int64)
        counts[-1] = block - pad
        self.scores = (runs.sum(axis=-1) / counts).ravel()
        self.sizes = np.broadcast_to(counts, runs.shape[:-1]).ravel().copy()
        self._runs_shape = runs.shape[:-1]

    def mask(self, keep: np.ndarray) -> np.ndarray:
        """A float32 0/1 mask of the kernel's shape from a keep flag per run."""
        if self.axes is None:
            return keep.astype(np.float32).reshape(self.shape)
        spread = np.repeat(keep.reshape(self._runs_shape), self.block, axis=-1)[..., :self.length]
        return np.transpose(spread.astype(np.float32).reshape(self._transposed_shape), np.argsort(self._order))


def _keep_blocks(scores: np.ndarray, sizes: np.ndarray, target: float) -> np.ndarray:
    """Keep flags: drop the lowest-scoring runs until ``target`` of all weights are dropped."""
    total = int(sizes.sum())
    k = int(round(target * total))
    keep = np.ones(scores.size, dtype=bool)
    if k <= 0:
        return keep
    if np.all(sizes == 1):  # single weights: a partition is enough
        keep[np.argpartition(scores, min(k, scores.size) - 1)[:k]] = False
        return keep
    order = np.argsort(scores, kind="stable")
    dropped = np.cumsum(sizes[order])
    n = int(np.searchsorted(dropped, k, side="left")) + 1  # the fewest runs that drop at least k weights
    if n > 1 and dropped[n - 1] - k > k - dropped[n - 2]:
        n -= 1  # the closer of the two counts around k
    keep[order[:n]] = False
    return keep


def masking_callback(masker: Masker):
    """A Keras callback that drives ``masker``: masks at the start, after every batch, and at the end."""
    base = _lazy.keras().callbacks.Callback

    class _Masking(base):
        def on_train_begin(self, logs=None):
            masker.start()

        def on_train_batch_end(self, batch, logs=None):
            masker.on_batch_end()

        def on_train_end(self, logs=None):
            masker.finish()

    return _Masking()


def strip(model):
    """A plain copy of a pruned model: same layers and weights (zeros included), no optimizer state."""
    return keras_graph.copy_model(model)


def sparsity_report(model, targets: dict[str, float]) -> list[dict]:
    """Per pruned layer: kind, target and achieved sparsity of its kernels, non-zero and total weights."""
    kernels, _ = find_prunable(model)
    kinds = {s.name: s.kind for s in keras_graph.trace(model)}
    rows = []
    for name, target in targets.items():
        arrays = [np.asarray(v) for v in kernels.get(name, [])]
        total = sum(a.size for a in arrays)
        nonzero = sum(int(np.count_nonzero(a)) for a in arrays)
        rows.append({"layer": name, "kind": kinds.get(name, "?"), "weights": [v.name for v in kernels.get(name, [])],
                     "target": round(target, 4), "sparsity": round(1 - nonzero / total, 4) if total else 0.0,
                     "nonzero": nonzero, "total": total})
    return rows


@dataclass
class PruneResult:
    """A pruned, stripped Keras model, what each layer reached, and the layers left alone (with why)."""

    model: object = field(repr=False)
    layers: list[dict]
    skipped: list[dict]
    scope: str = "layer"
    schedule: str = "polynomial"
    block: int = 1


def prune(model, spec, tune) -> PruneResult:
    """Prune ``model``'s kernels by magnitude while fine-tuning it, and return the stripped result.

    Args:
        model: a trained Keras model (left unchanged; a copy is pruned).
        spec: a :class:`PruneSpec` (sparsity, scope, schedule, block, per-layer shares), or just the
            sparsity: the fraction of kernel weights to zero, in (0, 1), for every prunable layer, or
            ``{layer_name: sparsity}`` for some of them. Scope ``layer``: each layer reaches its
            target; ``global``: one threshold over all layers; ``erk``: per-layer sparsities that
            average to the target, small layers denser (see :func:`erk_targets`). Schedule
            ``polynomial``: sparsity grows over the first 70% of the steps; ``constant``.
        tune: a :class:`~edgedl.optimize.finetune.FineTune`: the data, recipe, epochs, seed, teacher
            and learning-rate scale of the fine-tuning run the masks are applied in.

    Returns:
        PruneResult: the plain Keras model, a per-layer sparsity report and the skipped layers.

    Raises:
        OptionError: a sparsity outside (0, 1), an unknown layer, scope or schedule.

    Example:
        >>> tune = FineTune(data.x_train, data.y_train, recipe, epochs=2)  # doctest: +SKIP
        >>> [row["sparsity"] for row in prune(model, 0.8, tune).layers]  # doctest: +SKIP
        [0.8, 0.8, 0.8, 0.8, 0.8]
    """
    from edgedl.optimize.finetune import finetune

    spec = spec if isinstance(spec, PruneSpec) else PruneSpec(spec)
    keras_graph.require_keras_layers(model, "pruning")
    work = keras_graph.copy_model(model)
    kernels, skipped = find_prunable(work)
    targets = resolve_targets(kernels, spec.sparsity, scope=spec.scope, layers=spec.layers)
    if not targets:
        raise ModelError(f"model '{model.name}' has no layer edgedl can prune (it prunes {', '.join(PRUNABLE_KINDS)})")
    kinds = {s.name: s.kind for s in keras_graph.trace(work)}
    kept = {name for name, share in spec.layers if share == 0}
    skipped += [{"layer": n, "kind": kinds[n],
                 "reason": f"kept dense (--prune-layer {n}=0)" if n in kept else "not among the requested layers"}
                for n in kernels if n not in targets]
    schedule = make_schedule(spec.schedule, tune.steps_per_epoch * tune.epochs)
    masker = Masker(kernels, targets, schedule, "global" if spec.scope == "global" else "layer", spec.block,
                    input_axes(work))
    finetune(work, tune, callbacks=[masking_callback(masker)], title=f"pruning to {_describe(targets)}")
    stripped = strip(work)
    return PruneResult(model=stripped, layers=sparsity_report(stripped, targets), skipped=skipped,
                       scope=spec.scope, schedule=spec.schedule, block=spec.block)


def _describe(targets: dict[str, float]) -> str:
    values = sorted(set(targets.values()))
    return f"{100 * values[0]:.0f}% sparsity" if len(values) == 1 else "the requested sparsities"
