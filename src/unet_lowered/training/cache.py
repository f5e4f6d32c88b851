"""Every training sample decoded once and kept in memory: :class:`SampleCache`.

Images pass through the preprocessing that prediction uses,
:func:`unet_lowered.preprocess.prepare_image` (channels, optional CLAHE, min-max
scaling to ``[0, 1]``, resize); masks are read by
:func:`unet_lowered.dataset.masks.read_mask` and mapped to targets by
:func:`~unet_lowered.dataset.masks.to_classes`, as evaluation reads them. Weight maps
for ``weighted-bce`` are computed once per mask and kept too.

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
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from unet_lowered import options, preprocess
from unet_lowered.dataset.masks import MaskValuesError, read_mask, to_classes, to_labels
from unet_lowered.dataset.pairs import PreparedData, check_mask_size
from unet_lowered.errors import UnetError, listing
from unet_lowered.io import images as imageio
from unet_lowered.training.augment import random_crop
from unet_lowered.training.weightmap import weight_map

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 4 * 2**30
"""Cache at most this many bytes of decoded samples (4 GiB); beyond it decode on use."""

WeightFn = Callable[[np.ndarray], np.ndarray]


def default_weight_fn(w0: float = 10.0, sigma: float = 5.0) -> WeightFn:
    """The paper's border weight map (:func:`unet_lowered.training.weightmap.weight_map`)."""
    return functools.partial(weight_map, w0=w0, sigma=sigma)


