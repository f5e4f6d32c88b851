"""A quality flag per predicted mask: does it look like the masks the run was trained on?

A user screening thousands of X-rays needs to know which masks to look at. The
flag compares each predicted mask with statistics of the TRAINING masks, recorded
by ``unet train`` in the run's ``config.json`` (:func:`mask_stats`), so the same
rules hold for lungs, nuclei or anything else without a hand-made lung model:

* the number of objects (8-connected components), when the training masks hold a
  small, steady number of them (2 lungs);
* the foreground fraction, against the range seen in training, widened by half. A
  fraction out of that range passes when its fraction of the imaged field
  (:func:`imaged_field`: the picture inside a uniform frame, such as the black borders
  of a zoomed-out small patient or a collimator's gray) is in it, so a child's correct
  lung field is not flagged for being small in its frame. The field only ever lifts
  this flag: a uniform dark background around cells is no frame, but the whole image's
  fraction is in range there already;
* with two objects (lungs): the smaller one's area relative to the larger one,
  and whether they lie side by side;
* the unsure area: pixels with ``0.1 < p < 0.9`` relative to the mask's area. A
  network that cannot tell lung from white effusion or from an empty frame leaves a
  wide band of such pixels; one that is right leaves a thin rim;
* with a small, steady number of large objects (organs such as lungs): each object's
  contrast with its surroundings (:func:`object_contrast`), against the training
  masks' range widened by its own width on each side (:data:`CONTRAST_MARGIN` at
  least). A lung no darker than the chest wall and mediastinum around it is a
  whited-out lung, whose outline the network had to infer; the range is checked on
  the other side too (an object far darker than its surroundings);
* with one object steadily (a class of a multi-class run, such as the lung on the
  image's left): where its centre lies across the width, against the training range
  widened by its own width (:data:`CENTRE_MARGIN` at least), so classes that name a
  side are not swapped unseen;
* with a small, steady number of objects whose mean shape differs from itself upside
  down (lungs: apices up, bases down): the shape of the mask's objects
  (:func:`object_shape`) against that mean, upright and upside down (:func:`upright`,
  :data:`SHAPE_MARGIN`).
  A film stored upside down gets two lung-like shapes that pass every other rule
  about half the time; their shape is the training masks' turned over.

Touching the image border is not a rule: on the robustness simulations it flagged
many good masks (lung bases cut off by the field of view, zoomed-in films) and no
bad mask that the unsure area did not flag already (``benchmarks/RESULTS.md``).

:func:`assess` returns ``ok`` or ``check`` with the reasons; ``unet predict`` writes
it to ``predictions.csv`` as ``ok`` or ``check: <reasons>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from unet_lowered.dataset.masks import as_2d
from unet_lowered.inference.postprocess import label_objects

MAX_STEADY_OBJECTS = 4
"""Object counts are checked only when the training masks hold at most this many."""

UNSURE_AREA = 0.38
"""A mask is ``check`` when its unsure pixels (``0.1 < p < 0.9``) cover more than this
share of its area. Set on the robustness simulations of one JSRT run, where it flagged
every mask below Dice 0.85 and 7% of the others (``benchmarks/RESULTS.md``)."""


CONTRAST_GRID = 256
""":func:`contrast_grid` reads images on at most this many points a side."""

CONTRAST_RING = 0.05
""":func:`object_contrast` compares an object with the ring this share of the grid's
longer side wide around it (outside the mask)."""

CONTRAST_MIN_AREA = 0.01
"""Objects under this share of the grid get no contrast (specks say nothing)."""

CONTRAST_MARGIN = 0.1
"""The contrast rule widens the training range by its own width on each side, and by
at least this much (training objects that all look alike give a range of width 0)."""


SHAPE_SIDE = 24
"""The objects' shape (:func:`object_shape`) is compared on this many points a side."""

SHAPE_ASYMMETRY = 0.2
"""The shape rule is on only when the training masks' mean shape matches itself at least
this much better than it matches itself upside down (:func:`upright`): lungs 0.71; a
shape that looks alike either way cannot tell (a disc, a rectangle)."""


