"""Tests for ``unet prepare`` / ``unet check`` (prepare.py, layouts.py, dataset_json.py) on tiny made-up data sets.

Every test that reads a source folder also checks that the source is byte-identical
afterwards (the ``src`` fixture compares file hashes at teardown).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import shared_dataset
from unet_lowered.cli import main
from unet_lowered.dataset import dataset_json, layouts
from unet_lowered.dataset import prepare as convert
from unet_lowered.errors import UnetError

# ---------------------------------------------------------------- helpers


def png(path: Path, array: np.ndarray, params: tuple[int, ...] = ()) -> Path:
    """Write ``array`` (gray, or BGR as OpenCV expects) to ``path``, creating folders.

    The format follows the suffix, so this writes JPEG, TIFF and BMP files too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array, list(params)), path
    return path


def gray(seed: int, h: int = 6, w: int = 8, dtype=np.uint8) -> np.ndarray:
    high = 256 if dtype == np.uint8 else 65536
    return np.random.default_rng(seed).integers(0, high, (h, w), dtype=dtype)


def box(h: int = 6, w: int = 8, rows=(1, 3), cols=(2, 5), value: int = 255) -> np.ndarray:
    """A mask with a rectangle of ``value`` at ``rows`` x ``cols`` (half-open)."""
    m = np.zeros((h, w), np.uint8)
    m[rows[0] : rows[1], cols[0] : cols[1]] = value
    return m


def snapshot(root: Path) -> dict[str, str]:
    """Hash of every file and link target under ``root`` (no link is followed)."""
    out = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``unet ARGS`` through :func:`main`; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


_FROZEN: dict[Path, dict[str, str]] = {}


@pytest.fixture
def src(tmp_path):
    """An empty source folder; once :func:`freeze` is called it must stay byte-identical."""
    root = tmp_path / "src"
    root.mkdir()
    yield root
    before = _FROZEN.pop(root, None)
    if before is not None:
        assert snapshot(root) == before, "the source folder changed"


def freeze(src_root: Path) -> None:
    """Record the source's hashes; the ``src`` fixture compares them at teardown."""
    _FROZEN[src_root] = snapshot(src_root)


def kinds(report: convert.Report) -> dict[str, int]:
    return report.counts()["problems"]


# ---------------------------------------------------------------- layouts


def make_kaggle(root: Path) -> None:
    for i, id_ in enumerate(["a", "b", "c"]):
        png(root / "train_images" / id_ / "images" / f"{id_}.png", gray(i))
        png(root / "train_images" / id_ / "masks" / f"{id_}.png", box(cols=(2, 2 + i + 1)))
    png(root / "test_images" / "t1" / "t1.png", gray(10))
    png(root / "test_images" / "t2" / "images" / "t2.png", gray(11))
    png(root / "test_images" / "t3.png", gray(12))


def test_kaggle_layout(src, tmp_path):
    make_kaggle(src)
    freeze(src)
    dest = tmp_path / "out"
    report = convert.prepare(src, dest)
    assert report.layout == "kaggle"
    assert report.counts()["train"] == 3 and report.counts()["test"] == 3
    assert report.problems == []
    assert sorted(p.name for p in (dest / "train/images").iterdir()) == ["a.png", "b.png", "c.png"]
    assert sorted(p.name for p in (dest / "test").iterdir()) == ["t1.png", "t2.png", "t3.png"]
    # gray 8-bit PNG: copied byte for byte
    src_a = src / "train_images/a/images/a.png"
    assert (dest / "train/images/a.png").read_bytes() == src_a.read_bytes()
    assert (dest / "test/t2.png").read_bytes() == (
        src / "test_images/t2/images/t2.png"
    ).read_bytes()
    assert np.array_equal(read(dest / "train/masks/c.png"), box(cols=(2, 5)))
    meta = dataset_json.read(dest).meta
    assert meta["layout"] == "kaggle" and meta["num_classes"] == 1
    items = {i["id"]: i for i in meta["items"]}
    assert items["a"] == {
        "id": "a",
        "split": "train",
        "source_image": "train_images/a/images/a.png",
        "source_masks": ["train_images/a/masks/a.png"],
        "height": 6,
        "width": 8,
        "channels": 1,
        "bit_depth": 8,
        "format": "png",
        "copied": True,
        "gray_as_rgb": False,
        "foreground_fraction": round(2 / 48, 6),
        "image": "train/images/a.png",
        "mask": "train/masks/a.png",
        "notes": [],
    }
    assert items["t1"]["split"] == "test" and items["t1"]["mask"] is None
    assert items["t1"]["foreground_fraction"] is None
    assert [p[0] for p in convert.prepared_pairs(dest)] == ["a", "b", "c"]


def make_instances(root: Path) -> None:
    png(root / "n1" / "images" / "n1.png", gray(1))
    png(root / "n1" / "masks" / "m1.png", box(rows=(0, 2), cols=(0, 2)))
    png(root / "n1" / "masks" / "m2.png", box(rows=(1, 3), cols=(1, 3)))  # overlaps m1
    png(root / "n1" / "masks" / "m3.png", box(rows=(5, 6), cols=(7, 8)))
    png(root / "n2" / "images" / "n2.png", gray(2))
    png(root / "n2" / "masks" / "only.png", box())


