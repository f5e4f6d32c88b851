"""``unet plot``: Matplotlib figures of a run, saved as PNG in the run folder.

* ``curves.png``: loss and Dice per epoch, train and validation;
* ``samples.png``: validation images with truth, prediction and an overlay;
* ``worst.png``: the worst cases of the last ``unet evaluate`` (from ``eval/per_image.csv``).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed

import matplotlib.pyplot as plt
import numpy as np

from unet_lowered import atomic, runs
from unet_lowered.errors import UnetError
from unet_lowered.images import read_image

TRUTH_COLOUR = (0.1, 0.9, 0.1)
PRED_COLOUR = (1.0, 0.2, 0.2)


def plot_curves(history_csv: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Loss and Dice curves (train and validation) from ``history.csv``.

    Raises:
        UnetError: The history file is missing or empty.
    """
    history_csv = Path(history_csv)
    if not history_csv.is_file():
        raise UnetError(f"{history_csv}: missing; train the run first (`unet train`)")
    with open(history_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UnetError(f"{history_csv}: no epochs recorded yet")
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "dice", "Dice (mean per image)")):
        for prefix, style in (("", "-"), ("val_", "--")):
            name = prefix + key
            if name in rows[0]:
                values = [float(r[name]) if r.get(name) else np.nan for r in rows]
                ax.plot(epochs, values, style, label="validation" if prefix else "train")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, out)


def overlay(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
    """RGB float image in [0, 1]: the image in gray with truth (green) and prediction (red) tints.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` image of any dtype.
        truth: Boolean ``(H, W)`` truth mask, or None.
        pred: Boolean ``(H, W)`` predicted mask.
    """
    x = image.astype(np.float32)
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6)
    rgb = np.repeat(x[..., None], 3, axis=2) if x.ndim == 2 else x.copy()
    for mask, colour in ((truth, TRUTH_COLOUR), (pred, PRED_COLOUR)):
        if mask is not None:
            rgb[mask] = 0.6 * rgb[mask] + 0.4 * np.asarray(colour, dtype=np.float32)
    return rgb


def plot_cases(
    cases: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float | None]],
    out: str | os.PathLike,
    title: str,
) -> Path:
    """One row per case: image, truth, prediction, overlay.

    Args:
        cases: ``(id, image, truth_bool, pred_bool, dice_or_None)`` tuples.
        out: PNG path.
        title: Figure title.
    """
    if not cases:
        raise UnetError(f"nothing to plot for {out}")
    fig, axes = plt.subplots(len(cases), 4, figsize=(12, 3 * len(cases)), squeeze=False)
    for row, (case_id, image, truth, pred, dice) in zip(axes, cases, strict=True):
        row[0].imshow(image, cmap="gray")
        row[0].set_title(case_id if dice is None else f"{case_id}\nDice {dice:.3f}", fontsize=8)
        row[1].imshow(truth, cmap="gray", vmin=0, vmax=1)
        row[1].set_title("truth", fontsize=8)
        row[2].imshow(pred, cmap="gray", vmin=0, vmax=1)
        row[2].set_title("prediction", fontsize=8)
        row[3].imshow(overlay(image, truth, pred))
        row[3].set_title("overlay (green truth, red prediction)", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out)


def plot_run(run_dir: str | os.PathLike, samples: int = 4, worst: int = 4) -> list[Path]:
    """Write ``curves.png``, ``samples.png`` and (after ``unet evaluate``) ``worst.png``.

    Args:
        run_dir: A run folder from ``unet train``.
        samples: Validation images in ``samples.png``.
        worst: Cases in ``worst.png``.

    Returns:
        The PNG files written.
    """
    run = runs.load_run(run_dir)
    written = [plot_curves(run.dir / runs.HISTORY_FILE, run.dir / "curves.png")]
    model = run.model()
    val_ids = run.split().get("val", [])[:samples]
    image_dir, mask_dir = _data_dirs(run)
    if val_ids and image_dir is not None:
        cases = [_case(model, run, image_dir, mask_dir, i, None) for i in val_ids]
        written.append(plot_cases(cases, run.dir / "samples.png", "validation samples"))
    per_image = run.dir / "eval" / "per_image.csv"
    if per_image.is_file():
        with open(per_image, newline="") as f:
            rows = sorted(csv.DictReader(f), key=lambda r: float(r["dice"]))[:worst]
        eval_dirs = _eval_dirs(run.dir / "eval", image_dir, mask_dir)
        cases = [
            _case(model, run, *eval_dirs, r["id"], float(r["dice"]))
            for r in rows
            if (eval_dirs[0] / f"{r['id']}.png").is_file()
        ]
        if cases:
            written.append(
                plot_cases(cases, run.dir / "worst.png", "worst cases (last evaluation)")
            )
    return written


def _case(model, run, image_dir: Path, mask_dir: Path, case_id: str, dice):
    """One row of a case figure, predicted exactly as `unet predict` does by default."""
    from unet_lowered.predict import PredictOptions, predict_image, probs_to_mask

    image = read_image(image_dir / f"{case_id}.png")
    truth = read_image(mask_dir / f"{case_id}.png") > 0
    probs = predict_image(model, image, run.config)
    pred = probs_to_mask(probs, run.config, PredictOptions()) > 0
    if truth.ndim == 3:
        truth = truth.any(-1)
    return case_id, image, truth, pred, dice


def _data_dirs(run: runs.Run) -> tuple[Path | None, Path | None]:
    data = Path(run.config.get("data", ""))
    for images, masks in (
        (data / "train" / "images", data / "train" / "masks"),
        (data / "images", data / "masks"),
    ):
        if images.is_dir() and masks.is_dir():
            return images, masks
    return None, None


def _eval_dirs(eval_dir: Path, image_dir, mask_dir) -> tuple[Path, Path]:
    """The folders the last evaluation read (recorded in summary.json), else the run's data."""
    summary = eval_dir / "summary.json"
    if summary.is_file():
        info = json.loads(summary.read_text())
        if "images" in info and "masks" in info:
            return Path(info["images"]), Path(info["masks"])
    return image_dir, mask_dir


def _save(fig, out: str | os.PathLike) -> Path:
    with atomic.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out)
