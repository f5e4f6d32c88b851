"""Intensity and size preprocessing shared by training, evaluation and prediction.

One function, :func:`model_input`, turns a decoded image (any size, 8 or 16 bit,
gray or RGB) into what the network sees, so training and inference can never
drift apart. Training caches the result of steps 1-4 (:func:`prepare_image`) and
augments it before step 5; inference runs all five:

1. channels converted to what the model was trained on (1 gray or 3 RGB);
2. optional CLAHE (contrast-limited adaptive histogram equalisation);
3. scaled to ``[0, 1]`` by the image's own minimum and maximum, so a 12-bit X-ray
   stored in 16 bits looks the same as its 8-bit export; with ``invert_light``
   (an option for data that mix both polarities, as DSB2018's fluorescence and
   brightfield/stained nuclei), an image whose median lies in the upper half of
   its range (a light background) is inverted, so every image shows light objects
   on a dark background (:func:`light_background`);
4. resized (area interpolation when shrinking, linear when enlarging);
5. standardised per image to zero mean and unit variance (robust to the
   brightness and contrast differences between scanners and hospitals). Random
   crops in training are standardised on their whole image's scale
   (:func:`standardize_window`), as tiles are when a whole image is predicted.

This module sits at the top of the package, beside the model, because both
training and inference read it: it is the network's input contract.
"""

from __future__ import annotations

import cv2
import numpy as np

from unet_lowered.io.images import to_channels


def to_unit(image: np.ndarray) -> np.ndarray:
    """Scale an image to float32 in ``[0, 1]`` by its own min and max; shape ``(H, W, C)``.

    The float32 arithmetic of ``(x - lo) / (hi - lo)``. A uint8/uint16 image (every
    value exact in float32) is converted and shifted in one pass, its min and max read
    on the integers: a third fewer passes over a 4k X-ray, the same values.
    """
    if image.ndim == 2:
        image = image[:, :, None]
    exact = image.dtype in (np.uint8, np.uint16)
    x = image if exact else image.astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        return np.zeros(image.shape, np.float32)
    if exact:
        x = np.subtract(image, np.float32(lo), dtype=np.float32)
    else:
        x -= lo
    x /= hi - lo  # in place: no temporaries
    return x


LIGHT_MEDIAN = 0.5
"""An image in ``[0, 1]`` whose median is above this has a light background."""

MEDIAN_PIXELS = 1 << 18
"""Pixels the median is taken over at most (a regular subsample of larger images)."""


def light_background(x: np.ndarray) -> bool:
    """Whether an image scaled to ``[0, 1]`` (:func:`to_unit`) has a light background.

    Objects are the minority of the pixels in segmentation data, so the median is a
    background pixel: above :data:`LIGHT_MEDIAN` the objects stand out dark (brightfield,
    stained tissue), below it light (fluorescence). Colour images are judged on the
    mean of their channels; images over :data:`MEDIAN_PIXELS` on a regular subsample.
    On the 120 shared DSB2018 images the medians of the two kinds lie at 0.00-0.13
    and 0.65-0.94 of the range: the rule sorts every one of them as its mask does.
    """
    step = max(1, int(np.ceil(np.sqrt(x.shape[0] * x.shape[1] / MEDIAN_PIXELS))))
    sub = x[::step, ::step]
    gray = sub.mean(axis=2) if sub.ndim == 3 else sub
    return float(np.median(gray)) > LIGHT_MEDIAN


