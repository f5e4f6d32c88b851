"""The ``unet`` command: one thin sub-command per stage.

Each command parses its options and calls one library function. Heavy imports
(Keras, TensorFlow) happen inside the commands so that ``unet --help`` is fast.
User mistakes raise :class:`~unet_lowered.errors.UnetError`; :func:`main` prints
them on one line and exits with status 1.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

import unet_lowered
from unet_lowered import options as names
from unet_lowered.errors import UnetError

# The command's own settings (importing the package sets nothing), made before TensorFlow or
# OpenCV is first imported: TensorFlow's C++ start-up lines are noise for a CLI user, and
# OpenCV's "[ WARN ]" / "[ERROR]" lines for damaged files repeat what the command reports
# itself, in one line per file.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")

_ORDER = (
    "check",
    "prepare",
    "plan",
    "train",
    "evaluate",
    "predict",
    "plot",
    "export",
    "model-info",
    "synth",
    "serve",
    "demo",
)
"""The commands in ``unet --help``: in the order of the pipeline (and the README's tour)."""

_HELP_OPTIONS = ["-h", "--help"]


class _Commands(TyperGroup):
    """The group of commands, listed in :data:`_ORDER`."""

    def list_commands(self, ctx: Any) -> list[str]:
        listed = super().list_commands(ctx)
        return sorted(listed, key=lambda n: _ORDER.index(n) if n in _ORDER else len(_ORDER))


app = typer.Typer(
    name="unet",
    cls=_Commands,
    help=(
        "U-Net (Ronneberger et al. 2015) at 25% width on Keras 3: "
        "prepare data, train, evaluate, predict, plot."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": _HELP_OPTIONS},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"unet-lowered {unet_lowered.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """U-Net (Ronneberger et al. 2015) at 25% width on Keras 3."""


# ---------------------------------------------------------------- data: prepare, check

_LayoutOpt = Annotated[
    str,
    typer.Option(
        help="Source layout: auto, kaggle, instances (= dsb2018), flat or montgomery.",
    ),
]
_ImagesDirOpt = Annotated[
    Path | None,
    typer.Option(help="Flat layout: the image folder, relative to the data folder."),
]
_MasksDirOpt = Annotated[
    Path | None,
    typer.Option(help="Flat layout: the mask folder (masks pair with images by file stem)."),
]
_ForegroundOpt = Annotated[
    str | None,
    typer.Option(
        help="Mask values that count as foreground, e.g. 255, 1,2 or 1-3 "
        "[default: the higher of two values; non-zero for label images].",
    ),
]
_ClassesOpt = Annotated[
    bool,
    typer.Option(
        "--classes",
        help="Multi-class masks: keep the label values as classes 0..K-1 "
        "(the map goes into dataset.json).",
    ),
]
_MaxPixelsOpt = Annotated[
    int, typer.Option(help="Refuse images with more pixels than this, before decoding them.")
]
_StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict", help="Fail on any problem, even an empty mask (default: skip bad pairs)."
    ),
]


@app.command("prepare", short_help="Convert a data set into the layout training reads.")
def prepare_cmd(
    src: Annotated[Path, typer.Argument(help="The data set folder; it is never written to.")],
    dest: Annotated[Path, typer.Argument(help="The output folder (must not lie inside SRC).")],
    layout: _LayoutOpt = "auto",
    images_dir: _ImagesDirOpt = None,
    masks_dir: _MasksDirOpt = None,
    foreground: _ForegroundOpt = None,
    classes: _ClassesOpt = False,
    class_names: Annotated[
        str | None,
        typer.Option(
            "--class-names",
            help="With --classes: a name for each class but the background, in the order of "
            "their mask values, e.g. 'left lung,right lung,heart' (in dataset.json; the "
            "pictures and unet serve show them) [default: class 1, class 2, ...].",
        ),
    ] = None,
    max_pixels: _MaxPixelsOpt = 100_000_000,
    strict: _StrictOpt = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace DEST if `unet prepare` wrote it (or it is empty); never another "
            "folder or a file.",
        ),
    ] = False,
) -> None:
    """Convert a data set into the canonical layout that training reads.

    Writes DEST/train/images/<id>.png, DEST/train/masks/<id>.png (0/255, or 0..K-1 with
    --classes), DEST/test/<id>.png and DEST/dataset.json. Recognises the Kaggle layout
    (train_images/<id>/images|masks), DSB2018 instance masks (<id>/masks/*.png, merged),
    flat images/ + masks/ folders (also image/ + label/, masks named <id>_mask...) and
    Montgomery leftMask/ + rightMask/ (merged). Bad pairs are skipped and listed; exit
    status 0 if at least one good pair remains (--strict: 1 on any problem).

    \b
    Example:
      unet prepare data/raw data/prepared
    """
    from unet_lowered.dataset.prepare import DatasetError, prepare
    from unet_lowered.dataset.report import print_report
    from unet_lowered.io import atomic

    try:
        with atomic.exclusive(dest, "preparing a data set into"):
            report = prepare(
                src,
                dest,
                layout=layout,
                images_dir=images_dir,
                masks_dir=masks_dir,
                overwrite=overwrite,
                strict=strict,
                foreground=foreground,
                classes=classes,
                class_names=class_names,
                max_pixels=max_pixels,
                progress=True,
            )
    except DatasetError as e:
        print_report(e.report)
        raise
    print_report(report)


@app.command("check", short_help="Validate a data set as prepare would; write nothing.")
def check_cmd(
    path: Annotated[Path, typer.Argument(help="A source data set or a prepared folder.")],
    layout: _LayoutOpt = "auto",
    images_dir: _ImagesDirOpt = None,
    masks_dir: _MasksDirOpt = None,
    foreground: _ForegroundOpt = None,
    classes: _ClassesOpt = False,
    max_pixels: _MaxPixelsOpt = 100_000_000,
    strict: _StrictOpt = False,
) -> None:
    """Validate a data set (source or prepared) as prepare would, without writing anything.

    Prints the same summary and problem list as prepare. Exit status 0 if at least one
    good pair exists (--strict: only if there is no problem at all), else 1.

    \b
    Example:
      unet check data/raw --strict
    """
    from unet_lowered.dataset.prepare import check
    from unet_lowered.dataset.report import print_report

    report = check(
        path,
        layout=layout,
        images_dir=images_dir,
        masks_dir=masks_dir,
        foreground=foreground,
        classes=classes,
        max_pixels=max_pixels,
        progress=True,
    )
    print_report(report)
    if not report.pairs:
        raise UnetError(f"{path}: no usable image/mask pair")
    if not report.ok(strict):
        raise UnetError(f"{path}: {len(report.problems)} problem(s) and --strict is set")


# ---------------------------------------------------------------- model: model-info, export


@app.command("model-info", short_help="Parameters and GFLOP of the U-Net at one or more widths.")
def model_info(
    width: Annotated[
        list[float] | None,
        typer.Option(
            help="Fraction of the paper's width (1.0 = 64..1024 filters); repeat for more rows."
        ),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size",
            "--image-size",
            help="Input height and width in pixels (as `unet train --image-size`) "
            "[default: 256; with --padding valid the paper's 572, output 388].",
        ),
    ] = None,
    depth: Annotated[int, typer.Option(help="Number of 2x2 poolings.")] = 4,
    padding: Annotated[str, typer.Option(help="same or valid (the paper).")] = "same",
    channels: Annotated[int, typer.Option(help="Input channels.")] = 1,
    classes: Annotated[int, typer.Option(help="Output classes (1 = binary).")] = 1,
) -> None:
    """Print parameters and forward GFLOP per image of the U-Net at one or more widths.

    FLOPs are 2 x the multiply-accumulates of the convolutions, counted from the layers.

    \b
    Example:
      unet model-info --width 0.25 --width 0.5 --width 1 --size 256
    """
    from unet_lowered.model import widths_table

    if size is None:
        size = 572 if names.choose(padding, names.PADDINGS, "padding") == "valid" else 256
    typer.echo(widths_table(width or [0.25], size, depth, padding, channels, classes), nl=False)


