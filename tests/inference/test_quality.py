"""The quality flag on constructed masks with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from unet_lowered.inference.quality import MaskStats, Objects, assess, mask_stats


def lungs(shift: int = 0, size: int = 100, height: int = 50, gap: int = 10) -> np.ndarray:
    """Two side-by-side rectangles, like a lung field in a chest X-ray."""
    mask = np.zeros((size, size), bool)
    top = 20 + shift
    mask[top : top + height, 15 : 50 - gap // 2] = True
    mask[top : top + height, 50 + gap // 2 : 85] = True
    return mask


@pytest.fixture
def stats() -> MaskStats:
    return mask_stats([lungs(s, height=h) for s in (-5, 0, 5) for h in (45, 50, 55)])


def test_stats_of_training_lungs(stats: MaskStats) -> None:
    assert stats.objects == 2
    assert 0.25 < stats.fraction[0] <= stats.fraction[1] < 0.35
    assert stats.min_ratio == pytest.approx(1.0)
    assert stats.small_object == pytest.approx(30 * 45 / 100**2)  # the smallest lung's share
    assert MaskStats.from_json(stats.to_json()) == stats


def test_a_plausible_lung_field_is_ok(stats: MaskStats) -> None:
    mask = lungs(2, height=48)
    probs = np.where(mask, 0.97, 0.02)
    assert str(assess(mask, probs, stats)) == "ok"


def test_bad_masks_are_flagged_with_the_reason(stats: MaskStats) -> None:
    cases = {}
    one = lungs()
    one[:, 50:] = False
    cases["1 object(s), training masks have 2"] = one
    neck = lungs()
    neck[2:8, 45:55] = True  # a blob in the neck
    cases["3 object(s), training masks have 2"] = neck
    small = np.zeros((100, 100), bool)
    small[40:55, 30:45] = small[40:55, 55:70] = True  # a child in a large frame
    cases["foreground 4.5% of the image, training masks"] = small
    unequal = lungs()
    unequal[20:70, 55:85] = False
    unequal[20:30, 55:60] = True
    cases["the two largest objects differ in size"] = unequal
    stacked = np.zeros((100, 100), bool)
    stacked[10:40, 20:80] = stacked[55:85, 20:80] = True
    cases["not side by side"] = stacked
    for reason, mask in cases.items():
        quality = assess(mask, None, stats)
        assert quality.status == "check" and reason in str(quality), (reason, str(quality))
        # `unet predict` labels the mask once and hands the objects in: the same flag.
        assert assess(mask, None, stats, Objects.of(mask)) == quality
    # Side by side: a lung each side of the middle column, overlapping rows (not one on top).
    assert assess(lungs(), None, stats, Objects.of(lungs())).status == "ok"
    found = Objects.of(cases["not side by side"])
    assert found.count == 2 and list(found.areas) == [30 * 60, 30 * 60]


def test_empty_and_unsure_masks_are_flagged(stats: MaskStats) -> None:
    assert str(assess(np.zeros((100, 100), bool), None, stats)) == "check: empty mask"
    mask = lungs()
    # a band of 0.5 < p < 0.9 inside, and 0.1 < p < 0.5 outside, around the mask's edges
    band = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    probs = np.where(mask, 0.97, np.where(band, 0.3, 0.02))
    unsure = np.count_nonzero(band & ~mask) / np.count_nonzero(mask)
    assert unsure > 0.38  # the band is 4 px wide on 50 px lungs
    assert str(assess(mask, probs, stats)) == f"check: unsure area {unsure:.0%} of the mask's"
    thin = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    rim = np.where(mask, 0.97, np.where(thin, 0.3, 0.02))  # a one-pixel rim: sure enough
    assert str(assess(mask, rim, stats)) == "ok"


def test_without_stats_only_generic_checks() -> None:
    one = lungs()
    one[:, 50:] = False
    assert assess(one, None, None).status == "ok"  # no training statistics: counts unchecked
    assert assess(np.zeros((5, 5), bool), None, None).status == "check"


def test_varied_object_counts_are_not_checked() -> None:
    rng = np.random.default_rng(0)
    masks = []
    for n in (1, 3, 5, 7, 2, 9):
        mask = np.zeros((60, 60), bool)
        for _ in range(n):
            r, c = rng.integers(5, 50, 2)
            mask[r : r + 4, c : c + 4] = True
        masks.append(mask)
    stats = mask_stats(masks)
    assert stats.objects is None and stats.min_ratio is None


@pytest.mark.parametrize("seed", range(4))
def test_objects_match_a_plain_labelling(seed: int) -> None:
    """Count, areas and each object's place equal scipy's labelling of the same mask."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((97, 131)) < 0.45)  # blobs of every shape
    mask[0, -1] = mask[-1, 0] = True  # objects in the corners
    found = Objects.of(mask[:, :, None])  # (H, W, 1) as masks often come
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    assert found.count == count > 10
    expected, got = [], []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        ys, xs = np.nonzero(labels == k)
        expected.append((ys.size, box[0].start, box[0].stop - 1, round(xs.mean(), 9)))
        top, bottom, centre = found.place(k)
        got.append((int(found.areas[k - 1]), top, bottom, round(centre, 9)))
        assert np.array_equal(found.labels == k, labels == labels[found.labels == k][0])
    assert sorted(got) == sorted(expected)
    assert Objects.of(np.zeros((5, 5), bool)).count == 0


def test_areas_of_many_labels_and_large_masks() -> None:
    """Both ways of counting the pixels per label agree (the histogram's float32 counts
    are exact below 2**24 pixels, bincount takes over above)."""
    from unet_lowered.inference.quality import _label_areas

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 70_000, (300, 400)).astype(np.int32)  # more labels than uint16
    exact = np.bincount(labels.ravel(), minlength=70_000)[1:]
    assert np.array_equal(_label_areas(labels, 70_000), exact)
    for n in (50, 1 << 16):  # the histogram, up to its last bin
        fewer = labels % n
        assert np.array_equal(_label_areas(fewer, n), np.bincount(fewer.ravel(), minlength=n)[1:])


def test_side_by_side_reads_the_two_largest_objects(stats: MaskStats) -> None:
    """A third, smaller object does not decide; the two largest one above the other do."""
    mask = lungs()
    mask[85:90, 45:55] = True  # a small blob below, across the middle
    assert "not side by side" not in str(assess(mask, None, stats))
    stacked = np.zeros((100, 100), bool)
    stacked[10:40, 20:80] = True
    stacked[55:85, 20:80] = True
    assert "the two largest objects are not side by side" in str(assess(stacked, None, stats))
    tied = np.zeros((100, 100), bool)
    tied[10:60, 10:40] = True  # the largest, left
    tied[15:35, 60:80] = True  # right, level with it: taken, being higher up ...
    tied[70:90, 10:30] = True  # ... than this one of the same area, below it
    assert "not side by side" not in str(assess(tied, None, stats))
    assert "not side by side" in str(assess(np.flipud(tied), None, stats))
