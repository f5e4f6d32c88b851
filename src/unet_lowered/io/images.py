"""Reading and writing images, recognised by content rather than by extension.

Every stage reads pixels through :func:`read_image`, which returns a NumPy array
in one convention:

* shape ``(H, W)`` for gray or ``(H, W, 3)`` for colour, channels in **RGB** order
  (OpenCV's BGR is converted here and nowhere else);
* dtype ``uint8`` or ``uint16`` (16-bit PNG/TIFF stay 16-bit; DICOM is windowed and
  scaled to ``uint16``); alpha is dropped.

The pixel count is read from the file header and checked against ``max_pixels``
*before* decoding, so a small file that decodes to gigabytes is refused cheaply. A
compressed DICOM frame declares its own size too, and is refused unless it is the size
the DICOM header gives; Pillow's own limit is ``max_pixels`` while it decodes.

What is read, and how:

* **Several frames** (animated GIF or APNG, multi-page TIFF, multi-frame DICOM): the
  first frame, with a note.
* **JPEG EXIF orientation** is applied, as image viewers apply it: the pixels come
  back the way the image is shown, and :func:`read_header` reports that size. Other
  formats are read as stored.
* **Float images** (TIFF) are scaled to ``uint16`` by their finite minimum and
  maximum; NaN and -inf become the minimum, +inf the maximum (with a note).
* **DICOM** (needs the ``dicom`` extra: pydicom and the decoders of the compressed
  transfer syntaxes) is recognised with or without the 128-byte preamble and file
  meta information, and presented as a viewer shows it: the first frame; the
  Modality LUT (rescale slope/intercept or the LUT sequence); the VOI LUT (the first
  window, or the LUT sequence; enhanced multi-frame files: the first frame's from its
  functional groups); inverted once for MONOCHROME1 or a Presentation LUT
  Shape of INVERSE (DX files carry both for the same inversion); pixels equal to the
  Pixel Padding Value (or in its range) are left out of the scaling to 16 bits and
  come back as 0 (black); RGB, YBR and palette colour come back as RGB.

Notes (a first frame taken, an orientation applied, ...) are appended to the
``notes`` list that :func:`read_image` accepts, one line each, naming the file.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from unet_lowered.errors import MissingExtraError, UnetError
from unet_lowered.io import atomic

_WARNINGS_LOCK = threading.RLock()

# OpenCV warns on stderr about every damaged file, which we report in one line ourselves.
# The `unet` command sets OPENCV_LOG_LEVEL=SILENT, which OpenCV reads only when it is
# first imported; apply it here too, for programs that imported cv2 before that.
if os.environ.get("OPENCV_LOG_LEVEL", "").upper() == "SILENT":
    _logging = getattr(cv2.utils, "logging", None)  # OpenCV 4.13 and later
    if _logging is not None:
        _logging.setLogLevel(_logging.LOG_LEVEL_SILENT)
    else:
        cv2.setLogLevel(0)  # the older spelling: 0 is LOG_LEVEL_SILENT

DEFAULT_MAX_PIXELS = 100_000_000
"""Images with more pixels than this (100 megapixels) are refused before decoding."""

FORMATS = ("png", "jpeg", "tiff", "bmp", "gif", "dicom")
"""Image formats :func:`sniff_format` recognises."""

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".dcm", ".dicom"}
)
"""File suffixes that usually hold images (used to pick files in folders; content decides)."""

JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "Icon\r"})
"""Operating-system litter that folder walking ignores silently."""

INSTALL_DICOM = "pip install 'unet-lowered[dicom]'"
"""How to install pydicom and the decoders of compressed DICOM."""


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, without decoding its pixels.

    Attributes:
        format: One of :data:`FORMATS`.
        width: Width in pixels (as :func:`read_image` returns the image: after a JPEG's
            EXIF orientation).
        height: Height in pixels (likewise).
        channels: Channels as stored (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA).
        bit_depth: Bits per channel (8 or 16; 16 for DICOM).
        frames: Frames or pages in the file (only the first is read); a TIFF's pages
            are counted up to :data:`FRAMES_COUNTED`.
        orientation: EXIF orientation of a JPEG (1 = as stored; 2-8 are applied).
    """

    format: str
    width: int
    height: int
    channels: int
    bit_depth: int
    frames: int = 1
    orientation: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_format(path: str | os.PathLike) -> str | None:
    """Return the image format of ``path`` from its first bytes, or None if it is not an image.

    DICOM is recognised by the ``DICM`` marker after the 128-byte preamble, or, for
    files without preamble and file meta information (old exports), by the first
    elements of the data set: tags of group 0002 or 0008 in ascending order with
    lengths that fit the file, in implicit or explicit VR (see :func:`_is_dicom_dataset`).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    return _format_of(head, size)


_SNIFF_BYTES = 4096


def _format_of(head: bytes, size: int) -> str | None:
    if head[128:132] == b"DICM":  # first: a DICOM preamble may itself look like a TIFF header
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if _is_dicom_dataset(head, size):
        return "dicom"
    return None


# Value representations of explicit-VR DICOM; those in _LONG_VRS have a 4-byte length.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI "
    b"UL UN UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())
_PIXEL_DATA = (0x7FE0, 0x0010)


def _is_dicom_dataset(head: bytes, size: int) -> bool:
    """True when ``head`` starts like a DICOM data set without preamble (cheap and strict).

    The first tag must be of group 0002 (file meta without preamble) or 0008 (a bare
    data set, as old CR exports write it); then up to eight elements are walked in
    implicit or explicit VR, little or big endian: tags must ascend, lengths must be
    even (or undefined, where DICOM allows it) and fit in the file. At least three
    elements, or two and the Pixel Data, make a data set. Random bytes, text and other
    formats fail within the first element or two.
    """
    if len(head) < 8:
        return False
    for order in "<>":
        group = struct.unpack(f"{order}H", head[:2])[0]
        if group not in (0x0002, 0x0008):
            continue
        explicit = head[4:6] in _VRS
        if order == ">" and not explicit:
            continue  # big endian is always explicit VR
        if _walk_elements(head, size, order, explicit):
            return True
    return False


def _walk_elements(head: bytes, size: int, order: str, explicit: bool) -> bool:
    pos, count, last = 0, 0, (-1, -1)
    while count < 8:
        if pos + 8 > len(head):
            return count >= 3
        group, element = struct.unpack(f"{order}HH", head[pos : pos + 4])
        tag = (group, element)
        if tag <= last:
            return False
        if explicit and group != 0xFFFE:
            vr = head[pos + 4 : pos + 6]
            if vr not in _VRS:
                return False
            if vr in _LONG_VRS:
                if pos + 12 > len(head) or head[pos + 6 : pos + 8] != b"\0\0":
                    return count >= 3
                length = struct.unpack(f"{order}I", head[pos + 8 : pos + 12])[0]
                pos += 12
            else:
                length = struct.unpack(f"{order}H", head[pos + 6 : pos + 8])[0]
                pos += 8
        else:
            vr = b""
            length = struct.unpack(f"{order}I", head[pos + 4 : pos + 8])[0]
            pos += 8
        count += 1
        last = tag
        if tag == _PIXEL_DATA:
            return count >= 2
        if length == 0xFFFFFFFF:  # a sequence (or encapsulated data) of undefined length
            return (not explicit or vr in (b"SQ", b"UN", b"OB")) and count >= 2
        if length % 2 or pos + length > size:
            return False
        pos += length
    return True


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file's content is an image this package reads (not its name)."""
    return sniff_format(path) is not None


def _open_head(path: Path) -> tuple[bytes, int]:
    """The first bytes and the size of ``path``, or a one-line error saying why not."""
    if path.is_dir():
        raise UnetError(f"{path}: is a folder, not an image file")
    if not path.exists():
        raise UnetError(f"{path}: no such file; check the path")
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise UnetError(
            f"{path}: cannot be read ({e.strerror or e}); check its permissions"
        ) from None
    if size == 0:
        raise UnetError(f"{path}: the file is empty (0 bytes); re-export or re-copy it")
    return head, size


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Read an image's size, channels and bit depth from its header.

    Raises:
        UnetError: The file is missing, a folder, unreadable, empty, not an image, or its
            header is corrupt.
    """
    path = Path(path)
    head, size = _open_head(path)
    fmt = _format_of(head, size)
    if fmt is None:
        raise UnetError(
            f"{path}: not an image this tool reads (expected PNG, JPEG, TIFF, BMP, GIF or "
            "DICOM content)"
        )
    if fmt == "dicom":
        return _dicom_header(path)
    if fmt == "png":
        return _png_header(path)
    from PIL import Image, UnidentifiedImageError

    try:
        # Damaged files make PIL warn before it fails. catch_warnings swaps a process-wide
        # filter list, so threads (prepare decodes in parallel) must take turns here.
        # Pillow's own pixel limit is lifted while only the header is read (read_image
        # applies --max-pixels to the size found here), and restored after.
        with _WARNINGS_LOCK, warnings.catch_warnings(), _pillow_limit(None):
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                width, height = im.size
                mode = im.mode
                orientation = _exif_orientation(im) if fmt == "jpeg" else 1
                frames = _count_frames(im, fmt)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error) as e:
        raise UnetError(
            f"{path}: corrupt or unreadable {fmt.upper()} header ({_one_line(e)})"
        ) from None
    channels = {"1": 1, "L": 1, "P": 3, "LA": 2, "PA": 4, "RGB": 3, "RGBA": 4, "CMYK": 3}.get(
        mode, 1
    )
    bit_depth = 16 if mode.startswith("I;16") or mode in ("I", "F") else 8
    if orientation >= 5:  # rotated by 90 degrees: shown with width and height swapped
        width, height = height, width
    return ImageHeader(fmt, width, height, channels, bit_depth, frames, orientation)


FRAMES_COUNTED = 100
"""A multi-page TIFF's pages are counted up to this many (see :func:`_count_frames`)."""


