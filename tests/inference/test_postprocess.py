"""Post-processing known answers on masks drawn by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unet_lowered.dataset.masks import label_components
from unet_lowered.inference.postprocess import (
    basin_borders,
    clean_mask,
    count_components,
    fill_holes,
    keep_largest,
    merge_pieces,
    remove_small,
    split_touching,
    to_mask,
)


def disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def two_blobs_and_noise() -> tuple[np.ndarray, np.ndarray]:
    """Two lungs (big rectangles) and five specks of 1-4 pixels; returns (noisy, blobs)."""
    blobs = np.zeros((40, 60), bool)
    blobs[5:35, 5:25] = True  # 600 px
    blobs[8:33, 35:55] = True  # 500 px
    noisy = blobs.copy()
    noisy[0, 0] = noisy[39, 59] = noisy[20, 30] = True  # single pixels
    noisy[1:3, 28:30] = True  # 2x2 speck
    noisy[37, 10:14] = True  # 1x4 line
    return noisy, blobs


def test_to_mask_thresholds_one_class_and_argmaxes_several() -> None:
    p = np.array([[0.2, 0.5], [0.7, 0.49]], np.float32)
    np.testing.assert_array_equal(to_mask(p, 0.5), [[False, True], [True, False]])
    np.testing.assert_array_equal(to_mask(p[:, :, None], 0.6), [[False, False], [True, False]])
    k = np.stack([1 - p, p, np.full_like(p, 0.45)], axis=2)
    np.testing.assert_array_equal(to_mask(k), [[0, 0], [1, 0]])
    assert to_mask(k).dtype == np.int32


def test_two_blobs_plus_noise_keep_two_largest() -> None:
    noisy, blobs = two_blobs_and_noise()
    assert count_components(noisy) == 7
    np.testing.assert_array_equal(keep_largest(noisy, 2), blobs)
    np.testing.assert_array_equal(clean_mask(noisy, keep=2), blobs)


def test_two_blobs_plus_noise_min_area() -> None:
    noisy, blobs = two_blobs_and_noise()
    np.testing.assert_array_equal(remove_small(noisy, 5), blobs)
    only_1x4_and_blobs = remove_small(noisy, 4)
    assert count_components(only_1x4_and_blobs) == 4  # the 2x2 and the 1x4 have 4 pixels


def test_keep_largest_orders_by_area() -> None:
    noisy, _ = two_blobs_and_noise()
    largest = keep_largest(noisy, 1)
    assert largest.sum() == 600 and largest[10, 10]
    np.testing.assert_array_equal(keep_largest(noisy, 10), noisy)  # fewer objects than n


def reference_keep_largest(mask: np.ndarray, n: int) -> np.ndarray:
    """The definition: SciPy's labels in scan order, the n largest, ties by scan order."""
    labels, count = label_components(mask)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    areas[0] = -1
    keep = np.zeros(count + 1, bool)
    keep[np.argsort(-areas, kind="stable")[: min(n, count)]] = True
    return keep[labels] if count > n else mask


@pytest.mark.parametrize("seed", range(8))
def test_fast_fill_holes_and_keep_largest_equal_the_definitions(seed: int) -> None:
    """Random speckled masks (many objects, many holes, ties of equal area) and masks
    of equal squares (every area tied): OpenCV's flood fill and labels give exactly
    SciPy's holes, the n largest objects (ties in scan order) and the small objects."""
    rng = np.random.default_rng(seed)
    speckled = ndimage.binary_opening(rng.random((90, 120)) < 0.55, iterations=seed % 2)
    squares = np.zeros((60, 60), bool)
    for y, x in rng.permutation([(y, x) for y in range(2, 60, 9) for x in range(2, 60, 9)])[:20]:
        squares[y : y + 4, x : x + 4] = True  # 20 objects of 16 pixels
    for mask in (speckled, squares, np.zeros((5, 7), bool), np.ones((5, 7), bool)):
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
        for n in (1, 2, 3, 7):
            np.testing.assert_array_equal(keep_largest(mask, n), reference_keep_largest(mask, n))
        labels, count = label_components(mask)
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        for min_area in (2, 5, 16, 17):  # SciPy's labels: objects below min_area go
            np.testing.assert_array_equal(
                remove_small(mask, min_area), (areas >= min_area)[labels] & mask
            )
    assert keep_largest(squares, 3).sum() == 48
    assert remove_small(squares, 16).sum() == 320 and not remove_small(squares, 17).any()


