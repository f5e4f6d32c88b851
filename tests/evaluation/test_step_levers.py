"""``benchmarks/step_levers.py``: the variants it compares, and its alternating timer."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

from unet_lowered import model as unet_model

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def levers(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import step_levers

    return step_levers


def test_the_plain_model_differs_only_in_its_up_convolutions(levers):
    own, plain = levers.build(32, "float32", False), levers.build(32, "float32", True)
    kinds = {type(layer) for layer in plain.layers if layer.name.endswith("_upconv")}
    assert kinds == {keras.layers.Conv2DTranspose}
    assert {type(layer) for layer in own.layers if layer.name.endswith("_upconv")} == {
        unet_model.UpConv2x2
    }
    assert unet_model.UpConv2x2 is not keras.layers.Conv2DTranspose  # the swap is undone
    assert [w.shape for w in own.weights] == [w.shape for w in plain.weights]
    assert levers.max_difference(32, keras.ops.ones((1, 32, 32, 1))) < 1e-5


def test_interleaved_alternates_the_order_and_takes_medians(levers, monkeypatch):
    calls, clock = [], iter(range(1000))
    monkeypatch.setattr(levers.time, "perf_counter", lambda: next(clock) / 1000)  # 1 ms a read
    timed = levers.interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, 2
    )
    assert calls == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert timed == {"a": 0.5, "b": 0.5}  # two clock reads 1 ms apart, over 2 calls


def test_the_variants_pick_each_optimizer(levers):
    from unet_lowered.training.optimizers import FusedAdam

    assert type(levers.optimizer(True)) is FusedAdam
    assert type(levers.optimizer(False)) is keras.optimizers.Adam
    assert levers.VARIANTS["now"] == (False, True)  # the product: UpConv2x2, FusedAdam
    assert levers.VARIANTS["before"] == (True, False)
