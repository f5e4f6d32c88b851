"""The training input pipeline: pair, split, decode once into memory, augment, batch.

Steps, each a small public piece:

1. :func:`load_prepared` pairs ``images/<id>.*`` with ``masks/<id>.*`` by file stem
   (a prepared folder ``DATA/train/{images,masks}`` + ``DATA/dataset.json``, or any
   folder with ``images/`` and ``masks/``) and reads the split and label map that
   ``dataset.json`` records.
2. :func:`split_ids` (or :meth:`PreparedData.split`) makes a deterministic
   train/validation split by id.
3. :class:`SampleCache` decodes every image and mask once, through the same
   preprocessing as prediction (:mod:`unet_lowered.preprocess`: channels, optional
   CLAHE, min-max scaling to ``[0, 1]``, resize), and keeps them in memory; weight
   maps for ``weighted-bce`` are computed once per mask and kept too.
4. :class:`SegmentationSequence` (a ``keras.utils.PyDataset``) augments on the fly
   (:mod:`unet_lowered.augment`), standardises each image and yields NumPy batches,
   so it works with every Keras backend; on TensorFlow, :func:`as_tf_dataset` hands
   the same batches to ``fit`` without tf.data's autotuning stalls, made ahead on a
   lowest-priority thread so that they do not slow the training step.

Memory: cached images are stored as ``uint16`` (the ``[0, 1]`` values times 65535):
the same two bytes per value as float16 but with uniform 16-bit precision, so
16-bit X-rays lose nothing. A gray 256x256 sample takes 128 KiB for the image and
64 KiB for the mask (+128 KiB float16 weight map): 200 samples are 37.5 MiB
(62.5 MiB with weights). In ``crop`` mode images are kept at full size; when the
estimate from the file headers exceeds ``max_bytes`` (default 4 GiB) nothing is
cached and every sample is decoded again when it is used (slower; a note says so).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from unet_lowered import images as imageio
from unet_lowered import preprocess
from unet_lowered.augment import AugmentConfig, augment
from unet_lowered.errors import UnetError

log = logging.getLogger(__name__)

INPUT_MODES = ("resize", "crop")
"""``resize``: every image resized to the training size; ``crop``: random crops of it."""

MASK_SUFFIXES = ("_mask", "-mask", "_masks", "_label", "_labels", "_seg", "_gt")
"""Suffixes a mask's file stem may carry in a flat ``images/`` + ``masks/`` folder."""

VAL_NAMES = frozenset({"val", "valid", "validation"})
"""Split names in ``dataset.json`` that mean validation (``train`` means training)."""

DEFAULT_CACHE_BYTES = 4 * 2**30
"""Cache at most this many bytes of decoded samples (4 GiB); beyond it decode on use."""

EMPTY_FRACTION = 0.001
"""Masks with foreground below this fraction (0.1%) count as nearly empty."""

FULL_FRACTION = 0.95
"""Masks with foreground above this fraction count as nearly all foreground."""

_RECORD_KEYS = ("ids", "items", "pairs", "samples", "cases", "images", "entries", "files")
_LABEL_KEYS = ("label_values", "label_map", "labels")
_MAX_LISTED = 5


# ----------------------------------------------------------------------------- pairing


@dataclass
class PreparedData:
    """Image/mask pairs of a data folder and what its ``dataset.json`` says about them.

    Attributes:
        root: The data folder given.
        image_dir: Folder of the images.
        mask_dir: Folder of the masks.
        images: Image path per id.
        masks: Mask path per id.
        recorded_split: ``"train"`` or ``"val"`` per id, from ``dataset.json``
            (empty when it records none).
        label_values: Original mask value per class from ``dataset.json``'s label map,
            or None (binary data, or no map).
        meta: The parsed ``dataset.json`` (empty dict when absent).
        notes: Warnings found while reading (missing ``dataset.json``, ignored files).
    """

    root: Path
    image_dir: Path
    mask_dir: Path
    images: dict[str, Path]
    masks: dict[str, Path]
    recorded_split: dict[str, str] = field(default_factory=dict)
    label_values: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        """All paired ids, sorted."""
        return sorted(self.images)

    @property
    def num_classes(self) -> int:
        """``num_classes`` from ``dataset.json``; else 1 (binary) unless the label map has
        more than two classes."""
        recorded = self.meta.get("num_classes")
        if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1:
            return recorded
        if self.label_values is not None and len(self.label_values) > 2:
            return len(self.label_values)
        return 1

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
        if use_recorded and any(s == "val" for s in self.recorded_split.values()):
            ids = self.ids
            return {
                "train": [i for i in ids if self.recorded_split.get(i) != "val"],
                "val": [i for i in ids if self.recorded_split.get(i) == "val"],
            }
        train, val = split_ids(self.ids, val_fraction, seed)
        return {"train": train, "val": val}


