"""Post-processing chosen on the validation split, as nnU-Net chooses it.

After training, ``unet train`` predicts the validation images at their original
size, scores them without post-processing, then tries each candidate step in turn
(test-time augmentation over the flips and turns the run was trained with, as
nnU-Net mirrors at inference; for boundary data, cutting the objects apart at their
necks where the network saw a membrane, then the probability threshold; keep the
N largest objects, with N the usual number of objects in the training masks; then
remove objects under a minimum area, a quarter of nearly the smallest training
object; then fill holes) on top of what was kept so far. A step is kept when it
raises the mean score and lowers no image's score by more than ``tolerance``. Keeping
the N largest objects is kept also when it leaves the mean as it is: the training
masks themselves say there are N objects, and a validation split without stray specks
cannot show what it removes from the images that have them (JSRT lungs with burned-in
text or CLAHE: up to a third of good masks got an extra speck and a ``check``; nnU-Net
asks for a gain, here the training masks break the tie).

The score is the Dice coefficient, or for **boundary data** (cells that tile the
image between thin membranes, as in EM: most objects are separated from a neighbour
only by a gap of a few pixels) the Rand F-score of the 4-connected objects in the
ISBI 2012 challenge's convention (:func:`unet_lowered.evaluation.metrics.rand_error`):
there what matters is whether the predicted boundaries separate the objects, which
Dice barely sees, and the watershed split and the threshold decide it. The choice and
the figures behind it go into the run's ``config.json``; ``unet predict``, ``unet
evaluate`` and ``unet serve`` apply it by default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unet_lowered.dataset.masks import label_components
from unet_lowered.evaluation.metrics import dice, rand_error
from unet_lowered.inference.postprocess import clean_mask, split_touching

TOLERANCE = 0.02
"""A step may lower no validation image's score by more than this."""

MIN_AREA_SHARE = 0.25
"""The minimum-area candidate: this share of the 1st-percentile training object."""

BOUNDARY_TOUCHING = 0.5
"""Boundary data: at least this share of the training objects is separated from a
neighbour only by a thin gap (:attr:`unet_lowered.planning.fingerprint.Fingerprint.touching_fraction`;
ISBI 2012: 0.84, DSB2018 nuclei: 0.25, lungs: 0)."""

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
"""The probability thresholds tried for boundary data."""

WATERSHED_MERGES = (0.8, 0.85, 0.9, 0.95)
"""The merge levels of the watershed split tried for boundary data: two pieces of an
object stay joined where their shared boundary's mean probability reaches it
(:func:`unet_lowered.inference.postprocess.split_touching`). On ISBI 2012 (six runs,
three sets of 4 validation slices, the choice made on 2 slices and scored on the other
2; ``benchmarks/watershed_split.py --held-out``) they gave a mean Rand error of 0.073
held out, against 0.089 for the cut from the cells' cores they replace; other grids
(merge levels 0.9-1, deeper markers) did worse. Which is best differs from run to run."""

SCORES = ("dice", "rand")


def rand_score(truth: np.ndarray, mask: np.ndarray) -> float:
    """1 - the foreground-restricted Rand error of the 4-connected objects (the ISBI 2012
    challenge's Rand F-score): 1 when the predicted objects are the true ones."""
    return 1.0 - rand_error(label_components(truth, 4)[0], label_components(mask, 4)[0])


_SCORE_FNS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "dice": dice,
    "rand": rand_score,
}


