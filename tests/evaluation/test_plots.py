"""unet plot: the pictures show what was scored, with legends and rows sized to the images.

The figures are caught where they are saved (``plots._save``) or built
(``plots.plot_cases``), so the tests read the masks, titles and axes drawn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from run_fixtures import bright_model, chest_picture, chest_stats, dark_model, make_run
from unet_lowered.errors import UnetError
from unet_lowered.evaluation import plots
from unet_lowered.evaluation.evaluate import evaluate_run, score_image
from unet_lowered.inference.overlay import (
    PALETTE,
    TRUTH_CLASSES_COLOUR,
    TRUTH_COLOUR,
    display,
    overlay,
)
from unet_lowered.inference.predictor import PredictOptions
from unet_lowered.io import images
from unet_lowered.io.runs import load_run

HISTORY = (
    "epoch,loss,dice,val_loss,val_dice\n1,0.9,0.5,,\n2,0.7,0.6,,\n3,0.5,0.8,0.4,0.85\n4,0.4,0.9,,\n"
)
"""Two half-size epochs, then one validated epoch between gaps (a checkpoint-less
epoch 4 that was not validated)."""


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The figures plots saves, by file name (also written, as usual)."""
    caught: dict[str, object] = {}
    save = plots._save

    def catch(fig, out):
        caught[Path(out).name] = fig
        fig.canvas.draw()  # lay it out before it is closed
        return save(fig, out)

    monkeypatch.setattr(plots, "_save", catch)
    return caught


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple]:
    """The cases and title plot_run hands to plot_cases, by file name."""
    caught: dict[str, tuple] = {}

    def catch(cases, out, title, *args, **kwargs):
        caught[Path(out).name] = (cases, title)
        return Path(out)

    monkeypatch.setattr(plots, "plot_cases", catch)
    return caught


def ramp_data(folder: Path) -> Path:
    """Two 40x40 horizontal ramps whose truth is their brighter half: the bright model
    marks that half at its default threshold, and less of it at 0.97."""
    ramp = np.tile(np.linspace(0, 255, 40), (40, 1)).astype(np.uint8)
    for name, image in (("a", ramp), ("b", ramp[::-1, :])):
        images.write_png(folder / "images" / f"{name}.png", image)
        images.write_png(folder / "masks" / f"{name}.png", (image > 127).astype(np.uint8) * 255)
    return folder


def trained_run(folder: Path, model, data: Path, val: list[str], **config) -> Path:
    run = make_run(folder, model, data=str(data), **config)
    (run / "split.json").write_text(json.dumps({"train": [], "val": val}))
    (run / "history.csv").write_text(HISTORY)
    return run


def test_worst_cases_show_the_masks_the_evaluation_scored(tmp_path: Path, drawn) -> None:
    """Evaluated with --threshold 0.97: each worst case's mask scores the Dice its title
    gives (per_image.csv's), not the default threshold's Dice 1."""
    data = ramp_data(tmp_path / "d")
    run = trained_run(tmp_path / "run", bright_model(32), data, ["a"])
    evaluate_run(run, data, None, PredictOptions(threshold=0.97), progress=False)
    plots.plot_run(run)
    config = load_run(run).config
    cases, title = drawn["worst.png"]
    assert [c[0] for c in cases] == ["a", "b"]
    for case in cases:
        _, _, truth, pred, dice = case[:5]
        assert dice < 0.95  # the threshold cut the ramp's dimmer foreground
        assert score_image(truth, pred, config)["dice"] == pytest.approx(dice, abs=1e-12)
    assert title == (
        f"worst cases by Dice of the evaluation in {run / 'eval'}\n"
        f"split all of {data}; threshold 0.97"
    )
    # samples.png: what plain `unet predict` writes (the default threshold)
    (sample,), _ = drawn["samples.png"]
    assert score_image(sample[2], sample[3], config)["dice"] > 0.97


