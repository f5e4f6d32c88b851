"""Accuracy on images the run never saw: neither in training nor in its validation split.

``accuracy.py`` scores a run on its validation split, on which ``unet train`` also chose
the post-processing, so its figure is in-sample for that choice. This script checks
the way the issues' targets are checked: it prepares a shared data set, sets every
K-th image aside (by sorted id), then runs the commands a user runs, in subprocesses:

    unet train DATA --out RUN                  (the plan, default 10-minute budget)
    unet predict RUN HELD_OUT/images --out OUT (no options: the run's choices)

and scores the masks ``unet predict`` wrote against the set-aside masks: Dice per
image and, for ISBI 2012, the challenge's Rand error of the 4-connected cells
(``unet_lowered.evaluation.metrics.rand_error``) and the leaderboard's, after its border
thinning (``rand_error_thinned``; for a binary mask its script's only threshold is 0,
so the mean over the slices is the leaderboard's figure). Prints one table (mean, median and
worst at its foot) and where the wrong pixels lie: their shares right at the true
boundary (1 px from it), 2 px from it and farther (:func:`boundary_bands`), with the
Dice the first band costs. A mean held back by the first band is a boundary drawn a
pixel off, not a missed or invented object.

    .venv/bin/python benchmarks/held_out.py --dataset isbi           # every 6th slice
    .venv/bin/python benchmarks/held_out.py --dataset isbi --start 3  # 3, 9, 15, 21
    .venv/bin/python benchmarks/held_out.py --dataset isbi --every 4 --keep /tmp/ho
    .venv/bin/python benchmarks/held_out.py --dataset jsrt --train-args "--image-size 320"

``--train-args`` adds options to ``unet train`` (a variant of the plan, scored the same way).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from accuracy import SOURCES, _chosen  # benchmarks/accuracy.py, beside this script
from speed import machine_line

UNET = [sys.executable, "-m", "unet_lowered"]


def set_aside(data: Path, held: Path, every: int, start: int = 0) -> list[str]:
    """Move every ``every``-th training image and its mask, from the ``start``-th on
    (sorted by id, numbers numerically), from the prepared folder ``data`` into
    ``held``; return their ids."""
    from unet_lowered.dataset.pairs import load_prepared

    pairs = load_prepared(data)
    ids = sorted(pairs.ids, key=lambda i: (len(i), i))
    chosen = ids[start::every]
    for kind, paths in (("images", pairs.images), ("masks", pairs.masks)):
        (held / kind).mkdir(parents=True, exist_ok=True)
        for i in chosen:
            shutil.move(paths[i], held / kind / Path(paths[i]).name)
    return chosen


def train_command(data: Path, run: Path, train_args: str = "") -> list[str]:
    """``unet train DATA --out RUN``, then the options in ``train_args`` (one string,
    split as a shell splits it)."""
    return [*UNET, "train", str(data), "--out", str(run), *shlex.split(train_args)]


def score(out: Path, held: Path, ids: list[str], rand: bool) -> list[dict]:
    """Per held-out image: Dice and (``rand``) the challenge's Rand error of the mask
    ``unet predict`` wrote."""
    from unet_lowered.dataset.masks import label_components
    from unet_lowered.evaluation.metrics import dice, rand_error, rand_error_thinned
    from unet_lowered.io.images import read_image

    rows = []
    for i in ids:
        (truth_path,) = (held / "masks").glob(f"{i}.*")
        truth = read_image(truth_path) > 0
        mask = read_image(out / f"{i}.png") > 0
        row = {"id": i, "dice": dice(truth, mask), "bands": boundary_bands(truth, mask)}
        row["pixels"] = int(truth.sum() + mask.sum())
        if rand:
            cells = label_components(truth, 4)[0]
            row["rand_error"] = rand_error(cells, label_components(mask, 4)[0])
            row["rand_thinned"] = rand_error_thinned(cells, mask)
        rows.append(row)
    return rows


def boundary_bands(truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The wrong pixels of ``mask`` (bool ``(H, W)``) by their distance to the true
    boundary: counts ``[1 px, 2 px, 3 px and farther]``.

    A pixel's distance is the Euclidean distance to the nearest pixel of the other
    class in ``truth`` (1 for the pixels on either side of the true boundary), rounded
    up; a wrong pixel in an image without true foreground (or background) counts as far.
    """
    from scipy import ndimage

    wrong = truth != mask
    if truth.all() or not truth.any():
        return np.array([0, 0, int(wrong.sum())])
    distance = np.where(
        truth, ndimage.distance_transform_edt(truth), ndimage.distance_transform_edt(~truth)
    )
    bands = np.minimum(np.ceil(distance[wrong]).astype(int), 3)
    return np.bincount(bands, minlength=4)[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="isbi", choices=sorted(SOURCES))
    parser.add_argument("--every", type=int, default=6, help="set aside every K-th image")
    parser.add_argument(
        "--start", type=int, default=0, help="the first image set aside (0-based, by id)"
    )
    parser.add_argument("--keep", type=Path, help="keep the data, run and masks here")
    parser.add_argument(
        "--train-args",
        default="",
        help='more options for `unet train`, as one string (e.g. "--image-size 320")',
    )
    args = parser.parse_args(argv)
    if args.every < 2:
        parser.error("--every must be 2 or more")
    if not 0 <= args.start < args.every:
        parser.error("--start must be in [0, --every)")
    src = SOURCES[args.dataset]
    rand = args.dataset == "isbi"
    if not src.is_dir():
        print(f"skipped: {src} is absent")
        return 0
    from unet_lowered.dataset.prepare import prepare

    with tempfile.TemporaryDirectory(prefix="unet-held-out-") as tmp:
        work = args.keep or Path(tmp)
        data, held, run, out = (work / n for n in ("data", "held-out", "run", "masks"))
        for path in (data, held, run, out):
            shutil.rmtree(path, ignore_errors=True)
        prepare(src, data, overwrite=True)
        ids = set_aside(data, held, args.every, args.start)
        start = time.perf_counter()
        subprocess.run(train_command(data, run, args.train_args), check=True)
        train_s = time.perf_counter() - start
        subprocess.run(
            [*UNET, "predict", str(run), str(held / "images"), "--out", str(out)], check=True
        )
        rows = score(out, held, ids, rand)
        chosen = _chosen(run)

    first = f"from image {args.start} on (0-based) " if args.start else ""
    flags = f" {args.train_args}" if args.train_args else ""
    print(
        f"\n{args.dataset}: one image in every {args.every} set aside {first}"
        f"({len(ids)}: {', '.join(_short(i) for i in ids)}); "
        f"`unet train{flags}` {train_s / 60:.1f} min, chose {chosen}\n{machine_line()}\n"
    )
    print_table(rows, rand)
    return 0


