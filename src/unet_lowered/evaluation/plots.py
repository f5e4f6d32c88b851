"""``unet plot``: Matplotlib figures of a run, saved as PNG in the run folder.

* ``curves.png``: loss and Dice per epoch, train and validation, with the half-size
  epochs of progressive resizing shaded and the epoch saved as ``model.keras`` marked;
* ``samples.png``: validation images with truth, prediction and an overlay, predicted
  as plain ``unet predict`` predicts them;
* ``worst.png``: the worst cases of an evaluation (``RUN/eval`` or ``--eval DIR``),
  predicted with the settings that evaluation used, so each drawn mask is the one its
  Dice was computed on.

Both case figures predict through :func:`unet_lowered.evaluation.evaluate.predict_masks`,
the path ``unet evaluate`` scores: a flagged X-ray is read again inverted or turned
(:mod:`unet_lowered.inference.polarity`), and the case's title says so.
"""

from __future__ import annotations

import csv
import json
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from unet_lowered.dataset.pairs import PreparedData, load_prepared
from unet_lowered.errors import UnetError
from unet_lowered.evaluation.evaluate import predict_masks, read_truth, settings_record
from unet_lowered.inference.overlay import PALETTE, display, label_colours, overlay
from unet_lowered.inference.polarity import AS_STORED, Look
from unet_lowered.inference.predictor import PredictOptions, for_run
from unet_lowered.io import atomic, runs
from unet_lowered.io.images import DEFAULT_MAX_PIXELS, read_image
from unet_lowered.io.progress import status
from unet_lowered.training.config import RunConfig

PANEL_INCHES = 3.0
"""Width of one panel of a case figure (four per row) for images as tall as wide."""

TALLEST_PANEL_INCHES = 4.5
"""The panels of tall images are narrowed so that they are at most this tall."""

WIDEST_PANEL_INCHES = 4.0
"""The panels of wide images are widened up to this."""


class Case(NamedTuple):
    """One row of a case figure.

    Attributes:
        id: The image's id.
        image: The decoded image (any bit depth, gray or RGB).
        truth: Its mask: bool (one class) or class indices.
        pred: The predicted mask, as ``truth``.
        dice: The Dice shown in the title, or None.
        reading: How the image was read when not as stored (``"read inverted"``,
            ``"read turned 180"``), or empty.
        class_dice: Multi-class runs: the Dice per foreground class, by the class's
            name (``unet prepare --class-names``; else ``"class 1"``), or None.
    """

    id: str
    image: np.ndarray
    truth: np.ndarray
    pred: np.ndarray
    dice: float | None
    reading: str = ""
    class_dice: Mapping[str, float] | None = None


# ---------------------------------------------------------------- curves.png


class _Marks(NamedTuple):
    """What ``curves.png`` marks besides the curves (from the run's files)."""

    half_size_epochs: int  # the first epochs, trained at half size and not validated
    best_epoch: int | None  # the epoch saved as model.keras
    config: RunConfig | None