def load_prepared(data_dir: str | os.PathLike) -> PreparedData:
    """Pair the images and masks of a data folder by file stem.

    Accepts the folder ``unet prepare`` writes (``train/images``, ``train/masks``,
    ``dataset.json``) or any folder with ``images/`` and ``masks/``. A mask may carry
    a suffix such as ``_mask`` after the image's stem (:data:`MASK_SUFFIXES`).

    Args:
        data_dir: The data folder.

    Returns:
        The pairs, with the split and label map from ``dataset.json`` if present.

    Raises:
        UnetError: No such folder, no image/mask folders, duplicate ids, images
            without masks or masks without images (the message names them), no pairs,
            or an unreadable ``dataset.json``.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise UnetError(f"{root}: no such data folder; run `unet prepare SRC {root}` first")
    for sub in (root / "train", root):
        if (sub / "images").is_dir() and (sub / "masks").is_dir():
            image_dir, mask_dir = sub / "images", sub / "masks"
            break
    else:
        raise UnetError(
            f"{root}: no train/images + train/masks (as `unet prepare` writes) and no "
            "images/ + masks/ folders; run `unet prepare SRC DEST` and train on DEST"
        )
    notes: list[str] = []
    image_files = _image_files(image_dir, notes)
    mask_files = _image_files(mask_dir, notes)
    masks_by_id: dict[str, Path] = {}
    for stem, path in mask_files.items():
        key = stem if stem in image_files else _strip_mask_suffix(stem, image_files)
        if key in masks_by_id:
            raise UnetError(
                f"{mask_dir}: {masks_by_id[key].name} and {path.name} are both masks of "
                f"image id {key!r}; keep one"
            )
        masks_by_id[key] = path
    no_mask = sorted(set(image_files) - set(masks_by_id))
    no_image = sorted(set(masks_by_id) - set(image_files))
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} image(s) without a mask ({_listing(no_mask)})")
        if no_image:
            parts.append(f"{len(no_image)} mask(s) without an image ({_listing(no_image)})")
        raise UnetError(
            f"{root}: {' and '.join(parts)}; images/<id>.png needs masks/<id>.png "
            "(`unet prepare` pairs them and skips the unmatched ones)"
        )
    if not image_files:
        raise UnetError(f"{image_dir}: no images found; run `unet prepare SRC {root}` first")

    meta: dict[str, Any] = {}
    json_path = root / "dataset.json"
    if json_path.is_file():
        try:
            meta = json.loads(json_path.read_text())
        except (OSError, ValueError) as e:
            raise UnetError(
                f"{json_path}: unreadable ({e}); re-run `unet prepare` or delete the file"
            ) from None
        if not isinstance(meta, dict):
            raise UnetError(f"{json_path}: expected a JSON object; re-run `unet prepare`")
    else:
        notes.append(
            f"{root}: no dataset.json (not written by `unet prepare`?); images and masks "
            "paired by file stem, no recorded split or label map"
        )
    split = {i: s for i, s in _recorded_split(meta).items() if i in image_files}
    data = PreparedData(
        root=root,
        image_dir=image_dir,
        mask_dir=mask_dir,
        images=dict(sorted(image_files.items())),
        masks=dict(sorted(masks_by_id.items())),
        recorded_split=split,
        label_values=_label_values(meta),
        meta=meta,
        notes=notes,
    )
    for note in notes:
        log.warning(note)
    return data


def _image_files(folder: Path, notes: list[str]) -> dict[str, Path]:
    """Image files of one folder by stem; duplicates of a stem are an error."""
    out: dict[str, Path] = {}
    ignored = []
    for path in imageio.iter_files(folder, recursive=False):
        if path.suffix.lower() not in imageio.IMAGE_SUFFIXES:
            ignored.append(path.name)
            continue
        if path.stem in out:
            raise UnetError(
                f"{folder}: {out[path.stem].name} and {path.name} have the same id "
                f"{path.stem!r}; keep one"
            )
        out[path.stem] = path
    if ignored:
        notes.append(f"{folder}: ignored {len(ignored)} non-image file(s) ({_listing(ignored)})")
    return out


def _strip_mask_suffix(stem: str, image_ids: Mapping[str, Path]) -> str:
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix) and stem[: -len(suffix)] in image_ids:
            return stem[: -len(suffix)]
    return stem


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _records(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Per-id records of a dataset.json, whichever of the usual shapes it has."""
    for key in _RECORD_KEYS:
        value = meta.get(key)
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            return {str(k): v for k, v in value.items()}
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out = {}
            for record in value:
                ident = record.get("id", record.get("name", record.get("stem")))
                if ident is not None:
                    out[str(ident)] = record
            return out
    return {}


def _recorded_split(meta: Mapping[str, Any]) -> dict[str, str]:
    """``{id: "train" | "val"}`` from per-id ``split`` fields or a ``splits`` mapping."""
    out: dict[str, str] = {}
    for ident, record in _records(meta).items():
        name = str(record.get("split", "")).lower()
        if name == "train" or name in VAL_NAMES:
            out[ident] = "val" if name in VAL_NAMES else "train"
    splits = meta.get("splits", meta.get("split"))
    if isinstance(splits, dict):
        for name, ids in splits.items():
            name = str(name).lower()
            if (name == "train" or name in VAL_NAMES) and isinstance(ids, list):
                out.update({str(i): "val" if name in VAL_NAMES else "train" for i in ids})
    return out


