"""``dataset.json``: the one description of a prepared folder, and its one reader.

``unet prepare`` writes it (:meth:`unet_lowered.dataset.prepare.Report.to_json`);
training, evaluation, ``unet check`` and the plots read it only through
:func:`read`, which is strict: a file that is not ours, from a newer version, or
with a field of the wrong type is refused with one line that says what to do,
never half-understood. The fields every reader relies on::

    format        "unet-lowered-dataset"
    version       1
    layout        the source layout (kaggle, instances, flat, montgomery, prepared)
    mode          "binary" (masks 0/255) or "classes" (masks 0..K-1)
    num_classes   1, or K for --classes
    label_values  the original mask value of each class (--classes), else null
    class_names   a name per class, background first (--class-names), else null or absent
    items         [{id, split: train|val|test, image, mask, height, width, channels,
                    bit_depth, foreground_fraction, ...}]
    problems, notes, counts, skipped: the report of the conversion
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet_lowered.errors import UnetError

FILE = "dataset.json"
FORMAT = "unet-lowered-dataset"
VERSION = 1
SPLITS = ("train", "val", "test")
MODES = ("binary", "classes")


@dataclass(frozen=True)
class DatasetInfo:
    """A checked ``dataset.json``.

    Attributes:
        path: The file.
        version: Its version.
        layout: The source layout it was prepared from.
        mode: ``"binary"`` or ``"classes"``.
        num_classes: 1 (binary) or the number of classes.
        label_values: The original mask value of each class, or None.
        class_names: A name per class (background first), or None.
        splits: ``{id: "train" | "val" | "test"}`` for every item.
        meta: The whole parsed file (the report fields included).
    """

    path: Path
    version: int
    layout: str
    mode: str
    num_classes: int
    label_values: tuple[int, ...] | None
    class_names: tuple[str, ...] | None
    splits: Mapping[str, str]
    meta: Mapping[str, Any]

    @property
    def items(self) -> list[dict[str, Any]]:
        """The per-image records, as written."""
        return list(self.meta["items"])


def read(folder: str | os.PathLike) -> DatasetInfo:
    """Read and check the ``dataset.json`` of a prepared folder.

    Args:
        folder: A prepared folder, or the ``dataset.json`` file itself.

    Returns:
        The checked contents.

    Raises:
        UnetError: Missing, unreadable, not written by ``unet prepare``, from a newer
            version, or a field of the wrong type; the message names the file.
    """
    path = Path(folder)
    if path.is_dir():
        path = path / FILE
    if not path.is_file():
        raise UnetError(
            f"{path}: no such file; is {path.parent} a prepared folder? "
            "Make one with: unet prepare SRC DEST"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UnetError(
            f"{path}: unreadable ({e}); re-run `unet prepare` or delete the file"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UnetError(
            f'{path}: not a dataset.json written by `unet prepare` (no "format": "{FORMAT}"); '
            "re-run `unet prepare SRC DEST` and use DEST, or move the file away"
        )
    version = meta.get("version")
    if not _whole(version) or version < 1:
        raise UnetError(f"{path}: version must be a positive whole number, got {version!r}")
    if version > VERSION:
        raise UnetError(
            f"{path}: dataset.json version {version} is newer than this unet-lowered reads "
            f"({VERSION}); upgrade the package"
        )

    def bad(field: str, expected: str) -> UnetError:
        return UnetError(
            f"{path}: {field} must be {expected}, got {meta.get(field)!r}; re-run `unet prepare`"
        )

    mode = meta.get("mode")
    if mode not in MODES:
        raise bad("mode", " or ".join(MODES))
    num_classes = meta.get("num_classes")
    if not _whole(num_classes) or num_classes < 1:
        raise bad("num_classes", "a positive whole number")
    label_values = meta.get("label_values")
    if label_values is not None:
        if not (isinstance(label_values, list) and all(_whole(v) for v in label_values)):
            raise bad("label_values", "a list of whole numbers or null")
        if mode == "classes" and len(label_values) != num_classes:
            raise bad("label_values", f"one value per class ({num_classes})")
    class_names = meta.get("class_names")
    if class_names is not None and check_class_names(class_names, int(num_classes)) is None:
        raise bad("class_names", f"a list of {num_classes} different names (background first)")
    items = meta.get("items")
    if not isinstance(items, list):
        raise bad("items", "a list")
    splits: dict[str, str] = {}
    for k, item in enumerate(items):
        ok = isinstance(item, dict) and isinstance(item.get("id"), str)
        if not ok or item.get("split") not in SPLITS:
            raise UnetError(
                f"{path}: items[{k}] needs an 'id' and a 'split' ({', '.join(SPLITS)}); "
                "re-run `unet prepare`"
            )
        if item["split"] != "test":  # a test image may share an id with a training pair
            splits[item["id"]] = item["split"]
    return DatasetInfo(
        path=path,
        version=int(version),
        layout=str(meta.get("layout", "")),
        mode=mode,
        num_classes=int(num_classes),
        label_values=None if label_values is None else tuple(int(v) for v in label_values),
        class_names=None if class_names is None else tuple(class_names),
        splits=splits,
        meta=meta,
    )


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


MAX_NAME = 40
"""The longest class name (characters): it has to fit a legend and a table column."""


def check_class_names(names: Any, num_classes: int) -> tuple[str, ...] | None:
    """``names`` as a tuple when it names each of ``num_classes`` classes (background
    first) with different, non-empty, printable names of at most :data:`MAX_NAME`
    characters; else None (the caller says where the names came from)."""
    if not isinstance(names, list | tuple) or len(names) != num_classes or num_classes < 2:
        return None
    ok = all(
        isinstance(n, str) and n.strip() == n and 0 < len(n) <= MAX_NAME and n.isprintable()
        for n in names
    )
    return tuple(names) if ok and len(set(names)) == len(names) else None