def _count_frames(im: Any, fmt: str) -> int:
    """Frames of an open Pillow image; a TIFF's pages only up to :data:`FRAMES_COUNTED`.

    Pillow counts a TIFF's pages by walking its chain of directories in time quadratic
    in their number, and a file of a few megabytes can chain a hundred thousand pages;
    only the first page is read, so a few suffice for the note. GIF frames are counted
    to the end: Pillow skips over them without decoding, in time linear in the file.
    """
    if fmt != "tiff":
        return int(getattr(im, "n_frames", 1) or 1)
    frames = 1
    try:
        while frames < FRAMES_COUNTED:
            im.seek(frames)  # reads the next directory only
            frames += 1
    except EOFError:
        pass
    return frames


@contextlib.contextmanager
def _pillow_limit(max_pixels: int | None) -> Iterator[None]:
    """Set Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) for a block.

    Pillow refuses images over twice the limit when it opens them; the limit is a
    process-wide setting, so it is set here for one header read or decode (under the
    lock every Pillow use in this module holds) and restored after: a header read leaves
    it unchanged for the rest of the process, and a decode (a GIF, a DICOM's JPEG frame
    through pydicom's Pillow decoder) has Pillow refuse anything over ``max_pixels``.
    """
    from PIL import Image

    with _WARNINGS_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def read_image(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Decode an image file into an ``(H, W)`` or ``(H, W, 3)`` RGB array.

    Args:
        path: The file. Its format is recognised by content (PNG, JPEG, TIFF, BMP, GIF,
            DICOM).
        max_pixels: Refuse images larger than this before decoding them.
        notes: If given, one line is appended per thing worth telling the user (only the
            first of several frames read, an EXIF orientation applied, non-finite values
            replaced, ...).

    Returns:
        ``uint8`` or ``uint16`` array; gray images are 2-D, colour images RGB; alpha dropped.

    Raises:
        UnetError: Missing, not an image, too large, or corrupt; the message names the file.
    """
    path = Path(path)
    notes = [] if notes is None else notes
    header = read_header(path)
    if header.pixels > max_pixels:
        raise UnetError(
            f"{path}: {header.width}x{header.height} is {header.pixels / 1e6:.0f} megapixels, "
            f"over the limit of {max_pixels / 1e6:.0f}; raise it with --max-pixels if the image is real"
        )
    if header.format == "dicom":
        return _decode_dicom(path, notes, max_pixels)
    if header.format == "gif":
        image = _decode_gif(path, max_pixels)
    else:
        data = np.fromfile(path, dtype=np.uint8)  # imdecode, unlike imread, copes with any path
        try:
            image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        except cv2.error as e:
            raise UnetError(
                f"{path}: the {header.format.upper()} data cannot be decoded ({_one_line(e)})"
            ) from None
    if image is None or image.size == 0:
        raise UnetError(f"{path}: the {header.format.upper()} data is corrupt or truncated")
    if image.ndim == 3 and (image.shape[2] == 1 or header.channels == 2):
        image = image[:, :, 0]  # gray (+ alpha, which OpenCV expands to BGRA)
    if image.ndim == 3 and header.format != "gif":
        code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        image = cv2.cvtColor(image, code)
    frames = _png_frames(path) if header.format == "png" else header.frames
    if frames > 1:
        kind = {"png": "animated PNG", "gif": "animated GIF", "tiff": "multi-page TIFF"}
        many = "at least " if header.format == "tiff" and frames >= FRAMES_COUNTED else ""
        notes.append(
            f"{path}: {kind.get(header.format, header.format.upper())} with {many}{frames} "
            "frames; the first frame is used"
        )
    if header.orientation != 1:
        image = _orient(image, header.orientation)
        notes.append(
            f"{path}: EXIF orientation {header.orientation} applied (the image is read as "
            "viewers show it)"
        )
    return _to_uint(image, path, notes)


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


_CV_DTYPES = (np.uint8, np.uint16, np.float32)
"""The dtypes OpenCV's colour conversions take."""


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Return ``image`` as gray ``(H, W)`` (``channels=1``) or RGB ``(H, W, 3)`` (3).

    Args:
        image: ``(H, W)`` or ``(H, W, 1)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA
            (the alpha is dropped), of any numeric or bool dtype. uint8, uint16 and
            float32 are kept; an image whose colours must be converted is first made
            float32 if it is of another dtype (float64, integers, bool), since OpenCV
            converts only those three.
        channels: 1 or 3.

    Returns:
        ``(H, W)`` for 1 channel, ``(H, W, 3)`` for 3 (a gray image repeated).

    Raises:
        UnetError: ``image`` has another shape (the message names it).
        ValueError: ``channels`` is not 1 or 3.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image if channels == 1 else np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        if image.ndim == 4:
            hint = "; pass one image at a time, not a batch"
        elif image.ndim == 3 and image.shape[0] in (1, 3, 4):
            hint = "; move the channel axis last (np.moveaxis(image, 0, -1))"
        else:
            hint = ""
        raise UnetError(
            f"an image of shape {image.shape}: expected (H, W) or (H, W, 1) gray, "
            f"(H, W, 3) RGB or (H, W, 4) RGBA{hint}"
        )
    if channels == 3 and image.shape[2] == 3:
        return image
    if image.dtype not in _CV_DTYPES:
        image = image.astype(np.float32)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY if image.shape[2] == 4 else cv2.COLOR_RGB2GRAY)


