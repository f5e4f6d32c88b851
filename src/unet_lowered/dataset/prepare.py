"""``unet prepare`` and ``unet check``: any known data set layout -> one canonical layout.

The canonical layout every later stage reads::

    DEST/train/images/<id>.png    the image, content kept (see below)
    DEST/train/masks/<id>.png     8-bit mask: 0/255 (binary) or 0..K-1 (--classes)
    DEST/test/<id>.png            test images (no masks)
    DEST/dataset.json             every id with split, size, channels, bit depth and
                                  foreground fraction; the source layout; the label map;
                                  every problem found

Images keep their content: gray or RGB PNG (8 or 16 bit) are copied byte for byte;
anything else (JPEG, TIFF, BMP, DICOM, palette or alpha PNG) is re-encoded as lossless
PNG, 16-bit kept 16-bit, alpha dropped. Masks are binarised by the rules of
:mod:`unet_lowered.dataset.masks`. Source layouts are described in
:mod:`unet_lowered.dataset.layouts`; the fields of ``dataset.json`` in
:mod:`unet_lowered.dataset.dataset_json`; the printed summary is
:func:`unet_lowered.dataset.report.print_report`.

Bad pairs are skipped and reported (one line each, naming the file); an empty mask is
kept but reported. :func:`prepare` never writes inside the source, builds ``DEST`` in a
temporary folder beside it and renames it at the end.
"""

from __future__ import annotations

import datetime
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from unet_lowered.dataset import dataset_json, masks
from unet_lowered.dataset.dataset_json import SPLITS
from unet_lowered.dataset.layouts import Item, Problem, Scan, scan
from unet_lowered.errors import MissingExtraError, UnetError
from unet_lowered.io import atomic, images
from unet_lowered.io.images import DEFAULT_MAX_PIXELS
from unet_lowered.io.progress import track

WORKERS = min(4, os.cpu_count() or 1)
"""Threads that decode and write images (OpenCV releases the GIL while decoding)."""

__all__ = ["DatasetError", "Entry", "Problem", "Report", "check", "prepare", "prepared_pairs"]


