"""``--polarity``: a flagged X-ray predicted again with its gray scale inverted.

The run is :func:`dark_model` (foreground: darker than average, as lungs are) with the
``mask_stats`` of :func:`chest_picture`s (two dark objects, their contrast recorded), so
the known answer of every picture is its two lungs: the film as stored gives them; the
film with its gray scale inverted gives the chest around them (one object, flagged),
unless it is read the right way round.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from run_fixtures import chest_picture, chest_stats, dark_model, make_run, run_config
from unet_lowered.errors import UnetError
from unet_lowered.evaluation.evaluate import evaluate_run
from unet_lowered.inference.batch import predict_files
from unet_lowered.inference.polarity import (
    _at_size,
    inverted_note,
    predict_seen,
    second_look_applies,
)
from unet_lowered.inference.predictor import PredictOptions
from unet_lowered.io import images


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(
        tmp_path_factory.mktemp("polarity") / "run", dark_model(), mask_stats=chest_stats()
    )


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A film, the same inverted in 8 and in 16 bits, and a second film; their masks."""
    folder = tmp_path_factory.mktemp("films")
    film, lungs = chest_picture(seed=10)
    other, other_lungs = chest_picture(seed=11)
    pictures = {
        "film": (film, lungs),
        "inverted": (255 - film, lungs),
        "inverted16": ((255 - film).astype(np.uint16) * 257, lungs),
        "other": (other, other_lungs),
    }
    for name, (image, mask) in pictures.items():
        images.write_png(folder / "images" / f"{name}.png", image)
        images.write_png(folder / "masks" / f"{name}.png", mask.astype(np.uint8) * 255)
    return folder, {name: mask for name, (_, mask) in pictures.items()}


def predicted(out: Path) -> tuple[dict[str, dict[str, str]], dict[str, np.ndarray]]:
    with open(out / "predictions.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    return rows, {k: images.read_image(out / f"{k}.png") > 0 for k in rows}


def test_auto_reads_an_inverted_film_the_right_way_round(run, films, tmp_path) -> None:
    folder, truth = films
    report = predict_files(run, [folder / "images"], tmp_path / "out", progress=False)
    rows, masks = predicted(tmp_path / "out")
    for name in truth:
        assert np.array_equal(masks[name], masks["film" if "inverted" in name else name]), name
        assert rows[name]["quality"] == "ok", name
    # the film's own mask is its lungs (to the 32-px network's resolution)
    assert np.count_nonzero(masks["film"] != truth["film"]) < 0.05 * truth["film"].size
    assert {k: r["gray_scale"] for k, r in rows.items()} == {
        "film": "as stored",
        "inverted": "inverted",
        "inverted16": "inverted",
        "other": "as stored",
    }
    inverted = [n for n in report.notes if "read with its gray scale inverted" in n]
    assert sorted(Path(n.split(":")[0]).stem for n in inverted) == ["inverted", "inverted16"]


def test_keep_leaves_an_inverted_film_as_stored_and_flagged(run, films, tmp_path) -> None:
    folder, truth = films
    options = PredictOptions(polarity="keep")
    report = predict_files(run, [folder / "images"], tmp_path / "out", options, progress=False)
    rows, masks = predicted(tmp_path / "out")
    assert all(r["gray_scale"] == "as stored" for r in rows.values())
    for name in ("inverted", "inverted16"):
        assert rows[name]["quality"].startswith("check: 1 object(s), training masks have 2")
        assert not (masks[name] & truth[name]).any()  # the chest around the lungs
    assert rows["film"]["quality"] == rows["other"]["quality"] == "ok"
    assert not [n for n in report.notes if "inverted" in n]


def test_invert_inverts_every_image(run, films, tmp_path) -> None:
    folder, _ = films
    options = PredictOptions(polarity="invert")
    predict_files(run, [folder / "images"], tmp_path / "out", options, progress=False)
    rows, masks = predicted(tmp_path / "out")
    assert all(r["gray_scale"] == "inverted" for r in rows.values())
    assert rows["inverted"]["quality"] == rows["inverted16"]["quality"] == "ok"
    assert rows["film"]["quality"].startswith("check")  # a normal film, inverted
    auto = tmp_path / "auto"
    predict_files(run, [folder / "images" / "film.png"], auto, progress=False)
    assert np.array_equal(masks["inverted"], predicted(auto)[1]["film"])


def test_a_mask_flagged_both_ways_stays_as_stored(run, tmp_path) -> None:
    """Three dark blobs where training had two lungs: flagged as stored, and inverted
    (the chest around them, one object): the mask as stored is written, flagged."""
    film, _ = chest_picture(seed=3)
    film[1:8, 24:40] = 60  # a third dark object above the lungs' tops
    images.write_png(tmp_path / "in" / "three.png", film)
    predict_files(run, [tmp_path / "in"], tmp_path / "out", progress=False)
    rows, masks = predicted(tmp_path / "out")
    assert rows["three"]["gray_scale"] == "as stored"
    assert rows["three"]["quality"].startswith("check: 3 object(s), training masks have 2")
    assert masks["three"][2:7, 26:38].all()


def test_evaluate_scores_what_predict_writes(run, films, tmp_path) -> None:
    folder, _ = films
    summary = evaluate_run(run, folder, tmp_path / "ev", progress=False)
    assert summary["read_inverted"] == ["inverted", "inverted16"]
    assert summary["settings"]["polarity"] == "auto"
    with open(tmp_path / "ev" / "per_image.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert float(rows["inverted"]["dice"]) == float(rows["film"]["dice"]) > 0.95
    assert rows["inverted16"]["gray_scale"] == "inverted"
    keep = evaluate_run(
        run, folder, tmp_path / "keep", PredictOptions(polarity="keep"), progress=False
    )
    assert keep["read_inverted"] == [] and keep["metrics"]["dice"]["min"] == 0.0


def test_predict_seen_is_the_pipelines_answer(run, films) -> None:
    """The one-call path (service, Ray actors) takes the same masks and flags."""
    from unet_lowered.io.runs import load_run

    folder, _ = films
    loaded = load_run(run)
    batch = [images.read_image(folder / "images" / f"{k}.png") for k in ("film", "inverted")]
    for mode in ("resize", "tile"):
        seen = predict_seen(loaded.model(), batch, loaded.config, PredictOptions(mode=mode))
        assert [s.gray_scale for s in seen] == ["as stored", "inverted"], mode
        masks = [s.probs[..., 0] > 0.5 for s in seen]
        assert np.array_equal(masks[0], masks[1]), mode
        assert [s.quality(m, loaded.config) for s, m in zip(seen, masks, strict=True)] == [
            "ok",
            "ok",
        ]


def test_which_runs_get_the_second_look() -> None:
    lungs = chest_stats()
    auto, keep = PredictOptions(), PredictOptions(polarity="keep")
    assert second_look_applies(run_config(mask_stats=lungs), auto)
    assert not second_look_applies(run_config(mask_stats=lungs), keep)
    assert not second_look_applies(run_config(mask_stats=lungs, invert_light=True), auto)
    assert not second_look_applies(run_config(mask_stats=lungs, channels=3), auto)
    assert not second_look_applies(run_config(mask_stats=lungs, num_classes=2), auto)
    assert not second_look_applies(run_config(), auto)  # no training statistics
    # cells: no steady object count, so no contrast recorded
    cells = {**lungs, "objects": None, "contrast": None}
    assert not second_look_applies(run_config(mask_stats=cells), auto)


def test_the_minimum_area_is_scaled_to_the_networks_size() -> None:
    config = run_config(postprocess={"min_area": 400})
    options = PredictOptions()
    assert _at_size(options, config, (32, 32), (64, 64)).min_area == 100
    assert _at_size(options, config, (64, 64), (64, 64)) is options
    flagged = dataclasses.replace(options, min_area=1000)
    assert _at_size(flagged, config, (32, 32), (64, 128)).min_area == 125


def test_a_bad_polarity_is_a_one_line_error() -> None:
    with pytest.raises(UnetError, match="polarity"):
        PredictOptions(polarity="upside-down").validate()


def test_the_note_names_the_file_and_the_way_out() -> None:
    note = inverted_note("scans/a.png")
    assert note.startswith("scans/a.png: read with its gray scale inverted")
    assert note.endswith("--polarity keep turns this off") and "\n" not in note


@pytest.mark.parametrize("mode", ["resize", "tile"])
def test_the_writer_takes_the_judged_mask_and_flag_unchanged(run, tmp_path, mode) -> None:
    """Judged at the image's size (an image of the training size, or tile mode), the
    second look's mask and flag are what the writer takes: the same files and rows as
    with the look off, for films that need none, flagged or not."""
    side = 32 if mode == "resize" else 64  # the training size; tile mode: any size
    film, _ = chest_picture(side, side, seed=4)
    three, _ = chest_picture(64, 64, seed=5)
    three[1:8, 24:40] = 60  # flagged both ways: stays as stored
    images.write_png(tmp_path / "in" / "film.png", film)
    images.write_png(tmp_path / "in" / "three.png", three)
    for polarity in ("auto", "keep"):
        options = PredictOptions(mode=mode, polarity=polarity)
        predict_files(run, [tmp_path / "in"], tmp_path / polarity, options, progress=False)
    rows = {p: predicted(tmp_path / p)[0] for p in ("auto", "keep")}
    for name in ("film", "three"):
        auto, keep = (
            {k: v for k, v in rows[p][name].items() if k != "seconds"} for p in ("auto", "keep")
        )
        assert auto == keep, name
        png = f"{name}.png"
        assert (tmp_path / "auto" / png).read_bytes() == (tmp_path / "keep" / png).read_bytes()
    assert rows["auto"]["three"]["quality"].startswith("check")
    if mode == "tile":  # at 32 px the lungs' 2-px gap closes: one object, flagged
        assert rows["auto"]["film"]["quality"] == "ok"
