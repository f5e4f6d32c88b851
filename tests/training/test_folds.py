"""unet train --folds K: the folds, the averaging model, the run folder, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from unet_lowered.cli import app
from unet_lowered.errors import UnetError
from unet_lowered.evaluation.evaluate import evaluate_run
from unet_lowered.inference.predictor import PredictOptions
from unet_lowered.training.folds import ensemble_model, fold_splits

TINY = [
    "--image-size", "32", "--base-filters", "4", "--depth", "2", "--epochs", "2",
    "--batch-size", "4", "--precision", "float32",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared folder of 16 synthetic 64x64 chest X-rays."""
    from unet_lowered.dataset.prepare import prepare
    from unet_lowered.demo.synth import make_dataset

    root = tmp_path_factory.mktemp("folds")
    make_dataset(root / "kaggle", count=16, test_count=2, size=64, seed=1)
    prepare(root / "kaggle", root / "prepared")
    return root / "prepared"


def test_fold_splits_cover_the_ids_once() -> None:
    ids = [f"id{i:02d}" for i in range(10)]
    splits = fold_splits(ids[::-1], 3, seed=0)  # the order given does not matter
    assert splits == fold_splits(ids, 3, seed=0)
    assert sorted(len(s["val"]) for s in splits) == [3, 3, 4]
    assert sorted(i for s in splits for i in s["val"]) == ids  # each id validates once
    for s in splits:
        assert sorted(s["train"] + s["val"]) == ids and set(s["train"]).isdisjoint(s["val"])
    assert fold_splits(ids, 3, seed=1) != splits
    with pytest.raises(UnetError, match="--folds must be 2 or more"):
        fold_splits(ids, 1, seed=0)
    with pytest.raises(UnetError, match="only 10 training images"):
        fold_splits(ids, 11, seed=0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z.astype(np.float64)))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z.astype(np.float64) - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _probabilities(logits: np.ndarray) -> np.ndarray:
    """What every consumer of a U-Net's logits applies: sigmoid (1 channel) or softmax."""
    return _sigmoid(logits) if logits.shape[-1] == 1 else _softmax(logits)


@pytest.mark.parametrize("classes", [1, 3])
def test_ensemble_averages_the_members_probabilities(classes: int, tmp_path: Path) -> None:
    """The ensemble's output, after sigmoid/softmax, is the mean of the members'
    probabilities (not the probability of their mean logit), also after a save and a
    load with the package's loader."""
    import keras

    from unet_lowered.io.runs import load_model

    rng = np.random.default_rng(0)
    members = []
    for _ in range(3):  # 1x1 convolutions with large weights: logits far apart
        inputs = keras.Input((8, 8, 2))
        conv = keras.layers.Conv2D(classes, 1)
        model = keras.Model(inputs, conv(inputs), name="unet")  # same name: renamed
        conv.kernel.assign(rng.normal(0, 5, (1, 1, 2, classes)))
        conv.bias.assign(rng.normal(0, 1, classes))
        members.append(model)
    x = rng.normal(size=(2, 8, 8, 2)).astype(np.float32)
    mean = np.mean([_probabilities(m.predict(x, verbose=0)) for m in members], axis=0)
    model = ensemble_model(members)
    assert [m.name for m in members] == ["fold_0", "fold_1", "fold_2"]
    model.save(tmp_path / "ensemble.keras")
    for ensemble in (model, load_model(tmp_path / "ensemble.keras")):
        out = ensemble.predict(x, verbose=0)
        assert out.shape == (2, 8, 8, classes) and out.dtype == np.float32
        np.testing.assert_allclose(_probabilities(out), mean, atol=1e-5)


def test_ensemble_of_sure_members_gives_finite_logits() -> None:
    """Mean probabilities of 0 and 1 (in float32) still give finite logits of the right
    sign and size: the mean is taken in log space, not by clipping."""
    from unet_lowered.training.folds import MeanProbability

    z = np.array([-300.0, -40.0, 0.0, 40.0, 300.0], np.float32).reshape(1, 1, 5, 1)
    out = np.asarray(MeanProbability()([z, z]))
    np.testing.assert_allclose(out, z, rtol=1e-6)
    two = np.asarray(MeanProbability()([z, -z]))  # one member sure of each side: p = 0.5
    np.testing.assert_allclose(two, 0.0, atol=1e-6)