class DatasetError(UnetError):
    """``prepare`` found no usable pair, or problems under ``--strict``; carries the report."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class Entry:
    """One good image (with its mask, except in the test split), as read and as written.

    Attributes:
        id: The id; output files are ``<id>.png``.
        split: ``"train"``, ``"val"`` (written under ``train/``, recorded as val) or ``"test"``.
        source_image: The source image, relative to the source folder.
        source_masks: The source mask file(s), relative to the source folder.
        height: Image height in pixels.
        width: Image width in pixels.
        channels: 1 (gray) or 3 (RGB), as stored in the output.
        bit_depth: 8 or 16.
        format: The source image's format (``png``, ``jpeg``, ``tiff``, ``bmp``, ``dicom``).
        copied: True when the image was copied byte for byte, False when re-encoded.
        gray_as_rgb: The image is RGB with three equal channels.
        foreground_fraction: Fraction of mask pixels that are foreground (None for test).
        image: The output image, relative to DEST (None for ``check``).
        mask: The output mask, relative to DEST (None for test images and ``check``).
        notes: Remarks on this item (re-encoding, alpha dropped, mask rule).
    """

    id: str
    split: str
    source_image: str
    source_masks: list[str]
    height: int
    width: int
    channels: int
    bit_depth: int
    format: str
    copied: bool
    gray_as_rgb: bool
    foreground_fraction: float | None = None
    image: str | None = None
    mask: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Report:
    """The outcome of :func:`check` or :func:`prepare`.

    Attributes:
        source: The data folder that was read.
        layout: The layout found (``kaggle``, ``instances``, ``flat``, ``montgomery``,
            ``prepared``).
        mode: ``"binary"`` or ``"classes"``.
        entries: The good items, train/val pairs and test images.
        problems: Every problem, one per file (kind, path relative to ``source``, message).
        notes: Remarks that are not problems (gray stored as RGB, JPEG mask thresholded...).
        skipped: ``"<split>/<id>"`` of the pairs left out because of a problem.
        label_values: Multi-class mode: the original mask value of each class; else None.
        foreground: The ``--foreground`` values, or None.
        class_names: Multi-class mode with ``--class-names``: a name per class,
            ``"background"`` first; else None.
        dest: The written folder (None for :func:`check` or when nothing was written).
    """

    source: Path
    layout: str
    mode: str = "binary"
    entries: list[Entry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    label_values: list[int] | None = None
    foreground: list[int] | None = None
    dest: Path | None = None
    class_names: list[str] | None = None

    @property
    def pairs(self) -> list[Entry]:
        """The good image/mask pairs (train and val)."""
        return [e for e in self.entries if e.split != "test"]

    @property
    def test_images(self) -> list[Entry]:
        return [e for e in self.entries if e.split == "test"]

    def counts(self) -> dict[str, Any]:
        """Pairs per split, skipped pairs, problems and notes by kind."""
        per_split = Counter(e.split for e in self.entries)
        return {
            **{s: per_split.get(s, 0) for s in SPLITS},
            "skipped": len(self.skipped),
            "problems": dict(sorted(Counter(p.kind for p in self.problems).items())),
            "notes": dict(sorted(Counter(n.kind for n in self.notes).items())),
        }

    def ok(self, strict: bool = False) -> bool:
        """True when at least one good pair remains (and, if ``strict``, no problem at all)."""
        return bool(self.pairs) and not (strict and self.problems)

    def to_json(self) -> dict[str, Any]:
        """The content of ``dataset.json``."""
        num_classes = len(self.label_values) if self.label_values is not None else 1
        return {
            "format": dataset_json.FORMAT,
            "version": dataset_json.VERSION,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "source": str(self.source),
            "layout": self.layout,
            "mode": self.mode,
            "num_classes": num_classes,
            "label_values": self.label_values,
            "class_names": self.class_names,
            "label_map": (
                {str(v): k for k, v in enumerate(self.label_values)}
                if self.label_values is not None
                else None
            ),
            "foreground": self.foreground,
            "mask_values": "class index 0..K-1" if self.label_values is not None else "0/255",
            "counts": self.counts(),
            "items": [e.as_dict() for e in self.entries],
            "problems": [p.as_dict() for p in self.problems],
            "notes": [n.as_dict() for n in self.notes],
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class _Options:
    foreground: tuple[int, ...] | None
    classes: bool
    max_pixels: int
    class_names: tuple[str, ...] | None = None


# ---------------------------------------------------------------- public API


def check(
    path: str | os.PathLike,
    *,
    layout: str | None = None,
    images_dir: str | os.PathLike | None = None,
    masks_dir: str | os.PathLike | None = None,
    foreground: str | Sequence[int] | None = None,
    classes: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> Report:
    """Validate a source or prepared folder without writing anything.

    Reads every image and mask exactly as :func:`prepare` would and reports the same
    problems. A prepared multi-class folder is checked in multi-class mode.

    Args:
        path: The data folder.
        layout: Source layout (``kaggle``, ``instances``/``dsb2018``, ``flat``,
            ``montgomery``); None detects it.
        images_dir: Flat layout: the image folder (relative to ``path`` or absolute).
        masks_dir: Flat layout: the mask folder.
        foreground: Mask values that count as foreground (``"255"``, ``"1,2"``, ``"1-3"``);
            None applies the automatic rules.
        classes: Multi-class mode: keep label values, mapped to 0..K-1.
        max_pixels: Refuse images with more pixels than this, before decoding.
        progress: Show a progress bar on stderr.

    Returns:
        The :class:`Report`; use ``report.ok(strict)`` to decide success.

    Raises:
        UnetError: ``path`` is missing or its layout is unknown or ambiguous; bad options.
    """
    found = scan(path, layout, images_dir, masks_dir)
    if found.layout == "prepared" and foreground is None and not classes:
        try:
            classes = dataset_json.read(found.root).mode == "classes"
        except UnetError:
            pass  # a damaged dataset.json: check the files as a plain flat folder
    return _convert(found, None, _options(foreground, classes, max_pixels), progress)


def prepare(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    layout: str | None = None,
    images_dir: str | os.PathLike | None = None,
    masks_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    strict: bool = False,
    foreground: str | Sequence[int] | None = None,
    classes: bool = False,
    class_names: str | Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> Report:
    """Convert the data set in ``src`` into the canonical layout in ``dest``.

    Args:
        src: The source folder; never written to.
        dest: The output folder; must not lie inside ``src`` (nor ``src`` inside it).
        layout: Source layout (``kaggle``, ``instances``/``dsb2018``, ``flat``,
            ``montgomery``); None detects it.
        images_dir: Flat layout: the image folder (relative to ``src`` or absolute).
        masks_dir: Flat layout: the mask folder.
        overwrite: Replace an existing ``dest`` that ``unet prepare`` wrote (or an empty
            folder); any other folder or file is refused.
        strict: Fail (write nothing) on any problem, even an empty mask.
        foreground: Mask values that count as foreground (``"255"``, ``"1,2"``, ``"1-3"``).
        classes: Multi-class mode: keep label values, mapped to 0..K-1 (the map goes into
            ``dataset.json``).
        class_names: With ``classes``: a name for each class but the background, in the
            order of their mask values (``"left lung,right lung,heart"`` or a list);
            recorded in ``dataset.json`` and shown by the pictures and ``unet serve``.
        max_pixels: Refuse images with more pixels than this, before decoding.
        progress: Show a progress bar on stderr.

    Returns:
        The :class:`Report` of what was written (``report.dest`` is set).

    Raises:
        DatasetError: No usable pair, or problems under ``strict``; ``dest`` is left as it
            was; the exception's ``report`` lists the problems.
        UnetError: Bad paths or options; unknown or ambiguous layout; ``dest`` exists
            without ``overwrite``.
    """
    src_path, dest_path = Path(src), Path(dest)
    _check_paths(src_path, dest_path, overwrite)
    options = _options(foreground, classes, max_pixels)
    names = _parse_class_names(class_names, classes)
    options = replace(options, class_names=None if names is None else tuple(names))
    found = scan(src_path, layout, images_dir, masks_dir)
    with atomic.atomic_dir(dest_path, overwrite=overwrite) as build:
        report = _convert(found, build, options, progress)
        if not report.pairs:
            raise DatasetError(
                f"{src_path}: no usable image/mask pair; nothing written (see the problems above)",
                report,
            )
        if strict and report.problems:
            raise DatasetError(
                f"{len(report.problems)} problem(s) and --strict is set; nothing written to {dest_path}",
                report,
            )
        atomic.write_json(build / dataset_json.FILE, report.to_json())
    report.dest = dest_path
    return report


def prepared_pairs(
    dest: str | os.PathLike, splits: Iterable[str] = ("train", "val")
) -> list[tuple[str, Path, Path]]:
    """``(id, image path, mask path)`` of a prepared folder's pairs, as ``dataset.json`` lists.

    Args:
        dest: A prepared folder.
        splits: Which recorded splits to return (``"val"`` items lie in ``train/`` too).

    Raises:
        UnetError: Not a prepared folder.
    """
    root = Path(dest)
    wanted = set(splits)
    return [
        (item["id"], root / item["image"], root / item["mask"])
        for item in dataset_json.read(root).items
        if item["split"] in wanted and item.get("mask")
    ]


# ---------------------------------------------------------------- the work


def _options(foreground: str | Sequence[int] | None, classes: bool, max_pixels: int) -> _Options:
    values = masks.parse_values(foreground)
    if classes and values is not None:
        raise UnetError(
            "--classes keeps every label value; it cannot be combined with --foreground"
        )
    if max_pixels < 1:
        raise UnetError(f"--max-pixels must be positive, got {max_pixels}")
    return _Options(values, classes, int(max_pixels))


def _parse_class_names(names: str | Sequence[str] | None, classes: bool) -> list[str] | None:
    """``--class-names`` as a list (comma-separated text or a list), checked for --classes."""
    if names is None:
        return None
    if not classes:
        raise UnetError("--class-names names the classes of --classes; add --classes")
    return [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]


def _named_classes(names: list[str], label_values: list[int]) -> list[str]:
    """``["background", *names]`` once it names every class the masks hold, each once."""
    found = label_values[1:]
    if len(names) != len(found):
        raise UnetError(
            f"--class-names gives {len(names)} name(s), but the masks hold {len(found)} "
            f"class(es) besides the background (mask values {', '.join(map(str, found))}); "
            "give one name per class, in the order of their mask values"
        )
    full = ["background", *names]
    if dataset_json.check_class_names(full, len(full)) is None:
        raise UnetError(
            f"--class-names {','.join(names)!r}: each name must be different (and not "
            f"'background'), not empty, at most {dataset_json.MAX_NAME} characters, with "
            "no control characters"
        )
    return full


def _check_paths(src: Path, dest: Path, overwrite: bool) -> None:
    """Refuse a DEST inside SRC, SRC inside DEST, or DEST == SRC."""
    if not src.is_dir():
        what = "a file, not a folder" if src.exists() else "no such folder"
        raise UnetError(f"{src}: {what}; give the folder that holds the data set")
    s, d = src.resolve(), dest.resolve()
    if d == s or s in d.parents:
        raise UnetError(
            f"{dest} lies inside the source {src}; prepare never writes into its source, "
            "choose an output folder outside it"
        )
    if d in s.parents:
        raise UnetError(
            f"the source {src} lies inside {dest}; replacing {dest} would delete the source, "
            "choose another output folder"
        )
    if dest.exists() and not overwrite:
        raise UnetError(
            f"{dest} already exists; pass --overwrite to replace it or choose another folder"
        )
    if dest.exists() and not (dest / dataset_json.FILE).is_file():  # --overwrite given
        if not dest.is_dir() or any(dest.iterdir()):
            raise UnetError(
                f"{dest} is not a folder `unet prepare` wrote (no {dataset_json.FILE}); "
                "refusing to overwrite it; choose another output folder"
            )


class _Skip(Exception):
    """A pair cannot be used; the problem is already recorded."""


@dataclass
class _Log:
    """Problems and notes of one item (collected per thread, merged in order)."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)


