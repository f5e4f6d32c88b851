"""Prediction: one image at its original size, files of every format, the CLI."""

from __future__ import annotations

import csv
import re
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.special import expit

from dicom_fixtures import write_dicom
from run_fixtures import (
    DARK_OBJECT_STATS,
    FRAMED_STATS,
    bright_model,
    disk_image,
    framed_pictures,
    make_run,
    run_config,
    shifted_model,
)
from unet_lowered.dataset.masks import label_components
from unet_lowered.errors import UnetError
from unet_lowered.inference.batch import collect_inputs, exit_status, make_ids, predict_files
from unet_lowered.inference.predictor import (
    PredictOptions,
    applied_threshold,
    applied_watershed,
    mask_to_png,
    predict_image,
    predict_images,
    predict_prepared,
    prepare_images,
    probs_to_mask,
    resolve_mode,
    resolve_tta,
    tta_group,
)
from unet_lowered.io import images
from unet_lowered.io.runs import load_run
from unet_lowered.preprocess import model_input


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run", bright_model(32))


@pytest.fixture(scope="module")
def loaded(run: Path):
    from unet_lowered.io.runs import load_run

    r = load_run(run)
    return r.model(), r.config


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


# ---------------------------------------------------------------- one image


@pytest.mark.parametrize("mode", ["resize", "tile"])
@pytest.mark.parametrize("shape", [(1001, 777), (31, 45), (7, 5)])
def test_probabilities_at_original_size(loaded, mode: str, shape: tuple[int, int]) -> None:
    model, config = loaded
    image, mask = disk_image(*shape)
    p = predict_image(model, image, config, mode=mode)
    assert p.shape == (*shape, 1) and p.dtype == np.float32
    assert 0 <= p.min() and p.max() <= 1
    if min(shape) > 100:
        assert dice(p[:, :, 0] >= 0.5, mask) > 0.97
    elif min(shape) > 30:  # a disk of radius 9: one pixel of resampling blur costs ~10%
        assert dice(p[:, :, 0] >= 0.5, mask) > 0.85


def test_tile_mode_known_answer(loaded) -> None:
    """A 1x1 network tiled over the image gives sigmoid(10 z) of the whole image exactly."""
    model, config = loaded
    image, _ = disk_image(100, 70, np.uint16)
    p = predict_image(model, image, config, mode="tile", overlap=0.5)
    expected = expit(10 * model_input(image, 1, None))
    np.testing.assert_allclose(p, expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["resize", "tile"])
@pytest.mark.parametrize("which", ["lr", "flips", "dihedral"])
def test_tta_of_an_equivariant_model_changes_nothing(loaded, mode: str, which: str) -> None:
    model, config = loaded
    image, _ = disk_image(50, 40)
    plain = predict_image(model, image, config, mode=mode)
    with_tta = predict_image(model, image, config, mode=mode, tta=True, tta_transforms=which)
    np.testing.assert_allclose(with_tta, plain, atol=1e-5)


class CountingModel:
    """A model that records the batch size of each network call."""

    def __init__(self, model) -> None:
        self.model, self.input_shape, self.calls = model, model.input_shape, []

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        return self.model.predict_on_batch(batch)


@pytest.mark.parametrize(("tta", "calls"), [(False, [2, 2, 1]), (True, [2, 2, 2, 2, 1, 1])])
def test_batch_size_is_images_per_network_call(loaded, tta: bool, calls: list[int]) -> None:
    """Five images at batch_size 2: three calls (each twice with left-right TTA), not one
    call with all five; the probabilities are those of one image at a time."""
    model, config = loaded
    batch = [disk_image(40 + 3 * i, 30)[0] for i in range(5)]
    options = PredictOptions(mode="resize", tta=tta, tta_transforms="lr" if tta else "auto")
    counting = CountingModel(model)
    got = predict_images(counting, batch, config, replace(options, batch_size=2))
    assert counting.calls == calls
    one_by_one = predict_images(model, batch, config, replace(options, batch_size=1))
    for p, q in zip(got, one_by_one, strict=True):
        np.testing.assert_allclose(p, q, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("flip_lr", "flip_ud", "expected"),
    [(True, True, "flips"), (True, False, "lr"), (False, True, "ud")],
)
def test_auto_tta_uses_the_flips_the_run_trained_with(flip_lr, flip_ud, expected) -> None:
    assert resolve_tta("auto", run_config({"flip_lr": flip_lr, "flip_ud": flip_ud})) == expected
    assert resolve_tta("dihedral", run_config({"flip_lr": flip_lr})) == "dihedral"


