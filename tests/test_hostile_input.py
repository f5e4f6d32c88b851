"""Hostile and real-world input in every command, as a table of cases.

Each case runs the CLI in process (``unet_lowered.cli.main``) and checks the exit
status, the one line that names the file (``error: ...``, or ``skipped ...`` for one
bad input among others in ``unet predict``), that no traceback or library dump reached
stderr, and that no output file is left half-written (every visible output decodes).
The EXIF choice: a JPEG's orientation is applied, as viewers apply it, so the mask
matches the image as it is shown (the ``exif`` case).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from data_fixtures import ids_of, make_prepared
from dicom_fixtures import compressed, dataset, without_preamble, write
from run_fixtures import bright_model, disk_image, make_run
from unet_lowered.errors import UnetError
from unet_lowered.io import images

IMAGE, _ = disk_image(40, 50)  # 40 rows, 50 columns


def cli(capfd: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    """Run ``unet ARGS``; return (exit status, stderr). Any exception fails the test."""
    from unet_lowered.cli import main

    capfd.readouterr()
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = int(e.code or 0)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def the_line(err: str, pattern: str) -> str:
    """The one stderr line matching ``pattern`` (a regex); the message must be on it."""
    import re

    lines = [line for line in err.splitlines() if re.search(pattern, line)]
    assert len(lines) == 1, f"{pattern!r} not on exactly one line of:\n{err}"
    return lines[0]


def assert_complete(folder: Path) -> None:
    """Every visible file in ``folder`` is complete (images decode, tables parse)."""
    if not folder.exists():
        return
    for path in folder.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            if path.suffix == ".png":
                images.read_image(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("hostile") / "run", bright_model(32))


# ---------------------------------------------------------------- predict: one input each


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data))
    return struct.pack(">I", len(data)) + kind + data + crc


def _tiff_header(width: int, height: int) -> bytes:
    """A little-endian TIFF whose only IFD claims ``width`` x ``height`` 8-bit pixels."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1)]
    tags += [(273, 4, 8), (277, 3, 1), (278, 4, height), (279, 4, 4_000_000_000)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHII", t, k, 1, v) for t, k, v in tags
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def _truncated(path: Path, write_full: Callable[[Path], object]) -> None:
    write_full(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _frames(path: Path, fmt: str) -> None:
    from PIL import Image

    first, second = Image.fromarray(IMAGE), Image.fromarray(255 - IMAGE)
    if fmt == "tiff":
        import tifffile

        tifffile.imwrite(path, np.stack([IMAGE, 255 - IMAGE]))
    else:
        first.save(path, save_all=True, append_images=[second], duration=100, loop=0)


def _exif(path: Path) -> None:
    from PIL import Image

    image = Image.fromarray(IMAGE)
    exif = image.getexif()
    exif[0x0112] = 6  # stored 50 wide, shown rotated by 90 degrees: 40 wide, 50 high
    image.save(path, exif=exif, quality=95)


def _float_tiff(path: Path) -> None:
    import tifffile

    values = IMAGE.astype(np.float32)
    values[0, 0], values[1, 1], values[2, 2] = np.nan, np.inf, -np.inf
    tifffile.imwrite(path, values)


def _rgba16_tiff(path: Path) -> None:
    import tifffile

    rgba = np.stack([IMAGE.astype(np.uint16) * 257] * 4, axis=2)
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"])


def _palette(path: Path) -> None:
    from PIL import Image

    Image.fromarray(IMAGE).convert("P", palette=Image.Palette.ADAPTIVE).save(path)


def _dicom_bare(path: Path) -> None:
    full = path.with_name("full.tmp")
    write(full, dataset(IMAGE.astype(np.uint16) * 16))
    without_preamble(full, path, keep_meta=False)
    full.unlink()


@dataclass(frozen=True)
class Input:
    """One input file for ``unet predict`` and what must come of it."""

    name: str
    make: Callable[[Path], object]
    code: int
    message: str | None = None  # a regex for the stderr line (skipped ... / note ...)
    mask: tuple[int, int] | None = None  # the mask's (height, width) when predicted


PREDICT_INPUTS = [
    Input("empty.png", lambda p: p.write_bytes(b""), 1, r"skipped .*empty\.png: the file is empty"),
    Input(
        "cut.png",
        lambda p: _truncated(p, lambda q: images.write_png(q, IMAGE)),
        1,
        r"skipped .*cut\.png: the PNG data is corrupt or truncated",
    ),
    Input(
        "cut.jpg",
        lambda p: _truncated(p, lambda q: cv2.imwrite(str(q), IMAGE)),
        1,
        r"skipped .*cut\.jpg: the JPEG data is corrupt or truncated",
    ),
    Input(
        "notes.png",
        lambda p: p.write_text("not an image\n"),
        1,
        r"skipped .*notes\.png: not an image this tool reads",
    ),
    Input(
        "bomb.png",
        lambda p: p.write_bytes(
            b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0))
            + _png_chunk(b"IEND", b"")
        ),
        1,
        r"skipped .*bomb\.png: 100000x100000 is 10000 megapixels, over the limit of 100",
    ),
    Input(
        "bomb.bmp",
        lambda p: p.write_bytes(
            b"BM"
            + struct.pack("<IHHI", 62, 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, 100000, 100000, 1, 8, 0, 0, 0, 0, 0, 0)
            + bytes(8)
        ),
        1,
        r"skipped .*bomb\.bmp: 100000x100000 is 10000 megapixels",
    ),
    Input(
        "bomb.jpg",
        lambda p: p.write_bytes(
            b"\xff\xd8\xff\xc0"
            + struct.pack(">HBHHB", 11, 8, 60000, 60000, 1)
            + bytes([1, 0x11, 0])
            + b"\xff\xda"
            + struct.pack(">HB", 8, 1)
            + bytes([1, 0, 0, 63, 0])
            + bytes(10)
            + b"\xff\xd9"
        ),
        1,
        r"skipped .*bomb\.jpg: 60000x60000 is 3600 megapixels",
    ),
    Input(
        "bomb.tif",
        lambda p: p.write_bytes(_tiff_header(100000, 100000)),
        1,
        r"skipped .*bomb\.tif: 100000x100000 is 10000 megapixels",
    ),
    Input(
        "dot.png", lambda p: images.write_png(p, np.full((1, 1), 200, np.uint8)), 0, None, (1, 1)
    ),
    Input(
        "wide.png",
        lambda p: images.write_png(p, (np.arange(100000) % 256).astype(np.uint8)[None]),
        0,
        None,
        (1, 100000),
    ),
    Input(
        "tall.png",
        lambda p: images.write_png(p, (np.arange(100000) % 256).astype(np.uint8)[:, None]),
        0,
        None,
        (100000, 1),
    ),
    Input("nan.tif", _float_tiff, 0, r"note .*nan\.tif: 3 NaN or infinite", (40, 50)),
    Input("rgba16.tif", _rgba16_tiff, 0, None, (40, 50)),
    Input(
        "anim.gif",
        lambda p: _frames(p, "gif"),
        0,
        r"note .*anim\.gif: animated GIF with 2 frames; the first frame is used",
        (40, 50),
    ),
    Input(
        "anim.png",
        lambda p: _frames(p, "png"),
        0,
        r"note .*anim\.png: animated PNG with 2 frames; the first frame is used",
        (40, 50),
    ),
    Input(
        "pages.tif",
        lambda p: _frames(p, "tiff"),
        0,
        r"note .*pages\.tif: multi-page TIFF with 2 frames; the first frame is used",
        (40, 50),
    ),
    Input("palette.png", _palette, 0, None, (40, 50)),
    Input("exif.jpg", _exif, 0, r"note .*exif\.jpg: EXIF orientation 6 applied", (50, 40)),
    Input("with space.png", lambda p: images.write_png(p, IMAGE), 0, None, (40, 50)),
    Input("ünïcödé 画像.png", lambda p: images.write_png(p, IMAGE), 0, None, (40, 50)),
    Input("new\nline.png", lambda p: images.write_png(p, IMAGE), 0, None, (40, 50)),
    Input(
        "bro\nken.png",
        lambda p: p.write_text("garbage"),
        1,
        r"skipped .*bro\\nken\.png: not an image",  # the line break shown as \n: one line
    ),
    Input("old_cr_export", _dicom_bare, 0, None, (40, 50)),  # DICOM, no preamble, no suffix
]


