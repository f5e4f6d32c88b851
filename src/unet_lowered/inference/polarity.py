"""A second look at images stored with their gray scale inverted, or turned.

A DICOM file says when its gray scale runs from white to black (MONOCHROME1), and
:func:`unet_lowered.io.images.read_image` presents it the usual way round. A PNG or
JPEG exported from such a film without that step carries no mark: its lungs are
white and its bones black, and a network trained on ordinary films finds no lung in
it (Dice 0.03 on the JSRT validation images; every mask flagged ``check``,
``benchmarks/RESULTS.md``).

``PredictOptions.polarity`` (``unet predict --polarity``, the service's ``polarity``
query parameter):

* ``"auto"`` (the default): a mask flagged ``check`` is predicted again from the image
  with its gray scale inverted, and the second mask is kept when its flag is ``ok``.
  Only for one-channel runs whose training masks are a steady number of large objects
  with a recorded contrast against their surroundings
  (:class:`~unet_lowered.inference.quality.MaskStats`: lungs on X-rays; multi-class
  runs by their foreground, when each class's statistics are recorded). There the
  flag knows which way round the data are: an inverted lung is lighter than the chest
  wall around it, a contrast the training masks never had. Runs that normalise the
  polarity themselves (``invert_light``) and cell or EM runs are left as they are;
* ``"keep"``: every image as stored;
* ``"invert"``: every image inverted (a folder known to hold only such exports).

The flag that decides is the one ``predictions.csv`` gets (:func:`quality.mask_quality
<unet_lowered.inference.quality.mask_quality>`), taken on the probabilities at the
network's size (the run's post-processing applied, its minimum area scaled to that
size); the flag written is then taken on the kept mask at the image's size, as for
any image (for an image of the network's size, and in tile mode, it is the flag taken
here, and the writer takes it: :class:`Look`). Every image costs that flag on the
network's thread (about 3 ms at 224 px); only flagged ones cost more network calls:
one for the inverted view, one for each turned view tried (seven at most; nine for a
multi-class run whose classes name a side, with its mirrored views), and a film
read turned 180 degrees one more for its mirrored view (below). Of the films that
pass, only those a handed run is unsure of cost one call more, for the same view (1 of
200 JSRT films).

``PredictOptions.orientation`` (``--orientation``, the ``orientation`` query parameter):

* ``"auto"`` (the default): a mask still flagged ``check`` after that is predicted
  again from the image turned 180 degrees, then a quarter turn each way
  (:data:`TURNS`), and the first turned view whose mask is ``ok`` is kept, its
  probabilities turned back, so the mask is written the way the image is stored. Only
  for runs that record their training masks' shape (multi-class runs: of the
  foreground, with each class's statistics)
  (:attr:`~unet_lowered.inference.quality.MaskStats.shape`, lungs on X-rays): that is
  what tells a film upside down from one the right way up, whose lung-like masks pass
  the other rules about half the time. A run trained before the shape was recorded
  gets no turned look;
* ``"keep"``: every image as stored.

  A film mirrored top to bottom (digitised from its back, upside down) also reads as
  upside down, and turned 180 degrees it is the right way up with its heart on the
  other side, which the network segments less surely. For runs where that shows
  (:func:`mirror_tells`: one-class runs whose training masks are
  :func:`~unet_lowered.inference.quality.handed`, the larger lung steadily on the
  image's left; multi-class runs with a class that
  :func:`~unet_lowered.inference.quality.names_a_side`), a film read turned 180
  degrees is predicted once more, mirrored top to bottom (view
  :data:`MIRRORED_TOP_TO_BOTTOM`), and that view is kept when its mask is ``ok`` and
  its unsure share (:func:`~unet_lowered.inference.quality.unsure_share`; several
  classes: of the most likely class) is the smaller of the two. On the 30 JSRT
  validation films of one run, the anatomy the right way round had the smaller unsure
  share in 30 of 30 pairs (0.095 against 0.140 on average, ``benchmarks/RESULTS.md``,
  2026-12-05). Such a film can also pass the flag as stored, the network painting
  lungs that look upright on it, unsurely. So a film of a one-class run whose mask
  passes as stored gets the same mirrored view when its unsure share is above
  :data:`MIRROR_UNSURE` times the run's
  (:attr:`~unet_lowered.inference.quality.MaskStats.val_unsure`, the median on its
  validation films, recorded by ``unet train``; runs trained before it was recorded
  skip this), and keeps it on the same terms (:attr:`Look.over`). Films turned a
  quarter get no mirrored view. In a multi-class run whose classes name the image's
  sides, the film turned 180 degrees has its lungs' classes swapped, and a class's
  position (the heart's) usually flags it; there the mirrored view is also the last
  of the views tried for a mask still flagged (after :data:`TURNS`).

When a run gets both looks, the turned views of the image with its gray scale
inverted come last (a film both inverted and turned passes in no view of one change
alone).

The flag of a turned view, and the flag written for its mask, are taken in the frame
the network read: the mask, probabilities and image turned the same way.

The network's input is the image scaled to ``[0, 1]`` by its own minimum and maximum,
then standardised (:func:`unet_lowered.preprocess.model_input`), so the image with its
gray scale inverted (``c - v`` for any ``c``) gives ``-x``: the inversion is a sign on
the input, with no second decoding. (With CLAHE, the equalised image is the one
inverted.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unet_lowered.inference.predictor import (
    PredictOptions,
    postprocess_steps,
    predict_prepared,
    prepare_images,
    probs_to_mask,
    resolve_mode,
    restore_size,
)
from unet_lowered.inference.quality import (
    MaskStats,
    Objects,
    contrast_grid,
    handed,
    imaged_field,
    mask_quality,
    names_a_side,
    unsure_share,
)
from unet_lowered.training.config import RunConfig

AS_STORED = "as stored"
INVERTED = "inverted"
"""The values of ``predictions.csv``'s ``gray_scale`` column."""

