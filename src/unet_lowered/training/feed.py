"""Feeding ``fit`` on TensorFlow: the sequence's batches through ``tf.data``, made ahead
on a lowest-priority thread (:func:`as_tf_dataset`).

Why not Keras' own ``PyDataset`` adapter: it feeds TensorFlow through ``tf.data``
with an ``AUTOTUNE`` prefetch, and tearing that iterator down at an epoch's end waits
for tf.data's autotuning thread, which stalled many epochs by seconds.
Why the lowest priority: augmenting on an ordinary thread competes with the
training step for the cores; at nice 19 the step gets them whenever it wants them.
The measurements are in ``benchmarks/RESULTS.md`` (``benchmarks/feeding.py``).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from unet_lowered.training.sequence import SegmentationSequence


def as_tf_dataset(
    sequence: SegmentationSequence, lookahead: int = 2, *, any_size: bool = False
) -> Any:
    """A ``tf.data`` view of a sequence, for ``model.fit`` on the TensorFlow backend.

    It yields the sequence's batches in the same order, with tf.data's autotuning
    off. Each epoch's batches are made ahead by one background thread of the lowest
    CPU priority (nice 19, on Linux), at most ``lookahead`` batches ahead.

    Call :meth:`SegmentationSequence.set_epoch` (:class:`EpochSync`) as usual: the
    batches are read when each epoch's iterator starts. An error raised while making a
    batch is raised again in ``fit``.

    Args:
        sequence: The sequence to wrap.
        lookahead: Batches made ahead of the one training.
        any_size: Declare height and width unknown (batches change size between
            epochs with progressive resizing); otherwise those of the first batch.

    Returns:
        A ``tf.data.Dataset`` of ``len(sequence)`` batches.
    """
    import tensorflow as tf

    first = sequence[0]
    spec = tuple(
        tf.TensorSpec(
            (None, None, None, a.shape[-1]) if any_size else (None, *a.shape[1:]),
            tf.as_dtype(a.dtype),
        )
        for a in first
    )

    def batches() -> Iterator[tuple[np.ndarray, ...]]:
        with _BatchMaker(sequence, lookahead) as maker:
            yield from maker

    dataset = tf.data.Dataset.from_generator(batches, output_signature=spec)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(sequence)))
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return dataset.with_options(options)


class _BatchMaker:
    """One epoch of a sequence's batches, made in order by a low-priority thread."""

    def __init__(self, sequence: Sequence, lookahead: int):
        self.sequence = sequence
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, lookahead))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._make, name="unet-batches", daemon=True)

    def __enter__(self) -> _BatchMaker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()  # also when fit leaves an epoch early
        self.thread.join()

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        for _ in range(len(self.sequence)):
            item = self.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def _make(self) -> None:
        lowest_priority()
        for index in range(len(self.sequence)):
            try:
                item: Any = self.sequence[index]
            except BaseException as error:  # handed to the consumer, raised there
                item = error
            while not self.stop.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self.stop.is_set() or isinstance(item, BaseException):
                return


def lowest_priority() -> bool:
    """Give the calling thread the lowest CPU priority (nice 19); Linux only.

    Returns:
        Whether the priority was changed (False on other systems, where the call
        would name a process rather than this thread).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError:
        return False
    return True
