"""The measured cost of one training step on this machine, at the planned shape."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from unet_lowered.training.config import TrainConfig

WARMUP_STEPS = 3
"""Untimed steps first: the first traces the graph; oneDNN and the allocator settle over
the next two (measured at 256 px, batch 4, float32: 5.1, 0.51, 0.32 s, then
0.25-0.31 s)."""


def measure_step_time(
    cfg: TrainConfig, channels: int, num_classes: int, steps: int = 6
) -> dict[str, float]:
    """Seconds per training step at ``cfg``'s input size and batch size.

    Builds the network at the precision ``unet train`` uses (``cfg.precision``, ``auto``
    resolved: bf16 where the CPU has it), compiles it as ``unet train`` does (the planned
    loss, the Dice and IoU metrics) and runs ``model.fit`` for :data:`WARMUP_STEPS` untimed steps
    (graph tracing, then oneDNN's and the allocator's first calls) and ``steps`` timed
    ones on a batch of random data (the step's cost does not depend on the values);
    the median of the timed steps counts. Until 2026-12-02 the step was timed in
    float32 whatever the precision, a third slower than the bf16 step trained (0.24
    against 0.18 s at 256 px, batch 4), so crop-trained plans used 5-6 minutes of a
    10-minute budget. Adds the time to augment one batch (on 2
    cores the input pipeline competes with the step). A validation batch is costed as a
    third of a step (forward pass only).

    Args:
        cfg: The planned settings (``image_size`` an int).
        channels: Input channels.
        num_classes: Output classes.
        steps: Timed steps.

    Returns:
        ``{"step_s": ..., "augment_s": ..., "batch_size": ...}``.
    """
    import keras

    from unet_lowered.model import output_size
    from unet_lowered.training.augment import augment
    from unet_lowered.training.losses import get_loss, needs_weight_map
    from unet_lowered.training.metrics import DiceMetric, IoUMetric
    from unet_lowered.training.optimizers import FusedAdam
    from unet_lowered.training.sequence import augment_config
    from unet_lowered.training.train import build_model, resolve_precision

    size = (cfg.image_size, cfg.image_size)
    b = cfg.batch_size
    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(resolve_precision(cfg.precision))
    try:
        model = build_model(cfg, channels, num_classes)
    finally:
        keras.mixed_precision.set_global_policy(before)
    model.compile(
        optimizer=FusedAdam(1e-3),  # as unet train's
        loss=get_loss(cfg.loss, num_classes),
        metrics=[DiceMetric(num_classes=num_classes), IoUMetric(num_classes=num_classes)],
    )
    rng = np.random.default_rng(0)
    out_hw = output_size(size, cfg.depth, cfg.padding)
    x = rng.standard_normal((b, *size, channels)).astype(np.float32)
    mask = (rng.random((b, *out_hw, 1)) > 0.5).astype(np.float32)
    y = np.concatenate([mask, np.ones_like(mask)], -1) if needs_weight_map(cfg.loss) else mask

    class SameBatch(keras.utils.PyDataset):
        def __len__(self) -> int:
            return WARMUP_STEPS + 1 + steps

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            return x, y

    ends: list[float] = []
    clock = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter())
    )
    model.fit(SameBatch(), epochs=1, verbose=0, callbacks=[clock])
    times = np.diff(ends[WARMUP_STEPS:])
    aug_cfg = augment_config(dataclasses.replace(cfg))
    image = rng.random((*size, channels)).astype(np.float32)
    sample_mask = (rng.random(size) > 0.5).astype(np.float32)
    t = time.perf_counter()
    for _ in range(b):
        augment(image, sample_mask, rng, aug_cfg)
    aug = time.perf_counter() - t
    keras.backend.clear_session()
    return {
        "step_s": round(float(np.median(times)), 4),
        "augment_s": round(aug, 4),
        "batch_size": b,
    }