def plot_curves(history_csv: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Loss and Dice curves (train and validation) from ``history.csv``.

    Every epoch has a marker (an epoch validated alone between gaps shows), the epoch
    axis has whole numbers. When the folder of ``history.csv`` holds the run's
    ``config.json``, the half-size epochs of progressive resizing are shaded (trained
    at half the size, not validated); with its ``metrics.json`` (or ``state.json`` while
    training), a vertical line marks the best epoch, the one saved as ``model.keras``.

    Raises:
        UnetError: The history file is missing or empty.
    """
    history_csv = Path(history_csv)
    if not history_csv.is_file():
        raise UnetError(f"{history_csv}: missing; train the run first (`unet train`)")
    try:
        with open(history_csv, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        epochs = [int(r["epoch"]) for r in rows]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as e:
        raise UnetError(
            f"{history_csv}: damaged ({type(e).__name__}: {e}); `unet train` writes it: "
            "copy the run folder again"
        ) from None
    if not rows:
        raise UnetError(f"{history_csv}: no epochs recorded yet")
    marks = _curve_marks(history_csv.parent)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "dice", _dice_title(marks))):
        if marks.half_size_epochs:
            ax.axvspan(
                0.5,
                marks.half_size_epochs + 0.5,
                color="0.88",
                label="half size, not validated (progressive resizing)",
            )
        for prefix, style in (("", "-"), ("val_", "--")):
            name = prefix + key
            if name in rows[0]:
                values = [runs.history_number(r.get(name)) for r in rows]
                label = "validation" if prefix else "train"
                ax.plot(epochs, values, style, marker="o", markersize=3, label=label)
        if marks.best_epoch is not None:
            ax.axvline(
                marks.best_epoch,
                color="tab:green",
                linestyle=":",
                label=f"best epoch {marks.best_epoch} (model.keras)",
            )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key if key == "loss" else "Dice")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, max(epochs) + 0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out)


def _curve_marks(run_dir: Path) -> _Marks:
    """The half-size epochs (``config.json``: ``progressive`` of ``epochs``, as training
    plans them) and the best epoch (``metrics.json``, else ``state.json``) of a run
    folder; none for files that are missing or unreadable (a bare history)."""
    config = None
    try:
        values = json.loads((run_dir / runs.CONFIG_FILE).read_text(encoding="utf-8"))
        config = RunConfig.from_json(values, run_dir / runs.CONFIG_FILE)
    except (OSError, UnicodeDecodeError, ValueError, UnetError):
        pass
    half = 0
    if config is not None:
        from unet_lowered.training.sequence import progressive_plan

        s = config.settings
        plan = progressive_plan(s.progressive, s.epochs, s.image_size, s.depth, s.padding)
        half = plan.epochs if plan is not None else 0
    best = None
    for name in (runs.METRICS_FILE, runs.STATE_FILE):
        try:
            best = json.loads((run_dir / name).read_text(encoding="utf-8")).get("best_epoch")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            continue
        break
    best = best if isinstance(best, int) and not isinstance(best, bool) else None
    return _Marks(half, best, config)


TITLE_WIDTH = 60
"""Characters a line of a curves panel's title holds (wider lines run off the figure)."""


def _dice_title(marks: _Marks) -> str:
    """The Dice panel's title: what the validation Dice is, as training measures it."""
    from unet_lowered.training.train import val_dice_where

    config = marks.config
    if config is None:
        return "Dice (mean per image)"
    per_image = (
        "mean per image"
        if config.num_classes == 1
        else "mean per image of the mean over the foreground classes"
    )
    where = f"validation {val_dice_where(config.input_mode, config.padding)}"
    return f"Dice ({per_image});\n" + textwrap.fill(where, TITLE_WIDTH)


# ---------------------------------------------------------------- case figures


def plot_cases(
    cases: Sequence[Case | tuple],
    out: str | os.PathLike,
    title: str,
    classes: Sequence[str] | None = None,
) -> Path:
    """One row per case: image, truth, prediction, overlay.

    The image is shown as the overlay shows it (:func:`~unet_lowered.inference.overlay.display`:
    16-bit images windowed). Each row is as tall as its image's aspect needs, so a tall
    or wide image fills its row.

    Args:
        cases: :class:`Case` s (or tuples of its first fields). Masks bool (one class,
            drawn white on black) or class indices (each class in its overlay colour, as
            ``unet predict --overlay`` tints it).
        out: PNG path.
        title: Figure title.
        classes: Multi-class runs: the legend's name of each foreground class, in class
            order (class 1 first), drawn in its :data:`~unet_lowered.inference.overlay.PALETTE`
            colour; None for no legend.

    Raises:
        UnetError: No case.
    """
    if not cases:
        raise UnetError(f"nothing to plot for {out}")
    cases = [Case(*case) for case in cases]
    aspects = [case.image.shape[0] / case.image.shape[1] for case in cases]
    width = _panel_width(max(aspects))
    heights = [width * a for a in aspects]
    lines = max(_case_title(case).count("\n") + 1 for case in cases)
    titles = (0.12 + 0.14 * max(lines, 2)) * len(cases)  # the panel titles above each row
    top = 0.2 + 0.2 * (title.count("\n") + 1) + (0.45 if classes else 0.0)  # and the legend
    fig = plt.figure(figsize=(4 * width + 0.3, sum(heights) + titles + top), layout="constrained")
    grid = fig.add_gridspec(len(cases), 4, height_ratios=heights)
    for r, case in enumerate(cases):
        row = [fig.add_subplot(grid[r, c]) for c in range(4)]
        row[0].imshow(display(case.image))
        row[0].set_title(_case_title(case), fontsize=8)
        multi = case.truth.dtype != bool or case.pred.dtype != bool
        for ax, mask, name in ((row[1], case.truth, "truth"), (row[2], case.pred, "prediction")):
            if multi:
                ax.imshow(label_colours(mask))
            else:
                ax.imshow(mask, cmap="gray", vmin=0, vmax=1)
            ax.set_title(name, fontsize=8)
        row[3].imshow(overlay(case.image, case.pred, truth=case.truth))
        row[3].set_title(_overlay_title(case.truth, multi), fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    if classes:
        handles = [
            Patch(color=PALETTE[c % len(PALETTE)] / 255, label=name)
            for c, name in enumerate(classes)
        ]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4))
    return _save(fig, out)


