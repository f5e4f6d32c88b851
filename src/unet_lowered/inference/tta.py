"""Test-time augmentation: average a prediction over flips (and 90-degree rotations).

:func:`tta_predict` applies each transform of a group to the input, undoes it on
the output and averages; it takes any callable as the model, e.g. ``lambda x: x + 1``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from unet_lowered.inference.tiling import PredictFn
from unet_lowered.options import TTA_SETS


# The transforms of test-time augmentation act on the spatial axes (1, 2) of a batch.
# Each entry: (forward, inverse); rotations by k*90 degrees, optionally after a flip.
def _dihedral(k: int, flip: bool) -> tuple[Callable[[np.ndarray], np.ndarray], ...]:
    def forward(a: np.ndarray) -> np.ndarray:
        a = a[:, :, ::-1] if flip else a
        return np.rot90(a, k, axes=(1, 2))

    def inverse(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, -k, axes=(1, 2))
        return a[:, :, ::-1] if flip else a

    return forward, inverse


def tta_transforms(which: str = "dihedral", square: bool = True) -> list[tuple[int, bool]]:
    """The ``(quarter_turns, flip_left_right)`` pairs of one group of transforms.

    Args:
        which: ``"lr"`` (identity, left-right flip), ``"ud"`` (identity, up-down flip =
            180-degree turn + left-right flip), ``"flips"`` (identity, both flips, and
            their product, the 180-degree turn) or ``"dihedral"`` (all 8 symmetries of
            the square: ``"flips"`` plus the 90-degree rotations).
        square: The inputs are square. 90-degree rotations swap height and width, so
            ``"dihedral"`` falls back to ``"flips"`` for non-square inputs.

    Returns:
        The transforms; each set is a group, so averaging over it is equivariant.
    """
    if which not in TTA_SETS:
        raise ValueError(f"TTA transforms must be one of {', '.join(TTA_SETS)}; got {which!r}")
    if which == "lr":
        return [(0, False), (0, True)]
    if which == "ud":
        return [(0, False), (2, True)]
    if which == "dihedral" and square:
        return [(k, f) for f in (False, True) for k in range(4)]
    return [(0, False), (0, True), (2, True), (2, False)]


def tta_predict(
    x: np.ndarray,
    predict_fn: PredictFn,
    transforms: str = "dihedral",
) -> np.ndarray:
    """Average ``predict_fn`` over flips (and 90-degree rotations) of a batch.

    Each transform is applied to the input, the prediction is transformed back, and the
    results are averaged. The average over a group of transforms is equivariant: for
    any transform ``g`` in the group, ``tta_predict(g(x)) == g(tta_predict(x))``; on an
    input that a transform leaves unchanged, the output is unchanged by it too.

    Only average over transforms the model was trained to expect: a chest X-ray model
    trained without flips sees a flipped chest (heart on the wrong side) as a new kind
    of image, and TTA then lowers its accuracy.

    Args:
        x: ``(B, H, W, C)`` batch.
        predict_fn: Maps ``(B, h, w, C)`` to ``(B, h', w', K)`` with an output that
            follows the input's geometry (same or valid padding, square kernels).
        transforms: ``"lr"``, ``"ud"``, ``"flips"`` or ``"dihedral"`` (see
            :func:`tta_transforms`; rotations only for square batches).

    Returns:
        float32 ``(B, h', w', K)``: the mean prediction.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be a (B, H, W, C) batch, got shape {x.shape}")
    group = tta_transforms(transforms, square=x.shape[1] == x.shape[2])
    outputs = []
    for k, flip in group:
        forward, inverse = _dihedral(k, flip)
        y = predict_fn(np.ascontiguousarray(forward(x)))
        outputs.append(inverse(np.asarray(y, dtype=np.float32)))
        if len(outputs) == 2:  # keep at most two maps in memory
            outputs = [outputs[0] + outputs[1]]
    return outputs[0] / np.float32(len(group))
