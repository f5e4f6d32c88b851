"""The callback that keeps ``unet train`` inside its time budget."""

from __future__ import annotations

import sys
import time

import keras


class TimeBudget(keras.callbacks.Callback):
    """Stop ``fit`` so that training, validation and the work after it end by the deadline.

    Two checks. At an epoch's end: stop when another epoch (the longest so far, times
    ``margin``) would end past the deadline. After every training step: stop when one
    more step (as long as the last) and the epoch's tail (its validation and
    checkpoints, and once more that long for the post-processing choice after
    training) would end past it; Keras then still validates (unless it is a half-size
    epoch of progressive resizing) and checkpoints the epoch, so the run keeps a model
    (the last one when no epoch was validated). Before the first epoch has ended, the
    tail is taken as ``first_reserve`` seconds (default: a tenth of the time left when
    ``fit`` starts).

    Args:
        deadline: ``time.perf_counter()`` value training must end by.
        margin: Safety factor on the epoch time (epochs vary on a shared machine).
        first_reserve: The tail assumed during the first epoch, or None.
    """

    def __init__(self, deadline: float, margin: float = 1.1, first_reserve: float | None = None):
        super().__init__()
        self.deadline = deadline
        self.margin = margin
        self.longest = 0.0
        self.tail: float | None = None
        self.first_reserve = first_reserve
        self.stopped_epoch: int | None = None
        self._t = self._last_step = 0.0
        self._stopping = False

    def on_train_begin(self, logs=None):
        if self.first_reserve is None:
            self.first_reserve = 0.1 * max(0.0, self.deadline - time.perf_counter())

    def on_epoch_begin(self, epoch, logs=None):
        self._t = self._last_step = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        step, self._last_step = now - self._last_step, now
        tail = self.first_reserve if self.tail is None else self.tail
        if not self._stopping and now + step + tail > self.deadline:
            self.model.stop_training = self._stopping = True
            self._note(f"stopping within the epoch after step {batch + 1}", now)

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._t)
        self.tail = 2 * (now - self._last_step)  # validation + checkpoints, and after training
        if self._stopping:
            self.stopped_epoch = epoch + 1
            return
        if self.model.stop_training:  # stopped by another callback (early stopping, NaN)
            return
        last = (self.params or {}).get("epochs")
        if now + self.longest * self.margin > self.deadline:
            if last is None or epoch + 1 < last:
                self.stopped_epoch = epoch + 1
                self._note(f"stopping after epoch {epoch + 1}", now)
            self.model.stop_training = self._stopping = True
        elif last is None or epoch + 1 < last:  # Keras' "Epoch N/M" counts planned epochs
            left = max(0.0, self.deadline - now)
            print(
                f"time budget: {left:.0f} s left after epoch {epoch + 1}, about "
                f"{int(left // (self.longest * self.margin)) if self.longest else 0} more "
                f"epoch(s) of {self.longest:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    def _note(self, what: str, now: float) -> None:
        took = f"an epoch takes about {self.longest:.0f} s" if self.longest else "the first epoch"
        print(
            f"time budget: {what} ({took}, {max(0.0, self.deadline - now):.0f} s are left)",
            file=sys.stderr,
            flush=True,
        )