TURNS = (2, 1, 3)
"""The views of :func:`second_look` with ``orientation="auto"``, in the order tried:
quarter turns counterclockwise (``np.rot90``), upside down first, then on either side."""

MIRRORED_TOP_TO_BOTTOM = 6
"""The view of a film read mirrored top to bottom (views ``4 + k``: mirrored left to
right, then turned ``k`` quarters counterclockwise; ``4 + 2`` is top to bottom)."""


MIRROR_UNSURE = 2.0
"""A handed run's film whose mask passes as stored gets the mirrored view too when its
unsure share is above this many times the run's
(:attr:`~unet_lowered.inference.quality.MaskStats.val_unsure`: the median on its
validation films). On two JSRT runs the stored reads of films mirrored top to bottom
that passed the flag had 3.1 and 3.6 times it; no clean validation film of four runs
(9 to 60 epochs) was above 2 times it (``benchmarks/RESULTS.md``, 2026-12-05)."""


def orientation_of(turns: int) -> str:
    """``predictions.csv``'s ``orientation``: ``as stored``, ``turned 90`` / ``180`` /
    ``270`` (the image was read turned that many degrees counterclockwise), or
    ``mirrored top to bottom`` (:data:`MIRRORED_TOP_TO_BOTTOM`)."""
    if turns == MIRRORED_TOP_TO_BOTTOM:
        return "mirrored top to bottom"
    return AS_STORED if turns % 4 == 0 else f"turned {90 * (turns % 4)}"


