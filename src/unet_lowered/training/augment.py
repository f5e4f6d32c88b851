"""Data augmentation for segmentation: one random transform applied to an image and its mask.

Everything here is a pure NumPy/OpenCV function of its arguments and an explicit
``numpy.random.Generator``, so the same seed gives the same result on any machine
and the functions can be tested without a model.

Arrays follow the training pipeline's convention (:mod:`unet_lowered.training.cache`):

* image: float32 ``(H, W, C)`` in ``[0, 1]`` (after :func:`preprocess.to_unit` and
  resizing; standardisation comes *after* augmentation);
* mask: uint8 ``(H, W)`` labels (0/1 or class indices);
* weight (optional): float32 ``(H, W)`` per-pixel loss weights that move with the mask.

Geometric transforms (rotation, scale, shift and the paper's elastic deformation) are
folded into a single resampling: the affine part is one 2x3 matrix, and when elastic
deformation is on, the dense displacement field is composed with that matrix into one
``cv2.remap`` coordinate map. The image is interpolated linearly, mask and weight map
with nearest neighbour (labels stay labels), all with reflected borders
(``BORDER_REFLECT_101``), so image and mask stay aligned pixel for pixel.

Note on intensity: brightness and contrast are global linear changes, which per-image
standardisation (:func:`preprocess.standardize`, applied after augmentation) undoes
exactly; they only matter through the clipping to ``[0, 1]`` that follows them
(saturated highlights and shadows). Gamma is non-linear and survives standardisation.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from unet_lowered import preprocess
from unet_lowered.errors import UnetError

_BORDER = cv2.BORDER_REFLECT_101


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run and their ranges. Defaults suit chest X-rays.

    Each group has an on/off switch; inside a group a neutral range (0, or ``(1, 1)``)
    turns one transform off. Random values are drawn uniformly from the ranges
    (gamma log-uniformly, so darker and lighter are equally likely).

    Attributes:
        flip_lr: Flip left-right with probability 0.5. Off by default: chest X-rays
            have a fixed anatomy (heart on the image's right).
        flip_ud: Flip upside-down with probability 0.5.
        affine: Random rotation, scale and shift (one affine warp).
        rotation: Maximum rotation in degrees (uniform in ``[-rotation, rotation]``).
        scale: ``(low, high)`` zoom factor range (> 1 enlarges).
        shift: Maximum shift as a fraction of width and height, drawn per axis.
        elastic: Elastic deformation as in Ronneberger et al. (2015): random
            displacement vectors on a coarse grid, interpolated bicubically to every pixel.
        elastic_grid: Points per side of the coarse grid (the paper: 3).
        elastic_sigma: Standard deviation of the grid displacements in pixels of the
            working image (the paper: 10).
        intensity: Brightness, contrast and gamma changes, and sometimes local contrast
            equalisation (image only).
        brightness: Maximum additive change (uniform in ``[-brightness, brightness]``).
        contrast: ``(low, high)`` factor range, applied around the image mean.
        gamma: ``(low, high)`` exponent range (``x ** gamma``).
        clahe_p: Probability of CLAHE (8x8 tiles) before the other intensity changes:
            many scanners deliver X-rays with such local contrast processing applied.
        clahe_clip: ``(low, high)`` CLAHE clip-limit range.
        noise: Add Gaussian noise (on by default: X-rays from other scanners and doses
            are noisier; the training pipeline switches it with ``intensity``).
        noise_std: Maximum noise standard deviation (uniform in ``[0, noise_std]``).
        blur: Gaussian blur.
        blur_sigma: ``(low, high)`` blur sigma range in pixels.
        zoom_out_p: Probability of a zoom-out into a black or collimated border (a small
            patient in a large frame); image and mask shrink together.
        zoom_out: ``(low, high)`` scale range of the zoom-out.
        frame_crop_p: Probability of a frame crop: the top or bottom 10-30% cut off
            (apices or bases outside the field) and the rest stretched back.
        opacity_p: Probability of a dense opacity in the lung field, one of
            :data:`OPACITIES` with equal chance: effusion-like from the base or patchy
            like consolidation (inside the lung mask), or a white-out of one lung that
            fades past its outline; the mask is unchanged, so the network learns that a
            white lung is still lung.
        lowres_p: Probability of a low-resolution round trip (down by 2-4x and back).
        stamp_p: Probability of burned-in text or a side marker stamped in a corner.

    The five cross-site shifts above are off (probability 0) by default; when off they
    draw nothing from the generator, so the batches are exactly those without them.
    """

    flip_lr: bool = False
    flip_ud: bool = False
    affine: bool = True
    rotation: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.08
    elastic: bool = True
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    intensity: bool = True
    brightness: float = 0.1
    contrast: tuple[float, float] = (0.8, 1.2)
    gamma: tuple[float, float] = (0.7, 1.5)
    clahe_p: float = 0.25
    clahe_clip: tuple[float, float] = (1.0, 3.0)
    noise: bool = True
    noise_std: float = 0.03
    blur: bool = False
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    zoom_out_p: float = 0.0
    zoom_out: tuple[float, float] = (0.5, 0.85)
    frame_crop_p: float = 0.0
    opacity_p: float = 0.0
    lowres_p: float = 0.0
    stamp_p: float = 0.0

    def __post_init__(self) -> None:
        for name in ("scale", "contrast", "gamma", "blur_sigma", "clahe_clip", "zoom_out"):
            value = getattr(self, name)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise UnetError(
                    f"augmentation option {name}={value!r} must be a (low, high) pair"
                ) from None
            if not 0 <= low <= high:
                raise UnetError(
                    f"augmentation option {name}=({low}, {high}) must satisfy 0 <= low <= high"
                )
            if name in ("scale", "gamma") and low <= 0:
                raise UnetError(f"augmentation option {name}=({low}, {high}) must be positive")
            object.__setattr__(self, name, (low, high))
        for name in ("rotation", "shift", "elastic_sigma", "brightness", "noise_std"):
            if float(getattr(self, name)) < 0:
                raise UnetError(f"augmentation option {name}={getattr(self, name)} must be >= 0")
        for name in ("clahe_p", "zoom_out_p", "frame_crop_p", "opacity_p", "lowres_p", "stamp_p"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise UnetError(
                    f"augmentation option {name}={getattr(self, name)} must be in [0, 1]"
                )
        if self.shift >= 0.5:
            raise UnetError(f"augmentation option shift={self.shift} must be below 0.5")
        if int(self.elastic_grid) < 2:
            raise UnetError(
                f"augmentation option elastic_grid={self.elastic_grid} must be at least 2"
            )

    @classmethod
    def off(cls) -> AugmentConfig:
        """A configuration that changes nothing (every group switched off)."""
        return cls(
            flip_lr=False,
            flip_ud=False,
            affine=False,
            elastic=False,
            intensity=False,
            noise=False,
            blur=False,
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AugmentConfig:
        """Build from a mapping (e.g. a config file); missing keys keep their defaults.

        Raises:
            UnetError: An unknown key (the message lists the valid ones) or a bad value.
        """
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise UnetError(
                f"unknown augmentation option(s) {', '.join(unknown)}; "
                f"valid options: {', '.join(valid)}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (ranges as lists), the inverse of :meth:`from_dict`."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def augment(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply one random augmentation to an image and, identically, to its mask.

    Order: flips, one geometric warp (affine composed with elastic), the cross-site
    shifts (zoom-out, frame crop, opacity inside the lungs, low resolution, stamps;
    each only when its probability is above 0), intensity (gamma, contrast,
    brightness, then clip to ``[0, 1]``), blur, noise.

    Args:
        image: float ``(H, W, C)`` in ``[0, 1]``.
        mask: uint8 ``(H, W)`` labels.
        rng: The source of randomness (seed it for reproducible results).
        cfg: What to apply.
        weight: Optional float ``(H, W)`` weight map, transformed like the mask.

    Returns:
        ``(image, mask)`` or, when ``weight`` is given, ``(image, mask, weight)``:
        new arrays of float32 ``(H, W, C)``, uint8 ``(H, W)`` and float32 ``(H, W)``.

    Raises:
        ValueError: Shapes of image, mask and weight do not agree.
    """
    if image.ndim != 3 or mask.shape != image.shape[:2]:
        raise ValueError(
            f"augment expects image (H, W, C) and mask (H, W) of the same size, "
            f"got {image.shape} and {mask.shape}"
        )
    if weight is not None and weight.shape != mask.shape:
        raise ValueError(f"weight map {weight.shape} must have the mask's shape {mask.shape}")
    image = image.astype(np.float32)  # a copy: callers' arrays are never modified
    mask = mask.copy()
    if weight is not None:
        weight = weight.astype(np.float32)

    flips = []
    if cfg.flip_lr and rng.random() < 0.5:
        flips.append(1)
    if cfg.flip_ud and rng.random() < 0.5:
        flips.append(0)
    if flips:
        image = np.ascontiguousarray(np.flip(image, axis=flips))
        mask = np.ascontiguousarray(np.flip(mask, axis=flips))
        if weight is not None:
            weight = np.ascontiguousarray(np.flip(weight, axis=flips))

    h, w = mask.shape
    matrix = random_affine((h, w), rng, cfg) if cfg.affine else None
    coarse = (
        elastic_displacements(rng, cfg.elastic_grid, cfg.elastic_sigma) if cfg.elastic else None
    )
    if matrix is not None or coarse is not None:
        image, mask, weight = warp(image, mask, matrix, coarse, weight)
    image, mask, weight = cross_site_shifts(image, mask, rng, cfg, weight)

    if cfg.intensity:
        image = random_intensity(image, rng, cfg)
    if cfg.blur:
        sigma = rng.uniform(*cfg.blur_sigma)
        if sigma > 0:
            image = cv2.GaussianBlur(image, (0, 0), sigma, borderType=_BORDER).reshape(image.shape)
    if cfg.noise:
        std = rng.uniform(0.0, cfg.noise_std)
        noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(std)
        image = np.clip(image + noise, 0.0, 1.0)

    if weight is None:
        return image, mask
    return image, mask, weight


def _chance(rng: np.random.Generator, p: float) -> bool:
    """True with probability ``p``; draws nothing when ``p`` is 0 (streams stay as they were)."""
    return p > 0 and rng.random() < p


def cross_site_shifts(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The shifts of X-rays from other hospitals, each with its probability in ``cfg``.

    Args:
        image: float32 ``(H, W, C)`` in ``[0, 1]``.
        mask: uint8 ``(H, W)`` labels (foreground non-zero).
        rng: The source of randomness.
        cfg: The probabilities (``zoom_out_p``, ``frame_crop_p``, ``opacity_p``,
            ``lowres_p``, ``stamp_p``).
        weight: Optional ``(H, W)`` weight map, moved like the mask.

    Returns:
        ``(image, mask, weight)``; the mask changes only with the geometric shifts.
    """
    h, w = mask.shape
    if _chance(rng, cfg.zoom_out_p):
        scale = rng.uniform(*cfg.zoom_out)
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
        border = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.05, 0.25))  # collimation
        image = _paste(image, (sh, sw), (top, left), border, cv2.INTER_AREA)
        mask = _paste(mask, (sh, sw), (top, left), 0, cv2.INTER_AREA, labels=True)
        if weight is not None:
            weight = _paste(weight, (sh, sw), (top, left), 1.0, cv2.INTER_AREA)
    if _chance(rng, cfg.frame_crop_p):
        cut = round(h * rng.uniform(0.1, 0.3))
        rows = slice(cut, h) if rng.random() < 0.5 else slice(0, h - cut)  # apices or bases
        image = _stretch(image[rows], (h, w), cv2.INTER_LINEAR)
        mask = _stretch(mask[rows], (h, w), cv2.INTER_LINEAR, labels=True)
        if weight is not None:
            weight = _stretch(weight[rows], (h, w), cv2.INTER_LINEAR)
    if _chance(rng, cfg.opacity_p) and mask.any():
        kind = OPACITIES[int(rng.integers(0, len(OPACITIES)))]
        image = paint_opacity(image, mask > 0, rng, kind)
    if _chance(rng, cfg.lowres_p):
        factor = rng.uniform(2.0, 4.0)
        small = (max(1, round(h / factor)), max(1, round(w / factor)))
        image = _stretch(_stretch(image, small, cv2.INTER_AREA), (h, w), cv2.INTER_LINEAR)
    if _chance(rng, cfg.stamp_p):
        image = stamp(image, rng)
    return image, mask, weight


def _paste(
    array: np.ndarray,
    size: tuple[int, int],
    at: tuple[int, int],
    fill: float,
    interpolation: int,
    labels: bool = False,
) -> np.ndarray:
    """``array`` shrunk to ``size`` on a canvas of its own shape filled with ``fill``."""
    small = _stretch(array, size, interpolation, labels)
    out = np.full_like(array, fill)
    out[at[0] : at[0] + size[0], at[1] : at[1] + size[1]] = small
    return out


def _stretch(
    array: np.ndarray, size: tuple[int, int], interpolation: int, labels: bool = False
) -> np.ndarray:
    """``array`` resized to ``size``; ``labels``: an ``(H, W)`` mask, resized as its image
    is with ``interpolation`` and kept labels (:func:`~unet_lowered.preprocess.resize_mask`;
    nearest neighbour would move it against the image)."""
    if labels:
        return preprocess.resize_mask(array, size, interpolation)
    out = cv2.resize(array, (size[1], size[0]), interpolation=interpolation)
    return out.reshape(size + array.shape[2:])


OPACITIES = ("effusion", "consolidation", "white-out")
"""The kinds of :func:`paint_opacity`; ``opacity_p`` draws one of them with equal chance."""


def paint_opacity(
    image: np.ndarray, lung: np.ndarray, rng: np.random.Generator, kind: str
) -> np.ndarray:
    """A dense opacity in the lung field, the mask left as it is.

    ``effusion``: each lung (a connected object of ``lung``) is whitened from its base
    up to 20-60% of its height, the upper edge rising towards the outer side (the
    meniscus) and soft. ``consolidation``: smooth patches (blurred noise above a
    threshold). Both whiten only inside ``lung`` (towards 0.7-0.85, soft tissue).
    ``white-out``: one of the two largest lungs opacified *past its outline*, as a
    hemithorax full of fluid or collapsed lung looks: the lung dilated by 3-8% of the
    image width and blurred, blended by 0.6-0.95 towards the image's own soft-tissue
    brightness (a 70-90th percentile of the pixels outside ``lung``), so the lung's
    edge fades into the chest wall and mediastinum and only the ribs, the other lung
    and the body's outline tell where the field lies. Pixels only get whiter.

    Args:
        image: float ``(H, W)`` or ``(H, W, C)`` in ``[0, 1]``.
        lung: bool ``(H, W)`` lung field.
        rng: The source of randomness.
        kind: One of :data:`OPACITIES`.

    Returns:
        The new image, same shape and dtype.
    """
    h, w = lung.shape
    if kind == "effusion":
        count, labels = cv2.connectedComponents(lung.astype(np.uint8), connectivity=8)
        weight = np.zeros((h, w), np.float32)
        sides = [k for k in range(1, count) if rng.random() < 0.6] or [int(rng.integers(1, count))]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        for k in sides:
            rows, cols = np.nonzero(labels == k)
            top, bottom = rows.min(), rows.max()
            level = bottom - rng.uniform(0.2, 0.6) * (bottom - top)
            outward = np.sign(cols.mean() - w / 2)  # the lateral side rises
            rise = rng.uniform(0.05, 0.15) * (bottom - top)
            lateral = np.clip(outward * (xx - cols.mean()) / max(int(np.ptp(cols)), 1) + 0.5, 0, 1)
            fluid = 1 / (1 + np.exp(-(yy - (level - rise * lateral)) / max(1.0, 0.02 * h)))
            weight = np.maximum(weight, fluid * (labels == k) * rng.uniform(0.7, 0.95))
    elif kind == "consolidation":
        noise = rng.standard_normal((h, w)).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), rng.uniform(0.03, 0.07) * max(h, w))
        noise /= max(float(noise.std()), 1e-6)
        weight = np.clip((noise - rng.uniform(0.3, 1.0)) * 1.5, 0, 1) * lung * rng.uniform(0.6, 0.9)
    elif kind == "white-out":
        return _white_out(image, lung, rng)
    else:
        raise ValueError(f"unknown opacity {kind!r}; use one of: {', '.join(OPACITIES)}")
    white = np.float32(rng.uniform(0.7, 0.85))
    weight = weight.astype(np.float32)
    if image.ndim == 3:
        weight = weight[:, :, None]
    x = image.astype(np.float32)
    return np.maximum(x, x * (1 - weight) + white * weight).astype(image.dtype)


