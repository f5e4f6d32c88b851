"""``unet serve`` against misuse: the work a request may cost, uploads received at once,
the answers' security headers, the Host and Origin checks, upload file names."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from run_fixtures import chest_picture, chest_stats, dark_model, disk_image, make_run

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")


from unet_lowered.serve import app as app_mod
from unet_lowered.serve.app import ServeSettings, create_app


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def upload(data: bytes, name: str = "scan.png") -> dict[str, Any]:
    return {"file": (name, data, "application/octet-stream")}


class CountingModel:
    """The real model, counting the input tiles it is given."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.input_shape = model.input_shape
        self.passes = 0

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        self.passes += batch.shape[0]
        return self.model.predict_on_batch(batch)


# ---------------------------------------------------------------- the work a request costs


def test_a_request_over_the_work_budget_is_refused_before_decoding(app_for, run: Path) -> None:
    """mode=tile and tta_transforms=dihedral on a large image cost hundreds of times the
    default (a 7 KB 2000x2000 PNG: 0.47 s, 37 s tiled, 142 s tiled with dihedral TTA);
    nothing limited them."""
    from unet_lowered.io.runs import load_run

    model = CountingModel(load_run(run).model())
    c = app_for(ServeSettings(max_passes=16), model=model)
    assert c.get("/v1/model").json()["limits"]["max_passes"] == 16
    square = png_bytes(disk_image(100, 100)[0])  # 4 x 4 tiles of 32 at overlap 0.25
    tall = png_bytes(disk_image(120, 100)[0])  # 5 x 4 tiles

    assert c.post("/v1/segment", files=upload(tall)).status_code == 200  # resize: 1 pass
    model.passes = 0
    assert c.post("/v1/segment?mode=tile", files=upload(square)).status_code == 200
    assert model.passes == 16  # the estimate is what the network does
    model.passes = 0
    r = c.post("/v1/segment?mode=tile", files=upload(tall, "tall.png"))
    assert r.status_code == 413, r.text
    assert r.json()["error"] == (
        "tall.png: 100x120 would take up to 20 network passes (20 tile(s) of 32x32), over "
        "this service's limit of 16 per request; send it with mode=resize, or a smaller "
        "image (or ask the server's operator to raise it: unet serve --max-passes)"
    )
    assert model.passes == 0  # refused from the header, before the network
    r = c.post("/v1/segment?tta_transforms=dihedral", files=upload(square))
    assert r.status_code == 200  # 8 views of one input
    r = c.post("/v1/segment?mode=tile&tta_transforms=dihedral", files=upload(square, "sq.png"))
    assert r.status_code == 413
    assert r.json()["error"].startswith(
        "sq.png: 100x100 would take up to 128 network passes (16 tile(s) x 8 TTA views of "
        "32x32), over this service's limit of 16 per request; send it with mode=resize or "
        "tta=false, or a smaller image"
    )
    assert c.post("/v1/preview", files=upload(tall)).status_code == 200  # no network
    assert c.app.state.service.admitted == 0 and c.app.state.service.uploads == 0


def test_the_work_budget_counts_a_flagged_images_second_looks(app_for, tmp_path: Path) -> None:
    """A flagged image is predicted again inverted (and turned): the estimate counts
    every look it may take, and the refusal names the options that drop them."""
    run = make_run(tmp_path / "run", dark_model(), mask_stats=chest_stats())
    film, _ = chest_picture(seed=10)
    inverted = png_bytes(255 - film)  # flagged as stored: read again, inverted
    from unet_lowered.inference.predictor import for_run
    from unet_lowered.io.runs import load_run

    loaded = load_run(run)
    options = for_run(app_mod.PredictOptions(), loaded.config)
    work = app_mod.network_passes(loaded.config, options, *film.shape[:2])
    assert (work.tiles, work.views, work.looks) == (1, 1, 2)  # as stored, inverted
    model = CountingModel(loaded.model())
    c = app_for(ServeSettings(max_passes=work.passes), folder=run, model=model)
    model.passes = 0
    r = c.post("/v1/segment", files=upload(inverted))
    assert r.status_code == 200 and r.json()["gray_scale"] == "inverted"
    assert model.passes == work.passes
    c = app_for(ServeSettings(max_passes=work.passes - 1), folder=run)
    r = c.post("/v1/segment", files=upload(inverted, "film.png"))
    assert r.status_code == 413
    assert f"(1 input x up to {work.looks} looks at a flagged image of " in r.json()["error"]
    assert "send it with polarity=keep&orientation=keep, or a smaller image" in r.json()["error"]
    assert c.post("/v1/segment?polarity=keep&orientation=keep", files=upload(inverted)).is_success


def test_the_work_budget_setting_is_checked(run: Path) -> None:
    from unet_lowered.errors import UnetError

    for settings, message in [
        (ServeSettings(max_passes=0), "--max-passes must be at least 1, got 0"),
        (ServeSettings(workers=2, queue=3, uploads=4), r"--uploads must be at least .* \(5\)"),
        (ServeSettings(allowed_hosts=("http://x",)), "--allow-host 'http://x': not a host"),
    ]:
        with pytest.raises(UnetError, match=message):
            create_app(run, settings, warm_up=False)


