"""How the training step is fed: the same epoch of batches handed to Keras four ways.

On a 2-core machine the training step keeps both cores busy, so whatever makes the
next batch (decode-free here: the samples are cached, but augmentation, noise and
standardisation remain) competes with it. This script measures what that costs, in
one process, interleaved round by round, for the product's model, loss, metrics and
precision on a prepared folder:

* ``bare``: ``train_on_batch`` on the epoch's batches already in memory (tensors);
  the same step ``benchmarks/speed.py`` calls the bare step;
* ``fit, from memory``: ``model.fit`` on a ``tf.data`` dataset of those batches;
* ``fit, generator thread``: ``model.fit`` on ``from_generator`` over the
  ``SegmentationSequence`` with one batch prefetched by tf.data (normal priority:
  what ``unet train`` did before);
* ``fit, as unet train``: ``model.fit`` on :func:`unet_lowered.training.feed.as_tf_dataset`
  (batches made ahead by one lowest-priority thread);
* ``whole unet train epoch``: the same, plus what ``unet train`` adds to each epoch:
  validation (``as_tf_dataset`` over the validation sequence) and the product's
  callbacks (``history.csv``, ``last.keras`` and, on a new best, ``model.keras``,
  ``state.json``, the constant-prediction check, early stopping) writing into a
  temporary run folder, with Keras' own epoch numbers and the default epoch count so
  that the constant-prediction check falls on the epochs it would (2 and 4 of
  rounds 2-7: more often than the 6 of 45 epochs of a default run). TensorBoard is left out (about 4 ms per epoch, measured
  separately). Its rate against ``bare`` is the end-to-end figure.

Every fit variant makes its batches during the epoch (augmentation included in its
time); ``bare`` and ``from memory`` get them for free. For each it prints the epoch
rate (median over rounds) and the median and 10th percentile of the step time (from
``on_train_batch_begin`` to ``on_train_batch_end``, which includes waiting for the
batch), and appends the table to ``benchmarks/RESULTS.md`` (``--no-append`` to skip).

Run by hand (never part of ``make test``)::

    .venv/bin/python benchmarks/feeding.py DATA [--size 224 --batch 4 --rounds 6]

DATA is a prepared folder (``unet prepare ../shared/data/jsrt-lungs DATA``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from speed import append_results, cores, cpu_model  # benchmarks/speed.py, beside this script

VARIANTS = (
    "bare",
    "fit, from memory",
    "fit, generator thread",
    "fit, as unet train",
    "whole `unet train` epoch",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="prepared folder (from `unet prepare`)")
    p.add_argument("--size", type=int, default=224, help="image side (default 224: JSRT auto)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default 4: the default)")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds (median reported)")
    p.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args(argv)
    if not (args.data / "dataset.json").is_file():
        p.error(f"{args.data}: not a prepared folder (no dataset.json); run `unet prepare` first")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import keras
    import tensorflow as tf

    from unet_lowered.dataset.pairs import load_prepared
    from unet_lowered.model import unet
    from unet_lowered.training.callbacks import Guard, standard_callbacks
    from unet_lowered.training.config import TrainConfig
    from unet_lowered.training.feed import as_tf_dataset
    from unet_lowered.training.losses import get_loss
    from unet_lowered.training.metrics import DiceMetric, IoUMetric
    from unet_lowered.training.sequence import EpochSync, make_sequences
    from unet_lowered.training.train import _deterministic_ops, _optimizer, resolve_precision

    cfg = TrainConfig(image_size=args.size, batch_size=args.batch).validate()
    keras.utils.set_random_seed(cfg.seed)
    _deterministic_ops()
    precision = resolve_precision(cfg.precision)
    keras.mixed_precision.set_global_policy(precision)
    dataset = load_prepared(args.data)
    split = dataset.split(cfg.val_fraction, cfg.seed)
    train_seq, val_seq = make_sequences(dataset, split, cfg, augment=True)
    steps, n_images = len(train_seq), len(split["train"])
    model = unet(input_shape=(args.size, args.size, dataset.channels), num_classes=1)
    model.compile(
        optimizer=_optimizer(cfg, steps),
        loss=get_loss(cfg.loss, 1),
        metrics=[DiceMetric(num_classes=1), IoUMetric(num_classes=1)],
    )

    class StepClock(keras.callbacks.Callback):
        def __init__(self, into: list[float]):
            super().__init__()
            self.into = into

        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.into.append(time.perf_counter() - self.t)

    run_dir = Path(tempfile.mkdtemp(prefix="feeding-"))
    product_callbacks = [
        EpochSync(train_seq),
        *[
            c
            for c in standard_callbacks(
                run_dir, cfg, {"epoch": 0, "best": -1.0, "best_epoch": None}, val_seq, resume=False
            )
            if not isinstance(c, keras.callbacks.TensorBoard)
        ],
    ]

    for c in product_callbacks:  # one fit call per epoch: keep the checks' epoch schedule
        if isinstance(c, Guard):
            c.set_params = lambda params, c=c: keras.callbacks.Callback.set_params(
                c, {**params, "epochs": cfg.epochs}
            )

    def generator_thread() -> tf.data.Dataset:
        first = train_seq[0]
        spec = tuple(tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)) for a in first)

        def batches():
            for index in range(steps):
                yield train_seq[index]

        ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
        ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
        options = tf.data.Options()
        options.autotune.enabled = False
        return ds.with_options(options).prefetch(1)

    def run(variant: str, epoch: int, step_times: list[float]) -> float:
        """One epoch; returns its wall time in seconds."""
        train_seq.set_epoch(epoch)
        if variant in ("bare", "fit, from memory"):
            batches = [train_seq[i] for i in range(steps)]  # made before the clock starts
        if variant == "bare":
            tensors = [(tf.constant(x), tf.constant(y)) for x, y in batches]
            start = time.perf_counter()
            for x, y in tensors:
                t = time.perf_counter()
                model.train_on_batch(x, y)
                step_times.append(time.perf_counter() - t)
            return time.perf_counter() - start
        if variant == "fit, from memory":
            arrays = tuple(np.concatenate([b[k] for b in batches]) for k in range(2))
            options = tf.data.Options()
            options.autotune.enabled = False  # as in as_tf_dataset: no teardown stalls
            feed = tf.data.Dataset.from_tensor_slices(arrays).batch(args.batch)
            feed = feed.with_options(options)
        elif variant == "fit, generator thread":
            feed = generator_thread()
        else:
            feed = as_tf_dataset(train_seq)
        fit_args: dict = {"epochs": 1}
        if variant == "whole `unet train` epoch":
            fit_args = {
                "validation_data": as_tf_dataset(val_seq),
                "initial_epoch": epoch,
                "epochs": epoch + 1,
                "callbacks": product_callbacks,
            }
        clock = StepClock(step_times)
        fit_args["callbacks"] = [*fit_args.get("callbacks", []), clock]
        start = time.perf_counter()
        model.fit(feed, verbose=0, shuffle=False, **fit_args)
        return time.perf_counter() - start

    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()[0]
    for variant in VARIANTS:  # warm-up: tracing, first iterators
        run(variant, 0, [])
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    step_times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for variant in VARIANTS:
            seconds = run(variant, 1 + r, step_times[variant])
            rates[variant].append(n_images / seconds)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    load_end = os.getloadavg()[0]
    shutil.rmtree(run_dir, ignore_errors=True)

    bare_rate = statistics.median(rates["bare"])
    bare_step = statistics.median(step_times["bare"])
    rows = [
        "| how the epoch's batches reach the step | epoch img/s | % of bare | step median ms "
        "| step p10 ms | step vs bare |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        rate, times = statistics.median(rates[variant]), sorted(step_times[variant])
        step = statistics.median(times)
        rows.append(
            f"| {variant} | {rate:.2f} ({min(rates[variant]):.1f}-{max(rates[variant]):.1f}) "
            f"| {100 * rate / bare_rate:.0f}% | {1000 * step:.1f} "
            f"| {1000 * times[len(times) // 10]:.1f} | {100 * (step / bare_step - 1):+.1f}% |"
        )
    command = "python benchmarks/feeding.py " + " ".join(sys.argv[1:] if argv is None else argv)
    section = "\n".join(
        [
            f"## {started:%Y-%m-%d %H:%M} UTC: feeding.py, {args.size}x{args.size}, "
            f"batch {args.batch}",
            "",
            f"Machine: {cpu_model()}, {cores()} cores. Load average (1 min) {load_start:.2f} at "
            f"start, {load_end:.2f} at end. Command: `{command}`.",
            "",
            f"{n_images} training images ({steps} steps) per epoch from {args.data}, "
            f"{precision}, the product's model, loss and metrics; median of {args.rounds} "
            "interleaved rounds (range in brackets).",
            "",
            *rows,
            "",
        ]
    )
    print(section)
    if not args.no_append:
        append_results(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
