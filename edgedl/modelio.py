"""Loading models: a zoo name, or a user's ``.keras``, ``.h5`` or SavedModel, into one Keras model.

Every later stage (train, optimize, compile) takes its model through :func:`load_model`; train and
optimize find the model and the recipe that fits it through :func:`resolve_model`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from edgedl import _lazy
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
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a bad file
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "custom" in detail.lower() or "Unknown layer" in detail:
            raise ModelError(f"{path}: the model uses a layer Keras cannot rebuild ({detail[:200]})") from None
        raise InputFileError(path, f"not a readable Keras model ({detail[:200]})") from None


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


def _load_saved_model(path: Path, keras):
    if not (path / "saved_model.pb").is_file():
        raise InputFileError(path, "folder is not a SavedModel (no saved_model.pb)")
    tf = _lazy.tf()
    try:
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
    except Exception as e:
        raise InputFileError(path, f"unreadable SavedModel ({str(e).splitlines()[0][:200]})") from None
    specs = [s for s in fn.structured_input_signature[1].values()]
    if len(specs) != 1:
        raise ModelError(f"{path}: SavedModel has {len(specs)} inputs; edgedl takes models with one input")
    spec = specs[0]
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
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