@pytest.mark.parametrize("layout", [None, "instances", "dsb2018"])
def test_instance_masks_are_merged(src, tmp_path, layout):
    make_instances(src)
    freeze(src)
    report = convert.prepare(src, tmp_path / "out", layout=layout)
    assert report.layout == "instances"
    assert [e.id for e in report.pairs] == ["n1", "n2"]
    merged = read(tmp_path / "out/train/masks/n1.png")
    expected = np.zeros((6, 8), np.uint8)
    expected[0:2, 0:2] = expected[1:3, 1:3] = expected[5, 7] = 255
    assert np.array_equal(merged, expected)
    assert report.pairs[0].source_masks == ["n1/masks/m1.png", "n1/masks/m2.png", "n1/masks/m3.png"]


def test_instances_under_stage1_train_with_stage1_test(src, tmp_path):
    make_instances(src / "stage1_train")
    png(src / "stage1_test" / "q" / "images" / "q.png", gray(3))
    freeze(src)
    report = convert.prepare(src, tmp_path / "out")
    assert (report.layout, len(report.pairs), len(report.test_images)) == ("instances", 2, 1)


@pytest.mark.parametrize(
    ("image_dir", "mask_dir", "mask_name"),
    [
        ("images", "masks", "{id}.png"),
        ("images", "masks", "{id}_mask.png"),
        ("Images", "Masks", "{id}-mask.png"),
        ("image", "label", "{id}.png"),
        ("img", "gt", "{id}_seg.png"),
        ("images", "labels", "{id}_label.png"),
    ],
)
def test_flat_layout_pairs_by_stem(src, tmp_path, image_dir, mask_dir, mask_name):
    for i, id_ in enumerate(["0", "1", "10"]):
        png(src / image_dir / f"{id_}.png", gray(i))
        png(src / mask_dir / mask_name.format(id=id_), box(value=1 + i))
    freeze(src)
    report = convert.prepare(src, tmp_path / "out")
    assert report.layout == "flat"
    assert [e.id for e in report.pairs] == ["0", "1", "10"]
    assert report.problems == []
    for id_ in ("0", "1", "10"):
        assert np.array_equal(read(tmp_path / f"out/train/masks/{id_}.png"), box())


def test_flat_layout_with_train_val_test_splits(src, tmp_path):
    png(src / "train/images/a.png", gray(1))
    png(src / "train/masks/a.png", box())
    png(src / "val/images/v.png", gray(2))
    png(src / "val/masks/v.png", box())
    png(src / "test/images/t.png", gray(3))
    png(src / "test/masks/t.png", box())  # test masks: noted, ignored
    freeze(src)
    dest = tmp_path / "out"
    report = convert.prepare(src, dest)
    assert report.counts() | {"notes": {}} == {
        "train": 1,
        "val": 1,
        "test": 1,
        "skipped": 0,
        "problems": {},
        "notes": {},
    }
    assert report.counts()["notes"] == {"test_masks": 1}
    assert (dest / "train/images/v.png").exists() and (dest / "train/masks/v.png").exists()
    splits = {i["id"]: i["split"] for i in dataset_json.read(dest).meta["items"]}
    assert splits == {"a": "train", "v": "val", "t": "test"}
    assert [p[0] for p in convert.prepared_pairs(dest, splits=["val"])] == ["v"]


def test_flat_layout_named_explicitly(src, tmp_path):
    png(src / "scans" / "x.png", gray(1))
    png(src / "outlines" / "x.png", box())
    freeze(src)
    with pytest.raises(UnetError, match="no known data set layout"):
        convert.check(src)
    report = convert.prepare(src, tmp_path / "out", images_dir="scans", masks_dir="outlines")
    assert (report.layout, len(report.pairs)) == ("flat", 1)
    with pytest.raises(UnetError, match="go together"):
        convert.check(src, images_dir="scans")


def make_montgomery(root: Path, ids=("MCU_1", "MCU_2")) -> None:
    for i, id_ in enumerate(ids):
        png(root / "CXR_png" / f"{id_}.png", gray(i))
        png(root / "ManualMask" / "leftMask" / f"{id_}.png", box(cols=(0, 2)))
        png(root / "ManualMask" / "rightMask" / f"{id_}.png", box(cols=(5, 7)))
    (root / "ClinicalReadings").mkdir()
    (root / "ClinicalReadings" / "MCU_1.txt").write_text("Patient's Sex: F\n")


def test_montgomery_left_and_right_are_merged(src, tmp_path):
    make_montgomery(src)
    freeze(src)
    report = convert.prepare(src, tmp_path / "out")
    assert (report.layout, len(report.pairs), report.problems) == ("montgomery", 2, [])
    merged = read(tmp_path / "out/train/masks/MCU_1.png")
    assert np.array_equal(merged, np.maximum(box(cols=(0, 2)), box(cols=(5, 7))))


def test_montgomery_missing_half(src, tmp_path):
    make_montgomery(src)
    (src / "ManualMask" / "rightMask" / "MCU_2.png").unlink()
    freeze(src)
    report = convert.check(src)
    assert [e.id for e in report.pairs] == ["MCU_1"]
    (problem,) = report.problems
    assert problem.kind == "missing_mask"
    assert problem.message.startswith("CXR_png/MCU_2.png: ")
    assert "rightMask" in problem.message and "leftMask" not in problem.message


def test_unknown_layout_lists_what_was_looked_for(src):
    (src / "random").mkdir()
    png(src / "random" / "x.png", gray(0))
    with pytest.raises(UnetError) as info:
        convert.check(src)
    message = str(info.value)
    for name in ("kaggle", "instances", "flat", "montgomery", "--layout", "--images-dir"):
        assert name in message
    assert "\n" not in message


