"""Synthetic chest-X-ray-like images with exact lung masks, for the demo and for tests.

Each sample is drawn from a seeded random generator: a body outline with
shoulders and neck, two lung fields of varied shape, size and position, the
spine with vertebrae, the trachea, clavicles, posterior and anterior ribs (curved
bands that cross the lungs), vessels, a heart shadow that overlaps the left lung
(image right), sometimes breast shadows, a gastric air bubble or an opacity in a
lung; then blur, noise and global contrast, brightness and gamma changes. All the
geometry goes through one small random rotation, scale and shift.

The mask is *exactly* the union of the two drawn lung polygons: it is rasterised
with :func:`cv2.fillPoly` from the same integer polygons that darken the image,
so there is no label noise (the image side is blurred, the mask is not).

Pathology and framing (:data:`PATHOLOGIES`, ``make_dataset(pathology=...)``, ``unet
synth --pathology``) are drawn on top of a finished sample, from a generator of
their own, so plain samples stay what they were:

* ``effusion``: fluid that whitens a lung from its base up, with a meniscus rising
  at the outer edge; ``consolidation``: smooth patchy opacities inside the lungs.
  ``white-out``: one lung opacified past its outline (a hemithorax full of fluid),
  its edge fading into the chest wall and mediastinum. The mask stays the whole
  lung field, as the reference masks of real data sets draw it however white the
  lung is.
* ``framing``: a small patient in a large frame (zoomed out into black borders or
  a collimated field), or a crop that cuts off the lung bases; image and mask
  move together.

:func:`make_dataset` writes the Kaggle layout that ``unet prepare`` converts from::

    OUT/train_images/<id>/images/<id>.png   8-bit gray image
    OUT/train_images/<id>/masks/<id>.png    8-bit mask, 0 background / 255 lung
    OUT/test_images/<id>/<id>.png           8-bit gray image (no mask, as in Kaggle)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from unet_lowered.errors import UnetError
from unet_lowered.io import atomic, images
from unet_lowered.io.progress import progress_bar
from unet_lowered.preprocess import resize_mask
from unet_lowered.training.augment import paint_opacity

MIN_SIZE = 32
"""Smallest image side :func:`make_dataset` accepts (below it the anatomy is a few pixels)."""

MAX_SIZE = 4096
"""Largest image side :func:`make_dataset` accepts."""

PATHOLOGIES = ("effusion", "consolidation", "white-out", "framing")
"""What ``make_dataset(pathology=...)`` and ``unet synth --pathology`` can draw."""

TRAIN_PREFIX = "synth_train_"
TEST_PREFIX = "synth_test_"


@dataclass(frozen=True)
class SynthSample:
    """One synthetic chest X-ray.

    Attributes:
        image: ``(size, size)`` uint8 gray image.
        mask: ``(size, size)`` uint8 mask, 255 inside a lung and 0 elsewhere; equal to
            ``cv2.fillPoly(zeros, list(lungs), 255)``.
        lungs: The two lung polygons in pixel coordinates, each ``(N, 2)`` int32 ``(x, y)``;
            first the right lung (image left), then the left lung (image right).
    """

    image: np.ndarray
    mask: np.ndarray
    lungs: tuple[np.ndarray, np.ndarray]


def lung_mask(lungs: tuple[np.ndarray, ...] | list[np.ndarray], size: int) -> np.ndarray:
    """Rasterise lung polygons into a 0/255 uint8 mask.

    Args:
        lungs: Polygons, each ``(N, 2)`` int32 ``(x, y)`` pixel coordinates.
        size: Side of the square mask.

    Returns:
        ``(size, size)`` uint8 array: 255 inside any polygon, 0 elsewhere.
    """
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.asarray(p, np.int32).reshape(-1, 1, 2) for p in lungs], 255)
    return mask


def synth_pair(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic chest X-ray and its lung mask.

    Args:
        rng: The random generator (the only source of randomness).
        size: Side of the square image in pixels.

    Returns:
        ``(image, mask)``: ``(size, size)`` uint8 each; the mask is 0/255.
    """
    s = synth_sample(rng, size)
    return s.image, s.mask


