"""The data fingerprint: what a training set looks like, measured in seconds.

Like nnU-Net's dataset fingerprint (``experiment_planning/dataset_fingerprint``:
image shapes, intensity statistics of the foreground), extended with what matters in
2-D microscopy and radiography: how many objects an image holds and how large they
are, how many of them are separated from a neighbour only by a thin gap (touching
instances, the case of the paper's border-weighted loss), and whether flips and
90-degree turns keep the data's statistics.

Image sizes come from the headers of every image; everything else from a seeded
sample of at most :data:`MAX_SAMPLE` pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from unet_lowered.dataset.masks import label_components, read_mask
from unet_lowered.dataset.pairs import PreparedData, check_mask_size
from unet_lowered.errors import UnetError
from unet_lowered.io import images as imageio
from unet_lowered.io.progress import track
from unet_lowered.preprocess import light_background, to_unit

MAX_SAMPLE = 50
"""Pairs decoded for the fingerprint (nnU-Net samples foreground voxels the same way)."""

GAP_CLOSING = 2
"""Iterations of a 3x3 closing that bridge the gaps counted as "touching" (up to ~4 px)."""

SYMMETRY_GRID = 16
"""Side of the grid the images and masks are averaged on for the symmetry test."""

SYMMETRY_ALPHA = 0.01
"""A transform changes the statistics when the sign-flip test's p is below this ..."""

SYMMETRY_EFFECT = 0.25
"""... and the mean difference is at least this share of the typical per-image one."""

MIN_SYMMETRY_IMAGES = 8
"""Fewer sampled images cannot show an asymmetry (the test's smallest p is 2 / 2^n)."""

EXACT_SYMMETRY_IMAGES = 14
"""Up to this many images the sign-flip test enumerates all 2^n sign vectors (an exact
p, 2 / 2^n at best: 0.0078 for 8 images); above, it draws ``permutations`` at random."""

TEXTURE_BINS = 12
"""Bins of the gradient-orientation histogram over [0, 180) degrees (a multiple of 4)."""

TEXTURE_ASYMMETRY = 0.05
"""Largest total-variation distance between the orientation histogram and its
transform for which the transform keeps the texture (measured for flips / 90-degree
turns: DSB2018 0.023/0.025, ISBI 2012 0.013/0.034, JSRT 0.013/0.185)."""

TRANSFORMS = {
    "flip_lr": lambda a: a[:, ::-1],
    "flip_ud": lambda a: a[::-1, :],
    "rot90": lambda a: np.rot90(a),
}


@dataclass(frozen=True)
class Fingerprint:
    """What a training set looks like.

    Attributes:
        n_images: Pairs in the data set.
        n_sampled: Pairs decoded for the statistics below.
        sizes: ``median_hw``, ``min_hw``, ``max_hw`` of all images (``[H, W]``),
            ``median_longer`` and ``spread`` (largest / smallest longer side).
        channels: 1 (gray, also gray stored as RGB) or 3 (true colour).
        gray_as_rgb: Share of the sampled images stored as RGB with identical channels.
        bit_depth: Largest bits per channel of the sampled files (8 or 16).
        num_classes: Classes of the masks (1: binary).
        intensity: ``foreground`` and ``background`` ``{mean, std, p01, p99}`` of the
            gray image scaled to [0, 1] by its own min and max (what the network sees
            before standardisation), and ``contrast``: the difference of the means in
            background standard deviations.
        foreground_fraction: Mean share of foreground pixels.
        objects_per_image: Median count of objects (8-connected) per mask.
        object_area: ``median``, ``p05``, ``p95`` object area in pixels, ``median_diameter``
            (of the circle of median area) and ``median_fraction`` (median object area /
            its image's area).
        touching_fraction: Share of objects that merge with another after a
            :data:`GAP_CLOSING`-step closing: neighbours separated only by a thin gap.
        holes_fraction: Share of sampled masks with holes (background enclosed by
            foreground).
        symmetry: ``layout``: per transform (``flip_lr``, ``flip_ud``, ``rot90``) the
            ``p``, ``effect`` and ``kept`` of :func:`symmetry_test` on whole images (True:
            the transform keeps the statistics; None: too few images to tell);
            ``texture``: per transform the ``asymmetry`` and ``kept`` of
            :func:`texture_symmetry` (local structure, what random crops show).
        polarity: Of the sampled images with both foreground and background,
            ``dark_objects`` (foreground darker than background on average),
            ``light_objects`` (the others) and ``median_agrees``: images whose median
            tells their polarity (:func:`unet_lowered.preprocess.light_background` is
            True exactly for the dark-object ones). None in plans written before it.
    """

    n_images: int
    n_sampled: int
    sizes: dict[str, Any]
    channels: int
    gray_as_rgb: float
    bit_depth: int
    num_classes: int
    intensity: dict[str, Any]
    foreground_fraction: float
    objects_per_image: float
    object_area: dict[str, float]
    touching_fraction: float
    holes_fraction: float
    symmetry: dict[str, dict[str, Any]]
    polarity: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> Fingerprint:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def sample_ids(ids: Sequence[str], max_images: int = MAX_SAMPLE, seed: int = 0) -> list[str]:
    """At most ``max_images`` of ``ids``, a seeded choice, sorted."""
    ids = sorted(ids)
    if len(ids) <= max_images:
        return ids
    chosen = np.random.default_rng(seed).choice(len(ids), max_images, replace=False)
    return sorted(ids[i] for i in chosen)


