"""Loading models: a zoo name, or a user's ``.keras``, ``.h5`` or SavedModel, into one Keras model.

Every later stage (train, optimize, compile) takes its model through :func:`load_model`; train and
optimize find the model and the recipe that fits it through :func:`resolve_model`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from edgedl import _io, _lazy
from edgedl.errors import InputFileError, ModelError

log = logging.getLogger(__name__)

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
# formats edgedl compiles but cannot train: they hold a converted graph, not Keras layers
CONVERTED_SUFFIXES = (".tflite", ".onnx")


def is_model_path(spec: str) -> bool:
    p = Path(spec)
    return p.suffix in KERAS_SUFFIXES or p.exists() or "/" in spec


def load_model(spec: str):
    """Load a Keras model from a file or a SavedModel folder.

    Args:
        spec: path to a ``.keras`` or ``.h5`` file, or a SavedModel directory.

    Returns:
        A ``keras.Model``; a SavedModel comes back wrapped so that it takes one batch input.

    Raises:
        InputFileError: the path is missing, not a model, or unreadable.

    Example:
        >>> model = load_model("lenet.keras")  # doctest: +SKIP
    """
    path = Path(spec)
    if not path.exists():
        raise InputFileError(path, "no such file or folder; expected a .keras or .h5 file or a SavedModel folder")
    keras = _lazy.keras()
    if path.is_dir():
        return _load_saved_model(path, keras)
    if path.suffix in CONVERTED_SUFFIXES:
        raise InputFileError(path, f"a {path.suffix} model is already converted and cannot be trained, pruned or "
                                   "re-quantized here; give the Keras model it came from (.keras, .h5 or a SavedModel "
                                   f"folder), or compile the {path.suffix} as it is with `edgedl compile`")
    if path.suffix not in KERAS_SUFFIXES:
        raise InputFileError(path, f"unknown model format '{path.suffix}'; expected .keras, .h5 or a SavedModel folder")
    _check_container(path)
    if path.suffix != ".keras":
        keras_version = _keras2_version(path)
        if keras_version:
            return _load_keras2_h5(path, keras_version, keras)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a bad file
        raise _load_error(path, e) from None


def _one_line(error: Exception) -> str:
    """The whole message of ``error`` on one line (Keras names the cause after the config it prints)."""
    return " ".join(str(error).split()) or type(error).__name__


def _load_error(path: Path, error: Exception, what: str = "Keras model"):
    """The error for a model file Keras could not load, with Keras's whole message as the cause."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    detail = _one_line(error)
    if "custom" in first.lower() or "Unknown layer" in first:
        return ModelError(f"{path}: the model uses a layer Keras cannot rebuild ({detail})")
    return InputFileError(path, f"not a readable {what} ({detail})")


def _check_container(path: Path) -> None:
    """A .keras file is a zip archive and an .h5 an HDF5 file; say so before Keras says 'file not found'."""
    import zipfile

    if path.suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise InputFileError(path, "not a .keras model: the file is not a zip archive (a .keras model is one); "
                                       "re-save it with model.save('model.keras')")
        return
    with open(path, "rb") as f:
        head = f.read(8)
    if head != b"\x89HDF\r\n\x1a\n":
        raise InputFileError(path, f"not an {path.suffix} model: the file is not HDF5 (no HDF5 signature)")


# --- Keras 2 (tf.keras, TF 2.x era) .h5 files ---------------------------------------------------------
#
# Keras 3 reads a Keras 2 .h5 file's layers from its ``model_config`` attribute, but refuses a few keys
# and forms that tf.keras wrote. :func:`upgrade_keras2_config` rewrites those (only where the value is
# the one Keras 2 always wrote, so nothing changes meaning); Keras then loads the weights from the file
# by topology as it would have. The result is saved once as a .keras file in
# ``<user cache>/models/<sha256 of the file>-c<KERAS2_CONVERTER>.keras``, which later loads read instead.