@app.command("export", short_help="Export a trained model to ONNX or a TensorFlow SavedModel.")
def export(
    model: Annotated[
        Path, typer.Argument(help="A .keras file or a run folder (uses RUN/model.keras).")
    ],
    format: Annotated[
        str, typer.Option("--format", "-f", help=" or ".join(names.EXPORT_FORMATS) + ".")
    ] = "onnx",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output .onnx file or SavedModel folder [default: beside the model].",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace a previous export at --out (an .onnx file or a SavedModel folder); "
            "never the model, its run folder or other files."
        ),
    ] = False,
    check: Annotated[
        bool, typer.Option(help="Run the export on random input and compare it with Keras.")
    ] = True,
) -> None:
    """Export a trained model to ONNX or a TensorFlow SavedModel for serving without Keras.

    The exported model takes float32 images (B, H, W, C), preprocessed as for training,
    and returns logits (B, h, w, classes). ONNX needs: pip install 'unet-lowered[onnx]'.
    """
    from unet_lowered.inference.export import export_model

    result = export_model(model, format, out, overwrite=overwrite, check=check)
    diff = result["max_abs_diff"]
    checked = "not checked" if diff is None else f"max |export - keras| = {diff:.2g}"
    typer.echo(
        f"wrote {result['path']} ({format}; input {result['input_shape']} float32, "
        f"logits {result['output_shape']}; {checked})"
    )
    if result["precision_diff"] is not None:  # notes: on stderr, as the README says
        typer.echo(
            f"the run computes in {result['manifest']['precision']['trained']}; the export "
            f"in float32: its logits differ from the run's by up to "
            f"{result['precision_diff']:.2g} on the check input, so a few boundary pixels "
            "may differ from `unet predict`'s masks",
            err=True,
        )
    if result["manifest"] is not None:
        where = "metadata_props" if format == "onnx" else "file"
        typer.echo(
            f"preprocessing, threshold and post-processing of `unet predict`: the export's "
            f"{where} '{'unet_lowered' if format == 'onnx' else 'unet_lowered.json'}'",
            err=True,
        )


# ---------------------------------------------------------------- plan, train, plot

_TimeBudget = Annotated[
    str | None,
    typer.Option(
        help="Time budget of the whole command, e.g. 90s, 10m, 1h: epochs are planned to "
        "fit and training stops before passing it [default: planned: 10m, or the budget of "
        "DATA/plan.json; none when --epochs is given].",
    ),
]


@app.command("plan", short_help="Fingerprint the data and plan `unet train` (plan.json).")
def plan(
    data: Annotated[Path, typer.Argument(help="Prepared folder (from `unet prepare`).")],
    time_budget: Annotated[
        str | None,
        typer.Option(
            help="Time budget of the planned `unet train`, e.g. 90s, 10m, 1h: its epochs "
            "are planned to fit [default: 10m]."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Plan file [default: DATA/plan.json]; `unet train DATA` reads "
            "DATA/plan.json, `unet train DATA --plan FILE` this one.",
        ),
    ] = None,
    depth: Annotated[
        int | None,
        typer.Option(help="Plan for a network of this many poolings [default: 4]."),
    ] = None,
    padding: Annotated[
        str | None,
        typer.Option(
            help=f"Plan for {' | '.join(names.PADDINGS)} padding (valid: the paper; the "
            "planned image size is then the input whose output the images or crops take) "
            "[default: same]."
        ),
    ] = None,
) -> None:
    """Fingerprint the data, time a training step and plan `unet train`; writes plan.json.

    A plan holds for the network depth and padding it was made for: after `unet plan
    DATA --padding valid`, `unet train DATA` trains that network; `unet train DATA
    --padding same` (or another --depth) plans anew.
    """
    from rich.console import Console

    from unet_lowered.io import atomic
    from unet_lowered.planning import plan as plan_mod
    from unet_lowered.planning.budget import parse_duration

    budget = plan_mod.DEFAULT_BUDGET_S if time_budget is None else parse_duration(time_budget)
    _check_plan_network(depth, padding)
    _check_plan_data(data, out)
    target = out if out is not None else data / plan_mod.PLAN_FILE
    with atomic.exclusive(target, "planning into"):  # two plans would time each other's steps
        network = {"depth": depth, "padding": padding}
        result = plan_mod.make_plan(data, budget, fixed=network, progress=sys.stderr.isatty())
        path = plan_mod.write_plan(result, target)
    console = Console()  # the result: on stdout, as check, prepare and evaluate print theirs
    console.print(plan_mod.fingerprint_table(result))
    console.print(plan_mod.plan_table(result))
    if Path(path).resolve() == (data / plan_mod.PLAN_FILE).resolve():
        typer.echo(f"wrote {path}; `unet train {data}` uses it (flags and --config override it)")
    else:
        typer.echo(f"wrote {path}; `unet train {data} --plan {path}` uses it")


def _check_plan_data(data: Path, out: Path | None) -> None:
    """``unet plan``'s DATA: a folder (``load_prepared``'s line), and without --out one
    that `unet prepare` wrote: source data never gains a file."""
    from unet_lowered.dataset import dataset_json

    _check_data_folder(data)
    if out is None and not (data / dataset_json.FILE).is_file():
        raise UnetError(
            f"{data}: not a folder `unet prepare` wrote (no {dataset_json.FILE}); `unet plan` "
            f"writes nothing into source data: pass --out FILE, or `unet prepare` it first"
        )


def _train_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """The settings `unet train` takes from its flags (None: not given), from its
    parameters (its ``locals()``, or Click's parse of the command line)."""
    return {
        "image_size": params["image_size"],
        "input_mode": None if params["crop"] is None else ("crop" if params["crop"] else "resize"),
        "clahe": params["clahe"],
        "invert_light": params["invert_light"],
        "val_fraction": params["val_fraction"],
        "seed": params["seed"],
        "epochs": params["epochs"],
        "batch_size": params["batch_size"],
        "loss": params["loss"],
        "optimizer": params["optimizer"],
        "learning_rate": params["learning_rate"],
        "schedule": params["schedule"],
        "ema": params["ema"],
        "patience": params["patience"],
        "progressive": params["progressive"],
        "precision": params["precision"],
        "base_filters": params["base_filters"],
        "depth": params["depth"],
        "padding": params["padding"],
        "batch_norm": params["batch_norm"],
        "dropout": params["dropout"],
        "flip_lr": params["flip_lr"],
        "flip_ud": params["flip_ud"],
        "rotate": params["rotate"],
        "scale": params["scale"],
        "shift": params["shift"],
        "elastic": params["elastic"],
        "intensity": params["intensity"],
        "foreground_crops": params["foreground_crops"],
        "zoom_out": params["zoom_out"],
        "frame_crop": params["frame_crop"],
        "opacity": params["opacity"],
        "lowres": params["lowres"],
        "stamps": params["stamps"],
        "overfit_batch": params["overfit_batch"],
        "time_budget": params["time_budget"],
        "distribute": params["distribute"],
    }


def _no_data(ctx: Any) -> None:
    """`unet train` with neither DATA nor --resume: a usage error, as a missing argument."""
    ctx.fail(
        "Missing argument 'data': the folder `unet prepare` wrote (or --resume, to continue "
        "the run in --out)"
    )  # raises Click's usage error (exit status 2)


