"""The fingerprint on constructed data sets whose answers are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from planning_data import blobs, disk, organ, write_set
from unet_lowered.dataset.masks import label_components
from unet_lowered.dataset.pairs import load_prepared
from unet_lowered.errors import UnetError
from unet_lowered.io.images import write_png
from unet_lowered.planning.fingerprint import (
    fingerprint,
    orientation_histogram,
    sample_ids,
    texture_symmetry,
    touching_objects,
)


def _fp(root: Path, **kwargs):
    return fingerprint(load_prepared(root), **kwargs)


def test_rotation_free_blobs_keep_every_symmetry(tmp_path: Path) -> None:
    fp = _fp(write_set(tmp_path / "d", 16, blobs))
    for group in ("layout", "texture"):
        for name in ("flip_lr", "flip_ud", "rot90"):
            assert fp.symmetry[group][name]["kept"] is True, (group, name, fp.symmetry)


def test_asymmetric_layout_is_found(tmp_path: Path) -> None:
    fp = _fp(write_set(tmp_path / "d", 16, organ))
    layout = fp.symmetry["layout"]
    assert {k: v["kept"] for k, v in layout.items()} == {
        "flip_lr": False,
        "flip_ud": False,
        "rot90": False,
    }
    assert all(v["p"] < 0.01 and v["effect"] > 0.5 for v in layout.values())


def test_eight_images_can_tell(tmp_path: Path) -> None:
    """The smallest sample the test takes: with every sign vector enumerated, a fixed
    layout is found (p 2/256); 999 random draws could never go below 0.01 here."""
    layout = _fp(write_set(tmp_path / "d", 8, organ)).symmetry["layout"]
    assert {k: v["kept"] for k, v in layout.items()} == dict.fromkeys(layout, False)
    assert all(v["p"] == pytest.approx(2 / 256, abs=1e-4) for v in layout.values())


def test_classes_swapped_by_a_flip_are_found(tmp_path: Path) -> None:
    """Class 1 always on the left, class 2 its mirror image on the right (lungs labelled
    apart): the foreground as a whole is symmetric, the classes are not."""
    from unet_lowered.dataset.prepare import prepare

    rng = np.random.default_rng(0)
    for k in range(12):
        labels = np.zeros((64, 64), np.uint8)
        dy = int(rng.integers(-2, 3))
        labels[10 + dy : 54 + dy, 8:26] = 1
        labels[10 + dy : 54 + dy, 38:56] = 2
        image = np.clip(rng.normal(90, 8, labels.shape) + 70 * (labels > 0), 0, 255)
        write_png(tmp_path / "src" / "images" / f"c{k:02d}.png", image.astype(np.uint8))
        write_png(tmp_path / "src" / "masks" / f"c{k:02d}.png", labels)
    prepare(tmp_path / "src", tmp_path / "d", classes=True, progress=False)
    layout = _fp(tmp_path / "d").symmetry["layout"]
    assert layout["flip_lr"]["kept"] is False and layout["flip_lr"]["effect"] > 0.9
    assert layout["flip_ud"]["kept"] is True  # up-down keeps each class where it is


def test_too_few_images_cannot_tell(tmp_path: Path) -> None:
    fp = _fp(write_set(tmp_path / "d", 4, organ))
    assert {v["kept"] for v in fp.symmetry["layout"].values()} == {None}


def test_texture_of_stripes() -> None:
    # Horizontal stripes: every edge horizontal, a flip keeps them, a quarter turn does not.
    rows = np.arange(64)[:, None] * np.ones((1, 64))
    horizontal = (np.sin(rows / 2.0) > 0).astype(np.float32)
    hist = orientation_histogram(horizontal)
    assert hist.sum() == pytest.approx(1.0)
    assert hist[6] > 0.9  # gradients at 90 degrees (bin 6 of 12)
    result = texture_symmetry([hist])
    assert result["flip_lr"]["kept"] and result["flip_ud"]["kept"]
    assert not result["rot90"]["kept"] and result["rot90"]["asymmetry"] > 0.9
    # Diagonal stripes: a flip turns 45 degrees into 135.
    diagonal = (np.sin((rows + rows.T) / 2.0) > 0).astype(np.float32)
    result = texture_symmetry([orientation_histogram(diagonal)])
    assert not result["flip_lr"]["kept"] and not result["rot90"]["kept"]


def test_touching_objects_counts_thin_gaps() -> None:
    fg = np.zeros((40, 60), bool)
    fg[5:15, 5:15] = True  # A
    fg[5:15, 17:27] = True  # B: a 2 px gap from A
    fg[25:35, 45:55] = True  # C: far away
    labels, n = label_components(fg)
    assert n == 3
    assert touching_objects(fg, labels, n) == 2
    fg[5:15, 15:17] = False
    fg[5:15, 35:45] = fg[5:15, 5:15]  # D: 8 px from B, beyond the closing
    fg[5:15, 17:27] = False
    labels, n = label_components(fg)
    assert touching_objects(fg, labels, n) == 0


def test_touching_vs_separate_data_sets(tmp_path: Path) -> None:
    def touching(k, rng):
        mask = np.zeros((48, 48), bool)
        mask[8:20, 8:20] = mask[8:20, 21:33] = True  # 1 px apart
        mask[30:42, 8:20] = mask[30:42, 22:34] = True  # 2 px apart
        return (mask * 200).astype(np.uint8), mask

    def separate(k, rng):
        mask = np.zeros((48, 48), bool)
        mask[8:20, 8:20] = mask[8:20, 30:42] = mask[30:42, 8:20] = True  # 10 px apart
        return (mask * 200).astype(np.uint8), mask

    a = _fp(write_set(tmp_path / "t", 3, touching))
    b = _fp(write_set(tmp_path / "s", 3, separate))
    assert a.touching_fraction == 1.0 and a.objects_per_image == 4
    assert b.touching_fraction == 0.0 and b.objects_per_image == 3
    assert b.object_area["median"] == 144 and b.object_area["p05"] == 144
    assert b.foreground_fraction == pytest.approx(3 * 144 / 48**2, abs=1e-4)


def test_small_objects_in_large_images(tmp_path: Path) -> None:
    def make(k, rng):
        mask = np.zeros((300, 400), bool)
        for y in range(20, 280, 40):
            mask[y : y + 5, 30:35] = mask[y : y + 5, 200:205] = True
        return (mask * 255).astype(np.uint8), mask

    fp = _fp(write_set(tmp_path / "d", 3, make))
    assert fp.sizes == {
        "median_hw": [300, 400],
        "min_hw": [300, 400],
        "max_hw": [300, 400],
        "median_longer": 400,
        "spread": 1.0,
    }
    assert fp.objects_per_image == 14
    assert fp.object_area["median"] == 25
    assert fp.object_area["median_fraction"] == pytest.approx(25 / 120000, abs=1e-5)


def test_channels_depth_holes_and_intensity(tmp_path: Path) -> None:
    def ring(k, rng):
        mask = disk((40, 40), 20, 20, 12) & ~disk((40, 40), 20, 20, 5)
        gray = np.where(mask, 200, 50).astype(np.uint8)
        return np.stack([gray] * 3, -1), mask  # gray stored as RGB

    fp = _fp(write_set(tmp_path / "d", 2, ring))
    assert fp.channels == 1 and fp.gray_as_rgb == 1.0 and fp.bit_depth == 8
    assert fp.holes_fraction == 1.0
    # scaled to [0, 1] by each image's min and max: foreground 1, background 0
    assert fp.intensity["foreground"]["mean"] == 1.0
    assert fp.intensity["background"]["mean"] == 0.0
    write_png(
        tmp_path / "d" / "train" / "images" / "c000.png",
        np.random.default_rng(0).integers(0, 65535, (40, 40), dtype=np.uint16),
    )
    assert _fp(tmp_path / "d").bit_depth == 16


def test_sample_is_seeded_and_capped() -> None:
    ids = [f"i{k}" for k in range(100)]
    assert sample_ids(ids, 50, 0) == sample_ids(list(reversed(ids)), 50, 0)
    assert len(sample_ids(ids, 50, 0)) == 50 and sample_ids(ids[:10], 50) == ids[:10]


def test_mask_of_another_size_is_the_training_error(tmp_path: Path) -> None:
    root = write_set(tmp_path / "d", 2, blobs)
    write_png(root / "train" / "masks" / "c001.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(UnetError, match=r"c001\.png: mask is 5x5 but its image"):
        _fp(root)


def test_polarity_of_mixed_and_single_polarity_sets(tmp_path: Path) -> None:
    def mixed(k, rng):  # every third image dark objects on a light background
        image, mask = blobs(k, rng)
        return (255 - image if k % 3 == 0 else image), mask

    fp = _fp(write_set(tmp_path / "mixed", 12, mixed))
    assert fp.polarity == {"dark_objects": 4, "light_objects": 8, "median_agrees": 12}
    assert _fp(write_set(tmp_path / "light", 6, blobs)).polarity == {
        "dark_objects": 0,
        "light_objects": 6,
        "median_agrees": 6,
    }

    def large_dark(k, rng):  # dark objects over most of the image: the median is one
        mask = np.zeros((40, 40), bool)
        mask[:, :30] = True
        return np.where(mask, 40, 200).astype(np.uint8), mask

    fp = _fp(write_set(tmp_path / "large", 3, large_dark))
    assert fp.polarity == {"dark_objects": 3, "light_objects": 0, "median_agrees": 0}
