"""Images/s and peak memory of `unet predict`'s pipeline against a plain sequential loop.

Writes N synthetic chest X-rays of 1-4k px (``unet_lowered.demo.synth`` drawings,
enlarged, with 16-bit detail noise), half as 16-bit PNGs and half as JPEGs, and a run
folder holding the default (25% width, depth 4) U-Net, untrained, at 256x256 (its
masks made lung-like, see :func:`lung_like_unet`). Then
runs, each in a fresh child process and interleaved ``--repeats`` times:

* ``loop``: a plain sequential loop with the same model: read, resize
  (``preprocess.model_input``), ``predict_on_batch``, sigmoid, resize back,
  threshold, write the mask PNG;
* ``pipeline``: ``predict_files`` (``unet predict``: reader, network and writer threads);
* ``plain``: ``predict_files(..., pipeline=False)``, the same steps on one thread;
* ``evaluate`` and ``evaluate-plain`` (only when named in ``--variants``): ``unet
  evaluate`` (``evaluate_run``) against the drawings' lung masks, on its three threads
  and on one; in the table they are compared with each other, not with the loop.

Each child imports TensorFlow, loads the model and warms it up before the clock
starts, and reports images/s and its peak resident set size (``VmHWM``) before and
after the images. Prints one JSON line per child, then a summary with the median
images/s of each variant and the ratio to the loop, and appends it as a table to
``benchmarks/RESULTS.md`` (``--no-append`` to skip).

    .venv/bin/python benchmarks/predict_pipeline.py --images 24
    .venv/bin/python benchmarks/predict_pipeline.py --images 4 --min-size 512 \\
        --max-size 1024 --repeats 1 --no-append  # a smoke test

``--lung-stats`` gives the run a lung run's post-processing and mask statistics (those
of its own masks of the drawings, as ``unet train`` records them), so ``unet predict``
takes the whole quality flag (with the objects' contrast) and decides on each image
whether to look again with its gray scale inverted (``unet_lowered.inference.polarity``);
without it the run has neither, as before.

``--cv2-threads`` and ``--tf-threads`` set OpenCV's and TensorFlow's thread counts in
the children (default: the libraries' own choice), to measure how they interact.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("loop", "pipeline", "plain", "evaluate", "evaluate-plain")
DEFAULT_VARIANTS = VARIANTS[:3]


def make_inputs(
    work: Path, count: int, lo: int, hi: int, tile: int, seed: int, lung_stats: bool = False
) -> Path:
    """Write ``work/in`` (the images) and ``work/run`` (the model); return ``work``.

    With ``lung_stats`` the run's ``config.json`` gets a lung run's post-processing
    (keep the 2 largest objects, fill holes) and the ``mask_stats`` of the model's own
    masks of the drawings (with their contrast), as ``unet train`` records them: so
    ``unet predict`` takes the whole quality flag, mostly ``ok`` as on a trained run,
    and on the network's thread the flag that decides the second look
    (``inference.polarity``)."""
    import cv2
    import numpy as np

    import unet_lowered  # noqa: F401  (sets the Keras backend)
    from unet_lowered.demo.synth import synth_pair
    from unet_lowered.io import images

    run = work / "run"
    run.mkdir(parents=True, exist_ok=True)
    lung_like_unet(tile).save(run / "model.keras")
    config = {
        "image_size": [tile, tile],
        "channels": 1,
        "num_classes": 1,
        "threshold": 0.5,
        "clahe": False,
        "input_mode": "resize",
        "padding": "same",
        "depth": 4,
        "label_values": None,
    }
    (run / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    folder = work / "in"
    folder.mkdir(parents=True, exist_ok=True)
    (work / "data" / "masks").mkdir(parents=True, exist_ok=True)
    if not (work / "data" / "images").exists():
        (work / "data" / "images").symlink_to(folder.resolve(), target_is_directory=True)
    drawings = []
    for k in range(count):
        h = int(rng.integers(lo, hi + 1))
        w = int(np.clip(h * rng.uniform(0.8, 1.2), lo, hi))
        small, lungs = synth_pair(rng, 512)
        drawings.append((small, lungs))
        lungs = cv2.resize(lungs.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_NEAREST)
        images.write_png(work / "data" / "masks" / f"xray{k:03d}.png", lungs)
        big = cv2.resize(small.astype(np.float32) * 257, (w, h), interpolation=cv2.INTER_CUBIC)
        big += rng.normal(0, 300, big.shape).astype(np.float32)  # detector noise
        image16 = np.clip(big, 0, 65535).astype(np.uint16)
        if k % 2 == 0:
            images.write_png(folder / f"xray{k:03d}.png", image16)
        else:
            image8 = (image16 >> 8).astype(np.uint8)
            cv2.imwrite(str(folder / f"xray{k:03d}.jpg"), image8, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if lung_stats:  # the model's own masks of the drawings, as a run's training masks
        from unet_lowered.inference.postprocess import clean_mask
        from unet_lowered.inference.quality import mask_stats

        own = [clean_mask(im < im.mean(), 2, True, 0) for im, _ in drawings]  # p > 0.5
        config["mask_stats"] = mask_stats(own, [im for im, _ in drawings]).to_json()
        config["postprocess"] = {"keep_largest": 2, "fill_holes": True}
        (run / "config.json").write_text(json.dumps(config))
    return work


def lung_like_unet(tile: int):
    """The default U-Net, untrained, whose logits get ``-10 z`` added (``z``: the
    standardised input), so its masks are the dark lung fields of the drawings: a few
    smooth objects, as a trained run's, not an untrained network's speckle (which makes
    the post-processing and the PNG encoding slower than on real masks). The U-Net's
    output is multiplied by 0 but still computed, so the network costs what it costs."""
    import keras

    from unet_lowered.model import unet

    inputs = keras.Input((tile, tile, 1), name="image")
    net = keras.layers.Rescaling(0.0, name="untrained")(unet((tile, tile, 1))(inputs))
    dark = keras.layers.Rescaling(-10.0, name="dark")(inputs)
    return keras.Model(inputs, keras.layers.Add(name="logits")([net, dark]))


def peak_mb() -> float:
    """This process's peak resident set size (``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_loop(run: Path, files: list[Path], out: Path, batch_size: int) -> None:
    """Read, resize, predict_on_batch, resize back, write: one batch at a time."""
    import cv2
    import numpy as np
    from scipy.special import expit

    from unet_lowered.io import images
    from unet_lowered.io.runs import load_run
    from unet_lowered.preprocess import model_input

    r = load_run(run)
    model, config = r.model(), r.config
    out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        decoded = [images.read_image(f) for f in chunk]
        x = np.stack([model_input(im, 1, config.image_size) for im in decoded])
        probs = expit(np.asarray(model.predict_on_batch(x), np.float32))
        for f, im, p in zip(chunk, decoded, probs, strict=True):
            h, w = im.shape[:2]
            back = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
            images.write_png(out / f"{f.stem}.png", (back >= 0.5).astype(np.uint8) * 255)