def test_auto_tta_adds_the_turns_for_a_run_trained_with_any_rotation() -> None:
    free = {"flip_lr": True, "flip_ud": True, "rotate": 180.0}
    assert resolve_tta("auto", run_config(free)) == "dihedral"
    assert resolve_tta("auto", run_config({**free, "rotate": 89.0})) == "flips"
    assert resolve_tta("auto", run_config({**free, "flip_ud": False})) == "lr"
    assert resolve_tta("flips", run_config(free)) == "flips"


def test_auto_tta_refuses_a_run_trained_without_flips(loaded, run: Path, tmp_path: Path) -> None:
    model, config = loaded
    with pytest.raises(UnetError, match=r"the run was trained without flips .* --tta-transforms"):
        predict_image(model, disk_image(20, 20)[0], config, tta=True)
    # unet predict refuses it before making --out (it left a header-only table and a journal)
    images.write_png(tmp_path / "in" / "a.png", disk_image(20, 20)[0])
    with pytest.raises(UnetError, match=r"the run was trained without flips"):
        predict_files(run, [tmp_path / "in"], tmp_path / "out", PredictOptions(tta=True))
    assert not (tmp_path / "out").exists()


def test_the_runs_tta_choice_applies_by_default_and_flags_override(tmp_path: Path) -> None:
    # Each output pixel is 10x its left neighbour, so the left-right flip changes the
    # prediction and TTA "lr" averages the left and right neighbours.
    model = shifted_model(1)
    chosen = {"tta": "lr", "keep_largest": None, "fill_holes": False, "min_area": 0}
    r = load_run(make_run(tmp_path / "run", model, flip_lr=True, postprocess=chosen))
    image, _ = disk_image(32, 32)
    forced = predict_image(model, image, r.config, tta=True, tta_transforms="lr")
    plain = predict_image(model, image, r.config, tta=False)
    assert np.abs(forced - plain).max() > 0.1
    np.testing.assert_array_equal(predict_image(model, image, r.config), forced)  # default
    assert tta_group(PredictOptions(), r.config) == "lr"
    assert tta_group(PredictOptions(tta=False), r.config) is None
    assert tta_group(PredictOptions(tta=True, tta_transforms="dihedral"), r.config) == "dihedral"
    assert tta_group(PredictOptions(), run_config()) is None  # no choice recorded: none


def test_naming_a_tta_group_turns_tta_on(tmp_path: Path) -> None:
    """`--tta-transforms lr` alone applies lr (it used to be ignored); with --no-tta it is
    refused."""
    model = shifted_model(1)
    r = load_run(make_run(tmp_path / "run", model, flip_lr=True))  # no TTA chosen
    image, _ = disk_image(32, 32)
    forced = predict_image(model, image, r.config, tta=True, tta_transforms="lr")
    assert np.abs(forced - predict_image(model, image, r.config)).max() > 0.1
    np.testing.assert_array_equal(
        predict_image(model, image, r.config, tta_transforms="lr"), forced
    )
    assert tta_group(PredictOptions(tta_transforms="dihedral"), r.config) == "dihedral"
    assert PredictOptions(tta_transforms="lr").tta_on is True
    assert PredictOptions(tta=False).tta_on is False and PredictOptions().tta_on is None
    with pytest.raises(UnetError, match=r"^--tta-transforms lr names .* --no-tta .* drop one"):
        PredictOptions(tta=False, tta_transforms="lr").validate()


def test_the_threshold_chosen_on_validation_applies_unless_overridden() -> None:
    chosen = run_config({"threshold": 0.5, "postprocess": {"threshold": 0.6}})
    assert applied_threshold(PredictOptions(), chosen) == 0.6
    assert applied_threshold(PredictOptions(threshold=0.3), chosen) == 0.3  # --threshold
    assert applied_threshold(PredictOptions(postprocess=False), chosen) == 0.5
    assert applied_threshold(PredictOptions(), run_config({"threshold": 0.4})) == 0.4
    probs = np.full((2, 2, 1), 0.55, np.float32)
    assert not probs_to_mask(probs, chosen, PredictOptions()).any()
    assert probs_to_mask(probs, chosen, PredictOptions(postprocess=False)).all()


