"""Fixtures of the ``unet serve`` tests: the tiny known-answer run, its app, reference outputs.

The run is ``run_fixtures.bright_model`` (foreground = brighter than the image's mean), so
every expected mask comes from ``unet predict`` itself
(:func:`unet_lowered.inference.batch.predict_files` on the same file).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from dicom_fixtures import write_dicom
from run_fixtures import bright_model, disk_image, make_run

METRICS = {"val_dice": 0.9123, "val_iou": 0.8391, "best_epoch": 7, "val_dice_note": "test"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding ``bright_model(32)`` and a ``metrics.json``."""
    path = make_run(tmp_path_factory.mktemp("serve") / "run", bright_model(32))
    (path / "metrics.json").write_text(json.dumps(METRICS))
    return path


@pytest.fixture(scope="module")
def client(run: Path) -> Iterator[Any]:
    """A TestClient of the app with the default settings."""
    from fastapi.testclient import TestClient

    from unet_lowered.serve.app import create_app

    with TestClient(create_app(run)) as c:
        yield c


@pytest.fixture
def app_for(run: Path) -> Iterator[Any]:
    """``app_for(settings=None, folder=None, **create_app_arguments)``: a TestClient of an
    app with other settings (``model=``, ``address=``: then the client's Host is that
    address), of ``run`` or of another run ``folder``."""
    from fastapi.testclient import TestClient

    from unet_lowered.serve.app import create_app

    opened: list[Any] = []

    def make(settings: Any = None, folder: Path | None = None, **kw: Any) -> Any:
        base_url = "http://testserver"
        if kw.get("address"):
            base_url = f"http://{kw['address'][0]}:{kw['address'][1]}"
        c = TestClient(create_app(folder or run, settings, **kw), base_url=base_url)
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def format_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One disk image per format the service reads, each of its own odd size."""
    import tifffile

    from unet_lowered.io import images

    folder = tmp_path_factory.mktemp("formats")
    out: dict[str, Path] = {}
    img, _ = disk_image(61, 47, seed=1)
    images.write_png(folder / "gray8.png", img)
    out["png8"] = folder / "gray8.png"
    img, _ = disk_image(73, 58, np.uint16, seed=2)
    images.write_png(folder / "gray16.png", img)
    out["png16"] = folder / "gray16.png"
    img, _ = disk_image(50, 81, seed=3)
    cv2.imwrite(str(folder / "photo.jpg"), img)
    out["jpeg"] = folder / "photo.jpg"
    img, _ = disk_image(79, 64, np.uint16, seed=4)
    tifffile.imwrite(folder / "scan.tif", img)
    out["tiff"] = folder / "scan.tif"
    img, _ = disk_image(45, 67, seed=5)
    cv2.imwrite(str(folder / "colour.bmp"), np.stack([img, img // 3, img], axis=2))
    out["bmp"] = folder / "colour.bmp"
    img, _ = disk_image(66, 52, np.uint16, seed=6)
    write_dicom(folder / "xray", (4095 - img // 16).astype(np.uint16), "MONOCHROME1")
    out["dicom"] = folder / "xray"  # no suffix: recognised by content
    return out


def decode(data: bytes) -> np.ndarray:
    """Decode PNG bytes as stored (gray stays 2-D; colour comes back RGB)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a PNG"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


Reference = Callable[..., dict[str, Any]]


@pytest.fixture
def reference(tmp_path: Path) -> Reference:
    """``reference(run, file, **options)``: what ``unet predict RUN FILE`` writes.

    Returns ``{"mask", "overlay", "prob", "row"}``: the decoded ``<id>.png``,
    ``<id>_overlay.png``, ``<id>_prob.png`` (None for multi-class runs, which write one
    file per class) and the file's ``predictions.csv`` row.
    """
    from unet_lowered.inference.batch import predict_files
    from unet_lowered.inference.predictor import PredictOptions

    count = iter(range(1_000_000))

    def predict(run: Path, path: Path, **options: Any) -> dict[str, Any]:
        out = tmp_path / f"predicted-{next(count)}"
        report = predict_files(
            run,
            [path],
            out,
            PredictOptions(**options),
            save_prob="png",
            save_overlay=True,
            progress=False,
        )
        assert not report.failed, report.failed
        (image_id,) = report.written
        with open(out / "predictions.csv", newline="") as f:
            (row,) = list(csv.DictReader(f))
        return {
            "mask": decode((out / f"{image_id}.png").read_bytes()),
            "overlay": decode((out / f"{image_id}_overlay.png").read_bytes()),
            "prob": decode(prob.read_bytes())
            if (prob := out / f"{image_id}_prob.png").is_file()
            else None,
            "row": row,
        }

    return predict
