"""Recognising a data set's folder layout and listing its images and masks.

Four source layouts are known (``--layout`` picks one when a folder is ambiguous):

``kaggle``
    ``train_images/<id>/images/<id>.png`` with ``train_images/<id>/masks/*.png``, and
    ``test_images/<id>/<id>.png`` (or ``test_images/<id>/images/<id>.png``, or
    ``test_images/<id>.png``). Several files in ``masks/`` are merged (union).
``instances`` (alias ``dsb2018``)
    Data Science Bowl 2018: ``<id>/images/<id>.png`` and ``<id>/masks/*.png``, one object
    per mask file, merged (union). ``SRC`` may also be the folder above
    ``stage1_train/`` (and ``stage1_test/``).
``flat``
    An image folder and a mask folder paired by file stem, either directly in ``SRC``
    or in split folders ``train/`` (``training/``), ``val/`` (``valid/``, ``validation/``)
    and ``test/`` (``testing/``; images may also lie directly in it, as in a prepared
    folder). Folder names: any of :data:`IMAGE_DIRS` and :data:`MASK_DIRS`, any case.
    A mask may carry a suffix after the image's stem (:data:`MASK_SUFFIXES`), e.g.
    ``images/a.png`` + ``masks/a_mask.png``. ``--images-dir``/``--masks-dir`` name the
    two folders explicitly.
``montgomery``
    Separate left and right lung masks (Montgomery County set): ``leftMask/<id>.png`` and
    ``rightMask/<id>.png`` (e.g. under ``ManualMask/``) beside an image folder
    (``CXR_png/`` or any of :data:`IMAGE_DIRS`); the two halves are merged.

Walking reads folders to a fixed depth only, so symbolic-link loops cannot trap it;
OS litter (``.DS_Store``, ``Thumbs.db``, ``__MACOSX``, hidden files) is ignored
silently. Files whose content is not an image are reported (``not_image``) and skipped.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from unet_lowered.errors import UnetError
from unet_lowered.io import atomic
from unet_lowered.io.images import JUNK_NAMES, is_image_file

LAYOUTS = ("kaggle", "instances", "flat", "montgomery")
"""Source layouts ``--layout`` accepts (plus the alias ``dsb2018`` for ``instances``)."""

LAYOUT_ALIASES = {"dsb2018": "instances", "dsb": "instances"}

IMAGE_DIRS = ("images", "image", "imgs", "img", "cxr_png")
"""Folder names (any case) that hold images in the flat and Montgomery layouts."""

MASK_DIRS = (
    "masks",
    "mask",
    "labels",
    "label",
    "gt",
    "ground_truth",
    "groundtruth",
    "annotations",
    "segmentations",
)
"""Folder names (any case) that hold masks in the flat layout."""

MASK_SUFFIXES = (
    "_mask",
    "-mask",
    "_masks",
    "mask",
    "_seg",
    "_segmentation",
    "_label",
    "_labels",
    "_gt",
    "_anno",
)
"""Suffixes (any case) a mask's stem may carry after its image's stem in the flat layout."""

SPLIT_DIRS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
"""Split folder names of the flat layout and the split each stands for."""

JUNK_DIRS = frozenset({"__MACOSX", "$RECYCLE.BIN", "System Volume Information"})

PROBLEM_KINDS = {
    "unreadable": "corrupt or unreadable image or mask",
    "too_large": "image over the pixel limit (refused before decoding)",
    "missing_mask": "image without mask",
    "missing_image": "mask without image",
    "size_mismatch": "image and mask sizes differ",
    "empty_mask": "mask without foreground (pair kept)",
    "mask_values": "mask with unexpected values",
    "duplicate_id": "the same id twice",
    "not_image": "file that is not an image (ignored)",
}
"""Every problem kind, with a short description for the summary table."""

NOTE_KINDS = {
    "gray_as_rgb": "gray image stored as RGB (kept as it is)",
    "alpha_dropped": "alpha channel dropped",
    "reencoded": "not a gray/RGB PNG: re-encoded as lossless PNG",
    "mask_rule": "mask binarised by a rule worth checking (see dataset.json)",
    "test_masks": "masks of test images ignored",
}
"""Kinds of notes (remarks that are not problems), for the summary table."""


def put_back_replaced(root: Path) -> None:
    """A data folder that a killed ``unet prepare --overwrite`` left aside (missing, its
    previous contents whole at ``.NAME.tmp-old``) is put back, with a note on stderr."""
    if not root.is_dir() and atomic.restore_replaced(root):
        print(
            f"note: {root} was being replaced when `unet prepare --overwrite` was stopped; "
            "its previous contents are back",
            file=sys.stderr,
        )


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data (or, as a note, worth knowing).

    Attributes:
        kind: One of :data:`PROBLEM_KINDS` (for notes: a short tag such as ``gray_as_rgb``).
        path: The file concerned, relative to the data folder (POSIX separators).
        message: One line that names the file, says what is wrong and how to fix it.
    """

    kind: str
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path, "message": self.message}


