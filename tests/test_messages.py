"""One-line messages of the CLI audit: they name the flag or file at fault and say what it is
(a file where a folder belongs, a size the network cannot take), and the slow steps of
`unet plan`, `unet plot` and `unet export` say on stderr what they are doing."""

from __future__ import annotations

from pathlib import Path

import pytest

from run_fixtures import bright_model, make_run
from unet_lowered.cli import main
from unet_lowered.dataset.pairs import load_prepared
from unet_lowered.errors import UnetError
from unet_lowered.io import atomic


def run_cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


# --- a file where a folder belongs ---------------------------------------------------------


def test_a_file_given_as_the_data_folder_says_it_is_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    with pytest.raises(UnetError) as refused:
        load_prepared(afile)
    assert str(refused.value) == (
        f"{afile}: a file, not a folder; give the data folder `unet prepare` wrote"
    )
    with pytest.raises(UnetError) as refused:
        load_prepared(tmp_path / "nodata")
    assert str(refused.value) == (
        f"{tmp_path / 'nodata'}: no such data folder; run `unet prepare SRC "
        f"{tmp_path / 'nodata'}` first"
    )


def test_unet_evaluate_of_a_file_says_it_is_a_file(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run", bright_model(32))
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    code, _, err = run_cli(capsys, "evaluate", run, afile)
    assert code == 1
    assert err.strip() == (
        f"error: {afile}: a file, not a folder; give the data folder `unet prepare` wrote"
    )


def test_an_out_folder_that_is_a_file_says_so(tmp_path: Path) -> None:
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    with pytest.raises(UnetError) as refused:
        atomic.make_out_folder(afile)
    assert str(refused.value) == f"--out {afile}: a file, not a folder; choose another --out"
    with pytest.raises(UnetError) as refused:
        atomic.make_out_folder(afile / "sub", option="--run")
    assert str(refused.value) == (
        f"--run {afile / 'sub'}: {afile} is a file, not a folder; choose another --run"
    )
    assert afile.read_text() == "x"


def test_unet_predict_into_a_file_says_so_before_loading_the_model(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import numpy as np

    from unet_lowered.io import images, runs

    run = make_run(tmp_path / "run", bright_model(32))
    images.write_png(tmp_path / "in" / "a.png", np.zeros((32, 32), np.uint8))
    afile = tmp_path / "afile.txt"
    afile.write_text("x")

    def no_model(self, *args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(runs.Run, "model", no_model)
    code, _, err = run_cli(capsys, "predict", run, tmp_path / "in", "--out", afile)
    assert code == 1
    assert err.strip() == f"error: --out {afile}: a file, not a folder; choose another --out"