def _convert(found: Scan, out: Path | None, options: _Options, progress: bool) -> Report:
    """Read, validate and (when ``out`` is given) write every item of a scan."""
    report = Report(
        source=found.root,
        layout=found.layout,
        mode="classes" if options.classes else "binary",
        problems=list(found.problems),
        notes=list(found.notes),
        foreground=list(options.foreground) if options.foreground is not None else None,
    )
    label_values = None
    items = found.items
    if options.classes:
        items, label_values = _collect_labels(found, items, report, options, progress)
        report.label_values = [int(v) for v in label_values]
        if options.class_names is not None:  # before any file is converted
            report.class_names = _named_classes(list(options.class_names), report.label_values)
    if out is not None:
        for sub in ("train/images", "train/masks", "test"):
            (out / sub).mkdir(parents=True, exist_ok=True)

    def work(item: Item) -> tuple[Entry | None, _Log]:
        log = _Log()
        try:
            return _convert_item(found, item, out, options, label_values, log), log
        except _Skip:
            return None, log

    results = _parallel(work, items)
    for item, (entry, log) in track(
        zip(items, results, strict=True),
        len(items),
        progress,
        "Converting" if out is not None else "Checking",
    ):
        report.problems.extend(log.problems)
        report.notes.extend(log.notes)
        if entry is None:
            report.skipped.append(f"{item.split}/{item.id}")
        else:
            report.entries.append(entry)
    report.entries.sort(key=lambda e: (SPLITS.index(e.split), e.id))
    _refuse_absent_foreground(found, items, report, options)
    return report


