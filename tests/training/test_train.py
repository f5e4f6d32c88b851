"""unet train: artefacts, settings, reproducibility, resume after SIGKILL, guards, real data."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import shared_dataset
from unet_lowered.cli import app
from unet_lowered.errors import UnetError
from unet_lowered.training import config as config_mod

TINY = {
    "image_size": 32,
    "base_filters": 4,
    "depth": 2,
    "batch_size": 4,
    "epochs": 2,
    "precision": "float32",
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared folder of 16 synthetic 64x64 chest X-rays (Kaggle layout -> prepare)."""
    from unet_lowered.dataset.prepare import prepare
    from unet_lowered.demo.synth import make_dataset

    root = tmp_path_factory.mktemp("tiny")
    make_dataset(root / "kaggle", count=16, test_count=2, size=64, seed=1)
    prepare(root / "kaggle", root / "prepared")
    return root / "prepared"


def _train(data: Path, out: Path, **settings):
    from unet_lowered.training.train import train

    cfg = config_mod.resolve(None, {**TINY, **settings})
    return train(data, out, cfg, verbose=0)


def chosen_area(config: dict) -> int:
    """The minimum-area candidate the run must have tried: a quarter of the 1st-percentile
    training object (share of its image) times the validation images' area (64 x 64)."""
    return round(0.25 * config["mask_stats"]["small_object"] * 64 * 64)


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_every_artefact(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    metrics = _train(tiny_data, run)
    for name in ("model.keras", "last.keras", "config.json", "split.json", "state.json"):
        assert (run / name).is_file(), name
    assert any((run / "logs").rglob("*")), "TensorBoard logs missing"
    config = json.loads((run / "config.json").read_text())
    assert config["image_size"] == [32, 32]
    assert config["channels"] == 1
    assert config["num_classes"] == 1
    assert config["threshold"] == 0.5
    assert config["loss"] == "bce+dice"
    # What the training masks look like (synthetic lungs: two objects), for the quality flag,
    # and the post-processing chosen on the validation split with the figures behind it.
    assert config["mask_stats"]["objects"] == 2
    shape = config["mask_stats"]["shape"]  # the synthetic lungs' mean shape, apices up
    assert len(shape) == len(shape[0]) == 24 and max(map(max, shape)) <= 1.0
    chosen = config["postprocess"]
    assert set(chosen) >= {"keep_largest", "fill_holes", "validation_dice_before", "tried"}
    steps = [t["step"] for t in chosen["tried"]]
    assert steps[0] == "keep 2 largest" and steps[-1] == "fill holes" and len(steps) == 3
    assert steps[1] == f"remove objects under {chosen_area(config)} px"  # the min-area candidate
    assert chosen["keep_largest"] in (None, 2)
    assert metrics["postprocess"] == chosen
    # what training wrote reads back through the checks of config.json (postprocess,
    # mask_stats, sizes), unchanged
    read = config_mod.RunConfig.from_json(config)
    assert read.postprocess == chosen and read.mask_stats == config["mask_stats"]
    # How sure the network is of its validation masks: the median share of pixels with
    # 0.1 < p < 0.9 against the mask at 0.5, predicted again here from model.keras.
    assert config["mask_stats"]["val_unsure"] == pytest.approx(
        _val_unsure(run, tiny_data), abs=1e-4
    )
    split = json.loads((run / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["val"])
    assert len(split["train"]) + len(split["val"]) == 16
    assert len(split["val"]) == round(16 * 0.15)  # 2 of 16
    rows = _history(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"loss", "dice", "iou", "val_loss", "val_dice", "val_iou", "lr", "time_s"} <= set(
        rows[0]
    )
    assert 0 < float(rows[0]["time_s"]) < float(rows[1]["time_s"])
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == metrics
    assert saved["epochs_completed"] == 2
    assert saved["val_dice"] == pytest.approx(max(float(r["val_dice"]) for r in rows), abs=1e-5)
    assert saved["images_per_s"] > 0
    # No temporary files left behind by the atomic writes.
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def _val_unsure(run: Path, data: Path) -> float:
    from unet_lowered.dataset.pairs import load_prepared
    from unet_lowered.inference.predictor import PredictOptions, predict_images
    from unet_lowered.io.images import read_image
    from unet_lowered.io.runs import load_run

    loaded, pairs = load_run(run), load_prepared(data)
    val = json.loads((run / "split.json").read_text())["val"]
    batch = [read_image(pairs.images[i]) for i in val]
    options = PredictOptions(tta=False, postprocess=False)
    shares = []
    for p in predict_images(loaded.model(), batch, loaded.config, options):
        p = p[..., 0]
        shares.append(np.count_nonzero((p > 0.1) & (p < 0.9)) / np.count_nonzero(p >= 0.5))
    return float(np.median(shares))


def test_validation_unsure_is_the_median_share() -> None:
    from unet_lowered.training.train import validation_unsure

    sure, half = np.zeros((10, 10), np.float32), np.zeros((10, 10), np.float32)
    sure[:4] = 0.95  # 40 px of mask, none unsure
    half[:2], half[2:3] = 0.95, 0.5  # 30 px of mask at 0.5, 10 of them unsure
    assert validation_unsure([sure, half, half], 0.5) == round(10 / 30, 4)
    assert validation_unsure([sure, sure, half], 0.5) == 0.0
    assert validation_unsure([half], 0.6) == 0.5  # at 0.6 the mask is 20 px
    assert validation_unsure([], 0.5) is None


def test_same_seed_same_split_and_dice(tiny_data: Path, tmp_path: Path) -> None:
    a = _train(tiny_data, tmp_path / "a", seed=3)
    b = _train(tiny_data, tmp_path / "b", seed=3)
    c_split = json.loads(((tmp_path / "a") / "split.json").read_text())
    assert c_split == json.loads(((tmp_path / "b") / "split.json").read_text())
    assert a["val_dice"] == pytest.approx(b["val_dice"], abs=1e-6)
    rows_a, rows_b = _history(tmp_path / "a"), _history(tmp_path / "b")
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert float(ra["val_loss"]) == pytest.approx(float(rb["val_loss"]), abs=1e-6)


def test_other_seed_other_split(tiny_data: Path) -> None:
    from unet_lowered.dataset.pairs import load_prepared

    data = load_prepared(tiny_data)
    assert data.split(0.25, 0) != data.split(0.25, 1)
    assert data.split(0.25, 0) == data.split(0.25, 0)


def test_resume_after_sigkill_finishes_all_epochs(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    epochs = 8
    cmd = [sys.executable, "-m", "unet_lowered", "train", str(tiny_data), "--out", str(run)]
    cmd += ["--epochs", str(epochs), "--image-size", "64", "--base-filters", "8"]
    cmd += ["--depth", "3", "--precision", "float32", "--batch-size", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run / "state.json"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state.is_file() and json.loads(state.read_text())["epoch"] >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    done = json.loads(state.read_text())["epoch"]
    assert 1 <= done < epochs
    result = CliRunner().invoke(app, ["train", "--resume", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert json.loads(state.read_text())["epoch"] == epochs
    rows = _history(run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    # The training clock continues across the kill: time_s never goes back.
    times = [float(r["time_s"]) for r in rows]
    assert all(b > a for a, b in itertools.pairwise(times)), times
    assert json.loads((run / "metrics.json").read_text())["epochs_completed"] == epochs


def test_resume_after_a_kill_between_checkpoint_and_state(
    tiny_data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Killed after a new best epoch's last.keras was in place but before model.keras was
    copied and state.json written: resume trusts the state inside last.keras, does not
    train that epoch again, makes model.keras the best epoch's, and ends as the
    uninterrupted run does."""
    from unet_lowered.io import atomic, runs
    from unet_lowered.training import callbacks
    from unet_lowered.training.train import train

    settings = {"epochs": 3, "seed": 5, "learning_rate": 1e-2}
    whole = tmp_path / "whole"
    _train(tiny_data, whole, **settings)
    reference = _history(whole)
    dice = [float(r["val_dice"]) for r in reference]
    kill = next(e for e in range(2, 4) if dice[e - 1] > max(dice[: e - 1]))  # a new best
    run = tmp_path / "run"
    copy_file, write_json = atomic.copy_file, atomic.write_json

    def killed(target: Path) -> bool:  # after that epoch's last.keras, nothing is written
        if Path(target).parent != run or Path(target).name not in ("state.json", "model.keras"):
            return False
        last = runs.checkpoint_state(run / runs.LAST_FILE)
        return bool(last) and last["epoch"] == kill

    def copy_unless_killed(src, dest):
        if killed(dest):
            raise KeyboardInterrupt
        return copy_file(src, dest)

    def write_unless_killed(path, obj):
        if killed(path):
            raise KeyboardInterrupt
        return write_json(path, obj)

    monkeypatch.setattr(callbacks.atomic, "copy_file", copy_unless_killed)
    monkeypatch.setattr(callbacks.atomic, "write_json", write_unless_killed)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_data, run, **settings)
    monkeypatch.undo()
    assert json.loads((run / "state.json").read_text())["epoch"] == kill - 1
    assert runs.checkpoint_state(run / runs.LAST_FILE)["epoch"] == kill
    assert runs.checkpoint_state(run / runs.MODEL_FILE)["epoch"] < kill  # the copy never came
    trained = _history(run)
    assert len(trained) == kill

    metrics = train(None, run, resume=True, verbose=0)
    assert f"resuming after epoch {kill}, as last.keras holds" in capsys.readouterr().out
    rows = _history(run)
    assert rows[:kill] == trained  # that epoch was not trained again
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference], abs=1e-5)
    assert metrics["epochs_completed"] == 3
    best = runs.checkpoint_state(run / runs.MODEL_FILE)
    assert (
        best["epoch"]
        == metrics["best_epoch"]
        == json.loads((whole / "metrics.json").read_text())["best_epoch"]
    )
    assert metrics["train_time_s"] == pytest.approx(float(rows[-1]["time_s"]), abs=0.01)


def test_resume_of_finished_run_trains_nothing_more(tiny_data: Path, tmp_path: Path) -> None:
    """A run stopped after its epochs but before metrics.json is finished without
    training; a finished run (metrics.json written) is not resumed at all."""
    from unet_lowered.training.train import train

    run = tmp_path / "run"
    _train(tiny_data, run, epochs=1)
    assert json.loads((run / "state.json").read_text())["finished"] == "all epochs"
    (run / "metrics.json").unlink()  # stopped before the post-processing choice
    metrics = train(None, run, resume=True, verbose=0)
    assert metrics["epochs_completed"] == 1
    assert len(_history(run)) == 1
    with pytest.raises(UnetError, match=r"finished at epoch 1 \(all epochs\); nothing to resume"):
        train(None, run, resume=True, verbose=0)


def _killed_after(monkeypatch, run: Path, epoch: int) -> None:
    """Make training into ``run`` stop (KeyboardInterrupt, as Ctrl-C) right after the
    files of ``epoch`` are written, as a kill between two epochs would leave them."""
    from unet_lowered.training import callbacks

    write_json = callbacks.atomic.write_json

    def write_then_stop(path, obj):
        write_json(path, obj)
        if Path(path) == run / "state.json" and obj.get("epoch") == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.atomic, "write_json", write_then_stop)


def test_early_stopping_state_counts_validated_epochs_after_the_best() -> None:
    from unet_lowered.training.callbacks import early_stopping_state, run_ending

    def row(epoch: int, dice: str) -> dict[str, str]:
        return {"epoch": str(epoch), "loss": "0.5", "val_dice": dice}

    # epochs 1-2 at half size (not validated), best at 4, a row of epoch 8 past the
    # checkpoint (written before a kill that came before last.keras)
    rows = [row(1, ""), row(2, ""), row(3, "0.5"), row(4, "0.7"), row(5, "0.6")]
    rows += [row(6, ""), row(7, "0.69"), row(8, "0.8")]
    state = {"epoch": 7, "best": 0.7, "best_epoch": 4}
    assert early_stopping_state(state, rows) == (0.7, 2)
    assert early_stopping_state({"epoch": 2, "best": -1.0, "best_epoch": None}, rows) == (None, 0)

    cfg = config_mod.resolve(None, {**TINY, "epochs": 10, "patience": 3})
    assert run_ending(state, rows, cfg) is None
    assert run_ending(state, rows, config_mod.resolve(None, {**TINY, "patience": 2})) == (
        "all epochs"
    )
    cfg2 = config_mod.resolve(None, {**TINY, "epochs": 10, "patience": 2})
    assert run_ending(state, rows, cfg2) == "early stopping"
    assert run_ending({**state, "finished": "time budget"}, rows, cfg) == "time budget"


def test_resume_stops_where_the_uninterrupted_run_stops(
    tiny_data: Path, tmp_path: Path, monkeypatch
) -> None:
    """A run killed after the epoch before early stopping ends it, then resumed, gives
    the uninterrupted run: the same epochs (no more), the plateau schedule's lowered rate
    at the same epoch, the same best epoch and Dice; a --resume of it is refused."""
    from unet_lowered.training.train import train

    settings = {"epochs": 10, "patience": 3, "schedule": "plateau", "seed": 1}
    settings["learning_rate"] = 1e-2
    whole = _train(tiny_data, tmp_path / "whole", **settings)
    reference = _history(tmp_path / "whole")
    stop = whole["epochs_completed"]
    # The case this test is about: early stopping ended it, after the plateau schedule
    # lowered the rate in the epoch before (patience 3 for stopping, 2 for the rate).
    assert stop < 10 and stop - whole["best_epoch"] == 3, reference
    assert float(reference[-1]["lr"]) < float(reference[-2]["lr"]), reference
    state = json.loads((tmp_path / "whole" / "state.json").read_text())
    assert state["finished"] == "early stopping"

    run = tmp_path / "run"
    _killed_after(monkeypatch, run, stop - 1)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_data, run, **settings)
    monkeypatch.undo()
    assert len(_history(run)) == stop - 1

    metrics = train(None, run, resume=True, verbose=0)
    rows = _history(run)
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in reference]
    assert [r["lr"] for r in rows] == [r["lr"] for r in reference]
    for key in ("loss", "val_dice"):
        assert [float(r[key]) for r in rows] == pytest.approx(
            [float(r[key]) for r in reference], abs=1e-5
        )
    assert metrics["best_epoch"] == whole["best_epoch"]
    assert metrics["val_dice"] == pytest.approx(whole["val_dice"], abs=1e-5)
    with pytest.raises(
        UnetError, match=rf"finished at epoch {stop} \(early stopping\); nothing to resume"
    ):
        train(None, run, resume=True, verbose=0)


def test_resume_has_what_is_left_of_the_time_budget(
    tiny_data: Path, tmp_path: Path, monkeypatch
) -> None:
    """A run that used 900 s of a 1000 s budget before it was killed resumes with about
    100 s left (not a fresh 1000 s), and its time_used_s counts the whole run."""
    from unet_lowered.planning import callbacks as budget_mod
    from unet_lowered.training.train import train

    deadlines: list[float] = []

    class Recorded(budget_mod.TimeBudget):
        def __init__(self, deadline: float, *args, **kwargs):
            super().__init__(deadline, *args, **kwargs)
            deadlines.append(deadline - time.perf_counter())  # the time left

    run = tmp_path / "run"
    cfg = config_mod.resolve(None, {**TINY, "epochs": 3, "time_budget": 1000})
    _killed_after(monkeypatch, run, 1)
    with pytest.raises(KeyboardInterrupt):  # planning "began" 900 s before this call
        train(tiny_data, run, cfg, verbose=0, provenance={"started": time.perf_counter() - 900})
    monkeypatch.undo()
    used = json.loads((run / "state.json").read_text())["time_used_s"]
    assert 900 < used < 990

    monkeypatch.setattr(budget_mod, "TimeBudget", Recorded)
    metrics = train(None, run, resume=True, verbose=0)
    assert len(deadlines) == 1 and 0 < deadlines[0] <= 1000 - used, deadlines
    assert metrics["epochs_completed"] == 3
    assert metrics["time_budget_s"] == 1000
    assert used < metrics["time_used_s"] < 1000
    assert json.loads((run / "state.json").read_text())["time_used_s"] > used


def test_train_gives_back_the_callers_precision_policy(tiny_data: Path, tmp_path: Path) -> None:
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        _train(tiny_data, tmp_path / "run", epochs=1)  # a float32 run
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_overfit_batch_learns(tiny_data: Path, tmp_path: Path) -> None:
    metrics = _train(
        tiny_data,
        tmp_path / "run",
        overfit_batch=True,
        epochs=60,
        image_size=64,
        base_filters=8,
        learning_rate=3e-3,
        schedule="none",
        patience=100,
    )
    assert metrics["val_dice"] > 0.9


def test_existing_run_needs_overwrite(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(tiny_data, run, epochs=1)
    with pytest.raises(UnetError, match="already exists; pass --overwrite"):
        _train(tiny_data, run, epochs=1)
    result = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(run)])
    assert result.exit_code == 1


def test_resume_without_a_run_is_a_clear_error(tiny_data: Path, tmp_path: Path) -> None:
    """A missing folder, a file and a data folder are not runs (each was "config.json:
    missing; nothing to resume (the run never finished an epoch)"); a run folder made
    before its first epoch ended still is one with nothing to resume."""
    from unet_lowered.training.train import train

    again = "pass the --out folder of the run to resume, or start a new run without --resume"
    (tmp_path / "afile.txt").write_text("x")
    for out, words in (
        (tmp_path / "none", "no such run folder"),
        (tmp_path / "afile.txt", "a file, not a run folder"),
        (tiny_data, "not a run folder of `unet train` (no config.json)"),
    ):
        with pytest.raises(UnetError) as info:
            train(None, out, resume=True, verbose=0)
        assert str(info.value) == f"--out {out}: {words}; {again}"
    result = CliRunner().invoke(app, ["train", "--resume", "--out", str(tmp_path / "none")])
    assert result.exit_code == 1
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")  # made, then stopped before its first epoch
    with pytest.raises(UnetError, match="missing; nothing to resume"):
        train(None, run, resume=True, verbose=0)


def _resumable_run(data: Path, out: Path, last) -> Path:
    """A run folder that stopped after epoch 1 of 2, its last.keras ``last`` (a model)."""
    from unet_lowered.dataset.pairs import load_prepared

    ids = load_prepared(data).ids
    out.mkdir()
    values = {"image_size": [32, 32], **TINY, "data": str(data)}
    config = config_mod.RunConfig.from_json(values)
    (out / "config.json").write_text(json.dumps(config.to_json()))
    (out / "split.json").write_text(json.dumps({"train": ids[:-2], "val": ids[-2:]}))
    (out / "state.json").write_text(json.dumps({"epoch": 1, "best": -1.0, "best_epoch": None}))
    last.save(out / "last.keras")
    return out


def test_resume_refuses_a_last_keras_with_code_and_runs_none(
    tiny_data: Path, tmp_path: Path
) -> None:
    """last.keras was loaded straight by Keras: a Lambda layer gave a traceback (safe mode
    kept its code from running); it now passes the checks every model file passes."""
    import keras

    marker = tmp_path / "marker"
    touch = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")
    inputs = keras.Input((32, 32, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1)(keras.layers.Lambda(touch)(inputs)))
    run = _resumable_run(tiny_data, tmp_path / "run", model)
    marker.unlink(missing_ok=True)  # building the model ran it once
    result = CliRunner().invoke(app, ["train", "--resume", "--out", str(run)])
    assert result.exit_code == 1
    said = result.output + str(result.exception or "")  # printed, or raised to the runner
    assert "last.keras: refused: the model holds Python code (a Lambda layer)" in said
    assert "Traceback" not in result.output
    assert not marker.exists()


@pytest.mark.parametrize(
    ("state", "inside", "match"),
    [
        ([1, 2], False, "state.json: holds a list, not an object"),
        ({"epoch": "x", "best": -1.0}, False, "state.json: epoch is 'x'"),
        ({"epoch": -5, "best": -1.0}, False, "state.json: epoch is -5"),
        ({"epoch": 1, "best": "abc"}, False, "state.json: best is 'abc'"),
        ({"epoch": 1, "best": "abc"}, True, "last.keras (unet_state.json inside): best is 'abc'"),
    ],
)
def test_resume_refuses_a_damaged_state_in_one_line(
    tiny_data: Path, tmp_path: Path, state, inside: bool, match: str
) -> None:
    from run_fixtures import bright_model
    from unet_lowered.io import runs
    from unet_lowered.training.train import train

    run = _resumable_run(tiny_data, tmp_path / "run", bright_model(32))
    if inside:
        runs.add_checkpoint_state(run / "last.keras", state)
    else:
        (run / "state.json").write_text(json.dumps(state))
    with pytest.raises(UnetError) as caught:
        train(None, run, resume=True, verbose=0)
    message = str(caught.value)
    assert match in message and "cannot be resumed" in message, message
    assert type(caught.value) is UnetError


def test_resume_refuses_a_damaged_split_in_one_line(tiny_data: Path, tmp_path: Path) -> None:
    """A split.json of the wrong shape gave a traceback deep in training."""
    from run_fixtures import bright_model
    from unet_lowered.training.train import train

    run = _resumable_run(tiny_data, tmp_path / "run", bright_model(32))
    (run / "split.json").write_text(json.dumps({"train": "abc", "val": [1]}))
    with pytest.raises(
        UnetError, match=r'split\.json: expected \{"train": \[ids\], "val": \[ids\]\}'
    ):
        train(None, run, resume=True, verbose=0)


def test_empty_masks_warn(tmp_path: Path, capsys) -> None:
    from unet_lowered.io.images import write_png

    for split_dir in ("images", "masks"):
        (tmp_path / "data" / "train" / split_dir).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        write_png(
            tmp_path / "data/train/images" / f"{i}.png", rng.integers(0, 255, (32, 32), np.uint8)
        )
        write_png(tmp_path / "data/train/masks" / f"{i}.png", np.zeros((32, 32), np.uint8))
    _train(tmp_path / "data", tmp_path / "run", epochs=2)
    err = capsys.readouterr().err
    assert "masks are empty" in err


def _constant_model(logit: float):
    import keras

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Lambda(lambda x: x * 0.0 + logit)(inputs)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize(("logit", "words"), [(-5.0, "all background"), (5.0, "all foreground")])
def test_guard_warns_on_constant_prediction(logit: float, words: str, capsys) -> None:
    from unet_lowered.training.callbacks import Guard

    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)
    guard = Guard([(x, np.zeros_like(x))], threshold=0.5)
    guard.set_model(_constant_model(logit))
    guard.on_epoch_end(1, {"loss": 0.3})
    assert f"predicts {words} on validation" in capsys.readouterr().err


def test_checkpoint_keeps_the_best_epoch_in_model_keras(tmp_path: Path) -> None:
    import keras

    from unet_lowered.model import unet
    from unet_lowered.training.callbacks import Checkpoint

    model = unet((16, 16, 1), base_filters=2, depth=1)
    kernel = model.weights[0]
    kernel.assign(np.zeros(kernel.shape, np.float32))
    checkpoint = Checkpoint(tmp_path, {"epoch": 0, "best": -1.0, "best_epoch": None})
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"val_dice": 0.5})
    best = (tmp_path / "model.keras").read_bytes()
    assert best == (tmp_path / "last.keras").read_bytes()

    kernel.assign(np.ones(kernel.shape, np.float32))
    checkpoint.on_epoch_end(1, {"val_dice": 0.4})  # worse: only last.keras moves on
    assert (tmp_path / "model.keras").read_bytes() == best
    assert (tmp_path / "last.keras").read_bytes() != best
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    assert not keras.ops.convert_to_numpy(reloaded.weights[0]).any()
    state = json.loads((tmp_path / "state.json").read_text())
    assert state.pop("time_used_s") >= 0  # the run's time so far
    assert state == {"epoch": 2, "best": 0.5, "best_epoch": 1}


def test_guard_checks_the_prediction_on_a_doubling_schedule_and_last(capsys) -> None:
    from unet_lowered.training.callbacks import Guard

    x = np.zeros((2, 8, 8, 1), np.float32)
    guard = Guard([(x, x)], threshold=0.5)
    guard.set_model(_constant_model(-5.0))
    guard.set_params({"epochs": 7})
    warned = []
    for epoch in range(7):
        guard.on_epoch_end(epoch, {"loss": 0.3})
        if "all background" in capsys.readouterr().err:
            warned.append(epoch + 1)
    assert warned == [2, 4, 7]


def test_guard_stops_on_nan_loss(capsys) -> None:
    from unet_lowered.training.callbacks import Guard

    model = _constant_model(0.0)
    guard = Guard([], threshold=0.5)
    guard.set_model(model)
    guard.on_epoch_end(0, {"loss": float("nan")})
    assert model.stop_training is True
    assert "the loss is NaN" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("ce+dice", "bce+dice"),
        ("ce", "bce"),
        ("weighted-ce", "weighted-bce"),
        ("BCE + Dice", "bce+dice"),
    ],
)
def test_loss_aliases_the_readme_names_are_accepted(given: str, canonical: str) -> None:
    """The bug: `unet train --loss ce+dice` answered "loss 'ce+dice' is not known"."""
    assert config_mod.resolve(None, {"loss": given}).loss == canonical


@pytest.mark.parametrize(
    ("setting", "value", "match"),
    [
        ("depth", 9, "depth must be at most 8, got 9"),
        ("depth", 100, "depth must be at most 8, got 100"),
        ("image_size", 8193, "image-size must be at most 8192, got 8193"),
        ("epochs", 10**9, "epochs must be at most 100000, got 1000000000"),
        ("batch_size", 10**6, "batch-size must be at most 4096, got 1000000"),
        ("base_filters", 10**6, "base-filters must be at most 1024, got 1000000"),
    ],
)
def test_depth_and_image_size_have_upper_bounds(setting: str, value: int, match: str) -> None:
    with pytest.raises(UnetError, match=match):
        config_mod.resolve(None, {setting: value})
    top = {"depth": 8, "image_size": 8192, "epochs": 100_000, "batch_size": 4096}
    assert config_mod.resolve(None, {**top, "base_filters": 1024}).depth == 8


def test_a_bad_value_from_the_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("loss: dcie\nepochs: 3\n")
    with pytest.raises(UnetError, match=r"cfg\.yaml: unknown --loss 'dcie'"):
        config_mod.resolve(path, {})
    with pytest.raises(UnetError, match=r"^epochs must be at least 1"):  # from a flag: no file
        config_mod.resolve(path, {"loss": "dice", "epochs": 0})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss": "dcie"}, "unknown --loss 'dcie'; use one of: bce+dice, bce, dice"),
        ({"optimizer": "rmsprop"}, "use one of: adam, sgd"),
        ({"val_fraction": 1.5}, "val-fraction must be in [0, 1)"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"learning_rate": -1.0}, "lr must be a positive number, got -1.0"),
        ({"learning_rate": 0.0}, "lr must be a positive number, got 0.0"),
        ({"patience": -1}, "patience is a number of epochs, 0 or more, got -1"),
        ({"scale": 5.0}, "scale must be in [0, 1), got 5.0"),
        ({"shift": 1.0}, "shift must be in [0, 1), got 1.0"),
        ({"rotate": 270.0}, "rotate must be in [0, 180], got 270.0"),
        ({"threshold": "abc"}, "threshold must be a number, got 'abc'"),
        ({"sigma": 0.0}, "the border weights need w0 >= 0 and sigma > 0"),
        ({"flip_lr": "no"}, "flip-lr is true or false (unquoted in YAML"),  # was: on
        ({"clahe": 2}, "clahe is true or false"),
        ({"seed": 1.5}, "seed must be a whole number, 0 or more, got 1.5"),
        ({"upsampling": "bilinear", "progressive": 0.5}, "bilinear cannot take the changing"),
    ],
)
def test_bad_settings_name_the_valid_values(overrides, message) -> None:
    with pytest.raises(UnetError) as e:
        config_mod.resolve(None, overrides)
    assert message in str(e.value)


def test_a_broken_yaml_file_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("epochs: 3\nloss: [bce\n  x: 1\n")
    with pytest.raises(UnetError) as e:
        config_mod.resolve(path)
    assert str(e.value) == (
        f"{path}: not valid YAML/JSON (expected ',' or ']', but got ':' at line 3, column 4)"
    )


def test_config_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("epochs: 7\nimage-size: 128\nloss: dice\n")
    cfg = config_mod.resolve(path, {"epochs": 3, "seed": None})
    assert (cfg.epochs, cfg.image_size, cfg.loss, cfg.seed) == (3, 128, "dice", 0)
    (tmp_path / "bad.json").write_text('{"epoch": 3}')
    with pytest.raises(
        UnetError,
        match=r"unknown setting 'epoch'; did you mean 'epochs'\? valid settings: .*epochs",
    ):
        config_mod.resolve(tmp_path / "bad.json")


def test_config_file_keys_are_the_flags(tmp_path: Path) -> None:
    """The README says the keys are the flags: --crop/--resize and --lr are keys too
    (`crop: true` was "unknown setting 'crop'")."""
    path = tmp_path / "cfg.yaml"
    for text, mode in (
        ("crop: true", "crop"),
        ("crop: false", "resize"),
        ("resize: true", "resize"),
    ):
        path.write_text(f"{text}\nlr: 0.01\n")
        cfg = config_mod.resolve(path)
        assert (cfg.input_mode, cfg.learning_rate) == (mode, 0.01)
    path.write_text("crop: 256\n")
    with pytest.raises(UnetError, match=r"'crop' is true or false, got 256"):
        config_mod.resolve(path)


@pytest.mark.parametrize(
    ("sizes", "depth", "padding", "expected"),
    [
        ([(224, 224)] * 5, 4, "same", 224),  # JSRT: its own size, no resampling
        ([(2048, 2048), (2500, 2048), (1024, 1024)], 4, "same", 256),  # large: capped
        ([(100, 60), (100, 90), (120, 100)], 4, "same", 96),  # median 100 -> 96
        ([(200, 300)], 4, "same", 256),  # the longer side counts
        ([(40, 40)], 4, "same", 32),
        ([(10, 10)], 4, "same", 16),  # below the smallest valid size: the smallest
        ([(1024, 1024)], 4, "valid", 428),  # capped at 256: the output 244 <= 256
    ],
)
def test_auto_image_size(sizes, depth, padding, expected) -> None:
    from unet_lowered.model import output_size
    from unet_lowered.training.train import resolve_image_size

    size = resolve_image_size(sizes, depth, padding)
    assert size == expected
    output_size(size, depth, padding)  # the network takes it


@pytest.mark.parametrize(
    ("side", "expected_in", "expected_out"),
    [(224, 396, 212), (1024, 428, 244), (10, 188, 4)],  # 1024: capped at 256
)
def test_auto_image_size_of_whole_images_with_valid_padding(
    side, expected_in, expected_out
) -> None:
    """Whole images with valid padding are resized to the OUTPUT size and mirror-padded
    to the input: the output is the largest valid one at or below the images' size (the
    smallest when none is), the input 184 px larger at depth 4 (572 -> 388 in the paper)."""
    from unet_lowered.model import output_size
    from unet_lowered.training.train import resolve_image_size

    size = resolve_image_size([(side, side)], 4, "valid")
    assert (size, output_size(size, 4, "valid")) == (expected_in, expected_out)


def test_auto_image_size_is_the_default_and_recorded(tiny_data: Path, tmp_path: Path) -> None:
    settings = {k: v for k, v in TINY.items() if k != "image_size"}
    cfg = config_mod.resolve(None, {**settings, "epochs": 1})
    assert cfg.image_size is None
    from unet_lowered.training.train import train

    train(tiny_data, tmp_path / "run", cfg, verbose=0)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["image_size"] == [64, 64]  # the synthetic images' own size
    assert cfg.image_size is None  # the caller's settings are not changed


def test_config_file_may_say_auto(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("image-size: auto\n")
    assert config_mod.resolve(path).image_size is None
    path.write_text("image-size: big\n")
    with pytest.raises(UnetError, match="image-size must be a whole number, got 'big'") as e:
        config_mod.resolve(path)
    assert str(e.value).startswith(f"{path}: ")  # the file to fix
    assert config_mod.resolve(path, {"image_size": 128}).image_size == 128  # flags win


def test_config_file_takes_the_flag_name_lr(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 0.01\n")
    assert config_mod.resolve(path).learning_rate == 0.01


def test_resume_refuses_other_options(tmp_path: Path) -> None:
    args = ["train", "--resume", "--out", str(tmp_path), "--epochs", "3", "--lr", "0.1"]
    result = CliRunner().invoke(app, [*args, "--overwrite", str(tmp_path / "data")])
    assert result.exit_code == 1
    assert str(result.exception) == (  # --overwrite was silently ignored before
        "--resume continues a run with its own settings and data; drop --epochs, --lr, --overwrite"
    )


def test_resume_finds_moved_data_where_it_is_told(
    tiny_data: Path, tmp_path: Path, monkeypatch
) -> None:
    """A run whose data folder moved could not be resumed: the recorded folder was gone
    and DATA was refused with --resume. DATA now names the new place (its split must be
    there), and the run records it."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run = tmp_path / "run"
    _killed_after(monkeypatch, run, 1)
    with pytest.raises(KeyboardInterrupt):
        _train(data, run, epochs=3)
    monkeypatch.undo()
    data.rename(tmp_path / "moved")
    result = CliRunner().invoke(app, ["train", "--resume", "--out", str(run)])
    assert result.exit_code == 1
    assert str(result.exception) == (
        f"{run}: trained on {data}, which is not there any more; if the data moved, give "
        f"its new place: unet train --resume --out {run} DATA"
    )
    other = tmp_path / "other"  # a data folder without the run's images
    shutil.copytree(tmp_path / "moved", other)
    for image in sorted((other / "train" / "images").iterdir())[:2]:
        image.unlink()
        (other / "train" / "masks" / image.name).unlink()
    result = CliRunner().invoke(app, ["train", "--resume", "--out", str(run), str(other)])
    assert result.exit_code == 1 and "image(s) of the run's split are not in this folder" in (
        str(result.exception)
    )
    result = CliRunner().invoke(
        app, ["train", "--resume", "--out", str(run), str(tmp_path / "moved")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((run / "state.json").read_text())["epoch"] == 3
    assert json.loads((run / "config.json").read_text())["data"] == str(tmp_path / "moved")


@pytest.mark.realdata
@pytest.mark.slow
def test_jsrt_few_epochs_well_above_chance(tmp_path: Path) -> None:
    from unet_lowered.dataset.prepare import prepare

    prepare(shared_dataset("jsrt-lungs"), tmp_path / "jsrt")
    metrics = _train(
        tmp_path / "jsrt", tmp_path / "run", image_size=128, base_filters=16, depth=4, epochs=3
    )
    # Chance level (all foreground) is a Dice of about 0.45 on these images.
    assert metrics["val_dice"] > 0.85


def test_bad_data_leaves_no_run_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 1
    assert "no such data folder" in str(result.exception)
    assert not (tmp_path / "run").exists()


def test_after_training_keeps_tta_for_a_run_trained_with_flips(tmp_path: Path) -> None:
    """A model that sees the image 2 px to its left paints every disk 2 px to the right;
    averaged with its left-right flip it paints the disk in place: TTA "lr" is kept."""
    from run_fixtures import disk_image, run_config, shifted_model
    from unet_lowered.dataset.pairs import load_prepared
    from unet_lowered.io.images import write_png
    from unet_lowered.io.runs import load_run
    from unet_lowered.training.train import after_training

    model = shifted_model(2)
    data, out = tmp_path / "data", tmp_path / "run"
    for k in range(3):
        image, mask = disk_image(32, 32, seed=k)
        write_png(data / "images" / f"c{k}.png", image)
        write_png(data / "masks" / f"c{k}.png", mask.astype(np.uint8) * 255)
    out.mkdir()
    model.save(out / "model.keras")
    config = run_config({"flip_lr": True, "input_mode": "resize", "depth": 2})
    dataset = load_prepared(data)
    masks = [disk_image(32, 32, seed=k) for k in range(3)]  # (image, mask) pairs
    chosen = after_training(out, config, dataset, dataset.ids, masks).postprocess
    assert chosen["tta"] == "lr" and chosen["tried"][0]["step"] == "tta lr"
    assert chosen["validation_dice_after"] > chosen["validation_dice_before"]
    assert load_run(out).config.postprocess["tta"] == "lr"  # written to config.json
    low, high = load_run(out).config.mask_stats["contrast"]  # a bright disk on dark: below 0
    assert -1.1 < low <= high < -0.8
    flipless = after_training(out, run_config({"depth": 2}), dataset, dataset.ids, masks)
    assert flipless.postprocess["tta"] is None  # no flips in training: not a candidate
    assert all(not t["step"].startswith("tta") for t in flipless.postprocess["tried"])
    assert flipless.postprocess["score"] == "dice"
    # Boundary data (most objects behind thin gaps, per the plan): Rand error, the
    # watershed split, then the thresholds.
    plan = {"fingerprint": {"touching_fraction": 0.84}}
    boundary = after_training(
        out, run_config({"depth": 2, "plan": plan}), dataset, dataset.ids, masks
    )
    assert boundary.postprocess["score"] == "rand"
    steps = [t["step"] for t in boundary.postprocess["tried"]]
    splits = [f"watershed split, merge >= {m:g}" for m in (0.8, 0.85, 0.9, 0.95)]
    thresholds = ["threshold 0.3", "threshold 0.4", "threshold 0.6", "threshold 0.7"]
    assert steps[:8] == splits + thresholds
    assert "watershed" in boundary.postprocess
    assert all("watershed" not in step for step in steps_of(flipless.postprocess))
    assert "validation_rand_error_before" in boundary.postprocess


def steps_of(chosen: dict) -> list[str]:
    return [t["step"] for t in chosen["tried"]]


def test_a_run_stopped_before_any_validated_epoch_says_so(
    tiny_data: Path, tmp_path: Path, monkeypatch
) -> None:
    # A time budget spent in the (unvalidated) half-size epochs: no best validation Dice.
    from unet_lowered.training import train as train_mod

    metrics = {"val_dice": None, "best_epoch": None, "train_time_s": 5.0}
    monkeypatch.setattr(train_mod, "train", lambda *args, **kwargs: metrics)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(run), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "no validated epoch (model.keras is the last model; 5 s)" in result.output


def test_after_training_of_a_multi_class_run(tmp_path: Path) -> None:
    """Class-index masks (a dark disk 1 and a bright square 2), and a model whose argmax
    marks the dark pixels 0 and the bright ones 2, with a bright speck in a corner: each
    class's statistics are recorded (one object each), and keeping the largest object
    per class, which removes the speck, is chosen on validation."""
    from run_fixtures import bright_model, run_config
    from unet_lowered.dataset.pairs import load_prepared
    from unet_lowered.io.images import write_png
    from unet_lowered.training.train import after_training

    data, out = tmp_path / "data", tmp_path / "run"
    samples = []
    for k in range(3):
        labels = np.zeros((32, 32), np.uint8)
        cv2.circle(labels, (9 + k, 10), 5, 1, -1)
        labels[18:28, 16 + k : 26 + k] = 2
        image = np.choose(labels, [120, 20, 240]).astype(np.uint8)
        image[1:3, 29:31] = 240  # a bright speck the mask does not hold
        write_png(data / "images" / f"c{k}.png", image)
        write_png(data / "masks" / f"c{k}.png", labels)
        samples.append((image.astype(np.float32) / 255, labels))
    out.mkdir()
    bright_model(32, num_classes=3).save(out / "model.keras")
    config = run_config({"depth": 2, "num_classes": 3, "label_values": [0, 1, 2]})
    dataset = load_prepared(data)
    done = after_training(out, config, dataset, dataset.ids, samples)
    recorded = done.mask_stats
    assert recorded["objects"] == 2  # disk and square together
    assert sorted(recorded["classes"]) == ["1", "2"]
    assert [recorded["classes"][c]["objects"] for c in ("1", "2")] == [1, 1]
    disk, square = (recorded["classes"][c]["contrast"] for c in ("1", "2"))
    assert disk[0] > 0 > square[1]  # the dark disk, the bright square
    chosen = done.postprocess
    assert chosen["keep_largest"] == 1 and chosen["tried"][0]["step"] == "keep 1 largest"
    assert chosen["validation_dice_after"] > chosen["validation_dice_before"]
    assert json.loads((out / "config.json").read_text())["postprocess"] == chosen


def test_train_records_the_classes_of_a_multi_class_run(tmp_path: Path) -> None:
    """`unet train` on data prepared with --classes: config.json gets the class names,
    each class's statistics and the post-processing chosen on validation."""
    from unet_lowered.dataset.prepare import prepare
    from unet_lowered.io.images import write_png

    for k in range(12):
        labels = np.zeros((32, 32), np.uint8)
        cv2.circle(labels, (9 + k % 4, 10), 5, 1, -1)
        labels[18:28, 14 + k % 5 : 24 + k % 5] = 2
        write_png(
            tmp_path / "raw" / "images" / f"c{k}.png",
            np.choose(labels, [120, 20, 240]).astype(np.uint8),
        )
        write_png(tmp_path / "raw" / "masks" / f"c{k}.png", labels)
    prepare(tmp_path / "raw", tmp_path / "data", classes=True, class_names="disk,square")
    _train(tmp_path / "data", tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["num_classes"] == 3 and config["postprocess"]["score"] == "dice"
    assert config["class_names"] == ["background", "disk", "square"]  # from dataset.json
    assert sorted(config["mask_stats"]["classes"]) == ["1", "2"]
    assert [config["mask_stats"]["classes"][c]["objects"] for c in ("1", "2")] == [1, 1]
    read = config_mod.RunConfig.from_json(config)  # each class's figures pass the checks
    assert read.mask_stats == config["mask_stats"] and read.postprocess == config["postprocess"]


@pytest.mark.parametrize(
    ("flags", "where"),
    [
        (["--resize", "--image-size", "32"], "at the training size"),
        (["--crop", "--image-size", "32"], "on one fixed window of the crop size"),
        (["--resize", "--padding", "valid"], "at the network's output size"),
        (["--crop", "--padding", "valid"], "on the network's output window of one fixed crop"),
    ],
)
def test_the_validation_dice_says_where_it_was_measured(
    tiny_data: Path, tmp_path: Path, flags: list[str], where: str
) -> None:
    """A crop-trained run's validation Dice is one window per image, not the whole image
    at the training size, and a valid network's is its output's: the last line and
    metrics.json's note say which."""
    run = tmp_path / "run"
    args = ["train", str(tiny_data), "--out", str(run), "--epochs", "1", *flags]
    result = CliRunner().invoke(app, [*args, "--base-filters", "4"])
    assert result.exit_code == 0, result.output
    assert "best validation Dice" in result.output and f"({where}" in result.output
    note = json.loads((run / "metrics.json").read_text())["val_dice_note"]
    assert note.startswith("mean per-image Dice on the validation split, " + where)


def test_the_post_processing_choice_shows_its_progress(tiny_data, tmp_path, monkeypatch, capfd):
    """Predicting the validation images at their original size took 11 minutes without a
    sign of life on two 64-99 megapixel images; at a terminal it now has a bar."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    _train(tiny_data, tmp_path / "run", epochs=1)
    err = capfd.readouterr().err
    assert "post-processing: predicting validation images" in err
    n_val = len(json.loads((tmp_path / "run" / "split.json").read_text())["val"])
    assert f"{n_val}/{n_val}" in err


def test_keras_bar_only_on_a_terminal_that_takes_it(monkeypatch) -> None:
    """NO_COLOR and TERM=dumb got Keras' bar anyway: colour codes and ~1000 backspaces."""
    import sys

    from unet_lowered.training import train as train_mod

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert train_mod._plain_terminal()
    monkeypatch.setenv("NO_COLOR", "1")
    assert not train_mod._plain_terminal()
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not train_mod._plain_terminal()
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert not train_mod._plain_terminal()


def test_a_training_too_large_for_the_free_memory_is_warned_of(
    tiny_data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Before the first epoch, one line when the estimate exceeds the free memory (the
    kernel would kill the process without a word); none when it fits."""
    from unet_lowered.training import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 500_000_000)
    _train(tiny_data, tmp_path / "small", epochs=1)
    err = capsys.readouterr().err
    assert "warning: this training needs about 1.0 GB (32x32, batch 4) and 0.5 GB is free" in err
    monkeypatch.setattr(memory, "available_bytes", lambda: 50_000_000_000)
    _train(tiny_data, tmp_path / "large", epochs=1)
    assert "this training needs" not in capsys.readouterr().err


def test_valid_padding_trains_whole_images_at_the_output_size(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    """`unet train --padding valid` on whole 64-px images: auto size 104 (output 64 at
    depth 2), half size 72 (output 32), the run records resize_to_output and predicts a
    test image in one pass at its own size."""
    from unet_lowered.inference.predictor import predict_image
    from unet_lowered.io.images import read_image
    from unet_lowered.io.runs import load_run

    run = tmp_path / "run"
    _train(tiny_data, run, image_size=None, padding="valid", epochs=2, progressive=0.5)
    out = capsys.readouterr().out
    assert "epoch 1 trains at half size (72x72, output 32x32, progressive resizing)" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["image_size"] == [104, 104] and config["resize_to_output"] is True
    run = load_run(tmp_path / "run")
    assert run.config.resize_size == (64, 64)
    image = read_image(next((tiny_data / "test").iterdir()))
    probs = predict_image(run.model(), image, run.config)
    assert probs.shape[:2] == image.shape[:2] and np.isfinite(probs).all()


def test_half_size_of_a_valid_network_halves_the_output() -> None:
    """Progressive resizing of a valid run halves the OUTPUT, of whole images (212 ->
    100, input 284) and of crops (428, output 244 -> 116, input 300); halving the input
    (396 -> 198 -> 188) would leave a 4x4 output."""
    from unet_lowered.model import half_size, output_size
    from unet_lowered.training.sequence import progressive_plan

    assert output_size(188, 4, "valid") == 4
    assert half_size(396, 4, "valid") == 284
    plan = progressive_plan(0.5, 20, 396, 4, "valid")
    assert (plan.epochs, plan.size, plan.target_size) == (10, (284, 284), (100, 100))
    plan = progressive_plan(0.5, 20, 428, 4, "valid")
    assert (plan.epochs, plan.size, plan.target_size) == (10, (300, 300), (116, 116))
    assert half_size(224, 4, "same") == 112  # same padding: the input is the output


def test_resume_of_a_valid_run_trained_at_its_input_size_is_refused(
    tiny_data: Path, tmp_path: Path
) -> None:
    """A valid-padding run on whole images from before resize_to_output cannot go on in
    the new geometry: refused in one line, not trained half one way, half the other."""
    from unet_lowered.training.train import train

    run = tmp_path / "run"
    _train(tiny_data, run, image_size=None, padding="valid", epochs=2)
    (run / "metrics.json").unlink()
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "epoch": 1, "finished": None}))
    config = json.loads((run / "config.json").read_text())
    del config["resize_to_output"]  # as an earlier version wrote it
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnetError, match="a valid-padding run of an earlier version"):
        train(None, run, resume=True, verbose=0)


def test_a_tiny_valid_output_on_whole_images_is_warned_of() -> None:
    """--image-size 188 with valid padding trained 128-px images squeezed to the 4x4
    output without a word (validation Dice 0.0000 in the audit)."""
    import dataclasses

    from unet_lowered.training.config import TrainConfig
    from unet_lowered.training.train import small_output_warning

    cfg = TrainConfig(padding="valid", image_size=188, input_mode="resize")
    assert small_output_warning(cfg, (4, 4), [(128, 128)]) == (
        "--image-size 188 with valid padding gives a 4x4 output: whole images are resized "
        "to it; the size is the network's input (for these images --image-size 300, output "
        "116, or leave it out)"
    )
    assert small_output_warning(dataclasses.replace(cfg, image_size=300), (116, 116), []) is None
    crop = dataclasses.replace(cfg, input_mode="crop")  # crops keep their scale
    assert small_output_warning(crop, (4, 4), [(128, 128)]) is None
    same = TrainConfig(padding="same", image_size=16, input_mode="resize")
    assert small_output_warning(same, (16, 16), [(128, 128)]) is None