class SampleCache:
    """Every sample decoded once and kept in memory at the working size.

    Images pass through :func:`unet_lowered.preprocess.prepare_image` (resized in
    ``resize`` mode, full size in ``crop`` mode); masks are resized as their images
    (:func:`unet_lowered.preprocess.resize_mask`: each pixel the label with the largest
    share, so labels stay labels where the image is). Targets are ``0/1`` for binary data (binarised as ``unet prepare`` does,
    by :func:`unet_lowered.dataset.masks.to_classes`) and class indices ``0..K-1`` for
    ``num_classes = K > 1``.

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
        invert_light: bool = False,
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
            invert_light: Invert images with a light background
                (:func:`unet_lowered.preprocess.light_background`).
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
        input_mode = options.choose(input_mode, options.INPUT_MODES, "input_mode")
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
            raise UnetError(f"{data.root}: unknown id(s) {listing(missing)}")
        self.channels = channels
        self.image_size = _size_pair(image_size)
        self.input_mode = input_mode
        self.clahe = clahe
        self.invert_light = invert_light
        self.num_classes = num_classes
        self.weight_fn = weight_fn
        self.max_pixels = max_pixels
        self.notes: list[str] = []
        self._threads = threads or min(8, os.cpu_count() or 1)
        self._images: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}
        self._weights: dict[str, np.ndarray] = {}
        self._stats: dict[str, tuple[float, float]] = {}

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
        for n, (ident, (image, mask, stats)) in enumerate(zip(self.ids, decoded, strict=True), 1):
            counts[ident] = _value_counts(mask)
            if not self.lazy:
                self._images[ident] = image
                self._stats[ident] = stats
                raw_masks[ident] = mask
            if progress is not None:
                progress(n, len(self.ids))
        self.mask_values = sorted(set().union(*counts.values()))
        self._lut = self._make_lut()
        background = self._lut[0] if self._lut is not None else 0
        self.foreground = {
            ident: 1.0 - c.get(int(background), 0) / sum(c.values()) for ident, c in counts.items()
        }
        self._masks = {ident: self._target(ident, m) for ident, m in raw_masks.items()}
        del raw_masks
        if weight_fn is not None and not self.lazy:
            weights = self._map(self._weight, list(self._masks.values()))
            self._weights = dict(zip(self._masks, weights, strict=True))
        if not self.lazy:
            self.nbytes = sum(
                a.nbytes for d in (self._images, self._masks, self._weights) for a in d.values()
            )

    def sample(
        self,
        ident: str,
        crop_rng: np.random.Generator | None = None,
        foreground: bool = False,
        crop_size: tuple[int, int] | None = None,
        target_size: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One sample as new arrays, ready for augmentation.

        Args:
            ident: The id.
            crop_rng: In ``crop`` mode, take a random ``image_size`` window chosen by this
                generator (:func:`random_crop`, before the conversion to float, so large
                images cost little); None for the whole image.
            foreground: In ``crop`` mode, centre the window on a foreground pixel.
            crop_size: ``(height, width)`` of that window instead of ``image_size`` (the
                half-size crops of progressive training).
            target_size: In ``crop`` mode, a ``valid``-padding network's output size for
                the window: the image is mirrored at its borders by the margin first, so
                the window's supervised centre reaches the border pixels
                (:func:`~unet_lowered.training.augment.random_crop`).

        Returns:
            image float32 ``(H, W, C)`` in ``[0, 1]``, mask uint8 ``(H, W)`` (0/1 or class
            indices), weight float32 ``(H, W)`` or None. ``(H, W)`` is the training size in
            ``resize`` mode or with ``crop_rng`` (``crop_size`` when given), else the
            image's own size.
        """
        if self.lazy:
            image, raw, self._stats[ident] = self._decode_raw(ident)
            mask = self._target(ident, raw)
            weight = self._weight(mask) if self.weight_fn is not None else None
        else:
            image, mask = self._images[ident], self._masks[ident]
            weight = self._weights.get(ident)
        if crop_rng is not None and self.input_mode == "crop":
            image, mask, weight = random_crop(
                image, mask, crop_size or self.image_size, crop_rng, weight, foreground, target_size
            )
        image = image.astype(np.float32) * np.float32(1 / 65535)
        mask = mask.copy()  # never hand out the cached array
        if weight is not None:
            weight = weight.astype(np.float32)
        return image, mask, weight

    def image_stats(self, ident: str) -> tuple[float, float]:
        """``(mean, std)`` of the whole image in ``[0, 1]`` (all pixels and channels), as
        :func:`unet_lowered.preprocess.standardize` computes them when the image is
        predicted whole: the scale of its crops (:func:`~unet_lowered.preprocess.standardize_window`).
        """
        if ident not in self._stats:  # lazy and not sampled yet
            self._stats[ident] = self._decode_raw(ident)[2]
        return self._stats[ident]

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
    ) -> tuple[np.ndarray | None, np.ndarray, tuple[float, float] | None]:
        """Image as uint16 ``(H, W, C)`` (or None), the stored mask values ``(H, W)`` and
        the image's ``(mean, std)`` in ``[0, 1]`` (or None)."""
        image_path, mask_path = self.data.images[ident], self.data.masks[ident]
        mask = read_mask(mask_path, self.num_classes, self.max_pixels)
        header = imageio.read_header(image_path)
        check_mask_size(mask_path, image_path, mask, header)
        size = self.image_size if self.input_mode == "resize" else None
        if size is not None:
            mask = preprocess.resize_mask(mask, size)
        if masks_only:
            return None, mask, None
        image = imageio.read_image(image_path, self.max_pixels)
        x = preprocess.prepare_image(image, self.channels, size, self.clahe, self.invert_light)
        stats = preprocess.mean_std(x)
        return np.rint(np.clip(x, 0.0, 1.0) * 65535).astype(np.uint16), mask, stats

    def _make_lut(self) -> np.ndarray | None:
        """Stored mask value -> class index, or None when values are already indices."""
        values = self.mask_values
        k = self.num_classes
        if k == 1 or all(v < k for v in values):
            return None
        if len(values) > k:
            raise UnetError(
                f"{self.data.mask_dir}: the masks hold {len(values)} distinct values "
                f"({listing([str(v) for v in values])}) but num_classes is {k}; set the number "
                "of classes to match or re-run `unet prepare --classes`"
            )
        return np.asarray(values)

    def _target(self, ident: str, raw: np.ndarray) -> np.ndarray:
        """:meth:`_to_target`, a mask whose values cannot be read named by its file."""
        try:
            return self._to_target(raw)
        except MaskValuesError as e:
            raise UnetError(f"{self.data.masks[ident]}: {e}") from None

    def _to_target(self, raw: np.ndarray) -> np.ndarray:
        if self._lut is not None:  # the stored values of all masks, in order, are the classes
            return to_labels(raw, self._lut)
        return to_classes(raw, self.num_classes)

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