@dataclass(frozen=True)
class Choice:
    """The post-processing a run applies by default, and why.

    Attributes:
        tta: The test-time augmentation group kept (``"dihedral"``, ``"flips"``, ...),
            or None.
        threshold: The probability threshold chosen (boundary data), or None: the
            run's own.
        watershed: The merge level of the watershed split chosen (boundary data),
            or None: off.
        keep_largest: Keep the N largest objects, or None.
        fill_holes: Fill holes.
        min_area: Remove objects smaller than this many pixels (0: off).
        score: What decided: ``"dice"`` or ``"rand"`` (the Rand F-score).
        baseline: Mean validation Dice without post-processing.
        dice: Mean validation Dice with the chosen steps.
        rand_before: With ``score="rand"``, the mean Rand error without post-processing.
        rand_after: With ``score="rand"``, the mean Rand error with the chosen steps.
        tried: One record per candidate: ``step``, ``mean_dice`` (and ``mean_rand_error``
            with ``score="rand"``), ``worst_change`` (of the deciding score, higher is
            better), ``kept``.
    """

    tta: str | None = None
    threshold: float | None = None
    watershed: float | None = None
    keep_largest: int | None = None
    fill_holes: bool = False
    min_area: int = 0
    score: str = "dice"
    baseline: float | None = None
    dice: float | None = None
    rand_before: float | None = None
    rand_after: float | None = None
    tried: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        out = {
            "tta": self.tta,
            "threshold": self.threshold,
            "watershed": self.watershed,
            "keep_largest": self.keep_largest,
            "fill_holes": self.fill_holes,
            "min_area": self.min_area,
            "score": self.score,
            "validation_dice_before": self.baseline,
            "validation_dice_after": self.dice,
            "tried": list(self.tried),
        }
        if self.score == "rand":
            out["validation_rand_error_before"] = self.rand_before
            out["validation_rand_error_after"] = self.rand_after
        return out

    def describe(self) -> str:
        """One line for the user: what was chosen, with the validation figures."""
        steps = [f"test-time augmentation ({self.tta})"] if self.tta else []
        steps += [f"watershed split (merge >= {self.watershed:g})"] if self.watershed else []
        steps += [f"threshold {self.threshold:g}"] if self.threshold is not None else []
        steps += [_keep_words(self.keep_largest)] if self.keep_largest else []
        steps += [f"remove objects under {self.min_area} px"] if self.min_area else []
        steps += ["fill holes"] if self.fill_holes else []
        chosen = ", ".join(steps) or "none"
        rand = self.score == "rand"
        worst = "Rand F-score" if rand else "Dice"  # the deciding score: higher is better

        def figure(t: Mapping[str, Any]) -> str:
            return f"Rand error {t['mean_rand_error']:.4f}" if rand else f"{t['mean_dice']:.4f}"

        tried = "; ".join(
            f"{t['step']}: {figure(t)} (worst image's {worst} {t['worst_change']:+.4f})"
            + ("" if t["kept"] else ", not kept")
            for t in self.tried
        )
        before_after = f"mean Dice {self.baseline:.4f} -> {self.dice:.4f}"
        if rand:
            before_after = (
                f"mean Rand error {self.rand_before:.4f} -> {self.rand_after:.4f}, {before_after}"
            )
        return (
            f"post-processing chosen on validation: {chosen} ({before_after}; "
            f"tried {tried or 'nothing'})"
        )


