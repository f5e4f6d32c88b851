"""The step timer: it times the network ``unet train`` trains, at its precision."""

from __future__ import annotations

import keras
import pytest

from unet_lowered.planning import steptime
from unet_lowered.training import train as train_mod
from unet_lowered.training.config import TrainConfig


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_step_is_timed_at_the_training_precision(monkeypatch, precision: str) -> None:
    built = []
    real_build = train_mod.build_model

    def recording_build(cfg, channels, num_classes):
        built.append(keras.mixed_precision.global_policy().name)
        return real_build(cfg, channels, num_classes)

    monkeypatch.setattr(train_mod, "build_model", recording_build)
    cfg = TrainConfig(image_size=32, batch_size=2, base_filters=4, depth=2, precision=precision)
    keras.mixed_precision.set_global_policy("float32")
    measured = steptime.measure_step_time(cfg.validate(), channels=1, num_classes=1, steps=3)
    assert built == [precision]
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    assert measured["batch_size"] == 2
    assert 0 < measured["step_s"] < 60 and measured["augment_s"] >= 0


def test_weighted_loss_is_timed_with_its_weight_channel() -> None:
    cfg = TrainConfig(image_size=32, batch_size=2, base_filters=4, depth=2, loss="weighted-bce")
    measured = steptime.measure_step_time(cfg.validate(), channels=3, num_classes=1, steps=2)
    assert measured["step_s"] > 0
