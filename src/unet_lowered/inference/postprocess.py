"""From probabilities to a clean mask: threshold, connected components, holes.

Pure functions on NumPy arrays. Masks are ``(H, W)`` arrays: ``bool`` for one
foreground class, or integer class indices (0 = background) for several.
Connected components are those of
:func:`unet_lowered.dataset.masks.label_components` with 8-connectivity (pixels
touching at a corner belong to the same object); holes are background regions not
connected to the image border.

For boundary data (cells that tile the image between thin membranes, as in EM),
:func:`split_touching` cuts objects along the watershed lines of the probability map,
so that a faint or broken membrane no longer merges two cells.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

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


def split_touching(probs: np.ndarray, mask: np.ndarray, seed: float) -> np.ndarray:
    """Cut a mask's objects along the watershed lines of the probability map.

    The cores of the objects (4-connected regions where ``probs >= seed``) flood the
    map's valleys (``1 - probs``: membranes are ridges) until they meet; the pixels
    where two floods meet become background (:func:`basin_borders`). Where the network
    saw a membrane only faintly (a gap in the thresholded mask that joins two cells),
    the cut still runs along its ridge, so the two cells stay apart. An object with no
    core of its own, or only one, is left whole; nothing outside the mask becomes
    foreground.

    Args:
        probs: ``(H, W)`` or ``(H, W, 1)`` foreground probabilities.
        mask: The thresholded ``(H, W)`` bool mask.
        seed: The probability that marks an object's core, in ``(0, 1)`` (above the
            threshold; ISBI 2012 cells: 0.9-0.98).

    Returns:
        A ``(H, W)`` bool mask: ``mask`` without the basins' borders; the objects it
        cuts apart stay apart in 4- and in 8-connectivity.
    """
    if probs.ndim == 3:
        probs = probs[:, :, 0]
    cores, count = label_components(probs >= seed, 4)
    if count < 2:
        return mask.copy()
    # 4-neighbour flooding without skimage's own lines: its 8-neighbour lines (which
    # would keep objects apart in 8-connectivity) took 16 s on one 512 x 512 EM slice.
    basins = watershed(1.0 - probs.astype(np.float32, copy=False), cores, connectivity=1)
    basins[~mask] = 0
    return mask & ~basin_borders(basins)


def basin_borders(labels: np.ndarray) -> np.ndarray:
    """The labelled pixels (non-zero) that have a differently labelled neighbour after
    them in scan order (right, down-left, down, down-right); 0 is background and
    borders no one.

    Removing them leaves no two differently labelled pixels 8-adjacent (of any such
    pair, the first in scan order is removed), so the regions stay apart in 4- and
    8-connectivity: a cut one pixel wide where the regions meet side by side, and
    where they meet only at corners (across a membrane one diagonal pixel wide), one
    pixel per corner.
    """
    border = np.zeros(labels.shape, bool)
    for here, after in (
        (np.s_[:, :-1], np.s_[:, 1:]),  # right
        (np.s_[:-1, :], np.s_[1:, :]),  # down
        (np.s_[:-1, :-1], np.s_[1:, 1:]),  # down-right
        (np.s_[:-1, 1:], np.s_[1:, :-1]),  # down-left
    ):
        a, b = labels[here], labels[after]
        border[here] |= (a != b) & (a != 0) & (b != 0)
    return border


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