@pytest.mark.parametrize("case", PREDICT_INPUTS, ids=lambda c: c.name.replace("\n", "\\n"))
@pytest.mark.parametrize("mode", ["resize", "tile"])
def test_predict_input(run: Path, tmp_path: Path, capfd, case: Input, mode: str) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    case.make(inputs / case.name)
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    out = tmp_path / "out"
    code, err = cli(capfd, "predict", run, inputs, "--out", out, "--mode", mode, "--no-progress")
    assert code == case.code, err
    if case.message:
        the_line(err, case.message)
    stem = Path(case.name).stem
    mask_path = out / f"{stem}.png"
    if case.mask is None:
        assert not mask_path.exists()
    else:
        assert images.read_image(mask_path).shape == case.mask
    assert_complete(out)
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before  # inputs untouched
    rows = (out / "predictions.csv").read_text()
    assert ("failed: " in rows) == (case.code == 1)


def test_predict_folder_named_like_an_image(run: Path, tmp_path: Path, capfd) -> None:
    (tmp_path / "scan.png").mkdir()
    code, err = cli(capfd, "predict", run, tmp_path / "scan.png", "--out", tmp_path / "out")
    assert code == 1
    the_line(err, r"^error: .*scan\.png: no image files in this folder")
    assert not (tmp_path / "out").exists()