def _refuse_absent_foreground(
    found: Scan, items: list[Item], report: Report, options: _Options
) -> None:
    """``--foreground`` values that no mask holds (``1`` for masks of 0/255) are an error,
    with the values the masks do hold, rather than a data set of empty masks."""
    with_masks = [e for e in report.entries if e.split != "test"]
    if options.foreground is None or options.classes or not with_masks:
        return
    if any(e.foreground_fraction for e in with_masks):
        return
    seen: set[int] = set()
    for item in [i for i in items if i.masks][:8]:
        try:
            mask, _ = _read(found, item.masks[0], options, _Log())
        except _Skip:
            continue
        seen.update(int(v) for v in np.unique(mask))
    given = ",".join(str(v) for v in options.foreground)
    held = f"values seen: {', '.join(map(str, sorted(seen)))}" if seen else "no mask readable"
    others = sorted(seen - {0})
    values = ",".join(map(str, others)) if len(others) <= 4 else f"{others[0]}-{others[-1]}"
    advice = f"pass --foreground {values}" if others else "check the masks"
    raise UnetError(
        f"{found.root}: no mask holds --foreground {given} ({held}); "
        f"{advice}, or leave --foreground out to use the masks' own rule"
    )


def _collect_labels(
    found: Scan, items: list[Item], report: Report, options: _Options, progress: bool
) -> tuple[list[Item], np.ndarray]:
    """Multi-class mode, first pass: the label values of all masks (sorted)."""

    def work(item: Item) -> tuple[set[int] | None, _Log]:
        log = _Log()
        values: set[int] = set()
        for path in item.masks:
            try:
                mask, fmt = _read(found, path, options, log)
                values.update(int(v) for v in masks.label_values(mask, lossy=fmt == "jpeg")[0])
            except masks.MaskValuesError as e:
                _problem(log, found, "mask_values", path, str(e))
                return None, log
            except _Skip:
                return None, log
        return values, log

    seen: set[int] = set()
    kept = []
    results = _parallel(work, items)
    for item, (values, log) in track(
        zip(items, results, strict=True), len(items), progress, "Label values"
    ):
        report.problems.extend(log.problems)
        if values is None:
            report.skipped.append(f"{item.split}/{item.id}")
        else:
            seen.update(values)
            kept.append(item)
    if len(seen) > masks.MAX_CLASSES:
        raise UnetError(
            f"{found.root}: the masks hold {len(seen)} distinct values, more than the "
            f"{masks.MAX_CLASSES} classes --classes accepts; are these label images?"
        )
    return kept, np.array(sorted(seen or {0}))


