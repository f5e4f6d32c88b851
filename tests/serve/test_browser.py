"""The page in a real browser: ``unet serve`` as a subprocess, driven in headless Chromium.

Starts ``python -m unet_lowered serve RUN`` on 127.0.0.1 on a free port and drives the
page through Playwright's Python API in Debian's ``chromium`` (``executable_path``; no
browser is downloaded): upload a synthetic X-ray, wait for the overlay, read the
figures from the page, move the opacity slider, download the mask and the overlay and
compare them with what ``unet predict`` writes for the same file; then a multi-class
run's page (no threshold to set, classes in their colours). Skips with the
reason when Playwright or Chromium is missing (``.ci/run`` installs Debian's chromium).

Environment:
    UNET_SERVE_RUN: serve this run folder instead of the tiny known-answer run, e.g.
        ``runs/demo/run`` after ``make demo``.
    UNET_SERVE_SCREENSHOT: write the page's screenshot here instead of the test's
        temporary folder. The README's picture is made with
        ``UNET_SERVE_RUN=runs/demo/run UNET_SERVE_SCREENSHOT=docs/images/serve.png``.
    UNET_CHROMIUM: the Chromium executable [default: ``chromium`` on the PATH].
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="Playwright is not installed (pip install -e '.[serve-test]')",
)
CHROMIUM = os.environ.get("UNET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium) "
        "or set UNET_CHROMIUM",
        allow_module_level=True,
    )

START_SECONDS = 120
"""How long the server may take to load the run and answer /healthz."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_run(run: Path) -> Path:
    chosen = os.environ.get("UNET_SERVE_RUN")
    return Path(chosen) if chosen else run


@contextlib.contextmanager
def serving(run: Path, log_dir: Path) -> Iterator[str]:
    """``unet serve RUN`` on 127.0.0.1 in a subprocess; yields its base URL, and checks
    its log when it stops."""
    port = free_port()
    log_path = log_dir / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unet_lowered", "serve", str(run), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if proc.poll() is not None:
                pytest.fail(f"unet serve exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"unet serve did not answer in {START_SECONDS} s:\n{log_path.read_text()}"
                )
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    log = log_path.read_text()
    assert "Traceback" not in log, log
    assert "GET /healthz 200" in log and "POST /v1/segment 200" in log, log


