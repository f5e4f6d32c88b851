"""The quality flag on constructed masks with known answers."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from unet_lowered.inference.quality import (
    MaskStats,
    Objects,
    assess,
    class_mask_stats,
    contrast_grid,
    handed,
    imaged_field,
    mask_quality,
    mask_stats,
    names_a_side,
    object_contrast,
    object_shape,
    unsure_share,
    upright,
)


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
    # More unsure pixels than mask pixels: a ratio, not "937% of the mask's".
    wide = cv2.dilate(mask.astype(np.uint8), np.ones((41, 41), np.uint8)) > 0
    haze = np.where(mask, 0.97, np.where(wide, 0.3, 0.02))
    ratio = np.count_nonzero(wide & ~mask) / np.count_nonzero(mask)
    assert ratio > 1
    assert f"unsure area {ratio:.1f} times the mask's" in str(assess(mask, haze, stats))
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
    from unet_lowered.inference.postprocess import label_areas

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 70_000, (300, 400)).astype(np.int32)  # more labels than uint16
    exact = np.bincount(labels.ravel(), minlength=70_000)[1:]
    assert np.array_equal(label_areas(labels, 70_000), exact)
    for n in (50, 1 << 16):  # the histogram, up to its last bin
        fewer = labels % n
        assert np.array_equal(label_areas(fewer, n), np.bincount(fewer.ravel(), minlength=n)[1:])


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


def framed(picture: np.ndarray, size: int, value: float, text: bool = False) -> np.ndarray:
    """``picture`` in the middle of a ``size`` x ``size`` frame of one ``value``; with
    ``text``, a bright label burned into the frame's top-left corner."""
    out = np.full((size, size, *picture.shape[2:]), value, picture.dtype)
    top, left = (size - picture.shape[0]) // 2, (size - picture.shape[1]) // 2
    out[top : top + picture.shape[0], left : left + picture.shape[1]] = picture
    if text:
        out[2:6, 3:7] = np.iinfo(picture.dtype).max  # 4 of 100 pixels of each line
    return out