def test_predict_same_stem_in_two_folders(run: Path, tmp_path: Path, capfd) -> None:
    images.write_png(tmp_path / "a" / "x.png", IMAGE)
    images.write_png(tmp_path / "b" / "x.png", IMAGE[:30])
    code, err = cli(capfd, "predict", run, tmp_path / "a", tmp_path / "b", "--out", tmp_path / "o")
    assert code == 0, err
    assert images.read_image(tmp_path / "o" / "a__x.png").shape == (40, 50)
    assert images.read_image(tmp_path / "o" / "b__x.png").shape == (30, 50)


def _without_root_powers() -> list[str]:
    """A command prefix that lets root be refused by file permissions, as users are."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv to drop its file capabilities")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]


def test_predict_unreadable_file(run: Path, tmp_path: Path) -> None:
    images.write_png(tmp_path / "in" / "locked.png", IMAGE)
    images.write_png(tmp_path / "in" / "open.png", IMAGE)
    os.chmod(tmp_path / "in" / "locked.png", 0)
    code = "import sys; from unet_lowered.cli import main; main(sys.argv[1:])"
    args = ["predict", str(run), str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    done = subprocess.run(
        [*_without_root_powers(), sys.executable, "-c", code, *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    the_line(done.stderr, r"skipped .*locked\.png: cannot be read \(Permission denied\)")
    assert images.read_image(tmp_path / "out" / "open.png").shape == (40, 50)


def test_read_unreadable_file_without_root(tmp_path: Path) -> None:
    """As root, in a child process without the capabilities that let root read anything."""
    path = tmp_path / "locked.png"
    images.write_png(path, IMAGE)
    os.chmod(path, 0)
    prefix = _without_root_powers()
    code = (
        "import sys; from unet_lowered.errors import UnetError; from unet_lowered.io import images\n"
        "try:\n    images.read_image(sys.argv[1])\nexcept UnetError as e:\n    print(e)"
    )
    done = subprocess.run(
        [*prefix, sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.strip() == f"{path}: cannot be read (Permission denied); check its permissions"
    )


# ---------------------------------------------------------------- outputs that cannot be written


@contextlib.contextmanager
def tmpfs(where: Path, size: str, read_only: bool = False):
    """A small tmpfs at ``where`` (root only; the test is skipped otherwise)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir(parents=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_predict_into_a_read_only_folder(run: Path, tmp_path: Path, capfd) -> None:
    images.write_png(tmp_path / "in" / "a.png", IMAGE)
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        code, err = cli(capfd, "predict", run, tmp_path / "in", "--out", ro / "masks")
        assert code == 1
        the_line(err, r"^error: --out .*masks: cannot create the folder \(Read-only file system\)")


def test_predict_onto_a_full_disk(run: Path, tmp_path: Path, capfd) -> None:
    rng = np.random.default_rng(0)
    for k in range(6):  # noise compresses badly: the overlays fill 256 KB quickly
        images.write_png(tmp_path / "in" / f"n{k}.png", rng.integers(0, 255, (160, 160), np.uint8))
    with tmpfs(tmp_path / "small", "256k") as small:
        code, err = cli(
            capfd,
            "predict",
            run,
            tmp_path / "in",
            "--out",
            small,
            "--overlay",
            "--save-prob",
            "npy",
        )
        assert code == 1
        the_line(  # the first output that failed (n0, or n1 when n0's fitted), and how to go on
            err,
            r"^error: .*cannot write the outputs of .*n\d\.png \((No space left on device|.*disk "
            r"is full)\); free disk space .* then run again with --resume$",
        )
        assert_complete(small)
        for npy in small.glob("[!.]*.npy"):
            np.load(npy)


# ---------------------------------------------------------------- run folders and model files


def _lambda_model(path: Path) -> None:
    inputs = keras.Input((32, 32, 1))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(path)


RUN_DAMAGE = [
    ("lambda", lambda r: _lambda_model(r / "model.keras"), r"model\.keras: refused: .*Python code"),
    ("truncated", lambda r: _truncated(r / "model.keras", lambda p: None), r"truncated"),
    (
        "newer",
        lambda r: _set_config(r, config_version=2),
        r"config\.json: config version 2 is newer",
    ),
    ("no_config", lambda r: (r / "config.json").unlink(), r"config\.json: missing"),
    (
        "channels",
        lambda r: _set_config(r, channels=3),
        r"takes 1 channel\(s\), config\.json says 3",
    ),
    (
        "garbage",
        lambda r: (r / "config.json").write_bytes(b"\x00\xff{"),
        r"config\.json: unreadable",
    ),
]


def _set_config(run_dir: Path, **values: object) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, **values}))