def test_ambiguous_layout_asks_for_layout(src, tmp_path):
    make_kaggle(src)
    png(src / "images" / "x.png", gray(0))
    png(src / "masks" / "x.png", box())
    freeze(src)
    with pytest.raises(UnetError, match=r"ambiguous.*kaggle, flat.*--layout kaggle\|flat"):
        convert.check(src)
    assert len(convert.check(src, layout="flat").pairs) == 1
    assert len(convert.check(src, layout="kaggle").pairs) == 3


def test_bad_layout_name_and_absent_structure(src):
    make_kaggle(src)
    with pytest.raises(UnetError, match="choose one of: auto, kaggle, instances, flat, montgomery"):
        convert.check(src, layout="nnunet")
    with pytest.raises(UnetError, match="not the montgomery layout"):
        convert.check(src, layout="montgomery")


# ---------------------------------------------------------------- image content


def _flat_with_image(root: Path, name: str, write) -> None:
    write(root / "images" / name)
    png(root / "masks" / "x.png", box(4, 5))


IMAGE_CASES = {
    # name: (writer, copied?, channels, bit depth, gray_as_rgb)
    "gray8": (lambda p: png(p.with_suffix(".png"), gray(1, 4, 5)), True, 1, 8, False),
    "gray16": (lambda p: png(p.with_suffix(".png"), gray(1, 4, 5, np.uint16)), True, 1, 16, False),
    "rgb8": (
        lambda p: png(p.with_suffix(".png"), np.dstack([gray(s, 4, 5) for s in (1, 2, 3)])),
        True,
        3,
        8,
        False,
    ),
    "rgb16": (
        lambda p: png(
            p.with_suffix(".png"), np.dstack([gray(s, 4, 5, np.uint16) for s in (1, 2, 3)])
        ),
        True,
        3,
        16,
        False,
    ),
    "gray_as_rgb": (
        lambda p: png(p.with_suffix(".png"), np.dstack([gray(1, 4, 5)] * 3)),
        True,
        3,
        8,
        True,
    ),
    "rgba8": (
        lambda p: png(p.with_suffix(".png"), np.dstack([gray(s, 4, 5) for s in (1, 2, 3, 4)])),
        False,
        3,
        8,
        False,
    ),
    "rgba16": (
        lambda p: png(
            p.with_suffix(".png"), np.dstack([gray(s, 4, 5, np.uint16) for s in (1, 2, 3, 4)])
        ),
        False,
        3,
        16,
        False,
    ),
    "tiff16": (lambda p: png(p.with_suffix(".tif"), gray(1, 4, 5, np.uint16)), False, 1, 16, False),
    "bmp": (
        lambda p: png(p.with_suffix(".bmp"), np.dstack([gray(s, 4, 5) for s in (1, 2, 3)])),
        False,
        3,
        8,
        False,
    ),
    "jpeg": (lambda p: png(p.with_suffix(".jpg"), gray(1, 4, 5)), False, 1, 8, False),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_image_content_kept(src, tmp_path, case):
    writer, copied, channels, depth, gray_as_rgb = IMAGE_CASES[case]
    writer(src / "images" / "x")
    png(src / "masks" / "x.png", box(4, 5))
    freeze(src)
    (source,) = (src / "images").iterdir()
    report = convert.prepare(src, tmp_path / "out")
    (entry,) = report.pairs
    assert (entry.copied, entry.channels, entry.bit_depth, entry.gray_as_rgb) == (
        copied,
        channels,
        depth,
        gray_as_rgb,
    )
    out = tmp_path / "out/train/images/x.png"
    if copied:
        assert out.read_bytes() == source.read_bytes()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = read(out)
    original = read(source)
    if original.ndim == 3 and original.shape[2] == 4:
        original = original[..., :3]  # alpha dropped, colour kept
    assert written.dtype == original.dtype
    assert np.array_equal(written, original)  # lossless (JPEG: the decoded pixels)
    notes = {n.kind for n in report.notes}
    assert ("reencoded" in notes) == (not copied)
    assert ("gray_as_rgb" in notes) == gray_as_rgb
    assert ("alpha_dropped" in notes) == case.startswith("rgba")


def test_palette_and_gray_alpha_png_are_reencoded(src, tmp_path):
    pal = Image.new("P", (5, 4))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    (src / "images").mkdir()
    pal.save(src / "images" / "p.png")
    Image.new("LA", (5, 4), (90, 10)).save(src / "images" / "la.png")
    png(src / "masks" / "p.png", box(4, 5))
    png(src / "masks" / "la.png", box(4, 5))
    freeze(src)
    report = convert.prepare(src, tmp_path / "out")
    entries = {e.id: e for e in report.pairs}
    assert not entries["p"].copied and entries["p"].channels == 3
    assert read(tmp_path / "out/train/images/p.png")[1, 1].tolist() == [0, 0, 255]  # BGR red
    assert not entries["la"].copied and entries["la"].channels == 1
    assert read(tmp_path / "out/train/images/la.png").tolist() == [[90] * 5] * 4


def test_dicom_image_becomes_16_bit_png(src, tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Rows, ds.Columns = 6, 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (gray(1, dtype=np.uint16) >> 4).tobytes()
    (src / "images").mkdir()
    ds.save_as(src / "images" / "scan.dcm", enforce_file_format=True)
    png(src / "masks" / "scan.png", box())
    freeze(src)
    (entry,) = convert.prepare(src, tmp_path / "out").pairs
    assert (entry.format, entry.copied, entry.bit_depth, entry.channels) == ("dicom", False, 16, 1)
    written = read(tmp_path / "out/train/images/scan.png")
    assert written.dtype == np.uint16
    assert np.array_equal(written, convert.images.read_image(src / "images" / "scan.dcm"))


def test_format_recognised_by_content_not_suffix(src, tmp_path):
    png(src / "images" / "x.png", gray(1))
    os.rename(src / "images" / "x.png", src / "images" / "x.jpg")  # a PNG named .jpg
    png(src / "masks" / "x.png", box())
    (src / "images" / "y.png").write_text("not really a png")
    freeze(src)
    report = convert.prepare(src, tmp_path / "out")
    (entry,) = report.pairs
    assert (entry.format, entry.copied) == ("png", True)
    assert (tmp_path / "out/train/images/x.png").read_bytes() == (src / "images/x.jpg").read_bytes()
    (problem,) = report.problems
    assert (problem.kind, problem.path) == ("not_image", "images/y.png")


def test_pixel_limit_refuses_before_decoding(src, tmp_path):
    png(src / "images" / "small.png", gray(1))
    png(src / "masks" / "small.png", box())
    png(src / "images" / "big.png", gray(2, 60, 80))
    png(src / "masks" / "big.png", box(60, 80))
    freeze(src)
    report = convert.prepare(src, tmp_path / "out", max_pixels=1000)
    assert [e.id for e in report.pairs] == ["small"]
    (problem,) = report.problems
    assert problem.kind == "too_large"
    assert problem.message.startswith("images/big.png: 80x60 ")
    assert "--max-pixels" in problem.message


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize(
    ("mask", "foreground", "expected"),
    [
        (box(value=1), None, box()),
        (box(value=255), None, box()),
        (box(value=150) + box(rows=(4, 5), value=200), None, box() + box(rows=(4, 5))),
        (box(value=150) + box(rows=(4, 5), value=200), "200", box(rows=(4, 5))),
        (box(value=150) + box(rows=(4, 5), value=200), "150,200", box() + box(rows=(4, 5))),
    ],
)
def test_mask_binarisation(src, tmp_path, mask, foreground, expected):
    png(src / "images" / "x.png", gray(1))
    png(src / "masks" / "x.png", mask)
    freeze(src)
    convert.prepare(src, tmp_path / "out", foreground=foreground)
    written = read(tmp_path / "out/train/masks/x.png")
    assert written.dtype == np.uint8
    assert np.array_equal(written, expected)


def test_a_foreground_value_no_mask_holds_is_refused_with_the_values_seen(src, tmp_path):
    for name in ("a", "b"):
        png(src / "images" / f"{name}.png", gray(1))
        png(src / "masks" / f"{name}.png", box(value=255))
    freeze(src)
    message = (
        r"no mask holds --foreground 1 \(values seen: 0, 255\); pass --foreground 255, or "
        r"leave --foreground out"
    )
    with pytest.raises(UnetError, match=message):
        convert.prepare(src, tmp_path / "out", foreground="1")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UnetError, match=message):
        convert.check(src, foreground="1")
    # One empty mask among others is a problem of that pair only, as before.
    png(tmp_path / "src2" / "images" / "c.png", gray(1))
    png(tmp_path / "src2" / "masks" / "c.png", box(value=1))
    png(tmp_path / "src2" / "images" / "d.png", gray(1))
    png(tmp_path / "src2" / "masks" / "d.png", box(value=255))
    report = convert.prepare(tmp_path / "src2", tmp_path / "out2", foreground="1")
    assert [p.kind for p in report.problems] == ["empty_mask"]


def test_jpeg_and_rgb_masks(src, tmp_path):
    disk = np.zeros((64, 64), np.uint8)
    cv2.circle(disk, (32, 32), 14, 255, -1)
    png(src / "images" / "j.png", gray(1, 64, 64))
    png(src / "masks" / "j.jpg", disk, (cv2.IMWRITE_JPEG_QUALITY, 70))
    png(src / "images" / "c.png", gray(2, 64, 64))
    colour = np.zeros((64, 64, 3), np.uint8)
    colour[disk > 0] = (0, 0, 255)  # red, BGR
    png(src / "masks" / "c.png", colour)
    freeze(src)
    report = convert.prepare(src, tmp_path / "out")
    assert report.problems == []
    for id_ in ("j", "c"):
        assert np.array_equal(read(tmp_path / f"out/train/masks/{id_}.png"), disk)
    notes = {n.path: n.message for n in report.notes if n.kind == "mask_rule"}
    assert "near-binary" in notes["images/j.png"] and "thresholded at" in notes["images/j.png"]
    assert "colour mask reduced" in notes["images/c.png"]


def test_classes_mode_keeps_labels(src, tmp_path):
    png(src / "images" / "a.png", gray(1))
    png(src / "masks" / "a.png", box(value=100) + box(rows=(4, 6), value=200))
    png(src / "images" / "b.png", gray(2))
    png(src / "masks" / "b.png", box(value=50))
    freeze(src)
    dest = tmp_path / "out"
    report = convert.prepare(src, dest, classes=True)
    assert report.label_values == [0, 50, 100, 200]
    assert np.array_equal(
        read(dest / "train/masks/a.png"), box(value=2) + box(rows=(4, 6), value=3)
    )
    assert np.array_equal(read(dest / "train/masks/b.png"), box(value=1))
    meta = dataset_json.read(dest).meta
    assert (meta["mode"], meta["num_classes"], meta["label_values"]) == (
        "classes",
        4,
        [0, 50, 100, 200],
    )
    assert meta["label_map"] == {"0": 0, "50": 1, "100": 2, "200": 3}
    rechecked = convert.check(dest)  # a prepared multi-class folder is checked as such
    assert (rechecked.layout, rechecked.label_values, rechecked.problems) == (
        "prepared",
        [0, 1, 2, 3],
        [],
    )


def test_class_names_are_recorded_and_checked(src, tmp_path):
    """--class-names names the classes besides the background, in the order of their
    mask values; a wrong count or a bad name is refused and nothing is written."""
    png(src / "images" / "a.png", gray(1))
    png(src / "masks" / "a.png", box(value=100) + box(rows=(4, 6), value=200))
    freeze(src)
    dest = tmp_path / "out"
    report = convert.prepare(src, dest, classes=True, class_names="left lung, heart")
    assert report.class_names == ["background", "left lung", "heart"]
    info = dataset_json.read(dest)
    assert info.class_names == ("background", "left lung", "heart")
    from rich.console import Console

    from unet_lowered.dataset.report import print_report

    out = io.StringIO()
    print_report(report, Console(file=out, width=200))
    assert "masks classes [0, 100, 200] (background, left lung, heart)" in out.getvalue()
    for names, message in (
        ("lung", r"gives 1 name\(s\), but the masks hold 2 class\(es\) .*values 100, 200\)"),
        ("lung,lung", "each name must be different"),
        (["lung", "background"], "each name must be different"),
        ("lung,", "not empty"),
    ):
        with pytest.raises(UnetError, match=message):
            convert.prepare(src, tmp_path / "bad", classes=True, class_names=names)
        assert not (tmp_path / "bad").exists()
    with pytest.raises(UnetError, match="--class-names names the classes of --classes"):
        convert.prepare(src, tmp_path / "bad", class_names="a,b")
    # a dataset.json whose names do not fit its classes is refused when read
    meta = json.loads((dest / dataset_json.FILE).read_text())
    meta["class_names"] = ["background", "lung"]
    (dest / dataset_json.FILE).write_text(json.dumps(meta))
    with pytest.raises(UnetError, match="class_names must be a list of 3 different names"):
        dataset_json.read(dest)


def test_classes_mode_refuses_jpeg_labels_and_foreground(src, tmp_path):
    png(src / "images" / "a.png", gray(1, 64, 64))
    disk = np.zeros((64, 64), np.uint8)
    cv2.circle(disk, (32, 32), 14, 2, -1)
    cv2.circle(disk, (32, 32), 6, 200, -1)
    png(src / "masks" / "a.jpg", disk)
    png(src / "images" / "b.png", gray(2))
    png(src / "masks" / "b.png", box(value=1))
    freeze(src)
    report = convert.check(src, classes=True)
    assert [e.id for e in report.pairs] == ["b"] and report.label_values == [0, 1]
    (problem,) = report.problems
    assert problem.kind == "mask_values" and problem.message.startswith("masks/a.jpg: ")
    with pytest.raises(UnetError, match="cannot be combined with --foreground"):
        convert.check(src, classes=True, foreground="1")


# ---------------------------------------------------------------- problems


def make_troubled(root: Path) -> None:
    """A flat data set with one example of every problem kind (and 3 good pairs)."""
    for id_ in ("good1", "good2"):
        png(root / "images" / f"{id_}.png", gray(1))
        png(root / "masks" / f"{id_}.png", box())
    png(root / "images" / "blank.png", gray(2))
    png(root / "masks" / "blank.png", np.zeros((6, 8), np.uint8))  # empty: kept
    broken = png(root / "images" / "broken.png", gray(3, 64, 64))
    broken.write_bytes(broken.read_bytes()[:100])  # truncated
    png(root / "masks" / "broken.png", box(64, 64))
    png(root / "images" / "lonely.png", gray(4))  # no mask
    png(root / "masks" / "orphan_mask.png", box())  # no image
    png(root / "images" / "wide.png", gray(5, 6, 9))
    png(root / "masks" / "wide.png", box())  # 8 wide, image 9 wide
    png(root / "images" / "photo.png", gray(6, 16, 16))
    png(root / "masks" / "photo.png", np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1)))
    png(root / "images" / "twice.png", gray(7))
    png(root / "images" / "twice.jpg", gray(7))
    png(root / "masks" / "twice.png", box())
    (root / "images" / "notes.txt").write_text("scanned on a Tuesday")
    (root / "images" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "masks" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._good1.png").write_bytes(b"junk")


EXPECTED_PROBLEMS = {
    # kind: (path, a fragment of the message)
    "empty_mask": ("masks/blank.png", "no foreground; kept"),
    "unreadable": ("images/broken.png", "corrupt or truncated"),
    "missing_mask": ("images/lonely.png", "no mask"),
    "missing_image": ("masks/orphan_mask.png", "no image"),
    "size_mismatch": ("masks/wide.png", "mask is 8x6 but its image images/wide.png is 9x6"),
    "mask_values": ("masks/photo.png", "16 distinct values"),
    "duplicate_id": (
        "images/twice.jpg",
        "images/twice.jpg and images/twice.png: the same id 'twice'",
    ),
    "not_image": ("images/notes.txt", "not an image"),
}


def test_every_problem_kind_is_reported_once_naming_the_file(src, tmp_path):
    make_troubled(src)
    freeze(src)
    report = convert.prepare(src, tmp_path / "out")
    assert kinds(report) == {kind: 1 for kind in EXPECTED_PROBLEMS}
    assert set(kinds(report)) <= set(layouts.PROBLEM_KINDS)
    for problem in report.problems:
        path, fragment = EXPECTED_PROBLEMS[problem.kind]
        assert problem.path == path
        assert problem.message.startswith(f"{path}: ") or problem.kind == "duplicate_id"
        assert fragment in problem.message
        assert "\n" not in problem.message
    assert [e.id for e in report.pairs] == ["blank", "good1", "good2"]
    assert sorted(report.skipped) == ["train/broken", "train/photo", "train/wide"]
    meta = dataset_json.read(tmp_path / "out").meta
    assert sorted(p["kind"] for p in meta["problems"]) == sorted(EXPECTED_PROBLEMS)
    assert meta["counts"]["problems"] == {kind: 1 for kind in sorted(EXPECTED_PROBLEMS)}
    assert sorted(os.listdir(tmp_path / "out/train/images")) == [
        "blank.png",
        "good1.png",
        "good2.png",
    ]


def test_cli_prepare_reports_problems_and_exits_0(src, tmp_path, capsys):
    make_troubled(src)
    freeze(src)
    code, out, _ = run_cli(capsys, "prepare", src, tmp_path / "out")
    assert code == 0
    assert "train pairs" in out and "skipped pairs" in out
    for kind, (path, _) in EXPECTED_PROBLEMS.items():
        line = next(line for line in out.splitlines() if line.startswith(kind))
        assert path in line
    assert (tmp_path / "out" / "dataset.json").exists()


def test_cli_strict_fails_and_writes_nothing(src, tmp_path, capsys):
    make_troubled(src)
    freeze(src)
    code, out, err = run_cli(capsys, "prepare", src, tmp_path / "out", "--strict")
    assert code == 1
    assert "error: 8 problem(s) and --strict is set; nothing written" in err
    assert "images/lonely.png" in out
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no DEST, no temporary folder


def test_strict_passes_on_clean_data(src, tmp_path, capsys):
    make_kaggle(src)
    freeze(src)
    code, _, _ = run_cli(capsys, "prepare", src, tmp_path / "out", "--strict")
    assert code == 0


def test_no_good_pair_is_an_error(src, tmp_path, capsys):
    png(src / "images" / "a.png", gray(1))
    png(src / "masks" / "a.png", box(7, 8))
    freeze(src)
    code, out, err = run_cli(capsys, "prepare", src, tmp_path / "out")
    assert code == 1
    assert "no usable image/mask pair" in err and "masks/a.png" in out
    assert not (tmp_path / "out").exists()
    with pytest.raises(convert.DatasetError) as info:
        convert.prepare(src, tmp_path / "out")
    assert info.value.report.skipped == ["train/a"]


def test_kaggle_problems(src, tmp_path):
    make_kaggle(src)
    (src / "train_images" / "d" / "images").mkdir(parents=True)
    png(src / "train_images" / "d" / "images" / "d.png", gray(4))  # no masks/
    png(src / "train_images" / "e" / "masks" / "e.png", box())  # no image
    png(src / "train_images" / "f" / "images" / "f.png", gray(5))
    png(src / "train_images" / "f" / "images" / "f.tif", gray(5))  # two images for f
    png(src / "train_images" / "f" / "masks" / "f.png", box())
    freeze(src)
    report = convert.check(src)
    assert len(report.pairs) == 3
    by_kind = {p.kind: p for p in report.problems}
    assert set(by_kind) == {"missing_mask", "missing_image", "duplicate_id"}
    assert by_kind["missing_mask"].path == "train_images/d/images/d.png"
    assert by_kind["missing_image"].path == "train_images/e/masks/e.png"
    assert "'f'" in by_kind["duplicate_id"].message


# ---------------------------------------------------------------- safety


def test_dest_inside_src_is_refused(src, tmp_path):
    make_kaggle(src)
    freeze(src)
    for dest in (src / "out", src, src / "train_images" / "x"):
        with pytest.raises(UnetError, match="inside the source"):
            convert.prepare(src, dest)
    with pytest.raises(UnetError, match="would delete the source"):
        convert.prepare(src, tmp_path, overwrite=True)


def test_existing_dest_needs_overwrite(src, tmp_path, capsys):
    make_kaggle(src)
    freeze(src)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    code, _, err = run_cli(capsys, "prepare", src, dest)
    assert code == 1 and "already exists; pass --overwrite" in err
    assert (dest / "old.txt").exists()
    # --overwrite replaces what `unet prepare` wrote, never another folder or a file.
    code, _, err = run_cli(capsys, "prepare", src, dest, "--overwrite")
    assert code == 1 and "is not a folder `unet prepare` wrote (no dataset.json)" in err
    assert (dest / "old.txt").read_text() == "old"
    (tmp_path / "f.txt").write_text("f")
    code, _, err = run_cli(capsys, "prepare", src, tmp_path / "f.txt", "--overwrite")
    assert code == 1 and (tmp_path / "f.txt").read_text() == "f"
    (dest / "old.txt").unlink()  # an empty folder may be filled
    code, _, _ = run_cli(capsys, "prepare", src, dest, "--overwrite")
    assert code == 0 and (dest / "dataset.json").exists()
    (dest / "extra.txt").write_text("x")  # a prepared folder is replaced whole
    code, _, _ = run_cli(capsys, "prepare", src, dest, "--overwrite")
    assert code == 0
    assert not (dest / "extra.txt").exists() and (dest / "dataset.json").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_killed_run_leaves_no_dest_and_rerun_completes(src, tmp_path, monkeypatch):
    make_kaggle(src)
    freeze(src)
    dest = tmp_path / "out"
    calls = {"n": 0}
    real_write = convert.images.write_png

    def dying_write(path, image):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-way
        return real_write(path, image)

    monkeypatch.setattr(convert.images, "write_png", dying_write)
    with pytest.raises(KeyboardInterrupt):
        convert.prepare(src, dest)
    assert not dest.exists()
    assert os.listdir(tmp_path) == ["src"]
    # a hard kill leaves the hidden build folder behind; the next run clears it
    (tmp_path / ".out.tmp-killed").mkdir()
    (tmp_path / ".out.tmp-killed" / "half.png").write_bytes(b"x")
    monkeypatch.setattr(convert.images, "write_png", real_write)
    assert len(convert.prepare(src, dest).pairs) == 3
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]


