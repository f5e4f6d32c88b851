"""The watershed split on a trained boundary-data run, merge level by level, side by side.

For each validation image of RUN (from ``RUN/split.json``) in DATA (a prepared folder),
predicts the probabilities as plain ``unet predict`` does (the run's TTA choice), then
scores the mask at a fixed threshold without the split and with the split at each merge
level (``unet_lowered.inference.postprocess.split_touching``): the ISBI 2012
challenge's Rand error of the 4-connected objects per image and its mean, the mean
Dice, and the split's time. Use it to see what the choice ``unet train`` made rests on.

``unet train`` makes its choice on the same validation images it is scored on, so its
figure is in-sample. ``--held-out`` estimates what that costs: for every way of taking
half of the images, the choice (``choose_postprocess`` with the thresholds, with and
without the split's merge levels) is made on that half and scored on the other; the mean Rand
error of the images when held out is printed beside their mean when chosen on.

``--merges 0.8,0.9`` sets the merge levels of the table (default 0.8, 0.85, 0.9, 0.95,
1) and, given, the candidates of ``--held-out`` (default: the levels ``unet train``
tries, ``unet_lowered.evaluation.choose.WATERSHED_MERGES``); ``--threshold`` the mask's
threshold (0.5); ``--split train`` takes the run's training images instead of its
validation images.

    .venv/bin/python benchmarks/watershed_split.py RUN DATA
    .venv/bin/python benchmarks/watershed_split.py RUN DATA --threshold 0.3
    .venv/bin/python benchmarks/watershed_split.py RUN DATA --held-out
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

DEFAULT_MERGES = (0.8, 0.85, 0.9, 0.95, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder written by `unet train`")
    parser.add_argument("data", type=Path, help="the prepared data folder it was trained on")
    parser.add_argument("--threshold", type=float, default=0.5, help="the mask's threshold")
    parser.add_argument(
        "--merges",
        default=None,
        help="comma-separated merge levels (1: cut every neck) [default: "
        + ",".join(f"{m:g}" for m in DEFAULT_MERGES)
        + "; --held-out: the levels unet train tries]",
    )
    parser.add_argument("--split", default="val", choices=("val", "train"))
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="also choose on half of the images and score the other half, every way",
    )
    args = parser.parse_args(argv)
    given = None if args.merges is None else [float(m) for m in args.merges.split(",") if m.strip()]
    merges = list(DEFAULT_MERGES) if given is None else given

    from unet_lowered.dataset.masks import label_components
    from unet_lowered.dataset.pairs import load_prepared
    from unet_lowered.evaluation.metrics import dice, rand_error
    from unet_lowered.inference.postprocess import split_touching
    from unet_lowered.inference.predictor import predict_image
    from unet_lowered.io import runs
    from unet_lowered.io.images import read_image

    loaded = runs.load_run(args.run)
    ids = json.loads((args.run / "split.json").read_text())[args.split]
    pairs = load_prepared(args.data)
    model = loaded.model()
    probs, truths = [], []
    for i in ids:
        probs.append(predict_image(model, read_image(pairs.images[i]), loaded.config)[..., 0])
        truths.append(read_image(pairs.masks[i]) > 0)
    cells = [label_components(t, 4)[0] for t in truths]

    chosen = loaded.config.postprocess or {}
    print(
        f"run {args.run}: TTA {chosen.get('tta')}, chosen split {chosen.get('watershed')}, "
        f"threshold {args.threshold:g}, {len(ids)} {args.split} images: {', '.join(ids)}\n"
    )
    print("| merge at | Rand error mean | per image | Dice mean | split time per image |")
    print("|---|---:|---|---:|---:|")
    for merge in [None, *merges]:
        errors, dices, seconds = [], [], 0.0
        for p, truth, true_cells in zip(probs, truths, cells, strict=True):
            mask = p >= args.threshold
            if merge is not None:
                start = time.perf_counter()
                mask = split_touching(p, mask, merge)
                seconds += time.perf_counter() - start
            errors.append(rand_error(true_cells, label_components(mask, 4)[0]))
            dices.append(dice(truth, mask))
        name = "no split" if merge is None else f"{merge:g}"
        per_image = " ".join(f"{e:.3f}" for e in errors)
        timing = "-" if merge is None else f"{1000 * seconds / len(probs):.0f} ms"
        print(
            f"| {name} | {statistics.fmean(errors):.4f} | {per_image} | "
            f"{statistics.fmean(dices):.4f} | {timing} |"
        )
    if args.held_out:
        held_out(probs, truths, cells, loaded.config, args.threshold, given)
    return 0


def held_out(probs: list, truths: list, cells: list, config, threshold: float, merges=None) -> None:
    """Choose on each half of the images, score the other half; print the means.

    The split's candidates are ``merges``, or else the levels ``unet train`` tries
    (``WATERSHED_MERGES``).

    The masks are made as ``unet predict`` makes them with the choice: ``probs_to_mask``
    on ``config`` with the choice as its ``postprocess``, at the chosen threshold or else
    ``threshold``."""
    import itertools

    from unet_lowered.dataset.masks import label_components
    from unet_lowered.evaluation.choose import THRESHOLDS, WATERSHED_MERGES, choose_postprocess
    from unet_lowered.evaluation.metrics import rand_error
    from unet_lowered.inference.predictor import PredictOptions, probs_to_mask

    def error(choice, k: int) -> float:
        chosen = dataclasses.replace(config, postprocess=choice.to_json())
        at = PredictOptions(threshold=choice.threshold or threshold)
        mask = probs_to_mask(probs[k][..., None], chosen, at)
        return rand_error(cells[k], label_components(mask, 4)[0])

    if merges is None:
        merges, whose = WATERSHED_MERGES, "unet train's"
    else:
        whose = "--merges"
    levels = ", ".join(f"{m:g}" for m in merges)
    n = len(probs)
    halves = list(itertools.combinations(range(n), n // 2))
    print(
        f"\nchosen on {n // 2} of {n} images, scored on the rest ({len(halves)} ways); "
        f"the split's merge levels: {levels} ({whose}):\n"
    )
    print("| candidates | mean Rand error, chosen on | held out | choices (split, threshold) |")
    print("|---|---:|---:|---|")
    for name, candidates in (("thresholds", ()), ("thresholds and the split", merges)):
        inside, outside, made = [], [], []
        for half in halves:
            rest = [k for k in range(n) if k not in half]
            choice = choose_postprocess(
                [probs[k] for k in half],
                [truths[k] for k in half],
                None,
                score="rand",
                threshold=threshold,
                thresholds=THRESHOLDS,
                merges=candidates,
            )
            inside += [error(choice, k) for k in half]
            outside += [error(choice, k) for k in rest]
            made.append(f"{choice.watershed or '-'}/{choice.threshold or threshold:g}")
        print(
            f"| {name} | {statistics.fmean(inside):.4f} | {statistics.fmean(outside):.4f} | "
            f"{' '.join(made)} |"
        )


if __name__ == "__main__":
    sys.exit(main())
