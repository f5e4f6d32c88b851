"""Evaluation metrics on masks, in NumPy, SciPy and OpenCV (no Keras; one image at a time).

Masks are ``(H, W)`` or ``(H, W, 1)`` arrays, nonzero = foreground (bool, or integer
0/1 or 0/255; a float array must hold only 0 and 1, so that probabilities are
thresholded before calling rather than read as foreground). All distances are in pixels.

Empty masks (one rule for every overlap score):

* truth and prediction both empty: Dice = IoU = precision = recall = 1, HD95 = 0
  (nothing to find, nothing found);
* exactly one empty: Dice = IoU = precision = recall = 0, HD95 = ``inf`` (there is
  no surface to measure a distance to). :func:`summarize` reports how many values
  are infinite and computes the statistics over the finite ones, so a summary
  never turns into ``inf``/``NaN`` silently.

For ISBI 2012 membrane maps, :func:`rand_error` compares connected-component
labellings (:func:`unet_lowered.dataset.masks.label_components` with 4-connectivity,
so that a diagonal membrane one pixel wide separates two cells) with the
foreground-restricted Rand error of the ISBI 2012 challenge's script, and
:func:`best_rand_error` takes its best over thresholds of a probability map, per slice.
The challenge's leaderboard goes further: it thins the predicted membranes to lines
one pixel wide before scoring (:func:`thin_borders`, :func:`rand_error_thinned`) and
takes one threshold for the whole stack (:func:`leaderboard_rand_error`), which forgives
membranes drawn too thick. :func:`adapted_rand_error` is scikit-image's convention of
the same error (predicted membrane pooled into one segment): larger again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import cv2
import numpy as np
from scipy.spatial import cKDTree

from unet_lowered.dataset.masks import as_2d, label_components
from unet_lowered.errors import UnetError

SCORE_KEYS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "hd95", "fg_true", "fg_pred")
"""Keys of :func:`score`, in the order a per-image table shows them."""

_CROSS_KERNEL = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))  # 4-neighbourhood


def _as_mask(x: np.ndarray, what: str) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 1)`` array -> ``(H, W)`` bool (nonzero = foreground)."""
    x = as_2d(x, what)
    if x.dtype.kind == "f" and not np.all((x == 0) | (x == 1)):
        raise UnetError(
            f"{what} has values other than 0 and 1 (probabilities?); threshold it first, "
            "e.g. mask = prob > 0.5"
        )
    return x != 0