def test_symlink_loops_and_os_junk(src, tmp_path):
    make_kaggle(src)
    (src / "train_images" / "loop").symlink_to(src / "train_images", target_is_directory=True)
    (src / "train_images" / "a" / "masks" / "up").symlink_to(src, target_is_directory=True)
    (src / "test_images" / ".DS_Store").write_bytes(b"junk")
    (src / "train_images" / "a" / "masks" / "Thumbs.db").write_bytes(b"junk")
    freeze(src)
    report = convert.prepare(src, tmp_path / "out")
    assert (len(report.pairs), len(report.test_images)) == (3, 3)
    # the loop folder looks like an id folder without an image: reported, not followed
    assert [(p.kind, p.path) for p in report.problems] == [("missing_image", "train_images/loop")]


# ---------------------------------------------------------------- check and the CLI


def test_check_writes_nothing_and_matches_prepare(src, tmp_path, capsys):
    make_troubled(src)
    freeze(src)
    before = sorted(os.listdir(tmp_path))
    code, out, _ = run_cli(capsys, "check", src)
    assert code == 0
    assert sorted(os.listdir(tmp_path)) == before
    assert "images/lonely.png" in out and "train pairs" in out
    checked = convert.check(src)
    prepared = convert.prepare(src, tmp_path / "out")
    assert checked.problems == prepared.problems
    assert [e.id for e in checked.entries] == [e.id for e in prepared.entries]
    assert all(e.image is None for e in checked.entries)
    code, _, err = run_cli(capsys, "check", src, "--strict")
    assert code == 1 and "--strict" in err