@app.command("train", short_help="Train the U-Net on a prepared folder into a run folder.")
def train(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Argument(
            help="Prepared folder (from `unet prepare`); with --resume, only where the run's "
            "data is now, if it moved."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path(
        "runs/unet"
    ),
    config: Annotated[
        Path | None, typer.Option(help="YAML/JSON file of settings; flags override it.")
    ] = None,
    plan_file: Annotated[
        Path | None,
        typer.Option(
            "--plan",
            help="A plan to use instead of DATA/plan.json (e.g. `unet plan DATA --out FILE`), "
            "as it is: also one made for other data or another budget.",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last epoch.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    folds: Annotated[
        int | None,
        typer.Option(
            help="Train a K-fold cross-validation ensemble into --out (K runs under "
            "--out/folds; predict and evaluate average them) [default: one run].",
            min=2,
        ),
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            help="Training input size (square) [default: planned: the median longer side "
            "of the training images, at most 256, rounded down to a size the network takes "
            "(a multiple of 16 at depth 4); for crop-planned data the median shorter side, "
            "at most 256; with --padding valid that is the OUTPUT, the input larger: 224 px "
            "-> 396, output 212]."
        ),
    ] = None,
    crop: Annotated[
        bool | None,
        typer.Option(
            "--crop/--resize",
            help="Random crops of --image-size instead of resizing [default: planned: "
            "crops for large images with small structures, else resize].",
        ),
    ] = None,
    clahe: Annotated[
        bool | None,
        typer.Option(
            "--clahe/--no-clahe",
            help="CLAHE first [default: planned: off; the intensity augmentation applies CLAHE "
            "to 1 image in 4].",
        ),
    ] = None,
    invert_light: Annotated[
        bool | None,
        typer.Option(
            "--invert-light/--no-invert-light",
            help="Invert images whose background is light (median in the upper half of "
            "the range), so all show light objects on dark [default: planned: off; for data "
            "that mix both, as fluorescence and brightfield nuclei, the plan's reason names "
            "it, measured and not planned].",
        ),
    ] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Share of ids held out for validation [default: 0.15].")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for split, init, augmentation [default: 0].")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Epochs [default: planned to fit --time-budget, from a timed step]."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Batch size [default: planned: 4; 2 for small data or budgets]."),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            help=f"{' | '.join(names.LOSSES)}; aliases "
            + ", ".join(f"{a}={b}" for a, b in names.LOSS_ALIASES.items())
            + " [default: planned: bce+dice; where objects touch, the plan's reason names "
            "weighted-bce, measured and not planned]."
        ),
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(
            help=f"{' | '.join(names.OPTIMIZERS)} (sgd: momentum 0.99, the paper) [default: adam]."
        ),
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--lr", help="Learning rate [default: 1e-3 adam, 1e-2 sgd].")
    ] = None,
    ema: Annotated[
        float | None,
        typer.Option(
            help="Momentum of an exponential moving average of the weights, used for "
            "validation and the saved models (0.99 is usual; 0: off) [default: 0]."
        ),
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            help=f"{' | '.join(names.SCHEDULES)} (onecycle: warm-up over the first 10% of "
            "the steps, then cosine) [default: cosine]."
        ),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            help="Early stopping patience on val Dice [default: planned: a third of the epochs, "
            "at least 15].",
        ),
    ] = None,
    progressive: Annotated[
        float | None,
        typer.Option(
            help="Progressive resizing: this share of the epochs (the first) trains at half "
            "the image size (with --crop: half-size crops at native resolution), each such step "
            "a third to a half of a full-size one, and not validated; validation stays at full size "
            "[default: planned: 0.5 for whole images of 128 px or more, else 0]."
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help=f"{' | '.join(names.PRECISIONS)} (auto: bf16 on TensorFlow with a CPU that "
            "has AVX512-BF16/AMX, else float32) [default: auto]."
        ),
    ] = None,
    base_filters: Annotated[
        int | None, typer.Option(help="Filters at the first level; 64 = paper [default: 16].")
    ] = None,
    depth: Annotated[int | None, typer.Option(help="Number of poolings [default: 4].")] = None,
    padding: Annotated[
        str | None,
        typer.Option(help=f"{' | '.join(names.PADDINGS)} (valid: the paper) [default: same]."),
    ] = None,
    batch_norm: Annotated[
        bool | None,
        typer.Option(
            "--batch-norm/--no-batch-norm",
            help="Batch normalisation after every 3x3 convolution (not in the paper) "
            "[default: off].",
        ),
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option(
            help="Dropout at the end of the contracting path (0.5 is usual) [default: 0]."
        ),
    ] = None,
    flip_lr: Annotated[
        bool | None,
        typer.Option(
            "--flip-lr/--no-flip-lr",
            help="Left-right flips [default: planned: on where they keep the data's statistics].",
        ),
    ] = None,
    flip_ud: Annotated[
        bool | None,
        typer.Option(
            "--flip-ud/--no-flip-ud",
            help="Up-down flips [default: planned: on where they keep the data's statistics].",
        ),
    ] = None,
    rotate: Annotated[
        float | None,
        typer.Option(
            help="Max rotation, degrees [default: planned: 180 for rotation-free data, else 10]."
        ),
    ] = None,
    scale: Annotated[
        float | None, typer.Option(help="Max relative scale change [default: 0.2].")
    ] = None,
    shift: Annotated[
        float | None, typer.Option(help="Max shift, fraction of size [default: 0.08].")
    ] = None,
    elastic: Annotated[
        bool | None,
        typer.Option("--elastic/--no-elastic", help="Paper's elastic deformation [default: on]."),
    ] = None,
    intensity: Annotated[
        bool | None,
        typer.Option(
            "--intensity/--no-intensity",
            help="Brightness/contrast/gamma, CLAHE (1 in 4) and noise [default: on].",
        ),
    ] = None,
    foreground_crops: Annotated[
        float | None,
        typer.Option(
            help="With --crop: probability that a training crop is centred on a foreground "
            "pixel (nnU-Net's foreground oversampling) [default: planned: 0.33 for "
            "crop-trained runs whose crops are under half foreground, else 0]."
        ),
    ] = None,
    zoom_out: Annotated[
        float | None,
        typer.Option(
            help="Probability of a zoom-out into black/collimated borders [default: planned: 0.3 for radiograph-like data, else 0]."
        ),
    ] = None,
    frame_crop: Annotated[
        float | None,
        typer.Option(
            help="Probability of cutting off the top or bottom 10-30% [default: planned: 0.2 for radiograph-like data, else 0]."
        ),
    ] = None,
    opacity: Annotated[
        float | None,
        typer.Option(
            help="Probability of a dense opacity in the lung field, the mask unchanged: "
            "effusion-like or patchy inside the lungs, or one lung whited out past its "
            "outline [default: planned: 0.3 for radiograph-like data, else 0]."
        ),
    ] = None,
    lowres: Annotated[
        float | None,
        typer.Option(
            help="Probability of a 2-4x low-resolution round trip [default: planned: 0.2 for radiograph-like data, else 0]."
        ),
    ] = None,
    stamps: Annotated[
        float | None,
        typer.Option(
            help="Probability of burned-in text or a side marker [default: planned: 0.2 for radiograph-like data, else 0]."
        ),
    ] = None,
    overfit_batch: Annotated[
        bool | None,
        typer.Option(
            "--overfit-batch", help="Train and validate on one batch: shows the setup can learn."
        ),
    ] = None,
    time_budget: _TimeBudget = None,
    distribute: Annotated[
        str | None,
        typer.Option(
            help="none | data-parallel: split each batch (--batch-size is the global batch) "
            "over all devices: MirroredStrategy over the local GPUs on TensorFlow, "
            "keras.distribution.DataParallel on JAX (several hosts too) [default: none].",
        ),
    ] = None,
    coordinator: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of process 0, to train on several processes/hosts (JAX, with "
            "--distribute data-parallel) [default: $KERAS_DISTRIBUTION_JOB_ADDRESSES].",
        ),
    ] = None,
    num_processes: Annotated[
        int | None,
        typer.Option(
            help="Processes in a multi-host run [default: $KERAS_DISTRIBUTION_NUM_PROCESSES]."
        ),
    ] = None,
    process_id: Annotated[
        int | None,
        typer.Option(
            help="This process, 0..N-1; 0 writes the run folder "
            "[default: $KERAS_DISTRIBUTION_PROCESS_ID].",
        ),
    ] = None,
) -> None:
    """Train the U-Net on a prepared folder; writes model, config, history, metrics to --out.

    Settings not given by a flag or --config come from the data's plan (DATA/plan.json
    from `unet plan`, or planned now); RUN/config.json records where each came from.
    """
    from unet_lowered.training import config as config_mod
    from unet_lowered.training import train as train_mod

    overrides = _train_overrides(locals())
    from unet_lowered.training.distribute import Cluster

    cluster = Cluster(coordinator, num_processes, process_id)
    from unet_lowered.io import atomic
    from unet_lowered.training import folds as folds_mod

    with contextlib.ExitStack() as held:  # one writer per run folder (process 0)
        if (Cluster.from_env(cluster).process_id or 0) == 0:
            held.enter_context(atomic.exclusive(Path(out), "training into"))
        if resume:
            flag = {"learning_rate": "lr", "input_mode": "crop/--resize"}
            given = [
                f"--{flag.get(k, k.replace('_', '-'))}"
                for k, v in overrides.items()
                if v is not None
            ]
            given += ["--config"] * (config is not None) + ["--folds"] * bool(folds)
            given += ["--plan"] * (plan_file is not None)
            given += ["--overwrite"] * overwrite
            if given:
                raise UnetError(
                    "--resume continues a run with its own settings and data; drop "
                    + ", ".join(given)
                )
            if folds_mod.is_ensemble(out):
                if data is not None:
                    raise UnetError(
                        "--resume of a --folds ensemble reads the data it was trained on; drop DATA"
                    )
                metrics = folds_mod.train_folds(None, out, None, 0, resume=True)
            else:  # DATA: where the run's data is now, if it moved
                metrics = train_mod.train(data, out, resume=True, cluster=cluster)
        elif data is None:
            config_mod.resolve(config, overrides)  # refuses bad settings first
            _no_data(ctx)
        else:
            from unet_lowered.planning.plan import resolve_settings

            if not folds:  # an existing run folder fails before the planning work
                train_mod._check_run_folder(Path(out), overwrite)
            if Cluster.from_env(cluster).multi_process:  # before JAX computes (in planning)
                from unet_lowered.training.distribute import check_cluster_mode, initialize

                if folds:  # refused before joining: the others would wait for nothing
                    raise UnetError(
                        "--folds trains on one host; drop --coordinator/--num-processes"
                    )
                mode = config_mod.resolve(config, overrides).distribute
                check_cluster_mode(mode, Cluster.from_env(cluster))
                initialize(Cluster.from_env(cluster))  # waits for all: after the folder check
            cfg, provenance = resolve_settings(data, config, overrides, plan_file=plan_file)
            # The budget counts from the command's start, the Keras import included.
            provenance["started"] = min(provenance["started"], _STARTED[0])
            if provenance.get("note"):
                typer.echo(provenance["note"], err=True)
            if folds:
                metrics = folds_mod.train_folds(
                    data, out, cfg, folds, overwrite=overwrite, provenance=provenance
                )
            else:
                metrics = train_mod.train(
                    data, out, cfg, overwrite=overwrite, provenance=provenance, cluster=cluster
                )
    if metrics.get("writer") is False:
        typer.echo(f"process {metrics['process_id']} done; process 0 writes {out}")
        return
    if "folds" in metrics:
        typer.echo(
            f"{metrics['folds']}-fold ensemble: held-out validation Dice "
            f"{metrics['val_dice']:.4f} (folds: "
            + ", ".join(f"{d:.4f}" for d in metrics["fold_val_dice"])
            + f"; {metrics['train_time_s']:.0f} s); run folder: {out}"
        )
        return
    if metrics.get("val_dice") is None:  # stopped before the first validated epoch
        typer.echo(
            f"no validated epoch (model.keras is the last model; "
            f"{metrics['train_time_s']:.0f} s); run folder: {out}"
        )
        return
    from unet_lowered.io import runs
    from unet_lowered.training.train import val_dice_where

    run_config = runs.load_run(out, unfinished=True).config
    where = val_dice_where(run_config.input_mode, run_config.padding)
    typer.echo(
        f"best validation Dice {metrics['val_dice']:.4f} ({where}) at epoch "
        f"{metrics['best_epoch']} ({metrics['train_time_s']:.0f} s); run folder: {out}"
    )


