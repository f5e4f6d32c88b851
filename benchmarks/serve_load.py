"""Load on `unet serve`: N requests from K concurrent clients, against `unet predict`.

Starts `unet serve RUN` on 127.0.0.1 (a free port; loopback only) in a child process,
posts synthetic chest X-rays (`unet_lowered.demo.synth.synth_pair`, written once as
PNG) to `POST /v1/segment?format=png` from K client threads (one keep-alive
connection each) until N requests are answered or `--max-seconds` pass, then stops
the server. Reports requests/s, p50/p95/p99 latency, errors (any answer but 200, and
failed connections), and the server's resident memory (VmRSS, and the peak VmHWM)
after warm-up and at the end, sampled every 50 requests in between (memory must stay
flat). The same images are predicted by `unet predict` (`predict_files`, in a child
process) before and after the load, for the throughput ratio (its rate past the fixed
cost of loading the run). Appends a section to RESULTS.md unless `--no-append`.

    .venv/bin/python benchmarks/serve_load.py                       # untrained default U-Net, 256 px
    .venv/bin/python benchmarks/serve_load.py --run runs/demo/run --requests 500 --concurrency 8

Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.client import HTTPConnection
from pathlib import Path

from speed import append_results, cores, cpu_model  # benchmarks/speed.py, beside this script

ROOT = Path(__file__).resolve().parents[1]

PREDICT_CHILD = r"""
import json, sys, time
import unet_lowered
from unet_lowered.inference.batch import predict_files
run, one, images, out = sys.argv[1:5]

def timed(folder, name):
    started = time.perf_counter()
    report = predict_files(run, [folder], f"{out}/{name}", progress=False)
    assert not report.failed, report.failed
    return len(report.written), time.perf_counter() - started