@pytest.fixture(scope="module")
def server(served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``unet serve`` of the served run; yields its base URL."""
    with serving(served_run, tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


def read_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def canvas_pixel(page: Any, x: int, y: int) -> list[int]:
    return page.evaluate(
        "([x, y]) => Array.from(document.getElementById('view').getContext('2d')"
        ".getImageData(x, y, 1, 1).data)",
        [x, y],
    )


def set_opacity(page: Any, percent: int) -> None:
    page.evaluate(
        "(v) => { const s = document.getElementById('opacity'); s.value = v;"
        " s.dispatchEvent(new Event('input')); }",
        str(percent),
    )


def test_page_segments_an_xray_like_unet_predict(
    server: str, served_run: Path, browser: Any, reference, tmp_path: Path
) -> None:
    from unet_lowered.demo.synth import synth_pair
    from unet_lowered.io import images

    image, _ = synth_pair(np.random.default_rng(7), 256)
    xray = tmp_path / "in" / "chest.png"
    images.write_png(xray, image)
    expected = reference(served_run, xray)
    mask = expected["mask"]

    page = browser.new_page(viewport={"width": 1180, "height": 760}, accept_downloads=True)
    page.set_default_timeout(60_000)
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(server)
    page.wait_for_selector("body[data-model=ready]")
    facts = page.text_content("#model")
    assert f"Run {served_run.name}:" in facts and "binary" in facts  # not the path typed
    assert page.is_visible("text=For research use only; not for diagnosis.")
    # every file can be picked: a DICOM file often has no extension (IM0001)
    assert page.get_attribute("#file", "accept") is None
    if "UNET_SERVE_RUN" not in os.environ:
        assert "trained at 32\u00d732 px" in facts and "validation Dice 0.912" in facts

    page.set_input_files("#file", str(xray))
    page.wait_for_selector("#stage[data-state=done]")
    value = lambda fig: page.get_attribute(f"#fig-{fig}", "data-value")  # noqa: E731
    row = expected["row"]
    assert value("size") == f"{row['width']}x{row['height']}" == "256x256"
    assert float(value("fraction")) == float(row["foreground_fraction"])
    assert int(value("components")) == int(row["components"])
    assert page.text_content("#fig-fraction") == f"{100 * float(row['foreground_fraction']):.2f} %"
    assert page.text_content("#fig-quality") == value("quality") == row["quality"]
    assert value("gray") == row["gray_scale"] == "as stored"
    assert page.text_content("#fig-gray") == "as stored"
    assert value("orientation") == row["orientation"] == "as stored"
    assert page.text_content("#fig-orientation") == "as stored"
    assert float(value("time")) >= 0 and " s on the server" in page.text_content("#fig-time")
    assert page.text_content("#status") == "Done." and page.is_hidden("#error")

    # the slider: a pixel inside the mask shows the image at 0% and the tint at 100%
    inside = np.argwhere(cv2.erode(mask, np.ones((9, 9), np.uint8)) > 0)
    assert len(inside), "the mask has no interior pixel"
    y, x = (int(v) for v in inside[len(inside) // 2])
    set_opacity(page, 0)
    assert canvas_pixel(page, x, y)[:3] == [int(image[y, x])] * 3
    set_opacity(page, 100)
    assert canvas_pixel(page, x, y)[:3] == [255, 64, 64]  # overlay.PALETTE[0]
    set_opacity(page, 45)
    shot = Path(os.environ.get("UNET_SERVE_SCREENSHOT") or tmp_path / "serve.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))
    assert read_png(shot).shape == (760, 1180, 3)

    with page.expect_download() as download:
        page.click("#download-mask")
    assert download.value.suggested_filename == "chest_mask.png"
    download.value.save_as(tmp_path / "mask.png")
    np.testing.assert_array_equal(read_png(tmp_path / "mask.png"), mask)
    with page.expect_download() as download:
        page.click("#download-overlay")
    assert download.value.suggested_filename == "chest_overlay.png"
    download.value.save_as(tmp_path / "overlay.png")
    np.testing.assert_array_equal(read_png(tmp_path / "overlay.png"), expected["overlay"])

    # a file that is not an image: the page shows the service's one-line error
    page.set_input_files(
        "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}]
    )
    page.wait_for_selector("#stage[data-state=error]")
    assert page.text_content("#error").startswith("notes.txt: not an image this service reads")
    assert [p for p in problems if "415" not in p] == []  # the failed upload is logged as 415
    assert all(u.startswith((server, "blob:", "data:")) for u in requests), requests
    page.close()


def test_page_shows_a_multi_class_run_in_class_colours(
    browser: Any, reference, tmp_path: Path
) -> None:
    """Classes 100 and 200 (the bright disk is class 200): no threshold to set, the disk
    tinted in class 2's colour, and the downloaded mask is `unet predict`'s."""
    from run_fixtures import bright_model, disk_image, make_run
    from unet_lowered.io import images

    run = make_run(
        tmp_path / "mc",
        bright_model(32, num_classes=3),
        label_values=[0, 100, 200],
        class_names=["background", "nucleus", "cell"],
    )
    image, disk = disk_image(60, 50)
    path = tmp_path / "in" / "cells.png"
    images.write_png(path, image)
    expected = reference(run, path)
    assert set(np.unique(expected["mask"]).tolist()) == {0, 200}

    (tmp_path / "log").mkdir()
    with serving(run, tmp_path / "log") as url:
        page = browser.new_page(viewport={"width": 1180, "height": 760}, accept_downloads=True)
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("body[data-model=ready]")
        assert "the most likely class per pixel" in page.text_content("#model")
        assert page.is_disabled("#threshold")
        assert page.get_attribute("#threshold", "placeholder") == "n/a"
        assert page.input_value("#threshold") == ""
        # which colour is which class, under the picture
        assert page.is_visible("#legend")
        assert page.locator("#legend li").all_text_contents() == [
            "nucleus: class 1 (mask value 100)",
            "cell: class 2 (mask value 200)",
        ]
        swatches = page.eval_on_selector_all(
            "#legend .swatch", "els => els.map(e => getComputedStyle(e).backgroundColor)"
        )
        assert swatches == ["rgb(255, 64, 64)", "rgb(64, 160, 255)"]
        page.set_input_files("#file", str(path))
        page.wait_for_selector("#stage[data-state=done]")
        inside = np.argwhere(cv2.erode(disk.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0)
        y, x = (int(v) for v in inside[len(inside) // 2])
        set_opacity(page, 100)
        assert canvas_pixel(page, x, y)[:3] == [64, 160, 255]  # overlay.PALETTE[1]: class 2
        with page.expect_download() as download:
            page.click("#download-mask")
        download.value.save_as(tmp_path / "mask.png")
        np.testing.assert_array_equal(read_png(tmp_path / "mask.png"), expected["mask"])
        page.close()


# ---------------------------------------------------------------- behaviours of the page
# One page of the module's server for these; each test opens the page afresh.


@pytest.fixture(scope="module")
def xray(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A synthetic chest X-ray, 256 px, as ``chest.png``, and its pixels."""
    from unet_lowered.demo.synth import synth_pair
    from unet_lowered.io import images

    image, _ = synth_pair(np.random.default_rng(7), 256)
    path = tmp_path_factory.mktemp("xray") / "chest.png"
    images.write_png(path, image)
    return path, image


class Page:
    """A browser page of the server, with the segment requests it sent."""

    def __init__(self, browser: Any, server: str) -> None:
        self.server = server
        self.page = browser.new_page(viewport={"width": 1180, "height": 760}, accept_downloads=True)
        self.page.set_default_timeout(30_000)
        self.segments: list[str] = []
        self.page.on(
            "request", lambda r: self.segments.append(r.url) if "/v1/segment" in r.url else None
        )

    def open(self) -> Any:
        self.page.unroute_all()
        self.page.goto(self.server)
        self.page.wait_for_selector("body[data-model=ready]")
        self.segments.clear()
        return self.page

    def done(self) -> None:
        self.page.wait_for_selector("#stage[data-state=done]")


@pytest.fixture(scope="module")
def tab(server: str, browser: Any) -> Iterator[Page]:
    p = Page(browser, server)
    yield p
    p.page.close()


def mask_inside(page: Any) -> tuple[int, int]:
    """A pixel well inside the mask the page shows (read at 100% opacity)."""
    set_opacity(page, 100)
    red = page.evaluate(
        "() => { const v = document.getElementById('view');"
        " const d = v.getContext('2d').getImageData(0, 0, v.width, v.height).data;"
        " const out = []; for (let i = 0; i < d.length; i += 4)"
        " out.push(d[i] === 255 && d[i + 1] === 64 && d[i + 2] === 64 ? 1 : 0); return out; }"
    )
    side = int(len(red) ** 0.5)
    tinted = np.array(red, np.uint8).reshape(side, side)
    inside = np.argwhere(cv2.erode(tinted, np.ones((9, 9), np.uint8)) > 0)
    assert len(inside), "no tinted interior"
    y, x = (int(v) for v in inside[len(inside) // 2])
    return x, y


def test_threshold_holds_the_applied_value_and_quick_steps_send_one_request(
    tab: Page, xray
) -> None:
    """The box showed 0.5 only as a placeholder (ArrowUp gave 0.01, every pixel above
    it marked) and every spinner step sent a request of its own."""
    page = tab.open()
    assert page.input_value("#threshold") == "0.5"
    page.set_input_files("#file", str(xray[0]))
    tab.done()
    assert len(tab.segments) == 1 and "threshold" not in tab.segments[0]  # the server's
    page.click("#threshold")
    for _ in range(5):
        page.keyboard.press("ArrowUp")
        page.wait_for_timeout(50)
    assert page.input_value("#threshold") == "0.55"
    tab.done()
    page.wait_for_timeout(400)  # nothing more comes
    assert len(tab.segments) == 2, tab.segments
    assert "threshold=0.55" in tab.segments[1]


def test_no_stale_picture_after_a_failure_and_a_server_that_is_gone(
    tab: Page, xray, server: str
) -> None:
    path, image = xray
    page = tab.open()
    page.set_input_files("#file", str(path))
    tab.done()
    x, y = mask_inside(page)
    # an option the server refuses: the picture without the mask, dimmed, "no result"
    page.fill("#threshold", "1.5")
    page.press("#threshold", "Tab")
    page.wait_for_selector("#stage[data-state=error]")
    assert (
        page.text_content("#error") == "chest.png: threshold must be above 0 and below 1, got 1.5"
    )
    assert canvas_pixel(page, x, y)[:3] == [int(image[y, x])] * 3
    assert page.text_content("#veil") == "no result" and page.is_visible("#veil")
    assert page.text_content("#fig-fraction") == "\u2013"
    # a file that is not an image: the last picture is gone
    page.set_input_files(
        "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}]
    )
    page.wait_for_selector("#stage[data-state=error]")
    assert page.text_content("#error").startswith("notes.txt: not an image")
    assert page.eval_on_selector("#view", "v => [v.width, v.height]") == [0, 0]
    assert page.text_content("#caption") == "notes.txt"
    # the server gone: a sentence, not "Failed to fetch"
    page.route("**/v1/**", lambda route: route.abort())
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#stage[data-state=error]")
    assert page.text_content("#error") == (
        f"Cannot reach the unet serve server at {server}; is it still running?"
    )


def test_a_busy_answer_is_retried_and_notes_are_worded_for_the_page(tab: Page, xray) -> None:
    """A 503 is tried again after its Retry-After; a second look's note names the page's
    checkbox, which sends polarity=keep and orientation=keep; a reset clears the flag."""
    path, _ = xray
    mask = np.zeros((256, 256), np.uint8)
    mask[60:200, 40:120] = 255
    _, png = cv2.imencode(".png", mask)
    figures = {
        "id": "0123456789ab", "width": 256, "height": 256, "foreground_fraction": 0.17,
        "components": 1, "quality": "check: foreground 17%", "gray_scale": "inverted",
        "orientation": "as stored", "seconds": 0.01,
        "notes": ["chest.png: read with its gray scale inverted: the mask as stored was "
                  "flagged; polarity=keep turns this off"],
    }  # fmt: skip
    answers = iter([503])

    def fake(route: Any) -> None:
        if next(answers, 200) == 503:
            route.fulfill(status=503, headers={"Retry-After": "0"}, json={"error": "busy"})
        else:
            route.fulfill(
                status=200,
                headers={"X-Unet-Result": json.dumps(figures)},
                content_type="image/png",
                body=png.tobytes(),
            )

    page = tab.open()
    page.route("**/v1/segment?*", fake)
    page.set_input_files("#file", str(path))
    tab.done()
    assert len(tab.segments) == 2  # the 503, then the same request again
    notice = page.text_content("#notice")
    assert page.is_visible("#notice") and "polarity=keep" not in notice
    assert notice.endswith("tick \u201cRead as stored\u201d to turn this off")
    assert page.get_attribute("#fig-quality", "class") == "check"
    page.check("#as-stored")
    assert page.text_content("#fig-quality") == "\u2013"
    assert "check" not in (page.get_attribute("#fig-quality", "class") or "")
    tab.done()
    assert "polarity=keep&orientation=keep" in tab.segments[-1]


def test_files_dropped_on_the_picture_and_several_at_once(tab: Page, xray) -> None:
    """A drop outside the dashed box opened the file in the browser; of several files
    the first was used without a word."""
    data = list(xray[0].read_bytes())
    page = tab.open()
    transfer = page.evaluate_handle(
        "(data) => { const t = new DataTransfer(); const bytes = new Uint8Array(data);"
        " for (const n of ['a.png', 'b.png', 'c.png'])"
        "   t.items.add(new File([bytes], n, {type: 'image/png'})); return t; }",
        data,
    )
    page.dispatch_event("#stage", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#stage", "drop", {"dataTransfer": transfer})
    tab.done()
    assert page.text_content("#caption") == "a.png"
    assert page.text_content("#notice") == "3 files dropped; showing the first (a.png)"


def test_a_download_click_right_after_typing_an_option(
    tab: Page, xray, served_run: Path, reference, tmp_path: Path
) -> None:
    """Typing 0.3 and clicking the mask's button at once: the click commits the option
    (the button was disabled under the pointer and the click lost); the download is the
    mask of threshold 0.3."""
    path, _ = xray
    expected = reference(served_run, path, threshold=0.3)["mask"]
    page = tab.open()
    page.set_input_files("#file", str(path))
    tab.done()
    page.fill("#threshold", "0.3")
    with page.expect_download(timeout=15_000) as download:
        page.click("#download-mask", timeout=5_000)
    assert download.value.suggested_filename == "chest_mask.png"
    download.value.save_as(tmp_path / "mask.png")
    np.testing.assert_array_equal(read_png(tmp_path / "mask.png"), expected)
    assert "threshold=0.3" in tab.segments[-1]


def test_on_a_phone_the_picture_follows_the_picker(server: str, browser: Any, xray) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    page.set_default_timeout(30_000)
    page.goto(server)
    page.wait_for_selector("body[data-model=ready]")
    page.set_input_files("#file", str(xray[0]))
    page.wait_for_selector("#stage[data-state=done]")
    page.wait_for_timeout(500)  # the smooth scroll
    top, bottom = page.eval_on_selector("#view", "v => [v.getBoundingClientRect().top,"
                                        " v.getBoundingClientRect().bottom]")  # fmt: skip
    assert 0 <= top and bottom <= 844, (top, bottom)
    page.close()