@pytest.mark.parametrize(("name", "damage", "message"), RUN_DAMAGE, ids=[d[0] for d in RUN_DAMAGE])
@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "plot"])
def test_damaged_run_folder(run, tmp_path, capfd, name, damage, message, command) -> None:
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    (bad / "history.csv").write_text("epoch,loss,dice,val_loss,val_dice\n1,0.5,0.5,0.6,0.4\n")
    damage(bad)
    images.write_png(tmp_path / "in" / "a.png", IMAGE)
    data = make_prepared(tmp_path, ids_of(2))
    args = {
        "predict": ["predict", bad, tmp_path / "in", "--out", tmp_path / "out"],
        "evaluate": ["evaluate", bad, data, "--out", tmp_path / "out", "--no-progress"],
        "export": ["export", bad, "--out", tmp_path / "out" / "m.onnx"],
        "plot": ["plot", bad],
    }[command]
    code, err = cli(capfd, *args)
    assert code == 1
    the_line(err, "^error: .*" + message)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- evaluate and train: bad data


def _damage_pair(kind: str) -> Callable[[Path, Path], None]:
    def damage(image: Path, mask: Path) -> None:
        if kind == "empty image":
            image.write_bytes(b"")
        elif kind == "text image":
            image.write_text("hello")
        elif kind == "truncated image":
            image.write_bytes(image.read_bytes()[:60])
        elif kind == "truncated mask":
            mask.write_bytes(mask.read_bytes()[:60])
        elif kind == "folder image":
            image.unlink()
            image.mkdir()
        elif kind == "mask of another size":
            images.write_png(mask, np.zeros((5, 5), np.uint8))

    return damage


DATA_DAMAGE = [
    ("empty image", r"not an image \(empty or damaged\): .*case001\.png"),
    ("text image", r"not an image \(empty or damaged\): .*case001\.png"),
    ("truncated image", r"images/case001\.png: the PNG data is corrupt or truncated"),
    ("truncated mask", r"masks/case001\.png: the PNG data is corrupt or truncated"),
    ("folder image", r"1 mask\(s\) without an image \(case001\)"),
    ("mask of another size", r"masks/case001\.png: mask is 5x5 but its image"),
]


@pytest.mark.parametrize(("kind", "message"), DATA_DAMAGE, ids=[d[0] for d in DATA_DAMAGE])
@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_bad_data_folder(run, tmp_path, capfd, kind, message, command) -> None:
    data = make_prepared(tmp_path, ids_of(4))
    _damage_pair(kind)(data / "train/images/case001.png", data / "train/masks/case001.png")
    out = tmp_path / "out"
    if command == "evaluate":
        args = ["evaluate", run, data, "--out", out, "--no-progress"]
    else:
        args = ["train", data, "--out", out, "--epochs", "1", "--image-size", "16", "--depth", "1"]
    code, err = cli(capfd, *args)
    assert code == 1, err
    the_line(err, "^error: .*" + message)
    assert_complete(out)
    assert not list(out.glob("*.keras")) and not (out / "per_image.csv").exists()
    if command == "train":
        assert not out.exists()  # bad data leaves no run folder behind, not even an empty one


def test_train_config_file_garbage(tmp_path: Path, capfd) -> None:
    data = make_prepared(tmp_path, ids_of(4))
    (tmp_path / "settings.yaml").write_bytes(b"\x00\xff: [")
    code, err = cli(
        capfd, "train", data, "--out", tmp_path / "o", "--config", tmp_path / "settings.yaml"
    )
    assert code == 1
    the_line(err, r"^error: .*settings\.yaml: not valid YAML/JSON")


# ---------------------------------------------------------------- export and plot


EXPORT_INPUTS = [
    ("text.keras", lambda p: p.write_text("hello"), r"text\.keras: not a Keras model file"),
    ("empty.keras", lambda p: p.write_bytes(b""), r"empty\.keras: not a Keras model file"),
    ("lambda.keras", _lambda_model, r"lambda\.keras: refused: .*Python code"),
    ("dir.keras", lambda p: p.mkdir(), r"dir\.keras/config\.json: missing"),
    (
        "model.h5",
        lambda p: p.write_bytes(b"\x89HDF\r\n"),
        r"model\.h5: not a \.keras file or run folder",
    ),
]


@pytest.mark.parametrize(
    ("name", "make", "message"), EXPORT_INPUTS, ids=[e[0] for e in EXPORT_INPUTS]
)
def test_export_bad_model_file(tmp_path: Path, capfd, name, make, message) -> None:
    make(tmp_path / name)
    code, err = cli(capfd, "export", tmp_path / name, "--out", tmp_path / "out" / "m.onnx")
    assert code == 1
    the_line(err, "^error: .*" + message)
    assert not (tmp_path / "out").exists()


def test_export_into_a_read_only_folder(run: Path, tmp_path: Path, capfd) -> None:
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        code, err = cli(capfd, "export", run, "--out", ro / "m.onnx")
        assert code == 1
        the_line(err, r"^error: .*m\.onnx: cannot be written \(Read-only file system\)")


@pytest.mark.parametrize("fmt", ["onnx", "saved_model"])
def test_export_onto_a_full_disk(tmp_path: Path, capfd, fmt: str) -> None:
    from unet_lowered.model import unet as build_unet

    run = make_run(tmp_path / "run", build_unet((32, 32, 1)))  # 7.8 MB of weights
    with tmpfs(tmp_path / "small", "1m") as small:
        code, err = cli(capfd, "export", run, "--format", fmt, "--out", small / "exported")
        assert code == 1
        the_line(err, r"^error: .*exported: .*cannot be written \(.*No space left on device")
        assert not list(small.iterdir())  # nothing left behind, not even a temporary file


