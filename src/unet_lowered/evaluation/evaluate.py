"""Evaluation of a run on images with masks: ``unet evaluate``.

Every image is predicted at its ORIGINAL size through the same path as
``unet predict`` (the steps of :func:`unet_lowered.inference.predictor.predict_images`,
then threshold and optional post-processing; a flagged X-ray tried again with its
gray scale inverted and turned, :mod:`unet_lowered.inference.polarity`), and compared with its
mask at that size
by the metrics of :mod:`unet_lowered.evaluation.metrics`. As in ``unet predict``, the
next batches are read while the network runs and the finished ones are scored
meanwhile (:func:`unet_lowered.inference.batch.run_pipeline`), with the same scores.
Masks are read by the rule training uses (:func:`unet_lowered.dataset.masks.read_mask`).
Empty masks follow the rule stated there: both empty gives Dice 1 (HD95 0); exactly
one empty gives Dice 0 (HD95 infinite, left out of the HD95 statistics and counted in
``n_nonfinite``).

Outputs (into ``RUN/eval/`` unless told otherwise), each written atomically:

* ``per_image.csv``: ``id, dice, iou, precision, recall, hd95, fg_true, fg_pred``
  (multi-class runs: the means over the foreground classes, then ``dice_<value>``
  per class), then ``gray_scale`` (``as stored`` or ``inverted``) and ``orientation``
  (``as stored``, ``turned 90/180/270`` or ``mirrored top to bottom``), as in
  ``predictions.csv``;
* ``summary.json``: per metric ``n, n_nonfinite, mean, median, std, min, max``, the
  5 worst ids by Dice, the ids read inverted and those read turned, the settings used
  and the folders read; with class names (``unet prepare --class-names``),
  ``class_names``: ``dice_<value>`` to the class's name, which the table shows beside it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet_lowered import options as names
from unet_lowered.dataset.masks import MaskValuesError, binarize, read_mask, to_classes
from unet_lowered.dataset.pairs import PreparedData, load_prepared
from unet_lowered.errors import UnetError
from unet_lowered.evaluation import metrics
from unet_lowered.inference.batch import run_pipeline
from unet_lowered.inference.journal import remove_stale_temps
from unet_lowered.inference.polarity import (
    AS_STORED,
    INVERTED,
    Look,
    second_look,
    second_look_applies,
    turned_look_applies,
)
from unet_lowered.inference.predictor import (
    PredictOptions,
    applied_threshold,
    applied_watershed,
    for_run,
    postprocess_steps,
    predict_prepared,
    prepare_images,
    probs_to_mask,
    restore_size,
    tta_group,
)
from unet_lowered.inference.quality import contrast_grid, imaged_field
from unet_lowered.io import atomic, images
from unet_lowered.io.progress import progress_bar
from unet_lowered.io.runs import Run, load_run
from unet_lowered.training.config import RunConfig

SPLITS = names.EVAL_SPLITS

WORST = 5
"""How many worst ids ``summary.json`` lists."""

METRIC_KEYS = metrics.SCORE_KEYS


def read_truth(
    path: Path, config: RunConfig, max_pixels: int, notes: dict[str, str] | None = None
) -> np.ndarray:
    """Read a mask as training reads it: bool foreground (one class) or class indices.

    :func:`unet_lowered.dataset.masks.read_mask`, then
    :func:`~unet_lowered.dataset.masks.to_classes` with the run's classes and label values.

    Args:
        path: The mask file.
        config: The run's settings (classes, label values).
        max_pixels: Refuse larger masks before decoding.
        notes: If given, one class: ``{path: note}`` for a mask that is not plainly
            two-valued (a 1/255 mask, a JPEG's ringing thresholded, label values read as
            foreground), as :func:`~unet_lowered.dataset.masks.binarize` notes it.

    Raises:
        UnetError: Unreadable mask, a colour mask for a multi-class run, or values that
            cannot be read: one class, many values that are not near-binary; several, a
            value that is neither a class index nor in the run's label values.
    """
    mask = read_mask(path, config.num_classes, max_pixels)
    try:
        if config.num_classes == 1:  # to_classes' rule, keeping the note
            binary = binarize(mask, lossy=path.suffix.lower() in (".jpg", ".jpeg"))
            if notes is not None and binary.note:
                notes[str(path)] = binary.note
            return binary.mask
        classes = to_classes(mask, config.num_classes, config.label_values)
    except MaskValuesError as e:
        raise UnetError(f"{path}: {e}") from None
    return classes.astype(np.int32)


def score_image(truth: np.ndarray, pred: np.ndarray, config: RunConfig) -> dict[str, float]:
    """The per-image row: :func:`unet_lowered.evaluation.metrics.score` (one class) or the
    mean of the per-class scores over the foreground classes in the truth or the
    prediction (a class absent from both is left out, as nnU-Net and MONAI's
    ``ignore_empty`` do; all of them when every class is absent), with ``dice_<value>``
    per class (1 for a class absent from both)."""
    num_classes = config.num_classes
    if num_classes == 1:
        return metrics.score(truth, pred)
    per_class = metrics.per_class_scores(truth, pred, num_classes)
    counted = [s for s in per_class.values() if s["fg_true"] or s["fg_pred"]]
    counted = counted or list(per_class.values())
    row = {key: float(np.mean([s[key] for s in counted])) for key in METRIC_KEYS}
    row["fg_true"], row["fg_pred"] = float((truth > 0).mean()), float((pred > 0).mean())
    names_ = config.label_values or list(range(num_classes))
    for c, s in per_class.items():
        row[f"dice_{names_[c]}"] = s["dice"]
    return row


def evaluate_run(
    run_dir: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike | None = None,
    options: PredictOptions | None = None,
    split: str = "all",
    progress: bool = True,
    pipeline: bool = True,
) -> dict[str, Any]:
    """Score a run's model on a folder of images and masks, at the original image sizes.

    Args:
        run_dir: The run folder written by ``unet train``.
        data: A prepared folder (``train/images`` + ``train/masks``) or any folder with
            ``images/`` + ``masks/``; pairs are matched by file stem.
        out: Output folder; default ``RUN/eval``.
        options: Prediction and post-processing settings (as for ``unet predict``).
        split: ``"all"`` pairs, or only the ids of the run's ``"val"`` or ``"train"``
            split (from ``RUN/split.json``).
        progress: Show a progress bar and print the summary table (stderr/stdout).
        pipeline: Read, predict and score on three threads; False, one after another
            (the same scores; for comparisons).

    Returns:
        The contents of ``summary.json``.

    Raises:
        UnetError: Bad run or data folder, unmatched ids, a split id missing from the
            data, a mask whose size differs from its image, or an ``out`` that cannot be
            written (checked first).
    """
    options = (options or PredictOptions()).validate()
    split = names.choose(split, SPLITS, "split")
    run = load_run(run_dir)
    pairs = load_prepared(data)
    ids = _select(pairs.ids, run, split, Path(data))
    out_dir = Path(out) if out is not None else run.dir / "eval"
    atomic.check_out_folder(out_dir)  # before the work, not after it
    pairs.refuse_out_inside(out_dir, "this evaluation")
    config = run.config
    options = for_run(options, config)
    mode = options.mode
    model = run.model()
    per_call = options.batch_size if mode == "resize" else 1
    rows: list[dict[str, Any]] = []

    notes: dict[str, str] = {}  # masks read by a rule other than plain two values

    def read(chunk: list[str]) -> tuple:
        """Images and masks of a batch, checked, the network inputs, and what the second
        look at flagged images needs (reader thread)."""
        batch = [images.read_image(pairs.images[k], options.max_pixels) for k in chunk]
        truths = [read_truth(pairs.masks[k], config, options.max_pixels, notes) for k in chunk]
        for ident, image, truth in zip(chunk, batch, truths, strict=True):
            if truth.shape != image.shape[:2]:
                raise UnetError(
                    f"{pairs.masks[ident]}: mask is {truth.shape[1]}x{truth.shape[0]} but its "
                    f"image is {image.shape[1]}x{image.shape[0]}; masks must match their images"
                )
        return chunk, truths, *look_inputs(batch, config, options)

    def predict(item: tuple) -> tuple:
        chunk, truths, inputs, fields, grids = item
        shapes = [t.shape for t in truths]
        probs, looks = predict_looks(model, inputs, shapes, fields, grids, config, options)
        return chunk, truths, probs, looks

    def score(item: tuple, stop: threading.Event) -> None:
        """Masks at the original size, scored (writer thread)."""
        for ident, truth, p, look in zip(*item, strict=True):
            if stop.is_set():
                return
            pred = scored_mask(p, look, truth.shape, config, options)
            row = {"id": ident, **score_image(truth, pred, config)}
            row["gray_scale"] = INVERTED if look.inverted else AS_STORED
            row["orientation"] = look.orientation
            rows.append(row)
            advance()

    started = time.perf_counter()
    with progress_bar(len(ids), progress, "evaluating") as advance:
        chunks = (ids[i : i + per_call] for i in range(0, len(ids), per_call))
        run_pipeline(chunks, read, predict, score, threaded=pipeline)
    seconds = time.perf_counter() - started
    if rows and not any(row["fg_true"] for row in rows):  # as `unet train` warns of them
        print(
            f"warning: every mask scored in {data} is empty, so Dice only counts false "
            "positives; check the masks (`unet check DATA`)",
            file=sys.stderr,
            flush=True,
        )
    if notes:
        first = min(notes)
        print(
            f"warning: {len(notes)} of {len(rows)} masks are not plain two-valued masks and "
            f"were read as `unet prepare` reads them (e.g. {first}: {notes[first]}); "
            f"`unet prepare {data} DEST` writes them as 0/255 and `unet check` counts them",
            file=sys.stderr,
            flush=True,
        )
    summary = _summary(rows, run, pairs, split, options, seconds)
    remove_stale_temps(out_dir, ["per_image.csv", "summary.json"])  # left by a killed run
    _write_rows(out_dir / "per_image.csv", rows)
    atomic.write_json(out_dir / "summary.json", summary)
    if progress:
        print_summary(summary)
    return summary


def look_inputs(
    batch: Sequence[np.ndarray], config: RunConfig, options: PredictOptions
) -> tuple[list[np.ndarray], list[float], list[np.ndarray | None]]:
    """The network inputs of decoded images, and what the second look at flagged ones
    needs: ``(inputs, fields, grids)`` (no model: safe on a reader thread).

    ``inputs``: :func:`~unet_lowered.inference.predictor.prepare_images`; ``fields`` and
    ``grids``: each image's :func:`~unet_lowered.inference.quality.imaged_field` and
    :func:`~unet_lowered.inference.quality.contrast_grid` when the run gets a second look
    (:func:`~unet_lowered.inference.polarity.second_look_applies` or
    :func:`~unet_lowered.inference.polarity.turned_look_applies`), else 1.0 and None.
    """
    look = second_look_applies(config, options) or turned_look_applies(config, options)
    fields = [imaged_field(image) if look else 1.0 for image in batch]
    grids = [contrast_grid(image) if look else None for image in batch]
    return prepare_images(batch, config, options), fields, grids


def predict_looks(
    model: Any,
    inputs: list[np.ndarray],
    shapes: Sequence[tuple[int, int]],
    fields: Sequence[float],
    grids: Sequence[np.ndarray | None],
    config: RunConfig,
    options: PredictOptions,
) -> tuple[list[np.ndarray], list[Look]]:
    """The probabilities of :func:`look_inputs`' inputs (at the inputs' size), those of
    flagged images replaced by the view :func:`~unet_lowered.inference.polarity.second_look`
    keeps, and each input's :class:`~unet_lowered.inference.polarity.Look`
    (``shapes``: each image's ``(H, W)``)."""
    probs = predict_prepared(model, inputs, config, options)
    looks = second_look(model, inputs, probs, list(shapes), fields, grids, config, options)
    return probs, looks


def scored_mask(
    probs: np.ndarray,
    look: Look,
    shape: tuple[int, int],
    config: RunConfig,
    options: PredictOptions,
) -> np.ndarray:
    """The mask scored at the image's ``shape``: the second look's mask when it was
    judged at that size, else the probabilities resized to it, thresholded and cleaned
    (:func:`~unet_lowered.inference.predictor.probs_to_mask`)."""
    if look.mask is not None and look.mask.shape == tuple(shape):  # judged at full size
        return look.mask
    return probs_to_mask(restore_size(probs, shape), config, options)


def predict_masks(
    model: Any,
    batch: Sequence[np.ndarray],
    config: RunConfig,
    options: PredictOptions | None = None,
) -> list[tuple[np.ndarray, Look]]:
    """The masks :func:`evaluate_run` scores for decoded images, and how each was read.

    The steps of :func:`evaluate_run` one after the other (:func:`look_inputs`,
    :func:`predict_looks`, :func:`scored_mask`), in batches of ``options.batch_size``
    images (resize mode) or one image (tile mode), as it batches them.

    Args:
        model: The run's Keras model.
        batch: Images as :func:`unet_lowered.io.images.read_image` returns them.
        config: The run's configuration.
        options: Prediction and post-processing settings (default: ``unet predict``'s).

    Returns:
        Per image, its mask at the image's size (bool, or class indices) and its
        :class:`~unet_lowered.inference.polarity.Look` (``inverted``, ``orientation``).
    """
    options = for_run((options or PredictOptions()).validate(), config)
    per_call = options.batch_size if options.mode == "resize" else 1
    out: list[tuple[np.ndarray, Look]] = []
    for start in range(0, len(batch), per_call):
        chunk = batch[start : start + per_call]
        shapes = [image.shape[:2] for image in chunk]
        inputs, fields, grids = look_inputs(chunk, config, options)
        probs, looks = predict_looks(model, inputs, shapes, fields, grids, config, options)
        for p, look, shape in zip(probs, looks, shapes, strict=True):
            out.append((scored_mask(p, look, shape, config, options), look))
    return out


def settings_record(options: PredictOptions, config: RunConfig) -> dict[str, Any]:
    """``summary.json``'s ``settings``: the prediction settings as applied to the run
    (``options`` resolved by :func:`~unet_lowered.inference.predictor.for_run`)."""
    steps = postprocess_steps(options, config)
    return {
        "mode": options.mode,
        "tta": tta_group(options, config),
        "threshold": applied_threshold(options, config),
        "watershed": applied_watershed(options, config),
        **dict(zip(("keep_largest", "fill_holes", "min_area"), steps, strict=True)),
        "postprocess_from_run": options.postprocess and config.postprocess is not None,
        "polarity": options.polarity,
        "orientation": options.orientation,
        "overlap": options.overlap,
    }


def settings_words(settings: dict[str, Any]) -> str:
    """:func:`settings_record` in words, for the table's title: the mode, the threshold
    and each post-processing step applied (a --threshold 0.97 table looked like a default
    one)."""
    words = [f"{settings.get('mode')} mode"]
    if settings.get("tta"):
        words.append(f"TTA {settings['tta']}")
    if settings.get("threshold") is not None:
        words.append(f"threshold {settings['threshold']:g}")
    steps = []
    if settings.get("watershed"):
        steps.append(f"watershed split (merge >= {settings['watershed']:g})")
    if settings.get("keep_largest"):
        steps.append(f"keep {settings['keep_largest']} largest")
    if settings.get("fill_holes"):
        steps.append("fill holes")
    if settings.get("min_area"):
        steps.append(f"remove objects under {settings['min_area']} px")
    return ", ".join(words + (steps or ["no post-processing"]))


def _select(all_ids: list[str], run: Run, split: str, data: Path) -> list[str]:
    if split == "all":
        return all_ids
    split_path = run.dir / "split.json"
    if not split_path.is_file():
        raise UnetError(f"{split_path}: missing, so --split {split} is unknown; use --split all")
    try:
        wanted = json.loads(split_path.read_text())[split]
    except (ValueError, KeyError, TypeError) as e:
        raise UnetError(f"{split_path}: no {split!r} list of ids ({e}); use --split all") from None
    missing = sorted(set(wanted) - set(all_ids))
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise UnetError(
            f"{data}: {len(missing)} id(s) of the run's {split} split are not in this folder "
            f"({shown}); pass the data the run was trained on, or --split all"
        )
    if not wanted:
        raise UnetError(f"{split_path}: the {split} split is empty; use --split all")
    return sorted(wanted)


def _summary(
    rows: list[dict[str, Any]],
    run: Run,
    pairs: PreparedData,
    split: str,
    options: PredictOptions,
    seconds: float,
) -> dict[str, Any]:
    keys = [k for k in rows[0] if k not in ("id", "gray_scale", "orientation")]
    worst = sorted(rows, key=lambda r: (r["dice"], r["id"]))[:WORST]
    config = run.config
    named = {}  # dice_<value> -> the class's name from `unet prepare --class-names`
    if config.class_names and config.num_classes > 1:
        values = config.label_values or tuple(range(config.num_classes))
        named = {f"dice_{values[c]}": config.class_names[c] for c in range(1, config.num_classes)}
    return {
        "run": str(run.dir),
        "data": str(Path(pairs.root).resolve()),  # `unet plot` reads it from anywhere
        "images": str(Path(pairs.image_dir).resolve()),
        "masks": str(Path(pairs.mask_dir).resolve()),
        "split": split,
        "n_images": len(rows),
        "metrics": {k: metrics.summarize(r[k] for r in rows) for k in keys},
        **({"class_names": named} if named else {}),
        "worst": [{"id": r["id"], "dice": r["dice"]} for r in worst],
        "read_inverted": [r["id"] for r in rows if r["gray_scale"] == INVERTED],
        "read_turned": {r["id"]: r["orientation"] for r in rows if r["orientation"] != AS_STORED},
        "settings": settings_record(options, run.config),
        "empty_masks": "both empty: Dice 1, HD95 0; exactly one empty: Dice 0, HD95 inf (left out of HD95 stats)",
        "seconds": round(seconds, 2),
    }


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buf.getvalue())