def test_keep_largest_breaks_ties_by_scan_order_whatever_opencvs_label_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenCV does not promise labels in scan order (its parallel labelling on large
    images): with the labels shuffled, the kept objects are still the definition's."""
    import cv2

    from unet_lowered.inference import postprocess

    rng = np.random.default_rng(0)

    def shuffle(count, labels):
        new = np.concatenate([[0], rng.permutation(np.arange(1, count))])  # old -> new
        return new[labels].astype(np.int32), np.argsort(new)  # new -> old

    real, real_stats = cv2.connectedComponents, cv2.connectedComponentsWithStats

    def shuffled(image, connectivity, ltype):
        count, labels = real(image, connectivity=connectivity, ltype=ltype)
        return count, shuffle(count, labels)[0]

    def shuffled_stats(image, connectivity, ltype):
        count, labels, stats, centroids = real_stats(image, connectivity=connectivity, ltype=ltype)
        labels, order = shuffle(count, labels)
        return count, labels, stats[order], centroids[order]

    monkeypatch.setattr(postprocess.cv2, "connectedComponents", shuffled)
    monkeypatch.setattr(postprocess.cv2, "connectedComponentsWithStats", shuffled_stats)
    squares = np.zeros((60, 60), bool)
    for y in range(2, 60, 9):
        for x in range(2, 60, 9):
            squares[y : y + 4, x : x + 4] = True  # 49 objects of 16 pixels
    squares[2:6, 2:5] = False  # the first one is smaller: 4x1 left
    for n in (1, 2, 5, 30):
        np.testing.assert_array_equal(keep_largest(squares, n), reference_keep_largest(squares, n))
    # two objects of 17 pixels starting on the same row: the hook's bounding box starts
    # further left (column 0), but the block's first pixel (column 4) comes first
    hook, block = np.zeros((12, 14), bool), np.zeros((12, 14), bool)
    hook[2:9, 10], hook[8, 0:10] = True, True
    block[2:7, 4:7], block[2:4, 7] = True, True
    assert hook.sum() == block.sum() == 17
    np.testing.assert_array_equal(keep_largest(hook | block, 1), block)


def test_diagonal_pixels_are_one_object() -> None:
    m = np.eye(5, dtype=bool)
    assert count_components(m) == 1


def test_ring_becomes_filled_disk() -> None:
    outer, inner = disk((41, 41), 20, 20, 15), disk((41, 41), 20, 20, 8)
    ring = outer & ~inner
    np.testing.assert_array_equal(fill_holes(ring), outer)
    np.testing.assert_array_equal(clean_mask(ring, holes=True), outer)


def test_a_notch_open_to_the_border_is_not_a_hole() -> None:
    m = np.ones((10, 10), bool)
    m[0:5, 4:6] = False  # a slot that reaches the top edge
    np.testing.assert_array_equal(fill_holes(m), m)


def test_order_small_then_largest_then_holes() -> None:
    """Two rings, one with a speck inside its hole: the speck goes, then the hole is filled."""
    shape = (50, 100)
    left = disk(shape, 25, 25, 15) & ~disk(shape, 25, 25, 6)
    right = disk(shape, 25, 75, 12) & ~disk(shape, 25, 75, 4)
    m = left | right
    m[25, 25] = True  # speck inside the left hole
    m[0, 50] = True  # speck outside
    out = clean_mask(m, keep=2, holes=True, min_area=3)
    np.testing.assert_array_equal(out, disk(shape, 25, 25, 15) | disk(shape, 25, 75, 12))


@pytest.mark.parametrize("empty_shape", [(8, 8), (1, 1)])
def test_empty_mask_stays_empty(empty_shape: tuple[int, int]) -> None:
    m = np.zeros(empty_shape, bool)
    out = clean_mask(m, keep=2, holes=True, min_area=10)
    assert out.shape == m.shape and out.dtype == bool and not out.any()
    assert count_components(m) == 0


