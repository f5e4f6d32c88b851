"""Odd but real images: EXIF orientation, several frames, non-finite floats, 16-bit RGBA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from unet_lowered.io import images


def _asymmetric() -> np.ndarray:
    """40 x 60, a bright block in the top-left corner: every orientation looks different."""
    image = np.full((40, 60), 30, np.uint8)
    image[2:14, 3:25] = 220
    image[30:36, 50:58] = 120
    return image


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pillow_applies_it(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / "photo.jpg"
    im = Image.fromarray(_asymmetric())
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, quality=100)
    notes: list[str] = []
    ours = images.read_image(path, notes=notes).astype(int)
    with Image.open(path) as opened:
        theirs = np.asarray(ImageOps.exif_transpose(opened)).astype(int)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).mean() < 2  # the same pixels, up to JPEG decoders
    header = images.read_header(path)
    assert (header.height, header.width) == ours.shape
    assert bool(notes) == (orientation != 1)
    if orientation != 1:  # and the test can tell orientations apart
        with Image.open(path) as opened:
            stored = np.asarray(opened).astype(int)
        if stored.shape == ours.shape:
            assert np.abs(stored - ours).mean() > 20


def test_non_finite_float_tiff(tmp_path: Path) -> None:
    import tifffile

    values = np.linspace(-1, 3, 20, dtype=np.float32).reshape(4, 5)
    values[0, 0], values[0, 1], values[0, 2] = np.nan, np.inf, -np.inf
    tifffile.imwrite(tmp_path / "f.tif", values)
    notes: list[str] = []
    out = images.read_image(tmp_path / "f.tif", notes=notes)
    v = values.astype(np.float64)
    finite = np.isfinite(v)
    lo, hi = v[finite].min(), v[finite].max()
    expected = np.round((np.where(finite, v, lo) - lo) / (hi - lo) * 65535)
    expected[0, 1] = 65535  # +inf: the maximum
    assert out.dtype == np.uint16 and np.array_equal(out, expected.astype(np.uint16))
    assert len(notes) == 1 and "3 NaN or infinite" in notes[0]
    values[:] = np.nan
    tifffile.imwrite(tmp_path / "all.tif", values)
    with pytest.raises(images.UnetError, match=r"all\.tif: the image holds no finite pixel"):
        images.read_image(tmp_path / "all.tif")


def test_rgba_16_bit_tiff_keeps_its_values(tmp_path: Path) -> None:
    import tifffile

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 65535, (6, 7, 4), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert np.array_equal(images.read_image(tmp_path / "c.tif"), rgba[:, :, :3])


@pytest.mark.parametrize("fmt", ["gif", "png", "tiff"])
def test_several_frames_first_one_with_a_note(tmp_path: Path, fmt: str) -> None:
    first = _asymmetric()
    path = tmp_path / f"a.{fmt}"
    if fmt == "tiff":
        import tifffile

        tifffile.imwrite(path, np.stack([first, 255 - first, first // 2]), photometric="minisblack")
    else:
        frames = [Image.fromarray(f) for f in (first, 255 - first, first // 2)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    notes: list[str] = []
    out = images.read_image(path, notes=notes)
    assert out.shape == first.shape  # a gray GIF comes back gray
    assert np.abs(out.astype(int) - first).mean() < 3
    assert notes == [f"{path}: {_kind(fmt)} with 3 frames; the first frame is used"]


def _kind(fmt: str) -> str:
    return {"gif": "animated GIF", "png": "animated PNG", "tiff": "multi-page TIFF"}[fmt]


def test_colour_gif_is_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.gif")
    out = images.read_image(tmp_path / "c.gif")
    assert out.shape == (5, 6, 3) and out[0, 0].tolist() == [200, 0, 0]
