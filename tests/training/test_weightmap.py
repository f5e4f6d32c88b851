"""The paper's weight map: the gap between nearby objects weighs most; w_c far away."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from unet_lowered.errors import UnetError
from unet_lowered.training import weightmap as W


def two_squares(gap: int, size: int = 64) -> np.ndarray:
    """Two 10x10 squares on rows 20-29, the first on columns 10-19, then ``gap`` columns."""
    m = np.zeros((size, size), np.uint8)
    m[20:30, 10:20] = 1
    m[20:30, 20 + gap : 30 + gap] = 1
    return m


def exact_weight_map(mask: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The formula with a full-image distance transform per object and no cut-off."""
    objects, count = ndimage.label(mask != 0, structure=np.ones((3, 3), bool))
    weights = W.class_weights(mask).astype(np.float64)
    if count < 2:
        return weights
    d = np.sort([ndimage.distance_transform_edt(objects != k) for k in range(1, count + 1)], 0)
    term = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return weights + np.where(mask == 0, term, 0.0)


def test_class_weights_inverse_frequency_mean_one():
    mask = np.zeros((4, 4), np.uint8)
    mask[0] = 255  # a quarter foreground
    w = W.class_weights(mask)
    assert w.dtype == np.float32
    assert w[0, 0] == pytest.approx(1 / (2 * 0.25))  # 2
    assert w[3, 3] == pytest.approx(1 / (2 * 0.75))  # 2/3
    assert w.mean() == pytest.approx(1.0)
    assert np.all(W.class_weights(np.zeros((4, 4))) == 1.0)  # one class: 1 everywhere


def test_class_weights_are_capped():
    mask = np.zeros((100, 100), np.uint8)
    mask[0, 0] = 1  # would be 10000 / 2 = 5000
    assert W.class_weights(mask)[0, 0] == W.MAX_CLASS_WEIGHT


def test_reach_is_where_the_term_falls_below_tolerance():
    r = W.reach(10.0, 5.0)
    assert r == pytest.approx(21.46, abs=0.01)
    assert 10.0 * math.exp(-(r**2) / 50.0) == pytest.approx(W.TOLERANCE)
    assert W.reach(0.0, 5.0) == 0.0


def test_weight_peaks_in_the_gap_between_two_squares():
    mask = two_squares(gap=3)
    w = W.weight_map(mask)
    wc = W.class_weights(mask)
    assert w.dtype == np.float32 and w.shape == mask.shape
    # Gap pixel (25, 21): 2 px to column 19, 2 px to column 23 -> d1 + d2 = 4.
    assert w[25, 21] == pytest.approx(wc[25, 21] + 10 * math.exp(-16 / 50), rel=1e-6)
    # The largest background weight lies in the gap (foreground carries only its w_c).
    row, col = np.unravel_index(np.argmax(np.where(mask == 0, w, 0)), w.shape)
    assert 20 <= row < 30 and 20 <= col < 23
    # Far from both squares the border term is gone: w equals w_c.
    assert w[63, 63] == wc[63, 63] and w[0, 0] == wc[0, 0]
    # Foreground pixels get no border term.
    assert np.array_equal(w[mask == 1], wc[mask == 1])


def test_wider_gap_weighs_less():
    centre = {1: 20, 5: 22, 9: 24}  # a gap pixel in the middle of each gap
    peaks = [W.weight_map(two_squares(g))[25, centre[g]] for g in (1, 5, 9)]
    assert peaks[0] > peaks[1] > peaks[2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_exact_formula_within_tolerance(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((96, 96), np.uint8)
    yy, xx = np.mgrid[:96, :96]
    for _ in range(15):
        cy, cx, r = [*rng.integers(0, 96, 2).tolist(), int(rng.integers(2, 7))]
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    got = W.weight_map(mask)
    want = exact_weight_map(mask)
    assert np.max(np.abs(got - want)) < W.TOLERANCE


@pytest.mark.parametrize("objects", [0, 1])
def test_zero_or_one_object_gives_class_weights(objects):
    mask = np.zeros((32, 32), np.uint8)
    if objects:
        mask[5:10, 5:10] = 1
    w = W.weight_map(mask)
    assert np.array_equal(w, W.class_weights(mask))


def test_mask_encodings_agree():
    mask = two_squares(gap=4)
    w = W.weight_map(mask)
    np.testing.assert_array_equal(W.weight_map(mask * 255), w)
    np.testing.assert_array_equal(W.weight_map(mask[..., None].astype(bool)), w)


def test_instance_labels_separate_touching_objects():
    mask = two_squares(gap=0)  # one 10x20 component
    assert np.array_equal(W.weight_map(mask), W.class_weights(mask))
    objects = np.zeros_like(mask, np.int32)
    objects[20:30, 10:20] = 1
    objects[20:30, 20:30] = 2
    w = W.weight_map(mask, objects=objects)
    # Background just above the junction is near both nuclei: d1 = d2 = 1 (or sqrt 2).
    assert w[19, 19] > W.class_weights(mask)[19, 19] + 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sigma": 0.0}, "sigma > 0"),
        ({"w0": -1.0}, "w0 >= 0"),
        ({"objects": np.zeros((3, 3), np.int32)}, r"objects \(3, 3\) and mask \(64, 64\) differ"),
        ({"objects": np.zeros((64, 64))}, "integer instance labels"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(UnetError, match=message):
        W.weight_map(two_squares(2), **kwargs)


def test_non_2d_mask_is_rejected():
    with pytest.raises(UnetError, match=r"2-D mask .* got shape \(2, 8, 8\)"):
        W.weight_map(np.zeros((2, 8, 8)))


def test_w0_zero_is_class_weights_only():
    mask = two_squares(gap=2)
    assert np.array_equal(W.weight_map(mask, w0=0.0), W.class_weights(mask))


def test_objects_touching_at_a_corner_are_one_object() -> None:
    """Two squares meeting at one corner are one 8-connected object: no second object,
    so no border term (4-connectivity would add one around the corner)."""
    m = np.zeros((40, 40), np.uint8)
    m[10:20, 10:20] = 1
    m[20:30, 20:30] = 1
    np.testing.assert_array_equal(W.weight_map(m), W.class_weights(m))