def print_summary(summary: dict[str, Any]) -> None:
    """Print the summary as a table (mean, median, std, min, max per metric) and the worst ids."""
    from rich.console import Console
    from rich.table import Table

    n = summary["n_images"]
    named = summary.get("class_names") or {}

    def label(key: str) -> str:  # dice_100 (lung), hd95 (px)
        return (
            key
            + (f" ({named[key]})" if key in named else "")
            + (" (px)" if key.startswith("hd95") else "")
        )

    header = f"{n} image{'' if n == 1 else 's'} ({summary['split']}), " + settings_words(
        summary["settings"]
    )
    table = Table()  # the header above it on a line of its own: a title would wrap and centre
    for column in ("metric", "mean", "median", "std", "min", "max"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, s in summary["metrics"].items():
        cells = [
            "-" if s[c] is None else f"{s[c]:.4f}" for c in ("mean", "median", "std", "min", "max")
        ]
        name = label(key) + (f" ({s['n_nonfinite']} inf)" if s["n_nonfinite"] else "")
        table.add_row(name, *cells)
    console = Console()
    console.print(header, soft_wrap=True, markup=False, highlight=False)
    if (
        console.measure(table, options=console.options.update_width(10_000)).maximum
        <= console.width
    ):
        console.print(table)
    else:  # too narrow for the table: a line per metric, no number cut to "0.…"
        for key, s in summary["metrics"].items():
            cells = ", ".join(
                f"{c} {'-' if s[c] is None else f'{s[c]:.4f}'}"
                for c in ("mean", "median", "std", "min", "max")
            )
            inf = f" ({s['n_nonfinite']} inf)" if s["n_nonfinite"] else ""
            console.print(f"{label(key)}{inf}: {cells}", soft_wrap=True, markup=False)
    worst = ", ".join(f"{w['id']} ({w['dice']:.3f})" for w in summary["worst"])
    console.print(f"worst by Dice: {worst}", soft_wrap=True, markup=False)
