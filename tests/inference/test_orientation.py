"""``--orientation``: a flagged film predicted again turned upside down, then on its sides.

The run is :func:`dark_model` at 64 px (foreground: darker than average, as lungs are) with the
``mask_stats`` of :func:`apex_chest` pictures: two dark lungs pointed at the top, so the
training masks record a shape that is not alike upside down. The network marks the dark
pixels whichever way the film lies, so the known answer of every film is its own two
lungs, in the frame the film is stored in. What the turned look changes is the flag (an
upside-down pair is flagged by its shape, a pair on its side for not lying side by
side), which view is kept, and ``orientation``: a wrongly turned-back mask would miss
the film's lungs.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from run_fixtures import apex_chest, apex_stats, chest_stats, dark_model, make_run, run_config
from unet_lowered.errors import UnetError
from unet_lowered.evaluation.evaluate import evaluate_run
from unet_lowered.inference.batch import predict_files
from unet_lowered.inference.polarity import (
    TURNS,
    Look,
    inverted_note,
    look_notes,
    orientation_of,
    predict_seen,
    turned_look_applies,
    turned_note,
)
from unet_lowered.inference.predictor import PredictOptions
from unet_lowered.io import images

TURNED = {"upright": 0, "upside_down": 2, "left": 1, "right": 3}
"""Each film of the folder: the upright film turned this many quarters (np.rot90)."""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(
        tmp_path_factory.mktemp("orientation") / "run", dark_model(64), mask_stats=apex_stats()
    )


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """One film (72x56, not square) stored upright, upside down and on either side."""
    folder = tmp_path_factory.mktemp("films")
    film, lungs = apex_chest(seed=10)
    truth = {}
    for name, k in TURNED.items():
        images.write_png(folder / "images" / f"{name}.png", np.rot90(film, k))
        truth[name] = np.ascontiguousarray(np.rot90(lungs, k))
        images.write_png(folder / "masks" / f"{name}.png", truth[name].astype(np.uint8) * 255)
    return folder, truth


def predicted(out: Path) -> tuple[dict[str, dict[str, str]], dict[str, np.ndarray]]:
    with open(out / "predictions.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    return rows, {k: images.read_image(out / f"{k}.png") > 0 for k in rows}


@pytest.mark.parametrize("mode", ["resize", "tile"])
def test_auto_reads_a_turned_film_upright(run, films, tmp_path, mode) -> None:
    """Each film is read in the view that makes it upright (the view turned by the
    quarters that undo its turn), its mask written in the frame it is stored in."""
    folder, truth = films
    options = PredictOptions(mode=mode)
    report = predict_files(run, [folder / "images"], tmp_path / "out", options, progress=False)
    rows, masks = predicted(tmp_path / "out")
    assert {k: r["orientation"] for k, r in rows.items()} == {
        "upright": "as stored",
        "upside_down": "turned 180",
        "left": "turned 270",  # turned a quarter counterclockwise: read 3 quarters on
        "right": "turned 90",
    }
    for name, lungs in truth.items():
        assert rows[name]["quality"] == "ok", name
        assert rows[name]["gray_scale"] == "as stored" and rows[name]["components"] == "2"
        assert masks[name].shape == lungs.shape
        assert np.count_nonzero(masks[name] != lungs) < 0.05 * lungs.size, name
    turned = sorted(Path(n.split(":")[0]).stem for n in report.notes if "counterclockwise" in n)
    assert turned == ["left", "right", "upside_down"]


def test_keep_leaves_the_turned_films_flagged(run, films, tmp_path) -> None:
    folder, truth = films
    options = PredictOptions(orientation="keep")
    predict_files(run, [folder / "images"], tmp_path / "out", options, progress=False)
    rows, masks = predicted(tmp_path / "out")
    assert all(r["orientation"] == "as stored" for r in rows.values())
    assert rows["upright"]["quality"] == "ok"
    assert rows["upside_down"]["quality"] == (
        "check: the objects' shape does not look upright (-0.81 against the training masks, "
        "+0.05 or more when upright): is the image turned?"
    )
    for side in ("left", "right"):  # a pair on its side is neither upright nor upside down
        assert rows[side]["quality"] == (
            "check: the two largest objects are not side by side; the objects' shape does not "
            "look upright (+0.00 against the training masks, +0.05 or more when upright): is "
            "the image turned?"
        )
    for name, lungs in truth.items():  # the network marks the same dark pixels
        assert np.count_nonzero(masks[name] != lungs) < 0.05 * lungs.size, name


def test_a_run_without_a_recorded_shape_gets_no_turned_look(films, tmp_path) -> None:
    """Ellipse lungs are alike upside down: no shape recorded, no turned look; the films
    on their side stay flagged, and the upside-down one passes (the flag's old blind
    spot, which only a recorded shape closes)."""
    folder, _ = films
    run = make_run(tmp_path / "run", dark_model(64), mask_stats=chest_stats())
    predict_files(run, [folder / "images"], tmp_path / "out", progress=False)
    rows, _ = predicted(tmp_path / "out")
    assert all(r["orientation"] == "as stored" for r in rows.values())
    assert rows["left"]["quality"].startswith("check") and rows["upright"]["quality"] == "ok"


def test_evaluate_and_predict_seen_read_the_turned_films(run, films, tmp_path) -> None:
    from unet_lowered.io.runs import load_run

    folder, _ = films
    summary = evaluate_run(run, folder, tmp_path / "ev", progress=False)
    assert summary["read_turned"] == {
        "left": "turned 270",
        "right": "turned 90",
        "upside_down": "turned 180",
    }
    assert summary["settings"]["orientation"] == "auto"
    with open(tmp_path / "ev" / "per_image.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert rows["upside_down"]["orientation"] == "turned 180"
    # every film scores exactly what the upright one does (the lungs' blurred rims
    # are darker than the mean too)
    assert {r["dice"] for r in rows.values()} == {rows["upright"]["dice"]}
    assert float(rows["upright"]["dice"]) > 0.9
    keep = evaluate_run(
        run, folder, tmp_path / "keep", PredictOptions(orientation="keep"), progress=False
    )
    assert keep["read_turned"] == {} and keep["settings"]["orientation"] == "keep"
    loaded = load_run(run)
    batch = [images.read_image(folder / "images" / f"{k}.png") for k in TURNED]
    seen = predict_seen(loaded.model(), batch, loaded.config, PredictOptions())
    assert [s.orientation for s in seen] == ["as stored", "turned 180", "turned 270", "turned 90"]
    for s, image in zip(seen, batch, strict=True):
        mask = s.probs[..., 0] > 0.5
        assert mask.shape == image.shape[:2]
        assert s.quality(mask, loaded.config) == "ok"  # taken as the network read it


def test_which_runs_get_the_turned_look() -> None:
    lungs = apex_stats()
    auto, keep = PredictOptions(), PredictOptions(orientation="keep")
    assert turned_look_applies(run_config(mask_stats=lungs), auto)
    assert turned_look_applies(run_config(mask_stats=lungs, channels=3), auto)
    assert not turned_look_applies(run_config(mask_stats=lungs), keep)
    assert not turned_look_applies(run_config(mask_stats=lungs, num_classes=2), auto)
    assert not turned_look_applies(run_config(mask_stats=chest_stats()), auto)  # no shape
    assert not turned_look_applies(run_config(), auto)  # no training statistics
    assert not turned_look_applies(run_config(mask_stats={**lungs, "objects": None}), auto)


def test_names_notes_and_a_bad_value() -> None:
    assert [orientation_of(k) for k in (0, 1, 2, 3, 4)] == [
        "as stored",
        "turned 90",
        "turned 180",
        "turned 270",
        "as stored",
    ]
    assert TURNS == (2, 1, 3)  # upside down first
    upside_down = Look(False, turns=2)
    assert look_notes("a.png", upside_down, "auto") == [turned_note("a.png", 2)]
    assert look_notes("a.png", Look(True), "auto") == [inverted_note("a.png")]
    assert look_notes("a.png", Look(True), "invert") == []  # inverted on request
    assert look_notes("a.png", Look(False), "auto") == []
    both = look_notes("a.png", Look(True, turns=1), "auto", ("p=keep", "o=keep"))
    assert len(both) == 1 and both[0].endswith("; p=keep or o=keep turns this off")
    note = turned_note("scans/a.png", 2)
    assert note.startswith("scans/a.png: read turned 180 degrees counterclockwise")
    assert note.endswith("--orientation keep turns this off") and "\n" not in note
    with pytest.raises(UnetError, match="unknown --orientation 'sideways'; use one of: auto, keep"):
        PredictOptions(orientation="sideways").validate()


def test_a_multi_class_run_reads_a_turned_film_upright(films, tmp_path) -> None:
    """Two classes (background, lungs; softmax): the flag reads each class and the shape
    of the foreground, so an upside-down film is read turned as in a one-class run."""
    from run_fixtures import bright_model
    from unet_lowered.inference.quality import class_mask_stats

    model = bright_model(64, num_classes=2)  # class 1: 10 z; negated: the dark pixels
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([-kernel, bias])
    pairs = [apex_chest(seed=k) for k in range(6)]
    union, per_class = class_mask_stats(
        (m.astype(np.uint8) for _, m in pairs), (im for im, _ in pairs), 2
    )
    stats = {**union.to_json(), "classes": {"1": per_class[1].to_json()}}
    run = make_run(tmp_path / "run", model, mask_stats=stats, label_values=[0, 255])
    assert turned_look_applies(run_config(num_classes=2, mask_stats=stats), PredictOptions())
    folder, truth = films
    predict_files(run, [folder / "images"], tmp_path / "out", progress=False)
    rows, masks = predicted(tmp_path / "out")
    assert rows["upside_down"]["orientation"] == "turned 180"
    assert rows["left"]["orientation"] == "turned 270"
    assert all(r["quality"] == "ok" for r in rows.values())
    for name, lungs in truth.items():
        assert np.count_nonzero(masks[name] != lungs) < 0.05 * lungs.size, name
    keep = tmp_path / "keep"
    predict_files(
        run, [folder / "images"], keep, PredictOptions(orientation="keep"), progress=False
    )
    flag = predicted(keep)[0]["upside_down"]["quality"]
    assert flag.startswith("check: the objects' shape does not look upright (-")
    assert not turned_look_applies(
        run_config(num_classes=2, mask_stats=union.to_json()), PredictOptions()
    )


def test_a_film_inverted_and_turned_is_read_both_ways(run, tmp_path) -> None:
    """A film with its gray scale inverted and stored upside down or on its side passes
    in no view of one change alone; the inverted views turned come last and read it,
    each look only when its option is ``auto``."""
    film, lungs = apex_chest(seed=10)
    folder = tmp_path / "images"
    for name, k in (("upside_down", 2), ("left", 1)):
        images.write_png(folder / f"{name}.png", np.rot90(255 - film, k))
    runs = {
        "auto": PredictOptions(),
        "polarity keep": PredictOptions(polarity="keep"),
        "orientation keep": PredictOptions(orientation="keep"),
    }
    read = {}
    for label, options in runs.items():
        report = predict_files(run, [folder], tmp_path / label, options, progress=False)
        rows, masks = predicted(tmp_path / label)
        read[label] = {
            k: (r["gray_scale"], r["orientation"], r["quality"]) for k, r in rows.items()
        }
        if label == "auto":
            for name, k in (("upside_down", 2), ("left", 1)):
                truth = np.rot90(lungs, k)
                assert np.count_nonzero(masks[name] != truth) < 0.05 * truth.size, name
            assert sorted(report.notes) == [  # one note each, naming both changes
                f"{folder / name}.png: read with its gray scale inverted and turned {deg} "
                "degrees counterclockwise: the mask as stored was flagged, and so were those "
                "of the image inverted or turned alone; the image inverted and turned passes "
                "(a MONOCHROME1 film saved without its look-up table, stored upside down or "
                "on its side?); the mask is written the way the image is stored; "
                "--polarity keep or --orientation keep turns this off"
                for name, deg in (("left", 270), ("upside_down", 180))
            ]
    assert read["auto"] == {
        "upside_down": ("inverted", "turned 180", "ok"),
        "left": ("inverted", "turned 270", "ok"),
    }
    for label in ("polarity keep", "orientation keep"):  # one look alone reads neither
        assert all(
            g == "as stored" and o == "as stored" and q.startswith("check")
            for g, o, q in read[label].values()
        ), label


def test_a_film_mirrored_top_to_bottom_is_read_mirrored(tmp_path, monkeypatch) -> None:
    """A handed run (the image-left lung the larger in every training mask): a film
    stored mirrored top to bottom reads as upside down, and turned 180 degrees it is
    upright with its heart on the other side. A trained network is less sure of that
    anatomy (JSRT: 30 of 30 films); here the probabilities of a view whose larger lung
    lies on the image's right are made less sure the same way (logits scaled by 0.7),
    since :func:`dark_model` segments every view alike. The mirrored view is kept for
    the mirrored film; the film stored upside down keeps its turned view, and a run
    whose masks are not handed gets no mirrored view."""
    from unet_lowered.inference import polarity

    real = polarity.predict_prepared

    def surer_of_the_anatomy(model, inputs, config, options):
        out = []
        for x, p in zip(inputs, real(model, inputs, config, options), strict=True):
            dark = x[..., 0] < 0  # the lungs, in the view the network reads
            half = dark.shape[1] // 2
            if dark[:, :half].sum() < dark[:, half:].sum():
                q = np.clip(p, 1e-6, 1 - 1e-6)
                p = 1 / (1 + np.exp(-0.7 * np.log(q / (1 - q))))
            out.append(p.astype(np.float32))
        return out

    monkeypatch.setattr(polarity, "predict_prepared", surer_of_the_anatomy)
    film, lungs = apex_chest(seed=10, heart=0.1)
    folder = tmp_path / "images"
    images.write_png(folder / "mirrored.png", film[::-1])
    images.write_png(folder / "upside_down.png", np.rot90(film, 2))
    truth = {"mirrored": lungs[::-1], "upside_down": np.rot90(lungs, 2)}
    read = {}
    for label, heart in (("handed", 0.1), ("not handed", 0.0)):
        run = make_run(tmp_path / label, dark_model(64), mask_stats=apex_stats(heart=heart))
        report = predict_files(run, [folder], tmp_path / f"out {label}", PredictOptions(),
                               progress=False)  # fmt: skip
        rows, masks = predicted(tmp_path / f"out {label}")
        read[label] = {k: (r["orientation"], r["quality"]) for k, r in rows.items()}
        for name, want in truth.items():  # the stored frame's lungs, either way
            # dark_model's masks take in the lungs' blurred rim (5% of the film here);
            # a mask left in the wrong frame differs by 13-23%
            assert np.count_nonzero(masks[name] != want) < 0.07 * want.size, (label, name)
        if label == "handed":
            assert f"{folder / 'mirrored'}.png: read mirrored top to bottom: the mask" in (
                " ".join(report.notes)
            )
    assert read["handed"] == {
        "mirrored": ("mirrored top to bottom", "ok"),
        "upside_down": ("turned 180", "ok"),
    }
    assert read["not handed"] == {
        "mirrored": ("turned 180", "ok"),
        "upside_down": ("turned 180", "ok"),
    }


def test_mirrored_views_turn_back_and_are_named() -> None:
    from unet_lowered.inference.polarity import (
        MIRRORED_TOP_TO_BOTTOM,
        read_frame,
        stored_frame,
    )

    a = np.arange(12).reshape(3, 4)
    assert np.array_equal(read_frame(a, 4), a[:, ::-1])
    assert np.array_equal(read_frame(a, MIRRORED_TOP_TO_BOTTOM), a[::-1])
    for view in range(8):  # every view of the square's symmetries turns back
        assert np.array_equal(stored_frame(read_frame(a, view), view), a), view
    assert orientation_of(MIRRORED_TOP_TO_BOTTOM) == "mirrored top to bottom"
    assert turned_note("a.png", MIRRORED_TOP_TO_BOTTOM).startswith(
        "a.png: read mirrored top to bottom: the mask as stored was flagged"
    )
    look = Look(True, turns=MIRRORED_TOP_TO_BOTTOM)
    (note,) = look_notes("a.png", look, "auto")
    assert note.startswith("a.png: read with its gray scale inverted and mirrored top to bottom: ")
    assert "the image inverted and mirrored passes" in note
    assert "digitised from its back?" in note
    # Mirrored over an inverted read that passed, unsurely: two notes, each true.
    doubted = Look(True, turns=MIRRORED_TOP_TO_BOTTOM, over=0)
    inverted, mirrored = look_notes("a.png", doubted, "auto")
    assert inverted == inverted_note("a.png")
    assert mirrored.startswith("a.png: read mirrored top to bottom: the mask of the image ")
    assert look_notes("a.png", doubted, "keep") == [mirrored]


def test_a_mirrored_film_that_passes_as_stored_is_read_mirrored_when_unsure(
    tmp_path, monkeypatch
) -> None:
    """A film mirrored top to bottom can pass the flag as stored: on JSRT the network
    painted lungs that look upright on one such film, unsurely (an unsure share 3.6
    times the run's validation median, Dice 0.78). The network here does the same: on a
    view whose dark pixels are wider at the top (upside down) it marks them turned
    upright, less surely (logits halved). A handed run reads that film mirrored top to
    bottom when its unsure share (0.33) is above :data:`MIRROR_UNSURE` times the run's
    ``val_unsure``, and only then: the upright film (0.14) gets no second call, and
    neither does the mirrored one for a run whose validation masks were as unsure, or
    one that recorded no ``val_unsure``. The contrast rule is off (no recorded
    contrast), as it would flag the painted lungs on this film."""
    from unet_lowered.inference import batch, polarity

    real, calls = polarity.predict_prepared, []

    def paints_upright(model, inputs, config, options, on_tiles=None):
        calls.append(len(inputs))
        out = []
        for x, p in zip(inputs, real(model, inputs, config, options), strict=True):
            dark = x[..., 0] < 0
            if dark[: len(dark) // 2].sum() > dark[len(dark) // 2 :].sum():  # upside down
                q = np.clip(p[::-1], 1e-6, 1 - 1e-6)
                p = 1 / (1 + np.exp(-0.5 * np.log(q / (1 - q))))
            out.append(np.ascontiguousarray(p, np.float32))
        return out

    for module in (batch, polarity):  # the first read, and the second looks
        monkeypatch.setattr(module, "predict_prepared", paints_upright)
    film, lungs = apex_chest(seed=10, heart=0.1)
    folder = tmp_path / "images"
    images.write_png(folder / "a_mirrored.png", film[::-1])
    images.write_png(folder / "b_upright.png", film)
    stats = {**apex_stats(heart=0.1), "contrast": None}
    read, extra = {}, {}
    for label, val_unsure in (("unsure", 0.1), ("as unsure", 0.2), ("not recorded", None)):
        run = make_run(tmp_path / label, dark_model(64),
                       mask_stats={**stats, "val_unsure": val_unsure})  # fmt: skip
        calls.clear()
        report = predict_files(run, [folder], tmp_path / f"out {label}", PredictOptions(),
                               progress=False)  # fmt: skip
        rows, masks = predicted(tmp_path / f"out {label}")
        read[label] = {k: (r["orientation"], r["quality"]) for k, r in rows.items()}
        extra[label] = calls[1:]  # after the first read of both films
        if label == "unsure":
            assert report.notes == [
                f"{folder / 'a_mirrored'}.png: read mirrored top to bottom: the mask of the "
                "image unmirrored passed the flag, but the network was unsure of it (over 2 "
                "times as unsure as of its validation images); the mirrored image's passes, "
                "and the network is surer of it (a film digitised from its back, upside "
                "down?); the mask is written the way the image is stored; --orientation keep "
                "turns this off"
            ]
            # the mask is the film's own lungs, in its stored frame; the painted ones
            # (upright) differ from them by 11% of the film
            want = lungs[::-1]
            assert np.count_nonzero(masks["a_mirrored"] != want) < 0.07 * want.size
            assert np.count_nonzero(lungs != want) > 0.1 * want.size
    assert read["unsure"] == {
        "a_mirrored": ("mirrored top to bottom", "ok"),
        "b_upright": ("as stored", "ok"),
    }
    assert extra["unsure"] == [1]  # the mirrored film alone, once
    for label in ("as unsure", "not recorded"):  # (its flag at the film's own size: check)
        assert {k: o for k, (o, _) in read[label].items()} == {
            "a_mirrored": "as stored",
            "b_upright": "as stored",
        }
        assert extra[label] == []


def anatomy_film(seed: int, heart: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`apex_chest` (the image-left lung the larger) labelled as the JSRT anatomy
    labels are: 1 the lung on the image's left, 2 the one on its right, and with
    ``heart`` 3 a mid-gray disk low and right of the middle, as a heart lies."""
    import cv2

    film, lungs = apex_chest(seed=seed, heart=0.1)
    h, w = lungs.shape
    count, parts = cv2.connectedComponents(lungs.astype(np.uint8))
    labels = np.zeros((h, w), np.uint8)
    for k in range(1, count):
        labels[parts == k] = 1 if np.nonzero(parts == k)[1].mean() < w / 2 else 2
    if heart:
        disk = np.zeros((h, w), np.uint8)
        cv2.circle(disk, (round(0.56 * w), round(0.72 * h)), round(0.08 * w), 1, -1)
        film[(disk > 0) & ~lungs], labels[(disk > 0) & ~lungs] = 130, 3
    return film, labels


def reads_by_position(surer_upright: bool):
    """A network that labels as the anatomy run learnt to: the darkest pixels are lung,
    class 1 left of the view's middle and 2 right of it (with two classes, both 1); the
    largest mid-gray part is heart (3).
    With ``surer_upright``, less sure (the rims' probabilities pulled halfway to
    uniform) of a view whose larger lung lies on its right, as a trained network is of
    mirrored anatomy."""
    import cv2
    from scipy.ndimage import maximum_filter, minimum_filter

    def predict(model, inputs, config, options, on_tiles=None):
        out = []
        for x in inputs:
            v = x[..., 0]
            t = (v - v.min()) / max(float(v.max() - v.min()), 1e-6)
            dark, mid = t < 0.3, (t > 0.4) & (t < 0.6)
            mid = cv2.morphologyEx(mid.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3)))
            classes = np.zeros(v.shape, np.int64)
            count, parts = cv2.connectedComponents(dark.astype(np.uint8))
            sizes = {}
            for k in range(1, count):
                side = 1 if np.nonzero(parts == k)[1].mean() < v.shape[1] / 2 else 2
                sizes[side] = sizes.get(side, 0) + int((parts == k).sum())
                classes[parts == k] = 1 if config.num_classes == 2 else side  # 2: no side
            if config.num_classes == 4:  # the largest mid-gray part (lungs' rims are too)
                count, parts = cv2.connectedComponents(mid)
                if count > 1:
                    largest = 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
                    classes[parts == largest] = 3
            p = np.full((*v.shape, config.num_classes), 0.01, np.float32)
            np.put_along_axis(p, classes[..., None], 1.0 - 0.01 * (config.num_classes - 1), -1)
            if surer_upright and sizes.get(2, 0) > sizes.get(1, 0):  # unsure rims
                rim = (classes > 0) & (maximum_filter(classes, 3) != minimum_filter(classes, 3))
                p[rim] = 0.5 * p[rim] + 0.5 / config.num_classes
            out.append(p)
        return out

    return predict


