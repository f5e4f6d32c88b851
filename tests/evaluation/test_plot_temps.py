"""unet plot after a kill -9: the hidden temporary PNG the killed run left is removed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from unet_lowered.evaluation.plots import plot_curves
from unet_lowered.io import atomic


def test_plotting_again_removes_what_a_killed_plot_left(tmp_path: Path) -> None:
    (tmp_path / "history.csv").write_text("epoch,loss,dice\n1,0.9,0.5\n2,0.5,0.8\n")
    stale = tmp_path / ".curves.png.sw9fe_oi.png"  # as kill -9 during savefig leaves it
    stale.write_bytes(b"\x89PNG half")
    when = time.time() - atomic.STALE_AFTER_S - 30
    os.utime(stale, (when, when))
    plot_curves(tmp_path / "history.csv", tmp_path / "curves.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "history.csv"]