@pytest.mark.parametrize(
    ("history", "message"),
    [
        (b"epoch,loss\nx,y\n", r"history\.csv: damaged \(ValueError"),
        (b"\xff\xfe\x00\x01", r"history\.csv: damaged \(UnicodeDecodeError"),
        (b"", r"history\.csv: no epochs recorded yet"),
    ],
)
def test_plot_damaged_history(run: Path, tmp_path: Path, capfd, history, message) -> None:
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    (bad / "history.csv").write_bytes(history)
    code, err = cli(capfd, "plot", bad)
    assert code == 1
    the_line(err, "^error: .*" + message)
    assert not (bad / "curves.png").exists()


def test_plot_with_a_damaged_validation_image(run: Path, tmp_path: Path, capfd) -> None:
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    (bad / "history.csv").write_text("epoch,loss,dice,val_loss,val_dice\n1,0.5,0.5,0.6,0.4\n")
    data = make_prepared(tmp_path, ids_of(3))
    (data / "train/images/case001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    _set_config(bad, data=str(data))
    (bad / "split.json").write_text(json.dumps({"train": ["case000"], "val": ["case001"]}))
    code, err = cli(capfd, "plot", bad)
    assert code == 1
    the_line(err, r"^error: .*case001\.png: corrupt PNG header")
    assert_complete(bad)


def test_dicom_jpeg_ls_predicts(run: Path, tmp_path: Path, capfd) -> None:
    """A compressed DICOM through the whole command (the decoder of the dicom extra)."""
    write(tmp_path / "in" / "xray.dcm", compressed(dataset(IMAGE.astype(np.uint16) * 16), "jpegls"))
    code, err = cli(capfd, "predict", run, tmp_path / "in", "--out", tmp_path / "out")
    assert code == 0, err
    assert images.read_image(tmp_path / "out" / "xray.png").shape == (40, 50)


# ---------------------------------------------------------------- train and demo: where they write


def test_train_and_demo_onto_a_file_or_into_a_read_only_folder(tmp_path: Path, capfd) -> None:
    # Refused before any planning or training, in one line naming --out.
    data = make_prepared(tmp_path, ids_of(4))
    a_file = tmp_path / "existing.txt"
    a_file.write_text("keep me")
    for extra in ([], ["--overwrite"]):
        code, err = cli(capfd, "train", data, "--out", a_file, "--epochs", "1", *extra)
        assert code == 1
        the_line(err, r"^error: --out .*existing\.txt: a file, not a folder; choose another")
        code, err = cli(capfd, "demo", "--out", a_file, *extra)
        assert code == 1
        the_line(err, r"^error: --out .*existing\.txt: a file, not a folder; choose another")
    code, err = cli(capfd, "train", data, "--out", a_file / "run", "--epochs", "1")
    assert code == 1
    the_line(err, r"^error: --out .*existing\.txt/run: .*existing\.txt is a file, not a folder")
    assert a_file.read_text() == "keep me"
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        for command in (["train", data, "--epochs", "1"], ["demo"]):
            code, err = cli(capfd, *command, "--out", ro / "sub" / "run")
            assert code == 1
            the_line(err, r"^error: --out .*ro/sub/run: cannot create or write the folder")


def test_one_image_gets_advice_that_works(tmp_path: Path, capfd) -> None:
    data = make_prepared(tmp_path, ids_of(1))
    for extra in ([], ["--val-fraction", "0.9"]):
        code, err = cli(capfd, "train", data, "--out", tmp_path / "run", "--epochs", "1", *extra)
        assert code == 1
        the_line(err, r"^error: .*prepared: one image; .*pass --overfit-batch")
        assert not (tmp_path / "run").exists()


def test_evaluate_onto_a_file(run: Path, tmp_path: Path, capfd) -> None:
    data = make_prepared(tmp_path, ids_of(2))
    a_file = tmp_path / "existing.txt"
    a_file.write_text("keep me")
    code, err = cli(capfd, "evaluate", run, data, "--out", a_file)
    assert code == 1
    the_line(err, r"^error: --out .*existing\.txt: a file, not a folder; choose another --out")
    assert a_file.read_text() == "keep me"


def test_plot_says_why_samples_are_left_out(run: Path, tmp_path: Path, capfd) -> None:
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    (moved / "history.csv").write_text("epoch,loss,dice,val_loss,val_dice\n1,0.5,0.5,0.6,0.4\n")
    (moved / "samples.png").write_bytes(b"old")
    _set_config(moved, data=str(tmp_path / "gone"))
    code, err = cli(capfd, "plot", moved)
    assert code == 0
    the_line(
        err,
        r"^samples\.png left out: the data it was trained on \(.*gone\) is not there or "
        r"unreadable; run `unet plot` where the data is \(.*samples\.png is from an earlier plot\)",
    )
    the_line(err, r"^worst\.png left out: no evaluation yet; run `unet evaluate .*run DATA` first$")
    for bad in (["--samples", "-1"], ["--worst", "-3"]):
        code, err = cli(capfd, "plot", moved, *bad)
        assert code == 1
        the_line(err, rf"^error: {bad[0]} must be 0 or more, got {bad[1]}$")


def test_evaluate_warns_when_every_mask_is_empty(run: Path, tmp_path: Path, capfd) -> None:
    data = make_prepared(tmp_path, ids_of(2), mask_values=(0,))
    code, err = cli(capfd, "evaluate", run, data, "--out", tmp_path / "ev", "--no-progress")
    assert code == 0
    the_line(err, r"^warning: every mask scored in .*prepared is empty, so Dice only counts")
    data2 = make_prepared(tmp_path / "two", ids_of(2))
    code, err = cli(capfd, "evaluate", run, data2, "--out", tmp_path / "ev2", "--no-progress")
    assert code == 0 and "warning: every mask" not in err


def test_usage_errors_are_one_line_naming_the_help(run: Path, tmp_path: Path, capfd) -> None:
    cases = [
        (["predict", run], r"^error: Missing argument 'inputs'\. \(see `unet predict --help`\)$"),
        (
            ["predict", run, tmp_path, "--out", tmp_path / "o", "--actors", "0"],
            r"^error: Invalid value for '--actors': .* \(see `unet predict --help`\)$",
        ),
        (
            ["train", "--epochs", "abc"],
            r"^error: Invalid value for '--epochs': .*`unet train --help`",
        ),
        (["nosuch"], r"^error: No such command 'nosuch'\. \(see `unet --help`\)$"),
    ]
    for args, pattern in cases:
        code, err = cli(capfd, *args)
        assert code == 2
        assert len(err.strip().splitlines()) == 1, err
        the_line(err, pattern)
    code, err = cli(capfd)  # `unet` alone still shows the help
    assert code == 2 and "Commands:" in err and "predict" in err


def test_a_usage_error_is_refused_before_keras_is_imported(tmp_path: Path) -> None:
    """A mistyped option took the 5-10 s of the Keras import before its one line."""
    code = (
        "import sys\n"
        "from unet_lowered.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    print(e.code, 'keras' in sys.modules, 'tensorflow' in sys.modules)\n"
    )
    for args in (["train", "d", "--out", "r", "--bogus"], ["predict", "r"]):
        done = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path
        )
        assert done.stdout.split() == ["2", "False", "False"], done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_settings_that_would_be_ignored_or_crash_are_one_line(
    run: Path, tmp_path: Path, capfd, monkeypatch
) -> None:
    images = tmp_path / "in"
    images.mkdir()
    code, err = cli(capfd, "predict", run, images, "--out", tmp_path / "o", "--actors", "2")
    assert code == 1
    the_line(err, r"^error: --actors applies to --engine ray; add it, or drop them$")
    code, err = cli(
        capfd,
        "predict",
        run,
        images,
        "-o",
        tmp_path / "o",
        "--ray-address",
        "auto",
        "--actors",
        "2",
    )
    the_line(err, r"^error: --ray-address and --actors apply to --engine ray")
    monkeypatch.setenv("KERAS_BACKEND", "JAX")  # Keras itself: a traceback
    code, err = cli(capfd, "model-info")
    assert code == 1
    the_line(err, r"^error: KERAS_BACKEND='JAX' is not a backend unet-lowered runs on; .*jax")