@pytest.mark.parametrize("mode", ["resize", "tile"])
def test_a_run_that_inverts_light_backgrounds_finds_dark_objects(tmp_path: Path, mode: str) -> None:
    # bright_model marks what is brighter than average: on a dark disk over a light
    # background that is the background, unless the run inverts the image first.
    image, mask = disk_image(120, 90)
    dark = 255 - image
    model = bright_model(32)
    inverting = load_run(make_run(tmp_path / "inv", model, invert_light=True)).config
    assert inverting.invert_light is True
    assert dice(predict_image(model, dark, inverting, mode=mode)[:, :, 0] >= 0.5, mask) > 0.95
    assert dice(predict_image(model, image, inverting, mode=mode)[:, :, 0] >= 0.5, mask) > 0.95
    plain = load_run(make_run(tmp_path / "plain", model)).config
    assert plain.invert_light is False
    assert dice(predict_image(model, dark, plain, mode=mode)[:, :, 0] >= 0.5, ~mask) > 0.95


def test_colour_image_on_a_gray_run_and_gray_on_a_colour_run(tmp_path: Path, loaded) -> None:
    model, config = loaded
    image, mask = disk_image(120, 90)
    rgb = np.stack([image, image // 2, image], axis=2)
    assert dice(predict_image(model, rgb, config)[:, :, 0] >= 0.5, mask) > 0.95
    run3 = make_run(tmp_path / "rgb", bright_model(32, channels=3))
    from unet_lowered.io.runs import load_run

    r = load_run(run3)
    assert dice(predict_image(r.model(), image, r.config)[:, :, 0] >= 0.5, mask) > 0.95


GRAY_FORMS = {
    "HxWx1 uint8": lambda g: g[:, :, None],  # was cv2.error (-15) in cvtColor
    "HxWx3 uint8": lambda g: np.repeat(g[:, :, None], 3, axis=2),
    "HxWx4 RGBA uint8": lambda g: np.dstack([g, g, g, np.full_like(g, 255)]),
    "HxW uint16": lambda g: g.astype(np.uint16) * 257,
    "HxW float32 in [0, 1]": lambda g: g.astype(np.float32) / 255,
    "HxW float64 in [0, 1]": lambda g: g / 255.0,
    "HxWx3 float64": lambda g: np.repeat(g[:, :, None], 3, axis=2) / 255.0,  # was cv2.error
    "HxWx1 float64": lambda g: g[:, :, None] / 255.0,
}


@pytest.mark.parametrize("form", GRAY_FORMS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_form_of_a_gray_image_gives_its_probabilities(tmp_path: Path, form, channels) -> None:
    image, _ = disk_image(40, 30)
    run = load_run(make_run(tmp_path / "run", bright_model(32, channels=channels)))
    model, config = run.model(), run.config
    expected = predict_image(model, image, config)
    got = predict_image(model, GRAY_FORMS[form](image), config)
    assert got.shape == expected.shape == (40, 30, 1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(40, 30, 2), (3, 40, 30, 1), (40,)])
def test_an_image_of_another_shape_is_refused_naming_it(loaded, shape) -> None:
    model, config = loaded
    with pytest.raises(UnetError, match=re.escape(f"an image of shape {shape}: expected (H, W)")):
        predict_image(model, np.zeros(shape, np.uint8), config)


def test_multi_class_softmax_and_label_values(tmp_path: Path) -> None:
    from unet_lowered.io.runs import load_run

    r = load_run(
        make_run(tmp_path / "mc", bright_model(32, num_classes=3), label_values=[0, 100, 200])
    )
    image, mask = disk_image(45, 33)
    p = predict_image(r.model(), image, r.config, mode="tile")
    assert p.shape == (45, 33, 3)
    np.testing.assert_allclose(p.sum(axis=2), 1, atol=1e-5)
    labels = np.argmax(p, axis=2)
    np.testing.assert_array_equal(mask_to_png(labels, r.config)[mask & (labels == 2)], 200)
    assert set(np.unique(mask_to_png(labels, r.config))) <= {0, 100, 200}
    # A threshold or a watershed would not change a multi-class mask: refused, not ignored.
    from unet_lowered.inference.predictor import for_run

    for options in (PredictOptions(threshold=0.9), PredictOptions(watershed=0.5)):
        with pytest.raises(UnetError, match="applies to one-class runs; this run has 3 classes"):
            for_run(options, r.config)
    assert for_run(PredictOptions(watershed=0), r.config).mode == "resize"  # 0: off


@pytest.mark.parametrize("mode", ["resize", "tile"])
def test_valid_padding_model(tmp_path: Path, mode: str) -> None:
    """A valid-padding U-Net (44 in, 4 out at depth 2) still predicts every pixel."""
    from unet_lowered.io.runs import load_run
    from unet_lowered.model import unet

    model = unet((44, 44, 1), base_filters=2, depth=2, padding="valid")
    assert model.output_shape[1:3] == (4, 4)
    r = load_run(make_run(tmp_path / "valid", model, padding="valid"))
    image, _ = disk_image(23, 50)
    p = predict_image(r.model(), image, r.config, mode=mode, batch_size=64)
    assert p.shape == (23, 50, 1) and np.isfinite(p).all()


def test_a_valid_run_trained_at_its_output_size_predicts_an_image_in_one_pass(
    tmp_path: Path,
) -> None:
    """``resize_to_output`` (valid padding on whole images): the image is resized to the
    output size (8x8 for a 48-px input at depth 2) and mirror-padded to the input, one
    network pass; the model here returns its input's centre times 10, so the
    probabilities are sigmoid(10 x the standardised 8x8 image), at the image's size.
    A run without the flag (trained before) still resizes to the input and tiles (8x8
    tiles of 8 px at overlap 0.25)."""
    import keras

    inputs = keras.Input((48, 48, 1))
    centre = keras.layers.Cropping2D(20)(inputs)  # 48 -> 8, as the depth-2 valid U-Net
    model = keras.Model(inputs, keras.layers.Rescaling(10.0)(centre))
    image, _ = disk_image(23, 50)
    for flag, size, tiles in ((True, (8, 8), 1), (False, (48, 48), 64)):
        r = load_run(make_run(tmp_path / str(flag), model, padding="valid", resize_to_output=flag))
        assert r.config.resize_size == size
        options = PredictOptions(mode="resize").validate()
        (x,) = prepare_images([image], r.config, options)
        assert x.shape == (*size, 1)
        seen: list[int] = []
        predict_prepared(
            model, [x], r.config, options, on_tiles=lambda _, n, seen=seen: seen.append(n)
        )
        assert set(seen) == {tiles}
    expected = cv2.resize(expit(10 * model_input(image, 1, (8, 8))), (50, 23))
    got = predict_image(model, image, load_run(tmp_path / "True").config, mode="resize")
    np.testing.assert_allclose(got[..., 0], expected, atol=1e-5)


def test_auto_mode_follows_the_run() -> None:
    assert resolve_mode("auto", run_config({"input_mode": "crop"})) == "tile"
    assert resolve_mode("auto", run_config({"input_mode": "resize"})) == "resize"
    assert resolve_mode("tile", run_config({"input_mode": "resize"})) == "tile"
    with pytest.raises(UnetError, match="unknown --mode 'big'; use one of: auto, resize, tile"):
        resolve_mode("big", run_config({}))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (PredictOptions(overlap=1.0), r"--overlap must be in \[0, 1\)"),
        (PredictOptions(threshold=1.5), "--threshold must be above 0 and below 1"),
        (PredictOptions(keep_largest=-1), r"--keep-largest must be 0 \(keep all\) or more"),
        (
            PredictOptions(blend="box"),
            "unknown --blend 'box'; use one of: gaussian, linear, constant",
        ),
        (PredictOptions(batch_size=0), "--batch-size must be at least 1"),
        (PredictOptions(max_pixels=0), "--max-pixels must be positive, got 0"),
        (PredictOptions(min_area=-1), "--min-area must be 0 or more"),
        (PredictOptions(watershed=1.5), r"--watershed must be in \[0, 1\] \(the merge level"),
    ],
)
def test_bad_options_are_explained(options: PredictOptions, message: str) -> None:
    with pytest.raises(UnetError, match=message):
        options.validate()