@pytest.mark.parametrize("heart", [True, False])
def test_a_multi_class_run_reads_a_mirrored_film_back(tmp_path, monkeypatch, heart) -> None:
    """A run whose classes name the image's sides (JSRT anatomy: 1 the lung on the
    image's left): a film mirrored top to bottom, turned 180 degrees, is upright but
    with its lungs' sides swapped, so its classes come out swapped in the stored frame.
    With a heart class, the heart's position flags that view (as on 27 of 30 films of
    the anatomy run), and the mirrored view is the first that passes. Without one the
    turned view passes, and the mirrored view is kept as the network is surer of it.
    The film stored upside down is read turned 180 either way. A run whose classes
    name no side (class 1: both lungs) reads the mirrored film turned 180 (its classes
    are not swapped by it)."""
    from unet_lowered.inference import batch, polarity
    from unet_lowered.inference.quality import class_mask_stats

    classes = 4 if heart else 3
    network = reads_by_position(surer_upright=not heart)
    for module in (batch, polarity):
        monkeypatch.setattr(module, "predict_prepared", network)
    pairs = [anatomy_film(k, heart) for k in range(6)]
    union, per_class = class_mask_stats((m for _, m in pairs), (im for im, _ in pairs), classes)
    stats = {**union.to_json(), "classes": {str(c): s.to_json() for c, s in per_class.items()}}
    run = make_run(tmp_path / "run", class_model(classes), mask_stats=stats)
    film, labels = anatomy_film(10, heart)
    folder = tmp_path / "images"
    images.write_png(folder / "mirrored.png", film[::-1])
    images.write_png(folder / "upside_down.png", np.rot90(film, 2))
    report = predict_files(run, [folder], tmp_path / "out", progress=False)
    rows, _ = predicted(tmp_path / "out")
    read = {k: r["orientation"] for k, r in rows.items()}
    assert read == {"mirrored": "mirrored top to bottom", "upside_down": "turned 180"}
    for row in rows.values():  # (the small heart's rim, at the film's size, may be unsure)
        assert re.fullmatch(r"ok|check: class 3: unsure area \d+% of the mask's", row["quality"])
    truth = {"mirrored": labels[::-1], "upside_down": np.rot90(labels, 2)}
    for name, want in truth.items():  # the classes, each where the film has it
        got = images.read_image(tmp_path / "out" / f"{name}.png")
        values = np.unique(got)
        assert len(values) == classes, name
        got = np.searchsorted(values, got)  # the written label values, as class indices
        # the network's rims differ from the truth's by 4% of the film; the lungs'
        # classes swapped would differ by a fifth
        assert np.count_nonzero(got != want) < 0.06 * want.size, name
        swapped = np.where(want == 1, 2, np.where(want == 2, 1, want))
        assert np.count_nonzero(got != swapped) > 0.2 * want.size, name
    how = ("the mask as stored was flagged, and so were those of the image turned" if heart
           else "the mirrored image's passes, and the network is surer of it than of the image turned")  # fmt: skip
    assert how in " ".join(report.notes)
    if not heart:  # both lungs one class: no side named (the network still surer upright)
        both = [(im, (m > 0).astype(np.uint8)) for im, m in pairs]
        union, per_class = class_mask_stats((m for _, m in both), (im for im, _ in both), 2)
        sideless = {**union.to_json(), "classes": {"1": per_class[1].to_json()}}
        monkeypatch.setattr(polarity, "predict_prepared", reads_by_position(surer_upright=True))
        run = make_run(tmp_path / "sideless", class_model(2), mask_stats=sideless)
        predict_files(run, [folder], tmp_path / "out2", progress=False)
        assert predicted(tmp_path / "out2")[0]["mirrored"]["orientation"] == "turned 180"


def class_model(classes: int):
    """The run's saved model (replaced by :func:`reads_by_position` here): ``classes``
    outputs at 128 px, so that the small heart's rim stays thin at the film's size."""
    from run_fixtures import bright_model

    return bright_model(128, num_classes=classes)


def test_polarity_invert_still_reads_an_upside_down_film_upright(run: Path, tmp_path: Path) -> None:
    """--polarity invert with a film both inverted and stored upside down: the turned
    views are still tried, on the inverted image."""
    film, lungs = apex_chest(seed=10)
    images.write_png(tmp_path / "in" / "f.png", (255 - np.rot90(film, 2)).astype(film.dtype))
    options = PredictOptions(polarity="invert")
    predict_files(run, [tmp_path / "in"], tmp_path / "out", options, progress=False)
    rows, masks = predicted(tmp_path / "out")
    assert rows["f"]["orientation"] == "turned 180" and rows["f"]["quality"] == "ok"
    truth = np.rot90(lungs, 2)
    assert np.count_nonzero(masks["f"] != truth) < 0.05 * truth.size
