"""``unet plot``: Matplotlib figures of a run, saved as PNG in the run folder.

* ``curves.png``: loss and Dice per epoch, train and validation;
* ``samples.png``: validation images with truth, prediction and an overlay;
* ``worst.png``: the worst cases of the last ``unet evaluate`` (from ``eval/per_image.csv``).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed

import matplotlib.pyplot as plt
import numpy as np

from unet_lowered.dataset.pairs import PreparedData, load_prepared
from unet_lowered.errors import UnetError
from unet_lowered.evaluation.evaluate import read_truth
from unet_lowered.inference.overlay import label_colours, overlay
from unet_lowered.inference.predictor import PredictOptions, predict_image, probs_to_mask
from unet_lowered.io import atomic, runs
from unet_lowered.io.images import DEFAULT_MAX_PIXELS, read_image


def plot_curves(history_csv: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Loss and Dice curves (train and validation) from ``history.csv``.

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
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "dice", "Dice (mean per image)")):
        for prefix, style in (("", "-"), ("val_", "--")):
            name = prefix + key
            if name in rows[0]:
                values = [runs.history_number(r.get(name)) for r in rows]
                ax.plot(epochs, values, style, label="validation" if prefix else "train")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, out)


def plot_cases(
    cases: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float | None]],
    out: str | os.PathLike,
    title: str,
) -> Path:
    """One row per case: image, truth, prediction, overlay.

    Args:
        cases: ``(id, image, truth, pred, dice_or_None)`` tuples; the masks bool (one
            class, drawn white on black) or class indices (each class in its overlay
            colour, as ``unet predict --overlay`` tints it).
        out: PNG path.
        title: Figure title.
    """
    if not cases:
        raise UnetError(f"nothing to plot for {out}")
    fig, axes = plt.subplots(len(cases), 4, figsize=(12, 3 * len(cases)), squeeze=False)
    for row, (case_id, image, truth, pred, dice) in zip(axes, cases, strict=True):
        row[0].imshow(image, cmap="gray")
        row[0].set_title(case_id if dice is None else f"{case_id}\nDice {dice:.3f}", fontsize=8)
        classes = truth.dtype != bool or pred.dtype != bool
        for ax, mask, name in ((row[1], truth, "truth"), (row[2], pred, "prediction")):
            if classes:
                ax.imshow(label_colours(mask))
            else:
                ax.imshow(mask, cmap="gray", vmin=0, vmax=1)
            ax.set_title(name, fontsize=8)
        row[3].imshow(overlay(image, pred, truth=truth))
        row[3].set_title(
            "overlay (prediction tinted per class, truth outlines white)"
            if classes
            else "overlay (red prediction, green truth outline)",
            fontsize=8,
        )
        for ax in row:
            ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out)


def plot_run(
    run_dir: str | os.PathLike,
    samples: int = 4,
    worst: int = 4,
    note: Callable[[str], object] | None = None,
) -> list[Path]:
    """Write ``curves.png``, ``samples.png`` and (after ``unet evaluate``) ``worst.png``.

    The images and masks are those of the data folder the run was trained on
    (``samples.png``) and of the one the last evaluation read (``worst.png``), paired
    as training pairs them (:func:`unet_lowered.dataset.pairs.load_prepared`).

    Args:
        run_dir: A run folder from ``unet train``.
        samples: Validation images in ``samples.png``.
        worst: Cases in ``worst.png``.
        note: Called with one line for each figure left out and why (the training
            data not found where the run recorded it, for instance).

    Returns:
        The PNG files written.

    Raises:
        UnetError: A bad run folder, or ``samples`` or ``worst`` below 0.
    """
    for name, value in (("samples", samples), ("worst", worst)):
        if value < 0:
            raise UnetError(f"--{name} must be 0 or more, got {value}")
    note = note or (lambda _line: None)
    run = runs.load_run(run_dir, unfinished=True)  # curves of a run in progress too
    written = [plot_curves(run.dir / runs.HISTORY_FILE, run.dir / "curves.png")]
    model = run.model()
    trained_on = _pairs(run.config.data)
    val_ids = [i for i in run.split().get("val", []) if trained_on and i in trained_on.images]
    if val_ids[:samples]:
        cases = [_case(model, run, trained_on, i, None) for i in val_ids[:samples]]
        written.append(plot_cases(cases, run.dir / "samples.png", "validation samples"))
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
    per_image = run.dir / "eval" / "per_image.csv"
    if per_image.is_file():
        with open(per_image, newline="") as f:
            rows = sorted(csv.DictReader(f), key=lambda r: float(r["dice"]))[:worst]
        evaluated = _pairs(_evaluated_data(run.dir / "eval")) or trained_on
        cases = [
            _case(model, run, evaluated, r["id"], float(r["dice"]))
            for r in rows
            if evaluated and r["id"] in evaluated.images
        ]
        if cases:
            written.append(
                plot_cases(cases, run.dir / "worst.png", "worst cases (last evaluation)")
            )
        elif worst > 0:
            note("worst.png left out: the images the last evaluation scored are not there")
    elif worst > 0:
        note(f"worst.png left out: no evaluation yet; run `unet evaluate {run.dir} DATA` first")
    return written


def _case(model, run: runs.Run, pairs: PreparedData, case_id: str, dice: float | None):
    """One row of a case figure, predicted exactly as `unet predict` does by default."""
    image = read_image(pairs.images[case_id])
    truth = read_truth(pairs.masks[case_id], run.config, DEFAULT_MAX_PIXELS)
    probs = predict_image(model, image, run.config)
    pred = probs_to_mask(probs, run.config, PredictOptions())  # bool, or class indices
    return case_id, image, truth, pred, dice


def _pairs(data: str | None) -> PreparedData | None:
    """The pairs of a data folder, or None when it is gone or unreadable (nothing to show)."""
    if not data:
        return None
    try:
        return load_prepared(data)
    except UnetError:
        return None


def _evaluated_data(eval_dir: Path) -> str | None:
    """The data folder the last evaluation read (recorded in its summary.json)."""
    summary = eval_dir / "summary.json"
    if not summary.is_file():
        return None
    return json.loads(summary.read_text()).get("data")


def _save(fig, out: str | os.PathLike) -> Path:
    with atomic.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out)
