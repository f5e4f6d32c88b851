"""Shared preprocessing (preprocess.py) and the run-folder reader (runs.py): known answers."""

from __future__ import annotations

import numpy as np
import pytest

from unet_lowered import preprocess


def test_to_unit_scales_by_the_image_own_range() -> None:
    image = np.array([[1000, 2000], [3000, 5000]], np.uint16)  # 12-bit data in 16 bits
    x = preprocess.to_unit(image)
    assert x.shape == (2, 2, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], [[0.0, 0.25], [0.5, 1.0]])


def test_to_unit_of_a_flat_image_is_zero() -> None:
    assert not preprocess.to_unit(np.full((3, 3), 7, np.uint8)).any()


def test_standardize_gives_zero_mean_unit_variance() -> None:
    x = preprocess.standardize(np.array([1.0, 3.0], np.float32))
    np.testing.assert_allclose(x, [-1.0, 1.0])


def test_standardize_window_equals_the_whole_image_standardised_then_cut() -> None:
    rng = np.random.default_rng(1)
    whole = rng.random((40, 50, 1)).astype(np.float32) * 0.2
    whole[5:15, 30:45] += 0.7  # one bright object, outside most windows
    window = whole[20:36, 4:28]
    out = preprocess.standardize_window(
        window, preprocess.mean_std(window), preprocess.mean_std(whole)
    )
    np.testing.assert_allclose(out, preprocess.standardize(whole)[20:36, 4:28], atol=1e-5)
    # Linear brightness/contrast changes of the window (augmentation) change nothing.
    again = preprocess.standardize_window(
        0.8 * window + 0.1, preprocess.mean_std(window), preprocess.mean_std(whole)
    )
    np.testing.assert_allclose(again, out, atol=1e-5)


def test_standardize_window_keeps_a_flat_background_window_flat() -> None:
    whole = np.zeros((20, 20, 1), np.float32)
    whole[:5, :5] = 1.0
    window = whole[10:, 10:]  # all background: standardised alone it would be 0/0
    noisy = window + np.random.default_rng(0).normal(0, 0.01, window.shape).astype(np.float32)
    out = preprocess.standardize_window(
        noisy, preprocess.mean_std(window), preprocess.mean_std(whole)
    )
    # The whole image's background value, -mean/std, with the noise not blown up.
    np.testing.assert_allclose(out, preprocess.standardize(whole)[10:, 10:], atol=1e-4)


def test_same_content_in_8_and_16_bit_gives_the_same_input() -> None:
    rng = np.random.default_rng(0)
    image8 = rng.integers(0, 256, (32, 32), np.uint8)
    image16 = image8.astype(np.uint16) * 257
    a = preprocess.model_input(image8, channels=1, size=(16, 16))
    b = preprocess.model_input(image16, channels=1, size=(16, 16))
    assert a.shape == (16, 16, 1)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(("channels", "shape"), [(1, (8, 8, 1)), (3, (8, 8, 3))])
def test_model_input_converts_channels(channels: int, shape: tuple[int, ...]) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:4] = 200
    assert preprocess.model_input(rgb, channels=channels, size=None).shape == shape


def test_resize_mask_keeps_labels() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[:, 5:] = 2
    out = preprocess.resize_mask(mask, (7, 13))
    assert out.shape == (7, 13)
    assert set(np.unique(out)) == {0, 2}


def test_clahe_keeps_dtype_and_shape() -> None:
    image = np.tile(np.arange(64, dtype=np.uint16)[None, :] * 1000, (64, 1))
    out = preprocess.apply_clahe(image)
    assert out.dtype == np.uint16 and out.shape == image.shape


def test_clahe_takes_float_images_as_their_16_bit_scaling() -> None:
    """A float image (from a Python caller) gave cv2.error: it is scaled to uint16 by its
    min and max first, so it gets what the same image stored in 16 bits gets."""
    ramp = np.tile(np.linspace(0.2, 0.7, 64)[None, :], (64, 1))
    as16 = np.rint((ramp - 0.2) / 0.5 * 65535).astype(np.uint16)
    np.testing.assert_array_equal(preprocess.apply_clahe(ramp), preprocess.apply_clahe(as16))
    rgb = np.repeat(ramp[:, :, None], 3, axis=2).astype(np.float32)
    assert preprocess.apply_clahe(rgb).shape == (64, 64, 3)


