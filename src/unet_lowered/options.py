"""The names of every option value, in one Keras-free module.

The CLI (its help texts), the training configuration, the model, the losses and
prediction all read their valid values and aliases from here, and check a value
with :func:`choose`, so a name accepted in one place is accepted everywhere and
every refusal lists the same valid values. Importing this module is cheap: it
imports nothing but the error class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from unet_lowered.errors import SettingError

# ---------------------------------------------------------------- training

LOSSES = ("bce+dice", "bce", "dice", "focal", "weighted-bce")
"""``--loss`` values; ``bce+dice`` is the default. For several classes the
cross-entropy is the softmax one, whence the ``ce`` aliases below."""

LOSS_ALIASES: Mapping[str, str] = {
    "ce": "bce",
    "ce+dice": "bce+dice",
    "weighted-ce": "weighted-bce",
}
"""Other accepted spellings of a loss (natural for multi-class) and the loss each means."""

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "onecycle", "plateau", "none")
"""``onecycle``: a linear warm-up from a tenth of the rate over the first 10% of the
steps, then the cosine decay."""
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
INPUT_MODES = ("resize", "crop")
"""``resize``: every image resized to the training size; ``crop``: random crops of it."""
DISTRIBUTE_MODES = ("none", "data-parallel")
"""``--distribute``: one device, or the batch split over all devices (and hosts)."""

# ---------------------------------------------------------------- model

PADDINGS = ("same", "valid")
"""``same`` keeps the size through each convolution; ``valid`` is the paper's (output smaller)."""

UPSAMPLINGS = ("transpose", "bilinear")
"""``transpose``: the paper's learned 2x2 up-convolution; ``bilinear``: resize then 2x2 conv."""

# ---------------------------------------------------------------- inference and evaluation

PREDICT_MODES = ("auto", "resize", "tile")
"""``--mode``: auto picks tile for crop-trained runs, resize otherwise."""

TTA_SETS = ("lr", "ud", "flips", "dihedral")
"""Test-time augmentation groups: left-right, up-down, both flips, flips + 90-degree turns."""

TTA_CHOICES = ("auto", *TTA_SETS)
"""``--tta-transforms``: ``auto`` takes the flips the run was trained with."""

BLENDS = ("gaussian", "linear", "constant")
"""Weights for blending overlapping tiles."""

POLARITIES = ("auto", "keep", "invert")
"""``--polarity``: auto predicts a flagged gray image again with its gray scale inverted
(:mod:`unet_lowered.inference.polarity`); keep reads images as stored; invert inverts all."""

ORIENTATIONS = ("auto", "keep")
"""``--orientation``: auto predicts a flagged image again turned upside down, then a
quarter each way (:mod:`unet_lowered.inference.polarity`); keep reads images as stored."""

PROB_FORMATS = ("png", "npy")
"""``--save-prob``: 8-bit PNG or float32 NumPy."""

EVAL_SPLITS = ("all", "val", "train")
"""``unet evaluate --split``: every pair, or only the run's validation/training ids."""

EXPORT_FORMATS = ("onnx", "saved_model")


def choose(
    value: object,
    allowed: Sequence[str],
    what: str,
    aliases: Mapping[str, str] | None = None,
) -> str:
    """Check an option value and return its canonical name.

    Case and spaces are ignored (``"BCE + Dice"`` is ``bce+dice``), and an alias
    becomes the name it stands for.

    Args:
        value: The value given.
        allowed: The canonical names.
        what: The option as the user wrote it, e.g. ``"loss"`` (shown as ``--loss``
            in messages; also the :class:`SettingError`'s ``setting``).
        aliases: Other spellings and the canonical name each means.

    Returns:
        One of ``allowed``.

    Raises:
        SettingError: Unknown value; the message lists the valid ones (and aliases).
    """
    key = "".join(str(value).split()).lower()
    aliases = aliases or {}
    key = aliases.get(key, key)
    if key in allowed:
        return key
    listed = ", ".join(allowed)
    if aliases:
        listed += " (aliases: " + ", ".join(f"{a}={b}" for a, b in aliases.items()) + ")"
    flag = what.replace("_", "-")
    raise SettingError(what.replace("-", "_"), f"unknown --{flag} {value!r}; use one of: {listed}")


def loss_name(value: object) -> str:
    """The canonical loss for a ``--loss`` value or alias (see :data:`LOSS_ALIASES`)."""
    return choose(value, LOSSES, "loss", LOSS_ALIASES)