@app.command("plot", short_help="Save loss/Dice curves, samples and worst cases as PNG.")
def plot(
    run: Annotated[Path, typer.Argument(help="Run folder written by `unet train`.")],
    samples: Annotated[int, typer.Option(help="Validation images in samples.png.")] = 4,
    worst: Annotated[int, typer.Option(help="Cases in worst.png (needs `unet evaluate`).")] = 4,
    eval_dir: Annotated[
        Path | None,
        typer.Option(
            "--eval",
            help="The `unet evaluate` output folder worst.png shows [default: RUN/eval].",
        ),
    ] = None,
) -> None:
    """Save loss/Dice curves, validation samples and the worst evaluated cases as PNG in RUN.

    samples.png shows masks as plain `unet predict` writes them; worst.png predicts with
    the settings the evaluation recorded (threshold, post-processing, ...), so each mask
    drawn is the one its Dice was computed on.
    """
    from unet_lowered.evaluation.plots import plot_run

    def note(line: str) -> None:
        typer.echo(line, err=True)

    for path in plot_run(run, samples=samples, worst=worst, note=note, eval_dir=eval_dir):
        typer.echo(f"wrote {path}")


# ---------------------------------------------------------------- predict, evaluate

_MODE_HELP = (
    "resize: predict at the training size and resize the probabilities back; tile: "
    "overlap-tile at the native resolution (large images, crop-trained runs); "
    "auto: tile for crop-trained runs, else resize."
)
_TTA_HELP = (
    f"With --tta: {', '.join(names.TTA_CHOICES)} (auto: the flips the run was trained "
    "with, dihedral if it also rotated by 90 degrees or more, an error if no flips; "
    "dihedral: flips + 90-degree rotations). A group other than auto turns --tta on."
)

# Prediction options shared by `predict` and `evaluate` (one definition, one help text).
_Mode = Annotated[str, typer.Option(help=_MODE_HELP)]
_Tta = Annotated[
    bool | None,
    typer.Option(
        "--tta/--no-tta",
        help="Test-time augmentation: average over flips (and turns) [default: what `unet "
        "train` chose on the validation split, in RUN/config.json].",
    ),
]
_TtaTransforms = Annotated[str, typer.Option(help=_TTA_HELP)]
_Threshold = Annotated[
    float | None,
    typer.Option(
        help="Foreground probability threshold, for one-class runs (a multi-class run takes "
        "each pixel's most likely class) [default: the run's, or the one `unet train` chose "
        "on validation for boundary data such as EM cells]."
    ),
]
_KeepLargest = Annotated[
    int | None,
    typer.Option(help="Keep the N largest objects; 0 keeps all [default: the run's choice]."),
]
_FillHoles = Annotated[
    bool | None,
    typer.Option(
        "--fill-holes/--no-fill-holes",
        help="Fill holes inside objects [default: the run's choice].",
    ),
]
_MinArea = Annotated[
    int | None,
    typer.Option(help="Remove objects under this many pixels [default: the run's choice]."),
]
_Watershed = Annotated[
    float | None,
    typer.Option(
        help="Cut objects apart at their necks along the watershed lines of the "
        "probabilities (cells between thin membranes, as in EM), keeping pieces joined where "
        "their shared boundary's mean probability reaches this merge level (1: never); 0: off; "
        "one-class runs only [default: the run's choice].",
    ),
]
_Postprocess = Annotated[
    bool,
    typer.Option(
        "--postprocess/--no-postprocess",
        help="Apply the post-processing `unet train` chose on the validation split (in "
        "RUN/config.json) to the steps not given above; --no-postprocess leaves them off.",
    ),
]
_Polarity = Annotated[
    str,
    typer.Option(
        help="auto: a gray X-ray whose mask is flagged `check` is predicted again with its "
        "gray scale inverted (a MONOCHROME1 film saved as PNG without its look-up table), "
        "and that mask is kept when it passes the flag (lung-like runs only); keep: images "
        "as stored; invert: invert every image.",
    ),
]
_Orientation = Annotated[
    str,
    typer.Option(
        help="auto: an image whose mask is still flagged `check` is predicted again turned "
        "180 degrees, then 90 each way (a film stored upside down or on its side), and the "
        "first turned mask that passes the flag is kept, turned back to the image (runs "
        "that record their training masks' shape only); with --polarity auto, the inverted "
        "image's turned views are tried last. A film read turned 180 degrees, or one that "
        "passes as stored with the network over twice as unsure as of its validation "
        "images, is also read mirrored top to bottom, and that view kept when it passes and "
        "the network is surer of it (runs whose training masks have the larger lung "
        "steadily on one side, or a class on one side; such multi-class runs also try the "
        "mirrored view last for a mask still flagged); keep: images as stored.",
    ),
]
_Overlap = Annotated[float, typer.Option(help="Tile overlap, fraction of the tile.")]
_BatchSize = Annotated[int, typer.Option(help="Images (resize) or tiles (tile) per network call.")]