def print_table(rows: list[dict], rand: bool) -> None:
    """Per image, then mean, median and worst; then where the wrong pixels lie."""
    keys = ("rand_error", "rand_thinned") if rand else ()
    head = " Rand error | after thinning (leaderboard) |" if rand else ""
    print("| image | Dice |" + head)
    print("|---|---:|" + "---:|" * len(keys))

    def cells(values) -> str:
        return "".join(f" {v:.4f} |" for v in values)

    for row in rows:
        print(f"| {_short(row['id'])} | {row['dice']:.4f} |{cells(row[k] for k in keys)}")
    for name, stat in (("mean", statistics.fmean), ("median", statistics.median)):
        rand_cells = cells(stat(r[k] for r in rows) for k in keys)
        print(f"| {name} | {stat(r['dice'] for r in rows):.4f} |{rand_cells}")
    worst = cells(max(r[k] for r in rows) for k in keys)
    print(f"| worst | {min(r['dice'] for r in rows):.4f} |{worst}")
    bands = sum(r["bands"] for r in rows)
    if bands.sum():
        share = bands / bands.sum()
        cost = bands[0] / sum(r["pixels"] for r in rows)
        print(
            f"\nwrong pixels ({bands.sum()}): {share[0]:.0%} right at the true boundary, "
            f"{share[1]:.0%} 2 px from it, {share[2]:.0%} farther; the first band costs "
            f"{cost:.4f} of the Dice (pooled over the images)"
        )


def _short(image_id: str) -> str:
    """The first 12 characters of a long id (DSB2018's are 64 hex digits)."""
    return image_id if len(image_id) <= 16 else image_id[:12]


if __name__ == "__main__":
    sys.exit(main())
