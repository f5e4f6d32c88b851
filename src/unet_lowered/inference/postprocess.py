"""From probabilities to a clean mask: threshold, connected components, holes.

Pure functions on NumPy arrays. Masks are ``(H, W)`` arrays: ``bool`` for one
foreground class, or integer class indices (0 = background) for several.
Connected components are those of
:func:`unet_lowered.dataset.masks.label_components` with 8-connectivity (pixels
touching at a corner belong to the same object); holes are background regions not
connected to the image border.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from unet_lowered.dataset.masks import label_components


def to_mask(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Turn probabilities into a mask.

    Args:
        probs: ``(H, W)`` or ``(H, W, 1)`` foreground probabilities (sigmoid), or
            ``(H, W, K)`` class probabilities (softmax, K > 1).
        threshold: Foreground where ``p >= threshold`` (one class only).

    Returns:
        ``(H, W)`` bool mask for one class; int32 class indices (argmax) for K > 1.
    """
    if probs.ndim == 3 and probs.shape[2] > 1:
        return np.argmax(probs, axis=2).astype(np.int32)
    if probs.ndim == 3:
        probs = probs[:, :, 0]
    return probs >= threshold


def count_components(mask: np.ndarray) -> int:
    """Number of 8-connected objects: foreground of a bool mask, or summed over classes."""
    if mask.dtype == bool:
        return label_components(mask)[1]
    return sum(label_components(mask == c)[1] for c in np.unique(mask) if c != 0)


def remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop objects smaller than ``min_area`` pixels from a bool mask."""
    if min_area <= 1:
        return mask.copy()
    labels, count = label_components(mask)
    if count == 0:
        return mask.copy()
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    return keep[labels]


def keep_largest(mask: np.ndarray, n: int) -> np.ndarray:
    """Keep the ``n`` largest objects of a bool mask (ties: the first in scan order)."""
    if n < 1:
        raise ValueError(f"keep_largest needs n >= 1, got {n}")
    labels, count = label_components(mask)
    if count <= n:
        return mask.copy()
    areas = np.bincount(labels.ravel())
    areas[0] = -1
    order = np.argsort(-areas, kind="stable")  # stable: equal areas keep scan order
    keep = np.zeros(count + 1, dtype=bool)
    keep[order[:n]] = True
    return keep[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not touch the image border (4-connected background)."""
    return ndimage.binary_fill_holes(mask)


def clean_mask(
    mask: np.ndarray,
    keep: int | None = None,
    holes: bool = False,
    min_area: int = 0,
) -> np.ndarray:
    """Apply the post-processing steps, in this order: small objects, largest N, holes.

    Args:
        mask: ``(H, W)`` bool mask, or integer class indices (0 = background); classes
            are cleaned one at a time and removed pixels become background.
        keep: Keep the ``keep`` largest objects (per class); None keeps all.
        holes: Fill holes (per class; only background pixels are filled, so a hole
            that holds another class keeps it).
        min_area: Drop objects smaller than this many pixels.

    Returns:
        A mask of the same shape and dtype.
    """
    if mask.dtype == bool:
        return _clean_binary(mask, keep, holes, min_area)
    out = mask.copy()
    for c in np.unique(mask):
        if c == 0:
            continue
        before = mask == c
        after = _clean_binary(before, keep, holes, min_area)
        out[before & ~after] = 0
        out[after & (out == 0)] = c
    return out


def _clean_binary(mask: np.ndarray, keep: int | None, holes: bool, min_area: int) -> np.ndarray:
    out = remove_small(mask, min_area) if min_area > 1 else mask
    if keep is not None:
        out = keep_largest(out, keep)
    if holes:
        out = fill_holes(out)
    return out.astype(bool, copy=True)
