"""Augmentation: image and mask stay aligned, identity is exact, results are reproducible."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from unet_lowered.errors import UnetError
from unet_lowered.training.augment import (
    OPACITIES,
    AugmentConfig,
    augment,
    cross_site_shifts,
    cubic_weights,
    elastic_displacements,
    elastic_field,
    paint_opacity,
    random_affine,
    random_intensity,
    sampling_maps,
    warp,
)

GEOMETRY_ONLY = AugmentConfig(intensity=False, noise=False)


def shapes_mask(h: int = 96, w: int = 112) -> np.ndarray:
    """A disk and a rectangle (labels 1 and 2) away from the borders."""
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w), np.uint8)
    mask[(yy - h // 2) ** 2 + (xx - w // 3) ** 2 < (h // 4) ** 2] = 1
    mask[h // 5 : h // 3, w // 2 : w - w // 6] = 2
    return mask


def render(mask: np.ndarray, channels: int) -> np.ndarray:
    """The mask's foreground drawn as a float image in [0, 1] with ``channels`` channels."""
    image = (mask > 0).astype(np.float32)[:, :, None]
    return np.repeat(image, channels, axis=2)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "cfg",
    [
        GEOMETRY_ONLY,
        AugmentConfig(intensity=False, noise=False, elastic=False),
        AugmentConfig(intensity=False, noise=False, affine=False),
        AugmentConfig(
            intensity=False, noise=False, flip_lr=True, flip_ud=True, rotation=30, shift=0.2
        ),
    ],
    ids=["affine+elastic", "affine", "elastic", "flips+strong-affine"],
)
def test_image_and_mask_stay_aligned(cfg: AugmentConfig, channels: int) -> None:
    mask = shapes_mask()
    image = render(mask, channels)
    for seed in range(8):
        out_image, out_mask = augment(image, mask, np.random.default_rng(seed), cfg)
        assert out_image.shape == image.shape and out_image.dtype == np.float32
        assert out_mask.shape == mask.shape and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask)) <= {0, 1, 2}  # labels stay labels
        # The linearly interpolated rendering, thresholded, must agree with the
        # nearest-neighbour mask except for a few pixels right on object borders.
        # (A one-pixel shift of this mask disagrees on 1.1% of the pixels.)
        foreground = out_mask > 0
        mismatch = (out_image[..., 0] > 0.5) != foreground
        assert mismatch.mean() < 0.004, (seed, mismatch.mean())
        border = cv2.morphologyEx(
            foreground.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)
        )
        assert not np.any(mismatch & (border == 0)), seed
        for c in range(1, channels):
            np.testing.assert_array_equal(out_image[..., c], out_image[..., 0])


def test_one_pixel_shift_would_be_detected() -> None:
    foreground = shapes_mask() > 0
    assert np.mean(np.roll(foreground, 1, axis=1) != foreground) > 0.01


def test_weight_map_moves_with_the_mask() -> None:
    mask = shapes_mask()
    weight = 1.0 + 4.0 * mask.astype(np.float32)  # a weight that encodes the label
    image = render(mask, 1)
    for seed in range(5):
        _, out_mask, out_weight = augment(
            image, mask, np.random.default_rng(seed), AugmentConfig(flip_ud=True), weight=weight
        )
        assert out_weight.dtype == np.float32
        np.testing.assert_array_equal(out_weight, 1.0 + 4.0 * out_mask)


@pytest.mark.parametrize("channels", [1, 3])
def test_off_config_is_exact_identity(channels: int) -> None:
    rng = np.random.default_rng(3)
    image = rng.random((40, 50, channels), dtype=np.float32)
    mask = rng.integers(0, 3, (40, 50), dtype=np.uint8)
    weight = rng.random((40, 50), dtype=np.float32)
    out_image, out_mask, out_weight = augment(image, mask, rng, AugmentConfig.off(), weight)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)
    np.testing.assert_array_equal(out_weight, weight)
    assert out_image is not image and out_mask is not mask  # never the caller's arrays


