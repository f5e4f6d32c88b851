"""Where a bf16 training step spends its time, op by op: Keras/TF against PyTorch.

``onednn_profile.py`` times only what oneDNN runs; this script times every op the
framework runs, with the framework's own profiler, on the same steps as ``speed.py``
(the default network, the product's loss, Adam; Keras ``mixed_bfloat16`` with the
threads ``speed.py`` gives TensorFlow, PyTorch bf16 autocast, channels-last):

* TensorFlow: ``tf.profiler`` over the timed steps, read back with the profiler
  plugin's ``framework_op_stats`` tool (self time per op type);
* PyTorch: ``torch.profiler`` (self CPU time per ``aten`` op).

Each child fixes glibc's heap thresholds first (``--malloc tuned``, the default, as
``speed.py`` does; PyTorch's step depends on them, TensorFlow's does not: see
``speed.py``). Each framework runs in its own child process, ``--rounds`` times, the two
frameworks alternating (the machine is shared: one pass of each swings by 30% from run
to run). Printed per framework, as medians over the rounds: the step's wall time
without a profiler, then the ops' self time per step grouped into kinds
(convolutions, ReLU, bias, skip connections, pooling, casts and copies, the rest) and
the largest ops. Profilers add their own cost, and TensorFlow runs independent ops side
by side (its default inter-op threads, as ``unet train``), so its sums run up to twice
the step: read the kinds as where the cores are busy and compare them between
frameworks, not the sums with ``speed.py``. ``TF_NUM_INTEROP_THREADS=1`` in the
environment runs TensorFlow one op at a time, so that its self times add up to its step.

Run by hand on a quiet machine::

    .venv/bin/python benchmarks/op_profile.py --size 224 --batch 4 [--rounds 3] [--steps 5] [--top 12]
        [--malloc tuned|default]

It prints a Markdown report; nothing is written. Requires ``torch==2.13.0`` (the
``bench`` extra) for the PyTorch half.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import (  # benchmarks/speed.py
    add_malloc_option,
    bf16_train_step,
    machine_line,
    tune_malloc,
)

MARK = "=====OPS"

KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("convolutions", ("conv",)),
    ("ReLU and its gradient", ("relu", "threshold_backward", "clamp_min")),
    ("bias add and its gradient", ("biasadd",)),
    (
        "skip connections (concat, its gradient's slices, gradient sums)",
        ("concat", "aten::cat", "slice", "addn", "aten::add"),
    ),
    ("max pooling", ("maxpool", "max_pool")),
    ("casts and copies", ("cast", "copy", "_to_copy")),
)
"""Kind name -> lower-case substrings of the op names in it (first match wins)."""

REST = "the rest (Adam, loss, metrics, idle)"
"""The kind of every op no :data:`KINDS` entry names."""


def kind_of(op: str) -> str:
    """The :data:`KINDS` name of an op (``aten::add_`` is Adam's, not a skip's)."""
    low = op.lower()
    if low == "aten::add_":
        return REST
    for name, needles in KINDS:
        if any(n in low for n in needles):
            return name
    return REST


def child(which: str, size: int, batch: int, steps: int, malloc: str = "tuned") -> None:
    """Time ``steps`` steps, profile ``steps`` more, print ``{op: (ms, calls)}`` as JSON;
    ``malloc="tuned"``: glibc's thresholds fixed first, as ``speed.py --malloc tuned``."""
    if malloc == "tuned":
        tune_malloc()

    step = bf16_train_step(which, batch, size)
    for _ in range(3):
        step.step()
    start = time.perf_counter()
    for _ in range(steps):
        step.step()
    step_ms = (time.perf_counter() - start) / steps * 1000
    ops: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    if which == "keras":
        import tensorflow as tf
        from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

        with tempfile.TemporaryDirectory() as logdir:
            tf.profiler.experimental.start(logdir)
            for _ in range(steps):
                step.step()
            tf.profiler.experimental.stop()
            path = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]
            data, ok = plugin.xspace_to_tools_data([path], "framework_op_stats", {})
        if not ok:
            raise SystemExit("the TensorFlow profiler returned no op statistics")
        table = json.loads(data)[0]
        cols = [c["id"] for c in table["cols"]]
        for row in table["rows"]:
            r = dict(zip(cols, [c.get("v") if c else None for c in row["c"]], strict=False))
            ops[r["type"]][0] += r["total_self_time"] / 1000 / steps
            ops[r["type"]][1] += r["occurrences"] / steps
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step.step()
        for e in prof.key_averages():
            if e.key.startswith(("Optimizer.", "autograd::", "ProfilerStep")):
                continue  # wrappers: their children are counted
            ops[e.key][0] += e.self_cpu_time_total / 1000 / steps
            ops[e.key][1] += e.count / steps
    print(MARK + json.dumps({"step_ms": step_ms, "ops": ops}), flush=True)


