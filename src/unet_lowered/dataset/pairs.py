"""The pairs of a data folder, and its train/validation split.

:func:`load_prepared` pairs ``images/<id>.*`` with ``masks/<id>.*`` by file stem,
in the folder ``unet prepare`` writes (``DATA/train/{images,masks}`` +
``DATA/dataset.json``) or in any folder with ``images/`` and ``masks/``. The
pairing rule (a mask may be named ``<id>_mask``, ``<id>_segmentation``, ... in any
case) and the test "is this an image" (by content) are those of ``unet prepare``:
:func:`unet_lowered.dataset.layouts.pair_folder`. The split and label map come
from ``dataset.json`` through its one reader, :mod:`unet_lowered.dataset.dataset_json`.
:func:`split_ids` makes the seeded split when none is recorded.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unet_lowered.dataset import dataset_json, layouts
from unet_lowered.dataset.dataset_json import DatasetInfo
from unet_lowered.errors import UnetError, listing
from unet_lowered.io import images as imageio

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Image/mask pairs of a data folder and what its ``dataset.json`` says about them.

    Attributes:
        root: The data folder given.
        image_dir: Folder of the images.
        mask_dir: Folder of the masks.
        images: Image path per id.
        masks: Mask path per id.
        info: The checked ``dataset.json``, or None when the folder has none.
        notes: Warnings found while reading (missing ``dataset.json``, ignored files).
    """

    root: Path
    image_dir: Path
    mask_dir: Path
    images: dict[str, Path]
    masks: dict[str, Path]
    info: DatasetInfo | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        """All paired ids, sorted."""
        return sorted(self.images)

    def refuse_out_inside(self, out: str | os.PathLike, reader: str) -> None:
        """Refuse an output folder inside the images or masks folder (input data is
        never modified); ``reader`` names who reads them, e.g. ``"training"``.

        Raises:
            UnetError: ``out`` is inside one of them.
        """
        target = Path(out).resolve()
        for folder in (self.image_dir, self.mask_dir):
            if target.is_relative_to(Path(folder).resolve()):
                raise UnetError(
                    f"--out {out} is inside {folder}, which {reader} reads; choose another folder"
                )

    @property
    def recorded_split(self) -> dict[str, str]:
        """``"train"`` or ``"val"`` per paired id, as ``dataset.json`` records (else empty)."""
        if self.info is None:
            return {}
        return {i: s for i, s in self.info.splits.items() if i in self.images}

    @property
    def label_values(self) -> list[int] | None:
        """Original mask value per class from ``dataset.json``, or None."""
        if self.info is None or self.info.label_values is None:
            return None
        return list(self.info.label_values)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """A name per class (background first) from ``dataset.json``, or None."""
        return None if self.info is None else self.info.class_names

    @property
    def num_classes(self) -> int:
        """``num_classes`` from ``dataset.json``; 1 (binary) without one."""
        return 1 if self.info is None else self.info.num_classes

    @functools.cached_property
    def channels(self) -> int:
        """3 if any image is true colour, else 1 (gray, or gray stored as RGB)."""
        return infer_channels(self.images.values())

    def image_sizes(self, ids: Iterable[str]) -> list[tuple[int, int]]:
        """``(height, width)`` of the images of ``ids``, read from the file headers."""
        return [(h.height, h.width) for h in (imageio.read_header(self.images[i]) for i in ids)]

    def split(
        self, val_fraction: float, seed: int, use_recorded: bool = True
    ) -> dict[str, list[str]]:
        """Train/validation ids: the split in ``dataset.json`` if it has one, else seeded.

        A recorded split counts when it names at least one validation id; ids it does
        not mention then go to training.

        Args:
            val_fraction: Fraction of ids for validation (seeded split only).
            seed: Seed of the split (seeded split only).
            use_recorded: Use the split recorded in ``dataset.json`` when there is one.

        Returns:
            ``{"train": [...], "val": [...]}``, both sorted.
        """
        recorded = self.recorded_split
        if use_recorded and any(s == "val" for s in recorded.values()):
            ids = self.ids
            return {
                "train": [i for i in ids if recorded.get(i) != "val"],
                "val": [i for i in ids if recorded.get(i) == "val"],
            }
        train, val = split_ids(self.ids, val_fraction, seed)
        return {"train": train, "val": val}


_REFUSED = {
    "missing_mask": "image(s) without a mask",
    "missing_image": "mask(s) without an image",
}