def test_a_backend_that_is_not_installed_is_one_line(
    tmp_path: Path, capfd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KERAS_BACKEND=jax (or a keras.json naming torch) without it installed gave about 28
    lines of Keras' import traceback ending in ModuleNotFoundError."""
    import importlib.util

    from unet_lowered import cli as cli_mod

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("jax", "torch") else real(name, *a),
    )
    monkeypatch.delitem(sys.modules, "keras")  # as in a fresh process; put back afterwards
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(
        UnetError, match=r"^KERAS_BACKEND is jax, which is not installed; .*\[backends\]"
    ):
        cli_mod._import_keras_quietly()
    monkeypatch.delenv("KERAS_BACKEND")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    config = str(tmp_path / "keras.json")
    with pytest.raises(
        UnetError, match=f"^the backend in {config} is torch, which is not installed"
    ):
        cli_mod._import_keras_quietly()


def test_train_names_a_mask_whose_values_cannot_be_read(tmp_path: Path, capfd) -> None:
    """An unprepared folder with a gradient saved as a mask: the file is named."""
    from unet_lowered.io.images import write_png

    rng = np.random.default_rng(0)
    for i in range(6):
        write_png(tmp_path / "d" / "images" / f"a{i}.png", rng.integers(0, 255, (32, 32), np.uint8))
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 255
        if i == 3:
            mask = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))
        write_png(tmp_path / "d" / "masks" / f"a{i}.png", mask)
    code, err = cli(capfd, "train", tmp_path / "d", "--out", tmp_path / "run", "--epochs", "1")
    assert code == 1
    the_line(err, r"^error: .*/d/masks/a3\.png: 32 distinct values .* `unet prepare --foreground")
    assert not (tmp_path / "run").exists()


