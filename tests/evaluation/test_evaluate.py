"""Evaluation: known scores from a model whose answer is known, outputs, CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from run_fixtures import bright_model, disk_image, make_run, run_config
from unet_lowered.errors import UnetError
from unet_lowered.evaluation.evaluate import evaluate_run, read_truth
from unet_lowered.inference.predictor import PredictOptions
from unet_lowered.io import images

TILE = PredictOptions(mode="tile")


def rectangle_image() -> tuple[np.ndarray, np.ndarray]:
    """A bright 20x10 rectangle (200 px) on a flat background: the model predicts it exactly."""
    image = np.full((40, 30), 50, np.uint8)
    image[10:30, 5:15] = 200
    return image, image == 200


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = make_run(tmp_path_factory.mktemp("run") / "run", bright_model(32))
    (run_dir / "split.json").write_text(json.dumps({"train": ["half", "empty"], "val": ["exact"]}))
    return run_dir


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """images/ + masks/: the truth is the rectangle, its left half, or empty."""
    image, rect = rectangle_image()
    half = rect.copy()
    half[:, 10:] = False
    for name, truth in (("exact", rect), ("half", half), ("empty", np.zeros_like(rect))):
        images.write_png(tmp_path / "d" / "images" / f"{name}.png", image)
        images.write_png(tmp_path / "d" / "masks" / f"{name}.png", truth.astype(np.uint8) * 255)
    return tmp_path / "d"


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def test_known_scores(run: Path, data: Path, tmp_path: Path) -> None:
    summary = evaluate_run(run, data, tmp_path / "ev", TILE, progress=False)
    rows = read_rows(tmp_path / "ev" / "per_image.csv")
    assert list(next(iter(rows.values()))) == [
        "id",
        "dice",
        "iou",
        "precision",
        "recall",
        "hd95",
        "fg_true",
        "fg_pred",
        "gray_scale",
        "orientation",
    ]
    exact, half, empty = rows["exact"], rows["half"], rows["empty"]
    assert float(exact["dice"]) == 1 and float(exact["hd95"]) == 0
    assert float(half["dice"]) == pytest.approx(2 / 3, abs=1e-6)  # 2*100 / (100 + 200)
    assert float(half["iou"]) == pytest.approx(0.5, abs=1e-6)
    assert (float(half["precision"]), float(half["recall"])) == (0.5, 1.0)
    assert float(half["hd95"]) == pytest.approx(5.0, abs=1e-6)  # right edges 5 px apart
    assert float(empty["dice"]) == 0 and math.isinf(float(empty["hd95"]))
    assert float(half["fg_true"]) == pytest.approx(100 / 1200) and float(
        half["fg_pred"]
    ) == pytest.approx(200 / 1200)
    assert summary["n_images"] == 3
    assert summary["metrics"]["dice"]["mean"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert summary["metrics"]["hd95"]["n_nonfinite"] == 1
    assert [w["id"] for w in summary["worst"]] == ["empty", "half", "exact"]
    assert summary["settings"]["mode"] == "tile" and summary["split"] == "all"
    on_disk = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert on_disk["images"] == str(data / "images") and on_disk["masks"] == str(data / "masks")


def test_default_output_folder_and_val_split(run: Path, data: Path) -> None:
    summary = evaluate_run(run, data, None, TILE, split="val", progress=False)
    assert summary["n_images"] == 1 and summary["metrics"]["dice"]["mean"] == 1
    assert list(read_rows(run / "eval" / "per_image.csv")) == ["exact"]


def test_resize_mode_uses_the_predict_path(run: Path, data: Path, tmp_path: Path) -> None:
    summary = evaluate_run(
        run, data, tmp_path / "ev", PredictOptions(mode="resize"), split="val", progress=False
    )
    assert summary["metrics"]["dice"]["mean"] > 0.9


@pytest.mark.parametrize("mode", ["resize", "tile"])
def test_scores_equal_those_of_the_one_image_path(run: Path, tmp_path: Path, mode: str) -> None:
    """The threaded evaluation scores every image as predict_images one at a time does."""
    from unet_lowered.evaluation.evaluate import score_image
    from unet_lowered.inference.predictor import predict_images, probs_to_mask
    from unet_lowered.io.runs import load_run

    sizes = [(61, 47), (90, 120), (33, 70), (40, 41), (57, 31)]
    for k, (h, w) in enumerate(sizes):
        image, mask = disk_image(h, w, seed=k)
        mask[: h // 4] = False  # the truth differs from the disk: scores below 1
        images.write_png(tmp_path / "d" / "images" / f"{k}.png", image)
        images.write_png(tmp_path / "d" / "masks" / f"{k}.png", mask.astype(np.uint8) * 255)
    options = PredictOptions(mode=mode, batch_size=2)
    evaluate_run(run, tmp_path / "d", tmp_path / "ev", options, progress=False)
    rows = read_rows(tmp_path / "ev" / "per_image.csv")
    r = load_run(run)
    model, config = r.model(), r.config
    options = dataclasses.replace(options, mode=mode)
    for k in range(len(sizes)):
        image = images.read_image(tmp_path / "d" / "images" / f"{k}.png")
        truth = read_truth(tmp_path / "d" / "masks" / f"{k}.png", config, options.max_pixels)
        (probs,) = predict_images(model, [image], config, options)
        expected = score_image(truth, probs_to_mask(probs, config, options), config)
        assert 0 < expected["dice"] < 1
        row = rows[str(k)]
        assert row.pop("gray_scale") == row.pop("orientation") == "as stored"
        assert {key: float(v) for key, v in row.items() if key != "id"} == pytest.approx(
            expected, abs=1e-6
        )


def test_post_processing_is_applied(run: Path, tmp_path: Path) -> None:
    image, mask = disk_image(64, 64)
    image[2:5, 2:5] = 255  # a bright speck the model marks; truth has none
    images.write_png(tmp_path / "d" / "images" / "s.png", image)
    images.write_png(tmp_path / "d" / "masks" / "s.png", mask.astype(np.uint8) * 255)
    raw = evaluate_run(run, tmp_path / "d", tmp_path / "a", TILE, progress=False)
    kept = evaluate_run(
        run,
        tmp_path / "d",
        tmp_path / "b",
        PredictOptions(mode="tile", keep_largest=1),
        progress=False,
    )
    assert kept["metrics"]["hd95"]["mean"] < raw["metrics"]["hd95"]["mean"]
    assert kept["settings"]["keep_largest"] == 1


def test_multi_class_per_class_columns(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "mc", bright_model(32, num_classes=3), label_values=[0, 100, 200])
    image, rect = rectangle_image()
    images.write_png(tmp_path / "d" / "images" / "a.png", image)
    images.write_png(tmp_path / "d" / "masks" / "a.png", rect.astype(np.uint8) * 200)
    summary = evaluate_run(run_dir, tmp_path / "d", tmp_path / "ev", TILE, progress=False)
    row = read_rows(tmp_path / "ev" / "per_image.csv")["a"]
    # class 100: absent and never predicted (Dice 1); class 200: the rectangle, exact (Dice 1)
    assert float(row["dice_100"]) == 1 and float(row["dice_200"]) == 1 and float(row["dice"]) == 1
    assert summary["metrics"]["dice_200"]["mean"] == 1
    assert "class_names" not in summary  # none given to `unet prepare`


def test_the_table_names_the_classes(tmp_path: Path, capsys) -> None:
    """With ``--class-names``, summary.json maps each ``dice_<value>`` to its class's name
    and the table shows it beside the column's name (the CSV keeps ``dice_<value>``)."""
    names = ["background", "lung", "heart"]
    run_dir = make_run(
        tmp_path / "mc",
        bright_model(32, num_classes=3),
        label_values=[0, 100, 200],
        class_names=names,
    )
    image, rect = rectangle_image()
    images.write_png(tmp_path / "d" / "images" / "a.png", image)
    images.write_png(tmp_path / "d" / "masks" / "a.png", rect.astype(np.uint8) * 200)
    summary = evaluate_run(run_dir, tmp_path / "d", tmp_path / "ev", TILE, progress=True)
    assert summary["class_names"] == {"dice_100": "lung", "dice_200": "heart"}
    rows = [line.split()[1:3] for line in capsys.readouterr().out.splitlines() if "dice_" in line]
    assert rows == [["dice_100", "(lung)"], ["dice_200", "(heart)"]]
    assert "dice_200" in read_rows(tmp_path / "ev" / "per_image.csv")["a"]


