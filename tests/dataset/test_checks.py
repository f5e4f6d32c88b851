"""The mask checks before training."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_fixtures import ids_of, make_prepared
from unet_lowered.dataset.checks import foreground_fractions, mask_warnings
from unet_lowered.dataset.pairs import load_prepared
from unet_lowered.training.cache import SampleCache

# ----------------------------------------------------------------------------- guards


@pytest.mark.parametrize(
    ("fractions", "expected"),
    [
        ({"a": 0.3, "b": 0.2}, []),
        ({"a": 0.0, "b": 0.0}, ["all 2 masks are empty"]),
        ({"a": 0.0, "b": 0.3, "c": 0.3}, ["1 of 3 masks are empty (a)"]),
        ({"a": 0.0005, "b": 0.3}, ["1 of 2 masks have less than 0.1% foreground (a)"]),
        ({"a": 0.99, "b": 0.3}, ["1 of 2 masks are more than 95% foreground (a); are they inv"]),
        ({"a": 0.005, "b": 0.004}, ["foreground covers only 0.45% of the pixels on average"]),
        ({"a": 0.9, "b": 0.8}, ["foreground covers 85% of the pixels on average"]),
    ],
)
def test_mask_warnings(fractions: dict, expected: list[str]) -> None:
    warnings = mask_warnings(fractions)
    assert len(warnings) == len(expected)
    for line, start in zip(warnings, expected, strict=True):
        assert line.startswith(start), line


def test_rare_foreground_advice_only_for_plain_bce() -> None:
    rare = {"a": 0.005, "b": 0.004}
    assert "with bce the model may learn" in mask_warnings(rare, loss="bce")[0]
    assert mask_warnings(rare, loss="bce+dice") == []  # already what it would advise


def test_mask_warnings_from_cache_and_from_files(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(2), meta={}, mask_values=(0,)))
    cache = SampleCache(data, channels=1, image_size=8)
    assert mask_warnings(cache)[0].startswith("all 2 masks are empty")
    assert mask_warnings(data, ["case001"])[0].startswith("all 1 masks are empty")
    assert foreground_fractions(cache) == {"case000": 0.0, "case001": 0.0}