def test_a_valid_run_trained_at_its_output_size_costs_one_pass_an_image() -> None:
    """A valid-padding run on whole images (resize_to_output) predicts an image in one
    pass (resized to the output size, mirror-padded to the input); one trained before
    resized to the input and tiled it (8x8 tiles of 8 px in a 48-px input at depth 2)."""
    from run_fixtures import run_config
    from unet_lowered.inference.predictor import PredictOptions

    options = PredictOptions(mode="resize", tta=False).validate()
    for flag, tiles in ((True, 1), (False, 64)):
        config = run_config(
            {"image_size": [48, 48], "padding": "valid", "depth": 2, "resize_to_output": flag}
        )
        assert app_mod.network_passes(config, options, 2000, 3000).tiles == tiles


# ---------------------------------------------------------------- uploads at once


def test_uploads_beyond_their_places_get_a_503_before_their_body_is_read(app_for) -> None:
    """20 parallel 50 MB uploads were all received and spooled to disk, then 11 got a 503;
    now at most ``uploads`` bodies are received or held at once, and stalled ones still
    hold no worker or queue place."""
    service = app_for(ServeSettings(workers=1, queue=1)).app.state.service
    assert service.upload_places == 6  # workers + queue + 4
    reads: list[str] = []

    class Upload:
        def __init__(self, name: str, stall: bool) -> None:
            self.name, self.stall = name, stall
            self.headers = {"content-type": "multipart/form-data; boundary=x"}

        async def form(self, **_: Any) -> Any:
            reads.append(self.name)
            await asyncio.sleep(30 if self.stall else 0)
            raise AssertionError("not reached in this test")

    async def main() -> None:
        stalled = [
            asyncio.create_task(app_mod._with_upload(service, Upload(f"s{i}", True), None))
            for i in range(service.upload_places)
        ]
        while len(reads) < service.upload_places:
            await asyncio.sleep(0)
        assert service.uploads == service.upload_places and service.admitted == 0
        with pytest.raises(app_mod.RequestError) as info:
            await app_mod._with_upload(service, Upload("late", False), None)
        assert info.value.status == 503 and info.value.headers == {"Retry-After": "1"}
        assert info.value.message == (
            "busy: 6 uploads are already being received or served; retry in a moment"
        )
        assert "late" not in reads  # its body was never read
        for task in stalled:
            task.cancel()
        await asyncio.gather(*stalled, return_exceptions=True)

    asyncio.run(main())
    assert service.uploads == 0 and service.admitted == 0


def test_an_upload_that_stops_sending_is_dropped_and_frees_its_place(app_for, monkeypatch) -> None:
    """A client that sends part of its body and stops held its upload place for the whole
    5-minute upload limit (a few such clients held them all); now a pause over
    ``UPLOAD_IDLE_S`` ends it with a 408 and gives the place back."""
    monkeypatch.setattr(app_mod, "UPLOAD_IDLE_S", 0.2)
    app = app_for(ServeSettings(workers=1, queue=0)).app
    service = app.state.service
    first = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n\x89PNG'
    parts = [{"type": "http.request", "body": first, "more_body": True}]
    sent: list[dict] = []
    places: list[int] = []

    async def receive() -> dict:
        if parts:
            return parts.pop(0)
        places.append(service.uploads)
        await asyncio.sleep(30)  # the client stopped sending
        raise AssertionError("not reached")

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/segment",
        "raw_path": b"/v1/segment",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"multipart/form-data; boundary=x"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    assert places == [1]  # it held an upload place while it stalled
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert body == b'{"error":"the upload stalled: nothing arrived for 0.2 s; send it again"}'
    assert service.uploads == 0 and service.admitted == 0


# ---------------------------------------------------------------- headers, Host, Origin