def test_a_second_command_writing_the_same_folder_is_refused(
    run: Path, tmp_path: Path, capfd
) -> None:
    """While another unet command writes a folder (its lock held), predict, train and
    prepare into it are refused in one line instead of mixing their files with its."""
    from unet_lowered.io import atomic

    images = tmp_path / "in"
    images.mkdir()
    out = tmp_path / "out"
    with atomic.exclusive(out, "predicting into"):
        code, err = cli(capfd, "predict", run, images, "--out", out)
        assert code == 1
        the_line(err, rf"^error: {out}: another unet command is predicting into there right now")
    (tmp_path / "data").mkdir()  # a missing one is refused first, before the Keras import
    with atomic.exclusive(tmp_path / "run2", "training into"):
        code, err = cli(capfd, "train", tmp_path / "data", "--out", tmp_path / "run2")
        assert code == 1
        the_line(err, r"run2: another unet command is training into there right now")


@pytest.mark.parametrize(
    ("args", "target", "what"),
    [
        (
            ["synth", "{t}/s", "--count", "2", "--test-count", "0", "--size", "64"],
            "s",
            "writing a data set into",
        ),
        (["demo", "--out", "{t}/demo"], "demo", "running the demo in"),
        (["plan", "{t}/data"], "data/plan.json", "planning into"),
        (["export", "{run}", "--format", "saved_model", "--out", "{t}/sm"], "sm", "exporting to"),
    ],
)
def test_synth_demo_plan_and_export_hold_their_output_lock(
    run: Path, tmp_path: Path, capfd, args: list[str], target: str, what: str
) -> None:
    """A second synth, demo, plan or export writing the same place is refused in one line
    before it writes or replaces anything there."""
    from unet_lowered.io import atomic

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.json").write_text("{}")
    argv = [a.format(t=tmp_path, run=run) for a in args]
    with atomic.exclusive(tmp_path / target, what):
        code, err = cli(capfd, *argv)
    assert code == 1
    the_line(err, rf"^error: {tmp_path / target}: another unet command is {what} there right now")
    assert not (tmp_path / target).exists()


def test_a_folder_that_cannot_be_listed_is_named_not_skipped(tmp_path, monkeypatch) -> None:
    """An unreadable input folder gave a PermissionError traceback (and, with --recursive,
    'no image files' or silently fewer masks); now one line names it. Root reads every
    folder, so the denial is simulated."""
    from unet_lowered.errors import UnetError
    from unet_lowered.io import images

    (tmp_path / "in" / "locked").mkdir(parents=True)
    (tmp_path / "in" / "a.png").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path=".", *args):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path, *args)

    real_listdir = os.listdir

    def listdir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", listdir)  # Path.iterdir
    with pytest.raises(UnetError, match=r"^.*/in/locked: cannot be read \(Permission denied\)"):
        images.iter_files(tmp_path / "in")
    with pytest.raises(UnetError, match=r"^.*/in/locked: cannot be read \(Permission denied\)"):
        images.iter_files(tmp_path / "in" / "locked", recursive=False)


def test_a_pattern_keeps_the_output_out_of_its_folder(run, tmp_path, capfd):
    """`unet predict RUN "imgs/*.png" --out imgs/masks` was accepted (only folders given as
    inputs were checked), and a later `unet predict RUN imgs --recursive` read the masks
    as X-rays. Files the shell names one by one are not folders the user gave."""
    from unet_lowered.io.images import write_png

    write_png(tmp_path / "imgs" / "a.png", np.zeros((32, 32), np.uint8))
    pattern = f"{tmp_path}/imgs/*.png"
    code, err = cli(capfd, "predict", run, pattern, "--out", tmp_path / "imgs" / "masks")
    assert code == 1
    the_line(err, rf"^error: --out .*/imgs/masks is inside {tmp_path}/imgs, whose images ")
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["a.png"]
    code, err = cli(capfd, "predict", run, tmp_path / "imgs" / "a.png", "--out", tmp_path / "m")
    assert code == 0, err