def _parallel(fn: Callable[[Item], Any], items: Sequence[Item]) -> Iterator[Any]:
    """``map(fn, items)`` on a few threads (decoding releases the GIL), results in order."""
    if WORKERS <= 1 or len(items) < 2:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    try:
        yield from pool.map(fn, items)
    finally:  # on Ctrl-C or an error, drop the queued items instead of finishing them all
        pool.shutdown(wait=True, cancel_futures=True)


def _convert_item(
    found: Scan,
    item: Item,
    out: Path | None,
    options: _Options,
    label_values: np.ndarray | None,
    log: _Log,
) -> Entry:
    header = _header(found, item.image, options, log)
    image, _ = _read(found, item.image, options, log, header)
    notes: list[tuple[str, str]] = []  # (kind of NOTE_KINDS, text)
    gray_as_rgb = images.is_gray_as_rgb(image)
    if gray_as_rgb:
        notes.append(("gray_as_rgb", "gray stored as RGB"))
    if header.channels in (2, 4):
        notes.append(("alpha_dropped", "alpha channel dropped"))
    copied = _png_copyable(item.image, header)
    if not copied:
        notes.append(("reencoded", f"{header.format.upper()} re-encoded as lossless PNG"))
    entry = Entry(
        id=item.id,
        split=item.split,
        source_image=found.rel(item.image),
        source_masks=[found.rel(m) for m in item.masks],
        height=int(image.shape[0]),
        width=int(image.shape[1]),
        channels=1 if image.ndim == 2 else 3,
        bit_depth=16 if image.dtype == np.uint16 else 8,
        format=header.format,
        copied=copied,
        gray_as_rgb=gray_as_rgb,
    )
    mask = None
    if item.split != "test":
        mask = _merged_mask(found, item, image.shape[:2], options, label_values, log, notes)
        entry.foreground_fraction = round(float(np.count_nonzero(mask)) / mask.size, 6)
        if entry.foreground_fraction == 0:
            _problem(
                log,
                found,
                "empty_mask",
                item.masks[0] if len(item.masks) == 1 else item.masks[0].parent,
                "mask has no foreground; kept (an image may show no object), "
                "but check it is not a wrong value or a blank file",
            )
    entry.notes = [text for _, text in notes]
    for kind, text in notes:
        log.notes.append(Problem(kind, entry.source_image, f"{entry.source_image}: {text}"))
    if out is not None:
        folder = "test" if item.split == "test" else "train/images"
        entry.image = f"{folder}/{item.id}.png"
        if copied:
            shutil.copyfile(item.image, out / entry.image)
        else:
            images.write_png(out / entry.image, image)
        if mask is not None:
            entry.mask = f"train/masks/{item.id}.png"
            images.write_png(out / entry.mask, mask)
    return entry


