"""Training settings: one dataclass, defaults, a YAML/JSON config file, and validation.

Precedence: defaults < ``--config FILE`` < command-line flags. The resolved
settings are written to ``RUN/config.json`` and are all a run needs to be
resumed, evaluated or used for prediction.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unet_lowered.errors import UnetError

LOSSES = ("bce+dice", "bce", "dice", "focal", "weighted-bce")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("plateau", "cosine", "none")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
INPUT_MODES = ("resize", "crop")
PADDINGS = ("same", "valid")
UPSAMPLINGS = ("transpose", "bilinear")


@dataclass
class TrainConfig:
    """Every setting of ``unet train``, with the defaults used for chest X-rays.

    The augmentation defaults aim at X-rays from other hospitals (other scanners,
    exposure, positioning): moderate rotation/shift, scale ±20% (patients of other
    sizes, other collimation), elastic deformation as in the paper, brightness/
    contrast/gamma changes, CLAHE-style local contrast and noise; no flips (lungs
    are not left-right symmetric: the heart sits on the patient's left). Batch 4
    and 45 epochs: twice the updates of batch 8 in the same time, which the 200
    JSRT images need to pass a validation Dice of 0.98 within 10 minutes on 2 cores.
    """

    # data
    image_size: int | None = None  # None: auto (see resolve_image_size)
    input_mode: str = "resize"
    clahe: bool = False
    val_fraction: float = 0.15
    seed: int = 0
    # model
    base_filters: int = 16
    depth: int = 4
    padding: str = "same"
    batch_norm: bool = False
    dropout: float = 0.0
    upsampling: str = "transpose"
    # optimisation
    epochs: int = 45
    batch_size: int = 4
    loss: str = "bce+dice"
    optimizer: str = "adam"
    learning_rate: float | None = None  # None: 1e-3 for Adam, 1e-2 for SGD
    schedule: str = "cosine"
    patience: int = 15
    precision: str = "auto"
    threshold: float = 0.5
    # weighted-bce (the paper's border weights)
    w0: float = 10.0
    sigma: float = 5.0
    # augmentation
    flip_lr: bool = False
    flip_ud: bool = False
    rotate: float = 10.0
    scale: float = 0.2
    shift: float = 0.08
    elastic: bool = True
    intensity: bool = True
    # debugging
    overfit_batch: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        """Check enumerations and ranges; raise UnetError naming the valid values."""
        for name, allowed in (
            ("loss", LOSSES),
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("precision", PRECISIONS),
            ("input_mode", INPUT_MODES),
            ("padding", PADDINGS),
            ("upsampling", UPSAMPLINGS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise UnetError(
                    f"{name.replace('_', '-')} {value!r} is not known; use one of: {', '.join(allowed)}"
                )
        if not 0.0 <= self.val_fraction < 1.0:
            raise UnetError(f"val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.image_size == "auto":  # a config file may spell the default out
            self.image_size = None
        for name in ("image_size", "epochs", "batch_size", "base_filters", "depth"):
            if name == "image_size" and self.image_size is None:
                continue
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise UnetError(
                    f"{name.replace('_', '-')} must be a whole number, got {getattr(self, name)!r}"
                )
            if getattr(self, name) < 1:
                raise UnetError(
                    f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise UnetError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.threshold < 1.0:
            raise UnetError(f"threshold must be in (0, 1), got {self.threshold}")
        return self

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.optimizer == "adam" else 1e-2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON file of training settings (keys as in ``unet train --help``).

    Keys may use dashes or underscores (``image-size`` or ``image_size``).

    Raises:
        UnetError: Unreadable file, not a mapping, or an unknown key (the message lists valid ones).
    """
    path = Path(path)
    if not path.is_file():
        raise UnetError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:
        raise UnetError(f"{path}: not valid YAML/JSON ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UnetError(f"{path}: expected a mapping of setting: value, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise UnetError(
                f"{path}: unknown setting {key!r}; valid settings: {', '.join(sorted(FIELDS))}"
            )
        out[name] = value
    return out


def resolve(
    config_file: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults, then the config file, then the non-None ``overrides`` (command-line flags)."""
    values: dict[str, Any] = {}
    from_file: set[str] = set()
    if config_file is not None:
        values.update(read_config_file(config_file))
        from_file = set(values)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(flags)
    from_file -= set(flags)
    unknown = set(values) - FIELDS
    if unknown:
        raise UnetError(f"unknown settings: {', '.join(sorted(unknown))}")
    try:
        cfg = TrainConfig(**values)
    except TypeError as e:
        raise UnetError(f"bad settings: {e}") from None
    try:
        return cfg.validate()
    except UnetError as e:  # a bad value from the file: name the file to fix
        setting = str(e).split(" ", 1)[0].replace("-", "_")
        if setting in from_file:
            raise UnetError(f"{config_file}: {e}") from None
        raise


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from a run's ``config.json`` (extra keys kept in ``extra``)."""
    known = {k: v for k, v in values.items() if k in FIELDS}
    if isinstance(known.get("image_size"), list):  # config.json stores [H, W]
        known["image_size"] = int(known["image_size"][0])
    cfg = TrainConfig(**known)
    cfg.extra = {k: v for k, v in values.items() if k not in FIELDS and k != "extra"}
    return cfg
