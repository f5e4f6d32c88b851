"""One overlay for every picture of a mask: ``unet predict --overlay`` and ``unet plot``.

The image in RGB, each predicted class tinted and outlined in its colour; with a
reference mask, its outline is drawn in green on top, so misses and false alarms
show at a glance.
"""

from __future__ import annotations

import cv2
import numpy as np

from unet_lowered.io.images import to_channels
from unet_lowered.preprocess import to_unit

TRUTH_COLOUR = (40, 220, 40)
"""RGB of the reference outline."""

PALETTE = np.array(
    [(255, 64, 64), (64, 160, 255), (80, 220, 80), (255, 200, 0), (200, 80, 255), (0, 220, 220)],
    dtype=np.float32,
)
"""RGB per foreground class 1, 2, ...; class 1 is the binary colour."""


def overlay(
    image: np.ndarray, mask: np.ndarray, alpha: float = 0.35, truth: np.ndarray | None = None
) -> np.ndarray:
    """The image in RGB with each class tinted and outlined; uint8 ``(H, W, 3)``.

    Args:
        image: The decoded image (any bit depth, gray or RGB); stretched to 8 bits.
        mask: bool ``(H, W)`` mask or class indices (0 = background).
        alpha: Tint opacity.
        truth: A reference mask (bool or class indices) whose foreground outline is
            drawn in :data:`TRUTH_COLOUR`, or None.
    """
    rgb = to_unit(to_channels(image, 3))
    out = (rgb * 255).astype(np.float32)
    labels = mask.astype(np.int32)
    thickness = max(1, round(min(mask.shape) / 300))
    for c in range(1, int(labels.max(initial=0)) + 1):
        region = labels == c
        if not region.any():
            continue
        colour = PALETTE[(c - 1) % len(PALETTE)]
        out[region] = (1 - alpha) * out[region] + alpha * colour
        contours, _ = cv2.findContours(
            region.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, tuple(float(v) for v in colour), thickness)
    if truth is not None:
        contours, _ = cv2.findContours(
            (np.asarray(truth) > 0).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, tuple(float(v) for v in TRUTH_COLOUR), thickness)
    return np.clip(out, 0, 255).round().astype(np.uint8)