def _white_out(image: np.ndarray, lung: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``paint_opacity(kind="white-out")``: one lung opacified past its outline."""
    side = one_lung(lung, rng)
    if side is None:
        return image.copy()
    w = lung.shape[1]
    return white_out(
        image,
        side,
        lung,
        radius=max(1, round(rng.uniform(0.03, 0.08) * w)),
        sigma=rng.uniform(0.02, 0.04) * w,
        strength=rng.uniform(0.6, 0.95),
        tissue=rng.uniform(0.7, 0.9),
    )


def one_lung(lung: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """One of the two largest objects of the bool ``lung`` field, chosen by ``rng``
    (None when it has none)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        lung.astype(np.uint8), connectivity=8
    )
    if count < 2:
        return None
    largest = 1 + np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1][:2]
    return labels == largest[int(rng.integers(0, len(largest)))]


def white_out(
    image: np.ndarray,
    side: np.ndarray,
    lung: np.ndarray,
    radius: int,
    sigma: float,
    strength: float,
    tissue: float,
    whiten_only: bool = True,
) -> np.ndarray:
    """``side`` (one lung) opacified past its outline: dilated by ``radius`` pixels,
    blurred by ``sigma``, blended by ``strength`` towards the ``tissue`` quantile of the
    pixels outside ``lung``; with ``whiten_only`` no pixel gets darker.

    Args:
        image: float ``(H, W)`` or ``(H, W, C)`` in ``[0, 1]``.
        side: bool ``(H, W)``: the lung to white out.
        lung: bool ``(H, W)``: the whole lung field (its outside sets the brightness).

    Returns:
        The new image, same shape and dtype.
    """
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    region = cv2.dilate(side.astype(np.uint8), disk).astype(np.float32)
    weight = cv2.GaussianBlur(region, (0, 0), sigma)
    weight *= np.float32(strength)
    gray = image if image.ndim == 2 else image.mean(axis=2)
    outside = gray[~lung]
    white = np.float32(np.quantile(outside, tissue) if outside.size else 0.8)
    if image.ndim == 3:
        weight = weight[:, :, None]
    x = image.astype(np.float32)
    blend = x * (1 - weight) + white * weight
    return (np.maximum(x, blend) if whiten_only else blend).astype(image.dtype)


