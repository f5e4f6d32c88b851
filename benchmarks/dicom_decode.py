"""Decode time of each installed pydicom plugin on the compressed syntaxes PACS send.

Writes a chest-X-ray-sized 12-bit image (2048 x 2560, smooth with noise) as DICOM in
RLE, JPEG-LS lossless, JPEG 2000 lossless, JPEG lossless SV1 (the small encoder in
``tests/dicom_fixtures.py``) and JPEG baseline (8 bit), then decodes each file with
every available plugin (``pixel_array(ds, decoding_plugin=...)``), best of ``--rounds``,
and checks that the lossless ones give back the exact pixels. This is how the decoders
of the ``dicom`` extra were chosen; install python-gdcm as well to compare it.

    .venv/bin/python benchmarks/dicom_decode.py [--rounds 3] [--no-append]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the DICOM writers the tests use
sys.path.insert(0, str(ROOT / "benchmarks"))

from speed import cores, cpu_model  # noqa: E402

from dicom_fixtures import compressed, dataset, jpeg_baseline, jpeg_lossless, write  # noqa: E402


def make_files(folder: Path) -> tuple[dict[str, Path], np.ndarray]:
    rng = np.random.default_rng(0)
    h, w = 2560, 2048
    yy, xx = np.mgrid[0:h, 0:w]
    image = 2000 + 1500 * np.sin(xx / 300) * np.cos(yy / 400) + rng.normal(0, 30, (h, w))
    image = image.clip(0, 4095).astype(np.uint16)
    files = {
        "RLE Lossless": write(folder / "rle.dcm", compressed(dataset(image), "rle")),
        "JPEG-LS Lossless": write(folder / "jls.dcm", compressed(dataset(image), "jpegls")),
        "JPEG 2000 Lossless": write(folder / "j2k.dcm", compressed(dataset(image), "j2k")),
        "JPEG Lossless SV1": write(folder / "jll.dcm", jpeg_lossless(image, 12)),
        "JPEG Baseline (8 bit)": write(
            folder / "jpg.dcm", jpeg_baseline((image >> 4).astype(np.uint8))
        ),
    }
    return files, image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    import pydicom
    from pydicom.pixels import get_decoder, pixel_array

    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files, image = make_files(Path(tmp))
        for name, path in files.items():
            ds = pydicom.dcmread(path)
            decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
            size_mb = path.stat().st_size / 1e6
            for plugin in sorted(decoder.available_plugins):
                times = []
                try:
                    for _ in range(args.rounds):
                        start = time.perf_counter()
                        got = pixel_array(ds, decoding_plugin=plugin)
                        times.append(time.perf_counter() - start)
                except Exception as e:
                    rows.append((name, size_mb, plugin, "failed", str(e).splitlines()[0][:60]))
                    continue
                if "Baseline" in name:
                    check = f"mean error {np.abs(got.astype(int) - (image >> 4)).mean():.2f}"
                else:
                    check = "exact" if np.array_equal(got, image) else "NOT EXACT"
                rows.append((name, size_mb, plugin, f"{min(times) * 1000:.0f}", check))
    import importlib.metadata as md

    versions = []
    for dist in ("pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg",
                 "pylibjpeg-rle", "pyjpegls", "python-gdcm", "pillow"):  # fmt: skip
        try:
            versions.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {stamp}: dicom_decode.py, 2048x2560 12-bit, best of {args.rounds}",
        "",
        f"Machine: {cpu_model()}, {cores()} cores, Python {platform.python_version()}; "
        + ", ".join(versions)
        + ".",
        "",
        "| transfer syntax | file MB | plugin | decode ms | check |",
        "|---|---:|---|---:|---|",
        *(f"| {n} | {s:.1f} | {p} | {t} | {c} |" for n, s, p, t, c in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
