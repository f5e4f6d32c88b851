"""Tests for the synthetic chest-X-ray generator and ``unet synth``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from unet_lowered.cli import main
from unet_lowered.demo import synth
from unet_lowered.errors import UnetError


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# ---------------------------------------------------------------- one sample


def test_lung_mask_known_answer():
    # fillPoly includes the polygon's boundary: the square (2,2)-(5,5) covers rows/cols 2..5.
    square = np.array([[2, 2], [5, 2], [5, 5], [2, 5]], np.int32)
    expected = np.zeros((8, 8), np.uint8)
    expected[2:6, 2:6] = 255
    np.testing.assert_array_equal(synth.lung_mask([square], 8), expected)


@pytest.mark.parametrize("size", [32, 64, 256])
def test_sample_shapes_and_dtypes(size):
    image, mask = synth.synth_pair(np.random.default_rng(0), size)
    assert image.shape == mask.shape == (size, size)
    assert image.dtype == mask.dtype == np.uint8


@pytest.mark.parametrize("size", [48, 128])
def test_same_seed_same_sample_other_seed_differs(size):
    a = synth.synth_sample(np.random.default_rng(7), size)
    b = synth.synth_sample(np.random.default_rng(7), size)
    c = synth.synth_sample(np.random.default_rng(8), size)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    for pa, pb in zip(a.lungs, b.lungs, strict=True):
        np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.mask, c.mask)


@pytest.mark.parametrize("size", [32, 97, 256])
@pytest.mark.parametrize("seed", range(6))
def test_mask_is_exactly_the_rasterised_lung_polygons(size, seed):
    # synth_pair's mask against the polygons of the same draw, rasterised here.
    _, mask = synth.synth_pair(np.random.default_rng(seed), size)
    lungs = synth.synth_sample(np.random.default_rng(seed), size).lungs
    assert len(lungs) == 2
    drawn = np.zeros((size, size), np.uint8)
    cv2.fillPoly(drawn, [p.reshape(-1, 1, 2) for p in lungs], 255)
    np.testing.assert_array_equal(mask, drawn)
    assert set(np.unique(mask).tolist()) == {0, 255}


@pytest.mark.parametrize("size", [32, 64, 160])
def test_two_lungs_one_each_side_darker_than_their_surroundings(size):
    for seed in range(25):
        image, mask = synth.synth_pair(np.random.default_rng(seed), size)
        n, _, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        assert n == 3, f"seed {seed}: {n - 1} lung components"
        xs = sorted(centroids[1:, 0])
        assert xs[0] < size / 2 < xs[1], f"seed {seed}: both lungs on one side"
        assert stats[1:, cv2.CC_STAT_AREA].min() > 0.03 * size * size
        # The image matches the mask: lungs are darker than a ring just outside them.
        ring = (cv2.dilate(mask, np.ones((size // 16 + 3,) * 2, np.uint8)) > 0) & (mask == 0)
        assert image[mask > 0].mean() + 20 < image[ring].mean(), f"seed {seed}"


# ---------------------------------------------------------------- data set on disk


def test_dataset_layout_matches_kaggle(tmp_path):
    out = synth.make_dataset(tmp_path / "cxr", count=3, test_count=2, size=48, seed=5)
    assert out == tmp_path / "cxr"
    train = [f"synth_train_{i:04d}" for i in range(3)]
    test = [f"synth_test_{i:04d}" for i in range(2)]
    expected = {f"train_images/{i}/images/{i}.png" for i in train}
    expected |= {f"train_images/{i}/masks/{i}.png" for i in train}
    expected |= {f"test_images/{i}/{i}.png" for i in test}
    assert _files(out) == expected
    for path in out.rglob("*.png"):
        arr = _read(path)
        assert arr.shape == (48, 48) and arr.dtype == np.uint8, path  # 8-bit gray
    for i in train:
        assert set(np.unique(_read(out / f"train_images/{i}/masks/{i}.png"))) <= {0, 255}
    # No temporary folder is left beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cxr"]


def test_dataset_images_are_the_seeded_samples(tmp_path):
    # Sample i depends only on (seed, split, i): a larger count adds images, changes none.
    out = synth.make_dataset(tmp_path / "d", count=2, test_count=1, size=40, seed=3)
    for i in range(2):
        s = synth.synth_sample(np.random.default_rng([3, 0, i]), 40)
        sid = f"synth_train_{i:04d}"
        np.testing.assert_array_equal(_read(out / f"train_images/{sid}/images/{sid}.png"), s.image)
        np.testing.assert_array_equal(_read(out / f"train_images/{sid}/masks/{sid}.png"), s.mask)
    s = synth.synth_sample(np.random.default_rng([3, 1, 0]), 40)
    np.testing.assert_array_equal(
        _read(out / "test_images/synth_test_0000/synth_test_0000.png"), s.image
    )


def test_dataset_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = synth.make_dataset(tmp_path / "a", count=2, test_count=1, size=40, seed=1)
    b = synth.make_dataset(tmp_path / "b", count=2, test_count=1, size=40, seed=1)
    c = synth.make_dataset(tmp_path / "c", count=2, test_count=1, size=40, seed=2)
    names = sorted(_files(a))
    assert names == sorted(_files(b)) == sorted(_files(c))
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert any((a / n).read_bytes() != (c / n).read_bytes() for n in names)


def test_no_test_images_makes_no_test_folder(tmp_path):
    out = synth.make_dataset(tmp_path / "d", count=1, test_count=0, size=32)
    assert _files(out) == {
        "train_images/synth_train_0000/images/synth_train_0000.png",
        "train_images/synth_train_0000/masks/synth_train_0000.png",
    }
    assert not (out / "test_images").exists()


def test_existing_output_needs_overwrite(tmp_path):
    out = synth.make_dataset(tmp_path / "d", count=3, test_count=1, size=32)
    before = _files(out)
    with pytest.raises(UnetError, match=r"already exists; pass --overwrite"):
        synth.make_dataset(out, count=1, test_count=0, size=32)
    assert _files(out) == before
    synth.make_dataset(out, count=1, test_count=0, size=32, overwrite=True)
    # Replaced as a whole: no stale images from the first run remain.
    assert _files(out) == {
        "train_images/synth_train_0000/images/synth_train_0000.png",
        "train_images/synth_train_0000/masks/synth_train_0000.png",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_overwrite_replaces_only_what_synth_wrote(tmp_path):
    """--overwrite deleted any folder or file (a thesis, a prepared data set); now only an
    empty folder or one holding synth's own layout is replaced."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(UnetError, match=r"mine holds thesis.txt, which `unet synth` does not"):
        synth.make_dataset(mine, count=1, test_count=0, size=32, overwrite=True)
    assert (mine / "thesis.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnetError, match=r"file is not a folder; --overwrite replaces only"):
        synth.make_dataset(tmp_path / "file", count=1, test_count=0, size=32, overwrite=True)
    out = synth.make_dataset(tmp_path / "d", count=1, test_count=0, size=32)
    (out / "train_images" / "patient_7").mkdir()
    with pytest.raises(UnetError, match=r"holds train_images/patient_7"):
        synth.make_dataset(out, count=1, test_count=0, size=32, overwrite=True)
    (tmp_path / "empty").mkdir()
    synth.make_dataset(tmp_path / "empty", count=1, test_count=0, size=32, overwrite=True)
    assert (tmp_path / "empty" / "train_images").is_dir()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, r"--count must be at least 1"),
        ({"test_count": -1}, r"--test-count must be 0 or more"),
        ({"size": 16}, r"--size must be between 32 and 4096 pixels, got 16"),
        ({"size": 5000}, r"--size must be between 32 and 4096 pixels, got 5000"),
        ({"seed": -1}, r"--seed must be 0 or more"),
    ],
)
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs, message):
    args = {"count": 1, "test_count": 0, "size": 32, **kwargs}
    with pytest.raises(UnetError, match=message):
        synth.make_dataset(tmp_path / "d", **args)
    assert list(tmp_path.iterdir()) == []


