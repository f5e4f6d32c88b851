"""Limits that hold whatever a file claims: a compressed DICOM frame's own size, Pillow's
decompression-bomb limit, and the cost of counting a TIFF's pages."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from dicom_fixtures import compressed, dataset, jpeg_baseline, jpeg_lossless, write
from unet_lowered.errors import UnetError
from unet_lowered.io import images


def _gray(rows: int = 32, cols: int = 48) -> np.ndarray:
    """A small gray ramp (JPEG 2000 encodes nothing much smaller)."""
    return np.tile(np.linspace(0, 255, cols).round().astype(np.uint8), (rows, 1))


# ---------------------------------------------------------------- compressed DICOM frames


def _encapsulated(ds, frame: bytes, syntax: str, fragments: int = 1):
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame], fragments_per_frame=fragments)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def _frame(ds) -> bytes:
    from pydicom.encaps import get_frame

    return get_frame(ds.PixelData, 0)


def _patched(ds, marker: bytes, at: int, fmt: str, *values: int):
    """``ds`` with ``values`` packed at ``at`` bytes after the first ``marker`` in its pixel data."""
    data = bytearray(ds.PixelData)
    pos = data.index(marker) + at
    struct.pack_into(fmt, data, pos, *values)
    ds.PixelData = bytes(data)
    return ds


def _jpeg_claiming(height: int, width: int):
    # SOF0: FF C0, length, precision, then height and width
    return _patched(jpeg_baseline(_gray()), b"\xff\xc0", 5, ">HH", height, width)


def _jpegls_claiming(height: int, width: int):
    ds = compressed(dataset(_gray().astype(np.uint16) * 16), "jpegls")
    return _patched(ds, b"\xff\xf7", 5, ">HH", height, width)  # SOF55, laid out as SOF0


def _j2k_claiming(height: int, width: int):
    ds = compressed(dataset(_gray().astype(np.uint16) * 16), "j2k")
    # SIZ follows SOC: FF4F FF51, Lsiz, Rsiz, then Xsiz, Ysiz (offsets 0 here)
    return _patched(ds, b"\xff\x4f\xff\x51", 8, ">II", width, height)


def _lossless_claiming(height: int, width: int):
    ds = jpeg_lossless(_gray().astype(np.uint16) * 16)
    return _patched(ds, b"\xff\xc3", 5, ">HH", height, width)  # SOF3


def _jp2(image: np.ndarray) -> bytes:
    """``image`` as a JP2 file: the codestream inside a box structure (Pillow's default)."""
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG2000", irreversible=False)
    assert out.getvalue()[4:8] == b"jP  "
    return out.getvalue()


def _jp2_claiming(height: int, width: int):
    from pydicom.uid import JPEG2000Lossless

    ds = _encapsulated(dataset(_gray(), bits=8), _jp2(_gray()), JPEG2000Lossless)
    return _patched(ds, b"\xff\x4f\xff\x51", 8, ">II", width, height)


CLAIMING = {
    "jpeg": _jpeg_claiming,
    "jpegls": _jpegls_claiming,
    "j2k": _j2k_claiming,
    "lossless": _lossless_claiming,
    "jp2": _jp2_claiming,
}


@pytest.fixture
def dicom() -> None:
    """Skip the test when the ``dicom`` extra is not installed."""
    pytest.importorskip("pydicom")


@pytest.fixture
def no_decoding(dicom: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if pydicom is asked to decode: the refusal must come before."""
    pixels = pytest.importorskip("pydicom.pixels")

    def decoded(*args, **kwargs):
        raise AssertionError("the frame was decoded")

    monkeypatch.setattr(pixels, "pixel_array", decoded)


@pytest.mark.parametrize("kind", sorted(CLAIMING))
def test_compressed_frame_larger_than_its_header_refused_before_decoding(
    tmp_path: Path, kind: str, no_decoding: None
) -> None:
    # a 48x32 header around a frame that declares 20000x20000 (400 megapixels)
    path = write(tmp_path / f"{kind}.dcm", CLAIMING[kind](20000, 20000))
    with pytest.raises(UnetError) as e:
        images.read_image(path)
    assert str(e.value) == (
        f"{path}: the compressed frame is 20000x20000 but the header says 48x32; "
        "re-export it from the PACS"
    )


@pytest.mark.parametrize("kind", sorted(CLAIMING))
def test_compressed_frame_matching_its_header_is_read(
    tmp_path: Path, kind: str, dicom: None
) -> None:
    path = write(tmp_path / f"{kind}.dcm", CLAIMING[kind](32, 48))  # the true size
    assert images.read_image(path).shape == (32, 48)


def test_compressed_frame_of_other_samples_refused(tmp_path: Path, no_decoding: None) -> None:
    from pydicom.uid import JPEG2000Lossless

    rgb = np.repeat(_gray()[:, :, None], 3, axis=2)
    ds = _encapsulated(dataset(_gray(), bits=8), _jp2(rgb), JPEG2000Lossless)
    path = write(tmp_path / "rgb.dcm", ds)
    with pytest.raises(
        UnetError,
        match=r"is 48x32 with 3 samples per pixel but the header says "
        r"48x32 with 1; re-export",
    ):
        images.read_image(path)


def test_frame_header_split_over_fragments_is_found(tmp_path: Path, no_decoding: None) -> None:
    from pydicom.uid import JPEGBaseline8Bit

    ds = _jpeg_claiming(5000, 5000)
    frame = _frame(ds)
    # the first fragment (a few bytes) ends long before the frame header
    ds = _encapsulated(ds, frame, JPEGBaseline8Bit, fragments=len(frame) // 6)
    path = write(tmp_path / "split.dcm", ds)
    with pytest.raises(UnetError, match="the compressed frame is 5000x5000 but the header"):
        images.read_image(path)


def test_frame_header_of_endless_segments_refused(tmp_path: Path, no_decoding: None) -> None:
    from pydicom.uid import JPEGBaseline8Bit

    frame = _frame(jpeg_baseline(_gray()))
    app = b"\xff\xe1\x00\x02" * 5000  # empty APP1 segments before the frame header
    ds = _encapsulated(dataset(_gray(), bits=8), frame[:2] + app + frame[2:], JPEGBaseline8Bit)
    path = write(tmp_path / "segments.dcm", ds)
    with pytest.raises(UnetError, match=r"the compressed frame's header is damaged \(over 4096 "):
        images.read_image(path)


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


def test_a_jpeg_whose_height_comes_later_is_left_to_the_decoder() -> None:
    """SOF with height 0 (given by a DNL marker after the first scan) is not a size to
    compare: it would have refused a valid file as '64x0'."""
    sof = b"\xff\xc0\x00\x0b\x08\x00\x00\x00\x40\x01\x01\x11\x00"  # 8-bit, height 0, width 64
    stream = b"\xff\xd8" + sof + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    assert images._jpeg_sizes(memoryview(stream)) is None
    sized = stream.replace(b"\x00\x00\x00\x40", b"\x00\x20\x00\x40")  # height 32
    assert images._jpeg_sizes(memoryview(sized)) == [(64, 32, 1)]
