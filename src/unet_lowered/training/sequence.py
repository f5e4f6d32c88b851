"""Training batches: augment the cached samples on the fly, in a reproducible order.

:class:`SegmentationSequence` (a ``keras.utils.PyDataset``) takes samples from a
:class:`~unet_lowered.training.cache.SampleCache`, augments them
(:mod:`unet_lowered.training.augment`), standardises each image and yields NumPy
batches, so it works with every Keras backend. :func:`make_sequences` builds the
training and validation sequences from a :class:`TrainConfig`; on TensorFlow,
:func:`unet_lowered.training.feed.as_tf_dataset` hands them to ``fit``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import keras
import numpy as np

from unet_lowered import preprocess
from unet_lowered.dataset.pairs import PreparedData
from unet_lowered.errors import UnetError, listing
from unet_lowered.model import half_size, output_size
from unet_lowered.training.augment import (
    AugmentConfig,
    augment,
    center_crop,
    mirrored_window,
    valid_margins,
)
from unet_lowered.training.cache import SampleCache, default_weight_fn
from unet_lowered.training.config import TrainConfig


@dataclass(frozen=True)
class Progressive:
    """Progressive resizing: the first ``epochs`` epochs train at a smaller input size.

    Attributes:
        epochs: How many epochs (from the first) use the smaller size.
        size: ``(H, W)`` of the network input in those epochs.
        target_size: ``(h, w)`` of the targets then (the model's output size for
            ``size``; smaller than ``size`` only with ``valid`` padding).
    """

    epochs: int
    size: tuple[int, int]
    target_size: tuple[int, int]


def progressive_plan(
    fraction: float,
    epochs: int,
    image_size: int,
    depth: int = 4,
    padding: str = "same",
) -> Progressive | None:
    """The :class:`Progressive` of ``--progressive fraction``: that share of the epochs
    (rounded down) at half the image size (rounded down to a size the network takes;
    with ``valid`` padding half the output size, :func:`unet_lowered.model.half_size`).

    None when it would change nothing: ``fraction`` 0, no epoch or no smaller valid size.
    """
    n = int(fraction * epochs)
    half = half_size(image_size, depth, padding)
    if n < 1 or half >= image_size:
        return None
    return Progressive(n, (half, half), output_size((half, half), depth, padding))


class SegmentationSequence(keras.utils.PyDataset):
    """Batches ``(x, y)`` of NumPy arrays for ``model.fit`` under any Keras backend.

    ``x``: float32 ``(B, H, W, C)``, each image standardised (zero mean, unit variance)
    after augmentation; crops on their whole image's scale, as tiles are predicted. ``y``: float32 ``(B, h, w, 1)`` with 0/1 or class indices, or
    ``(B, h, w, 2)`` = ``[mask, weight]`` when the cache has weight maps. ``(h, w)`` is
    ``target_size`` (the model's output size, smaller than the input with ``valid``
    padding) or the input size. With ``valid`` padding the target is the input's central
    window, and the inputs are mirrored at the image's borders so that every pixel is a
    target (the paper's overlap-tile): whole images cached at the output size
    (``input_size`` given, as :func:`make_sequences` does) are mirror-padded to the
    input and their whole mask is the target; whole images cached at the input size give
    a random target window with the input around it
    (:func:`~unet_lowered.training.augment.mirrored_window`); crops are cut from the
    image reflect-padded by the margin (:func:`~unet_lowered.training.augment.random_crop`).

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

    With ``progressive``, the batches of its first epochs are smaller: whole images are
    made as usual at the full size, then resized to its smaller size (images by area
    averaging, targets by :func:`~unet_lowered.preprocess.resize_mask` with it, so class
    indices stay indices where the image is; weight maps averaged); crops are
    cut at the smaller size from the image at native resolution (the objects keep their
    scale, as in prediction). Targets then take its target size as above.

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
        progressive: Progressive | None = None,
        foreground_crops: float = 0.0,
        input_size: tuple[int, int] | None = None,
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
            progressive: Smaller batches in the first epochs (training), or None.
            foreground_crops: In ``crop`` mode, the probability that a sample's window is
                centred on a foreground pixel (nnU-Net oversamples a third); 0 draws no
                random number for it, so batches stay those of a run without it.
            input_size: ``resize`` mode with ``valid`` padding: the network's input,
                larger than the cache's whole images, which are at the output size
                (``target_size``): each standardised image is mirror-padded to it, and
                its whole mask is the target (the paper's overlap-tile for a whole image;
                ``RunConfig.resize_to_output``). None: the cache holds the input size.
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
            raise UnetError(f"id(s) not in the cache: {listing(missing)}")
        h, w = cache.image_size if input_size is None else input_size
        if target_size is not None:
            th, tw = target_size
            if not (0 < th <= h and 0 < tw <= w):
                raise UnetError(f"target size {th}x{tw} must fit in the input size {h}x{w}")
        if input_size is not None and (target_size is None or target_size != cache.image_size):
            raise UnetError("input_size needs a target_size equal to the cache's image size")
        self.input_size = None if input_size is None else (int(h), int(w))
        self.cache = cache
        self.ids = list(ids)
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle = shuffle
        self.seed = seed
        self.target_size = None if target_size is None else (int(th), int(tw))
        self.drop_remainder = drop_remainder
        self.progressive = progressive
        self.foreground_crops = float(foreground_crops)
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
            x[k] = image
            y[k] = target
        return x, y

    def _example(self, ident: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augmented, standardised image ``(H, W, C)`` and target ``(h, w, 1 or 2)``.

        Whole images are standardised on their own; crops on their whole image's scale
        (:func:`unet_lowered.preprocess.standardize_window`), as prediction sees them.
        """
        crop = self.cache.input_mode == "crop"
        small = self.progressive
        if small is not None and self.epoch >= small.epochs:
            small = None
        centred = crop and self.foreground_crops > 0 and rng.random() < self.foreground_crops
        target_size = self.target_size  # valid padding: the output, smaller than the input
        if small is not None:
            target_size = small.target_size if small.target_size != small.size else None
        image, mask, weight = self.cache.sample(
            ident,
            crop_rng=rng,
            foreground=centred,
            crop_size=small.size if small else None,
            target_size=target_size,  # crops: mirrored at the image's borders by the margin
        )
        window = preprocess.mean_std(image) if crop else None
        if self.augment is not None:
            image, mask, *rest = augment(image, mask, rng, self.augment, weight)
            weight = rest[0] if rest else None
        target = mask[:, :, None] if weight is None else np.stack([mask, weight], axis=-1)
        if self.input_size is not None:  # a whole image at the output size, mirrored
            in_size = small.size if small is not None else self.input_size
            if small is not None:
                image = _resized(image, small.target_size, cv2.INTER_AREA)
                target = _resized_target(target, small.target_size)
            pads = (*valid_margins(in_size, image.shape[:2]), (0, 0))
            return np.pad(preprocess.standardize(image), pads, mode="reflect"), target
        if small is not None and not crop:  # crops are cut at the small size (native scale)
            image = _resized(image, small.size, cv2.INTER_AREA)
            target = _resized_target(target, small.size)
        if target_size is not None and crop:
            target = center_crop(target, target_size)
        elif target_size is not None:  # a whole image: a window of it, mirrored context
            image, target = mirrored_window(image, target, target_size, rng)
        if window is None:
            return preprocess.standardize(image), target
        return preprocess.standardize_window(image, window, self.cache.image_stats(ident)), target


def _resized_target(target: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``(H, W, 1 or 2)`` target (mask, and weight map) shrunk to ``size`` as its image
    is (area averaging): the mask by :func:`~unet_lowered.preprocess.resize_mask`, so it
    stays where the image is; the weight map averaged."""
    mask = preprocess.resize_mask(target[:, :, 0], size, cv2.INTER_AREA)
    if target.shape[2] == 1:
        return mask[:, :, None]
    rest = _resized(target[:, :, 1:], size, cv2.INTER_AREA)
    return np.concatenate([mask[:, :, None].astype(target.dtype), rest], axis=2)


def _resized(array: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """``(H, W, C)`` resized to ``size`` ``(h, w)``, channels kept (also a single one)."""
    out = cv2.resize(array, (size[1], size[0]), interpolation=interpolation)
    return out.reshape(*size, array.shape[2])


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


def augment_config(cfg: TrainConfig) -> AugmentConfig:
    """The :class:`AugmentConfig` of the training settings.

    ``rotate`` is in degrees, ``scale`` a ``±`` fraction around 1, ``intensity`` also
    switches the noise; ``zoom_out``, ``frame_crop``, ``opacity``, ``lowres`` and
    ``stamps`` are the probabilities of the cross-site shifts.
    """
    default = AugmentConfig()
    return AugmentConfig(
        flip_lr=cfg.flip_lr,
        flip_ud=cfg.flip_ud,
        rotation=cfg.rotate,
        scale=(1.0 - cfg.scale, 1.0 + cfg.scale),
        shift=cfg.shift,
        elastic=cfg.elastic,
        intensity=cfg.intensity,
        noise=cfg.intensity and default.noise,
        zoom_out_p=cfg.zoom_out,
        frame_crop_p=cfg.frame_crop,
        opacity_p=cfg.opacity,
        lowres_p=cfg.lowres,
        stamp_p=cfg.stamps,
    )


def make_sequences(
    data: PreparedData,
    split: Mapping[str, Sequence[str]],
    cfg: TrainConfig,
    augment: bool = True,
    output_size: tuple[int, int] | None = None,
    epoch: int = 0,
    workers: int = 1,
) -> tuple[SegmentationSequence, SegmentationSequence]:
    """Training and validation sequences sharing one cache.

    Args:
        data: Pairs from :func:`unet_lowered.dataset.pairs.load_prepared`; its channels
            and classes are the model's.
        split: ``{"train": ids, "val": ids}``.
        cfg: The settings, ``image_size`` resolved (an int); ``weighted-bce`` adds
            weight maps with ``w0`` and ``sigma``.
        augment: Augment the training batches.
        output_size: Model output ``(h, w)`` when smaller than the input (valid padding):
            crops keep the input size and their centre is the target; whole images
            (``resize``) are cached at this size and mirror-padded to the input.
        epoch: First epoch to train (``initial_epoch`` when resuming), so a resumed run
            gets the same order and augmentation as an uninterrupted one.
        workers: Batch-preparing threads for Keras.

    Returns:
        ``(train, val)``; ``train.cache`` holds the decoded samples.

    Raises:
        UnetError: ``cfg.image_size`` is not resolved, or the cache refuses the data.
    """
    if cfg.image_size is None:
        raise UnetError("make_sequences needs a resolved image_size, not auto")
    weight_fn = default_weight_fn(cfg.w0, cfg.sigma) if cfg.loss == "weighted-bce" else None
    train_ids, val_ids = list(split["train"]), list(split["val"])
    mirrored = output_size is not None and cfg.input_mode == "resize"
    input_size = (cfg.image_size, cfg.image_size) if mirrored else None
    cache = SampleCache(
        data,
        list(dict.fromkeys(train_ids + val_ids)),
        channels=data.channels,
        image_size=output_size if mirrored else cfg.image_size,
        input_mode=cfg.input_mode,
        clahe=cfg.clahe,
        invert_light=cfg.invert_light,
        num_classes=data.num_classes,
        weight_fn=weight_fn,
    )
    train = SegmentationSequence(
        cache,
        train_ids,
        cfg.batch_size,
        augment=augment_config(cfg) if augment else None,
        shuffle=True,
        seed=cfg.seed,
        epoch=epoch,
        target_size=output_size,
        progressive=progressive_plan(
            cfg.progressive, cfg.epochs, cfg.image_size, cfg.depth, cfg.padding
        )
        if augment
        else None,
        foreground_crops=cfg.foreground_crops if augment else 0.0,
        input_size=input_size,
        workers=workers,
    )
    # Sparse objects (crops centred on foreground in training): each validation image's
    # one fixed window is centred on its foreground too. A random window would mostly
    # hold none, and an empty window predicted empty scores Dice 1, so an all-background
    # model would look perfect to early stopping and the best checkpoint.
    val = SegmentationSequence(
        cache,
        val_ids,
        cfg.batch_size,
        seed=cfg.seed,
        target_size=output_size,
        foreground_crops=1.0 if cfg.foreground_crops > 0 else 0.0,
        input_size=input_size,
        workers=workers,
    )
    return train, val
