"""``unet train``: fit the U-Net on a prepared folder and write a self-describing run folder.

The run folder layout is documented in :mod:`unet_lowered.io.runs`. Checkpoints are
written atomically at the end of every epoch, so a run killed at any moment can
be continued with ``unet train --resume --out RUN``: the model, optimiser state, epoch
counter, split and settings all come from the folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

import unet_lowered
from unet_lowered.dataset.checks import mask_warnings
from unet_lowered.dataset.pairs import PreparedData, check_split, load_prepared
from unet_lowered.errors import SettingError, UnetError, listing
from unet_lowered.evaluation.choose import (
    BOUNDARY_TOUCHING,
    THRESHOLDS,
    WATERSHED_MERGES,
    choose_postprocess,
    min_area_candidate,
)
from unet_lowered.evaluation.evaluate import read_truth
from unet_lowered.inference.predictor import PredictOptions, predict_images, resolve_tta
from unet_lowered.inference.quality import MaskStats, class_mask_stats, unsure_share
from unet_lowered.io import atomic, runs
from unet_lowered.io.images import read_image
from unet_lowered.io.progress import progress_bar
from unet_lowered.model import output_size, resize_input_size, unet
from unet_lowered.training import distribute, memory
from unet_lowered.training.callbacks import (
    Checkpoint,
    ImageCounter,
    fit_ending,
    read_history,
    run_ending,
    standard_callbacks,
    validation_epochs,
    warn,
)
from unet_lowered.training.config import RunConfig, TrainConfig
from unet_lowered.training.feed import as_tf_dataset
from unet_lowered.training.losses import get_loss
from unet_lowered.training.metrics import DiceMetric, IoUMetric
from unet_lowered.training.optimizers import FusedAdam
from unet_lowered.training.sequence import EpochSync, make_sequences


def cpu_supports_bf16() -> bool:
    """True if the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """``auto`` means mixed_bfloat16 on TensorFlow with a bf16-capable CPU, else float32."""
    if precision != "auto":
        return precision
    if keras.backend.backend() == "tensorflow" and cpu_supports_bf16():
        return "mixed_bfloat16"
    return "float32"


AUTO_SIZE_CAP = 256
"""``--image-size auto`` trains at the images' own size up to this many pixels a side."""