def test_check_a_prepared_folder(src, tmp_path, capsys):
    make_kaggle(src)
    freeze(src)
    convert.prepare(src, tmp_path / "out")
    code, out, _ = run_cli(capsys, "check", tmp_path / "out", "--strict")
    assert code == 0
    assert "layout prepared" in out


def test_cli_options_reach_the_library(src, tmp_path, capsys):
    png(src / "scans" / "x.png", gray(1))
    png(src / "outlines" / "x.png", box(value=150) + box(rows=(4, 5), value=200))
    freeze(src)
    args = ["--layout", "flat", "--images-dir", "scans", "--masks-dir", "outlines"]
    code, _, _ = run_cli(capsys, "prepare", src, tmp_path / "o1", *args, "--foreground", "200")
    assert code == 0
    assert np.array_equal(read(tmp_path / "o1/train/masks/x.png"), box(rows=(4, 5)))
    code, _, _ = run_cli(capsys, "prepare", src, tmp_path / "o2", *args, "--classes")
    assert code == 0
    assert dataset_json.read(tmp_path / "o2").meta["label_values"] == [0, 150, 200]
    code, out, _ = run_cli(capsys, "check", src, *args, "--max-pixels", "10")
    assert code == 1 and "too_large" in out
    code, _, err = run_cli(capsys, "check", src, "--layout", "bogus")
    assert code == 1 and "choose one of" in err


