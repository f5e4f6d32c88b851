"""Limits that hold whatever a file claims: the cost of counting a TIFF's pages."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from PIL import TiffImagePlugin

from unet_lowered.io import images

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
