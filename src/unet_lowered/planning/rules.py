"""The planning rules: a fingerprint (and a measured step time) in, settings out.

Each rule is a small pure function returning :class:`Planned` values, one line of
reason each; :func:`plan_settings` chains them. Where a rule follows nnU-Net
(Isensee et al., Nature Methods 18, 2021; ``ExperimentPlanner`` of nnU-Net v1/v2)
or the U-Net paper (Ronneberger et al., MICCAI 2015), its docstring says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from unet_lowered.errors import UnetError
from unet_lowered.evaluation.choose import BOUNDARY_TOUCHING
from unet_lowered.model import half_size, output_size, resize_input_size
from unet_lowered.planning.fingerprint import Fingerprint

RESIZE_CAP = 256
"""Largest side trained by resizing (the ``--image-size auto`` cap of ``unet train``)."""

PATCH_CAP = 256
"""Largest random-crop patch: on a CPU a step's cost grows with the patch area."""

SMALL_OBJECT_FRACTION = 0.01
"""Objects smaller than this share of their image (median) are "small structures"."""

TOUCHING_FRACTION = 0.1
"""Share of objects separated by thin gaps from which the loss rule's reason points to
the border-weighted loss (not planned: see :func:`loss_rule`)."""

DATASET_SHARE = 0.05
"""nnU-Net: one batch covers at most 5% of the data set's pixels ..."""

MIN_BATCH = 2
"""... and holds at least 2 samples (nnU-Net's minimum batch size)."""

DEFAULT_BATCH = 4
"""The measured best for the chest X-rays (twice the updates of batch 8 in the same time)."""

MIN_UPDATES = 1000
"""Below this many updates in the budget at batch 4, batch 2 doubles them."""

MAX_EPOCHS = 300
"""Upper bound on planned epochs (early stopping usually ends tiny data sets sooner)."""

BUDGET_SHARE = 0.9
"""Share of the time budget planned for ``fit``; the rest covers planning, the cache,
the TTA and post-processing choice on validation and a slower epoch than measured.
With the step timed at the training precision, ``fit`` took 0.86-0.91 of its planned
time on DSB2018 and ISBI 2012 (2026-12-03) and everything else about 35 s of 600, so
0.8 left a quarter of the budget unused; the
:class:`~unet_lowered.planning.callbacks.TimeBudget` callback stops a slower run inside
the budget. Planning short budgets (under 200 s) from what is left after 20 s of
start-up instead, so that their schedule ends inside the budget, scored lower: on 60
synthetic 128-px images at 40 s, 13-14 complete epochs gave validation Dice 0.962-0.967
against 0.970 for 24-25 planned epochs cut at 17 by the budget (2026-12-06, two rounds,
interleaved; not kept)."""

EPOCH_OVERHEAD_S = 0.5
"""Per-epoch cost besides the steps: checkpoint files, history, callbacks."""

PROGRESSIVE = 0.5
"""Share of the epochs trained at half size (progressive resizing) for whole images."""

MIN_PROGRESSIVE_SIZE = 128
"""Progressive resizing only from this training size up (half of it: 64 px and more)."""

HALF_SIZE_STEP = 0.35
"""A training step at half the size costs this share of a full-size one. From JSRT's
history.csv (112 vs 224 px, batch 4, 43 steps an epoch): 3.7 s against 8.3 s an epoch,
of which about 1.3 s in both is the full-size validation and the checkpoints, so the
steps take about 2.4 s against 7.0 s (AMD EPYC). Used only where the half-size step is
not measured: :func:`plan_settings` measures it whenever it can change the epochs (on
an Intel Xeon with AMX it came out at about 0.5, 2026-12-05)."""

WHOLE_IMAGE_SAMPLES = 10200
"""With progressive resizing, whole-image training stops after about this many samples
(60 epochs of JSRT's 170 training images) even when the budget allows more. Measured on
JSRT side by side (``benchmarks/time_to_accuracy.py``, ``benchmarks/RESULTS.md``,
2026-12-04 02:36): 60 such epochs reached validation Dice 0.9800 in 445 s of fit and
came within 0.002 of the full-size plan's best (0.9785, 49 epochs, 560 s) at 178 s
against its 367 s (0.49x; 0.66x and 0.58x in runs at 03:33 and 06:30 against full-size
plans of 41 and 33 epochs); 70 epochs ended level (0.9801) in 515 s and got there at
191 s (0.52x); 35 epochs (the first cap) stopped at 0.9771."""


