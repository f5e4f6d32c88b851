"""The callbacks of ``unet train``: checkpoints, history, guards and the image counter.

Every file is written atomically at the end of an epoch, in an order that makes a
run killed at any moment resumable: ``history.csv``, then ``last.keras`` carrying the
epoch's training state inside it (the commit point), then ``model.keras`` on a new best,
then ``state.json`` (the readable copy; ``unet train --resume`` trusts the state in
``last.keras`` and repairs ``model.keras`` if the kill came before its copy).

The state is ``{"epoch", "best", "best_epoch", "time_used_s"}`` (and ``"plateau"``, the
plateau schedule's counters, with ``--schedule plateau``); a resumed run seeds early
stopping and the plateau schedule from it, so it stops where the uninterrupted run
would have. When training ends, ``train`` adds ``"finished"`` (:data:`ENDINGS`).
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from unet_lowered.io import atomic, runs
from unet_lowered.training.config import TrainConfig

ENDINGS = ("early stopping", "time budget", "NaN loss", "all epochs")
"""Why a run's training ended, as ``state.json``'s ``"finished"`` records it."""


def standard_callbacks(
    out: Path, cfg: TrainConfig, state: dict, val_seq, resume: bool, since: float | None = None
) -> list:
    """The callbacks of a fit that writes the run folder ``out``.

    Args:
        out: The run folder.
        cfg: The run's settings.
        state: The state after the epochs done (the module docstring lists it).
        val_seq: The validation batches (the guard looks at the first).
        resume: Continue a run: history.csv is extended, early stopping and the plateau
            schedule go on from ``state`` (and history.csv) instead of starting afresh.
        since: ``time.perf_counter()`` value the run's time counts from (before this
            call by the time a resumed run used before); None: now.
    """
    rows = read_history(out / runs.HISTORY_FILE) if resume else []
    plateau = None
    if cfg.schedule == "plateau":
        plateau = ReduceLROnPlateau(
            monitor="val_dice",
            mode="max",
            factor=0.5,
            patience=max(2, cfg.patience // 3),
            resumed=state.get("plateau") if resume else None,
        )
    callbacks: list = [
        # history.csv before the checkpoint: state.json is written last of all, so a run
        # killed at any point resumes from an epoch whose history row is on disk.
        History(out / runs.HISTORY_FILE, keep=resume),
        # The plateau schedule before the checkpoint: a rate it lowers is saved with the
        # epoch that lowered it, as are its counters.
        *([plateau] if plateau is not None else []),
        Checkpoint(out, state, since=since, plateau=plateau),
        Guard(val_seq, cfg.threshold),
        EarlyStopping(
            monitor="val_dice",
            mode="max",
            patience=cfg.patience,
            verbose=1,
            resumed=early_stopping_state(state, rows) if resume else None,
        ),
    ]
    if cfg.ema > 0:  # first: the checkpoint after it saves the averaged weights
        callbacks.insert(0, AveragedWeights(resumed=resume))
    if keras.backend.backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(out / "logs"), write_graph=False))
    return callbacks


def early_stopping_state(state: dict, rows: list[dict[str, str]]) -> tuple[float | None, int]:
    """Early stopping's ``(best, wait)`` after the epochs ``state`` records.

    ``best`` is the best validation Dice (None before any validated epoch); ``wait`` the
    validated epochs after the best one, i.e. the history.csv rows past ``best_epoch``
    (up to ``state["epoch"]``) that have a ``val_dice``. The epochs that ``fit``'s
    ``validation_freq`` leaves unvalidated (the half-size epochs of progressive
    resizing) have none and do not count, as they do not for :class:`EarlyStopping`.
    The checkpoint's best and Keras' agree: both keep a strictly greater Dice.
    """
    best_epoch = state.get("best_epoch")
    if best_epoch is None:
        return None, 0
    done = int(state.get("epoch", 0))
    wait = sum(
        1
        for r in rows
        if best_epoch < int(r["epoch"]) <= done and r.get("val_dice") not in (None, "")
    )
    return float(state["best"]), wait


def run_ending(state: dict, rows: list[dict[str, str]], cfg: TrainConfig) -> str | None:
    """Why the training of a run in ``state`` (with history.csv's ``rows``) ended, one of
    :data:`ENDINGS`, or None when it has epochs left: ``state``'s ``"finished"``, else
    what its epochs show (all done, or early stopping's patience spent), for runs
    stopped before ``"finished"`` was written or by versions that did not write it."""
    if state.get("finished"):
        return str(state["finished"])
    if int(state.get("epoch", 0)) >= cfg.epochs:
        return "all epochs"
    best, wait = early_stopping_state(state, rows)
    # Keras stops on an epoch that does not improve once wait reaches the patience.
    if best is not None and wait >= max(1, cfg.patience):
        return "early stopping"
    return None


def fit_ending(callbacks: list, budget: Any, done: int, epochs: int) -> str | None:
    """Why ``fit`` with ``callbacks`` (and the time-budget callback ``budget``, or None)
    returned after epoch ``done`` of ``epochs``, one of :data:`ENDINGS`; None if none of
    them stopped it and epochs are left."""
    for callback in callbacks:
        if isinstance(callback, EarlyStopping) and callback.stopped_epoch > 0:
            return "early stopping"
        if isinstance(callback, Guard) and callback.stopped:
            return "NaN loss"
    if done >= epochs:
        return "all epochs"
    if budget is not None and budget.stopped_epoch is not None:
        return "time budget"
    return None


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Keras' swap of the weights and their moving average (``--ema``), on every epoch.

    The average is in the model for validation and from each epoch's end to the next
    epoch's start, so the checkpoints after this callback (``last.keras``,
    ``model.keras``) hold it, and the optimiser's average slots hold the trained
    weights meanwhile. A resumed run loads such a checkpoint: ``resumed`` tells the
    first epoch to swap them back before training goes on, as an uninterrupted run does.
    """

    def __init__(self, resumed: bool = False):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed


class _ValidatedEpochsOnly:
    """Mixin for Keras' monitoring callbacks: pass over epochs without the monitored
    metric (the unvalidated half-size epochs of progressive resizing) instead of warning
    about it."""

    monitor: str

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor in (logs or {}):
            super().on_epoch_end(epoch, logs)


class EarlyStopping(_ValidatedEpochsOnly, keras.callbacks.EarlyStopping):
    """Keras' early stopping, counting validated epochs only.

    ``resumed``: ``(best, wait)`` from :func:`early_stopping_state`, for a resumed run
    (Keras starts every ``fit`` with no best and nothing waited).
    """

    def __init__(self, *, resumed: tuple[float | None, int] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.resumed = resumed

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resumed is not None:
            self.best, self.wait = self.resumed


class ReduceLROnPlateau(_ValidatedEpochsOnly, keras.callbacks.ReduceLROnPlateau):
    """Keras' plateau schedule, counting validated epochs only.

    Its counters (:meth:`counters`) go into every checkpoint; ``resumed`` gives them
    back to a resumed run (the lowered rate itself is in the optimiser, saved with the
    model).
    """

    def __init__(self, *, resumed: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.resumed = resumed

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resumed:
            self.best = self.resumed.get("best")
            self.wait = int(self.resumed.get("wait", 0))
            self.cooldown_counter = int(self.resumed.get("cooldown_counter", 0))

    def counters(self) -> dict[str, Any]:
        """``{"best", "wait", "cooldown_counter"}``, JSON-ready."""
        best = None if self.best is None else float(self.best)
        return {
            "best": best,
            "wait": int(self.wait),
            "cooldown_counter": int(self.cooldown_counter),
        }


def validation_epochs(epochs: int, skip: int) -> int | list[int]:
    """``validation_freq`` for ``fit``: every epoch, or only those after the first ``skip``
    (1-based epoch numbers, as Keras counts them).

    Progressive resizing skips validation in its half-size epochs: the full-size Dice of
    a network trained at half size says little (it jumps between 0.56 and 0.91 on JSRT)
    and the best model is always found later.
    """
    if skip <= 0 or skip >= epochs:
        return 1
    return list(range(skip + 1, epochs + 1))


class Checkpoint(keras.callbacks.Callback):
    """Save last.keras (+ optimiser) every epoch and model.keras on a new best val_dice.

    The state saved records the run's time so far (``time_used_s``, counted from
    ``since``, a ``time.perf_counter()`` value) and the plateau schedule's counters.

    On a new best, model.keras is the same model as the last.keras just written, so it
    is linked (or copied) from it rather than serialised a second time. A fit that ends
    before any validated epoch (a time budget spent in the half-size epochs of
    progressive resizing) keeps its last model as model.keras, so the run has a model.
    """

    def __init__(
        self,
        out: Path,
        state: dict,
        since: float | None = None,
        plateau: ReduceLROnPlateau | None = None,
    ):
        super().__init__()
        self.out = out
        self.state = dict(state)
        self.since = time.perf_counter() if since is None else since
        self.plateau = plateau

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        score = float(logs.get("val_dice", float("nan")))
        used = round(time.perf_counter() - self.since, 2)
        state = {**self.state, "epoch": epoch + 1, "time_used_s": used}
        if self.plateau is not None:
            state["plateau"] = self.plateau.counters()
        best = math.isfinite(score) and score > self.state["best"]
        if best:
            state.update(best=score, best_epoch=epoch + 1)

        def save(path: Path) -> None:
            self.model.save(path)
            runs.add_checkpoint_state(path, state)  # inside the archive, before the rename

        last = atomic.save_with(self.out / runs.LAST_FILE, save)  # the commit point
        self.state = state
        if best:
            atomic.copy_file(last, self.out / runs.MODEL_FILE)
        atomic.write_json(self.out / runs.STATE_FILE, self.state)

    def on_train_end(self, logs=None):
        last, best = self.out / runs.LAST_FILE, self.out / runs.MODEL_FILE
        if last.is_file() and not best.is_file():
            atomic.copy_file(last, best)


class History(keras.callbacks.Callback):
    """history.csv rewritten atomically after every epoch (kept and extended on resume).

    Besides Keras' logs and the learning rate, ``time_s`` is the training time in
    seconds at the end of the epoch's validation, counted from the start of ``fit``
    and continued on resume (the time-to-accuracy curve of the run).
    """

    def __init__(self, path: Path, keep: bool):
        super().__init__()
        self.path = path
        self.rows = read_history(path) if keep else []
        self._start = time.perf_counter()

    def on_train_begin(self, logs=None):
        done = runs.history_number(self.rows[-1].get("time_s")) if self.rows else 0.0
        self._start = time.perf_counter() - (done if math.isfinite(done) else 0.0)

    def on_epoch_end(self, epoch, logs=None):
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({k: f"{float(v):.6g}" for k, v in (logs or {}).items()})
        lr = self.model.optimizer.learning_rate
        row["lr"] = f"{float(keras.ops.convert_to_numpy(lr)):.6g}"
        row["time_s"] = f"{time.perf_counter() - self._start:.2f}"
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch + 1] + [row]
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic.write_text(self.path, buf.getvalue())


class Guard(keras.callbacks.Callback):
    """Warn about the classic failure: NaN loss, or a constant ("all black") prediction.

    The loss is checked every epoch. The prediction on the first validation batch (one
    eager forward pass) is checked after epochs 2, 4, 8, 16, ... and the last: a model
    stuck on a constant map stays stuck, so checking on a doubling schedule finds it
    at a fraction of the cost.
    """

    def __init__(self, val_seq, threshold: float):
        super().__init__()
        self.val_seq = val_seq
        self.threshold = threshold
        self.stopped = False  # on a NaN loss

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            warn("the loss is NaN/inf; training stopped. Lower --lr, or try --precision float32")
            self.model.stop_training = self.stopped = True
            return
        done = epoch + 1
        last = done == (self.params or {}).get("epochs")
        if done < 2 or not (last or done & (done - 1) == 0) or len(self.val_seq) == 0:
            return
        x = self.val_seq[0][0]
        logits = keras.ops.convert_to_numpy(self.model(x, training=False)).astype(np.float32)
        if logits.shape[-1] == 1:
            pred = logits[..., 0] > math.log(self.threshold / (1 - self.threshold))
        else:
            pred = logits.argmax(-1) > 0
        if not pred.any() or pred.all():
            warn(
                f"epoch {epoch + 1}: the model predicts "
                f"{'all background' if not pred.any() else 'all foreground'} on validation. "
                "Check that the masks are right (`unet check DATA`), try --overfit-batch, "
                "or train longer"
            )


class ImageCounter(keras.callbacks.Callback):
    """Training images per second over the fit, input pipeline included, validation excluded."""

    def __init__(self, batch_size: int, n_images: int):
        super().__init__()
        self.batch_size = batch_size
        self.n_images = n_images
        self.images = 0
        self.seconds = 0.0
        self._t = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds += time.perf_counter() - self._t
        # The last batch of an epoch may be partial.
        self.images += min(self.batch_size, self.n_images - batch * self.batch_size)


def warn(message: str) -> None:
    """A visible warning for the user (stderr), not a Python warning that tests turn into errors."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def read_history(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