def report(name: str, step_ms: float, ops: dict[str, list[float]], top: int) -> str:
    """Markdown: the step, the ops' time per kind, the largest ops."""
    total = sum(ms for ms, _ in ops.values())
    kinds: dict[str, float] = collections.defaultdict(float)
    for op, (ms, _) in ops.items():
        kinds[kind_of(op)] += ms
    lines = [
        f"## {name}: step {step_ms:.0f} ms (no profiler); ops' self time {total:.0f} ms per step\n",
        "| kind | ms per step | share |",
        "|---|---:|---:|",
    ]
    order = [k for k, _ in KINDS] + [REST]
    lines += [f"| {k} | {kinds[k]:.1f} | {kinds[k] / total:.0%} |" for k in order if k in kinds]
    lines += ["", "| op | ms per step | calls per step |", "|---|---:|---:|"]
    for op, (ms, n) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| `{op}` | {ms:.1f} | {n:.0f} |")
    return "\n".join(lines) + "\n"


def median_rounds(rounds: list[dict]) -> tuple[float, dict[str, list[float]]]:
    """The median step and, per op, the median ms and calls over rounds (an op missing
    from a round counts 0 there)."""
    names = {op for r in rounds for op in r["ops"]}
    ops = {
        op: [
            statistics.median(r["ops"].get(op, [0.0, 0.0])[0] for r in rounds),
            statistics.median(r["ops"].get(op, [0.0, 0.0])[1] for r in rounds),
        ]
        for op in names
    }
    return statistics.median(r["step_ms"] for r in rounds), ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=4, help="batch size")
    parser.add_argument("--steps", type=int, default=5, help="timed and profiled steps each")
    parser.add_argument("--rounds", type=int, default=3, help="child processes per framework")
    parser.add_argument("--top", type=int, default=12, help="ops listed per framework")
    add_malloc_option(parser)
    parser.add_argument("--child", choices=("keras", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.size, args.batch, args.steps, args.malloc)
        return 0
    names = {"keras": "Keras/TF mixed_bfloat16", "torch": "PyTorch bf16 autocast"}
    print(
        f"# Op profile of one bf16 training step ({args.size}x{args.size}, batch "
        f"{args.batch}); medians of {args.rounds} interleaved rounds; heap: "
        f"`--malloc {args.malloc}`\n\n{machine_line()}\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    results: dict[str, list[dict]] = {"keras": [], "torch": []}
    failed: dict[str, str] = {}
    for k in range(args.rounds):
        order = ("keras", "torch") if k % 2 == 0 else ("torch", "keras")
        for which in order:
            if which in failed:
                continue
            cmd = [sys.executable, __file__, "--child", which, "--size", str(args.size)]
            cmd += ["--batch", str(args.batch), "--steps", str(args.steps)]
            cmd += ["--malloc", args.malloc]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
            if proc.returncode != 0 or not found:
                failed[which] = proc.stderr[-2000:]
                continue
            results[which].append(json.loads(found[-1][len(MARK) :]))
            print(f"round {k + 1}/{args.rounds}: {which} step {results[which][-1]['step_ms']:.0f} ms",
                  file=sys.stderr, flush=True)  # fmt: skip
    for which, name in names.items():
        if which in failed:
            print(f"## {name}: failed\n\n```\n{failed[which]}\n```\n")
            continue
        steps = ", ".join(f"{r['step_ms']:.0f}" for r in results[which])
        step_ms, ops = median_rounds(results[which])
        print(report(name, step_ms, ops, args.top) + f"\nSteps of the rounds, ms: {steps}.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