def test_multi_class_mean_leaves_out_a_class_absent_from_both() -> None:
    from unet_lowered.evaluation.evaluate import score_image

    config = run_config(num_classes=3, label_values=[0, 100, 200])
    truth = np.zeros((10, 10), np.int32)
    truth[2:6, 2:6] = 1
    pred = np.zeros_like(truth)
    pred[3:7, 3:7] = 1  # class 1: 9 of 16 shared, Dice 18/32; class 2 absent from both
    row = score_image(truth, pred, config)
    assert row["dice"] == pytest.approx(18 / 32) and row["dice_200"] == 1.0
    assert row["hd95"] > 0  # class 1's distance, not halved by a perfect class 2
    empty = score_image(np.zeros_like(truth), np.zeros_like(truth), config)
    assert empty["dice"] == 1.0 and empty["hd95"] == 0.0


def test_read_truth_label_values(tmp_path: Path) -> None:
    images.write_png(tmp_path / "m.png", np.array([[0, 100], [200, 7]], np.uint8))
    config = run_config(num_classes=3, label_values=[0, 100, 200])
    with pytest.raises(
        UnetError, match=r"m.png: values \[7\] are not in the label map \[0, 100, 200\]"
    ):
        read_truth(tmp_path / "m.png", config, 10**6)
    images.write_png(tmp_path / "ok.png", np.array([[0, 100], [200, 0]], np.uint8))
    np.testing.assert_array_equal(read_truth(tmp_path / "ok.png", config, 10**6), [[0, 1], [2, 0]])
    images.write_png(tmp_path / "idx.png", np.array([[0, 1], [2, 0]], np.uint8))  # prepared
    np.testing.assert_array_equal(read_truth(tmp_path / "idx.png", config, 10**6), [[0, 1], [2, 0]])
    images.write_png(tmp_path / "nine.png", np.array([[0, 9]], np.uint8))
    with pytest.raises(
        UnetError,
        match=r"nine.png: mask value 9 is not a class index 0\.\.2 and no label values map it",
    ):
        read_truth(tmp_path / "nine.png", run_config(num_classes=3), 10**6)


