"""Constructed data sets with known fingerprints, written as prepared folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from unet_lowered.io.images import write_png

Maker = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def write_set(root: Path, n: int, make: Maker, seed: int = 0) -> Path:
    """``n`` pairs from ``make(k, rng) -> (image uint8, mask bool)`` under root/train."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        image, mask = make(k, rng)
        write_png(root / "train" / "images" / f"c{k:03d}.png", image)
        write_png(root / "train" / "masks" / f"c{k:03d}.png", mask.astype(np.uint8) * 255)
    return root


def disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def blobs(k: int, rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Rotation-free: a few disks anywhere, brighter than a noisy background."""
    mask = np.zeros((size, size), bool)
    for _ in range(4):
        mask |= disk(mask.shape, *rng.uniform(6, size - 6, 2), rng.uniform(3, 6))
    image = rng.normal(80, 10, mask.shape) + 100 * mask
    return np.clip(image, 0, 255).astype(np.uint8), mask


def organ(k: int, rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A fixed layout like a chest X-ray: a tall bar on the left, a blob at the top right,
    a brightness gradient from top to bottom."""
    mask = np.zeros((size, size), bool)
    dy, dx = rng.integers(-2, 3, 2)
    mask[8 + dy : 56 + dy, 6 + dx : 22 + dx] = True
    mask |= disk(mask.shape, 14 + dy, 46 + dx, 9)
    ramp = np.linspace(40, 160, size)[:, None] * np.ones((1, size))
    image = ramp + 60 * mask + rng.normal(0, 5, mask.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask
