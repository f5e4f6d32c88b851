"""Whether a training fits in memory, estimated before it starts.

A training that does not fit is not stopped by Python: the kernel kills the process
(the shell prints ``Killed``, status 137) minutes in, with nothing said about why.
:func:`memory_warning` compares an estimate of the training's peak memory with what the
machine (or the container's memory limit) has free, so ``unet train`` can say so in
one line before the first epoch.

The estimate is ``BASE_BYTES + cache + pixels of a batch x bytes per pixel``. Measured
with ``/usr/bin/time -f %M`` on ``unet train`` (2 epochs, ``--progressive 0``, 40
synthetic 1024-px X-rays resized, TensorFlow, Intel Xeon, 2026-12-06), peak RSS:

==========  =====  ==============  =======
size        batch  precision       peak MB
==========  =====  ==============  =======
128         4      mixed_bfloat16  1003
256         4      mixed_bfloat16  1116
256         8      mixed_bfloat16  1275
512         4      mixed_bfloat16  1580
512         8      mixed_bfloat16  2183
256         4      float32         1244
512         4      float32         2172
512         4      bf16, BN        2345
512         4      bf16, 32 filt.  2387
==========  =====  ==============  =======

So about 1 GB besides the batch, 600 bytes per pixel of a batch in ``mixed_bfloat16``
with 16 base filters, twice that in float32, about 2.2 times with batch normalisation,
and in proportion to the base filters (2.3 times for 32). Other backends and depths
were not measured; the estimate is for a warning, not a refusal.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_BYTES = 1_000_000_000
"""TensorFlow, Keras, the model, its optimiser and the batch pipeline (measured: 0.96-1.0 GB)."""

BYTES_PER_PIXEL = {"mixed_bfloat16": 600, "float32": 1200}
"""Peak bytes per pixel of a batch (input size x batch), 16 base filters, no batch norm."""

BATCH_NORM_FACTOR = 2.2
"""How much batch normalisation multiplies the bytes per pixel (measured 2.2 at 512/4)."""


def training_bytes(
    image_size: tuple[int, int],
    batch_size: int,
    precision: str,
    base_filters: int = 16,
    batch_norm: bool = False,
    cache_bytes: int = 0,
) -> int:
    """The estimated peak memory of a training, in bytes (see the module's table).

    Args:
        image_size: ``(height, width)`` of the network's input.
        batch_size: Samples per batch.
        precision: ``"mixed_bfloat16"`` or ``"float32"``.
        base_filters: Filters of the first level (16: the 25% network).
        batch_norm: Batch normalisation after each convolution.
        cache_bytes: Bytes of the decoded samples kept in memory.
    """
    per_pixel = BYTES_PER_PIXEL.get(precision, BYTES_PER_PIXEL["float32"])
    per_pixel *= base_filters / 16 * (BATCH_NORM_FACTOR if batch_norm else 1.0)
    pixels = image_size[0] * image_size[1] * batch_size
    return int(BASE_BYTES + cache_bytes + per_pixel * pixels)


def available_bytes(
    meminfo: str | os.PathLike = "/proc/meminfo",
    cgroup: str | os.PathLike = "/sys/fs/cgroup",
) -> int | None:
    """Memory this process can still take: Linux's ``MemAvailable``, or less where a
    cgroup (v2) memory limit leaves less (a container); None where neither can be read
    (not Linux)."""
    free = None
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path(cgroup, "memory.max").read_text().strip()
        used = int(Path(cgroup, "memory.current").read_text().strip())
        if limit != "max":
            left = max(int(limit) - used, 0)
            free = left if free is None else min(free, left)
    except (OSError, ValueError):
        pass
    return free


def memory_warning(needed: int, free: int | None, size: tuple[int, int], batch: int) -> str | None:
    """The warning when ``needed`` bytes exceed ``free`` (None: fits, or unknown)."""
    if free is None or needed <= free:
        return None
    h, w = size
    return (
        f"this training needs about {needed / 1e9:.1f} GB ({h}x{w}, batch {batch}) and "
        f'{free / 1e9:.1f} GB is free: the system may kill it ("Killed"); lower '
        "--batch-size or --image-size, or free memory"
    )