def apply_clahe(image: np.ndarray, clip_limit: float = 2.0, grid: int = 8) -> np.ndarray:
    """CLAHE on a gray image or on the lightness of an RGB image; dtype kept (uint8/uint16).

    Other dtypes (a float or int32 array from a Python caller; files decode to uint8 or
    uint16) are first scaled to uint16 by their own min and max: OpenCV's CLAHE takes
    only those two (a float image gave a raw cv2.error).
    """
    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(grid, grid))
    if image.dtype not in (np.uint8, np.uint16):
        image = np.rint(to_unit(image) * 65535).astype(np.uint16)
        image = image[:, :, 0] if image.shape[2] == 1 else image
    if image.ndim == 2:
        return op.apply(image)
    if image.dtype != np.uint8:
        image = (
            (image.astype(np.float32) / np.iinfo(image.dtype).max * 255).round().astype(np.uint8)
        )
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[:, :, 0] = op.apply(lab[:, :, 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def resize_image(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``(H, W, C)`` float image to ``size = (height, width)``; channels kept."""
    h, w = size
    if x.shape[:2] == (h, w):
        return x
    shrink = h * w < x.shape[0] * x.shape[1]
    out = cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out.reshape(h, w, -1)


def resize_mask(
    mask: np.ndarray, size: tuple[int, int], interpolation: int | None = None
) -> np.ndarray:
    """Resize an ``(H, W)`` label mask as its image is resized: labels stay labels, in place.

    Each label's indicator is resized with the image's interpolation (``interpolation``,
    or as :func:`resize_image` picks it: area averaging when shrinking, bilinear when
    enlarging) and each pixel takes the label with the largest share (a tie: the lower
    label). Nearest-neighbour resizing (``cv2.INTER_NEAREST``) samples each output
    pixel's top-left source pixel, which moves the mask up to half a source pixel down
    and right against its image (0.5 px at 224 -> 212).
    """
    h, w = size
    if mask.shape[:2] == (h, w):
        return mask
    if interpolation is None:
        shrink = h * w < mask.shape[0] * mask.shape[1]
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    labels = np.unique(mask)
    if labels.size == 1:
        return np.full((h, w), labels[0], dtype=mask.dtype)
    best = best_share = None
    for label in labels:
        share = cv2.resize((mask == label).astype(np.float32), (w, h), interpolation=interpolation)
        if best is None:
            best, best_share = np.full((h, w), label, dtype=mask.dtype), share
            continue
        wins = share > best_share
        best[wins] = label
        best_share = np.maximum(share, best_share)
    return best


def standardize(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-image zero mean, unit variance (over all pixels and channels); float32."""
    x = x.astype(np.float32, copy=False)
    return (x - x.mean()) / max(float(x.std()), eps)


def mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation over all pixels and channels, as :func:`standardize`
    computes them (float64 sums, so a 4k X-ray's statistics are exact)."""
    x = np.asarray(x)
    return float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))


def standardize_window(
    x: np.ndarray,
    window: tuple[float, float],
    whole: tuple[float, float],
    eps: float = 1e-6,
) -> np.ndarray:
    """Standardise a window (a training crop) on the scale of its whole image.

    Prediction standardises a whole image once and tiles it
    (:func:`model_input` with ``size=None``), so a crop in training must see the same
    values: a crop of mostly background, standardised on its own, would have its noise
    blown up to unit variance and its objects shrunk, values the network never meets
    when it predicts. The augmented crop ``x`` is first standardised on its own (which
    removes the linear brightness and contrast changes of the augmentation, as in
    resize mode), then placed where the crop before augmentation sits among the whole
    image's standardised values::

        standardize(x) * s_window / s_whole + (m_window - m_whole) / s_whole

    Without augmentation this equals :func:`standardize` of the whole image cut to
    the window.

    Args:
        x: The augmented window, float ``(h, w, C)`` in ``[0, 1]``.
        window: ``(mean, std)`` of the window before augmentation (:func:`mean_std`).
        whole: ``(mean, std)`` of the whole image, from :func:`prepare_image`.
        eps: Floor of the standard deviations.

    Returns:
        float32 ``(h, w, C)``.
    """
    (m_win, s_win), (m_all, s_all) = window, whole
    s_all = max(s_all, eps)
    scale = np.float32(s_win / s_all)
    shift = np.float32((m_win - m_all) / s_all)
    out = standardize(x, eps)
    out *= scale
    out += shift
    return out


def prepare_image(
    image: np.ndarray,
    channels: int,
    size: tuple[int, int] | None,
    clahe: bool = False,
    invert_light: bool = False,
) -> np.ndarray:
    """Steps 1-4: channels, optional CLAHE, ``[0, 1]`` scaling (and polarity), resize.

    Args:
        image: An array from :func:`unet_lowered.io.images.read_image` (``(H, W)`` or
            ``(H, W, 3)`` uint8/uint16), or any that
            :func:`~unet_lowered.io.images.to_channels` takes (``(H, W, 1)``, RGBA;
            floats, scaled by their own min and max); CLAHE takes uint8/uint16 only.
        channels: 1 or 3, as the model was trained.
        size: ``(height, width)`` to resize to, or None to keep the size (tiling, crops).
        clahe: Apply CLAHE first.
        invert_light: Invert an image with a light background (:func:`light_background`).

    Returns:
        float32 ``(height, width, channels)`` in ``[0, 1]``.
    """
    image = to_channels(image, channels)
    if clahe:
        image = apply_clahe(image)
    x = to_unit(image)
    if invert_light and light_background(x):
        np.subtract(1.0, x, out=x)
    if size is not None:
        x = resize_image(x, size)
    return x


def model_input(
    image: np.ndarray,
    channels: int,
    size: tuple[int, int] | None,
    clahe: bool = False,
    invert_light: bool = False,
) -> np.ndarray:
    """Turn a decoded image into the network's input: :func:`prepare_image`, then
    :func:`standardize`.

    Args:
        image: An array from :func:`unet_lowered.io.images.read_image` (``(H, W)`` or
            ``(H, W, 3)`` uint8/uint16), or any that
            :func:`~unet_lowered.io.images.to_channels` takes (``(H, W, 1)``, RGBA;
            floats, scaled by their own min and max); CLAHE takes uint8/uint16 only.
        channels: 1 or 3, as the model was trained.
        size: ``(height, width)`` to resize to, or None to keep the size (tiling).
        clahe: Apply CLAHE first.
        invert_light: Invert an image with a light background (:func:`light_background`).

    Returns:
        float32 array of shape ``(height, width, channels)``, standardised.
    """
    return standardize(prepare_image(image, channels, size, clahe, invert_light))