@dataclass(frozen=True)
class Planned:
    """A planned value and the one-line reason for it."""

    value: Any
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason}


def input_rule(fp: Fingerprint, depth: int = 4, padding: str = "same") -> dict[str, Planned]:
    """Resize whole images, or train on random crops at native resolution.

    nnU-Net trains at the data's median resolution with a patch of at most the median
    image shape. Here (the patch from the median image, so one small image does not
    shrink it for all; images smaller than the patch are mirror-padded): images no larger than :data:`RESIZE_CAP` are trained whole at
    their own size; larger images with small structures (median object under
    :data:`SMALL_OBJECT_FRACTION` of the image: nuclei, EM cells) are cropped at
    native resolution, since resizing would thin their gaps and membranes below a
    pixel; larger images of whole organs are resized to the cap (the structure stays
    many pixels wide). Crop-trained runs predict by overlap-tiling (``--mode auto``).
    With ``valid`` padding the size is the network's output and the input returned is
    larger (:func:`~unet_lowered.model.resize_input_size`): the whole image or the
    crop's targets take it, the rest of the input is their context.
    """
    longer, shorter = fp.sizes["median_longer"], min(fp.sizes["median_hw"])
    largest = max(fp.sizes["max_hw"])
    small = fp.object_area["median_fraction"] < SMALL_OBJECT_FRACTION
    diameter = fp.object_area["median_diameter"]
    if largest > RESIZE_CAP and small:
        # valid padding: the patch is the crop's OUTPUT (its targets), the input larger
        patch = resize_input_size(min(shorter, PATCH_CAP), depth, padding)
        size_why = (
            f"patch {patch} px: the median image's shorter side ({shorter}) capped at "
            f"{PATCH_CAP} for CPU time"
            if padding == "same"
            else f"patch {patch} px, output {output_size(patch, depth, padding)} px (valid "
            f"padding): the median image's shorter side ({shorter}) capped at {PATCH_CAP} for "
            "CPU time is the output, rounded down to one the network gives, and the input "
            "holds its context"
        )
        return {
            "input_mode": Planned(
                "crop",
                f"images up to {largest} px with small objects (median {diameter:.0f} px, "
                f"{fp.object_area['median_fraction']:.2%} of an image): random crops at native "
                "resolution keep thin gaps and membranes",
            ),
            "image_size": Planned(
                patch,
                f"{size_why}; {patch / max(diameter, 1):.0f} object diameters of context "
                "(smaller images are mirror-padded to it)",
            ),
        }
    target = min(longer, RESIZE_CAP)
    size = resize_input_size(target, depth, padding)  # valid padding: output ~ target
    out = output_size(size, depth, padding)
    own = "at its own size" if out == longer else f"resized to {out} px"
    why = (
        f"median image {longer} px: trained whole {own}"
        if longer <= RESIZE_CAP
        else f"whole-organ objects ({fp.object_area['median_fraction']:.1%} of an image) in "
        f"{longer} px images: resized to {RESIZE_CAP}, the structure stays many pixels wide"
    )
    h, w = fp.sizes["median_hw"]
    if max(h, w) > 1.25 * min(h, w):  # the network's input is square
        why += f"; the median image is {w}x{h}, so images are stretched to a square"
    elif fp.sizes["spread"] > 1.5:
        why += f"; images of other sizes (up to {largest} px) are resized to it"
    return {
        "input_mode": Planned("resize", why),
        "image_size": Planned(
            size,
            f"{size} px: the median longer side, at most {RESIZE_CAP}, "
            "rounded down to a size the network takes"
            if padding == "same"
            else f"{size} px: the input whose valid-padding output is the median longer side, "
            f"at most {RESIZE_CAP}, rounded down to an output the network gives (images "
            "are resized to the output and mirror-padded to the input)",
        ),
    }