def _predict_options(flags: dict):
    """PredictOptions from a command's flags (its ``locals()``): every flag named like a
    field of PredictOptions is taken (imported lazily: keeps --help fast)."""
    import dataclasses

    from unet_lowered.inference.predictor import PredictOptions

    names = {f.name for f in dataclasses.fields(PredictOptions)}
    return PredictOptions(**{k: v for k, v in flags.items() if k in names})


@app.command("predict", short_help="Segment images with a trained run; masks at their size.")
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder written by `unet train`.")],
    inputs: Annotated[
        list[str], typer.Argument(help="Image files, folders or glob patterns (quoted).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (not an input folder).")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Walk folders (and ** globs) recursively.")
    ] = False,
    mode: _Mode = "auto",
    tta: _Tta = None,
    tta_transforms: _TtaTransforms = "auto",
    threshold: _Threshold = None,
    keep_largest: _KeepLargest = None,
    fill_holes: _FillHoles = None,
    min_area: _MinArea = None,
    watershed: _Watershed = None,
    postprocess: _Postprocess = True,
    polarity: _Polarity = "auto",
    orientation: _Orientation = "auto",
    save_prob: Annotated[
        str | None,
        typer.Option(help="Also save probabilities: png (8-bit) or npy (float32)."),
    ] = None,
    overlay: Annotated[
        bool, typer.Option("--overlay", help="Also save <id>_overlay.png (tint + outline).")
    ] = False,
    overlap: _Overlap = 0.25,
    batch_size: _BatchSize = 4,
    keep_going: Annotated[
        bool,
        typer.Option(
            "--keep-going",
            help="Exit 0 even if some inputs failed (they are still reported and listed).",
        ),
    ] = False,
    max_pixels: Annotated[
        int, typer.Option(help="Refuse images with more pixels than this.")
    ] = 100_000_000,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Finish an interrupted run into the same --out with the same inputs and "
            "settings: inputs whose files are there are skipped [default: start over].",
        ),
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            help="local (this process) or ray: a pool of Ray actors, on this machine or a "
            "cluster (pip install 'unet-lowered[distributed]'); the same outputs.",
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="--engine ray: auto (the cluster `ray start` runs here) or HOST:PORT of its "
            "head [default: start a local Ray instance].",
        ),
    ] = None,
    actors: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="--engine ray: actors predicting at once, one CPU each [default: one per node].",
        ),
    ] = None,
) -> None:
    """Segment images with a trained run; masks at each image's original size.

    Writes OUT/<id>.png (0/255, or label values for multi-class runs),
    optional <id>_prob.png/.npy and <id>_overlay.png, and OUT/predictions.csv.
    Reads PNG (8/16-bit), JPEG, TIFF, BMP, GIF and DICOM, compressed or without preamble
    (pip install 'unet-lowered[dicom]'); several frames: the first, with a note.
    Unreadable files are reported and skipped; the others are still predicted, and the
    exit status is 1 at the end if any failed (0 with --keep-going, unless all failed).
    A killed run (even kill -9) leaves only complete files; run it again with --resume.
    --engine ray predicts the same files on a pool of Ray actors (a cluster, or this machine).
    Post-processing: the run's choice from training unless flags say otherwise (--no-postprocess).
    A flagged X-ray is tried again with its gray scale inverted (--polarity), then turned
    upside down and on either side (--orientation), then both; predictions.csv says which masks come
    from an inverted image (gray_scale) or a turned one (orientation).

    \b
    Example:
      unet predict runs/lungs scans/ --out masks/ --overlay
    """
    from unet_lowered import options as names
    from unet_lowered.inference.batch import exit_status, predict_files

    options = _predict_options(locals())
    settings = dict(
        recursive=recursive,
        save_prob=save_prob,
        save_overlay=overlay,
        progress=progress,
        resume=resume,
    )
    from unet_lowered.io import atomic

    ray = names.choose(engine, _ENGINES, "engine") == "ray"
    given = [f for f, v in (("--ray-address", ray_address), ("--actors", actors)) if v]
    if given and not ray:  # they would be ignored: the user meant the cluster
        verb = "apply" if len(given) > 1 else "applies"
        raise UnetError(f"{' and '.join(given)} {verb} to --engine ray; add it, or drop them")
    with atomic.exclusive(out, "predicting into"):  # two predicts would mix their files
        if ray:
            from unet_lowered.inference.ray_engine import predict_files_ray

            report = predict_files_ray(
                run, inputs, out, options, **settings, address=ray_address, actors=actors
            )
        else:
            report = predict_files(run, inputs, out, options, **settings)
    total = len(report.written) + len(report.failed)
    typer.echo(f"wrote {len(report.written)} mask(s) to {out} (table: {report.csv_path})")
    if report.failed:
        typer.echo(
            f"{len(report.failed)} of {total} inputs failed (listed above and in the table)",
            err=True,
        )
    code = exit_status(report, keep_going)
    if code:
        raise typer.Exit(code)


@app.command("evaluate", short_help="Score a run on images with masks (Dice, IoU, HD95).")
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by `unet train`.")],
    data: Annotated[
        Path, typer.Argument(help="Prepared folder, or any folder with images/ + masks/.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder [default: RUN/eval].")
    ] = None,
    split: Annotated[
        str,
        typer.Option(help="all, or only the run's val (or train) ids from RUN/split.json."),
    ] = "all",
    mode: _Mode = "auto",
    tta: _Tta = None,
    tta_transforms: _TtaTransforms = "auto",
    threshold: _Threshold = None,
    keep_largest: _KeepLargest = None,
    fill_holes: _FillHoles = None,
    min_area: _MinArea = None,
    watershed: _Watershed = None,
    postprocess: _Postprocess = True,
    polarity: _Polarity = "auto",
    orientation: _Orientation = "auto",
    overlap: _Overlap = 0.25,
    batch_size: _BatchSize = 4,
    progress: Annotated[bool, typer.Option(help="Show a progress bar and the table.")] = True,
) -> None:
    """Score a run on images with masks at their original size; write per_image.csv and summary.json.

    Predicts exactly as `unet predict` does (same modes, post-processing, --polarity and
    --orientation), then compares with the masks: Dice, IoU, precision, recall, HD95
    (pixels), foreground fractions. Both masks empty: Dice 1; exactly one empty: Dice 0 (HD95 infinite,
    left out of the HD95 statistics). Prints mean/median/std and the 5 worst ids.

    \b
    Example:
      unet evaluate runs/lungs data/jsrt --split val
    """
    from unet_lowered.evaluation.evaluate import evaluate_run
    from unet_lowered.io import atomic

    options = _predict_options(locals())
    folder = out if out is not None else run / "eval"
    with atomic.exclusive(folder, "evaluating into"):
        evaluate_run(run, data, out, options, split=split, progress=progress)
    typer.echo(f"wrote {folder / 'per_image.csv'} and {folder / 'summary.json'}")