CSP = (
    "default-src 'none'; script-src 'self'; worker-src 'self'; style-src 'self'; "
    "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def test_every_answer_carries_the_security_headers(app_for) -> None:
    c = app_for(ServeSettings(max_upload_mb=0.01))
    answers = [
        c.get("/"),
        c.get("/static/app.js"),
        c.get("/static/layers.js"),
        c.get("/v1/model"),
        c.get("/nowhere"),
        c.post("/v1/segment", files=upload(b"")),
        c.post("/v1/segment", content=b"x" * 20_000, headers={"content-type": "image/png"}),
        c.post("/v1/segment?format=png", files=upload(png_bytes(disk_image(30, 30)[0]))),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 404, 400, 413, 200]
    for a in answers:
        assert a.headers["x-content-type-options"] == "nosniff", a.url
        assert a.headers["x-frame-options"] == "DENY", a.url
        assert a.headers["content-security-policy"] == CSP, a.url


def test_a_host_that_is_not_this_servers_is_refused(app_for) -> None:
    """DNS rebinding: a web page whose name points at 127.0.0.1 could read /v1/model
    (the run's folder on the server) and use the service."""
    c = app_for(address=("127.0.0.1", 8000))
    for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST:8000", "[::1]:8000"):
        assert c.get("/v1/model", headers={"host": host}).status_code == 200, host
    for host in ("evil.example:8000", "127.0.0.1:8001", "localhost", "evil.example"):
        r = c.get("/v1/model", headers={"host": host})
        assert r.status_code == 400, host
        assert r.json()["error"] == (
            f"Host {host} is not this server's; it answers to 127.0.0.1:8000, "
            "[::1]:8000, localhost:8000. Open it by one of those, or ask its operator to "
            "allow the name (unet serve --allow-host)"
        )
        assert r.headers["x-frame-options"] == "DENY"
    r = c.post("/v1/segment", headers={"host": "evil.example"}, files=upload(b"x"))
    assert r.status_code == 400 and r.json()["error"].startswith("Host evil.example is not")
    other = app_for(ServeSettings(allowed_hosts=("scan.example.org",)), address=("10.0.0.5", 8000))
    for host, status in [
        ("10.0.0.5:8000", 200),
        ("scan.example.org", 200),
        ("Scan.Example.org:443", 200),
        ("localhost:8000", 400),
        ("10.0.0.5:80", 400),
    ]:
        assert other.get("/healthz", headers={"host": host}).status_code == status, host
    anything = app_for(ServeSettings(allowed_hosts=("*",)), address=("0.0.0.0", 8000))
    assert anything.get("/healthz", headers={"host": "a.b:1"}).status_code == 200


def test_host_names(run: Path) -> None:
    from unet_lowered.serve.app import host_names

    loopback = {"127.0.0.1:8000", "localhost:8000", "[::1]:8000"}
    assert host_names("127.0.0.1", 8000) == loopback
    assert host_names("::1", 8000) == loopback
    assert host_names("0.0.0.0", 8000, ("Lab-PC",)) == loopback | {"lab-pc"}
    assert host_names("fe80::1", 8080) == {"[fe80::1]:8080"}
    assert host_names("lab-pc", 80) == {"lab-pc:80", "lab-pc"}


def test_a_cross_site_post_is_refused(app_for) -> None:
    """Another site's page could post a form to the service (a plain form needs no CORS)."""
    c = app_for()  # TestClient's Host: testserver
    data = png_bytes(disk_image(30, 30)[0])
    for origin in ("http://evil.example", "null", "http://testserver:8001"):
        r = c.post("/v1/segment", files=upload(data), headers={"origin": origin})
        assert r.status_code == 403, origin
        assert r.json()["error"] == (
            f"a POST from the page of {origin} is refused: only this server's own page may "
            "post here (other clients send no Origin header)"
        )
    for headers in ({"origin": "http://testserver"}, {}):  # the page; curl
        assert c.post("/v1/segment", files=upload(data), headers=headers).status_code == 200
    assert c.get("/v1/model", headers={"origin": "http://evil.example"}).status_code == 200


# ---------------------------------------------------------------- upload file names


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("scan.png", "scan.png"),
        ("C:\\Users\\me\\scan.png", "scan.png"),  # an old browser's full Windows path
        ("../../etc/scan.png", "scan.png"),
        ("x/.", "."),  # Path('x/.').name is 'x'
        ("\u202egnp.exe", "_gnp.exe"),  # right-to-left override: shown as 'exe.png'
        ("a\u2066b\u200fc\u061cd.png", "a_b_c_d.png"),  # isolates, marks
        ("a\nb\x00c\x7fd\u2028e.png", "a_b_c_d_e.png"),  # controls, line separator
        ("", "the upload"),
        ("dir/", "the upload"),
        ("lunge ü 肺.png", "lunge ü 肺.png"),
    ],
)
def test_upload_names_shown_are_the_files_own_without_controls(sent: str, shown: str) -> None:
    assert app_mod._display_name(sent) == shown


def test_download_names_carry_no_bidi_or_control_characters(app_for) -> None:
    """A right-to-left override (U+202E) passed into filename*, so that 'a<RLO>gnp.exe'
    was offered for download as 'aexe.png_mask.png' on screen."""
    assert app_mod._disposition("C:\\x\\scan.png", "mask") == 'inline; filename="scan_mask.png"'
    assert app_mod._disposition("a\u202egnp.exe", "mask") == 'inline; filename="a_gnp_mask.png"'
    c = app_for()
    data = png_bytes(disk_image(30, 30)[0])
    r = c.post("/v1/segment?format=png", files=upload(data, "ü\u202egnp.exe"))
    assert r.status_code == 200
    assert r.headers["content-disposition"] == (
        "inline; filename=\"__gnp_mask.png\"; filename*=UTF-8''%C3%BC_gnp_mask.png"
    )
    r = c.post("/v1/segment", files=upload(b"", "ü\u202egnp.png"))
    assert r.json()["error"] == "ü_gnp.png: the uploaded file is empty"