def inference_rule(input_mode: str) -> Planned:
    """The prediction mode that matches training: tiles for crops, resizing otherwise."""
    if input_mode == "crop":
        return Planned("tile", "trained on native-resolution crops: predict by overlap-tiling")
    return Planned("resize", "trained on resized whole images: predict at the training size")


def normalisation_rule(fp: Fingerprint) -> dict[str, Planned]:
    """Per-image scaling and standardisation, no CLAHE.

    nnU-Net z-scores every non-CT image by its own statistics; CT-like absolute
    intensities do not survive in 8/16-bit PNG exports, so per-image it is (the
    network's input contract, :mod:`unet_lowered.preprocess`). CLAHE stays off: the
    intensity augmentation already applies it to one image in four.
    """
    fg, bg = fp.intensity["foreground"], fp.intensity["background"]
    contrast = fp.intensity["contrast"]
    if fg and bg:
        detail = (
            f" (foreground mean {fg['mean']:.2f}, background {bg['mean']:.2f}, contrast {contrast})"
        )
    else:  # masks all empty or all foreground: nothing to compare
        detail = " (no foreground and background to compare in the masks)"
    colour = (
        "colour" if fp.channels == 3 else ("gray stored as RGB" if fp.gray_as_rgb > 0.5 else "gray")
    )
    return {
        "normalisation": Planned(
            "per-image min-max, then zero mean / unit variance",
            f"{fp.bit_depth}-bit {colour} images{detail}: "
            "intensities are relative, so each image is standardised on its own",
        ),
        "clahe": Planned(False, "off: the intensity augmentation applies CLAHE to 1 image in 4"),
    }


MIXED_POLARITY = 0.05
"""Both polarities are present when each holds at least this share (and 2) of the
sampled images ..."""

POLARITY_AGREEMENT = 0.95
"""... and ``--invert-light`` could serve them when the image's median tells the
polarity of at least this share."""


def polarity_rule(fp: Fingerprint) -> Planned:
    """Light-background images are not inverted; the reason says when they could be.

    DSB2018 holds fluorescence images (light nuclei on black) beside brightfield and
    stained tissue (dark nuclei on a light background). ``--invert-light`` inverts the
    images whose median says their background is light
    (:func:`unet_lowered.preprocess.light_background`), so all show light objects on
    dark. It was the plan for data that mix both polarities (each in at least
    :data:`MIXED_POLARITY` of the sampled images, the median right on at least
    :data:`POLARITY_AGREEMENT`) until measured: on DSB2018 side by side at 50 epochs it
    lowered the validation Dice from 0.8720 to 0.8639, the two large brightfield images
    losing 0.16-0.25 (``benchmarks/RESULTS.md``). A network's first convolution can
    learn either sign, so the inversion buys little sharing and takes away what tells
    brightfield from fluorescence. It stays an option, one pair of runs being all the
    evidence, and the reason names it where it would apply.
    """
    pol = fp.polarity
    if not pol:
        return Planned(False, "off: the fingerprint predates the polarity check")
    dark, light, agree = pol["dark_objects"], pol["light_objects"], pol["median_agrees"]
    n = dark + light
    counts = f"{dark} of {n} sampled images show dark objects on a light background"
    floor = max(2, math.ceil(MIXED_POLARITY * n))
    if n == 0 or min(dark, light) < floor:
        return Planned(False, f"off: {counts} (one polarity)")
    if agree < POLARITY_AGREEMENT * n:
        return Planned(
            False,
            f"off: {counts}, and the image's median tells only {agree} of {n} apart",
        )
    return Planned(
        False,
        f"off: {counts} and the image's median tells {agree} of {n} apart, so "
        "--invert-light could show all as light on dark; not planned: it lowered "
        "DSB2018's validation Dice (0.8720 -> 0.8639 side by side)",
    )