# ---------------------------------------------------------------- synth, demo


@app.command("demo", short_help="The whole pipeline on synthetic chest X-rays, no data needed.")
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo folder.")] = Path("runs/demo"),
    count: Annotated[int, typer.Option(help="Synthetic training pairs.")] = 160,
    size: Annotated[int, typer.Option(help="Image size in pixels.")] = 128,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed for data and training.")] = 0,
    overwrite: Annotated[
        bool, typer.Option(help="Replace --out even if it is not an earlier demo's folder.")
    ] = False,
) -> None:
    """Whole pipeline on synthetic chest X-rays: synth, prepare, train, evaluate, predict, plot.

    Needs no data and no internet; takes about a minute on 2 CPU cores. Re-running replaces
    the previous demo folder.
    """
    from unet_lowered.demo.pipeline import DemoSettings, run_demo
    from unet_lowered.io import atomic

    settings = DemoSettings(count=count, size=size, epochs=epochs, seed=seed)
    with atomic.exclusive(out, "running the demo in"):  # a second demo would replace it
        run_demo(out, settings, overwrite=overwrite, echo=typer.echo)


@app.command("synth", short_help="Make synthetic chest X-rays with exact lung masks.")
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to create (Kaggle layout).")],
    count: Annotated[int, typer.Option(help="Training images, each with a lung mask.")] = 200,
    test_count: Annotated[int, typer.Option(help="Test images (no masks).")] = 20,
    size: Annotated[int, typer.Option(help="Side of the square images in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same files.")] = 0,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace OUT if it is a folder `unet synth` wrote, or an empty one."),
    ] = False,
    pathology: Annotated[
        str,
        typer.Option(
            help="Comma-separated: effusion, consolidation, white-out (the mask stays the "
            "whole lung field) and framing (zoomed out into borders, or bases cut off) "
            "[default: none]."
        ),
    ] = "",
    pathology_fraction: Annotated[
        float, typer.Option(help="Share of the images that get one of --pathology.")
    ] = 0.5,
) -> None:
    """Make a synthetic chest-X-ray data set with exact lung masks (no data or internet needed).

    Writes OUT/train_images/<id>/images/<id>.png, OUT/train_images/<id>/masks/<id>.png
    (0/255) and OUT/test_images/<id>/<id>.png, 8-bit gray: the layout `unet prepare` reads.
    With --pathology, images also show the shifts that break lung models on other
    hospitals' X-rays, for measuring robustness on data the project makes.
    """
    import time

    from unet_lowered.demo.synth import make_dataset
    from unet_lowered.io import atomic

    start = time.perf_counter()
    kinds = tuple(k.strip() for k in pathology.split(",") if k.strip())
    with atomic.exclusive(out, "writing a data set into"):
        path = make_dataset(
            out,
            count,
            test_count,
            size,
            seed,
            overwrite,
            kinds,
            pathology_fraction,
            progress=sys.stderr.isatty(),
        )
    ms = (time.perf_counter() - start) * 1000 / (count + test_count)
    typer.echo(
        f"wrote {count} training and {test_count} test images ({size}x{size}) to {path} "
        f"({ms:.1f} ms/image)"
    )


# ---------------------------------------------------------------- serve

_SERVE_PACKAGES = frozenset({"fastapi", "starlette", "uvicorn", "multipart", "python_multipart"})


@app.command("serve", short_help="Serve a trained run over HTTP: a web page and a JSON API.")
def serve(
    run: Annotated[Path, typer.Argument(help="Run folder written by `unet train`.")],
    host: Annotated[
        str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    workers: Annotated[
        int, typer.Option(help="Images predicted at the same time (inference threads).")
    ] = 1,
    queue: Annotated[
        int, typer.Option(help="Requests that may wait for a worker; beyond them: 503.")
    ] = 8,
    max_upload_mb: Annotated[
        float, typer.Option(help="Refuse uploads larger than this many MB (413).")
    ] = 64.0,
    max_pixels: Annotated[
        int, typer.Option(help="Refuse images with more pixels than this, from the header (413).")
    ] = 100_000_000,
    max_passes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Network passes (tiles x TTA views x looks at a flagged image) one request "
            "may cost; beyond it a 413 before decoding [default: 128 megapixels of network "
            "input, 7,812 passes of a 128x128 run].",
        ),
    ] = None,
    uploads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Uploads received or held at once; beyond them a 503 before the body is "
            "read [default: --workers + --queue + 4].",
        ),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            help="A Host name the server answers to besides the address it listens on (a "
            "proxy's name, any port; '*' allows any). Repeatable.",
        ),
    ] = None,
    mode: _Mode = "auto",
    tta: _Tta = None,
    tta_transforms: _TtaTransforms = "auto",
    threshold: _Threshold = None,
    keep_largest: _KeepLargest = None,
    fill_holes: _FillHoles = None,
    min_area: _MinArea = None,
    watershed: _Watershed = None,
    postprocess: _Postprocess = True,
    polarity: _Polarity = "auto",
    orientation: _Orientation = "auto",
    overlap: _Overlap = 0.25,
    batch_size: _BatchSize = 4,
) -> None:
    """Serve a trained run over HTTP: a web page at / and a JSON API.

    Loads the run once. POST /v1/segment takes an image in the multipart field `file`
    (PNG 8/16-bit, JPEG, TIFF, BMP, GIF, DICOM) and answers JSON figures, or with
    ?format=png the mask (identical to `unet predict`'s), ?format=overlay or ?format=prob.
    GET /v1/model gives the run's facts, GET /healthz the status. The prediction options
    are `unet predict`'s and the defaults of every request (steps not given: the run's
    chosen post-processing); a request's query (threshold, keep_largest, fill_holes,
    min_area, watershed, postprocess, polarity, orientation, tta, tta_transforms, mode)
    overrides them.

    \b
    Examples:
      unet serve runs/lungs                   # then open http://127.0.0.1:8000
      unet serve runs/lungs --keep-largest 2  # overrides the run's choice
    """
    try:
        from unet_lowered.serve.app import ServeSettings, serve_run
    except ImportError as e:
        if (e.name or "").split(".")[0] not in _SERVE_PACKAGES:
            raise
        raise UnetError(
            f"unet serve needs FastAPI and uvicorn ({e.name} is not installed); "
            "install them with: pip install 'unet-lowered[serve]'"
        ) from None

    options = _predict_options(locals())
    settings = ServeSettings(
        workers=workers,
        queue=queue,
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        max_passes=max_passes,
        uploads=uploads,
        allowed_hosts=tuple(allow_host or ()),
        options=options,
    )
    serve_run(run, settings, host=host, port=port, echo=typer.echo)


_KERAS_COMMANDS = frozenset(
    {"plan", "train", "evaluate", "predict", "plot", "export", "model-info", "demo", "serve"}
)
"""The commands that load Keras: imported first, with TensorFlow's start-up notices hidden."""


