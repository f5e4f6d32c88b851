"""Where the training step spends its time: oneDNN primitives, Keras/TF against PyTorch.

Both frameworks run their convolutions on CPU through oneDNN. With ``ONEDNN_VERBOSE=1``
oneDNN prints one line per primitive it executes, with its kind (convolution,
deconvolution, pooling, reorder, ...), implementation, propagation kind (forward,
backward_data, backward_weights), shapes and time in ms. This script runs a few
``mixed_bfloat16`` / bf16-autocast training steps of the default network (256x256,
batch 8, the same models as ``speed.py``) in a child process per framework with that
switch on, and prints per framework:

* the wall time of a step (verbose logging included, so a little above ``speed.py``);
* the summed oneDNN time per step, grouped by (kind, implementation, propagation);
* the summed time of the whole step that oneDNN accounts for.

TensorFlow runs with the threads ``speed.py`` uses (all cores inside an op, its
default inter-op threads, as ``unet train``), PyTorch with all cores; each child first
fixes glibc's heap thresholds as ``speed.py --malloc tuned`` does (``--malloc default``
leaves glibc as it is). With TensorFlow
running independent ops side by side, their primitives' times overlap and can add up
to more than the step; ``TF_NUM_INTEROP_THREADS=1`` in the environment runs one op at a
time, so that each primitive's time is its own.

Run by hand on a quiet machine::

    .venv/bin/python benchmarks/onednn_profile.py [--steps 6] [--top 12] [--malloc default]

It prints a Markdown report; nothing is written. Requires ``torch==2.13.0`` (the
``bench`` extra) for the PyTorch half.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from speed import (  # benchmarks/speed.py  # noqa: E402
    add_malloc_option,
    bf16_train_step,
    machine_line,
    tune_malloc,
)

START, END = "=====START", "=====END"


def child(which: str, steps: int, malloc: str = "tuned") -> None:
    """Run ``steps`` timed training steps of one framework (called in a subprocess);
    ``malloc="tuned"``: glibc's thresholds fixed first, as ``speed.py --malloc tuned``."""
    import time

    if malloc == "tuned":
        tune_malloc()

    step = bf16_train_step(which, 8, 256)
    for _ in range(3):
        step.step()
    print(START, flush=True)
    start = time.perf_counter()
    for _ in range(steps):
        step.step()
    elapsed = time.perf_counter() - start
    print(END, flush=True)
    print(f"STEP_MS {elapsed / steps * 1000:.1f}", flush=True)


def parse(text: str, steps: int) -> tuple[float, float, list[tuple[tuple[str, ...], float, int]]]:
    """Step wall time, oneDNN ms per step, and per-group (ms per step, calls per step)."""
    body = text.split(START, 1)[1].split(END, 1)[0]
    groups: dict[tuple[str, ...], float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    for line in body.splitlines():
        if not line.startswith("onednn_verbose") or ",exec," not in line:
            continue
        fields = line.split(",")
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        i = fields.index("exec")
        key = (fields[i + 2], fields[i + 3], fields[i + 4])  # kind, implementation, propagation
        groups[key] += ms
        calls[key] += 1
    step_ms = float(text.split("STEP_MS", 1)[1].split()[0])
    rows = sorted(
        ((k, v / steps, calls[k] // steps) for k, v in groups.items()), key=lambda r: -r[1]
    )
    return step_ms, sum(groups.values()) / steps, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per framework")
    parser.add_argument("--top", type=int, default=12, help="groups shown per framework")
    add_malloc_option(parser)
    parser.add_argument("--child", choices=("keras", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.steps, args.malloc)
        return 0
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    print(
        "# oneDNN profile of one bf16 training step (256x256, batch 8, default U-Net); "
        f"heap: `--malloc {args.malloc}`\n\n{machine_line()}\n"
    )
    for which in ("keras", "torch"):
        command = [sys.executable, __file__, "--child", which, "--steps", str(args.steps)]
        proc = subprocess.run(
            [*command, "--malloc", args.malloc],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0 or START not in proc.stdout:
            print(f"## {which}: failed\n\n```\n{proc.stderr[-2000:]}\n```\n")
            continue
        step_ms, dnn_ms, rows = parse(proc.stdout, args.steps)
        name = "Keras/TF mixed_bfloat16" if which == "keras" else "PyTorch bf16 autocast"
        print(f"## {name}: step {step_ms:.0f} ms, oneDNN primitives {dnn_ms:.0f} ms per step\n")
        print("| ms per step | calls | kind | implementation | propagation |")
        print("|---:|---:|---|---|---|")
        for (kind, impl, prop), ms, n in rows[: args.top]:
            print(f"| {ms:.1f} | {n} | {kind} | `{impl}` | {prop} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
