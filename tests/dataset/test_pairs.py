"""Pairing by stem, dataset.json, and the train/validation split."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_fixtures import ids_of, make_pair, make_prepared
from unet_lowered.dataset.pairs import load_prepared, split_ids
from unet_lowered.errors import UnetError

# ----------------------------------------------------------------------------- pairing


def test_pairs_by_stem_not_by_sorted_lists(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    # Sorted, the masks come as a0_mask, a_mask: pairing two sorted lists would swap them.
    make_pair(root, "a", mask_name="a_mask")
    make_pair(root, "a0", mask_name="a0_mask")
    make_pair(root, "c10", mask_name="c10-mask")
    make_pair(root, "d", mask_name="d")
    data = load_prepared(root)
    assert data.ids == ["a", "a0", "c10", "d"]
    assert {i: p.name for i, p in data.masks.items()} == {
        "a": "a_mask.png",
        "a0": "a0_mask.png",
        "c10": "c10-mask.png",
        "d": "d.png",
    }
    assert data.image_dir == root / "images"


def test_prepared_layout_is_found_under_train(tmp_path: Path) -> None:
    root = make_prepared(tmp_path, ids_of(3), meta={})
    data = load_prepared(root)
    assert data.image_dir == root / "train" / "images"
    assert data.ids == ids_of(3)
    assert data.notes == []


def test_unmatched_ids_are_named(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    make_pair(root, "a")
    make_pair(root, "b", mask_name="zz")
    make_pair(root, "c")
    (root / "masks" / "c.png").unlink()
    with pytest.raises(UnetError) as err:
        load_prepared(root)
    message = str(err.value)
    assert "2 image(s) without a mask (b, c)" in message
    assert "1 mask(s) without an image (zz)" in message
    assert str(root) in message


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    make_pair(root, "a")
    shutil.copy(root / "images" / "a.png", root / "images" / "a.tif")
    with pytest.raises(UnetError, match=r"a\.png and images/a\.tif: the same id 'a' twice"):
        load_prepared(root)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no such data folder"),
        (lambda p: p.mkdir(), r"no train/images \+ train/masks"),
        (lambda p: ((p / "images").mkdir(parents=True), (p / "masks").mkdir()), "no images"),
    ],
    ids=["missing", "no-subfolders", "empty"],
)
def test_unusable_folders_say_what_to_do(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(UnetError, match=message):
        load_prepared(root)


def test_a_folder_a_killed_overwrite_left_aside_is_put_back(tmp_path: Path, capsys) -> None:
    """`unet prepare --overwrite` killed between its two renames: DEST is missing and the
    previous data set is whole at .DEST.tmp-old; reading DEST brings it back."""
    root = make_prepared(tmp_path, ids_of(2))
    root.rename(root.with_name(f".{root.name}.tmp-old"))
    data = load_prepared(root)
    assert data.ids == ids_of(2) and root.is_dir()
    assert "its previous contents are back" in capsys.readouterr().err


def test_missing_dataset_json_is_a_note_and_junk_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    make_pair(root, "a")
    (root / "images" / "README.txt").write_text("notes")
    (root / "images" / ".DS_Store").write_text("junk")
    data = load_prepared(root)
    assert data.ids == ["a"]
    assert any("no dataset.json" in n for n in data.notes)
    assert any("ignored 1 non-image file(s) (README.txt)" in n for n in data.notes)


def test_corrupt_dataset_json_is_an_error(tmp_path: Path) -> None:
    root = make_prepared(tmp_path, ids_of(2))
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(UnetError, match=r"dataset\.json: unreadable"):
        load_prepared(root)


def test_split_recorded_in_dataset_json_is_used(tmp_path: Path) -> None:
    items = [
        {"id": "case000", "split": "val"},
        {"id": "case001", "split": "train"},
        {"id": "case002", "split": "train"},
        {"id": "case000", "split": "test"},  # a test image with the same id is no pair
    ]
    root = make_prepared(tmp_path, ids_of(3), meta={"items": items})
    data = load_prepared(root)
    split = data.split(0.5, seed=123)
    assert split == {"train": ["case001", "case002"], "val": ["case000"]}
    seeded = data.split(0.5, seed=123, use_recorded=False)
    assert seeded == dict(zip(("train", "val"), split_ids(data.ids, 0.5, 123), strict=True))


@pytest.mark.parametrize(
    ("meta", "values", "classes"),
    [
        ({}, None, 1),
        ({"mode": "classes", "num_classes": 3, "label_values": [0, 100, 200]}, [0, 100, 200], 3),
        ({"mode": "classes", "num_classes": 2, "label_values": [0, 255]}, [0, 255], 2),
    ],
)
def test_label_map(tmp_path: Path, meta: dict, values: list | None, classes: int) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(1), meta=meta))
    assert data.label_values == values
    assert data.num_classes == classes


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"format": "nnunet"}, r"dataset\.json: not a dataset\.json written by `unet prepare`"),
        ({"version": 9}, "version 9 is newer than this unet-lowered reads"),
        ({"label_map": {"0": 0}, "labels": [0, 1], "mode": "labels"}, "mode must be binary"),
    ],
    ids=["foreign", "newer", "guessed-fields"],
)
def test_only_dataset_json_of_unet_prepare_is_read(tmp_path: Path, meta: dict, message: str):
    with pytest.raises(UnetError, match=message):
        load_prepared(make_prepared(tmp_path, ids_of(1), meta=meta))


def test_masks_pair_as_unet_prepare_pairs_them(tmp_path: Path) -> None:
    """The bug: prepare paired a.png with a_segmentation.png, training did not."""
    root = tmp_path / "raw"
    for ident in ("a0", "a1"):
        make_pair(root, ident, mask_name=f"{ident}_segmentation")
    make_pair(root, "b", mask_name="b_Mask")  # suffixes match in any case, as in prepare
    data = load_prepared(root)
    assert {i: p.name for i, p in data.masks.items()} == {
        "a0": "a0_segmentation.png",
        "a1": "a1_segmentation.png",
        "b": "b_Mask.png",
    }


# ----------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_complete() -> None:
    ids = ids_of(200)
    train, val = split_ids(ids, 0.15, seed=0)
    assert len(val) == 30 and len(train) == 170
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(ids)
    assert train == sorted(train) and val == sorted(val)
    shuffled = list(reversed(ids))
    assert split_ids(shuffled, 0.15, seed=0) == (train, val)  # input order is irrelevant
    assert split_ids(ids, 0.15, seed=1)[1] != val


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"),
    [(2, 0.15, 1), (10, 0.0, 0), (10, 0.25, 2), (3, 0.9, 2), (1, 0.9, 0), (1, 0.15, 0)],
)
def test_split_sizes(n: int, fraction: float, n_val: int) -> None:
    train, val = split_ids(ids_of(n), fraction, seed=0)
    assert (len(train), len(val)) == (n - n_val, n_val)


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_split_refuses_bad_fractions(fraction: float) -> None:
    with pytest.raises(UnetError, match=r"val-fraction must be in \[0, 1\)"):
        split_ids(ids_of(4), fraction, seed=0)


def test_split_rounds_the_validation_share_to_the_nearest_count() -> None:
    """10 ids at 0.18: 1.8 validation images round to 2 (truncating would give 1)."""
    train, val = split_ids(ids_of(10), 0.18, seed=0)
    assert (len(train), len(val)) == (8, 2)
