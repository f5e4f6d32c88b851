"""DICOM as PACS exports send it: compressed, without preamble, with LUTs and padding.

Every file is written here with pydicom (compressed ones encoded with the libraries of
the ``dicom`` extra, or by the small JPEG lossless encoder in ``dicom_fixtures``), plus
the real files made by GDCM, DCMTK and scanners that pydicom ships for its own tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dicom_fixtures import (
    compressed,
    dataset,
    jpeg_baseline,
    jpeg_lossless,
    without_preamble,
    write,
    write_dicom,
)
from unet_lowered.errors import UnetError
from unet_lowered.io import images

pydicom = pytest.importorskip("pydicom")

PYDICOM_FILES = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"


def ramp(rows: int = 16, cols: int = 64, lo: int = 0, hi: int = 4095) -> np.ndarray:
    return np.tile(np.linspace(lo, hi, cols).round().astype(np.uint16), (rows, 1))


def scaled(values: np.ndarray) -> np.ndarray:
    """What read_image makes of gray values without LUTs: min-max to 0..65535."""
    v = values.astype(np.float64)
    return np.round((v - v.min()) / (v.max() - v.min()) * 65535).astype(np.uint16)


def one_line_error(path: Path, match: str | None = None) -> str:
    with pytest.raises(UnetError) as info:
        images.read_image(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    if match is not None:
        assert match in message, message
    return message


# ---------------------------------------------------------------- presentation


def test_plain_monochrome2_is_scaled_by_its_range(tmp_path: Path) -> None:
    stored = ramp(lo=100, hi=3000)
    out = images.read_image(write_dicom(tmp_path / "a.dcm", stored))
    assert out.dtype == np.uint16
    assert np.array_equal(out, scaled(stored))


def _lut_item(descriptor: list[int], data: np.ndarray):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)  # LUT Descriptor
    item.add_new(0x00283006, "US", [int(v) for v in data])  # LUT Data
    return item


def test_modality_lut_sequence_is_applied(tmp_path: Path) -> None:
    """A Modality LUT that reverses the values: stored 0 must come out brightest."""
    stored = ramp()
    item = _lut_item([4096, 0, 16], 4095 - np.arange(4096))
    item.ModalityLUTType = "US"
    out = images.read_image(write_dicom(tmp_path / "m.dcm", stored, ModalityLUTSequence=[item]))
    assert np.array_equal(out, scaled(4095 - stored.astype(int)))


def test_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    """A VOI LUT that is a step at 2000 makes the image two-valued."""
    stored = ramp()
    item = _lut_item([4096, 0, 12], np.where(np.arange(4096) < 2000, 0, 4095))
    out = images.read_image(write_dicom(tmp_path / "v.dcm", stored, VOILUTSequence=[item]))
    assert set(np.unique(out)) == {0, 65535}
    assert np.array_equal(out == 65535, stored >= 2000)


def test_first_window_is_applied(tmp_path: Path) -> None:
    """Two windows given: the first (center 1000, width 1000) shows stored 500..1500."""
    stored = ramp()
    path = write_dicom(
        tmp_path / "w.dcm", stored, WindowCenter=[1000, 3000], WindowWidth=[1000, 500]
    )
    row = images.read_image(path)[0].astype(int)
    s = stored[0]
    assert (row[s <= 490] == 0).all() and (row[s >= 1510] == 65535).all()
    assert (np.diff(row[(s > 520) & (s < 1480)]) > 0).all()


def test_invalid_window_is_noted_and_the_full_range_used(tmp_path: Path) -> None:
    stored = ramp()
    notes: list[str] = []
    path = write_dicom(tmp_path / "w0.dcm", stored, WindowCenter=1000, WindowWidth=0)
    out = images.read_image(path, notes=notes)
    assert np.array_equal(out, scaled(stored))
    assert len(notes) == 1 and "VOI LUT" in notes[0] and str(path) in notes[0]


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [
        ("MONOCHROME2", None, False),
        ("MONOCHROME1", None, True),
        ("MONOCHROME2", "INVERSE", True),
        ("MONOCHROME1", "INVERSE", True),  # DX files carry both for the same inversion
        ("MONOCHROME2", "IDENTITY", False),
    ],
)
def test_inversion(tmp_path: Path, photometric: str, shape: str | None, inverted: bool) -> None:
    stored = ramp()
    tags = {} if shape is None else {"PresentationLUTShape": shape}
    out = images.read_image(write_dicom(tmp_path / "i.dcm", stored, photometric, **tags))
    expected = scaled(stored)
    assert np.array_equal(out, 65535 - expected if inverted else expected)


def test_pixel_padding_is_left_out_of_the_scaling(tmp_path: Path) -> None:
    """MONOCHROME1 with a padded border of 4095 (the brightest stored value, shown black):
    the padding comes back 0 and the image's own range 1000..3000 spans 65535..0."""
    stored = np.full((20, 70), 4095, np.uint16)
    inner = ramp(16, 64, 1000, 3000)
    stored[2:18, 3:67] = inner
    out = images.read_image(
        write_dicom(tmp_path / "p.dcm", stored, "MONOCHROME1", PixelPaddingValue=4095)
    )
    pad = stored == 4095
    assert (out[pad] == 0).all()
    assert np.array_equal(out[2:18, 3:67], 65535 - scaled(inner))


