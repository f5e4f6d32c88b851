"""``--ema``: validation and checkpoints see the moving average of the weights, training
goes on from the trained weights, and a resumed run continues exactly."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from unet_lowered.errors import SettingError
from unet_lowered.training.callbacks import AveragedWeights
from unet_lowered.training.config import TrainConfig

pytestmark = pytest.mark.backend

X = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
Y = (X @ np.array([[1.0], [-2.0], [0.5]], "float32") + 0.3).astype("float32")


def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    net.compile(optimizer=keras.optimizers.SGD(0.05, use_ema=True, ema_momentum=0.8), loss="mse")
    return net


def weights(net: keras.Model) -> np.ndarray:
    return np.concatenate([np.ravel(keras.ops.convert_to_numpy(w)) for w in net.weights])


def averages(net: keras.Model) -> np.ndarray:
    slots = net.optimizer._model_variables_moving_average
    return np.concatenate([np.ravel(keras.ops.convert_to_numpy(v)) for v in slots])


class Record(keras.callbacks.Callback):
    """What a checkpoint at the end of each epoch sees, and the optimiser's slots."""

    def __init__(self):
        super().__init__()
        self.model_at_end, self.slots_at_end = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.model_at_end.append(weights(self.model))
        self.slots_at_end.append(averages(self.model))


def fit(net: keras.Model, callbacks: list, epochs: int, initial_epoch: int = 0) -> Record:
    record = Record()
    net.fit(
        X,
        Y,
        batch_size=8,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        verbose=0,
        callbacks=[*callbacks, record],
    )
    return record


def test_checkpoints_see_the_average_and_training_goes_on_from_the_weights() -> None:
    plain = fit(model(), [], epochs=3)  # Keras' EMA without swapping: the reference
    net = model()
    swapped = fit(net, [AveragedWeights()], epochs=3)
    for e in range(3):
        assert np.allclose(swapped.model_at_end[e], plain.slots_at_end[e], atol=1e-6)
    for e in range(2):  # the trained weights wait in the slots until the next epoch
        assert np.allclose(swapped.slots_at_end[e], plain.model_at_end[e], atol=1e-6)
    assert not np.allclose(plain.model_at_end[2], plain.slots_at_end[2], atol=1e-4)
    assert np.allclose(weights(net), plain.slots_at_end[2], atol=1e-6)  # fit ends averaged


class Save(keras.callbacks.Callback):
    """``last.keras`` of each epoch, as the run's checkpoint writes it (after the swap)."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def on_epoch_end(self, epoch, logs=None):
        self.model.save(self.folder / f"last-{epoch + 1}.keras")


def test_a_resumed_run_continues_as_an_uninterrupted_one(tmp_path: Path) -> None:
    whole = fit(model(), [AveragedWeights(), Save(tmp_path)], epochs=3)
    killed = keras.saving.load_model(tmp_path / "last-2.keras", compile=True)
    rest = fit(killed, [AveragedWeights(resumed=True)], epochs=3, initial_epoch=2)
    assert np.allclose(rest.model_at_end[0], whole.model_at_end[2], atol=1e-6)
    unaware = keras.saving.load_model(tmp_path / "last-2.keras", compile=True)
    wrong = fit(unaware, [AveragedWeights()], epochs=3, initial_epoch=2)  # trains the average
    assert not np.allclose(wrong.model_at_end[0], whole.model_at_end[2], atol=1e-4)


def test_ema_is_a_momentum_below_one() -> None:
    assert TrainConfig(ema=0.99).validate().ema == 0.99
    with pytest.raises(SettingError, match=r"ema must be in \[0, 1\)"):
        TrainConfig(ema=1.0).validate()