def test_synth_pair_refuses_bad_size():
    with pytest.raises(UnetError, match=r"--size must be between"):
        synth.synth_pair(np.random.default_rng(0), 8)


# ---------------------------------------------------------------- CLI


def test_cli_synth_writes_the_dataset(tmp_path, capsys):
    out = tmp_path / "cxr"
    argv = ["synth", str(out), "--count", "2", "--test-count", "1", "--size", "40", "--seed", "4"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert len(_files(out)) == 5
    assert "2 training" in capsys.readouterr().out
    s = synth.synth_sample(np.random.default_rng([4, 0, 1]), 40)
    np.testing.assert_array_equal(
        _read(out / "train_images/synth_train_0001/images/synth_train_0001.png"), s.image
    )


def test_cli_synth_existing_folder_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "cxr"
    out.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(out), "--count", "1", "--size", "32"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("kind", ["effusion", "consolidation"])
def test_opacities_whiten_only_the_lungs_and_keep_the_mask(kind: str) -> None:
    plain = synth.synth_sample(np.random.default_rng(5), 128)
    ill = synth.synth_sample(np.random.default_rng(5), 128, kind)
    np.testing.assert_array_equal(ill.mask, plain.mask)  # the mask is the whole lung field
    lung = plain.mask > 0
    np.testing.assert_array_equal(ill.image[~lung], plain.image[~lung])  # only lungs change
    gain = ill.image[lung].astype(float) - plain.image[lung]
    assert gain.min() >= -1 and gain.mean() > 5  # whiter lungs


def test_white_out_whitens_one_lung_past_its_outline_and_keeps_the_mask() -> None:
    for seed in (5, 9):
        plain = synth.synth_sample(np.random.default_rng(seed), 128)
        ill = synth.synth_sample(np.random.default_rng(seed), 128, "white-out")
        np.testing.assert_array_equal(ill.mask, plain.mask)  # still the whole lung field
        gain = ill.image.astype(float) - plain.image
        assert gain.min() >= -1  # only whiter
        count, labels = cv2.connectedComponents((plain.mask > 0).astype(np.uint8))
        lungs = sorted((gain[labels == k].mean() for k in range(1, count)), reverse=True)
        assert lungs[0] > 20 and lungs[1] < lungs[0] / 4  # one lung whited out
        ring = cv2.dilate(plain.mask, np.ones((5, 5), np.uint8)) > plain.mask
        assert gain[ring].max() > 10  # the edge fades past the outline


def test_effusion_fills_a_lung_from_its_base() -> None:
    plain = synth.synth_sample(np.random.default_rng(9), 128)
    ill = synth.synth_sample(np.random.default_rng(9), 128, "effusion")
    rows = np.nonzero(plain.mask.any(axis=1))[0]
    top, bottom = rows.min(), rows.max()
    third = (bottom - top) // 3
    gain = ill.image.astype(float) - plain.image
    upper = gain[top : top + third][plain.mask[top : top + third] > 0].mean()
    lower = gain[bottom - third : bottom + 1][plain.mask[bottom - third : bottom + 1] > 0].mean()
    assert lower > upper + 10  # the fluid lies at the base


def test_framing_moves_image_and_mask_together() -> None:
    for seed in range(6):
        plain = synth.synth_sample(np.random.default_rng(seed), 96)
        framed = synth.synth_sample(np.random.default_rng(seed), 96, "framing")
        assert framed.image.shape == framed.mask.shape == (96, 96)
        assert set(np.unique(framed.mask)) <= {0, 255}
        assert 0 < np.count_nonzero(framed.mask) < np.count_nonzero(plain.mask) * 1.6
        # the lungs are dark in the image wherever the mask says lung
        inside = framed.image[framed.mask > 0].mean()
        body = framed.image[(framed.mask == 0) & (framed.image > 40)].mean()
        assert inside < body


def test_pathology_leaves_plain_samples_unchanged(tmp_path: Path) -> None:
    synth.make_dataset(tmp_path / "plain", count=6, test_count=0, size=64, seed=2)
    synth.make_dataset(
        tmp_path / "ill", count=6, test_count=0, size=64, seed=2,
        pathology=("effusion", "framing"), pathology_fraction=0.5,
    )  # fmt: skip
    changed = 0
    for case in sorted((tmp_path / "plain" / "train_images").iterdir()):
        a = (case / "images" / f"{case.name}.png").read_bytes()
        b = tmp_path / "ill" / "train_images" / case.name / "images" / f"{case.name}.png"
        changed += a != b.read_bytes()
    assert 0 < changed < 6  # some images got a pathology, the others are the plain ones
    with pytest.raises(UnetError, match="unknown --pathology 'tumour'"):
        synth.make_dataset(tmp_path / "x", count=1, size=64, pathology=("tumour",))


def test_synth_shows_its_progress(tmp_path, capfd):
    """3000 images took 31 s without a sign of life."""
    synth.make_dataset(tmp_path / "d", count=2, test_count=1, size=32, progress=True)
    err = capfd.readouterr().err
    assert "synthesising" in err and "3/3" in err