def film(height: int, width: int, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """A picture whose outer lines are not uniform (smooth shading plus noise)."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    shade = np.add.outer(np.linspace(0.2, 0.8, height), np.linspace(0.0, 0.2, width))
    return np.clip((shade + rng.normal(0, 0.05, shade.shape)) * top, 0, top).astype(dtype)


def test_imaged_field_is_the_picture_inside_a_uniform_frame() -> None:
    assert imaged_field(film(80, 90)) == 1.0  # no frame
    assert imaged_field(None) == 1.0
    assert imaged_field(np.zeros((50, 50), np.uint8)) == 1.0  # one value: no picture to find
    # a zoomed-out film in black borders, a collimated one in gray, 16-bit, colour
    assert imaged_field(framed(film(60, 60), 100, 0)) == pytest.approx(0.36)
    assert imaged_field(framed(film(70, 50), 100, 128)) == pytest.approx(0.35)
    assert imaged_field(framed(film(60, 60, np.uint16), 100, 0)) == pytest.approx(0.36)
    colour = np.repeat(film(60, 60)[:, :, None], 3, axis=2)
    assert imaged_field(framed(colour, 100, 0)) == pytest.approx(0.36)
    # text burned into the frame (4% of each of its lines) does not stop the frame
    assert imaged_field(framed(film(60, 60), 100, 0, text=True)) == pytest.approx(0.36)
    # a frame wider than 45% a side is taken only up to 45%: a film in the bottom-right
    # corner, 60 frame rows above it and 60 frame columns left of it
    corner = np.zeros((100, 100), np.uint8)
    corner[60:, 60:] = film(40, 40)
    assert imaged_field(corner) == pytest.approx(0.55**2)


def test_imaged_field_of_a_large_image_is_read_on_a_coarser_grid() -> None:
    big = framed(film(2000, 2400, np.uint16), 4000, 0)  # read every 8th pixel
    assert imaged_field(big) == pytest.approx(2000 * 2400 / 4000**2, abs=0.005)


def test_a_small_patient_in_a_large_frame_is_measured_on_the_field(stats: MaskStats) -> None:
    """The child of ``test_bad_masks_are_flagged_with_the_reason``: lungs of 4.5% of the
    image, right for a film filling 16% of it; a speck stays flagged, and so does too
    much foreground, which a frame only makes more."""
    small = np.zeros((100, 100), bool)
    small[40:55, 30:45] = small[40:55, 55:70] = True
    assert "foreground 4.5% of the image, training masks" in str(assess(small, None, stats))
    assert str(assess(small, None, stats, field=0.16)) == "ok"  # 28% of the field
    speck = np.zeros((100, 100), bool)
    speck[45:48, 30:33] = speck[45:48, 55:58] = True
    quality = str(assess(speck, None, stats, field=0.16))
    assert "foreground 0.2% of the image (1.1% of the imaged field), training masks" in quality
    wide = lungs(height=75)
    wide[20:95, 5:95] = True  # 68% of the image: too much with or without a frame
    assert "foreground 67.5% of the image (100.0% of the imaged field)" in str(
        assess(wide, None, stats, field=0.5)
    )
    assert str(assess(lungs(), None, stats, field=0.5)) == "ok"  # 30%: in range as it is


def chest(mask: np.ndarray, lung: float = 0.2, body: float = 0.6) -> np.ndarray:
    """A chest-like picture of a lung mask: dark lungs in a gray body, a bright spine."""
    image = np.full(mask.shape, body, np.float32)
    image[mask] = lung
    image[:, 48:52] = 1.0
    return image


def test_object_contrast_known_answers() -> None:
    image = np.full((100, 100), 0.6, np.float32)
    image[:, :5] = 1.0  # a bright band: the range is 0.2 (the square) to 1.0
    mask = np.zeros((100, 100), bool)
    mask[30:60, 30:60] = True
    image[mask] = 0.2
    mask[80:85, 80:85] = True  # 0.25% of the image: too small to count
    assert object_contrast(contrast_grid(image), mask) == pytest.approx([0.5])  # 0.4 / 0.8
    big = cv2.resize(image, (1000, 1000), interpolation=cv2.INTER_NEAREST)
    grid = contrast_grid(np.dstack([big] * 3))  # colour, read on 256 points a side
    assert grid.shape == (256, 256)
    big_mask = cv2.resize(mask.astype(np.uint8), (1000, 1000), interpolation=cv2.INTER_NEAREST)
    assert object_contrast(grid, big_mask) == pytest.approx([0.5], abs=0.01)
    image[mask] = 0.9  # a bright object on a darker ring: negative
    assert object_contrast(contrast_grid(image), mask)[0] == pytest.approx(-0.3 / 0.4)
    assert object_contrast(contrast_grid(np.zeros((50, 50))), mask[:50, :50]) == []  # flat


def test_a_whited_out_lung_is_flagged_by_its_contrast() -> None:
    masks = [lungs(s, height=h) for s in (-5, 0, 5) for h in (45, 50, 55)]
    darks = [0.15, 0.2, 0.25] * 3
    stats = mask_stats(masks, (chest(m, lung=d) for m, d in zip(masks, darks, strict=True)))
    assert stats.contrast is not None and 0.4 < stats.contrast[0] <= stats.contrast[1] < 0.8
    assert MaskStats.from_json(stats.to_json()) == stats
    mask = lungs(2, height=48)
    probs = np.where(mask, 0.97, 0.02)
    normal = chest(mask)
    assert str(assess(mask, probs, stats, grid=contrast_grid(normal))) == "ok"
    white = normal.copy()
    left = mask.copy()
    left[:, 50:] = False
    white[cv2.dilate(left.astype(np.uint8), np.ones((11, 11), np.uint8)) > 0] = 0.6
    white[:, 48:52] = 1.0  # the left lung whited out past its outline; the mask is right
    flag = str(assess(mask, probs, stats, grid=contrast_grid(white)))
    assert flag.startswith("check: an object's contrast with its surroundings +0.00")
    assert str(assess(mask, probs, stats)) == "ok"  # no image given: the rule is off
    # Without images, or when the objects vary in number, there is no contrast rule.
    assert mask_stats(masks).contrast is None
    specks = [np.random.default_rng(k).random((64, 64)) > 0.7 for k in range(5)]
    assert mask_stats(specks, (m.astype(np.float32) for m in specks)).contrast is None


def apex_lungs(shift: int = 0, height: int = 50, size: int = 100) -> np.ndarray:
    """Two lung-like triangles side by side: a pointed apex at the top, the base (and
    the widest row) at the bottom, the outer edge straight down."""
    mask = np.zeros((size, size), bool)
    top = 20 + shift
    for row in range(height):
        width = 3 + round(27 * row / (height - 1))  # 3 px at the apex, 30 at the base
        mask[top + row, 45 - width : 45] = True  # image-left lung, outer edge on the left
        mask[top + row, 55 : 55 + width] = True
    return mask


def test_object_shape_known_answers() -> None:
    square = np.zeros((60, 80), bool)
    square[10:30, 20:60] = True
    np.testing.assert_array_equal(object_shape(square), np.ones((24, 24), np.float32))
    assert not object_shape(np.zeros((30, 30), bool)).any()
    wedge = np.tril(np.ones((48, 48), bool))  # filled below the diagonal
    shape = object_shape(wedge)
    assert (
        shape[-1, 0] == 1.0 and shape[0, -1] == 0.0 and shape.mean() == pytest.approx(0.5, abs=0.03)
    )
    # the n largest objects only: a speck far away does not stretch the box
    with_speck = square.copy()
    with_speck[55, 2] = True
    np.testing.assert_array_equal(object_shape(with_speck, 1), object_shape(square))
    assert object_shape(with_speck).min() == 0.0  # all objects: the speck widens the box
    # a 4k mask is read on a coarser grid and gives the small mask's shape
    big = cv2.resize(apex_lungs().astype(np.uint8), (4000, 4000), interpolation=cv2.INTER_NEAREST)
    small_shape, big_shape = object_shape(apex_lungs(), 2), object_shape(big, 2)
    assert np.abs(big_shape - small_shape).mean() < 0.02  # edge pixels differ by sampling


def test_upright_reads_a_shape_turned_or_mirrored_upside_down() -> None:
    mean = object_shape(apex_lungs(), 2)
    assert upright(mean, mean) > 0.5
    for flipped in (mean[::-1, ::-1], mean[::-1]):
        assert upright(flipped, mean) < -0.5
    assert upright(mean[:, ::-1], mean) == pytest.approx(upright(mean, mean))  # symmetric pair
    flat = np.ones((24, 24))
    assert upright(flat, mean) == 0.0 and upright(mean, flat) == 0.0


def test_a_mask_upside_down_is_flagged_by_its_shape() -> None:
    """Training lungs pointed at the top: the same lungs turned 180 degrees or mirrored
    top to bottom are flagged; upright, mirrored left to right or tilted 8 degrees they
    are not. Shapes alike upside down (rectangles) or objects that vary in number give
    no shape rule."""
    stats = mask_stats([apex_lungs(s, h) for s in (-5, 0, 5) for h in (45, 50, 55)])
    assert stats.shape is not None and len(stats.shape) == len(stats.shape[0]) == 24
    assert MaskStats.from_json(stats.to_json()) == stats
    mask = apex_lungs(2, 48)
    probs = np.where(mask, 0.97, 0.02)
    tilt = cv2.getRotationMatrix2D((50, 45), 8, 1.0)
    tilted = cv2.warpAffine(mask.astype(np.uint8), tilt, (100, 100), flags=cv2.INTER_NEAREST) > 0
    for fine in (mask, mask[:, ::-1], tilted):
        assert str(assess(fine, np.where(fine, 0.97, 0.02), stats)) == "ok"
    for turned in (mask[::-1, ::-1], mask[::-1]):
        flag = str(assess(turned, probs[::-1], stats))
        assert flag.startswith("check: the objects' shape does not look upright (-")
        assert flag.endswith("masks, +0.05 or more when upright): is the image turned?")
    assert mask_stats([lungs(s, height=h) for s in (-5, 0, 5) for h in (45, 50, 55)]).shape is None
    specks = [np.random.default_rng(k).random((64, 64)) > 0.7 for k in range(5)]
    assert mask_stats(specks).shape is None
    # a run recorded before the rule (no shape) flags nothing new
    old = MaskStats.from_json({**stats.to_json(), "shape": None})
    assert str(assess(mask[::-1, ::-1], probs, old)) == "ok"


def anatomy(shift: int = 0, heart: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """Class indices: image-left lung 1, image-right lung 2, heart 3 (a disc between
    the lungs' bases), and a chest image: lungs dark, heart light, body mid-gray."""
    labels = np.zeros((100, 100), np.uint8)
    labels[20 + shift : 75 + shift, 12:42] = 1
    labels[20 + shift : 75 + shift, 58:88] = 2
    cv2.circle(labels, (50, 70 + shift), heart, 3, -1)
    image = np.choose(labels, [140.0, 40.0, 40.0, 230.0]).astype(np.float32)
    return labels, image


def test_multi_class_runs_are_flagged_per_class() -> None:
    """Each class's mask against that class's training masks; reasons named by the
    class's label value. A run recorded without the classes gets no flag."""
    from run_fixtures import run_config

    pairs = [anatomy(s, h) for s in (-4, 0, 4) for h in (12, 14, 16)]
    union, per_class = class_mask_stats((m for m, _ in pairs), (i for _, i in pairs), 4)
    assert sorted(per_class) == [1, 2, 3]
    assert [per_class[c].objects for c in (1, 2, 3)] == [1, 1, 1]
    assert union.objects == 1  # together: the heart touches both lungs
    assert per_class[3].contrast[0] < 0 < per_class[1].contrast[0]  # light heart, dark lungs
    assert mask_stats(m == 1 for m, _ in pairs) == dataclasses.replace(per_class[1], contrast=None)
    recorded = {**union.to_json(), "classes": {str(c): s.to_json() for c, s in per_class.items()}}
    config = run_config(num_classes=4, label_values=[0, 85, 170, 255], mask_stats=recorded)
    labels, image = anatomy(1, 15)
    probs = np.eye(4, dtype=np.float32)[labels] * 0.96 + 0.01
    grid = contrast_grid(image)
    assert mask_quality(labels, probs, config, None, 1.0, grid) == "ok"
    no_heart = np.where(labels == 3, 0, labels)
    assert mask_quality(no_heart, probs, config, None, 1.0, grid) == "check: class 255: empty mask"
    split = labels.copy()
    split[45:48, 12:42] = 0  # the left lung cut in two
    flag = mask_quality(split, probs, config, None, 1.0, grid)
    assert flag == "check: class 85: 2 object(s), training masks have 1"
    # the lungs' classes swapped (a film mirrored left to right): each is where the other
    # should be
    swapped = np.choose(labels, [0, 2, 1, 3]).astype(labels.dtype)
    assert mask_quality(swapped, probs, config, None, 1.0, grid) == (
        "check: class 85: the object's centre at 73% of the width, training masks 26%-26%; "
        "class 170: the object's centre at 26% of the width, training masks 73%-73%"
    )
    # the shape rule reads the classes together (the heart below the lungs), once
    turned = mask_quality(labels[::-1], probs[::-1], config, None, 1.0, grid[::-1])
    assert turned.startswith("check: the objects' shape does not look upright (-")
    assert union.shape is not None and per_class[3].shape is None  # a disc: no shape
    older = run_config(num_classes=4, mask_stats=union.to_json())
    assert mask_quality(labels, probs, older, None, 1.0, grid) == ""


def test_a_lone_object_is_flagged_far_from_where_training_had_it() -> None:
    """One object steadily (a disc in the left third): its centre's range is recorded,
    widened by 0.1 of the width; a disc on the right is flagged, one nearby is not.
    Two objects (lungs) record no centre."""

    def disc(x: int) -> np.ndarray:
        mask = np.zeros((100, 100), np.uint8)
        cv2.circle(mask, (x, 50), 12, 1, -1)
        return mask > 0

    stats = mask_stats([disc(x) for x in (28, 30, 32)])
    assert stats.centre == pytest.approx((0.2804, 0.3196), abs=1e-3)
    assert MaskStats.from_json(stats.to_json()) == stats
    near, far = disc(40), disc(75)
    assert str(assess(near, None, stats)) == "ok"
    assert str(assess(far, None, stats)) == (
        "check: the object's centre at 75% of the width, training masks 28%-32%"
    )
    assert mask_stats([lungs(s) for s in (-5, 0, 5)]).centre is None


def test_larger_left_records_which_side_the_larger_object_lies_on() -> None:
    # The image-right rectangle 10 columns narrower: the left one is the larger.
    def pair(narrow_right: bool) -> np.ndarray:
        mask = lungs()
        if narrow_right:
            mask[:, 75:85] = False
        else:
            mask[:, 15:25] = False
        return mask

    lefty = mask_stats([pair(True)] * 19 + [pair(False)])
    assert lefty.larger_left == 0.95 and handed(lefty)  # 19 of 20: steady
    assert MaskStats.from_json(lefty.to_json()) == lefty
    righty = mask_stats([pair(False)] * 20)
    assert righty.larger_left == 0.0 and handed(righty)
    mixed = mask_stats([pair(True)] * 18 + [pair(False)] * 2)
    assert mixed.larger_left == 0.9 and not handed(mixed)
    # One object, or a pair one above the other: no side recorded.
    assert mask_stats([lungs()[:, :50]] * 3).larger_left is None
    stacked = np.zeros((100, 100), bool)
    stacked[10:40, 20:80] = stacked[60:80, 20:80] = True
    assert mask_stats([stacked] * 3).larger_left is None
    # Runs recorded before the statistic: not handed.
    assert not handed(MaskStats.from_json({**lefty.to_json(), "larger_left": None}))
    assert not handed(None)


def test_unsure_share_counts_pixels_between_0_1_and_0_9_against_the_area() -> None:
    probs = np.zeros((10, 10), np.float32)
    probs[:2] = 0.5  # 20 unsure pixels
    probs[2:4] = 0.9  # sure: 0.9 is not below 0.9
    probs[4, :5] = 0.1  # sure: 0.1 is not above 0.1
    assert unsure_share(probs, 40) == 0.5
    assert unsure_share(probs[..., None], 80) == 0.25  # (H, W, 1) as (H, W)
    assert unsure_share(probs, 0) == 0.0


def test_val_unsure_is_recorded_and_absent_from_older_runs() -> None:
    stats = mask_stats([lungs()] * 3)
    assert stats.val_unsure is None  # the training masks alone do not give it
    recorded = MaskStats.from_json({**stats.to_json(), "val_unsure": 0.0913})
    assert recorded.val_unsure == 0.0913 and recorded.to_json()["val_unsure"] == 0.0913
    older = {k: v for k, v in stats.to_json().items() if k != "val_unsure"}
    assert MaskStats.from_json(older).val_unsure is None


def test_unsure_share_of_class_probabilities() -> None:
    # Three classes on 10 pixels: 6 sure (top class 0.95), 4 unsure (top class 0.6).
    p = np.zeros((1, 10, 3), np.float32)
    p[0, :6] = (0.95, 0.03, 0.02)  # sure background
    p[0, 6:] = (0.2, 0.6, 0.2)  # unsure class 1
    assert unsure_share(p, 4) == 1.0
    p[0, :2] = (0.02, 0.95, 0.03)  # two sure class-1 pixels: the mask is 6 px
    assert unsure_share(p, 6) == pytest.approx(4 / 6)
    # Two classes: the same rule as one foreground probability.
    two = np.stack([1 - p[..., 1], p[..., 1]], axis=-1)
    assert unsure_share(two, 6) == unsure_share(p[..., 1:2], 6) == pytest.approx(4 / 6)


def test_names_a_side() -> None:
    def centred(low: float, high: float) -> MaskStats:
        return MaskStats(objects=1, fraction=(0.1, 0.2), min_ratio=None, centre=(low, high))

    assert names_a_side(centred(0.23, 0.34)) and names_a_side(centred(0.69, 0.80))
    assert not names_a_side(centred(0.45, 0.55))  # across the middle
    assert not names_a_side(MaskStats(objects=2, fraction=(0.1, 0.2), min_ratio=0.5))


def test_two_lungs_of_area_ratio_0_6_are_flagged() -> None:
    """Lungs of 1500 and 900 px (ratio 0.6, under the 0.75 rule): one is missing a
    large part, flagged even though the run's own masks may differ (min_ratio 1)."""
    stats = MaskStats(objects=2, fraction=(0.1, 0.5), min_ratio=1.0)
    m = np.zeros((100, 100), bool)
    m[20:70, 10:40] = True
    m[20:50, 60:90] = True
    assert "differ in size" in str(assess(m, None, stats))
