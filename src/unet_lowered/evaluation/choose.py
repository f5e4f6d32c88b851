"""Post-processing chosen on the validation split, as nnU-Net chooses it.

After training, ``unet train`` predicts the validation images at their original
size, scores them without post-processing, then tries each candidate step in turn
(test-time augmentation over the flips and turns the run was trained with, as
nnU-Net mirrors at inference; keep the N largest objects, with N the usual number of
objects in the training masks; then remove objects under a minimum area, a quarter
of nearly the smallest training object; then fill holes) on top of what was kept so
far. A step is kept when it raises the mean Dice and lowers no image's Dice by more
than ``tolerance``. The choice and the figures behind it go into the run's
``config.json``; ``unet predict``, ``unet evaluate`` and ``unet serve`` apply it by
default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unet_lowered.evaluation.metrics import dice
from unet_lowered.inference.postprocess import clean_mask

TOLERANCE = 0.02
"""A step may lower no validation image's Dice by more than this."""

MIN_AREA_SHARE = 0.25
"""The minimum-area candidate: this share of the 1st-percentile training object."""


@dataclass(frozen=True)
class Choice:
    """The post-processing a run applies by default, and why.

    Attributes:
        tta: The test-time augmentation group kept (``"dihedral"``, ``"flips"``, ...),
            or None.
        keep_largest: Keep the N largest objects, or None.
        fill_holes: Fill holes.
        min_area: Remove objects smaller than this many pixels (0: off).
        baseline: Mean validation Dice without post-processing.
        dice: Mean validation Dice with the chosen steps.
        tried: One record per candidate: ``step``, ``mean_dice``, ``worst_change``, ``kept``.
    """

    tta: str | None = None
    keep_largest: int | None = None
    fill_holes: bool = False
    min_area: int = 0
    baseline: float | None = None
    dice: float | None = None
    tried: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "tta": self.tta,
            "keep_largest": self.keep_largest,
            "fill_holes": self.fill_holes,
            "min_area": self.min_area,
            "validation_dice_before": self.baseline,
            "validation_dice_after": self.dice,
            "tried": list(self.tried),
        }

    def describe(self) -> str:
        """One line for the user: what was chosen, with the validation figures."""
        steps = [f"test-time augmentation ({self.tta})"] if self.tta else []
        steps += [f"keep the {self.keep_largest} largest objects"] if self.keep_largest else []
        steps += [f"remove objects under {self.min_area} px"] if self.min_area else []
        steps += ["fill holes"] if self.fill_holes else []
        chosen = ", ".join(steps) or "none"
        tried = "; ".join(
            f"{t['step']}: {t['mean_dice']:.4f} (worst image {t['worst_change']:+.4f})"
            + ("" if t["kept"] else ", not kept")
            for t in self.tried
        )
        return (
            f"post-processing chosen on validation: {chosen} (mean Dice {self.baseline:.4f} -> "
            f"{self.dice:.4f}; tried {tried or 'nothing'})"
        )


def min_area_candidate(small_object: float | None, sizes: Sequence[tuple[int, int]]) -> int:
    """The minimum-area candidate in pixels, or 0 for none.

    Args:
        small_object: The 1st percentile of the training objects' areas as a fraction of
            their image (:attr:`unet_lowered.inference.quality.MaskStats.small_object`).
        sizes: ``(height, width)`` of the validation images; their median area turns
            the fraction into pixels.

    Returns:
        :data:`MIN_AREA_SHARE` of that area, rounded; 0 when it is under 2 pixels or
        unknown.
    """
    if not small_object or not sizes:
        return 0
    area = float(np.median([h * w for h, w in sizes]))
    pixels = round(MIN_AREA_SHARE * small_object * area)
    return pixels if pixels >= 2 else 0


def choose_postprocess(
    masks: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    objects: int | None,
    tolerance: float = TOLERANCE,
    min_area: int = 0,
    tta_masks: Sequence[np.ndarray] | None = None,
    tta: str | None = None,
) -> Choice:
    """Choose the post-processing steps on validation predictions.

    Args:
        masks: Predicted bool ``(H, W)`` masks, thresholded, not post-processed.
        truths: The true bool masks, same sizes.
        objects: The usual number of objects in the training masks (the N of keep
            the N largest), or None to skip that step.
        tolerance: The largest drop of any image's Dice a kept step may cause.
        min_area: The minimum-area candidate in pixels (:func:`min_area_candidate`);
            0 skips that step.
        tta_masks: The same images predicted with test-time augmentation ``tta``
            (thresholded, not post-processed), the first candidate; None skips it.
        tta: The name of the group ``tta_masks`` were predicted with.

    Returns:
        The :class:`Choice`.

    Raises:
        ValueError: No masks, or masks and truths differ in number.
    """
    if not masks or len(masks) != len(truths):
        raise ValueError("choose_postprocess needs as many predicted masks as true ones (>= 1)")
    if tta_masks is not None and (len(tta_masks) != len(masks) or not tta):
        raise ValueError("choose_postprocess needs one TTA mask per mask and the group's name")

    def scores(steps: Mapping[str, Any]) -> np.ndarray:
        chosen = tta_masks if steps.get("tta") else masks
        return np.array(
            [
                dice(
                    t,
                    clean_mask(
                        m, steps.get("keep"), steps.get("holes", False), steps.get("area", 0)
                    ),
                )
                for m, t in zip(chosen, truths, strict=True)
            ]
        )

    kept: dict[str, Any] = {}
    current = scores(kept)
    baseline = float(current.mean())
    candidates = (
        ([("tta", tta, f"tta {tta}")] if tta_masks is not None else [])
        + ([("keep", objects, f"keep {objects} largest")] if objects else [])
        + ([("area", min_area, f"remove objects under {min_area} px")] if min_area else [])
        + [("holes", True, "fill holes")]
    )
    tried = []
    for key, value, name in candidates:
        trial = scores({**kept, key: value})
        change = trial - current
        keep = float(trial.mean()) > float(current.mean()) and float(change.min()) >= -tolerance
        tried.append(
            {
                "step": name,
                "mean_dice": round(float(trial.mean()), 6),
                "worst_change": round(float(change.min()), 6),
                "kept": bool(keep),
            }
        )
        if keep:
            kept[key], current = value, trial
    return Choice(
        tta=kept.get("tta"),
        keep_largest=kept.get("keep"),
        fill_holes=bool(kept.get("holes", False)),
        min_area=int(kept.get("area", 0)),
        baseline=round(baseline, 6),
        dice=round(float(current.mean()), 6),
        tried=tuple(tried),
    )
