"""``benchmarks/time_to_accuracy.py``'s seconds to each Dice level, on curves whose
answer is known."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def tta(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import time_to_accuracy

    return time_to_accuracy


def variant(name: str, curve: list[tuple[float, float]]) -> dict:
    return {
        "variant": name,
        "curve": curve,
        "best_val_dice": max(d for _, d in curve if math.isfinite(d)),
    }


def test_levels_are_the_references_best_less_the_offsets(tta) -> None:
    reference = variant("before", [(100, 0.95), (200, 0.978), (300, 0.979), (400, 0.980)])
    fast = variant("fast", [(50, math.nan), (100, 0.978), (150, 0.9795), (500, 0.980)])
    slow = variant("slow", [(100, 0.97), (600, 0.9785)])

    rows = tta.levels_table([reference, fast, slow]).splitlines()

    assert rows[0] == "| level | before | fast | slow | fast / before | slow / before |"
    assert rows[2:] == [
        "| 0.9780 (-0.002) | 200 s | 100 s | 600 s | 0.50x | 3.00x |",
        "| 0.9790 (-0.001) | 300 s | 150 s | never | 0.50x | - |",
        "| 0.9800 (+0.000) | 400 s | 500 s | never | 1.25x | - |",
    ]


def test_time_to_skips_unvalidated_epochs(tta) -> None:
    assert tta.time_to([(10, math.nan), (20, 0.9), (30, 0.95)], 0.95) == 30
    assert tta.time_to([(10, math.nan), (20, 0.9)], 0.95) is None