def test_pixel_padding_range_and_signed_values(tmp_path: Path) -> None:
    """CT-like signed data padded with -2000..-1500 (value and range limit)."""
    stored = ramp(16, 64, 0, 1000).astype(np.int16) - 500
    stored[:, :8] = -2000
    stored[:, 8:12] = -1600
    out = images.read_image(
        write_dicom(
            tmp_path / "ct.dcm",
            stored,
            bits=16,
            PixelPaddingValue=-2000,
            PixelPaddingRangeLimit=-1500,
            RescaleSlope=1,
            RescaleIntercept=0,
        )
    )
    assert (out[:, :12] == 0).all()
    assert np.array_equal(out[:, 12:], scaled(stored[:, 12:]))


def test_multi_frame_takes_the_first_frame_with_a_note(tmp_path: Path) -> None:
    frames = np.stack([ramp(), 4095 - ramp(), ramp() // 2])
    notes: list[str] = []
    path = write_dicom(tmp_path / "mf.dcm", frames)
    out = images.read_image(path, notes=notes)
    assert np.array_equal(out, scaled(frames[0]))
    assert notes == [f"{path}: multi-frame DICOM with 3 frames; the first frame is used"]
    assert images.read_header(path).frames == 3


def test_enhanced_multi_frame_rescale_and_window_from_functional_groups(tmp_path: Path) -> None:
    """The first frame's rescale (per-frame group) and window (shared group) apply as the
    same tags at the top level would."""
    from pydicom.dataset import Dataset

    stored = ramp()
    top = images.read_image(
        write_dicom(
            tmp_path / "top.dcm",
            stored,
            RescaleSlope=2,
            RescaleIntercept=-1000,
            WindowCenter=0,
            WindowWidth=1000,
        )
    )
    rescale, window, frame, shared = Dataset(), Dataset(), Dataset(), Dataset()
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 2, -1000, "US"
    window.WindowCenter, window.WindowWidth = 0, 1000
    frame.PixelValueTransformationSequence = [rescale]
    shared.FrameVOILUTSequence = [window]
    frames = np.stack([stored, stored[:, ::-1]])
    path = write_dicom(
        tmp_path / "enhanced.dcm",
        frames,
        PerFrameFunctionalGroupsSequence=[frame, Dataset()],
        SharedFunctionalGroupsSequence=[shared],
    )
    out = images.read_image(path)
    assert np.array_equal(out, top)
    assert not np.array_equal(out, scaled(stored))  # without the groups it would differ


def test_rgb_and_ybr_full_come_back_as_rgb(tmp_path: Path) -> None:
    from pydicom.pixels import convert_color_space

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    out = images.read_image(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))
    assert np.array_equal(out, rgb)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    out = images.read_image(write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL"))
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).max() <= 2


def test_palette_colour_comes_back_as_rgb() -> None:
    out = images.read_image(PYDICOM_FILES / "examples_palette.dcm")
    assert out.ndim == 3 and out.shape[2] == 3


# ---------------------------------------------------------------- compressed


@pytest.mark.parametrize("syntax", ["rle", "jpegls", "j2k"])
@pytest.mark.parametrize("bits", [8, 12, 16])
def test_lossless_compression_decodes_exactly(tmp_path: Path, syntax: str, bits: int) -> None:
    rng = np.random.default_rng(bits)
    dtype = np.uint8 if bits == 8 else np.uint16
    stored = rng.integers(0, 2**bits, (40, 33)).astype(dtype)
    plain = images.read_image(write(tmp_path / "plain.dcm", dataset(stored, bits=bits)))
    path = write(tmp_path / f"{syntax}.dcm", compressed(dataset(stored, bits=bits), syntax))
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(images.read_image(path), plain)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_jpeg_lossless_sv1_decodes_exactly(tmp_path: Path, bits: int) -> None:
    rng = np.random.default_rng(bits)
    dtype = np.uint8 if bits == 8 else np.uint16
    stored = rng.integers(0, 2**bits, (30, 41)).astype(dtype)
    plain = images.read_image(write(tmp_path / "plain.dcm", dataset(stored, bits=bits)))
    path = write(
        tmp_path / "jll.dcm", jpeg_lossless(stored, bits, PhotometricInterpretation="MONOCHROME1")
    )
    expected = 65535 - plain  # and the MONOCHROME1 inversion still applies
    assert np.array_equal(images.read_image(path), expected)


def test_rle_colour(tmp_path: Path) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (9, 14, 3), dtype=np.uint8)
    path = write(tmp_path / "c.dcm", compressed(dataset(rgb, "RGB", bits=8), "rle"))
    assert np.array_equal(images.read_image(path), rgb)


