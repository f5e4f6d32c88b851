"""``unet predict`` killed at any moment, then ``--resume``: complete, identical, once each."""

from __future__ import annotations

import csv
import json
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


# ---------------------------------------------------------------- starting over where a run finished


def test_fresh_run_retires_the_old_table_before_replacing_a_file(
    setup, reference, tmp_path, monkeypatch
) -> None:
    """A run starting over in a finished run's folder removes that run's predictions.csv
    once its journal exists and before its first file is written, so no kill can leave
    the old table vouching for a mix of old and new masks."""
    run, inputs = setup
    out = tmp_path / "out"
    predict_files(run, [inputs], out, progress=False)  # the earlier run: masks only
    assert len(rows_of(out)) == N_GOOD + 1
    real = batch._write_outputs
    seen: list[tuple[bool, bool]] = []

    def watching(*args, **kwargs):
        seen.append(((out / "predictions.csv").exists(), (out / JOURNAL_FILE).is_file()))
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "_write_outputs", watching)
    predict_files(run, [inputs], out, pipeline=False, **OPTIONS)
    assert seen == [(False, True)] * N_GOOD  # no old table, the journal marks the folder
    assert rows_of(out) == rows_of(reference)


def _cli_dying(out: Path, run: Path, inputs: Path, after: int, stderr) -> subprocess.Popen:
    """``unet predict`` (the options of :func:`_cli`, no --resume) in a process that
    dies at once, as under ``kill -9`` (no ``finally`` runs), when it is about to write
    the outputs of its ``after + 1``-th image."""
    code = "\n".join(
        [
            "import os, sys",
            "from unet_lowered.inference import batch",
            "real, calls = batch._write_outputs, [0]",
            "def dying(*args, **kwargs):",
            "    calls[0] += 1",
            f"    if calls[0] > {after}:",
            "        os._exit(9)",
            "    return real(*args, **kwargs)",
            "batch._write_outputs = dying",
            "from unet_lowered.cli import main",
            "main(sys.argv[1:])",
        ]
    )
    args = ["predict", str(run), str(inputs), "--out", str(out), "--save-prob", "png"]
    args += ["--overlay", "--no-progress", "--batch-size", "2"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.DEVNULL, stderr=stderr
    )


def test_fresh_run_killed_over_a_finished_one_then_resumed(setup, reference, tmp_path) -> None:
    """The audit's case: `unet predict` finished into OUT, then another `unet predict`
    (other options) into OUT killed after a few images. OUT must not keep the first
    run's predictions.csv; --resume then finishes the second run, every input listed."""
    run, inputs = setup
    out = tmp_path / "out"
    predict_files(run, [inputs], out, progress=False)  # masks only: another run's table
    old_table = (out / "predictions.csv").read_bytes()
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        proc = _cli_dying(out, run, inputs, 5, stderr)
        proc.wait(timeout=240)
    assert proc.returncode == 9, (tmp_path / "stderr.txt").read_text()[-2000:]
    assert not (out / "predictions.csv").exists(), (
        "the earlier run's table survived"
        if (out / "predictions.csv").read_bytes() == old_table
        else "a table was written"
    )
    assert (out / JOURNAL_FILE).is_file()
    assert 0 < len(list(out.glob("img*_overlay.png"))) < N_GOOD  # killed midway
    proc = _cli(out, run, inputs, True, subprocess.PIPE)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err.decode()[-2000:]  # the broken input still fails
    rows = rows_of(out)
    assert rows == rows_of(reference)  # every input once, in order, as the second run's
    assert [r["id"] for r in rows] == sorted(p.stem for p in inputs.iterdir())
    for name in os.listdir(reference):
        if name != "predictions.csv":
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not (out / JOURNAL_FILE).exists()


# ---------------------------------------------------------------- --resume with other inputs


def _interrupt(run: Path, inputs: list[Path], out: Path, monkeypatch, after: int) -> None:
    """A run over ``inputs`` stopped by Ctrl-C after ``after`` images' outputs."""
    real = batch._write_outputs
    calls = {"n": 0}

    def dies(*args, **kwargs):
        if calls["n"] == after:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "_write_outputs", dies)
    with pytest.raises(KeyboardInterrupt):
        predict_files(run, inputs, out, pipeline=False, **OPTIONS)
    monkeypatch.setattr(batch, "_write_outputs", real)


