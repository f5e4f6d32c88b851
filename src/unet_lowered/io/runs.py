"""A trained run is a folder that carries everything needed to use it again.

Layout written by ``unet train`` (see :mod:`unet_lowered.training.train`)::

    RUN/model.keras     best model by validation Dice (weights + architecture)
    RUN/last.keras      latest epoch, with optimiser state (for --resume)
    RUN/state.json      epoch reached, best score so far (for --resume)
    RUN/config.json     every resolved setting: input size, channels, classes, threshold, ...
                        (:class:`~unet_lowered.training.config.RunConfig`)
    RUN/split.json      {"train": [ids], "val": [ids]}
    RUN/history.csv     one row per epoch (loss, dice, iou, val_*, lr)
    RUN/metrics.json    summary at the end: best epoch, validation Dice/IoU, time, images/s
    RUN/logs/           TensorBoard logs (TensorFlow backend)

``predict``, ``evaluate``, ``export`` and ``plot`` read it and never ask for the
architecture again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from unet_lowered.errors import UnetError
from unet_lowered.training.config import RunConfig

MODEL_FILE = "model.keras"
LAST_FILE = "last.keras"
CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
STATE_FILE = "state.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Run:
    """A run folder and its configuration.

    Attributes:
        dir: The run folder.
        config: Its ``config.json``, typed and checked.
    """

    dir: Path
    config: RunConfig

    @property
    def model_path(self) -> Path:
        return self.dir / MODEL_FILE

    def model(self, which: str = MODEL_FILE):
        """Load the best (default) or last model, without compiling, in Keras safe mode."""
        return load_model(self.dir / which)

    def split(self) -> dict[str, list[str]]:
        """The train/validation ids the run used (empty lists if the file is missing)."""
        path = self.dir / SPLIT_FILE
        if not path.is_file():
            return {"train": [], "val": []}
        return json.loads(path.read_text())


def load_run(path: str | os.PathLike) -> Run:
    """Open a run folder written by ``unet train``.

    Args:
        path: The run folder (or its ``model.keras``).

    Raises:
        UnetError: The folder or its ``config.json``/``model.keras`` is missing or unreadable.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".keras":
        path = path.parent
    if not path.is_dir():
        raise UnetError(f"{path}: no such run folder; pass the --out folder of `unet train`")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise UnetError(
            f"{config_path}: missing; {path} is not a run folder written by `unet train`"
        )
    try:
        config = RunConfig.from_json(json.loads(config_path.read_text()), config_path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnetError(f"{config_path}: unreadable ({e}); re-run `unet train`") from None
    if not (path / MODEL_FILE).is_file():
        raise UnetError(
            f"{path / MODEL_FILE}: missing; training has not finished an epoch yet "
            f"(resume it with `unet train --resume {path}`)"
        )
    return Run(path, config)


def load_model(path: str | os.PathLike):
    """Load a ``.keras`` file for inference: no compile, safe mode (no code from the file).

    Raises:
        UnetError: Missing or not a valid Keras model file.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise UnetError(f"{path}: no such model file")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # Keras raises ValueError/OSError/zipfile errors for bad files
        raise UnetError(f"{path}: not a loadable Keras model ({type(e).__name__}: {e})") from None