# ---------------------------------------------------------------- inputs and ids


def test_make_ids_disambiguates_collisions() -> None:
    files = [
        Path("/d/a/x.png"),
        Path("/d/b/x.png"),
        Path("/d/a/y.png"),
        Path("/e/s/z.png"),
        Path("/f/s/z.png"),
        Path("/d/c/w.png"),
        Path("/d/c/w.jpg"),
    ]
    assert make_ids(files) == [
        "a__x",
        "b__x",
        "y",
        "e__s__z",
        "f__s__z",
        "w_png",  # the same stem in one folder: its suffix, no folder names
        "w_jpg",
    ]


def test_make_ids_never_repeats() -> None:
    files = [Path("/d/a/x.png"), Path("/d/b/x.png"), Path("/d/c/a__x.png")]
    ids = make_ids(files)
    assert len(set(ids)) == 3
    # the renaming of a repeat must not take a literal name either: x.png and x.jpg
    # become x_png and x_jpg, a literal x_png.png repeats x_png, and x_png-2 is taken
    files = [Path("/d/x.png"), Path("/d/x.jpg"), Path("/d/x_png.png"), Path("/d/x_png-2.png")]
    assert make_ids(files) == ["x_png", "x_jpg", "x_png-3", "x_png-2"]


def test_collect_inputs_files_folders_globs(tmp_path: Path) -> None:
    for rel in ["a/1.png", "a/2.jpg", "a/notes.txt", "a/sub/3.png", "b/4.tif"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    names = lambda paths: sorted(p.name for p in paths)  # noqa: E731
    assert names(collect_inputs([tmp_path / "a"])) == ["1.png", "2.jpg"]
    assert names(collect_inputs([tmp_path / "a"], recursive=True)) == ["1.png", "2.jpg", "3.png"]
    assert names(collect_inputs([str(tmp_path / "*" / "*.png")])) == ["1.png"]
    assert names(collect_inputs([str(tmp_path / "**" / "*.png")], recursive=True)) == [
        "1.png",
        "3.png",
    ]
    assert names(
        collect_inputs([tmp_path / "a" / "notes.txt", tmp_path / "a" / "1.png", tmp_path / "a"])
    ) == [
        "1.png",
        "2.jpg",
        "notes.txt",
    ]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: [t / "missing.png"], "missing.png: no such file or folder; check the path"),
        (lambda t: [str(t / "*.bmp")], r"\*.bmp: the pattern matches no image files"),
        (lambda t: [t / "nested"], r"no image files in this folder \(use --recursive"),
    ],
)
def test_collect_inputs_errors(tmp_path: Path, make, message: str) -> None:
    (tmp_path / "nested" / "deeper").mkdir(parents=True)
    (tmp_path / "nested" / "deeper" / "1.png").write_bytes(b"x")
    with pytest.raises(UnetError, match=message):
        collect_inputs(make(tmp_path))


