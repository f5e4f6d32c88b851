"""Training losses and metrics on logits, in ``keras.ops`` (TensorFlow, JAX and PyTorch).

The model ends without an activation, so every function here takes LOGITS:

* binary (``num_classes=1``): ``y_pred`` is ``(B, H, W, 1)`` logits of a sigmoid;
  ``y_true`` is ``(B, H, W, 1)``, a 0/1 mask (any numeric or bool dtype). The target
  is CLIPPED to ``[0, 1]``, so a 0/255 mask trains exactly
  as its 0/1 mask, every loss stays >= 0 (Dice in ``[0, 1]``), and a hard mask's
  foreground is the one the metrics count (truth > 0.5). Clipping rather than
  thresholding keeps soft targets in ``[0, 1]`` (label smoothing) as they are;
* multi-class (``num_classes=N > 1``): ``y_pred`` is ``(B, H, W, N)`` logits of a
  softmax; ``y_true`` is ``(B, H, W, 1)`` with integer labels, the class INDICES
  ``0..N-1`` (sparse, any numeric dtype; class 0 is the background), not the label
  values of the mask files (``{0, 128, 255}`` must become ``{0, 1, 2}``). A label
  outside ``0..N-1`` counts as no class on TensorFlow and JAX (it adds nothing to the
  cross-entropy and is no class's truth in Dice) and is refused by PyTorch.

``y_true`` may carry a per-pixel weight map as a SECOND channel:
``(B, H, W, 2) = [mask or labels, weight]`` (see :mod:`unet_lowered.training.weightmap`).
``weighted-bce`` requires it; every other loss and both metrics ignore it, so one
input pipeline serves every loss.

The cross-entropy is the sigmoid binary cross-entropy when ``num_classes=1`` and
the softmax categorical cross-entropy when ``num_classes > 1``; the names ``ce``,
``ce+dice`` and ``weighted-ce`` are accepted as aliases of ``bce``, ``bce+dice`` and
``weighted-bce``. Dice is always computed over the foreground classes only
(class 0 is left out of the multi-class Dice).

Every loss is a pure function returning one value per image, shape ``(B,)``, plus
a one-line subclass of the one wrapper :class:`SegmentationLoss` (mean over the
batch, saved with the model). Logits are cast to float32 first, so the losses are
stable under the ``mixed_bfloat16`` policy. :func:`get_loss` builds a loss from its
name (the names and aliases are :data:`unet_lowered.options.LOSSES` and
:data:`~unet_lowered.options.LOSS_ALIASES`). The training metrics are in
:mod:`unet_lowered.training.metrics`.
"""

from __future__ import annotations

import inspect
from typing import Any

import keras
from keras import ops

from unet_lowered import options
from unet_lowered.errors import UnetError
from unet_lowered.model import check_num_classes as _check_num_classes

DEFAULT_SMOOTH = 1.0
"""Dice smoothing term ``s``: an image whose truth and prediction are both empty scores 1."""

_PACKAGE = "unet_lowered"


# ---- helpers ---------------------------------------------------------------------------