def test_running_out_of_memory_is_one_line(monkeypatch, capfd) -> None:
    """NumPy's MemoryError, TensorFlow's ResourceExhaustedError and OpenCV's
    "Insufficient memory" gave a traceback."""
    from unet_lowered import cli as cli_mod
    from unet_lowered.training import train as train_mod

    def no_memory(*args, **kwargs):
        raise MemoryError(
            "Unable to allocate 2.00 GiB for an array with shape (512, 1024, 1024, 1)"
        )

    monkeypatch.setattr(train_mod, "train", no_memory)
    with pytest.raises(SystemExit) as done:
        cli_mod.main(["train", "--resume", "--out", "somewhere"])
    err = capfd.readouterr().err
    assert done.value.code == 1 and err.count("\n") == 1
    assert (
        err.startswith("error: out of memory (Unable to allocate 2.00 GiB")
        and "--batch-size" in err
    )

    class ResourceExhaustedError(Exception):
        pass

    def oom(*args, **kwargs):
        raise ResourceExhaustedError("OOM when allocating tensor\nwith shape[8,16,1024,1024]")

    monkeypatch.setattr(train_mod, "train", oom)
    with pytest.raises(SystemExit) as done:
        cli_mod.main(["train", "--resume", "--out", "somewhere"])
    err = capfd.readouterr().err
    assert done.value.code == 1 and err == (
        "error: out of memory (OOM when allocating tensor); lower --batch-size or --image-size"
        " (a --resume run keeps its own)\n"
    )

    def opencv_oom(*args, **kwargs):  # what a huge cv2.resize raises (OpenCV 5.1's text)
        raise cv2.error(
            "OpenCV(5.1.0) /io/opencv/modules/core/src/alloc.cpp:73: error: (-4:Insufficient "
            "memory) Failed to allocate 90000000000 bytes in function 'OutOfMemoryError'\n"
        )

    monkeypatch.setattr(train_mod, "train", opencv_oom)
    with pytest.raises(SystemExit) as done:
        cli_mod.main(["train", "--resume", "--out", "somewhere"])
    err = capfd.readouterr().err
    assert done.value.code == 1 and err == (
        "error: out of memory (OpenCV: Failed to allocate 90000000000 bytes); lower "
        "--batch-size or --image-size (a --resume run keeps its own)\n"
    )


def test_evaluate_writes_nothing_among_the_images_or_masks_it_reads(run, tmp_path, capfd):
    """`unet evaluate RUN DATA --out DATA/masks` wrote per_image.csv and summary.json
    among the masks (then `unet check` counted them as bad masks)."""
    from unet_lowered.io.images import write_png

    for sub in ("images", "masks"):
        write_png(tmp_path / "d" / sub / "a.png", np.zeros((32, 32), np.uint8))
    code, err = cli(capfd, "evaluate", run, tmp_path / "d", "--out", tmp_path / "d" / "masks")
    assert code == 1
    the_line(err, rf"^error: --out {tmp_path}/d/masks is inside {tmp_path}/d/masks, which this")
    assert sorted(p.name for p in (tmp_path / "d" / "masks").iterdir()) == ["a.png"]


def test_a_file_and_a_link_to_it_are_predicted_once_under_the_files_name(run, tmp_path, capfd):
    """link0.png -> scan.png in one folder: the mask was named after the link, which
    sorts first, and scan.png got none."""
    from unet_lowered.io.images import write_png

    write_png(tmp_path / "in" / "scan.png", np.zeros((32, 32), np.uint8))
    (tmp_path / "in" / "a_link.png").symlink_to(tmp_path / "in" / "scan.png")
    code, err = cli(capfd, "predict", run, tmp_path / "in", "--out", tmp_path / "out")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["scan.png"]


def test_train_writes_no_run_among_the_images_or_masks_it_reads(tmp_path, capfd):
    """`unet train DATA --out DATA/train/images/r` was accepted, and the run's files then
    sat among the training images."""
    data = make_prepared(tmp_path, ids_of(4))
    images = data / "train" / "images"
    before = sorted(p.name for p in images.iterdir())
    code, err = cli(capfd, "train", data, "--out", images / "r", "--epochs", "1")
    assert code == 1
    the_line(err, rf"^error: --out {images}/r is inside {images}, which training reads")
    assert sorted(p.name for p in images.iterdir()) == before


def test_names_the_output_encoding_cannot_show_are_escaped(tmp_path: Path) -> None:
    """PYTHONIOENCODING=ascii (or a terminal in another encoding): a file name with é in
    a report ended in a UnicodeEncodeError traceback; it is shown escaped."""
    for name in ("a", "nomaské"):
        images.write_png(tmp_path / "raw" / "images" / f"{name}.png", np.zeros((8, 8), np.uint8))
    images.write_png(tmp_path / "raw" / "masks" / "a.png", np.full((8, 8), 255, np.uint8))
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [sys.executable, "-m", "unet_lowered", "check", str(tmp_path / "raw")],
        capture_output=True,
        text=True,
        env=env,
        encoding="ascii",
        errors="strict",
    )
    assert done.returncode == 0, done.stderr
    assert "images/nomask\\xe9.png: image has no mask" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_closed_output_pipe_ends_quietly_as_unix_tools_do() -> None:
    """`unet model-info | true` ended with a silent status 1 (Click's), which reads as a
    user error under `set -o pipefail`; it ends as `cat` does, by SIGPIPE (141)."""
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write fails
    try:
        done = subprocess.run(
            [sys.executable, "-m", "unet_lowered", "model-info"],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(writer)
    assert done.returncode == -13 and done.stderr == ""  # killed by SIGPIPE, no traceback
