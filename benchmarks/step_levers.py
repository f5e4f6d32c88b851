"""The training step with and without each of its levers, in one process, same weights.

Two levers make the product's step cheaper than Keras' stock layers would:

* ``UpConv2x2``, the model's 2x2 up-convolution, computed as a 1x1 convolution and a
  pixel shuffle (TensorFlow's oneDNN then fuses its bias) instead of Keras'
  ``Conv2DTranspose``;
* ``FusedAdam``, Keras' Adam whose update is TensorFlow's one ``ResourceApplyAdam``
  kernel instead of a dozen element-wise ops per weight tensor.

Each variant is the default network (``unet_lowered.model.unet``) under ``--policy``
(``mixed_bfloat16``) with the product's loss, as ``speed.py`` runs it (TensorFlow on all
cores inside an op, its default inter-op threads, as ``unet train``; ``--tf-inter 1``
runs one op at a time), on the Keras backend that ``KERAS_BACKEND`` names (TensorFlow by
default; JAX and PyTorch work too, where ``FusedAdam`` is Keras' Adam);
``--deterministic`` turns on TensorFlow's op determinism, as ``unet train`` does:

* ``now``: both levers (the product's step);
* ``transpose``: ``Conv2DTranspose`` up-convolutions, ``FusedAdam``;
* ``keras-adam``: ``UpConv2x2``, Keras' ``Adam``;
* ``before``: neither.

All variants get the first one's weights. First the float32 logits of the two
up-convolutions are compared (they must agree); then ``--rounds`` rounds alternate the
variants, each timing ``--steps`` training steps (``train_on_batch``) and as many
inference calls (``predict_on_batch``); the medians are printed with each variant's
speed relative to the first variant's.

Run by hand on a quiet machine::

    [KERAS_BACKEND=jax] .venv/bin/python benchmarks/step_levers.py [--size 224] [--batch 4]
        [--rounds 8] [--steps 5] [--policy mixed_bfloat16] [--variants now,transpose,...]
        [--deterministic]

It prints a Markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed  # benchmarks/speed.py

VARIANTS: dict[str, tuple[bool, bool]] = {
    "now": (False, True),
    "transpose": (True, True),
    "keras-adam": (False, False),
    "before": (True, False),
}
"""Variant -> (``Conv2DTranspose`` up-convolutions, ``FusedAdam``)."""


def build(size: int, policy: str, plain: bool):
    """The default network under ``policy``; ``plain``: its up-convolutions as Keras'
    ``Conv2DTranspose`` (the layer ``UpConv2x2`` subclasses, same config and weights)."""
    import keras

    from unet_lowered import model as unet_model

    own = unet_model.UpConv2x2
    if plain:
        unet_model.UpConv2x2 = keras.layers.Conv2DTranspose
    try:
        keras.mixed_precision.set_global_policy(policy)
        return unet_model.unet(input_shape=(size, size, 1))
    finally:
        keras.mixed_precision.set_global_policy("float32")
        unet_model.UpConv2x2 = own


def optimizer(fused: bool):
    """``FusedAdam`` (the product's) or Keras' ``Adam``, at 1e-3."""
    import keras

    from unet_lowered.training.optimizers import FusedAdam

    return FusedAdam(1e-3) if fused else keras.optimizers.Adam(1e-3)


def max_difference(size: int, x: np.ndarray) -> float:
    """Largest ``|UpConv2x2 - Conv2DTranspose|`` of the two float32 models' logits on ``x``."""
    own, plain = build(size, "float32", False), build(size, "float32", True)
    plain.set_weights(own.get_weights())
    return float(np.max(np.abs(own.predict_on_batch(x) - plain.predict_on_batch(x))))


def interleaved(calls: dict[str, Callable[[], object]], rounds: int, steps: int) -> dict:
    """Milliseconds per call of each entry: ``rounds`` rounds, the entries alternating
    (their order reversed every other round), ``steps`` calls each; the medians."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for k in range(rounds):
        for name in names if k % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for _ in range(steps):
                calls[name]()
            times[name].append((time.perf_counter() - start) / steps * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=4, help="batch size")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=5, help="calls timed per round")
    parser.add_argument("--policy", default="mixed_bfloat16", help="Keras dtype policy timed")
    parser.add_argument(
        "--tf-inter",
        type=int,
        default=0,
        help="TensorFlow inter-op threads (0: its default, as `unet train` runs)",
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="TensorFlow op determinism on, as `unet train` sets it (all variants)",
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}"
    )
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    import keras

    import unet_lowered  # noqa: F401  (sets the backend: KERAS_BACKEND, TensorFlow by default)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count() or 1)
        tf.config.threading.set_inter_op_parallelism_threads(args.tf_inter)
        if args.deterministic:
            tf.config.experimental.enable_op_determinism()
    x, y = speed.make_batch(args.batch, args.size)
    xt, yt = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    diff = max_difference(args.size, xt)
    loss, _ = speed.keras_loss()
    models = {}
    for name in variants:
        plain, fused = VARIANTS[name]
        models[name] = build(args.size, args.policy, plain)
        models[name].set_weights(models[variants[0]].get_weights())
        models[name].compile(optimizer=optimizer(fused), loss=loss)
        for _ in range(3):  # trace and warm up
            models[name].train_on_batch(xt, yt)
            models[name].predict_on_batch(xt)
    train = interleaved({n: (lambda m=m: m.train_on_batch(xt, yt)) for n, m in models.items()},
                        args.rounds, args.steps)  # fmt: skip
    infer = interleaved({n: (lambda m=m: m.predict_on_batch(xt)) for n, m in models.items()},
                        args.rounds, args.steps)  # fmt: skip
    print(
        f"# The training step's levers, {args.size}x{args.size}, batch {args.batch}, Keras "
        f"on {backend}, {args.policy}{', op determinism on' if args.deterministic else ''} "
        f"(medians of {args.rounds} alternating rounds of "
        f"{args.steps} calls)\n\nfloat32 logits, UpConv2x2 against Conv2DTranspose, largest "
        f"|difference|: {diff:.3g}\n\n{speed.machine_line()}\n"
    )
    print("| variant | up-convolution | optimizer | train step, ms | inference call, ms |")
    print("|---|---|---|---:|---:|")
    for name in variants:
        plain, fused = VARIANTS[name]
        up = "Conv2DTranspose" if plain else "UpConv2x2"
        opt = "FusedAdam" if fused else "Keras Adam"
        print(f"| {name} | {up} | {opt} | {train[name]:.1f} | {infer[name]:.1f} |")
    ref = variants[0]
    print(f"\n`{ref}`'s calls per second against each other variant's:")
    for name in variants[1:]:
        print(f"- against {name}: training {train[name] / train[ref]:.3f}x, inference "
              f"{infer[name] / infer[ref]:.3f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