@dataclass
class Item:
    """An image and its mask file(s) as found in the source, before reading them.

    Attributes:
        id: The id (file stem or folder name); the output files are ``<id>.png``.
        split: ``"train"``, ``"val"`` or ``"test"`` (test images have no masks).
        image: The image file.
        masks: The mask file(s); several are merged (instances, left/right lungs).
    """

    id: str
    split: str
    image: Path
    masks: tuple[Path, ...] = ()


@dataclass
class Scan:
    """What :func:`scan` found: the layout, the candidate items, problems and notes."""

    root: Path
    layout: str
    items: list[Item] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)

    def rel(self, path: Path) -> str:
        """``path`` relative to the root, with POSIX separators (for messages and JSON)."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def problem(self, kind: str, path: Path, text: str) -> None:
        rel = self.rel(path)
        self.problems.append(Problem(kind, rel, f"{rel}: {text}"))

    def note(self, kind: str, path: Path, text: str) -> None:
        rel = self.rel(path)
        self.notes.append(Problem(kind, rel, f"{rel}: {text}"))


def normalize_layout(layout: str | None) -> str | None:
    """Check a ``--layout`` value; return the canonical name (None = detect).

    Raises:
        UnetError: Unknown layout; the message lists the valid ones.
    """
    if layout is None or layout in ("", "auto"):
        return None
    name = LAYOUT_ALIASES.get(layout.lower(), layout.lower())
    if name not in LAYOUTS:
        raise UnetError(
            f"--layout {layout!r} is not a known layout; choose one of: auto, "
            + ", ".join(LAYOUTS)
            + ", dsb2018 (= instances)"
        )
    return name


def looked_for() -> str:
    """One line describing every layout, for 'layout not recognised' errors."""
    return (
        "kaggle (train_images/<id>/images/<id>.png + train_images/<id>/masks/), "
        "instances (<id>/images/<id>.png + <id>/masks/*.png, or stage1_train/), "
        f"flat ({'|'.join(IMAGE_DIRS[:4])}/ + {'|'.join(MASK_DIRS[:5])}/ folders, directly or "
        "under train/ val/ test/), montgomery (leftMask/ + rightMask/ beside CXR_png/ or images/)"
    )


def detect(root: Path) -> list[str]:
    """Return every layout whose structure ``root`` shows (usually one)."""
    found = []
    if _child(root, "train_images"):
        found.append("kaggle")
    if _instance_roots(root)[0] is not None:
        found.append("instances")
    if _flat_splits(root):
        found.append("flat")
    if _find_left_right(root) is not None:
        found.append("montgomery")
    return found


def scan(
    root: str | os.PathLike,
    layout: str | None = None,
    images_dir: str | os.PathLike | None = None,
    masks_dir: str | os.PathLike | None = None,
) -> Scan:
    """Find the layout of ``root`` and list its items; nothing is decoded yet.

    Args:
        root: The data folder.
        layout: One of :data:`LAYOUTS` (or an alias); None detects it.
        images_dir: Flat layout: the image folder (relative to ``root`` or absolute).
        masks_dir: Flat layout: the mask folder; needs ``images_dir``.

    Returns:
        A :class:`Scan` with the candidate items and the problems found while listing
        (duplicates, missing halves of pairs, non-image files).

    Raises:
        UnetError: ``root`` is not a folder; the layout is unknown, ambiguous, or absent.
    """
    root = Path(root)
    put_back_replaced(root)
    if not root.is_dir():
        what = "a file, not a folder" if root.exists() else "no such folder"
        raise UnetError(f"{root}: {what}; give the folder that holds the data set")
    layout = normalize_layout(layout)
    if (images_dir is None) != (masks_dir is None):
        raise UnetError("--images-dir and --masks-dir go together; give both or neither")
    if images_dir is not None:
        if layout not in (None, "flat"):
            raise UnetError(f"--images-dir/--masks-dir need --layout flat, not {layout}")
        layout = "flat"
    if layout is None:
        found = detect(root)
        if not found:
            raise UnetError(
                f"{root}: no known data set layout; looked for {looked_for()}. "
                "Pass --layout, or --images-dir and --masks-dir"
            )
        if len(found) > 1:
            raise UnetError(
                f"{root}: ambiguous, it looks like several layouts ({', '.join(found)}); "
                f"pass --layout {'|'.join(found)}"
            )
        layout = found[0]
    result = Scan(root=root, layout=layout)
    if layout == "kaggle":
        _scan_kaggle(result)
    elif layout == "instances":
        _scan_instances(result)
    elif layout == "montgomery":
        _scan_montgomery(result)
    elif images_dir is not None:
        pair_folder(result, "train", _under(root, images_dir), _under(root, masks_dir))
    else:
        _scan_flat(result)
    if (root / "dataset.json").is_file() and layout == "flat":
        result.layout = "prepared"
    _check_duplicate_ids(result)
    return result


# ---------------------------------------------------------------- listing


def _listdir(folder: Path) -> tuple[list[Path], list[Path]]:
    """Files and folders directly in ``folder``, sorted; junk and hidden entries left out."""
    files, dirs = [], []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return [], []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name in JUNK_NAMES or name in JUNK_DIRS:
            continue
        path = Path(entry.path)
        if entry.is_dir():  # follows links: safe, since no walk here recurses without limit
            dirs.append(path)
        elif entry.is_file() or entry.is_symlink():  # a broken link: reported as unreadable
            files.append(path)
    return files, dirs


def _child(folder: Path, *names: str) -> Path | None:
    """The first sub-folder of ``folder`` whose name is one of ``names`` (any case)."""
    _, dirs = _listdir(folder)
    by_name = {d.name.lower(): d for d in dirs}
    for name in names:
        if name in by_name:
            return by_name[name]
    return None


def _under(root: Path, sub: str | os.PathLike | None) -> Path:
    path = Path(sub) if Path(sub).is_absolute() else root / sub
    if not path.is_dir():
        raise UnetError(f"{path}: no such folder (from --images-dir/--masks-dir)")
    return path


def _image_files(scan: Scan, files: list[Path]) -> list[Path]:
    """Keep the files whose content is an image; report the others as ``not_image``, and
    those that cannot be opened (no permission, a broken link) as ``unreadable``."""
    kept = []
    for f in files:
        try:
            with open(f, "rb"):
                pass
        except OSError as e:
            why = "a broken symbolic link" if f.is_symlink() and not f.exists() else e.strerror
            scan.problem("unreadable", f, f"cannot be read ({why}); fix it or remove it")
            continue
        if not is_image_file(f):
            scan.problem(
                "not_image",
                f,
                "not an image (content is not PNG, JPEG, TIFF, BMP or DICOM); ignored",
            )
        else:
            kept.append(f)
    return kept


def _nfc(name: str) -> str:
    """``name`` in Unicode's composed form (NFC): macOS and its zip files write ``café`` as
    ``cafe`` + a combining accent, other systems as one ``é``, and the two must pair."""
    return unicodedata.normalize("NFC", name)


def _by_stem(scan: Scan, files: list[Path]) -> dict[str, Path | None]:
    """Map stem -> file; a stem seen twice (``a.png`` and ``a.jpg``) is a ``duplicate_id``.

    Duplicated stems map to None, so that their masks are not reported again as orphans.
    """
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(_nfc(f.stem), []).append(f)
    out: dict[str, Path | None] = {}
    for stem, group in groups.items():
        if len(group) == 1:
            out[stem] = group[0]
        else:
            _duplicate(scan, stem, group)
            out[stem] = None
    return out


def _duplicate(scan: Scan, id_: str, files: list[Path]) -> None:
    names = " and ".join(scan.rel(f) for f in files)
    scan.problems.append(
        Problem(
            "duplicate_id",
            scan.rel(files[0]),
            f"{names}: the same id {id_!r} twice; keep one of them (both skipped)",
        )
    )


def _check_duplicate_ids(scan: Scan) -> None:
    """An id in both train and val would land twice in ``train/``: skip both."""
    seen: dict[str, Item] = {}
    drop = set()
    for item in scan.items:
        if item.split == "test":
            continue
        if item.id in seen:
            _duplicate(scan, item.id, [seen[item.id].image, item.image])
            drop.update({id(seen[item.id]), id(item)})
        else:
            seen[item.id] = item
    scan.items = [i for i in scan.items if id(i) not in drop]


# ---------------------------------------------------------------- kaggle and instances


def _scan_kaggle(scan: Scan) -> None:
    train = _child(scan.root, "train_images")
    if train is None:
        raise UnetError(f"{scan.root}: no train_images/ folder, so not the kaggle layout")
    _scan_id_folders(scan, train, "train")
    test = _child(scan.root, "test_images")
    if test is not None:
        _scan_id_folders(scan, test, "test")


def _instance_roots(root: Path) -> tuple[Path | None, Path | None]:
    """(train folder, test folder) of the instance layout, or (None, None)."""
    stage_train = _child(root, "stage1_train")
    if stage_train is not None:
        return stage_train, _child(root, "stage1_test")
    _, dirs = _listdir(root)
    for d in dirs:  # <id>/images/<id>.* (unlike a flat train/images/ folder)
        image_dir = _child(d, "images")
        if image_dir is not None and _child(d, "masks") is not None:
            if any(f.stem == d.name for f in _listdir(image_dir)[0]):
                return root, None
    return None, None


def _scan_instances(scan: Scan) -> None:
    train, test = _instance_roots(scan.root)
    if train is None:
        raise UnetError(
            f"{scan.root}: no <id>/images/ + <id>/masks/ folders, so not the instances layout"
        )
    _scan_id_folders(scan, train, "train")
    if test is not None:
        _scan_id_folders(scan, test, "test")


def _scan_id_folders(scan: Scan, folder: Path, split: str) -> None:
    """One sub-folder per id: ``<id>/images/<id>.png`` (or ``<id>/<id>.png``) + ``<id>/masks/``."""
    files, dirs = _listdir(folder)
    for f in _image_files(scan, files):  # images lying directly in the folder
        if split == "test":
            scan.items.append(Item(f.stem, split, f))
        else:
            scan.problem(
                "missing_mask",
                f,
                f"image has no masks; expected {f.stem}/images/ + {f.stem}/masks/",
            )
    for d in dirs:
        _scan_id_folder(scan, d, split)


def _scan_id_folder(scan: Scan, folder: Path, split: str) -> None:
    id_ = folder.name
    image_dir = _child(folder, "images", "image")
    mask_dir = _child(folder, "masks", "mask")
    files, _ = _listdir(image_dir if image_dir is not None else folder)
    candidates = _image_files(scan, files)
    mask_files = _image_files(scan, _listdir(mask_dir)[0]) if mask_dir is not None else []
    if len(candidates) > 1:  # prefer <id>.*; several of those is a duplicate
        named = [f for f in candidates if f.stem == id_]
        if len(named) != 1:
            _duplicate(scan, id_, named or candidates)
            return
        candidates = named
    if not candidates:
        if mask_files or split != "test":
            scan.problem(
                "missing_image",
                mask_files[0] if mask_files else folder,
                f"no image for id {id_!r}; expected {id_}/images/{id_}.png",
            )
        return
    image = candidates[0]
    if split == "test":
        if mask_files:
            scan.note("test_masks", mask_dir, "masks of a test image ignored (test has no masks)")
        scan.items.append(Item(id_, split, image))
    elif not mask_files:
        scan.problem(
            "missing_mask", image, f"image has no mask; expected mask files in {id_}/masks/"
        )
    else:
        scan.items.append(Item(id_, split, image, tuple(mask_files)))


# ---------------------------------------------------------------- flat


def _flat_splits(root: Path) -> list[tuple[str, Path]]:
    """(split, folder) pairs of the flat layout; empty if ``root`` is not flat."""
    splits = []
    if _child(root, *IMAGE_DIRS) is not None and _child(root, *MASK_DIRS) is not None:
        splits.append(("train", root))
    _, dirs = _listdir(root)
    for d in dirs:
        split = SPLIT_DIRS.get(d.name.lower())
        if split is None:
            continue
        has_images = _child(d, *IMAGE_DIRS) is not None
        has_masks = _child(d, *MASK_DIRS) is not None
        if split == "test" and (has_images or _listdir(d)[0]):
            splits.append((split, d))
        elif has_images and has_masks:
            splits.append((split, d))
    if all(split == "test" for split, _ in splits):
        return []  # test images alone are no training set
    return splits


def _scan_flat(scan: Scan) -> None:
    splits = _flat_splits(scan.root)
    if not splits:
        raise UnetError(
            f"{scan.root}: no image folder ({'|'.join(IMAGE_DIRS)}) beside a mask folder "
            f"({'|'.join(MASK_DIRS)}), directly or under train/ val/ test/; "
            "name them with --images-dir and --masks-dir"
        )
    for split, folder in splits:
        image_dir = _child(folder, *IMAGE_DIRS)
        mask_dir = _child(folder, *MASK_DIRS)
        if split == "test":
            if mask_dir is not None:
                scan.note("test_masks", mask_dir, "masks of the test split ignored")
            files, _ = _listdir(image_dir if image_dir is not None else folder)
            for stem, f in _by_stem(scan, _image_files(scan, files)).items():
                if f is not None:
                    scan.items.append(Item(stem, split, f))
        else:
            pair_folder(scan, split, image_dir, mask_dir)


def mask_id(stem: str, image_ids: set[str] | dict[str, Path]) -> str | None:
    """The image id a mask file's stem belongs to: the stem itself or it minus a suffix.

    Args:
        stem: The mask file's stem, e.g. ``"case7_mask"``.
        image_ids: The stems of the images.

    Returns:
        The matching image id, or None.
    """
    stem = _nfc(stem)
    if stem in image_ids:
        return stem
    lower = stem.lower()
    for suffix in MASK_SUFFIXES:
        if lower.endswith(suffix) and stem[: -len(suffix)] in image_ids:
            return stem[: -len(suffix)]
    return None


def pair_folder(scan: Scan, split: str, image_dir: Path, mask_dir: Path) -> None:
    """Pair the images of ``image_dir`` with the masks of ``mask_dir`` by :func:`mask_id`.

    The one pairing rule of the package (``unet prepare`` and training both use it):
    pairs go to ``scan.items``; non-images, unmatched files and duplicate ids go to
    ``scan.problems``.
    """
    images = _by_stem(scan, _image_files(scan, _listdir(image_dir)[0]))
    masks: dict[str, list[Path]] = {}
    for f in _image_files(scan, _listdir(mask_dir)[0]):
        id_ = mask_id(f.stem, images)
        if id_ is None:
            scan.problem(
                "missing_image",
                f,
                f"mask has no image in {scan.rel(image_dir)}/ with the same name "
                f"(optionally + {'|'.join(MASK_SUFFIXES[:3])}...)",
            )
        else:
            masks.setdefault(id_, []).append(f)
    for id_, image in images.items():
        found = masks.get(id_, [])
        if image is None:
            continue  # duplicate id, reported
        if len(found) > 1:
            _duplicate(scan, id_, found)
        elif not found:
            scan.problem(
                "missing_mask",
                image,
                f"image has no mask; expected {scan.rel(mask_dir)}/{id_}.png (or {id_}_mask.png...)",
            )
        else:
            scan.items.append(Item(id_, split, image, (found[0],)))


# ---------------------------------------------------------------- montgomery


def _find_left_right(root: Path) -> tuple[Path, Path, Path] | None:
    """(image folder, leftMask folder, rightMask folder) within two levels, or None."""
    _, level1 = _listdir(root)
    for parent in [root, *level1]:
        left = _child(parent, "leftmask")
        right = _child(parent, "rightmask")
        if left is None or right is None:
            continue
        for where in (parent, root):
            image_dir = _child(where, *IMAGE_DIRS)
            if image_dir is not None:
                return image_dir, left, right
    return None


def _scan_montgomery(scan: Scan) -> None:
    found = _find_left_right(scan.root)
    if found is None:
        raise UnetError(
            f"{scan.root}: no leftMask/ + rightMask/ folders beside an image folder "
            f"({'|'.join(IMAGE_DIRS)}), so not the montgomery layout"
        )
    image_dir, left_dir, right_dir = found
    images = _by_stem(scan, _image_files(scan, _listdir(image_dir)[0]))
    halves = []
    for folder in (left_dir, right_dir):
        half: dict[str, Path] = {}
        for f in _image_files(scan, _listdir(folder)[0]):
            id_ = mask_id(f.stem, images)
            if id_ is None:
                scan.problem("missing_image", f, f"mask has no image in {scan.rel(image_dir)}/")
            else:
                half[id_] = f
        halves.append(half)
    for id_, image in images.items():
        if image is None:
            continue  # duplicate id, reported
        left, right = halves[0].get(id_), halves[1].get(id_)
        if left is None or right is None:
            missing = " and ".join(
                scan.rel(d) + "/" for d, m in ((left_dir, left), (right_dir, right)) if m is None
            )
            scan.problem("missing_mask", image, f"image has no mask in {missing}")
        else:
            scan.items.append(Item(id_, "train", image, (left, right)))