def fingerprint(
    data: PreparedData,
    ids: Sequence[str] | None = None,
    max_images: int = MAX_SAMPLE,
    seed: int = 0,
    progress: bool = False,
) -> Fingerprint:
    """Measure a data set.

    Args:
        data: Pairs from :func:`unet_lowered.dataset.pairs.load_prepared`.
        ids: The ids to describe (default: all; training uses its training split).
        max_images: Pairs decoded at most (sizes are read from every header).
        seed: Seed of the sample.
        progress: Show a progress bar.

    Returns:
        The :class:`Fingerprint`.

    Raises:
        UnetError: An unreadable image or mask, or a mask of another size than its image
            (the messages training gives).
    """
    ids = sorted(data.images) if ids is None else sorted(ids)
    if not ids:
        raise UnetError(f"{data.root}: no images to fingerprint")
    sizes = data.image_sizes(ids)
    chosen = sample_ids(ids, max_images, seed)
    fg_values, bg_values, fractions, counts, areas, rel_areas = [], [], [], [], [], []
    touching = holes = gray_rgb = 0
    polarity = {"dark_objects": 0, "light_objects": 0, "median_agrees": 0}
    depth = 8
    grids: list[tuple[np.ndarray, np.ndarray]] = []
    orientations: list[np.ndarray] = []
    for ident in track(chosen, len(chosen), progress, "fingerprint"):
        image, mask, header = _read_pair(data, ident)
        depth = max(depth, header.bit_depth)
        if image.ndim == 3 and imageio.is_gray_as_rgb(image):
            gray_rgb += 1
        gray = to_unit(imageio.to_channels(image, 1))[..., 0]
        fg = mask > 0
        fractions.append(float(fg.mean()))
        _collect(gray, fg, fg_values, bg_values)
        if fg.any() and not fg.all():
            dark = float(gray[fg].mean()) < float(gray[~fg].mean())
            polarity["dark_objects" if dark else "light_objects"] += 1
            light = light_background(to_unit(imageio.to_channels(image, data.channels)))
            polarity["median_agrees"] += light == dark
        labels, n = label_components(fg, 8)
        counts.append(n)
        if n:
            sizes_px = np.bincount(labels.ravel())[1:].astype(float)
            areas.extend(sizes_px.tolist())
            rel_areas.extend((sizes_px / fg.size).tolist())
            touching += touching_objects(fg, labels, n)
            holes += bool((ndimage.binary_fill_holes(fg) & ~fg).any())
        grids.append((_grid(gray), _class_grids(mask, data.num_classes)))
        orientations.append(orientation_histogram(gray))
    longer = sorted(max(s) for s in sizes)
    hw = np.asarray(sizes)
    area_arr = np.asarray(areas) if areas else np.zeros(1)
    median_area = float(np.median(area_arr))
    return Fingerprint(
        n_images=len(ids),
        n_sampled=len(chosen),
        sizes={
            "median_hw": [int(np.median(hw[:, 0])), int(np.median(hw[:, 1]))],
            "min_hw": [int(hw[:, 0].min()), int(hw[:, 1].min())],
            "max_hw": [int(hw[:, 0].max()), int(hw[:, 1].max())],
            "median_longer": int(longer[len(longer) // 2]),
            "spread": round(longer[-1] / longer[0], 3),
        },
        channels=data.channels,
        gray_as_rgb=round(gray_rgb / len(chosen), 3),
        bit_depth=int(depth),
        num_classes=data.num_classes,
        intensity=_intensity(fg_values, bg_values),
        foreground_fraction=round(float(np.mean(fractions)), 4),
        objects_per_image=float(np.median(counts)),
        object_area={
            "median": round(median_area, 1),
            "p05": round(float(np.percentile(area_arr, 5)), 1),
            "p95": round(float(np.percentile(area_arr, 95)), 1),
            "median_diameter": round(float(np.sqrt(4 * median_area / np.pi)), 2),
            "median_fraction": round(float(np.median(rel_areas)) if rel_areas else 0.0, 5),
        },
        touching_fraction=round(touching / max(1, len(areas)), 4),
        holes_fraction=round(holes / len(chosen), 4),
        symmetry={
            "layout": {
                name: symmetry_test([g[0] for g in grids], [g[1] for g in grids], fn, seed)
                for name, fn in TRANSFORMS.items()
            },
            "texture": texture_symmetry(orientations),
        },
        polarity=polarity,
    )


def _read_pair(data: PreparedData, ident: str) -> tuple[np.ndarray, np.ndarray, Any]:
    image_path, mask_path = data.images[ident], data.masks[ident]
    mask = read_mask(mask_path, data.num_classes)
    header = imageio.read_header(image_path)
    check_mask_size(mask_path, image_path, mask, header)
    return imageio.read_image(image_path), mask, header


def _collect(gray: np.ndarray, fg: np.ndarray, fg_values: list, bg_values: list) -> None:
    """Up to 2000 seeded pixel values of each region (enough for percentiles)."""
    rng = np.random.default_rng(0)
    for region, out in ((fg, fg_values), (~fg, bg_values)):
        values = gray[region]
        if values.size > 2000:
            values = rng.choice(values, 2000, replace=False)
        out.append(values)


def _intensity(fg_values: list, bg_values: list) -> dict[str, Any]:
    def stats(parts: list) -> dict[str, float] | None:
        values = np.concatenate(parts) if parts else np.zeros(0)
        if not values.size:
            return None
        p01, p99 = np.percentile(values, [1, 99])
        return {
            "mean": round(float(values.mean()), 4),
            "std": round(float(values.std()), 4),
            "p01": round(float(p01), 4),
            "p99": round(float(p99), 4),
        }

    fg, bg = stats(fg_values), stats(bg_values)
    contrast = None
    if fg and bg:
        contrast = round((fg["mean"] - bg["mean"]) / max(bg["std"], 1e-3), 3)
    return {"foreground": fg, "background": bg, "contrast": contrast}


def touching_objects(fg: np.ndarray, labels: np.ndarray, count: int) -> int:
    """Objects that share a component with another after closing the thin gaps.

    A closing (dilation then erosion, 3x3, :data:`GAP_CLOSING` steps) fills background
    gaps up to about ``2 * GAP_CLOSING`` pixels wide; two objects it joins were
    separated only by such a gap: touching instances in a binary mask, or cells
    between thin membranes.

    Args:
        fg: Bool ``(H, W)`` foreground.
        labels: Its 8-connected labels (:func:`label_components`).
        count: Number of objects in ``labels``.

    Returns:
        How many of the ``count`` objects merge with at least one other.
    """
    if count < 2:
        return 0
    # Padding keeps objects at the image edge from being eroded away by the closing.
    pad = GAP_CLOSING + 1
    closed = ndimage.binary_closing(
        np.pad(fg, pad, mode="edge"), structure=np.ones((3, 3), bool), iterations=GAP_CLOSING
    )[pad:-pad, pad:-pad]
    merged, _ = label_components(closed | fg, 8)
    owner = merged[labels > 0]
    objects = labels[labels > 0]
    pairs = np.unique(np.stack([owner, objects], axis=1), axis=0)
    per_component = np.bincount(pairs[:, 0])
    return int(per_component[pairs[:, 0]][per_component[pairs[:, 0]] > 1].size)


def _class_grids(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """The foreground share on the grid, ``(g, g)``; with several classes one share per
    foreground class, ``(g, g, K-1)``, so that a flip which swaps two classes' places
    (left and right lungs labelled apart) shows as a change though the foreground as a
    whole is symmetric. Masks hold class indices here (as ``unet prepare --classes``
    writes them)."""
    if num_classes <= 1:
        return _grid((mask > 0).astype(np.float32))
    return np.stack([_grid((mask == c).astype(np.float32)) for c in range(1, num_classes)], -1)


def _grid(values: np.ndarray) -> np.ndarray:
    """Area average on a SYMMETRY_GRID x SYMMETRY_GRID grid (square, whatever the aspect)."""
    g = SYMMETRY_GRID
    return cv2.resize(values.astype(np.float32), (g, g), interpolation=cv2.INTER_AREA)


def symmetry_test(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    transform: Any,
    seed: int = 0,
    permutations: int = 999,
) -> dict[str, Any]:
    """Does ``transform`` keep the statistics of these images and masks?

    For each image, ``D = x - transform(x)`` on a coarse grid (images standardised,
    masks as foreground shares). If the transform keeps the data's distribution,
    the ``D`` of different images point in random directions and their mean is small
    (each ``D`` is as likely as ``-D``); if not (chest X-rays turned upside down),
    they agree. The test is a sign-flip permutation test of ``|mean D|^2`` (Good,
    *Permutation Tests*, 2000), run for images and masks; the smaller p counts.

    Args:
        images: ``(g, g)`` grids of the gray images.
        masks: ``(g, g)`` grids of the foreground, or ``(g, g, K-1)`` of each class.
        transform: Maps a ``(g, g)`` array to its flipped or turned version.
        seed: Seed of the sign flips (above :data:`EXACT_SYMMETRY_IMAGES` images).
        permutations: Random sign-flip draws (above :data:`EXACT_SYMMETRY_IMAGES`
            images; up to it all ``2^n`` sign vectors are taken, an exact p).

    Returns:
        ``{"p": ..., "effect": ..., "kept": True/False/None}``; ``effect`` is
        ``|mean D| / mean |D|`` (0: symmetric on average, 1: every image differs from
        its transform the same way); ``kept`` is None below
        :data:`MIN_SYMMETRY_IMAGES` images.
    """
    n = len(images)
    if n < MIN_SYMMETRY_IMAGES:
        return {"p": None, "effect": None, "kept": None}
    if n <= EXACT_SYMMETRY_IMAGES:  # every sign vector: the identity among them
        codes = np.arange(2**n)[:, None] >> np.arange(n) & 1
        signs = np.where(codes == 1, -1.0, 1.0)
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice([-1.0, 1.0], size=(permutations, n))
    best_p, best_effect = 1.0, 0.0
    for grids in (images, masks):
        stack = np.stack([_standard(g) if grids is images else g for g in grids])
        diffs = np.stack([s - transform(s) for s in stack]).reshape(n, -1)
        typical = float(np.linalg.norm(diffs, axis=1).mean())
        if typical < 1e-6:  # every grid equals its transform
            continue
        observed = float(np.sum((np.ones(n) @ diffs / n) ** 2))  # as the null is computed
        null = np.sum((signs @ diffs / n) ** 2, axis=1)
        at_least = int(np.sum(null >= observed * (1 - 1e-9) - 1e-12))
        exact = n <= EXACT_SYMMETRY_IMAGES
        p = at_least / len(signs) if exact else (1 + at_least) / (1 + permutations)
        effect = float(np.linalg.norm(diffs.mean(0))) / typical
        if p < best_p or (p == best_p and effect > best_effect):
            best_p, best_effect = p, effect
    kept = not (best_p < SYMMETRY_ALPHA and best_effect >= SYMMETRY_EFFECT)
    return {"p": round(best_p, 4), "effect": round(best_effect, 3), "kept": kept}


def _standard(g: np.ndarray) -> np.ndarray:
    return (g - g.mean()) / max(float(g.std()), 1e-6)


def orientation_histogram(gray: np.ndarray, bins: int = TEXTURE_BINS) -> np.ndarray:
    """Share of gradient energy per edge orientation in [0, 180) degrees (sums to 1).

    Bin ``b`` holds the gradients within half a bin of ``b * 180 / bins`` degrees.

    3x3 Sobel gradients weighted by their squared magnitude (the structure tensor's
    weighting); an isotropic texture gives a flat histogram.
    """
    gx = cv2.Sobel(gray.astype(np.float32), cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray.astype(np.float32), cv2.CV_32F, 0, 1, ksize=3)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    # Bin b is centred on b * 180 / bins degrees, so flips and turns map bins onto bins.
    index = np.floor(angle / np.pi * bins + 0.5).astype(int) % bins
    hist = np.bincount(index.ravel(), (gx**2 + gy**2).ravel(), bins)
    total = float(hist.sum())
    return hist / total if total > 0 else np.full(bins, 1.0 / bins)


def texture_symmetry(histograms: Sequence[np.ndarray]) -> dict[str, dict[str, Any]]:
    """Do flips and 90-degree turns keep the local texture (edge orientations)?

    A flip maps an edge at angle t to 180 - t (left-right and up-down alike, modulo
    180 degrees), a quarter turn to t + 90. The asymmetry is the total-variation
    distance between the mean orientation histogram and its transform; a transform
    keeps the texture below :data:`TEXTURE_ASYMMETRY`. Random crops at native
    resolution show the network this local structure, not the whole image's layout.

    Returns:
        ``{"flip_lr"|"flip_ud"|"rot90": {"asymmetry": ..., "kept": bool}}``.
    """
    mean = np.mean(np.stack(histograms), axis=0)
    flipped = np.roll(mean[::-1], 1)  # bin b -> bin -b (mod bins)
    turned = np.roll(mean, len(mean) // 2)
    out = {}
    for name, other in (("flip_lr", flipped), ("flip_ud", flipped), ("rot90", turned)):
        tv = round(0.5 * float(np.abs(mean - other).sum()), 4)
        out[name] = {"asymmetry": tv, "kept": tv < TEXTURE_ASYMMETRY}
    return out
