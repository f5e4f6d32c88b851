"""Accuracy of the planned settings on the real data sets beside the project.

For each data set: ``unet prepare`` into a temporary folder, ``unet train`` as a user
runs it (only the data and output folder given, so the settings are those ``unet
plan`` chooses within the default 10-minute budget; ``--time-budget`` or ``--epochs``
change that), then ``unet evaluate --split val`` at the original image size. Prints
one table (with the plan chosen) and appends it, with date and machine, to
``benchmarks/RESULTS.md``.

* ``jsrt``: ../shared/data/jsrt-lungs, lung Dice/IoU per image (mean, median, worst);
* ``dsb``: ../shared/data/dsb2018/stage1_train, foreground (nuclei) Dice;
* ``isbi``: ../shared/data/isbi2012, foreground (cell interior) IoU and the
  foreground-restricted Rand error of the cells separated by predicted membranes in
  the ISBI 2012 challenge's convention (predicted membrane pixels are singletons):
  of the probability map, best over thresholds
  (``unet_lowered.evaluation.metrics.best_rand_error``, the figure the U-Net paper
  reports), and of the mask plain ``unet predict`` writes (the run's threshold, TTA
  and post-processing; where the run chose the watershed split, also the mask
  without it and at the run's own threshold, in brackets); then the challenge
  leaderboard's figure, after its border thinning and with one threshold for all the
  validation slices (``leaderboard_rand_error``). Results before 2026-12-02
  used scikit-image's convention (``adapted_rand_error``), which gives larger values
  for the same prediction.

    .venv/bin/python benchmarks/accuracy.py                 # all three (about 35 min)
    .venv/bin/python benchmarks/accuracy.py --datasets jsrt  # only the chest X-rays
    .venv/bin/python benchmarks/accuracy.py --datasets jsrt --set loss=bce+dice --keep /tmp/acc

``--set KEY=VALUE`` (repeatable) trains with that setting instead of the planned one, as
``unet train`` takes it (e.g. ``loss=bce+dice``, ``input_mode=resize``); ``--keep
FOLDER`` keeps the prepared data and the runs there (e.g. for ``robustness.py``)
instead of in a temporary folder. ``--no-append`` only prints.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from speed import cores, cpu_model, machine_line  # benchmarks/speed.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SOURCES = {
    "jsrt": SHARED / "jsrt-lungs",
    "dsb": SHARED / "dsb2018" / "stage1_train",
    "isbi": SHARED / "isbi2012",
}


def run_one(
    name: str,
    work: Path,
    epochs: int | None,
    time_budget: str | None = None,
    overrides: dict | None = None,
) -> dict:
    """Prepare, train as planned (``overrides``: settings given as flags would be),
    evaluate on the validation split; return the figures."""
    from unet_lowered.dataset.prepare import prepare
    from unet_lowered.evaluation.evaluate import evaluate_run
    from unet_lowered.planning.plan import resolve_settings
    from unet_lowered.training.train import train

    src = SOURCES[name]
    if not src.is_dir():
        return {"dataset": name, "skipped": f"{src} is absent"}
    data = work / f"{name}-data"
    run = work / f"{name}-run"
    prepare(src, data, overwrite=True)
    t0 = time.perf_counter()
    cfg, provenance = resolve_settings(
        data, None, {"epochs": epochs, "time_budget": time_budget, **(overrides or {})}
    )
    plan_s = time.perf_counter() - t0
    metrics = train(data, run, cfg, overwrite=True, provenance=provenance)
    train_s = time.perf_counter() - t0
    summary = evaluate_run(run, data, split="val", progress=False)
    rows = _rows(run / "eval" / "per_image.csv")
    dice = [float(r["dice"]) for r in rows]
    iou = [float(r["iou"]) for r in rows]
    result = {
        "dataset": name,
        "n_val": len(rows),
        "val_dice_train_size": metrics["val_dice"],
        "dice_mean": statistics.fmean(dice),
        "dice_median": statistics.median(dice),
        "dice_worst": min(dice),
        "iou_mean": statistics.fmean(iou),
        "train_s": train_s,
        "plan_s": plan_s,
        "plan": _plan_summary(cfg),
        "epochs": metrics["epochs_completed"],
        "images_per_s": metrics["images_per_s"],
        "precision": metrics["precision"],
        "worst_ids": [w["id"] for w in summary["worst"][:3]],
    }
    if name == "isbi":
        rand = _isbi_rand_error(run, data, rows)
        (
            result["rand_error"],
            result["rand_error_mask"],
            result["rand_error_unsplit"],
            result["rand_error_leaderboard"],
        ) = rand
    result["postprocess"] = _chosen(run)
    return result


def _chosen(run: Path) -> str:
    """The TTA and post-processing ``unet train`` chose on validation, in a few words."""
    from unet_lowered.io import runs

    chosen = runs.load_run(run).config.postprocess or {}
    steps = [f"tta {chosen['tta']}"] if chosen.get("tta") else []
    steps += [f"watershed {chosen['watershed']:g}"] if chosen.get("watershed") else []
    steps += [f"threshold {chosen['threshold']:g}"] if chosen.get("threshold") else []
    steps += [f"keep {chosen['keep_largest']}"] if chosen.get("keep_largest") else []
    steps += [f"min area {chosen['min_area']}"] if chosen.get("min_area") else []
    steps += ["fill holes"] if chosen.get("fill_holes") else []
    return ", ".join(steps) or "none"


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs (``unet train`` setting names) to a dict; VALUE is read as
    JSON where it parses (numbers, true/false), else kept as a string."""
    from unet_lowered.training import config as config_mod

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in config_mod.FIELDS:
            raise ValueError(f"--set {item!r}: give KEY=VALUE with a `unet train` setting as KEY")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def as_flags(overrides: dict) -> str:
    """The ``unet train`` flags that give ``overrides`` (``--flip-lr``/``--no-flip-lr``,
    ``--crop``/``--resize``, else ``--key value``), each after a space."""
    flags = []
    for key, value in overrides.items():
        name = key.replace("_", "-")
        if key == "input_mode":
            flags.append(f"--{value}")
        elif isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        else:
            flags.append(f"--{name} {value}")
    return "".join(f" {f}" for f in flags)


