"""The callback that keeps ``unet train`` inside its time budget."""

from __future__ import annotations

import sys
import time

import keras


class TimeBudget(keras.callbacks.Callback):
    """Stop ``fit`` before the next epoch would end past the deadline.

    An epoch's cost (training and validation) is the longest epoch so far; training
    stops at the end of an epoch when ``now + that * margin`` would pass ``deadline``.
    The first epoch always runs (there is no model without it).

    Args:
        deadline: ``time.perf_counter()`` value training must end by.
        margin: Safety factor on the epoch time (epochs vary on a shared machine).
    """

    def __init__(self, deadline: float, margin: float = 1.1):
        super().__init__()
        self.deadline = deadline
        self.margin = margin
        self.longest = 0.0
        self.stopped_epoch: int | None = None
        self._t = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._t)
        if now + self.longest * self.margin > self.deadline:
            last = (self.params or {}).get("epochs")
            if last is None or epoch + 1 < last:
                self.stopped_epoch = epoch + 1
                print(
                    f"time budget: stopping after epoch {epoch + 1} (another epoch takes about "
                    f"{self.longest:.0f} s, {max(0.0, self.deadline - now):.0f} s are left)",
                    file=sys.stderr,
                    flush=True,
                )
            self.model.stop_training = True