def test_neutral_ranges_are_identity_too() -> None:
    rng = np.random.default_rng(4)
    image = rng.random((32, 32, 1), dtype=np.float32)
    mask = (image[..., 0] > 0.5).astype(np.uint8)
    cfg = AugmentConfig(
        rotation=0, scale=(1, 1), shift=0, elastic=False, brightness=0, contrast=(1, 1),
        gamma=(1, 1), clahe_p=0.0, noise=False,
    )  # fmt: skip
    out_image, out_mask = augment(image, mask, rng, cfg)
    np.testing.assert_allclose(out_image, image, atol=1e-6)
    np.testing.assert_array_equal(out_mask, mask)


@pytest.mark.parametrize(
    ("cfg", "axis"),
    [
        (dataclasses.replace(AugmentConfig.off(), flip_lr=True), 1),
        (dataclasses.replace(AugmentConfig.off(), flip_ud=True), 0),
    ],
    ids=["left-right", "up-down"],
)
def test_flips_are_exact(cfg: AugmentConfig, axis: int) -> None:
    image = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3) / 60
    mask = np.arange(20, dtype=np.uint8).reshape(4, 5)
    flipped = 0
    for seed in range(20):
        out_image, out_mask = augment(image, mask, np.random.default_rng(seed), cfg)
        if np.array_equal(out_mask, mask):
            np.testing.assert_array_equal(out_image, image)
        else:
            flipped += 1
            np.testing.assert_array_equal(out_mask, np.flip(mask, axis))
            np.testing.assert_array_equal(out_image, np.flip(image, axis))
    assert 3 <= flipped <= 17  # probability one half


def test_same_seed_same_result_and_other_seed_differs() -> None:
    cfg = AugmentConfig(noise=True, blur=True, flip_ud=True)
    rng = np.random.default_rng(0)
    image = rng.random((64, 64, 1), dtype=np.float32)
    mask = (image[..., 0] > 0.5).astype(np.uint8)
    a = augment(image, mask, np.random.default_rng(7), cfg)
    b = augment(image, mask, np.random.default_rng(7), cfg)
    c = augment(image, mask, np.random.default_rng(8), cfg)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_intensity_stays_in_unit_range_and_touches_only_the_image() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((30, 30, 3), dtype=np.float32)
    mask = (image[..., 0] > 0.5).astype(np.uint8)
    cfg = AugmentConfig(affine=False, elastic=False, noise=True, blur=True)
    for seed in range(10):
        out_image, out_mask = augment(image, mask, np.random.default_rng(seed), cfg)
        assert 0.0 <= out_image.min() and out_image.max() <= 1.0
        np.testing.assert_array_equal(out_mask, mask)


def test_gamma_known_answer() -> None:
    image = np.full((2, 2, 1), 0.25, np.float32)
    image[0, 0] = 1.0
    cfg = AugmentConfig(brightness=0.0, contrast=(1, 1), gamma=(2, 2), clahe_p=0.0)
    out = random_intensity(image, np.random.default_rng(0), cfg)
    np.testing.assert_allclose(out[..., 0], [[1.0, 0.0625], [0.0625, 0.0625]], rtol=1e-6)


def test_local_contrast_stretches_each_tile_more_with_a_higher_clip_limit() -> None:
    from unet_lowered.training.augment import local_contrast

    # A dim ramp in [0.2, 0.3]: inside one 32-px tile its range grows with the clip limit
    # (about 0.012 -> 0.02 at 1 -> 0.035 at 3); the result stays in [0, 1].
    ramp = np.tile(np.linspace(0.2, 0.3, 256, dtype=np.float32), (256, 1))[..., None]
    tile_range = [np.ptp(local_contrast(ramp, c)[128, :32, 0]) for c in (1.0, 2.0, 3.0)]
    assert np.ptp(ramp[128, :32, 0]) < tile_range[0] < tile_range[1] < tile_range[2]
    assert tile_range[2] > 2.5 * np.ptp(ramp[128, :32, 0])
    out = local_contrast(ramp, 3.0)
    assert out.shape == ramp.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    flat = np.full((64, 64, 1), 0.5, np.float32)
    assert np.ptp(local_contrast(flat, 2.0)) == 0.0  # nothing to equalise


