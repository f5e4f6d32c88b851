"""Known-answer tests for mask binarisation and label mapping (masks.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from unet_lowered.dataset import masks
from unet_lowered.errors import UnetError


def _disk(size: int = 64, radius: int = 12, value: int = 255) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    cv2.circle(m, (size // 2, size // 2), radius, value, -1)
    return m


def _jpeg(mask: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", mask, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


# (mask values in a 2x3 array, expected foreground, expected rule)
BINARY_CASES = [
    ([[0, 1, 1], [0, 0, 1]], [[0, 1, 1], [0, 0, 1]], "two-valued"),
    ([[0, 255, 255], [0, 0, 255]], [[0, 1, 1], [0, 0, 1]], "two-valued"),
    ([[3, 7, 7], [3, 3, 7]], [[0, 1, 1], [0, 0, 1]], "two-valued"),
    ([[0, 150, 200], [0, 0, 200]], [[0, 1, 1], [0, 0, 1]], "label-nonzero"),
    ([[0, 1, 2], [3, 0, 0]], [[0, 1, 1], [1, 0, 0]], "label-nonzero"),
    ([[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]], "constant"),
    ([[9, 9, 9], [9, 9, 9]], [[1, 1, 1], [1, 1, 1]], "constant"),
]


@pytest.mark.parametrize(("values", "expected", "rule"), BINARY_CASES)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_binarize_known_answers(values, expected, rule, dtype):
    result = masks.binarize(np.array(values, dtype))
    assert result.mask.dtype == bool
    assert result.mask.astype(int).tolist() == expected
    assert result.rule == rule


def test_sixteen_bit_binary():
    result = masks.binarize(np.array([[0, 65535], [65535, 0]], np.uint16))
    assert result.mask.tolist() == [[False, True], [True, False]]


def test_label_image_note_names_values_and_options():
    note = masks.binarize(np.array([[0, 150, 200]], np.uint8)).note
    assert note is not None
    assert "{0, 150, 200}" in note
    assert "--foreground" in note and "--classes" in note


def test_two_valued_without_zero_says_which_is_foreground():
    note = masks.binarize(np.array([[3, 7]], np.uint8)).note
    assert note is not None and "7 taken as foreground" in note
    assert masks.binarize(np.array([[0, 255]], np.uint8)).note is None


@pytest.mark.parametrize(
    ("foreground", "expected"),
    [((150,), [[0, 1, 0]]), ((200,), [[0, 0, 1]]), ((150, 200), [[0, 1, 1]]), ((7,), [[0, 0, 0]])],
)
def test_explicit_foreground_values(foreground, expected):
    result = masks.binarize(np.array([[0, 150, 200]], np.uint8), foreground=foreground)
    assert result.mask.astype(int).tolist() == expected
    assert result.rule == "foreground"


@pytest.mark.parametrize(("size", "radius"), [(224, 70), (64, 10), (32, 5)])
@pytest.mark.parametrize("quality", [50, 75, 95])
def test_jpeg_binary_mask_is_thresholded_exactly(size, radius, quality):
    truth = _disk(size, radius)
    noisy = _jpeg(truth, quality)
    assert len(np.unique(noisy)) > 2
    result = masks.binarize(noisy, lossy=True)
    assert result.rule == "near-binary"
    assert np.array_equal(result.mask, truth > 0)
    assert result.note is not None and "thresholded at" in result.note


def test_anti_aliased_png_mask_is_near_binary():
    truth = _disk(256, 60)
    aa = np.zeros_like(truth)
    cv2.circle(aa, (128, 128), 60, 255, -1, lineType=cv2.LINE_AA)
    soft = cv2.GaussianBlur(aa, (3, 3), 0)
    assert len(np.unique(soft)) > masks.FEW_VALUES
    result = masks.binarize(soft)
    assert result.rule == "near-binary"
    assert np.count_nonzero(result.mask != (truth > 0)) < 0.01 * truth.size


@pytest.mark.parametrize(
    "photo",
    [
        np.tile(np.arange(256, dtype=np.uint8), (16, 1)),  # gradient
        (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8),  # noise
        (np.random.default_rng(1).random((64, 64)) ** 4 * 255).astype(np.uint8),  # dark photo
        np.tile(np.arange(0, 65535, 257, dtype=np.uint16), (8, 1)),  # 16-bit gradient
    ],
)
def test_many_valued_non_binary_mask_is_refused(photo):
    with pytest.raises(masks.MaskValuesError, match=r"distinct values .* not near-binary"):
        masks.binarize(photo)


def test_colour_masks_reduce_to_one_channel():
    red = np.zeros((2, 3, 3), np.uint8)
    red[0, 1] = (255, 0, 0)
    red[1, 2] = (0, 0, 128)
    result = masks.binarize(red)
    assert result.mask.astype(int).tolist() == [[0, 1, 0], [0, 0, 1]]
    assert result.note is not None and "colour mask reduced" in result.note
    gray3 = np.repeat(np.array([[0, 255]], np.uint8)[..., None], 3, axis=2)
    reduced, note = masks.to_single_channel(gray3)
    assert reduced.tolist() == [[0, 255]] and note is None


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("255", (255,)),
        ("1,2", (1, 2)),
        (" 2 , 1 ,", (1, 2)),
        ("1-3,7", (1, 2, 3, 7)),
        ([5, 3], (3, 5)),
        (None, None),
        ("", None),
    ],
)
def test_parse_values(text, values):
    assert masks.parse_values(text) == values


@pytest.mark.parametrize("text", ["a", "3-1", "1.5", "70000", "-1"])
def test_parse_values_rejects(text):
    with pytest.raises(UnetError, match="--foreground"):
        masks.parse_values(text)


def test_label_values_and_mapping():
    mask = np.array([[0, 100], [200, 100]], np.uint8)
    values, note = masks.label_values(mask)
    assert values.tolist() == [0, 100, 200] and note is None
    assert masks.to_labels(mask, [0, 100, 200]).tolist() == [[0, 1], [2, 1]]
    assert masks.to_labels(mask, [0, 50, 100, 200]).tolist() == [[0, 2], [3, 2]]
    assert masks.to_labels(mask, [0, 100, 200]).dtype == np.uint8


def test_to_labels_rejects_values_outside_the_map():
    with pytest.raises(masks.MaskValuesError, match=r"values \[7\] are not in the label map"):
        masks.to_labels(np.array([[0, 7]], np.uint8), [0, 5])
    with pytest.raises(masks.MaskValuesError, match=r"\[300\]"):
        masks.to_labels(np.array([[0, 300]], np.uint16), [0, 5])


def test_label_values_refuses_jpeg_and_too_many():
    with pytest.raises(masks.MaskValuesError, match="lossless"):
        masks.label_values(_jpeg(_disk(), 75), lossy=True)
    many = np.arange(masks.MAX_CLASSES + 1, dtype=np.uint8).reshape(1, -1)
    with pytest.raises(masks.MaskValuesError, match="more than the 64 classes"):
        masks.label_values(many)


def test_value_counts_uint8_and_uint16_agree():
    m = np.array([[0, 0, 5], [255, 5, 5]], np.uint8)
    for arr in (m, m.astype(np.uint16)):
        values, counts = masks.value_counts(arr)
        assert values.tolist() == [0, 5, 255]
        assert counts.tolist() == [2, 3, 1]


def test_to_classes_reads_one_class_by_the_binarize_rules():
    """Training and evaluation read an unprepared mask as `unet prepare` would write it."""
    plain = np.array([[0, 255, 255], [0, 0, 255]], np.uint8)
    np.testing.assert_array_equal(masks.to_classes(plain), plain > 0)
    ones = np.array([[1, 255, 255], [1, 1, 255]], np.uint8)  # 1 is background here
    np.testing.assert_array_equal(masks.to_classes(ones), ones == 255)
    truth = _disk(224, 70)
    noisy = _jpeg(truth, 75)
    assert np.count_nonzero(noisy > 0) > np.count_nonzero(truth) + 500  # ringing is not lung
    np.testing.assert_array_equal(masks.to_classes(noisy), truth > 0)
    with pytest.raises(masks.MaskValuesError, match="not near-binary"):
        masks.to_classes(np.tile(np.arange(256, dtype=np.uint8), (16, 1)))
    labels = np.array([[0, 1], [2, 0]], np.uint8)  # several classes: indices untouched
    np.testing.assert_array_equal(masks.to_classes(labels, 3), labels)