def test_eval_names_the_evaluation_worst_png_shows(tmp_path: Path, drawn) -> None:
    data = ramp_data(tmp_path / "d")
    run = trained_run(tmp_path / "run", bright_model(32), data, ["a"])
    other = tmp_path / "other"
    evaluate_run(run, data, other, PredictOptions(mode="tile", keep_largest=1), progress=False)
    plots.plot_run(run, eval_dir=other)
    _, title = drawn["worst.png"]
    assert title == (
        f"worst cases by Dice of the evaluation in {other}\n"
        f"split all of {data}; mode tile, keep_largest 1"
    )
    with pytest.raises(UnetError, match=r"^\S*nowhere/per_image\.csv: missing; pass --eval the"):
        plots.plot_run(run, eval_dir=tmp_path / "nowhere")
    summary = json.loads((other / "summary.json").read_text())
    summary["settings"]["mode"] = "sideways"
    (other / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(UnetError, match=r"^\S*other/summary\.json: its settings are not options"):
        plots.plot_run(run, eval_dir=other)


def test_worst_png_is_left_out_when_the_evaluated_images_are_gone(tmp_path: Path, drawn) -> None:
    """The evaluated folder moved: no worst.png of the training images that share its
    ids, but a note naming the folder."""
    data = ramp_data(tmp_path / "d")
    run = trained_run(tmp_path / "run", bright_model(32), data, ["a"])
    evaluated = ramp_data(tmp_path / "e")
    evaluate_run(run, evaluated, None, progress=False)
    evaluated.rename(tmp_path / "moved")
    notes: list[str] = []
    plots.plot_run(run, note=notes.append)
    assert list(drawn) == ["samples.png"]
    assert notes == [
        f"worst.png left out: the images {run / 'eval'} scored ({evaluated}) are not there; "
        "run `unet plot` where they are"
    ]


def test_cli_plot_eval(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from unet_lowered.cli import main

    data = ramp_data(tmp_path / "d")
    run = trained_run(tmp_path / "run", bright_model(32), data, ["a"])
    evaluate_run(run, data, tmp_path / "ev", progress=False)
    with pytest.raises(SystemExit) as done:
        main(["plot", str(run), "--eval", str(tmp_path / "ev"), "--samples", "0"])
    assert done.value.code == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {run / 'curves.png'}",
        f"wrote {run / 'worst.png'}",
    ]
    # the evaluation of another run is refused: its Dice would title this run's masks
    other = trained_run(tmp_path / "other", bright_model(32), data, ["a"])
    with pytest.raises(SystemExit) as done:
        main(["plot", str(other), "--eval", str(tmp_path / "ev"), "--samples", "0"])
    assert done.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'ev'}: an evaluation of another run ({run}); pass --eval an "
        f"evaluation of {other}, or plot {run}"
    )
    run.rename(tmp_path / "moved")  # the evaluated run moved: its evaluation still plots
    with pytest.raises(SystemExit) as done:
        main(["plot", str(tmp_path / "moved"), "--eval", str(tmp_path / "ev"), "--samples", "0"])
    assert done.value.code == 0


def test_samples_read_an_inverted_film_as_predict_does(tmp_path: Path, drawn) -> None:
    """A film stored with its gray scale inverted is read the right way round (the second
    look of `unet predict`), and its title says so."""
    film, lungs = chest_picture(seed=10)
    data = tmp_path / "d"
    images.write_png(data / "images" / "inverted.png", 255 - film)
    images.write_png(data / "masks" / "inverted.png", lungs.astype(np.uint8) * 255)
    run = trained_run(tmp_path / "run", dark_model(), data, ["inverted"], mask_stats=chest_stats())
    plots.plot_run(run)
    (case,), _ = drawn["samples.png"]
    assert score_image(case[2], case[3], load_run(run).config)["dice"] > 0.95
    assert case.reading == "read inverted"
    assert plots._case_title(case) == "inverted\nread inverted"


def test_a_16_bit_rgb_image_is_shown_windowed(tmp_path: Path, figures) -> None:
    """Raw 12-bit values in a uint16 RGB image drew a white panel; it is shown as the
    overlay shows it."""
    ramp = np.tile(np.linspace(1000, 1800, 30), (20, 1))
    image = np.stack([ramp, ramp, ramp[:, ::-1]], axis=-1).astype(np.uint16)
    mask = np.zeros((20, 30), bool)
    plots.plot_cases([("rgb16", image, mask, mask, None)], tmp_path / "c.png", "t")
    shown = np.asarray(figures["c.png"].axes[0].get_images()[0].get_array())
    assert np.array_equal(shown, display(image))
    assert abs(shown[10, 15, 0] - 0.5) < 0.03 and shown[10, 0, 0] < 0.02