def load_prepared(data_dir: str | os.PathLike) -> PreparedData:
    """Pair the images and masks of a data folder by file stem.

    Accepts the folder ``unet prepare`` writes (``train/images``, ``train/masks``,
    ``dataset.json``) or any folder with ``images/`` and ``masks/``. Masks pair with
    images as in ``unet prepare`` (:func:`unet_lowered.dataset.layouts.mask_id`).

    Args:
        data_dir: The data folder.

    Returns:
        The pairs, with the split and label map from ``dataset.json`` if present.

    Raises:
        UnetError: No such folder (or a file), no image/mask folders, duplicate ids, images
            without masks or masks without images (the message names them), no pairs,
            or a ``dataset.json`` that its reader refuses.
    """
    root = Path(data_dir)
    layouts.put_back_replaced(root)  # after a killed `unet prepare --overwrite`
    if root.exists() and not root.is_dir():
        raise UnetError(f"{root}: a file, not a folder; give the data folder `unet prepare` wrote")
    if not root.is_dir():
        raise UnetError(f"{root}: no such data folder; run `unet prepare SRC {root}` first")
    for sub in (root / "train", root):
        if (sub / "images").is_dir() and (sub / "masks").is_dir():
            image_dir, mask_dir = sub / "images", sub / "masks"
            break
    else:
        raise UnetError(
            f"{root}: no train/images + train/masks (as `unet prepare` writes) and no "
            "images/ + masks/ folders; run `unet prepare SRC DEST` and use DEST"
        )
    found = layouts.Scan(root=root, layout="flat")
    layouts.pair_folder(found, "train", image_dir, mask_dir)
    by_kind: dict[str, list[layouts.Problem]] = {}
    for problem in found.problems:
        by_kind.setdefault(problem.kind, []).append(problem)
    if "duplicate_id" in by_kind:
        raise UnetError(f"{root}: {by_kind['duplicate_id'][0].message}")
    refused = [
        f"{len(by_kind[kind])} {what} ({listing([Path(p.path).stem for p in by_kind[kind]])})"
        for kind, what in _REFUSED.items()
        if kind in by_kind
    ]
    if refused:
        unmatched = {
            Path(p.path).stem for kind in _REFUSED if kind in by_kind for p in by_kind[kind]
        }
        damaged = [  # the partner is there but its content is no image (empty, damaged)
            str(root / p.path)
            for p in by_kind.get("not_image", [])
            if Path(p.path).stem in unmatched
        ]
        hint = f"; not an image (empty or damaged): {listing(damaged)}" if damaged else ""
        raise UnetError(
            f"{root}: {' and '.join(refused)}{hint}; images/<id>.png needs masks/<id>.png "
            "(`unet prepare` pairs them and skips the unmatched ones)"
        )
    if not found.items:
        raise UnetError(f"{image_dir}: no images found; run `unet prepare SRC {root}` first")
    notes: list[str] = []
    for folder in (image_dir, mask_dir):
        ignored = [
            Path(p.path).name
            for p in by_kind.get("not_image", [])
            if (root / p.path).parent == folder
        ]
        if ignored:
            notes.append(f"{folder}: ignored {len(ignored)} non-image file(s) ({listing(ignored)})")
    info = None
    if (root / dataset_json.FILE).is_file():
        info = dataset_json.read(root)
    else:
        notes.append(
            f"{root}: no dataset.json (not written by `unet prepare`?); images and masks "
            "paired by file stem, no recorded split or label map"
        )
    data = PreparedData(
        root=root,
        image_dir=image_dir,
        mask_dir=mask_dir,
        images={item.id: item.image for item in sorted(found.items, key=lambda i: i.id)},
        masks={item.id: item.masks[0] for item in sorted(found.items, key=lambda i: i.id)},
        info=info,
        notes=notes,
    )
    for note in notes:
        log.warning(note)
    return data


def infer_channels(paths: Iterable[os.PathLike | str], max_decode: int = 20) -> int:
    """3 if any image is true colour, else 1; gray stored as RGB counts as gray.

    Headers are read for every file; up to ``max_decode`` colour files are decoded to
    tell gray-as-RGB (identical channels) from real colour.

    Raises:
        UnetError: An image is missing or unreadable.
    """
    decoded = 0
    for path in paths:
        if imageio.read_header(path).channels < 3:
            continue
        if decoded >= max_decode:
            return 3
        decoded += 1
        image = imageio.read_image(path)
        if image.ndim == 3 and not imageio.is_gray_as_rgb(image):
            return 3
    return 1


# ----------------------------------------------------------------------------- split


def check_mask_size(mask_path: Path, image_path: Path, mask: np.ndarray, header: Any) -> None:
    """Refuse a mask whose size differs from its image's (``header`` from ``read_header``).

    Raises:
        UnetError: Naming the mask, both sizes and what to do.
    """
    if (header.height, header.width) != mask.shape:
        raise UnetError(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
            f"{image_path.name} is {header.width}x{header.height}; masks must match their "
            "images (`unet prepare` reports and skips such pairs)"
        )


def split_ids(ids: Iterable[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split by id.

    The ids are sorted, permuted with ``numpy.random.default_rng(seed)`` and the first
    ``round(val_fraction * n)`` (at least 1 when ``val_fraction > 0`` and ``n >= 2``, at
    most ``n - 1``: training keeps one) go to validation. The same ids, fraction and seed
    give the same split on any machine, whatever order the ids came in.

    Args:
        ids: The ids (duplicates are an error).
        val_fraction: Fraction for validation, in ``[0, 1)``.
        seed: Seed of the permutation.

    Returns:
        ``(train_ids, val_ids)``, each sorted, disjoint, together all ids.

    Raises:
        UnetError: ``val_fraction`` outside ``[0, 1)``, or duplicate ids.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UnetError(f"val-fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(ids)
    if len(set(ordered)) != len(ordered):
        raise UnetError("split_ids: the ids contain duplicates")
    n = len(ordered)
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - 1, 0))  # training keeps at least one id
    perm = np.random.default_rng(seed).permutation(n)
    val = sorted(ordered[i] for i in perm[:n_val])
    train = sorted(ordered[i] for i in perm[n_val:])
    return train, val


def check_split(split: dict[str, list[str]], data: str | os.PathLike) -> None:
    """Refuse a split that training cannot use: no training or no validation ids.

    Raises:
        UnetError: One line naming the data folder and what to do.
    """
    if not split["train"]:
        raise UnetError(f"{data}: no training images left after the validation split")
    if not split["val"]:
        if len(split["train"]) < 2:
            raise UnetError(
                f"{data}: one image; training needs at least two (one to validate on): add "
                "images, or pass --overfit-batch to check that the network can fit this one"
            )
        raise UnetError(
            f"{data}: the validation split is empty; raise --val-fraction or add images"
        )