def augmentation_rule(fp: Fingerprint, input_mode: str) -> dict[str, Planned]:
    """Flips and rotations in training (and as test-time augmentation) when they keep
    the data's statistics.

    nnU-Net mirrors along every axis and rotates freely by default; the U-Net paper
    augments EM slices with rotations. Chest X-rays have a fixed anatomy (the heart
    on the patient's left), so only the transforms the fingerprint finds harmless are
    used: the whole-image layout test for resized images, the texture test for
    random crops (which show local structure, not the layout). A free 90-degree
    symmetry becomes rotations by any angle (``rotate`` 180).
    """
    test = "layout" if input_mode == "resize" else "texture"
    sym = fp.symmetry[test]
    out: dict[str, Planned] = {}
    for name in ("flip_lr", "flip_ud"):
        kept = sym[name]["kept"]
        what = "left-right" if name == "flip_lr" else "up-down"
        if kept is None:
            out[name] = Planned(False, f"{what} flips off: too few images to test them")
        else:
            out[name] = Planned(
                bool(kept),
                f"{what} flips {'keep' if kept else 'change'} the {test} statistics "
                f"({_evidence(sym[name])})",
            )
    rot = sym["rot90"]["kept"]
    if rot and out["flip_lr"].value and out["flip_ud"].value:
        out["rotate"] = Planned(
            180.0,
            f"90-degree turns keep the {test} statistics ({_evidence(sym['rot90'])}): "
            "rotations by any angle",
        )
        tta = "dihedral"
    else:
        why = (
            "too few images to test turns"
            if rot is None
            else (
                f"90-degree turns change the {test} statistics ({_evidence(sym['rot90'])})"
                if not rot
                else "turns kept but not both flips"
            )
        )
        out["rotate"] = Planned(10.0, f"small rotations only (±10°): {why}")
        lr, ud = out["flip_lr"].value, out["flip_ud"].value
        tta = "flips" if lr and ud else "lr" if lr else "ud" if ud else None
    out["tta"] = Planned(
        tta,
        "test-time augmentation over the training symmetries "
        + (
            "(a candidate `unet train` tries on validation; kept, predict applies it)"
            if tta
            else "(none: no flips kept)"
        ),
    )
    return out


CROSS_SITE = {"zoom_out": 0.3, "frame_crop": 0.2, "opacity": 0.3, "lowres": 0.2, "stamps": 0.2}
"""The cross-site augmentation probabilities planned for radiograph-like data, as
measured in ``benchmarks/RESULTS.md`` (2026-12-02, issue 12)."""


def cross_site_rule(fp: Fingerprint, input_mode: str) -> dict[str, Planned]:
    """Augmentations for images from other sites, on for radiograph-like data.

    Radiograph-like: resized whole images (not crops), gray, at most two large
    objects (each at least 5% of the image), and a layout that flips change (fixed
    anatomy). There a run trained on one hospital fails on a small patient in a black
    frame, a collimated film and dense (white) lungs; zoom-outs into black or
    collimated borders, frame crops, opacities in the lung field (inside the mask, or a
    white-out past its outline), low-resolution round trips and burned-in text fix most
    of it at a small cost on clean images
    (``benchmarks/RESULTS.md``: black frame Dice 0.03 -> 0.93, collimated 0.82 -> 0.94,
    effusion 0.88 -> 0.92; clean -0.007 in a short run). Other data get none (painting
    opacities inside nuclei or EM cells would teach nothing true).
    """
    layout = fp.symmetry.get("layout", {})
    fixed_anatomy = layout.get("flip_lr", {}).get("kept") is False
    radiograph = (
        input_mode == "resize"
        and fp.channels == 1
        and 1 <= fp.objects_per_image <= 2
        and fp.object_area.get("median_fraction", 0.0) >= 0.05
        and fixed_anatomy
    )
    if radiograph:
        why = (
            "radiograph-like (gray, whole image resized, "
            f"{fp.objects_per_image:g} large object(s), left-right flips change the layout): "
            "shifts of other sites"
        )
        return {name: Planned(p, f"{p:g}: {why}") for name, p in CROSS_SITE.items()}
    return {
        name: Planned(0.0, "off: not radiograph-like (crops, colour, small or many objects)")
        for name in CROSS_SITE
    }


