"""Post-processing chosen on validation: constructed predictions with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from unet_lowered.evaluation import choose
from unet_lowered.evaluation.choose import choose_postprocess, class_dice, min_area_candidate


def two_boxes() -> np.ndarray:
    mask = np.zeros((40, 40), bool)
    mask[10:30, 5:18] = mask[10:30, 22:35] = True
    return mask


def test_keeps_the_steps_that_help() -> None:
    truths = [two_boxes() for _ in range(4)]
    preds = []
    for k in range(4):
        pred = two_boxes()
        pred[2:4, 2 + 5 * k : 4 + 5 * k] = True  # a stray blob: keep 2 largest removes it
        pred[18:20, 10:12] = False  # a hole: filling it restores the box
        preds.append(pred)
    choice = choose_postprocess(preds, truths, objects=2)
    assert (choice.keep_largest, choice.fill_holes) == (2, True)
    assert choice.dice == pytest.approx(1.0) and choice.baseline < 1.0
    assert [t["kept"] for t in choice.tried] == [True, True]
    assert "keep the 2 largest objects, fill holes" in choice.describe()


def test_keep_n_is_kept_when_validation_has_nothing_for_it_to_remove() -> None:
    """Clean validation masks: keeping the 2 largest changes no score (a tie) and is kept,
    as the training masks' steady count says; filling holes, with nothing to fill, is
    not."""
    truths = [two_boxes() for _ in range(3)]
    preds = [two_boxes() for _ in range(3)]
    preds[1][12:28, 5:9] = False  # a miss keep-2 cannot mend: the mean stays
    choice = choose_postprocess(preds, truths, objects=2)
    assert choice.keep_largest == 2 and choice.fill_holes is False
    assert [(t["step"], t["kept"]) for t in choice.tried] == [
        ("keep 2 largest", True),
        ("fill holes", False),
    ]
    assert choice.tried[0]["worst_change"] == 0.0 and choice.dice == choice.baseline


def test_tta_is_kept_when_it_raises_the_mean_and_the_steps_follow_on_its_masks() -> None:
    truths = [two_boxes() for _ in range(3)]
    plain = [two_boxes() for _ in range(3)]
    for pred in plain:
        pred[12:28, 5:9] = False  # the plain predictions miss a strip of one box
    with_tta = [two_boxes() for _ in range(3)]
    with_tta[0][1:4, 1:4] = True  # TTA is right but for one stray blob
    choice = choose_postprocess(plain, truths, objects=2, tta_probs=with_tta, tta="dihedral")
    assert choice.tta == "dihedral" and choice.keep_largest == 2  # keep-2 removes the blob
    assert [t["step"] for t in choice.tried] == ["tta dihedral", "keep 2 largest", "fill holes"]
    assert choice.dice == pytest.approx(1.0)
    assert choice.describe().startswith(
        "post-processing chosen on validation: test-time augmentation (dihedral), keep the 2"
    )
    assert "keep 2 largest: 1.0000 (worst image's Dice +" in choice.describe()
    assert choose._keep_words(1) == "keep the largest object"
    assert choice.to_json()["tta"] == "dihedral"


def test_tta_that_hurts_an_image_too_much_is_refused() -> None:
    truths = [two_boxes() for _ in range(3)]
    plain = [two_boxes() for _ in range(3)]
    for pred in plain[1:]:
        pred[12:28, 5:9] = False
    with_tta = [two_boxes() for _ in range(3)]
    with_tta[0][10:30, 5:18] = False  # better on average, but image 0 loses a whole box
    choice = choose_postprocess(plain, truths, objects=None, tta_probs=with_tta, tta="flips")
    assert choice.tta is None and choice.tried[0] == {
        "step": "tta flips",
        "mean_dice": pytest.approx(choice.tried[0]["mean_dice"]),
        "worst_change": pytest.approx(-1 / 3, abs=1e-6),
        "kept": False,
    }
    with pytest.raises(ValueError, match="one TTA prediction per image"):
        choose_postprocess(plain, truths, objects=None, tta_probs=with_tta[:2], tta="flips")


def test_refuses_a_step_that_hurts_one_image_too_much() -> None:
    truths = [two_boxes() for _ in range(3)]
    preds = [two_boxes() for _ in range(3)]
    preds[0][1:6, 1:6] = True  # stray blobs in two images: removing them raises the mean...
    preds[1][1:6, 30:35] = True
    third = two_boxes()
    third[33:39, 17:23] = True  # ...but one truth really has a third object
    truths[2], preds[2] = third, third.copy()
    choice = choose_postprocess(preds, truths, objects=2, tolerance=0.02)
    assert choice.keep_largest is None  # removing the real third object costs image 2 too much
    assert choice.tried[0]["kept"] is False and choice.tried[0]["worst_change"] < -0.02
    assert choice.fill_holes is False  # nothing to fill: no gain, not kept
    assert choice.dice == choice.baseline


def test_without_a_steady_object_count_only_holes_are_tried() -> None:
    truths = [two_boxes()]
    choice = choose_postprocess([two_boxes()], truths, objects=None)
    assert [t["step"] for t in choice.tried] == ["fill holes"]
    with pytest.raises(ValueError, match="as many predictions as true masks"):
        choose_postprocess([], [], objects=2)


def test_min_area_removes_specks_where_the_object_count_varies() -> None:
    # nuclei-like data: many objects, no steady count, so keep-N is not a candidate;
    # 3x3 specks are false positives, every true object is 6x6 or larger
    truths, preds = [], []
    for k in range(3):
        truth = np.zeros((60, 60), bool)
        for j in range(k + 2):
            truth[5 + 12 * j : 11 + 12 * j, 5:11] = True
        pred = truth.copy()
        pred[50:53, 40 + 3 * k : 43 + 3 * k] = True
        truths.append(truth)
        preds.append(pred)
    choice = choose_postprocess(preds, truths, objects=None, min_area=10)
    assert [t["step"] for t in choice.tried] == ["remove objects under 10 px", "fill holes"]
    assert choice.min_area == 10 and choice.dice == pytest.approx(1.0)
    assert choice.to_json()["min_area"] == 10
    assert "remove objects under 10 px" in choice.describe()
    # a threshold above the real objects' 36 px removes them: mean Dice falls, not kept
    refused = choose_postprocess(preds, truths, objects=None, min_area=40)
    assert refused.min_area == 0 and refused.tried[0]["kept"] is False


def test_min_area_candidate_from_the_training_objects() -> None:
    # the 1st-percentile object covers 1% of its image; validation images are 100x100
    assert min_area_candidate(0.01, [(100, 100), (100, 100)]) == round(0.25 * 0.01 * 10_000)
    assert min_area_candidate(0.01, [(50, 50), (100, 100), (200, 200)]) == 25  # median area
    assert min_area_candidate(None, [(100, 100)]) == 0
    assert min_area_candidate(0.0001, [(40, 40)]) == 0  # under 2 px: no candidate


def membrane_case() -> tuple[np.ndarray, np.ndarray]:
    """Two cells between a 2-px membrane (truth) and a cell probability map in which the
    membrane has a gap at p = 0.55: at threshold 0.5 the cells merge, from 0.6 they don't."""
    truth = np.ones((40, 40), bool)
    truth[:, 19:21] = False
    prob = np.where(truth, 0.9, 0.2)
    prob[10:15, 19:21] = 0.55
    return prob, truth


