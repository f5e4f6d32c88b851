"""DICOM files the tests write with pydicom: uncompressed, compressed, without preamble.

Compressed files are encoded with the libraries the ``dicom`` extra installs
(pydicom's own RLE encoder, pyjpegls for JPEG-LS, pylibjpeg-openjpeg for JPEG 2000)
or with OpenCV (JPEG baseline, wrapped in DICOM's encapsulation).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np


def dataset(stored: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12, **tags: Any):
    """A DX data set (with file meta, explicit VR little endian) holding ``stored`` pixels.

    ``stored`` is ``(rows, cols)``, ``(frames, rows, cols)`` or ``(rows, cols, 3)``
    (``photometric`` RGB or YBR_FULL); signed dtypes set Pixel Representation 1.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "Test^Hostile"
    colour = stored.ndim == 3 and photometric not in ("MONOCHROME1", "MONOCHROME2")
    if colour:
        ds.Rows, ds.Columns = stored.shape[:2]
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    else:
        ds.Rows, ds.Columns = stored.shape[-2:]
        ds.SamplesPerPixel = 1
        if stored.ndim == 3:
            ds.NumberOfFrames = stored.shape[0]
    ds.PhotometricInterpretation = photometric
    allocated = 8 if stored.dtype.itemsize == 1 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits, bits - 1
    ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def write(path: Path, ds, **kwargs: Any) -> Path:
    """Save ``ds`` as a DICOM file (128-byte preamble, ``DICM``, file meta)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True, **kwargs)
    return path


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> Path:
    """``write(path, dataset(stored, photometric, **tags))``."""
    bits = tags.pop("bits", 12 if stored.dtype.itemsize > 1 else 8)
    return write(path, dataset(stored, photometric, bits, **tags))


def without_preamble(path: Path, out: Path, keep_meta: bool) -> Path:
    """Copy a DICOM file without its preamble and ``DICM`` (and without the file meta).

    ``keep_meta=False`` leaves the bare data set that old CR exports write: the file
    must then be in implicit VR little endian (or explicit VR) with native pixel data.
    """
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    body = data[132:]
    if not keep_meta:
        assert body[:4] == b"\x02\x00\x00\x00" and body[4:6] == b"UL"
        meta_length = struct.unpack("<I", body[8:12])[0]
        body = body[12 + meta_length :]
    out.write_bytes(body)
    return out


def compressed(ds, syntax: str):
    """``ds`` compressed with pydicom's encoders (RLE, JPEG-LS, JPEG 2000, lossless)."""
    from pydicom import uid

    target = {
        "rle": uid.RLELossless,
        "jpegls": uid.JPEGLSLossless,
        "j2k": uid.JPEG2000Lossless,
    }[syntax]
    ds.compress(target, generate_instance_uid=False)
    return ds


def jpeg_baseline(image: np.ndarray, quality: int = 95):
    """A DICOM data set holding ``image`` (uint8 gray or RGB) as JPEG baseline (OpenCV).

    Colour images are stored as OpenCV writes them, YCbCr with 4:2:0 subsampling, so
    the Photometric Interpretation is YBR_FULL_422 (what PACS exports of colour JPEGs say).
    """
    import cv2
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    photometric = "MONOCHROME2" if image.ndim == 2 else "YBR_FULL_422"
    ds = dataset(image, photometric, bits=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.tobytes()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.LossyImageCompression = "01"
    return ds


def jpeg_lossless_codestream(image: np.ndarray, precision: int) -> bytes:
    """A JPEG lossless (process 14, first-order prediction) codestream of a gray image.

    A small independent encoder (ITU T.81 annex H): predictor 1 (the pixel to the
    left; the first row and column as the standard says), no point transform, one
    Huffman table giving every difference category 0-16 a 5-bit code. Enough to make
    the JPEG Lossless SV1 files PACS send, without an encoder package.
    """
    rows, cols = image.shape
    x = image.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    diff = (x - pred) % 65536
    diff = np.where(diff > 32768, diff - 65536, diff).ravel()
    bits: list[str] = []
    for d in diff.tolist():
        size = 16 if d == 32768 else abs(d).bit_length()
        bits.append(format(size, "05b"))  # code of category `size` (all codes 5 bits long)
        if 0 < size < 16:
            extra = d if d > 0 else (d - 1) & ((1 << size) - 1)
            bits.append(format(extra, f"0{size}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i : i + 8], 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0)  # byte stuffing
    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5
    dht = bytes([0x00, *counts, *range(17)])
    sof = struct.pack(">BHHB", precision, rows, cols, 1) + bytes([1, 0x11, 0])
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # 1 component, table 0; predictor 1, Se 0, Pt 0
    out = b"\xff\xd8"
    for marker, body in ((0xC3, sof), (0xC4, dht), (0xDA, sos)):
        out += struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body
    return out + bytes(data) + b"\xff\xd9"


def jpeg_lossless(stored: np.ndarray, bits: int = 16, **tags: Any):
    """A DICOM data set holding gray ``stored`` as JPEG Lossless SV1 (1.2.840.10008.1.2.4.70)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    ds = dataset(stored, "MONOCHROME2", bits, **tags)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([jpeg_lossless_codestream(stored, bits)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds
