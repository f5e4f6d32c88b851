"""unet demo (tiny) and unet plot: every artefact is written; re-running replaces the demo."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from unet_lowered.demo.pipeline import MARKER, DemoSettings, run_demo
from unet_lowered.errors import UnetError
from unet_lowered.evaluation.plots import plot_curves
from unet_lowered.inference.overlay import overlay
from unet_lowered.io.images import read_image

TINY = DemoSettings(count=16, test_count=3, size=64, epochs=1, seed=0)


def test_tiny_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    lines: list[str] = []
    result = run_demo(out, TINY, echo=lines.append)
    assert (out / MARKER).is_file()
    assert len(list((out / "kaggle" / "train_images").iterdir())) == 16
    assert len(list((out / "data" / "train" / "images").iterdir())) == 16
    assert len(list((out / "data" / "test").iterdir())) == 3
    for name in ("model.keras", "config.json", "history.csv", "metrics.json", "curves.png"):
        assert (out / "run" / name).is_file(), name
    assert (out / "run" / "samples.png").is_file()
    assert (out / "run" / "eval" / "per_image.csv").is_file()
    # It trains as the command it prints would: the plan, with those flags on top.
    config = json.loads((out / "run" / "config.json").read_text())
    sources = config["settings_sources"]
    assert sources["epochs"] == sources["image_size"] == sources["patience"] == "flag"
    assert sources["loss"] == "plan" and config["plan"]["fingerprint"]
    (printed,) = [line for line in lines if line.startswith("[3/6] unet train ")]
    assert printed.endswith("--image-size 64 --epochs 1 --patience 1 --seed 0")
    assert any(
        line.startswith("[5/6] unet predict ") and line.endswith(" --overlay") for line in lines
    )
    predictions = out / "predictions"
    with open(predictions / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row in rows:
        mask = read_image(predictions / f"{row['id']}.png")
        assert mask.shape == (64, 64)
        assert set(np.unique(mask)) <= {0, 255}
        assert (predictions / f"{row['id']}_overlay.png").is_file()
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert result["val_dice_training_size"] == metrics["val_dice"]  # what it reports is the run's
    assert 0.0 <= metrics["val_dice"] <= 1.0
    assert result["predicted_images"] == 3
    closing = lines[-1]
    assert "Demo finished" in closing
    assert "unet train    data/prepared --out runs/lungs" in closing


def test_demo_needs_two_pairs(tmp_path: Path) -> None:
    one = DemoSettings(count=1, test_count=1, size=64, epochs=1)
    with pytest.raises(
        UnetError, match=r"^--count must be at least 2 \(training and validation\), got 1$"
    ):
        run_demo(tmp_path / "demo", one, echo=lambda _: None)
    assert not (tmp_path / "demo").exists()


def test_demo_rerun_replaces_only_its_own_folder(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "precious.txt").write_text("not a demo")
    with pytest.raises(UnetError, match="is not a demo folder; pass --overwrite"):
        run_demo(out, TINY, echo=lambda _: None)
    assert (out / "precious.txt").read_text() == "not a demo"


def test_curves_need_a_history(tmp_path: Path) -> None:
    with pytest.raises(UnetError, match=r"history\.csv: missing; train the run first"):
        plot_curves(tmp_path / "history.csv", tmp_path / "curves.png")


def test_curves_png_written(tmp_path: Path) -> None:
    (tmp_path / "history.csv").write_text(
        "epoch,loss,dice,val_loss,val_dice\n1,0.9,0.5,0.8,0.6\n2,0.5,0.8,0.4,0.85\n"
    )
    path = plot_curves(tmp_path / "history.csv", tmp_path / "curves.png")
    image = read_image(path)
    assert image.ndim == 3 and image.shape[0] > 100


def test_overlay_tints_truth_green_and_prediction_red() -> None:
    image = np.zeros((4, 4), np.uint8)
    image[0, 0] = 255  # so the image has a range
    truth = np.zeros((4, 4), bool)
    pred = np.zeros((4, 4), bool)
    truth[1, 1] = True
    pred[2, 2] = True
    rgb = overlay(image, pred, truth=truth)
    assert rgb[1, 1, 1] > rgb[1, 1, 0]  # green
    assert rgb[2, 2, 0] > rgb[2, 2, 1]  # red
    assert np.allclose(rgb[3, 3], 0.0)


def test_a_16_bit_film_is_windowed_so_one_marker_does_not_black_it_out() -> None:
    """A 12-bit film (values 1000-1800) with a burned-in marker at 65535: the window is
    its 0.5-99.5th percentiles, so the film keeps its gray levels; 8-bit images are
    stretched from min to max as before."""
    from unet_lowered.inference.overlay import display

    film = np.tile(np.linspace(1000, 1800, 200), (200, 1)).astype(np.uint16)
    film[:10, :15] = 65535  # 150 of 40,000 pixels: under the 0.5% the window cuts
    gray = display(film)[..., 0]
    assert gray.shape == (200, 200)
    assert gray[100, 0] < 0.02 and gray[100, 199] > 0.98  # the film spans the window
    assert abs(gray[100, 100] - 0.5) < 0.02  # mid-gray, not black as min-max made it
    assert gray[0, 0] == 1.0  # the marker clipped to white
    assert overlay(film, np.zeros(film.shape, bool))[100, 100, 0] in range(120, 136)
    eight = np.array([[10, 20], [30, 250]], np.uint8)
    assert np.allclose(display(eight)[..., 0], (eight - 10) / 240)
    assert np.allclose(display(np.full((3, 3), 7, np.uint16)), 0.0)  # flat: black


def test_many_objects_get_thin_outlines_so_the_gaps_between_them_show() -> None:
    """At 600 px an outline is 2 px wide; a class of 30 cells 2 px apart gets 1-px
    outlines, so the gap between two cells stays the image's own gray."""
    from unet_lowered.inference.overlay import MANY_OBJECTS

    image = np.full((600, 600), 100, np.uint8)
    image[0, 0] = 0
    cells = np.zeros((600, 600), bool)
    for k in range(30):
        row, col = divmod(k, 6)
        cells[10 + 50 * row : 56 + 50 * row, 10 + 50 * col : 58 + 50 * col] = True  # 2-px gaps
    assert 30 > MANY_OBJECTS
    rgb = overlay(image, cells)
    gap = rgb[30, 58:60]  # the 2 columns between the first two cells
    assert (gap == rgb[5, 5]).all()  # untinted, not covered by an outline
    two = np.zeros_like(cells)
    two[100:300, 50:250], two[100:300, 350:550] = True, True  # lungs: 2 px outlines
    thick = overlay(image, two)
    assert (thick[200, 248] == thick[200, 249]).all() and thick[200, 248, 1] < thick[200, 240, 1]


def test_multi_class_masks_keep_their_classes_in_the_pictures(tmp_path: Path) -> None:
    from unet_lowered.evaluation.plots import plot_cases
    from unet_lowered.inference.overlay import PALETTE, TRUTH_CLASSES_COLOUR, label_colours

    labels = np.zeros((8, 8), np.int32)
    labels[1:4, 1:4], labels[5:7, 5:7] = 1, 3
    colours = label_colours(labels)
    assert (colours[2, 2] == PALETTE[0]).all() and (colours[6, 6] == PALETTE[2]).all()
    assert (colours[0, 0] == 0).all()
    assert (label_colours(labels > 0)[6, 6] == PALETTE[0]).all()  # bool: class 1's colour
    # Each truth class outlined in white, not merged into one green outline.
    image = np.zeros((8, 8), np.uint8)
    image[0, 0] = 255
    rgb = overlay(image, np.zeros_like(labels), truth=labels)
    assert (rgb[1, 1] == TRUTH_CLASSES_COLOUR).all() and (rgb[5, 5] == TRUTH_CLASSES_COLOUR).all()
    assert (rgb[4, 4] == 0).all()
    path = plot_cases([("c", image, labels, labels, 1.0)], tmp_path / "cases.png", "t")
    assert read_image(path).ndim == 3


@pytest.mark.parametrize("kind", ["gray8", "rgb8", "gray16", "rgb16", "float"])
def test_the_uint8_display_is_the_float_display_rounded(kind: str) -> None:
    """The overlay is built in uint8 (a 99-megapixel JPEG's float overlay took over 6 GB):
    its base is :func:`display` rounded to 8 bits, within one level."""
    from unet_lowered.inference.overlay import display, display_rgb8

    rng = np.random.default_rng(3)
    shape = (300, 200) if kind.startswith("gray") or kind == "float" else (300, 200, 3)
    if kind.endswith("16"):
        image = rng.integers(1000, 1800, shape).astype(np.uint16)
        image[:5, :5] = 65535  # a marker the window leaves out
    elif kind == "float":
        image = rng.normal(0.3, 0.1, shape)
    else:
        image = rng.integers(20, 230, shape).astype(np.uint8)
    shown = display_rgb8(image)
    assert shown.dtype == np.uint8 and shown.shape == (300, 200, 3)
    reference = np.rint(display(image) * 255)
    assert np.abs(shown.astype(int) - reference).max() <= 1


def test_the_overlay_tints_by_its_opacity_in_whole_levels() -> None:
    image = np.full((100, 100), 200, np.uint8)
    image[0, 0] = 0  # so 200 is shown white
    mask = np.zeros((100, 100), bool)
    mask[20:80, 20:80] = True
    rgb = overlay(image, mask, alpha=0.5)
    # class 1's colour (255, 64, 64) half over white: (255, 159.5, 159.5)
    assert tuple(rgb[50, 50]) == (255, 160, 160) and tuple(rgb[90, 90]) == (255, 255, 255)


def test_the_closing_text_says_when_serve_needs_its_extra(monkeypatch) -> None:
    from unet_lowered.demo import pipeline

    result = {"seconds": 30, "val_dice_training_size": 0.97, "val_dice_original_size": None}
    monkeypatch.setattr(pipeline, "_has_serve", lambda: False)
    line = next(x for x in pipeline._closing(Path("d"), result).splitlines() if "serve" in x)
    assert line.endswith("(first: pip install 'unet-lowered[serve]')")
    monkeypatch.setattr(pipeline, "_has_serve", lambda: True)
    line = next(x for x in pipeline._closing(Path("d"), result).splitlines() if "serve" in x)
    assert line.endswith("then open http://127.0.0.1:8000")
