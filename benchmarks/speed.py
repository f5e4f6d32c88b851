"""Speed of the default U-Net: Keras (TensorFlow) against the same network in plain PyTorch.

Run by hand or with ``make bench`` (never part of ``make test``)::

    .venv/bin/python benchmarks/speed.py            # full run, appends to benchmarks/RESULTS.md
    .venv/bin/python benchmarks/speed.py --quick    # a smoke run: few rounds, small matmul

Everything runs in ONE process so that the comparison is fair on a shared machine:

1. Model throughput. The default network (25% width, 16-32-64-128-256 filters, depth
   4, same padding) at ``--size`` x ``--size``, batch ``--batch``, in these
   configurations, timed in interleaved rounds (the order rotates every round) after
   warm-up; each figure is the median over rounds:

   * Keras 3 / TensorFlow, float32 and ``mixed_bfloat16`` (``--xla`` adds XLA variants):
     training = ``train_on_batch`` (Adam, BCE+Dice), inference = ``predict_on_batch``;
   * the same architecture in plain PyTorch, channels-last, eager, float32 and bf16
     autocast: training = forward + BCE+Dice + backward + Adam, inference under
     ``torch.inference_mode``.

2. Matmul throughput of the machine (a large matmul, float32 and bfloat16, in
   TensorFlow and in PyTorch) and the fraction of the faster of the two (per precision)
   that training and inference reach,
   from the network's FLOPs counted from its layers (``unet_lowered.model.count_flops``):
   inference = forward FLOPs, training = 3 x forward (forward, gradient of the
   activations, gradient of the weights).

3. The input pipeline alone (decode + augment + batch, ``unet_lowered.training.sequence``)
   and end-to-end ``unet train`` (``unet_lowered.training.train.train``, input pipeline
   and validation included) on a prepared folder, against the bare training step
   measured in (1).
   These sections are skipped with a note when the modules they need are missing.

4. Peak memory (resident set size of the process) after each section.

The heap: glibc's ``malloc`` hands large blocks to ``mmap`` and returns them on free,
below a threshold it raises as large blocks come and go. PyTorch's CPU tensors come
from ``malloc``, so its step depends on that history: its bf16 step alone in a process
took 140 ms at 224 px, batch 4 (Intel Xeon with AMX, 2026-12-05), 110 ms with the
thresholds fixed high, and 110-130 ms after float32 configurations had run in the same
process (the order of the rounds decided it). TensorFlow's step is the same either way.
``--malloc tuned`` (the default) fixes both thresholds at 256 MiB with ``mallopt``
before anything is allocated (what ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` do, and what Intel's PyTorch tuning guide gets with
jemalloc or tcmalloc), so that PyTorch is timed at its best and the figures do not
depend on the order; ``--malloc default`` leaves glibc as it is.

It prints one Markdown table and appends it, with the date and the machine, to
``benchmarks/RESULTS.md`` (``--no-append`` to skip).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SHARED_JSRT = ROOT.parent / "shared" / "data" / "jsrt-lungs"


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (median is reported)")
    p.add_argument("--steps", type=int, default=3, help="steps per configuration per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration")
    p.add_argument("--batch", type=int, default=8, help="batch size")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--matmul", type=int, default=2048, help="side of the square matmul")
    p.add_argument("--tf-intra", type=int, default=cores, help="TensorFlow intra-op threads")
    p.add_argument(
        "--tf-inter",
        type=int,
        default=0,
        help="TensorFlow inter-op threads (0: TensorFlow's default, as `unet train` runs; "
        "1 runs one op at a time)",
    )
    p.add_argument("--torch-threads", type=int, default=2, help="PyTorch intra-op threads")
    p.add_argument("--xla", action="store_true", help="also time Keras with jit_compile=True")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="prepared folder or Kaggle-layout folder for the pipeline and end-to-end "
        "sections (default: ../shared/data/jsrt-lungs if present, else synthetic data)",
    )
    p.add_argument("--epochs", type=int, default=4, help="epochs of the end-to-end run")
    p.add_argument("--skip-e2e", action="store_true", help="skip the pipeline and unet train")
    p.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 2 rounds x 1 step, 1024 matmul, 2 epochs"
    )
    p.add_argument(
        "--malloc",
        choices=MALLOC_CHOICES,
        default="tuned",
        help="tuned: glibc's mmap and trim thresholds fixed at 256 MiB (PyTorch at its best); "
        "default: glibc as it is",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup, args.matmul, args.epochs = 2, 1, 1, 1024, 2
    if args.rounds < 1 or args.steps < 1 or args.batch < 1 or args.epochs < 2:
        p.error("--rounds, --steps and --batch must be at least 1, --epochs at least 2")
    return args


# ---------------------------------------------------------------- bookkeeping

MALLOC_CHOICES = ("tuned", "default")
MALLOC_THRESHOLD = 256 * 1024**2
"""Bytes: glibc's mmap and trim thresholds under ``--malloc tuned``."""


def add_malloc_option(parser: argparse.ArgumentParser) -> None:
    """``--malloc tuned|default`` for the profiling scripts, whose children call
    :func:`tune_malloc` under ``tuned``."""
    parser.add_argument(
        "--malloc",
        choices=MALLOC_CHOICES,
        default="tuned",
        help="tuned: glibc's mmap and trim thresholds fixed at 256 MiB in each child, as "
        "speed.py does (PyTorch's step depends on them); default: glibc as it is",
    )


def tune_malloc(threshold: int = MALLOC_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold and trim threshold at ``threshold`` bytes for this
    process (``mallopt(M_MMAP_THRESHOLD)``, ``mallopt(M_TRIM_THRESHOLD)``): large
    blocks then stay on the heap and are reused instead of being mapped and zeroed
    afresh for every tensor. True when glibc took both settings; False elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or not name:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(
        libc.mallopt(m_trim_threshold, threshold)
    )


@dataclass
class Timed:
    """Images/s of one configuration: one sample per round."""

    label: str
    step: Callable[[], None]
    images_per_step: int
    samples: list[float] = field(default_factory=list)

    def run(self, steps: int) -> None:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.samples.append(steps * self.images_per_step / (time.perf_counter() - start))

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def spread(self) -> str:
        if len(self.samples) < 2:
            return ""
        return f"{min(self.samples):.1f}-{max(self.samples):.1f}"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def interleave(configs: list[Timed], rounds: int, steps: int, warmup: int) -> None:
    """Warm every configuration up, then time them in rounds, rotating the order."""
    for c in configs:
        for _ in range(warmup):
            c.step()
    for r in range(rounds):
        k = r % len(configs)
        for c in configs[k:] + configs[:k]:
            c.run(steps)
        print(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{c.label} {c.samples[-1]:.1f}" for c in configs),
            flush=True,
        )


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cores() -> int:
    """CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def git_commit() -> str:
    """The short commit of the checkout these scripts are in; '-' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "-"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "-"


def machine_line() -> str:
    """One line to print before a table: the UTC date and time, the CPU model, the cores
    this process may use and the git commit."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{stamp}, {cpu_model()}, {cores()} cores, commit {git_commit()}"


def append_section(heading: str, body: str) -> Path:
    """Append ``## <UTC time>: <heading>``, the machine line and ``body`` to RESULTS.md
    (:func:`append_results`) and return its path."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    append_results(f"## {stamp}: {heading}\n\nMachine: {cpu_model()}, {cores()} cores. {body}\n")
    return RESULTS


def cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def bf16_train_step(which: str, batch: int, size: int) -> Timed:
    """One framework's bf16 training step on a batch of :func:`make_batch`, as the
    profiling scripts run it: ``keras`` (``mixed_bfloat16``, TensorFlow on all cores
    inside an op and its default inter-op threads, as :func:`main` sets it and ``unet
    train`` runs) or ``torch`` (bf16 autocast, all cores). Call it once per process."""
    import os

    x, y = make_batch(batch, size)
    if which == "keras":
        import tensorflow as tf

        import unet_lowered  # noqa: F401  (sets the TensorFlow backend)

        tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count() or 1)
        train, _, _ = keras_configs(x, y, size, False, policies=("mixed_bfloat16",))
        return train[0]
    train, _, _ = torch_configs(x, y, threads=os.cpu_count() or 1)
    return train[1]  # bf16 autocast


# ---------------------------------------------------------------- inputs