def iter_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """List the files under ``folder``, sorted, skipping OS junk and hidden files.

    Symbolic links to folders are not followed, so link loops cannot trap the walk.

    Raises:
        UnetError: ``folder`` or (``recursive``) a folder under it cannot be listed (no
            permission): its files would be left out without a word.
    """
    folder = Path(folder)
    out: list[Path] = []

    def unreadable(error: OSError) -> None:
        where = error.filename or folder
        raise UnetError(
            f"{where}: cannot be read ({error.strerror or error}); fix its permissions or "
            "leave it out"
        )

    if recursive:
        for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out.extend(Path(root) / f for f in files if _keep(f))
    else:
        try:
            out = [p for p in folder.iterdir() if p.is_file() and _keep(p.name)]
        except OSError as e:
            unreadable(e)
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


def _png_frames(path: Path) -> int:
    """Frames of an animated PNG (its ``acTL`` chunk before the image data), else 1."""
    try:
        with open(path, "rb") as f:
            f.seek(8)
            for _ in range(64):  # acTL comes before IDAT, among the first chunks
                chunk = f.read(8)
                if len(chunk) < 8:
                    return 1
                length, kind = struct.unpack(">I4s", chunk)
                if kind == b"acTL":
                    data = f.read(8)
                    return max(1, struct.unpack(">I", data[:4])[0]) if len(data) == 8 else 1
                if kind in (b"IDAT", b"IEND"):
                    return 1
                f.seek(length + 4, os.SEEK_CUR)
    except OSError:
        return 1
    return 1


def _exif_orientation(im: Any) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block: read the pixels as stored
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (2-8) as viewers do (PIL's ``ImageOps.exif_transpose``)."""
    swap = (1, 0, 2) if image.ndim == 3 else (1, 0)
    out = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(swap),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.transpose(swap)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }[orientation](image)
    return np.ascontiguousarray(out)


def _decode_gif(path: Path, max_pixels: int) -> np.ndarray:
    """The first frame of a GIF as RGB (or gray, when its palette is gray)."""
    from PIL import Image

    try:
        with _WARNINGS_LOCK, warnings.catch_warnings(), _pillow_limit(max_pixels):
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.seek(0)
                rgb = np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises OSError, ValueError, EOFError, ... for damaged files
        raise UnetError(f"{path}: the GIF data is corrupt or truncated ({_one_line(e)})") from None
    return rgb[:, :, 0].copy() if is_gray_as_rgb(rgb) else rgb


def _keep(name: str) -> bool:
    return name not in JUNK_NAMES and not name.startswith(".")


def _to_uint(image: np.ndarray, path: Path, notes: list[str] | None = None) -> np.ndarray:
    """Bring unusual sample types (float or 32-bit TIFF) to uint16 by min-max scaling.

    Non-finite values: NaN and -inf become the minimum, +inf the maximum (with a note).
    """
    if image.dtype in (np.uint8, np.uint16):
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    image = image.astype(np.float64)
    finite = np.isfinite(image)
    if not finite.any():
        raise UnetError(f"{path}: the image holds no finite pixel values (all NaN or infinite)")
    lo, hi = float(image[finite].min()), float(image[finite].max())
    if not finite.all():
        bad = int((~finite).sum())
        image = np.where(np.isposinf(image), hi, np.where(finite, image, lo))
        if notes is not None:
            notes.append(
                f"{path}: {bad} NaN or infinite pixel value(s) read as the image's "
                "minimum (NaN, -inf) or maximum (+inf)"
            )
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return np.round(scaled * 65535).astype(np.uint16)


