"""Training metrics on logits (mean per-image hard Dice and IoU): hand-computed tables.

Every test here is tiny and runs under each Keras backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from tensor_fixtures import EMPTY, HALF, A, B, C, batch, hard_logits, onehot_logits
from unet_lowered.errors import UnetError
from unet_lowered.training import metrics as TM

pytestmark = pytest.mark.backend

# ---- training metrics ----------------------------------------------------------------------


def test_dice_metric_averages_per_image():
    m = TM.DiceMetric()
    m.update_state(batch(A, A), hard_logits(batch(A, C)))  # Dice 1 and 0
    assert float(m.result()) == pytest.approx(0.5)
    m.update_state(batch(A), hard_logits(batch(HALF)))  # Dice 2/3, third image
    assert float(m.result()) == pytest.approx((1 + 0 + 2 / 3) / 3, abs=1e-6)
    m.reset_state()
    assert float(m.result()) == 0.0


@pytest.mark.parametrize(
    ("truth", "pred", "dice", "iou"),
    [
        (A, A, 1.0, 1.0),
        (A, C, 0.0, 0.0),
        (A, HALF, 2 / 3, 1 / 2),
        (A, B, 1 / 2, 1 / 3),  # |A∩B| = 2, |A| = |B| = 4: Dice 4/8, IoU 2/6
        (EMPTY, EMPTY, 1.0, 1.0),
        (EMPTY, A, 0.0, 0.0),
        (A, EMPTY, 0.0, 0.0),
    ],
    ids=["perfect", "disjoint", "half", "shifted", "both-empty", "false-positive", "missed"],
)
def test_dice_and_iou_metric_table(truth, pred, dice, iou):
    y, x = batch(truth), hard_logits(batch(pred))
    for metric, want in ((TM.DiceMetric(), dice), (TM.IoUMetric(), iou)):
        metric.update_state(y, x)
        assert float(metric.result()) == pytest.approx(want, abs=1e-6)


def test_metric_threshold_is_a_probability():
    y = np.ones((1, 1, 1, 1), np.float32)
    x = np.full((1, 1, 1, 1), 0.1, np.float32)  # sigmoid(0.1) = 0.525
    default, strict = TM.DiceMetric(), TM.DiceMetric(threshold=0.6)
    default.update_state(y, x)
    strict.update_state(y, x)
    assert float(default.result()) == 1.0 and float(strict.result()) == 0.0
    with pytest.raises(UnetError, match=r"threshold must be a probability in \(0, 1\)"):
        TM.DiceMetric(threshold=1.0)


def test_metrics_ignore_the_weight_channel():
    y = np.concatenate([batch(A), np.full((1, 4, 4, 1), 9.0, np.float32)], -1)
    m = TM.DiceMetric()
    m.update_state(y, hard_logits(batch(B)))
    assert float(m.result()) == pytest.approx(0.5, abs=1e-6)


def test_multiclass_metric_uses_argmax_and_foreground_classes():
    labels = np.zeros((1, 4, 4, 1), np.float32)
    labels[0, 0, :, 0] = 1
    labels[0, 3, :, 0] = 2
    pred = labels.copy()
    pred[0, 3, :, 0] = 0  # class 2 missed entirely: Dice 0; class 1 perfect: Dice 1
    m = TM.DiceMetric(3)
    m.update_state(labels, onehot_logits(pred, 3))
    assert float(m.result()) == pytest.approx(0.5, abs=1e-6)
    iou = TM.IoUMetric(3)
    iou.update_state(labels, onehot_logits(labels, 3))
    assert float(iou.result()) == pytest.approx(1.0)


def test_multiclass_metric_leaves_out_a_class_absent_from_both():
    """Class 2 in neither truth nor prediction: the image's Dice is class 1's, 1/2, not
    the mean with a perfect 1 (as unet evaluate and MONAI's ignore_empty count)."""
    labels = np.zeros((1, 4, 4, 1), np.float32)
    labels[0, 0, :, 0] = 1  # 4 px of class 1
    pred = np.zeros_like(labels)
    pred[0, 0, :2, 0] = 1  # 2 of them: Dice 2*2 / (2 + 4) = 2/3
    m = TM.DiceMetric(3)
    m.update_state(labels, onehot_logits(pred, 3))
    assert float(m.result()) == pytest.approx(2 / 3, abs=1e-6)
    empty = TM.IoUMetric(3)  # no foreground anywhere: 1
    empty.update_state(np.zeros_like(labels), onehot_logits(np.zeros_like(labels), 3))
    assert float(empty.result()) == 1.0


def test_metric_counts_a_probability_at_the_threshold_as_foreground():
    y = np.ones((1, 1, 1, 1), np.float32)
    m = TM.DiceMetric()  # logit 0 is probability 0.5: foreground, as unet predict has it
    m.update_state(y, np.zeros((1, 1, 1, 1), np.float32))
    assert float(m.result()) == 1.0


def test_metric_sample_weight_weights_images():
    m = TM.DiceMetric()
    m.update_state(batch(A, A), hard_logits(batch(A, C)), sample_weight=np.array([3.0, 1.0]))
    assert float(m.result()) == pytest.approx(0.75)