def make_batch(batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of synthetic chest X-rays, standardised, and their masks: (B, S, S, 1) float32."""
    from unet_lowered.demo.synth import synth_pair

    rng = np.random.default_rng(0)
    xs, ys = [], []
    for _ in range(batch):
        image, mask = synth_pair(rng, size)
        x = image.astype(np.float32)
        xs.append((x - x.mean()) / (x.std() + 1e-6))
        ys.append((mask > 0).astype(np.float32))
    return np.stack(xs)[..., None], np.stack(ys)[..., None]


# ---------------------------------------------------------------- Keras


def keras_model(size: int, policy: str):
    """Our model under a dtype policy; the default network from unet_lowered.model."""
    import keras

    from unet_lowered.model import unet

    keras.mixed_precision.set_global_policy(policy)
    try:
        model = unet(input_shape=(size, size, 1))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def keras_loss():
    """The product's default loss (BCE + Dice on logits); a local copy until get_loss lands."""
    try:
        from unet_lowered.training.losses import get_loss

        return get_loss("bce+dice", 1), "unet_lowered.training.losses.get_loss('bce+dice')"
    except ImportError:
        pass
    import keras
    from keras import ops

    def bce_dice(y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        bce = ops.mean(
            ops.maximum(logits, 0) - logits * y_true + ops.log1p(ops.exp(-ops.abs(logits))),
            axis=(1, 2, 3),
        )
        p = ops.sigmoid(logits)
        inter = ops.sum(p * y_true, axis=(1, 2, 3))
        dice = (2 * inter + 1) / (ops.sum(p, axis=(1, 2, 3)) + ops.sum(y_true, axis=(1, 2, 3)) + 1)
        return bce + 1 - dice

    del keras
    return bce_dice, "local BCE+Dice (unet_lowered.training.losses.get_loss not available)"


def keras_optimizer():
    """The product's optimizer at 1e-3: ``FusedAdam`` (Keras' Adam, its update one TF
    kernel); Keras' ``Adam`` where the package predates it."""
    import keras

    try:
        from unet_lowered.training.optimizers import FusedAdam
    except ImportError:
        return keras.optimizers.Adam(1e-3)
    return FusedAdam(1e-3)


def keras_configs(
    x, y, size: int, xla: bool, policies: tuple[str, ...] = ("float32", "mixed_bfloat16")
) -> tuple[list[Timed], list[Timed], dict]:
    import tensorflow as tf

    loss, loss_name = keras_loss()
    xt, yt = tf.constant(x), tf.constant(y)
    train, infer = [], []
    variants = [(p, False) for p in policies] + [(p, True) for p in policies if xla]
    optimizer = "Adam"
    for policy, jit in variants:
        model = keras_model(size, policy)
        model.compile(optimizer=keras_optimizer(), loss=loss, jit_compile=jit)
        optimizer = type(model.optimizer).__name__
        label = f"Keras/TF {policy}" + (" XLA" if jit else "")
        train.append(Timed(label, lambda m=model: m.train_on_batch(xt, yt), len(x)))
        infer.append(Timed(label, lambda m=model: m.predict_on_batch(xt), len(x)))
    return train, infer, {"loss": loss_name, "optimizer": optimizer}


# ---------------------------------------------------------------- PyTorch


def torch_unet(base: int = 16, depth: int = 4, in_ch: int = 1, classes: int = 1):
    """The same U-Net in plain PyTorch: 3x3 same convs + ReLU, maxpool, 2x2 transpose conv."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True),
        )  # fmt: skip

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            f = [base * 2**i for i in range(depth + 1)]
            self.down = nn.ModuleList(
                [block(in_ch if i == 0 else f[i - 1], f[i]) for i in range(depth)]
            )
            self.bottom = block(f[depth - 1], f[depth])
            self.up = nn.ModuleList(
                [nn.ConvTranspose2d(f[i + 1], f[i], 2, stride=2) for i in range(depth)]
            )
            self.dec = nn.ModuleList([block(2 * f[i], f[i]) for i in range(depth)])
            self.head = nn.Conv2d(f[0], classes, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = []
            for blk in self.down:
                x = blk(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.bottom(x)
            for i in reversed(range(depth)):
                x = self.dec[i](torch.cat([skips[i], self.up[i](x)], dim=1))
            return self.head(x)

    return UNet()


def torch_configs(x, y, threads: int) -> tuple[list[Timed], list[Timed], dict]:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cl = torch.channels_last
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    yt = torch.from_numpy(y).permute(0, 3, 1, 2).contiguous(memory_format=cl)

    def loss_fn(logits, target):
        logits = logits.float()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        inter = (p * target).sum((1, 2, 3))
        dice = (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
        return bce + (1 - dice).mean()

    train, infer = [], []
    for bf16 in (False, True):
        model = torch_unet().to(memory_format=cl)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        label = "PyTorch " + ("bf16 autocast" if bf16 else "float32") + " (channels_last, eager)"

        def train_step(model=model, opt=opt, bf16=bf16):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(xt)
            loss_fn(out, yt).backward()
            opt.step()

        def infer_step(model=model, bf16=bf16):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(xt)

        train.append(Timed(label, train_step, len(x)))
        infer.append(Timed(label, infer_step, len(x)))
    return train, infer, {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


# ---------------------------------------------------------------- matmul


def matmul_configs(n: int) -> list[Timed]:
    """GFLOP/s of an n x n x n matmul (Timed.samples hold matmuls/s; x 2n^3 later)."""
    import tensorflow as tf
    import torch

    configs = []
    for dtype in (tf.float32, tf.bfloat16):
        a = tf.cast(tf.random.normal((n, n), seed=1), dtype)
        b = tf.cast(tf.random.normal((n, n), seed=2), dtype)
        configs.append(
            Timed(f"TF {dtype.name}", lambda a=a, b=b: tf.linalg.matmul(a, b).numpy(), 1)
        )
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        configs.append(Timed(f"PyTorch {str(dtype).split('.')[1]}", lambda a=a, b=b: a @ b, 1))
    return configs


# ---------------------------------------------------------------- pipeline and unet train


def prepared_folder(args: argparse.Namespace, tmp: Path) -> tuple[Path | None, str]:
    """A prepared folder for the pipeline / end-to-end sections, or (None, why not)."""
    src = args.data
    if src is None:
        if SHARED_JSRT.is_dir():
            src = SHARED_JSRT
        else:
            from unet_lowered.demo.synth import make_dataset

            src = make_dataset(tmp / "synth", count=200, test_count=0, size=args.size, seed=0)
    src = Path(src)
    if (src / "dataset.json").is_file():
        return src, str(src)
    dest = tmp / "prepared"
    proc = subprocess.run(
        [sys.executable, "-m", "unet_lowered", "prepare", str(src), str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return None, f"`unet prepare {src}` failed ({last[:120]})"
    return dest, f"{src} (prepared with `unet prepare`)"


def pipeline_rate(prepared: Path, args: argparse.Namespace) -> dict:
    """Images/s of the training input pipeline alone: one cold pass, then one warm pass."""
    from unet_lowered.dataset.pairs import load_prepared
    from unet_lowered.model import output_size
    from unet_lowered.training.config import TrainConfig
    from unet_lowered.training.sequence import make_sequences

    cfg = TrainConfig(image_size=args.size, batch_size=args.batch).validate()
    dataset = load_prepared(prepared)
    split = dataset.split(cfg.val_fraction, cfg.seed)
    out_hw = output_size((args.size, args.size), cfg.depth, cfg.padding)
    train_seq, _ = make_sequences(dataset, split, cfg, augment=True, output_size=out_hw)
    rates = []
    for _ in range(2):
        images, start = 0, time.perf_counter()
        for i in range(len(train_seq)):
            images += len(train_seq[i][0])
        rates.append(images / (time.perf_counter() - start))
        if hasattr(train_seq, "on_epoch_end"):
            train_seq.on_epoch_end()
    return {"cold": rates[0], "warm": rates[1], "images": images}


class _EpochClock(threading.Thread):
    """Notes when RUN/history.csv changes: `unet train` rewrites it at each epoch's end."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.ends, self.stop = path, [], threading.Event()

    def run(self) -> None:
        last = None
        while not self.stop.wait(0.02):
            with contextlib.suppress(OSError):
                stamp = self.path.stat().st_mtime_ns
                if stamp != last:
                    last = stamp
                    self.ends.append(time.perf_counter())


def train_rate(prepared: Path, args: argparse.Namespace, tmp: Path) -> dict:
    """End-to-end `unet train` for a few epochs: images/s per epoch, validation included."""
    from unet_lowered.training.config import TrainConfig
    from unet_lowered.training.train import train

    run = tmp / "run"
    cfg = TrainConfig(image_size=args.size, batch_size=args.batch, epochs=args.epochs)
    clock = _EpochClock(run / "history.csv")
    clock.start()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = train(prepared, run, cfg, verbose=0)
    total = time.perf_counter() - start
    clock.stop.set()
    clock.join()
    n_train = len(json.loads((run / "split.json").read_text())["train"])
    epochs = int(metrics.get("epochs_completed") or args.epochs)
    steady = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)]
    return {
        "n_train": n_train,
        "epochs": epochs,
        "precision": metrics.get("precision"),
        "whole": n_train * epochs / total,  # model build, tracing, checkpoints all included
        "steady": n_train / statistics.median(steady) if steady else float("nan"),
        "fit_images_per_s": metrics.get("images_per_s"),
        "val_dice": metrics.get("val_dice"),
    }


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    malloc = "glibc as it is"
    if args.malloc == "tuned":
        tuned = tune_malloc()
        malloc = (
            f"glibc's mmap and trim thresholds fixed at {MALLOC_THRESHOLD // 1024**2} MiB"
            if tuned
            else "glibc as it is (mallopt not available here)"
        )
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # as `import unet_lowered` does
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.tf_intra)
    tf.config.threading.set_inter_op_parallelism_threads(args.tf_inter)
    import keras

    from unet_lowered.model import count_flops, unet

    load_start = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    notes: list[str] = []
    memory: list[tuple[str, float]] = []

    size, batch = args.size, args.batch
    x, y = make_batch(batch, size)
    flops = count_flops(unet(input_shape=(size, size, 1)), (size, size))
    params = unet(input_shape=(size, size, 1)).count_params()
    memory.append(("inputs and model built", peak_rss_mib()))

    print(f"building models ({size}x{size}, batch {batch}) ...", flush=True)
    k_train, k_infer, k_info = keras_configs(x, y, size, args.xla)
    t_train, t_infer, t_info = torch_configs(x, y, args.torch_threads)
    configs_train, configs_infer = k_train + t_train, k_infer + t_infer
    mm = matmul_configs(args.matmul)

    print("timing training, inference and matmul in interleaved rounds ...", flush=True)
    interleave(configs_train + configs_infer + mm, args.rounds, args.steps, args.warmup)
    memory.append(("after the timed rounds", peak_rss_mib()))
    keras.mixed_precision.set_global_policy("float32")

    mm_gflops = {c.label: c.median * 2 * args.matmul**3 / 1e9 for c in mm}
    mm_spread = {c.label: c for c in mm}

    # ---- pipeline and end-to-end
    pipe = e2e = None
    if args.skip_e2e:
        notes.append("pipeline and end-to-end sections skipped (--skip-e2e)")
    else:
        with tempfile.TemporaryDirectory(prefix="unet-bench-") as tmpdir:
            tmp = Path(tmpdir)
            try:
                prepared, source = prepared_folder(args, tmp)
            except Exception as e:  # a benchmark section must not sink the whole run
                prepared, source = None, f"could not make data: {type(e).__name__}: {e}"
            if prepared is None:
                notes.append(f"pipeline and end-to-end skipped: {source}")
            else:
                notes.append(f"pipeline and end-to-end data: {source}")
                try:
                    print("timing the input pipeline ...", flush=True)
                    pipe = pipeline_rate(prepared, args)
                    memory.append(("after the input pipeline", peak_rss_mib()))
                except Exception as e:  # optional section: report why, keep going
                    traceback.print_exc()
                    notes.append(f"input pipeline skipped: {_why(e)}")
                try:
                    print(f"timing `unet train` for {args.epochs} epochs ...", flush=True)
                    e2e = train_rate(prepared, args, tmp)
                    memory.append(("after unet train", peak_rss_mib()))
                except Exception as e:
                    traceback.print_exc()
                    notes.append(f"end-to-end `unet train` skipped: {_why(e)}")
    if e2e:
        # `unet train` switches TensorFlow to deterministic kernels for the rest of the
        # process; time the bare step again under the same conditions.
        print("timing the bare step again, as `unet train` runs it ...", flush=True)
        again = keras_configs(x, y, size, False, policies=(e2e["precision"],))[0][0]
        again.label += " (after `unet train`: op determinism on)"
        interleave([again], min(args.rounds, 3), args.steps, args.warmup)
        e2e["bare_after"] = again

    load_end = os.getloadavg()
    info = {
        "params": params,
        "flops": flops,
        "load": (load_start[0], load_end[0]),
        "malloc": malloc,
        **k_info,
        **t_info,
    }
    table = report(
        args,
        started,
        info,
        configs_train,
        configs_infer,
        mm_gflops,
        mm_spread,
        pipe,
        e2e,
        memory,
        notes,
    )
    print()
    print(table)
    if not args.no_append:
        append_results(table)
        print(f"appended to {RESULTS.relative_to(ROOT)}")
    return 0


