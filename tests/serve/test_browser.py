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
    assert f"Run {served_run}:" in facts and "binary" in facts
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

    run = make_run(tmp_path / "mc", bright_model(32, num_classes=3), label_values=[0, 100, 200])
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
