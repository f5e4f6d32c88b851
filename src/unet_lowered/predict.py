"""Prediction on real-world images of any size and format: ``unet predict``.

One path from a decoded image to probabilities at the image's ORIGINAL size,
shared by ``unet predict`` and ``unet evaluate`` (:func:`predict_images`):

* ``mode="resize"``: :func:`unet_lowered.preprocess.model_input` at the run's
  ``image_size``; the network's logits become probabilities (sigmoid for one
  class, softmax for several) and are resized back with bilinear interpolation.
  Right for runs trained on resized images (``input_mode: resize``).
* ``mode="tile"``: the image is standardised at its own size and predicted with
  the paper's overlap-tile strategy (:func:`unet_lowered.tiling.predict_tiled`),
  tiles of the training size, mirror padding at the borders, Gaussian blending.
  Right for runs trained on crops at the native resolution (``input_mode: crop``)
  and for images far larger than the training size.
* ``"auto"`` (default) picks ``tile`` for crop-trained runs and ``resize`` otherwise.

For ``valid``-padding networks (output smaller than input) both modes tile:
each output tile gets its context from the image or its mirror image.

:func:`predict_files` streams files (read, predict, write, one batch at a time),
never writes into the input folders, and reports unreadable files without stopping.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import io
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from unet_lowered import atomic, images
from unet_lowered.errors import UnetError
from unet_lowered.postprocess import clean_mask, count_components, to_mask
from unet_lowered.preprocess import model_input, to_unit
from unet_lowered.tiling import BLENDS, TTA_SETS, predict_tiled, tta_predict

MODES = ("auto", "resize", "tile")
"""Values of ``--mode``."""

PROB_FORMATS = ("png", "npy")
"""Values of ``--save-prob``."""

TTA_CHOICES = ("auto", *TTA_SETS)
"""Values of ``--tta-transforms``."""

CSV_FILE = "predictions.csv"
CSV_COLUMNS = (
    "id",
    "source",
    "width",
    "height",
    "foreground_fraction",
    "components",
    "seconds",
    "status",
)

# Overlay colours (RGB) per foreground class 1, 2, ...; class 1 is the binary colour.
_PALETTE = np.array(
    [(255, 64, 64), (64, 160, 255), (80, 220, 80), (255, 200, 0), (200, 80, 255), (0, 220, 220)],
    dtype=np.float32,
)


@dataclass(frozen=True)
class PredictOptions:
    """How images are predicted and masks cleaned (shared by predict and evaluate).

    Attributes:
        mode: ``"auto"``, ``"resize"`` or ``"tile"`` (see the module docstring).
        tta: Average the probabilities over flips (and 90-degree rotations).
        tta_transforms: Which: ``"auto"`` (the flips the run was trained with, see
            :func:`resolve_tta`), ``"lr"``, ``"ud"``, ``"flips"`` or ``"dihedral"``.
        overlap: Tile overlap as a fraction of the tile, in ``[0, 1)``.
        blend: Tile blending weights: ``"gaussian"``, ``"linear"`` or ``"constant"``.
        batch_size: Images (resize mode) or tiles (tile mode) per network call.
        threshold: Foreground probability threshold; None takes the run's.
        keep_largest: Keep the N largest objects (per class); None keeps all.
        fill_holes: Fill holes in the objects.
        min_area: Remove objects smaller than this many pixels (at the original size).
        max_pixels: Refuse images with more pixels than this, before decoding them.
    """

    mode: str = "auto"
    tta: bool = False
    tta_transforms: str = "auto"
    overlap: float = 0.25
    blend: str = "gaussian"
    batch_size: int = 4
    threshold: float | None = None
    keep_largest: int | None = None
    fill_holes: bool = False
    min_area: int = 0
    max_pixels: int = images.DEFAULT_MAX_PIXELS

    def validate(self) -> PredictOptions:
        """Raise :class:`UnetError` naming the valid values of any bad option."""
        if self.mode not in MODES:
            raise UnetError(f"unknown --mode {self.mode!r}; use one of: {', '.join(MODES)}")
        if self.tta_transforms not in TTA_CHOICES:
            raise UnetError(
                f"unknown --tta-transforms {self.tta_transforms!r}; use one of: "
                f"{', '.join(TTA_CHOICES)}"
            )
        if self.blend not in BLENDS:
            raise UnetError(f"unknown --blend {self.blend!r}; use one of: {', '.join(BLENDS)}")
        if not 0 <= self.overlap < 1:
            raise UnetError(
                f"--overlap must be in [0, 1) (a fraction of the tile), got {self.overlap}"
            )
        if self.batch_size < 1:
            raise UnetError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise UnetError(f"--threshold must be between 0 and 1, got {self.threshold}")
        if self.keep_largest is not None and self.keep_largest < 1:
            raise UnetError(f"--keep-largest must be at least 1, got {self.keep_largest}")
        if self.min_area < 0:
            raise UnetError(f"--min-area must be 0 or more pixels, got {self.min_area}")
        return self


# ---------------------------------------------------------------- one image


def resolve_mode(mode: str, config: dict[str, Any]) -> str:
    """``"auto"`` -> ``"tile"`` for crop-trained runs, ``"resize"`` otherwise."""
    if mode not in MODES:
        raise UnetError(f"unknown --mode {mode!r}; use one of: {', '.join(MODES)}")
    if mode == "auto":
        return "tile" if config.get("input_mode") == "crop" else "resize"
    return mode


def resolve_tta(which: str, config: dict[str, Any]) -> str:
    """The TTA transform group; ``"auto"`` takes the flips the run was trained with.

    ``"auto"``: ``"flips"`` if the run was trained with left-right and up-down flips,
    ``"lr"`` or ``"ud"`` with one of them. 90-degree rotations are never chosen
    automatically (training rotates by a few degrees only); ask for ``"dihedral"``.

    Raises:
        UnetError: ``"auto"`` for a run trained without flips: flipped images are new to
            such a model and averaging over them lowers its accuracy (measured on JSRT
            lungs: Dice 0.974 without TTA, 0.969 with left-right flips, 0.815 with all 8).
    """
    if which not in TTA_CHOICES:
        raise UnetError(f"unknown --tta-transforms {which!r}; use one of: {', '.join(TTA_CHOICES)}")
    if which != "auto":
        return which
    lr, ud = bool(config.get("flip_lr")), bool(config.get("flip_ud"))
    if lr or ud:
        return "flips" if lr and ud else "lr" if lr else "ud"
    raise UnetError(
        "--tta: the run was trained without flips (flip_lr and flip_ud are off in its "
        "config.json), so flipped images are new to the model and test-time augmentation "
        "lowers its accuracy (JSRT lungs: Dice 0.974 -> 0.969 with left-right flips); "
        "drop --tta, or force it with --tta-transforms lr|ud|flips|dihedral"
    )


def _image_size(config: dict[str, Any]) -> tuple[int, int]:
    size = config["image_size"]
    if isinstance(size, (int, float)):
        return int(size), int(size)
    return int(size[0]), int(size[1])


def _geometry(model: Any, config: dict[str, Any]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(output_tile, margin)`` for input tiles of the run's ``image_size``.

    Same padding: the output tile is the input tile, no margin. Valid padding: the
    output is smaller; the margin is half the difference.
    """
    in_h, in_w = _image_size(config)
    out_shape = tuple(model.output_shape)
    if out_shape[1] is None or out_shape[2] is None:  # a model built for any input size
        out_shape = tuple(
            np.shape(
                model.predict_on_batch(
                    np.zeros((1, in_h, in_w, _channels(model, config)), np.float32)
                )
            )
        )
    out_h, out_w = int(out_shape[1]), int(out_shape[2])
    if (in_h - out_h) % 2 or (in_w - out_w) % 2 or out_h > in_h or out_w > in_w:
        raise UnetError(
            f"the model maps {in_h}x{in_w} inputs to {out_h}x{out_w} outputs; tiling needs an "
            "output centred in its input (re-train the run)"
        )
    return (out_h, out_w), ((in_h - out_h) // 2, (in_w - out_w) // 2)


def _channels(model: Any, config: dict[str, Any]) -> int:
    channels = int(config.get("channels", 1))
    model_channels = model.input_shape[-1]
    if model_channels is not None and model_channels != channels:
        raise UnetError(
            f"config.json says {channels} input channel(s) but the model takes {model_channels}; "
            "the run folder is inconsistent (re-train it)"
        )
    return channels


def probability_fn(
    model: Any, config: dict[str, Any], tta: str | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """The model as a ``(B, h, w, C) -> (B, h', w', K)`` probability function.

    Logits become probabilities with a sigmoid (``num_classes`` 1) or a softmax over the
    classes; with ``tta`` (``"lr"``, ``"ud"``, ``"flips"`` or ``"dihedral"``) the
    probabilities are averaged over that group of transforms
    (:func:`unet_lowered.tiling.tta_predict`).
    """
    from scipy.special import expit, softmax

    num_classes = int(config.get("num_classes", 1))

    def probs(batch: np.ndarray) -> np.ndarray:
        logits = np.asarray(model.predict_on_batch(batch), dtype=np.float32)
        return expit(logits) if num_classes == 1 else softmax(logits, axis=-1)

    if tta:
        return lambda batch: tta_predict(batch, probs, tta)
    return probs


def predict_images(
    model: Any,
    batch: Sequence[np.ndarray],
    config: dict[str, Any],
    options: PredictOptions | None = None,
) -> list[np.ndarray]:
    """Predict probabilities for decoded images, each at its ORIGINAL size.

    Args:
        model: The run's Keras model (logits out).
        batch: Images as :func:`unet_lowered.images.read_image` returns them, any sizes.
        config: The run's ``config.json`` (``image_size``, ``channels``, ``num_classes``,
            ``clahe``, ``input_mode``).
        options: Mode, TTA and tiling settings (post-processing fields are not used here).

    Returns:
        One float32 ``(H, W, K)`` array per image: probabilities, ``K = num_classes``.
    """
    options = (options or PredictOptions()).validate()
    mode = resolve_mode(options.mode, config)
    channels = _channels(model, config)
    clahe = bool(config.get("clahe", False))
    size = _image_size(config)
    out_tile, margin = _geometry(model, config)
    fn = probability_fn(
        model, config, resolve_tta(options.tta_transforms, config) if options.tta else None
    )

    def tiled(x: np.ndarray) -> np.ndarray:
        return predict_tiled(
            x, fn, out_tile, options.overlap, margin, options.blend, options.batch_size
        )

    if mode == "tile":
        return [tiled(model_input(image, channels, None, clahe)) for image in batch]
    inputs = [model_input(image, channels, size, clahe) for image in batch]
    if margin == (0, 0):  # same padding: the whole batch in one call
        outputs = list(fn(np.stack(inputs))) if inputs else []
    else:
        outputs = [tiled(x) for x in inputs]
    return [_resize_probs(p, image.shape[:2]) for p, image in zip(outputs, batch, strict=True)]


def predict_image(
    model: Any,
    image: np.ndarray,
    config: dict[str, Any],
    mode: str = "auto",
    tta: bool = False,
    **tiling: Any,
) -> np.ndarray:
    """Probabilities ``(H, W, K)`` for one decoded image at its original size.

    Args:
        model: The run's Keras model.
        image: ``(H, W)`` or ``(H, W, 3)`` uint8/uint16 array.
        config: The run's ``config.json``.
        mode: ``"auto"``, ``"resize"`` or ``"tile"``.
        tta: Test-time augmentation over flips (and rotations).
        **tiling: ``tta_transforms``, ``overlap``, ``blend`` or ``batch_size`` (see
            :class:`PredictOptions`).

    Returns:
        float32 ``(H, W, num_classes)`` probabilities.
    """
    options = PredictOptions(mode=mode, tta=tta, **tiling)
    return predict_images(model, [image], config, options)[0]


def _resize_probs(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(h, w, K)`` probabilities to ``size``; softmax sums stay 1."""
    h, w = size
    if probs.shape[:2] == (h, w):
        return probs
    out = cv2.resize(probs, (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(h, w, probs.shape[2])


def probs_to_mask(probs: np.ndarray, config: dict[str, Any], options: PredictOptions) -> np.ndarray:
    """Threshold (or argmax) and clean probabilities: bool ``(H, W)`` or class indices."""
    threshold = (
        options.threshold if options.threshold is not None else float(config.get("threshold", 0.5))
    )
    mask = to_mask(probs, threshold)
    return clean_mask(mask, options.keep_largest, options.fill_holes, options.min_area)


def mask_to_png(mask: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """The array written as ``<id>.png``: 0/255 (one class) or the original label values.

    Multi-class masks hold the run's ``label_values`` (the values of the training
    masks), or the class indices 0..K-1 when the run recorded none.
    """
    if mask.dtype == bool:
        return mask.astype(np.uint8) * 255
    values = config.get("label_values")
    table = np.asarray(values if values else range(int(config.get("num_classes", 2))))
    dtype = np.uint8 if table.max() <= 255 else np.uint16
    return table.astype(dtype)[mask]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """The image in RGB with each class tinted and outlined; uint8 ``(H, W, 3)``.

    Args:
        image: The decoded image (any bit depth, gray or RGB); stretched to 8 bits.
        mask: bool ``(H, W)`` mask or class indices (0 = background).
        alpha: Tint opacity.
    """
    rgb = to_unit(images.to_channels(image, 3))
    out = (rgb * 255).astype(np.float32)
    labels = mask.astype(np.int32)
    thickness = max(1, round(min(mask.shape) / 300))
    for c in range(1, int(labels.max(initial=0)) + 1):
        region = labels == c
        if not region.any():
            continue
        colour = _PALETTE[(c - 1) % len(_PALETTE)]
        out[region] = (1 - alpha) * out[region] + alpha * colour
        contours, _ = cv2.findContours(
            region.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, tuple(float(v) for v in colour), thickness)
    return np.clip(out, 0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------- files


@dataclass
class PredictReport:
    """What :func:`predict_files` did.

    Attributes:
        out_dir: The output folder.
        written: Ids whose outputs were written.
        failed: ``(source path, message)`` for each input that could not be read or predicted.
        csv_path: ``predictions.csv``.
    """

    out_dir: Path
    written: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    csv_path: Path | None = None


def collect_inputs(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted list of distinct files.

    Files named explicitly are taken whatever their suffix (the content decides);
    files found in folders or by globs must have an image suffix
    (:data:`unet_lowered.images.IMAGE_SUFFIXES`). Folders are walked recursively only
    with ``recursive``.

    Raises:
        UnetError: An input matches nothing, or no image is found at all.
    """
    found: dict[Path, None] = {}
    for raw in inputs:
        path = Path(raw)
        if path.is_file():
            found[path] = None
        elif path.is_dir():
            files = images.iter_files(path, recursive=recursive)
            picked = [f for f in files if f.suffix.lower() in images.IMAGE_SUFFIXES]
            if not picked:
                hint = "" if recursive else " (use --recursive to look in sub-folders)"
                raise UnetError(f"{path}: no image files in this folder{hint}")
            found.update(dict.fromkeys(picked))
        elif glob.has_magic(str(raw)):
            matches = sorted(Path(m) for m in glob.glob(str(raw), recursive=recursive))
            picked = [
                m for m in matches if m.is_file() and m.suffix.lower() in images.IMAGE_SUFFIXES
            ]
            if not picked:
                raise UnetError(f"{raw}: the pattern matches no image files")
            found.update(dict.fromkeys(picked))
        else:
            raise UnetError(f"{raw}: no such file or folder; check the path")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    if not unique:
        raise UnetError("no input images given")
    return sorted(unique.values())


def make_ids(files: Sequence[Path]) -> list[str]:
    """Output ids for input files: the file stem, made unique where stems collide.

    Files with the same stem from different folders get as many parent folder names as
    needed to tell them apart, joined by ``__`` (``a/x.png`` and ``b/x.png`` become
    ``a__x`` and ``b__x``); the same stem in one folder keeps the suffix (``x_png``,
    ``x_jpg``). Ids never repeat, so no output overwrites another.
    """
    stems = Counter(p.stem for p in files)
    ids = [p.stem for p in files]
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(files):
        if stems[p.stem] > 1:
            groups.setdefault(p.stem, []).append(i)
    for stem, members in groups.items():
        parents = [Path(os.path.abspath(files[i])).parent.parts[1:] for i in members]
        depth = max(len(p) for p in parents)
        names = [f"{stem}_{files[i].suffix.lstrip('.').lower() or 'file'}" for i in members]
        for k in range(1, depth + 1):
            candidate = ["__".join([*parent[-k:], stem]) for parent in parents]
            if len(set(candidate)) == len(candidate):
                names = candidate
                break
        else:
            names = [
                "__".join([*parent, name]) for parent, name in zip(parents, names, strict=True)
            ]
        for i, name in zip(members, names, strict=True):
            ids[i] = name
    seen: Counter[str] = Counter()
    for i, name in enumerate(ids):  # a file literally named like a disambiguated id
        seen[name] += 1
        if seen[name] > 1:
            ids[i] = f"{name}-{seen[name]}"
    return ids


def _check_out_dir(
    out_dir: Path, inputs: Sequence[str | os.PathLike], files: Sequence[Path]
) -> None:
    """Refuse an output folder that is an input folder, lies inside one, or holds inputs."""
    out = out_dir.resolve()
    folders = {Path(p).resolve() for p in inputs if Path(p).is_dir()}
    for folder in folders:
        if out == folder or folder in out.parents:
            raise UnetError(
                f"--out {out_dir} is inside the input folder {folder}; predictions are never "
                "written among the inputs: choose another output folder"
            )
    parents = {f.resolve().parent for f in files}
    if out in parents:
        raise UnetError(
            f"--out {out_dir} holds input images; predictions are never written beside the "
            "inputs: choose another output folder"
        )


def _load(run_dir: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    from unet_lowered.runs import load_run

    run = load_run(run_dir)
    return run.model(), run.config


def predict_files(
    run_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: PredictOptions | None = None,
    *,
    recursive: bool = False,
    save_prob: str | None = None,
    save_overlay: bool = False,
    progress: bool = True,
) -> PredictReport:
    """Predict masks for image files with a trained run: ``unet predict``.

    For each input image it writes, into ``out_dir``: ``<id>.png`` (the mask at the
    original size; 0/255, or the label values for multi-class runs), optionally
    ``<id>_prob.png`` (8-bit probability; ``<id>_prob_<k>.png`` per class ``k >= 1``
    for multi-class runs) or ``<id>_prob.npy`` (float32 ``(H, W)`` or ``(H, W, K)``),
    optionally ``<id>_overlay.png``, and at the end ``predictions.csv`` (one row per
    input, failed ones included with their error in ``status``). Files are written
    atomically; images are read, predicted and written one batch at a time.

    Args:
        run_dir: The run folder written by ``unet train``.
        inputs: Image files, folders or glob patterns.
        out_dir: The output folder (created; must not be an input folder).
        options: Prediction and post-processing settings.
        recursive: Walk folders (and ``**`` in globs) recursively.
        save_prob: Also save probabilities: ``"png"``, ``"npy"`` or None.
        save_overlay: Also save ``<id>_overlay.png``.
        progress: Show a progress bar (on stderr).

    Returns:
        A :class:`PredictReport`. Unreadable or corrupt inputs are listed in
        ``failed`` (and reported on stderr as they happen) while the others are still
        processed; the caller decides the exit status.

    Raises:
        UnetError: Bad options, inputs that match nothing, a bad run folder, or an
            output folder among the inputs.
    """
    options = (options or PredictOptions()).validate()
    if save_prob is not None and save_prob not in PROB_FORMATS:
        raise UnetError(f"unknown --save-prob {save_prob!r}; use one of: {', '.join(PROB_FORMATS)}")
    files = collect_inputs(inputs, recursive)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, inputs, files)
    ids = make_ids(files)
    model, config = _load(run_dir)
    mode = resolve_mode(options.mode, config)
    options = dataclasses.replace(options, mode=mode)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictReport(out_dir)
    rows: list[dict[str, Any]] = []
    per_call = options.batch_size if mode == "resize" else 1  # tile mode batches tiles instead
    console = _console()
    try:
        with progress_bar(len(files), progress, console=console) as advance:
            for chunk in _chunks(list(zip(ids, files, strict=True)), per_call):
                started = time.perf_counter()
                loaded = []
                for image_id, path in chunk:
                    try:
                        loaded.append((image_id, path, images.read_image(path, options.max_pixels)))
                    except (UnetError, OSError, cv2.error) as e:
                        _fail(report, rows, console, image_id, path, e)
                        advance()
                if loaded:
                    probs = predict_images(model, [im for _, _, im in loaded], config, options)
                    seconds = (time.perf_counter() - started) / len(loaded)
                    for (image_id, path, image), p in zip(loaded, probs, strict=True):
                        t0 = time.perf_counter()
                        row = _write_outputs(
                            out_dir,
                            image_id,
                            path,
                            image,
                            p,
                            config,
                            options,
                            save_prob,
                            save_overlay,
                        )
                        row["seconds"] = round(seconds + time.perf_counter() - t0, 4)
                        rows.append(row)
                        report.written.append(image_id)
                        advance()
                    del probs, loaded
    finally:
        report.csv_path = _write_csv(out_dir / CSV_FILE, rows)
    return report


def _write_outputs(
    out_dir: Path,
    image_id: str,
    path: Path,
    image: np.ndarray,
    probs: np.ndarray,
    config: dict[str, Any],
    options: PredictOptions,
    save_prob: str | None,
    save_overlay: bool,
) -> dict[str, Any]:
    """Write the mask (and probability/overlay files) of one image; return its CSV row."""
    mask = probs_to_mask(probs, config, options)
    images.write_png(out_dir / f"{image_id}.png", mask_to_png(mask, config))
    if save_prob == "npy":
        arr = probs[:, :, 0] if probs.shape[2] == 1 else probs
        atomic.save_with(out_dir / f"{image_id}_prob.npy", lambda p: np.save(p, arr))
    elif save_prob == "png":
        as8 = np.clip(probs * 255 + 0.5, 0, 255).astype(np.uint8)
        if probs.shape[2] == 1:
            images.write_png(out_dir / f"{image_id}_prob.png", as8[:, :, 0])
        else:
            for k in range(1, probs.shape[2]):
                images.write_png(out_dir / f"{image_id}_prob_{k}.png", as8[:, :, k])
    if save_overlay:
        images.write_png(out_dir / f"{image_id}_overlay.png", overlay(image, mask))
    h, w = mask.shape
    return {
        "id": image_id,
        "source": str(path),
        "width": w,
        "height": h,
        "foreground_fraction": round(float(np.count_nonzero(mask)) / mask.size, 6),
        "components": count_components(mask),
        "status": "ok",
    }


def _fail(
    report: PredictReport,
    rows: list[dict[str, Any]],
    console: Any,
    image_id: str,
    path: Path,
    error: Exception,
) -> None:
    from rich.markup import escape

    message = (
        str(error) if isinstance(error, UnetError) else f"{path}: {type(error).__name__}: {error}"
    )
    report.failed.append((str(path), message))
    rows.append({"id": image_id, "source": str(path), "status": f"failed: {message}"})
    console.print(f"[red]skipped[/red] {escape(message)}", soft_wrap=True)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic.write_text(path, buf.getvalue())


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@contextlib.contextmanager
def progress_bar(
    total: int, enabled: bool = True, label: str = "predicting", console: Any = None
) -> Iterator[Callable[[], None]]:
    """A rich progress bar (on stderr by default); yields the function that advances it.

    Args:
        total: Number of steps.
        enabled: Show it (False: advancing does nothing visible).
        label: Text before the bar.
        console: A rich console (default: a new one on stderr).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console or _console(), disable=not enabled) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


def exit_status(report: PredictReport, keep_going: bool) -> int:
    """The exit status of ``unet predict``.

    0 when every input was predicted. When some failed: 1, or 0 with ``keep_going``
    as long as at least one image was predicted (every input failing is always 1).
    """
    if not report.failed:
        return 0
    if keep_going and report.written:
        return 0
    return 1


__all__ = [
    "MODES",
    "PROB_FORMATS",
    "PredictOptions",
    "PredictReport",
    "collect_inputs",
    "exit_status",
    "make_ids",
    "mask_to_png",
    "overlay",
    "predict_files",
    "predict_image",
    "predict_images",
    "probability_fn",
    "probs_to_mask",
    "progress_bar",
    "resolve_mode",
    "resolve_tta",
]