def test_boundary_data_chooses_the_threshold_that_separates_the_cells() -> None:
    prob, truth = membrane_case()
    assert choose.rand_score(truth, truth) == 1.0
    # Two equal cells merged: precision (760² + 760²) / 1520² = 1/2, recall 1, F = 2/3.
    assert choose.rand_score(truth, prob >= 0.5) == pytest.approx(2 / 3)
    choice = choose_postprocess(
        [prob] * 3, [truth] * 3, objects=None, score="rand", thresholds=choose.THRESHOLDS
    )
    assert choice.threshold == 0.6  # the lowest that closes the gap (0.7 ties, not better)
    assert choice.rand_before == pytest.approx(1 / 3, abs=1e-6) and choice.rand_after == 0.0
    assert choice.dice == pytest.approx(choice.baseline, abs=0.01)  # Dice barely sees it
    steps = [t["step"] for t in choice.tried]
    assert steps[:4] == ["threshold 0.3", "threshold 0.4", "threshold 0.6", "threshold 0.7"]
    assert [t["kept"] for t in choice.tried[:4]] == [False, False, True, False]
    assert "threshold 0.6" in choice.describe() and "Rand error" in choice.describe()
    # The worst image's change is of the Rand F-score (higher is better), and says so.
    assert "threshold 0.6: Rand error 0.0000 (worst image's Rand F-score +0.3333)" in (
        choice.describe()
    )
    assert choice.to_json()["validation_rand_error_after"] == 0.0
    # Scored by Dice, without thresholds to try, the run's threshold stays.
    by_dice = choose_postprocess([prob] * 3, [truth] * 3, objects=None)
    assert by_dice.threshold is None and by_dice.score == "dice"
    with pytest.raises(ValueError, match="score must be one of dice, rand"):
        choose_postprocess([prob], [truth], objects=None, score="iou")