def test_clahe_probability_one_always_applies_it() -> None:
    from unet_lowered.training.augment import local_contrast

    image = np.tile(np.linspace(0.2, 0.3, 256, dtype=np.float32), (256, 1))[..., None]
    kw = {"brightness": 0.0, "contrast": (1, 1), "gamma": (1, 1), "clahe_clip": (2, 2)}
    plain = random_intensity(image, np.random.default_rng(0), AugmentConfig(clahe_p=0.0, **kw))
    always = random_intensity(image, np.random.default_rng(0), AugmentConfig(clahe_p=1.0, **kw))
    np.testing.assert_allclose(plain, image)
    np.testing.assert_allclose(always, local_contrast(image, 2.0))


def test_pure_rotation_by_180_degrees_is_a_double_flip() -> None:
    image = np.random.default_rng(0).random((9, 11, 1), dtype=np.float32)
    mask = (image[..., 0] * 3).astype(np.uint8)
    matrix = cv2.getRotationMatrix2D((5.0, 4.0), 180, 1.0)
    out_image, out_mask, _ = warp(image, mask, matrix)
    np.testing.assert_allclose(out_image, image[::-1, ::-1], atol=1e-5)
    np.testing.assert_array_equal(out_mask, mask[::-1, ::-1])


def test_cubic_weights_interpolate_the_grid_exactly() -> None:
    w = cubic_weights(9, 3)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)  # partition of unity
    np.testing.assert_allclose(w[[0, 4, 8]], np.eye(3), atol=1e-12)  # corners and centre
    ramp = w @ np.array([0.0, 1.0, 2.0])
    np.testing.assert_allclose(ramp, np.linspace(0, 2, 9), atol=1e-12)  # linear is exact


def test_elastic_displacement_statistics() -> None:
    rng = np.random.default_rng(0)
    h, w = 33, 41
    fields = np.stack([elastic_field((h, w), rng, grid=3, sigma=10.0) for _ in range(4000)])
    assert fields.shape == (4000, 2, h, w) and fields.dtype == np.float32
    grid_points = fields[:, :, [0, 16, 32]][:, :, :, [0, 20, 40]]  # the 3x3 lattice
    assert abs(grid_points.std() - 10.0) < 0.3
    assert abs(grid_points.mean()) < 0.3
    # Between lattice points the field is a smooth blend: smaller spread, never larger.
    spread = fields.std(axis=0)
    assert spread.min() > 5.0 and spread.max() < 10.5
    # Smooth: neighbouring pixels move almost together.
    step = np.abs(np.diff(fields, axis=3)).mean()
    assert step < 1.0


@pytest.mark.parametrize("with_affine", [False, True])
def test_sampling_maps_equal_the_dense_composition(with_affine: bool) -> None:
    h, w = 37, 52
    rng = np.random.default_rng(5)
    matrix = random_affine((h, w), rng, AugmentConfig(rotation=20)) if with_affine else None
    field = elastic_field((h, w), np.random.default_rng(9), 3, 10.0)
    coarse = elastic_displacements(np.random.default_rng(9), 3, 10.0)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    px, py = xs + field[0], ys + field[1]
    if matrix is not None:
        inv = cv2.invertAffineTransform(matrix)
        px, py = (
            inv[0, 0] * px + inv[0, 1] * py + inv[0, 2],
            inv[1, 0] * px + inv[1, 1] * py + inv[1, 2],
        )
    map_x, map_y = sampling_maps((h, w), matrix, coarse)
    assert map_x.dtype == np.float32 and map_x.shape == (h, w)
    np.testing.assert_allclose(map_x, px, atol=1e-3)
    np.testing.assert_allclose(map_y, py, atol=1e-3)


def test_sampling_maps_without_transform_are_the_pixel_grid() -> None:
    map_x, map_y = sampling_maps((3, 4), None, np.zeros((2, 3, 3)))
    np.testing.assert_array_equal(map_x, [[0, 1, 2, 3]] * 3)
    np.testing.assert_array_equal(map_y, [[0] * 4, [1] * 4, [2] * 4])


