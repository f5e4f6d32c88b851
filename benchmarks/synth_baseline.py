"""How hard `unet synth`'s images are: plain Otsu thresholding against a short U-Net run.

Makes ``unet synth OUT --count 240 --size 128`` (seed 0) in a scratch folder, prepares
it, and reports:

* Otsu: each training image thresholded by Otsu's method (OpenCV), the darker side
  taken as lung (lungs are dark on an X-ray), scored by Dice against its mask; mean
  and median over the images;
* the U-Net: ``unet train DATA --out RUN --epochs 10 --progressive 0`` (the plan
  otherwise; progressive resizing off so that every epoch is validated), its
  validation Dice after each epoch from ``history.csv``.

Run by hand (never part of ``make test``)::

    .venv/bin/python benchmarks/synth_baseline.py               # appends to RESULTS.md
    .venv/bin/python benchmarks/synth_baseline.py --no-append   # print only
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import append_section, machine_line  # benchmarks/speed.py, beside this script  # noqa: E402

COUNT, SIZE, EPOCHS = 240, 128, 10


def unet(*args: str) -> None:
    """Run ``unet ARGS`` from this interpreter's environment (as ``held_out.py`` runs
    it); stop on failure."""
    done = subprocess.run(
        [sys.executable, "-m", "unet_lowered", *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: unet {' '.join(args)} failed: {tail}")


def otsu_dice(image: np.ndarray, mask: np.ndarray) -> float:
    """Dice of Otsu's darker side against the mask (both non-empty on these images)."""
    _, bright = cv2.threshold(image, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    pred, truth = bright == 0, mask > 0
    return 2.0 * float((pred & truth).sum()) / float(pred.sum() + truth.sum())


def main(argv: list[str] | None = None) -> int:
    """Make the data, score Otsu and train; print and append the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="synth-baseline-") as scratch:
        raw, data, run = (Path(scratch) / name for name in ("raw", "data", "run"))
        unet("synth", str(raw), "--count", str(COUNT), "--size", str(SIZE), "--test-count", "1")
        unet("prepare", str(raw), str(data))
        scores = []
        for path in sorted((data / "train" / "images").glob("*.png")):
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            mask = cv2.imread(str(data / "train" / "masks" / path.name), cv2.IMREAD_GRAYSCALE)
            scores.append(otsu_dice(image, mask))
        unet("train", str(data), "--out", str(run), "--epochs", str(EPOCHS), "--progressive", "0")
        with open(run / "history.csv", newline="") as f:
            history = [
                (int(r["epoch"]), float(r["val_dice"]), float(r["time_s"]))
                for r in csv.DictReader(f)
            ]
    lines = [
        f"Otsu (darker side as lung), {len(scores)} images: Dice mean "
        f"{statistics.fmean(scores):.3f}, median {statistics.median(scores):.3f}",
        "",
        "| epoch | validation Dice | seconds of fit |",
        "|---:|---:|---:|",
        *(f"| {e} | {d:.4f} | {t:.0f} |" for e, d, t in history),
    ]
    text = "\n".join(lines)
    print(machine_line() + "\n")
    print(text)
    if not args.no_append:
        path = append_section(
            "synth_baseline.py",
            f"Took {time.perf_counter() - started:.0f} s. `unet synth --count {COUNT} --size "
            f"{SIZE}` (seed 0), `unet prepare`, then Otsu on the training images and `unet "
            f"train DATA --out RUN --epochs {EPOCHS} --progressive 0`. Command: "
            f"`python benchmarks/synth_baseline.py`\n\n{text}",
        )
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