def synth_sample(
    rng: np.random.Generator, size: int = 256, pathology: str | None = None
) -> SynthSample:
    """Draw one synthetic chest X-ray with its lung polygons and exact mask.

    Args:
        rng: The random generator (the only source of randomness).
        size: Side of the square image in pixels (at least :data:`MIN_SIZE`).
        pathology: One of :data:`PATHOLOGIES` drawn on top (from draws after the
            plain sample's, so the plain image is the same), or None.

    Returns:
        The :class:`SynthSample` (with ``framing``, ``lungs`` are the polygons before it).

    Raises:
        UnetError: ``size`` or ``pathology`` is out of range.
    """
    check_size(size)
    sample = _Renderer(rng, size).render()
    if pathology is None:
        return sample
    draw = {
        "effusion": add_effusion,
        "consolidation": add_consolidation,
        "white-out": add_white_out,
        "framing": reframe,
    }
    if pathology not in draw:
        raise UnetError(f"unknown pathology {pathology!r}; use one of: {', '.join(PATHOLOGIES)}")
    image, mask = draw[pathology](sample.image, sample.mask, rng)
    return SynthSample(image=image, mask=mask, lungs=sample.lungs)


def add_effusion(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pleural effusion (:func:`unet_lowered.training.augment.paint_opacity`): a lung
    or both whitened from the base up; the mask is unchanged.

    Returns:
        ``(image, mask)``: the new uint8 image and the same mask (a copy).
    """
    return _painted(image, mask, rng, "effusion"), mask.copy()


def add_consolidation(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Consolidation (:func:`unet_lowered.training.augment.paint_opacity`): smooth
    patchy opacities inside the lung field; the mask is unchanged.

    Returns:
        ``(image, mask)``: the new uint8 image and the same mask (a copy).
    """
    return _painted(image, mask, rng, "consolidation"), mask.copy()


def add_white_out(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """White-out (:func:`unet_lowered.training.augment.paint_opacity`): one lung
    opacified past its outline, the chest wall and mediastinum beside it whitened too;
    the mask is unchanged.

    Returns:
        ``(image, mask)``: the new uint8 image and the same mask (a copy).
    """
    return _painted(image, mask, rng, "white-out"), mask.copy()


def _painted(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, kind: str):
    x = paint_opacity(image.astype(np.float32) / 255, mask > 0, rng, kind)
    return np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)


def reframe(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Other framing: zoomed out into a black or collimated border, or a crop that cuts
    off the lung bases. Image and mask move together (the mask resized as the image is,
    :func:`~unet_lowered.preprocess.resize_mask`).

    Returns:
        ``(image, mask)`` of the same size as given.
    """
    size = mask.shape[0]
    if rng.uniform() < 0.6:  # a small patient in a large frame
        scale = rng.uniform(0.5, 0.8)
        side = round(size * scale)
        top, left = (int(rng.integers(0, size - side + 1)) for _ in range(2))
        small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        small_mask = resize_mask(mask, (side, side), cv2.INTER_AREA)
        background = 0 if rng.uniform() < 0.5 else int(rng.uniform(20, 60))  # collimation
        out = np.full_like(image, background)
        out_mask = np.zeros_like(mask)
        out[top : top + side, left : left + side] = small
        out_mask[top : top + side, left : left + side] = small_mask
        return out, out_mask
    rows = np.nonzero(mask.any(axis=1))[0]
    cut = int(rows.max() - rng.uniform(0.15, 0.35) * (rows.max() - rows.min()))
    crop = max(cut, size // 2)  # keep the top part, bases cut off, stretched back to size
    out = cv2.resize(image[:crop], (size, size), interpolation=cv2.INTER_LINEAR)
    out_mask = resize_mask(mask[:crop], (size, size), cv2.INTER_LINEAR)
    return out, out_mask


def make_dataset(
    out: str | os.PathLike,
    count: int = 200,
    test_count: int = 20,
    size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
    pathology: tuple[str, ...] | list[str] = (),
    pathology_fraction: float = 0.5,
    progress: bool = False,
) -> Path:
    """Write a synthetic chest-X-ray data set in the Kaggle layout, atomically.

    Sample ``i`` of each split depends only on ``(seed, split, i)``, so a larger
    ``count`` adds images without changing the first ones. Ids are
    ``synth_train_0000``... and ``synth_test_0000``...

    Args:
        out: The folder to create (see the module docstring for its layout).
        count: Number of training images with masks (at least 1).
        test_count: Number of test images without masks (0 or more).
        size: Side of the square images in pixels.
        seed: Seed of the whole data set.
        overwrite: Replace ``out`` if it exists.
        pathology: Kinds of :data:`PATHOLOGIES` to draw; each image gets one of them
            with probability ``pathology_fraction`` (chosen by ``(seed, split, i)``).
        pathology_fraction: Share of the images that get one.
        progress: Show a progress bar on stderr.

    Returns:
        The path of the written folder.

    Raises:
        UnetError: A count or the size is out of range, or ``out`` exists without ``overwrite``.
    """
    if count < 1:
        raise UnetError(f"--count must be at least 1 (training images to make), got {count}")
    if test_count < 0:
        raise UnetError(f"--test-count must be 0 or more, got {test_count}")
    if seed < 0:
        raise UnetError(f"--seed must be 0 or more, got {seed}")
    for kind in pathology:
        if kind not in PATHOLOGIES:
            raise UnetError(
                f"unknown --pathology {kind!r}; use one or more of: {', '.join(PATHOLOGIES)}"
            )
    if not 0 <= pathology_fraction <= 1:
        raise UnetError(f"--pathology-fraction must be in [0, 1], got {pathology_fraction}")

    def kind(split: int, i: int) -> str | None:
        pick = np.random.default_rng([seed, split, i, 1])
        if not pathology or pick.uniform() >= pathology_fraction:
            return None
        return str(pathology[int(pick.integers(len(pathology)))])

    check_size(size)
    out = Path(out)
    if overwrite:
        _refuse_non_synth(out)
    width = max(4, len(str(max(count, test_count) - 1)))
    with (
        atomic.atomic_dir(out, overwrite=overwrite) as tmp,
        progress_bar(count + test_count, progress, "synthesising") as advance,
    ):
        for i in range(count):
            sid = f"{TRAIN_PREFIX}{i:0{width}d}"
            s = synth_sample(np.random.default_rng([seed, 0, i]), size, kind(0, i))
            images.write_png(tmp / "train_images" / sid / "images" / f"{sid}.png", s.image)
            images.write_png(tmp / "train_images" / sid / "masks" / f"{sid}.png", s.mask)
            advance()
        for i in range(test_count):
            sid = f"{TEST_PREFIX}{i:0{width}d}"
            s = synth_sample(np.random.default_rng([seed, 1, i]), size, kind(1, i))
            images.write_png(tmp / "test_images" / sid / f"{sid}.png", s.image)
            advance()
    return out


def _refuse_non_synth(out: Path) -> None:
    """``--overwrite`` replaces only what this writes: an empty folder, or one holding
    ``train_images/`` and ``test_images/`` of ``synth_*`` ids and nothing else. Anything
    else (a prepared data set, a user's folder, a file) was deleted without a word.

    Raises:
        UnetError: ``out`` exists and is not such a folder.
    """
    if not os.path.lexists(out):
        return
    why = None
    if not out.is_dir() or out.is_symlink():
        why = "is not a folder"
    else:
        allowed = {"train_images": TRAIN_PREFIX, "test_images": TEST_PREFIX}
        for entry in out.iterdir():
            prefix = allowed.get(entry.name)
            if prefix is None or not entry.is_dir():
                why = f"holds {entry.name}, which `unet synth` does not write"
                break
            odd = next((e.name for e in entry.iterdir() if not e.name.startswith(prefix)), None)
            if odd is not None:
                why = f"holds {entry.name}/{odd}, which `unet synth` does not write"
                break
    if why:
        raise UnetError(
            f"{out} {why}; --overwrite replaces only a folder `unet synth` wrote, or an "
            "empty one: choose another folder"
        )


def check_size(size: int) -> None:
    """Refuse an image side outside :data:`MIN_SIZE` to :data:`MAX_SIZE` (``unet demo --size``)."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UnetError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")


# ---------------------------------------------------------------- rendering
# Geometry is laid out in normalised coordinates (x right, y down, both 0..1), then
# one affine map (small rotation, scale, shift) takes it to pixels. Intensities are
# an "attenuation" map (bright = dense), turned into the final image at the end.

# Lung outline control points (u lateral 0..1 from the medial edge, v 0..1 from the apex),
# going round: apex, lateral edge, costophrenic angle, diaphragm, medial edge.
_LUNG_CTRL = np.array(
    [
        [0.32, 0.00],
        [0.62, 0.05],
        [0.84, 0.20],
        [0.95, 0.42],
        [1.00, 0.68],
        [1.02, 0.97],
        [0.80, 0.90],
        [0.50, 0.83],
        [0.18, 0.80],
        [0.02, 0.72],
        [0.00, 0.45],
        [0.06, 0.22],
        [0.16, 0.07],
    ],
    np.float64,
)
# The left lung's lower medial edge is pushed out by the heart (cardiac notch).
_NOTCH = np.array([0, 0, 0, 0, 0, 0, 0, 0.06, 0.24, 0.34, 0.16, 0.02, 0], np.float64)


def _chaikin(points: np.ndarray, iterations: int) -> np.ndarray:
    """Smooth a closed polygon by corner cutting (each pass doubles the points)."""
    for _ in range(iterations):
        nxt = np.roll(points, -1, axis=0)
        cut_a, cut_b = 0.75 * points + 0.25 * nxt, 0.25 * points + 0.75 * nxt
        points = np.stack([cut_a, cut_b], axis=1).reshape(-1, 2)
    return points


class _Renderer:
    """Draws one sample; every random choice comes from ``rng``, in a fixed order."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.rng = rng
        self.size = size
        self.k = size / 256.0  # pixel lengths below are given for a 256-pixel image
        u = rng.uniform
        # One affine map from normalised coordinates to pixels: rotation about the
        # centre, isotropic scale, shift (occasionally a visible tilt / off-centre).
        angle = math.radians(u(-7, 7) if u() < 0.4 else u(-1.5, 1.5))
        scale = u(0.92, 1.06)
        shift = u(-0.04, 0.04, 2) if u() < 0.5 else u(-0.01, 0.01, 2)
        c, s = math.cos(angle) * scale, math.sin(angle) * scale
        rot = np.array([[c, -s], [s, c]])
        self.affine = (rot * size, (np.array([0.5, 0.5]) - rot @ [0.5, 0.5] + shift) * size)

    # -- helpers
    def px(self, pts: np.ndarray) -> np.ndarray:
        """Normalised ``(N, 2)`` points -> pixel coordinates (float)."""
        a, b = self.affine
        return np.asarray(pts, np.float64) @ a.T + b

    def ipx(self, pts: np.ndarray) -> np.ndarray:
        """Normalised ``(N, 2)`` points -> ``(N, 1, 2)`` int32 pixels for OpenCV."""
        return np.round(self.px(pts)).astype(np.int32).reshape(-1, 1, 2)

    def fill(self, polys: list[np.ndarray]) -> np.ndarray:
        layer = np.zeros((self.size, self.size), np.float32)
        cv2.fillPoly(layer, [self.ipx(p) for p in polys], 1.0)
        return layer

    def blur(self, layer: np.ndarray, sigma_px: float) -> np.ndarray:
        sigma = max(sigma_px * self.k, 0.3)
        return cv2.GaussianBlur(layer, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)

    def soft(self, layer: np.ndarray, sigma_px: float) -> np.ndarray:
        """A wide Gaussian blur, computed at 1/4 scale (much faster, looks the same)."""
        f = 4 if self.size >= 128 else 1
        if f == 1:
            return self.blur(layer, sigma_px)
        n = self.size // f
        small = cv2.resize(layer, (n, n), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(
            small, (0, 0), sigma_px * self.k / f, borderType=cv2.BORDER_REPLICATE
        )
        return cv2.resize(small, (self.size, self.size), interpolation=cv2.INTER_LINEAR)

    def lines(self, curves: list[np.ndarray], thickness_px: float) -> np.ndarray:
        layer = np.zeros((self.size, self.size), np.float32)
        t = max(1, round(thickness_px * self.k))
        cv2.polylines(layer, [self.ipx(c) for c in curves], False, 1.0, t)
        return layer

    def smooth_noise(self, cells: int) -> np.ndarray:
        """Zero-mean, unit-ish, smooth random field (noise on a coarse grid, upsampled)."""
        coarse = self.rng.standard_normal((cells, cells)).astype(np.float32)
        return cv2.resize(coarse, (self.size, self.size), interpolation=cv2.INTER_CUBIC)

    def ellipse(self, cx: float, cy: float, ax: float, ay: float, deg: float) -> np.ndarray:
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        r = math.radians(deg)
        x, y = ax * np.cos(t), ay * np.sin(t)
        return np.stack(
            [cx + x * math.cos(r) - y * math.sin(r), cy + x * math.sin(r) + y * math.cos(r)], 1
        )

    # -- anatomy
    def lung_outline(
        self, medial_x: float, top: float, width: float, height: float, side: int, notch: float
    ) -> np.ndarray:
        """Normalised closed lung outline; ``side`` -1 grows to image left, +1 to image right."""
        ctrl = _LUNG_CTRL + self.rng.normal(0, 0.025, _LUNG_CTRL.shape)
        ctrl[:, 0] += notch * _NOTCH
        outline = _chaikin(ctrl, 3)
        return np.stack([medial_x + side * outline[:, 0] * width, top + outline[:, 1] * height], 1)

    def render(self) -> SynthSample:
        rng, u = self.rng, self.rng.uniform
        # ---- layout (normalised units)
        mid = 0.5 + u(-0.02, 0.02)  # midline
        gap = u(0.10, 0.16)  # mediastinum width between the lungs
        top = u(0.10, 0.22)
        height = u(0.52, 0.66)
        width_r, width_l = u(0.24, 0.33), u(0.22, 0.31)
        height_l = height * u(0.92, 1.02)
        right = self.lung_outline(mid - gap / 2, top + u(-0.02, 0.02), width_r, height, -1, 0.0)
        notch = u(0.5, 1.3)
        left = self.lung_outline(mid + gap / 2, top + u(-0.02, 0.03), width_l, height_l, 1, notch)
        bottom = top + height

        # ---- attenuation map. Layers are summed before blurring where the blur is the
        # same (blur is linear): `fine` gets one small blur, big blurs run at 1/4 scale.
        yy = np.linspace(0, 1, self.size, dtype=np.float32)[:, None]
        body = self.soft(self.fill(self.body_outline(mid, top)), 10)
        att = 0.06 + body * (u(0.45, 0.6) + 0.15 * np.clip((yy - bottom + 0.1) * 3, 0, 1))
        att += body * 0.04 * self.smooth_noise(6)

        # Lungs: darker in the middle than at the edges, mottled, bases less dark.
        lung_fill = self.fill([right, left])
        lung = self.blur(lung_fill, 1.0) * (0.55 + 0.45 * self.soft(lung_fill, 14))
        lung *= 1 + u(0.05, 0.2) * self.smooth_noise(12)
        lung *= 1 - 0.25 * np.clip(yy - top, 0, 1)
        att -= u(0.28, 0.45) * lung

        # Heart shadow over the left lung and sometimes an opacity in a lung (still lung in
        # the mask), medium blur; sometimes breast shadows over the lung bases, wide blur.
        medium = u(0.16, 0.28) * self.fill([self.heart(mid, gap, bottom, width_l, notch)])
        if u() < 0.2:
            side, w = (-1, width_r) if u() < 0.5 else (1, width_l)
            o = self.ellipse(mid + side * (gap / 2 + u(0.3, 0.7) * w), top + u(0.3, 0.8) * height,
                             u(0.02, 0.07), u(0.02, 0.07), u(0, 180))  # fmt: skip
            medium += u(0.1, 0.3) * self.fill([o])
        att += self.blur(medium, 3)
        if u() < 0.3:
            b = [
                self.ellipse(mid + sx * u(0.2, 0.28), bottom - u(0.0, 0.08), u(0.14, 0.2),
                             u(0.1, 0.15), 0)
                for sx in (-1, 1)
            ]  # fmt: skip
            att += u(0.06, 0.14) * self.soft(self.fill(b), 12)

        # Sharp anatomy: spine, trachea, ribs, clavicles, vessels, air bubble, side marker.
        fine = self.spine(mid, top)
        fine -= u(0.05, 0.1) * self.trachea(mid, top)
        fine += u(0.05, 0.1) * self.ribs(mid, gap, top, height, width_r, width_l)
        fine += u(0.1, 0.18) * self.clavicles(mid, top)
        fine += u(0.03, 0.08) * self.vessels(mid, gap, top, height) * lung_fill
        if u() < 0.3:  # gastric air bubble under the left hemidiaphragm
            g = self.ellipse(mid + u(0.1, 0.25), bottom + u(0.03, 0.08), u(0.04, 0.08),
                             u(0.02, 0.04), u(-10, 10))  # fmt: skip
            fine -= u(0.1, 0.25) * self.fill([g])
        if u() < 0.3:  # a side marker letter in a top corner
            marker = np.zeros((self.size, self.size), np.uint8)
            xy = (int(self.size * u(0.04, 0.12)), int(self.size * u(0.08, 0.14)))
            cv2.putText(marker, "RL"[int(u() < 0.5)], xy, cv2.FONT_HERSHEY_SIMPLEX,
                        0.7 * self.k, 255, max(1, round(2 * self.k)))  # fmt: skip
            fine += marker.astype(np.float32) * (u(0.3, 0.6) / 255)
        att += self.blur(fine, 1.2)

        # ---- acquisition: blur, noise, window, gamma
        att = self.blur(att, u(0.4, 1.6))
        att += u(0.005, 0.03) * rng.standard_normal(att.shape, dtype=np.float32)
        lo, hi = u(0.0, 0.12), u(0.75, 1.0)
        img = np.clip((att - lo) / (hi - lo), 0, 1) ** u(0.7, 1.4)
        image = (img * 255 + 0.5).astype(np.uint8)

        lungs = (self.ipx(right).reshape(-1, 2), self.ipx(left).reshape(-1, 2))
        return SynthSample(image=image, mask=lung_mask(lungs, self.size), lungs=lungs)

    def body_outline(self, mid: float, top: float) -> list[np.ndarray]:
        u = self.rng.uniform
        half = u(0.40, 0.50)
        n = 24
        t = np.linspace(0, np.pi, n)  # torso sides from the shoulders down past the bottom edge
        ys = top - 0.05 + (1.25 - top) * t / np.pi
        xs = half * (0.9 + 0.1 * np.sin(t)) + np.cumsum(self.rng.normal(0, 0.004, n))
        torso = np.concatenate([np.stack([mid - xs, ys], 1), np.stack([mid + xs, ys], 1)[::-1]])
        sh_y = top - u(0.02, 0.08)
        shoulders = [
            self.ellipse(mid + sx * half * u(0.75, 0.95), sh_y, u(0.16, 0.24), u(0.08, 0.12),
                         sx * u(5, 20))
            for sx in (-1, 1)
        ]  # fmt: skip
        nw = u(0.07, 0.1)
        neck = np.array([[mid - nw, -0.1], [mid + nw, -0.1], [mid + nw, sh_y], [mid - nw, sh_y]])
        return [torso, *shoulders, neck]

    def spine(self, mid: float, top: float) -> np.ndarray:
        u = self.rng.uniform
        w = u(0.035, 0.05)
        band = np.array([[mid - w, -0.1], [mid + w, -0.1], [mid + w, 1.1], [mid - w, 1.1]])
        layer = 0.6 * self.fill([band])
        step = u(0.045, 0.06)
        bodies = []
        for y in np.arange(top - 0.15 + u(0, step), 1.1, step):
            hw, hh = w * u(0.85, 1.0), step * 0.38
            bodies.append(np.array([[mid - hw, y - hh], [mid + hw, y - hh], [mid + hw, y + hh],
                                    [mid - hw, y + hh]]))  # fmt: skip
        layer += 0.4 * self.fill(bodies)
        return u(0.10, 0.18) * layer

    def trachea(self, mid: float, top: float) -> np.ndarray:
        w = self.rng.uniform(0.012, 0.02)
        end = top + self.rng.uniform(0.12, 0.2)
        return self.fill([np.array([[mid - w, -0.1], [mid + w, -0.1], [mid + w * 0.8, end],
                                    [mid - w * 0.8, end]])])  # fmt: skip

    def heart(self, mid: float, gap: float, bottom: float, width_l: float, notch: float):
        u = self.rng.uniform
        ax, ay = u(0.15, 0.2), u(0.11, 0.15)
        # Centre so that the heart's lateral edge reaches into the left lung's notch.
        reach = mid + gap / 2 + width_l * (0.2 + 0.22 * notch) + u(0.0, 0.04)
        return self.ellipse(reach - ax * 0.95, bottom - ay * u(0.6, 0.9), ax, ay, u(-30, -10))

    def ribs(self, mid, gap, top, height, width_r, width_l) -> np.ndarray:
        """Posterior ribs (bright arcs from the spine) plus fainter anterior ribs."""
        u = self.rng.uniform
        n = int(self.rng.integers(8, 11))
        step = height / (n - 0.5)
        t = np.linspace(0, 1, 16)
        back, front = [], []
        for side, w in ((-1, width_r), (1, width_l)):
            rise, drop = u(0.03, 0.07), u(0.12, 0.2)
            for k in range(n):
                # from the spine up and out, then down along the chest wall
                y0 = top - 0.03 + k * step + u(-0.008, 0.008)
                ext = gap / 2 + w * u(1.0, 1.12)
                x = mid + side * (0.03 + t * ext)
                y = y0 - rise * np.sin(np.pi * t * 0.8) + drop * t**2
                back.append(np.stack([x, y], 1))
            for k in range(n - 3):
                # from the chest wall down towards the midline
                y0 = top + 0.02 + k * step * 1.1
                x = mid + side * (gap / 2 + w * (1.0 - 0.75 * t))
                y = y0 + 0.09 * t + 0.02 * np.sin(np.pi * t)
                front.append(np.stack([x, y], 1))
        return self.lines(back, 5.0) + 0.4 * self.lines(front, 4.0)

    def clavicles(self, mid: float, top: float) -> np.ndarray:
        u = self.rng.uniform
        t = np.linspace(0, 1, 12)
        curves = []
        for side in (-1, 1):
            y0 = top + u(-0.02, 0.03)
            x = mid + side * (0.05 + t * u(0.3, 0.38))
            y = y0 - u(0.03, 0.07) * t + 0.03 * np.sin(np.pi * t)
            curves.append(np.stack([x, y], 1))
        return self.lines(curves, 7.0)

    def vessels(self, mid: float, gap: float, top: float, height: float) -> np.ndarray:
        u = self.rng.uniform
        curves = []
        for side in (-1, 1):
            hx, hy = mid + side * (gap / 2 + 0.02), top + height * u(0.35, 0.5)
            for _ in range(int(self.rng.integers(6, 12))):
                ang = u(-1.2, 1.2)  # fan out laterally from the hilum
                length = u(0.08, 0.22)
                t = np.linspace(0, 1, 6)
                x = hx + side * t * length * math.cos(ang)
                y = hy + t * length * math.sin(ang) + 0.02 * np.sin(np.pi * t) * u(-1, 1)
                curves.append(np.stack([x, y], 1))
        return self.lines(curves, 1.5)