EXTRA_STEPS = ("field and contrast", "second look", "label objects", "quality flag")
"""Steps of ``unet predict`` the bare loop does not do: ``predictions.csv``'s figures
(what the quality flag reads of the image, the objects, the flag) and the polarity's
second look (judging each mask at the network's size, predicting the flagged ones again
inverted; a lung run's only, see ``--lung-stats``)."""


def stage_profile(run: Path, files: list[Path], out: Path, batch_size: int) -> dict:
    """Wall and CPU seconds per image of each step of ``unet predict``, one after another.

    The steps are the product's own functions, in the order the pipeline runs them:
    the decode, what the flag reads of the image and the network input, the network
    and the second look, then the resize back, mask, PNG and ``predictions.csv``
    figures (the objects labelled once, the quality flag). CPU time
    is the process's (``time.process_time``: every thread, the network's and OpenCV's
    included), so the sum over the steps is the work the two cores must share.
    """
    import numpy as np

    from unet_lowered.inference.polarity import second_look
    from unet_lowered.inference.predictor import (
        PredictOptions,
        mask_to_png,
        predict_prepared,
        prepare_images,
        probs_to_mask,
        restore_size,
    )
    from unet_lowered.inference.quality import Objects, contrast_grid, imaged_field, mask_quality
    from unet_lowered.io import images
    from unet_lowered.io.runs import load_run

    r = load_run(run)
    model, config = r.model(), r.config
    model.predict_on_batch(np.zeros((batch_size, *config.image_size, 1), np.float32))
    options = PredictOptions(mode="resize", batch_size=batch_size)
    out.mkdir(parents=True, exist_ok=True)
    steps = (
        "decode",
        "network input",
        "network",
        "resize back",
        "mask",
        "write PNG",
        *EXTRA_STEPS,
    )
    wall: dict[str, float] = dict.fromkeys(steps, 0.0)
    cpu: dict[str, float] = dict.fromkeys(steps, 0.0)

    def timed(name, fn, *a):
        t, c = time.perf_counter(), time.process_time()
        value = fn(*a)
        wall[name] += time.perf_counter() - t
        cpu[name] += time.process_time() - c
        return value

    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        decoded = [timed("decode", images.read_image, f) for f in chunk]
        fields = [timed("field and contrast", imaged_field, im) for im in decoded]
        grids = [timed("field and contrast", contrast_grid, im) for im in decoded]
        x = timed("network input", prepare_images, decoded, config, options)
        probs = timed("network", predict_prepared, model, x, config, options)
        shapes = [im.shape[:2] for im in decoded]
        looks = timed(
            "second look", second_look, model, x, probs, shapes, fields, grids, config, options
        )
        for f, shape, p, field, grid, look in zip(
            chunk, shapes, probs, fields, grids, looks, strict=True
        ):
            full = timed("resize back", restore_size, p, shape)
            mask = timed("mask", probs_to_mask, full, config, options)
            png = mask_to_png(mask, config)
            timed("write PNG", images.write_png, out / f"{f.stem}.png", png)
            found = timed("label objects", Objects.of, mask)
            grid = -grid if look.inverted else grid
            timed("quality flag", mask_quality, mask, full, config, found, field, grid)
    n = len(files)
    return {
        "seconds_per_image": {k: round(v / n, 4) for k, v in wall.items()},
        "cpu_seconds_per_image": {k: round(v / n, 4) for k, v in cpu.items()},
        "product_cpu_s": round(sum(cpu.values()) / n, 4),
        "loop_cpu_s": round(sum(v for k, v in cpu.items() if k not in EXTRA_STEPS) / n, 4),
    }


