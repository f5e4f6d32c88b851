"""``benchmarks/upconv.py``: the two models it compares, and its alternating timer."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

from unet_lowered import model as unet_model

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def upconv(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import upconv

    return upconv


def test_the_plain_model_differs_only_in_its_up_convolutions(upconv):
    own, plain = upconv.build(32, "float32", False), upconv.build(32, "float32", True)
    kinds = {type(layer) for layer in plain.layers if layer.name.endswith("_upconv")}
    assert kinds == {keras.layers.Conv2DTranspose}
    assert {type(layer) for layer in own.layers if layer.name.endswith("_upconv")} == {
        unet_model.UpConv2x2
    }
    assert unet_model.UpConv2x2 is not keras.layers.Conv2DTranspose  # the swap is undone
    assert [w.shape for w in own.weights] == [w.shape for w in plain.weights]
    assert upconv.max_difference(32, keras.ops.ones((1, 32, 32, 1))) < 1e-5


def test_interleaved_alternates_the_order_and_takes_medians(upconv, monkeypatch):
    calls, clock = [], iter(range(1000))
    monkeypatch.setattr(upconv.time, "perf_counter", lambda: next(clock) / 1000)  # 1 ms a read
    timed = upconv.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, 2)
    assert calls == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert timed == {"a": 0.5, "b": 0.5}  # two clock reads 1 ms apart, over 2 calls
