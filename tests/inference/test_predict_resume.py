"""``unet predict`` killed at any moment, then ``--resume``: complete, identical, once each."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from run_fixtures import bright_model, disk_image, make_run
from unet_lowered.errors import UnetError
from unet_lowered.inference import batch
from unet_lowered.inference.batch import predict_files
from unet_lowered.inference.journal import JOURNAL_FILE
from unet_lowered.io import images

N_GOOD = 24  # enough beyond the last kill point (9) that a starved poller still catches it


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    run = make_run(root / "run", bright_model(32))
    inputs = root / "in"
    for k in range(N_GOOD):
        images.write_png(inputs / f"img{k:02d}.png", disk_image(300 + k, 280, seed=k)[0])
    (inputs / "img05b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # a failed row, too
    return run, inputs


def rows_of(out: Path) -> list[dict[str, str]]:
    with open(out / "predictions.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def assert_same_outputs(out: Path, reference: Path) -> None:
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == sorted(p.name for p in reference.iterdir() if not p.name.startswith("."))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp, no journal
    for name in visible:
        if name != "predictions.csv":
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    rows = rows_of(out)
    assert rows == rows_of(reference)
    assert len({r["id"] for r in rows}) == len(rows) == N_GOOD + 1


OPTIONS = {"save_prob": "png", "save_overlay": True, "progress": False}


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory) -> Path:
    run, inputs = setup
    out = tmp_path_factory.mktemp("reference") / "out"
    predict_files(run, [inputs], out, **OPTIONS)
    return out


# ---------------------------------------------------------------- in process


@pytest.mark.parametrize("stop_after", [0, 3, 11])
def test_interrupted_then_resumed(setup, reference, tmp_path, monkeypatch, stop_after) -> None:
    run, inputs = setup
    real = batch._write_outputs
    calls = {"n": 0}

    def dies_after_some(*args, **kwargs):
        if calls["n"] == stop_after:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "_write_outputs", dies_after_some)
    with pytest.raises(KeyboardInterrupt):
        predict_files(run, [inputs], tmp_path / "out", **OPTIONS)
    assert (tmp_path / "out" / JOURNAL_FILE).is_file()
    monkeypatch.setattr(batch, "_write_outputs", real)
    report = predict_files(run, [inputs], tmp_path / "out", resume=True, **OPTIONS)
    assert len(report.written) == N_GOOD and len(report.failed) == 1
    assert_same_outputs(tmp_path / "out", reference)


def test_torn_journal_line_and_stale_temp_files(setup, reference, tmp_path, monkeypatch) -> None:
    run, inputs = setup
    out = tmp_path / "out"
    real = batch._write_outputs
    calls = {"n": 0}

    def dies(*args, **kwargs):
        if calls["n"] == 4:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "_write_outputs", dies)
    with pytest.raises(KeyboardInterrupt):
        predict_files(run, [inputs], out, **OPTIONS)
    monkeypatch.setattr(batch, "_write_outputs", real)
    with open(out / JOURNAL_FILE, "a") as f:
        f.write('{"id": "img09", "source": "cut off by a ki')  # a row a kill cut short
    (out / ".img09.png.abcd1234.png").write_bytes(b"\x89PNG half")  # a killed atomic write
    (out / ".notes-of-mine.txt").write_text("not ours")  # hidden, but not ours: kept
    predict_files(run, [inputs], out, resume=True, **OPTIONS)
    assert (out / ".notes-of-mine.txt").read_text() == "not ours"
    (out / ".notes-of-mine.txt").unlink()
    assert_same_outputs(out, reference)


def test_resume_with_other_settings_is_refused(setup, tmp_path, monkeypatch) -> None:
    run, inputs = setup

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "_write_outputs", dies)
    with pytest.raises(KeyboardInterrupt):
        predict_files(run, [inputs], tmp_path / "out", **OPTIONS)
    monkeypatch.undo()
    with pytest.raises(UnetError, match=r"used other settings .*save_prob.*without --resume"):
        predict_files(run, [inputs], tmp_path / "out", resume=True, progress=False)


def test_without_resume_starts_over(setup, reference, tmp_path) -> None:
    run, inputs = setup
    predict_files(run, [inputs], tmp_path / "out", **OPTIONS)
    (tmp_path / "out" / "img00.png").write_bytes(b"stale")
    predict_files(run, [inputs], tmp_path / "out", **OPTIONS)
    assert_same_outputs(tmp_path / "out", reference)


# ---------------------------------------------------------------- kill -9, in a real process


def _cli(out: Path, run: Path, inputs: Path, resume: bool, stderr) -> subprocess.Popen:
    code = "import sys; from unet_lowered.cli import main; main(sys.argv[1:])"
    args = ["predict", str(run), str(inputs), "--out", str(out), "--save-prob", "png"]
    args += ["--overlay", "--no-progress", "--batch-size", "2"] + (["--resume"] if resume else [])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def _masks(out: Path) -> int:
    try:
        names = os.listdir(out)
    except OSError:
        return 0
    return sum(1 for n in names if n.endswith("_overlay.png") and not n.startswith("."))


@pytest.mark.slow
def test_sigkill_at_several_moments_then_resume(setup, reference, tmp_path) -> None:
    """SIGKILL after 0 (still starting), 3 and 9 finished images, resuming each time;
    the last run finishes. Visible files are complete at every stop."""
    run, inputs = setup
    out = tmp_path / "out"
    for k, threshold in enumerate([0, 3, 9]):
        log = tmp_path / f"stderr{k}.txt"
        with open(log, "wb") as stderr:
            proc = _cli(out, run, inputs, k > 0, stderr)
            deadline = time.monotonic() + 240
            while proc.poll() is None and time.monotonic() < deadline:
                if _masks(out) >= threshold:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.002)
            proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
        for path in out.glob("[!.]*.png"):
            images.read_image(path)  # every visible file is complete
    proc = _cli(out, run, inputs, True, subprocess.PIPE)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err.decode()[-2000:]  # the broken input still fails
    assert "img05b.png" in err.decode()
    assert_same_outputs(out, reference)
    masks = [images.read_image(out / f"img{k:02d}.png") for k in range(N_GOOD)]
    assert all(set(np.unique(m)) <= {0, 255} for m in masks)