SIDE_STEADY = 0.95
"""The training masks are handed (:func:`handed`) when at least this share of their
pairs have the larger object on the same side (JSRT's lungs: 0.99, on the image's left:
the heart takes room from the left lung)."""

SHAPE_MARGIN = 0.05
"""A mask is flagged when its objects' shape matches the training masks' mean shape
upright by less than this more than upside down (:func:`upright`). On the validation
images of three JSRT runs, masks of films the right way up score +0.08 or more (tilted
by 15 degrees; +0.24 by 8), and those of films upside down +0.001 or less
(``benchmarks/RESULTS.md``, 2026-12-05)."""


CENTRE_MARGIN = 0.1
"""The position rule widens the training range of a lone object's centre (a share of
the width) by its own width on each side, and by at least this much."""


FRAME_TOLERANCE = 0.04
"""A row or column belongs to a frame when :data:`FRAME_UNIFORM` of its pixels lie within
this share of the image's range (1st to 99th percentile) of the frame's value."""

FRAME_UNIFORM = 0.95
"""Share of a frame row's or column's pixels that must match the frame's value (burned-in
text and markers may cover the rest)."""

FRAME_GRID = 512
""":func:`imaged_field` reads every k-th pixel of larger images, down to this many a side."""


def imaged_field(image: np.ndarray | None) -> float:
    """The share of ``image`` inside its uniform frame, if any (1.0 without one).

    A frame is a run of outer rows and columns, from any side, that hold one value
    (black borders around a zoomed-out film, the gray of a collimator), with up to
    5% of each line different (text, side markers); a uniform background around
    objects counts as one too. :func:`assess` also measures the foreground against the
    picture inside. At most 45% of the height and of the width is taken from each side.
    Large images are read on a grid of at most :data:`FRAME_GRID` points a side (a few
    milliseconds).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array of any dtype, or None (1.0).
    """
    if image is None:
        return 1.0
    image = np.asarray(image)
    step = max(1, -(-max(image.shape[:2]) // FRAME_GRID))  # a 4k image: every 8th pixel
    gray = image[::step, ::step]
    gray = (gray if gray.ndim == 2 else gray.mean(axis=2)).astype(np.float32)
    h, w = gray.shape
    low, high = np.percentile(gray, (1, 99))
    tolerance = FRAME_TOLERANCE * float(high - low)
    if h < 3 or w < 3 or tolerance <= 0:
        return 1.0
    top, bottom, left, right = 0, h, 0, w

    def uniform(line: np.ndarray, value: float) -> bool:
        return np.count_nonzero(np.abs(line - value) <= tolerance) >= FRAME_UNIFORM * line.size

    frame = [float(np.median(line)) for line in (gray[0], gray[-1], gray[:, 0], gray[:, -1])]
    while top < 0.45 * h and uniform(gray[top, left:right], frame[0]):
        top += 1
    while h - bottom < 0.45 * h and uniform(gray[bottom - 1, left:right], frame[1]):
        bottom -= 1
    while left < 0.45 * w and uniform(gray[top:bottom, left], frame[2]):
        left += 1
    while w - right < 0.45 * w and uniform(gray[top:bottom, right - 1], frame[3]):
        right -= 1
    return (bottom - top) * (right - left) / float(h * w)


@dataclass(frozen=True)
class MaskStats:
    """What the training masks look like (binary runs).

    Attributes:
        objects: The most common number of objects per mask, or None when it varies
            (fewer than 80% of the masks have it) or exceeds :data:`MAX_STEADY_OBJECTS`.
        fraction: ``(low, high)``: the 1st and 99th percentile of the foreground fraction.
        min_ratio: With two objects: the 1st percentile of smaller/larger area, else None.
        small_object: The 1st percentile of the objects' areas, as a fraction of their
            image's area (None without objects): the post-processing's minimum-area
            candidate is derived from it (:func:`unet_lowered.evaluation.choose.min_area_candidate`).
        contrast: ``(low, high)``: the 1st and 99th percentile of the training objects'
            :func:`object_contrast`, when ``objects`` is steady and the images were
            given; else None (and the rule is off).
        shape: The mean :func:`object_shape` of the training masks with ``objects``
            objects (:data:`SHAPE_SIDE` rows of values in ``[0, 1]``, 3 decimals), when
            ``objects`` is steady and the shape is no alike upside down
            (:data:`SHAPE_ASYMMETRY`); else None (and the rule is off).
        centre: ``(low, high)``: the 1st and 99th percentile of the object's centre
            column, as a share of the width, when the masks hold one object steadily
            (a class of a multi-class run: the lung on the image's left); else None.
        larger_left: With two objects steadily: the share of the training masks' pairs
            side by side whose larger object lies on the image's left (JSRT's lungs:
            0.99); else None. Not a flag rule (disease shrinks either lung); it says
            whether the masks are :func:`handed`.
        val_unsure: The median :func:`unsure_share` of the network's own masks on the
            validation split (one-class runs), recorded by ``unet train`` after
            training; None before (and for older runs). Not a flag rule: it scales when
            a film that passes gets the mirrored view
            (:data:`~unet_lowered.inference.polarity.MIRROR_UNSURE`).
    """

    objects: int | None
    fraction: tuple[float, float]
    min_ratio: float | None
    small_object: float | None = None
    contrast: tuple[float, float] | None = None
    shape: tuple[tuple[float, ...], ...] | None = None
    centre: tuple[float, float] | None = None
    larger_left: float | None = None
    val_unsure: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "fraction": list(self.fraction),
            "min_ratio": self.min_ratio,
            "small_object": self.small_object,
            "contrast": None if self.contrast is None else list(self.contrast),
            "shape": None if self.shape is None else [list(row) for row in self.shape],
            "centre": None if self.centre is None else list(self.centre),
            "larger_left": self.larger_left,
            "val_unsure": self.val_unsure,
        }

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> MaskStats:
        low, high = values["fraction"]
        contrast = values.get("contrast")
        shape, centre = values.get("shape"), values.get("centre")
        return cls(
            objects=values.get("objects"),
            fraction=(float(low), float(high)),
            min_ratio=values.get("min_ratio"),
            small_object=values.get("small_object"),
            contrast=None if contrast is None else (float(contrast[0]), float(contrast[1])),
            shape=None if shape is None else tuple(tuple(float(v) for v in row) for row in shape),
            centre=None if centre is None else (float(centre[0]), float(centre[1])),
            larger_left=values.get("larger_left"),
            val_unsure=values.get("val_unsure"),
        )


@dataclass(frozen=True)
class Quality:
    """The flag of one mask.

    Attributes:
        status: ``"ok"`` or ``"check"``.
        reasons: Why ``check`` (empty when ``ok``).
    """

    status: str
    reasons: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.status if not self.reasons else f"{self.status}: {'; '.join(self.reasons)}"


@dataclass(frozen=True)
class Objects:
    """The 8-connected objects of a mask, labelled once for every rule that needs them.

    OpenCV labels them and a histogram counts the pixels of each label
    (:func:`~unet_lowered.inference.postprocess.label_objects`, about 20 ms of CPU on a
    4k mask). Where each object lies is read only for the objects a rule asks about
    (:meth:`place`).

    Attributes:
        labels: int32 ``(H, W)``: 0 background, ``1..count`` the objects, numbered in
            the labelling's order (which rules must not depend on).
        count: Number of objects.
        areas: Pixels of each object (int64); ``areas[k]`` is label ``k + 1``'s.
    """

    labels: np.ndarray
    count: int
    areas: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> Objects:
        labels, areas = label_objects(as_2d(mask))
        return cls(labels, areas.size, areas)

    def largest_first(self) -> np.ndarray:
        return np.sort(self.areas)[::-1]

    def place(self, label: int) -> tuple[int, int, float]:
        """Object ``label``'s first row, last row and mean column (its centroid's x)."""
        own = (self.labels == label).view(np.uint8)
        x, y, w, h = cv2.boundingRect(own)
        columns = np.count_nonzero(own[y : y + h, x : x + w], axis=0)
        return y, y + h - 1, float(columns @ np.arange(x, x + w)) / float(columns.sum())

    def two_largest(self) -> list[int]:
        """The labels of the two largest objects (at least two needed). Objects of equal
        area are taken top first, then left first, whatever their labels."""
        second = np.partition(self.areas, -2)[-2]
        labels = [int(k) + 1 for k in np.flatnonzero(self.areas >= second)]
        if len(labels) > 2:  # a tie for second place
            labels.sort(key=lambda k: (-self.areas[k - 1], *self.place(k)[::2]))
        return labels[:2]


def mask_stats(
    masks: Iterable[np.ndarray], images: Iterable[np.ndarray] | None = None
) -> MaskStats:
    """The statistics :func:`assess` compares with, from the training masks.

    Args:
        masks: ``(H, W)`` binary masks (any non-zero value is foreground).
        images: Their images, in the same order (any size: each is read on its
            :func:`contrast_grid`), for the objects' contrast; None: no contrast rule.

    Returns:
        The :class:`MaskStats`.

    Raises:
        ValueError: No masks.
    """
    tally = _Tally()
    pictures = None if images is None else iter(images)
    for mask in masks:
        grid = None if pictures is None else contrast_grid(next(pictures))
        tally.add(np.asarray(mask) != 0, grid)
    return tally.stats()


def class_mask_stats(
    masks: Iterable[np.ndarray], images: Iterable[np.ndarray], num_classes: int
) -> tuple[MaskStats, dict[int, MaskStats]]:
    """:func:`mask_stats` of the foreground (every class together) and of each class
    ``1..num_classes-1`` alone, from class-index masks, in one pass over the pairs.

    Returns:
        ``(foreground, per_class)``; ``per_class`` is empty for one class.
    """
    union = _Tally()
    classes = {c: _Tally() for c in range(1, num_classes)} if num_classes > 1 else {}
    for mask, image in zip(masks, images, strict=True):
        mask, grid = np.asarray(mask), contrast_grid(image)
        union.add(mask != 0, grid)
        for c, tally in classes.items():
            tally.add(mask == c, grid)
    return union.stats(), {c: tally.stats() for c, tally in classes.items()}


@dataclass
class _Tally:
    """What :func:`mask_stats` gathers from the masks, one at a time."""

    counts: list[int] = dataclasses.field(default_factory=list)
    fractions: list[float] = dataclasses.field(default_factory=list)
    ratios: list[float] = dataclasses.field(default_factory=list)
    objects: list[float] = dataclasses.field(default_factory=list)
    contrasts: list[float] = dataclasses.field(default_factory=list)
    shapes: dict[int, list[np.ndarray]] = dataclasses.field(default_factory=dict)  # by count
    centres: list[float] = dataclasses.field(default_factory=list)  # of lone objects
    lefts: list[bool] = dataclasses.field(default_factory=list)  # pairs: larger on the left?

    def add(self, mask: np.ndarray, grid: np.ndarray | None) -> None:
        """One bool mask, and its image's :func:`contrast_grid` (None: no contrast)."""
        found = Objects.of(mask)
        count, areas = found.count, found.largest_first()
        if 1 <= count <= MAX_STEADY_OBJECTS:
            self.shapes.setdefault(count, []).append(object_shape(mask, count, found))
        self.counts.append(count)
        self.objects.extend(areas / mask.size)
        self.fractions.append(float(mask.mean()))
        if count >= 2:
            self.ratios.append(float(areas[1] / areas[0]))
        left = larger_on_left(found, mask.shape[1]) if count == 2 else None
        if left is not None:
            self.lefts.append(left)
        if count == 1:
            self.centres.append(found.place(1)[2] / mask.shape[1])
        if grid is not None:
            self.contrasts.extend(object_contrast(grid, mask))

    def stats(self) -> MaskStats:
        if not self.counts:
            raise ValueError("mask_stats needs at least one mask")
        values, tally = np.unique(self.counts, return_counts=True)
        common = int(values[np.argmax(tally)])
        steady = tally.max() >= 0.8 * len(self.counts) and 1 <= common <= MAX_STEADY_OBJECTS
        shape = np.round(np.mean(self.shapes[common], axis=0), 3) if steady else None
        ratios, contrasts = self.ratios, self.contrasts
        return MaskStats(
            objects=common if steady else None,
            fraction=(
                float(np.percentile(self.fractions, 1)),
                float(np.percentile(self.fractions, 99)),
            ),
            min_ratio=float(np.percentile(ratios, 1))
            if steady and common == 2 and ratios
            else None,
            small_object=float(np.percentile(self.objects, 1)) if self.objects else None,
            contrast=(
                (float(np.percentile(contrasts, 1)), float(np.percentile(contrasts, 99)))
                if steady and contrasts
                else None
            ),
            shape=(
                tuple(tuple(float(v) for v in row) for row in shape)
                if shape is not None and upright(shape, shape) >= SHAPE_ASYMMETRY
                else None
            ),
            centre=(
                (float(np.percentile(self.centres, 1)), float(np.percentile(self.centres, 99)))
                if steady and common == 1
                else None
            ),
            larger_left=(
                round(float(np.mean(self.lefts)), 3)
                if steady and common == 2 and self.lefts
                else None
            ),
        )


def object_shape(
    mask: np.ndarray, n: int | None = None, found: Objects | None = None
) -> np.ndarray:
    """The shape of a mask's ``n`` largest objects (all: None): the mask inside their
    bounding box, resized to :data:`SHAPE_SIDE` points a side by area averaging (float32
    in ``[0, 1]``; zeros for an empty mask). Large masks are read on every k-th pixel
    first (at most 256 a side), so a 4k mask costs no more than a small one.

    Args:
        mask: ``(H, W)`` mask (non-zero is foreground).
        n: How many of the largest objects (ties: any of them).
        found: ``Objects.of(mask)`` when the caller has it already.
    """
    mask = as_2d(np.asarray(mask))
    step = max(1, max(mask.shape) // 256)
    if n is None:
        picked = np.ascontiguousarray(mask[::step, ::step] != 0)
    else:
        found = Objects.of(mask) if found is None else found
        table = np.zeros(found.count + 1, bool)
        table[np.argsort(found.areas, kind="stable")[::-1][:n] + 1] = True
        picked = table[found.labels[::step, ::step]]
    x, y, w, h = cv2.boundingRect(picked.view(np.uint8))
    if w == 0 or h == 0:
        return np.zeros((SHAPE_SIDE, SHAPE_SIDE), np.float32)
    box = picked[y : y + h, x : x + w].astype(np.float32)
    return cv2.resize(box, (SHAPE_SIDE, SHAPE_SIDE), interpolation=cv2.INTER_AREA)


def upright(shape: np.ndarray, mean: np.ndarray) -> float:
    """How much better ``shape`` matches ``mean`` as it is than upside down: its
    correlation with ``mean`` minus the larger of its correlations with ``mean`` turned
    180 degrees and mirrored top to bottom (both :func:`object_shape` arrays). Negative:
    the shape is the mean's upside down. The predicted lungs of JSRT validation films
    score +0.5 to +0.8 (+0.24 tilted by 8 degrees), of the same films turned or
    mirrored upside down -0.09 to -0.47 (one run; ``benchmarks/RESULTS.md``)."""
    shape, mean = np.asarray(shape, np.float64), np.asarray(mean, np.float64)
    return _correlation(shape, mean) - max(
        _correlation(shape, mean[::-1, ::-1]), _correlation(shape, mean[::-1])
    )


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays' values (0 when either is flat)."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm > 0 else 0.0


def contrast_grid(image: np.ndarray) -> np.ndarray:
    """The image as float32 gray (channels averaged) on at most :data:`CONTRAST_GRID`
    points a side (area averaging): what :func:`object_contrast` reads. About 0.25 MB,
    so a prediction pipeline can keep it beside each image in flight. A large image is
    first read on every k-th pixel (at least 512 a side), in its own dtype."""
    arr = np.asarray(image)
    if arr.dtype not in (np.uint8, np.uint16, np.float32):
        arr = arr.astype(np.float32)
    h, w = arr.shape[:2]
    step = max(1, max(h, w) // (2 * CONTRAST_GRID))  # every step-th pixel, then averaged
    arr = np.ascontiguousarray(arr[::step, ::step])
    scale = CONTRAST_GRID * step / max(h, w)
    if scale < 1:
        size = (max(1, round(w * scale / step)), max(1, round(h * scale / step)))
        arr = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    gray = arr.astype(np.float32)
    return gray.mean(axis=2) if gray.ndim == 3 else gray


def object_contrast(grid: np.ndarray, mask: np.ndarray, limit: int | None = None) -> list[float]:
    """How much darker each object is than its surroundings, largest object first.

    The mask is read on the grid (nearest neighbour). For each 8-connected object of at
    least :data:`CONTRAST_MIN_AREA` of the grid: (median of the ring around it, outside
    the mask, :data:`CONTRAST_RING` of the longer side wide) minus (median inside it),
    over the grid's range (1st to 99th percentile). A healthy lung on an X-ray is
    0.2-0.45 (darker than the chest wall and mediastinum); a lung whited out past its
    outline about 0; a bright nucleus on a dark background is negative.

    Args:
        grid: :func:`contrast_grid` of the image.
        mask: ``(H, W)`` mask of the image (any size; non-zero is foreground).
        limit: Only the ``limit`` largest objects (None: all).

    Returns:
        One value per object (none for a flat image or an object with no ring).
    """
    mask = as_2d(np.asarray(mask))
    gh, gw = grid.shape
    if mask.shape != (gh, gw):  # nearest neighbour, reading only the grid's pixels
        rows = ((np.arange(gh) + 0.5) * mask.shape[0] / gh).astype(np.intp)
        cols = ((np.arange(gw) + 0.5) * mask.shape[1] / gw).astype(np.intp)
        mask = mask[rows[:, None], cols]
    fg = (mask != 0).astype(np.uint8)
    low, high = np.percentile(grid, [1, 99])
    if high <= low:
        return []
    _, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = [
        k + 1
        for k in np.argsort(areas, kind="stable")[::-1]
        if areas[k] >= CONTRAST_MIN_AREA * fg.size
    ]
    radius = max(1, round(CONTRAST_RING * max(gh, gw)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    values = []
    for label in order[:limit]:
        own = (labels == label).astype(np.uint8)
        ring = (cv2.dilate(own, disk) > 0) & (fg == 0)
        if ring.any():
            inside = np.median(grid[own > 0])
            values.append(float((np.median(grid[ring]) - inside) / (high - low)))
    return values


def assess(
    mask: np.ndarray,
    probs: np.ndarray | None,
    stats: MaskStats | None,
    found: Objects | None = None,
    field: float = 1.0,
    grid: np.ndarray | None = None,
) -> Quality:
    """Flag a predicted binary mask ``ok`` or ``check``.

    Args:
        mask: ``(H, W)`` bool mask as written (after post-processing).
        probs: ``(H, W)`` or ``(H, W, 1)`` foreground probabilities, or None.
        stats: The run's training statistics; None (a run trained before they were
            recorded) checks only emptiness and confidence.
        found: ``Objects.of(mask)`` when the caller has it already (labelling a 4k
            mask is the costly part); None: labelled here.
        field: The image's :func:`imaged_field` (1.0: no frame). A foreground fraction
            out of the training range is not flagged when its fraction of the imaged
            field is in it: a small patient in a wide frame.
        grid: The image's :func:`contrast_grid`, for the contrast rule (None: off).

    Returns:
        The :class:`Quality`.
    """
    mask = np.asarray(mask)
    mask = mask if mask.dtype == bool else mask != 0
    reasons: list[str] = []
    found = Objects.of(mask) if found is None else found
    count, areas = found.count, found.largest_first()
    fraction = float(found.areas.sum()) / mask.size
    of_field = min(1.0, fraction / max(field, 1e-6))
    if count == 0:
        reasons.append("empty mask")
    elif stats is not None:
        if stats.objects is not None and count != stats.objects:
            reasons.append(f"{count} object(s), training masks have {stats.objects}")
        low, high = stats.fraction
        plausible = [0.5 * low <= f <= min(1.0, 1.5 * high) for f in (fraction, of_field)]
        if not any(plausible):
            in_field = f" ({of_field:.1%} of the imaged field)" if field < 1 else ""
            reasons.append(
                f"foreground {fraction:.1%} of the image{in_field}, training masks "
                f"{low:.1%}-{high:.1%}"
            )
        if stats.objects == 2 and count >= 2:
            ratio = float(areas[1] / areas[0])
            if stats.min_ratio is not None and ratio < 0.75 * stats.min_ratio:
                reasons.append(f"the two largest objects differ in size ({ratio:.2f} to 1)")
            if not _side_by_side(found, mask.shape[1]):
                reasons.append("the two largest objects are not side by side")
        if stats.contrast is not None and grid is not None and stats.objects is not None:
            low, high = stats.contrast
            margin = max(high - low, CONTRAST_MARGIN)
            for value in object_contrast(grid, mask, stats.objects):
                if not low - margin <= value <= high + margin:
                    reasons.append(
                        f"an object's contrast with its surroundings {value:+.2f}, "
                        f"training masks {low:+.2f} to {high:+.2f}"
                    )
                    break
        if stats.centre is not None and stats.objects == 1:
            low, high = stats.centre
            margin = max(high - low, CENTRE_MARGIN)
            x = found.place(int(np.argmax(found.areas)) + 1)[2] / mask.shape[1]
            if not low - margin <= x <= high + margin:
                reasons.append(
                    f"the object's centre at {x:.0%} of the width, training masks "
                    f"{low:.0%}-{high:.0%}"
                )
        reasons += _shape_reasons(mask, stats, found)
    if probs is not None and count:
        unsure = unsure_share(probs, int(found.areas.sum()))
        if unsure > UNSURE_AREA:
            share = f"{unsure:.0%} of" if unsure < 1 else f"{unsure:.1f} times"
            reasons.append(f"unsure area {share} the mask's")
    return Quality("check" if reasons else "ok", tuple(reasons))


def _shape_reasons(mask: np.ndarray, stats: MaskStats, found: Objects | None) -> list[str]:
    """The shape rule: a reason when the mask's objects do not look upright against the
    training masks' mean shape (none when no shape or no steady count is recorded)."""
    if stats.shape is None or stats.objects is None:
        return []
    shape = object_shape(mask, stats.objects, found)
    score = round(upright(shape, np.asarray(stats.shape)), 2) + 0.0  # as printed, no -0
    if score >= SHAPE_MARGIN:
        return []
    return [
        f"the objects' shape does not look upright ({score:+.2f} against the training "
        f"masks, {SHAPE_MARGIN:+.2f} or more when upright): is the image turned?"
    ]


def larger_on_left(found: Objects, width: int) -> bool | None:
    """Of the two largest objects, side by side (:func:`_side_by_side`): whether the
    larger one lies on the image's left (its centroid left of the other's); None when
    there are fewer than two or they are not side by side."""
    if found.count < 2 or not _side_by_side(found, width):
        return None
    a, b = found.two_largest()
    if found.areas[b - 1] > found.areas[a - 1]:
        a, b = b, a
    return found.place(a)[2] < found.place(b)[2]


def handed(stats: MaskStats | None) -> bool:
    """Whether the training masks tell left from right: two objects side by side, the
    larger one steadily (:data:`SIDE_STEADY`) on the same side (lungs on chest X-rays).
    A mirrored image of such data shows anatomy the network never saw."""
    share = None if stats is None else stats.larger_left
    return share is not None and not 1 - SIDE_STEADY < share < SIDE_STEADY


def unsure_share(probs: np.ndarray, area: int) -> float:
    """The unsure pixels (``0.1 < p < 0.9``) of foreground probabilities ``(H, W)`` or
    ``(H, W, 1)``, as a share of a mask's ``area`` (pixels; 0 for an empty mask). Class
    probabilities ``(H, W, K)``, ``K > 1``: the pixels whose most likely class (the
    background among them) has ``p < 0.9``, the same rule for two classes."""
    p = np.asarray(probs, np.float32)
    if p.ndim == 3 and p.shape[-1] > 1:
        between = np.count_nonzero(p.max(axis=-1) < 0.9)
    else:
        p = p[..., 0] if p.ndim == 3 else p
        between = np.count_nonzero(p > 0.1) - np.count_nonzero(p >= 0.9)
    return float(between) / float(area) if area else 0.0


def names_a_side(stats: MaskStats) -> bool:
    """Whether a class's training masks hold one object whose centre lies steadily on
    one side of the image's middle (the range of :attr:`MaskStats.centre`: a
    multi-class run's lung on the image's left)."""
    return stats.centre is not None and (stats.centre[1] < 0.5 or stats.centre[0] > 0.5)


def _side_by_side(found: Objects, width: int) -> bool:
    """The two largest objects: centroids on either side of the middle column, and
    vertically overlapping (left and right lung, not one above the other)."""
    (top1, bottom1, x1), (top2, bottom2, x2) = (found.place(k) for k in found.two_largest())
    middle = width / 2
    apart = (x1 - middle) * (x2 - middle) < 0
    return bool(apart and min(bottom1, bottom2) - max(top1, top2) > 0)


def mask_quality(
    mask: np.ndarray,
    probs: np.ndarray,
    config: Any,
    found: Objects | None = None,
    field: float = 1.0,
    grid: np.ndarray | None = None,
) -> str:
    """The flag of one predicted mask of a run, as ``predictions.csv`` writes it.

    Binary runs: :func:`assess` against the run's recorded ``mask_stats`` (``found``:
    the mask's objects if already labelled; ``field``: the image's
    :func:`imaged_field`; ``grid``: its :func:`contrast_grid`). Multi-class runs: each
    class's mask against that class's training masks (``mask_stats["classes"]``), the
    reasons named by class (its label value): ``check: class 3: empty mask``; the shape
    rule is taken on the foreground (every class together), since one object of a
    pair (a lung) says less about which way up the image is than the pair. A class
    whose training masks do not hold a steady number of objects is not flagged for
    being absent. Multi-class runs trained before the classes were recorded: ``""``.
    """
    if config.num_classes == 1:
        stats = MaskStats.from_json(config.mask_stats) if config.mask_stats else None
        return str(assess(mask, probs, stats, found, field, grid))
    per_class = (config.mask_stats or {}).get("classes")
    if not per_class:
        return ""
    values = list(config.label_values or range(config.num_classes))
    mask, probs = as_2d(np.asarray(mask)), np.asarray(probs)
    reasons: list[str] = []
    for key, values_json in sorted(per_class.items(), key=lambda kv: int(kv[0])):
        c, stats = int(key), dataclasses.replace(MaskStats.from_json(values_json), shape=None)
        own = mask == c
        if stats.objects is None and not own.any():
            continue  # a class often absent in training
        quality = assess(own, probs[..., c], stats, None, field, grid)
        reasons += [f"class {values[c]}: {reason}" for reason in quality.reasons]
    if mask.any():
        reasons += _shape_reasons(mask != 0, MaskStats.from_json(config.mask_stats), None)
    return str(Quality("check" if reasons else "ok", tuple(reasons)))