def report(
    args,
    started,
    info,
    configs_train,
    configs_infer,
    mm_gflops,
    mm_spread,
    pipe,
    e2e,
    memory,
    notes,
) -> str:
    """The Markdown section appended to RESULTS.md."""
    n_cores = cores()
    flops = info["flops"]
    bf16_cpu = "avx512_bf16" in cpu_flags() or "amx_bf16" in cpu_flags()
    mode = " --quick" if args.quick else ""
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC: speed.py{mode}, {args.size}x{args.size}, batch {args.batch}",
        "",
        f"Machine: {cpu_model()}, {n_cores} cores{' (AVX512-BF16)' if bf16_cpu else ''}, "
        f"Python {platform.python_version()}, TensorFlow {_version('tensorflow')}, "
        f"Keras {_version('keras')}, PyTorch {info['torch']}. Threads: TensorFlow intra "
        f"{args.tf_intra} / inter {args.tf_inter}, PyTorch {info['torch_threads']}. "
        f"Load average (1 min) {info['load'][0]:.2f} at start, {info['load'][1]:.2f} at end. "
        f"Heap: {info.get('malloc', 'glibc as it is')} (`--malloc`).",
        "",
        f"Network: default U-Net (16-32-64-128-256, depth 4, same padding), "
        f"{info['params'] / 1e6:.2f} M parameters, {flops / 1e9:.2f} GFLOP forward per image "
        f"(counted from the layers by `count_flops`; training counted as 3x). "
        f"Loss: {info['loss']}, {info.get('optimizer', 'Adam')} (PyTorch: Adam). Median of {args.rounds} interleaved rounds x "
        f"{args.steps} steps after {args.warmup} warm-up steps (range over rounds in parentheses).",
        "",
        "| configuration | train img/s | infer img/s | train % of matmul | infer % of matmul |",
        "|---|---:|---:|---:|---:|",
    ]
    # The machine's matmul throughput per precision: the faster of TensorFlow's and PyTorch's.
    peaks = {}
    for prec, names in (
        ("fp32", ("TF float32", "PyTorch float32")),
        ("bf16", ("TF bfloat16", "PyTorch bfloat16")),
    ):
        name = max(names, key=lambda n: mm_gflops[n])
        peaks[prec] = (name, mm_gflops[name])
    for tr, inf in zip(configs_train, configs_infer, strict=True):
        peak = peaks["bf16" if ("bf16" in tr.label or "bfloat16" in tr.label) else "fp32"][1]
        tr_pct = 100 * tr.median * 3 * flops / 1e9 / peak
        in_pct = 100 * inf.median * flops / 1e9 / peak
        lines.append(
            f"| {tr.label} | {tr.median:.2f} ({tr.spread}) | {inf.median:.2f} ({inf.spread}) "
            f"| {tr_pct:.0f}% | {in_pct:.0f}% |"
        )

    def ratio(configs: list[Timed], pick: Callable[[Timed], float]) -> str:
        ours = max(pick(c) for c in configs if c.label.startswith("Keras"))
        theirs = max(pick(c) for c in configs if c.label.startswith("PyTorch"))
        return f"{ours / theirs:.2f}x"

    def best(c: Timed) -> float:
        return max(c.samples)

    def median(c: Timed) -> float:
        return c.median

    lines += [
        f"| **ours best / PyTorch best (medians)** | **{ratio(configs_train, median)}** | "
        f"**{ratio(configs_infer, median)}** | | |",
        f"| ours best / PyTorch best (best rounds) | {ratio(configs_train, best)} | "
        f"{ratio(configs_infer, best)} | | |",
        "",
        f"Matmul {args.matmul}x{args.matmul}x{args.matmul}, GFLOP/s: "
        + ", ".join(
            f"{k} {v:.0f} ({_gflops_spread(mm_spread[k], args.matmul)})"
            for k, v in mm_gflops.items()
        )
        + ". Percentages above are against the faster matmul of the same precision: "
        + ", ".join(f"{n} ({v:.0f} GFLOP/s)" for n, v in peaks.values())
        + ". Best rounds: the least disturbed round of each configuration (a shared machine).",
        "",
    ]
    if pipe or e2e:
        lines += ["| pipeline / end to end | img/s | note |", "|---|---:|---|"]
    if pipe:
        lines.append(
            f"| input pipeline alone (decode + augment + batch, one thread) | {pipe['warm']:.1f} "
            f"| first pass {pipe['cold']:.1f} img/s (includes decoding/caching) |"
        )
    if e2e:
        bare = next(
            (c.median for c in configs_train if c.label == f"Keras/TF {e2e['precision']}"),
            float("nan"),
        )
        lines += [
            f"| `unet train`, steady epoch (pipeline + step + validation + checkpoints) | "
            f"{e2e['steady']:.1f} | {100 * e2e['steady'] / bare:.0f}% of the bare {e2e['precision']} "
            f"step ({bare:.1f} img/s); {e2e['n_train']} training images per epoch |",
            f"| `unet train`, whole fit of {e2e['epochs']} epochs (with tracing) | {e2e['whole']:.1f} | "
            f"train batches only, as metrics.json reports: {e2e['fit_images_per_s']} img/s |",
        ]
        after = e2e.get("bare_after")
        if after is not None:
            lines.append(
                f"| bare {e2e['precision']} step after `unet train` (op determinism on) | "
                f"{after.median:.1f} | `unet train` steady epoch = "
                f"{100 * e2e['steady'] / after.median:.0f}% of it |"
            )
    if pipe or e2e:
        lines.append("")
    lines.append(
        "Peak resident memory of the process: "
        + ", ".join(f"{what} {mib:.0f} MiB" for what, mib in memory)
        + "."
    )
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    if max(info["load"]) > 0.5 * n_cores:
        lines += [
            "",
            f"Note: the machine was shared during this run (load {info['load'][0]:.1f}/"
            f"{info['load'][1]:.1f} on {n_cores} cores): absolute figures may be low; the "
            "interleaved ratios are the more reliable numbers.",
        ]
    return "\n".join(lines) + "\n"