# bump when upgrade_keras2_config changes, so that files converted by an older one are converted again
KERAS2_CONVERTER = 1

# key -> (the value Keras 2 always wrote there, the layers Keras 3 refuses it on)
_KERAS2_CONSTANT_KEYS = {
    "groups": (1, ("DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
                   "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")),
    "time_major": (False, ("SimpleRNN", "LSTM", "GRU", "RNN")),
}
# TensorFlow ops called on Keras tensors, which tf.keras saved as layers; Keras 3 has no such layer
_KERAS2_OP_LAYERS = ("TFOpLambda", "SlicingOpLambda")
_MODEL_CLASSES = ("Functional", "Model", "Sequential")


def _keras2_version(path: Path) -> str | None:
    """The Keras version that wrote an .h5 model, if it was Keras 1 or 2 (None: Keras 3, or not a model)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                return None
            version = f.attrs.get("keras_version", b"")
    except OSError:
        return None  # Keras says why, with the rest of a bad file's errors
    version = version.decode() if isinstance(version, bytes) else str(version)
    if version.startswith("3"):
        return None
    return version or "2"


def upgrade_keras2_config(config: dict) -> list[str]:
    """Rewrite a Keras 2 model config, in place, into the form Keras 3 builds; return what changed.

    Drops ``groups=1`` on depthwise, separable and transposed convolutions and ``time_major=False`` on
    recurrent layers, turns mixed-precision ``Policy`` objects into their names, gives a Sequential
    whose first layer carries ``batch_input_shape`` its input layer, names the module of layers nested
    in wrappers (TimeDistributed, Bidirectional), and renumbers calls of nested models, which
    Keras 2 counted from 1 and Keras 3 counts from 0.

    Args:
        config: the parsed ``model_config`` of a Keras 2 .h5 file.

    Returns:
        One line per change, e.g. ``"DepthwiseConv2D 'dw': dropped groups=1"``.

    Raises:
        ModelError: the model holds TensorFlow operations saved as layers (``TFOpLambda``), which
            Keras 3 cannot rebuild.

    Example:
        >>> config = {"class_name": "DepthwiseConv2D", "config": {"name": "dw", "groups": 1}}
        >>> upgrade_keras2_config(config)
        ["DepthwiseConv2D 'dw': dropped groups=1"]
    """
    keras = _lazy.keras()
    changes: list[str] = []
    op_layers: list[str] = []

    def visit(entry, nested: bool) -> None:
        if isinstance(entry, list):
            for item in entry:
                visit(item, nested)
            return
        if not isinstance(entry, dict):
            return
        cls, cfg = entry.get("class_name"), entry.get("config")
        if not isinstance(cls, str) or not isinstance(cfg, dict):
            for value in entry.values():
                visit(value, nested)
            return
        name = cfg.get("name", entry.get("name", "?"))
        if cls in _KERAS2_OP_LAYERS:
            op_layers.append(f"'{name}' ({cls})")
        for key, (value, classes) in _KERAS2_CONSTANT_KEYS.items():
            if cls in classes and key in cfg and cfg[key] == value:
                del cfg[key]
                changes.append(f"{cls} '{name}': dropped {key}={value!r}")
        dtype = cfg.get("dtype")
        if isinstance(dtype, dict) and dtype.get("class_name") in ("Policy", "PolicyV1") and "module" not in dtype:
            cfg["dtype"] = (dtype.get("config") or {}).get("name", "float32")
            changes.append(f"{cls} '{name}': dtype policy {cfg['dtype']!r} by name")
        if nested and "module" not in entry and cls not in _MODEL_CLASSES and hasattr(keras.layers, cls):
            entry["module"], entry["registered_name"] = "keras.layers", None
        if cls == "Sequential":
            _sequential_input(cfg, changes)
        if cls in ("Functional", "Model"):
            _renumber_nested_model_calls(cfg, changes)
        for key, value in cfg.items():
            # a layer inside a wrapper's config is deserialized without the module Keras 3 needs
            visit(value, nested=key in ("layer", "backward_layer", "forward_layer", "cell"))

    visit(config, nested=False)
    if op_layers:
        raise ModelError(
            f"the model holds TensorFlow operations that Keras 2 saved as layers ({', '.join(op_layers)}); "
            "Keras 3 cannot rebuild them: rebuild the model with Keras layers or keras.ops, load the weights "
            "into it with model.load_weights, and save it as .keras"
        )
    return changes


def _sequential_input(cfg: dict, changes: list[str]) -> None:
    """A Keras 2 Sequential's first layer may carry ``batch_input_shape``: give the model its input layer."""
    layers = cfg.get("layers")
    if not isinstance(layers, list) or not layers or not isinstance(layers[0], dict):
        return
    first = layers[0].get("config") or {}
    if layers[0].get("class_name") == "InputLayer" or "batch_input_shape" not in first:
        return
    dtype = first.get("dtype") if isinstance(first.get("dtype"), str) else "float32"
    name = f"{first.get('name', 'layer')}_input"
    layers.insert(0, {"class_name": "InputLayer",
                      "config": {"batch_input_shape": first.pop("batch_input_shape"), "dtype": dtype, "name": name}})
    changes.append(f"Sequential '{cfg.get('name', '?')}': input layer '{name}' from its first layer's batch_input_shape")