# ---------------------------------------------------------------- files


def test_dicom_rescale_and_window_are_applied(tmp_path: Path) -> None:
    """Stored 0..1000, slope 2, intercept -1000: HU -1000..1000; window 0 +- 500 shows stored
    250..750. Ignoring the slope would show stored 0..500 instead."""
    stored = np.tile(np.arange(0, 1001, 10), (4, 1)).astype(np.uint16)
    write_dicom(
        tmp_path / "ramp.dcm",
        stored,
        "MONOCHROME2",
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=0,
        WindowWidth=1000,
    )
    row = images.read_image(tmp_path / "ramp.dcm")[0].astype(int)
    s = stored[0]
    assert (row[s <= 240] == 0).all() and (row[s >= 760] == 65535).all()
    inside = row[(s > 260) & (s < 740)]
    assert (np.diff(inside) > 0).all() and 0 < inside.min() and inside.max() < 65535


def write_formats(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """One disk image per format, each of a different odd size; name -> (path, mask)."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    img, mask = disk_image(121, 95, np.uint16, seed=1)
    images.write_png(folder / "png16.png", img)
    out["png16"] = (folder / "png16.png", mask)
    img, mask = disk_image(100, 141, seed=2)
    cv2.imwrite(str(folder / "photo.jpg"), img)
    out["photo"] = (folder / "photo.jpg", mask)
    img, mask = disk_image(79, 80, np.uint16, seed=3)
    tifffile.imwrite(folder / "scan.tif", img)
    out["scan"] = (folder / "scan.tif", mask)
    img, mask = disk_image(67, 71, seed=4)
    cv2.imwrite(str(folder / "colour.bmp"), np.stack([img, img // 3, img], axis=2))
    out["colour"] = (folder / "colour.bmp", mask)
    img, mask = disk_image(91, 75, np.uint16, seed=5)
    stored = (4095 - img // 16).astype(np.uint16)  # MONOCHROME1: bright = low values
    write_dicom(folder / "xray.dcm", stored, "MONOCHROME1", RescaleSlope=1, RescaleIntercept=0)
    out["xray"] = (folder / "xray.dcm", mask)
    return out


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def test_every_format_predicted_at_original_size(tmp_path: Path, run: Path) -> None:
    expected = write_formats(tmp_path / "in")
    report = predict_files(
        run, [tmp_path / "in"], tmp_path / "out", save_prob="png", save_overlay=True, progress=False
    )
    assert not report.failed and sorted(report.written) == sorted(expected)
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    for name, (path, mask) in expected.items():
        written = images.read_image(tmp_path / "out" / f"{name}.png")
        assert written.shape == mask.shape and written.dtype == np.uint8
        assert set(np.unique(written)) <= {0, 255}
        assert dice(written == 255, mask) > 0.93, name  # MONOCHROME1 inverted, else ~0
        assert images.read_image(tmp_path / "out" / f"{name}_prob.png").shape == mask.shape
        assert images.read_image(tmp_path / "out" / f"{name}_overlay.png").shape == (*mask.shape, 3)
        row = rows[name]
        assert row["source"] == str(path) and row["status"] == "ok"
        assert (int(row["height"]), int(row["width"])) == mask.shape
        assert row["components"] == "1"
        assert float(row["foreground_fraction"]) == pytest.approx(mask.mean(), abs=0.05)
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == sorted(
        p.name for p, _ in expected.values()
    )


def test_npy_probabilities_and_postprocessing(tmp_path: Path, run: Path) -> None:
    image, _ = disk_image(64, 64)
    image[2:5, 2:5] = 255  # a bright speck: a second object unless post-processing removes it
    images.write_png(tmp_path / "speck.png", image)
    predict_files(run, [tmp_path / "speck.png"], tmp_path / "raw", save_prob="npy", progress=False)
    predict_files(
        run,
        [tmp_path / "speck.png"],
        tmp_path / "clean",
        PredictOptions(keep_largest=1),
        progress=False,
    )
    prob = np.load(tmp_path / "raw" / "speck_prob.npy")
    assert prob.shape == (64, 64) and prob.dtype == np.float32
    assert read_csv(tmp_path / "raw" / "predictions.csv")["speck"]["components"] == "2"
    assert read_csv(tmp_path / "clean" / "predictions.csv")["speck"]["components"] == "1"


def test_corrupt_file_among_good_ones(tmp_path: Path, run: Path) -> None:
    for i in range(3):
        images.write_png(tmp_path / "in" / f"good{i}.png", disk_image(30 + i, 41)[0])
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    report = predict_files(
        run, [tmp_path / "in"], tmp_path / "out", PredictOptions(batch_size=2), progress=False
    )
    assert sorted(report.written) == ["good0", "good1", "good2"]
    assert sorted(Path(p).name for p, _ in report.failed) == ["bad.png", "empty.jpg"]
    assert all(str(tmp_path / "in") in message for _, message in report.failed)
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert rows["bad"]["status"].startswith("failed: ") and rows["good1"]["status"] == "ok"
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "good0.png",
        "good1.png",
        "good2.png",
    ]
    assert exit_status(report, keep_going=False) == 1
    assert exit_status(report, keep_going=True) == 0


def test_same_stem_in_two_folders_does_not_overwrite(tmp_path: Path, run: Path) -> None:
    small, big = disk_image(30, 30)[0], disk_image(50, 40)[0]
    images.write_png(tmp_path / "left" / "scan.png", small)
    images.write_png(tmp_path / "right" / "scan.png", big)
    predict_files(run, [tmp_path / "left", tmp_path / "right"], tmp_path / "out", progress=False)
    assert images.read_image(tmp_path / "out" / "left__scan.png").shape == (30, 30)
    assert images.read_image(tmp_path / "out" / "right__scan.png").shape == (50, 40)


@pytest.mark.parametrize("out", ["in", "in/preds", "in/sub"])
def test_never_writes_into_input_folders(tmp_path: Path, run: Path, out: str) -> None:
    images.write_png(tmp_path / "in" / "sub" / "a.png", disk_image(30, 30)[0])
    inputs = [tmp_path / "in" / "sub" / "a.png"] if out == "in/sub" else [tmp_path / "in"]
    with pytest.raises(UnetError, match="predictions are never written"):
        predict_files(run, inputs, tmp_path / out, recursive=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "in").rglob("*")) == ["a.png", "sub"]


def test_bad_run_folder(tmp_path: Path) -> None:
    images.write_png(tmp_path / "a.png", disk_image(30, 30)[0])
    with pytest.raises(UnetError, match="no such run folder"):
        predict_files(tmp_path / "norun", [tmp_path / "a.png"], tmp_path / "out", progress=False)


# ---------------------------------------------------------------- CLI


def cli(*args: str) -> int:
    from unet_lowered.cli import main

    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_cli_predict_exit_status_and_keep_going(
    tmp_path: Path, run: Path, capsys: pytest.CaptureFixture
) -> None:
    images.write_png(tmp_path / "in" / "good.png", disk_image(40, 30)[0])
    (tmp_path / "in" / "bad.tif").write_bytes(b"II*\x00broken")
    assert (
        cli("predict", str(run), str(tmp_path / "in"), "--out", str(tmp_path / "o1"), "--overlay")
        == 1
    )
    err = capsys.readouterr().err
    assert "bad.tif" in err and "1 of 2 inputs failed" in err
    assert (tmp_path / "o1" / "good.png").is_file() and (
        tmp_path / "o1" / "good_overlay.png"
    ).is_file()
    code = cli(
        "predict",
        str(run),
        str(tmp_path / "in"),
        "--out",
        str(tmp_path / "o2"),
        "--keep-going",
        "--mode",
        "tile",
        "--tta",
        "--tta-transforms",
        "flips",
        "--keep-largest",
        "2",
        "--fill-holes",
        "--watershed",
        "0.95",
    )
    assert code == 0 and (tmp_path / "o2" / "good.png").is_file()
    capsys.readouterr()
    out4 = str(tmp_path / "o4")
    assert cli("predict", str(run), str(tmp_path / "in"), "--out", out4, "--watershed", "1.5") != 0
    err = capsys.readouterr().err.strip()
    assert "--watershed must be in [0, 1]" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert cli("predict", str(run), str(tmp_path / "nothing"), "--out", str(tmp_path / "o3")) == 1
    assert "nothing: no such file or folder" in capsys.readouterr().err


# ---------------------------------------------------------------- memory


@pytest.mark.slow
def test_4096_image_in_tile_mode_stays_under_2_gb(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "predict_memory.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "--size",
            "4096",
            "--work",
            str(tmp_path),
            "--max-mb",
            "2048",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def two_disks(size: int = 32) -> np.ndarray:
    """A large and a small bright disk on a dark background (uint8)."""
    yy, xx = np.mgrid[0:size, 0:size]
    big = (yy - 16) ** 2 + (xx - 10) ** 2 <= 36
    small = (yy - 16) ** 2 + (xx - 26) ** 2 <= 4
    return np.where(big | small, 200, 20).astype(np.uint8)


def test_the_runs_postprocessing_applies_by_default_and_flags_override(tmp_path: Path) -> None:
    chosen = {"keep_largest": 1, "fill_holes": False, "min_area": 0}
    run = make_run(tmp_path / "run", bright_model(), postprocess=chosen)
    images.write_png(tmp_path / "in" / "x.png", two_disks())

    def components(**options) -> int:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        predict_files(run, [tmp_path / "in"], out, PredictOptions(**options), progress=False)
        with open(out / "predictions.csv", newline="") as f:
            return int(next(csv.DictReader(f))["components"])

    assert components() == 1  # the run's choice: keep the largest object
    assert components(postprocess=False) == 2  # --no-postprocess
    assert components(keep_largest=0) == 2  # --keep-largest 0 keeps all
    assert components(postprocess=False, keep_largest=1) == 1  # a flag still applies


def test_the_runs_watershed_split_applies_by_default_and_flags_override() -> None:
    # two cells joined by a faint stretch of membrane (p = 0.7 in rows 10-14)
    prob = np.full((40, 40), 0.99, np.float32)
    prob[:, 19:21] = 0.1
    prob[10:15, 19:21] = 0.7
    probs = prob[..., None]
    config = run_config(postprocess={"watershed": 0.95, "fill_holes": False})

    def cells(**options) -> int:
        mask = probs_to_mask(probs, config, PredictOptions(**options))
        return label_components(mask, 4)[1]

    assert applied_watershed(PredictOptions(), config) == 0.95
    assert cells() == 2  # the run's choice
    assert cells(watershed=0) == 1  # --watershed 0: off
    assert cells(postprocess=False) == 1  # --no-postprocess
    assert cells(postprocess=False, watershed=0.9) == 2  # a flag still applies
    assert cells(watershed=0.6) == 1  # merge level under the gap's 0.7: joined back
    assert applied_watershed(PredictOptions(), run_config({})) is None  # a run without
    # a multi-class run is left as argmax gives it
    multi = np.concatenate([1 - probs, probs], axis=2)
    assert probs_to_mask(multi, config, PredictOptions()).max() == 1


def test_predictions_csv_flags_each_mask(tmp_path: Path) -> None:
    stats = {"objects": 2, "fraction": [0.05, 0.2], "min_ratio": 0.05, "border": 0.0}
    run = make_run(tmp_path / "run", bright_model(), mask_stats=stats)
    images.write_png(tmp_path / "in" / "two.png", two_disks())
    one = two_disks()
    one[:, 20:] = 20
    images.write_png(tmp_path / "in" / "one.png", one)
    predict_files(run, [tmp_path / "in"], tmp_path / "out", progress=False)
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert rows["two"]["quality"] == "ok"
    assert rows["one"]["quality"].startswith("check: 1 object(s), training masks have 2")


def test_predictions_csv_flags_an_object_unlike_the_training_ones_in_contrast(
    tmp_path: Path,
) -> None:
    """The image reaches the contrast rule: a bright object where training had dark ones."""
    run = make_run(tmp_path / "run", bright_model(), mask_stats=DARK_OBJECT_STATS)
    for name, image in framed_pictures().items():
        images.write_png(tmp_path / "in" / f"{name}.png", image)
    predict_files(run, [tmp_path / "in"], tmp_path / "out", progress=False)
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        flags = [r["quality"] for r in csv.DictReader(f)]
    assert len(flags) == 2
    assert all(f.startswith("check: an object's contrast with its surroundings -") for f in flags)


def test_predictions_csv_measures_the_foreground_in_the_imaged_field(tmp_path: Path) -> None:
    """A correct mask, small in its wide frame, is ``ok``: half of the imaged field."""
    run = make_run(tmp_path / "run", bright_model(), mask_stats=FRAMED_STATS)
    for name, image in framed_pictures().items():
        images.write_png(tmp_path / "in" / f"{name}.png", image)
    predict_files(run, [tmp_path / "in"], tmp_path / "out", progress=False)
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert float(rows["plain"]["foreground_fraction"]) == pytest.approx(0.5, abs=0.03)
    assert float(rows["framed"]["foreground_fraction"]) == pytest.approx(0.125, abs=0.01)
    assert rows["plain"]["quality"] == rows["framed"]["quality"] == "ok"


def test_a_large_tile_mode_image_shows_its_tiles(
    tmp_path: Path, run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bar counted files only: one huge image sat at 0/1 for minutes. Its tiles now
    get a line of their own (shown from PART_MIN tiles), removed when they are done."""
    from unet_lowered.io import progress

    lines: list[tuple[str, int, int]] = []
    part = progress.Advance.part

    def recording(self, label):
        update = part(self, label)
        return lambda done, total: (lines.append((label, done, total)), update(done, total))

    monkeypatch.setattr(progress.Advance, "part", recording)
    monkeypatch.setattr(progress, "PART_MIN", 1)
    import io

    from rich.console import Console

    from unet_lowered.inference import batch

    terminal = Console(file=io.StringIO(), force_terminal=True)  # a bar, not log lines
    monkeypatch.setattr(batch, "stderr_console", lambda: terminal)
    image, _ = disk_image(100, 90)
    images.write_png(tmp_path / "in" / "big.png", image)
    images.write_png(tmp_path / "in" / "small.png", image[:32, :32])
    options = PredictOptions(mode="tile", batch_size=2)
    predict_files(run, [tmp_path / "in"], tmp_path / "out", options, progress=True)
    big = [line for line in lines if line[0] == "tiles of big.png"]
    assert big[-1][1] == big[-1][2] > 2 and [d for _, d, _ in big] == sorted(d for _, d, _ in big)
    assert ("tiles of small.png", 1, 1) in lines


def test_a_file_name_that_is_not_utf8_is_predicted_and_listed(tmp_path: Path, run: Path) -> None:
    """A Latin-1 name (caf\\xe9.png) in a UTF-8 locale: the masks were written, then
    predictions.csv failed with a 51-line traceback ('surrogates not allowed'), and
    --resume failed the same way. The table holds the name's own bytes."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsencode(folder) + b"/caf\xe9.png"
    try:
        with open(name, "wb") as f:
            f.write(cv2.imencode(".png", disk_image(64, 64)[0])[1].tobytes())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    report = predict_files(run, [folder], tmp_path / "out", progress=False)
    assert report.written == [os.fsdecode(b"caf\xe9")]
    assert os.path.exists(os.fsencode(tmp_path / "out") + b"/caf\xe9.png")
    table = (tmp_path / "out" / "predictions.csv").read_bytes()
    assert b"\ncaf\xe9," in table and b"/caf\xe9.png," in table