def turned_note(
    name: str, turns: int, off: str = "--orientation keep", over: int | None = None
) -> str:
    """The note on an image whose mask ``orientation="auto"`` took from it turned or
    mirrored (``over``: for a mirrored view, :attr:`Look.over`)."""
    if turns == MIRRORED_TOP_TO_BOTTOM and over == 0:
        return (
            f"{name}: read mirrored top to bottom: the mask of the image unmirrored passed "
            f"the flag, but the network was unsure of it (over {MIRROR_UNSURE:g} times as "
            f"unsure as of its validation images); the mirrored image's passes, and the "
            f"network is surer of it (a film digitised from its back, upside down?); the "
            f"mask is written the way the image is stored; {off} turns this off"
        )
    if turns == MIRRORED_TOP_TO_BOTTOM and over is None:
        return (
            f"{name}: read mirrored top to bottom: the mask as stored was flagged, and so "
            f"were those of the image turned; the mirrored image's passes (a film "
            f"digitised from its back, upside down?); the mask is written the way the "
            f"image is stored; {off} turns this off"
        )
    if turns == MIRRORED_TOP_TO_BOTTOM:
        return (
            f"{name}: read mirrored top to bottom: the mask as stored was flagged; the "
            f"mirrored image's passes, and the network is surer of it than of the image "
            f"turned 180 degrees (a film digitised from its back, upside down?); the mask "
            f"is written the way the image is stored; {off} turns this off"
        )
    return (
        f"{name}: read {orientation_of(turns)} degrees counterclockwise: the mask as "
        f"stored was flagged, the turned image's passes (a film stored upside down or on "
        f"its side?); the mask is written the way the image is stored; {off} turns this off"
    )


def look_notes(
    name: str,
    look: Look,
    polarity: str,
    off: tuple[str, str] = ("--polarity keep", "--orientation keep"),
) -> list[str]:
    """The notes on an image whose mask :func:`second_look` took from another view:
    :func:`inverted_note`, :func:`turned_note`, or one note for both at once.

    Args:
        name: The image, as the notes name it.
        look: Its :class:`Look`.
        polarity: ``PredictOptions.polarity`` (``invert``: every image was inverted on
            request, which needs no note).
        off: How to turn the gray-scale look, and the turned look, off.
    """
    inverted = look.inverted and polarity == "auto"
    if inverted and look.turns and look.over != 0:
        mirrored = look.turns == MIRRORED_TOP_TO_BOTTOM
        how = orientation_of(look.turns) + ("" if mirrored else " degrees counterclockwise")
        stored_how = "digitised from its back" if mirrored else "stored upside down or on its side"
        return [
            f"{name}: read with its gray scale inverted and {how}: the mask as stored was "
            f"flagged, and so were those of the image inverted or turned alone; the image "
            f"inverted and {'mirrored' if mirrored else 'turned'} passes (a MONOCHROME1 film "
            f"saved without its look-up table, {stored_how}?); the mask is written the way "
            f"the image is stored; {off[0]} or "
            f"{off[1]} turns this off"
        ]
    notes = [inverted_note(name, off[0])] if inverted else []
    return notes + ([turned_note(name, look.turns, off[1], look.over)] if look.turns else [])


def read_frame(array: np.ndarray, turns: int) -> np.ndarray:
    """An image-frame array ``(H, W, ...)`` turned (views 4-7: mirrored left to right
    first) as the network read it."""
    if turns >= 4:
        return np.ascontiguousarray(np.rot90(array[:, ::-1], turns - 4))
    return np.ascontiguousarray(np.rot90(array, turns)) if turns % 4 else array


def stored_frame(array: np.ndarray, turns: int) -> np.ndarray:
    """An array of the turned view ``(W, H, ...)`` or ``(H, W, ...)`` turned back (the
    inverse of :func:`read_frame`)."""
    if turns >= 4:
        return np.ascontiguousarray(np.rot90(array, 4 - turns)[:, ::-1])
    return np.ascontiguousarray(np.rot90(array, -turns)) if turns % 4 else array


def inverted_note(name: str, off: str = "--polarity keep") -> str:
    """The note on an image whose mask ``polarity="auto"`` took from it inverted."""
    return (
        f"{name}: read with its gray scale inverted: the mask as stored was flagged, the "
        f"inverted image's passes (a MONOCHROME1 film saved without its look-up table?); "
        f"{off} turns this off"
    )


def second_look_applies(config: RunConfig, options: PredictOptions) -> bool:
    """Whether ``polarity="auto"`` looks again at flagged images of this run (see the
    module docstring for which runs)."""
    if options.polarity != "auto" or config.channels != 1 or config.invert_light:
        return False
    stats = _flag_stats(config)
    return stats is not None and stats.objects is not None and stats.contrast is not None


def turned_look_applies(config: RunConfig, options: PredictOptions) -> bool:
    """Whether ``orientation="auto"`` looks again, turned, at flagged images of this run
    (training masks of a steady number of objects with a recorded shape)."""
    if options.orientation != "auto":
        return False
    stats = _flag_stats(config)
    return stats is not None and stats.objects is not None and stats.shape is not None