def _renumber_nested_model_calls(cfg: dict, changes: list[str]) -> None:
    """Keras 2 gave a built model a node of its own, so its first call was node 1; in Keras 3 it is node 0."""
    nested = set()
    for layer in cfg.get("layers") or []:
        if not isinstance(layer, dict) or layer.get("class_name") not in _MODEL_CLASSES:
            continue
        inner = (layer.get("config") or {}).get("layers") or [{}]
        first = inner[0] if isinstance(inner[0], dict) else {}
        built = layer["class_name"] != "Sequential" or first.get("class_name") == "InputLayer" \
            or "batch_input_shape" in (first.get("config") or {})
        if built:
            nested.add(layer.get("name") or (layer.get("config") or {}).get("name"))
    if not nested:
        return
    for layer in cfg.get("layers") or []:
        for node in (layer.get("inbound_nodes") or []) if isinstance(layer, dict) else []:
            for call in node if isinstance(node, list) else []:
                if isinstance(call, list) and len(call) >= 3 and call[0] in nested and isinstance(call[1], int) \
                        and call[1] >= 1:
                    call[1] -= 1
                    changes.append(f"'{layer.get('name', '?')}': input from nested model '{call[0]}' call {call[1]}")


def converted_model_path(path: Path) -> Path:
    """Where the .keras conversion of a Keras 2 .h5 file is kept: the user cache, by the file's sha256.

    Example:
        >>> converted_model_path(Path("vww_96.h5")).suffix  # doctest: +SKIP
        '.keras'
    """
    from edgedl.data.base import user_cache_dir

    return user_cache_dir() / "models" / f"{_io.sha256_file(Path(path))}-c{KERAS2_CONVERTER}.keras"