def class_dice(truth: np.ndarray, mask: np.ndarray, classes: int) -> float:
    """The mean Dice of classes ``1..classes-1`` of two class-index masks, over the
    classes in either (a class absent from both is left out, as ``unet evaluate`` does;
    1 when every class is absent)."""
    truth, mask = np.asarray(truth), np.asarray(mask)
    found = np.union1d(np.unique(truth), np.unique(mask))
    present = [c for c in range(1, classes) if c in found]
    if not present:
        return 1.0
    return float(np.mean([dice(truth == c, mask == c) for c in present]))


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
    probs: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    objects: int | None,
    tolerance: float = TOLERANCE,
    min_area: int = 0,
    tta_probs: Sequence[np.ndarray] | None = None,
    tta: str | None = None,
    *,
    score: str = "dice",
    threshold: float = 0.5,
    thresholds: Sequence[float] = (),
    merges: Sequence[float] = (),
    classes: int = 1,
) -> Choice:
    """Choose the post-processing steps on validation predictions.

    Args:
        probs: Foreground probabilities ``(H, W)`` of the validation images (bool masks
            also do: they are thresholded as 1 and 0); with ``classes > 1`` the
            predicted class indices (argmax) instead.
        truths: The true bool masks (class indices with ``classes > 1``), same sizes.
        objects: The usual number of objects in the training masks (the N of keep
            the N largest), or None to skip that step.
        tolerance: The largest drop of any image's score a kept step may cause.
        min_area: The minimum-area candidate in pixels (:func:`min_area_candidate`);
            0 skips that step.
        tta_probs: The same images predicted with test-time augmentation ``tta``, the
            first candidate; None skips it.
        tta: The name of the group ``tta_probs`` were predicted with.
        score: ``"dice"``, or ``"rand"`` for boundary data (:func:`rand_score`).
        threshold: The run's threshold, where the choice starts.
        thresholds: Other thresholds to try after TTA and the watershed split; the best
            that passes the rule is kept. Empty: the run's threshold stays.
        merges: Merge levels of the watershed split to try after TTA
            (:func:`~unet_lowered.inference.postprocess.split_touching`); the best that
            passes the rule is kept. Empty: no split.
        classes: Number of classes. Above 1 (multi-class runs) each step is applied to
            each class in turn (:func:`~unet_lowered.inference.postprocess.clean_mask`),
            an image's Dice is the mean over the foreground classes
            (:func:`class_dice`), and there are no thresholds, split or Rand score.

    Returns:
        The :class:`Choice`.

    Raises:
        ValueError: No predictions, predictions and truths differ in number, or an
            unknown score.
    """
    if not probs or len(probs) != len(truths):
        raise ValueError("choose_postprocess needs as many predictions as true masks (>= 1)")
    if tta_probs is not None and (len(tta_probs) != len(probs) or not tta):
        raise ValueError("choose_postprocess needs one TTA prediction per image and the group")
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
    if classes > 1 and (score != "dice" or thresholds or merges):
        raise ValueError("a multi-class choice is scored by Dice, without thresholds or split")
    overlap = dice if classes == 1 else lambda t, m: class_dice(t, m, classes)

    def masks(steps: Mapping[str, Any]) -> list[np.ndarray]:
        chosen = tta_probs if steps.get("tta") else probs
        cut = steps.get("threshold", threshold)
        merge = steps.get("watershed")
        out = []
        for p in chosen:
            mask = np.asarray(p) >= cut if classes == 1 else np.asarray(p, np.int32)
            if merge is not None:
                mask = split_touching(np.asarray(p, dtype=np.float32), mask, merge)
            out.append(
                clean_mask(mask, steps.get("keep"), steps.get("holes", False), steps.get("area", 0))
            )
        return out

    def evaluate(steps: Mapping[str, Any]) -> tuple[np.ndarray, float, float | None]:
        """Per-image deciding score, mean Dice, mean Rand error (None for Dice)."""
        made = masks(steps)
        dices = np.array([overlap(t, m) for m, t in zip(made, truths, strict=True)])
        if score == "dice":
            return dices, float(dices.mean()), None
        rands = np.array([rand_score(t, m) for m, t in zip(made, truths, strict=True)])
        return rands, float(dices.mean()), float(1.0 - rands.mean())

    def record(name: str, result: tuple, change: np.ndarray, kept: bool) -> dict[str, Any]:
        out = {"step": name, "mean_dice": round(result[1], 6)}
        if result[2] is not None:
            out["mean_rand_error"] = round(result[2], 6)
        return {**out, "worst_change": round(float(change.min()), 6), "kept": bool(kept)}

    def passes(trial: np.ndarray, current: np.ndarray, ties: bool = False) -> bool:
        gain = float(trial.mean()) - float(current.mean())
        return (gain >= 0 if ties else gain > 0) and float((trial - current).min()) >= -tolerance

    kept: dict[str, Any] = {}
    current_result = evaluate(kept)
    current = current_result[0]
    first = current_result
    tried = []
    if tta_probs is not None:
        trial = evaluate({"tta": tta})
        keep = passes(trial[0], current)
        tried.append(record(f"tta {tta}", trial, trial[0] - current, keep))
        if keep:
            kept["tta"], current_result, current = tta, trial, trial[0]
    for key, values, name in (
        ("watershed", tuple(merges), "watershed split, merge >= {:g}"),
        ("threshold", tuple(t for t in thresholds if t != threshold), "threshold {:g}"),
    ):
        if not values:
            continue
        trials = {v: evaluate({**kept, key: v}) for v in values}
        good = [v for v in values if passes(trials[v][0], current)]
        best = max(good, key=lambda v: float(trials[v][0].mean()), default=None)
        for v in values:
            tried.append(record(name.format(v), trials[v], trials[v][0] - current, v == best))
        if best is not None:
            kept[key], current_result = best, trials[best]
            current = current_result[0]
    candidates = (
        ([("keep", objects, f"keep {objects} largest")] if objects else [])
        + ([("area", min_area, f"remove objects under {min_area} px")] if min_area else [])
        + [("holes", True, "fill holes")]
    )
    for key, value, name in candidates:
        trial = evaluate({**kept, key: value})
        keep = passes(trial[0], current, ties=key == "keep")
        tried.append(record(name, trial, trial[0] - current, keep))
        if keep:
            kept[key], current_result, current = value, trial, trial[0]
    return Choice(
        tta=kept.get("tta"),
        threshold=kept.get("threshold"),
        watershed=kept.get("watershed"),
        keep_largest=kept.get("keep"),
        fill_holes=bool(kept.get("holes", False)),
        min_area=int(kept.get("area", 0)),
        score=score,
        baseline=round(first[1], 6),
        dice=round(current_result[1], 6),
        rand_before=None if first[2] is None else round(first[2], 6),
        rand_after=None if current_result[2] is None else round(current_result[2], 6),
        tried=tuple(tried),
    )


def _keep_words(n: int) -> str:
    """``keep_largest`` in words: the largest object, or the N largest."""
    return "keep the largest object" if n == 1 else f"keep the {n} largest objects"