def most_looks(config: RunConfig, options: PredictOptions) -> int:
    """The most network looks :func:`second_look` can give one image of this run: the
    first, the gray scale inverted, each of :data:`TURNS` (and the mirror, for a run
    whose classes tell the sides apart, with a turned mirror for several classes), and
    the turns again inverted. What a request can cost (``unet serve``'s work budget)."""
    invert = second_look_applies(config, options)
    turn = turned_look_applies(config, options)
    mirrored = turn and mirror_tells(config)
    turned = len(TURNS) + (1 if mirrored and config.num_classes > 1 else 0)
    return 1 + invert + turn * turned + (invert and turn) * turned + mirrored


def _flag_stats(config: RunConfig) -> MaskStats | None:
    """The run's foreground statistics, when its masks get a quality flag (multi-class
    runs: when each class's statistics are recorded too); else None."""
    if not config.mask_stats or (config.num_classes > 1 and not config.mask_stats.get("classes")):
        return None
    return MaskStats.from_json(config.mask_stats)


@dataclass
class Look:
    """What :func:`second_look` decided for one input.

    Attributes:
        inverted: Whether its probabilities now come from the image with its gray scale
            inverted.
        mask: The mask of the kept probabilities at their size (the run's
            post-processing applied), when they were judged; None otherwise.
        found: That mask's objects (one-class runs; None for several classes, whose
            flag labels each class itself).
        flag: Its quality flag, as ``predictions.csv`` writes it. When the probabilities
            are at the image's size (tile mode, or an image of the training size) these
            are exactly what the writer would compute, so it takes them.
        turns: Quarter turns counterclockwise of the view the probabilities come from
            (0: as stored; :data:`MIRRORED_TOP_TO_BOTTOM`: mirrored top to bottom). The
            probabilities, ``mask`` and ``found`` are turned back to the image's frame;
            ``flag`` was taken in the turned one.
        over: For a mirrored view kept because the network was surer of it: the view
            it was kept over, 2 (the film read turned 180 degrees) or 0 (as stored: the
            mask passed the flag, but the network was unsure of it,
            :data:`MIRROR_UNSURE`). None otherwise (a multi-class run's mirrored view
            kept as the first view whose mask passes).
    """

    inverted: bool
    mask: np.ndarray | None = None
    found: Objects | None = None
    flag: str | None = None
    turns: int = 0
    over: int | None = None

    @property
    def orientation(self) -> str:
        """``predictions.csv``'s ``orientation``: :func:`orientation_of` the turns."""
        return orientation_of(self.turns)


@dataclass
class Seen:
    """One image's prediction, with what its quality flag needs.

    Attributes:
        probs: Probabilities at the image's size, ``(H, W, K)``.
        look: :func:`second_look`'s decision (``look.inverted``: the probabilities come
            from the image with its gray scale inverted).
        field: The image's :func:`~unet_lowered.inference.quality.imaged_field`.
        grid: The image's :func:`~unet_lowered.inference.quality.contrast_grid`, as
            stored.
    """

    probs: np.ndarray
    look: Look
    field: float
    grid: np.ndarray

    @property
    def inverted(self) -> bool:
        return self.look.inverted

    @property
    def gray_scale(self) -> str:
        """``predictions.csv``'s ``gray_scale``: :data:`INVERTED` or :data:`AS_STORED`."""
        return INVERTED if self.inverted else AS_STORED

    @property
    def orientation(self) -> str:
        return self.look.orientation

    def quality(self, mask: np.ndarray, config: RunConfig) -> str:
        """The quality flag of ``mask`` (from these probabilities), on the image as the
        network read it (inverted, turned)."""
        return quality_as_read(mask, self.probs, config, None, self.field, self.grid, self.look)


