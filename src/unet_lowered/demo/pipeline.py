"""``unet demo``: the whole pipeline on synthetic chest X-rays, offline, in a few minutes.

Steps (all outputs under ``OUT``, ``runs/demo`` by default)::

    OUT/kaggle/      synthetic data in the Kaggle layout (train_images/, test_images/)
    OUT/data/        the same after `unet prepare` (train/, test/, dataset.json)
    OUT/run/         `unet train`: model.keras, config.json, history.csv, metrics.json, plots
    OUT/run/eval/    `unet evaluate` on the validation split: per_image.csv, summary.json
    OUT/predictions/ `unet predict` on the test images: masks, overlays, predictions.csv

Re-running replaces the previous demo output (the folder carries a marker file);
a folder that is not a demo's own is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet_lowered.dataset.prepare import prepare
from unet_lowered.dataset.report import print_report
from unet_lowered.demo.synth import check_size, make_dataset
from unet_lowered.errors import UnetError
from unet_lowered.evaluation.evaluate import evaluate_run
from unet_lowered.evaluation.plots import plot_run
from unet_lowered.inference.batch import predict_files
from unet_lowered.io import atomic
from unet_lowered.model import output_size
from unet_lowered.planning.plan import resolve_settings
from unet_lowered.training.config import TrainConfig
from unet_lowered.training.train import train

MARKER = ".unet-demo"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes chosen so that the demo ends in about a minute on 2 CPU cores.

    Attributes:
        count: Synthetic training pairs.
        test_count: Synthetic test images (no masks) for ``predict``.
        size: Image side in pixels (the demo trains at this size).
        epochs: Training epochs.
        seed: Seed for the data and the training.
    """

    count: int = 160
    test_count: int = 8
    size: int = 128
    epochs: int = 12
    seed: int = 0


def run_demo(
    out: str | os.PathLike = "runs/demo",
    settings: DemoSettings | None = None,
    overwrite: bool = False,
    echo: Any = print,
) -> dict[str, Any]:
    """Run synth -> prepare -> train -> evaluate -> predict -> plot.

    Args:
        out: The demo folder.
        settings: Data and training sizes (defaults: :class:`DemoSettings`).
        overwrite: Replace ``out`` even if it is not a previous demo's folder.
        echo: Where progress lines go.

    Returns:
        A summary: paths, validation Dice at training size and at original size, timings.

    Raises:
        UnetError: ``out`` exists, is not a demo folder, and ``overwrite`` is false; it
            cannot be written; fewer than 2 training pairs; a size the synthesiser or the
            network cannot take (refused before anything is made).
    """

    s = settings or DemoSettings()
    if s.count < 2:  # one pair to train on and one to validate on, at the least
        raise UnetError(f"--count must be at least 2 (training and validation), got {s.count}")
    check_size(s.size)  # and a size training refuses: before the data is made, not after
    output_size(s.size, TrainConfig().depth, TrainConfig().padding, name="--size")
    out = Path(out)
    _claim(out, overwrite)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)

    echo(f"[1/6] synthesising {s.count} chest X-rays + {s.test_count} test images ({s.size}px)")
    t0 = time.perf_counter()
    kaggle = make_dataset(
        out / "kaggle", count=s.count, test_count=s.test_count, size=s.size, seed=s.seed
    )
    step("synth", t0)

    echo(f"[2/6] unet prepare {kaggle} {out / 'data'}")
    t0 = time.perf_counter()
    report = prepare(kaggle, out / "data", progress=True)
    print_report(report)
    step("prepare", t0)

    echo(
        f"[3/6] unet train {out / 'data'} --out {out / 'run'} "
        f"--image-size {s.size} --epochs {s.epochs} --patience {s.epochs} --seed {s.seed}"
    )
    t0 = time.perf_counter()
    # As `unet train` with those flags: the plan fills in the rest.
    flags = {"image_size": s.size, "epochs": s.epochs, "seed": s.seed, "patience": s.epochs}
    cfg, provenance = resolve_settings(out / "data", None, flags)
    metrics = train(out / "data", out / "run", cfg, provenance=provenance)
    step("train", t0)

    echo(f"[4/6] unet evaluate {out / 'run'} {out / 'data'} --split val")
    t0 = time.perf_counter()
    summary = evaluate_run(out / "run", out / "data", split="val")
    step("evaluate", t0)

    echo(
        f"[5/6] unet predict {out / 'run'} {out / 'data' / 'test'} --out "
        f"{out / 'predictions'} --overlay"
    )
    t0 = time.perf_counter()
    predicted = predict_files(
        out / "run", [out / "data" / "test"], out / "predictions", save_overlay=True
    )
    step("predict", t0)

    echo(f"[6/6] unet plot {out / 'run'}")
    t0 = time.perf_counter()
    figures = plot_run(out / "run")
    step("plot", t0)

    result = {
        "out": str(out),
        "val_dice_training_size": metrics["val_dice"],
        "val_dice_original_size": _mean_dice(summary),
        "predicted_images": len(predicted.written),
        "figures": [str(p) for p in figures],
        "seconds": round(time.perf_counter() - started, 1),
        "timings": timings,
    }
    echo(_closing(out, result))
    return result


def _claim(out: Path, overwrite: bool) -> None:
    """Make ``out`` an empty demo folder; refuse to replace a folder that is not a demo's,
    a file, or a place that cannot be written."""
    atomic.check_out_folder(out)
    try:
        if out.exists():
            if not (out / MARKER).is_file() and not overwrite:
                raise UnetError(
                    f"{out} exists and is not a demo folder; pass --overwrite or choose "
                    "another --out"
                )
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / MARKER).write_text("made by `unet demo`; re-running the demo replaces this folder\n")
    except OSError as e:
        raise UnetError(
            f"--out {out}: cannot create the demo folder ({e.strerror or e}); "
            "choose a writable place"
        ) from None


def _mean_dice(summary: dict[str, Any]) -> float | None:
    return summary.get("metrics", {}).get("dice", {}).get("mean")


def _has_serve() -> bool:
    """Whether the serve extra (FastAPI, uvicorn) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn"))


def _closing(out: Path, r: dict[str, Any]) -> str:
    dice_orig = r["val_dice_original_size"]
    lines = [
        "",
        f"Demo finished in {r['seconds']:.0f} s.",
        f"  validation Dice: {r['val_dice_training_size']:.4f} at training size"
        + (f", {dice_orig:.4f} at original size" if dice_orig is not None else ""),
        f"  data            {out / 'kaggle'}  (Kaggle layout)  ->  {out / 'data'}",
        f"  trained run     {out / 'run'}  (model.keras, config.json, history.csv, metrics.json)",
        f"  evaluation      {out / 'run' / 'eval'}  (per_image.csv, summary.json)",
        f"  predictions     {out / 'predictions'}  (masks, *_overlay.png, predictions.csv)",
        f"  plots           {out / 'run'}/curves.png, samples.png, worst.png",
        "",
        "Try the trained run in a browser (a web page and an HTTP API on this machine):",
        f"  unet serve {out / 'run'}      then open http://127.0.0.1:8000"
        + ("" if _has_serve() else "  (first: pip install 'unet-lowered[serve]')"),
        "",
        "Next, on your own data (Kaggle layout or images/ + masks/):",
        "  unet check    path/to/raw",
        "  unet prepare  path/to/raw data/prepared",
        "  unet train    data/prepared --out runs/lungs",
        "  unet evaluate runs/lungs data/prepared --split val",
        "  unet predict  runs/lungs path/to/new/images --out predictions --overlay",
        "  unet plot     runs/lungs",
    ]
    return "\n".join(lines)