def test_elastic_sigma_zero_is_identity() -> None:
    field = elastic_field((16, 16), np.random.default_rng(0), sigma=0.0)
    np.testing.assert_array_equal(field, 0.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scale": (1.1, 0.9)}, "scale=(1.1, 0.9) must satisfy 0 <= low <= high"),
        ({"gamma": (0.0, 1.0)}, "gamma=(0.0, 1.0) must be positive"),
        ({"clahe_p": 1.5}, "clahe_p=1.5 must be in [0, 1]"),
        ({"clahe_clip": (3.0, 1.0)}, "clahe_clip=(3.0, 1.0) must satisfy 0 <= low <= high"),
        ({"rotation": -5}, "rotation=-5 must be >= 0"),
        ({"shift": 0.6}, "shift=0.6 must be below 0.5"),
        ({"elastic_grid": 1}, "elastic_grid=1 must be at least 2"),
        ({"contrast": 3}, "contrast=3 must be a (low, high) pair"),
        ({"rotate": 5}, "unknown augmentation option(s) rotate; valid options: flip_lr"),
    ],
)
def test_bad_options_are_refused_with_a_helpful_message(values: dict, message: str) -> None:
    with pytest.raises(UnetError) as err:
        AugmentConfig.from_dict(values)
    assert message in str(err.value)


def test_config_dict_round_trip() -> None:
    cfg = AugmentConfig(flip_ud=True, scale=[0.8, 1.25])
    assert cfg.scale == (0.8, 1.25)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["scale"] == [0.8, 1.25]


def test_defaults_suit_chest_xrays() -> None:
    cfg = AugmentConfig()
    assert not cfg.flip_lr and cfg.affine and cfg.elastic and cfg.intensity
    assert (cfg.rotation, cfg.scale, cfg.shift) == (10.0, (0.9, 1.1), 0.08)
    assert (cfg.elastic_grid, cfg.elastic_sigma) == (3, 10.0)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="same size"):
        augment(np.zeros((4, 4, 1), np.float32), np.zeros((4, 5), np.uint8), None, AugmentConfig())


# ---------------------------------------------------------------- cross-site shifts