def _plan_summary(cfg) -> str:
    """The planned settings that differ between data sets, in one line."""
    flips = "+".join(n for n, on in (("lr", cfg.flip_lr), ("ud", cfg.flip_ud)) if on) or "none"
    budget = f", budget {cfg.time_budget:g} s" if cfg.time_budget else ""
    return (
        f"{cfg.input_mode} {cfg.image_size}, {cfg.loss}, flips {flips}, rotate {cfg.rotate:g}, "
        f"batch {cfg.batch_size}, {cfg.epochs} epochs{budget}"
    )


def _rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _isbi_rand_error(
    run: Path, data: Path, rows: list[dict]
) -> tuple[float, float, float | None, float]:
    """The ISBI 2012 challenge's Rand error over the validation slices.

    Per slice, predicted as plain ``unet predict`` does (the run's TTA choice), then
    the mean of: :func:`unet_lowered.evaluation.metrics.best_rand_error` (the
    challenge's convention, best over thresholds of the cell probability),
    :func:`~unet_lowered.evaluation.metrics.rand_error` of the 4-connected cells of the
    mask ``unet predict`` writes (the run's threshold and post-processing), and of that
    mask without the watershed split, at the run's own threshold (the one chosen with
    the split may suit only split masks; None when the run chose no split); and the
    leaderboard's figure for the slices' probabilities
    (:func:`~unet_lowered.evaluation.metrics.leaderboard_rand_error`).
    """
    from unet_lowered.dataset.masks import label_components
    from unet_lowered.evaluation import metrics
    from unet_lowered.inference.predictor import PredictOptions, predict_image, probs_to_mask
    from unet_lowered.io import runs
    from unet_lowered.io.images import read_image

    loaded = runs.load_run(run)
    model = loaded.model()
    best, plain, unsplit, truths, cell_probs = [], [], [], [], []
    split = bool((loaded.config.postprocess or {}).get("watershed"))
    for row in rows:
        image = read_image(data / "train" / "images" / f"{row['id']}.png")
        truth = label_components(read_image(data / "train" / "masks" / f"{row['id']}.png") > 0, 4)
        probs = predict_image(model, image, loaded.config)
        best.append(metrics.best_rand_error(truth[0], probs[..., 0])[0])
        truths.append(truth[0])
        cell_probs.append(probs[..., 0])
        mask = probs_to_mask(probs, loaded.config, PredictOptions())
        plain.append(metrics.rand_error(truth[0], label_components(mask, 4)[0]))
        if split:
            before = PredictOptions(watershed=0, threshold=loaded.config.threshold)
            mask = probs_to_mask(probs, loaded.config, before)
            unsplit.append(metrics.rand_error(truth[0], label_components(mask, 4)[0]))
    return (
        statistics.fmean(best),
        statistics.fmean(plain),
        statistics.fmean(unsplit) if split else None,
        metrics.leaderboard_rand_error(truths, cell_probs)[0],
    )


