"""``unet evaluate`` and ``unet export`` killed with SIGKILL, then run again.

A killed command leaves no output file half-written (outputs are written to hidden
temporary names and renamed); running it again completes and gives the files of an
uninterrupted run, and removes what the killed one left behind. (``unet predict``
and its ``--resume``: ``tests/inference/test_predict_resume.py``.)
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_fixtures import ids_of, make_prepared
from run_fixtures import bright_model, make_run

pytestmark = pytest.mark.slow


def unet(*args: object, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    code = "import sys; from unet_lowered.cli import main; main(sys.argv[1:])"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False if it finished first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return True
        time.sleep(0.002)
    proc.wait(timeout=60)
    return False


def hidden(folder: Path) -> list[str]:
    return (
        sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        if folder.exists()
        else []
    )


def test_evaluate_killed_then_run_again(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", bright_model(32))
    data = make_prepared(tmp_path, ids_of(40), size=(300, 280))
    reference = tmp_path / "reference"
    from unet_lowered.evaluation.evaluate import evaluate_run

    evaluate_run(run, data, reference, progress=False)
    out = tmp_path / "out"
    kills = 0
    for delay in (1.0, 6.0):  # still starting; predicting (or done already)
        t0 = time.monotonic()
        proc = unet("evaluate", run, data, "--out", out, "--no-progress")
        kills += kill_when(
            proc, lambda t0=t0, d=delay: time.monotonic() - t0 > d or bool(hidden(out))
        )
        if (out / "summary.json").exists():  # only complete files, if any
            json.loads((out / "summary.json").read_text())
    assert kills >= 1
    (out / ".per_image.csv.abcd1234.csv").parent.mkdir(parents=True, exist_ok=True)
    (out / ".per_image.csv.abcd1234.csv").write_text("id,di")  # a write a kill cut short
    assert unet("evaluate", run, data, "--out", out, "--no-progress").wait(timeout=240) == 0
    assert hidden(out) == []
    assert (out / "per_image.csv").read_text() == (reference / "per_image.csv").read_text()
    got, want = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    for summary in (got, want):
        summary.pop("seconds")
    assert got["metrics"] == want["metrics"] and got["worst"] == want["worst"]
    with open(out / "per_image.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 40


def test_export_killed_during_conversion_then_run_again(tmp_path: Path) -> None:
    pytest.importorskip("tf2onnx")
    run = make_run(tmp_path / "run", bright_model(32))
    out = tmp_path / "exported" / "m.onnx"
    out.parent.mkdir()
    proc = unet("export", run, "--out", out)
    killed = kill_when(proc, lambda: bool(hidden(out.parent)))  # the temporary file exists
    assert not out.exists()
    if killed:
        assert hidden(out.parent)  # left behind by the kill: removed by the next run
    done = unet("export", run, "--out", out, stderr=subprocess.PIPE)
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err.decode()[-2000:]
    assert hidden(out.parent) == []
    import onnx

    onnx.checker.check_model(str(out))