def _label_values(meta: Mapping[str, Any]) -> list[int] | None:
    """Original mask value per class from a label map, when it is unambiguous."""
    for key in _LABEL_KEYS:
        value = meta.get(key)
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            return [int(v) for v in value]
        if isinstance(value, dict) and value:
            try:  # {"original value": class index}
                pairs = sorted((int(c), int(v)) for v, c in value.items())
            except (TypeError, ValueError):
                continue
            if [c for c, _ in pairs] == list(range(len(pairs))):
                return [v for _, v in pairs]
    return None


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


def split_ids(ids: Iterable[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split by id.

    The ids are sorted, permuted with ``numpy.random.default_rng(seed)`` and the first
    ``round(val_fraction * n)`` (at least 1 when ``val_fraction > 0`` and ``n >= 2``)
    go to validation. The same ids, fraction and seed give the same split on any
    machine, whatever order the ids came in.

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
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    val = sorted(ordered[i] for i in perm[:n_val])
    train = sorted(ordered[i] for i in perm[n_val:])
    return train, val


# ----------------------------------------------------------------------------- cache

WeightFn = Callable[[np.ndarray], np.ndarray]


def default_weight_fn(w0: float = 10.0, sigma: float = 5.0) -> WeightFn:
    """The paper's border weight map (:func:`unet_lowered.weightmap.weight_map`).

    Raises:
        UnetError: The weight-map module is not available.
    """
    try:
        from unet_lowered.weightmap import weight_map
    except ImportError:
        raise UnetError(
            "the weighted-bce loss needs unet_lowered.weightmap, which is missing from this "
            "installation; choose another --loss"
        ) from None
    return functools.partial(weight_map, w0=w0, sigma=sigma)


class SampleCache:
    """Every sample decoded once and kept in memory at the working size.

    Images pass through :func:`images.read_image`, :func:`images.to_channels`, optional
    CLAHE, :func:`preprocess.to_unit` and (``resize`` mode) :func:`preprocess.resize_image`;
    masks are resized with nearest neighbour. Targets are ``0/1`` for binary data
    (foreground = non-zero) and class indices ``0..K-1`` for ``num_classes = K > 1``.

    Attributes:
        ids: Cached ids, in the order given.
        channels: 1 or 3.
        image_size: ``(height, width)`` of the training input.
        input_mode: ``"resize"`` or ``"crop"``.
        num_classes: 1 (binary) or the number of classes.
        mask_values: Distinct stored mask values found, ascending (class ``k`` is the
            ``k``-th when they are not already ``0..K-1``).
        foreground: Foreground (non-background) fraction per id, at the cached size.
        lazy: True when the data did not fit in ``max_bytes`` and samples are decoded
            on every use.
        nbytes: Bytes held (estimated bytes per pass when lazy).
        notes: Warnings (e.g. that the cache is lazy).
    """

    def __init__(
        self,
        data: PreparedData,
        ids: Sequence[str] | None = None,
        *,
        channels: int,
        image_size: int | tuple[int, int],
        input_mode: str = "resize",
        clahe: bool = False,
        num_classes: int = 1,
        weight_fn: WeightFn | None = None,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        max_pixels: int = imageio.DEFAULT_MAX_PIXELS,
        threads: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Decode (or, over ``max_bytes``, only scan) the samples.

        Args:
            data: Pairs from :func:`load_prepared`.
            ids: Ids to cache (default: all).
            channels: 1 (gray) or 3 (RGB) model input channels.
            image_size: Training input size, an int or ``(height, width)``.
            input_mode: ``"resize"`` (resize every image) or ``"crop"`` (keep full
                size; :class:`SegmentationSequence` takes crops).
            clahe: Apply CLAHE before scaling.
            num_classes: 1 for binary masks, K > 1 for K classes.
            weight_fn: Computes a float ``(H, W)`` weight map from a 0/1 uint8 mask (for
                ``weighted-bce``; see :func:`default_weight_fn`); None for no weights.
            max_bytes: Memory cap of the cache.
            max_pixels: Refuse larger images before decoding.
            threads: Decoding threads (default: CPU count, at most 8).
            progress: Called as ``progress(done, total)`` while decoding.

        Raises:
            UnetError: Bad option, unreadable file, image/mask size mismatch, or masks with
                more distinct values than ``num_classes`` allows.
        """
        if input_mode not in INPUT_MODES:
            raise UnetError(
                f"input mode {input_mode!r} is not known; use one of: {', '.join(INPUT_MODES)}"
            )
        if channels not in (1, 3):
            raise UnetError(f"channels must be 1 or 3, got {channels}")
        if num_classes < 1 or num_classes > 255:
            raise UnetError(f"num_classes must be in 1..255, got {num_classes}")
        if weight_fn is not None and num_classes != 1:
            raise UnetError("weight maps (weighted-bce) need binary masks (num_classes 1)")
        self.data = data
        self.ids = list(dict.fromkeys(data.ids if ids is None else ids))
        missing = [i for i in self.ids if i not in data.images]
        if missing:
            raise UnetError(f"{data.root}: unknown id(s) {_listing(missing)}")
        self.channels = channels
        self.image_size = _size_pair(image_size)
        self.input_mode = input_mode
        self.clahe = clahe
        self.num_classes = num_classes
        self.weight_fn = weight_fn
        self.max_pixels = max_pixels
        self.notes: list[str] = []
        self._threads = threads or min(8, os.cpu_count() or 1)
        self._images: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}
        self._weights: dict[str, np.ndarray] = {}

        self.nbytes = self._estimate_bytes()
        self.lazy = self.nbytes > max_bytes
        if self.lazy:
            self.notes.append(
                f"{data.root}: the decoded samples would take {self.nbytes / 2**30:.1f} GiB, "
                f"over the cache limit of {max_bytes / 2**30:.1f} GiB; decoding each sample "
                "whenever it is used (slower); use --image-size/resize mode or fewer images"
            )
            for note in self.notes:
                log.warning(note)
        counts: dict[str, dict[int, int]] = {}
        raw_masks: dict[str, np.ndarray] = {}
        decoded = self._map(self._decode_raw, self.ids, masks_only=self.lazy)
        for n, (ident, (image, mask)) in enumerate(zip(self.ids, decoded, strict=True), 1):
            counts[ident] = _value_counts(mask)
            if not self.lazy:
                self._images[ident] = image
                raw_masks[ident] = mask
            if progress is not None:
                progress(n, len(self.ids))
        self.mask_values = sorted(set().union(*counts.values()))
        self._lut = self._make_lut()
        background = self._lut[0] if self._lut is not None else 0
        self.foreground = {
            ident: 1.0 - c.get(int(background), 0) / sum(c.values()) for ident, c in counts.items()
        }
        self._masks = {ident: self._to_target(m) for ident, m in raw_masks.items()}
        del raw_masks
        if weight_fn is not None and not self.lazy:
            weights = self._map(self._weight, list(self._masks.values()))
            self._weights = dict(zip(self._masks, weights, strict=True))
        if not self.lazy:
            self.nbytes = sum(
                a.nbytes for d in (self._images, self._masks, self._weights) for a in d.values()
            )

    def sample(
        self, ident: str, crop_rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One sample as new arrays, ready for augmentation.

        Args:
            ident: The id.
            crop_rng: In ``crop`` mode, take a random ``image_size`` window chosen by this
                generator (:func:`random_crop`, before the conversion to float, so large
                images cost little); None for the whole image.

        Returns:
            image float32 ``(H, W, C)`` in ``[0, 1]``, mask uint8 ``(H, W)`` (0/1 or class
            indices), weight float32 ``(H, W)`` or None. ``(H, W)`` is the training size in
            ``resize`` mode or with ``crop_rng``, else the image's own size.
        """
        if self.lazy:
            image, raw = self._decode_raw(ident)
            mask = self._to_target(raw)
            weight = self._weight(mask) if self.weight_fn is not None else None
        else:
            image, mask = self._images[ident], self._masks[ident]
            weight = self._weights.get(ident)
        if crop_rng is not None and self.input_mode == "crop":
            image, mask, weight = random_crop(image, mask, self.image_size, crop_rng, weight)
        image = image.astype(np.float32) * np.float32(1 / 65535)
        mask = mask.copy()  # never hand out the cached array
        if weight is not None:
            weight = weight.astype(np.float32)
        return image, mask, weight

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, ident: object) -> bool:
        return ident in self.foreground

    # -- internals

    def _map(self, fn: Callable, items: Sequence[Any], **kwargs: Any) -> Iterator[Any]:
        """``fn`` over ``items`` in order, on threads (OpenCV and PNG decoding release the GIL)."""
        call = functools.partial(fn, **kwargs) if kwargs else fn
        if self._threads <= 1 or len(items) < 4:
            yield from map(call, items)
            return
        with ThreadPoolExecutor(self._threads) as pool:
            yield from pool.map(call, items)

    def _estimate_bytes(self) -> int:
        per_pixel = 2 * self.channels + 1 + (2 if self.weight_fn is not None else 0)
        if self.input_mode == "resize":
            h, w = self.image_size
            return len(self.ids) * h * w * per_pixel
        total = 0
        for ident in self.ids:
            header = imageio.read_header(self.data.images[ident])
            total += header.width * header.height * per_pixel
        return total

    def _decode_raw(
        self, ident: str, masks_only: bool = False
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Image as uint16 ``(H, W, C)`` (or None) and the stored mask values ``(H, W)``."""
        image_path, mask_path = self.data.images[ident], self.data.masks[ident]
        mask = imageio.read_image(mask_path, self.max_pixels)
        if mask.ndim == 3:
            if imageio.is_gray_as_rgb(mask):
                mask = mask[..., 0]
            elif self.num_classes == 1:
                mask = mask.max(axis=2)
            else:
                raise UnetError(
                    f"{mask_path}: a colour mask cannot hold class labels; convert the data "
                    "with `unet prepare --classes`"
                )
        header = imageio.read_header(image_path)
        if (header.height, header.width) != mask.shape:
            raise UnetError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{image_path.name} is {header.width}x{header.height}; masks must match their "
                "images (`unet prepare` reports and skips such pairs)"
            )
        resize = self.input_mode == "resize"
        if resize:
            mask = preprocess.resize_mask(mask, self.image_size)
        if masks_only:
            return None, mask
        image = imageio.to_channels(imageio.read_image(image_path, self.max_pixels), self.channels)
        if self.clahe:
            image = preprocess.apply_clahe(image)
        x = preprocess.to_unit(image)
        if resize:
            x = preprocess.resize_image(x, self.image_size)
        return np.rint(np.clip(x, 0.0, 1.0) * 65535).astype(np.uint16), mask

    def _make_lut(self) -> np.ndarray | None:
        """Stored mask value -> class index, or None when values are already indices."""
        values = self.mask_values
        k = self.num_classes
        if k == 1 or all(v < k for v in values):
            return None
        if len(values) > k:
            raise UnetError(
                f"{self.data.mask_dir}: the masks hold {len(values)} distinct values "
                f"({_listing([str(v) for v in values])}) but num_classes is {k}; set the number "
                "of classes to match or re-run `unet prepare --classes`"
            )
        return np.asarray(values)

    def _to_target(self, raw: np.ndarray) -> np.ndarray:
        if self.num_classes == 1:
            return (raw > 0).astype(np.uint8)
        if self._lut is None:
            return raw.astype(np.uint8)
        return np.searchsorted(self._lut, raw).astype(np.uint8)

    def _weight(self, mask: np.ndarray) -> np.ndarray:
        weight = np.asarray(self.weight_fn(mask), dtype=np.float32)
        if weight.shape != mask.shape:
            raise ValueError(f"weight map {weight.shape} does not match the mask {mask.shape}")
        return weight.astype(np.float16)


def _value_counts(mask: np.ndarray) -> dict[int, int]:
    """``{value: pixel count}`` of an integer mask."""
    if mask.dtype == np.uint8:
        counts = np.bincount(mask.ravel(), minlength=1)
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    values, counts = np.unique(mask, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        size = (int(size), int(size))
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise UnetError(f"image size must be positive, got {h}x{w}")
    return h, w


# ----------------------------------------------------------------------------- batches


class SegmentationSequence(keras.utils.PyDataset):
    """Batches ``(x, y)`` of NumPy arrays for ``model.fit`` under any Keras backend.

    ``x``: float32 ``(B, H, W, C)``, each image standardised (zero mean, unit variance)
    after augmentation. ``y``: float32 ``(B, h, w, 1)`` with 0/1 or class indices, or
    ``(B, h, w, 2)`` = ``[mask, weight]`` when the cache has weight maps. ``(h, w)`` is
    ``target_size`` (the model's output size, smaller than the input with ``valid``
    padding: the targets are centre-cropped) or the input size.

    Randomness is a pure function of ``(seed, epoch, position in the epoch)``: the
    order is ``default_rng([seed, epoch]).permutation``, and each sample's crop and
    augmentation use ``default_rng([seed, epoch, position])``. Batches therefore do
    not depend on thread timing, and a run resumed at epoch ``e`` (``epoch=e``) sees
    the batches the uninterrupted run would have seen.

    Keep the epoch right with :class:`EpochSync` in ``model.fit(callbacks=...)``: it
    calls :meth:`set_epoch` with Keras's own epoch number. Without it the sequence
    advances in :meth:`on_epoch_begin`, which is only approximately once per epoch
    (the JAX and torch trainers call it once more to peek at a first batch).

    Pass ``shuffle=False`` to ``model.fit``: its own batch-order shuffle uses Python's
    global ``random``; this sequence shuffles the samples itself.

    Keep ``workers=1`` (the default) for exact reproducibility: on TensorFlow
    :func:`as_tf_dataset` still makes batches ahead on one background thread, and JAX and
    torch call the sequence in order. With ``workers > 1``, Keras 3.15's enqueuer on
    JAX and torch replays batches it prefetched while peeking before training, so
    each epoch then sees some batches of the epoch before (measured; TensorFlow is
    unaffected).
    """

    def __init__(
        self,
        cache: SampleCache,
        ids: Sequence[str],
        batch_size: int = 8,
        *,
        augment: AugmentConfig | None = None,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        target_size: tuple[int, int] | None = None,
        drop_remainder: bool = False,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ) -> None:
        """Set up the batches.

        Args:
            cache: The decoded samples.
            ids: Ids of this sequence (all must be in ``cache``), in the order used when
                not shuffling.
            batch_size: Samples per batch.
            augment: Augmentation for training; None for validation.
            shuffle: New seeded order every epoch (training).
            seed: Seed of order, crops and augmentation.
            epoch: The epoch the next batches belong to (the resumed epoch).
            target_size: ``(h, w)`` of the model output when smaller than the input.
            drop_remainder: Drop the last incomplete batch.
            workers: Threads (or processes) Keras uses to prepare batches ahead.
            use_multiprocessing: Processes instead of threads.
            max_queue_size: Batches prepared ahead.

        Raises:
            UnetError: No ids, ids not in the cache, or a bad batch/target size.
        """
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        if batch_size < 1:
            raise UnetError(f"batch size must be at least 1, got {batch_size}")
        if not ids:
            raise UnetError("no ids for this sequence (empty split?)")
        missing = [i for i in ids if i not in cache]
        if missing:
            raise UnetError(f"id(s) not in the cache: {_listing(missing)}")
        h, w = cache.image_size
        if target_size is not None:
            th, tw = target_size
            if not (0 < th <= h and 0 < tw <= w):
                raise UnetError(f"target size {th}x{tw} must fit in the input size {h}x{w}")
        self.cache = cache
        self.ids = list(ids)
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle = shuffle
        self.seed = seed
        self.target_size = None if target_size is None else (int(th), int(tw))
        self.drop_remainder = drop_remainder
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Make the next batches those of ``epoch`` (0-based)."""
        self._keep_epoch = True  # the next on_epoch_begin starts this epoch
        self.epoch = int(epoch)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.ids))
            self._order = [self.ids[i] for i in order]
        else:
            self._order = list(self.ids)

    def on_epoch_begin(self) -> None:
        """Called by Keras before an epoch's batches: advance, unless the epoch was just set."""
        if self._keep_epoch:
            self._keep_epoch = False
        else:
            self.set_epoch(self.epoch + 1)
            self._keep_epoch = False

    def __len__(self) -> int:
        n = len(self.ids)
        if self.drop_remainder and n >= self.batch_size:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range 0..{len(self) - 1}")
        start = index * self.batch_size
        chosen = self._order[start : start + self.batch_size]
        # Validation crops and order stay the same every epoch.
        epoch_key = self.epoch if (self.shuffle or self.augment is not None) else 0
        x = y = None
        for k, ident in enumerate(chosen):
            rng = np.random.default_rng([self.seed, epoch_key, start + k])
            image, target = self._example(ident, rng)
            if x is None:
                x = np.empty((len(chosen), *image.shape), np.float32)
                y = np.empty((len(chosen), *target.shape), np.float32)
            x[k] = preprocess.standardize(image)
            y[k] = target
        return x, y

    def _example(self, ident: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augmented image ``(H, W, C)`` in ``[0, 1]`` and target ``(h, w, 1 or 2)``."""
        image, mask, weight = self.cache.sample(ident, crop_rng=rng)
        if self.augment is not None:
            image, mask, *rest = augment(image, mask, rng, self.augment, weight)
            weight = rest[0] if rest else None
        target = mask[:, :, None] if weight is None else np.stack([mask, weight], axis=-1)
        if self.target_size is not None:
            target = center_crop(target, self.target_size)
        return image, target


class EpochSync(keras.callbacks.Callback):
    """Tell sequences the epoch Keras is starting, so order and augmentation follow it.

    Use ``model.fit(train, ..., initial_epoch=e, callbacks=[EpochSync(train), ...])``:
    batches then depend only on ``(seed, epoch, position)``, also after ``--resume``.
    """

    def __init__(self, *sequences: SegmentationSequence) -> None:
        super().__init__()
        self.sequences = sequences

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        for sequence in self.sequences:
            sequence.set_epoch(epoch)


def as_tf_dataset(sequence: SegmentationSequence, lookahead: int = 2) -> Any:
    """A ``tf.data`` view of a sequence, for ``model.fit`` on the TensorFlow backend.

    Keras feeds a ``PyDataset`` to TensorFlow through ``tf.data`` with an ``AUTOTUNE``
    prefetch; tearing down that iterator at an epoch's end then waits for tf.data's
    autotuning thread, which stalled about half of all epochs by 7-9 s on 2 cores
    (measured with py-spy: the main thread blocks in ``~IteratorResource``). This view
    yields the same batches in the same order, with autotuning off.

    Each epoch's batches are made ahead by one background thread of the lowest CPU
    priority (nice 19, on Linux), at most ``lookahead`` batches ahead. Augmenting on
    an ordinary thread competes with the training step's threads for the cores: on
    2 cores, at 224 px and batch 4, steps fed that way took 9-10% longer than steps fed
    from memory; at the lowest priority, which leaves the cores to the step whenever it
    wants them, 4-6% (at 256 px, batch 8: 8% and 7%; ``benchmarks/feeding.py``).

    Call :meth:`SegmentationSequence.set_epoch` (:class:`EpochSync`) as usual: the
    batches are read when each epoch's iterator starts. An error raised while making a
    batch is raised again in ``fit``.

    Args:
        sequence: The sequence to wrap.
        lookahead: Batches made ahead of the one training.

    Returns:
        A ``tf.data.Dataset`` of ``len(sequence)`` batches.
    """
    import tensorflow as tf

    first = sequence[0]
    spec = tuple(tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)) for a in first)

    def batches() -> Iterator[tuple[np.ndarray, ...]]:
        with _BatchMaker(sequence, lookahead) as maker:
            yield from maker

    dataset = tf.data.Dataset.from_generator(batches, output_signature=spec)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(sequence)))
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return dataset.with_options(options)


class _BatchMaker:
    """One epoch of a sequence's batches, made in order by a low-priority thread."""

    def __init__(self, sequence: Sequence, lookahead: int):
        self.sequence = sequence
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, lookahead))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._make, name="unet-batches", daemon=True)

    def __enter__(self) -> _BatchMaker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()  # also when fit leaves an epoch early
        self.thread.join()

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        for _ in range(len(self.sequence)):
            item = self.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def _make(self) -> None:
        lowest_priority()
        for index in range(len(self.sequence)):
            try:
                item: Any = self.sequence[index]
            except BaseException as error:  # handed to the consumer, raised there
                item = error
            while not self.stop.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self.stop.is_set() or isinstance(item, BaseException):
                return