def test_jpeg_baseline_gray_and_colour(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:48, 0:64]
    gray = (xx * 3 + yy).astype(np.uint8)
    out = images.read_image(write(tmp_path / "g.dcm", jpeg_baseline(gray)))
    assert np.abs(out / 65535 - scaled(gray) / 65535).mean() < 0.02
    rgb = np.stack([gray, 255 - gray, np.full_like(gray, 90)], axis=2)
    out = images.read_image(write(tmp_path / "c.dcm", jpeg_baseline(rgb)))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 4


def test_real_jpeg_lossless_and_12_bit_extended_files() -> None:
    """GDCM's JPEG lossless file equals the same image in RLE; a 12-bit JPEG Extended
    file from pydicom's set decodes (only libjpeg reads that syntax)."""
    lossless = images.read_image(PYDICOM_FILES / "SC_rgb_jpeg_gdcm.dcm")
    assert np.array_equal(lossless, images.read_image(PYDICOM_FILES / "SC_rgb_rle.dcm"))
    assert images.read_image(PYDICOM_FILES / "JPGExtended.dcm").shape == (1024, 256)


REAL_FILES = sorted(p.name for p in PYDICOM_FILES.glob("*.dcm"))


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_decode_or_fail_in_one_line(name: str, capfd: pytest.CaptureFixture) -> None:
    """pydicom's own test files (GDCM, DCMTK, scanners; some damaged on purpose): every
    one is an image or a one-line error naming it, with nothing printed by a decoder."""
    path = PYDICOM_FILES / name
    try:
        image = images.read_image(path)
    except UnetError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    else:
        assert image.dtype in (np.uint8, np.uint16) and image.ndim in (2, 3)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


# ---------------------------------------------------------------- without preamble