def _load_keras2_h5(path: Path, keras_version: str, keras):
    """A Keras 2 .h5 model: its .keras conversion if made before, else convert (and keep) it now."""
    import json
    import os
    import shutil
    import tempfile

    import h5py

    converted = converted_model_path(path)
    if converted.is_file():
        try:
            model = keras.saving.load_model(converted, compile=False)
            log.debug("%s: Keras %s file, loaded from its conversion %s", path, keras_version, converted)
            return model
        except Exception as e:  # a damaged cache entry: convert again
            log.warning("%s: converting again, as its earlier conversion %s does not load (%s)",
                        path, converted, _one_line(e))
    with h5py.File(path, "r") as f:
        raw = f.attrs["model_config"]
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError as e:
        raise InputFileError(path, f"not a readable Keras {keras_version} model: its model_config is not JSON "
                                   f"({_one_line(e)})") from None
    try:
        changes = upgrade_keras2_config(config)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    with tempfile.TemporaryDirectory(prefix="edgedl-keras2-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as f:
            f.attrs["model_config"] = json.dumps(config)
        try:
            model = keras.saving.load_model(copy, compile=False)
        except Exception as e:  # Keras raises many types for a bad file
            raise _load_error(path, e, f"Keras {keras_version} model") from None
    try:
        converted.parent.mkdir(parents=True, exist_ok=True)
        partial = converted.with_name(f"{converted.stem}.{os.getpid()}.partial.keras")
        model.save(partial)
        os.replace(partial, converted)
        log.info("%s: Keras %s file converted to %s (%s); later loads read that", path, keras_version, converted,
                 "; ".join(changes) or "no changes")
    except OSError as e:
        log.warning("%s: Keras %s file loaded, but its conversion could not be kept in %s (%s)",
                    path, keras_version, converted.parent, e)
    return model


def _load_saved_model(path: Path, keras):
    """A SavedModel (TF 2.x, Keras 2's ``model.save(folder)`` or Keras 3's ``model.export``), called through its
    serving signature: ``serving_default``, or the only signature it has."""
    if not (path / "saved_model.pb").is_file():
        raise InputFileError(path, "folder is not a SavedModel (no saved_model.pb)")
    tf = _lazy.tf()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise InputFileError(path, f"unreadable SavedModel ({_one_line(e)})") from None
    names = list(loaded.signatures.keys())
    endpoint = "serving_default" if "serving_default" in names else names[0] if len(names) == 1 else None
    if endpoint is None:
        raise InputFileError(path, "the SavedModel has no serving signature to call "
                                   f"({'signatures: ' + ', '.join(names) if names else 'it has no signatures'}); "
                                   "save it with signatures={'serving_default': ...}, or as a .keras model")
    fn = loaded.signatures[endpoint]
    specs = [s for s in fn.structured_input_signature[1].values()]
    if len(specs) != 1:
        raise ModelError(f"{path}: SavedModel has {len(specs)} inputs; edgedl takes models with one input")
    spec = specs[0]
    layer = keras.layers.TFSMLayer(str(path), call_endpoint=endpoint)
    inputs = keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype.name, name=spec.name or "input")
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ModelError(f"{path}: SavedModel has {len(outputs)} outputs; edgedl takes models with one output")
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs, name=path.name)


def metrics_beside(path: Path) -> dict:
    """The metrics JSON ``edgedl train`` wrote beside a model file (``model.keras`` -> ``model.json``); {} if none."""
    import json

    path = Path(path)
    meta = path.with_suffix(".json") if path.suffix else path.parent / f"{path.name}.json"
    if not meta.is_file():
        return {}
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        log.warning("ignoring %s: not readable JSON", meta)
        return {}
    return data if isinstance(data, dict) else {}


def recipe_beside(path: Path, default: dict) -> tuple[dict, str | None, dict]:
    """(recipe, zoo name or None, metrics) for a model file, from the metrics JSON beside it.

    A model trained by ``edgedl train`` keeps training the way it was trained: its zoo recipe, with
    the training keys the metrics recorded (optimizer, learning rate, schedule, ...) on top. A file
    without metrics gets ``default``.
    """
    from edgedl import zoo

    sidecar = metrics_beside(path)
    zoo_name = sidecar.get("model") if sidecar.get("model") in zoo.model_names() else None
    recipe = dict(zoo.get_model(zoo_name).recipe) if zoo_name else dict(default)
    recorded = sidecar.get("recipe")
    if isinstance(recorded, dict):
        recipe.update(recorded)
    for key in ("dataset", "split", "batch_size"):
        if sidecar.get(key):
            recipe[key] = sidecar[key]
    return recipe, zoo_name, sidecar


