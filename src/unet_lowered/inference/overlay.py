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
"""RGB of the reference outline (one class)."""

TRUTH_CLASSES_COLOUR = (255, 255, 255)
"""RGB of the reference outlines of a multi-class mask, each class's own (green would
be lost beside class 3's tint)."""

PALETTE = np.array(
    [(255, 64, 64), (64, 160, 255), (80, 220, 80), (255, 200, 0), (200, 80, 255), (0, 220, 220)],
    dtype=np.float32,
)
"""RGB per foreground class 1, 2, ...; class 1 is the binary colour."""


MANY_OBJECTS = 20
"""A class with more outlines than this (cells, nuclei) has them drawn 1 px wide: wider
ones, at :func:`overlay`'s thickness for the image size, hide the thin membranes and
gaps between touching objects."""

DISPLAY_PERCENTILES = (0.5, 99.5)
"""The display window of an image deeper than 8 bits: these percentiles of its values
map to black and white. A min-max stretch lets one burned-in marker or hot pixel at
65535 turn a 12-bit film black; 8-bit images are shown as stored."""

DISPLAY_SAMPLE = 1 << 18
"""Pixels the display window's percentiles are read from at most (a regular subsample)."""


def display(image: np.ndarray) -> np.ndarray:
    """An image as it is shown: float32 RGB ``(H, W, 3)`` in ``[0, 1]``.

    8-bit images are stretched from their own min to max (:func:`~unet_lowered.preprocess.to_unit`);
    deeper ones (16-bit, float) are windowed at :data:`DISPLAY_PERCENTILES`. For pictures
    only: the network's input is normalised as training normalised it.
    """
    rgb = to_channels(image, 3)
    window = _window(rgb)
    if window is None:
        return to_unit(rgb)
    lo, hi = window
    out = np.subtract(rgb, np.float32(lo), dtype=np.float32)
    out /= hi - lo
    return np.clip(out, 0.0, 1.0, out=out)


def _window(image: np.ndarray) -> tuple[float, float] | None:
    """:func:`display`'s window of a deeper-than-8-bit image; None: min to max."""
    if image.dtype == np.uint8:
        return None
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / DISPLAY_SAMPLE)))
    sample = image[::step, ::step].astype(np.float32)
    lo, hi = (float(v) for v in np.percentile(sample, DISPLAY_PERCENTILES))
    return (lo, hi) if hi > lo else None  # a flat window: min to max, as for 8 bits


def display_rgb8(image: np.ndarray) -> np.ndarray:
    """:func:`display` as uint8 RGB ``(H, W, 3)`` (``round(255 * display(image))``), made
    with about 4 bytes a pixel besides the image rather than :func:`display`'s 24: a
    99-megapixel JPEG's overlay took over 6 GB."""
    gray = image if image.ndim == 2 else to_channels(image, 3)
    window = _window(gray)
    if window is None:
        lo, hi = float(gray.min()), float(gray.max())
    else:
        lo, hi = window
    if gray.dtype in (np.uint8, np.uint16):  # a look-up table: one pass, no float copy
        levels = np.arange(256 if gray.dtype == np.uint8 else 65536, dtype=np.float64)
        table = _to_255(levels, lo, hi).astype(np.uint8)
        shown = table[gray]
    else:
        shown = np.empty(gray.shape, np.uint8)
        for rows in range(0, gray.shape[0], 256):  # float images: strips of float32
            part = gray[rows : rows + 256].astype(np.float32)
            shown[rows : rows + 256] = _to_255(part, lo, hi)
    return shown if shown.ndim == 3 else np.repeat(shown[:, :, None], 3, axis=2)


def _to_255(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``x`` from ``[lo, hi]`` to whole numbers in ``[0, 255]`` (all 0 when flat)."""
    if not hi > lo:
        return np.zeros(x.shape, x.dtype)
    return np.rint(np.clip((x - lo) * (255.0 / (hi - lo)), 0, 255))


def overlay(
    image: np.ndarray, mask: np.ndarray, alpha: float = 0.35, truth: np.ndarray | None = None
) -> np.ndarray:
    """The image in RGB with each class tinted and outlined; uint8 ``(H, W, 3)``.

    Built in uint8 (:func:`display_rgb8`, then blended where each class lies), so a large
    image costs a few bytes a pixel.

    Args:
        image: The decoded image (any bit depth, gray or RGB); shown as :func:`display`
            shows it.
        mask: bool ``(H, W)`` mask or class indices (0 = background).
        alpha: Tint opacity.
        truth: A reference mask whose outline is drawn on top, or None: a bool mask's
            foreground in :data:`TRUTH_COLOUR`; class indices, each class's outline in
            :data:`TRUTH_CLASSES_COLOUR`.
    """
    out = display_rgb8(image)
    mask = np.asarray(mask)
    thickness = max(1, round(min(mask.shape) / 300))
    tint = round(alpha * 256)
    for c in range(1, int(mask.max(initial=0)) + 1):
        region = mask == c if mask.dtype != bool else mask
        if not region.any():
            continue
        colour = PALETTE[(c - 1) % len(PALETTE)].astype(np.uint16)
        for rows in range(0, out.shape[0], 512):  # strips: the temporaries stay small
            part, inside = out[rows : rows + 512], region[rows : rows + 512]
            blended = part[inside].astype(np.uint16) * (256 - tint) + colour * tint + 128
            part[inside] = (blended >> 8).astype(np.uint8)
        contours, _ = cv2.findContours(
            np.ascontiguousarray(region).view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE
        )
        thin = 1 if len(contours) > MANY_OBJECTS else thickness  # cells: keep the gaps visible
        cv2.drawContours(out, contours, -1, tuple(int(v) for v in colour), thin)
    if truth is not None:
        truth = np.asarray(truth)
        classes = truth.dtype != bool  # class indices, whichever classes this one holds
        colour = tuple(int(v) for v in (TRUTH_CLASSES_COLOUR if classes else TRUTH_COLOUR))
        for c in range(1, int(truth.max(initial=0)) + 1) if classes else [None]:
            region = truth == c if classes else truth > 0
            contours, _ = cv2.findContours(
                np.ascontiguousarray(region).view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE
            )
            cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def label_colours(mask: np.ndarray) -> np.ndarray:
    """A mask as a picture: background black, each class in its :data:`PALETTE` colour
    (uint8 ``(H, W, 3)``); a bool mask's foreground in class 1's."""
    labels = np.asarray(mask).astype(np.int32)
    out = np.zeros((*labels.shape, 3), np.uint8)
    for c in range(1, int(labels.max(initial=0)) + 1):
        out[labels == c] = PALETTE[(c - 1) % len(PALETTE)].astype(np.uint8)
    return out