def test_multi_class_cleaned_per_class() -> None:
    m = np.zeros((20, 30), np.int32)
    m[2:18, 2:12] = 1  # left lung, with a hole
    m[8:10, 5:8] = 0
    m[2:18, 18:28] = 2  # right lung
    m[0, 15] = 2  # speck of class 2
    m[10, 22] = 3  # a one-pixel heart inside the right lung
    out = clean_mask(m, keep=1, holes=True)
    expected = m.copy()
    expected[8:10, 5:8] = 1
    expected[0, 15] = 0
    np.testing.assert_array_equal(out, expected)
    assert count_components(out) == 3


def test_keep_largest_rejects_zero() -> None:
    with pytest.raises(ValueError, match="keep_largest needs n >= 1, got 0"):
        keep_largest(np.zeros((3, 3), bool), 0)


# ---------------------------------------------------------------- the watershed split


def gapped_membrane(gap_p: float = 0.7) -> np.ndarray:
    """Two cells (p = 0.99) either side of a 2-px membrane (p = 0.1) with a faint stretch
    at ``gap_p`` in rows 10-14: thresholded at 0.5, the gap joins the cells."""
    prob = np.full((40, 40), 0.99, np.float32)
    prob[:, 19:21] = 0.1
    prob[10:15, 19:21] = gap_p
    return prob


def test_split_touching_cuts_two_cells_joined_by_a_faint_membrane() -> None:
    prob = gapped_membrane()
    mask = prob >= 0.5
    assert label_components(mask, 4)[1] == 1  # the gap merges the two cells
    split = split_touching(prob, mask, 0.9)
    # apart in both neighbourhoods: the Rand error's (4) and the package's (8)
    assert label_components(split, 4)[1] == 2 and count_components(split) == 2
    # only pixels of the gap became background; nothing outside the mask became foreground
    changed = mask & ~split
    assert not (split & ~mask).any()
    assert changed.any() and changed[10:15, 19:21].sum() == changed.sum()
    # every row of the gap is cut (where the floods meet on its flat ridge is a tie)
    assert (changed[10:15, 19:21].sum(axis=1) >= 1).all()
    # (H, W, 1) probabilities are taken too
    assert np.array_equal(split_touching(prob[..., None], mask, 0.9), split)
    # where the merge level is under the gap's probability, the pieces are joined back
    assert np.array_equal(split_touching(prob, mask, 0.65), mask)


def test_split_touching_follows_a_diagonal_membrane() -> None:
    # a 1-px membrane along the diagonal, faint in its middle third
    yy, xx = np.mgrid[0:48, 0:48]
    prob = np.where(yy == xx, 0.1, 0.99).astype(np.float32)
    prob[(yy == xx) & (yy >= 16) & (yy < 32)] = 0.8
    mask = prob >= 0.5
    assert label_components(mask, 4)[1] == 1
    split = split_touching(prob, mask, 0.9)
    # apart in both neighbourhoods: the cut breaks the corner contacts across the
    # diagonal, one pixel per corner, on the side scanned first (above it)
    assert label_components(split, 4)[1] == 2 and count_components(split) == 2
    assert not (split & ~mask).any()
    removed = mask & ~split
    clear = (yy < 15) | (yy > 32)  # rows where the membrane is clear, and their corners
    assert np.array_equal(removed[clear], (xx == yy + 1)[clear])
    # along the faint stretch the cut runs on the diagonal, at most 1 px either side
    assert (abs(xx - yy)[removed & ~clear] <= 1).all()
    assert all(removed[y, y] for y in range(16, 32))