def test_train_folds_writes_an_ensemble_run_that_predict_uses(
    tiny_data: Path, tmp_path: Path
) -> None:
    import keras

    from unet_lowered.io.runs import load_run

    run = tmp_path / "ens"
    result = CliRunner().invoke(
        app, ["train", str(tiny_data), "--out", str(run), "--folds", "2", *TINY]
    )
    assert result.exit_code == 0, result.output
    assert "2-fold ensemble: held-out validation Dice" in result.output
    split = json.loads((run / "split.json").read_text())
    plan = json.loads((run / "ensemble.json").read_text())
    assert len(split["val"]) == round(16 * 0.15)  # the same held-out split as a single run
    folds = plan["fold_splits"]
    assert sorted(folds[0]["val"] + folds[1]["val"]) == split["train"]
    for k in range(2):
        fold = load_run(run / "folds" / f"fold_{k}")
        assert fold.split() == folds[k]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["folds"] == 2 and len(metrics["fold_val_dice"]) == 2
    config = json.loads((run / "config.json").read_text())
    assert config["postprocess"]["validation_dice_before"] == metrics["val_dice"]
    # the ensemble's figure is what `unet evaluate` gives its held-out split, unprocessed
    scored = evaluate_run(
        run, tiny_data, tmp_path / "ev", PredictOptions(postprocess=False), "val", progress=False
    )
    assert scored["metrics"]["dice"]["mean"] == pytest.approx(metrics["val_dice"], abs=1e-6)

    # model.keras is the mean of the folds' best models
    ensemble = load_run(run).model()
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    members = [keras.saving.load_model(run / "folds" / f"fold_{k}" / "model.keras") for k in (0, 1)]
    expected = np.mean([_sigmoid(m.predict(x, verbose=0)) for m in members], axis=0)
    np.testing.assert_allclose(_sigmoid(ensemble.predict(x, verbose=0)), expected, atol=1e-5)

    images = tiny_data / "train" / "images"
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(run), str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == 16

    # resume after an interruption during fold 1 (after its epochs): fold 0 is kept,
    # fold 1 finished, the folds joined again
    fold0_model = (run / "folds" / "fold_0" / "model.keras").stat().st_mtime_ns
    for path in ("folds/fold_1/metrics.json", "model.keras", "metrics.json"):
        (run / path).unlink()
    result = CliRunner().invoke(app, ["train", "--out", str(run), "--resume"])
    assert result.exit_code == 0, result.output
    assert (run / "model.keras").is_file()
    assert (run / "folds" / "fold_0" / "model.keras").stat().st_mtime_ns == fold0_model


def test_folds_refuses_bad_values(tiny_data: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", str(tiny_data), "--out", str(tmp_path / "r"), "--folds", "1", *TINY]
    )
    assert result.exit_code != 0 and "--folds" in result.output
    result = CliRunner().invoke(
        app, ["train", str(tiny_data), "--out", str(tmp_path / "r2"), "--folds", "99", *TINY]
    )
    assert isinstance(result.exception, UnetError)  # main() prints it on one line
    assert "--folds 99: only 14 training images" in str(result.exception)
    assert not (tmp_path / "r2").exists()  # refused before the run folder is made


def test_train_folds_records_the_plan_that_chooses_the_post_processing(
    tiny_data: Path, tmp_path: Path
) -> None:
    """The plan and the settings' sources reach each fold's config.json and the
    ensemble's; a plan whose fingerprint finds boundary data (touching objects) has the
    ensemble's post-processing scored by the Rand error, as a single run's would be.
    A finished ensemble is not resumed."""
    from unet_lowered.training import config as config_mod
    from unet_lowered.training.folds import train_folds

    settings = {"image_size": 32, "base_filters": 4, "depth": 2, "epochs": 1, "batch_size": 4}
    cfg = config_mod.resolve(None, {**settings, "precision": "float32"})
    plan = {"fingerprint": {"touching_fraction": 0.9}, "budget_s": 60}
    sources = {"epochs": "flag", "image_size": "flag", "loss": "plan"}
    run = tmp_path / "ens"
    train_folds(tiny_data, run, cfg, 2, verbose=0, provenance={"plan": plan, "sources": sources})
    for folder in (run, run / "folds" / "fold_0", run / "folds" / "fold_1"):
        config = json.loads((folder / "config.json").read_text())
        assert config["plan"] == plan, folder
        assert config["settings_sources"] == sources, folder
    assert json.loads((run / "config.json").read_text())["postprocess"]["score"] == "rand"
    with pytest.raises(UnetError, match="the 2-fold ensemble is finished; nothing to resume"):
        train_folds(None, run, None, 0, resume=True)
    # DATA with --resume of an ensemble is refused before anything is read or written
    before = sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*"))
    result = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(run), "--resume"])
    assert result.exit_code != 0
    assert "--resume of a --folds ensemble reads the data it was trained on; drop DATA" in str(
        result.exception
    )
    assert sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_an_ensemble_loads_in_a_fresh_process(tmp_path: Path) -> None:
    """unet predict, evaluate, serve and export load with runs.load_model in a process
    that never imported the folds module: its MeanProbability layer must be known."""
    import os
    import subprocess
    import sys

    import keras

    from unet_lowered.training.folds import ensemble_model

    members = []
    for _ in range(2):
        inputs = keras.Input((8, 8, 1))
        members.append(keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs), name="unet"))
    ensemble_model(members).save(tmp_path / "ensemble.keras")
    code = (
        "import sys; from unet_lowered.io.runs import load_model; "
        "print(load_model(sys.argv[1]).output.shape)"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "ensemble.keras")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("(None, 8, 8, 1)")