def lowest_priority() -> bool:
    """Give the calling thread the lowest CPU priority (nice 19); Linux only.

    Returns:
        Whether the priority was changed (False on other systems, where the call
        would name a process rather than this thread).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError:
        return False
    return True


def random_crop(
    image: np.ndarray,
    mask: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A random ``size`` window of image, mask and weight; reflect-padded if smaller.

    Args:
        image: ``(H, W, C)``.
        mask: ``(H, W)``.
        size: ``(height, width)`` of the crop.
        rng: Chooses the window.
        weight: Optional ``(H, W)``.

    Returns:
        ``(image, mask, weight)`` of spatial size ``size`` (weight None if not given).
    """
    th, tw = size
    h, w = mask.shape
    pad_h, pad_w = max(th - h, 0), max(tw - w, 0)
    if pad_h or pad_w:
        pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
        image = np.pad(image, (*pads, (0, 0)), mode="reflect")
        mask = np.pad(mask, pads, mode="reflect")
        if weight is not None:
            weight = np.pad(weight, pads, mode="reflect")
        h, w = mask.shape
    top = int(rng.integers(0, h - th + 1))
    left = int(rng.integers(0, w - tw + 1))
    window = (slice(top, top + th), slice(left, left + tw))
    image = np.ascontiguousarray(image[window])
    mask = np.ascontiguousarray(mask[window])
    if weight is not None:
        weight = np.ascontiguousarray(weight[window])
    return image, mask, weight