def stamp(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Burned-in text or a side marker (white or black) in a random corner of the image."""
    h, w = image.shape[:2]
    out = np.ascontiguousarray(image, dtype=np.float32).copy()
    text = str(rng.choice(["L", "R", "AP", "PA", "SUPINE", "PORTABLE", "1", "23:14"]))
    scale = max(h, w) / 256 * rng.uniform(0.4, 0.9)
    thickness = max(1, round(2 * scale))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x = (
        int(rng.integers(0, max(1, w // 8)))
        if rng.random() < 0.5
        else max(0, w - tw - int(rng.integers(0, max(1, w // 8))))
    )
    y = (
        th + int(rng.integers(0, max(1, h // 8)))
        if rng.random() < 0.5
        else h - int(rng.integers(0, max(1, h // 8)))
    )
    value = 1.0 if rng.random() < 0.8 else 0.0
    ink = np.zeros((h, w), np.uint8)  # OpenCV draws text on 8-bit images only
    cv2.putText(ink, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness)
    out[ink > 0] = value
    return out


def random_affine(
    shape: tuple[int, int], rng: np.random.Generator, cfg: AugmentConfig
) -> np.ndarray:
    """Draw a rotation, scale and shift about the image centre as one 2x3 matrix.

    Args:
        shape: ``(height, width)``.
        rng: Random generator.
        cfg: Supplies ``rotation`` (degrees), ``scale`` (range) and ``shift`` (fraction).

    Returns:
        float64 ``(2, 3)`` forward matrix (source pixel -> output pixel), as
        ``cv2.warpAffine`` takes it.
    """
    h, w = shape
    angle = rng.uniform(-cfg.rotation, cfg.rotation)
    zoom = rng.uniform(*cfg.scale)
    tx, ty = rng.uniform(-cfg.shift, cfg.shift, size=2) * (w, h)
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, zoom)
    matrix[:, 2] += (tx, ty)
    return matrix


@functools.lru_cache(maxsize=32)
def cubic_weights(n: int, points: int) -> np.ndarray:
    """Matrix that interpolates ``points`` evenly spaced samples to ``n`` pixels bicubically.

    The first and last samples sit on the first and last pixel (corner aligned), so
    a 3-point grid has its points at both edges and the centre. Keys' cubic kernel
    (a = -0.5, as in bicubic image resizing) passes exactly through the samples;
    beyond the ends the samples are extended linearly, so linear ramps are
    reproduced exactly everywhere.

    Args:
        n: Output length in pixels.
        points: Number of grid samples (>= 2).

    Returns:
        float64 ``(n, points)`` matrix ``W``; ``W @ samples`` gives the n values
        (cached and read-only).
    """
    u = np.arange(n) * ((points - 1) / max(n - 1, 1))
    base = np.minimum(np.floor(u).astype(int), points - 2)
    out = np.zeros((n, points))
    rows = np.arange(n)
    last = points - 1
    for k in range(-1, 3):
        idx = base + k
        t = np.abs(u - idx)
        wk = np.where(
            t <= 1,
            1.5 * t**3 - 2.5 * t**2 + 1,
            np.where(t < 2, -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2, 0.0),
        )
        # A virtual sample j steps beyond an end is that end plus j times the end slope.
        before = np.maximum(-idx, 0)
        after = np.maximum(idx - last, 0)
        inside = np.clip(idx, 0, last)
        np.add.at(out, (rows, inside), wk * (1 + before + after))
        np.add.at(out, (rows, np.full(n, 1)), -wk * before)
        np.add.at(out, (rows, np.full(n, last - 1)), -wk * after)
    out.flags.writeable = False
    return out


def elastic_displacements(
    rng: np.random.Generator, grid: int = 3, sigma: float = 10.0
) -> np.ndarray:
    """Random displacement vectors on a coarse lattice (the paper: 3x3, 10 px std).

    Returns:
        float64 ``(2, grid, grid)``: x then y displacements in pixels, Gaussian with
        standard deviation ``sigma``.
    """
    return rng.normal(0.0, sigma, size=(2, grid, grid))


def elastic_field(
    shape: tuple[int, int], rng: np.random.Generator, grid: int = 3, sigma: float = 10.0
) -> np.ndarray:
    """The paper's smooth random deformation as a dense displacement field.

    Displacement vectors with standard deviation ``sigma`` pixels are drawn on a
    ``grid x grid`` lattice spanning the image (corners included, see
    :func:`elastic_displacements`) and interpolated bicubically to every pixel
    (:func:`cubic_weights`). :func:`augment` applies the same field without building
    it (:func:`sampling_maps`); this function is for inspection and tests.

    Args:
        shape: ``(height, width)``.
        rng: Random generator.
        grid: Lattice points per side (the paper: 3).
        sigma: Standard deviation of the lattice displacements in pixels (the paper: 10).

    Returns:
        float32 ``(2, H, W)``: displacement in x (columns) and in y (rows); output pixel
        ``(y, x)`` samples the input at ``(y + d[1], x + d[0])`` (before the affine part).
    """
    h, w = shape
    coarse = elastic_displacements(rng, grid, sigma)
    return (cubic_weights(h, grid) @ coarse @ cubic_weights(w, grid).T).astype(np.float32)


def sampling_maps(
    shape: tuple[int, int], matrix: np.ndarray | None, coarse: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel samples the input: ``A^-1 (p + d(p))``, for ``cv2.remap``.

    ``d`` is the bicubic interpolation of the coarse displacements, ``Wy @ C @ Wx.T``
    (see :func:`elastic_field`), and ``A`` the forward affine matrix. Both the
    pixel grid and ``d`` are sums of outer products, so the whole map is one small
    product ``U @ Q @ V.T`` of ``(H, g+2)``, ``(g+2, g+2)`` and ``(g+2, W)`` matrices:
    no dense intermediate fields are built.

    Args:
        shape: ``(height, width)``.
        matrix: ``(2, 3)`` forward affine matrix, or None (identity).
        coarse: ``(2, g, g)`` lattice displacements (x then y) in pixels, or None.

    Returns:
        float32 ``(H, W)`` maps of source x (column) and y (row) coordinates.
    """
    h, w = shape
    inv = (
        np.array([[1.0, 0, 0], [0, 1.0, 0]])
        if matrix is None
        else cv2.invertAffineTransform(matrix)
    )
    g = 0 if coarse is None else coarse.shape[1]
    u = np.empty((h, g + 2))
    v = np.empty((w, g + 2))
    u[:, g], u[:, g + 1] = 1.0, np.arange(h)  # rows: constant, y
    v[:, g], v[:, g + 1] = np.arange(w), 1.0  # columns: x, constant
    if g:
        u[:, :g] = cubic_weights(h, g)
        v[:, :g] = cubic_weights(w, coarse.shape[2])
    maps = []
    for a0, a1, a2 in inv:
        q = np.zeros((g + 2, g + 2))
        if g:
            q[:g, :g] = a0 * coarse[0] + a1 * coarse[1]
        q[g, g] = a0  # a0 * x
        q[g + 1, g + 1] = a1  # a1 * y
        q[g, g + 1] = a2  # constant
        maps.append((u @ q @ v.T).astype(np.float32))
    return maps[0], maps[1]


def warp(
    image: np.ndarray,
    mask: np.ndarray,
    matrix: np.ndarray | None,
    coarse: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Resample image, mask and weight map with one geometric transform.

    The output pixel ``p`` takes the input at ``A^-1 (p + d(p))``: the elastic
    displacement ``d`` (if any) is applied in output coordinates and then mapped back
    through the inverse of the affine ``A`` (if any), so both cost a single resampling
    (``cv2.warpAffine`` without elastic, ``cv2.remap`` with it).

    Args:
        image: float32 ``(H, W, C)``; linear interpolation.
        mask: uint8 ``(H, W)``; nearest neighbour.
        matrix: ``(2, 3)`` forward affine matrix, or None.
        coarse: ``(2, g, g)`` elastic lattice displacements in pixels (see
            :func:`elastic_field`), or None.
        weight: float32 ``(H, W)`` or None; nearest neighbour, like the mask.

    Returns:
        ``(image, mask, weight)`` warped (weight None when not given).
    """
    h, w = mask.shape
    c = image.shape[2]
    if coarse is None and matrix is None:
        return image, mask, weight
    if coarse is None:

        def resample(a: np.ndarray, interpolation: int) -> np.ndarray:
            return cv2.warpAffine(a, matrix, (w, h), flags=interpolation, borderMode=_BORDER)

    else:
        xs, ys = sampling_maps((h, w), matrix, coarse)

        def resample(a: np.ndarray, interpolation: int) -> np.ndarray:
            return cv2.remap(a, xs, ys, interpolation, borderMode=_BORDER)

    image = resample(image, cv2.INTER_LINEAR).reshape(h, w, c)
    mask = resample(mask, cv2.INTER_NEAREST)
    if weight is not None:
        weight = resample(weight, cv2.INTER_NEAREST)
    return image, mask, weight


def random_intensity(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Sometimes CLAHE, then random gamma, contrast about the mean and brightness; clipped
    to ``[0, 1]``.

    Args:
        image: float32 ``(H, W, C)`` in ``[0, 1]``.
        rng: Random generator.
        cfg: Supplies ``clahe_p``, ``clahe_clip``, ``gamma``, ``contrast`` and ``brightness``.

    Returns:
        float32 ``(H, W, C)`` in ``[0, 1]``.
    """
    lo, hi = cfg.gamma
    gamma = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    contrast = rng.uniform(*cfg.contrast)
    brightness = rng.uniform(-cfg.brightness, cfg.brightness)
    x = np.clip(image, 0.0, 1.0)
    if cfg.clahe_p > 0 and rng.random() < cfg.clahe_p:
        x = local_contrast(x, rng.uniform(*cfg.clahe_clip))
    if gamma != 1.0:
        x = np.power(x, np.float32(gamma))
    mean = np.float32(x.mean())
    x = (x - mean) * np.float32(contrast) + (mean + np.float32(brightness))
    return np.clip(x, 0.0, 1.0, out=x)


def local_contrast(image: np.ndarray, clip_limit: float, grid: int = 8) -> np.ndarray:
    """CLAHE on each channel of a float ``(H, W, C)`` image in ``[0, 1]``.

    The image passes through 8 bits, as most post-processed X-rays do (OpenCV's CLAHE
    on 16-bit data spreads each tile's histogram over 65536 bins, so its clip limit
    has almost no effect).

    Args:
        image: float32 ``(H, W, C)`` in ``[0, 1]``.
        clip_limit: CLAHE clip limit (1 changes little, 3 is strong).
        grid: Tiles per side.

    Returns:
        float32 ``(H, W, C)`` in ``[0, 1]``.
    """
    op = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(grid, grid))
    u8 = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    out = np.stack([op.apply(u8[..., c]) for c in range(u8.shape[-1])], axis=-1)
    return out.astype(np.float32) * np.float32(1.0 / 255.0)


def random_crop(
    image: np.ndarray,
    mask: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    weight: np.ndarray | None = None,
    foreground: bool = False,
    target_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A random ``size`` window of image, mask and weight; reflect-padded if smaller.

    Args:
        image: ``(H, W, C)``.
        mask: ``(H, W)``.
        size: ``(height, width)`` of the crop.
        rng: Chooses the window.
        weight: Optional ``(H, W)``.
        foreground: Centre the window on a random foreground (non-zero) pixel of the
            mask, moved inside the image where that pixel is near a border, as
            nnU-Net's foreground oversampling does; a mask without foreground gets a
            uniform window.
        target_size: A ``valid``-padding network's output size, smaller than ``size``:
            the arrays are first reflect-padded by the margin (:func:`valid_margins`),
            as the paper's overlap-tile strategy mirrors the image at its borders, so the
            central ``target_size`` window, the one supervised, reaches every pixel of
            the image (its borders included) and the rest is the context the network
            sees there in prediction. The window lies uniformly among the positions
            inside the image, so a border row is a target less often than a central one
            (a 244-px window on a 512-px slice: the first row in 1 of 269 crops, the
            middle ones in 244).

    Returns:
        ``(image, mask, weight)`` of spatial size ``size`` (weight None if not given).
    """
    th, tw = size
    if target_size is not None:
        pads = valid_margins(size, target_size)
        image = np.pad(image, (*pads, (0, 0)), mode="reflect")
        mask = np.pad(mask, pads, mode="reflect")
        if weight is not None:
            weight = np.pad(weight, pads, mode="reflect")
    h, w = mask.shape
    pad_h, pad_w = max(th - h, 0), max(tw - w, 0)
    if pad_h or pad_w:
        pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
        image = np.pad(image, (*pads, (0, 0)), mode="reflect")
        mask = np.pad(mask, pads, mode="reflect")
        if weight is not None:
            weight = np.pad(weight, pads, mode="reflect")
        h, w = mask.shape
    ys, xs = np.nonzero(mask) if foreground else ((), ())
    if len(ys):
        k = int(rng.integers(0, len(ys)))
        top = min(max(int(ys[k]) - th // 2, 0), h - th)
        left = min(max(int(xs[k]) - tw // 2, 0), w - tw)
    else:
        top = int(rng.integers(0, h - th + 1))
        left = int(rng.integers(0, w - tw + 1))
    window = (slice(top, top + th), slice(left, left + tw))
    image = np.ascontiguousarray(image[window])
    mask = np.ascontiguousarray(mask[window])
    if weight is not None:
        weight = np.ascontiguousarray(weight[window])
    return image, mask, weight


def valid_margins(
    size: tuple[int, int], target_size: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))``: the context a ``valid``-padding network of
    input ``size`` adds around its output ``target_size`` (the output is the input's
    central window, :func:`center_crop`)."""
    (h, w), (th, tw) = size, target_size
    return ((h - th) // 2, h - th - (h - th) // 2), ((w - tw) // 2, w - tw - (w - tw) // 2)


def mirrored_window(
    image: np.ndarray, target: np.ndarray, target_size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A ``valid``-padding training pair from a whole ``(H, W, C)`` image and its
    ``(H, W, K)`` target at the network's input size: a random ``target_size`` window of
    the target, and the ``(H, W)`` input around it from the image reflect-padded by the
    margin (the paper's overlap-tile: context beyond the border is mirrored, as
    prediction mirrors it).

    The window's centre is drawn uniformly over the image and the window moved inside
    it, so every pixel is a target in some draws, the border ones about half as often
    as the inner ones. (Centre-cropping the target instead would supervise only the
    middle: 36x36 of a 220x220 input at depth 4, under 3% of the image.)
    """
    (h, w), (th, tw) = image.shape[:2], target_size
    top = min(max(int(rng.integers(0, h)) - th // 2, 0), h - th)
    left = min(max(int(rng.integers(0, w)) - tw // 2, 0), w - tw)
    # In the padded image the input whose central window is target[top:, left:] starts
    # at (top, left): the padding is the margin the network's output leaves.
    padded = np.pad(image, (*valid_margins((h, w), (th, tw)), (0, 0)), mode="reflect")
    x = np.ascontiguousarray(padded[top : top + h, left : left + w])
    return x, np.ascontiguousarray(target[top : top + th, left : left + tw])


def center_crop(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The central ``size = (h, w)`` window of an ``(H, W, ...)`` array."""
    th, tw = size
    h, w = array.shape[:2]
    top, left = (h - th) // 2, (w - tw) // 2
    return array[top : top + th, left : left + tw]