def _evidence(result: Mapping[str, Any]) -> str:
    if "asymmetry" in result:
        return f"orientation asymmetry {result['asymmetry']:.3f}"
    return f"p {result['p']}, effect {result['effect']}"


def loss_rule(fp: Fingerprint) -> Planned:
    """Cross-entropy + Dice (nnU-Net's default loss), also for touching instances.

    The U-Net paper's border-weighted cross-entropy (w0 10, sigma 5 px) makes the
    network learn the thin gaps between touching cells. Measured here on the shared data
    (``benchmarks/RESULTS.md``, 2026-12-02, the same plans otherwise, 10-minute budget),
    it did not pay within such a budget: on ISBI 2012 (84% of the cells behind thin
    membranes) the challenge Rand error was 0.1438 with it against 0.1430 without,
    and the foreground Dice 0.916 against 0.944; on DSB2018 (25% of the nuclei touching)
    the Dice was 0.813 against 0.853. So it is not planned; where at least
    :data:`TOUCHING_FRACTION` of the objects touch, the reason says how to ask for it
    (``--loss weighted-bce``).
    """
    share = fp.touching_fraction
    if fp.num_classes > 1:
        return Planned("bce+dice", "cross-entropy + Dice (several classes)")
    if share >= TOUCHING_FRACTION:
        return Planned(
            "bce+dice",
            f"cross-entropy + Dice: {share:.0%} of the objects are separated only by gaps of "
            "a few pixels, but the paper's border weights (`--loss weighted-bce`) did not "
            "lower ISBI 2012's Rand error in a 10-minute run and cost DSB2018 0.04 Dice",
        )
    return Planned("bce+dice", f"cross-entropy + Dice ({share:.0%} of the objects touch)")


def batch_rule(
    fp: Fingerprint, image_size: int, input_mode: str, updates_at_default: float | None
) -> Planned:
    """Batch size: 4, at most 5% of the data set's pixels, at least 2; 2 when the budget
    affords few updates.

    nnU-Net caps a batch at 5% of the data set's voxels with a minimum of 2. On a CPU a
    smaller batch buys more updates in the same time (not quite twice as many at half the
    batch: 224 px on an Intel Xeon with AMX, 54 ms a step at batch 2 against 89 at 4):
    measured on the chest X-rays, batch 4 beat batch 8 at equal time; below
    :data:`MIN_UPDATES` updates in the budget, batch 2 is planned.
    """
    h, w = fp.sizes["median_hw"]
    per_sample = image_size**2
    total = fp.n_images * (h * w if input_mode == "crop" else per_sample)
    cap = max(MIN_BATCH, int(DATASET_SHARE * total / per_sample))
    batch = min(DEFAULT_BATCH, cap)
    why = f"{batch}: at most {DATASET_SHARE:.0%} of the data's pixels per batch (nnU-Net)"
    if batch == MIN_BATCH and int(DATASET_SHARE * total / per_sample) < MIN_BATCH:
        why = (
            f"{batch}: the smallest batch planned (nnU-Net's minimum; {DATASET_SHARE:.0%} of "
            "this data's pixels is less than two samples)"
        )
    if batch == DEFAULT_BATCH:
        why = f"{batch}: the measured best on CPU (more updates than 8 in the same time)"
    if updates_at_default is not None and updates_at_default < MIN_UPDATES and batch > MIN_BATCH:
        batch = MIN_BATCH
        why = (
            f"{batch}: the budget affords only {updates_at_default:.0f} updates at batch "
            f"{DEFAULT_BATCH}; a smaller batch doubles them"
        )
    return Planned(batch, why)


