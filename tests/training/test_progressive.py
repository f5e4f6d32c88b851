"""Faster training to the same accuracy: progressive resizing and the one-cycle schedule."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from data_fixtures import ids_of, make_prepared
from unet_lowered.dataset.pairs import load_prepared
from unet_lowered.errors import SettingError
from unet_lowered.io.images import read_image
from unet_lowered.preprocess import model_input, standardize
from unet_lowered.training import config as config_mod
from unet_lowered.training.augment import AugmentConfig, random_crop
from unet_lowered.training.cache import SampleCache
from unet_lowered.training.config import TrainConfig
from unet_lowered.training.sequence import (
    Progressive,
    SegmentationSequence,
    make_sequences,
    progressive_plan,
)


def test_progressive_plan_halves_the_size_for_the_first_share_of_epochs() -> None:
    assert progressive_plan(0.5, 40, 224) == Progressive(20, (112, 112), (112, 112))
    assert progressive_plan(0.3, 10, 256) == Progressive(3, (128, 128), (128, 128))
    # Half of 200 is 100, not a size the network takes at depth 4: rounded down to 96.
    assert progressive_plan(0.5, 10, 200) == Progressive(5, (96, 96), (96, 96))
    # Valid padding: the paper's 572 has the output 388; its half, 194, is rounded
    # down to an output the network gives (180), and the input is the one around it.
    plan = progressive_plan(0.5, 10, 572, padding="valid")
    assert plan.size == (364, 364) and plan.target_size == (180, 180)
    assert progressive_plan(0.0, 40, 224) is None  # off
    assert progressive_plan(0.5, 1, 224) is None  # no whole epoch
    assert progressive_plan(0.5, 10, 16) is None  # nothing smaller the network takes


def test_progressive_must_be_a_share_below_one() -> None:
    with pytest.raises(SettingError, match="progressive"):
        TrainConfig(progressive=1.0).validate()
    with pytest.raises(SettingError, match="progressive"):
        TrainConfig(progressive=-0.1).validate()
    assert TrainConfig(progressive=0.5).validate().progressive == 0.5


def test_small_epochs_are_the_full_size_examples_resized(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(6), meta={}))
    cache = SampleCache(data, channels=1, image_size=32)
    small = Progressive(2, (16, 16), (16, 16))
    args = dict(augment=AugmentConfig(), shuffle=True, seed=4)
    progressive = SegmentationSequence(cache, data.ids, 3, progressive=small, **args)
    plain = SegmentationSequence(cache, data.ids, 3, **args)
    for epoch in (0, 1):
        progressive.set_epoch(epoch)
        plain.set_epoch(epoch)
        x, y = progressive[0]
        assert x.shape == (3, 16, 16, 1) and y.shape == (3, 16, 16, 1)
        assert set(np.unique(y)) <= {0.0, 1.0}  # labels stay labels
        ident = progressive._order[0]
        key = [4, epoch, 0]  # the first sample's generator: (seed, epoch, position)
        image, target = progressive._example(ident, np.random.default_rng(key))
        full_image, full_target = plain._example(ident, np.random.default_rng(key))
        # Both come standardised; standardising is blind to the affine map between them.
        small_image = cv2.resize(full_image[..., 0], (16, 16), interpolation=cv2.INTER_AREA)
        np.testing.assert_allclose(image[..., 0], standardize(small_image), atol=1e-5)
        # Each target pixel is its 2x2 block's label, as the image averages the block:
        # more than half of it foreground (a tie is background); nearest neighbour took
        # the block's top-left pixel, half a pixel off the image's block centre.
        blocks = full_target[..., 0].reshape(16, 2, 16, 2).mean(axis=(1, 3))
        np.testing.assert_array_equal(target[..., 0], (blocks > 0.5).astype(np.float32))
    progressive.set_epoch(2)  # from the third epoch on: full size, as without it
    plain.set_epoch(2)
    for a, b in zip(progressive[0], plain[0], strict=True):
        np.testing.assert_array_equal(a, b)


def test_small_epochs_in_crop_mode_are_smaller_crops_at_native_resolution(
    tmp_path: Path,
) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(2), meta={}, size=(40, 50)))
    cache = SampleCache(data, channels=1, image_size=32, input_mode="crop")
    small = Progressive(1, (16, 16), (16, 16))
    train = SegmentationSequence(
        cache, data.ids, 2, augment=AugmentConfig.off(), seed=3, progressive=small
    )
    x, y = train[0]
    assert x.shape == (2, 16, 16, 1) and y.shape == (2, 16, 16, 1)
    for k, ident in enumerate(data.ids):
        # A 16-px window of the image as prediction sees it: cut, not shrunk.
        whole = model_input(read_image(data.images[ident]), 1, None)
        mask = cache.sample(ident)[1]
        window = random_crop(whole, mask, (16, 16), np.random.default_rng([3, 0, k]))
        np.testing.assert_allclose(x[k], window[0], atol=1e-3)  # 16-bit storage
        np.testing.assert_array_equal(y[k, ..., 0], window[1])
    train.set_epoch(1)  # then the planned crop size
    assert train[0][0].shape == (2, 32, 32, 1)


def test_make_sequences_plans_progressive_for_training_only(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(8), meta={}))
    split = {"train": data.ids[:6], "val": data.ids[6:]}
    cfg = TrainConfig(image_size=32, epochs=10, batch_size=2, progressive=0.4).validate()
    train, val = make_sequences(data, split, cfg)
    assert train.progressive == Progressive(4, (16, 16), (16, 16))
    assert val.progressive is None  # validation stays at full size: comparable val_dice
    assert val[0][0].shape[1:3] == (32, 32)


def test_onecycle_warms_up_from_a_tenth_then_decays() -> None:
    from unet_lowered.training.train import learning_rate

    cfg = TrainConfig(schedule="onecycle", learning_rate=2e-3, epochs=10).validate()
    schedule = learning_rate(cfg, steps=10)  # 100 steps, 10 of warm-up
    lr = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 5, 10, 55, 100)]
    assert lr[0] == pytest.approx(2e-4)
    assert lr[1] == pytest.approx(1.1e-3)  # half-way up the linear warm-up
    assert lr[2] == pytest.approx(2e-3)  # the peak
    assert lr[3] == pytest.approx(2e-3 * (0.01 + 0.99 * 0.5), rel=1e-5)  # half the cosine
    assert lr[4] == pytest.approx(2e-5)  # the end: 1% of the peak


@pytest.mark.backend  # also run under JAX and torch by `make test`
def test_progressive_training_keeps_the_full_size_model(tmp_path: Path, capsys) -> None:
    from unet_lowered.training.train import train

    data = make_prepared(tmp_path / "data", ids_of(10), meta={}, size=(32, 32))
    cfg = config_mod.resolve(
        None,
        {
            "image_size": 32,
            "base_filters": 4,
            "depth": 2,
            "batch_size": 4,
            "epochs": 3,
            "precision": "float32",
            "progressive": 0.5,  # the first epoch at 16 px
        },
    )
    metrics = train(data, tmp_path / "run", cfg, verbose=0)
    assert metrics["epochs_completed"] == 3
    assert (
        "epoch 1 trains at half size (16x16, progressive resizing), not validated; "
        "validation starts at epoch 2, at 32x32"
    ) in capsys.readouterr().out
    with open(tmp_path / "run" / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # The half-size epoch is not validated; the full-size ones are.
    assert [r["val_dice"] != "" for r in rows] == [False, True, True]
    assert all(np.isfinite(float(r["val_dice"])) for r in rows[1:])
    assert metrics["best_epoch"] in (2, 3)
    for name in ("model.keras", "last.keras"):
        model = keras.saving.load_model(tmp_path / "run" / name, compile=False)
        assert tuple(model.input_shape) == (None, 32, 32, 1), name
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["progressive"] == 0.5


def test_validation_skips_only_the_half_size_epochs() -> None:
    from unet_lowered.training.callbacks import validation_epochs

    assert validation_epochs(35, 17) == list(range(18, 36))  # Keras counts from 1
    assert validation_epochs(35, 0) == 1  # no progressive resizing: every epoch
    assert validation_epochs(3, 3) == 1  # never all of them


def test_early_stopping_passes_over_epochs_without_validation() -> None:
    from unet_lowered.training.callbacks import EarlyStopping

    stopper = EarlyStopping(monitor="val_dice", mode="max", patience=1)
    stopper.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    stopper.model.stop_training = False  # as fit sets it
    stopper.on_train_begin()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras' own early stopping would warn here
        for epoch in range(3):
            stopper.on_epoch_end(epoch, {"loss": 1.0})
    assert stopper.wait == 0 and not stopper.model.stop_training
    stopper.on_epoch_end(3, {"val_dice": 0.9})
    stopper.on_epoch_end(4, {"val_dice": 0.8})  # one worse epoch: patience 1 spent
    assert stopper.model.stop_training


def test_a_fit_without_a_validated_epoch_keeps_its_last_model(tmp_path: Path) -> None:
    from unet_lowered.training.callbacks import Checkpoint

    checkpoint = Checkpoint(tmp_path, {"best": -1.0, "best_epoch": 0, "epoch": 0})
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": 1.0})  # a half-size epoch: no val_dice
    assert (tmp_path / "last.keras").is_file() and not (tmp_path / "model.keras").exists()
    checkpoint.on_train_end()
    assert (tmp_path / "model.keras").read_bytes() == (tmp_path / "last.keras").read_bytes()


def test_plateau_schedule_passes_over_epochs_without_validation() -> None:
    from unet_lowered.training.callbacks import ReduceLROnPlateau

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    plateau = ReduceLROnPlateau(monitor="val_dice", mode="max", factor=0.5, patience=1)
    plateau.set_model(model)
    plateau.on_train_begin()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras' own plateau schedule would warn here
        for epoch in range(3):
            plateau.on_epoch_end(epoch, {"loss": 1.0})
    assert abs(float(model.optimizer.learning_rate) - 1e-3) < 1e-9
    plateau.on_epoch_end(3, {"val_dice": 0.9})
    plateau.on_epoch_end(4, {"val_dice": 0.8})  # one worse epoch: patience 1 spent
    assert abs(float(model.optimizer.learning_rate) - 5e-4) < 1e-9
