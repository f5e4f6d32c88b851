"""Reading and writing images, recognised by content rather than by extension.

Every stage reads pixels through :func:`read_image`, which returns a NumPy array
in one convention:

* shape ``(H, W)`` for gray or ``(H, W, 3)`` for colour, channels in **RGB** order
  (OpenCV's BGR is converted here and nowhere else);
* dtype ``uint8`` or ``uint16`` (16-bit PNG/TIFF stay 16-bit; DICOM is windowed and
  scaled to ``uint16``); alpha is dropped.

The pixel count is read from the file header and checked against ``max_pixels``
*before* decoding, so a small file that decodes to gigabytes is refused cheaply.
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from unet_lowered.errors import UnetError
from unet_lowered.io import atomic

_WARNINGS_LOCK = threading.Lock()

DEFAULT_MAX_PIXELS = 100_000_000
"""Images with more pixels than this (100 megapixels) are refused before decoding."""

FORMATS = ("png", "jpeg", "tiff", "bmp", "dicom")
"""Image formats :func:`sniff_format` recognises."""

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})
"""File suffixes that usually hold images (used to pick files in folders; content decides)."""

JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "Icon\r"})
"""Operating-system litter that folder walking ignores silently."""


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, without decoding its pixels.

    Attributes:
        format: One of :data:`FORMATS`.
        width: Width in pixels.
        height: Height in pixels.
        channels: Channels as stored (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA).
        bit_depth: Bits per channel (8 or 16; 16 for DICOM).
    """

    format: str
    width: int
    height: int
    channels: int
    bit_depth: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_format(path: str | os.PathLike) -> str | None:
    """Return the image format of ``path`` from its first bytes, or None if it is not an image."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"BM"):
        return "bmp"
    if head[128:132] == b"DICM":
        return "dicom"
    return None


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file's content is an image this package reads (not its name)."""
    return sniff_format(path) is not None


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Read an image's size, channels and bit depth from its header.

    Raises:
        UnetError: The file is missing, not an image, or its header is corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise UnetError(f"{path}: no such file; check the path")
    fmt = sniff_format(path)
    if fmt is None:
        raise UnetError(
            f"{path}: not an image this tool reads (expected PNG, JPEG, TIFF, BMP or DICOM content)"
        )
    if fmt == "dicom":
        ds = _read_dicom(path, stop_before_pixels=True)
        return ImageHeader(
            "dicom", int(ds.Columns), int(ds.Rows), int(getattr(ds, "SamplesPerPixel", 1)), 16
        )
    if fmt == "png":
        return _png_header(path)
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit in read_image
    try:
        # Damaged files make PIL warn before it fails. catch_warnings swaps a process-wide
        # filter list, so threads (prepare decodes in parallel) must take turns here.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                width, height = im.size
                mode = im.mode
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UnetError(f"{path}: corrupt or unreadable {fmt.upper()} header ({e})") from None
    channels = {"1": 1, "L": 1, "P": 3, "LA": 2, "PA": 4, "RGB": 3, "RGBA": 4, "CMYK": 3}.get(
        mode, 1
    )
    bit_depth = 16 if mode.startswith("I;16") or mode in ("I", "F") else 8
    return ImageHeader(fmt, width, height, channels, bit_depth)


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file into an ``(H, W)`` or ``(H, W, 3)`` RGB array.

    Args:
        path: The file. Its format is recognised by content (PNG, JPEG, TIFF, BMP, DICOM).
        max_pixels: Refuse images larger than this before decoding them.

    Returns:
        ``uint8`` or ``uint16`` array; gray images are 2-D, colour images RGB; alpha dropped.

    Raises:
        UnetError: Missing, not an image, too large, or corrupt; the message names the file.
    """
    path = Path(path)
    header = read_header(path)
    if header.pixels > max_pixels:
        raise UnetError(
            f"{path}: {header.width}x{header.height} is {header.pixels / 1e6:.0f} megapixels, "
            f"over the limit of {max_pixels / 1e6:.0f}; raise it with --max-pixels if the image is real"
        )
    if header.format == "dicom":
        return _decode_dicom(path)
    data = np.fromfile(path, dtype=np.uint8)  # imdecode, unlike imread, copes with any path
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise UnetError(f"{path}: the {header.format.upper()} data is corrupt or truncated")
    if image.ndim == 3 and (image.shape[2] == 1 or header.channels == 2):
        image = image[:, :, 0]  # gray (+ alpha, which OpenCV expands to BGRA)
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        image = cv2.cvtColor(image, code)
    return _to_uint(image, path)


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an ``(H, W)`` or ``(H, W, 3)`` RGB ``uint8``/``uint16`` array as PNG, atomically."""
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_png expects uint8 or uint16, got {image.dtype}")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise UnetError(f"{path}: could not encode PNG")
    return atomic.write_bytes(path, buf.tobytes())