@dataclass
class ModelAndRecipe:
    """A model to train or optimize, and the training recipe that fits it.

    ``model`` is the Keras model, or None for a zoo name still to build (:meth:`build`); ``recipe_from``
    says where the recipe came from, for reports; ``path`` is the model file, if it came from one.
    """

    model: object = field(repr=False)
    name: str
    zoo_name: str | None
    recipe: dict
    recipe_from: str
    path: str | None = None

    @property
    def dataset(self) -> str | None:
        """The data set the recipe names (None: give one)."""
        return self.recipe.get("dataset")

    @property
    def split(self) -> str | None:
        return self.recipe.get("split")

    def build(self, input_shape=None, num_classes=None):
        """The Keras model: the one given, or the zoo model built fresh (untrained) for this shape."""
        if self.model is not None:
            return self.model
        from edgedl import zoo

        return zoo.get_model(self.zoo_name).build(input_shape=input_shape, num_classes=num_classes)


def resolve_model(model) -> ModelAndRecipe:
    """The Keras model (or zoo name) and the training recipe that fits it.

    A zoo name brings its recipe. A model file brings the recipe of the zoo model named in the
    metrics JSON that ``edgedl train`` writes beside it (``lenet.keras`` -> ``lenet.json``), with the
    data set, split and training settings recorded there; otherwise :data:`edgedl.zoo.DEFAULT_RECIPE`,
    which names no data set. A ``keras.Model`` named like a zoo model gets that model's recipe.

    Args:
        model: a zoo name, a ``.keras``/``.h5``/SavedModel path, or a ``keras.Model``.

    Returns:
        ModelAndRecipe with the model (None for a zoo name), its name and the recipe.

    Raises:
        ModelError: an unknown name (the message lists the zoo's), or a file with custom layers.
        InputFileError: the file is missing or not a model.

    Example:
        >>> resolve_model("lenet").recipe["dataset"]
        'mnist'
    """
    from edgedl import zoo

    if not isinstance(model, (str, Path)):
        name = getattr(model, "name", "model")
        if name in zoo.model_names():
            return ModelAndRecipe(model, name, name, zoo.get_model(name).recipe, f"zoo model '{name}' (by the model's name)")
        return ModelAndRecipe(model, name, None, dict(zoo.DEFAULT_RECIPE), "defaults")
    spec = str(model)
    if spec in zoo.model_names():
        return ModelAndRecipe(None, spec, spec, zoo.get_model(spec).recipe, f"zoo model '{spec}'")
    if not is_model_path(spec):
        zoo.get_model(spec)  # raises with the known names and a close match
        raise ModelError(f"unknown model '{spec}'")
    keras_model = _load_built_in(spec)
    recipe, zoo_name, _ = recipe_beside(Path(spec), zoo.DEFAULT_RECIPE)
    recipe_from = f"zoo model '{zoo_name}' (from {Path(spec).with_suffix('.json').name})" if zoo_name else "defaults"
    return ModelAndRecipe(keras_model, Path(spec).stem, zoo_name, recipe, recipe_from, spec)


def _load_built_in(spec: str):
    """:func:`load_model`, naming the custom layers of a ``.keras`` file Keras could not rebuild."""
    try:
        return load_model(spec)
    except InputFileError:
        custom = custom_layers_in_file(Path(spec))
        if custom:
            raise ModelError(
                f"{spec}: cannot rebuild layer(s) {', '.join(custom)}: custom classes this process does not know; "
                "edgedl trains and optimizes models made of built-in Keras layers"
            ) from None
        raise


def custom_layers_in_file(path: Path) -> list[str]:
    """``'name' (Class)`` of each layer in a ``.keras`` file that is not a built-in Keras layer."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found = []

    def walk(layers):
        for layer in layers or []:
            if not isinstance(layer, dict):
                continue
            inner = layer.get("config") or {}
            if not str(layer.get("module") or "").startswith("keras"):
                found.append(f"'{inner.get('name', '?')}' ({layer.get('registered_name') or layer.get('class_name')})")
            walk(inner.get("layers"))

    walk((config.get("config") or {}).get("layers"))
    return found
