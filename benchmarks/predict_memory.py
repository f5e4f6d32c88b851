"""Peak memory (and time) of `unet predict` on one large image in tile mode.

Makes a run folder holding an (untrained) U-Net at the default 25% width, depth 4,
256x256 tiles, writes a synthetic 16-bit gray image of SIZE x SIZE, then runs
:func:`unet_lowered.inference.batch.predict_files` on it in a fresh child process and
reports that process's peak resident set size (``resource.getrusage``), before
and after prediction, so TensorFlow's fixed cost is visible apart from the image's.

    .venv/bin/python benchmarks/predict_memory.py --size 4096 --max-mb 2048

Exit status 1 when the peak exceeds ``--max-mb``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_inputs(work: Path, size: int, tile: int) -> tuple[Path, Path]:
    """Write the run folder and the test image; return their paths."""
    import cv2
    import numpy as np

    import unet_lowered  # noqa: F401  (sets the Keras backend)
    from unet_lowered.io import images
    from unet_lowered.model import unet

    run = work / "run"
    run.mkdir(parents=True, exist_ok=True)
    model = unet((tile, tile, 1))
    model.save(run / "model.keras")
    config = {
        "image_size": [tile, tile],
        "channels": 1,
        "num_classes": 1,
        "threshold": 0.5,
        "clahe": False,
        "input_mode": "crop",
        "padding": "same",
        "depth": 4,
        "label_values": None,
    }
    (run / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    image = np.zeros((size, size), np.uint16)
    for _ in range(40):  # soft bright blobs on a dark background
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(
            image,
            centre,
            int(rng.integers(size // 40, size // 8)),
            int(rng.integers(2000, 60000)),
            -1,
        )
    image = cv2.GaussianBlur(image, (0, 0), size / 200)
    path = work / "in" / "large.png"
    images.write_png(path, image)
    return run, path


def child(run: str, image: str, out: str, tta: bool, batch_size: int) -> None:
    """Predict in this process and print a JSON line with peak RSS and time."""
    import unet_lowered  # noqa: F401
    from unet_lowered.inference.batch import predict_files
    from unet_lowered.inference.predictor import PredictOptions
    from unet_lowered.io.runs import load_run

    load_run(run).model()  # import TensorFlow and build a model once: the fixed cost
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    group = "dihedral" if tta else "auto"  # a group with tta off is refused
    options = PredictOptions(mode="tile", tta=tta, tta_transforms=group, batch_size=batch_size)
    report = predict_files(run, [image], out, options, progress=False)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "rss_before_mb": round(before),
                "peak_rss_mb": round(peak),
                "seconds": round(seconds, 1),
                "failed": report.failed,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="image side in pixels")
    parser.add_argument("--tile", type=int, default=256, help="training size = tile size")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per network call")
    parser.add_argument("--tta", action="store_true", help="with test-time augmentation")
    parser.add_argument("--max-mb", type=float, default=2048, help="fail above this peak RSS")
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch folder (default: temporary)"
    )
    parser.add_argument("--child", nargs=3, metavar=("RUN", "IMAGE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.tta, args.batch_size)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        run, image = make_inputs(work, args.size, args.tile)
        command = [
            sys.executable,
            __file__,
            "--child",
            str(run),
            str(image),
            str(work / "out"),
            "--batch-size",
            str(args.batch_size),
        ]
        if args.tta:
            command.append("--tta")
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=sys.stderr)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result.update(
            size=args.size,
            tile=args.tile,
            tta=args.tta,
            batch_size=args.batch_size,
            max_mb=args.max_mb,
        )
        from speed import machine_line  # benchmarks/speed.py, beside this script

        print(machine_line())
        print(json.dumps(result))
        ok = result["peak_rss_mb"] <= args.max_mb and not result["failed"]
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
