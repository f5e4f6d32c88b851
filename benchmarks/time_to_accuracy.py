"""Time to accuracy on the JSRT lungs: validation Dice against training seconds, per variant.

Each variant is ``unet train DATA --out RUN`` with the planned settings plus a few
overrides (the flags a user would pass; ``before`` is the plan without progressive
resizing, as ``unet train`` planned it before it had it), trained one after the other on the same
prepared data. ``history.csv``'s ``time_s`` column (seconds since ``fit`` began, at the
end of each epoch's validation) against ``val_dice`` is the curve. Printed and appended
to ``benchmarks/RESULTS.md``: per variant the best validation Dice and when it was
reached, and the seconds each variant needed to reach the target (the first
variant's best minus 0.002, or ``--target``). The curves go to
``benchmarks/time_to_accuracy.png`` (not with ``--no-append``, which only prints). A
second table gives the seconds to several levels (the first variant's best minus 0.002,
minus 0.001, and the best itself), with ratios.

    .venv/bin/python benchmarks/time_to_accuracy.py --variants before,default  # ~10 min
    .venv/bin/python benchmarks/time_to_accuracy.py --variants before,progressive-24
    .venv/bin/python benchmarks/time_to_accuracy.py --list                # what each one sets

Runs take minutes each (the default one uses its whole 10-minute budget); the machine
should be otherwise idle, since the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from speed import cores, cpu_model  # benchmarks/speed.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
JSRT = ROOT.parent / "shared" / "data" / "jsrt-lungs"
PLOT = ROOT / "benchmarks" / "time_to_accuracy.png"

VARIANTS: dict[str, dict] = {
    "before": {"progressive": 0.0},
    # The baseline as it was filed: 45 full-size epochs, whatever the planner's
    # step timing would buy (33-53 epochs in the runs of 2026-12-04).
    "before-45": {"progressive": 0.0, "epochs": 45},
    "default": {},
    "epochs-15": {"epochs": 15},
    "onecycle-15": {"epochs": 15, "schedule": "onecycle", "learning_rate": 2e-3},
    "progressive-24": {"epochs": 24, "progressive": 0.5},
    "progressive-onecycle-24": {
        "epochs": 24,
        "progressive": 0.5,
        "schedule": "onecycle",
        "learning_rate": 2e-3,
    },
    "progressive-30": {"epochs": 30, "progressive": 0.5},
    "progressive-36": {"epochs": 36, "progressive": 0.6},
    "progressive-60": {"epochs": 60, "progressive": 0.5},
    "progressive-70": {"epochs": 70, "progressive": 0.5},
    # The plan fitted to a shorter budget (epochs, the half-size share and the cosine
    # all planned for it): the whole run, not a point on the default's curve.
    "budget-3m": {"time_budget": "3m"},
    "budget-3.5m": {"time_budget": "3.5m"},
    "budget-4m": {"time_budget": "4m"},
}
"""Variant name -> the ``unet train`` flags it adds (as ``TrainConfig`` field names)."""


def curve(run: Path) -> list[tuple[float, float]]:
    """``(time_s, val_dice)`` per epoch from a run's history.csv (Dice NaN for the
    epochs not validated: the half-size epochs of progressive resizing)."""
    from unet_lowered.io.runs import history_number

    with open(run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [(float(r["time_s"]), history_number(r.get("val_dice"))) for r in rows]


def time_to(points: list[tuple[float, float]], target: float) -> float | None:
    """Seconds at the first epoch whose validation Dice reaches ``target`` (None: never)."""
    return next((t for t, d in points if d >= target), None)


def run_variant(name: str, data: Path, work: Path) -> dict:
    from unet_lowered.planning.plan import resolve_settings
    from unet_lowered.training.train import train

    cfg, provenance = resolve_settings(data, None, VARIANTS[name])
    run = work / f"run-{name}"
    metrics = train(data, run, cfg, overwrite=True, provenance=provenance, verbose=2)
    points = curve(run)
    best_t, best = max((p for p in points if math.isfinite(p[1])), key=lambda p: (p[1], -p[0]))
    return {
        "variant": name,
        "flags": VARIANTS[name],
        "epochs": metrics["epochs_completed"],
        "planned_epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "image_size": cfg.image_size,
        "best_val_dice": best,
        "best_at_s": best_t,
        "fit_s": points[-1][0],
        "time_used_s": metrics["time_used_s"],
        "curve": points,
    }


def _flag(setting: str) -> str:
    return {"learning_rate": "lr"}.get(setting, setting.replace("_", "-"))


def table(results: list[dict], target: float) -> str:
    base = time_to(results[0]["curve"], target)
    lines = [
        f"| variant | flags | epochs | best val Dice | best at | fit time | whole run | "
        f"reaches {target:.4f} at | vs {results[0]['variant']} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        reach = time_to(r["curve"], target)
        flags = " ".join(f"--{_flag(k)} {v}" for k, v in r["flags"].items()) or "-"
        ratio = f"{reach / base:.2f}x" if reach is not None and base else "-"
        lines.append(
            f"| {r['variant']} | {flags} | {r['epochs']} | {r['best_val_dice']:.4f} | "
            f"{r['best_at_s']:.0f} s | {r['fit_s']:.0f} s | {r['time_used_s']:.0f} s | "
            f"{'never' if reach is None else f'{reach:.0f} s'} | {ratio} |"
        )
    return "\n".join(lines)


LEVELS = (-0.002, -0.001, 0.0)
"""The Dice levels of :func:`levels_table`: the reference's best plus these."""