def progressive_rule(
    input_mode: str, image_size: int, depth: int = 4, padding: str = "same"
) -> Planned:
    """Progressive resizing for whole images of :data:`MIN_PROGRESSIVE_SIZE` px or more.

    The first :data:`PROGRESSIVE` of the epochs train at half the size, at about a third
    of the step time (fast.ai's progressive resizing; the U-Net takes any valid size).
    On JSRT the planned run came within 0.002 of the full-size plan's best validation
    Dice in 0.49-0.66x the time and ended 0.0012-0.0033 above it (six side-by-side
    measurements, ``benchmarks/RESULTS.md``). Not for small images, nor for crops: ``--progressive``
    on a crop-trained run cuts half-size crops at native resolution, and on DSB2018 that
    scored 0.8971 on 20 held-out images against 0.9072 without it (2026-12-04).
    With ``valid`` padding the images are trained at the network's output size, so it
    is the output that must be large enough, and that is halved
    (:func:`~unet_lowered.model.half_size`: input 396, output 212 -> input 284, output 100).
    """
    try:
        trained = output_size(image_size, depth, padding)  # the images' size in training
        half = half_size(image_size, depth, padding)
        half_trained = output_size(half, depth, padding)
    except UnetError:  # a size the network does not take: refused by the settings' check
        trained, half, half_trained = image_size, image_size // 2, image_size // 2
    if input_mode == "resize" and trained >= MIN_PROGRESSIVE_SIZE:
        at = f"{half_trained} px" if half == half_trained else f"{half_trained} px (input {half})"
        return Planned(
            PROGRESSIVE,
            f"{PROGRESSIVE:g}: whole images of {trained} px, the first half of the epochs "
            f"at {at} (JSRT: within 0.002 of the full-size plan's Dice in 0.49-0.66x the time)",
        )
    why = "half-size crops did not help DSB2018" if input_mode == "crop" else "small images"
    return Planned(0.0, f"off: {why}")


FOREGROUND_CROPS = 0.33
"""Share of the training crops centred on a foreground pixel (nnU-Net's
``oversample_foreground_percent``)."""


SPARSE_FOREGROUND = 0.5
"""Foreground crops only when less than this share of the pixels is foreground."""


def foreground_crops_rule(fp: Fingerprint, input_mode: str) -> Planned:
    """Centre a third of the training crops on a foreground pixel (crop mode, sparse
    foreground).

    nnU-Net forces a third of each batch's patches to contain foreground, so that
    sparse objects in large images are seen often enough. Measured on DSB2018 side by
    side (``benchmarks/RESULTS.md``, 2026-12-03, 50 epochs each): validation Dice
    0.8549 -> 0.8720, most of it on the two large brightfield images with few nuclei
    (0.52 -> 0.69, 0.72 -> 0.79). Off for whole images (they hold all their objects)
    and where most pixels are foreground (ISBI 2012's cells: every crop holds some).
    """
    share = fp.foreground_fraction
    if input_mode == "crop" and share < SPARSE_FOREGROUND:
        return Planned(
            FOREGROUND_CROPS,
            f"{FOREGROUND_CROPS:g}: a third of the crops centred on foreground (nnU-Net); "
            f"{share:.0%} of the pixels are foreground, so uniform crops often miss it",
        )
    if input_mode == "crop":
        return Planned(0.0, f"off: {share:.0%} of the pixels are foreground, in every crop")
    return Planned(0.0, "off: whole images hold all their objects")


