"""The wheel carries the zoo and the targets, and its core installs without TensorFlow."""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_and_lists_models_and_targets(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob("edgedl-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # Core only: no TensorFlow, no TVM.
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(wheel)], check=True, capture_output=True,
                   timeout=600)
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    models = subprocess.run([str(env_dir / "bin" / "edgedl"), "models", "--json"], capture_output=True, text=True,
                            cwd=tmp_path, env=clean_env, timeout=120)
    assert models.returncode == 0, models.stderr
    assert {m["name"] for m in json.loads(models.stdout)} >= {"lenet", "cnn", "ds_cnn", "resnet8", "mobilenet_v1"}
    targets = subprocess.run([str(env_dir / "bin" / "edgedl"), "targets", "--json"], capture_output=True, text=True,
                             cwd=tmp_path, env=clean_env, timeout=120)
    assert targets.returncode == 0, targets.stderr
    assert {"rpi4", "cortex_m7", "ethos_u55_128"} <= {t["name"] for t in json.loads(targets.stdout)}
    where = subprocess.run([str(py), "-c", "import edgedl.zoo as z; print(z.resource_dir('models'))"],
                           capture_output=True, text=True, cwd=tmp_path, env=clean_env, check=True)
    assert str(env_dir) in where.stdout  # read from the installed wheel, not from this checkout
    no_tf = subprocess.run([str(py), "-c", "import tensorflow"], capture_output=True, cwd=tmp_path, env=clean_env)
    assert no_tf.returncode != 0
