"""Structured pruning: remove whole Conv filters and Dense units, and rebuild a smaller Keras model.

Three small stages:

1. :func:`plan_channels` reads the layer graph and sorts the channels into *groups* that must be pruned
   together. A Conv/Dense layer starts a group with its output channels; layers that keep the
   channel axis (BatchNormalization, DepthwiseConv2D, activations, pooling, dropout, padding) pass it
   on; a residual Add (and the other element-wise merges) joins the groups of its inputs, since the
   same channels must survive on every branch; Flatten passes it on spread over the spatial
   positions, for the Dense after it. A group is *frozen* (kept whole) when it reaches the model's
   output (the classifier is never pruned) or a layer edgedl does not restructure (Reshape,
   Concatenate, recurrent layers, channels-first layers ...); the plan says why. With
   ``residual="keep"`` the groups that residual adds join are frozen too, so only the channels
   inside the residual blocks are pruned (as Li et al., "Pruning Filters for Efficient ConvNets",
   2017, prune ResNets: the residual stream keeps its width and much of the accuracy); with a
   fraction (``residual=0.25``) those groups lose that smaller share of their channels, a point
   between the two. ``layers={"conv0": 0.5}`` sets the share of one group by naming any layer that
   produces it (0 keeps it whole), over the residual choice: the way to spend the cut where the
   target is slow (on x86 XNNPACK computes 16 output channels at a time, so a conv cut from 16 to
   8 filters saves little unless its inputs shrink too).
2. Each free group keeps the ``1 - ratio`` fraction of its channels with the largest L1 norm of
   the filters that produce them (summed over the group's producers, each normalised by its mean);
   ``align=16`` rounds that count up to a multiple of 16, so no group keeps a width the runtime
   would pad anyway (16 for LiteRT float32 on x86-64; int8 there moves in steps of 8 channels).
3. :func:`rebuild` clones the graph with fewer filters/units and copies the kept slices of every
   weight: kernels (input and output axes), biases, batch-norm gamma/beta/mean/variance, depthwise
   kernels, and the rows of a Dense after Flatten (one block of rows per spatial position).

:func:`prune_structured` runs the three and fine-tunes the result. With ``schedule="polynomial"``
it goes gradually instead, as unstructured pruning's polynomial schedule does with weights: a
:class:`ChannelMasker` holds a growing share of each group's channels at zero while the full-width
model fine-tunes (re-ranking by L1 at every step, so the channels that go are the ones the model has
learned to do without), then the masked channels are removed (exactly: they compute zero) and the
smaller model fine-tunes for the rest of the run. Custom layers cannot be rebuilt
(their channel semantics are unknown): they raise a ModelError naming the layer.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np

from edgedl import _lazy
from edgedl.errors import ModelError, OptionError
from edgedl.optimize import keras_graph
from edgedl.optimize.prune import check_fraction, layer_shares

log = logging.getLogger(__name__)

# Layers whose output channels are their own weights' (filters, units): they start a group.
PRODUCERS = ("Conv1D", "Conv2D", "Dense")
# Layers whose output channel c is made from input channel c alone: the group passes through.
CHANNELWISE = (
    "BatchNormalization", "DepthwiseConv1D", "DepthwiseConv2D", "ReLU", "Activation", "LeakyReLU", "ELU",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "ZeroPadding1D", "ZeroPadding2D",
    "Cropping1D", "Cropping2D", "UpSampling1D", "UpSampling2D", "Identity", "ActivityRegularization",
)
# Layers that combine inputs channel by channel: their inputs' groups are one group.
MERGES = ("Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average")
# Activations that mix channels (normalise over the last axis): their group is kept whole.
MIXING_ACTIVATIONS = ("softmax", "log_softmax")
# What to do with channels that element-wise merges (residual adds) join across branches.
RESIDUAL = ("prune", "keep")
# How the channels go: all at once before fine-tuning the smaller model, or a few more at a time while
# the full-width model fine-tunes with them masked (see :class:`ChannelMasker`).
CHANNEL_SCHEDULES = ("oneshot", "polynomial")
# The polynomial schedule has masked every channel it will remove this far into fine-tuning; the rest
# of the run recovers at the final width ...
GRADUAL_END_FRACTION = 0.5
# ... re-ranking the channels and masking more this many times on the way.
GRADUAL_UPDATES = 20


@dataclass(frozen=True)
class StructuredSpec:
    """What structured pruning removes.

    ``ratio``: the fraction of channels removed from each prunable group, in (0, 1); ``residual``:
    ``prune`` the channels residual adds join (every branch loses the same ones), ``keep`` them
    whole and prune only inside the residual blocks, or a fraction in (0, 1): remove that share of
    them (and ``ratio`` of the channels inside the blocks); ``layers``: (layer name, fraction)
    pairs that set the share removed from the group that layer produces, in [0, 1), over both;
    ``align``: every pruned group keeps a multiple of this many channels (its count rounded up,
    at most the group's width; the groups ``layers`` names keep their share as given), the width
    the runtime computes at once (LiteRT's float32 kernels compute 16 output channels at a time on
    x86-64): the extra channels cost their layer nothing, the layers reading them pay per input;
    ``schedule``: ``oneshot`` removes the channels before fine-tuning, ``polynomial`` masks them a
    few at a time while the full-width model fine-tunes (see :class:`ChannelMasker`).

    A spec is checked and parsed when it is made (OptionError for anything out of range): ``ratio``
    becomes a float, ``layers`` ``(name, fraction)`` pairs, and ``residual_share`` says what
    ``residual`` means (None: ``ratio``, 0: keep), so whatever takes a spec takes it as it is.

    Example:
        >>> StructuredSpec(0.5, residual="keep", layers=["conv0=0.25"]).layers
        (('conv0', 0.25),)
    """

    ratio: float
    residual: str | float = "prune"
    layers: tuple = ()
    align: int = 1
    schedule: str = "oneshot"
    residual_share: float | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self):
        object.__setattr__(self, "ratio", check_fraction(self.ratio, "--structured"))
        object.__setattr__(self, "residual_share", residual_ratio(self.residual))
        object.__setattr__(self, "layers", tuple(layer_shares(self.layers).items()))
        object.__setattr__(self, "align", check_align(self.align))
        check_schedule(self.schedule)


def check_schedule(schedule) -> str:
    """``schedule`` if it is one of :data:`CHANNEL_SCHEDULES`; OptionError naming ``--structured-schedule`` otherwise."""
    if schedule not in CHANNEL_SCHEDULES:
        raise OptionError(f"unknown --structured-schedule {schedule!r}; choose one of {', '.join(CHANNEL_SCHEDULES)}")
    return schedule


def check_schedule_epochs(schedule, epochs: int, given: bool = True) -> None:
    """OptionError when ``schedule`` is ``polynomial`` and ``epochs`` (given with --epochs, or the recipe's
    default) leaves no epoch to mask and one to recover."""
    if schedule == "polynomial" and epochs < 2:
        how = f"got --epochs {epochs}" if given else f"the recipe's default gives {epochs}: give --epochs 2 or more"
        raise OptionError(f"--structured-schedule polynomial needs at least 2 fine-tuning epochs (one masking, one "
                          f"recovering at the final width); {how}")


def check_align(align) -> int:
    """``align`` as a whole number of channels >= 1; OptionError naming ``--structured-align`` otherwise."""
    if isinstance(align, bool) or not isinstance(align, (int, np.integer)) or align < 1:
        raise OptionError(f"--structured-align takes a whole number of channels >= 1 (e.g. 8 or 16), got {align!r}")
    return int(align)


def aligned(keep: int, channels: int, align: int) -> int:
    """``keep`` rounded up to a multiple of ``align``, at most ``channels``."""
    return min(channels, -(-keep // align) * align)


def residual_ratio(residual) -> float | None:
    """The fraction of the residual channels removed: None for ``prune`` (the group's ratio), 0 for
    ``keep``, else the fraction itself; OptionError for anything else."""
    if residual == "prune":
        return None
    if residual == "keep":
        return 0.0
    try:
        share = None if isinstance(residual, bool) else float(residual)
    except (TypeError, ValueError):
        share = None
    if share is None:
        raise OptionError(f"unknown --structured-residual '{residual}'; choose one of {', '.join(RESIDUAL)} "
                          "or a fraction between 0 and 1")
    return check_fraction(share, "--structured-residual")


def describe_residual(residual) -> str:
    """A few words for reports: how the channels residual adds join were treated ('' for prune)."""
    share = residual_ratio(residual)
    if share is None:
        return ""
    if share == 0.0:
        return "residual channels kept"
    return f"{100 * share:.0f}% of the residual channels removed"


def describe_layers(layers) -> str:
    """A few words for reports: the shares ``--structured-layer`` set ('' for none)."""
    shares = layer_shares(layers.items() if isinstance(layers, dict) else layers)
    if not shares:
        return ""
    return "set per layer: " + ", ".join(f"{name} {100 * v:.0f}%" for name, v in shares.items())


def describe_cut(residual="prune", layers=(), align=1, schedule="oneshot", epochs=None) -> str:
    """A few words for reports: how the residual channels were treated, the per-layer shares, the
    alignment and the schedule (over ``epochs`` of fine-tuning, when known), joined by '; ' ('' when
    none differs from the plain cut)."""
    align = f"kept channels rounded up to multiples of {align}" if align and align > 1 else ""
    when = f"the first {masking_epochs(epochs)} of {epochs} fine-tuning epochs" if epochs else "part of fine-tuning"
    gradual = f"channels masked gradually over {when}, then removed" if schedule == "polynomial" else ""
    return "; ".join(w for w in (describe_residual(residual), describe_layers(layers), align, gradual) if w)


@dataclass
class Group:
    """Channels pruned together: the layers that produce them and what happens to them."""

    name: str
    producers: list[str]
    channels: int
    keep: list[int] | None = None  # kept channel indices; None: all (frozen)
    reason: str | None = None  # why the group is frozen

    def to_dict(self) -> dict:
        return {"layers": list(self.producers), "channels": self.channels,
                "kept": len(self.keep) if self.keep is not None else self.channels,
                "frozen": self.reason}


@dataclass
class ChannelPlan:
    """Which channels of which group survive, and how each layer's tensors map onto the groups."""

    ratio: float
    groups: dict[str, Group]
    tensors: dict[str, tuple | None] = field(repr=False)  # layer -> (group name, spatial) of its output
    steps: list = field(repr=False, default_factory=list)
    residual: str | float = "prune"
    layers: dict[str, float] = field(default_factory=dict)  # --structured-layer shares
    align: int = 1  # --structured-align

    def kept_indices(self, info) -> np.ndarray | None:
        """Kept positions along the last axis of a tensor with this (group, spatial) info; None: all."""
        if info is None:
            return None
        group = self.groups[info[0]]
        if group.keep is None:
            return None
        keep = np.asarray(group.keep)
        return np.concatenate([s * group.channels + keep for s in range(info[1])])

    def summary(self) -> dict:
        pruned = [g.to_dict() for g in self.groups.values() if g.reason is None]
        frozen = [g.to_dict() for g in self.groups.values() if g.reason is not None]
        return {"ratio": self.ratio, "residual": self.residual, "layers": dict(self.layers), "align": self.align,
                "pruned_groups": pruned, "frozen_groups": frozen}


class _Groups:
    """Union-find over group names, with the reasons a group is frozen."""

    def __init__(self):
        self.parent: dict[str, str] = {}
        self.reasons: dict[str, list[str]] = {}

    def add(self, name):
        self.parent[name] = name

    def find(self, name):
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, names):
        roots = [self.find(n) for n in names]
        for r in roots[1:]:
            self.parent[r] = roots[0]
        return roots[0]

    def freeze(self, name, reason, first=False):
        reasons = self.reasons.setdefault(name, [])
        reasons.insert(0, reason) if first else reasons.append(reason)


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") in ("channels_last", None)


def _check_rebuildable(step, keras) -> None:
    layer = step.layer
    if isinstance(layer, keras.Model):
        raise ModelError(
            f"structured pruning cannot rebuild layer '{step.name}': it is a nested model ({step.kind}); "
            "build the model as one flat Functional model"
        )
    if not isinstance(layer, keras.layers.Layer):
        raise ModelError(
            f"structured pruning cannot rebuild operation '{step.name}' ({step.kind}): use a Keras layer "
            f"(e.g. keras.layers.Add) instead of a keras.ops call in the model"
        )
    if not keras_graph.is_builtin(layer):
        raise ModelError(
            f"structured pruning cannot rebuild layer '{step.name}' ({step.kind} from {type(layer).__module__}): "
            "it is not a built-in Keras layer, so how its channels map is unknown; use --prune instead"
        )


def plan_channels(model, spec) -> ChannelPlan:
    """Group the channels of ``model`` and choose which to keep as ``spec`` says.

    ``spec`` is a :class:`StructuredSpec` (or just its ratio, the fraction removed):
    ``residual="keep"`` leaves the channels that element-wise merges join (residual adds) whole; a
    fraction removes that share of them instead of ``ratio``. ``layers`` sets the share of the groups
    those layers produce, over both. ``align`` rounds every kept count up to a multiple of it (but for
    the groups ``layers`` names, whose share is taken as given); a group it would keep whole is
    frozen, saying so.

    Raises:
        OptionError: an ``align`` that keeps every group whole, or a ``layers`` entry that names no
            Conv/Dense layer, a group that cannot be pruned, or one group twice.
        ModelError: a layer that cannot be rebuilt (custom, nested model, keras.ops call, shared).

    Example:
        >>> the_plan = plan_channels(model, StructuredSpec(0.5, residual="keep"))  # doctest: +SKIP
        >>> smaller = rebuild(model, the_plan)  # doctest: +SKIP
    """
    spec = spec if isinstance(spec, StructuredSpec) else StructuredSpec(spec)
    keras_graph.require_keras_layers(model, "structured pruning")
    steps = keras_graph.trace(model)
    flow = _ChannelFlow(steps)
    groups = flow.groups(keras_graph.output_layers(model))
    named = _layer_groups(dict(spec.layers), groups, flow.uf, flow.producers)
    residual = flow.residual_groups()
    by_name = {s.name: s.layer for s in steps}
    for group in groups.values():
        if group.reason is None:
            _choose_channels(group, spec, named.get(group.name), residual.get(group.name), by_name)
    if all(g.reason is not None for g in groups.values()):
        why = "; ".join(f"{', '.join(g.producers)} {g.reason}" for g in groups.values()) or "it has no Conv or Dense layer"
        if any(g.reason.endswith(f"(--structured-align {spec.align})") for g in groups.values()):
            raise OptionError(f"--structured-align {spec.align} keeps every group of model '{model.name}' whole ({why}); "
                              "give a smaller multiple")
        raise ModelError(f"structured pruning finds no channels it can remove in model '{model.name}': {why}")
    return ChannelPlan(ratio=spec.ratio, groups=groups, tensors=flow.root_tensors(), steps=steps,
                       residual=spec.residual, layers=dict(spec.layers), align=spec.align)


class _ChannelFlow:
    """The channels followed through the layer graph, layer by layer.

    ``tensors`` maps each layer to the (group, spatial positions) of the channels it outputs (None: a
    tensor structured pruning leaves whole); ``uf`` joins the groups element-wise merges combine and
    records why a group is frozen; ``merged`` lists (group, merge layer, its kind) for every merge.
    """

    def __init__(self, steps):
        self.uf = _Groups()
        self.channels: dict[str, int] = {}
        self.producers: dict[str, list[str]] = {}
        self.tensors: dict[str, tuple | None] = {}
        self.merged: list[tuple] = []
        keras = _lazy.keras()
        for step in steps:
            if step.kind == "InputLayer":
                self.tensors[step.name] = None
                continue
            _check_rebuildable(step, keras)
            self.tensors[step.name] = self._follow(step, [self.tensors[n] for n in step.inputs])

    def _freeze_all(self, infos, reason):
        for info in infos:
            if info is not None:
                self.uf.freeze(info[0], reason)

    def _follow(self, step, ins):
        """The (group, spatial) of ``step``'s output, recording the groups it starts, joins or freezes."""
        layer, kind = step.layer, step.kind
        if kind in PRODUCERS and _channels_last(layer) and getattr(layer, "groups", 1) == 1:
            self.uf.add(step.name)
            self.channels[step.name] = int(step.output_shape[-1])
            self.producers[step.name] = [step.name]
            activation = getattr(getattr(layer, "activation", None), "__name__", "")
            if activation in MIXING_ACTIVATIONS:
                self.uf.freeze(step.name, f"'{step.name}' applies {activation} over its channels")
            return (step.name, 1)
        if kind in CHANNELWISE and _channels_last(layer) and _channelwise_ok(step):
            if ins[0] is not None and kind in ("DepthwiseConv1D", "DepthwiseConv2D") and ins[0][1] != 1:
                self.uf.freeze(ins[0][0], f"feeds '{step.name}' after a Flatten")
                return None
            return ins[0]
        if kind == "Flatten" and _channels_last(layer):
            return self._flatten(step, ins[0])
        if kind in MERGES:
            if any(i is None for i in ins) or len({i[1] for i in ins}) != 1:
                self._freeze_all(ins, f"meets an unprunable tensor in '{step.name}' ({kind})")
                return None
            root = self.uf.union([i[0] for i in ins])
            self.merged.append((root, step.name, kind))
            return (root, ins[0][1])
        self._freeze_all(ins, f"feeds '{step.name}' ({kind}), which structured pruning leaves whole")
        return None

    def _flatten(self, step, info):
        if info is None:
            return None
        if len(step.input_shapes[0]) <= 2:
            return info
        if info[1] == 1:
            return (info[0], math.prod(int(d) for d in step.input_shapes[0][1:-1]))
        self.uf.freeze(info[0], f"is flattened twice (at '{step.name}')")
        return None

    def groups(self, outputs) -> dict[str, Group]:
        """The groups by root name, each frozen for its first reason (reaching an output first of all)."""
        for name in outputs:
            info = self.tensors.get(name)
            if info is not None:
                self.uf.freeze(info[0], "reaches the model's output (the classifier is never pruned)", first=True)
        groups: dict[str, Group] = {}
        for name in self.producers:
            root = self.uf.find(name)
            group = groups.setdefault(root, Group(name=root, producers=[], channels=self.channels[name]))
            group.producers.append(name)
        for name, reasons in self.uf.reasons.items():
            group = groups[self.uf.find(name)]
            if group.reason is None or reasons[0].startswith("reaches the model's output"):
                group.reason = reasons[0]
        return groups

    def residual_groups(self) -> dict[str, tuple[str, str]]:
        """{group root: (the first merge layer that joins it, its kind)}."""
        joined: dict[str, tuple[str, str]] = {}
        for name, merge, kind in self.merged:
            joined.setdefault(self.uf.find(name), (merge, kind))
        return joined

    def root_tensors(self) -> dict[str, tuple | None]:
        """``tensors`` with every group named by its root."""
        return {n: (self.uf.find(i[0]), i[1]) if i is not None else None for n, i in self.tensors.items()}


def _choose_channels(group: Group, spec: StructuredSpec, named, residual, by_name: dict) -> None:
    """Keep ``group``'s most important channels, as many as ``spec`` leaves it, or freeze it saying why.

    ``named`` is the (layer, share) ``--structured-layer`` set for the group, ``residual`` the (merge,
    kind) that joins it if it is a residual group.
    """
    removed = spec.ratio
    if named is not None:
        layer, removed = named
        if removed == 0.0:
            group.reason = f"is kept whole (--structured-layer {layer}=0)"
            return
    elif spec.residual_share is not None and residual is not None:
        removed = spec.residual_share
        if removed == 0.0:
            merge, kind = residual
            group.reason = f"is joined by '{merge}' ({kind}); the residual channels are kept (--structured-residual keep)"
            return
    wanted = max(1, int(round(group.channels * (1.0 - removed))))
    # a share named with --structured-layer is taken as given: it is how a cut narrows the next layer's inputs
    keep = wanted if named is not None else aligned(wanted, group.channels, spec.align)
    if keep == group.channels > wanted:
        group.reason = (f"is kept whole: keeping {wanted} of its {keep} channels rounds up to all {keep} "
                        f"(--structured-align {spec.align})")
    else:
        group.keep = _rank(group, by_name)[:keep]


def _layer_groups(shares: dict, groups: dict, uf: _Groups, producers: dict) -> dict[str, tuple[str, float]]:
    """{group name: (layer named, share removed)} for the ``--structured-layer`` entries; OptionError for a name that
    produces no channels, a group that cannot be pruned, or two different shares for one group."""
    chosen: dict[str, tuple[str, float]] = {}
    for name, value in shares.items():
        if name not in producers:
            known = ", ".join(producers) or "none"
            raise OptionError(f"--structured-layer {name}: no Conv or Dense layer of that name in the model "
                              f"(its Conv/Dense layers: {known})")
        group = groups[uf.find(name)]
        if group.reason is not None:
            raise OptionError(f"--structured-layer {name}: its channels cannot be pruned ({', '.join(group.producers)} "
                              f"{group.reason})")
        if group.name in chosen and chosen[group.name][1] != value:
            other = chosen[group.name][0]
            raise OptionError(f"--structured-layer {name}={value:g} and {other}={chosen[group.name][1]:g} name the "
                              f"same channels ({', '.join(group.producers)} are pruned together): give one share")
        chosen[group.name] = (name, value)
    return chosen


def _channelwise_ok(step) -> bool:
    layer = step.layer
    if step.kind == "BatchNormalization":
        axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
        return axis in (-1, len(step.input_shapes[0]) - 1)
    if step.kind.startswith("DepthwiseConv"):
        return layer.depth_multiplier == 1
    if step.kind == "Activation":
        return getattr(layer.activation, "__name__", "") not in MIXING_ACTIVATIONS
    return True


def _rank(group: Group, layers: dict) -> list[int]:
    """Channel indices of ``group``, most important first: the L1 norm of each producer's filters,
    normalised by that producer's mean, summed over the producers."""
    score = np.zeros(group.channels)
    for name in group.producers:
        kernel = np.asarray(layers[name].kernel)
        l1 = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
        score += l1 / max(float(l1.mean()), 1e-12)
    order = np.argsort(-score, kind="stable")
    return [int(i) for i in order]


def rebuild(model, the_plan: ChannelPlan):
    """A new, smaller model: ``model`` with only the planned channels, weights copied over."""
    keras = _lazy.keras()
    functional = keras_graph.as_functional(model)
    new_width = {}
    for group in the_plan.groups.values():
        if group.keep is not None:
            for name in group.producers:
                new_width[name] = len(group.keep)

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name in new_width:
            config["filters" if "filters" in config else "units"] = new_width[layer.name]
        return layer.__class__.from_config(config)

    try:
        smaller = keras.models.clone_model(functional, clone_function=clone_layer)
    except Exception as e:  # Keras raises ValueError/TypeError for configs it cannot take
        raise ModelError(f"structured pruning could not rebuild model '{model.name}' ({keras_graph._first_line(e)})") from None

    for step in the_plan.steps:
        old = step.layer
        if not old.weights:
            continue
        new = smaller.get_layer(step.name)
        in_idx = the_plan.kept_indices(the_plan.tensors[step.inputs[0]]) if step.inputs else None
        if step.kind in PRODUCERS and the_plan.tensors.get(step.name) is not None:
            out_idx = the_plan.kept_indices(the_plan.tensors[step.name])
            weights = [_slice_producer(w, in_idx, out_idx) for w in old.get_weights()]
        elif step.kind in CHANNELWISE:
            weights = [_slice_channelwise(w, in_idx, step.kind) for w in old.get_weights()]
        else:
            weights = old.get_weights()
        new.set_weights(weights)

    if tuple(smaller.output_shape) != tuple(functional.output_shape):
        raise ModelError(f"structured pruning changed the output of '{model.name}' from "
                         f"{functional.output_shape} to {smaller.output_shape}; this is a bug")
    return smaller


def _slice_producer(w: np.ndarray, in_idx, out_idx) -> np.ndarray:
    if w.ndim == 1:  # bias
        return w if out_idx is None else w[out_idx]
    if in_idx is not None:
        w = np.take(w, in_idx, axis=-2)
    if out_idx is not None:
        w = np.take(w, out_idx, axis=-1)
    return w


def _slice_channelwise(w: np.ndarray, idx, kind: str) -> np.ndarray:
    if idx is None:
        return w
    if kind.startswith("DepthwiseConv") and w.ndim > 1:  # (..., channels, multiplier)
        return np.take(w, idx, axis=-2)
    return np.take(w, idx, axis=0)


class ChannelMasker:
    """Masks the channels a plan removes, a few more at a time, while the full-width model fine-tunes.

    The structured counterpart of :class:`edgedl.optimize.prune.Masker`. Each pruned group of
    ``the_plan`` (its layers are the ones masked) ends with as many channels as the plan keeps; on the way it holds
    ``schedule.fraction(step)`` of the channels it loses at zero, re-ranking the rest by the L1 norm of
    their filters at every update (a channel once masked stays masked). After every batch a masked
    channel's producers' kernel slices and biases, and the scale, offset and depthwise weights of the
    channel-wise layers on the way, are held at zero, and so are the kernel rows of the layers that
    read it. Removing the masked channels (:meth:`final_plan`, then :func:`rebuild`) therefore changes
    no output.
    """

    def __init__(self, the_plan: ChannelPlan, schedule):
        self.plan = the_plan
        self.schedule = schedule
        self.step = 0
        self.layers = {s.name: s.layer for s in the_plan.steps}
        self.targets = {name: len(g.keep) for name, g in the_plan.groups.items() if g.keep is not None}
        self.masks = {name: np.ones(self.plan.groups[name].channels, np.float32) for name in self.targets}
        self.factors: list[tuple] = []  # (variable, what multiplies it): the masks shaped for each variable
        # group -> (variable, axis, repeats): the mask, tiled ``repeats`` times, multiplies ``variable`` along ``axis``
        self.variables: dict[str, list[tuple]] = {name: [] for name in self.targets}
        for step in the_plan.steps:
            layer = step.layer
            info = the_plan.tensors.get(step.name)
            if info is not None and info[0] in self.targets and info[1] == 1:  # what makes the channel
                if step.kind in PRODUCERS:
                    pairs = [(layer.kernel, -1), (layer.bias, 0)]
                elif step.kind == "BatchNormalization":
                    pairs = [(layer.gamma, 0), (layer.beta, 0)]
                elif step.kind.startswith("DepthwiseConv"):
                    pairs = [(layer.kernel, -2), (layer.bias, 0)]
                else:
                    pairs = []
                self.variables[info[0]] += [(v, axis, 1) for v, axis in pairs if v is not None]
            read = the_plan.tensors.get(step.inputs[0]) if step.inputs else None
            if step.kind in PRODUCERS and read is not None and read[0] in self.targets:
                # What reads it: only producers read a prunable group (any other reader freezes it), so
                # zero rows here make removal exact whatever value a masked channel carries on the way
                # (a sigmoid's 0.5, a batch norm without scale's offset).
                self.variables[read[0]].append((layer.kernel, -2, read[1]))

    def update(self, fraction: float) -> None:
        """Mask ``fraction`` of the channels each group loses: the ones with the smallest L1 norm now
        (the ones masked already first: the optimizer may have moved their filters off zero since)."""
        for name, keep in self.targets.items():
            group = self.plan.groups[name]
            masked = int(round((group.channels - keep) * min(max(fraction, 0.0), 1.0)))
            order = sorted(_rank(group, self.layers), key=lambda c: self.masks[name][c] == 0)  # stable
            self.masks[name] = np.zeros(group.channels, np.float32)
            self.masks[name][order[:group.channels - masked]] = 1.0
        self.factors = []
        for name, pairs in self.variables.items():
            for variable, axis, repeats in pairs:
                shape = [1] * len(variable.shape)
                shape[axis] = -1
                self.factors.append((variable, np.tile(self.masks[name], repeats).reshape(shape)))

    def apply(self) -> None:
        """Zero the masked channels' weights."""
        for variable, factor in self.factors:
            variable.assign(np.asarray(variable) * factor)

    def start(self) -> None:
        self.update(self.schedule.fraction(0))
        self.apply()

    def on_batch_end(self) -> None:
        self.step += 1
        if self.schedule.updates_at(self.step):
            self.update(self.schedule.fraction(self.step))
        self.apply()

    def finish(self) -> None:
        """Mask every channel the plan removes (also when fine-tuning stopped early)."""
        self.update(1.0)
        self.apply()

    def final_plan(self) -> ChannelPlan:
        """The plan with the channels left unmasked as the ones kept: :func:`rebuild` of it is exact."""
        groups = {name: replace(g, keep=[int(i) for i in np.flatnonzero(self.masks[name])]) if name in self.masks else g
                  for name, g in self.plan.groups.items()}
        return replace(self.plan, groups=groups)


def masking_epochs(epochs: int) -> int:
    """How many of ``epochs`` fine-tuning epochs the polynomial schedule spends masking (the rest recover)."""
    return max(1, min(epochs - 1, math.floor(epochs * GRADUAL_END_FRACTION + 0.5)))


@dataclass
class StructuredResult:
    """A smaller, fine-tuned Keras model and the plan that made it."""

    model: object = field(repr=False)
    summary: dict


def prune_structured(model, spec, tune) -> StructuredResult:
    """Remove a share of the filters/units of every prunable group, rebuild, and fine-tune.

    Args:
        model: a trained Functional or Sequential Keras model (left unchanged).
        spec: a :class:`StructuredSpec` (or just its ratio, the fraction of channels to remove from each
            group, in (0, 1)): the residual channels, per-layer shares, alignment and schedule.
            Schedule ``oneshot``: remove the channels, then fine-tune the smaller model;
            ``polynomial``: fine-tune the full-width model while a :class:`ChannelMasker` masks the
            channels a few more at a time (as ``--prune-schedule polynomial`` does weights) until
            :data:`GRADUAL_END_FRACTION` of the run, then remove them (exactly: they are zero) and
            fine-tune the rest of the run at the final width. The kept channels are the ones the
            re-ranking leaves, the counts the plan's.
        tune: a :class:`~edgedl.optimize.finetune.FineTune`: the data, recipe, epochs, seed, teacher
            and learning-rate scale of fine-tuning.

    Returns:
        StructuredResult with the new model and a summary of the pruned and frozen groups.

    Raises:
        OptionError: ``polynomial`` with fewer than 2 epochs.
        ModelError: a layer that cannot be rebuilt (named in the message).

    Example:
        >>> result = prune_structured(model, 0.5, FineTune(x, y, recipe, epochs=2))  # doctest: +SKIP
        >>> result.model.count_params() < model.count_params()  # doctest: +SKIP
        True
    """
    from edgedl.optimize.finetune import finetune
    from edgedl.optimize.prune import Schedule, masking_callback

    spec = spec if isinstance(spec, StructuredSpec) else StructuredSpec(spec)
    check_schedule_epochs(spec.schedule, tune.epochs)
    title = f"structured pruning ({100 * spec.ratio:.0f}% of channels)"
    if spec.schedule == "oneshot":
        the_plan = plan_channels(model, spec)
        smaller = rebuild(model, the_plan)
        finetune(smaller, tune, title=title)
        return StructuredResult(model=keras_graph.copy_model(smaller), summary={**the_plan.summary(), "schedule": spec.schedule})

    # Gradual: mask on a copy of the full-width model, remove the masked channels, recover at the final width.
    full = keras_graph.copy_model(model)
    the_plan = plan_channels(full, spec)
    masking = masking_epochs(tune.epochs)
    end = masking * tune.steps_per_epoch
    masker = ChannelMasker(the_plan, Schedule("polynomial", 0, end, max(1, end // GRADUAL_UPDATES)))
    finetune(full, tune.but(epochs=masking), callbacks=[masking_callback(masker)], title=f"{title}, masking gradually")
    final = masker.final_plan()
    smaller = rebuild(full, final)
    finetune(smaller, tune.but(epochs=tune.epochs - masking, seed=tune.seed + 1), title=f"{title}, recovering")
    summary = {**final.summary(), "schedule": spec.schedule, "masking_epochs": masking}
    return StructuredResult(model=keras_graph.copy_model(smaller), summary=summary)
