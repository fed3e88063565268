"""Shared fixtures for edgedl's tests."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared, read-only real data sets: $EDGEDL_DATA, else <repo>/../shared/data."""
    env = os.environ.get("EDGEDL_DATA")
    path = Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"the shared data sets are not at {path} (set EDGEDL_DATA to their folder)")
    return path