def resolve_image_size(sizes: list[tuple[int, int]], depth: int = 4, padding: str = "same") -> int:
    """The training size ``--image-size auto`` picks for images of these ``(H, W)`` sizes.

    The median of the images' longer sides, capped at :data:`AUTO_SIZE_CAP`, rounded
    down to a size the network takes (a multiple of 16 at depth 4 with ``same``
    padding). Small images are thus trained at their own scale, with no resampling;
    large ones are resized to 256, a balance of speed and detail for lung fields
    (measurements in ``benchmarks/RESULTS.md``). With ``valid`` padding it is the
    network's OUTPUT that takes that size, so the input returned is larger
    (:func:`unet_lowered.model.resize_input_size`: 396 for 224-px images at depth 4,
    output 212): whole images are resized to the output and mirror-padded to the
    input, and crops are targets of the output size with their context around them
    (1024-px images: crops of 428 px, output 244).

    Args:
        sizes: ``(height, width)`` of the training images (at least one).
        depth: Poolings of the network.
        padding: ``"same"`` or ``"valid"``.

    Returns:
        The square input size.
    """
    longer = sorted(max(h, w) for h, w in sizes)
    target = min(longer[len(longer) // 2], AUTO_SIZE_CAP)
    return resize_input_size(target, depth, padding)


def train(
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    cfg: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    verbose: int | str | None = None,
    split: Mapping[str, Sequence[str]] | None = None,
    provenance: Mapping[str, Any] | None = None,
    cluster: distribute.Cluster | None = None,
) -> dict[str, Any]:
    """Train a U-Net and write the run folder.

    For the same seed to give the same run, this seeds Python's, NumPy's and the
    backend's global random generators with ``cfg.seed``
    (``keras.utils.set_random_seed``) and, on TensorFlow, switches on op determinism
    (``tf.config.experimental.enable_op_determinism``), for the rest of the process:
    neither is undone on return. The global mixed-precision policy is set to the run's
    for the call and given back as it was.

    Args:
        data: A prepared folder (``train/images``, ``train/masks``, ``dataset.json``) or any
            folder with ``images/`` and ``masks/``. When resuming, None reads the folder
            the run recorded; a folder given instead (the data moved) must hold the
            run's split, and the run records its new place.
        out: The run folder to create (or to continue, with ``resume``).
        cfg: Settings; defaults if None. Ignored when resuming (the run's are used).
        resume: Continue the run in ``out`` from its last completed epoch, early
            stopping and the plateau schedule where they were, and within what is left
            of its time budget.
        overwrite: Replace an existing run folder (fresh runs only).
        verbose: Keras ``fit`` verbosity; None: a progress bar on a terminal, one line per
            epoch otherwise (logs stay readable).
        split: ``{"train": ids, "val": ids}`` to train on instead of the seeded (or
            recorded) split, e.g. one cross-validation fold
            (:func:`unet_lowered.training.folds.train_folds`). Fresh runs only.
        provenance: ``{"sources": ..., "plan": ...}`` from
            :func:`unet_lowered.planning.plan.resolve_settings`, recorded in config.json.
            With ``cfg.time_budget`` set, training stops before it would pass the budget,
            counted from ``provenance["started"]`` (``time.perf_counter()`` when planning
            began) or else from this call; a resumed run has the budget less the time
            the run used before (``state.json``'s ``time_used_s``), and ``metrics.json``'s
            ``time_used_s`` is the whole run's.
        cluster: How this process joins a multi-process ``--distribute data-parallel``
            run (JAX); None: one process, or Keras' ``KERAS_DISTRIBUTION_*`` variables.
            Only process 0 writes the run folder; the others return
            ``{"process_id": k, "writer": False}`` after training.

    Returns:
        The contents of ``metrics.json``.

    Raises:
        UnetError: Bad data folder, an existing run folder without ``overwrite``, or nothing
            to resume (no epoch finished, or the run finished: its epochs done, early
            stopping, its time budget or a NaN loss ended it, and metrics.json is written).
    """
    # The budget counts from the start of `unet train`: planning (the fingerprint, the
    # step timing) is part of it.
    called = (provenance or {}).get("started", time.perf_counter())
    out = Path(out)
    if verbose is None:
        verbose = 1 if _plain_terminal() else 2
    ended = None
    if resume:
        run_cfg, split, state = _load_resume(out)
        cfg = run_cfg.settings
        if cfg.padding == "valid" and cfg.input_mode == "resize" and not run_cfg.resize_to_output:
            raise UnetError(
                f"{out}: a valid-padding run of an earlier version, trained on images resized "
                "to the network's input; this version trains such runs at the output size, "
                "so it cannot go on: start it again (unet train DATA --out RUN --overwrite)"
            )
        if data is None:
            data = run_cfg.data
            if data is not None and not Path(data).exists():
                raise UnetError(
                    f"{out}: trained on {data}, which is not there any more; if the data "
                    f"moved, give its new place: unet train --resume --out {out} DATA"
                )
        ended = _resume_ending(out, state, cfg)
    else:
        cfg = (cfg or TrainConfig()).validate()
        if data is None:
            raise UnetError("no data folder given; pass the folder written by `unet prepare`")
        if distribute.is_writer():  # the others: process 0 may have started it already
            _check_run_folder(out, overwrite)
        state = {"epoch": 0, "best": -1.0, "best_epoch": None}
        if split is not None:
            split = {"train": sorted(split["train"]), "val": sorted(split["val"])}
    data = Path(data)
    # The run's time counts from `since`: a resumed run's from before this call by the
    # time it used before (up to its last checkpoint).
    since = called - float(state.get("time_used_s") or 0.0)

    keras.utils.set_random_seed(cfg.seed)
    _deterministic_ops()
    # After the run-folder check: on several processes this waits for all of them, so
    # process 0 cannot have created the folder yet when another one checks it.
    dp = distribute.plan(cfg.distribute, cfg.batch_size, cluster)
    writer = distribute.is_writer(dp)
    if dp.processes > 1 and cfg.time_budget:  # each process would stop on its own clock
        raise SettingError(
            "time_budget", "--time-budget is for one process; give --epochs on several hosts"
        )
    precision = resolve_precision(cfg.precision)
    policy = keras.mixed_precision.global_policy()  # the caller's, given back at the end
    keras.mixed_precision.set_global_policy(precision)
    dp_scope = contextlib.ExitStack()
    try:
        dataset = load_prepared(data)  # bad data fails here, before RUN is touched
        if resume:  # the data of the run, maybe moved: every id of its split is there
            missing = sorted((set(split["train"]) | set(split["val"])) - set(dataset.images))
            if missing:
                raise UnetError(
                    f"{data}: {len(missing)} image(s) of the run's split are not in this "
                    f"folder ({listing(missing)}); give the folder {out} was trained on"
                )
        if not resume:
            dataset.refuse_out_inside(out, "training")
        if split is None:
            split = dataset.split(cfg.val_fraction, cfg.seed)
            if cfg.overfit_batch:
                first = split["train"][: cfg.batch_size]
                split = {"train": first, "val": first}
        check_split(split, data)
        if cfg.image_size is None:
            auto = resolve_image_size(dataset.image_sizes(split["train"]), cfg.depth, cfg.padding)
            cfg = dataclasses.replace(cfg, image_size=auto)
        size = (cfg.image_size, cfg.image_size)
        out_hw = output_size(size, cfg.depth, cfg.padding)
        num_classes = dataset.num_classes
        train_seq, val_seq = make_sequences(
            dataset,
            split,
            cfg,
            augment=not cfg.overfit_batch,
            output_size=out_hw,
            epoch=state["epoch"],
        )
        for message in mask_warnings(dataset, split["train"], loss=cfg.loss):
            warn(message)
        message = small_output_warning(cfg, out_hw, dataset.image_sizes(split["train"]))
        if message and distribute.is_writer(dp):
            warn(message)
        needed = memory.training_bytes(
            size,
            cfg.batch_size,
            precision,
            cfg.base_filters,
            cfg.batch_norm,
            0 if train_seq.cache.lazy else train_seq.cache.nbytes,
        )
        message = memory.memory_warning(needed, memory.available_bytes(), size, cfg.batch_size)
        if message and distribute.is_writer(dp):
            warn(message)

        run_config = _run_config(cfg, dataset, data, precision, size)
        run_config = dataclasses.replace(run_config, distribute_info=dp.describe())
        if provenance is not None:
            run_config = dataclasses.replace(
                run_config,
                plan=provenance.get("plan"),
                settings_sources=provenance.get("sources"),
            )
        if not resume and writer:  # only now: data that fails to decode leaves no run folder
            _start_run_folder(out, overwrite)
            atomic.write_json(out / runs.CONFIG_FILE, run_config.to_json())
            atomic.write_json(out / runs.SPLIT_FILE, split)

        dp_scope.enter_context(dp.scope())  # model, optimiser and fit on all devices
        if resume:
            model = runs.load_model(out / runs.LAST_FILE, compile=True)  # checked first
        else:
            model = build_model(cfg, dataset.channels, num_classes)
            model.compile(
                optimizer=_optimizer(cfg, steps=len(train_seq)),
                loss=get_loss(cfg.loss, num_classes),
                metrics=[DiceMetric(num_classes=num_classes), IoUMetric(num_classes=num_classes)],
            )

        # The other processes run the same callbacks (saving the model is a collective
        # operation on JAX) into a scratch folder, removed at the end.
        files = out if writer else Path(dp_scope.enter_context(tempfile.TemporaryDirectory()))
        callbacks = standard_callbacks(files, cfg, state, val_seq, resume, since=since)
        budget = None
        if cfg.time_budget:
            from unet_lowered.planning.callbacks import TimeBudget

            budget = TimeBudget(since + cfg.time_budget)
            callbacks.append(budget)
        started = time.perf_counter()
        t_images = ImageCounter(cfg.batch_size, len(split["train"]))
        if ended is not None:
            warn(
                f"{out}: training ended at epoch {state['epoch']} ({ended}); finishing what "
                "the run stopped before (the post-processing choice and metrics.json)"
            )
        else:
            fit_train, fit_val = dp.feed(train_seq, True), dp.feed(val_seq, False)
            if keras.backend.backend() == "tensorflow":  # no tf.data autotune stalls
                any_size = train_seq.progressive is not None
                fit_train = as_tf_dataset(fit_train, any_size=any_size)
                fit_val = as_tf_dataset(fit_val)
            half_size_epochs = 0
            if train_seq.progressive is not None:
                half_size_epochs = train_seq.progressive.epochs
                # The saved model keeps its input size; training may feed it smaller
                # batches first (the layers take any valid size).
                model.input_spec = None
                if writer and state["epoch"] < half_size_epochs:
                    h, w = size
                    (sh, sw), (oh, ow) = (
                        train_seq.progressive.size,
                        train_seq.progressive.target_size,
                    )
                    small = f"{sh}x{sw}" + (f", output {oh}x{ow}" if (oh, ow) != (sh, sw) else "")
                    first = (
                        "epoch 1 trains"
                        if half_size_epochs == 1
                        else f"epochs 1-{half_size_epochs} train"
                    )
                    print(
                        f"{first} at half size ({small}, progressive resizing), "
                        f"not validated; validation starts at epoch {half_size_epochs + 1}, "
                        f"at {h}x{w}",
                        flush=True,
                    )
            model.fit(
                fit_train,
                validation_data=fit_val,
                epochs=cfg.epochs,
                validation_freq=validation_epochs(cfg.epochs, half_size_epochs),
                initial_epoch=state["epoch"],
                callbacks=[EpochSync(train_seq), *callbacks, t_images],
                shuffle=False,  # the sequence shuffles itself, seeded by (seed, epoch)
                verbose=verbose if writer else 0,
            )
            done = next(c for c in callbacks if isinstance(c, Checkpoint)).state["epoch"]
            ended = fit_ending(callbacks, budget, done, cfg.epochs)
        if writer and ended is not None:  # a --resume of it is refused from now on
            _mark_finished(out, ended)
        elapsed = time.perf_counter() - started
        dp_scope.close()  # what follows runs on one device, in process 0 only
        if not writer:
            return {"process_id": dp.process_id, "writer": False}
        metrics = _final_metrics(out, elapsed, t_images, precision)
        metrics["val_dice_note"] = val_dice_note(cfg.input_mode, cfg.padding)
        if (out / runs.MODEL_FILE).is_file():
            train_samples = (train_seq.cache.sample(i)[:2] for i in split["train"])
            run_config = after_training(out, run_config, dataset, split["val"], train_samples)
            metrics["postprocess"] = run_config.postprocess
        metrics["time_budget_s"] = cfg.time_budget
        metrics["time_used_s"] = round(time.perf_counter() - since, 2)
        atomic.write_json(out / runs.METRICS_FILE, metrics)
        return metrics
    finally:
        dp_scope.close()
        keras.mixed_precision.set_global_policy(policy)


# ----------------------------------------------------------------------------- run folder


def _check_run_folder(out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing folder unless asked, and never one that is not a run;
    refuse a place where no run folder can be written (a file, a read-only folder)."""
    atomic.check_out_folder(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UnetError(
                f"{out} already exists; pass --overwrite to replace it, --resume to continue it, "
                "or choose another --out"
            )
        if not (out / runs.CONFIG_FILE).is_file():
            raise UnetError(
                f"{out} is not a run folder (no {runs.CONFIG_FILE}); refusing to overwrite it"
            )


def _start_run_folder(out: Path, overwrite: bool) -> None:
    """An empty run folder at ``out`` (an old run there is removed when ``overwrite``)."""
    _check_run_folder(out, overwrite)
    if out.exists() and any(out.iterdir()):
        try:
            shutil.rmtree(out)
        except OSError as e:
            raise UnetError(
                f"--out {out}: cannot remove the old run ({e.strerror or e}); remove it "
                "yourself or choose another --out"
            ) from None
    atomic.make_out_folder(out)


def _load_resume(out: Path) -> tuple[RunConfig, dict, dict]:
    again = "pass the --out folder of the run to resume, or start a new run without --resume"
    if out.exists() and not out.is_dir():
        raise UnetError(f"--out {out}: a file, not a run folder; {again}")
    if not out.is_dir():
        raise UnetError(f"--out {out}: no such run folder; {again}")
    if not (out / runs.CONFIG_FILE).is_file():  # written when the run folder is made
        raise UnetError(
            f"--out {out}: not a run folder of `unet train` (no {runs.CONFIG_FILE}); {again}"
        )
    for name in (runs.SPLIT_FILE, runs.STATE_FILE, runs.LAST_FILE):
        if not (out / name).is_file():
            raise UnetError(
                f"{out / name}: missing; nothing to resume (the run never finished an epoch); "
                "start it again without --resume"
            )
    loaded = []
    for name in (runs.CONFIG_FILE, runs.SPLIT_FILE, runs.STATE_FILE):
        try:
            loaded.append(json.loads((out / name).read_text()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UnetError(f"{out / name}: unreadable ({e}); the run cannot be resumed") from None
    run_cfg = RunConfig.from_json(loaded[0], out / runs.CONFIG_FILE)
    if not run_cfg.data:
        raise UnetError(f"{out / runs.CONFIG_FILE}: no 'data' entry; the run cannot be resumed")
    written = runs.check_state(loaded[2], out / runs.STATE_FILE)
    split = runs.Run(out, run_cfg).split()  # {"train": [ids], "val": [ids]}, checked
    return run_cfg, split, _checkpointed_state(out, written)


def _resume_ending(out: Path, state: dict, cfg: TrainConfig) -> str | None:
    """Why the run in ``out`` (in ``state``) ended, or None if it has epochs to train.

    Raises:
        UnetError: It ended and its metrics.json is written: nothing is left to resume.
    """
    ended = run_ending(state, read_history(out / runs.HISTORY_FILE), cfg)
    if ended is not None and (out / runs.METRICS_FILE).is_file():
        raise UnetError(
            f"{out}: finished at epoch {state['epoch']} ({ended}); nothing to resume; "
            "train a new run (another --out, or --overwrite to replace this one)"
        )
    return ended


def _mark_finished(out: Path, ended: str) -> None:
    """Record in state.json why training ended (``"finished"``)."""
    path = out / runs.STATE_FILE
    if path.is_file():
        atomic.write_json(path, {**json.loads(path.read_text()), "finished": ended})


def _checkpointed_state(out: Path, written: dict) -> dict:
    """The state of the epoch last.keras holds (``state.json`` may be one epoch behind it
    after a kill between the two), with model.keras made the best epoch's if the kill
    came before its copy. Checkpoints without a recorded state: ``state.json``. What state.json adds after the
    checkpoint (``"finished"``) is kept when both are at the same epoch."""
    state = runs.checkpoint_state(out / runs.LAST_FILE)
    if state is None:
        return written
    if state.get("epoch") == written.get("epoch"):
        state = {**written, **state}
    if state.get("epoch") != written.get("epoch"):
        print(
            f"{out / runs.STATE_FILE} was behind {runs.LAST_FILE} (stopped between the two); "
            f"resuming after epoch {state.get('epoch')}, as {runs.LAST_FILE} holds",
            flush=True,
        )
        atomic.write_json(out / runs.STATE_FILE, state)
    if state.get("best_epoch") is not None and state.get("best_epoch") == state.get("epoch"):
        best = (
            runs.checkpoint_state(out / runs.MODEL_FILE)
            if (out / runs.MODEL_FILE).is_file()
            else None
        )
        if best is None or best.get("epoch") != state["epoch"]:  # stopped before the copy
            atomic.copy_file(out / runs.LAST_FILE, out / runs.MODEL_FILE)
    return state


def _plain_terminal() -> bool:
    """Whether Keras' animated progress bar suits stdout: a terminal that takes colour and
    cursor movement (not ``NO_COLOR``, not ``TERM=dumb``); else one line per epoch."""
    if not sys.stdout.isatty() or os.environ.get("TERM") == "dumb":
        return False
    return not os.environ.get("NO_COLOR")


def _run_config(
    cfg: TrainConfig, dataset: PreparedData, data: Path, precision: str, size: tuple[int, int]
) -> RunConfig:
    return RunConfig(
        settings=cfg,
        image_size=size,
        resize_to_output=cfg.padding == "valid" and cfg.input_mode == "resize",
        channels=dataset.channels,
        num_classes=dataset.num_classes,
        label_values=None if dataset.label_values is None else tuple(dataset.label_values),
        class_names=dataset.class_names if dataset.num_classes > 1 else None,
        precision=precision,
        data=str(data.resolve()),
        backend=keras.backend.backend(),
        keras_version=keras.__version__,
        unet_lowered_version=unet_lowered.__version__,
    )


def training_mask_stats(
    run_config: RunConfig, train_samples: Iterable[tuple[np.ndarray, np.ndarray]]
) -> tuple[MaskStats, dict[str, Any]]:
    """What the training masks look like, for the quality flag: the foreground's
    :class:`~unet_lowered.inference.quality.MaskStats`, and the JSON ``config.json``
    records (multi-class runs: each class's too, under ``classes``). ``train_samples``
    yields each training ``(image, mask)``, one at a time."""
    masks, images = itertools.tee(train_samples)  # read in step: one pair held at a time
    stats, per_class = class_mask_stats(
        (mask for _, mask in masks), (image for image, _ in images), run_config.num_classes
    )
    recorded = stats.to_json()
    if per_class:
        recorded["classes"] = {str(c): s.to_json() for c, s in per_class.items()}
    return stats, recorded


def validation_unsure(probs: Sequence[np.ndarray], threshold: float) -> float | None:
    """The median :func:`~unet_lowered.inference.quality.unsure_share` of validation
    probabilities ``(H, W)``, each against its mask at ``threshold`` (4 decimals; None
    without images)."""
    shares = [unsure_share(p, int(np.count_nonzero(p >= threshold))) for p in probs]
    return round(float(np.median(shares)), 4) if shares else None


def after_training(
    out: Path,
    run_config: RunConfig,
    dataset: PreparedData,
    val_ids: Sequence[str],
    train_samples: Iterable[tuple[np.ndarray, np.ndarray]],
) -> RunConfig:
    """Record what the training masks look like (for the quality flag; ``train_samples``
    yields each training ``(image, mask)``, one at a time) and, for one-class runs, how
    sure the network is of its validation masks (:func:`validation_unsure`), and choose the
    test-time augmentation and post-processing on the validation images at their
    original size with ``out/model.keras``; rewrite config.json with both and print the
    choice.

    The TTA candidate is the group of the flips (and turns) the run was trained with
    (:func:`~unet_lowered.inference.predictor.resolve_tta` ``"auto"``); a run trained
    without flips gets none. For boundary data (the plan's fingerprint finds at least
    :data:`~unet_lowered.evaluation.choose.BOUNDARY_TOUCHING` of the objects behind
    thin gaps, as EM cells are) the choice is scored by the Rand error of the objects
    and also tries the watershed split
    (:data:`~unet_lowered.evaluation.choose.WATERSHED_MERGES`) and the thresholds
    :data:`~unet_lowered.evaluation.choose.THRESHOLDS`.

    Multi-class runs: the steps apply to each class in turn and are scored by the mean
    Dice over the foreground classes of the predicted classes (argmax); N (keep the N
    largest) is the largest of the classes' steady object counts, when every class has
    one, and the minimum-area candidate comes from the smallest class's objects."""
    stats, recorded = training_mask_stats(run_config, train_samples)
    classes = run_config.num_classes
    objects, small_object = stats.objects, stats.small_object
    if classes > 1:
        per_class = [MaskStats.from_json(v) for v in recorded["classes"].values()]
        steady = [c.objects for c in per_class if c.objects is not None]
        objects = max(steady) if len(steady) == len(per_class) else None
        smalls = [c.small_object for c in per_class if c.small_object is not None]
        small_object = min(smalls, default=None)
    model = runs.load_model(out / runs.MODEL_FILE)
    tta = resolve_tta("auto", run_config) if any(run_config.flips) else None
    variants = {None: PredictOptions(tta=False, postprocess=False)}
    if tta:
        variants[tta] = PredictOptions(tta=True, postprocess=False)
    probs: dict[str | None, list[np.ndarray]] = {key: [] for key in variants}
    truths = []
    batch_size, max_pixels = variants[None].batch_size, variants[None].max_pixels
    label = "post-processing: predicting validation images"  # large images take minutes
    with progress_bar(len(val_ids), sys.stderr.isatty(), label) as advance:
        for start in range(0, len(val_ids), batch_size):
            ids = val_ids[start : start + batch_size]
            batch = [read_image(dataset.images[i]) for i in ids]
            for key, options in variants.items():
                predicted = predict_images(model, batch, run_config, options)
                probs[key] += [
                    p[..., 0] if classes == 1 else np.argmax(p, axis=-1) for p in predicted
                ]
            truths += [read_truth(dataset.masks[i], run_config, max_pixels) for i in ids]
            for _ in ids:
                advance()
    if classes == 1:  # how sure the network is of its validation masks
        recorded["val_unsure"] = validation_unsure(probs[None], run_config.threshold)
    min_area = min_area_candidate(small_object, [t.shape[:2] for t in truths])
    touching = ((run_config.plan or {}).get("fingerprint") or {}).get("touching_fraction")
    boundary = classes == 1 and touching is not None and touching >= BOUNDARY_TOUCHING
    choice = choose_postprocess(
        probs[None],
        truths,
        objects,
        min_area=min_area,
        tta_probs=probs[tta] if tta else None,
        tta=tta,
        score="rand" if boundary else "dice",
        threshold=run_config.threshold,
        thresholds=THRESHOLDS if boundary else (),
        merges=WATERSHED_MERGES if boundary else (),
        classes=classes,
    )
    print(choice.describe(), file=sys.stderr, flush=True)
    run_config = dataclasses.replace(run_config, mask_stats=recorded, postprocess=choice.to_json())
    atomic.write_json(out / runs.CONFIG_FILE, run_config.to_json())
    return run_config


SMALL_OUTPUT = 32
"""A ``valid`` network trained on whole images whose output is under this many pixels a
side gets a warning: the images are resized to the output."""


def small_output_warning(
    cfg: TrainConfig, out_hw: tuple[int, int], sizes: list[tuple[int, int]]
) -> str | None:
    """The warning line for a ``valid`` run on whole images with a tiny output (an
    ``--image-size`` taken for the output: 188 gives 4x4), or None."""
    if cfg.padding != "valid" or cfg.input_mode != "resize" or min(out_hw) >= SMALL_OUTPUT:
        return None
    auto = resolve_image_size(sizes, cfg.depth, cfg.padding)
    auto_out = output_size(auto, cfg.depth, cfg.padding)
    return (
        f"--image-size {cfg.image_size} with valid padding gives a {out_hw[1]}x{out_hw[0]} "
        f"output: whole images are resized to it; the size is the network's input (for "
        f"these images --image-size {auto}, output {auto_out}, or leave it out)"
    )


def val_dice_where(input_mode: str, padding: str = "same") -> str:
    """Where the validation Dice of a run trained in ``input_mode`` is measured (with
    ``valid`` padding: on the network's output, smaller than its input)."""
    if input_mode == "crop":
        if padding == "valid":
            return "on the network's output window of one fixed crop per validation image"
        return "on one fixed window of the crop size per validation image"
    return "at the network's output size" if padding == "valid" else "at the training size"


def val_dice_note(input_mode: str, padding: str = "same") -> str:
    """metrics.json's ``val_dice_note``: what its ``val_dice`` is."""
    return f"mean per-image Dice on the validation split, {val_dice_where(input_mode, padding)}"


def _final_metrics(
    out: Path, elapsed: float, counter: ImageCounter, precision: str
) -> dict[str, Any]:
    """metrics.json: the scores of the epoch saved as model.keras, time and throughput."""
    state_path = out / runs.STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    best_epoch = state.get("best_epoch")
    rows = [r for r in read_history(out / runs.HISTORY_FILE) if int(r["epoch"]) == best_epoch]
    best = rows[0] if rows else {}
    return {
        "epochs_completed": state.get("epoch", 0),
        "best_epoch": best_epoch,
        "val_dice": float(best["val_dice"]) if "val_dice" in best else None,
        "val_iou": float(best["val_iou"]) if "val_iou" in best else None,
        "train_time_s": round(_fit_seconds(out, elapsed), 2),
        "images_per_s": round(counter.images / counter.seconds, 2) if counter.seconds else None,
        "precision": precision,
        "platform": platform.platform(),
    }


def _fit_seconds(out: Path, elapsed: float) -> float:
    """Seconds of ``fit`` over the whole run: history.csv's ``time_s`` of the last epoch
    (continued across ``--resume``), or ``elapsed`` (this call's) when it has none."""
    rows = read_history(out / runs.HISTORY_FILE)
    done = runs.history_number(rows[-1].get("time_s")) if rows else float("nan")
    return done if math.isfinite(done) and done >= elapsed else elapsed


# ----------------------------------------------------------------------------- fitting


def build_model(cfg: TrainConfig, channels: int, num_classes: int):
    """The U-Net ``cfg`` describes, for ``channels`` input channels (not compiled).

    ``cfg.image_size`` must be resolved (a side, not None).
    """
    return unet(
        input_shape=(cfg.image_size, cfg.image_size, channels),
        num_classes=num_classes,
        base_filters=cfg.base_filters,
        depth=cfg.depth,
        padding=cfg.padding,
        dropout=cfg.dropout,
        batch_norm=cfg.batch_norm,
        upsampling=cfg.upsampling,
    )


def _deterministic_ops() -> None:
    """Ask TensorFlow for deterministic kernels (same seed, same result on CPU)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


WARMUP_SHARE = 0.1
"""``onecycle``: the share of the steps spent warming up, from a tenth of the rate."""


def learning_rate(cfg: TrainConfig, steps: int) -> Any:
    """The learning rate of ``cfg.schedule`` over ``cfg.epochs`` epochs of ``steps`` steps:
    a Keras schedule (``cosine``, ``onecycle``) or a constant (``plateau``: the
    callback lowers it; ``none``)."""
    total = max(1, cfg.epochs * steps)
    if cfg.schedule == "cosine":
        lr: Any = keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=total, alpha=0.01)
    elif cfg.schedule == "onecycle":
        warmup = max(1, round(WARMUP_SHARE * total))
        lr = keras.optimizers.schedules.CosineDecay(
            cfg.lr / 10,
            decay_steps=max(1, total - warmup),
            alpha=0.01,
            warmup_target=cfg.lr,
            warmup_steps=warmup,
        )
    else:
        lr = cfg.lr
    return lr


def _optimizer(cfg: TrainConfig, steps: int):
    lr = learning_rate(cfg, steps)
    # With cfg.ema the optimiser keeps the average (Keras' use_ema); callbacks.AveragedWeights
    # puts it in the model for validation and the checkpoints.
    ema = {"use_ema": True, "ema_momentum": cfg.ema} if cfg.ema > 0 else {}
    if cfg.optimizer == "sgd":
        # The paper: high momentum (0.99) so that many earlier samples shape each update.
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.99, **ema)
    return FusedAdam(learning_rate=lr, **ema)  # Keras' Adam, its update one TF kernel


__all__ = ["cpu_supports_bf16", "resolve_precision", "train"]