@pytest.mark.parametrize(
    ("source", "keep_meta"),
    [("implicit", False), ("explicit", False), ("explicit", True), ("bigendian", False)],
)
def test_dicom_without_preamble(tmp_path: Path, source: str, keep_meta: bool) -> None:
    from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

    stored = ramp(8, 24, 10, 900)
    ds = dataset(stored, "MONOCHROME1", RescaleSlope=1, RescaleIntercept=-24)
    if source == "implicit":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    full = tmp_path / "full.dcm"
    if source == "bigendian":
        full = PYDICOM_FILES / "MR_small_bigendian.dcm"
        assert pydicom.dcmread(full).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    else:
        write(full, ds)
    bare = without_preamble(full, tmp_path / "bare", keep_meta)  # no suffix either
    assert images.sniff_format(bare) == "dicom"
    assert images.is_image_file(bare)
    assert images.read_header(bare).width == images.read_header(full).width
    assert np.array_equal(images.read_image(bare), images.read_image(full))


def _random_heads(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    heads = []
    for k in range(n):
        body = rng.integers(0, 256, int(rng.integers(0, 600)), dtype=np.uint8).tobytes()
        prefix = [b"", b"\x08\x00", b"\x02\x00", b"\x08\x00\x05\x00CS"][k % 4]
        heads.append(prefix + body)
    return heads


def test_random_files_are_not_taken_for_dicom(tmp_path: Path) -> None:
    texts = [
        b"\x08\x00 hello, this is not DICOM at all\n" * 20,
        b"%PDF-1.7\n" + b"0" * 300,
        b"PK\x03\x04" + b"\0" * 300,
        b'{"image_size": [32, 32]}',
        b"\x7fELF" + b"\x02" * 300,
        b"\x08\x00\x05\x00CS\x0a\x00ISO_IR",  # the start of a data set, cut short
    ]
    path = tmp_path / "x.dcm"
    for head in [*_random_heads(4000), *texts]:
        path.write_bytes(head)
        assert images.sniff_format(path) is None, head[:16]


# ---------------------------------------------------------------- failures, one line each


def test_missing_decoder_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    path = write(tmp_path / "ls.dcm", compressed(dataset(ramp()), "jpegls"))
    monkeypatch.setattr(get_decoder(JPEGLSLossless), "_available", {})
    message = one_line_error(path, "no decoder for it is installed")
    assert "JPEG-LS Lossless" in message and "pip install 'unet-lowered[dicom]'" in message


def test_missing_pydicom_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    import sys

    path = write_dicom(tmp_path / "a.dcm", ramp())
    monkeypatch.setitem(sys.modules, "pydicom", None)
    one_line_error(path, "pip install 'unet-lowered[dicom]'")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_compressed_file(tmp_path: Path, damage: str, capfd) -> None:
    stored = np.random.default_rng(0).integers(0, 4096, (64, 64)).astype(np.uint16)
    path = write(tmp_path / "j2k.dcm", compressed(dataset(stored), "j2k"))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) * 2 // 3]
    else:
        start = len(data) // 2
        data[start : start + 200] = bytes(200)
    path.write_bytes(bytes(data))
    try:
        images.read_image(path)
    except UnetError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    assert capfd.readouterr().err == ""


def test_unknown_transfer_syntax(tmp_path: Path) -> None:
    """Native pixel data under a private transfer syntax is read as the encoding the data
    set was read in; compressed data under one is a one-line error."""
    stored = ramp()
    ds = dataset(stored)
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    path = write(tmp_path / "priv.dcm", ds, implicit_vr=False, little_endian=True)
    assert np.array_equal(images.read_image(path), scaled(stored))
    ds = jpeg_baseline(np.zeros((8, 8), np.uint8))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.8"
    path = write(tmp_path / "privc.dcm", ds, implicit_vr=False, little_endian=True)
    one_line_error(
        path, "is compressed and its transfer syntax 1.2.3.4.5.6.8 is not a standard one"
    )


