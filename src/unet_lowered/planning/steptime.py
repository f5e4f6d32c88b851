"""The measured cost of one training step on this machine, at the planned shape."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from unet_lowered.training.config import TrainConfig


def measure_step_time(
    cfg: TrainConfig, channels: int, num_classes: int, steps: int = 4
) -> dict[str, float]:
    """Seconds per training step at ``cfg``'s input size and batch size.

    Builds the network, compiles it with the planned loss, runs one warm-up step (graph
    tracing) and ``steps`` timed ``train_on_batch`` calls on random data, of which the
    fastest counts (as :mod:`timeit` advises: slower ones measure other processes); adds the
    time to augment one batch (on 2 cores the input pipeline competes with the step).
    A validation batch is costed as a third of a step (forward pass only).

    Args:
        cfg: The planned settings (``image_size`` an int).
        channels: Input channels.
        num_classes: Output classes.
        steps: Timed steps (the fastest taken).

    Returns:
        ``{"step_s": ..., "augment_s": ..., "batch_size": ...}``.
    """
    import keras

    from unet_lowered.model import output_size
    from unet_lowered.training.augment import augment
    from unet_lowered.training.losses import get_loss, needs_weight_map
    from unet_lowered.training.sequence import augment_config
    from unet_lowered.training.train import build_model

    size = (cfg.image_size, cfg.image_size)
    b = cfg.batch_size
    model = build_model(cfg, channels, num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss(cfg.loss, num_classes))
    rng = np.random.default_rng(0)
    out_hw = output_size(size, cfg.depth, cfg.padding)
    x = rng.standard_normal((b, *size, channels)).astype(np.float32)
    mask = (rng.random((b, *out_hw, 1)) > 0.5).astype(np.float32)
    y = np.concatenate([mask, np.ones_like(mask)], -1) if needs_weight_map(cfg.loss) else mask
    model.train_on_batch(x, y)  # warm-up: tracing and first allocation
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
    aug_cfg = augment_config(dataclasses.replace(cfg))
    image = rng.random((*size, channels)).astype(np.float32)
    sample_mask = (rng.random(size) > 0.5).astype(np.float32)
    t = time.perf_counter()
    for _ in range(b):
        augment(image, sample_mask, rng, aug_cfg)
    aug = time.perf_counter() - t
    keras.backend.clear_session()
    return {
        "step_s": round(min(times), 4),
        "augment_s": round(aug, 4),
        "batch_size": b,
    }
