"""Shared fixtures for edgedl's tests."""

import os
from pathlib import Path

import pytest

# Firmware builds fetch TFLite Micro and CMSIS sources: from the shared offline mirror (the project
# downloads from GitHub by default; these machines have no internet beyond the package registries).
_MIRROR = Path(__file__).resolve().parent.parent.parent / "shared" / "mirror"
if "EDGEDL_MIRROR" not in os.environ and _MIRROR.is_dir():
    os.environ["EDGEDL_MIRROR"] = str(_MIRROR)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared, read-only real data sets: $EDGEDL_DATA, else <repo>/../shared/data."""
    env = os.environ.get("EDGEDL_DATA")
    path = Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"the shared data sets are not at {path} (set EDGEDL_DATA to their folder)")
    return path


@pytest.fixture(scope="session")
def trained_lenet(tmp_path_factory) -> dict:
    """LeNet trained for 3 epochs on scikit-learn's digits, once for the whole run.

    For the modules that only need *a* trained model (compile, runtime, bench, backends, examples):
    ``model`` (the Keras model; copy it before changing it), ``keras`` (``lenet.keras`` with the
    ``lenet.json`` metrics that `edgedl train` writes beside it) and ``int8`` (full-integer
    ``.tflite`` with int8 inputs and outputs). Treat the files as read-only.
    """
    pytest.importorskip("keras")
    from edgedl.convert import to_tflite
    from edgedl.data import load_dataset
    from edgedl.train import TrainOptions, train

    d = tmp_path_factory.mktemp("trained_lenet")
    result = train("lenet", TrainOptions(dataset="digits", epochs=3, seed=0), progress=False)
    keras_path, _ = result.save(d / "lenet.keras")
    int8 = d / "lenet_int8.tflite"
    int8.write_bytes(to_tflite(result.model, "int8", load_dataset("digits").x_train, io_type="int8"))
    return {"model": result.model, "keras": keras_path, "int8": int8}