def center_crop(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The central ``size = (h, w)`` window of an ``(H, W, ...)`` array."""
    th, tw = size
    h, w = array.shape[:2]
    top, left = (h - th) // 2, (w - tw) // 2
    return array[top : top + th, left : left + tw]


# ----------------------------------------------------------------------------- guards


def foreground_fractions(
    source: SampleCache | PreparedData | Mapping[str, float], ids: Iterable[str] | None = None
) -> dict[str, float]:
    """Foreground (non-zero) fraction of each mask.

    Args:
        source: A cache (fractions at the cached size), prepared data (masks are decoded
            at full size) or a ready mapping ``{id: fraction}``.
        ids: Restrict to these ids (default: all of ``source``).

    Returns:
        ``{id: fraction in [0, 1]}``.
    """
    if isinstance(source, SampleCache):
        table: Mapping[str, float] = source.foreground
    elif isinstance(source, PreparedData):
        wanted = list(source.ids if ids is None else ids)

        def fraction(ident: str) -> float:
            mask = imageio.read_image(source.masks[ident])
            return float(np.count_nonzero(mask.max(axis=2) if mask.ndim == 3 else mask)) / (
                mask.shape[0] * mask.shape[1]
            )

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            table = dict(zip(wanted, pool.map(fraction, wanted), strict=True))
    else:
        table = source
    if ids is None:
        return dict(table)
    return {i: table[i] for i in ids}


def mask_warnings(
    source: SampleCache | PreparedData | Mapping[str, float],
    ids: Iterable[str] | None = None,
    empty_below: float = EMPTY_FRACTION,
    full_above: float = FULL_FRACTION,
) -> list[str]:
    """Warnings about masks that lead to "the predictions are all black".

    Flags empty and nearly empty masks, nearly all-foreground masks (inverted
    masks?), and a foreground too rare or too common on average.

    Args:
        source: See :func:`foreground_fractions`.
        ids: The ids to check (e.g. the training split); default all.
        empty_below: Below this fraction a mask counts as nearly empty.
        full_above: Above this fraction a mask counts as nearly all foreground.

    Returns:
        One line per problem (empty when all is well).
    """
    fractions = foreground_fractions(source, ids)
    if not fractions:
        return []
    n = len(fractions)
    names = sorted(fractions)
    empty = [i for i in names if fractions[i] == 0.0]
    tiny = [i for i in names if 0.0 < fractions[i] < empty_below]
    full = [i for i in names if fractions[i] > full_above]
    mean = sum(fractions.values()) / n
    out = []
    if len(empty) == n:
        return [
            f"all {n} masks are empty: the model can only learn to predict background "
            "(all-black predictions); check the mask files and which values are foreground"
        ]
    if empty:
        out.append(
            f"{len(empty)} of {n} masks are empty ({_listing(empty)}); fine if those images "
            "truly show no object, otherwise check the masks"
        )
    if tiny:
        out.append(
            f"{len(tiny)} of {n} masks have less than {empty_below:.1%} foreground "
            f"({_listing(tiny)})"
        )
    if full:
        out.append(
            f"{len(full)} of {n} masks are more than {full_above:.0%} foreground "
            f"({_listing(full)}); are they inverted? foreground must be the non-zero value"
        )
    if mean < 0.01:
        out.append(
            f"foreground covers only {mean:.2%} of the pixels on average: with bce the model "
            "may learn to predict all background; prefer bce+dice, dice or focal"
        )
    elif mean > 0.75:
        out.append(
            f"foreground covers {mean:.0%} of the pixels on average; check that the masks "
            "are not inverted (foreground must be the non-zero value)"
        )
    return out


# ----------------------------------------------------------------------------- convenience


def augment_config(cfg: Any) -> AugmentConfig:
    """The :class:`AugmentConfig` for a ``TrainConfig``-like object (missing fields: defaults).

    Reads ``flip_lr``, ``flip_ud``, ``rotate`` (degrees), ``scale`` (a ``±`` fraction
    around 1, or a ``(low, high)`` pair), ``shift``, ``elastic`` and ``intensity``
    (which also switches the noise).
    """
    default = AugmentConfig()
    scale = getattr(cfg, "scale", None)
    if isinstance(scale, int | float):
        scale = (1.0 - scale, 1.0 + scale)
    return AugmentConfig(
        flip_lr=getattr(cfg, "flip_lr", default.flip_lr),
        flip_ud=getattr(cfg, "flip_ud", default.flip_ud),
        rotation=getattr(cfg, "rotate", default.rotation),
        scale=default.scale if scale is None else scale,
        shift=getattr(cfg, "shift", default.shift),
        elastic=getattr(cfg, "elastic", default.elastic),
        intensity=getattr(cfg, "intensity", default.intensity),
        noise=getattr(cfg, "intensity", default.intensity) and default.noise,
    )


def make_sequences(
    data: PreparedData,
    split: Mapping[str, Sequence[str]],
    cfg: Any,
    augment: bool = True,
    output_size: tuple[int, int] | None = None,
    epoch: int = 0,
    workers: int = 1,
) -> tuple[SegmentationSequence, SegmentationSequence]:
    """Training and validation sequences sharing one cache, from a ``TrainConfig``.

    Reads ``image_size``, ``input_mode``, ``clahe``, ``loss`` (``weighted-bce`` adds
    weight maps with ``w0`` and ``sigma``), ``batch_size``, ``seed`` and the augmentation
    fields of ``cfg`` (see :func:`augment_config`); ``cfg.channels``/``cfg.num_classes``
    if present, else the data's.

    Args:
        data: Pairs from :func:`load_prepared`.
        split: ``{"train": ids, "val": ids}``.
        cfg: Settings object.
        augment: Augment the training batches.
        output_size: Model output ``(h, w)`` when smaller than the input (valid padding).
        epoch: First epoch to train (``initial_epoch`` when resuming), so a resumed run
            gets the same order and augmentation as an uninterrupted one.
        workers: Batch-preparing threads for Keras.

    Returns:
        ``(train, val)``; ``train.cache`` holds the decoded samples.
    """
    weighted = str(getattr(cfg, "loss", "")) == "weighted-bce"
    weight_fn = (
        default_weight_fn(getattr(cfg, "w0", 10.0), getattr(cfg, "sigma", 5.0))
        if weighted
        else None
    )
    train_ids, val_ids = list(split["train"]), list(split["val"])
    cache = SampleCache(
        data,
        list(dict.fromkeys(train_ids + val_ids)),
        channels=getattr(cfg, "channels", None) or data.channels,
        image_size=getattr(cfg, "image_size", 256),
        input_mode=getattr(cfg, "input_mode", "resize"),
        clahe=bool(getattr(cfg, "clahe", False)),
        num_classes=getattr(cfg, "num_classes", None) or data.num_classes,
        weight_fn=weight_fn,
    )
    batch_size = int(getattr(cfg, "batch_size", 8))
    seed = int(getattr(cfg, "seed", 0))
    train = SegmentationSequence(
        cache,
        train_ids,
        batch_size,
        augment=augment_config(cfg) if augment else None,
        shuffle=True,
        seed=seed,
        epoch=epoch,
        target_size=output_size,
        workers=workers,
    )
    val = SegmentationSequence(
        cache, val_ids, batch_size, seed=seed, target_size=output_size, workers=workers
    )
    return train, val