def _folder(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_resume_with_other_inputs_is_refused_and_the_journal_kept(
    setup, reference, tmp_path, monkeypatch
) -> None:
    run, inputs = setup
    out = tmp_path / "out"
    _interrupt(run, [inputs], out, monkeypatch, 3)
    before = _folder(out)
    assert JOURNAL_FILE in before and len(rows_of(out)) == 3
    # fewer inputs: the images img00-img09 and the broken img05b
    with pytest.raises(UnetError) as refused:
        predict_files(run, [str(inputs / "img0*.png")], out, resume=True, **OPTIONS)
    assert str(refused.value) == (
        f"{out}: the interrupted run there covered other inputs (25 inputs, 11 now); "
        "resume with the same inputs to finish it, or run again without --resume to start over"
    )
    assert _folder(out) == before  # nothing written, nothing removed
    # as many inputs, but one of them another file (a copy elsewhere, of the same id)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "img23.png").write_bytes((inputs / "img23.png").read_bytes())
    others = [p for p in sorted(inputs.iterdir()) if p.name != "img23.png"]
    with pytest.raises(UnetError, match=r"other inputs \(25 inputs, also 25 now but not the"):
        predict_files(run, [*others, elsewhere / "img23.png"], out, resume=True, **OPTIONS)
    assert _folder(out) == before
    # the same inputs, named otherwise (the files one by one, from another directory)
    monkeypatch.chdir(tmp_path)
    named = [os.path.relpath(p, tmp_path) for p in reversed(sorted(inputs.iterdir()))]
    report = predict_files(run, named, out, resume=True, **OPTIONS)
    assert len(report.written) == N_GOOD and len(report.failed) == 1
    assert [r["id"] for r in rows_of(out)] == [r["id"] for r in rows_of(reference)]
    for name in os.listdir(reference):
        if name != "predictions.csv":
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not (out / JOURNAL_FILE).exists()


def test_resume_with_other_inputs_on_the_command_line(setup, tmp_path, monkeypatch, capsys):
    """One line naming the folder and the fix, exit status 1, no traceback."""
    from unet_lowered.cli import main

    run, inputs = setup
    out = tmp_path / "out"
    _interrupt(run, [inputs], out, monkeypatch, 2)
    journal = (out / JOURNAL_FILE).read_bytes()
    capsys.readouterr()
    args = ["predict", str(run), str(inputs / "img1*.png"), "--out", str(out), "--resume"]
    with pytest.raises(SystemExit) as ended:
        main([*args, "--save-prob", "png", "--overlay", "--batch-size", "4", "--no-progress"])
    assert ended.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert err.strip() == (
        f"error: {out}: the interrupted run there covered other inputs (25 inputs, 10 now); "
        "resume with the same inputs to finish it, or run again without --resume to start over"
    )
    assert (out / JOURNAL_FILE).read_bytes() == journal


def test_journal_without_the_inputs_is_resumed(setup, reference, tmp_path, monkeypatch) -> None:
    """A journal of the version before the inputs were recorded: taken as the same inputs."""
    run, inputs = setup
    out = tmp_path / "out"
    _interrupt(run, [inputs], out, monkeypatch, 4)
    lines = (out / JOURNAL_FILE).read_text().split("\n")
    prefix = "# unet predict journal "
    header = json.loads(lines[0][len(prefix) :])
    assert header.pop("inputs")["count"] == N_GOOD + 1
    lines[0] = prefix + json.dumps(header, sort_keys=True)
    (out / JOURNAL_FILE).write_text("\n".join(lines))
    report = predict_files(run, [inputs], out, resume=True, **OPTIONS)
    assert len(report.written) == N_GOOD and len(report.failed) == 1
    assert_same_outputs(out, reference)


def test_ctrl_c_says_how_far_it_got_and_how_to_finish(setup, tmp_path, monkeypatch, capsys):
    run, inputs = setup
    out = tmp_path / "out"
    capsys.readouterr()
    _interrupt(run, [inputs], out, monkeypatch, 3)
    err = capsys.readouterr().err
    assert (
        f"stopped: 3 of 25 inputs done (listed in {out / 'predictions.csv'}); the same "
        "command with --resume finishes the job\n"
    ) in err
    assert [r["id"] for r in rows_of(out)] == ["img00", "img01", "img02"]


def test_resume_redoes_an_input_whose_mask_was_deleted(
    setup, reference, tmp_path, monkeypatch
) -> None:
    """A finished input whose mask is lost before --resume is predicted again, not
    listed in predictions.csv without its file."""
    run, inputs = setup
    out = tmp_path / "out"
    _interrupt(run, [inputs], out, monkeypatch, after=8)
    (out / "img01.png").unlink()
    predict_files(run, [inputs], out, resume=True, **OPTIONS)
    assert_same_outputs(out, reference)