_, first = timed(one, "one-a")
count, whole = timed(images, "all")
_, last = timed(one, "one-b")
print(json.dumps({"images": count, "whole_s": whole, "fixed_s": (first + last) / 2}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="run folder [default: an untrained default U-Net]")
    p.add_argument("--requests", type=int, default=500, help="requests in all (N)")
    p.add_argument("--concurrency", type=int, default=8, help="client threads (K)")
    p.add_argument(
        "--images", type=int, default=50, help="distinct images, posted in turn (10 or more)"
    )
    p.add_argument("--image-size", type=int, default=256, help="side of the X-rays in pixels")
    p.add_argument("--model-size", type=int, default=256, help="input of the untrained model")
    p.add_argument("--workers", type=int, default=1, help="unet serve --workers")
    p.add_argument("--queue", type=int, default=8, help="unet serve --queue")
    p.add_argument("--format", default="png", help="json, png, overlay or prob")
    p.add_argument("--max-seconds", type=float, default=600, help="stop the load after this")
    p.add_argument("--no-append", action="store_true", help="print only; RESULTS.md untouched")
    args = p.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        p.error("--requests and --concurrency must be at least 1")
    if args.images < 10:
        p.error("--images must be at least 10 (fewer leave unet predict's rate unmeasured)")
    return args


def make_run(work: Path, size: int) -> Path:
    """A run folder holding the default (untrained) U-Net at ``size`` x ``size``."""
    import unet_lowered  # noqa: F401  (sets the Keras backend)
    from unet_lowered.model import unet

    run = work / "run"
    run.mkdir(parents=True)
    unet((size, size, 1)).save(run / "model.keras")
    config = {
        "image_size": [size, size],
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
    return run


def make_images(folder: Path, count: int, size: int) -> list[bytes]:
    """Write ``count`` synthetic X-rays as PNG; return their bytes."""
    import numpy as np

    from unet_lowered.demo.synth import synth_pair
    from unet_lowered.io import images

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        path = images.write_png(folder / f"xray{i:03d}.png", synth_pair(rng, size)[0])
        out.append(path.read_bytes())
    return out


def predict_rate(run: Path, folder: Path, out: Path) -> dict:
    """``unet predict`` (``predict_files``) on the images, in a fresh process.

    ``whole_per_s``: images / seconds of the whole call (loading the run included);
    ``per_s``: the rate past the fixed cost, ``(N - 1) / (t(N images) - t(1 image))``,
    ``t(1 image)`` being the mean of one call before and one after.
    """
    one = out / "one"
    one.mkdir(parents=True)
    first = sorted(folder.iterdir())[0]
    (one / first.name).write_bytes(first.read_bytes())
    done = subprocess.run(
        [sys.executable, "-c", PREDICT_CHILD, str(run), str(one), str(folder), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["whole_per_s"] = result["images"] / result["whole_s"]
    marginal = result["whole_s"] - result["fixed_s"]
    result["per_s"] = (result["images"] - 1) / marginal if marginal > 0 else float("nan")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB (Linux)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


class Load:
    """K client threads sharing a budget of N requests and a deadline."""

    def __init__(self, port: int, bodies: list[tuple[bytes, str]], path: str) -> None:
        self.port = port
        self.bodies = bodies
        self.path = path
        self.lock = threading.Lock()
        self.issued = 0
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.on_count = None

    def run(self, n: int, k: int, deadline: float) -> float:
        self.n = n
        self.deadline = deadline
        threads = [threading.Thread(target=self._client, daemon=True) for _ in range(k)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic() + 30))
        return time.perf_counter() - started

    def _take(self) -> int | None:
        with self.lock:
            if self.issued >= self.n or time.monotonic() > self.deadline:
                return None
            self.issued += 1
            return self.issued - 1

    def _client(self) -> None:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=120)
        while (i := self._take()) is not None:
            body, content_type = self.bodies[i % len(self.bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", self.path, body, {"Content-Type": content_type})
                response = conn.getresponse()
                response.read()
                status = response.status
            except OSError as e:
                status = type(e).__name__
                conn.close()
                conn = HTTPConnection("127.0.0.1", self.port, timeout=120)
            ms = (time.perf_counter() - t0) * 1000
            with self.lock:
                if status == 200:
                    self.latencies.append(ms)
                else:
                    self.errors[str(status)] = self.errors.get(str(status), 0) + 1
                answered = len(self.latencies) + sum(self.errors.values())
            if self.on_count:
                self.on_count(answered)
        conn.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def wait_ready(proc: subprocess.Popen, port: int, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"unet serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            conn = HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"unet serve did not answer in {seconds} s:\n{log.read_text()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        run = args.run or make_run(work, args.model_size)
        what = str(args.run) if args.run else f"untrained default U-Net, {args.model_size} px"
        data = make_images(work / "images", args.images, args.image_size)
        bodies = [multipart(d, f"xray{i:03d}.png") for i, d in enumerate(data)]
        print(f"run: {what}; {args.images} synthetic X-rays of {args.image_size} px", flush=True)

        before = predict_rate(run, work / "images", work / "predicted-before")
        print(
            f"unet predict before: {before['per_s']:.2f} images/s past the fixed cost "
            f"({before['whole_per_s']:.2f} for the whole call)",
            flush=True,
        )

        port = free_port()
        log = work / "serve.log"
        command = [
            sys.executable,
            "-m",
            "unet_lowered",
            "serve",
            str(run),
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--queue",
            str(args.queue),
        ]
        with open(log, "w") as log_file:
            proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, port, log)
            path = f"/v1/segment?format={args.format}"
            warm = Load(port, bodies, path)
            warm.run(min(10, args.requests), 1, time.monotonic() + 60)
            start_mem = memory(proc.pid)
            samples: list[tuple[int, float]] = []

            load = Load(port, bodies, path)

            def sample(answered: int) -> None:
                if answered % 50 == 0:
                    samples.append((answered, memory(proc.pid)["VmRSS"]))

            load.on_count = sample
            seconds = load.run(args.requests, args.concurrency, time.monotonic() + args.max_seconds)
            end_mem = memory(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        after = predict_rate(run, work / "images", work / "predicted-after")
        lines = log.read_text().splitlines()
        request_lines = sum(" /v1/segment " in line for line in lines)

    answered = len(load.latencies) + sum(load.errors.values())
    rate = len(load.latencies) / seconds if seconds else float("nan")
    predict_mean = statistics.mean([before["per_s"], after["per_s"]])
    figures = {
        "requests": answered,
        "ok": len(load.latencies),
        "errors": dict(load.errors),
        "concurrency": args.concurrency,
        "seconds": round(seconds, 2),
        "requests_per_s": round(rate, 2),
        "p50_ms": round(percentile(load.latencies, 50), 1),
        "p95_ms": round(percentile(load.latencies, 95), 1),
        "p99_ms": round(percentile(load.latencies, 99), 1),
        "rss_start_mib": round(start_mem["VmRSS"], 1),
        "rss_end_mib": round(end_mem["VmRSS"], 1),
        "peak_rss_start_mib": round(start_mem["VmHWM"], 1),
        "peak_rss_end_mib": round(end_mem["VmHWM"], 1),
        "rss_samples_mib": [round(v, 1) for _, v in samples],
        "predict_per_s_before": round(before["per_s"], 2),
        "predict_per_s_after": round(after["per_s"], 2),
        "predict_whole_per_s_before": round(before["whole_per_s"], 2),
        "predict_whole_per_s_after": round(after["whole_per_s"], 2),
        "serve_vs_predict": round(rate / predict_mean, 3),
        "log_lines_for_segment": request_lines,
    }
    print(json.dumps(figures, indent=2))
    load_end = os.getloadavg()[0]
    if not args.no_append:
        append_results(section(args, what, figures, load_start, load_end))
        print("appended to benchmarks/RESULTS.md")
    return 1 if load.errors or answered < args.requests else 0


def section(
    args: argparse.Namespace, what: str, f: dict, load_start: float, load_end: float
) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    errors = ", ".join(f"{k}: {v}" for k, v in f["errors"].items()) or "none"
    command = (
        "python benchmarks/serve_load.py"
        + (f" --run {args.run}" if args.run else "")
        + f" --requests {args.requests} --concurrency {args.concurrency}"
    )
    samples = ", ".join(f"{v:.0f}" for v in f["rss_samples_mib"])
    return f"""## {now}: serve_load.py, `unet serve` under load

Machine: {cpu_model()}, {cores()} cores, Python {sys.version.split()[0]}. Load average (1 min)
{load_start:.2f} at start, {load_end:.2f} at end. Command: `{command}`.
Run: {what}; {args.images} synthetic X-rays of {args.image_size}x{args.image_size} px (PNG),
posted in turn to `POST /v1/segment?format={args.format}` over loopback by
{args.concurrency} clients (keep-alive), server `--workers {args.workers} --queue {args.queue}`.

| figure | value |
|---|---:|
| requests answered (200) | {f["ok"]} of {f["requests"]} in {f["seconds"]} s |
| errors | {errors} |
| requests/s | {f["requests_per_s"]} |
| latency p50 / p95 / p99 | {f["p50_ms"]} / {f["p95_ms"]} / {f["p99_ms"]} ms |
| server RSS after warm-up -> end | {f["rss_start_mib"]} -> {f["rss_end_mib"]} MiB |
| server peak RSS (VmHWM) after warm-up -> end | {f["peak_rss_start_mib"]} -> {f["peak_rss_end_mib"]} MiB |
| `unet predict` on the same images, before / after (past the fixed cost) | {f["predict_per_s_before"]} / {f["predict_per_s_after"]} images/s |
| `unet predict`, whole call (loading the run included), before / after | {f["predict_whole_per_s_before"]} / {f["predict_whole_per_s_after"]} images/s |
| serve throughput / `unet predict` (past the fixed cost, mean of before and after) | {100 * f["serve_vs_predict"]:.0f}% |

RSS every 50 requests (MiB): {samples}. Request log lines for `/v1/segment`: {f["log_lines_for_segment"]}
(one per request, warm-up included). `unet predict` runs `predict_files` (batch 4) in a fresh
process: its rate past the fixed cost is (N - 1) / (t(N images) - t(1 image)), the time of one
image being the mean of a call before and one after; TensorFlow's import is not counted.
"""


if __name__ == "__main__":
    sys.exit(main())