def _one_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, shortened: libraries write paragraphs."""
    text = str(error).strip() or type(error).__name__
    lines = [part.strip() for part in text.splitlines() if part.strip()]
    line = lines[0]
    if line.endswith(":") and len(lines) > 1:  # "... raised by all plugins:" + the first reason
        line = f"{line} {lines[1]}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---------------------------------------------------------------- DICOM


@contextlib.contextmanager
def _quiet(fd2: bool = False) -> Iterator[None]:
    """Silence Python warnings (pydicom warns about every odd value it meets, lazily, on
    access) and, with ``fd2``, what C decoders print on file descriptor 2 (OpenJPEG
    prints its errors there). Threads take turns: both are process-wide."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not fd2:
            yield
            return
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _pydicom(path: Path) -> Any:
    try:
        import pydicom
    except ImportError:
        raise MissingExtraError(
            f"{path}: reading DICOM needs pydicom and its decoders; install them with: "
            f"{INSTALL_DICOM}"
        ) from None
    return pydicom


def _read_dicom(path: Path, stop_before_pixels: bool = False) -> Any:
    """The data set of ``path`` (``force=True``: the content was recognised as DICOM)."""
    pydicom = _pydicom(path)
    try:
        with _quiet():
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except Exception as e:  # pydicom raises many types for damaged files
        raise UnetError(
            f"{path}: corrupt or unreadable DICOM ({_one_line(e)}); re-export it from the PACS"
        ) from None
    if "Rows" not in ds or "Columns" not in ds:
        meta = getattr(ds, "file_meta", None)
        sop = str((meta or {}).get("MediaStorageSOPClassUID", ds.get("SOPClassUID", "")))
        if sop == DICOMDIR_SOP_CLASS or path.name.upper() == "DICOMDIR":
            raise UnetError(
                f"{path}: a DICOMDIR, the index of a DICOM export, not an image; give its "
                "folder with --recursive to read the images it lists"
            )
        if not stop_before_pixels and _has_image_header(path, pydicom):
            raise UnetError(
                f"{path}: the file ends before its image data does (its header names an "
                "image); it is truncated or damaged: copy or export it again"
            )
        raise UnetError(f"{path}: a DICOM file without an image (no Rows/Columns); nothing to read")
    return ds


DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
"""Media Storage Directory Storage: a DICOMDIR, the index of an export (no image)."""


def _has_image_header(path: Path, pydicom: Any) -> bool:
    """Whether the elements before the pixel data name an image (Rows and Columns)."""
    try:
        with _quiet():
            head = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return False
    return "Rows" in head and "Columns" in head


def _dicom_header(path: Path) -> ImageHeader:
    with _quiet():  # pydicom converts values (and warns) lazily, on access
        return _dicom_header_of(_read_dicom(path, stop_before_pixels=True), path)


def _dicom_header_of(ds: Any, path: Path) -> ImageHeader:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as e:
        raise UnetError(f"{path}: corrupt DICOM image attributes ({_one_line(e)})") from None
    if rows < 1 or cols < 1:
        raise UnetError(f"{path}: DICOM image of {cols}x{rows} pixels; nothing to read")
    return ImageHeader("dicom", cols, rows, samples, 16, max(frames, 1))


def _set_transfer_syntax(ds: Any, path: Path) -> Any:
    """The transfer syntax to decode with; set into ``ds.file_meta`` when missing or unknown.

    A data set without file meta (no preamble) or with a transfer syntax pydicom does not
    know is decoded as the encoding pydicom read it in (implicit VR little endian unless
    its elements say otherwise), which is right as long as its pixel data is not
    compressed.
    """
    pydicom = _pydicom(path)
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta = meta
    uid = meta.get("TransferSyntaxUID")
    if uid is not None and uid.is_transfer_syntax:
        return uid
    encapsulated = ds["PixelData"].is_undefined_length
    if encapsulated:
        how = (
            f"its transfer syntax {uid} is not a standard one"
            if uid
            else "the file does not say how (no transfer syntax)"
        )
        raise UnetError(
            f"{path}: the pixel data is compressed and {how}; re-export it from the PACS "
            "with a standard transfer syntax (uncompressed, JPEG, JPEG-LS, JPEG 2000 or RLE)"
        )
    implicit, little = ds.original_encoding
    if implicit is False:
        guessed = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
    else:
        guessed = ImplicitVRLittleEndian
    meta.TransferSyntaxUID = guessed
    return guessed