def levels_table(results: list[dict], offsets: tuple[float, ...] = LEVELS) -> str:
    """Seconds each variant takes to reach several Dice levels (the first variant's
    best plus each offset), and the ratio to the first variant's seconds: the ratio at
    ``best - 0.002`` alone depends on how early the reference gets within 0.002 of a
    best it then barely improves."""
    best = results[0]["best_val_dice"]
    names = [r["variant"] for r in results]
    header = ["level", *names, *(f"{n} / {names[0]}" for n in names[1:])]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for offset in offsets:
        level = round(best + offset, 6)
        reach = [time_to(r["curve"], level) for r in results]
        cells = ["never" if t is None else f"{t:.0f} s" for t in reach]
        ratios = [f"{t / reach[0]:.2f}x" if t is not None and reach[0] else "-" for t in reach[1:]]
        lines.append(f"| {level:.4f} ({offset:+.3f}) | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def plot(results: list[dict], target: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unet_lowered.io import atomic

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        t, d = zip(*r["curve"], strict=True)
        ax.plot(t, d, marker=".", label=f"{r['variant']} (best {r['best_val_dice']:.4f})")
    ax.axhline(target, color="grey", linestyle=":", label=f"target {target:.4f}")
    ax.set_ylim(max(0.9, target - 0.05), 1.0)
    ax.set_xlabel("training seconds (fit, validation included)")
    ax.set_ylabel("validation Dice (mean per image, training size)")
    ax.set_title(f"JSRT lungs: time to accuracy, {cpu_model()}, {cores()} cores")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic.save_with(out, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants",
        default="before,default",
        help="comma-separated, the first is the reference [default: before,default]",
    )
    parser.add_argument(
        "--target", type=float, default=None, help="[default: first's best - 0.002]"
    )
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument(
        "--no-append",
        action="store_true",
        help="only print: neither append to RESULTS.md nor write the curves' PNG",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep data and runs here")
    args = parser.parse_args(argv)
    if args.list:
        for name, flags in VARIANTS.items():
            print(f"{name}: {flags or 'the planned settings'}")
        return 0
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants: {', '.join(unknown)}; --list shows them")
    if not JSRT.is_dir():
        print(f"{JSRT} is absent: nothing to measure", file=sys.stderr)
        return 1

    import unet_lowered  # noqa: F401  (default Keras backend)
    from unet_lowered.dataset.prepare import prepare

    load_start = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="unet-tta-") as tmp:
        work = Path(tmp) if args.keep is None else args.keep
        work.mkdir(parents=True, exist_ok=True)
        data = work / "jsrt-data"
        if not (data / "dataset.json").is_file():
            prepare(JSRT, data, overwrite=True)
        for name in names:
            print(f"== {name}: {VARIANTS[name] or 'planned settings'}", flush=True)
            results.append(run_variant(name, data, work))
            summary = {k: v for k, v in results[-1].items() if k != "curve"}
            print(json.dumps(summary), flush=True)
    load_end = os.getloadavg()[0]
    target = args.target if args.target is not None else results[0]["best_val_dice"] - 0.002
    text = table(results, target)
    text += "\n\nPer Dice level (the first epoch reaching it, from each history.csv):\n\n"
    text += levels_table(results)
    print(text)
    if not args.no_append:
        from unet_lowered.io import atomic

        plot(results, target, PLOT)
        print(f"curves: {PLOT}")
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
        header = (
            f"\n## {stamp} UTC: time_to_accuracy.py, JSRT lungs\n\n"
            f"Machine: {cpu_model()}, {cores()} cores; load average (1 min) {load_start:.2f} "
            f"at start, {load_end:.2f} at end. Command: `python benchmarks/time_to_accuracy.py "
            f"--variants {','.join(names)}`. Validation Dice is `unet train`'s (mean per image, "
            "at the training size); times are seconds of `fit` (validation included) from "
            "history.csv; whole run = the run's `time_used_s` (planning, fit, the "
            "post-processing choice). Curves: `benchmarks/time_to_accuracy.png`.\n\n"
        )
        results_md = ROOT / "benchmarks" / "RESULTS.md"
        atomic.write_text(results_md, results_md.read_text() + header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
