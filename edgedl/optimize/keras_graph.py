"""The layer graph of a Keras 3 model, as plain data, for the optimization passes that rewrite it.

Structured pruning, batch-norm folding and quantization-aware training all need to know which layer
feeds which; Keras keeps that in its functional graph. :func:`trace` reads it once into a list of
:class:`Step` (layer, the layers feeding it, the shapes in and out), in an order where every layer
comes after the layers that feed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgedl import _lazy
from edgedl.errors import ModelError


@dataclass
class Step:
    """One call of a layer in the model graph."""

    layer: object = field(repr=False)
    name: str
    kind: str  # the layer's class name, e.g. "Conv2D"
    inputs: list[str]  # names of the layers whose outputs feed this one (input layers included)
    input_shapes: list[tuple]
    output_shape: tuple


def as_functional(model):
    """The model as one flat Functional model: a Sequential one is re-wired onto the same layers, and
    nested sub-models (a backbone inside a classifier) are inlined, so that every pass sees every layer.

    Raises:
        ModelError: the model is subclassed, not built, or its sub-models cannot share one graph.
    """
    model = _functional(model)
    keras = _lazy.keras()
    if not any(isinstance(layer, keras.Model) for layer in model.layers):
        return model
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t._keras_history.operation.name)
              for t in model.inputs]
    try:
        outputs = _inline(model, inputs, {})
        return keras.Model(_single(inputs), outputs, name=model.name)
    except ModelError:
        raise
    except Exception as e:  # e.g. two sub-models with layers of the same name
        nested = ", ".join(f"'{layer.name}'" for layer in model.layers if isinstance(layer, keras.Model))
        raise ModelError(f"model '{model.name}' nests model(s) {nested} whose layers cannot be joined into one "
                         f"graph ({_first_line(e)}); build it as one flat Functional model") from None


def _inline(model, inputs, context: dict):
    """Call ``model``'s layers (and those of the models it nests) on ``inputs``, one layer at a time.

    ``context`` carries the call-context arguments (``training``) a nested model was called with to
    its layers, as Keras does when it calls the nested model itself.
    """
    keras = _lazy.keras()
    model = _functional(model)

    def operation(op):
        def call(*args, **kwargs):
            kwargs.update({k: v for k, v in context.items() if k in getattr(op, "_call_context_args", ()) and v is not None})
            if isinstance(op, keras.Model):
                inner = {**context, **{k: kwargs[k] for k in ("training",) if kwargs.get(k) is not None}}
                return _inline(op, args[0], inner)
            return op(*args, **kwargs)
        return call

    # Keras' own graph walk (private, but the one Functional.call uses), with nested models expanded
    return model._run_through_graph(inputs, operation_fn=operation)


def _functional(model):
    """The model as a Functional model (a Sequential one re-wired onto the same layers), not flattened."""
    keras = _lazy.keras()
    if isinstance(model, keras.Sequential):
        if not model.built or model.inputs is None:
            raise ModelError(f"model '{model.name}' is not built; call it on data or give it an Input first")
        inputs = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype,
                             name=f"{model.name}_input")
        x = inputs
        for layer in model.layers:
            x = layer(x)
        return keras.Model(inputs, x, name=model.name)
    if not hasattr(model, "_nodes_by_depth"):
        raise ModelError(
            f"model '{model.name}' is a subclassed Keras model ({type(model).__name__}); "
            "optimization needs a Functional or Sequential model whose layer graph can be read"
        )
    return model


def trace(model) -> list[Step]:
    """The layer calls of a Functional (or Sequential) model, inputs first, each after its feeders.

    Raises:
        ModelError: the model is subclassed, or calls one layer more than once (shared layers).
    """
    model = as_functional(model)
    steps: list[Step] = []
    seen: set[int] = set()
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            op = node.operation
            if id(op) in seen:
                raise ModelError(
                    f"layer '{op.name}' is called more than once in model '{model.name}' (a shared layer); "
                    "optimization needs each layer called once"
                )
            seen.add(id(op))
            inputs = [t._keras_history.operation.name for t in node.input_tensors]
            steps.append(Step(
                layer=op, name=op.name, kind=type(op).__name__, inputs=inputs,
                input_shapes=[tuple(t.shape) for t in node.input_tensors],
                output_shape=tuple(node.outputs[0].shape) if node.outputs else (),
            ))
    return steps


def consumers(steps: list[Step]) -> dict[str, list[str]]:
    """Layer name -> names of the layers that take its output."""
    out: dict[str, list[str]] = {s.name: [] for s in steps}
    for s in steps:
        for name in s.inputs:
            out.setdefault(name, []).append(s.name)
    return out


def output_layers(model) -> set[str]:
    """Names of the layers whose outputs are the model's outputs."""
    model = as_functional(model)
    return {t._keras_history.operation.name for t in model.outputs}


def is_builtin(layer) -> bool:
    """True for Keras' own layers (those whose channel semantics edgedl knows or can leave alone)."""
    module = type(layer).__module__ or ""
    return module.startswith("keras.") and type(layer).__name__ not in ("Lambda", "TFSMLayer")


def require_keras_layers(model, purpose: str) -> None:
    """Raise ModelError if ``model`` wraps a SavedModel (a TFSMLayer): its insides are not Keras layers.

    Args:
        purpose: what needs Keras layers, for the message (e.g. "pruning").
    """
    for layer in as_functional(model).layers:
        if type(layer).__name__ == "TFSMLayer":
            raise ModelError(
                f"{purpose}: needs Keras layers, but model '{model.name}' is a SavedModel wrapped in one opaque "
                f"layer ('{layer.name}'); give the .keras or .h5 file instead (post-training quantization "
                "alone works on a SavedModel)"
            )


def copy_model(model):
    """A new model with the same architecture and weights (no optimizer state, no shared variables).

    Raises:
        ModelError: Keras cannot clone it (e.g. a layer without a config).
    """
    keras = _lazy.keras()
    try:
        clone = keras.models.clone_model(as_functional(model))
        # clone_model compiles the clone like the original; a fresh Model over the same graph does not.
        clone = keras.Model(_single(clone.inputs), _single(clone.outputs), name=model.name)
        clone.set_weights(model.get_weights())
    except Exception as e:  # clone_model raises many kinds for layers it cannot rebuild
        raise ModelError(f"model '{model.name}' cannot be copied by Keras ({_first_line(e)})") from None
    return clone


def _single(tensors):
    return tensors[0] if len(tensors) == 1 else tensors


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