def quality_as_read(
    mask: np.ndarray,
    probs: np.ndarray,
    config: RunConfig,
    found: Objects | None,
    field: float,
    grid: np.ndarray | None,
    look: Look | None,
) -> str:
    """:func:`~unet_lowered.inference.quality.mask_quality` of a mask and its
    probabilities (the image's frame, as written) taken in the frame the network read
    them: the grid negated for an inverted look, everything turned for a turned one
    (``found`` is then labelled again)."""
    if look is not None and look.inverted and grid is not None:
        grid = -grid
    if look is not None and look.turns:
        mask, probs = read_frame(mask, look.turns), read_frame(probs, look.turns)
        grid = None if grid is None else read_frame(grid, look.turns)
        found = None
    return mask_quality(mask, probs, config, found, field, grid)


def second_look(
    model: Any,
    inputs: Sequence[np.ndarray],
    probs: list[np.ndarray],
    shapes: Sequence[tuple[int, int]],
    fields: Sequence[float],
    grids: Sequence[np.ndarray],
    config: RunConfig,
    options: PredictOptions,
) -> list[Look]:
    """Predict the inputs whose mask is flagged again, inverted, then turned
    (:data:`TURNS`; for a multi-class run whose classes name a side, then mirrored top
    to bottom), then inverted and turned (when both looks apply); keep the first view
    whose mask is ``ok``. Then the mirrored look of a film read turned 180 degrees, or
    passing unsurely (:func:`_mirrored_look`).

    Args:
        model: The run's model.
        inputs: :func:`~unet_lowered.inference.predictor.prepare_images` outputs.
        probs: Their :func:`~unet_lowered.inference.predictor.predict_prepared`
            outputs (at the inputs' size); an entry is replaced where another view's
            mask is kept (turned back to the input's frame).
        shapes: Each image's ``(H, W)``.
        fields: Each image's :func:`~unet_lowered.inference.quality.imaged_field`.
        grids: Each image's :func:`~unet_lowered.inference.quality.contrast_grid`.
        config: The run's configuration.
        options: The prediction options (``polarity`` and ``orientation`` among them).

    Returns:
        Per input, its :class:`Look` (``inverted`` all True with ``polarity="invert"``,
        whose inputs are inverted already).
    """
    stored = options.polarity == "invert"  # the inputs are inverted already
    invert = second_look_applies(config, options)
    turn = turned_look_applies(config, options)
    if not invert and not turn:
        return [Look(stored) for _ in inputs]
    one = config.num_classes == 1  # several: the flag labels each class itself

    def judge(p: np.ndarray, i: int, inverted: bool, turns: int) -> Look:
        """The look of probabilities ``p`` of input ``i``'s view, in that view's frame."""
        mask = probs_to_mask(p, config, _at_size(options, config, p.shape[:2], shapes[i]))
        found = Objects.of(mask) if one else None
        grid = read_frame(-grids[i] if inverted else grids[i], turns)
        flag = mask_quality(mask, p, config, found, fields[i], grid)
        if turns:
            if found is not None:
                found = Objects(stored_frame(found.labels, turns), found.count, found.areas)
            mask = stored_frame(mask, turns)
        return Look(inverted, mask, found, flag, turns)

    def view(inverted: bool, turns: int) -> None:
        """Predict the flagged inputs in one view; keep the masks that pass."""
        todo = [i for i, look in enumerate(looks) if look.flag != "ok"]
        if not todo:
            return
        seen = [read_frame(-inputs[i] if inverted != stored else inputs[i], turns) for i in todo]
        for i, p in zip(todo, predict_prepared(model, seen, config, options), strict=True):
            look = judge(p, i, inverted, turns)
            if look.flag == "ok":
                probs[i], looks[i] = stored_frame(p, turns), look

    looks = [judge(p, i, stored, 0) for i, p in enumerate(probs)]
    if invert:
        view(True, 0)
    # several classes that name the image's sides: also the mirrored view (module docstring)
    views = TURNS if one or not mirror_tells(config) else (*TURNS, MIRRORED_TOP_TO_BOTTOM)
    if turn:
        for turns in views:
            view(stored, turns)
    if invert and turn:  # both at once: the last views, for what none of the others read
        for turns in views:
            view(True, turns)
    if turn:
        _mirrored_look(model, inputs, probs, looks, judge, config, options, stored)
    return looks


