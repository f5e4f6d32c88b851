"""``benchmarks/held_out.py``'s split of the wrong pixels by their distance to the true
boundary, on masks whose answer is known, and its ``unet train`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def boundary_bands(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from held_out import boundary_bands

    return boundary_bands


def square() -> np.ndarray:
    truth = np.zeros((20, 20), bool)
    truth[5:15, 5:15] = True
    return truth


def test_a_mask_one_pixel_off_is_wrong_only_right_at_the_boundary(boundary_bands) -> None:
    truth = square()
    shifted = np.roll(truth, 1, axis=1)  # loses column 5, gains column 15

    assert boundary_bands(truth, shifted).tolist() == [20, 0, 0]


def test_a_mask_two_pixels_wide_is_wrong_at_1_and_2_px(boundary_bands) -> None:
    truth = square()
    grown = np.zeros_like(truth)
    grown[3:17, 5:15] = True  # two rows more above and below

    assert boundary_bands(truth, grown).tolist() == [20, 20, 0]


def test_a_missed_centre_and_an_invented_speck_are_far(boundary_bands) -> None:
    truth = square()
    mask = truth.copy()
    mask[9, 9] = False  # 5 px inside the true boundary
    mask[0, 0] = True  # about 7 px outside it

    assert boundary_bands(truth, mask).tolist() == [0, 0, 2]
    assert boundary_bands(truth, truth).tolist() == [0, 0, 0]


def test_without_true_foreground_every_wrong_pixel_is_far(boundary_bands) -> None:
    empty = np.zeros((4, 4), bool)

    assert boundary_bands(empty, ~empty).tolist() == [0, 0, 16]


def test_train_args_follow_the_plain_command_split_as_a_shell_would(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from held_out import UNET, train_command

    plain = train_command(Path("d"), Path("r"))
    extra = train_command(Path("d"), Path("r"), "--image-size 320 --loss 'bce+dice'")

    assert plain == [*UNET, "train", "d", "--out", "r"]
    assert extra == [*plain, "--image-size", "320", "--loss", "bce+dice"]