_PREFERRED_PLUGINS = {
    "1.2.840.10008.1.2.4.50": "pillow",  # JPEG baseline: 5x faster than libjpeg
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS: 5x faster than libjpeg
    "1.2.840.10008.1.2.4.81": "pyjpegls",
}
"""Decoder plugin tried first per transfer syntax (the others are tried if it fails)."""


def _dicom_pixels(ds: Any, path: Path, max_pixels: int) -> np.ndarray:
    """The first frame's decoded values, or a one-line error naming the fix.

    A compressed frame declares its own size, which the decoders allocate before pydicom
    compares it with Rows and Columns: it is read first (:func:`_refuse_frame_size`), so
    that a small file whose frame claims gigapixels is refused before decoding.
    """
    if "PixelData" not in ds:
        what = "float" if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) else "no"
        raise UnetError(
            f"{path}: a DICOM file with {what} pixel data this tool does not read "
            "(it needs (7FE0,0010) Pixel Data)"
        )
    uid = _set_transfer_syntax(ds, path)
    from pydicom.pixels import get_decoder, pixel_array

    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise UnetError(
            f"{path}: the pixel data is encoded as {uid.name} ({uid}), which no installed "
            "DICOM decoder reads; convert the file to an uncompressed DICOM or to PNG"
        ) from None
    if not decoder.is_available:
        raise MissingExtraError(
            f"{path}: the pixel data is compressed as {uid.name} and no decoder for it is "
            f"installed; install the DICOM decoders with: {INSTALL_DICOM}"
        )
    if decoder.is_encapsulated:
        _refuse_frame_size(ds, path)
    else:
        _refuse_surplus_pixels(ds, path)
    preferred = _PREFERRED_PLUGINS.get(str(uid))
    try:
        with _quiet(fd2=decoder.is_encapsulated), _pillow_limit(max_pixels):
            if preferred in decoder.available_plugins:
                try:
                    return pixel_array(ds, index=0, decoding_plugin=preferred)
                except Exception:  # the other plugins may cope with this stream
                    pass
            return pixel_array(ds, index=0)
    except MemoryError:
        raise UnetError(f"{path}: not enough memory to decode the DICOM pixel data") from None
    except Exception as e:  # decoders raise RuntimeError, ValueError, ... with paragraphs
        raise UnetError(
            f"{path}: cannot decode the {uid.name} pixel data ({_one_line(e)}); the file is "
            "damaged or truncated, or its header does not match its pixel data (bits, size, "
            "photometric interpretation): export it again"
        ) from None


def _refuse_surplus_pixels(ds: Any, path: Path) -> None:
    """Refuse uncompressed gray pixel data a row or more longer than the header's image.

    pydicom only warns of it and reads the first Rows x Columns values: a header whose
    size was edited (Rows halved, say) would give part of the film, segmented as if it
    were all of it. Less than a row more (padding to an even length) is read as before.
    """
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
        size = len(ds.PixelData)
    except (TypeError, ValueError, AttributeError):
        return  # the decoder reports what is wrong with these
    if samples != 1 or bits not in (8, 16, 32):
        return
    row = cols * bits // 8
    expected = rows * row * frames
    if size - expected >= row:
        raise UnetError(
            f"{path}: the pixel data holds {size} bytes, more than the {cols}x{rows} image"
            f"{f' x {frames} frames' if frames > 1 else ''} of its header needs ({expected}); "
            "the header's size is wrong (an edited or cropped export?): export it again"
        )


def _refuse_frame_size(ds: Any, path: Path) -> None:
    """Refuse a compressed first frame whose own header disagrees with Rows/Columns/samples.

    The size is read from the JPEG frame header (SOFn, DHP; JPEG-LS SOF55 and its
    oversize-dimension LSE) or the JPEG 2000 SIZ marker (in a bare codestream or a JP2
    file's ``jp2c`` box), first in the first fragment, then, only if that ends before
    the header does, in the whole first frame. Streams of another kind (RLE, whose
    segments are bounded by Rows and Columns) and headers that cannot be found are left
    to the decoder, which refuses what it cannot read.
    """
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        data = ds.PixelData
    except (TypeError, ValueError, AttributeError):
        return  # the decoder reports what is wrong with these
    try:
        sizes = _codestream_sizes(_first_fragment(data))
        if sizes is _INCOMPLETE:
            sizes = _first_frame_sizes(ds, data)
    except ValueError as e:
        raise UnetError(
            f"{path}: the compressed frame's header is damaged ({e}); re-export it from the PACS"
        ) from None
    if not isinstance(sizes, list):
        return
    for width, height, components in sizes:
        if (width, height, components) != (cols, rows, samples):
            what = f" with {components} samples per pixel" if components != samples else ""
            said = f" with {samples}" if components != samples else ""
            raise UnetError(
                f"{path}: the compressed frame is {width}x{height}{what} but the header "
                f"says {cols}x{rows}{said}; re-export it from the PACS"
            )