def _panel_width(tallest: float) -> float:
    """Inches per panel for rows whose tallest image has this height / width: a
    :data:`PANEL_INCHES` square's area, within :data:`TALLEST_PANEL_INCHES` of height
    and :data:`WIDEST_PANEL_INCHES` of width."""
    width = PANEL_INCHES / np.sqrt(tallest)
    return float(min(width, TALLEST_PANEL_INCHES / tallest, WIDEST_PANEL_INCHES))


def _case_title(case: Case) -> str:
    """The id; the Dice and how the image was read; the Dice per class."""
    second = ([] if case.dice is None else [f"Dice {case.dice:.3f}"]) + (
        [case.reading] if case.reading else []
    )
    lines = [case.id] + ([", ".join(second)] if second else [])
    shown = [f"{name} {dice:.3f}" for name, dice in (case.class_dice or {}).items()]
    lines += [", ".join(shown[i : i + 3]) for i in range(0, len(shown), 3)]
    return "\n".join(lines)


def _overlay_title(truth: np.ndarray, multi: bool) -> str:
    """What :func:`~unet_lowered.inference.overlay.overlay` draws for this truth: each
    class's outline in white for class indices, one green outline for a bool mask (its
    rule), none for an empty truth."""
    first = "overlay: prediction red," if not multi else "overlay: prediction tinted per class,"
    if int(np.max(truth, initial=0)) == 0:
        return f"{first}\nno truth (empty mask)"
    if truth.dtype != bool:
        return f"{first}\ntruth outlines white"
    return f"{first}\ntruth outline green"


def class_names(config: RunConfig) -> list[str] | None:
    """The legend of a multi-class run's pictures: ``class k (value v)`` per foreground
    class, ``v`` its mask value from ``label_values`` (``class k`` when none is
    recorded), after its name from ``unet prepare --class-names`` (``heart: class 3``);
    None for one class."""
    if config.num_classes == 1:
        return None
    values = config.label_values or tuple(range(config.num_classes))
    names = config.class_names
    return [
        (f"{names[c]}: " if names else "")
        + (f"class {c}" if values[c] == c else f"class {c} (value {values[c]})")
        for c in range(1, config.num_classes)
    ]


def reading(look: Look) -> str:
    """How an image was read, for a title: ``"read inverted"``, ``"read turned 180"``,
    ``"read inverted, turned 90"``; empty when as stored."""
    parts = (["inverted"] if look.inverted else []) + (
        [look.orientation] if look.orientation != AS_STORED else []
    )
    return "read " + ", ".join(parts) if parts else ""


# ---------------------------------------------------------------- a run