def table(results: list[dict]) -> str:
    lines = [
        "| data set | val images | Dice mean | Dice median | Dice worst | IoU mean | "
        "Rand error (best threshold / mask [without the watershed split]; leaderboard) | train time | epochs | train img/s | precision | "
        "plan | chosen on validation |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['dataset']} | skipped: {r['skipped']} |" + " |" * 11)
            continue
        rand = f"{r['rand_error']:.4f} / {r['rand_error_mask']:.4f}" if "rand_error" in r else "-"
        if r.get("rand_error_unsplit") is not None:
            rand += f" [{r['rand_error_unsplit']:.4f}]"
        if r.get("rand_error_leaderboard") is not None:
            rand += f"; {r['rand_error_leaderboard']:.4f}"
        lines.append(
            f"| {r['dataset']} | {r['n_val']} | {r['dice_mean']:.4f} | {r['dice_median']:.4f} | "
            f"{r['dice_worst']:.4f} | {r['iou_mean']:.4f} | {rand} | {r['train_s'] / 60:.1f} min | "
            f"{r['epochs']} | {r['images_per_s']:.1f} | {r['precision']} | {r['plan']} | "
            f"{r['postprocess']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", default="jsrt,dsb,isbi", help="comma-separated: jsrt,dsb,isbi"
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the planned epochs")
    parser.add_argument(
        "--time-budget", default=None, help="the budget each plan fits, e.g. 5m [default: 10m]"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting instead of the planned one, as `unet train` takes it "
        "(e.g. loss=bce+dice, input_mode=resize); repeatable",
    )
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep the prepared data and runs in this folder (e.g. for robustness.py)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = set(names) - set(SOURCES)
    if unknown:
        parser.error(f"unknown data sets: {', '.join(sorted(unknown))}; use jsrt, dsb, isbi")

    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        parser.error(str(e))

    import unet_lowered  # noqa: F401  (default Keras backend)

    results = []
    with tempfile.TemporaryDirectory(prefix="unet-accuracy-") as tmp:
        work = Path(tmp) if args.keep is None else args.keep
        work.mkdir(parents=True, exist_ok=True)
        for name in names:
            print(f"== {name}", flush=True)
            results.append(run_one(name, work, args.epochs, args.time_budget, overrides))
            print(json.dumps(results[-1], indent=1), flush=True)
    text = table(results)
    print(machine_line() + "\n")
    print(text)
    if not args.no_append:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        header = (
            f"\n## Accuracy, {stamp}, {cpu_model()}, {cores()} cores\n\n"
            "Planned settings (`unet train DATA --out RUN"
            + (f" --epochs {args.epochs}" if args.epochs else "")
            + (f" --time-budget {args.time_budget}" if args.time_budget else "")
            + as_flags(overrides)
            + "`), validation split, scored by `unet evaluate --split val` at the original "
            "image size. Command: `python benchmarks/accuracy.py"
            + (f" --datasets {args.datasets}" if args.datasets != "jsrt,dsb,isbi" else "")
            + (f" --epochs {args.epochs}" if args.epochs else "")
            + (f" --time-budget {args.time_budget}" if args.time_budget else "")
            + "".join(f" --set {item}" for item in args.set)
            + "`; train time includes planning (fingerprint and step timing)\n\n"
        )
        from unet_lowered.io import atomic

        results_md = ROOT / "benchmarks" / "RESULTS.md"
        atomic.write_text(results_md, results_md.read_text() + header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