def test_boundary_data_splits_cells_that_no_threshold_separates() -> None:
    """The gap at p = 0.87 is above every threshold tried: only the watershed split keeps
    the two cells apart, and only where its merge level is above the gap's probability
    (0.9, 0.95), not where the pieces either side of the gap are joined back (0.8, 0.85)."""
    prob, truth = membrane_case()
    prob[10:15, 19:21] = 0.87
    prob = np.where(truth, 0.99, prob)
    choice = choose_postprocess(
        [prob] * 3,
        [truth] * 3,
        objects=None,
        score="rand",
        thresholds=choose.THRESHOLDS,
        merges=choose.WATERSHED_MERGES,
    )
    assert choice.watershed == 0.9  # 0.9 and 0.95 separate; the first of the best is kept
    assert choice.rand_before == pytest.approx(1 / 3, abs=1e-6) and choice.rand_after == 0.0
    steps = [t["step"] for t in choice.tried]
    assert steps[:4] == [f"watershed split, merge >= {m:g}" for m in choose.WATERSHED_MERGES]
    assert [t["kept"] for t in choice.tried[:4]] == [False, False, True, False]
    assert [t["mean_rand_error"] for t in choice.tried[:4]] == pytest.approx(
        [1 / 3, 1 / 3, 0, 0], abs=1e-6
    )
    # the thresholds come after the split, on its masks: none improves on 0
    assert choice.threshold is None
    assert all(not t["kept"] for t in choice.tried if t["step"].startswith("threshold"))
    assert "watershed split (merge >= 0.9)" in choice.describe()
    assert choice.to_json()["watershed"] == 0.9
    # without a split among the candidates, no threshold separates the cells
    no_split = choose_postprocess(
        [prob] * 3, [truth] * 3, objects=None, score="rand", thresholds=choose.THRESHOLDS
    )
    assert no_split.watershed is None and no_split.rand_after == pytest.approx(1 / 3, abs=1e-6)


def test_multi_class_choice_cleans_each_class() -> None:
    """Class-index predictions: a speck of class 2 in the background and a hole in
    class 1. Keep the largest per class removes the speck, and filling holes gives the
    hole back to class 1; each image's Dice is the mean of the two classes'."""
    truth = np.zeros((40, 40), np.int32)
    truth[5:20, 5:35] = 1
    truth[25:35, 10:30] = 2
    pred = truth.copy()
    pred[1:3, 1:3] = 2  # a speck of class 2: two class-2 objects
    pred[14:16, 25:27] = 0  # a hole in class 1
    assert class_dice(truth, truth, 3) == 1.0
    assert class_dice(np.zeros_like(truth), np.zeros_like(truth), 3) == 1.0
    only_one = np.where(truth == 2, 0, truth)  # class 2 absent from both: class 1's Dice
    shrunk = only_one.copy()
    shrunk[5:20, 20:35] = 0  # 15x15 of class 1's 15x30 kept
    assert class_dice(only_one, shrunk, 3) == pytest.approx(2 * 225 / (450 + 225))
    before = class_dice(truth, pred, 3)
    choice = choose_postprocess([pred] * 3, [truth] * 3, objects=1, classes=3)
    assert choice.keep_largest == 1 and choice.fill_holes
    assert choice.baseline == pytest.approx(before, abs=1e-6) and choice.dice == 1.0
    with pytest.raises(ValueError, match="multi-class"):
        choose_postprocess([pred], [truth], objects=1, classes=3, thresholds=(0.4,))


def test_the_best_of_several_improving_thresholds_is_kept() -> None:
    """One square at 0.65, one column of it at 0.45 and one at 0.35: thresholds 0.4 and
    0.3 both beat 0.5, and 0.3, which keeps both columns (Dice 1), is the one kept."""
    truth = np.zeros((20, 20), bool)
    truth[5:15, 5:15] = True
    prob = np.where(truth, 0.65, 0.0).astype(np.float32)
    prob[5:15, 5] = 0.45
    prob[5:15, 6] = 0.35
    choice = choose_postprocess([prob], [truth], objects=None, thresholds=(0.3, 0.4, 0.6))
    assert choice.threshold == 0.3
