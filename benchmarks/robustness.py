"""Robustness of a trained run to chest X-rays that look as if from other hospitals.

We have no X-rays from other scanners, so shifts are simulated: every validation
image of a run is perturbed at its original size (as ``unet_lowered.io.images.read_image``
decodes it) and predicted through the product's own path, exactly as ``unet evaluate
RUN DATA --split val`` does (``polarity.predict_seen``: the network, with the second
look at a flagged film with its gray scale inverted; then ``probs_to_mask``, with the
default ``PredictOptions``). Geometric perturbations are applied identically to the mask
(nearest neighbour), and Dice and HD95 are scored against that perturbed truth, so the
``none`` row equals ``unet evaluate``'s figures.

Perturbations (table :data:`PERTURBATIONS`, one line each; random ones use one
generator per image, seeded by :data:`SEED` and the image id):

* intensity: gamma 0.6 and 1.6; contrast x0.5 and x1.5 around the image mean (clipped);
  Gaussian blur (sigma 2 px at 224 px, scaled with the image); Gaussian noise (std 4% of
  the image's intensity range); JPEG quality 25 round trip; CLAHE (clip 2, 8x8 tiles);
  16-bit input (the image x16 as uint16, a 12-bit detector range);
* geometry: zoom out 0.8 (image shrunk into the centre of a canvas filled by
  replicating its border pixels, ``cv2.BORDER_REPLICATE``; the mask padded with
  background); zoom in 1.15 (centre crop, resized back); rotation by 8 degrees and a
  shift of 8% right and down (borders replicated, mask background); width squeezed to
  80% (the image becomes H x 0.8W); upscaled to 1024 x 1024 (a high-resolution scanner).

* framing and field of view (issue 12): a small patient in a large frame (shrunk to 0.6
  into a black border, or into a collimated gray one); the lung bases cut off (the
  bottom 25% of the image removed); the neck and shoulders shown (the content moved
  down by 15%, the top filled by replicating the first row);
* dense lungs with the mask unchanged (the whole lung field): an effusion-like opacity
  from the bases, patchy consolidation (``unet_lowered.training.augment.paint_opacity``);
  one lung whited out past its outline at two strengths (0.8: ribs still show; 0.95:
  nearly flat), drawn here with fixed settings rather than the training painter's
  random ones (:func:`white_out`); and two painters that training never uses, to see
  whether what the opacity augmentation taught carries over to opacities drawn
  otherwise: one hemithorax hazed more towards its base (:func:`hemithorax_haze`) and
  patchy haze in both lungs past their outlines (:func:`bilateral_haze`);
* low resolution: a 128 px round trip (the 128 px derivatives of other data sets);
  burned-in text and side markers (``augment.stamp``);
* the gray scale inverted (:func:`inverted`): a MONOCHROME1 film exported to PNG
  without its look-up table, which ``--polarity auto`` reads the right way round;
  turned upside down or on its side (:func:`turned`), which ``--orientation auto``
  reads turned back; both at once (:func:`inverted_turned`); mirrored top to bottom
  (:func:`mirrored`), which a handed run reads mirrored back (the ``read turned`` column
  counts those reads too), and mirrored left to right (:func:`mirrored_lr`), which
  passes the flag as stored and is read as stored.

Per perturbation it also reports the quality flag of ``predictions.csv``
(``unet_lowered.inference.quality``): the share of images flagged ``check`` among
those with Dice below 0.85 (should be all of them) and among the others (should be few).

HD95 is in pixels of the perturbed image (so it grows with the 1024 x 1024 upscale)
and its mean is over finite values only (an empty prediction gives infinity).

Run by hand (never part of ``make test``)::

    .venv/bin/python benchmarks/robustness.py RUN DATA              # appends to RESULTS.md
    .venv/bin/python benchmarks/robustness.py RUN DATA --no-append  # print only

RUN is a folder written by ``unet train``, DATA the prepared folder it was trained on
(``unet prepare ../shared/data/jsrt-lungs DATA``). It prints one Markdown table
(perturbation, mean/median/worst Dice, mean HD95, change of mean Dice vs ``none``) and
appends it, with the date, the machine, the run's key settings and the command, to
``benchmarks/RESULTS.md`` (``--no-append`` to skip).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import os
import shlex
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from speed import cores, cpu_model, machine_line  # benchmarks/speed.py, beside this script

if TYPE_CHECKING:
    from unet_lowered.training.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

SEED = 0
"""Seed of the random perturbations (combined with each image id)."""

REFERENCE_SIDE = 224
"""Side (pixels) at which the blur sigma is stated; it scales with the image."""

Pair = tuple[np.ndarray, np.ndarray]
Perturb = Callable[[np.ndarray, np.ndarray, np.random.Generator], Pair]


# ---------------------------------------------------------------- helpers


def _top(image: np.ndarray) -> float:
    """Largest value of the image's dtype (255 for uint8, 65535 for uint16)."""
    return float(np.iinfo(image.dtype).max)


