"""Overlap-tile prediction: pure functions on arrays.

:func:`predict_tiled` follows the paper's overlap-tile strategy (Ronneberger et al.
2015, Fig. 2): an image of any size is covered by tiles of the network's size;
each output tile sees ``margin`` pixels of context on every side, taken from the
image or, at the image borders, from its mirror image. Unlike the paper, whose
output tiles abut, neighbouring tiles overlap and are blended with weights that fall
off towards the tile edges (Gaussian or linear), as nnU-Net and MONAI's sliding
window do, so the stitched map has no seams.

Geometry (per axis, in pixels)::

    input tile  = tile + 2 * margin        (what predict_fn receives)
    output tile = tile                     (valid-padding network: what it returns)
                = tile + 2 * margin        (same-padding network: its border is cropped)

It takes any callable as the model, e.g. ``lambda x: x + 1``. Test-time
augmentation is :mod:`unet_lowered.inference.tta`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from unet_lowered.options import BLENDS

PredictFn = Callable[[np.ndarray], np.ndarray]
"""``(B, h, w, C) float32 -> (B, h', w', K)``: a model, or anything that acts like one."""


def _pair(value: int | tuple[int, int] | list[int], name: str, minimum: int) -> tuple[int, int]:
    """Turn ``n`` or ``(h, w)`` into ``(h, w)`` and check both are at least ``minimum``."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` that cover ``[0, length)``.

    Tiles are spread evenly from 0 to ``length - tile`` so that neighbours overlap by at
    least ``overlap * tile`` pixels; the last tile ends exactly at ``length``.

    Args:
        length: Size of the axis to cover; at least ``tile``.
        tile: Tile size along the axis.
        overlap: Minimum overlap as a fraction of ``tile``, in ``[0, 1)``.

    Returns:
        Sorted start offsets; ``[0]`` when one tile covers the axis.
    """
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    n = math.ceil((length - tile) / step) + 1
    return [i * (length - tile) // (n - 1) for i in range(n)]


def blend_weights(tile: tuple[int, int], blend: str = "gaussian") -> np.ndarray:
    """Weights of one output tile for blending overlapping tiles.

    Args:
        tile: ``(h, w)`` of the output tile.
        blend: ``"gaussian"`` (sigma = 1/8 of the tile, as in nnU-Net), ``"linear"``
            (a tent that falls to the edges) or ``"constant"`` (plain averaging).

    Returns:
        float32 array ``(h, w)``, 1 at the centre and strictly positive everywhere, so
        every pixel covered by any tile gets a defined value.
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}; got {blend!r}")
    axes = []
    for n in tile:
        pos = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        if blend == "constant" or n == 1:
            axis = np.ones(n)
        elif blend == "gaussian":
            axis = np.exp(-0.5 * (pos / (n / 8.0)) ** 2)
        else:
            axis = 1.0 - np.abs(pos) / ((n + 1) / 2.0)
        # A Gaussian's tails underflow to ~0; a floor keeps pixels that one tile alone covers
        # (image borders) well defined. It is applied per axis so that the weights stay
        # separable: near an image border the blend across the other axis is unchanged.
        axes.append(np.maximum(axis / axis.max(), 1e-3))
    return np.outer(axes[0], axes[1]).astype(np.float32)