def _split_true(y_true: Any) -> tuple[Any, Any]:
    """Split ``y_true`` into its target ``(B, H, W)`` and weight map ``(B, H, W)`` or None."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) != 4:
        raise UnetError(
            f"y_true must be (B, H, W, 1) or (B, H, W, 2), got shape {tuple(y_true.shape)}; "
            "add the channel axis (mask[..., None])"
        )
    channels = y_true.shape[-1]
    if channels not in (None, 1, 2):
        raise UnetError(
            f"y_true has {channels} channels; expected 1 (mask or integer labels) or 2 "
            "(mask or labels, then the weight map); pass sparse labels, not one-hot masks"
        )
    target = ops.cast(y_true[..., 0], "float32")
    weight = ops.cast(y_true[..., 1], "float32") if channels == 2 else None
    return target, weight


def _binary_target(target: Any, num_classes: int) -> Any:
    """The target ``(B, H, W)`` as the losses read it: a binary one clipped to ``[0, 1]``
    (0/255 reads as 0/1), multi-class labels as they are."""
    return ops.clip(target, 0.0, 1.0) if num_classes == 1 else target


def _logits(y_pred: Any, num_classes: int) -> Any:
    """Cast logits to float32 and check their channel count against ``num_classes``."""
    logits = ops.cast(y_pred, "float32")
    if len(logits.shape) != 4:
        raise UnetError(f"logits must be (B, H, W, C), got shape {tuple(logits.shape)}")
    channels = logits.shape[-1]
    if channels is not None and channels != num_classes:
        raise UnetError(
            f"the model outputs {channels} channels but the loss/metric was built for "
            f"num_classes={num_classes}; build both with the same num_classes"
        )
    return logits


def _labels(target: Any) -> Any:
    """Float labels ``(B, H, W)`` to int32 (rounded: float pipelines may carry 2.0000001)."""
    return ops.cast(ops.round(target), "int32")


def _pixel_crossentropy(target: Any, logits: Any, num_classes: int) -> Any:
    """Per-pixel cross-entropy ``(B, H, W)`` from the target ``(B, H, W)`` and logits.

    Binary: ``max(x, 0) - x*y + log(1 + exp(-|x|))``, the stable form of
    ``-[y log sigmoid(x) + (1-y) log(1 - sigmoid(x))]``. Multi-class:
    ``-log softmax(x)[label]`` via ``log_softmax``.
    """
    if num_classes == 1:
        x = logits[..., 0]
        return ops.relu(x) - x * target + ops.log1p(ops.exp(-ops.abs(x)))
    one_hot = ops.one_hot(_labels(target), num_classes, dtype="float32")
    return -ops.sum(one_hot * ops.log_softmax(logits, axis=-1), axis=-1)


def _foreground_probs(target: Any, logits: Any, num_classes: int) -> tuple[Any, Any]:
    """Probabilities and one-hot truth of the foreground classes, both ``(B, H, W, C)``.

    ``C = 1`` for binary; ``C = N - 1`` for multi-class (class 0 dropped).
    """
    if num_classes == 1:
        return ops.sigmoid(logits), ops.expand_dims(target, -1)
    probs = ops.softmax(logits, axis=-1)[..., 1:]
    one_hot = ops.one_hot(_labels(target), num_classes, dtype="float32")[..., 1:]
    return probs, one_hot


def _mean_per_image(values: Any) -> Any:
    """Mean over every axis but the batch axis: ``(B, ...) -> (B,)``."""
    ndim = len(values.shape)
    # An empty axis tuple means "all axes" to torch, so (B,) is returned as it is.
    return values if ndim == 1 else ops.mean(values, axis=tuple(range(1, ndim)))


# ---- pure loss functions ----------------------------------------------------------------


def bce_loss(y_true: Any, y_pred: Any, num_classes: int = 1) -> Any:
    """Cross-entropy on logits, averaged over the pixels of each image.

    Binary: ``mean_x [max(z, 0) - z*y + log(1 + exp(-|z|))]`` (sigmoid BCE with
    logits ``z``); multi-class: ``mean_x [-log softmax(z)[label]]``.

    Args:
        y_true: ``(B, H, W, 1)`` mask (0/1; clipped to ``[0, 1]``, so 0/255 reads as 0/1)
            or class indices ``0..N-1``, optionally ``(B, H, W, 2)`` with a weight map
            as channel 1 (ignored here).
        y_pred: ``(B, H, W, num_classes)`` logits (any float dtype; computed in float32).
        num_classes: 1 for binary, N > 1 for softmax over N classes.

    Returns:
        ``(B,)`` float32 loss per image.
    """
    target, _ = _split_true(y_true)
    logits = _logits(y_pred, num_classes)
    target = _binary_target(target, num_classes)
    return _mean_per_image(_pixel_crossentropy(target, logits, num_classes))


def dice_loss(
    y_true: Any, y_pred: Any, num_classes: int = 1, smooth: float = DEFAULT_SMOOTH
) -> Any:
    """Soft Dice loss per image: ``1 - mean_c (2 sum(p*t) + s) / (sum(p) + sum(t) + s)``.

    Sums run over the pixels of one image, ``p`` are sigmoid (binary) or softmax
    (multi-class) probabilities, ``t`` the one-hot truth, ``c`` the foreground
    classes (binary: the one channel; multi-class: classes ``1..N-1``). The smooth
    term ``s`` (default 1) keeps empty images defined: an empty truth and an
    empty prediction give loss 0, and it damps the gradient on tiny objects.

    Args:
        y_true: ``(B, H, W, 1)`` mask (clipped to ``[0, 1]``) or class indices
            ``0..N-1`` (a weight channel is ignored).
        y_pred: ``(B, H, W, num_classes)`` logits.
        num_classes: 1 for binary, N > 1 for softmax over N classes.
        smooth: the smoothing term ``s`` (>= 0).

    Returns:
        ``(B,)`` float32 loss per image, in ``[0, 1]``.
    """
    target, _ = _split_true(y_true)
    target = _binary_target(target, num_classes)
    probs, truth = _foreground_probs(target, _logits(y_pred, num_classes), num_classes)
    intersection = ops.sum(probs * truth, axis=(1, 2))  # (B, C)
    total = ops.sum(probs, axis=(1, 2)) + ops.sum(truth, axis=(1, 2))
    dice = (2.0 * intersection + smooth) / (total + smooth)
    return 1.0 - ops.mean(dice, axis=-1)


def bce_dice_loss(
    y_true: Any, y_pred: Any, num_classes: int = 1, smooth: float = DEFAULT_SMOOTH
) -> Any:
    """Cross-entropy plus soft Dice, equally weighted: ``bce_loss + dice_loss`` per image.

    Args:
        y_true: ``(B, H, W, 1)`` mask or labels (a weight channel is ignored).
        y_pred: ``(B, H, W, num_classes)`` logits.
        num_classes: 1 for binary, N > 1 for softmax over N classes.
        smooth: Dice smoothing term (see :func:`dice_loss`).

    Returns:
        ``(B,)`` float32 loss per image.
    """
    return bce_loss(y_true, y_pred, num_classes) + dice_loss(y_true, y_pred, num_classes, smooth)


def _check_focal(gamma: float | None, alpha: float | None, num_classes: int) -> None:
    if gamma is None or gamma < 0:
        raise UnetError(f"focal loss gamma must be a number >= 0, got {gamma}")
    if alpha is not None:
        if num_classes > 1:
            raise UnetError("focal loss alpha is for binary masks only; use alpha=None")
        if not 0.0 <= alpha <= 1.0:
            raise UnetError(f"focal loss alpha must be in [0, 1] or None, got {alpha}")


def focal_loss(
    y_true: Any,
    y_pred: Any,
    num_classes: int = 1,
    gamma: float = 2.0,
    alpha: float | None = None,
) -> Any:
    """Focal loss (Lin et al. 2017) per image: ``mean_x [-a_t (1 - p_t)^gamma log p_t]``.

    ``p_t`` is the predicted probability of the true class. ``alpha`` (binary only)
    weights the foreground ``alpha`` and the background ``1 - alpha``; the default
    None weights both 1 (Lin et al. use 0.25 for detection, where foreground is
    rare; for lungs it would bias towards background). With ``gamma=0`` and
    ``alpha=None`` this is exactly :func:`bce_loss`. ``1 - p_t`` is computed as
    ``-expm1(-ce)`` so it stays accurate when ``p_t`` is close to 1.

    Args:
        y_true: ``(B, H, W, 1)`` mask or labels (a weight channel is ignored).
        y_pred: ``(B, H, W, num_classes)`` logits.
        num_classes: 1 for binary, N > 1 for softmax over N classes.
        gamma: focusing parameter (>= 0); 2 as in the paper.
        alpha: foreground weight in ``[0, 1]`` (binary only) or None.

    Returns:
        ``(B,)`` float32 loss per image.

    Raises:
        UnetError: ``gamma < 0``, ``alpha`` outside ``[0, 1]``, or alpha with multi-class.
    """
    _check_focal(gamma, alpha, num_classes)
    target, _ = _split_true(y_true)
    target = _binary_target(target, num_classes)
    ce = _pixel_crossentropy(target, _logits(y_pred, num_classes), num_classes)
    # ce >= 0 in exact arithmetic; the clamp keeps round-off from giving pow(<0, gamma) = NaN.
    ce = ops.maximum(ce, 0.0)
    focal = ops.power(-ops.expm1(-ce), gamma) * ce
    if alpha is not None:
        focal = (alpha * target + (1.0 - alpha) * (1.0 - target)) * focal
    return _mean_per_image(focal)


def weighted_bce_loss(y_true: Any, y_pred: Any, num_classes: int = 1) -> Any:
    """Pixel-weighted cross-entropy (the paper's energy) per image: ``mean_x w(x) ce(x)``.

    The weight map ``w`` arrives as channel 1 of ``y_true``
    (``(B, H, W, 2) = [mask or labels, weight]``), computed once per mask by
    :func:`unet_lowered.training.weightmap.weight_map`. The paper sums ``w(x) log p(x)``;
    dividing by the pixel count keeps the scale independent of the image size.

    Args:
        y_true: ``(B, H, W, 2)``: mask (0/1, clipped to ``[0, 1]``) or class indices
            ``0..N-1``, then the weight map.
        y_pred: ``(B, H, W, num_classes)`` logits.
        num_classes: 1 for binary, N > 1 for softmax over N classes.

    Returns:
        ``(B,)`` float32 loss per image.

    Raises:
        UnetError: ``y_true`` has no weight channel.
    """
    target, weight = _split_true(y_true)
    if weight is None:
        raise UnetError(
            "the weighted-bce loss needs y_true of shape (B, H, W, 2) = [mask, weight map]; "
            "add the weight map (unet_lowered.training.weightmap.weight_map) as a second channel"
        )
    target = _binary_target(target, num_classes)
    ce = _pixel_crossentropy(target, _logits(y_pred, num_classes), num_classes)
    return _mean_per_image(weight * ce)


# ---- keras.losses.Loss wrappers -----------------------------------------------------------


class SegmentationLoss(keras.losses.Loss):
    """One of the pure losses above as a :class:`keras.losses.Loss` (mean over the batch).

    The one wrapper, as Keras' own ``LossFunctionWrapper``: a subclass names its
    function in ``fn`` (and its default name); the keyword arguments of the function
    (``smooth``, ``gamma``, ``alpha``) are stored, passed on and saved in the config.

    Args:
        num_classes: 1 for binary sigmoid logits, N > 1 for softmax logits over N classes.
        name: The loss name (default: the subclass's).
        reduction: Keras' reduction of the per-image values.
        dtype: Keras' loss dtype.
        **kwargs: Keyword arguments of ``fn``.
    """

    fn: Any = staticmethod(bce_loss)
    default_name = "bce"

    def __init__(
        self,
        num_classes: int = 1,
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name or self.default_name, reduction=reduction, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        params = list(inspect.signature(self.fn).parameters.values())[3:]  # after num_classes
        unknown = set(kwargs) - {p.name for p in params}
        if unknown:
            raise UnetError(f"{type(self).__name__} takes no argument {', '.join(sorted(unknown))}")
        # Every parameter of fn, given or default, is an attribute and part of the config.
        self.kwargs = {p.name: kwargs.get(p.name, p.default) for p in params}
        self.kwargs = {k: None if v is None else float(v) for k, v in self.kwargs.items()}
        for key, value in self.kwargs.items():
            setattr(self, key, value)
        if self.fn is focal_loss:
            _check_focal(self.kwargs["gamma"], self.kwargs["alpha"], num_classes)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self.fn(y_true, y_pred, self.num_classes, **self.kwargs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, **self.kwargs}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BCELoss(SegmentationLoss):
    """Cross-entropy on logits (:func:`bce_loss`)."""

    fn, default_name = staticmethod(bce_loss), "bce"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiceLoss(SegmentationLoss):
    """Soft Dice loss per image (:func:`dice_loss`; ``smooth``)."""

    fn, default_name = staticmethod(dice_loss), "dice_loss"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BCEDiceLoss(SegmentationLoss):
    """Cross-entropy plus soft Dice (:func:`bce_dice_loss`; ``smooth``)."""

    fn, default_name = staticmethod(bce_dice_loss), "bce_dice"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FocalLoss(SegmentationLoss):
    """Focal loss (:func:`focal_loss`; ``gamma``, ``alpha``)."""

    fn, default_name = staticmethod(focal_loss), "focal"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WeightedBCELoss(SegmentationLoss):
    """Pixel-weighted cross-entropy (:func:`weighted_bce_loss`); y_true is [mask, weight]."""

    fn, default_name = staticmethod(weighted_bce_loss), "weighted_bce"


_LOSS_CLASSES: dict[str, type[SegmentationLoss]] = {
    "bce": BCELoss,
    "dice": DiceLoss,
    "bce+dice": BCEDiceLoss,
    "focal": FocalLoss,
    "weighted-bce": WeightedBCELoss,
}


def needs_weight_map(name: str) -> bool:
    """True when the loss reads a weight map from ``y_true[..., 1]`` (``weighted-bce``)."""
    return options.loss_name(name) == "weighted-bce"


def get_loss(name: str, num_classes: int = 1) -> keras.losses.Loss:
    """Build the loss called ``name`` for ``num_classes`` output channels.

    Args:
        name: one of :data:`unet_lowered.options.LOSSES` or an alias in
            :data:`unet_lowered.options.LOSS_ALIASES`.
        num_classes: 1 for binary sigmoid logits, N > 1 for softmax logits over N classes.

    Returns:
        A :class:`keras.losses.Loss` with default parameters (smooth 1, focal gamma 2).

    Raises:
        UnetError: unknown name (the message lists the valid ones) or bad ``num_classes``.
    """
    return _LOSS_CLASSES[options.loss_name(name)](num_classes=_check_num_classes(num_classes))