def _import_keras_quietly() -> None:
    """Import Keras and its backend with file descriptor 2 silenced.

    TensorFlow's C++ start-up notices (absl, oneDNN) ignore ``TF_CPP_MIN_LOG_LEVEL``; they
    are noise for a CLI user. If the import fails, what it printed is shown with the error.
    """
    import importlib.util
    import tempfile

    backend = os.environ.get("KERAS_BACKEND")
    if backend and backend not in ("tensorflow", "jax", "torch"):  # Keras: a traceback
        raise UnetError(
            f"KERAS_BACKEND={backend!r} is not a backend unet-lowered runs on; set it to "
            "tensorflow (the default), jax or torch, in lower case, or unset it"
        )
    if "keras" in sys.modules:
        return
    config = _keras_json()
    wanted = backend or _keras_json_backend(config)
    if wanted in ("jax", "torch") and importlib.util.find_spec(wanted) is None:
        where = "KERAS_BACKEND" if backend else f"the backend in {config}"
        raise UnetError(
            f"{where} is {wanted}, which is not installed; install it with: pip install "
            "'unet-lowered[backends]', or use tensorflow (the default)"
        )
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras

            # TensorFlow too where it is installed: on JAX and torch Keras still imports
            # it later (tf.data), and its notices would come then.
            installed = importlib.util.find_spec("tensorflow") is not None
            if installed or keras.backend.backend() == "tensorflow":
                import tensorflow  # noqa: F401
        except KeyboardInterrupt:  # Ctrl-C: the start-up notices are still noise
            raise
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _command(name: str | None) -> Any:
    """The Click command of ``unet NAME``, or None."""
    group = typer.main.get_command(app)
    if name is None:
        return None
    return group.get_command(group.context_class(group), name)  # type: ignore[attr-defined]


def _context(command: str, args: list[str], resilient: bool = False) -> Any:
    """The command's Click context with ``args`` parsed (defaults filled in), without
    running it; ``resilient``: no usage error, as Click's own completion parses. The
    commands' options have no callbacks, so parsing does nothing else."""
    sub = _command(command)
    return sub.make_context(
        f"unet {command}",
        list(args),
        resilient_parsing=resilient,
        help_option_names=_HELP_OPTIONS,
    )


def _parsed(command: str, args: list[str], resilient: bool = False) -> dict[str, Any]:
    """A command's parameters parsed from ``args`` (see :func:`_context`); {} for no command."""
    if _command(command) is None:
        return {}
    with _context(command, args, resilient) as ctx:
        return dict(ctx.params)


_YES_NO = frozenset({"yes", "no", "y", "n", "true", "false", "on", "off", "1", "0"})
"""Values written after an on/off flag, which takes none (``--flip-lr yes``)."""


def _after_flag(sub: Any, args: list[str], taken: Any) -> tuple[str, str, str] | None:
    """The first value that ``taken(value)`` accepts written right after an on/off flag of
    command ``sub``: ``(flag, value, what to say)``, or None."""
    flags = {
        name: p
        for p in sub.params
        if getattr(p, "is_flag", False)
        for name in (*p.opts, *p.secondary_opts)
    }
    for flag, value in itertools.pairwise(args):
        if flag == "--":
            return None
        if flag in flags and taken(value):
            option = flags[flag]
            on = next((o for o in option.opts if o.startswith("--")), option.opts[0])
            off = option.secondary_opts[0] if option.secondary_opts else "leave it out"
            return flag, value, f"{flag} is an on/off flag and takes no value; write {on} or {off}"
    return None


def _check_usage(command: str, args: list[str]) -> None:
    """Refuse at once, not after the seconds of the Keras import, what needs no model: a
    mistyped option or a missing argument (Click's usage errors), a yes/no after an on/off
    flag, and (:data:`_BEFORE_IMPORT`) a missing input path or an unknown option value,
    each with the line the command itself gives."""
    sub = _command(command)
    if sub is None:
        return

    def yes_no(value: str) -> bool:  # not a file that happens to be called "yes"
        return value.lower() in _YES_NO and not os.path.lexists(value)

    found = _after_flag(sub, args, yes_no)
    if found is not None:  # Click reads it as an argument, or an extra one
        flag, value, said = found
        sub.context_class(sub, info_name=f"unet {command}").fail(f"{value!r} after {flag}: {said}")
    with _context(command, args) as ctx:
        check = _BEFORE_IMPORT.get(command)
        if check is not None:
            check(ctx.params, ctx)


# ---------------------------------------------------------------- checks before the import
# Each gives the line the command (the library) gives later, only sooner: the paths and
# option values they check need no model. The library's own checks stay where they are.


def _check_data_folder(data: Path) -> None:
    """A DATA that is no folder: ``load_prepared``'s line (it also puts back a folder a
    killed `unet prepare --overwrite` left aside, and then reads it)."""
    if not Path(data).is_dir():
        from unet_lowered.dataset.pairs import load_prepared

        load_prepared(data)


def _check_run_exists(run: Path) -> None:
    """A RUN that does not exist: ``load_run``'s line."""
    if not Path(run).exists():
        from unet_lowered.io.runs import load_run

        load_run(run)


def _check_choices(params: dict[str, Any], choices: tuple[tuple[str, tuple, str], ...]) -> None:
    for key, allowed, flag in choices:
        if params.get(key) is not None:
            names.choose(params[key], allowed, flag)


_PREDICT_CHOICES = (  # in the order PredictOptions.validate checks them
    ("mode", names.PREDICT_MODES, "mode"),
    ("tta_transforms", names.TTA_CHOICES, "tta-transforms"),
    ("polarity", names.POLARITIES, "polarity"),
    ("orientation", names.ORIENTATIONS, "orientation"),
)

_ENGINES = ("local", "ray")


def _before_train(params: dict[str, Any], ctx: Any) -> None:
    if params["resume"]:  # refuses flags itself, and reads the run's own settings
        return
    from unet_lowered.training import config as config_mod

    config_mod.resolve(params["config"], _train_overrides(params))  # as resolve_settings
    if params["data"] is None:
        _no_data(ctx)
    _check_data_folder(params["data"])
    plan = params["plan_file"]
    if plan is not None and not Path(plan).is_file():  # resolve_settings' line, sooner
        raise UnetError(f"{plan}: no such plan file; make one with `unet plan DATA --out {plan}`")


def _check_plan_network(depth: int | None, padding: str | None) -> None:
    """`unet plan --depth/--padding`: checked as `unet train` checks them."""
    network = {k: v for k, v in (("depth", depth), ("padding", padding)) if v is not None}
    if network:
        from unet_lowered.training import config as config_mod

        config_mod.resolve(None, network)


def _before_plan(params: dict[str, Any], ctx: Any) -> None:
    _check_plan_network(params["depth"], params["padding"])
    if params["time_budget"] is not None:
        from unet_lowered.planning.budget import parse_duration

        parse_duration(params["time_budget"])
    _check_plan_data(params["data"], params["out"])


def _before_predict(params: dict[str, Any], ctx: Any) -> None:
    names.choose(params["engine"], _ENGINES, "engine")
    _check_choices(params, _PREDICT_CHOICES)
    if params["save_prob"] is not None:
        names.choose(params["save_prob"], names.PROB_FORMATS, "save-prob")
    import glob

    for raw in params["inputs"]:  # as inference.batch.collect_inputs
        path = Path(raw)
        if not path.is_file() and not path.is_dir() and not glob.has_magic(str(raw)):
            raise UnetError(f"{raw}: no such file or folder; check the path")
    _check_run_exists(params["run"])


def _before_evaluate(params: dict[str, Any], ctx: Any) -> None:
    _check_choices(params, _PREDICT_CHOICES)
    names.choose(params["split"], names.EVAL_SPLITS, "split")
    _check_run_exists(params["run"])
    _check_data_folder(params["data"])


def _before_serve(params: dict[str, Any], ctx: Any) -> None:
    _check_choices(params, _PREDICT_CHOICES)
    _check_run_exists(params["run"])


def _before_plot(params: dict[str, Any], ctx: Any) -> None:
    _check_run_exists(params["run"])


def _before_export(params: dict[str, Any], ctx: Any) -> None:
    names.choose(params["format"], names.EXPORT_FORMATS, "format")
    model = Path(params["model"])
    if not model.is_dir() and model.suffix != ".keras":  # as inference.export
        raise UnetError(f"{model}: not a .keras file or run folder; pass RUN or RUN/model.keras")
    if not model.exists():
        from unet_lowered.io.runs import load_model

        load_model(model)  # its line for a missing file, before it imports Keras


