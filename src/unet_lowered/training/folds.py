"""Cross-validation ensembles: ``unet train --folds K``.

The validation split is held out first, exactly as for a single run (same
``--val-fraction`` and ``--seed``, so a single run and an ensemble are scored on the
same images). The remaining training ids are cut into K folds; fold ``k`` trains a
normal run on the other K-1 folds and picks its best epoch on fold ``k``, as
nnU-Net's five-fold cross-validation does. The folds' best models are then joined
into one Keras model that averages their probabilities (:class:`MeanProbability`),
saved as the run's ``model.keras``; its output is the logits of the mean probability,
so ``unet predict``, ``evaluate``, ``serve`` and ``export`` use the ensemble without
knowing it is one. Post-processing is chosen for the ensemble on the held-out
validation split, like a single run's (scored as the plan's fingerprint says, e.g. by
the Rand error on boundary data).

Layout::

    RUN/model.keras        the ensemble: input -> K fold models -> mean probability
    RUN/config.json        fold 0's settings, facts and plan, the ensemble's post-processing
    RUN/split.json         {"train": the K folds together, "val": held out}
    RUN/ensemble.json      K, each fold's ids, validation Dice and training time
    RUN/metrics.json       the ensemble's held-out validation Dice, the folds' figures
    RUN/folds/fold_<k>/    a complete run folder per fold

Cost: K trainings on (K-1)/K of the training ids each, i.e. about K-1 times a
single run's time for the same epochs; prediction runs K networks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from unet_lowered.dataset.masks import read_mask, to_classes
from unet_lowered.dataset.pairs import check_split, load_prepared
from unet_lowered.errors import UnetError
from unet_lowered.io import atomic, runs
from unet_lowered.io.images import read_image
from unet_lowered.training.config import TrainConfig, from_dict

FOLDS_DIR = "folds"
ENSEMBLE_FILE = "ensemble.json"


def fold_splits(ids: Sequence[str], folds: int, seed: int) -> list[dict[str, list[str]]]:
    """Cut ``ids`` into ``folds`` disjoint validation parts, seeded.

    Args:
        ids: The training ids (the held-out validation ids are not among them).
        folds: K >= 2.
        seed: Seed of the permutation (sorted ids first, so the order given does not matter).

    Returns:
        K splits ``{"train": ids, "val": ids}``, both sorted; the ``val`` parts are
        disjoint, differ in size by at most one and together are all ``ids``.

    Raises:
        UnetError: ``folds`` under 2, or more folds than ids.
    """
    if folds < 2:
        raise UnetError(f"--folds must be 2 or more (got {folds}); leave it out for a single run")
    ordered = sorted(ids)
    if folds > len(ordered):
        raise UnetError(
            f"--folds {folds}: only {len(ordered)} training images to cut into folds; "
            "use fewer folds"
        )
    perm = np.random.default_rng(seed).permutation(len(ordered))
    parts = [sorted(ordered[i] for i in part) for part in np.array_split(perm, folds)]
    return [{"train": sorted(set(ordered) - set(part)), "val": part} for part in parts]


@keras.saving.register_keras_serializable(package="unet_lowered")
class MeanProbability(keras.layers.Layer):
    """The logits of the mean of K models' probabilities.

    Called on a list of K logit maps ``(B, H, W, C)`` (any float dtype), it returns
    float32 logits ``(B, H, W, C)`` whose sigmoid (``C == 1``) or softmax (``C > 1``)
    is the mean of the K maps' sigmoids or softmaxes, exactly what every consumer of a
    U-Net's logits then applies. With ``z_k`` the K logits and ``LSE_k`` the
    log-sum-exp over them:

        one class:   logit(mean_k sigmoid(z_k))
                       = LSE_k(log sigmoid(z_k)) - LSE_k(log sigmoid(-z_k))
        C classes:   log(mean_k softmax(z_k)) = LSE_k(log_softmax(z_k)) - log K

    computed in log space, so a mean probability of 0 or 1 in float32 still gives finite
    logits of the right sign (no clipping). Plain ``keras.ops``: any backend.
    """

    def call(self, inputs: Sequence[Any]) -> Any:
        ops = keras.ops
        z = ops.stack([ops.cast(x, "float32") for x in inputs], axis=0)  # (K, B, H, W, C)
        if z.shape[-1] == 1:
            return ops.logsumexp(ops.log_sigmoid(z), axis=0) - ops.logsumexp(
                ops.log_sigmoid(-z), axis=0
            )
        return ops.logsumexp(ops.log_softmax(z, axis=-1), axis=0) - math.log(len(inputs))

    def compute_output_shape(self, input_shape: Sequence[Any]) -> Any:
        return input_shape[0]


def ensemble_model(models: Sequence[Any]):
    """One Keras model that feeds its input to every model and averages their
    probabilities (:class:`MeanProbability`).

    Args:
        models: Models with the same input and output shapes (each fold's best model),
            each giving logits (one channel: sigmoid; N: softmax over the channels).

    Returns:
        A functional model ``"ensemble"`` whose sub-models are named ``fold_<k>`` and
        whose output, float32 logits, is named ``mean``.
    """
    inputs = keras.Input(shape=models[0].input_shape[1:], name="image")
    outputs = []
    for k, model in enumerate(models):
        model.name = f"fold_{k}"
        outputs.append(model(inputs))
    mean = MeanProbability(name="mean", dtype="float32")(outputs)
    return keras.Model(inputs, mean, name="ensemble")


def train_folds(
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    cfg: TrainConfig | None,
    folds: int,
    *,
    resume: bool = False,
    overwrite: bool = False,
    verbose: int | str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a K-fold ensemble into one run folder (the module docstring has the layout).

    Args:
        data: The prepared data folder (ignored with ``resume``: the run's is used).
        out: The run folder.
        cfg: Settings for every fold (defaults if None; ignored with ``resume``). A
            ``time_budget`` is the whole ensemble's: each fold trains within 1/K of it.
        folds: K >= 2 (ignored with ``resume``: the run's K is used).
        resume: Finish an interrupted ensemble: finished folds are kept, an interrupted
            fold resumes from its last epoch, the others start.
        overwrite: Replace an existing run folder (fresh runs only).
        verbose: Keras ``fit`` verbosity, as for :func:`unet_lowered.training.train.train`.
        provenance: ``{"sources": ..., "plan": ...}`` from
            :func:`unet_lowered.planning.plan.resolve_settings` (fresh runs only; kept in
            ensemble.json for a resume): recorded in each fold's config.json and the
            ensemble's, whose post-processing choice reads the plan's fingerprint.
            ``provenance["started"]`` is not used: each fold's share of a time budget
            counts from the fold's start.

    Returns:
        The contents of ``metrics.json``.

    Raises:
        UnetError: Bad data or settings, too many folds, an existing folder without
            ``overwrite``, or nothing to resume (also: the ensemble is finished).
    """
    from unet_lowered.training import train as train_mod

    out = Path(out)
    if resume:
        plan = _read_plan(out)
        if (out / runs.METRICS_FILE).is_file():
            raise UnetError(
                f"{out}: the {plan['folds']}-fold ensemble is finished; nothing to resume; "
                "train a new run (another --out, or --overwrite to replace this one)"
            )
        cfg = from_dict(plan["settings"]).validate()
        data = Path(plan["data"])
    else:
        cfg = (cfg or TrainConfig()).validate()
        if data is None:
            raise UnetError("no data folder given; pass the folder written by `unet prepare`")
        data = Path(data)
        train_mod._check_run_folder(out, overwrite)
        dataset = load_prepared(data)
        split = dataset.split(cfg.val_fraction, cfg.seed)
        check_split(split, data)
        parts = fold_splits(split["train"], folds, cfg.seed)
        if cfg.image_size is None:  # one size for every fold, or they cannot be averaged
            auto = train_mod.resolve_image_size(
                dataset.image_sizes(split["train"]), cfg.depth, cfg.padding
            )
            cfg = dataclasses.replace(cfg, image_size=auto)
        if cfg.time_budget:  # the budget is the whole ensemble's: each fold gets its share
            cfg = dataclasses.replace(cfg, time_budget=cfg.time_budget / folds)
        train_mod._start_run_folder(out, overwrite)
        plan = {
            "folds": folds,
            "data": str(data.resolve()),
            "settings": cfg.to_dict(),
            "split": split,
            "fold_splits": parts,
            # What each fold's config.json records, also for folds a resume starts.
            "provenance": {
                "plan": (provenance or {}).get("plan"),
                "sources": (provenance or {}).get("sources"),
            },
        }
        atomic.write_json(out / ENSEMBLE_FILE, plan)
        atomic.write_json(out / runs.SPLIT_FILE, split)

    fold_metrics, started = [], time.perf_counter()
    for k, part in enumerate(plan["fold_splits"]):
        fold_dir = out / FOLDS_DIR / f"fold_{k}"
        print(
            f"fold {k + 1} of {plan['folds']}: {len(part['train'])} training, "
            f"{len(part['val'])} validation images -> {fold_dir}",
            file=sys.stderr,
            flush=True,
        )
        if (fold_dir / runs.METRICS_FILE).is_file():
            fold_metrics.append(json.loads((fold_dir / runs.METRICS_FILE).read_text()))
            continue  # finished before an interruption
        if (fold_dir / runs.STATE_FILE).is_file():
            metrics = train_mod.train(None, fold_dir, resume=True, verbose=verbose)
        else:
            metrics = train_mod.train(
                data,
                fold_dir,
                cfg,
                overwrite=True,
                verbose=verbose,
                split=part,
                provenance=plan.get("provenance"),  # ensembles of older versions: none
            )
        fold_metrics.append(metrics)
    return _join(out, plan, fold_metrics, time.perf_counter() - started)


def _join(
    out: Path, plan: dict[str, Any], fold_metrics: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """Save the ensemble model, choose its post-processing, write config and metrics."""
    from unet_lowered.training.train import after_training

    fold_runs = [runs.load_run(out / FOLDS_DIR / f"fold_{k}") for k in range(plan["folds"])]
    model = ensemble_model([run.model() for run in fold_runs])
    atomic.save_with(out / runs.MODEL_FILE, model.save)
    data = Path(plan["data"])
    dataset = load_prepared(data)
    run_config = fold_runs[0].config
    split = plan["split"]
    classes, values = run_config.num_classes, run_config.label_values
    train_samples = (
        (
            read_image(dataset.images[i]),
            to_classes(read_mask(dataset.masks[i], classes), classes, values),
        )
        for i in split["train"]
    )
    run_config = after_training(out, run_config, dataset, split["val"], train_samples)
    choice = run_config.postprocess or {}
    metrics = {
        "folds": plan["folds"],
        "val_dice": choice.get("validation_dice_before"),
        "val_dice_postprocessed": choice.get("validation_dice_after"),
        "val_dice_note": "the ensemble's mean per-image Dice on the held-out validation "
        "split, at the original size",
        "fold_val_dice": [m.get("val_dice") for m in fold_metrics],
        "fold_train_time_s": [m.get("train_time_s") for m in fold_metrics],
        "train_time_s": round(sum(m.get("train_time_s") or 0 for m in fold_metrics), 2),
        "wall_time_s": round(seconds, 2),
        "precision": run_config.precision,
    }
    atomic.write_json(out / runs.METRICS_FILE, metrics)
    return metrics


def _read_plan(out: Path) -> dict[str, Any]:
    path = out / ENSEMBLE_FILE
    if not path.is_file():
        raise UnetError(
            f"{path}: missing; {out} is not an interrupted --folds run; start it again "
            "without --resume"
        )
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
        missing = [k for k in ("folds", "fold_splits", "settings", "data") if k not in plan]
        if missing:
            raise KeyError(", ".join(missing))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UnetError(f"{path}: unreadable ({e}); start the run again without --resume") from None
    return plan


def is_ensemble(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` was written by ``unet train --folds``."""
    return (Path(run_dir) / ENSEMBLE_FILE).is_file()


__all__ = ["ENSEMBLE_FILE", "ensemble_model", "fold_splits", "is_ensemble", "train_folds"]