@pytest.mark.parametrize("height,width", [(672, 224), (224, 672)])
def test_rows_are_sized_to_the_image(tmp_path: Path, figures, height: int, width: int) -> None:
    """A 224x672 image fills its row: the four panels cover most of the figure (80% of it
    tall, 61% wide; in a fixed 12x3 inch figure they covered 16% and 29%)."""
    image = np.zeros((height, width), np.uint8)
    image[0, 0] = 255
    mask = np.zeros((height, width), bool)
    plots.plot_cases([("c", image, mask, mask, 1.0)], tmp_path / "c.png", "t")
    fig = figures["c.png"]
    covered = sum(ax.get_position().width * ax.get_position().height for ax in fig.axes[:4])
    assert covered > 0.5


def test_curves_mark_every_epoch_the_half_size_ones_and_the_best(tmp_path: Path, figures) -> None:
    (tmp_path / "history.csv").write_text(HISTORY)
    (tmp_path / "config.json").write_text(
        json.dumps({"image_size": [64, 64], "depth": 2, "epochs": 4, "progressive": 0.5})
    )
    (tmp_path / "metrics.json").write_text(json.dumps({"best_epoch": 3}))
    plots.plot_curves(tmp_path / "history.csv", tmp_path / "curves.png")
    loss, dice = figures["curves.png"].axes
    for ax in (loss, dice):
        curves = [line for line in ax.get_lines() if line.get_label() in ("train", "validation")]
        assert len(curves) == 2 and all(line.get_marker() == "o" for line in curves)
        assert all(float(t).is_integer() for t in ax.get_xticks())
        (best,) = [line for line in ax.get_lines() if line.get_label().startswith("best")]
        assert best.get_label() == "best epoch 3 (model.keras)"
        assert list(best.get_xdata()) == [3, 3]
        (shade,) = ax.patches
        assert shade.get_label() == "half size, not validated (progressive resizing)"
        assert (shade.get_x(), shade.get_width()) == (0.5, 2.0)  # epochs 1 and 2
        assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == best.get_label()
    assert loss.get_ylabel() == "loss" and dice.get_ylabel() == "Dice"
    assert dice.get_title() == "Dice (mean per image);\nvalidation at the training size"
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_classes": 3}))
    plots.plot_curves(tmp_path / "history.csv", tmp_path / "curves.png")
    assert "mean over the foreground classes" in figures["curves.png"].axes[1].get_title()
    # A valid crop run's note (78 characters on one line ran off the figure) is wrapped.
    valid = {**config, "image_size": [60, 60], "padding": "valid", "input_mode": "crop"}
    (tmp_path / "config.json").write_text(json.dumps(valid))
    plots.plot_curves(tmp_path / "history.csv", tmp_path / "curves.png")
    title = figures["curves.png"].axes[1].get_title()
    assert title == (
        "Dice (mean per image);\nvalidation on the network's output window of one fixed crop\n"
        "per validation image"
    )


def test_a_bare_history_plots_without_marks(tmp_path: Path, figures) -> None:
    (tmp_path / "history.csv").write_text("epoch,loss,dice\n1,0.9,0.5\n")
    plots.plot_curves(tmp_path / "history.csv", tmp_path / "curves.png")
    loss, dice = figures["curves.png"].axes
    assert not loss.patches and [line.get_label() for line in loss.get_lines()] == ["train"]
    assert loss.get_lines()[0].get_marker() == "o"  # one epoch shows
    assert dice.get_title() == "Dice (mean per image)"


