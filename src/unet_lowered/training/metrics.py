"""Training metrics on logits, in ``keras.ops``: mean per-image hard Dice and IoU.

They log as ``dice``/``val_dice`` and ``iou``/``val_iou``; ``unet train`` picks
``model.keras`` and stops early by ``val_dice``. Shapes and conventions are those of
:mod:`unet_lowered.training.losses` (a weight channel in ``y_true`` is ignored).
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from unet_lowered.errors import UnetError
from unet_lowered.training.losses import (
    _PACKAGE,
    _check_num_classes,
    _labels,
    _logits,
    _mean_per_image,
    _split_true,
)


def _hard_overlap(y_true: Any, y_pred: Any, num_classes: int, logit_threshold: float) -> tuple:
    """Per image and foreground class: intersection, |pred|, |true|, each ``(B, C)`` float32."""
    target, _ = _split_true(y_true)
    logits = _logits(y_pred, num_classes)
    if num_classes == 1:
        pred = ops.cast(logits >= logit_threshold, "float32")  # p >= t, as predict has it
        true = ops.expand_dims(ops.cast(target > 0.5, "float32"), -1)
    else:
        pred = ops.one_hot(ops.argmax(logits, axis=-1), num_classes, dtype="float32")[..., 1:]
        true = ops.one_hot(_labels(target), num_classes, dtype="float32")[..., 1:]
    intersection = ops.sum(pred * true, axis=(1, 2))
    return intersection, ops.sum(pred, axis=(1, 2)), ops.sum(true, axis=(1, 2))


def _mean_over_present(scores: Any, totals: Any) -> Any:
    """Per image, the mean of ``scores`` ``(B, C)`` over the classes with pixels in the
    truth or the prediction (``totals > 0``); the plain mean (all 1) when none has."""
    present = ops.cast(totals > 0, "float32")
    count = ops.sum(present, axis=-1)
    counted = ops.sum(scores * present, axis=-1) / ops.maximum(count, 1.0)
    return ops.where(count > 0, counted, ops.mean(scores, axis=-1))


class _PerImageMetric(keras.metrics.Metric):
    """Mean over all images seen of a per-image score (itself a mean over foreground classes).

    Binary predictions are ``sigmoid(logit) >= threshold`` (as ``unet predict``);
    multi-class predictions are the argmax. A class empty in both truth and prediction is
    left out of the image's mean (as ``unet evaluate`` does), and an image with no
    foreground in either scores 1. ``sample_weight``
    (optional) weights images: shape ``(B,)`` or anything whose mean per image is the weight.
    """

    default_name = "score"

    def __init__(
        self,
        num_classes: int = 1,
        threshold: float = 0.5,
        name: str | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name or self.default_name, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        if not 0.0 < threshold < 1.0:
            raise UnetError(f"metric threshold must be a probability in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        self._logit_threshold = math.log(threshold / (1.0 - threshold))
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def _score(self, intersection: Any, pred_sum: Any, true_sum: Any) -> Any:
        raise NotImplementedError

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        overlap = _hard_overlap(y_true, y_pred, self.num_classes, self._logit_threshold)
        per_image = _mean_over_present(self._score(*overlap), overlap[1] + overlap[2])
        if sample_weight is None:
            weight = ops.ones_like(per_image)
        else:
            weight = _mean_per_image(ops.cast(sample_weight, "float32"))
        self.total.assign_add(ops.sum(per_image * weight))
        self.count.assign_add(ops.sum(weight))

    def result(self) -> Any:
        return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1e-12), 0.0)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "threshold": self.threshold,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiceMetric(_PerImageMetric):
    """Mean per-image hard Dice ``2|P∩T| / (|P| + |T|)`` (1 when both are empty), name ``dice``.

    Args:
        num_classes: 1 for binary sigmoid logits, N > 1 for softmax logits.
        threshold: probability threshold for binary predictions (0.5 = logit 0).
        name: metric name (``dice``, so Keras logs ``val_dice``).
        dtype: result dtype (state is float32).
    """

    default_name = "dice"

    def _score(self, intersection: Any, pred_sum: Any, true_sum: Any) -> Any:
        total = pred_sum + true_sum
        return ops.where(total > 0, 2.0 * intersection / ops.maximum(total, 1.0), 1.0)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class IoUMetric(_PerImageMetric):
    """Mean per-image hard IoU ``|P∩T| / |P∪T|`` (1 when both are empty), name ``iou``.

    Args:
        num_classes: 1 for binary sigmoid logits, N > 1 for softmax logits.
        threshold: probability threshold for binary predictions (0.5 = logit 0).
        name: metric name (``iou``, so Keras logs ``val_iou``).
        dtype: result dtype (state is float32).
    """

    default_name = "iou"

    def _score(self, intersection: Any, pred_sum: Any, true_sum: Any) -> Any:
        union = pred_sum + true_sum - intersection
        return ops.where(union > 0, intersection / ops.maximum(union, 1.0), 1.0)