def _merged_mask(
    found: Scan,
    item: Item,
    shape: tuple[int, ...],
    options: _Options,
    label_values: np.ndarray | None,
    log: _Log,
    notes: list[tuple[str, str]],
) -> np.ndarray:
    """Read, check and merge an item's mask files: ``(H, W)`` uint8, 0/255 or 0..K-1."""
    merged = np.zeros(shape, np.uint8 if label_values is None else np.uint16)
    for path in item.masks:
        header = _header(found, path, options, log)
        if (header.height, header.width) != tuple(shape):
            _problem(
                log,
                found,
                "size_mismatch",
                path,
                f"mask is {header.width}x{header.height} but its image "
                f"{found.rel(item.image)} is {shape[1]}x{shape[0]}; "
                "a mask must match its image pixel for pixel",
            )
            raise _Skip
        mask, fmt = _read(found, path, options, log, header)
        try:
            if label_values is not None:
                single, note = masks.to_single_channel(mask)
                merged = np.maximum(merged, single)
            else:
                result = masks.binarize(mask, options.foreground, lossy=fmt == "jpeg")
                merged[result.mask] = 255
                note = result.note
        except masks.MaskValuesError as e:
            _problem(log, found, "mask_values", path, str(e))
            raise _Skip from None
        if note and ("mask_rule", f"mask: {note}") not in notes:
            notes.append(("mask_rule", f"mask: {note}"))
    if label_values is None:
        return merged
    try:
        return masks.to_labels(merged, label_values)
    except masks.MaskValuesError as e:  # cannot happen after the first pass, but be safe
        _problem(log, found, "mask_values", item.masks[0], str(e))
        raise _Skip from None


def _header(found: Scan, path: Path, options: _Options, log: _Log) -> images.ImageHeader:
    try:
        header = images.read_header(path)
    except MissingExtraError:  # the files are fine; the environment lacks an extra
        raise
    except UnetError as e:
        _problem(log, found, "unreadable", path, _strip_path(str(e), path))
        raise _Skip from None
    if header.pixels > options.max_pixels:
        _problem(
            log,
            found,
            "too_large",
            path,
            f"{header.width}x{header.height} is {header.pixels / 1e6:.1f} megapixels, over the "
            f"limit of {options.max_pixels / 1e6:g}; raise --max-pixels if the image is real",
        )
        raise _Skip
    return header


def _read(
    found: Scan,
    path: Path,
    options: _Options,
    log: _Log,
    header: images.ImageHeader | None = None,
) -> tuple[np.ndarray, str]:
    """Decode ``path`` (after the pixel-limit check); a failure is recorded and skips the pair."""
    if header is None:
        header = _header(found, path, options, log)
    try:
        return images.read_image(path, options.max_pixels), header.format
    except MissingExtraError:
        raise
    except UnetError as e:
        _problem(log, found, "unreadable", path, _strip_path(str(e), path))
        raise _Skip from None


def _png_copyable(path: Path, header: images.ImageHeader) -> bool:
    """True for a gray or RGB PNG of 8 or 16 bits (colour type 0 or 2), kept byte for byte."""
    if header.format != "png" or header.channels not in (1, 3):
        return False
    with open(path, "rb") as f:
        head = f.read(26)
    return head[25] in (0, 2) and head[24] in (8, 16)


def _problem(log: _Log, found: Scan, kind: str, path: Path, text: str) -> None:
    rel = found.rel(path)
    log.problems.append(Problem(kind, rel, f"{rel}: {text}"))


def _strip_path(message: str, path: Path) -> str:
    """Drop the ``<path>: `` prefix of an images.py message (the caller adds a relative one)."""
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
