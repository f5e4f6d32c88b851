"""The scoring of ``benchmarks/predict_options.py`` and ``benchmarks/synth_baseline.py``
on inputs whose answer is known."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def scripts(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import predict_options
    import synth_baseline

    return predict_options, synth_baseline


def test_the_options_table_counts_images_better_and_worse_than_the_first(scripts) -> None:
    predict_options, _ = scripts
    plain = {"a": {"dice": 0.90, "hd95": 4.0}, "b": {"dice": 0.80, "hd95": 6.0}}
    other = {
        "a": {"dice": 0.95, "hd95": 2.0},  # better
        "b": {"dice": 0.8004, "hd95": math.inf},  # within the tie margin; HD95 left out
    }
    worse = {"a": {"dice": 0.85, "hd95": 5.0}, "b": {"dice": 0.70, "hd95": 7.0}}
    lines = predict_options.table([("plain", plain), ("x", other), ("y", worse)]).splitlines()
    assert lines[2] == "| plain | 0.8500 | 0.8000 | 5.00 | - |"
    assert lines[3] == "| x | 0.8752 | 0.8004 | 2.00 (1 inf) | 1 / 0 |"
    assert lines[4] == "| y | 0.7750 | 0.7000 | 6.00 | 0 / 2 |"


def test_otsu_takes_the_darker_side_as_lung(scripts) -> None:
    _, synth_baseline = scripts
    image = np.full((40, 40), 200, np.uint8)
    image[10:30, 5:15] = 40  # a dark "lung"
    mask = np.zeros_like(image)
    mask[10:30, 5:15] = 255
    assert synth_baseline.otsu_dice(image, mask) == 1.0
    half = mask.copy()
    half[20:30] = 0  # the truth is half the dark area: Dice 2*100/(200+100)
    assert synth_baseline.otsu_dice(image, half) == pytest.approx(2 / 3)


def test_append_section_adds_the_heading_machine_and_body(scripts, tmp_path, monkeypatch) -> None:
    import speed

    monkeypatch.setattr(speed, "RESULTS", tmp_path / "RESULTS.md")
    path = speed.append_section("x.py, RUN", "Took 3 s.\n\n| a |")
    text = path.read_text()
    assert text.startswith(speed.RESULTS_HEADER)
    heading, machine, table = text[len(speed.RESULTS_HEADER) :].strip().split("\n\n")
    assert heading.startswith("## 20") and heading.endswith(" UTC: x.py, RUN")
    assert machine == f"Machine: {speed.cpu_model()}, {speed.cores()} cores. Took 3 s."
    assert table == "| a |"