def _back(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Round and clip a float array into the dtype of ``like``."""
    return np.clip(np.rint(x), 0, _top(like)).astype(like.dtype)


def _on_mask(mask: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply an OpenCV geometric op to a bool or class-index mask (as uint8), dtype kept."""
    return fn(mask.astype(np.uint8)).astype(mask.dtype)


def _warp(image: np.ndarray, mask: np.ndarray, matrix: np.ndarray) -> Pair:
    """Affine warp: image bilinear with replicated borders, mask nearest with background."""
    h, w = image.shape[:2]
    out = cv2.warpAffine(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    warped = _on_mask(
        mask,
        lambda m: cv2.warpAffine(
            m, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
        ),
    )
    return out, warped


def _resize(image: np.ndarray, mask: np.ndarray, width: int, height: int) -> Pair:
    """Resize the image (area when shrinking, bilinear when growing) and the mask (nearest)."""
    shrink = width * height < image.shape[0] * image.shape[1]
    out = cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )
    resized = _on_mask(
        mask, lambda m: cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST)
    )
    return out, resized


# ---------------------------------------------------------------- perturbations


def none(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """The image as read: the baseline, equal to ``unet evaluate``."""
    return image, mask


def gamma(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, g: float) -> Pair:
    """``top * (x / top) ** g`` over the dtype's range (g < 1 brightens, g > 1 darkens)."""
    top = _top(image)
    return _back(top * (image.astype(np.float64) / top) ** g, image), mask


def contrast(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, k: float) -> Pair:
    """``mean + k * (x - mean)``, clipped to the dtype's range."""
    x = image.astype(np.float64)
    mean = x.mean()
    return _back(mean + k * (x - mean), image), mask


def blur(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, sigma: float) -> Pair:
    """Gaussian blur, ``sigma`` pixels at a 224-pixel short side (scaled with the image)."""
    s = sigma * min(image.shape[:2]) / REFERENCE_SIDE
    return cv2.GaussianBlur(image, (0, 0), sigmaX=s, sigmaY=s), mask


def noise(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, frac: float) -> Pair:
    """Additive Gaussian noise, std ``frac`` of the image's intensity range, clipped."""
    x = image.astype(np.float64)
    spread = float(x.max() - x.min()) or _top(image)
    return _back(x + rng.normal(0.0, frac * spread, x.shape), image), mask


def jpeg(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, quality: int) -> Pair:
    """JPEG round trip at ``quality`` (``cv2.imencode``); 16-bit images go through 8 bits."""
    x = image
    if x.dtype != np.uint8:
        x = _back(x.astype(np.float64) * 255 / _top(x), np.zeros(1, np.uint8))
    if x.ndim == 3:
        x = cv2.cvtColor(x, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode could not write a JPEG")
    y = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if y.ndim == 3:
        y = cv2.cvtColor(y, cv2.COLOR_BGR2RGB)
    if image.dtype != np.uint8:
        y = _back(y.astype(np.float64) * _top(image) / 255, image)
    return y, mask


def clahe(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """CLAHE-processed input (clip 2, 8x8 tiles), as some scanners deliver it."""
    from unet_lowered.preprocess import apply_clahe

    return apply_clahe(image, clip_limit=2.0, grid=8), mask


def zoom_out(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, f: float) -> Pair:
    """Shrink by ``f`` into the centre of the original canvas; borders replicated, mask 0."""
    h, w = image.shape[:2]
    sh, sw = max(1, round(h * f)), max(1, round(w * f))
    small, small_mask = _resize(image, mask, sw, sh)
    top, left = (h - sh) // 2, (w - sw) // 2
    pad = (top, h - sh - top, left, w - sw - left)
    out = cv2.copyMakeBorder(small, *pad, cv2.BORDER_REPLICATE)
    padded = _on_mask(
        small_mask, lambda m: cv2.copyMakeBorder(m, *pad, cv2.BORDER_CONSTANT, value=0)
    )
    return out, padded


def zoom_in(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, f: float) -> Pair:
    """Centre crop of ``1/f`` of each side, resized back to the original size."""
    h, w = image.shape[:2]
    ch, cw = max(1, round(h / f)), max(1, round(w / f))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = (slice(top, top + ch), slice(left, left + cw))
    return _resize(image[crop], mask[crop], w, h)


def rotate(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, degrees: float) -> Pair:
    """Rotate by ``degrees`` (counter-clockwise) about the image centre."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return _warp(image, mask, matrix)


def shift(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, frac: float) -> Pair:
    """Move the content right and down by ``frac`` of the width and height."""
    h, w = image.shape[:2]
    matrix = np.float64([[1, 0, round(frac * w)], [0, 1, round(frac * h)]])
    return _warp(image, mask, matrix)


def squeeze(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, f: float) -> Pair:
    """Resize the width to ``f`` of itself: the image becomes H x fW (non-square)."""
    h, w = image.shape[:2]
    return _resize(image, mask, max(1, round(w * f)), h)


def upscale(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, side: int) -> Pair:
    """Resize to ``side`` x ``side`` (a high-resolution scanner); truth nearest."""
    return _resize(image, mask, side, side)


def to_16bit(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """uint8 x16 as uint16 (a 12-bit detector range); uint16 input is kept."""
    if image.dtype == np.uint16:
        return image, mask
    return image.astype(np.uint16) * 16, mask


def _unit(image: np.ndarray) -> np.ndarray:
    """The image as float32 ``(H, W)`` or ``(H, W, C)`` in [0, 1] of its dtype's range."""
    return image.astype(np.float32) / _top(image)


def frame(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, f: float, border: float
) -> Pair:
    """Shrink by ``f`` into the centre of a canvas filled with ``border`` (fraction of range)."""
    h, w = image.shape[:2]
    sh, sw = max(1, round(h * f)), max(1, round(w * f))
    small, small_mask = _resize(image, mask, sw, sh)
    top, left = (h - sh) // 2, (w - sw) // 2
    out = np.full_like(image, round(border * _top(image)))
    out[top : top + sh, left : left + sw] = small
    framed = np.zeros_like(mask)
    framed[top : top + sh, left : left + sw] = small_mask
    return out, framed


def cut_bases(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, frac: float) -> Pair:
    """Remove the bottom ``frac`` of the image (the field of view ends above the bases)."""
    keep = image.shape[0] - round(frac * image.shape[0])
    return image[:keep], mask[:keep]


def show_neck(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, frac: float) -> Pair:
    """Move the content down by ``frac`` of the height; the top replicates the first row."""
    h = image.shape[0]
    matrix = np.float64([[1, 0, 0], [0, 1, round(frac * h)]])
    return _warp(image, mask, matrix)


def opacity(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, kind: str) -> Pair:
    """An opacity painted inside the true lung field; the mask is unchanged."""
    from unet_lowered.training.augment import paint_opacity

    painted = paint_opacity(_unit(image), mask > 0, rng, kind)
    return _back(painted * _top(image), image), mask


def white_out(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, strength: float
) -> Pair:
    """One of the two largest lungs (chosen by ``rng``) opacified past its outline: the
    lung dilated by 6% of the width, blurred (sigma 3% of the width) and blended by
    ``strength`` towards the 80th percentile of the pixels outside the lungs (a plain
    blend, where training only whitens; ``augment.white_out``); the mask is unchanged."""
    from unet_lowered.training.augment import one_lung
    from unet_lowered.training.augment import white_out as paint

    lung = mask > 0
    side = one_lung(lung, rng)
    if side is None:
        return image, mask
    w = mask.shape[1]
    x = paint(_unit(image), side, lung, max(1, round(0.06 * w)), 0.03 * w, strength, 0.8, False)
    return _back(x * _top(image), image), mask


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cell: int) -> np.ndarray:
    """Noise of unit spread with features about ``cell`` pixels wide: a coarse normal grid
    resized by bicubic interpolation to ``shape`` ``(H, W)``, then standardised."""
    h, w = shape
    grid = rng.standard_normal((max(2, h // cell), max(2, w // cell))).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _blend(image: np.ndarray, weight: np.ndarray, level: float) -> Pair:
    """``x + weight * (level - x)`` on the image in ``[0, 1]``, ``weight`` ``(H, W)``."""
    x = _unit(image)
    w = weight if x.ndim == 2 else weight[:, :, None]
    return _back((x + w * (level - x)) * _top(image), image)


def hemithorax_haze(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, strength: float
) -> Pair:
    """Not a training painter: one lung's hemithorax hazed more towards its base, as fluid
    layering in a patient lying down. The region is the lung's convex hull dilated by 4%
    of the width; the blend towards the image's own 95th percentile grows from
    ``0.3 * strength`` at the lung's top row to ``strength`` at its bottom one, mottled
    by smooth noise (features of 1/12 of the width, +-15%) and blurred by 2% of the
    width. The mask is unchanged."""
    from unet_lowered.training.augment import one_lung

    lung = mask > 0
    side = one_lung(lung, rng)
    if side is None:
        return image, mask
    h, w = lung.shape
    points = cv2.findNonZero(side.astype(np.uint8))
    region = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(region, cv2.convexHull(points), 1)
    r = max(1, round(0.04 * w))
    region = cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    rows = np.flatnonzero(side.any(axis=1))
    ramp = np.clip((np.arange(h) - rows[0]) / max(1, rows[-1] - rows[0]), 0.0, 1.0)
    weight = strength * (0.3 + 0.7 * ramp)[:, None] * region
    weight *= 1.0 + 0.15 * _smooth_noise((h, w), rng, max(2, w // 12))
    weight = cv2.GaussianBlur(np.clip(weight, 0, 1).astype(np.float32), (0, 0), 0.02 * w)
    return _blend(image, weight, float(np.quantile(_unit(image), 0.95))), mask


def bilateral_haze(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, strength: float
) -> Pair:
    """Not a training painter: patchy haze in both lungs and past their outlines, heavier
    below (as in pneumonia of both lungs or oedema). Patches are smooth noise (features
    of 1/10 of the width) above its 40th percentile, ramped in over half a unit; they
    cover the lungs dilated by 3% of the width, weighted 0 at the top third of the
    lungs' rows and 1 at their bottom, blurred by 1.5% of the width, and blend by
    ``strength`` towards the image's own 90th percentile. The mask is unchanged."""
    lung = (mask > 0).astype(np.uint8)
    if not lung.any():
        return image, mask
    h, w = lung.shape
    r = max(1, round(0.03 * w))
    region = cv2.dilate(lung, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    rows = np.flatnonzero(lung.any(axis=1))
    start = rows[0] + (rows[-1] - rows[0]) / 3
    ramp = np.clip((np.arange(h) - start) / max(1.0, rows[-1] - start), 0.0, 1.0)
    noise = _smooth_noise((h, w), rng, max(2, w // 10))
    patches = np.clip(2.0 * (noise - np.quantile(noise, 0.4)), 0.0, 1.0)
    weight = strength * patches * ramp[:, None] * region
    weight = cv2.GaussianBlur(weight.astype(np.float32), (0, 0), 0.015 * w)
    return _blend(image, weight, float(np.quantile(_unit(image), 0.9))), mask


def low_resolution(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, side: int
) -> Pair:
    """Down to ``side`` pixels on the longer side and back up (image only)."""
    h, w = image.shape[:2]
    k = side / max(h, w)
    small = cv2.resize(image, (max(1, round(w * k)), max(1, round(h * k))), cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(image.shape), mask


def stamps(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Burned-in text or a side marker in two corners."""
    from unet_lowered.training.augment import stamp

    x = _unit(image)
    for _ in range(2):
        x = stamp(x, rng)
    return _back(x * _top(image), image), mask


def inverted(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """The film with its gray scale inverted, as a MONOCHROME1 DICOM exported to PNG
    without its look-up table: ``max + min - v`` in the image's dtype."""
    top, bottom = int(image.max()), int(image.min())
    return (top + bottom - image.astype(np.int64)).astype(image.dtype), mask


def turned(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, quarters: int) -> Pair:
    """The film stored turned ``quarters`` quarter turns counterclockwise (``np.rot90``):
    upside down (2) or on its side (1, 3), as a scanned film or a DICOM export whose
    orientation was lost; the mask turned with it."""
    return np.ascontiguousarray(np.rot90(image, quarters)), np.ascontiguousarray(
        np.rot90(mask, quarters)
    )


def inverted_turned(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, quarters: int
) -> Pair:
    """Both at once: the gray scale inverted (:func:`inverted`) and the film turned
    (:func:`turned`), as one careless export may leave a MONOCHROME1 film."""
    return turned(*inverted(image, mask, rng), rng, quarters)


def mirrored(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """The film mirrored top to bottom (upside down, and the heart on the other side), as
    a film digitised from its back and upside down; the mask mirrored with it."""
    return np.ascontiguousarray(image[::-1]), np.ascontiguousarray(mask[::-1])


def mirrored_lr(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """The film mirrored left to right (the heart on the image's left), as a film
    digitised from its back; the mask mirrored with it."""
    return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """One simulated shift: its table name and ``fn(image, mask, rng) -> (image, mask)``."""

    name: str
    fn: Perturb


PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("none", none),
    Perturbation("gamma 0.6", partial(gamma, g=0.6)),
    Perturbation("gamma 1.6", partial(gamma, g=1.6)),
    Perturbation("low contrast x0.5", partial(contrast, k=0.5)),
    Perturbation("strong contrast x1.5 (clipped)", partial(contrast, k=1.5)),
    Perturbation("blur sigma 2 px @224", partial(blur, sigma=2.0)),
    Perturbation("noise std 4% of range", partial(noise, frac=0.04)),
    Perturbation("JPEG quality 25", partial(jpeg, quality=25)),
    Perturbation("CLAHE clip 2, 8x8", clahe),
    Perturbation("zoom out 0.8 (border replicated)", partial(zoom_out, f=0.8)),
    Perturbation("zoom in 1.15", partial(zoom_in, f=1.15)),
    Perturbation("rotate 8 deg", partial(rotate, degrees=8.0)),
    Perturbation("shift 8% right+down", partial(shift, frac=0.08)),
    Perturbation("width squeezed to 80%", partial(squeeze, f=0.8)),
    Perturbation("upscaled to 1024x1024", partial(upscale, side=1024)),
    Perturbation("16-bit (x16, 12-bit range)", to_16bit),
    Perturbation("small patient: 0.6 in a black frame", partial(frame, f=0.6, border=0.0)),
    Perturbation("collimated: 0.7 in a gray frame", partial(frame, f=0.7, border=0.25)),
    Perturbation("lung bases cut off (bottom 25%)", partial(cut_bases, frac=0.25)),
    Perturbation("neck shown (content 15% down)", partial(show_neck, frac=0.15)),
    Perturbation("effusion inside the lungs", partial(opacity, kind="effusion")),
    Perturbation("consolidation inside the lungs", partial(opacity, kind="consolidation")),
    Perturbation("white-out of one lung, past its outline, 0.8", partial(white_out, strength=0.8)),
    Perturbation("white-out of one lung, nearly flat, 0.95", partial(white_out, strength=0.95)),
    Perturbation(
        "hemithorax hazed from the base, 1.0 (not a training painter)",
        partial(hemithorax_haze, strength=1.0),
    ),
    Perturbation(
        "patchy haze in both lungs, past them, 1.0 (not a training painter)",
        partial(bilateral_haze, strength=1.0),
    ),
    Perturbation("low resolution (128 px round trip)", partial(low_resolution, side=128)),
    Perturbation("text and side markers", stamps),
    Perturbation("gray scale inverted (a MONOCHROME1 film saved as PNG)", inverted),
    Perturbation("stored upside down (turned 180 deg)", partial(turned, quarters=2)),
    Perturbation("stored on its side (turned 90 deg)", partial(turned, quarters=1)),
    Perturbation("gray scale inverted and upside down", partial(inverted_turned, quarters=2)),
    Perturbation("gray scale inverted and on its side", partial(inverted_turned, quarters=3)),
    Perturbation("mirrored left to right (heart on the left)", mirrored_lr),
    Perturbation("mirrored top to bottom (upside down, heart on the left)", mirrored),
)
"""Every simulated shift, in table order; ``none`` first (the baseline)."""


def image_rng(ident: str, name: str) -> np.random.Generator:
    """The generator for one image and perturbation: fixed seed, independent of order."""
    return np.random.default_rng([SEED, zlib.crc32(ident.encode()), zlib.crc32(name.encode())])


# ---------------------------------------------------------------- scoring


def score_run(
    run_dir: str | os.PathLike, data: str | os.PathLike, split: str = "val"
) -> tuple[dict[str, list[dict[str, float]]], RunConfig, int]:
    """Predict every perturbation of every selected image and score it.

    Args:
        run_dir: A run folder written by ``unet train``.
        data: The prepared folder (as for ``unet evaluate``).
        split: ``"val"``, ``"train"`` or ``"all"``: the ids, selected as ``unet evaluate``
            selects them.

    Returns:
        ``(rows, config, n_images)``: per perturbation name, one score row per image
        (keys of :func:`unet_lowered.evaluation.evaluate.score_image`); the run's config.

    Raises:
        UnetError: Bad run or data folder, an unknown split, or a mask whose size
            differs from its image.
    """
    from unet_lowered.dataset.pairs import load_prepared
    from unet_lowered.errors import UnetError
    from unet_lowered.evaluation.evaluate import SPLITS, _select, read_truth, score_image
    from unet_lowered.inference.polarity import predict_seen
    from unet_lowered.inference.predictor import (
        PredictOptions,
        probs_to_mask,
        resolve_mode,
    )
    from unet_lowered.io import images
    from unet_lowered.io.runs import load_run

    if split not in SPLITS:
        raise UnetError(f"unknown --split {split!r}; use one of: {', '.join(SPLITS)}")
    options = PredictOptions().validate()
    run = load_run(run_dir)
    pairs = load_prepared(data)
    ids = _select(pairs.ids, run, split, Path(data))
    config = run.config
    model = run.model()
    options = dataclasses.replace(options, mode=resolve_mode(options.mode, config))
    per_call = options.batch_size if options.mode == "resize" else 1
    rows: dict[str, list[dict[str, float]]] = {p.name: [] for p in PERTURBATIONS}
    for i in range(0, len(ids), per_call):
        chunk = ids[i : i + per_call]
        originals = []
        for ident in chunk:
            image = images.read_image(pairs.images[ident], options.max_pixels)
            truth = read_truth(pairs.masks[ident], config, options.max_pixels)
            if truth.shape != image.shape[:2]:
                raise UnetError(
                    f"{pairs.masks[ident]}: mask is {truth.shape[1]}x{truth.shape[0]} but its "
                    f"image is {image.shape[1]}x{image.shape[0]}; masks must match their images"
                )
            originals.append((ident, image, truth))
        for p in PERTURBATIONS:
            shifted = [p.fn(im, tr, image_rng(ident, p.name)) for ident, im, tr in originals]
            seen = predict_seen(model, [im for im, _ in shifted], config, options)
            for (_, truth), one in zip(shifted, seen, strict=True):
                mask = probs_to_mask(one.probs, config, options)
                row = score_image(truth, mask, config)
                row["flagged"] = one.quality(mask, config).startswith("check")
                row["inverted"] = one.inverted
                row["turned"] = one.look.turns != 0
                rows[p.name].append(row)
        print(f"  {min(i + per_call, len(ids))}/{len(ids)} images", file=sys.stderr, flush=True)
    return rows, config, len(ids)


BAD_DICE = 0.85
"""Below this Dice a prediction should be flagged ``check`` (issue 12's target)."""


def _share(flags: list[bool]) -> str:
    """``"k/n"`` flagged, or ``-`` when there is no such image."""
    return f"{sum(flags)}/{len(flags)}" if flags else "-"


def table(rows: dict[str, list[dict[str, float]]]) -> str:
    """The Markdown table: Dice mean/median/worst, mean finite HD95, change vs ``none``,
    the quality flag's hits, and how many masks ``--polarity auto`` took from the image
    with its gray scale inverted and ``--orientation auto`` from it turned."""
    base = statistics.fmean(r["dice"] for r in rows["none"])
    lines = [
        "| perturbation | mean Dice | median | worst | mean HD95 (px, finite) | change vs none "
        "| flagged, Dice < 0.85 | flagged, Dice >= 0.85 | read inverted | read turned |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, scored in rows.items():
        dice = [r["dice"] for r in scored]
        hd = [r["hd95"] for r in scored if math.isfinite(r["hd95"])]
        n_inf = len(scored) - len(hd)
        hd_text = f"{statistics.fmean(hd):.1f}" if hd else "-"
        if n_inf:
            hd_text += f" ({n_inf} inf)"
        mean = statistics.fmean(dice)
        bad = [r["flagged"] for r in scored if r["dice"] < BAD_DICE]
        good = [r["flagged"] for r in scored if r["dice"] >= BAD_DICE]
        lines.append(
            f"| {name} | {mean:.4f} | {statistics.median(dice):.4f} | {min(dice):.4f} | "
            f"{hd_text} | {mean - base:+.4f} | {_share(bad)} | {_share(good)} | "
            f"{_share([bool(r.get('inverted')) for r in scored])} | "
            f"{_share([bool(r.get('turned')) for r in scored])} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- report


def run_settings(config: RunConfig) -> str:
    """The run's key training settings (input size, epochs, progressive resizing,
    augmentation, the cross-site shifts included) in one line."""
    h, w = config.image_size
    settings = config.settings
    keys = (
        *("flip_lr", "flip_ud", "rotate", "scale", "shift", "elastic", "intensity"),
        *("zoom_out", "frame_crop", "opacity", "lowres", "stamps"),  # cross-site shifts
    )
    augment = ", ".join(f"{k} {getattr(settings, k)}" for k in keys)
    return (
        f"image_size {h}x{w}, epochs {settings.epochs} "
        f"(progressive {settings.progressive}), "
        f"batch_size {settings.batch_size}, input_mode "
        f"{config.input_mode}, CLAHE preprocessing {config.clahe}; "
        f"augmentation: {augment}"
    )


def report(
    text: str, config: RunConfig, args: argparse.Namespace, n_images: int, seconds: float
) -> str:
    """The RESULTS.md section: header, machine, run settings, command, table."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "benchmarks/robustness.py", args.run, args.data])
    command += f" --split {args.split}" if args.split != "val" else ""
    run_dir, split = args.run, args.split
    return (
        f"\n## {stamp}: robustness.py, {run_dir}\n\n"
        f"Machine: {cpu_model()}, {cores()} cores. Took {seconds:.0f} s.\n\n"
        f"Run: {run_settings(config)}.\n\n"
        f"{n_images} {split} images, each perturbed at its original size and predicted "
        "as `unet evaluate` does (default options); geometric shifts applied to the "
        "truth too (nearest). HD95 in pixels of the perturbed image. "
        f"Command: `{command}`\n\n{text}\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, score every perturbation, print and append the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder written by `unet train`")
    parser.add_argument("data", help="prepared data folder the run was trained on")
    parser.add_argument(
        "--split", default="val", help="ids to use, as `unet evaluate`: val (default), train, all"
    )
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)

    import unet_lowered  # noqa: F401  (default Keras backend)
    from unet_lowered.errors import UnetError
    from unet_lowered.io import atomic

    started = time.perf_counter()
    try:
        rows, config, n_images = score_run(args.run, args.data, args.split)
    except UnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    text = table(rows)
    print(machine_line() + "\n")
    print(text)
    if not args.no_append:
        old = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n"
        new = report(text, config, args, n_images, seconds)
        atomic.write_text(RESULTS, old.rstrip("\n") + "\n" + new)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
