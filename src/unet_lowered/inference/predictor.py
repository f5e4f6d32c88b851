"""Prediction on real-world images of any size and format: ``unet predict``.

One path from a decoded image to probabilities at the image's ORIGINAL size,
shared by ``unet predict`` and ``unet evaluate`` (:func:`predict_images`):

* ``mode="resize"``: :func:`unet_lowered.preprocess.model_input` at the run's
  ``image_size``; the network's logits become probabilities (sigmoid for one
  class, softmax for several) and are resized back with bilinear interpolation.
  Right for runs trained on resized images (``input_mode: resize``).
* ``mode="tile"``: the image is standardised at its own size and predicted in
  overlapping tiles of the training size (:func:`unet_lowered.inference.tiling.predict_tiled`),
  Gaussian blending; the paper's mirrored context at the borders for ``valid`` padding.
  Right for runs trained on crops at the native resolution (``input_mode: crop``)
  and for images far larger than the training size.
* ``"auto"`` (default) picks ``tile`` for crop-trained runs and ``resize`` otherwise.

For ``valid``-padding networks (output smaller than input) both modes tile:
each output tile gets its context from the image or its mirror image.

The run's :class:`~unet_lowered.training.config.RunConfig` says everything about the
network's input. Reading files and writing masks is :mod:`unet_lowered.inference.batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from unet_lowered import options as names
from unet_lowered.errors import UnetError
from unet_lowered.inference.postprocess import clean_mask, split_touching, to_mask
from unet_lowered.inference.tiling import predict_tiled
from unet_lowered.inference.tta import tta_predict
from unet_lowered.io.images import DEFAULT_MAX_PIXELS
from unet_lowered.model import output_size
from unet_lowered.preprocess import model_input
from unet_lowered.training.config import RunConfig


@dataclass(frozen=True)
class PredictOptions:
    """How images are predicted and masks cleaned (shared by predict and evaluate).

    Attributes:
        mode: ``"auto"``, ``"resize"`` or ``"tile"`` (see the module docstring).
        tta: Average the probabilities over flips (and 90-degree rotations): True or
            False; None (the default) applies what ``unet train`` chose on the run's
            validation split (``RunConfig.postprocess["tta"]``; see :func:`tta_group`).
        tta_transforms: With ``tta=True``, which: ``"auto"`` (the flips the run was
            trained with, see :func:`resolve_tta`), ``"lr"``, ``"ud"``, ``"flips"`` or
            ``"dihedral"``. A group other than ``"auto"`` with ``tta=None`` turns
            test-time augmentation on (:attr:`tta_on`); with ``tta=False`` it is refused.
        overlap: Tile overlap as a fraction of the tile, in ``[0, 1)``.
        blend: Tile blending weights: ``"gaussian"``, ``"linear"`` or ``"constant"``.
        batch_size: Images (resize mode) or tiles (tile mode) per network call.
        threshold: Foreground probability threshold; None takes the run's (the one chosen
            on validation, if any: :func:`applied_threshold`).
        keep_largest: Keep the N largest objects (per class); 0 keeps all; None: the
            run's choice (see ``postprocess``).
        fill_holes: Fill holes in the objects; None: the run's choice.
        min_area: Remove objects smaller than this many pixels (at the original size);
            None: the run's choice.
        watershed: Cut objects apart at their necks along the watershed lines of
            the probability map, keeping pieces joined where their shared boundary's
            mean probability reaches this merge level
            (:func:`~unet_lowered.inference.postprocess.split_touching`; one class
            only); 0 turns it off; None: the run's choice.
        postprocess: Apply the post-processing the run chose on its validation split
            (``RunConfig.postprocess``) to the steps left None; False leaves them off.
        max_pixels: Refuse images with more pixels than this, before decoding them.
        polarity: ``"auto"`` (a gray image whose mask is flagged ``check`` is predicted
            again with its gray scale inverted; :mod:`unet_lowered.inference.polarity`),
            ``"keep"`` (images as stored) or ``"invert"`` (every image's gray scale
            inverted: a folder of MONOCHROME1 films exported without their look-up).
        orientation: ``"auto"`` (an image whose mask is still flagged is predicted
            again turned 180 degrees, then 90 each way, and the first turned mask that
            passes the flag is kept, turned back; runs that record their training
            masks' shape only; a film read turned 180 degrees, or one whose mask
            passes as stored but of which the network is unsure, may be read mirrored
            top to bottom instead, and a multi-class run whose classes name a side
            tries that view last for a mask still flagged:
            :mod:`unet_lowered.inference.polarity`) or ``"keep"``.
    """

    mode: str = "auto"
    tta: bool | None = None
    tta_transforms: str = "auto"
    overlap: float = 0.25
    blend: str = "gaussian"
    batch_size: int = 4
    threshold: float | None = None
    keep_largest: int | None = None
    fill_holes: bool | None = None
    min_area: int | None = None
    watershed: float | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    postprocess: bool = True
    polarity: str = "auto"
    orientation: str = "auto"

    @property
    def tta_on(self) -> bool | None:
        """``tta``, or True when it was left None but a transform group was named."""
        if self.tta is None and self.tta_transforms != "auto":
            return True
        return self.tta

    def validate(self) -> PredictOptions:
        """Raise :class:`UnetError` naming the valid values of any bad option."""
        names.choose(self.mode, names.PREDICT_MODES, "mode")
        names.choose(self.tta_transforms, names.TTA_CHOICES, "tta-transforms")
        if self.tta is False and self.tta_transforms != "auto":
            raise UnetError(
                f"--tta-transforms {self.tta_transforms} names a test-time augmentation "
                "that --no-tta turns off; drop one of them"
            )
        names.choose(self.blend, names.BLENDS, "blend")
        names.choose(self.polarity, names.POLARITIES, "polarity")
        names.choose(self.orientation, names.ORIENTATIONS, "orientation")
        if not 0 <= self.overlap < 1:
            raise UnetError(
                f"--overlap must be in [0, 1) (a fraction of the tile), got {self.overlap}"
            )
        if self.batch_size < 1:
            raise UnetError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_pixels < 1:
            raise UnetError(f"--max-pixels must be positive, got {self.max_pixels}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise UnetError(f"--threshold must be above 0 and below 1, got {self.threshold}")
        if self.keep_largest is not None and self.keep_largest < 0:
            raise UnetError(f"--keep-largest must be 0 (keep all) or more, got {self.keep_largest}")
        if self.min_area is not None and self.min_area < 0:
            raise UnetError(f"--min-area must be 0 or more pixels, got {self.min_area}")
        if self.watershed is not None and not 0 <= self.watershed <= 1:
            raise UnetError(
                f"--watershed must be in [0, 1] (the merge level; 0: off), got {self.watershed}"
            )
        return self


# ---------------------------------------------------------------- one image


def for_run(options: PredictOptions, config: RunConfig) -> PredictOptions:
    """``options`` checked against the run, with ``mode`` resolved (:func:`resolve_mode`).

    Raises:
        UnetError: ``threshold`` or ``watershed`` for a multi-class run, which takes the
            most likely class of each pixel: neither would change its mask; ``tta`` on a
            run trained without flips (:func:`resolve_tta`), before any output is written.
    """
    tta_group(options, config)
    if config.num_classes > 1:
        for flag, value in (("--threshold", options.threshold), ("--watershed", options.watershed)):
            if value:
                raise UnetError(
                    f"{flag} applies to one-class runs; this run has {config.num_classes} "
                    "classes and takes the most likely class of each pixel: drop it"
                )
    return replace(options, mode=resolve_mode(options.mode, config))


def resolve_mode(mode: str, config: RunConfig) -> str:
    """``"auto"`` -> ``"tile"`` for crop-trained runs, ``"resize"`` otherwise."""
    mode = names.choose(mode, names.PREDICT_MODES, "mode")
    if mode == "auto":
        return "tile" if config.input_mode == "crop" else "resize"
    return mode


def resolve_tta(which: str, config: RunConfig) -> str:
    """The TTA transform group; ``"auto"`` takes the flips the run was trained with.

    ``"auto"``: ``"dihedral"`` if the run was trained with both flips and rotations of
    90 degrees or more (``rotate``; the plan's setting for rotation-free data such as
    cells and EM sections), ``"flips"`` with both flips and small rotations, ``"lr"`` or
    ``"ud"`` with one of them.

    Raises:
        UnetError: ``"auto"`` for a run trained without flips: flipped images are new to
            such a model and averaging over them lowers its accuracy.
    """
    which = names.choose(which, names.TTA_CHOICES, "tta-transforms")
    if which != "auto":
        return which
    lr, ud = config.flips
    if lr and ud and float(config.settings.rotate) >= 90:
        return "dihedral"
    if lr or ud:
        return "flips" if lr and ud else "lr" if lr else "ud"
    raise UnetError(
        "--tta: the run was trained without flips (flip_lr and flip_ud are off in its "
        "config.json), so flipped images are new to the model and test-time augmentation "
        "lowers its accuracy (JSRT lungs: Dice 0.9798 -> 0.9731 with left-right flips); "
        "drop --tta, or force it with --tta-transforms lr|ud|flips|dihedral"
    )


def tta_group(options: PredictOptions, config: RunConfig) -> str | None:
    """The test-time augmentation applied, or None: ``options.tta_on`` True resolves
    ``options.tta_transforms`` (:func:`resolve_tta`), False turns it off, None takes the
    group ``unet train`` kept on the run's validation split (none for runs trained
    before that choice existed)."""
    if options.tta_on is None:
        return (config.postprocess or {}).get("tta")
    return resolve_tta(options.tta_transforms, config) if options.tta_on else None


def tile_geometry(config: RunConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(output_tile, margin)`` for input tiles of the run's ``image_size``.

    Same padding: the output tile is the input tile, no margin. Valid padding: the
    output is smaller (:func:`unet_lowered.model.output_size`); the margin is half the
    difference.
    """
    in_h, in_w = config.image_size
    out_h, out_w = output_size(config.image_size, config.depth, config.padding)
    return (out_h, out_w), ((in_h - out_h) // 2, (in_w - out_w) // 2)


def _channels(model: Any, config: RunConfig) -> int:
    model_channels = model.input_shape[-1]
    if model_channels is not None and model_channels != config.channels:
        raise UnetError(
            f"config.json says {config.channels} input channel(s) but the model takes "
            f"{model_channels}; the run folder is inconsistent (re-train it)"
        )
    return config.channels


def probability_fn(
    model: Any, config: RunConfig, tta: str | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """The model as a ``(B, h, w, C) -> (B, h', w', K)`` probability function.

    Logits become probabilities with a sigmoid (``num_classes`` 1) or a softmax over the
    classes; with ``tta`` (``"lr"``, ``"ud"``, ``"flips"`` or ``"dihedral"``) the
    probabilities are averaged over that group of transforms
    (:func:`unet_lowered.inference.tta.tta_predict`).
    """
    from scipy.special import expit, softmax

    num_classes = config.num_classes

    def probs(batch: np.ndarray) -> np.ndarray:
        logits = np.asarray(model.predict_on_batch(batch), dtype=np.float32)
        return expit(logits) if num_classes == 1 else softmax(logits, axis=-1)

    if tta:
        return lambda batch: tta_predict(batch, probs, tta)
    return probs


def predict_images(
    model: Any,
    batch: Sequence[np.ndarray],
    config: RunConfig,
    options: PredictOptions | None = None,
) -> list[np.ndarray]:
    """Predict probabilities for decoded images, each at its ORIGINAL size.

    The three steps, :func:`prepare_images` (no model: safe on another thread),
    :func:`predict_prepared` (the network) and :func:`restore_size`, run one after the
    other; ``unet predict`` runs them on three threads
    (:func:`unet_lowered.inference.batch.predict_files`) with the same results.

    Args:
        model: The run's Keras model (logits out).
        batch: Images as :func:`unet_lowered.io.images.read_image` returns them, any sizes
            (or any array :func:`predict_image` takes).
        config: The run's configuration.
        options: Mode, TTA and tiling settings (post-processing fields are not used here).

    Returns:
        One float32 ``(H, W, K)`` array per image: probabilities, ``K = num_classes``.
    """
    options = (options or PredictOptions()).validate()
    _channels(model, config)
    if resolve_mode(options.mode, config) == "tile":  # one full-size input at a time
        return [
            predict_prepared(model, prepare_images([im], config, options), config, options)[0]
            for im in batch
        ]
    probs = predict_prepared(model, prepare_images(batch, config, options), config, options)
    return [restore_size(p, image.shape[:2]) for p, image in zip(probs, batch, strict=True)]


def prepare_images(
    batch: Sequence[np.ndarray], config: RunConfig, options: PredictOptions
) -> list[np.ndarray]:
    """The network inputs of decoded images: :func:`unet_lowered.preprocess.model_input`.

    Resize mode: float32 ``(h, w, C)`` at the run's ``image_size`` (a ``valid``-padding
    run trained at its output size: at that size, ``RunConfig.resize_size``, mirror-padded
    to the input by the tiling); tile mode: at the image's own size. With
    ``options.polarity == "invert"`` negated: the input of the image with its gray scale
    inverted. Needs no model, so it can run on another thread than the network.
    """
    size = None if resolve_mode(options.mode, config) == "tile" else config.resize_size
    inputs = [
        model_input(image, config.channels, size, config.clahe, config.invert_light)
        for image in batch
    ]
    if options.polarity == "invert":  # the inverted image's input (see inference.polarity)
        for x in inputs:
            np.negative(x, out=x)
    return inputs


def predict_prepared(
    model: Any,
    inputs: Sequence[np.ndarray],
    config: RunConfig,
    options: PredictOptions,
    on_tiles: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """Probabilities for :func:`prepare_images` outputs, each at its INPUT's size.

    Same padding in resize mode: ``options.batch_size`` inputs per network call (the
    last call takes the rest); tile mode and valid padding: overlap-tile prediction of
    each input, ``options.batch_size`` tiles per call
    (:func:`unet_lowered.inference.tiling.predict_tiled`). Resize-mode results are
    brought back to the image's size by :func:`restore_size`. ``on_tiles`` follows the
    tiles of each input in tile mode (``(done, total)``, a progress bar's line).

    Returns:
        One float32 ``(h, w, K)`` array per input.
    """
    _channels(model, config)
    mode = resolve_mode(options.mode, config)
    out_tile, margin = tile_geometry(config)
    fn = probability_fn(model, config, tta_group(options, config))
    if mode == "resize" and margin == (0, 0):  # same padding: whole inputs, batch_size a call
        step = options.batch_size
        return [p for i in range(0, len(inputs), step) for p in fn(np.stack(inputs[i : i + step]))]
    return [
        predict_tiled(
            x, fn, out_tile, options.overlap, margin, options.blend, options.batch_size, on_tiles
        )
        for x in inputs
    ]


def predict_image(
    model: Any,
    image: np.ndarray,
    config: RunConfig,
    mode: str = "auto",
    tta: bool | None = None,
    **tiling: Any,
) -> np.ndarray:
    """Probabilities ``(H, W, K)`` for one decoded image at its original size.

    The network only: threshold and clean them with :func:`probs_to_mask`. ``unet
    predict`` (and ``unet serve``) do more: a gray image whose mask is flagged
    ``check`` is predicted again inverted, then turned (a film exported without its
    MONOCHROME1 look-up, or scanned upside down), and each mask gets its quality flag.
    For that from Python, use :func:`unet_lowered.inference.polarity.predict_seen` with
    ``for_run(PredictOptions(), config)``: its :class:`~unet_lowered.inference.polarity.Seen`
    holds the probabilities (``.probs``, for :func:`probs_to_mask`), ``.gray_scale``,
    ``.orientation`` and ``.quality(mask, config)``, the flag ``predictions.csv`` writes.

    Args:
        model: The run's Keras model (:meth:`unet_lowered.io.runs.Run.model`).
        image: ``(H, W)`` or ``(H, W, 1)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA
            (alpha dropped), converted to the run's channels
            (:func:`~unet_lowered.io.images.to_channels`). uint8/uint16 as
            :func:`~unet_lowered.io.images.read_image` returns them, or float (float32
            or float64, any range) or integer arrays: each image is scaled by its own
            minimum and maximum, so ``image / 255.0`` gives the probabilities of
            ``image``. Runs trained with ``clahe`` take uint8/uint16 only.
        config: The run's configuration (:attr:`unet_lowered.io.runs.Run.config`).
        mode: ``"auto"``, ``"resize"`` or ``"tile"``.
        tta: Test-time augmentation over flips (and rotations); None: the run's choice.
        **tiling: ``tta_transforms``, ``overlap``, ``blend`` or ``batch_size`` (see
            :class:`PredictOptions`).

    Returns:
        float32 ``(H, W, num_classes)`` probabilities.

    Raises:
        UnetError: An option is invalid, or ``image`` has a shape other than those above.
    """
    options = PredictOptions(mode=mode, tta=tta, **tiling)
    return predict_images(model, [image], config, options)[0]


def restore_size(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(h, w, K)`` probabilities to ``size``; softmax sums stay 1."""
    h, w = size
    if probs.shape[:2] == (h, w):
        return probs
    out = cv2.resize(probs, (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(h, w, probs.shape[2])


def applied_threshold(options: PredictOptions, config: RunConfig) -> float:
    """The foreground threshold applied: ``options.threshold`` when given, else the one
    ``unet train`` chose on validation (boundary data; unless ``options.postprocess`` is
    False), else the run's ``threshold``."""
    if options.threshold is not None:
        return options.threshold
    chosen = (config.postprocess or {}).get("threshold") if options.postprocess else None
    return float(chosen) if chosen is not None else config.threshold


def applied_watershed(options: PredictOptions, config: RunConfig) -> float | None:
    """The merge level of the watershed split applied, or None (off):
    ``options.watershed`` when given (0: off), else the one ``unet train`` chose on
    validation (boundary data; unless ``options.postprocess`` is False)."""
    merge = options.watershed
    if merge is None and options.postprocess:
        merge = (config.postprocess or {}).get("watershed")
    return float(merge) if merge else None


def probs_to_mask(probs: np.ndarray, config: RunConfig, options: PredictOptions) -> np.ndarray:
    """Threshold (or argmax) and clean probabilities: bool ``(H, W)`` or class indices.

    The order: threshold, the watershed split (one class only), then
    :func:`~unet_lowered.inference.postprocess.clean_mask`'s steps."""
    mask = to_mask(probs, applied_threshold(options, config))
    merge = applied_watershed(options, config)
    if merge is not None and mask.dtype == bool:
        mask = split_touching(probs, mask, merge)
    keep, holes, min_area = postprocess_steps(options, config)
    return clean_mask(mask, keep, holes, min_area)


def postprocess_steps(options: PredictOptions, config: RunConfig) -> tuple[int | None, bool, int]:
    """``(keep_largest, fill_holes, min_area)`` as applied: the options given, and for
    the ones left None the run's choice (unless ``options.postprocess`` is False)."""
    chosen = (config.postprocess or {}) if options.postprocess else {}
    keep = options.keep_largest if options.keep_largest is not None else chosen.get("keep_largest")
    holes = options.fill_holes if options.fill_holes is not None else chosen.get("fill_holes")
    min_area = options.min_area if options.min_area is not None else chosen.get("min_area")
    return (keep or None), bool(holes), int(min_area or 0)


def mask_to_png(mask: np.ndarray, config: RunConfig) -> np.ndarray:
    """The array written as ``<id>.png``: 0/255 (one class) or the original label values.

    Multi-class masks hold the run's ``label_values`` (the values of the training
    masks), or the class indices 0..K-1 when the run recorded none.
    """
    if mask.dtype == bool:
        return mask.astype(np.uint8) * 255
    values = config.label_values
    table = np.asarray(values if values else range(max(config.num_classes, 2)))
    dtype = np.uint8 if table.max() <= 255 else np.uint16
    return table.astype(dtype)[mask]