@pytest.mark.parametrize("command", ["prepare", "check"])
def test_help(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    for option in ("--layout", "--foreground", "--classes", "--max-pixels", "--strict"):
        assert option in out


def test_load_dataset_json_errors(tmp_path):
    with pytest.raises(UnetError, match="unet prepare SRC DEST"):
        dataset_json.read(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(UnetError, match=r"dataset\.json: unreadable"):
        dataset_json.read(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(UnetError, match=r"not a dataset\.json written by `unet prepare`"):
        dataset_json.read(tmp_path)


GOOD = {
    "format": "unet-lowered-dataset",
    "version": 1,
    "mode": "binary",
    "num_classes": 1,
    "label_values": None,
    "items": [{"id": "a", "split": "val"}],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "dataset.json version 2 is newer than this unet-lowered reads"),
        ({"version": "1"}, "version must be a positive whole number"),
        ({"mode": "multi"}, "mode must be binary or classes"),
        ({"num_classes": 0}, "num_classes must be a positive whole number"),
        ({"mode": "classes", "num_classes": 3, "label_values": [0, 1]}, "one value per class"),
        ({"items": {"a": "val"}}, "items must be a list"),
        (
            {"items": [{"id": "a", "split": "validation"}]},
            r"items\[0\] needs an 'id' and a 'split'",
        ),
    ],
)
def test_dataset_json_reader_is_strict(tmp_path, change, message):
    (tmp_path / "dataset.json").write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(UnetError, match=message):
        dataset_json.read(tmp_path)


def test_dataset_json_reader_gives_the_recorded_facts(tmp_path):
    meta = {
        **GOOD,
        "mode": "classes",
        "num_classes": 3,
        "label_values": [0, 100, 200],
        "items": [
            {"id": "a", "split": "val"},
            {"id": "b", "split": "train"},
            {"id": "t", "split": "test"},
        ],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    info = dataset_json.read(tmp_path)
    assert (info.mode, info.num_classes, info.label_values) == ("classes", 3, (0, 100, 200))
    assert dict(info.splits) == {"a": "val", "b": "train"}  # test images are not pairs


# ---------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_jsrt_lungs(tmp_path):
    root = shared_dataset("jsrt-lungs")
    before = snapshot(root)
    report = convert.prepare(root, tmp_path / "out")
    assert (report.layout, len(report.pairs), len(report.test_images)) == ("kaggle", 200, 47)
    assert report.problems == []
    values = set()
    for _, _, mask in convert.prepared_pairs(tmp_path / "out"):
        values |= set(np.unique(read(mask)).tolist())
    assert values == {0, 255}
    assert snapshot(root) == before


@pytest.mark.realdata
def test_real_dsb2018_union_of_instances(tmp_path):
    root = shared_dataset("dsb2018") / "stage1_train"
    report = convert.prepare(root, tmp_path / "out")
    assert (report.layout, len(report.pairs), report.problems) == ("instances", 120, [])
    for entry in report.pairs:
        union = np.zeros((entry.height, entry.width), bool)
        for rel in entry.source_masks:
            union |= cv2.imread(str(root / rel), cv2.IMREAD_GRAYSCALE) > 0
        assert np.array_equal(read(tmp_path / "out" / entry.mask), union.astype(np.uint8) * 255), (
            entry.id
        )
    assert sum(len(e.source_masks) for e in report.pairs) == 4571


@pytest.mark.realdata
def test_real_isbi2012(tmp_path):
    root = shared_dataset("isbi2012")
    report = convert.check(root)
    assert (report.layout, len(report.pairs), report.problems) == ("flat", 24, [])
    fractions = [e.foreground_fraction for e in report.pairs]
    assert all(0.5 < f < 0.95 for f in fractions)  # label 255 = cell interior, the majority


@pytest.mark.realdata
def test_real_jsrt_anatomy_classes():
    root = shared_dataset("jsrt-anatomy")
    report = convert.check(root, classes=True)
    assert (report.layout, len(report.pairs), report.problems) == ("flat", 200, [])
    assert report.label_values == [0, 1, 2, 3]


def test_a_file_given_as_the_data_folder_is_named_as_a_file(tmp_path):
    a_file = tmp_path / "existing.txt"
    a_file.write_text("x")
    for call in (lambda: convert.check(a_file), lambda: convert.prepare(a_file, tmp_path / "o")):
        with pytest.raises(
            UnetError, match=r"existing\.txt: a file, not a folder; give the folder"
        ):
            call()
    with pytest.raises(UnetError, match=r"gone: no such folder; give the folder"):
        convert.check(tmp_path / "gone")


def test_the_report_shows_control_characters_in_names_as_escapes(tmp_path: Path) -> None:
    """A file named with a line break or an escape sequence broke the problem lines
    across the terminal (and reached it raw); they are shown as \\n and \\x1b, as predict's."""
    import io

    import numpy as np
    from rich.console import Console

    from unet_lowered.dataset.prepare import check
    from unet_lowered.dataset.report import print_report
    from unet_lowered.io.images import write_png

    for name in ("a\nb.png", "ok.png", "esc\x1b[2Jx.png"):
        write_png(tmp_path / "raw" / "images" / name, np.zeros((8, 8), np.uint8))
    write_png(tmp_path / "raw" / "masks" / "ok.png", np.zeros((8, 8), np.uint8))
    buffer = io.StringIO()
    print_report(check(tmp_path / "raw"), Console(file=buffer, width=400))
    text = buffer.getvalue()
    assert "\x1b" not in text and "images/a\\nb.png" in text and "esc\\x1b[2Jx.png" in text
    lines = [line for line in text.splitlines() if line.startswith("missing_mask")]
    assert len(lines) == 2


def test_names_in_decomposed_unicode_pair_with_composed_ones(tmp_path: Path) -> None:
    """images/café.png written by macOS (e + combining accent) and masks/café.png (one é)
    were reported as an image without a mask, naming a file that visibly exists."""
    import unicodedata

    import numpy as np

    from unet_lowered.dataset.prepare import check
    from unet_lowered.io.images import write_png

    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert nfd != nfc
    write_png(tmp_path / "raw" / "images" / f"{nfd}.png", np.zeros((8, 8), np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    write_png(tmp_path / "raw" / "masks" / f"{nfc}.png", mask)
    report = check(tmp_path / "raw")
    assert [p.kind for p in report.problems] == []
    assert report.counts()["train"] == 1


def test_files_that_cannot_be_opened_are_unreadable_not_other_problems(tmp_path, monkeypatch):
    """A mask without read permission was 'not an image' and its image 'has no mask'; a
    broken link was left out without a word (its mask then 'has no image')."""
    import builtins

    import numpy as np

    from unet_lowered.dataset.prepare import check
    from unet_lowered.io.images import write_png

    for name in ("a", "b"):
        write_png(tmp_path / "raw" / "images" / f"{name}.png", np.zeros((8, 8), np.uint8))
        write_png(tmp_path / "raw" / "masks" / f"{name}.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "raw" / "images" / "c.png").symlink_to(tmp_path / "nowhere.png")
    write_png(tmp_path / "raw" / "masks" / "c.png", np.zeros((8, 8), np.uint8))
    locked = str(tmp_path / "raw" / "masks" / "b.png")
    real_open = builtins.open

    def open_(file, *args, **kwargs):  # root reads everything: the denial is simulated
        if str(file) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    problems = [(p.kind, p.message) for p in check(tmp_path / "raw").problems]
    assert (
        "unreadable",
        "masks/b.png: cannot be read (Permission denied); fix it or remove it",
    ) in problems
    assert (
        "unreadable",
        "images/c.png: cannot be read (a broken symbolic link); fix it or remove it",
    ) in problems
    assert not any(kind == "not_image" for kind, _ in problems)
