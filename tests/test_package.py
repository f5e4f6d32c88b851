"""Importing the package as a library changes nothing global; the `unet` command quiets
TensorFlow's and OpenCV's logging for itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_PROBE = (
    "import os, json, sys; before = dict(os.environ); import {module}; "
    "import keras; changed = {{k: os.environ.get(k) for k in set(os.environ) ^ set(before)}}; "
    "print(json.dumps([keras.backend.backend(), changed]))"
)


def _probe(module: str, tmp_path: Path, backend: str | None) -> tuple[str, dict]:
    """The Keras backend and the environment variables that importing ``module`` (then
    Keras) added, in a fresh process whose keras.json names ``backend``."""
    home = tmp_path / "keras_home"
    home.mkdir(exist_ok=True)
    config = {"floatx": "float32", "epsilon": 1e-07, "image_data_format": "channels_last"}
    if backend:
        config["backend"] = backend
    (home / "keras.json").write_text(json.dumps(config))
    drop = ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL", "OPENCV_LOG_LEVEL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["KERAS_HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    name, changed = json.loads(done.stdout.strip().splitlines()[-1])
    return name, changed


def test_importing_the_package_keeps_the_users_backend_and_logging(tmp_path: Path) -> None:
    """A keras.json naming JAX is the user's choice: the package used to set
    KERAS_BACKEND=tensorflow on import, and TF_CPP_MIN_LOG_LEVEL and OPENCV_LOG_LEVEL."""
    backend, changed = _probe("unet_lowered, unet_lowered.model", tmp_path, "jax")
    assert backend == "jax"
    # What changes is what `import keras` on JAX changes by itself (JAX sets some).
    assert (backend, changed) == _probe("os", tmp_path, "jax")
    assert "KERAS_BACKEND" not in changed and "OPENCV_LOG_LEVEL" not in changed


def test_the_command_quiets_tensorflow_and_opencv_and_keeps_keras_default(tmp_path) -> None:
    backend, changed = _probe("unet_lowered.cli", tmp_path, None)
    assert backend == "tensorflow"  # Keras' own default when nothing names one
    assert changed["TF_CPP_MIN_LOG_LEVEL"] == "2" and changed["OPENCV_LOG_LEVEL"] == "SILENT"