def _fit_epochs(
    n_train: int,
    n_val: int,
    batch_size: int,
    step_s: float,
    budget_s: float,
    progressive: float,
    half_share: float,
) -> tuple[int, int, int, str, float]:
    """``(epochs, fitted, cap, cap_why, epoch_s)``: :func:`schedule_rule`'s arithmetic,
    a half-size step costing ``half_share`` of a full-size one."""
    steps = math.ceil(n_train / batch_size)
    val_steps = math.ceil(n_val / batch_size)
    step_cost = progressive * half_share + (1.0 - progressive)
    val_s = val_steps * step_s / 3 * (1.0 - progressive)
    epoch_s = steps * step_s * step_cost + val_s + EPOCH_OVERHEAD_S
    fitted = int(BUDGET_SHARE * budget_s // epoch_s)
    cap, cap_why = MAX_EPOCHS, "the cap"
    if progressive > 0:
        enough = max(1, round(WHOLE_IMAGE_SAMPLES / n_train))
        if enough < cap:
            cap, cap_why = enough, f"enough: about {WHOLE_IMAGE_SAMPLES} samples"
    return max(1, min(cap, fitted)), fitted, cap, cap_why, epoch_s


def _capped_anyway(
    n_train: int, n_val: int, batch: int, step_s: float, budget_s: float, progressive: float
) -> bool:
    """Whether the epochs' cap holds even with half-size steps costing a full one."""
    _, fitted, cap, _, _ = _fit_epochs(n_train, n_val, batch, step_s, budget_s, progressive, 1.0)
    return fitted >= cap


def schedule_rule(
    n_train: int,
    n_val: int,
    batch_size: int,
    step_s: float,
    budget_s: float,
    progressive: float = 0.0,
    half_step_s: float | None = None,
) -> dict[str, Planned]:
    """Epochs fitted to the time budget from the measured step time; patience to match.

    An epoch costs ``ceil(n_train / b)`` steps plus validation (a forward pass, a third
    of a step per batch) plus :data:`EPOCH_OVERHEAD_S`; with ``progressive``, that share
    of the epochs runs half-size steps of ``half_step_s`` (measured; None: taken as
    :data:`HALF_SIZE_STEP` of a full-size step) and skips validation.
    :data:`BUDGET_SHARE` of the budget is planned, so the cosine schedule reaches its
    end inside the budget (the
    :class:`~unet_lowered.planning.callbacks.TimeBudget` callback stops a slower run at
    an epoch's end). With progressive resizing, training stops after about
    :data:`WHOLE_IMAGE_SAMPLES` samples even when the budget allows more. Early
    stopping waits a third of the epochs, at least 15, so it does not cut the
    schedule's low-learning-rate end.
    """
    share = HALF_SIZE_STEP if half_step_s is None else half_step_s / step_s
    epochs, fitted, cap, cap_why, epoch_s = _fit_epochs(
        n_train, n_val, batch_size, step_s, budget_s, progressive, share
    )
    steps = math.ceil(n_train / batch_size)
    mean = ""
    if progressive > 0:
        how = "measured" if half_step_s is not None else "taken as"
        mean = f" (mean, half-size epochs included: their steps {how} {share:.2f} of a full one)"
    why = (
        f"{epochs}: {BUDGET_SHARE:.0%} of the {budget_s:.0f} s budget / {epoch_s:.1f} s per "
        f"epoch{mean} ({steps} steps of {step_s:.2f} s measured + validation)"
    )
    if fitted < 1:
        enough = epoch_s * 10 / BUDGET_SHARE
        why += f"; too short to train: give --time-budget {enough:.0f}s or more"
    if fitted > cap:
        why = f"{epochs}: {cap_why} (the budget would allow {fitted} epochs of {epoch_s:.1f} s)"
    patience = max(15, epochs // 3)
    return {
        "epochs": Planned(epochs, why),
        "patience": Planned(patience, f"{patience}: a third of the epochs, at least 15"),
    }


def postprocess_rule(fp: Fingerprint) -> Planned:
    """The post-processing steps worth trying on validation (``unet train`` chooses).

    Keep-the-N-largest for a few whole objects per image; fill-holes when the true
    masks have none; a minimum area when images hold many objects (noise specks); for
    boundary data (most objects behind thin gaps, as EM cells), the watershed split and
    the threshold, scored by the Rand error.
    """
    candidates, why = [], []
    n = fp.objects_per_image
    if 1 <= n <= 4:
        candidates.append(f"keep_largest {n:g}")
        why.append(f"{n:g} object(s) per image")
    if fp.holes_fraction < 0.05:
        candidates.append("fill_holes")
        why.append("true masks have no holes")
    if n > 4:
        candidates.append("min_area")
        why.append(f"{n:g} objects per image")
    if fp.touching_fraction >= BOUNDARY_TOUCHING:
        candidates += ["watershed", "threshold"]
        why.append(
            f"{fp.touching_fraction:.0%} of the objects behind thin gaps: boundary data, "
            "scored by the Rand error"
        )
    return Planned(candidates, "; ".join(why) + " (chosen on validation after training)")


StepTimer = Callable[[Mapping[str, Any]], float]
"""Seconds per step for the given planned settings (:mod:`~unet_lowered.planning.steptime`)."""


def plan_settings(
    fp: Fingerprint,
    budget_s: float,
    step_time: StepTimer | None,
    n_val: int,
    fixed: Mapping[str, Any] | None = None,
    depth: int = 4,
    padding: str = "same",
) -> tuple[dict[str, Planned], dict[str, Planned]]:
    """All rules, in order (each later rule sees the values before it).

    Args:
        fp: The fingerprint of the training split.
        budget_s: The time budget in seconds.
        step_time: Measures the seconds per step of a set of settings; None skips the
            budget rules (epochs, and the budget part of the batch size).
        n_val: Validation images (their forward passes cost time each epoch).
        fixed: Settings the user gave (config file or flags): later rules use them
            instead of the planned value, e.g. the step time at the user's batch size.
        depth: The network's poolings (patch sizes must suit them).
        padding: ``same`` or ``valid``.

    Returns:
        ``(settings, advice)``: the ``unet train`` settings planned, and what is not a
        training setting (inference mode, TTA, normalisation, post-processing).
    """
    fixed = dict(fixed or {})
    settings: dict[str, Planned] = {}
    settings.update(input_rule(fp, depth, padding))
    value = {k: v.value for k, v in settings.items()}
    value.update(fixed)
    advice = {"inference": inference_rule(value["input_mode"])}
    norm = normalisation_rule(fp)
    settings["clahe"] = norm.pop("clahe")
    settings["invert_light"] = polarity_rule(fp)
    advice.update(norm)
    aug = augmentation_rule(fp, value["input_mode"])
    advice["tta"] = aug.pop("tta")
    settings.update(aug)
    settings.update(cross_site_rule(fp, value["input_mode"]))
    settings["loss"] = loss_rule(fp)
    settings["progressive"] = progressive_rule(
        value["input_mode"], value["image_size"], depth, padding
    )
    settings["foreground_crops"] = foreground_crops_rule(fp, value["input_mode"])
    value = {k: v.value for k, v in settings.items()}
    value.update(fixed)
    n_train = fp.n_images
    step_default = None
    updates = None
    if step_time is not None:
        step_default = step_time({**value, "batch_size": value.get("batch_size", DEFAULT_BATCH)})
        b0 = value.get("batch_size", DEFAULT_BATCH)
        per_epoch = math.ceil(n_train / b0) * step_default
        updates = BUDGET_SHARE * budget_s / max(per_epoch, 1e-6) * math.ceil(n_train / b0)
    settings["batch_size"] = batch_rule(fp, value["image_size"], value["input_mode"], updates)
    batch = fixed.get("batch_size", settings["batch_size"].value)
    if step_time is not None:
        b0 = value.get("batch_size", DEFAULT_BATCH)
        # The measured step scaled by the batch: a smaller batch's step costs more than
        # that (54 against 44 ms at 224 px, batch 2), so such plans ask for an epoch or
        # two more than the budget holds, and the budget callback ends them. Timing
        # batch 2 as well made the plans exact but scored lower at 60 and 90 s budgets
        # (4-6 s more planning, fewer steps; benchmarks/RESULTS.md, 2026-12-05 17:08).
        step = step_default if batch == b0 else step_default * batch / b0
        progressive = value["progressive"]
        half_step = None
        # The half-size step is measured only where it can change the epochs: not when
        # the cap holds even with half-size steps as dear as full ones.
        size = value["image_size"]
        if (
            progressive > 0
            and isinstance(size, int)
            and not _capped_anyway(n_train, n_val, batch, step, budget_s, progressive)
        ):
            half = half_size(size, depth, padding)
            if half < size:
                half_step = step_time({**value, "batch_size": batch, "image_size": half})
        settings.update(
            schedule_rule(n_train, n_val, batch, step, budget_s, progressive, half_step)
        )
    settings["time_budget"] = Planned(budget_s, f"{budget_s:g} s: training ends inside it")
    advice["postprocess"] = postprocess_rule(fp)
    return settings, advice
