"""``unet serve`` endpoints through FastAPI's TestClient: known answers, bad input, limits."""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from run_fixtures import (
    DARK_OBJECT_STATS,
    FRAMED_STATS,
    apex_chest,
    apex_stats,
    bright_model,
    chest_picture,
    chest_stats,
    dark_model,
    disk_image,
    framed_pictures,
    make_run,
)

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")

from fastapi.testclient import TestClient

import unet_lowered
from unet_lowered.inference.overlay import overlay
from unet_lowered.inference.predictor import PredictOptions
from unet_lowered.io import images
from unet_lowered.serve.app import (
    RESULT_HEADER,
    STATIC_DIR,
    ServeSettings,
    create_app,
)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG bytes of a gray or RGB array."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a PNG"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def upload(data: bytes, name: str = "scan.png", field: str = "file") -> dict[str, Any]:
    return {field: (name, data, "application/octet-stream")}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk claiming ``width x height``, and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def two_disks(height: int = 80, width: int = 120) -> np.ndarray:
    """Two bright disks of different sizes, the big one with a dark hole."""
    image = np.full((height, width), 30, np.uint8)
    cv2.circle(image, (35, 40), 22, 220, -1)
    cv2.circle(image, (35, 40), 4, 30, -1)
    cv2.circle(image, (95, 40), 10, 220, -1)
    return image


# ---------------------------------------------------------------- known answers


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_model_facts(client: TestClient, run: Path) -> None:
    facts = client.get("/v1/model").json()
    assert facts["run"] == str(run) and facts["run_name"] == "run"
    assert facts["num_classes"] == 1 and facts["label_values"] is None
    assert facts["image_size"] == [32, 32] and facts["channels"] == 1
    assert facts["threshold"] == 0.5 and facts["input_mode"] == "resize"
    assert facts["resize_size"] == facts["image_size"]  # same padding: resized to the input
    assert facts["precision"] == "float32"
    assert facts["validation_dice"] == 0.9123 and facts["validation_iou"] == 0.8391
    assert facts["best_epoch"] == 7
    assert facts["prediction"] == {
        "mode": "resize",
        "threshold": 0.5,
        "keep_largest": None,
        "fill_holes": False,
        "min_area": 0,
        "watershed": None,
        "postprocess": True,
        "tta": None,  # the group applied: none chosen for this run
        "polarity": "auto",
        "second_look": False,  # no training statistics: no flag to decide by
        "orientation": "auto",
        "turned_look": False,  # nor a shape of the training masks
    }
    assert facts["postprocess_chosen"] is None and facts["mask_stats"] is None
    assert facts["versions"]["serving"]["unet_lowered"] == unet_lowered.__version__
    assert facts["versions"]["trained_with"]["config_version"] == 1
    assert facts["limits"] == {
        "max_upload_mb": 64.0,
        "max_pixels": 100_000_000,
        "max_passes": 125_000,  # 128 megapixels of network input, in 32x32 tiles
        "workers": 1,
        "queue": 8,
        "uploads": 13,  # workers + queue + 4
    }


