"""Tiny run folders for the predict/evaluate tests (no training needed).

``bright_model`` is a one-layer network with a known answer: its logit is ten times
the standardised input, so it marks as foreground every pixel brighter than the
image's mean. On a bright disk over a dark background that is exactly the disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def bright_model(image_size: int = 32, channels: int = 1, num_classes: int = 1):
    """``logit_k = 10 * k * mean_c(z)``: foreground = brighter than average (class 1 for K=1)."""
    import keras

    inputs = keras.Input((image_size, image_size, channels), name="image")
    outputs = keras.layers.Conv2D(num_classes, 1, name="logits")(inputs)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((1, 1, channels, num_classes), np.float32)
    # one class: 10*z; K classes: class k gets 10*k*z, so bright pixels go to the last class
    for k in range(num_classes):
        kernel[0, 0, :, k] = 10.0 * (k if num_classes > 1 else 1) / channels
    model.get_layer("logits").set_weights([kernel, np.zeros(num_classes, np.float32)])
    return model


def dark_model(image_size: int = 32):
    """``logit = -10 z``: foreground = darker than average, as lungs are on an X-ray."""
    model = bright_model(image_size)
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([-kernel, bias])
    return model


def chest_picture(
    height: int = 64, width: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Two dark 'lungs' (ellipses) side by side on a light 'chest', uint8, and their mask:
    :func:`dark_model` marks exactly the lungs; ``255 - image`` is the film with its gray
    scale inverted (a MONOCHROME1 export), where it marks the chest around them."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    for cx in (0.3, 0.7):
        centre = (round(width * (cx + rng.uniform(-0.02, 0.02))), round(height * 0.5))
        axes = (round(width * rng.uniform(0.13, 0.16)), round(height * rng.uniform(0.3, 0.34)))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
    image = np.where(mask > 0, 60.0, 200.0) + rng.normal(0, 4, mask.shape)
    image = cv2.GaussianBlur(image, (0, 0), 1.0)
    return np.clip(image, 0, 255).astype(np.uint8), mask > 0


def chest_stats(count: int = 6) -> dict:
    """``mask_stats`` of :func:`chest_picture` s, as ``unet train`` records them (with
    the objects' contrast: two dark objects)."""
    from unet_lowered.inference.quality import mask_stats

    pairs = [chest_picture(seed=k) for k in range(count)]
    return mask_stats([m for _, m in pairs], [im for im, _ in pairs]).to_json()


def apex_chest(
    height: int = 72, width: int = 56, seed: int = 0, heart: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Two dark 'lungs' shaped as on a chest X-ray, pointed at the top (apex) and wide at
    the bottom (base), on a light 'chest', uint8, and their mask: :func:`dark_model`
    marks exactly the lungs. Unlike :func:`chest_picture`'s ellipses, the pair is not
    alike upside down, so their ``mask_stats`` record a shape. ``heart``: the image-right
    lung's inner edge moved out by this share of the width (a heart on that side: the
    image-left lung is then the larger, and the masks are handed)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    top, bottom = height * rng.uniform(0.12, 0.16), height * rng.uniform(0.82, 0.86)
    for side in (-1, 1):  # the image-left lung, then its mirror image
        apex, outer = 0.5 + side * 0.15, 0.5 + side * 0.4
        inner = 0.5 + side * (0.06 + (heart if side == 1 else 0.0))
        corners = [(apex * width, top), (outer * width, bottom), (inner * width, bottom)]
        cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    image = np.where(mask > 0, 60.0, 200.0) + rng.normal(0, 4, mask.shape)
    image = cv2.GaussianBlur(image, (0, 0), 1.0)
    return np.clip(image, 0, 255).astype(np.uint8), mask > 0


def apex_stats(count: int = 6, heart: float = 0.0) -> dict:
    """``mask_stats`` of :func:`apex_chest` s, as ``unet train`` records them (the
    objects' contrast and their shape; with ``heart``, handed)."""
    from unet_lowered.inference.quality import mask_stats

    pairs = [apex_chest(seed=k, heart=heart) for k in range(count)]
    return mask_stats([m for _, m in pairs], [im for im, _ in pairs]).to_json()


def shifted_model(shift: int, image_size: int = 32):
    """``logit = 10 * z`` of the pixel ``shift`` columns to the left: a model that is not
    left-right equivariant, so flips (TTA) change what it predicts."""
    import keras

    k = 2 * shift + 1
    inputs = keras.Input((image_size, image_size, 1))
    outputs = keras.layers.Conv2D(1, k, padding="same", name="logits")(inputs)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((k, k, 1, 1), np.float32)
    kernel[shift, 0] = 10.0
    model.get_layer("logits").set_weights([kernel, np.zeros(1, np.float32)])
    return model


def make_run(run_dir: Path, model, **config: Any) -> Path:
    """Write ``model.keras`` and ``config.json`` (contract keys, overridable) into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model.keras")
    h, w, c = model.input_shape[1:]
    values = {
        "image_size": [h, w],
        "channels": c,
        "num_classes": model.output_shape[-1],
        "threshold": 0.5,
        "clahe": False,
        "input_mode": "resize",
        "padding": "same",
        "depth": 2,
        "label_values": None,
    }
    values.update(config)
    (run_dir / "config.json").write_text(json.dumps(values))
    return run_dir


def disk_image(
    height: int, width: int, dtype=np.uint8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A bright disk on a dark noisy background and its mask; ``(image, bool mask)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx, r = height * 0.45, width * 0.55, min(height, width) * 0.3
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    top = np.iinfo(dtype).max
    image = np.where(mask, 0.8 * top, 0.15 * top) + rng.normal(0, 0.02 * top, mask.shape)
    image = cv2.GaussianBlur(image, (0, 0), 1.0)
    return np.clip(image, 0, top).astype(dtype), mask


def run_config(values: dict[str, Any] | None = None, **more: Any):
    """A :class:`RunConfig` from ``config.json``-style values (image size 32 unless given)."""
    from unet_lowered.training.config import RunConfig

    return RunConfig.from_json({"image_size": [32, 32], **(values or {}), **more})


FRAMED_STATS = {"objects": 1, "fraction": [0.4, 0.6], "min_ratio": None}
"""``mask_stats`` for :func:`framed_pictures`: one object on 40-60% of the image."""


DARK_OBJECT_STATS = {**FRAMED_STATS, "contrast": [0.3, 0.5]}
"""``mask_stats`` of objects darker than their surroundings (as lungs are): the bright
half that :func:`bright_model` marks in :func:`framed_pictures` (contrast about -1) is
out of this range, and the quality flag says so when it is given the image."""


def framed_pictures() -> dict[str, np.ndarray]:
    """A 48x48 picture whose bright right half :func:`bright_model` marks (50% of it),
    alone (``plain``) and in the middle of a 96x96 collimator-gray frame (``framed``,
    where the mask is 12.5% of the image: out of :data:`FRAMED_STATS`' range, but 50% of
    the imaged field)."""
    picture = np.full((48, 48), 250, np.uint8)
    picture[:, :24] = np.linspace(0, 10, 48).astype(np.uint8)[:, None]  # dark, shaded
    framed = np.full((96, 96), 60, np.uint8)  # darker than the image's mean: background
    framed[24:72, 24:72] = picture
    return {"plain": picture, "framed": framed}