def test_multi_class_pictures_have_a_legend_and_per_class_dice(tmp_path: Path, figures) -> None:
    image = np.full((40, 30), 50, np.uint8)
    image[10:30, 5:15] = 200  # the bright model marks it as the last class (value 200)
    data = tmp_path / "d"
    images.write_png(data / "images" / "a.png", image)
    images.write_png(data / "masks" / "a.png", (image == 200).astype(np.uint8) * 200)
    run = trained_run(
        tmp_path / "run", bright_model(32, num_classes=3), data, ["a"], label_values=[0, 100, 200]
    )
    evaluate_run(run, data, None, PredictOptions(mode="tile"), progress=False)
    plots.plot_run(run)
    for name in ("samples.png", "worst.png"):
        fig = figures[name]
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == [
            "class 1 (value 100)",
            "class 2 (value 200)",
        ]
        colours = [tuple(p.get_facecolor()[:3]) for p in legend.get_patches()]
        assert np.allclose(colours, PALETTE[:2] / 255)
        # the truth holds class 2: overlay() outlines each class in white
        assert fig.axes[3].get_title() == (
            "overlay: prediction tinted per class,\ntruth outlines white"
        )
    assert figures["worst.png"].axes[0].get_title() == "a\nDice 1.000\nclass 1 1.000, class 2 1.000"
    named = trained_run(
        tmp_path / "named",
        bright_model(32, num_classes=3),
        data,
        ["a"],
        label_values=[0, 100, 200],
        class_names=["background", "lung", "heart"],
    )
    assert plots.class_names(load_run(named).config) == [
        "lung: class 1 (value 100)",
        "heart: class 2 (value 200)",
    ]
    evaluate_run(named, data, None, PredictOptions(mode="tile"), progress=False)
    plots.plot_run(named)
    assert figures["worst.png"].axes[0].get_title() == "a\nDice 1.000\nlung 1.000, heart 1.000"


def test_the_overlay_title_says_the_colour_overlay_draws(tmp_path: Path, figures) -> None:
    """overlay() outlines a multi-class truth (class indices) in white whichever classes
    it holds (one holding class 1 alone was outlined green, the binary colour, by a rule
    on its largest value), a bool one in green, and the title says which."""
    image = np.zeros((12, 12), np.uint8)
    image[0, 0] = 255
    for top, colour, words in (
        (1, TRUTH_CLASSES_COLOUR, "truth outlines white"),
        (2, TRUTH_CLASSES_COLOUR, "truth outlines white"),
    ):
        truth = np.zeros((12, 12), np.int32)
        truth[3:9, 3:9] = top
        assert (overlay(image, np.zeros_like(truth), truth=truth)[3, 5] == colour).all()
        plots.plot_cases([("c", image, truth, truth, 1.0)], tmp_path / "c.png", "t")
        assert words in figures["c.png"].axes[3].get_title()
    assert (overlay(image, truth > 0, truth=truth > 0)[3, 5] == TRUTH_COLOUR).all()
    plots.plot_cases([("c", image, truth > 0, truth > 0, 1.0)], tmp_path / "c.png", "t")
    assert figures["c.png"].axes[3].get_title() == "overlay: prediction red,\ntruth outline green"
    empty = np.zeros_like(truth)
    plots.plot_cases([("c", image, empty, truth, 0.0)], tmp_path / "c.png", "t")
    assert figures["c.png"].axes[3].get_title().endswith("\nno truth (empty mask)")


def test_evaluated_options_give_back_the_recorded_settings() -> None:
    """Options rebuilt from summary.json's settings record the same settings; older
    summaries without a key keep the default."""
    from run_fixtures import run_config
    from unet_lowered.evaluation.evaluate import settings_record
    from unet_lowered.inference.predictor import for_run

    config = run_config(
        flip_lr=True, postprocess={"threshold": 0.4, "keep_largest": 2, "fill_holes": True}
    )
    for options in (
        PredictOptions(),
        PredictOptions(threshold=0.97, tta=True, mode="tile", keep_largest=0),
        PredictOptions(postprocess=False, min_area=5, watershed=0.5, polarity="keep"),
    ):
        recorded = settings_record(for_run(options, config), config)
        rebuilt = plots.evaluated_options(recorded, config)
        assert settings_record(rebuilt, config) == recorded
    assert plots.evaluated_options({"threshold": 0.9}, config).keep_largest is None
    with pytest.raises(UnetError, match=r"^ev/summary\.json: its settings are not options"):
        plots.evaluated_options({"mode": "sideways"}, config, "ev/summary.json")
