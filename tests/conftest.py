"""Shared fixtures: tiny images the tests make, and the real data beside the project."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""``../shared/data`` seen from the project root (real data; never copied into the repo)."""


def shared_dataset(name: str) -> Path:
    """Return ``../shared/data/<name>``, or skip the test with a clear reason if it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} is absent (see shared/data/README.md)")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