def _lungs(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A gray chest-like image (dark lungs) and its two-lung mask."""
    mask = np.zeros((size, size), np.uint8)
    mask[16:48, 8:28] = mask[16:48, 36:56] = 1
    image = np.where(mask[..., None] > 0, 0.2, 0.6).astype(np.float32)
    return image, mask


def test_cross_site_shifts_are_off_and_draw_nothing_by_default() -> None:
    image, mask = _lungs()
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    out, out_mask, _ = cross_site_shifts(image, mask, rng, AugmentConfig())
    assert rng.bit_generator.state == before  # the batches stay what they were
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(out_mask, mask)


def test_zoom_out_shrinks_image_and_mask_together() -> None:
    image, mask = _lungs()
    cfg = AugmentConfig(zoom_out_p=1.0, zoom_out=(0.5, 0.5))
    for seed in range(5):
        out, out_mask, weight = cross_site_shifts(
            image, mask, np.random.default_rng(seed), cfg, np.ones(mask.shape, np.float32)
        )
        assert out_mask.sum() == pytest.approx(mask.sum() / 4, rel=0.1)
        gray = out[..., 0]
        inner = cv2.erode(out_mask, np.ones((3, 3), np.uint8)) > 0
        assert np.abs(gray[inner] - 0.2).max() < 1e-4  # lungs stay on lungs
        assert weight.shape == mask.shape
        outside = (out_mask == 0) & (np.abs(gray - 0.6) > 0.05) & (np.abs(gray - 0.2) > 0.05)
        assert np.unique(np.round(gray[outside], 3)).size <= 1  # the border: one fill value


def test_frame_crop_keeps_image_and_mask_aligned() -> None:
    image, mask = _lungs()
    cfg = AugmentConfig(frame_crop_p=1.0)
    for seed in range(5):
        out, out_mask, _ = cross_site_shifts(image, mask, np.random.default_rng(seed), cfg)
        assert out.shape == image.shape and out_mask.shape == mask.shape
        inner = cv2.erode(out_mask, np.ones((3, 3), np.uint8)) > 0  # away from the edges
        assert inner.any() and np.abs(out[..., 0][inner] - 0.2).max() < 0.05  # 0.6 is far


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(zoom_out_p=1.0, zoom_out=(0.5, 0.5)),
        AugmentConfig(zoom_out_p=1.0, zoom_out=(0.6, 0.8)),
        AugmentConfig(frame_crop_p=1.0),
    ],
    ids=["zoom-out-half", "zoom-out", "frame-crop"],
)
def test_cross_site_shifts_resize_the_mask_where_the_image_goes(cfg: AugmentConfig) -> None:
    """Lungs 0.8 on 0.4 (the zoom-out's border fill is 0.25 or darker): after the shift
    the mask is exactly where the image is more lung than not (> 0.6). Nearest-neighbour
    resizing of the mask put it half a pixel down and right of the image: 66-80 pixels
    off on these."""
    _, mask = _lungs()
    image = np.where(mask[..., None] > 0, 0.8, 0.4).astype(np.float32)
    for seed in range(5):
        out, out_mask, _ = cross_site_shifts(image, mask, np.random.default_rng(seed), cfg)
        lung = out[..., 0] > 0.6
        assert (out_mask.astype(bool) != lung).sum() <= 1  # a float tie at most


@pytest.mark.parametrize("kind", ["effusion", "consolidation"])
def test_opacity_never_changes_the_mask_and_only_whitens_lungs(kind: str) -> None:
    image, mask = _lungs()
    for seed in range(5):
        out = paint_opacity(image, mask > 0, np.random.default_rng(seed), kind)
        np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
        assert np.all(out >= image - 1e-6) and out[mask > 0].mean() > image[mask > 0].mean()
    cfg = AugmentConfig(opacity_p=1.0)
    _, out_mask, _ = cross_site_shifts(image, mask, np.random.default_rng(1), cfg)
    np.testing.assert_array_equal(out_mask, mask)


def test_white_out_fades_one_lung_past_its_outline_and_keeps_the_mask() -> None:
    image, mask = _lungs()  # lungs 0.2 at columns 8-27 and 36-55, rows 16-47
    image[:, :6] = image[:, 58:] = 0.35  # thin lateral chest wall, darker than the body (0.6)
    rows = slice(20, 44)
    for seed in range(6):
        out = paint_opacity(image, mask > 0, np.random.default_rng(seed), "white-out")
        assert out.dtype == image.dtype and np.all(out >= image - 1e-6)  # only whiter
        gain = (out - image)[..., 0]
        left, right = gain[rows, 10:26].mean(), gain[rows, 38:54].mean()
        white, other = (left, right) if left > right else (right, left)
        assert white > 0.1 and other < 0.02  # one lung whited out, the other left as it was
        wall = gain[rows, :6].mean() if left > right else gain[rows, 58:].mean()
        far_wall = gain[rows, 58:].mean() if left > right else gain[rows, :6].mean()
        assert wall > 0.02 and far_wall < 0.005  # past the lung's outline, on its side only
    cfg = AugmentConfig(opacity_p=1.0)
    for seed in range(6):  # every kind the training draws keeps the mask
        _, out_mask, _ = cross_site_shifts(image, mask, np.random.default_rng(seed), cfg)
        np.testing.assert_array_equal(out_mask, mask)
    with pytest.raises(ValueError, match="use one of: effusion, consolidation, white-out"):
        paint_opacity(image, mask > 0, np.random.default_rng(0), "tumour")
    assert OPACITIES == ("effusion", "consolidation", "white-out")


def test_lowres_and_stamps_change_the_image_only() -> None:
    image = np.random.default_rng(0).random((64, 64, 1)).astype(np.float32)
    mask = (image[..., 0] > 0.5).astype(np.uint8)
    cfg = AugmentConfig(lowres_p=1.0, stamp_p=1.0)
    out, out_mask, _ = cross_site_shifts(image, mask, np.random.default_rng(3), cfg)
    np.testing.assert_array_equal(out_mask, mask)
    assert out.shape == image.shape and not np.allclose(out, image)
    smooth = np.abs(np.diff(out[..., 0], axis=1)).mean()
    assert smooth < np.abs(np.diff(image[..., 0], axis=1)).mean()  # detail lost


def test_cross_site_probabilities_are_checked() -> None:
    with pytest.raises(UnetError, match=r"opacity_p=1.5 must be in \[0, 1\]"):
        AugmentConfig(opacity_p=1.5)
