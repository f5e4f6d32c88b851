"""Tests for images.py: format sniffing, headers, decoding conventions, folder walking."""

from __future__ import annotations

import os
import re
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from unet_lowered.errors import UnetError
from unet_lowered.io import images


def _write_cv(path, array: np.ndarray) -> str:
    assert cv2.imwrite(str(path), array)
    return str(path)


# (name, array as OpenCV writes it (BGR[A]), expected header (channels, bit depth),
#  expected decoded shape and dtype)
CASES = [
    ("g8.png", np.zeros((4, 5), np.uint8), (1, 8), (4, 5), np.uint8),
    ("g16.png", np.full((4, 5), 1000, np.uint16), (1, 16), (4, 5), np.uint16),
    ("rgb8.png", np.zeros((4, 5, 3), np.uint8), (3, 8), (4, 5, 3), np.uint8),
    ("rgb16.png", np.full((4, 5, 3), 1000, np.uint16), (3, 16), (4, 5, 3), np.uint16),
    ("rgba8.png", np.full((4, 5, 4), 7, np.uint8), (4, 8), (4, 5, 3), np.uint8),
    ("rgba16.png", np.full((4, 5, 4), 900, np.uint16), (4, 16), (4, 5, 3), np.uint16),
    ("g16.tif", np.full((4, 5), 1000, np.uint16), (1, 16), (4, 5), np.uint16),
    ("g8.jpg", np.zeros((4, 5), np.uint8), (1, 8), (4, 5), np.uint8),
    ("rgb.bmp", np.zeros((4, 5, 3), np.uint8), (3, 8), (4, 5, 3), np.uint8),
]


@pytest.mark.parametrize(("name", "array", "header", "shape", "dtype"), CASES)
def test_header_and_decode(tmp_path, name, array, header, shape, dtype):
    path = _write_cv(tmp_path / name, array)
    h = images.read_header(path)
    assert (h.width, h.height) == (5, 4)
    assert (h.channels, h.bit_depth) == header
    image = images.read_image(path)
    assert image.shape == shape
    assert image.dtype == dtype


def test_colour_is_rgb_not_bgr(tmp_path):
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    image = images.read_image(_write_cv(tmp_path / "red.png", bgr))
    assert image[0, 0].tolist() == [200, 0, 0]


def test_gray_alpha_png_decodes_to_gray(tmp_path):
    Image.new("LA", (5, 4), (77, 128)).save(tmp_path / "la.png")
    assert images.read_header(tmp_path / "la.png").channels == 2
    image = images.read_image(tmp_path / "la.png")
    assert image.shape == (4, 5)
    assert int(image[0, 0]) == 77


@pytest.mark.parametrize(
    ("content", "fmt"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "png"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 20, "jpeg"),
        (b"II*\x00" + b"\0" * 20, "tiff"),
        (b"MM\x00*" + b"\0" * 20, "tiff"),
        (b"BM" + b"\0" * 20, "bmp"),
        (b"\0" * 128 + b"DICM" + b"\0" * 8, "dicom"),
        (b"hello, not an image", None),
        (b"", None),
    ],
)
def test_sniff_format_by_content(tmp_path, content, fmt):
    path = tmp_path / "file.png"  # the suffix must not matter
    path.write_bytes(content)
    assert images.sniff_format(path) == fmt


def test_png_content_with_jpg_suffix_is_read(tmp_path):
    path = _write_cv(tmp_path / "a.png", np.full((3, 3), 9, np.uint8))
    os.rename(path, tmp_path / "a.jpg")
    assert images.sniff_format(tmp_path / "a.jpg") == "png"
    assert int(images.read_image(tmp_path / "a.jpg")[0, 0]) == 9


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".bmp"])
def test_truncated_file_is_a_one_line_error_naming_it(tmp_path, suffix):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    path = tmp_path / f"broken{suffix}"
    _write_cv(path, noise)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnetError, match="broken") as info:
        images.read_image(path)
    assert "\n" not in str(info.value)


def test_not_an_image_and_missing(tmp_path):
    (tmp_path / "notes.png").write_text("just text")
    with pytest.raises(UnetError, match=r"notes\.png: not an image"):
        images.read_image(tmp_path / "notes.png")
    with pytest.raises(UnetError, match="no such file"):
        images.read_image(tmp_path / "absent.png")