def plot_run(
    run_dir: str | os.PathLike,
    samples: int = 4,
    worst: int = 4,
    note: Callable[[str], object] | None = None,
    eval_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Write ``curves.png``, ``samples.png`` and (after ``unet evaluate``) ``worst.png``.

    The images and masks are those of the data folder the run was trained on
    (``samples.png``, predicted as plain ``unet predict`` predicts them) and of the one
    the evaluation read (``worst.png``, predicted with the settings it recorded in
    ``summary.json``), paired as training pairs them
    (:func:`unet_lowered.dataset.pairs.load_prepared`).

    Args:
        run_dir: A run folder from ``unet train``.
        samples: Validation images in ``samples.png``.
        worst: Cases in ``worst.png``.
        note: Called with one line for each figure left out and why (the training
            data not found where the run recorded it, for instance). What is predicted
            is said on stderr before the model loads (the slow part).
        eval_dir: The ``unet evaluate`` output folder whose worst cases to draw; None:
            ``RUN/eval`` (``worst.png`` is left out, with a note, when it has none).

    Returns:
        The PNG files written.

    Raises:
        UnetError: A bad run folder, ``samples`` or ``worst`` below 0, an ``eval_dir``
            without ``per_image.csv``, or a damaged ``per_image.csv`` or ``summary.json``.
    """
    for name, value in (("samples", samples), ("worst", worst)):
        if value < 0:
            raise UnetError(f"--{name} must be 0 or more, got {value}")
    note = note or (lambda _line: None)
    run = runs.load_run(run_dir, unfinished=True)  # curves of a run in progress too
    named = eval_dir is not None
    eval_dir = Path(eval_dir) if named else run.dir / "eval"
    per_image = eval_dir / "per_image.csv"
    if named and not per_image.is_file():
        raise UnetError(
            f"{per_image}: missing; pass --eval the --out folder of `unet evaluate` "
            f"(default {run.dir / 'eval'})"
        )
    written = [plot_curves(run.dir / runs.HISTORY_FILE, run.dir / "curves.png")]
    classes = class_names(run.config)
    trained_on = _pairs(run.config.data)
    val_ids = [i for i in run.split().get("val", []) if trained_on and i in trained_on.images]
    sample_ids = val_ids[:samples]
    rows: list[dict[str, str]] = []
    if per_image.is_file():  # read and checked before the model's seconds
        rows = _worst_rows(per_image, worst)
        summary = _read_summary(eval_dir)
        _refuse_another_runs(eval_dir, summary, run.dir)
        settings = summary.get("settings") or {}
        options = evaluated_options(settings, run.config, eval_dir / "summary.json")
        scored = summary.get("data") or run.config.data  # older summaries name none
        evaluated = _pairs(scored)  # not the training data when it is gone: other images
        rows = [r for r in rows if evaluated and r["id"] in evaluated.images]
    predicted = [
        _count(len(ids), what)
        for ids, what in ((sample_ids, "validation sample"), (rows, "worst case"))
        if ids
    ]
    status(
        f"plotting {run.dir}: loading the model"
        + (f", predicting {' and '.join(predicted)}" if predicted else "")
    )
    model = run.model()
    if sample_ids:
        cases = _cases(model, run.config, trained_on, sample_ids, PredictOptions())
        title = "validation samples, as `unet predict` writes their masks"
        written.append(plot_cases(cases, run.dir / "samples.png", title, classes))
    elif samples > 0:
        old = run.dir / "samples.png"
        why = (
            f"the data it was trained on ({run.config.data}) is not there or unreadable"
            if trained_on is None
            else f"none of its validation images is in {run.config.data}"
        )
        note(
            f"samples.png left out: {why}; run `unet plot` where the data is"
            + (f" ({old} is from an earlier plot)" if old.is_file() else "")
        )
    if rows:
        cases = _cases(
            model,
            run.config,
            evaluated,
            [r["id"] for r in rows],
            options,
            {r["id"]: r for r in rows},
        )
        title = _worst_title(eval_dir, summary, run.config)
        written.append(plot_cases(cases, run.dir / "worst.png", title, classes))
    elif per_image.is_file() and worst > 0:
        note(
            f"worst.png left out: the images {eval_dir} scored ({scored}) are not there; "
            "run `unet plot` where they are"
        )
    elif worst > 0:
        note(f"worst.png left out: no evaluation yet; run `unet evaluate {run.dir} DATA` first")
    return written


def _count(n: int, what: str) -> str:
    """``"1 worst case"``, ``"4 validation samples"``."""
    return f"{n} {what}" + ("" if n == 1 else "s")


def _cases(
    model: Any,
    config: RunConfig,
    pairs: PreparedData,
    ids: list[str],
    options: PredictOptions,
    rows: Mapping[str, Mapping[str, str]] | None = None,
) -> list[Case]:
    """The rows of a case figure, predicted as ``unet evaluate`` scores them with
    ``options`` (:func:`~unet_lowered.evaluation.evaluate.predict_masks`); with
    ``rows`` (``per_image.csv``'s, by id), their Dice, and per class for several classes."""
    images = [read_image(pairs.images[i], options.max_pixels) for i in ids]
    masks = predict_masks(model, images, config, options)
    cases = []
    for ident, image, (pred, look) in zip(ids, images, masks, strict=True):
        truth = read_truth(pairs.masks[ident], config, DEFAULT_MAX_PIXELS)
        row = (rows or {}).get(ident)
        dice = float(row["dice"]) if row else None
        per_class = None
        if row and config.num_classes > 1:  # per_image.csv's dice_<label value>
            values = config.label_values or tuple(range(config.num_classes))
            named = config.class_names or [f"class {c}" for c in range(config.num_classes)]
            per_class = {
                named[c]: float(row[f"dice_{values[c]}"])
                for c in range(1, config.num_classes)
                if row.get(f"dice_{values[c]}")
            }
        cases.append(Case(ident, image, truth, pred, dice, reading(look), per_class))
    return cases


def evaluated_options(
    settings: Mapping[str, Any], config: RunConfig, source: str | os.PathLike = "summary.json"
) -> PredictOptions:
    """The prediction options that reproduce an evaluation's recorded ``settings``
    (``summary.json``'s, :func:`~unet_lowered.evaluation.evaluate.settings_record`).

    The threshold, watershed and clean-up steps are taken as applied, so the run's own
    choices are not applied twice; a key missing (a summary from an older version)
    keeps :class:`~unet_lowered.inference.predictor.PredictOptions`' default.

    Raises:
        UnetError: A recorded value that is not a valid option.
    """
    values: dict[str, Any] = {}
    for key in ("mode", "fill_holes", "min_area", "polarity", "orientation", "overlap"):
        if key in settings:
            values[key] = settings[key]
    if "tta" in settings:
        group = settings["tta"]
        values.update(tta=group is not None, tta_transforms=group or "auto")
    if "keep_largest" in settings:
        values["keep_largest"] = settings["keep_largest"] or 0  # 0: keep all
    if config.num_classes == 1:  # several classes take the most likely class of a pixel
        if "threshold" in settings:
            values["threshold"] = settings["threshold"]
        if "watershed" in settings:
            values["watershed"] = settings["watershed"] or 0.0  # 0: off
    if "postprocess_from_run" in settings:
        values["postprocess"] = bool(settings["postprocess_from_run"])
    try:
        return for_run(PredictOptions(**values).validate(), config)
    except (TypeError, ValueError, UnetError) as e:
        raise UnetError(
            f"{source}: its settings are not options of `unet evaluate` ({e}); "
            "run `unet evaluate` again"
        ) from None


def _worst_rows(per_image: Path, worst: int) -> list[dict[str, str]]:
    """The ``worst`` rows of ``per_image.csv`` by Dice (ties by id, as ``summary.json``)."""
    try:
        with open(per_image, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        rows.sort(key=lambda r: (float(r["dice"]), r["id"]))
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as e:
        raise UnetError(
            f"{per_image}: damaged ({type(e).__name__}: {e}); run `unet evaluate` again"
        ) from None
    return rows[:worst]


def _refuse_another_runs(eval_dir: Path, summary: Mapping[str, Any], run_dir: Path) -> None:
    """Refuse an evaluation of another run: its worst cases would be drawn with this run's
    masks under the other's Dice. A run folder moved since (the recorded one gone) passes."""
    recorded = summary.get("run")
    if not isinstance(recorded, str) or not Path(recorded).is_dir():
        return
    if Path(recorded).resolve() != Path(run_dir).resolve():
        raise UnetError(
            f"{eval_dir}: an evaluation of another run ({recorded}); pass --eval an "
            f"evaluation of {run_dir}, or plot {recorded}"
        )


def _read_summary(eval_dir: Path) -> dict[str, Any]:
    """The evaluation's ``summary.json``, or {} when there is none."""
    path = eval_dir / "summary.json"
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UnetError(f"{path}: unreadable ({e}); run `unet evaluate` again") from None
    if not isinstance(summary, dict):
        raise UnetError(f"{path}: expected a JSON object; run `unet evaluate` again")
    return summary


def _worst_title(eval_dir: Path, summary: Mapping[str, Any], config: RunConfig) -> str:
    """``worst.png``'s title: the evaluation folder, its split and data folder, and the
    settings it used that differ from a plain ``unet evaluate``'s."""
    first = f"worst cases by Dice of the evaluation in {eval_dir}"
    if not summary:
        return first
    settings = summary.get("settings") or {}
    plain = settings_record(for_run(PredictOptions(), config), config)
    changed = [
        f"{key} {_shown(value)}"
        for key, value in settings.items()
        if key in plain and value != plain[key]
    ]
    second = f"split {summary.get('split', '?')} of {summary.get('data', '?')}"
    return f"{first}\n{second}; " + (", ".join(changed) if changed else "default settings")


def _shown(value: Any) -> str:
    if value is None or value is False:
        return "off"
    return "on" if value is True else f"{value:g}" if isinstance(value, float) else str(value)


def _pairs(data: str | None) -> PreparedData | None:
    """The pairs of a data folder, or None when it is gone or unreadable (nothing to show)."""
    if not data:
        return None
    try:
        return load_prepared(data)
    except UnetError:
        return None


def _save(fig, out: str | os.PathLike) -> Path:
    with atomic.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out)