def child(variant: str, work: Path, out: Path, args: argparse.Namespace) -> None:
    """Run one variant in this process; print a JSON line."""
    import cv2
    import numpy as np

    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)
    import unet_lowered  # noqa: F401

    if args.tf_threads is not None:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.tf_threads)
    from unet_lowered.inference.batch import predict_files
    from unet_lowered.inference.predictor import PredictOptions
    from unet_lowered.io.runs import load_run

    run = work / "run"
    model = load_run(run).model()  # TensorFlow imported, a model built and run: fixed cost
    model.predict_on_batch(np.zeros((args.batch_size, args.tile, args.tile, 1), np.float32))
    files = sorted(p for p in (work / "in").iterdir() if p.is_file())
    before = peak_mb()
    started = time.perf_counter()
    if variant == "stages":
        print(json.dumps({"variant": "stages", **stage_profile(run, files, out, args.batch_size)}))
        return
    if variant == "loop":
        plain_loop(run, files, out, args.batch_size)
    elif variant.startswith("evaluate"):
        from unet_lowered.evaluation.evaluate import evaluate_run

        options = PredictOptions(mode="resize", batch_size=args.batch_size)
        pipeline = variant == "evaluate"
        evaluate_run(run, work / "data", out, options, progress=False, pipeline=pipeline)
    else:
        options = PredictOptions(mode="resize", batch_size=args.batch_size)
        report = predict_files(
            run, files, out, options, progress=False, pipeline=variant == "pipeline"
        )
        assert not report.failed, report.failed
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "variant": variant,
                "images": len(files),
                "seconds": round(seconds, 2),
                "images_per_s": round(len(files) / seconds, 3),
                "peak_rss_before_mb": round(before),
                "peak_rss_mb": round(peak_mb()),
            }
        ),
        flush=True,
    )