def test_pixel_limit_refused_before_decoding(tmp_path):
    path = _write_cv(tmp_path / "big.png", np.zeros((100, 100), np.uint8))
    with pytest.raises(UnetError, match=r"big\.png: 100x100 .*--max-pixels"):
        images.read_image(path, max_pixels=9_999)
    assert images.read_image(path, max_pixels=10_000).shape == (100, 100)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_pixel_limit_uses_header_of_a_decompression_bomb(tmp_path):
    # A PNG header that claims 20000 x 20000 (400 MB decoded) in a 60-byte file.
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))
    assert images.read_header(path).pixels == 400_000_000
    with pytest.raises(UnetError, match="400 megapixels"):
        images.read_image(path)


def test_corrupt_png_header(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    with pytest.raises(UnetError, match=r"bad\.png: corrupt PNG header"):
        images.read_header(path)


def test_write_png_round_trip(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 65535, (3, 4, 3), dtype=np.uint16)
    images.write_png(tmp_path / "x.png", rgb)
    assert np.array_equal(images.read_image(tmp_path / "x.png"), rgb)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        images.write_png(tmp_path / "f.png", rgb.astype(np.float32))


def test_gray_as_rgb_and_channels():
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    rgb = images.to_channels(gray, 3)
    assert rgb.shape == (2, 3, 3)
    assert images.is_gray_as_rgb(rgb)
    assert np.array_equal(images.to_channels(rgb, 1), gray)
    rgb[0, 0, 1] = 99
    assert not images.is_gray_as_rgb(rgb)
    assert not images.is_gray_as_rgb(gray)
    with pytest.raises(ValueError, match="1 or 3"):
        images.to_channels(gray, 2)


@pytest.mark.parametrize(
    ("form", "channels", "shape", "dtype"),
    [
        (lambda g: g[:, :, None], 1, (2, 3), np.uint8),
        (lambda g: g[:, :, None], 3, (2, 3, 3), np.uint8),  # was (2, 3, 1)
        (lambda g: np.dstack([g, g, g, g]), 1, (2, 3), np.uint8),
        (lambda g: np.dstack([g, g, g, g]), 3, (2, 3, 3), np.uint8),  # was (2, 3, 4)
        (lambda g: np.dstack([g, g, g]).astype(np.float64), 1, (2, 3), np.float32),
        (lambda g: np.dstack([g, g, g]).astype(np.int64), 1, (2, 3), np.float32),
        (lambda g: np.dstack([g, g, g]).astype(np.float64), 3, (2, 3, 3), np.float64),
    ],
    ids=["HxWx1-gray", "HxWx1-rgb", "rgba-gray", "rgba-rgb", "f64-gray", "int64-gray", "f64-rgb"],
)
def test_to_channels_takes_every_layout_of_a_gray_image(form, channels, shape, dtype):
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    out = images.to_channels(form(gray), channels)
    assert out.shape == shape and out.dtype == dtype
    expected = gray if channels == 1 else np.dstack([gray, gray, gray])
    assert np.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "hint"),
    [((2, 3, 2), ""), ((3, 5, 6), "move the channel axis last"), ((1, 2, 3, 3), "one image")],
)
def test_to_channels_names_a_shape_it_cannot_take(shape, hint):
    message = re.escape(f"an image of shape {shape}: expected (H, W)") + f".*{hint}"
    with pytest.raises(UnetError, match=message):
        images.to_channels(np.zeros(shape, np.uint8), 1)


def test_iter_files_skips_junk_and_survives_link_loops(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    (tmp_path / "Thumbs.db").write_bytes(b"x")
    (tmp_path / "._a.png").write_bytes(b"x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.png").write_bytes(b"x")
    (sub / "loop").symlink_to(tmp_path, target_is_directory=True)
    found = [p.relative_to(tmp_path).as_posix() for p in images.iter_files(tmp_path)]
    assert found == ["a.png", "sub/b.png"]
    assert [p.name for p in images.iter_files(tmp_path, recursive=False)] == ["a.png"]


def test_opencv_prints_nothing_for_a_damaged_png(tmp_path) -> None:
    """OpenCV's own "[ERROR] ... IHDR chunk shall be first" line stays off stderr: the
    product reports such a file itself, in one line."""
    import subprocess
    import sys

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)
    path = tmp_path / "late_ihdr.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"tEXt", b"a\x00b") + chunk(b"IHDR", ihdr))
    code = (
        "import sys, numpy as np, unet_lowered.cli, cv2; "
        "print(cv2.imdecode(np.fromfile(sys.argv[1], np.uint8), -1) is None)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env
    )
    assert done.stdout.strip() == "True" and done.stderr == "", done.stderr
