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