def _why(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:160]}"


def _gflops_spread(c: Timed, n: int) -> str:
    return "-".join(f"{s * 2 * n**3 / 1e9:.0f}" for s in (min(c.samples), max(c.samples)))


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in (module, f"{module}-cpu"):
        with contextlib.suppress(PackageNotFoundError):
            return version(dist)
    return "?"


def append_results(section: str) -> None:
    """Append one section to RESULTS.md (created with its header if missing)."""
    if not RESULTS.exists():
        RESULTS.write_text(RESULTS_HEADER)
    with open(RESULTS, "a") as f:
        f.write("\n" + section)


RESULTS_HEADER = """# Benchmark results

Appended by `benchmarks/speed.py` (speed: Keras/TensorFlow against the same U-Net in plain
PyTorch, matmul throughput, input pipeline, end-to-end `unet train`),
`benchmarks/accuracy.py` (Dice/IoU on the shared data sets), `benchmarks/robustness.py`
(simulated other-hospital X-rays) and `benchmarks/feeding.py` (how the step is fed);
`benchmarks/onednn_profile.py` (where a step's time goes) only prints, and its figures
were copied here by hand. Newest at the bottom.
Each section says when, on which machine and with which load it was measured.
"""


if __name__ == "__main__":
    sys.exit(main())
