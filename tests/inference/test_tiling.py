"""Overlap-tile prediction and test-time augmentation, with stand-in models."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unet_lowered.inference.tiling import blend_weights, predict_tiled, tile_starts
from unet_lowered.inference.tta import tta_predict, tta_transforms


def plus_one(batch: np.ndarray) -> np.ndarray:
    return batch + 1


def box_valid(batch: np.ndarray, r: int = 2) -> np.ndarray:
    """A 'valid-padding network': the (2r+1)^2 box mean, output smaller by r per side."""
    full = ndimage.uniform_filter(batch, size=(1, 2 * r + 1, 2 * r + 1, 1), mode="constant")
    return full[:, r:-r, r:-r]


def box_same(batch: np.ndarray, r: int = 4) -> np.ndarray:
    """A 'same-padding network': zero padding at the tile border, like a CNN's."""
    return ndimage.uniform_filter(batch, size=(1, 2 * r + 1, 2 * r + 1, 1), mode="constant")


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A real-ish gray image: soft blobs on a gradient, plus noise; (H, W, 1) float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = 0.3 * yy / height + 0.2 * xx / width
    for _ in range(12):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        s = rng.uniform(10, 60)
        img += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    img += 0.02 * rng.normal(size=img.shape).astype(np.float32)
    return img[:, :, None].astype(np.float32)


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "expected"),
    [
        (256, 256, 0.25, [0]),
        (100, 256, 0.25, [0]),
        (257, 256, 0.25, [0, 1]),
        (512, 256, 0.0, [0, 256]),
        (512, 256, 0.5, [0, 128, 256]),
        (10, 4, 0.5, [0, 2, 4, 6]),
    ],
)
def test_tile_starts_known(length: int, tile: int, overlap: float, expected: list[int]) -> None:
    assert tile_starts(length, tile, overlap) == expected


@pytest.mark.parametrize("length", [257, 1001, 777, 4096])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_tile_starts_cover_with_overlap(length: int, overlap: float) -> None:
    tile = 256
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == length - tile
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (tile - gaps >= int(overlap * tile) - 1).all()


@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
def test_blend_weights_positive_peak_one(blend: str) -> None:
    w = blend_weights((64, 48), blend)
    assert w.shape == (64, 48) and w.dtype == np.float32
    assert w.min() > 0 and w.max() == pytest.approx(1.0)
    if blend != "constant":
        assert w[32, 24] > w[0, 0] and w[32, 24] > w[32, 0]


@pytest.mark.parametrize(
    ("shape", "tile"),
    [((1001, 777, 1), 256), ((1001, 777, 3), (128, 96)), ((5, 3, 1), 16), ((256, 256, 1), 256)],
)
@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
def test_plus_one_reconstructs_exactly(shape: tuple[int, ...], tile, blend: str) -> None:
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    y = predict_tiled(x, plus_one, tile, overlap=0.25, blend=blend, batch_size=3)
    assert y.shape == shape and y.dtype == np.float32
    np.testing.assert_allclose(y, x + 1, rtol=0, atol=1e-5)


def test_plus_one_same_padding_with_margin_crops_the_border() -> None:
    x = np.random.default_rng(2).normal(size=(301, 199, 1)).astype(np.float32)
    y = predict_tiled(x, plus_one, 64, overlap=0.5, margin=(8, 4))
    np.testing.assert_allclose(y, x + 1, atol=1e-5)


def test_tiles_are_reported_as_they_are_done() -> None:
    """(1001, 777) in 256-px tiles at 25% overlap: 5 x 4 starts, 20 tiles, 3 a call."""
    seen: list[tuple[int, int]] = []
    x = np.zeros((1001, 777, 1), np.float32)
    predict_tiled(x, plus_one, 256, overlap=0.25, batch_size=3, on_tiles=lambda *a: seen.append(a))
    assert seen == [(3, 20), (6, 20), (9, 20), (12, 20), (15, 20), (18, 20), (20, 20)]


def test_two_dimensional_image_and_more_output_channels() -> None:
    x = np.arange(35 * 23, dtype=np.float32).reshape(35, 23)
    y = predict_tiled(x, lambda b: np.concatenate([b, -b], axis=-1), 16)
    assert y.shape == (35, 23, 2)
    np.testing.assert_allclose(y[..., 0], x, rtol=1e-6)
    np.testing.assert_allclose(y[..., 1], -x, rtol=1e-6)


@pytest.mark.parametrize("shape", [(1001, 777), (97, 61), (20, 9)])
def test_valid_network_equals_filter_on_mirrored_image(shape: tuple[int, int]) -> None:
    """Tiles of a valid-padding network with mirror-padded context give exactly what the
    network would give on the whole mirror-padded image (the paper's overlap-tile)."""
    x = smooth_image(*shape)
    y = predict_tiled(x, box_valid, tile=(60, 44), overlap=0.25, margin=2)
    # numpy's "reflect" padding is scipy's "mirror" mode (the edge pixel is not repeated)
    expected = ndimage.uniform_filter(x, size=(5, 5, 1), mode="mirror")
    np.testing.assert_allclose(y, expected, atol=1e-5)


def _seam_error(stitched: np.ndarray, reference: np.ndarray, boundaries: list[int]) -> float:
    """Largest error on the columns where tiles meet (a seam shows up there)."""
    return float(
        max(
            np.abs(stitched[:, b - 1 : b + 1] - reference[:, b - 1 : b + 1]).max()
            for b in boundaries
        )
    )


