"""``benchmarks/robustness.py``'s two opacity painters that training never uses, on a
constructed chest whose answer is known: where they whiten, where they leave the image
alone, and that the mask stays the whole lung field."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def robustness(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import robustness

    return robustness


def chest(dtype: type = np.uint8) -> tuple[np.ndarray, np.ndarray]:
    """A 200 x 300 gray body (0.6 of the range) with two dark lungs (0.2), far apart:
    the left one centred at x 80, the right one at x 220, rows 40-160."""
    mask = np.zeros((200, 300), np.uint8)
    cv2.ellipse(mask, (80, 100), (35, 60), 0, 0, 360, 1, -1)
    cv2.ellipse(mask, (220, 100), (35, 60), 0, 0, 360, 1, -1)
    top = np.iinfo(dtype).max
    image = np.where(mask > 0, 0.2 * top, 0.6 * top).astype(dtype)
    image[190:, :] = top  # some bright bone below, so the upper quantiles are white
    return image, mask


def lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The left and the right lung as bool masks."""
    left, right = mask > 0, mask > 0
    left = left & (np.arange(mask.shape[1]) < 150)[None, :]
    right = right & (np.arange(mask.shape[1]) >= 150)[None, :]
    return left, right


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_hemithorax_haze_whitens_one_lung_more_at_its_base(robustness, dtype) -> None:
    image, mask = chest(dtype)
    hazed, out_mask = robustness.hemithorax_haze(
        image, mask, np.random.default_rng(0), strength=0.8
    )

    assert hazed.dtype == image.dtype and hazed.shape == image.shape
    assert np.array_equal(out_mask, mask)
    change = hazed.astype(np.float64) - image
    left, right = lungs(mask)
    gains = [change[side].mean() for side in (left, right)]
    hazed_side = (left, right)[int(np.argmax(gains))]
    other = (right, left)[int(np.argmax(gains))]
    assert max(gains) > 0.2 * np.iinfo(dtype).max  # whitened by a good part of the range
    assert np.abs(change[other]).max() == 0  # the other lung as it was
    rows = np.flatnonzero(hazed_side.any(axis=1))
    upper = change[rows[0] + 5 : rows[0] + 25][hazed_side[rows[0] + 5 : rows[0] + 25]]
    lower = change[rows[-1] - 25 : rows[-1] - 5][hazed_side[rows[-1] - 25 : rows[-1] - 5]]
    assert lower.mean() > 1.5 * upper.mean() > 0  # heavier towards the base
    # past the outline: the body just beside the hazed lung is whitened too
    ring = cv2.dilate(hazed_side.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    ring &= ~(mask > 0)
    assert change[ring & (np.arange(200) > 100)[:, None]].mean() > 0


def test_bilateral_haze_whitens_both_lower_lungs_and_leaves_the_apices(robustness) -> None:
    image, mask = chest()
    hazed, out_mask = robustness.bilateral_haze(image, mask, np.random.default_rng(1), strength=0.8)

    assert np.array_equal(out_mask, mask)
    change = hazed.astype(np.float64) - image
    left, right = lungs(mask)
    for side in (left, right):
        lower = side & (np.arange(200) >= 120)[:, None]
        assert change[lower].max() > 40  # a patch of haze in each lower lung
        assert (change[lower] > 0).mean() > 0.1
        apex = side & (np.arange(200) < 55)[:, None]  # well above the top third of the rows
        assert np.abs(change[apex]).max() == 0
    far = np.zeros_like(mask, bool)
    far[:, 145:155] = True  # the mediastinum between the dilated lungs, beyond the blur
    assert np.abs(change[far & (np.arange(200) < 185)[:, None]]).max() == 0


def test_a_mask_without_lungs_is_left_alone(robustness) -> None:
    image, mask = chest()
    empty = np.zeros_like(mask)
    for paint in (robustness.hemithorax_haze, robustness.bilateral_haze):
        out, out_mask = paint(image, empty, np.random.default_rng(0), strength=0.8)
        assert np.array_equal(out, image) and np.array_equal(out_mask, empty)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_inverted_film_swaps_dark_and_light_within_the_films_range(robustness, dtype) -> None:
    image, mask = chest(dtype)
    out, same = robustness.inverted(image, mask, np.random.default_rng(0))
    assert out.dtype == dtype and same is mask
    top = np.iinfo(dtype).max
    lung = mask > 0
    # the lungs (the film's minimum) become its maximum, the bone below (its maximum)
    # its minimum, the body between moves to max + min - v
    assert (out[lung] == top).all() and (out[190:] == image.min()).all()
    body = ~lung
    body[190:] = False
    expected = int(top) + int(image.min()) - image[body].astype(np.int64)
    assert np.array_equal(out[body], expected.astype(dtype))
    assert int(out.max()) == int(image.max()) and int(out.min()) == int(image.min())
    twice, _ = robustness.inverted(out, mask, np.random.default_rng(0))
    assert np.array_equal(twice, image)


def test_turned_film_turns_image_and_mask_together(robustness) -> None:
    image, mask = chest(np.uint8)
    image = image[:, :150]  # not square: a quarter turn swaps height and width
    mask = mask[:, :150]
    for quarters in (1, 2):
        out, truth = robustness.turned(image, mask, np.random.default_rng(0), quarters)
        assert out.shape == (image.shape[::-1] if quarters == 1 else image.shape)
        assert out.flags.c_contiguous and truth.flags.c_contiguous
        assert np.array_equal(np.rot90(out, -quarters), image)
        assert np.array_equal(np.rot90(truth, -quarters), mask)
    upside_down, _ = robustness.turned(image, mask, np.random.default_rng(0), 2)
    assert upside_down[0, 0] == image[-1, -1]


def test_mirrored_film_flips_image_and_mask_top_to_bottom(robustness) -> None:
    image, mask = chest(np.uint8)
    out, truth = robustness.mirrored(image, mask, np.random.default_rng(0))
    assert np.array_equal(out[::-1], image) and np.array_equal(truth[::-1], mask)
    assert out.flags.c_contiguous and truth.flags.c_contiguous
