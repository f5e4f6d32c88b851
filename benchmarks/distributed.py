"""What the distributed engines cost on this machine.

``--part predict``: images/s of ``unet predict`` with the local engine against
``--engine ray`` with 1 and 2 actors, on the synthetic 1-4k px X-rays and the
untrained default U-Net of ``benchmarks/predict_pipeline.py`` (same inputs, same run).
Each variant runs in a fresh child process, interleaved ``--repeats`` times; TensorFlow
and Ray are imported before the clock starts, and the clock covers the whole call as a
user waits for it: for Ray that includes starting the local Ray instance (2 CPUs as
seen by Ray: ``--ray-cpus``), starting the actors (each imports TensorFlow and loads the
run) and the driver's journal and table. Prints one JSON line per child, then the
median images/s of each variant and its ratio to the local engine; for Ray also the
seconds until the first row came back and the images/s after it (the steady state).

On one 2-core machine this measures the engine's overhead, not a speed-up: the actors
share the cores the local engine already uses.

``--part train``: seconds per training step (``train_on_batch`` of one fixed global
batch, the project's U-Net, bce+dice, Adam) on 1 device against 2 simulated devices:
JAX with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` under
``keras.distribution.DataParallel``, TensorFlow with N logical CPU devices under
``MirroredStrategy`` (``unet_lowered.training.distribute``). Each variant runs in a
fresh child process (the device count is fixed when the backend starts), interleaved
``--repeats`` times; the clock starts after ``--warmup`` steps (compilation) and
covers ``--steps`` steps. Prints one JSON line per child, then the median seconds a
step and its ratio to the 1-device step time per backend (above 1: slower). On a CPU the simulated devices share the
same cores, so this measures the overhead of splitting the batch, not a speed-up.

    .venv/bin/python benchmarks/distributed.py --part predict
    .venv/bin/python benchmarks/distributed.py --part predict --images 4 --min-size 256 --max-size 512 --repeats 1  # smoke
    .venv/bin/python benchmarks/distributed.py --part train
    .venv/bin/python benchmarks/distributed.py --part train --train-size 32 --train-filters 4 --steps 2 --warmup 1 --repeats 1 --train-backends jax  # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from speed import machine_line  # benchmarks/speed.py, beside this script

PREDICT_VARIANTS = ("local", "ray-1", "ray-2")


def predict_child(variant: str, work: Path, out: Path, args: argparse.Namespace) -> None:
    """Run one predict variant in this process; print a JSON line."""
    import os

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local instance on 127.0.0.1
    import unet_lowered  # noqa: F401  (sets the Keras backend)
    from unet_lowered.inference.batch import predict_files
    from unet_lowered.inference.predictor import PredictOptions

    options = PredictOptions(mode="resize", batch_size=args.batch_size)
    arrivals: list[float] = []
    files = sorted(p for p in (work / "in").iterdir() if p.is_file())
    run = work / "run"
    if variant == "local":
        started = time.perf_counter()
        report = predict_files(run, files, out, options, progress=False)
    else:
        import logging

        import ray
        import ray.data

        from unet_lowered.inference import ray_engine
        from unet_lowered.inference.ray_engine import predict_files_ray

        take = ray_engine._take

        def timed_take(*a, **k):  # when each actor row reaches the driver
            arrivals.append(time.perf_counter())
            return take(*a, **k)

        ray_engine._take = timed_take
        started = time.perf_counter()
        ray.init(
            num_cpus=args.ray_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        report = predict_files_ray(
            run, files, out, options, progress=False, actors=int(variant.split("-")[1])
        )
        ray.shutdown()
    seconds = time.perf_counter() - started
    assert not report.failed and len(report.written) == len(files), report.failed
    line = {
        "variant": variant,
        "images": len(files),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(files) / seconds, 3),
    }
    if arrivals:  # Ray: until the first row came back (Ray, actors, first batch), then after
        line["first_row_s"] = round(arrivals[0] - started, 2)
        if len(arrivals) > 1 and arrivals[-1] > arrivals[0]:
            line["images_per_s_after_first"] = round(
                (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), 3
            )
    print(json.dumps(line), flush=True)


TRAIN_VARIANTS = ("1", "2")  # devices


def train_child(variant: str, args: argparse.Namespace) -> None:
    """One training-step variant (``train-<backend>-<devices>``) in this process."""
    import os

    _, backend, devices = variant.split("-")
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        logical = [tf.config.LogicalDeviceConfiguration() for _ in range(int(devices))]
        tf.config.set_logical_device_configuration(cpu, logical)
    import keras
    import numpy as np

    from unet_lowered.model import unet
    from unet_lowered.training import distribute
    from unet_lowered.training.losses import get_loss

    assert keras.backend.backend() == backend, (keras.backend.backend(), os.environ)
    rng = np.random.default_rng(args.seed)
    size, batch = args.train_size, args.train_batch
    x = rng.normal(size=(batch, size, size, 1)).astype("float32")
    y = (rng.random((batch, size, size, 1)) > 0.6).astype("float32")
    dp = distribute.plan("data-parallel" if devices != "1" else "none", batch)
    keras.utils.set_random_seed(args.seed)
    with dp.scope():
        model = unet(input_shape=(size, size, 1), base_filters=args.train_filters)
        model.compile(optimizer="adam", loss=get_loss("bce+dice", 1))
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
        started = time.perf_counter()
        for _ in range(args.steps):
            loss = model.train_on_batch(x, y)
        seconds = time.perf_counter() - started
    line = {
        "variant": variant,
        "devices": dp.device_count,
        "batch": batch,
        "size": size,
        "steps": args.steps,
        "s_per_step": round(seconds / args.steps, 4),
        "loss": round(float(loss), 5),
    }
    print(json.dumps(line), flush=True)


def train_part(args: argparse.Namespace) -> None:
    import os

    backends = [b for b in args.train_backends.split(",") if b]
    results: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for backend in backends:
            for devices in TRAIN_VARIANTS:
                variant = f"train-{backend}-{devices}"
                env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
                if backend == "jax":
                    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
                command = [sys.executable, __file__, *sys.argv[1:]]
                command += ["--child", variant, "-", "-"]
                done = subprocess.run(command, capture_output=True, text=True, env=env)
                line = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
                if not line:
                    raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
                print(line[0], flush=True)
                results.setdefault(variant, []).append(json.loads(line[0])["s_per_step"])
    print(f"\n{machine_line()}")
    print("median seconds per training step (global batch split over the devices):")
    for variant, values in results.items():
        one = statistics.median(results[variant.rsplit("-", 1)[0] + "-1"])
        median = statistics.median(values)
        print(f"  {variant:20s} {median:8.4f}  {median / one:.2f}x the 1-device step time")


def predict_part(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from predict_pipeline import make_inputs

    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(PREDICT_VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(PREDICT_VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if not (work / "run" / "model.keras").is_file():
            make_inputs(work, args.images, args.min_size, args.max_size, args.tile, args.seed)
        results: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(args.repeats):
            for variant in variants:
                out = Path(tmp) / f"out-{variant}-{r}"
                command = [sys.executable, __file__, *sys.argv[1:]]
                command += ["--child", variant, str(work), str(out)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                line = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
                if not line:
                    raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
                print(line[0], flush=True)
                results[variant].append(json.loads(line[0])["images_per_s"])
    local = statistics.median(results["local"]) if results.get("local") else None
    print(f"\n{machine_line()}")
    print("median images/s (whole call, engine start included):")
    for variant, values in results.items():
        median = statistics.median(values)
        ratio = f"  {median / local:.2f}x local" if local else ""
        print(f"  {variant:6s} {median:7.3f}{ratio}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("predict", "train", "all"), default="all")
    parser.add_argument("--images", type=int, default=24, help="predict: number of images")
    parser.add_argument("--min-size", type=int, default=1024, help="predict: smallest side")
    parser.add_argument("--max-size", type=int, default=4096, help="predict: largest side")
    parser.add_argument("--tile", type=int, default=256, help="predict: the network's input")
    parser.add_argument("--batch-size", type=int, default=4, help="predict: images per call")
    parser.add_argument("--ray-cpus", type=int, default=2, help="predict: CPUs Ray may use")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per variant")
    parser.add_argument(
        "--variants", default=",".join(PREDICT_VARIANTS), help="predict: comma-separated"
    )
    parser.add_argument("--train-size", type=int, default=128, help="train: input side")
    parser.add_argument("--train-batch", type=int, default=4, help="train: global batch")
    parser.add_argument("--train-filters", type=int, default=16, help="train: base filters")
    parser.add_argument("--steps", type=int, default=10, help="train: timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="train: untimed first steps")
    parser.add_argument(
        "--train-backends", default="jax,tensorflow", help="train: comma-separated backends"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument(
        "--child", nargs=3, metavar=("VARIANT", "WORK", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        variant, work, out = args.child
        if variant.startswith("train-"):
            train_child(variant, args)
            return 0
        predict_child(variant, Path(work), Path(out), args)
        return 0
    if args.part in ("predict", "all"):
        predict_part(args)
    if args.part in ("train", "all"):
        train_part(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
