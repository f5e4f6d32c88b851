"""Limits that hold whatever a file claims: Pillow's decompression-bomb limit, and the cost
of counting a TIFF's pages."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from dicom_fixtures import jpeg_baseline, write
from unet_lowered.io import images


def _gray(rows: int = 32, cols: int = 48) -> np.ndarray:
    """A small gray ramp (JPEG 2000 encodes nothing much smaller)."""
    return np.tile(np.linspace(0, 255, cols).round().astype(np.uint8), (rows, 1))


# ---------------------------------------------------------------- Pillow's own limit


def test_header_read_leaves_pillows_limit_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12345)
    for fmt in ("JPEG", "TIFF", "BMP", "GIF"):
        path = tmp_path / f"a.{fmt.lower()}"
        Image.fromarray(_gray()).save(path, fmt)
        images.read_image(path)
        assert Image.MAX_IMAGE_PIXELS == 12345, fmt


def test_image_over_pillows_default_but_within_max_pixels_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow refuses images over twice its limit: ours (max_pixels) is the one in force
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    path = tmp_path / "a.gif"
    Image.fromarray(_gray()).save(path)
    assert images.read_image(path).shape == (32, 48)
    assert Image.MAX_IMAGE_PIXELS == 10


def test_dicom_decoders_run_under_max_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pydicom decodes JPEG baseline with Pillow: Pillow's limit is --max-pixels meanwhile
    pixels = pytest.importorskip("pydicom.pixels")
    decode, seen = pixels.pixel_array, []

    def recording(*args, **kwargs):
        seen.append(Image.MAX_IMAGE_PIXELS)
        return decode(*args, **kwargs)

    monkeypatch.setattr(pixels, "pixel_array", recording)
    path = write(tmp_path / "a.dcm", jpeg_baseline(_gray()))
    images.read_image(path, max_pixels=5000)
    assert seen and set(seen) == {5000}


# ---------------------------------------------------------------- multi-page TIFF


def _pages_tiff(path: Path, pages: int) -> Path:
    """A TIFF of ``pages`` 1x1 gray pages sharing one pixel byte (as a chain of IFDs)."""
    entries = 8
    ifd = 2 + 12 * entries + 4
    pixel = 8 + pages * ifd
    data = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for k in range(pages):
        tags = [(256, 1), (257, 1), (258, 8), (259, 1), (262, 1), (273, pixel), (277, 1), (279, 1)]
        data += struct.pack("<H", entries)
        for tag, value in tags:
            data += struct.pack("<HHII", tag, 4 if tag in (273, 279) else 3, 1, value)
        data += struct.pack("<I", 8 + (k + 1) * ifd if k + 1 < pages else 0)
    data += b"\x80"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("pages", [2, images.FRAMES_COUNTED - 1])
def test_tiff_pages_counted(tmp_path: Path, pages: int) -> None:
    path = _pages_tiff(tmp_path / "p.tif", pages)
    notes: list[str] = []
    assert images.read_image(path, notes=notes).tolist() == [[128]]
    assert notes == [f"{path}: multi-page TIFF with {pages} frames; the first frame is used"]


def test_long_tiff_page_chain_is_not_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow's n_frames walks every page, in time quadratic in their number
    def walked(self):
        raise AssertionError("every page was counted")

    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "n_frames", property(walked))
    path = _pages_tiff(tmp_path / "p.tif", 20000)
    notes: list[str] = []
    assert images.read_image(path, notes=notes).tolist() == [[128]]
    assert images.read_header(path).frames == images.FRAMES_COUNTED
    assert notes == [
        f"{path}: multi-page TIFF with at least {images.FRAMES_COUNTED} frames; "
        "the first frame is used"
    ]