def test_no_image_and_huge_header(tmp_path: Path) -> None:
    one_line_error(PYDICOM_FILES / "rtplan.dcm", "without an image")
    ds = dataset(np.zeros((2, 2), np.uint16))
    ds.Rows, ds.Columns = 65535, 65535
    del ds.PixelData  # the header alone claims 4.3 gigapixels
    path = write(tmp_path / "huge.dcm", ds)
    one_line_error(path, "megapixels, over the limit")


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_truncated_file(tmp_path: Path, cut: float) -> None:
    path = write_dicom(tmp_path / "t.dcm", ramp(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    one_line_error(path)


@pytest.mark.parametrize("syntax", ["rle", "j2k"])
def test_a_truncated_compressed_file_is_called_truncated(tmp_path: Path, syntax: str) -> None:
    # pydicom reads such a file as an empty data set; its header says there is an image.
    path = write(tmp_path / "c.dcm", compressed(dataset(ramp(256, 256)), syntax))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    message = one_line_error(path)
    assert message.endswith(
        "the file ends before its image data does (its header names an image); it is "
        "truncated or damaged: copy or export it again"
    )


def test_pixel_data_longer_than_the_header_says_is_refused(tmp_path: Path) -> None:
    ds = dataset(ramp(64, 64))
    ds.Rows = 32  # an edited header: the pixel data holds twice the image
    one_line_error(
        write(tmp_path / "rows.dcm", ds),
        "the pixel data holds 8192 bytes, more than the 64x32 image of its header needs (4096)",
    )
    padded = dataset(np.zeros((3, 3), np.uint8), bits=8)  # 9 bytes, padded to 10 on disk
    assert images.read_image(write(tmp_path / "odd.dcm", padded)).shape == (3, 3)


def test_a_dicomdir_is_not_an_image(tmp_path: Path) -> None:
    from unet_lowered.inference.batch import collect_inputs

    source = next(PYDICOM_FILES.rglob("DICOMDIR"), None)
    if source is None:
        pytest.skip("pydicom ships no DICOMDIR here")
    one_line_error(source, "a DICOMDIR, the index of a DICOM export, not an image")
    export = tmp_path / "export"
    (export / "IMAGES").mkdir(parents=True)
    (export / "DICOMDIR").write_bytes(source.read_bytes())
    write_dicom(export / "IMAGES" / "IM0", ramp())
    with pytest.raises(UnetError, match="but a DICOMDIR; its images are in the sub-folders"):
        collect_inputs([export])
    assert collect_inputs([export], recursive=True) == [export / "IMAGES" / "IM0"]


def test_a_missing_extra_stops_prepare_and_predict_instead_of_skipping_every_dicom(
    tmp_path: Path, monkeypatch
) -> None:
    """Without pydicom, prepare wrote a data set quietly lacking every DICOM pair (each
    counted as a corrupt file, exit 0) and predict skipped each one: the files are fine,
    the environment lacks an extra, so both stop at once and name it."""
    import sys

    from run_fixtures import bright_model, make_run
    from unet_lowered.dataset.prepare import prepare
    from unet_lowered.errors import MissingExtraError
    from unet_lowered.inference.batch import predict_files

    raw = tmp_path / "raw"
    for name, writer in (("a", "dicom"), ("b", "png")):
        if writer == "dicom":
            write_dicom(raw / "images" / f"{name}.dcm", ramp())
        else:
            images.write_png(raw / "images" / f"{name}.png", (ramp() >> 4).astype(np.uint8))
        images.write_png(raw / "masks" / f"{name}.png", np.zeros((64, 64), np.uint8))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(MissingExtraError, match=r"a\.dcm: reading DICOM needs pydicom.*\[dicom\]"):
        prepare(raw, tmp_path / "prepared", progress=False)
    assert not (tmp_path / "prepared").exists()
    run = make_run(tmp_path / "run", bright_model(32))
    with pytest.raises(MissingExtraError, match=r"a\.dcm: reading DICOM needs pydicom"):
        predict_files(run, [raw / "images"], tmp_path / "masks", progress=False)