def _mirrored_look(
    model: Any,
    inputs: Sequence[np.ndarray],
    probs: list[np.ndarray],
    looks: list[Look],
    judge: Any,
    config: RunConfig,
    options: PredictOptions,
    stored: bool,
) -> None:
    """Films read turned 180 degrees, of a run where a mirrored film shows
    (:func:`mirror_tells`), and a one-class run's films read as stored that the network
    was unsure of (:data:`MIRROR_UNSURE`): read them mirrored top to bottom instead
    where that view's mask is ``ok`` and the network is surer of it (module
    docstring)."""
    stats = _flag_stats(config)
    if stats is None or not mirror_tells(config):
        return
    trigger = None if stats.val_unsure is None else MIRROR_UNSURE * stats.val_unsure
    shares = {
        i: unsure_share(probs[i], _area(look))
        for i, look in enumerate(looks)
        if look.flag == "ok" and (look.turns == 2 or (look.turns == 0 and trigger is not None))
    }
    todo = [i for i, share in shares.items() if looks[i].turns == 2 or share > trigger]
    if not todo:
        return
    turns = MIRRORED_TOP_TO_BOTTOM
    seen = [
        read_frame(-inputs[i] if looks[i].inverted != stored else inputs[i], turns) for i in todo
    ]
    for i, p in zip(todo, predict_prepared(model, seen, config, options), strict=True):
        look = judge(p, i, looks[i].inverted, turns)
        if look.flag == "ok" and unsure_share(p, _area(look)) < shares[i]:
            over = looks[i].turns
            probs[i], looks[i] = stored_frame(p, turns), dataclasses.replace(look, over=over)


def _area(look: Look) -> int:
    """The foreground pixels of a judged look's mask (one-class runs: its objects)."""
    if look.found is None:  # several classes
        return int(np.count_nonzero(look.mask))
    return int(look.found.areas.sum())


def mirror_tells(config: RunConfig) -> bool:
    """Whether a mirrored film shows this run anatomy it never saw, so that the network
    is less sure of it: one-class runs whose training masks are
    :func:`~unet_lowered.inference.quality.handed`, and multi-class runs with a class
    that :func:`~unet_lowered.inference.quality.names_a_side`."""
    stats = _flag_stats(config)
    if stats is None:
        return False
    if config.num_classes == 1:
        return handed(stats)
    per_class = (config.mask_stats or {}).get("classes") or {}
    return any(names_a_side(MaskStats.from_json(v)) for v in per_class.values())


def _at_size(
    options: PredictOptions, config: RunConfig, size: tuple[int, int], shape: tuple[int, int]
) -> PredictOptions:
    """``options`` with the minimum area (pixels at the image's ``shape``) scaled to ``size``."""
    _, _, min_area = postprocess_steps(options, config)
    if not min_area or tuple(size) == tuple(shape):
        return options
    scaled = round(min_area * size[0] * size[1] / (shape[0] * shape[1]))
    return dataclasses.replace(options, min_area=scaled)


def predict_seen(
    model: Any, batch: Sequence[np.ndarray], config: RunConfig, options: PredictOptions
) -> list[Seen]:
    """:func:`~unet_lowered.inference.predictor.predict_images` with the second look:
    each image's probabilities at its size, whether they come from it inverted, turned
    or mirrored (``.gray_scale``, ``.orientation``), and what its quality flag reads."""
    fields = [imaged_field(image) for image in batch]
    grids = [contrast_grid(image) for image in batch]
    shapes = [image.shape[:2] for image in batch]
    per_call = len(batch) if resolve_mode(options.mode, config) == "resize" else 1
    seen: list[Seen] = []
    for start in range(0, len(batch), per_call):
        part = slice(start, start + per_call)
        inputs = prepare_images(batch[part], config, options)
        probs = predict_prepared(model, inputs, config, options)
        looks = second_look(
            model, inputs, probs, shapes[part], fields[part], grids[part], config, options
        )
        for k, (p, look) in enumerate(zip(probs, looks, strict=True)):
            i = start + k
            seen.append(Seen(restore_size(p, shapes[i]), look, fields[i], grids[i]))
    return seen