def run_child(variant: str, work: Path, out: Path, passthrough: list[str]) -> dict | None:
    """One variant in a fresh process; its JSON line (printed too), or None if it failed."""
    command = [sys.executable, __file__, "--child", variant, str(work), str(out), *passthrough]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="number of input images")
    parser.add_argument("--min-size", type=int, default=1024, help="smallest image side")
    parser.add_argument("--max-size", type=int, default=4096, help="largest image side")
    parser.add_argument("--tile", type=int, default=256, help="the network's input size")
    parser.add_argument("--batch-size", type=int, default=4, help="images per network call")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per variant")
    parser.add_argument(
        "--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated, of {VARIANTS}"
    )
    parser.add_argument("--cv2-threads", type=int, default=None, help="cv2.setNumThreads")
    parser.add_argument("--tf-threads", type=int, default=None, help="TF intra-op threads")
    parser.add_argument(
        "--stages", action="store_true", help="also time each step alone (one more child)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--lung-stats",
        action="store_true",
        help="give the run the drawings' mask statistics, as a lung run has: unet predict "
        "then takes the whole quality flag and the polarity second look",
    )
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument(
        "--child", nargs=3, metavar=("VARIANT", "WORK", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        variant, work, out = args.child
        child(variant, Path(work), Path(out), args)
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        t0 = time.perf_counter()
        make_inputs(
            work, args.images, args.min_size, args.max_size, args.tile, args.seed, args.lung_stats
        )
        size_mb = sum(p.stat().st_size for p in (work / "in").iterdir()) / 2**20
        print(
            json.dumps(
                {
                    "inputs": args.images,
                    "sizes": [args.min_size, args.max_size],
                    "input_mb": round(size_mb),
                    "made_in_s": round(time.perf_counter() - t0, 1),
                    "cpus": os.cpu_count(),
                }
            ),
            flush=True,
        )
        passthrough = ["--tile", str(args.tile), "--batch-size", str(args.batch_size)]
        for name in ("cv2_threads", "tf_threads"):
            if getattr(args, name) is not None:
                passthrough += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        results: dict[str, list[dict]] = {v: [] for v in variants}
        for repeat in range(args.repeats):
            order = variants if repeat % 2 == 0 else variants[::-1]  # interleaved, both orders
            for variant in order:
                result = run_child(variant, work, work / f"out-{variant}-{repeat}", passthrough)
                if result is None:
                    return 1
                results[variant].append(result)
        summary = {
            v: {
                "images_per_s": statistics.median(r["images_per_s"] for r in rs),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            }
            for v, rs in results.items()
        }
        for v in summary:  # predict against the loop, evaluate against its one-thread run
            base = "evaluate-plain" if v.startswith("evaluate") else "loop"
            if base in summary:
                ratio = summary[v]["images_per_s"] / summary[base]["images_per_s"]
                summary[v]["vs_loop"] = round(ratio, 2)
        stages = None
        if args.stages:
            stages = run_child("stages", work, work / "out-stages", passthrough)
            if stages is None:
                return 1
        same = None
        if "pipeline" in results and "plain" in results:  # every output byte for byte
            a, b = work / "out-pipeline-0", work / "out-plain-0"
            names = sorted(p.name for p in a.iterdir() if p.name != "predictions.csv")
            same = names == sorted(p.name for p in b.iterdir() if p.name != "predictions.csv")
            same = same and all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
        scores = None
        if "evaluate" in results and "evaluate-plain" in results:  # per_image.csv byte for byte
            a, b = (work / f"out-{v}-0" / "per_image.csv" for v in ("evaluate", "evaluate-plain"))
            scores = a.read_bytes() == b.read_bytes()
        print(
            json.dumps(
                {
                    "summary": summary,
                    "pipeline_outputs_equal_plain": same,
                    "evaluate_scores_equal_plain": scores,
                }
            )
        )
    text = results_table(args, size_mb, summary, same, stages, scores)
    print(text)
    if not args.no_append:
        with open(Path(__file__).resolve().parent / "RESULTS.md", "a") as f:
            f.write("\n" + text)
    return 0


def results_table(
    args: argparse.Namespace,
    size_mb: float,
    summary: dict,
    same,
    stages: dict | None = None,
    scores: bool | None = None,
) -> str:
    """The Markdown section appended to ``benchmarks/RESULTS.md``."""
    from speed import cores, cpu_model  # benchmarks/speed.py, beside this script

    n_cores = cores()

    def shown(value: int | None) -> str:
        return "default" if value is None else str(value)

    threads = f"cv2 threads {shown(args.cv2_threads)}, TF threads {shown(args.tf_threads)}"
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: predict_pipeline.py, {args.images} images "
        f"{args.min_size}-{args.max_size} px ({size_mb:.0f} MB of 16-bit PNG and JPEG), "
        f"median of {args.repeats}",
        "",
        f"Machine: {cpu_model()}, {n_cores} cores; untrained default U-Net at {args.tile} px, "
        f"batch {args.batch_size}, {threads}"
        f"{'; the run has lung mask statistics (--lung-stats)' if args.lung_stats else ''}. "
        "Pipeline outputs equal the one-thread run's: "
        f"{same}. Evaluate scores (`per_image.csv`) equal the one-thread run's: {scores}.",
        "",
        "| variant | images/s | vs loop (evaluate: vs evaluate-plain) | peak RSS MB |",
        "|---|---:|---:|---:|",
        *(
            f"| {v} | {r['images_per_s']:.2f} | {r.get('vs_loop', '')} | {r['peak_rss_mb']} |"
            for v, r in summary.items()
        ),
        "",
    ]
    if stages:
        loop_s = 1 / summary["loop"]["images_per_s"] if "loop" in summary else None
        if loop_s is None:
            ceiling = "(`--variants` without `loop`: no loop to compare the ceiling with.)"
        else:
            ceiling = (
                f"The loop took {1000 * loop_s:.0f} ms of wall time per image. Spread "
                f"perfectly over {n_cores} cores, `unet predict` could at best be "
                f"{loop_s / (stages['product_cpu_s'] / n_cores):.2f}x the loop, and the "
                f"loop's own steps {loop_s / (stages['loop_cpu_s'] / n_cores):.2f}x."
            )
        lines += [
            "Each step alone, one after another (ms per image; `--stages`; CPU: every "
            "thread of the process):",
            "",
            "| step | wall ms/image | CPU ms/image | in the bare loop |",
            "|---|---:|---:|---|",
            *(
                f"| {step} | {1000 * sec:.1f} | "
                f"{1000 * stages['cpu_seconds_per_image'][step]:.1f} | "
                f"{'no' if step in EXTRA_STEPS else 'yes'} |"
                for step, sec in stages["seconds_per_image"].items()
            ),
            "",
            f"CPU per image: `unet predict`'s steps {1000 * stages['product_cpu_s']:.0f} ms, "
            f"the loop's {1000 * stages['loop_cpu_s']:.0f} ms. {ceiling}",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