def predict_tiled(
    image: np.ndarray,
    predict_fn: PredictFn,
    tile: int | tuple[int, int],
    overlap: float = 0.25,
    margin: int | tuple[int, int] = 0,
    blend: str = "gaussian",
    batch_size: int = 4,
    on_tiles: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Predict an image of any size tile by tile and stitch the outputs without seams.

    The image is mirror-padded by ``margin`` on every side (and up to the tile size if it
    is smaller than one tile), cut into overlapping input tiles of ``tile + 2 * margin``,
    passed through ``predict_fn`` ``batch_size`` tiles at a time, and the output tiles
    are blended with :func:`blend_weights` into an array of the image's size.

    Args:
        image: ``(H, W, C)`` or ``(H, W)`` array (a 2-D image is one channel).
        predict_fn: Maps a ``(B, th + 2*mh, tw + 2*mw, C)`` float32 batch to
            ``(B, th, tw, K)`` (valid-padding network) or to ``(B, th + 2*mh, tw + 2*mw, K)``
            (same-padding network; the ``margin`` border of each output is discarded).
        tile: Output tile size ``n`` or ``(th, tw)``.
        overlap: Minimum overlap of neighbouring output tiles, as a fraction of the tile,
            in ``[0, 1)``.
        margin: Context ``m`` or ``(mh, mw)`` added on each side of an output tile; for a
            valid-padding network, half the difference between its input and output sizes.
        blend: ``"gaussian"``, ``"linear"`` or ``"constant"`` weights (see :func:`blend_weights`).
        batch_size: Tiles per ``predict_fn`` call (bounds memory).
        on_tiles: Called ``(tiles done, tiles in all)`` after each call (a progress bar).

    Returns:
        float32 array ``(H, W, K)``: the blended outputs.

    Raises:
        ValueError: Bad arguments, or ``predict_fn`` returned an unexpected shape.
    """
    th, tw = _pair(tile, "tile", 1)
    mh, mw = _pair(margin, "margin", 0)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    weights = blend_weights((th, tw), blend)
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    height, width = x.shape[:2]
    # Output space: the image, grown (at the end) to at least one tile.
    out_h, out_w = max(height, th), max(width, tw)
    padded = np.pad(
        x, ((mh, mh + out_h - height), (mw, mw + out_w - width), (0, 0)), mode="reflect"
    )
    starts = [
        (y, x0) for y in tile_starts(out_h, th, overlap) for x0 in tile_starts(out_w, tw, overlap)
    ]

    acc = np.zeros((out_h, out_w, 0), np.float32)  # K channels: known after the first batch
    norm = np.zeros((out_h, out_w), np.float32)
    for b in range(0, len(starts), batch_size):
        chunk = starts[b : b + batch_size]
        batch = np.stack([padded[y : y + th + 2 * mh, x0 : x0 + tw + 2 * mw] for y, x0 in chunk])
        out = _crop_output(np.asarray(predict_fn(batch)), len(chunk), (th, tw), (mh, mw))
        if b == 0:
            acc = np.zeros((out_h, out_w, out.shape[-1]), np.float32)
        for (y, x0), o in zip(chunk, out, strict=True):
            acc[y : y + th, x0 : x0 + tw] += o * weights[:, :, None]
            norm[y : y + th, x0 : x0 + tw] += weights
        if on_tiles is not None:
            on_tiles(b + len(chunk), len(starts))
    acc /= norm[:, :, None]
    return acc[:height, :width]


def _crop_output(
    out: np.ndarray, n: int, tile: tuple[int, int], margin: tuple[int, int]
) -> np.ndarray:
    """Check a ``predict_fn`` result and crop a same-padding output to the output tile."""
    (th, tw), (mh, mw) = tile, margin
    if out.ndim == 3:
        out = out[..., None]
    if out.ndim != 4 or out.shape[0] != n:
        raise ValueError(f"predict_fn must return (B, h, w, K) with B={n}, got shape {out.shape}")
    if out.shape[1:3] == (th, tw):
        return out.astype(np.float32, copy=False)
    if out.shape[1:3] == (th + 2 * mh, tw + 2 * mw):
        return out[:, mh : mh + th, mw : mw + tw].astype(np.float32, copy=False)
    raise ValueError(
        f"predict_fn returned tiles of {out.shape[1]}x{out.shape[2]} for input tiles of "
        f"{th + 2 * mh}x{tw + 2 * mw}; expected {th}x{tw} (valid padding: margin = half the "
        f"size difference) or {th + 2 * mh}x{tw + 2 * mw} (same padding)"
    )