def test_unprepared_jpeg_and_one_valued_masks_are_read_as_prepare_writes_them(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A JPEG mask's ringing and a 1/255 mask's 1s are not foreground; a warning says so."""
    image, rect = rectangle_image()
    images.write_png(tmp_path / "d" / "images" / "jpeg.png", image)
    ok, buf = cv2.imencode(".jpg", rect.astype(np.uint8) * 255, [cv2.IMWRITE_JPEG_QUALITY, 60])
    assert ok
    (tmp_path / "d" / "masks").mkdir()
    (tmp_path / "d" / "masks" / "jpeg.jpg").write_bytes(buf.tobytes())
    assert np.count_nonzero(cv2.imdecode(buf, 0)) > 200  # the ringing, read as non-zero
    images.write_png(tmp_path / "d" / "images" / "ones.png", image)
    images.write_png(tmp_path / "d" / "masks" / "ones.png", np.where(rect, 255, 1).astype(np.uint8))
    summary = evaluate_run(run, tmp_path / "d", tmp_path / "ev", TILE, progress=False)
    rows = read_rows(tmp_path / "ev" / "per_image.csv")
    for name in ("jpeg", "ones"):  # the model predicts the rectangle exactly
        assert float(rows[name]["dice"]) == 1 and float(rows[name]["fg_true"]) == 200 / 1200
    assert summary["metrics"]["dice"]["mean"] == 1
    err = capsys.readouterr().err
    assert "warning: 2 of 2 masks are not plain two-valued masks" in err
    assert "jpeg.jpg: near-binary mask" in err and "lossy JPEG" in err


def test_mask_of_another_size_is_refused(run: Path, tmp_path: Path) -> None:
    images.write_png(tmp_path / "d" / "images" / "a.png", rectangle_image()[0])
    images.write_png(tmp_path / "d" / "masks" / "a.png", np.zeros((20, 30), np.uint8))
    with pytest.raises(UnetError, match=r"a\.png: mask is 30x20 but its image is 30x40"):
        evaluate_run(run, tmp_path / "d", tmp_path / "ev", TILE, progress=False)


def test_split_ids_missing_from_the_data(run: Path, tmp_path: Path) -> None:
    image, rect = rectangle_image()
    images.write_png(tmp_path / "d" / "images" / "other.png", image)
    images.write_png(tmp_path / "d" / "masks" / "other.png", rect.astype(np.uint8) * 255)
    with pytest.raises(
        UnetError, match=r"1 id\(s\) of the run's val split are not in this folder \(exact\)"
    ):
        evaluate_run(run, tmp_path / "d", tmp_path / "ev", TILE, split="val", progress=False)
    with pytest.raises(UnetError, match="unknown --split 'test'; use one of: all, val, train"):
        evaluate_run(run, tmp_path / "d", tmp_path / "ev", TILE, split="test", progress=False)


def cli(*args: str) -> int:
    from unet_lowered.cli import main

    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_cli_evaluate(run: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ev = tmp_path / "ev"
    assert cli("evaluate", str(run), str(data), "--out", str(ev), "--mode", "tile") == 0
    assert (ev / "summary.json").is_file() and (ev / "per_image.csv").is_file()
    out = capsys.readouterr().out
    assert "dice" in out and "worst by Dice: empty (0.000), half (0.667), exact (1.000)" in out
    assert "hd95 (px) (1 inf)" in out  # the unit, and the empty image left out of its stats
    # the header is one line of its own (a table title wrapped and centred at 80 columns)
    assert out.splitlines()[0] == "3 images (all), tile mode, threshold 0.5, no post-processing"
    assert out.splitlines()[-1] == f"wrote {ev / 'per_image.csv'} and {ev / 'summary.json'}"
    assert cli("evaluate", str(run), str(tmp_path / "nodata"), "--out", str(ev)) == 1
    assert "nodata: no such data folder" in capsys.readouterr().err


def test_summary_records_absolute_paths_for_plot_from_anywhere(
    run: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(data.parent)
    evaluate_run(run, Path(data.name), Path("ev-rel"), TILE, progress=False)
    summary = json.loads((data.parent / "ev-rel" / "summary.json").read_text())
    assert summary["data"] == str(data.resolve())
    assert summary["images"] == str((data / "images").resolve())
    assert summary["masks"] == str((data / "masks").resolve())
    assert Path(summary["run"]).is_absolute()


def test_the_table_title_says_the_threshold_and_each_step_applied() -> None:
    from unet_lowered.evaluation.evaluate import settings_words

    plain = {"mode": "resize", "tta": None, "threshold": 0.97, "watershed": None}
    plain |= {"keep_largest": 0, "fill_holes": False, "min_area": 0}
    assert settings_words(plain) == "resize mode, threshold 0.97, no post-processing"
    steps = {"mode": "tile", "tta": "dihedral", "threshold": 0.5, "watershed": 0.9}
    steps |= {"keep_largest": 2, "fill_holes": True, "min_area": 10}
    assert settings_words(steps) == (
        "tile mode, TTA dihedral, threshold 0.5, watershed split (merge >= 0.9), "
        "keep 2 largest, fill holes, remove objects under 10 px"
    )


def test_a_narrow_terminal_gets_a_line_per_metric_not_cut_numbers(
    run: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    """At 40 columns the table cut every number to '0.…'."""
    monkeypatch.setenv("COLUMNS", "40")
    assert (
        cli("evaluate", str(run), str(data), "--out", str(tmp_path / "ev"), "--mode", "tile") == 0
    )
    lines = capsys.readouterr().out.splitlines()
    dice = next(line for line in lines if line.startswith("dice: "))
    assert dice == "dice: mean 0.5556, median 0.6667, std 0.4157, min 0.0000, max 1.0000"
    assert any(line.startswith("hd95 (px) (1 inf): mean ") for line in lines)
    assert not any("…" in line for line in lines)