def test_model_facts_without_metrics(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", bright_model(32), threshold=0.3)
    with TestClient(create_app(run)) as c:
        facts = c.get("/v1/model").json()
    assert facts["validation_dice"] is None and facts["best_epoch"] is None
    assert facts["threshold"] == 0.3 and facts["prediction"]["threshold"] == 0.3


def test_the_quality_flag_measures_the_foreground_in_the_imaged_field(tmp_path: Path) -> None:
    """A correct mask, small in its wide frame, is ``ok`` (half of the imaged field)."""
    run = make_run(tmp_path / "run", bright_model(), mask_stats=FRAMED_STATS)
    with TestClient(create_app(run)) as c:
        for name, image in framed_pictures().items():
            figures = c.post("/v1/segment", files=upload(png_bytes(image), f"{name}.png"))
            assert figures.json()["quality"] == "ok", name
    # The image reaches the contrast rule too: a bright object where training had dark ones.
    dark = make_run(tmp_path / "dark", bright_model(), mask_stats=DARK_OBJECT_STATS)
    with TestClient(create_app(dark)) as c:
        for name, image in framed_pictures().items():
            figures = c.post("/v1/segment", files=upload(png_bytes(image), f"{name}.png"))
            flag = figures.json()["quality"]
            assert flag.startswith("check: an object's contrast with its surroundings -"), name


def test_an_inverted_film_is_read_the_right_way_round(tmp_path: Path) -> None:
    """polarity=auto (the default): the mask of the film as stored, and a note saying so;
    polarity=keep: the inverted film's own mask, flagged."""
    run = make_run(tmp_path / "run", dark_model(), mask_stats=chest_stats())
    film, _ = chest_picture(seed=10)
    with TestClient(create_app(run)) as c:
        stored = c.post("/v1/segment?format=png", files=upload(png_bytes(film), "film.png"))
        inverted = c.post("/v1/segment?format=png", files=upload(png_bytes(255 - film), "inv.png"))
        assert decode(inverted.content).tolist() == decode(stored.content).tolist()
        figures = json.loads(inverted.headers["X-Unet-Result"])
        assert figures["gray_scale"] == "inverted" and figures["quality"] == "ok"
        assert figures["notes"] == [
            "inv.png: read with its gray scale inverted: the mask as stored was flagged, the "
            "inverted image's passes (a MONOCHROME1 film saved without its look-up table?); "
            "polarity=keep turns this off"
        ]
        assert json.loads(stored.headers["X-Unet-Result"])["gray_scale"] == "as stored"
        assert c.get("/v1/model").json()["prediction"]["second_look"] is True
        kept = c.post("/v1/segment?polarity=keep", files=upload(png_bytes(255 - film), "inv.png"))
        assert kept.json()["gray_scale"] == "as stored"
        assert kept.json()["quality"].startswith("check: 1 object(s), training masks have 2")
        bad = c.post("/v1/segment?polarity=sideways", files=upload(png_bytes(film)))
        assert bad.status_code == 400 and "polarity" in bad.json()["error"]


def test_an_upside_down_film_is_read_turned(tmp_path: Path) -> None:
    """orientation=auto (the default): the film's own lungs, the way it is stored, read
    turned 180 degrees, with a note; orientation=keep: flagged by its shape."""
    run = make_run(tmp_path / "run", dark_model(64), mask_stats=apex_stats())
    film, _ = apex_chest(seed=10)
    upside_down = np.ascontiguousarray(film[::-1, ::-1])
    with TestClient(create_app(run)) as c:
        stored = c.post("/v1/segment?format=png", files=upload(png_bytes(film), "film.png"))
        turned = c.post("/v1/segment?format=png", files=upload(png_bytes(upside_down), "ud.png"))
        assert decode(turned.content)[::-1, ::-1].tolist() == decode(stored.content).tolist()
        figures = json.loads(turned.headers["X-Unet-Result"])
        assert figures["orientation"] == "turned 180" and figures["quality"] == "ok"
        assert figures["notes"] == [
            "ud.png: read turned 180 degrees counterclockwise: the mask as stored was "
            "flagged, the turned image's passes (a film stored upside down or on its side?); "
            "the mask is written the way the image is stored; orientation=keep turns this off"
        ]
        assert json.loads(stored.headers["X-Unet-Result"])["orientation"] == "as stored"
        assert c.get("/v1/model").json()["prediction"]["turned_look"] is True
        kept = c.post("/v1/segment?orientation=keep", files=upload(png_bytes(upside_down)))
        assert kept.json()["orientation"] == "as stored"
        assert kept.json()["quality"].startswith("check: the objects' shape does not look")
        bad = c.post("/v1/segment?orientation=sideways", files=upload(png_bytes(film)))
        assert bad.status_code == 400 and "orientation" in bad.json()["error"]


@pytest.mark.parametrize("kind", ["png8", "png16", "jpeg", "tiff", "bmp", "dicom"])
def test_outputs_identical_to_unet_predict(
    client: TestClient, run: Path, format_files: dict[str, Path], reference, kind: str
) -> None:
    """Mask, overlay and probability PNGs equal ``unet predict``'s pixel for pixel."""
    path = format_files[kind]
    expected = reference(run, path)
    data = path.read_bytes()
    figures = client.post("/v1/segment", files=upload(data, path.name)).json()
    row = expected["row"]
    assert (figures["width"], figures["height"]) == (int(row["width"]), int(row["height"]))
    assert figures["foreground_fraction"] == float(row["foreground_fraction"])
    assert figures["components"] == int(row["components"]) == 1
    assert figures["quality"] == row["quality"] == "ok"
    assert figures["seconds"] >= 0
    assert re.fullmatch(r"[0-9a-f]{12}", figures["id"])
    for fmt, key in [("png", "mask"), ("overlay", "overlay"), ("prob", "prob")]:
        r = client.post(f"/v1/segment?format={fmt}", files=upload(data, path.name))
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        got = decode(r.content)
        assert got.dtype == expected[key].dtype and got.shape == expected[key].shape, fmt
        np.testing.assert_array_equal(got, expected[key], err_msg=f"{kind} {fmt}")
        header = json.loads(r.headers[RESULT_HEADER])
        assert header["foreground_fraction"] == figures["foreground_fraction"]
    assert set(np.unique(expected["mask"])) == {0, 255}


def test_notes_name_the_upload(client: TestClient, tmp_path: Path) -> None:
    import tifffile

    first, _ = disk_image(40, 50, seed=1)
    tifffile.imwrite(tmp_path / "pages.tif", np.stack([first, 255 - first]))
    r = client.post("/v1/segment", files=upload((tmp_path / "pages.tif").read_bytes(), "s.tif"))
    assert r.status_code == 200
    (note,) = r.json()["notes"]
    assert note.startswith("s.tif: multi-page TIFF with 2 frames; the first frame is used")
    expected = client.post("/v1/segment", files=upload(png_bytes(first))).json()
    assert r.json()["foreground_fraction"] == expected["foreground_fraction"]
    assert expected["notes"] == []


def test_query_options_are_unet_predicts(
    client: TestClient, run: Path, reference, tmp_path: Path
) -> None:
    path = tmp_path / "disks.png"
    images.write_png(path, two_disks())
    plain = client.post("/v1/segment", files=upload(path.read_bytes())).json()
    assert plain["components"] == 2
    query = "threshold=0.7&keep_largest=1&fill_holes=true&min_area=5"
    r = client.post(f"/v1/segment?format=png&{query}", files=upload(path.read_bytes()))
    expected = reference(run, path, threshold=0.7, keep_largest=1, fill_holes=True, min_area=5)
    np.testing.assert_array_equal(decode(r.content), expected["mask"])
    figures = json.loads(r.headers[RESULT_HEADER])
    assert figures["components"] == 1
    assert figures["foreground_fraction"] == float(expected["row"]["foreground_fraction"])
    assert figures["foreground_fraction"] > plain["foreground_fraction"] / 2  # hole filled


def test_server_defaults_apply_and_queries_override_them(app_for, tmp_path: Path) -> None:
    c = app_for(ServeSettings(options=PredictOptions(keep_largest=1, threshold=0.6)))
    assert c.get("/v1/model").json()["prediction"]["keep_largest"] == 1
    data = png_bytes(two_disks())
    assert c.post("/v1/segment", files=upload(data)).json()["components"] == 1
    assert c.post("/v1/segment?keep_largest=0", files=upload(data)).json()["components"] == 2


def test_the_runs_chosen_postprocessing_and_quality_flag_are_unet_predicts(
    tmp_path: Path, reference
) -> None:
    """A run whose config.json records a chosen post-processing and training-mask stats."""
    chosen = {"keep_largest": 1, "fill_holes": True, "min_area": 0}
    stats = {"objects": 2, "fraction": [0.1, 0.3], "min_ratio": 0.8, "border": 0.0}
    run = make_run(tmp_path / "run", bright_model(32), postprocess=chosen, mask_stats=stats)
    path = tmp_path / "disks.png"
    images.write_png(path, two_disks())
    with TestClient(create_app(run)) as c:
        facts = c.get("/v1/model").json()
        assert facts["postprocess_chosen"] == chosen and facts["mask_stats"] == stats
        assert facts["prediction"]["keep_largest"] == 1 and facts["prediction"]["fill_holes"]
        for query, options in [
            ("", {}),
            ("&postprocess=false", {"postprocess": False}),
            ("&keep_largest=0", {"keep_largest": 0}),
            ("&postprocess=false&fill_holes=true", {"postprocess": False, "fill_holes": True}),
            ("&watershed=0.9", {"watershed": 0.9}),
        ]:
            r = c.post(f"/v1/segment?format=png{query}", files=upload(path.read_bytes()))
            expected = reference(run, path, **options)
            np.testing.assert_array_equal(decode(r.content), expected["mask"], err_msg=query)
            figures = json.loads(r.headers[RESULT_HEADER])
            assert figures["components"] == int(expected["row"]["components"]), query
            assert figures["quality"] == expected["row"]["quality"], query
            assert figures["quality"].startswith("check: "), figures["quality"]
        bad = c.post("/v1/segment?watershed=1.5", files=upload(path.read_bytes()))
        assert bad.status_code == 400
        assert bad.json()["error"].startswith("watershed must be in [0, 1]")
    assert [
        int(reference(run, path, **o)["row"]["components"]) for o in ({}, {"keep_largest": 0})
    ] == [1, 2]


def test_tta(client: TestClient) -> None:
    data = png_bytes(disk_image(40, 50)[0])
    r = client.post("/v1/segment?tta=true", files=upload(data))
    assert r.status_code == 400 and "trained without flips" in r.json()["error"]
    assert "tta_transforms" in r.json()["error"] and "--" not in r.json()["error"]
    plain = client.post("/v1/segment?format=png", files=upload(data))
    flipped = client.post("/v1/segment?format=png&tta=1&tta_transforms=lr", files=upload(data))
    assert flipped.status_code == 200  # the 1x1 model is flip-equivariant: same mask
    np.testing.assert_array_equal(decode(flipped.content), decode(plain.content))


def test_options_sent_as_form_fields_are_refused_not_ignored(client: TestClient) -> None:
    data = png_bytes(disk_image(40, 50)[0])
    r = client.post("/v1/segment", files=upload(data), data={"threshold": "0.9"})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == (
        "unexpected field(s) in the upload: threshold; send only the image as "
        "file=@scan.png, options in the query string (/v1/segment?threshold=0.4)"
    )


def test_a_request_turns_off_the_servers_tta_group(app_for) -> None:
    c = app_for(ServeSettings(options=PredictOptions(tta_transforms="lr")))
    assert c.get("/v1/model").json()["prediction"]["tta"] == "lr"  # the group turns TTA on
    data = png_bytes(disk_image(40, 50)[0])
    assert c.post("/v1/segment?tta=false", files=upload(data)).status_code == 200


def test_preview_is_the_overlays_base_image(client: TestClient, format_files) -> None:
    path = format_files["png16"]
    r = client.post("/v1/preview", files=upload(path.read_bytes(), path.name))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    image = images.read_image(path)
    np.testing.assert_array_equal(decode(r.content), overlay(image, np.zeros(image.shape, bool)))
    assert r.headers["content-disposition"] == 'inline; filename="gray16_view.png"'


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("query", "files", "status", "message"),
    [
        ("", upload(b"", "empty.png"), 400, r"^empty\.png: the uploaded file is empty$"),
        (
            "",
            upload(b"hello, world\n", "notes.txt"),
            415,
            r"^notes\.txt: not an image this service reads \(expected PNG, JPEG, TIFF, BMP, GIF "
            r"or DICOM content\)$",
        ),
        (
            "",
            upload(png_bytes(np.zeros((40, 40), np.uint8))[:70], "cut.png"),
            422,
            r"^cut\.png: the PNG data is corrupt or truncated$",
        ),
        ("", upload(b"\x89PNG\r\n\x1a\nrubbish", "bad.png"), 422, r"^bad\.png: corrupt PNG header"),
        ("", upload(b"II*\x00broken", "scan.tif"), 422, r"^scan\.tif: "),
        ("", upload(b"BMxx", "x.bmp", field="image"), 400, r"no field 'file' .*fields sent: image"),
        ("", {"file": (None, "text")}, 400, r"the field 'file' holds text, not a file"),
        ("?format=gif", upload(b"x"), 400, r"format=gif is not one of json, png, overlay, prob"),
        ("?threshold=abc", upload(b"x"), 422, r"^threshold=abc is not a number \(e\.g\. "),
        (  # was pydantic's "Input should be a valid integer, unable to parse string ..."
            "?keep_largest=1.5&fill_holes=maybe",
            upload(b"x"),
            422,
            r"^keep_largest=1\.5 is not a whole number \(e\.g\. keep_largest=2\); "
            r"fill_holes=maybe is not true or false \(e\.g\. fill_holes=true\)$",
        ),
        ("?threshold=1.5", upload(b"x"), 400, r"^threshold must be above 0 and below 1, got 1\.5$"),
        ("?keep_largest=-1", upload(b"x"), 400, r"^keep_largest must be 0 \(keep all\) or more"),
        ("?mode=zoom", upload(b"x"), 400, r"mode"),
        ("?tresh=0.4", upload(b"x"), 400, r"unknown query parameter\(s\): tresh .*threshold"),
        (
            "?threshold=0.4&threshold=0.6",
            upload(b"x"),
            400,
            r"^query parameter\(s\) given more than once: threshold; give each once$",
        ),
        (
            "?tta=0&tta_transforms=lr",
            upload(b"x"),
            400,
            r"^tta_transforms lr names .* that tta=false turns off",
        ),
    ],
)
def test_bad_input_is_a_4xx_naming_the_problem(
    client: TestClient, query: str, files: dict, status: int, message: str
) -> None:
    r = client.post(f"/v1/segment{query}", files=files)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert re.search(message, r.json()["error"]), r.json()
    assert client.get("/healthz").status_code == 200


