"""Turning the masks people actually have into clean binary or label masks.

Masks arrive as 0/1, 0/255, label images ({0, 150, 200}), binary masks saved as
JPEG (values clustered near 0 and near the maximum), RGB or RGBA files, and now
and then a photo or gradient saved by mistake. The rules, in order:

1. Colour masks are reduced to one channel first: a gray-stored-as-RGB mask keeps
   its one channel, a true colour mask becomes the maximum of R, G and B (so any
   coloured stroke counts).
2. ``foreground`` values given (``--foreground``): exactly those values are foreground.
3. One or two distinct values: the higher one is foreground (0/1, 0/255, 3/7 ...).
4. A lossy (JPEG) mask, or one with more than :data:`FEW_VALUES` distinct values,
   that is *near-binary* (:func:`is_near_binary`) is thresholded at the midpoint
   between its lowest and highest value, with a note.
5. Up to :data:`FEW_VALUES` distinct values: a label image; non-zero is foreground,
   with a note naming the values.
6. Anything else (many values, not near-binary) raises :class:`MaskValuesError`.

In multi-class mode (:func:`label_values`, :func:`to_labels`) the original values
are kept and mapped to class indices ``0..K-1`` in ascending order.

Reading a mask file for training, evaluation and plots is one rule too:
:func:`read_mask` (rule 1 on the decoded file) and :func:`to_classes` (rules 3-6 for
one class, so an unprepared JPEG or 1/255 mask is read as ``unet prepare`` would
write it; class indices, or the run's label values mapped to indices, for several).
Everything but :func:`read_mask` is a pure function on NumPy arrays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from unet_lowered.errors import UnetError
from unet_lowered.io.images import DEFAULT_MAX_PIXELS, read_image

FEW_VALUES = 8
"""A mask with at most this many distinct values may be a label image (non-zero = foreground)."""

MAX_CLASSES = 64
"""Most distinct label values ``--classes`` accepts in one data set."""

NEAR_BINARY_MIDDLE = 0.02
"""Near-binary: at most this fraction of pixels lies in the middle half of the value range..."""

NEAR_BINARY_TAIL = 0.10
"""...at most this fraction lies between 10% and 90% of the range..."""

NEAR_BINARY_TIGHT = 0.85
"""...and of the pixels in each outer quarter, at least this fraction lies within 10% of the end."""


class MaskValuesError(UnetError):
    """A mask whose values cannot be read as foreground/background (or as labels)."""


@dataclass(frozen=True)
class Binarized:
    """A binarised mask and how it was obtained.

    Attributes:
        mask: ``(H, W)`` bool array, True = foreground.
        rule: Which rule applied: ``"foreground"``, ``"two-valued"``, ``"near-binary"``,
            ``"label-nonzero"`` or ``"constant"``.
        note: A one-line remark worth showing the user (None when nothing is unusual).
    """

    mask: np.ndarray
    rule: str
    note: str | None = None


def parse_values(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """Parse ``--foreground`` style values: ``"255"``, ``"1,2"`` or ``"1-3,7"``.

    Args:
        text: Comma-separated integers or ranges ``a-b``, or already a sequence of ints.

    Returns:
        The sorted distinct values, or None when ``text`` is None or empty.

    Raises:
        UnetError: Not integers, negative, a reversed range, or above 65535.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        values = {int(v) for v in text}
    else:
        values = set()
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    a, b = (int(x) for x in part.split("-", 1))
                    if b < a:
                        raise ValueError
                    values.update(range(a, b + 1))
                else:
                    values.add(int(part))
            except ValueError:
                raise UnetError(
                    f"--foreground {text!r}: expected integers or ranges like '255', '1,2' or '1-3'"
                ) from None
    if not values:
        return None
    if min(values) < 0 or max(values) > 65535:
        raise UnetError(f"--foreground {text!r}: values must lie in 0..65535")
    return tuple(sorted(values))