def _first_frame_sizes(ds: Any, data: bytes) -> list[tuple[int, int, int]] | object | None:
    """:func:`_codestream_sizes` of the whole first frame (its fragments joined)."""
    from pydicom.encaps import get_frame

    try:
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
        offsets = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        frame = get_frame(data, 0, number_of_frames=frames, extended_offsets=offsets)
    except Exception:  # a damaged encapsulation: the decoder says so
        return None
    return _codestream_sizes(memoryview(frame))


_INCOMPLETE = object()
"""What :func:`_codestream_sizes` returns when its data ends before the frame header."""


def _first_fragment(data: bytes) -> memoryview:
    """The first fragment of encapsulated pixel data (after the Basic Offset Table), or
    the empty view when the items are not where DICOM puts them."""
    view = memoryview(data)
    pos = 0
    for item in range(2):  # the Basic Offset Table, then the first fragment
        if len(view) < pos + 8:
            return view[:0]
        tag, length = struct.unpack_from("<II", view, pos)
        if tag != 0xE000FFFE:  # (FFFE,E000) Item, little endian
            return view[:0]
        pos += 8
        if item == 1:
            return view[pos : pos + length]
        pos += length
    return view[:0]  # not reached


# JPEG markers that give a frame's size: SOF0-SOF15 but DHT (C4), JPG (C8) and DAC
# (CC), DHP (DE, hierarchical), JPEG-LS SOF55 (F7); LSE (F8) of ID 4 gives a JPEG-LS
# image's size when it does not fit 16 bits.
_JPEG_SIZE_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xDE, 0xF7}
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD9)) | {0x01}  # RSTn, SOI, TEM: no length
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def _codestream_sizes(data: memoryview) -> list[tuple[int, int, int]] | object | None:
    """The (width, height, components) a JPEG, JPEG-LS or JPEG 2000 stream declares.

    Returns a list (every size a JPEG declares before its first scan: decoders differ in
    which one they use), :data:`_INCOMPLETE` when ``data`` ends before the header does,
    or None for another kind of stream or one without a size before its first scan.

    Raises:
        ValueError: The header is made of more segments or boxes than any real one.
    """
    if len(data) < 12:
        return _INCOMPLETE
    head = bytes(data[:12])
    if head[:2] == b"\xff\xd8":
        return _jpeg_sizes(data)
    if head[:4] == b"\xff\x4f\xff\x51":
        return _j2k_size(data, 0)
    if head == _JP2_SIGNATURE:
        return _jp2_size(data)
    return None


_HEADER_PARTS = 4096
"""Marker segments (JPEG) or boxes (JP2) walked before giving up: real files have tens."""

_JPEG_MARKER = re.compile(rb"\xff+([^\xff])", re.DOTALL)
"""A marker: fill bytes 0xFF, then its code (bytes before it are skipped, as libjpeg does)."""


def _jpeg_sizes(data: memoryview) -> list[tuple[int, int, int]] | object | None:
    """Walk a JPEG's marker segments to its first scan, collecting the sizes of SOFn,
    DHP and LSE (ID 4)."""
    sizes: list[tuple[int, int, int]] = []
    components = 0
    pos, end = 2, len(data)
    for _ in range(_HEADER_PARTS):
        found = _JPEG_MARKER.search(data, pos)
        if found is None:
            return _INCOMPLETE
        marker, pos = found.group(1)[0], found.end()
        if marker in _JPEG_STANDALONE or marker == 0x00:
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan
            return sizes or None
        if pos + 2 > end:
            return _INCOMPLETE
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2:
            return sizes or None
        if pos + length > end:
            return _INCOMPLETE
        if marker in _JPEG_SIZE_MARKERS and length >= 8:
            height, width, components = struct.unpack(">HHB", data[pos + 3 : pos + 8])
            if height:  # 0: the height comes later, in a DNL marker after the first scan
                sizes.append((width, height, components))
        elif marker == 0xF8 and length >= 4 and data[pos + 2] == 4:
            n = data[pos + 3]  # LSE ID 4: bytes per value, then height and width
            if n and length >= 4 + 2 * n:
                height = int.from_bytes(data[pos + 4 : pos + 4 + n], "big")
                width = int.from_bytes(data[pos + 4 + n : pos + 4 + 2 * n], "big")
                sizes.append((width, height, components or 1))
        pos += length
    raise ValueError(f"over {_HEADER_PARTS} marker segments before the image data")