def is_gray_as_rgb(image: np.ndarray) -> bool:
    """True for a 3-channel image whose three channels are identical."""
    return (
        image.ndim == 3
        and image.shape[2] == 3
        and bool(np.array_equal(image[..., 0], image[..., 1]))
        and bool(np.array_equal(image[..., 0], image[..., 2]))
    )


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Return ``image`` with 1 (gray, 2-D) or 3 (RGB) channels, converting as needed."""
    if channels == 1:
        if image.ndim == 2:
            return image
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if channels == 3:
        if image.ndim == 3:
            return image
        return np.repeat(image[:, :, None], 3, axis=2)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def iter_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """List the files under ``folder``, sorted, skipping OS junk and hidden files.

    Symbolic links to folders are not followed, so link loops cannot trap the walk.
    """
    folder = Path(folder)
    out: list[Path] = []
    if recursive:
        for root, dirs, files in os.walk(folder, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out.extend(Path(root) / f for f in files if _keep(f))
    else:
        out = [p for p in folder.iterdir() if p.is_file() and _keep(p.name)]
    return sorted(out)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
"""PNG colour type -> channels (3 = palette, decoded to RGB)."""


def _png_header(path: Path) -> ImageHeader:
    """Read a PNG's IHDR chunk directly (PIL reports 16-bit RGB PNGs as 8-bit ``RGB``)."""
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[12:16] != b"IHDR":
        raise UnetError(f"{path}: corrupt PNG header (no IHDR chunk); re-save the file")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16) or not width or not height:
        raise UnetError(f"{path}: corrupt PNG header ({width}x{height}, colour type {colour})")
    return ImageHeader("png", width, height, _PNG_CHANNELS[colour], 16 if depth == 16 else 8)


def _keep(name: str) -> bool:
    return name not in JUNK_NAMES and not name.startswith(".")


def _to_uint(image: np.ndarray, path: Path) -> np.ndarray:
    """Bring unusual sample types (float or 32-bit TIFF) to uint16 by min-max scaling."""
    if image.dtype in (np.uint8, np.uint16):
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    image = image.astype(np.float64)
    lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise UnetError(f"{path}: the image holds no finite pixel values")
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return np.round(scaled * 65535).astype(np.uint16)


def _read_dicom(path: Path, stop_before_pixels: bool = False):
    try:
        import pydicom
    except ImportError:
        raise UnetError(
            f"{path}: reading DICOM needs pydicom; install it with: pip install 'unet-lowered[dicom]'"
        ) from None
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except Exception as e:  # pydicom raises many types for damaged files
        raise UnetError(f"{path}: corrupt or unreadable DICOM ({e})") from None


def _decode_dicom(path: Path) -> np.ndarray:
    """Decode a DICOM image: modality rescale, VOI window, MONOCHROME1 inversion, to uint16."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = _read_dicom(path)
    try:
        pixels = ds.pixel_array
    except Exception as e:
        raise UnetError(
            f"{path}: cannot decode the DICOM pixel data ({e}); compressed transfer syntaxes "
            "may need pylibjpeg or gdcm installed"
        ) from None
    if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        pixels = pixels[0]  # multi-frame: first frame
    if getattr(ds, "SamplesPerPixel", 1) == 3:
        return _to_uint(pixels, path)
    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float64)
    if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        values = values.max() - values
    return _to_uint(values.astype(np.float32), path)