def to_single_channel(mask: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Reduce an ``(H, W, C)`` mask to ``(H, W)``.

    Args:
        mask: ``(H, W)`` or ``(H, W, C)`` integer array (alpha already dropped).

    Returns:
        The 2-D mask and a note if a true colour mask was reduced (None otherwise).
    """
    if mask.ndim == 2:
        return mask, None
    if mask.ndim != 3:
        raise ValueError(f"mask must be 2-D or 3-D, got shape {mask.shape}")
    first = mask[..., 0]
    if all(np.array_equal(first, mask[..., c]) for c in range(1, mask.shape[2])):
        return first, None
    return mask.max(axis=2), "colour mask reduced to one channel (maximum of R, G, B)"


def value_counts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct values of an integer mask and their pixel counts (ascending)."""
    if mask.dtype == np.uint8:  # the common case; calcHist is faster than bincount
        counts = cv2.calcHist([np.ascontiguousarray(mask)], [0], None, [256], [0, 256])
        counts = counts.ravel().astype(np.int64)
        values = np.flatnonzero(counts)
        return values, counts[values]
    flat = mask.ravel()
    if flat.dtype in (np.uint16, bool):
        counts = np.bincount(flat.astype(np.int64, copy=False))
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(flat, return_counts=True)


def is_near_binary(values: np.ndarray, counts: np.ndarray) -> bool:
    """True when the pixel values cluster tightly at the two ends of their range.

    That is what a binary mask looks like after lossy compression (JPEG ringing)
    or anti-aliasing. A photo or gradient spreads its values over the range.

    Args:
        values: Distinct values (ascending), as from :func:`value_counts`.
        counts: Their pixel counts.
    """
    if len(values) < 2:
        return False
    lo, hi = float(values[0]), float(values[-1])
    span = hi - lo
    total = float(counts.sum())
    v = values.astype(np.float64)

    def fraction(inner: float) -> float:
        sel = (v > lo + inner * span) & (v < hi - inner * span)
        return float(counts[sel].sum()) / total

    def tight(low: bool) -> bool:
        # A photo's bright (or dark) pixels spread over the quarter; JPEG keeps them at the end.
        quarter = v <= lo + 0.25 * span if low else v >= hi - 0.25 * span
        tenth = v <= lo + 0.10 * span if low else v >= hi - 0.10 * span
        return float(counts[tenth].sum()) >= NEAR_BINARY_TIGHT * float(counts[quarter].sum())

    return (
        fraction(0.25) <= NEAR_BINARY_MIDDLE
        and fraction(0.10) <= NEAR_BINARY_TAIL
        and tight(low=True)
        and tight(low=False)
    )


def binarize(
    mask: np.ndarray, foreground: Sequence[int] | None = None, lossy: bool = False
) -> Binarized:
    """Turn a mask into foreground/background by the rules in the module docstring.

    Args:
        mask: ``(H, W)`` or ``(H, W, C)`` ``uint8``/``uint16`` array.
        foreground: Values that count as foreground (``--foreground``); None = decide.
        lossy: The mask was stored lossily (JPEG), so exact values are not to be trusted.

    Returns:
        A :class:`Binarized` with the ``(H, W)`` bool mask, the rule and an optional note.

    Raises:
        MaskValuesError: Many distinct values that are not near-binary (a photo or gradient).
    """
    mask, colour_note = to_single_channel(mask)

    def result(fg: np.ndarray, rule: str, note: str | None = None) -> Binarized:
        notes = "; ".join(n for n in (colour_note, note) if n)
        return Binarized(fg, rule, notes or None)

    if foreground is not None:
        return result(np.isin(mask, np.asarray(foreground)), "foreground")
    values, counts = value_counts(mask)
    if len(values) == 1:
        return result(mask != 0, "constant")
    if len(values) == 2:
        note = (
            None
            if values[0] == 0
            else f"two-valued mask {_fmt(values)}: {values[1]} taken as foreground"
        )
        return result(mask == values[1], "two-valued", note)
    if (lossy or len(values) > FEW_VALUES) and is_near_binary(values, counts):
        mid = (float(values[0]) + float(values[-1])) / 2
        why = "lossy JPEG" if lossy else "anti-aliased or resized"
        return result(
            mask > mid,
            "near-binary",
            f"near-binary mask ({len(values)} values, {why}) thresholded at {mid:g}",
        )
    if len(values) <= FEW_VALUES:
        return result(
            mask != 0,
            "label-nonzero",
            f"label values {_fmt(values)}: non-zero taken as foreground "
            "(choose with --foreground VALUES, or keep classes with --classes)",
        )
    raise MaskValuesError(
        f"{len(values)} distinct values from {values[0]} to {values[-1]} and not near-binary "
        "(a photo or gradient saved as a mask?); fix the mask, or name the foreground values "
        "with `unet prepare --foreground VALUES`"
    )


def label_values(mask: np.ndarray, lossy: bool = False) -> tuple[np.ndarray, str | None]:
    """Distinct label values of one mask for multi-class mode.

    Args:
        mask: ``(H, W)`` or ``(H, W, C)`` integer array.
        lossy: The mask was stored lossily (JPEG).

    Returns:
        The ascending distinct values of the single-channel mask and a colour note.

    Raises:
        MaskValuesError: More than :data:`MAX_CLASSES` values, or a lossy mask with more
            than two values (JPEG changes label values at every edge).
    """
    mask, note = to_single_channel(mask)
    values, _ = value_counts(mask)
    if lossy and len(values) > 2:
        raise MaskValuesError(
            f"{len(values)} values in a lossy JPEG mask; label values need a lossless "
            "format (PNG, TIFF, BMP)"
        )
    if len(values) > MAX_CLASSES:
        raise MaskValuesError(
            f"{len(values)} distinct values, more than the {MAX_CLASSES} classes --classes "
            "accepts; is this really a label image?"
        )
    return values, note


def to_labels(mask: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Map label values to class indices: ``values[k]`` becomes ``k``.

    Args:
        mask: ``(H, W)`` or ``(H, W, C)`` integer array whose values all occur in ``values``.
        values: Ascending original label values (the data set's label map).

    Returns:
        ``(H, W)`` ``uint8`` array of class indices.

    Raises:
        MaskValuesError: The mask holds a value not in ``values``.
    """
    mask, _ = to_single_channel(mask)
    table = np.asarray(values)
    index = np.searchsorted(table, mask)
    index_clipped = np.minimum(index, len(table) - 1)
    if not np.array_equal(table[index_clipped], mask):
        extra = sorted(set(np.unique(mask).tolist()) - set(table.tolist()))
        raise MaskValuesError(f"values {extra} are not in the label map {table.tolist()}")
    return index_clipped.astype(np.uint8)


def read_mask(
    path: str | os.PathLike, num_classes: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read a mask file as its stored values, one channel (rule 1 of the module docstring).

    Args:
        path: The mask file (any format :func:`unet_lowered.io.images.read_image` reads).
        num_classes: The classes it is read for; a true colour mask cannot hold the
            labels of several classes.
        max_pixels: Refuse larger masks before decoding.

    Returns:
        ``(H, W)`` uint8 or uint16 array of the stored values.

    Raises:
        UnetError: Unreadable file, or a true colour mask for ``num_classes > 1``.
    """
    mask = read_image(path, max_pixels)
    if mask.ndim == 3:
        mask, note = to_single_channel(mask)
        if note is not None and num_classes > 1:
            raise UnetError(
                f"{path}: a colour mask cannot hold class labels; use a label image, or "
                "convert the data with `unet prepare --classes`"
            )
    return mask


def to_classes(
    mask: np.ndarray, num_classes: int = 1, label_values: Sequence[int] | None = None
) -> np.ndarray:
    """Stored mask values to training targets: 0/1 (one class) or class indices.

    One class: :func:`binarize`'s rules without ``--foreground``, so a 0/255 or 0/1
    mask (what ``unet prepare`` writes) has its non-zero pixels as foreground, a 1/255
    mask its 255s, and a near-binary JPEG mask is thresholded at its midpoint instead of
    counting its ringing. Several: values all below ``num_classes`` are class indices
    already (as ``unet prepare --classes`` writes them); otherwise ``label_values``
    (ascending original values) map them to indices.

    Args:
        mask: ``(H, W)`` integer array from :func:`read_mask`.
        num_classes: 1 (binary) or K > 1.
        label_values: The original value of each class, or None.

    Returns:
        ``(H, W)`` uint8: 0/1, or class indices ``0..K-1``.

    Raises:
        MaskValuesError: One class: many values, not near-binary (a photo saved as a
            mask?). Several: a value that is neither a class index nor in ``label_values``.
    """
    if num_classes == 1:
        return binarize(mask).mask.astype(np.uint8)
    if int(mask.max(initial=0)) < num_classes:
        return mask.astype(np.uint8)
    if not label_values:
        raise MaskValuesError(
            f"mask value {int(mask.max())} is not a class index 0..{num_classes - 1} and "
            "no label values map it to one; prepare the data with `unet prepare --classes`"
        )
    return to_labels(mask, label_values)


def as_2d(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    """An ``(H, W)`` or ``(H, W, 1)`` mask as ``(H, W)``, values untouched.

    Raises:
        UnetError: Any other shape; ``what`` names the argument in the message.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise UnetError(f"{what} must be a 2-D mask (H, W) or (H, W, 1), got shape {mask.shape}")
    return mask


CONNECTIVITY = {4: ndimage.generate_binary_structure(2, 1), 8: np.ones((3, 3), bool)}


def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label the connected objects of a mask: the one components function of the package.

    Two neighbourhoods, each where it is right:

    * 8 (default): pixels touching at a corner are one object. Objects of a mask
      (post-processing, counting components, the paper's weight maps) are thin at
      their tips, and a diagonal step must not split a lung in two.
    * 4: for the cells between the membranes of an EM slice (the Rand error), since
      a membrane one pixel wide running diagonally still separates two cells.

    Args:
        mask: ``(H, W)`` or ``(H, W, 1)``; non-zero is foreground.
        connectivity: 4 or 8.

    Returns:
        ``(labels, count)``: int32 ``(H, W)`` labels ``0`` (background) and ``1..count``.

    Raises:
        UnetError: ``connectivity`` is not 4 or 8, or ``mask`` is not 2-D.
    """
    if connectivity not in CONNECTIVITY:
        raise UnetError(f"connectivity must be 4 or 8 (neighbours), got {connectivity}")
    mask = as_2d(mask)
    labels, count = ndimage.label(mask != 0, structure=CONNECTIVITY[connectivity])
    return labels.astype(np.int32, copy=False), int(count)


def _fmt(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:10])
    return "{" + shown + (", ..." if len(values) > 10 else "") + "}"
