"""One-line messages of the CLI audit: they name the flag or file at fault and say what it is
(a file where a folder belongs, a size the network cannot take), and the slow steps of
`unet plan`, `unet plot` and `unet export` say on stderr what they are doing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_fixtures import ids_of, make_prepared
from run_fixtures import bright_model, make_run
from unet_lowered.cli import main
from unet_lowered.dataset.pairs import load_prepared
from unet_lowered.errors import SettingError, UnetError
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


# --- sizes the network cannot take ---------------------------------------------------------


def test_a_named_size_names_its_flag_and_the_sizes_to_use() -> None:
    from unet_lowered.model import output_size

    with pytest.raises(UnetError) as refused:
        output_size(100, 4, "same", name="--image-size")
    assert str(refused.value) == (
        "--image-size 100 does not fit a depth-4 U-Net with 'same' padding (it needs a "
        "multiple of 16); use 96 or 112"
    )
    with pytest.raises(UnetError) as refused:
        output_size(256, 9, "same", name="--size")
    assert str(refused.value).endswith("(it needs a multiple of 512); use 512")
    with pytest.raises(UnetError) as refused:  # unnamed: the images' size, one valid size
        output_size(8, 4, "same")
    assert str(refused.value) == (
        "input size 8 does not fit a depth-4 U-Net with 'same' padding (it needs a multiple "
        "of 16); the nearest valid size is 16: resize or crop the images to it"
    )


def test_train_image_size_that_does_not_fit_names_the_flag() -> None:
    from unet_lowered.training import config

    with pytest.raises(SettingError) as refused:
        config.resolve(None, {"image_size": 100})
    assert refused.value.setting == "image_size"
    assert str(refused.value) == (
        "--image-size 100 does not fit a depth-4 U-Net with 'same' padding (it needs a "
        "multiple of 16); use 96 or 112"
    )


def test_a_config_files_image_size_that_does_not_fit_names_the_file(tmp_path: Path) -> None:
    from unet_lowered.training import config

    settings = tmp_path / "c.yaml"
    settings.write_text("image-size: 60\n")
    with pytest.raises(SettingError) as refused:
        config.resolve(settings, {})
    assert str(refused.value) == (
        f"{settings}: --image-size 60 does not fit a depth-4 U-Net with 'same' padding (it "
        "needs a multiple of 16); use 48 or 64"
    )


def test_model_info_names_the_size_flag(capsys) -> None:
    code, _, err = run_cli(capsys, "model-info", "--size", "100")
    assert code == 1
    assert err.strip() == (
        "error: --size 100 does not fit a depth-4 U-Net with 'same' padding (it needs a "
        "multiple of 16); use 96 or 112"
    )


def test_model_info_takes_the_image_size_flag_of_train(capsys) -> None:
    """`unet train` says --image-size; `unet model-info` takes it for its --size."""
    args = ("model-info", "--width", "1", "--padding", "valid", "--classes", "2")
    code, by_train_name, _ = run_cli(capsys, *args, "--image-size", "572")
    assert code == 0
    code, by_own_name, _ = run_cli(capsys, *args, "--size", "572")
    assert code == 0 and by_train_name == by_own_name
    assert "per 572x572 image (output 388x388)" in by_own_name and "31,030,658" in by_own_name


def test_model_info_with_valid_padding_defaults_to_the_paper_s_tile(capsys) -> None:
    """Its default 256 does not fit a valid network: `model-info --padding valid` failed
    with "--size 256 does not fit" though no --size was given."""
    code, out, err = run_cli(capsys, "model-info", "--padding", "valid")
    assert code == 0, err
    assert "per 572x572 image (output 388x388)" in out
    code, out, _ = run_cli(capsys, "model-info")
    assert code == 0 and "per 256x256 image" in out


def test_model_info_with_too_deep_a_network_names_the_depth(capsys) -> None:
    code, _, err = run_cli(capsys, "model-info", "--depth", "9")
    assert code == 1
    assert err.strip() == (
        "error: depth (the number of poolings) must be from 1 to 8 (the paper: 4), got 9"
    )


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (
            50,
            "--size 50 does not fit a depth-4 U-Net with 'same' padding (it needs a "
            "multiple of 16); use 48 or 64",
        ),
        (0, "--size must be between 32 and 4096 pixels, got 0"),
    ],
)
def test_demo_refuses_a_bad_size_before_it_makes_data(tmp_path: Path, size, message) -> None:
    from unet_lowered.demo.pipeline import DemoSettings, run_demo

    lines: list[str] = []
    with pytest.raises(UnetError) as refused:
        run_demo(tmp_path / "demo", DemoSettings(size=size), echo=lines.append)
    assert str(refused.value) == message
    assert lines == [] and not (tmp_path / "demo").exists()


# --- what the slow steps are doing ---------------------------------------------------------


def test_plan_says_what_it_does_on_stderr(tmp_path: Path, capsys) -> None:
    from unet_lowered.planning import plan as plan_mod

    data = make_prepared(tmp_path, ids_of(6))
    plan_mod.make_plan(data, 600.0, measure=False)
    captured = capsys.readouterr()
    assert captured.err == f"planning {data}: reading 5 training images\n"
    assert captured.out == ""


def test_plan_that_times_a_step_says_so(tmp_path: Path, capsys, monkeypatch) -> None:
    from unet_lowered.planning import plan as plan_mod
    from unet_lowered.planning import steptime

    monkeypatch.setattr(
        steptime, "measure_step_time", lambda *a, **k: {"step_s": 0.01, "augment_s": 0.0}
    )
    data = make_prepared(tmp_path, ids_of(6))
    plan_mod.make_plan(data, 600.0)
    assert capsys.readouterr().err.splitlines()[0] == (
        f"planning {data}: reading 5 training images, then timing a training step"
    )


def test_plot_says_what_it_predicts_on_stderr(tmp_path: Path, capsys) -> None:
    data = make_prepared(tmp_path, ids_of(3), size=(32, 32))
    run = make_run(tmp_path / "run", bright_model(32), data=str(data))
    (run / "split.json").write_text(json.dumps({"train": [], "val": ids_of(3)}))
    (run / "history.csv").write_text("epoch,loss,dice,val_loss,val_dice\n1,0.9,0.5,0.8,0.6\n")
    code, out, err = run_cli(capsys, "plot", run, "--samples", "2")
    assert code == 0
    assert err.splitlines()[0] == (
        f"plotting {run}: loading the model, predicting 2 validation samples"
    )
    assert out.splitlines() == [f"wrote {run / 'curves.png'}", f"wrote {run / 'samples.png'}"]


def test_export_says_what_it_does_on_stderr(tmp_path: Path, capsys, monkeypatch) -> None:
    from unet_lowered.inference import export

    run = make_run(tmp_path / "run", bright_model(32))
    monkeypatch.setattr(export, "_write", lambda *args, **kwargs: 0.0)  # the slow part
    export.export_model(run, "onnx")
    assert capsys.readouterr().err == (
        f"exporting {run / 'model.keras'} to ONNX {run / 'model.onnx'}, then checking it "
        "against Keras\n"
    )