def _j2k_size(data: memoryview, pos: int) -> list[tuple[int, int, int]] | object | None:
    """The size in a JPEG 2000 codestream's SIZ marker, which follows SOC at ``pos``."""
    if len(data) < pos + 42:
        return _INCOMPLETE
    siz = bytes(data[pos : pos + 42])
    if siz[:4] != b"\xff\x4f\xff\x51":
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", siz[8:24])
    (components,) = struct.unpack(">H", siz[40:42])
    return [(xsiz - xosiz, ysiz - yosiz, components)]


def _jp2_size(data: memoryview) -> list[tuple[int, int, int]] | object | None:
    """The size in the codestream of a JP2 file's ``jp2c`` box (its boxes walked)."""
    pos, end = 0, len(data)
    for _ in range(_HEADER_PARTS):
        if pos + 8 > end:
            return _INCOMPLETE
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        start = pos + 8
        if length == 1:  # a 64-bit length follows
            if pos + 16 > end:
                return _INCOMPLETE
            (length,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
            start = pos + 16
        if kind == b"jp2c":
            return _j2k_size(data, start)
        if length < start - pos:  # 0 (to the end of the file, not jp2c) or damaged
            return None
        pos += length
    raise ValueError(f"over {_HEADER_PARTS} boxes before the image data")


def _decode_dicom(path: Path, notes: list[str], max_pixels: int) -> np.ndarray:
    """Decode a DICOM image as a viewer presents it (see the module docstring), to uint16."""
    with _quiet():  # pydicom converts values (and warns) lazily, on access
        return _present(_read_dicom(path), path, notes, max_pixels)


def _present(ds: Any, path: Path, notes: list[str], max_pixels: int) -> np.ndarray:
    pixels = _dicom_pixels(ds, path, max_pixels)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        notes.append(f"{path}: multi-frame DICOM with {frames} frames; the first frame is used")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR" and samples == 1:
        from pydicom.pixels import apply_color_lut

        try:
            pixels = apply_color_lut(pixels, ds)
        except Exception as e:
            raise UnetError(f"{path}: cannot apply the DICOM palette ({_one_line(e)})") from None
        return _to_uint(pixels, path, notes)
    if samples == 3 or pixels.ndim == 3:
        # pydicom converts YBR_FULL / YBR_FULL_422 to RGB; JPEG 2000's YBR_ICT/RCT come
        # back as RGB from the decoder.
        return _to_uint(pixels, path, notes)
    return _present_gray(ds, pixels, path, notes)


def _present_gray(ds: Any, stored: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """Modality LUT, VOI LUT, padding, inversion and scaling to uint16 of a gray frame."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    _first_frame_groups(ds)
    padding = _padding_mask(ds, stored)
    with _quiet():
        try:
            values = apply_modality_lut(stored, ds)
        except Exception as e:
            raise UnetError(
                f"{path}: cannot apply the DICOM Modality LUT ({_one_line(e)})"
            ) from None
        values = np.asarray(values)
        if values.dtype.kind == "f" and np.all(np.isfinite(values)):
            rounded = np.rint(values)
            if np.array_equal(rounded, values):  # integer values: what a VOI LUT indexes
                values = rounded.astype(np.int64)
        try:
            values = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True))
        except Exception as e:  # a window of width 0, an unknown VOI LUT Function, ...
            notes.append(
                f"{path}: the DICOM VOI LUT (window) is invalid ({_one_line(e)}); "
                "the full range of values is used"
            )
    values = values.astype(np.float64)
    valid = np.isfinite(values) if padding is None else (~padding & np.isfinite(values))
    if not valid.any():
        raise UnetError(f"{path}: every pixel is padding (Pixel Padding Value); nothing to read")
    lo, hi = float(values[valid].min()), float(values[valid].max())
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        scaled = 1.0 - scaled
    out = np.round(scaled * 65535).astype(np.uint16)
    out[~valid] = 0
    return out


_FRAME_GROUPS = (
    ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept", "RescaleType")),
    ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
)


def _first_frame_groups(ds: Any) -> None:
    """Enhanced multi-frame files keep the rescale and window in functional groups: copy
    the first frame's (per-frame before shared) to the top level, where the LUTs read them."""
    for key in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(key)
        if not groups:
            continue
        for sequence, names in _FRAME_GROUPS:
            items = groups[0].get(sequence)
            if not items:
                continue
            for name in names:
                if name in items[0] and name not in ds:
                    setattr(ds, name, items[0][name].value)


def _padding_mask(ds: Any, stored: np.ndarray) -> np.ndarray | None:
    """Pixels equal to the Pixel Padding Value, or within it and the Range Limit; or None."""
    value = ds.get("PixelPaddingValue")
    if value is None:
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    try:
        value = int(value)
        if limit is None:
            mask = stored == value
        else:
            lo, hi = sorted((value, int(limit)))
            mask = (stored >= lo) & (stored <= hi)
    except (TypeError, ValueError):
        return None
    return mask if mask.any() else None