def _before_model_info(params: dict[str, Any], ctx: Any) -> None:
    names.choose(params["padding"], names.PADDINGS, "padding")


_BEFORE_IMPORT = {
    "train": _before_train,
    "plan": _before_plan,
    "predict": _before_predict,
    "evaluate": _before_evaluate,
    "serve": _before_serve,
    "plot": _before_plot,
    "export": _before_export,
    "model-info": _before_model_info,
}
"""The checks :func:`_check_usage` runs before the Keras import, by command."""


def _keras_json() -> str:
    """Keras' own config file, found as Keras finds it: ``$KERAS_HOME/keras.json``, else
    ``~/.keras/keras.json`` (``/tmp/.keras`` when the home folder is not writable)."""
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return os.path.join(home, "keras.json")


def _keras_json_backend(config: str) -> str | None:
    """The backend ``config`` names, which Keras uses when ``KERAS_BACKEND`` is unset."""
    import json

    try:
        with open(config) as f:
            value = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


_RESUME_HINTS = {
    "predict": "finish it with the same command and --resume",  # batch.py said how far
}


def _is_out_of_memory(error: BaseException) -> bool:
    """TensorFlow's ResourceExhaustedError, or OpenCV's "Insufficient memory" (a
    ``cv2.error`` from its allocator, e.g. resizing to a huge size)."""
    if type(error).__name__ == "ResourceExhaustedError":
        return True
    return type(error).__module__ == "cv2" and "Insufficient memory" in str(error)


def _out_of_memory(command: str | None, error: BaseException) -> str:
    """The one line for a command that ran out of memory (a traceback before)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    what = lines[0][:160] if lines else type(error).__name__
    if type(error).__module__ == "cv2":  # "OpenCV(5.1.0) <file>: error: (-4:Insufficient
        # memory) Failed to allocate N bytes in function '...'": keep the middle
        found = re.search(r"Insufficient memory\) (.+?)(?: in function|$)", str(error))
        what = f"OpenCV: {found.group(1)}" if found else what
    advice = {
        "train": "lower --batch-size or --image-size (a --resume run keeps its own)",
        "predict": "lower --batch-size or --max-pixels, or predict fewer images at once",
        "evaluate": "lower --batch-size",  # only flags the command has
        "serve": "lower --workers, or send smaller images",
    }.get(command or "", "free memory or use smaller inputs")
    return f"out of memory ({what}); {advice}"


def _interrupted(command: str | None, args: list[str], real: bool) -> None:
    """The one line for Ctrl-C, then exit 130 (128 + SIGINT, as shells report it).

    ``real``: the ``unet`` process itself (not :func:`main` called by a program), where a
    stopped ``train`` ends by ``os._exit``: TensorFlow's threads could otherwise abort the
    interpreter's shutdown ("terminate called without an active exception", status 134).
    """
    if command == "serve":  # writes nothing: Ctrl-C is how it is stopped
        typer.echo("interrupted: the server stopped", err=True)
        sys.exit(130)
    hint = _RESUME_HINTS.get(command or "", "run it again")
    if command == "train":
        hint = _train_hint(args)
    typer.echo(
        f"interrupted: outputs already finished are kept, the one being written is not; {hint}",
        err=True,
    )
    if real and command == "train":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(130)


def _train_hint(args: list[str]) -> str:
    """How to go on with an interrupted ``unet train``: ``--resume`` naming its run folder,
    or ``--overwrite`` when no epoch finished (there is nothing to resume)."""
    from unet_lowered.io import runs
    from unet_lowered.training.folds import is_ensemble

    out = _parsed("train", args[1:], resilient=True).get("out")
    folder = Path(out) if out is not None else Path(".")
    if not (folder / runs.LAST_FILE).is_file() and not is_ensemble(folder):
        return f"no epoch finished, so there is nothing to resume; start it again with --overwrite --out {out}"
    return f"continue it with `unet train --resume --out {out}`"


def _catch_sigint() -> list[bool]:
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered: one raised inside
    a garbage-collection callback (JAX registers one, and Keras imports it) is discarded
    by Python, and the flag lets :func:`main` notice it. Main thread only."""
    hit = [False]

    def on_sigint(signum: int, frame: Any) -> None:
        hit[0] = True
        raise KeyboardInterrupt

    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_sigint)
    return hit


_SOCKET_COMMANDS = frozenset({"serve", "train", "predict"})
"""Commands that write to sockets (the server's clients; JAX's peers in a multi-process
run; a Ray cluster): a closed one must stay an error they handle, not end the process."""

_STARTED = [float("inf")]
"""``time.perf_counter()`` when :func:`main` began (a time budget counts from it)."""


def _usage_line(error: Any, command: str | None, args: list[str]) -> str:
    """Click's usage error in one line, naming the help of the command it is about (a
    missing option value has no context in Click: `unet --help` was named)."""
    text = error.format_message()
    sub = _command(command)
    where = getattr(getattr(error, "ctx", None), "command_path", None)
    if not where or (where == "unet" and sub is not None):
        where = f"unet {command}" if sub is not None else "unet"
    extra = re.match(r"Got unexpected extra arguments? ?(?:\(s\))? \((.*)\)$", text)
    if extra and sub is not None:  # `--strict please`: a value for an on/off flag
        found = _after_flag(sub, args[1:], lambda value: value in extra.group(1).split())
        if found is not None:
            text += f": {found[2]}"
    return f"{text} (see `{where} --help`)"


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and exit status 1, Ctrl-C one
    line and exit status 130."""
    import time

    _STARTED[0] = time.perf_counter()
    for stream in (sys.stdout, sys.stderr):  # a name the terminal's encoding cannot show
        with contextlib.suppress(AttributeError, ValueError):  # (PYTHONIOENCODING=ascii)
            stream.reconfigure(errors="backslashreplace")  # is escaped, not a traceback
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else None
    if argv is None and command not in _SOCKET_COMMANDS and hasattr(signal, "SIGPIPE"):
        # `unet evaluate ... | head -1`: end quietly as Unix tools do (status 141), not with
        # Click's silent status 1 (read as a user error). Not where sockets are written.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    hit = _catch_sigint()
    try:
        if not any(a in _HELP_OPTIONS for a in args):
            _check_usage(command, args[1:])  # a typo is refused before the import's seconds
            if command in _KERAS_COMMANDS:
                _import_keras_quietly()
        if hit[0]:  # pressed during the import, and swallowed there
            raise KeyboardInterrupt
        code = app(args=argv, prog_name="unet", standalone_mode=False)
    except UnetError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except MemoryError as e:  # NumPy's allocation errors are MemoryErrors too
        typer.echo(f"error: {_out_of_memory(command, e)}", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, typer.Abort):
        _interrupted(command, args, argv is None)
    except typer.TyperException as e:  # Click's usage errors (typer's own copy of Click)
        if type(e).__name__ == "NoArgsIsHelpError":  # `unet` alone: the help, as before
            typer.echo(e.format_message(), err=True)
        else:  # a bad option or argument: one line, as the errors of the commands
            typer.echo(f"error: {_usage_line(e, command, args)}", err=True)
        sys.exit(e.exit_code)
    except Exception as e:  # last: only out of memory (TensorFlow's, OpenCV's) is caught here
        if not _is_out_of_memory(e):
            raise
        typer.echo(f"error: {_out_of_memory(command, e)}", err=True)
        sys.exit(1)
    if code == 130:  # Click turned a KeyboardInterrupt into its exit status, silently
        _interrupted(command, args, argv is None)
    sys.exit(code if isinstance(code, int) else 0)  # as Click's standalone mode ends


__all__ = ["Path", "app", "main"]