def _pair(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_mask(true, "true mask"), _as_mask(pred, "predicted mask")
    if t.shape != p.shape:
        raise UnetError(
            f"true mask {t.shape} and predicted mask {p.shape} differ in size; "
            "resize the prediction to the mask's size before scoring"
        )
    return t, p


def _ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    """``numerator / denominator``; a zero denominator gives 1 if both masks are empty, else 0."""
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return numerator / denominator


def _counts(true: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, bool]:
    t, p = _pair(true, pred)
    tp = int(np.count_nonzero(t & p))
    n_true, n_pred = int(np.count_nonzero(t)), int(np.count_nonzero(p))
    return tp, n_true, n_pred, n_true == 0 and n_pred == 0


def _overlaps(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Dice, IoU, precision and recall from one count of the pixels."""
    tp, n_true, n_pred, both_empty = _counts(true, pred)
    return {
        "dice": _ratio(2 * tp, n_true + n_pred, both_empty),
        "iou": _ratio(tp, n_true + n_pred - tp, both_empty),
        "precision": _ratio(tp, n_pred, both_empty),
        "recall": _ratio(tp, n_true, both_empty),
    }


def dice(true: np.ndarray, pred: np.ndarray) -> float:
    """Dice coefficient ``2|T∩P| / (|T| + |P|)``; 1 if both masks are empty.

    Args:
        true: ground-truth mask, ``(H, W)`` or ``(H, W, 1)``, nonzero = foreground.
        pred: predicted mask of the same size.

    Returns:
        Dice in ``[0, 1]``.

    Raises:
        UnetError: the masks differ in size, are not 2-D, or hold probabilities.
    """
    return _overlaps(true, pred)["dice"]


def iou(true: np.ndarray, pred: np.ndarray) -> float:
    """Intersection over union (Jaccard) ``|T∩P| / |T∪P|``; 1 if both masks are empty.

    Args:
        true: ground-truth mask, ``(H, W)`` or ``(H, W, 1)``.
        pred: predicted mask of the same size.

    Returns:
        IoU in ``[0, 1]``.
    """
    return _overlaps(true, pred)["iou"]


def precision(true: np.ndarray, pred: np.ndarray) -> float:
    """Precision ``|T∩P| / |P|``; 1 if both masks are empty, 0 if only the prediction is.

    Args:
        true: ground-truth mask, ``(H, W)`` or ``(H, W, 1)``.
        pred: predicted mask of the same size.

    Returns:
        Precision in ``[0, 1]``.
    """
    return _overlaps(true, pred)["precision"]


def recall(true: np.ndarray, pred: np.ndarray) -> float:
    """Recall (sensitivity) ``|T∩P| / |T|``; 1 if both masks are empty, 0 if only the truth is.

    Args:
        true: ground-truth mask, ``(H, W)`` or ``(H, W, 1)``.
        pred: predicted mask of the same size.

    Returns:
        Recall in ``[0, 1]``.
    """
    return _overlaps(true, pred)["recall"]


def surface(mask: np.ndarray) -> np.ndarray:
    """The surface (outline) of a mask: its pixels with a 4-neighbour outside it.

    Pixels on the image border count as surface (outside the image is background).

    Args:
        mask: ``(H, W)`` or ``(H, W, 1)`` mask.

    Returns:
        ``(H, W)`` bool array, True on the surface.
    """
    m = np.ascontiguousarray(_as_mask(mask, "mask"))
    eroded = cv2.erode(
        m.view(np.uint8), _CROSS_KERNEL, borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    return m & (eroded == 0)


def surface_distances(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface pixel of one mask to the nearest surface pixel of the other.

    Exact Euclidean distances, the nearest surface pixel found by a k-d tree
    (``scipy.spatial.cKDTree``) of the other mask's surface pixels: the same float64
    values as SciPy's distance transform of the whole image (tested), in a fifth of
    the time on a 4k X-ray, whose surfaces hold some 10,000 pixels of 16 million.

    Args:
        true: ground-truth mask, ``(H, W)`` or ``(H, W, 1)``; must not be empty.
        pred: predicted mask of the same size; must not be empty.

    Returns:
        ``(true_to_pred, pred_to_true)``: 1-D float64 arrays, one distance in pixels per
        surface pixel of ``true`` and of ``pred``.

    Raises:
        UnetError: either mask is empty (no surface), or the masks do not match.
    """
    t, p = _pair(true, pred)
    if not t.any() or not p.any():
        raise UnetError("surface distances need two non-empty masks; one of them is empty")
    c, r, w, h = cv2.boundingRect(np.ascontiguousarray(t | p).view(np.uint8))
    r0, r1 = max(r - 1, 0), r + h + 1  # the joint bounding box and one pixel around it
    c0, c1 = max(c - 1, 0), c + w + 1
    st = np.argwhere(surface(t[r0:r1, c0:c1]))  # (row, column) of each, in raster order
    sp = np.argwhere(surface(p[r0:r1, c0:c1]))
    to_pred = cKDTree(sp).query(st)[0]
    to_true = cKDTree(st).query(sp)[0]
    return to_pred, to_true


def hausdorff(true: np.ndarray, pred: np.ndarray, percentile: float = 100.0) -> float:
    """Symmetric (percentile) Hausdorff distance between the mask surfaces, in pixels.

    ``max(P_q(d(T→P)), P_q(d(P→T)))`` where ``d(A→B)`` are the distances of
    :func:`surface_distances` and ``P_q`` the q-th percentile (NumPy's linear
    interpolation), as in MONAI's ``compute_hausdorff_distance``. ``q = 100`` is
    the classical Hausdorff distance. Both empty: 0; exactly one empty: ``inf``.

    Args:
        true: ground-truth mask, ``(H, W)`` or ``(H, W, 1)``.
        pred: predicted mask of the same size.
        percentile: q in ``[0, 100]``.

    Returns:
        Distance in pixels (``inf`` when exactly one mask is empty).
    """
    if not 0.0 <= percentile <= 100.0:
        raise UnetError(f"percentile must be in [0, 100], got {percentile}")
    t, p = _pair(true, pred)
    has_t, has_p = bool(t.any()), bool(p.any())
    if not has_t and not has_p:
        return 0.0
    if has_t != has_p:
        return math.inf
    to_pred, to_true = surface_distances(t, p)
    return float(max(np.percentile(to_pred, percentile), np.percentile(to_true, percentile)))


def hd95(true: np.ndarray, pred: np.ndarray) -> float:
    """95th-percentile symmetric Hausdorff distance in pixels (see :func:`hausdorff`).

    Args:
        true: ground-truth mask, ``(H, W)`` or ``(H, W, 1)``.
        pred: predicted mask of the same size.

    Returns:
        HD95 in pixels: 0 if both masks are empty, ``inf`` if exactly one is.
    """
    return hausdorff(true, pred, 95.0)


def score(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Every metric for one image.

    Args:
        true: ground-truth mask, ``(H, W)`` or ``(H, W, 1)``, nonzero = foreground.
        pred: predicted mask of the same size.

    Returns:
        Dict with the keys of :data:`SCORE_KEYS`: ``dice``, ``iou``, ``precision``,
        ``recall``, ``hd95`` (pixels; ``inf`` if exactly one mask is empty),
        ``fg_true`` and ``fg_pred`` (foreground fractions of the image).

    Raises:
        UnetError: the masks differ in size, are not 2-D, or hold probabilities.
    """
    t, p = _pair(true, pred)
    return {
        **_overlaps(t, p),
        "hd95": hd95(t, p),
        "fg_true": float(t.mean()),
        "fg_pred": float(p.mean()),
    }


def per_class_scores(
    true_labels: np.ndarray, pred_labels: np.ndarray, num_classes: int
) -> dict[int, dict[str, float]]:
    """:func:`score` for each foreground class of a multi-class label map.

    Args:
        true_labels: ``(H, W)`` or ``(H, W, 1)`` integer labels ``0..num_classes-1``.
        pred_labels: predicted labels of the same size (e.g. the argmax of the logits).
        num_classes: number of classes including the background class 0 (>= 2).

    Returns:
        ``{class: score dict}`` for classes ``1..num_classes-1``.

    Raises:
        UnetError: ``num_classes < 2`` or a label outside ``0..num_classes-1``.
    """
    if num_classes < 2:
        raise UnetError(f"per-class scores need num_classes >= 2, got {num_classes}")
    t, p = np.asarray(true_labels), np.asarray(pred_labels)
    for what, labels in (("true", t), ("predicted", p)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise UnetError(
                f"{what} labels hold values outside 0..{num_classes - 1} "
                f"(min {labels.min()}, max {labels.max()}); check num_classes"
            )
    return {c: score(t == c, p == c) for c in range(1, num_classes)}


def summarize(values: Iterable[float]) -> dict[str, float | int | None]:
    """Summary statistics of one metric over images, robust to ``inf``/``NaN`` values.

    Statistics are computed over the finite values; ``n_nonfinite`` says how many
    were left out (for HD95: images where exactly one mask was empty).

    Args:
        values: one value per image.

    Returns:
        Dict with ``n``, ``n_nonfinite``, and ``mean``, ``median``, ``std``, ``min``,
        ``max`` of the finite values (None when there is none).
    """
    v = np.asarray(list(values), dtype=np.float64)
    finite = v[np.isfinite(v)]
    stats: dict[str, float | int | None] = {
        "n": int(v.size),
        "n_nonfinite": int(v.size - finite.size),
    }
    for key, fn in (
        ("mean", np.mean),
        ("median", np.median),
        ("std", np.std),
        ("min", np.min),
        ("max", np.max),
    ):
        stats[key] = float(fn(finite)) if finite.size else None
    return stats


def rand_error(true_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """Foreground-restricted Rand error as the ISBI 2012 challenge's script computes it,
    on the cells as predicted (the leaderboard thins them first: :func:`rand_error_thinned`).

    The convention of the challenge's script (Fiji ``RandError``,
    ``foregroundRestrictedStatsN2``; Arganda-Carreras et al., "Crowdsourcing the
    creation of image segmentation algorithms for connectomics", Front. Neuroanat.
    9:142, 2015): pixels whose TRUE label is 0 (membrane) are left out, and each
    pixel with PREDICTED label 0 (predicted membrane inside a true cell) is a segment
    of its own, a singleton, rather than part of one big "membrane" segment as in
    :func:`adapted_rand_error`. With ``n_ij`` the pixels of true segment ``i`` and
    predicted segment ``j`` (singletons included), ``a_i = sum_j n_ij`` and
    ``b_j = sum_i n_ij``, counting pairs with the pixel itself (``n^2``)::

        precision = sum n_ij^2 / sum b_j^2      recall = sum n_ij^2 / sum a_i^2
        error = 1 - 2 precision recall / (precision + recall)

    0 for identical segmentations (up to renaming labels). For a membrane
    probability map the challenge reports the best value over thresholds:
    :func:`best_rand_error`.

    Args:
        true_labels: ``(H, W)`` integer labels of the truth (0 = membrane, ignored).
        pred_labels: ``(H, W)`` integer labels of the prediction (0 = predicted membrane).

    Returns:
        The error in ``[0, 1]`` (0 when there is no true foreground).

    Raises:
        UnetError: the label maps differ in size or are not integer arrays.
    """
    t, p = _foreground_labels(true_labels, pred_labels)
    if t.size == 0:
        return 0.0
    membrane = p == 0
    p = p.copy()
    # Singletons: labels above every real one, one per predicted-membrane pixel.
    p[membrane] = int(p.max()) + 1 + np.arange(int(membrane.sum()))
    n_ij, a_i, b_j = (c.astype(np.float64) for c in _contingency(t, p))
    both = float(np.sum(n_ij**2))
    precision, recall = both / float(np.sum(b_j**2)), both / float(np.sum(a_i**2))
    return 1.0 - 2.0 * precision * recall / (precision + recall)


RAND_THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))
"""Probability thresholds :func:`best_rand_error` tries: 0.1, 0.2, ..., 0.9."""


def best_rand_error(
    true_labels: np.ndarray,
    cell_prob: np.ndarray,
    thresholds: Iterable[float] = RAND_THRESHOLDS,
) -> tuple[float, float]:
    """The best :func:`rand_error` of one probability map over thresholds (the best Rand
    F-score), with the threshold that gives it; without the leaderboard's thinning and
    per slice (:func:`leaderboard_rand_error` does both as the leaderboard does).

    At each threshold the cells are the 4-connected components of
    ``cell_prob > threshold`` (:func:`unet_lowered.dataset.masks.label_components`);
    for a map of MEMBRANE probability pass ``1 - membrane_prob``.

    Args:
        true_labels: ``(H, W)`` integer labels of the true cells (0 = membrane).
        cell_prob: ``(H, W)`` probability that a pixel is inside a cell.
        thresholds: The thresholds to try.

    Returns:
        ``(error, threshold)``.
    """

    prob = _as_2d_float(cell_prob)
    return min(
        (rand_error(true_labels, label_components(prob > th, 4)[0]), float(th)) for th in thresholds
    )


def thin_borders(cells: np.ndarray) -> np.ndarray:
    """The challenge leaderboard's border thinning: cells grown over the predicted
    membrane until they meet, leaving lines one pixel wide.

    A port of what the ISBI 2012 evaluation script does before scoring (Fiji
    ``RandError.getForegroundRestrictedRandAfterThinningStatsN2``): the binary map,
    membrane 255 and cells 0, is flooded by ``WatershedTransform2D`` (Vincent and
    Soille's algorithm, 4-connectivity). On a binary map that is: the cells are the
    basins (their 4-connected components), and the membrane pixels are flooded
    breadth-first from them in Fiji's order (pixels column by column, neighbours
    left, up, right, down), a pixel reached from two basins becoming line (label 0).
    Only the partition matters to the Rand error, not the label numbers.

    Args:
        cells: ``(H, W)`` bool (or non-zero) map of predicted cell interior.

    Returns:
        int32 ``(H, W)`` labels: ``1..n`` the grown cells, 0 the lines between them.
        With no cell at all, the whole slice is one segment (label 1), as in Fiji.
    """
    cells = as_2d(np.asarray(cells), "cells") != 0
    basins, count = label_components(cells, 4)
    if count == 0:
        return np.ones(cells.shape, np.int32)
    # Fiji's arrays are [x][y] and its pixel list runs x-major: work on the transpose,
    # flat, so that index order is Fiji's order and neighbours are index offsets.
    height = cells.shape[0]
    mask, wshed, inqueue = -2, 0, -3
    lab = basins.T.ravel().tolist()  # basin labels, 0 on the membrane for now
    membrane = np.flatnonzero(~cells.T.ravel()).tolist()
    size = len(lab)

    def neighbours(k: int) -> tuple[int, ...]:
        y = k % height
        out = []
        if k - height >= 0:
            out.append(k - height)  # x - 1
        if y > 0:
            out.append(k - 1)  # y - 1
        if k + height < size:
            out.append(k + height)  # x + 1
        if y < height - 1:
            out.append(k + 1)  # y + 1
        return tuple(out)

    near = [neighbours(k) for k in membrane]
    for k in membrane:
        lab[k] = -1  # not yet seen (Fiji's INIT)
    fifo: deque[int] = deque()
    for k, around in zip(membrane, near, strict=True):
        lab[k] = mask
        if any(lab[n] >= wshed for n in around):
            fifo.append(k)
            lab[k] = inqueue
    flag = False
    while fifo:
        k = fifo.popleft()
        for n in neighbours(k):
            here, there = lab[k], lab[n]
            if there > 0:
                if here == inqueue or (here == wshed and flag):
                    lab[k] = there
                elif here > 0 and here != there:
                    lab[k] = wshed
                    flag = False
            elif there == wshed:
                if here == inqueue:
                    lab[k] = wshed
                    flag = True
            elif there == mask:
                lab[n] = inqueue
                fifo.append(n)
    out = np.asarray(lab, np.int32).reshape(cells.shape[1], height).T
    return np.ascontiguousarray(out)


def rand_error_thinned(true_labels: np.ndarray, cells: np.ndarray) -> float:
    """:func:`rand_error` of the cells after :func:`thin_borders`: the figure on the
    ISBI 2012 leaderboard (V_Rand after border thinning, as ``1 - V_Rand``).

    Thinning forgives predicted membranes thicker than the true ones (the cells grow
    back over them), so this is never above the plain :func:`rand_error` of the same
    cells by much and usually well below it.

    Args:
        true_labels: ``(H, W)`` integer labels of the true cells (0 = membrane).
        cells: ``(H, W)`` bool map of predicted cell interior.
    """
    return rand_error(true_labels, thin_borders(cells))


def leaderboard_thresholds() -> tuple[float, ...]:
    """The thresholds of the challenge's script, made as it makes them: from 0.0 while
    at most 1.0, adding 0.1 in floating point (0.0, 0.1, 0.2, 0.30000000000000004, ...,
    0.9999999999999999: eleven)."""
    out, th = [], 0.0
    while th <= 1.0:
        out.append(th)
        th += 0.1
    return tuple(out)


def leaderboard_rand_error(
    true_labels: Iterable[np.ndarray], cell_probs: Iterable[np.ndarray]
) -> tuple[float, float]:
    """The ISBI 2012 leaderboard's Rand figure for a stack of slices, as its script
    computes it (``getMaximalVRandAfterThinning(0.0, 1.0, 0.1, true)``).

    At each of :func:`leaderboard_thresholds` the cells are ``cell_prob > threshold``;
    each slice is scored by :func:`rand_error_thinned`, the slices are averaged (one
    threshold for the whole stack, per-slice average), and the best threshold wins.

    Args:
        true_labels: Per slice, ``(H, W)`` integer labels of the true cells.
        cell_probs: Per slice, ``(H, W)`` probability that a pixel is inside a cell.

    Returns:
        ``(error, threshold)``: ``1 - V_Rand`` at the best threshold, and that threshold.
    """
    truths = list(true_labels)
    probs = [_as_2d_float(p) for p in cell_probs]
    if len(truths) != len(probs) or not truths:
        raise UnetError(f"{len(truths)} true label maps for {len(probs)} probability maps")
    return min(
        (
            float(
                np.mean([rand_error_thinned(t, p > th) for t, p in zip(truths, probs, strict=True)])
            ),
            th,
        )
        for th in leaderboard_thresholds()
    )


def _as_2d_float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x


def _foreground_labels(
    true_labels: np.ndarray, pred_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The true and predicted labels (int64, flat) of the pixels whose true label is not 0."""
    t, p = np.asarray(true_labels), np.asarray(pred_labels)
    if t.shape != p.shape:
        raise UnetError(f"true labels {t.shape} and predicted labels {p.shape} differ in size")
    if t.dtype.kind not in "iub" or p.dtype.kind not in "iub":
        raise UnetError(
            f"Rand errors need integer label maps (got {t.dtype} and {p.dtype}); "
            "label masks with label_components(mask, 4) first"
        )
    keep = t != 0
    return t[keep].astype(np.int64), p[keep].astype(np.int64)


def _contingency(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n_ij, t_i, s_j)``: counts of each (true, pred) pair, of each true and pred label."""
    # Via unique (true, pred) pairs: labels may be large or sparse.
    _, t_idx = np.unique(t, return_inverse=True)
    _, p_idx = np.unique(p, return_inverse=True)
    _, n_ij = np.unique(t_idx * (int(p_idx.max()) + 1) + p_idx, return_counts=True)
    return n_ij, np.bincount(t_idx), np.bincount(p_idx)


def adapted_rand_error(true_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """Foreground-restricted Rand error as scikit-image computes it (``adapted_rand_error``).

    Pixels whose TRUE label is 0 (membrane/background) are left out; every
    predicted label, 0 included, is a segment. So every predicted-membrane pixel
    inside a true cell joins ONE giant segment, which punishes thick predicted
    membranes far more than the ISBI 2012 challenge does (see :func:`rand_error`). With ``n_ij`` the number of pixels with true
    label ``i`` and predicted label ``j``, ``t_i = sum_j n_ij``, ``s_j = sum_i n_ij``
    and ``n`` the pixel count, counting ordered pairs of distinct pixels::

        F = sum n_ij (n_ij - 1) / (0.5 sum t_i (t_i - 1) + 0.5 sum s_j (s_j - 1))

    the harmonic mean of the Rand split and merge scores. The error is ``1 - F``:
    0 for identical segmentations (up to renaming labels), near 1 for bad ones.
    When there is no pair to compare (no true foreground, or only one-pixel
    segments) the error is 0.

    Args:
        true_labels: ``(H, W)`` integer labels of the truth (0 = ignored).
        pred_labels: ``(H, W)`` integer labels of the prediction, same size.

    Returns:
        The error in ``[0, 1]``.

    Raises:
        UnetError: the label maps differ in size or are not integer arrays.
    """
    t, p = _foreground_labels(true_labels, pred_labels)
    if t.size == 0:
        return 0.0
    n_ij, t_i, s_j = _contingency(t, p)

    def pairs(counts: np.ndarray) -> float:
        counts = counts.astype(np.float64)
        return float(np.sum(counts * (counts - 1.0)))

    both, true_pairs, pred_pairs = pairs(n_ij), pairs(t_i), pairs(s_j)
    denominator = 0.5 * true_pairs + 0.5 * pred_pairs
    if denominator == 0.0:
        return 0.0
    return 1.0 - both / denominator
