"""Which prediction options help a trained run: ``unet evaluate`` with each, side by side.

Runs ``unet evaluate RUN DATA --split val`` once per option set of :data:`VARIANTS`
(a fresh process each, exactly the command a user types, into a scratch folder) and
scores each against the first, ``--no-postprocess`` (the network's mask alone, at the
run's threshold): mean and worst Dice, mean HD95 (finite values), and how many images
score better or worse than it by more than 0.0005 Dice.

The variants are the modes, the test-time augmentations and the post-processing steps
one at a time and together, plus the run's own choice (no flags), so the table shows
what ``unet train``'s choice on the validation split is worth and what each flag would
change.

Run by hand (never part of ``make test``)::

    .venv/bin/python benchmarks/predict_options.py RUN DATA              # appends to RESULTS.md
    .venv/bin/python benchmarks/predict_options.py RUN DATA --no-append  # print only

RUN is a folder written by ``unet train``, DATA the prepared folder it was trained on.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import append_section, machine_line  # benchmarks/speed.py, beside this script  # noqa: E402

UNET = [sys.executable, "-m", "unet_lowered"]
"""``unet`` of this interpreter's environment, as ``held_out.py`` runs it."""

#: (name, flags of ``unet evaluate``); the first is the reference of the last column.
VARIANTS: list[tuple[str, list[str]]] = [
    ("plain (the network's mask)", ["--no-postprocess"]),
    ("the run's choice (no flags)", []),
    ("`--mode tile`", ["--no-postprocess", "--mode", "tile"]),
    ("`--tta --tta-transforms lr`", ["--no-postprocess", "--tta", "--tta-transforms", "lr"]),
    (
        "`--tta --tta-transforms dihedral`",
        ["--no-postprocess", "--tta", "--tta-transforms", "dihedral"],
    ),
    ("`--keep-largest 2`", ["--no-postprocess", "--keep-largest", "2"]),
    ("`--fill-holes`", ["--no-postprocess", "--fill-holes"]),
    (
        "`--keep-largest 2 --fill-holes`",
        ["--no-postprocess", "--keep-largest", "2", "--fill-holes"],
    ),
]

#: A change of Dice smaller than this counts as neither better nor worse.
TIE = 0.0005


def evaluate(run: str, data: str, flags: list[str], out: Path) -> dict[str, dict[str, float]]:
    """``unet evaluate RUN DATA --split val --out OUT FLAGS``; per-image Dice and HD95."""
    command = [*UNET, "evaluate", run, data, "--split", "val", "--out", str(out)]
    command += [*flags, "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: {shlex.join(command)} failed: {tail}")
    with open(out / "per_image.csv", newline="") as f:
        return {
            row["id"]: {"dice": float(row["dice"]), "hd95": float(row["hd95"])}
            for row in csv.DictReader(f)
        }


def table(results: list[tuple[str, dict[str, dict[str, float]]]]) -> str:
    """The Markdown table: one row per variant, compared with the first."""
    reference = results[0][1]
    lines = [
        f"| options | mean Dice | worst Dice | mean HD95 (px) | better / worse than "
        f"{results[0][0]} |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, scores in results:
        dice = [s["dice"] for s in scores.values()]
        hd = [s["hd95"] for s in scores.values() if math.isfinite(s["hd95"])]
        better = sum(scores[i]["dice"] > reference[i]["dice"] + TIE for i in scores)
        worse = sum(scores[i]["dice"] < reference[i]["dice"] - TIE for i in scores)
        hd_text = f"{statistics.fmean(hd):.2f}" if hd else "-"
        if len(hd) < len(dice):
            hd_text += f" ({len(dice) - len(hd)} inf)"
        lines.append(
            f"| {name} | {statistics.fmean(dice):.4f} | {min(dice):.4f} | {hd_text} | "
            f"{'-' if scores is reference else f'{better} / {worse}'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Evaluate every variant, print the table and append it to RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder written by `unet train`")
    parser.add_argument("data", help="prepared data folder the run was trained on")
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="predict-options-") as scratch:
        for k, (name, flags) in enumerate(VARIANTS):
            print(f"[{k + 1}/{len(VARIANTS)}] {name}", file=sys.stderr, flush=True)
            results.append((name, evaluate(args.run, args.data, flags, Path(scratch) / str(k))))
    text = table(results)
    print(machine_line() + "\n")
    print(text)
    if not args.no_append:
        command = shlex.join(["python", "benchmarks/predict_options.py", args.run, args.data])
        path = append_section(
            f"predict_options.py, {args.run}",
            f"Took {time.perf_counter() - started:.0f} s. `unet evaluate RUN DATA --split val` "
            f"with each variant's flags, {len(results[0][1])} validation images scored at "
            f"their original size; better / worse: by more than {TIE} Dice. "
            f"Command: `{command}`\n\n{text}",
        )
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
