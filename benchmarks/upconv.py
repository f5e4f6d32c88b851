"""The up-convolution two ways: ``UpConv2x2`` (a 1x1 convolution and a pixel shuffle,
the model's own) against Keras' ``Conv2DTranspose``, in one process, same weights.

Both models are the default network (``unet_lowered.model.unet``) under
``--policy`` (``mixed_bfloat16``), with the product's loss and Adam, as ``speed.py`` runs
it (TensorFlow on all cores inside an op, one op at a time), on the Keras backend that
``KERAS_BACKEND`` names (TensorFlow by default; JAX and PyTorch work too). The second model differs only
in its four up-convolutions, built as plain ``Conv2DTranspose`` layers and given the
first model's weights. First the float32 outputs of the two are compared (they must
agree); then ``--rounds`` rounds alternate the two models, each timing ``--steps``
training steps (``train_on_batch``) and as many inference calls
(``predict_on_batch``); the medians are printed with their ratio.

Run by hand on a quiet machine::

    [KERAS_BACKEND=jax] .venv/bin/python benchmarks/upconv.py [--size 224] [--batch 4]
        [--rounds 8] [--steps 5] [--policy mixed_bfloat16]

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

import speed  # noqa: E402  (benchmarks/speed.py)

VARIANTS = ("UpConv2x2 (1x1 conv + pixel shuffle)", "Conv2DTranspose")


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
    args = parser.parse_args(argv)
    import keras

    import unet_lowered  # noqa: F401  (sets the backend: KERAS_BACKEND, TensorFlow by default)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count() or 1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    x, y = speed.make_batch(args.batch, args.size)
    xt, yt = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    diff = max_difference(args.size, xt)
    loss, _ = speed.keras_loss()
    models = {name: build(args.size, args.policy, plain=i == 1) for i, name in enumerate(VARIANTS)}
    models[VARIANTS[1]].set_weights(models[VARIANTS[0]].get_weights())
    for model in models.values():
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
        for _ in range(3):  # trace and warm up
            model.train_on_batch(xt, yt)
            model.predict_on_batch(xt)
    train = interleaved({n: (lambda m=m: m.train_on_batch(xt, yt)) for n, m in models.items()},
                        args.rounds, args.steps)  # fmt: skip
    infer = interleaved({n: (lambda m=m: m.predict_on_batch(xt)) for n, m in models.items()},
                        args.rounds, args.steps)  # fmt: skip
    print(
        f"# The up-convolution two ways, {args.size}x{args.size}, batch {args.batch}, "
        f"Keras on {backend}, {args.policy} (medians of {args.rounds} alternating rounds of "
        f"{args.steps} calls)\n\nfloat32 logits, largest |difference|: {diff:.3g}\n"
    )
    print("| up-convolution | train step, ms | inference call, ms |\n|---|---:|---:|")
    for name in VARIANTS:
        print(f"| {name} | {train[name]:.1f} | {infer[name]:.1f} |")
    base, own = VARIANTS[1], VARIANTS[0]
    print(
        f"\nUpConv2x2 against Conv2DTranspose: training {train[base] / train[own]:.3f}x, "
        f"inference {infer[base] / infer[own]:.3f}x the calls per second"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