def test_no_seams_on_a_real_ish_image() -> None:
    """A same-padding 'network' is wrong near every tile border (zero padding). Plain
    stitching shows seams; Gaussian blending of overlapping tiles hides them."""
    x = smooth_image(300, 300)
    reference = ndimage.uniform_filter(x, size=(9, 9, 1), mode="mirror")
    interior = (slice(8, -8), slice(8, -8))
    plain = predict_tiled(x, box_same, tile=100, overlap=0.0, blend="constant")
    blended = predict_tiled(x, box_same, tile=100, overlap=0.5, blend="gaussian")
    seams_plain = _seam_error(plain[interior], reference[interior], [92, 192])
    seams_blended = _seam_error(blended[interior], reference[interior], [92, 192])
    assert seams_plain > 0.1
    assert seams_blended < seams_plain / 20
    # and nowhere inside the image does the blended map differ visibly from the reference
    assert np.abs(blended[interior] - reference[interior]).max() < 0.01


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": 0}, "tile must be an int >= 1"),
        ({"tile": 16, "overlap": 1.0}, "overlap must be in"),
        ({"tile": 16, "margin": -1}, "margin must be an int >= 0"),
        ({"tile": 16, "blend": "cosine"}, "blend must be one of gaussian, linear, constant"),
        ({"tile": 16, "batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_predict_tiled_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        predict_tiled(np.zeros((20, 20, 1), np.float32), plus_one, **kwargs)


def test_predict_fn_of_wrong_output_size_is_explained() -> None:
    with pytest.raises(ValueError, match=r"returned tiles of 14x14 for input tiles of 16x16"):
        predict_tiled(np.zeros((20, 20, 1), np.float32), lambda b: b[:, 1:-1, 1:-1], 16)


# ---------------------------------------------------------------- test-time augmentation


def position_model(batch: np.ndarray) -> np.ndarray:
    """A model that is not equivariant at all: adds its own position ramp (integers)."""
    _, h, w, _ = batch.shape
    ramp = (np.arange(h)[:, None] * 7 + np.arange(w)[None, :] * 3).astype(np.float32)
    return batch + ramp[None, :, :, None]


def _apply(k: int, flip: bool, a: np.ndarray) -> np.ndarray:
    a = a[:, :, ::-1] if flip else a
    return np.rot90(a, k, axes=(1, 2))


@pytest.mark.parametrize("which", ["lr", "ud", "flips", "dihedral"])
def test_tta_is_exactly_equivariant_on_a_symmetric_input(which: str) -> None:
    yy, xx = np.mgrid[0:32, 0:32]
    disk = (((yy - 15.5) ** 2 + (xx - 15.5) ** 2) < 100).astype(np.float32)
    x = disk[None, :, :, None] * 4
    group = tta_transforms(which)
    for k, flip in group:
        np.testing.assert_array_equal(_apply(k, flip, x), x)  # the input is symmetric
    plain = position_model(x)
    assert not any(np.array_equal(_apply(k, f, plain), plain) for k, f in group[1:])
    y = tta_predict(x, position_model, which)
    for k, flip in group:  # ...and so is the TTA output, to the last bit
        np.testing.assert_array_equal(_apply(k, flip, y), y)


@pytest.mark.parametrize("which", ["lr", "ud", "flips", "dihedral"])
@pytest.mark.parametrize("shape", [(2, 24, 24, 1), (1, 24, 40, 3)])
def test_tta_commutes_with_every_transform(which: str, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(3).integers(0, 50, size=shape).astype(np.float32)
    y = tta_predict(x, position_model, which)
    for k, flip in tta_transforms(which, square=shape[1] == shape[2]):
        np.testing.assert_array_equal(
            tta_predict(_apply(k, flip, x), position_model, which), _apply(k, flip, y)
        )


@pytest.mark.parametrize(
    ("which", "shape", "calls"),
    [
        ("dihedral", (1, 16, 16, 1), 8),
        ("dihedral", (1, 16, 20, 1), 4),  # no 90-degree turns for non-square inputs
        ("flips", (1, 16, 16, 1), 4),
        ("lr", (1, 16, 16, 1), 2),
        ("ud", (1, 16, 20, 1), 2),
    ],
)
def test_tta_group_sizes(which: str, shape: tuple[int, ...], calls: int) -> None:
    seen: list[tuple[int, ...]] = []

    def model(b: np.ndarray) -> np.ndarray:
        seen.append(b.shape)
        return b + 1

    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(tta_predict(x, model, which), x + 1, atol=1e-6)
    assert len(seen) == calls and all(s == shape for s in seen)


def test_tta_inside_tiling_reconstructs() -> None:
    x = np.random.default_rng(5).normal(size=(70, 50, 1)).astype(np.float32)
    y = predict_tiled(x, lambda b: tta_predict(b, plus_one), 32)
    np.testing.assert_allclose(y, x + 1, atol=1e-5)


def test_tta_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"x must be a \(B, H, W, C\) batch"):
        tta_predict(np.zeros((8, 8, 1)), plus_one)
    with pytest.raises(ValueError, match="TTA transforms must be one of lr, ud, flips, dihedral"):
        tta_predict(np.zeros((1, 8, 8, 1)), plus_one, "rot")


def test_tta_ud_is_an_up_down_flip_not_a_turn() -> None:
    """A model that adds the column index: averaged over the "ud" group (identity and an
    up-down flip) the ramp is unchanged; a 180-degree turn or a left-right flip in the
    group would reverse half of it (a run trained with up-down flips only would be
    averaged over views it never saw)."""
    ramp = np.arange(6, dtype=np.float32)[None, None, :, None]
    y = tta_predict(np.zeros((1, 4, 6, 1), np.float32), lambda b: b + ramp, "ud")
    np.testing.assert_allclose(y[0, :, :, 0], np.broadcast_to(np.arange(6.0), (4, 6)))
