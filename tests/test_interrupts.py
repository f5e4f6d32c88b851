"""Ctrl-C: one line naming what to do next, exit status 130, never a traceback.

Three ways a KeyboardInterrupt reaches ``cli.main``: raised out of a command, turned
by Click into exit status 130 (which it returns silently), or swallowed where Python
discards exceptions (JAX's garbage-collection callback during the Keras import); plus
real SIGINTs to subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unet_lowered import cli

LINE = "interrupted: outputs already finished are kept, the one being written is not; "


def run_main(monkeypatch, capsys, args: list[str] | None) -> tuple[int, str]:
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # leave pytest's handler alone
    with pytest.raises(SystemExit) as ended:
        cli.main(args)
    return ended.value.code, capsys.readouterr().err


def test_interrupt_during_the_keras_import(monkeypatch, capsys, tmp_path) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()  # a missing one is refused before the import
    monkeypatch.setattr(cli, "_import_keras_quietly", interrupted)
    code, err = run_main(monkeypatch, capsys, ["train", "data", "--out", "run"])
    assert code == 130
    assert err == LINE + (
        "no epoch finished, so there is nothing to resume; start it again with --overwrite "
        "--out run\n"
    )


def test_an_interrupted_training_names_its_run_folder(monkeypatch, capsys, tmp_path) -> None:
    """The hint said `--resume --out RUN` literally; before the first epoch it sent the
    user to --resume, which answered 'nothing to resume'. A real `unet` process ends by
    os._exit(130), past TensorFlow's threads (an abort, status 134, 2 times in 15)."""
    from unet_lowered.io import runs
    from unet_lowered.training import train as train_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    run = tmp_path / "run"
    run.mkdir()
    (run / runs.LAST_FILE).write_bytes(b"an epoch's checkpoint")
    monkeypatch.setattr(train_mod, "train", interrupted)
    monkeypatch.setattr(cli, "_import_keras_quietly", lambda: None)
    code, err = run_main(monkeypatch, capsys, ["train", "--resume", f"--out={run}"])
    assert code == 130 and err == LINE + f"continue it with `unet train --resume --out {run}`\n"
    exits = []
    monkeypatch.setattr(os, "_exit", lambda status: exits.append(status) or sys.exit(status))
    monkeypatch.setattr(sys, "argv", ["unet", "train", "--resume", "-o", str(run)])
    code, err = run_main(monkeypatch, capsys, None)
    assert code == 130 and exits == [130] and f"--resume --out {run}`" in err


def test_an_interrupt_python_swallowed_still_stops(monkeypatch, capsys, tmp_path) -> None:
    """The handler's flag: a KeyboardInterrupt discarded (as in a gc callback) still ends
    the command before its work starts."""
    monkeypatch.chdir(tmp_path)
    for name in ("run", "images"):  # missing ones are refused before the import
        (tmp_path / name).mkdir()
    handlers = []
    monkeypatch.setattr(signal, "signal", lambda sig, handler: handlers.append(handler))

    def swallowed() -> None:
        try:
            handlers[-1](signal.SIGINT, None)
        except KeyboardInterrupt:
            pass  # what Python does to an exception in a gc callback

    monkeypatch.setattr(cli, "_import_keras_quietly", swallowed)
    with pytest.raises(SystemExit) as ended:
        cli.main(["predict", "run", "images", "--out", "masks"])
    assert ended.value.code == 130
    assert capsys.readouterr().err == LINE + "finish it with the same command and --resume\n"


def test_an_interrupt_click_turned_into_130(monkeypatch, capsys) -> None:
    import unet_lowered.demo.synth as synth

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "make_dataset", interrupted)
    code, err = run_main(monkeypatch, capsys, ["synth", "out"])
    assert code == 130 and err == LINE + "run it again\n"


def test_ctrl_c_stops_the_server_in_one_line(monkeypatch, capsys, tmp_path) -> None:
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import unet_lowered.serve.app as serve_app

    def serving(*args, **kwargs):
        raise KeyboardInterrupt  # how a user stops `unet serve`

    monkeypatch.setattr(serve_app, "serve_run", serving)
    monkeypatch.setattr(cli, "_import_keras_quietly", lambda: None)
    code, err = run_main(monkeypatch, capsys, ["serve", str(tmp_path)])
    assert code == 130 and err == "interrupted: the server stopped\n"


def unet(*args: object) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, "-m", "unet_lowered", *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sigint_while_keras_loads_and_while_synth_writes(tmp_path: Path) -> None:
    proc = unet("model-info")
    time.sleep(0.5)  # Keras takes seconds to import
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err == LINE + "run it again\n", err

    proc = unet("synth", tmp_path / "syn", "--count", "3000", "--size", "256")  # ~20 s
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".syn.tmp-*/train_images/*/images/*.png")):  # writing
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.endswith(LINE + "run it again\n"), err
    assert "Traceback" not in err and not (tmp_path / "syn").exists()