def test_no_room_for_the_upload_is_a_507_naming_the_temporary_folder(
    client: TestClient, monkeypatch
) -> None:
    """A full temporary folder gave 500 'internal error (OSError)' and a traceback."""
    import shutil as shutil_mod

    from unet_lowered.serve import app as app_mod

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(app_mod.shutil, "copyfileobj", full)
    r = client.post("/v1/segment", files=upload(png_bytes(np.zeros((32, 32), np.uint8))))
    assert r.status_code == 507, r.text
    assert r.json()["error"].startswith("the server cannot store the upload in its temporary")
    assert "(No space left on device)" in r.json()["error"]
    monkeypatch.setattr(app_mod.shutil, "copyfileobj", shutil_mod.copyfileobj)
    assert client.get("/healthz").status_code == 200


def test_not_multipart_and_malformed_multipart(client: TestClient) -> None:
    r = client.post("/v1/segment", content=b"\x89PNG", headers={"content-type": "image/png"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]
    assert "got image/png" in r.json()["error"]
    r = client.post(
        "/v1/segment", content=b"garbage", headers={"content-type": "multipart/form-data"}
    )
    assert r.status_code == 400 and "malformed" in r.json()["error"]


def test_unknown_paths_and_methods_answer_json(client: TestClient) -> None:
    r = client.get("/v2/segment")
    assert r.status_code == 404 and r.json()["error"].startswith("no such endpoint: GET /v2/")
    r = client.get("/v1/segment")
    assert r.status_code == 405 and r.json() == {"error": "method not allowed: GET /v1/segment"}


# ---------------------------------------------------------------- limits


def test_pixel_limit_is_checked_from_the_header(client: TestClient, app_for) -> None:
    # 50000 x 40000 = 2 gigapixels claimed by a 33-byte file: refused from the header; if
    # it were decoded first, the missing pixel data would be reported as corrupt instead
    r = client.post("/v1/segment", files=upload(png_header_only(50000, 40000), "huge.png"))
    assert r.status_code == 413, r.text
    assert r.json()["error"] == (
        "huge.png: 50000x40000 is 2000.0 megapixels, over this service's limit of 100.0; "
        "send a smaller image, or ask the server's operator to raise it (unet serve --max-pixels)"
    )
    small = app_for(ServeSettings(max_pixels=1000))
    assert small.get("/v1/model").json()["limits"]["max_pixels"] == 1000
    assert small.post("/v1/segment", files=upload(png_bytes(disk_image(30, 30)[0]))).is_success
    r = small.post("/v1/segment", files=upload(png_bytes(disk_image(40, 30)[0]), "a.png"))
    assert r.status_code == 413 and "a.png: 30x40 is 0.0 megapixels" in r.json()["error"]


def test_upload_size_limit(app_for) -> None:
    c = app_for(ServeSettings(max_upload_mb=0.01))  # 10,485 bytes
    noise = np.random.default_rng(0).integers(0, 256, (120, 120), dtype=np.uint8)
    data = png_bytes(noise)
    assert len(data) > 12_000
    message = (  # worded for the client, who cannot change the server's flag
        "the upload is over this service's limit of 0.01 MB; send a smaller file, or ask "
        "the server's operator to raise it (unet serve --max-upload-mb)"
    )
    r = c.post("/v1/segment", files=upload(data))
    assert r.status_code == 413 and r.json() == {"error": message}

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        boundary = b"xyz"
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
        yield b'filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]
        yield b"\r\n--" + boundary + b"--\r\n"

    r = c.post(
        "/v1/segment",
        content=chunked(),
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code == 413 and r.json() == {"error": message}
    assert c.post("/v1/segment", files=upload(png_bytes(disk_image(30, 30)[0]))).is_success
    assert c.app.state.service.admitted == 0


class FailingModel:
    """The real model, which raises while ``fail`` is set."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.input_shape = model.input_shape
        self.fail = False

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        if self.fail:
            raise RuntimeError("simulated failure inside the network")
        return self.model.predict_on_batch(batch)


def test_model_failure_is_a_logged_500_and_the_service_stays_up(
    app_for, run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from unet_lowered.io.runs import load_run

    model = FailingModel(load_run(run).model())
    c = app_for(model=model)
    data = png_bytes(disk_image(30, 40)[0])
    model.fail = True
    with caplog.at_level(logging.INFO, logger="unet_lowered.serve"):
        r = c.post("/v1/segment", files=upload(data, "chest.png"))
    assert r.status_code == 500
    error = r.json()["error"]
    assert error.startswith("chest.png: the model failed on this image (RuntimeError: simulated")
    failures = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(failures) == 1 and "chest.png" in failures[0].getMessage()
    assert failures[0].exc_info is not None  # the traceback is in the log
    assert c.get("/healthz").status_code == 200
    model.fail = False
    assert c.post("/v1/segment", files=upload(data)).json()["components"] == 1
    assert c.app.state.service.admitted == 0


class BlockingModel:
    """The real model, which waits for ``release`` (set at first) inside every call."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.input_shape = model.input_shape
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.release.wait(30), "the test never released the model"
        return self.model.predict_on_batch(batch)


def wait_until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_bounded_queue_answers_503_and_inference_is_off_the_event_loop(app_for, run: Path) -> None:
    from unet_lowered.io.runs import load_run

    model = BlockingModel(load_run(run).model())
    c = app_for(ServeSettings(workers=1, queue=1), model=model)
    service = c.app.state.service
    model.release.clear()  # create_app has warmed up; now block the requests
    model.entered.clear()
    data = png_bytes(disk_image(30, 40)[0])
    answers: list[Any] = []

    def post() -> None:
        answers.append(c.post("/v1/segment", files=upload(data)))

    first = threading.Thread(target=post)
    first.start()
    assert model.entered.wait(30)  # the worker is inside the model
    second = threading.Thread(target=post)  # waits in the queue
    second.start()
    wait_until(lambda: service.admitted == 2)
    assert c.get("/healthz").json() == {"status": "ok"}  # the event loop is free
    assert c.get("/v1/model").status_code == 200
    r = c.post("/v1/segment", files=upload(data))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"].startswith("busy: 2 requests are already being served or waiting")
    model.release.set()
    first.join(30)
    second.join(30)
    assert [a.status_code for a in answers] == [200, 200]
    assert service.admitted == 0
    assert c.post("/v1/segment", files=upload(data)).status_code == 200


def test_settings_are_checked(run: Path) -> None:
    from unet_lowered.errors import UnetError

    for settings, message in [
        (ServeSettings(workers=0), "--workers must be at least 1"),
        (ServeSettings(queue=-1), "--queue must be 0 or more"),
        (ServeSettings(max_upload_mb=0), "--max-upload-mb must be above 0"),
        (ServeSettings(options=PredictOptions(tta=True)), "trained without flips"),
    ]:
        with pytest.raises(UnetError, match=message):
            create_app(run, settings)


# ---------------------------------------------------------------- logs and the page


def test_one_log_line_per_request(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="unet_lowered.serve"):
        client.get("/healthz")
        client.post("/v1/segment", files=upload(b"", "e.png"))
    lines = [r.getMessage() for r in caplog.records if r.name == "unet_lowered.serve"]
    assert len(lines) == 2, lines
    assert re.fullmatch(r"GET /healthz 200 \d+\.\d ms", lines[0])
    assert re.fullmatch(r"POST /v1/segment 400 \d+\.\d ms", lines[1])


def test_page_is_served_from_the_package_and_needs_no_internet(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for element in ['id="file"', 'id="opacity"', 'id="fig-fraction"', 'id="download-mask"']:
        assert element in html
    assert 'src="/static/app.js"' in html and 'href="/static/style.css"' in html
    texts = {"/": html}
    assert 'src="/static/layers.js"' in html  # also the page's Web Worker
    for name, kind in [
        ("app.js", "javascript"),
        ("layers.js", "javascript"),
        ("style.css", "text/css"),
    ]:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert r.text == (STATIC_DIR / name).read_text()
        texts[name] = r.text
    for name, text in texts.items():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), name
        assert "@import" not in text and "url(http" not in text, name
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN


# ---------------------------------------------------------------- the command


def cli(*args: str) -> int:
    from unet_lowered.cli import main

    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_cli_errors_are_one_line(tmp_path: Path, run: Path, capsys) -> None:
    assert cli("serve", str(tmp_path / "norun"), "--port", "0") == 1
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"error: {tmp_path / 'norun'}: no such run folder; pass the --out folder of `unet train`"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli("serve", str(run), "--port", str(port)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: 127.0.0.1:{port}: cannot listen there (")
    assert "\n" not in err and "choose another --port" in err
    assert cli("serve", str(run), "--workers", "0", "--port", "0") == 1
    assert "--workers must be at least 1" in capsys.readouterr().err
    for port in ("99999", "-1"):  # the OS would wrap 99999 round to another port
        assert cli("serve", str(run), "--port", port) == 1
        assert capsys.readouterr().err.strip() == (
            f"error: --port {port}: not a TCP port; use 1-65535 (0: any free port)"
        )


def test_cli_help_names_the_options(capsys) -> None:
    assert cli("serve", "--help") == 0
    out = capsys.readouterr().out
    for option in ["--host", "--port", "--workers", "--queue", "--max-upload-mb", "--max-pixels"]:
        assert option in out
    for option in ["--max-passes", "--uploads", "--allow-host"]:  # the refusals name them
        assert option in out


def test_cli_limits_reach_the_service(tmp_path: Path, monkeypatch) -> None:
    import unet_lowered.serve.app as serve_app

    seen = {}
    monkeypatch.setattr(serve_app, "serve_run", lambda run, settings, **kw: seen.update(s=settings))
    args = ["serve", str(tmp_path), "--max-passes", "500", "--uploads", "3"]
    assert cli(*args, "--allow-host", "scanner.lan", "--allow-host", "proxy") == 0
    settings = seen["s"]
    assert (settings.max_passes, settings.uploads) == (500, 3)
    assert settings.allowed_hosts == ("scanner.lan", "proxy")
    assert cli("serve", str(tmp_path)) == 0
    assert (seen["s"].max_passes, seen["s"].uploads, seen["s"].allowed_hosts) == (None, None, ())


def test_multi_class_run_answers_label_values(tmp_path: Path, reference) -> None:
    """Three classes: the mask holds the run's label values, as unet predict writes it;
    ``format=prob`` is the probability of any foreground class; no quality flag."""
    run = make_run(
        tmp_path / "run",
        bright_model(32, num_classes=3),
        label_values=[0, 100, 200],
        class_names=["background", "lung", "heart"],
    )
    path = tmp_path / "disk.png"
    images.write_png(path, disk_image(45, 60)[0])
    expected = reference(run, path)
    with TestClient(create_app(run)) as c:
        facts = c.get("/v1/model").json()
        assert facts["label_values"] == [0, 100, 200]
        assert facts["class_names"] == ["background", "lung", "heart"]
        r = c.post("/v1/segment?format=png", files=upload(path.read_bytes()))
        mask = decode(r.content)
        np.testing.assert_array_equal(mask, expected["mask"])
        assert set(np.unique(mask)) <= {0, 100, 200} and 200 in mask
        assert json.loads(r.headers[RESULT_HEADER])["quality"] is None
        prob = decode(c.post("/v1/segment?format=prob", files=upload(path.read_bytes())).content)
        for query in ("threshold=0.9", "watershed=0.5"):  # neither would change its mask
            r = c.post(f"/v1/segment?{query}", files=upload(path.read_bytes()))
            assert r.status_code == 400
            assert "applies to one-class runs; this run has 3 classes" in r.json()["error"]
    from unet_lowered.inference.predictor import predict_image
    from unet_lowered.io.runs import load_run

    loaded = load_run(run)
    probs = predict_image(loaded.model(), images.read_image(path), loaded.config)
    np.testing.assert_array_equal(
        prob, np.clip((1 - probs[:, :, 0]) * 255 + 0.5, 0, 255).astype(np.uint8)
    )


def test_the_demo_names_unet_serve() -> None:
    from unet_lowered.demo.pipeline import _closing

    result = {"seconds": 1.0, "val_dice_training_size": 0.9, "val_dice_original_size": None}
    assert "unet serve runs/demo/run" in _closing(Path("runs/demo"), result)


def test_two_workers_answer_concurrent_requests_alike(app_for) -> None:
    from concurrent.futures import ThreadPoolExecutor

    c = app_for(ServeSettings(workers=2, queue=6))
    shapes = [(61, 47), (33, 90), (64, 64), (50, 51)] * 2
    bodies = [png_bytes(disk_image(h, w, seed=i)[0]) for i, (h, w) in enumerate(shapes)]
    alone = [decode(c.post("/v1/segment?format=png", files=upload(b)).content) for b in bodies]

    def post(body: bytes) -> Any:
        return c.post("/v1/segment?format=png", files=upload(body))

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, bodies))
    assert [a.status_code for a in answers] == [200] * len(bodies)
    for answer, expected in zip(answers, alone, strict=True):
        np.testing.assert_array_equal(decode(answer.content), expected)
    assert c.app.state.service.admitted == 0


def test_a_stalled_upload_holds_no_place_and_times_out(app_for, monkeypatch) -> None:
    import asyncio

    from unet_lowered.serve import app as app_mod

    service = app_for(ServeSettings(workers=1, queue=0)).app.state.service
    monkeypatch.setattr(app_mod, "UPLOAD_TIMEOUT_S", 0.2)
    admitted_meanwhile: list[int] = []

    class Stalled:  # a client that sent its headers and stopped
        def __init__(self) -> None:
            self.headers = {"content-type": "multipart/form-data; boundary=x"}

        async def form(self, **_: Any) -> None:
            admitted_meanwhile.append(service.admitted)
            await asyncio.sleep(30)

    with pytest.raises(app_mod.RequestError) as info:
        asyncio.run(app_mod._with_upload(service, Stalled(), lambda *_: None))
    assert info.value.status == 408
    assert info.value.message == "the upload did not arrive within 0.2 s; send it again"
    assert admitted_meanwhile == [0] and service.admitted == 0


def test_openapi_schema_describes_the_upload_and_the_answers(client: TestClient) -> None:
    """The upload endpoints read their multipart body themselves, so FastAPI's schema had
    no request body (no field 'file'), only a JSON 200 and a 422 of its own shape."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a duplicate operation id (GET and HEAD)
        schema = client.get("/openapi.json").json()
    ids = [op["operationId"] for ops in schema["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)), ids
    error = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    for path in ("/v1/segment", "/v1/preview"):
        op = schema["paths"][path]["post"]
        body = op["requestBody"]
        assert body["required"] is True
        form = body["content"]["multipart/form-data"]["schema"]
        assert form["required"] == ["file"]
        assert form["properties"]["file"]["type"] == "string"
        assert form["properties"]["file"]["format"] == "binary"
        responses = op["responses"]
        assert "image/png" in responses["200"]["content"], path
        for status in ("400", "408", "413", "415", "422", "500", "503", "507"):
            assert responses[status]["content"]["application/json"]["schema"] == error, status
        assert "Retry-After" in responses["503"]["headers"]
    figures = schema["paths"]["/v1/segment"]["post"]["responses"]["200"]["content"]
    assert set(figures["application/json"]["schema"]["properties"]) == {
        "id", "width", "height", "foreground_fraction", "components", "quality",
        "gray_scale", "orientation", "seconds", "notes",
    }  # fmt: skip
    assert "image/png" not in schema["paths"]["/v1/model"]["get"]["responses"]["200"]["content"]


def test_head_and_a_client_that_hangs_up(app_for) -> None:
    from starlette.requests import ClientDisconnect

    c = app_for(ServeSettings())
    for path in ("/", "/healthz", "/v1/model"):  # uptime probes use HEAD
        assert c.head(path).status_code == 200, path

    @c.app.post("/hang-up")
    async def hang_up() -> None:
        raise ClientDisconnect()

    r = c.post("/hang-up")
    assert r.status_code == 499 and r.json() == {"error": "the client disconnected"}


def test_uploads_that_are_ambiguous_or_cut_off_and_names_that_are_not_ascii(app_for) -> None:
    c = app_for(ServeSettings())
    data = png_bytes(disk_image(30, 40)[0])
    two = [("file", ("a.png", data, "image/png")), ("file", ("b.png", data, "image/png"))]
    r = c.post("/v1/segment", files=two)
    assert r.status_code == 400
    assert r.json()["error"] == "2 fields 'file' in the upload; send one image per request"
    cut = b"--x\r\nContent-Disposition: form-da"  # cut off inside the first part's headers
    r = c.post(
        "/v1/segment", content=cut, headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert r.status_code == 400
    assert r.json()["error"].startswith("the multipart body is malformed or cut off")
    r = c.post("/v1/segment?format=png", files=upload(data, name="lunge ü 肺.png"))
    assert r.status_code == 200
    assert r.headers["content-disposition"] == (
        "inline; filename=\"lunge__mask.png\"; filename*=UTF-8''lunge%20%C3%BC%20%E8%82%BA_mask.png"
    )
    plain = c.post("/v1/segment?format=png", files=upload(data, name="scan.png"))
    assert plain.headers["content-disposition"] == 'inline; filename="scan_mask.png"'
