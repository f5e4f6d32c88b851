"""Tiny masks and logits for the loss and metric tests (hand-computable answers)."""

from __future__ import annotations

import numpy as np
from keras import ops

BIG = 30.0  # a logit this large is a hard 0/1 prediction to float32 precision


def np_(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def batch(*masks) -> np.ndarray:
    """Stack (H, W) masks into a (B, H, W, 1) float32 batch."""
    return np.stack([np.asarray(m, np.float32) for m in masks])[..., None]


def hard_logits(mask) -> np.ndarray:
    """Logits that are +BIG on the mask and -BIG elsewhere, (B, H, W, 1) from (B, H, W, 1)."""
    return np.where(np.asarray(mask) > 0, BIG, -BIG).astype(np.float32)


def onehot_logits(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(B, H, W, 1) labels -> (B, H, W, N) logits with BIG on the true class, 0 elsewhere."""
    return (np.eye(num_classes, dtype=np.float32)[labels[..., 0].astype(int)] * BIG).astype(
        np.float32
    )


# 4x4 masks: A has 4 px; HALF is 2 of them (Dice 2/3, IoU 1/2); B has 4 px, 2 shared with A
# (Dice 1/2, IoU 1/3); C is disjoint from A.
def rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """A 4x4 mask that is 1 on rows r0:r1 and columns c0:c1."""
    m = np.zeros((4, 4))
    m[r0:r1, c0:c1] = 1
    return m


A = rect(0, 1, 0, 4)
HALF = rect(0, 1, 0, 2)
B = rect(0, 2, 2, 4)
C = rect(3, 4, 0, 4)
EMPTY = np.zeros((4, 4))