def _nuclei(light_objects: bool, shape=(40, 50), channels: int = 1) -> np.ndarray:
    """Three disks on a noisy background: light on dark (fluorescence) or dark on light
    (brightfield); the two are each other's negative."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    objects = np.zeros(shape, bool)
    for cy, cx in ((10, 10), (25, 30), (12, 40)):
        objects |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
    noise = np.random.default_rng(0).integers(0, 20, shape)
    image = (30 + noise + 180 * objects).astype(np.uint8)
    image = image if light_objects else 255 - image
    return np.stack([image] * channels, -1) if channels == 3 else image


def test_light_background_is_told_by_the_median() -> None:
    assert not preprocess.light_background(preprocess.to_unit(_nuclei(True)))
    assert preprocess.light_background(preprocess.to_unit(_nuclei(False)))
    # colour: the mean of the channels; a large image: a regular subsample
    assert preprocess.light_background(preprocess.to_unit(_nuclei(False, channels=3)))
    big = np.full((700, 600), 230, np.uint8)
    big[::50, ::50] = 0
    assert preprocess.light_background(preprocess.to_unit(big))
    assert big.size > preprocess.MEDIAN_PIXELS


@pytest.mark.parametrize("channels", [1, 3])
def test_invert_light_gives_both_polarities_the_same_input(channels: int) -> None:
    light, dark = _nuclei(True, channels=channels), _nuclei(False, channels=channels)
    want = preprocess.model_input(light, channels, (32, 32))
    got = preprocess.model_input(dark, channels, (32, 32), invert_light=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # light objects on dark are left alone; without the option nothing is inverted
    same = preprocess.model_input(light, channels, (32, 32), invert_light=True)
    np.testing.assert_array_equal(same, want)
    plain = preprocess.model_input(dark, channels, (32, 32))
    np.testing.assert_allclose(plain, -want, atol=1e-5)


def test_resize_mask_takes_each_block_s_label_as_the_image_averages_it() -> None:
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 1  # one whole 2x2 block
    mask[2, 2] = mask[3, 3] = 1  # half a block: a tie, background
    mask[0, 2] = mask[0, 3] = mask[1, 3] = 1  # three of four: foreground
    np.testing.assert_array_equal(preprocess.resize_mask(mask, (2, 2)), [[1, 1], [0, 0]])
    labels = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [5, 5, 5, 2], [5, 5, 5, 0]], np.uint8)
    small = preprocess.resize_mask(labels, (2, 2))
    assert small.dtype == np.uint8
    np.testing.assert_array_equal(small, [[0, 2], [5, 5]])  # 2 vs 5 tie, 2 of 4: the lower
    assert preprocess.resize_mask(labels, (4, 4)) is labels  # the size it has: unchanged
    big = preprocess.resize_mask(np.array([[1, 0], [0, 0]], np.uint8), (4, 4))
    np.testing.assert_array_equal(big, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_resize_mask_stays_on_its_image() -> None:
    """A disc resized as a mask and as an image: the centroids agree within 0.05 px on
    average (nearest neighbour: 0.47 px down and right, 128 -> 116)."""
    yy, xx = np.mgrid[:128, :128]
    offsets = []
    for cy, cx, r in [(50.3, 61.7, 20.0), (70.0, 44.2, 13.5), (63.9, 64.1, 31.0)]:
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
        for size in [(116, 116), (52, 52), (200, 200)]:
            image = preprocess.resize_image(disc.astype(np.float32)[..., None], size)[..., 0]
            mask = preprocess.resize_mask(disc, size).astype(np.float32)
            offsets.append([_centroid(mask) - _centroid(image)])
    assert np.abs(np.mean(offsets, axis=0)).max() < 0.05
    assert np.abs(offsets).max() < 0.3


def _centroid(a: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[: a.shape[0], : a.shape[1]]
    return np.array([(yy * a).sum(), (xx * a).sum()]) / a.sum()