def test_basin_borders_keep_regions_apart_in_both_neighbourhoods() -> None:
    labels = np.array(
        [
            [1, 1, 2, 2],
            [1, 2, 2, 3],
            [1, 1, 3, 3],
            [0, 0, 0, 3],
        ]
    )
    border = basin_borders(labels)
    expected = np.array(
        [
            [1, 1, 1, 1],  # (0, 0): 2 down-right; (0, 1): 2 right; (0, 2)-(0, 3): 3 below
            [1, 1, 1, 0],  # (1, 0): 2 on its right; (1, 1): 1 below; (1, 2): 3 right
            [0, 1, 0, 0],  # (2, 1): 3 on its right; background (0) borders no one
            [0, 0, 0, 0],
        ],
        bool,
    )
    assert np.array_equal(border, expected)
    kept = np.where(border, 0, labels)
    for value in (1, 2, 3):
        others = (kept != 0) & (kept != value)
        near = ndimage.binary_dilation(kept == value, np.ones((3, 3), bool))
        assert not (near & others).any()  # no 8-neighbour of another region is left
    assert not basin_borders(np.ones((3, 3), int)).any()


def test_split_touching_keeps_objects_whole_where_it_saw_no_membrane() -> None:
    # a dumbbell: two 15-px squares joined by a 3-px neck, p = 0.99 throughout
    prob = np.full((20, 40), 0.05, np.float32)
    prob[2:17, 2:17] = prob[2:17, 23:38] = prob[8:11, 17:23] = 0.99
    mask = prob >= 0.5
    # the neck gives each square a marker, but their boundary is no membrane: merged back
    assert np.array_equal(split_touching(prob, mask, 0.95), mask)
    # merge level 1 (never merge): the neck is cut, inside the neck, in each of its rows
    cut = split_touching(prob, mask, 1.0)
    assert count_components(cut) == 2 and label_components(cut, 4)[1] == 2
    removed = mask & ~cut
    assert removed[8:11, 17:23].sum() == removed.sum()
    assert 1 <= removed[8:11].sum(axis=1).min() and removed.sum(axis=1).max() <= 2
    # a cell with a dark organelle (p = 0.3: a hole in the mask) stays whole
    cell = np.full((30, 30), 0.05, np.float32)
    cell[5:25, 5:25] = 0.99
    cell[12:18, 12:18] = 0.3
    assert np.array_equal(split_touching(cell, cell >= 0.5, 0.9), cell >= 0.5)
    # one marker only (a square): whole; an empty mask stays empty
    square = np.zeros((20, 20), np.float32)
    square[4:16, 4:16] = 0.99
    assert np.array_equal(split_touching(square, square >= 0.5, 1.0), square >= 0.5)
    empty = np.zeros((8, 8), bool)
    assert not split_touching(np.zeros((8, 8), np.float32), empty, 0.9).any()


def test_merge_pieces_joins_regions_by_their_boundary_probability() -> None:
    labels = np.array(
        [
            [1, 1, 2, 2, 3],
            [1, 1, 2, 2, 3],
            [0, 0, 0, 0, 3],
        ]
    )
    probs = np.array(
        [
            [0.875, 0.75, 0.875, 0.875, 0.5],
            [0.875, 0.875, 0.875, 0.7, 0.5],
            [0.1, 0.1, 0.1, 0.1, 0.1],
        ],
        np.float32,
    )
    # 1|2: pairs (0.75, 0.875) and (0.875, 0.875), the lower of each: mean 0.8125;
    # 2|3: (0.875, 0.5) and (0.7, 0.5): mean 0.5
    merged = merge_pieces(labels, probs, 0.8125)
    assert merged[0, 0] == merged[0, 2] != merged[0, 4]
    assert (merged[2, :4] == 0).all()  # background stays background
    assert len(np.unique(merge_pieces(labels, probs, 0.82))) == 4  # 0 and three regions
    assert len(np.unique(merge_pieces(labels, probs, 0.5))) == 2  # 0 and one region


def test_fill_holes_keeps_a_lower_class_inside_the_hole() -> None:
    """A class-1 island inside a class-2 square is not a hole of class 2 to fill: it
    keeps its class (the classes are cleaned in increasing order, so a class-3 island,
    the case above, would hide a fill that overwrote it)."""
    m = np.zeros((12, 12), np.int32)
    m[2:10, 2:10] = 2
    m[5:7, 5:7] = 1
    np.testing.assert_array_equal(clean_mask(m, holes=True), m)
