"""The U-Net paper's pixel weight map (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

``d1``/``d2`` are the distances from pixel ``x`` to the nearest and the
second-nearest object; objects are the connected components of the mask
(8-connectivity) unless instance labels are given. The border term is added to
BACKGROUND pixels only (our reading of the paper's Fig. 3d; its eq. 2 is written for
every pixel): it makes the thin gaps between nearby objects expensive to get wrong, so
the network learns to keep objects apart.

``w_c`` balances the classes by inverse frequency: class ``c`` (each distinct mask
value) covering ``N_c`` of the ``N`` pixels gets ``N / (K * N_c)`` with ``K`` the number
of classes present, so ``w_c`` averages to 1 over the image (a mask with one class
gets 1 everywhere). Each class weight is capped at :data:`MAX_CLASS_WEIGHT`, since a
mask with a few foreground pixels would otherwise weigh them in the thousands.

Speed: an object only matters where its distance is below the reach ``R`` at
which the border term falls under :data:`TOLERANCE` (``R = sigma * sqrt(2 ln(w0 /
TOLERANCE))``, 21.5 px for w0=10, sigma=5), so each object's distance transform is
computed only on its bounding box grown by ``R``, and the term is set to 0 where
``d1 + d2 > R``. The result differs from the exact formula by less than
:data:`TOLERANCE` everywhere. The weighted loss reads the map as channel 1 of
``y_true`` (see :mod:`unet_lowered.training.losses`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from unet_lowered.dataset.masks import as_2d, label_components
from unet_lowered.errors import UnetError

TOLERANCE = 1e-3
"""Largest difference between :func:`weight_map` and the exact formula."""

MAX_CLASS_WEIGHT = 10.0
"""Cap on each class-balancing weight ``w_c``."""


def _as_labels(mask: np.ndarray, what: str) -> np.ndarray:
    return as_2d(mask, what)


def class_weights(mask: np.ndarray) -> np.ndarray:
    """Class-balancing weights ``w_c``: inverse class frequency, mean 1 over the image.

    Args:
        mask: ``(H, W)`` or ``(H, W, 1)``; each distinct value is a class (0/1, 0/255
            or integer labels).

    Returns:
        ``(H, W)`` float32, ``N / (K * N_c)`` on the pixels of class ``c``, capped at
        :data:`MAX_CLASS_WEIGHT`.
    """
    m = _as_labels(mask, "mask")
    values, inverse, counts = np.unique(m, return_inverse=True, return_counts=True)
    per_class = m.size / (values.size * counts.astype(np.float64))
    per_class = np.minimum(per_class, MAX_CLASS_WEIGHT)
    return per_class[inverse.reshape(m.shape)].astype(np.float32)


def reach(w0: float, sigma: float) -> float:
    """Distance ``R`` beyond which ``w0 * exp(-R^2 / (2 sigma^2)) < TOLERANCE``, in pixels."""
    if w0 <= TOLERANCE:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / TOLERANCE))


def nearest_two_distances(
    objects: np.ndarray, max_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the distances to the nearest and second-nearest labelled object.

    Each object's Euclidean distance transform is computed on its bounding box
    grown by ``max_distance`` only; distances up to ``max_distance`` are exact and
    larger ones may be reported as ``inf``.

    Args:
        objects: ``(H, W)`` integer labels, 0 = no object, ``1..K`` objects.
        max_distance: distances up to this value (pixels) are exact.

    Returns:
        ``(d1, d2)``: ``(H, W)`` float64 arrays (0 inside an object for its own distance).
    """
    d1 = np.full(objects.shape, np.inf)
    d2 = np.full(objects.shape, np.inf)
    margin = math.ceil(max_distance) + 1
    height, width = objects.shape
    for label, box in enumerate(ndimage.find_objects(objects), start=1):
        if box is None:  # a label number that is not used
            continue
        rows = slice(max(box[0].start - margin, 0), min(box[0].stop + margin, height))
        cols = slice(max(box[1].start - margin, 0), min(box[1].stop + margin, width))
        distance = ndimage.distance_transform_edt(objects[rows, cols] != label)
        first, second = d1[rows, cols], d2[rows, cols]  # views: updated in place
        np.minimum(second, np.maximum(first, distance), out=second)
        np.minimum(first, distance, out=first)
    return d1, d2


def weight_map(
    mask: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    objects: np.ndarray | None = None,
) -> np.ndarray:
    """The paper's weight map ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))``.

    Args:
        mask: ``(H, W)`` or ``(H, W, 1)`` mask, 0 = background (0/1, 0/255 or labels).
        w0: height of the border term (paper: 10).
        sigma: width of the border term in pixels (paper: 5).
        objects: optional ``(H, W)`` instance labels (0 = none), e.g. one label per
            DSB2018 nucleus so that touching nuclei count as two objects; default:
            the 8-connected components of ``mask != 0``.

    Returns:
        ``(H, W)`` float32 weights: ``w_c`` (see :func:`class_weights`) plus the
        border term on background pixels with at least two objects within reach.

    Raises:
        UnetError: ``w0 < 0``, ``sigma <= 0``, a non-2-D mask, or ``objects`` of
            another size.
    """
    if w0 < 0 or sigma <= 0:
        raise UnetError(f"weight map needs w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    m = _as_labels(mask, "mask")
    weights = class_weights(m)
    if objects is None:
        objects, count = label_components(m, 8)
    else:
        objects = _as_labels(objects, "objects")
        if objects.dtype.kind not in "iub":
            raise UnetError(f"objects must be integer instance labels, got dtype {objects.dtype}")
        if objects.shape != m.shape:
            raise UnetError(
                f"objects {objects.shape} and mask {m.shape} differ in size; "
                "pass instance labels of the mask's size"
            )
        count = len(np.unique(objects[objects != 0]))
    limit = reach(w0, sigma)
    if count < 2 or limit == 0.0:
        return weights
    d1, d2 = nearest_two_distances(objects, limit)
    total = d1 + d2
    near = (m == 0) & (total <= limit)
    weights[near] += (w0 * np.exp(-(total[near] ** 2) / (2.0 * sigma**2))).astype(np.float32)
    return weights
