"""``unet predict``'s three-thread pipeline: the same bytes as a plain loop, in order,
bounded, and errors and interruptions as before."""

from __future__ import annotations

import csv
import io
import random
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from rich.console import Console
from scipy.special import expit

from run_fixtures import bright_model, disk_image, make_run
from unet_lowered.errors import UnetError
from unet_lowered.inference import batch
from unet_lowered.inference.batch import predict_files, run_pipeline
from unet_lowered.inference.predictor import PredictOptions, probability_fn
from unet_lowered.inference.tiling import predict_tiled
from unet_lowered.io import images
from unet_lowered.io.runs import load_run
from unet_lowered.preprocess import model_input


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run", bright_model(32))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PNG 8 and 16 bit, JPEG, RGB, a corrupt file and an empty one, of different sizes."""
    folder = tmp_path_factory.mktemp("in")
    images.write_png(folder / "a8.png", disk_image(61, 47, seed=1)[0])
    images.write_png(folder / "b16.png", disk_image(90, 120, np.uint16, seed=2)[0])
    cv2.imwrite(str(folder / "c.jpg"), disk_image(33, 70, seed=3)[0])
    (folder / "d_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    gray = disk_image(40, 41, seed=4)[0]
    images.write_png(folder / "e_rgb.png", np.stack([gray, gray // 2, gray], axis=2))
    (folder / "f_empty.jpg").write_bytes(b"")
    images.write_png(folder / "g16.png", disk_image(257, 31, np.uint16, seed=5)[0])
    images.write_png(folder / "h8.png", disk_image(32, 32, seed=6)[0])
    return folder


def old_predict_images(model, batch_, config, options: PredictOptions) -> list[np.ndarray]:
    """``predict_images`` as it was before the pipeline split it (same padding)."""
    fn = probability_fn(model, config)
    if options.mode == "tile":
        return [
            predict_tiled(
                model_input(im, config.channels, None, config.clahe),
                fn,
                tuple(config.image_size),
                options.overlap,
                (0, 0),
                options.blend,
                options.batch_size,
            )
            for im in batch_
        ]
    xs = [model_input(im, config.channels, config.image_size, config.clahe) for im in batch_]
    out = []
    for p, im in zip(fn(np.stack(xs)), batch_, strict=True):
        h, w = im.shape[:2]
        if p.shape[:2] != (h, w):
            p = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
        out.append(p)
    return out


def old_loop(run: Path, folder: Path, out: Path, options: PredictOptions, **kwargs) -> None:
    """The sequential loop ``predict_files`` ran before the pipeline (no resume)."""
    r = load_run(run)
    model, config = r.model(), r.config
    out.mkdir(parents=True)
    files = batch.collect_inputs([folder])
    per_call = options.batch_size if options.mode == "resize" else 1
    rows: list[dict] = []
    console = Console(file=io.StringIO())
    report = batch.PredictReport(out)
    pairs = list(zip(batch.make_ids(files), files, strict=True))
    for chunk in batch._chunks(pairs, per_call):
        loaded = []
        for image_id, path in chunk:
            try:
                loaded.append((image_id, path, images.read_image(path, options.max_pixels)))
            except UnetError as e:
                batch._fail(report, rows, console, image_id, path, e)
        if loaded:
            probs = old_predict_images(model, [im for *_, im in loaded], config, options)
            for (image_id, path, image), p in zip(loaded, probs, strict=True):
                rows.append(
                    batch._write_outputs(out, image_id, path, image, p, config, options, **kwargs)
                )
    order = {image_id: k for k, (image_id, _) in enumerate(pairs)}
    rows.sort(key=lambda row: order[row["id"]])
    batch._write_csv(out / batch.CSV_FILE, rows)


def csv_rows(out: Path) -> list[dict[str, str]]:
    with open(out / batch.CSV_FILE, newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def assert_same(out: Path, reference: Path) -> None:
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in reference.iterdir())
    for name in names:
        if name != batch.CSV_FILE:
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert csv_rows(out) == csv_rows(reference)


@pytest.mark.parametrize(
    ("mode", "batch_size", "save_prob", "save_overlay"),
    [("resize", 3, "png", True), ("resize", 1, "npy", False), ("tile", 4, "npy", True)],
)
def test_pipeline_writes_the_bytes_of_the_old_loop(
    run, inputs, tmp_path, mode, batch_size, save_prob, save_overlay
) -> None:
    options = PredictOptions(mode=mode, batch_size=batch_size)
    kwargs = {"save_prob": save_prob, "save_overlay": save_overlay}
    old_loop(run, inputs, tmp_path / "old", options, **kwargs)
    report = predict_files(run, [inputs], tmp_path / "new", options, progress=False, **kwargs)
    assert sorted(Path(p).name for p, _ in report.failed) == ["d_bad.png", "f_empty.jpg"]
    assert len(report.written) == 6
    assert_same(tmp_path / "new", tmp_path / "old")
    predict_files(
        run, [inputs], tmp_path / "plain", options, progress=False, pipeline=False, **kwargs
    )
    assert_same(tmp_path / "plain", tmp_path / "old")


def test_an_error_while_reading_surfaces_where_the_loop_would_stop(
    run, inputs, tmp_path, monkeypatch
) -> None:
    """The batches before the failing one are written, as a plain loop writes them."""
    real = batch.prepare_images
    seen = []

    def fails_on_the_fifth(images_, *args):
        seen.append(1)
        if len(seen) == 5:
            raise RuntimeError("boom")
        return real(images_, *args)

    monkeypatch.setattr(batch, "prepare_images", fails_on_the_fifth)
    with pytest.raises(RuntimeError, match="boom"):
        predict_files(run, [inputs], tmp_path / "out", PredictOptions(batch_size=2), progress=False)
    # batches: [a8 b16] [c d_bad] [e_rgb f_empty] [g16 h8]; the 5th read is g16
    written = sorted(p.stem for p in (tmp_path / "out").glob("*.png"))
    assert written == ["a8", "b16", "c", "e_rgb"]
    assert [r["id"] for r in csv_rows(tmp_path / "out")] == [
        "a8",
        "b16",
        "c",
        "d_bad",
        "e_rgb",
        "f_empty",
    ]


def test_a_write_error_is_one_line(run, inputs, tmp_path, monkeypatch) -> None:
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(batch, "_write_outputs", full)
    with pytest.raises(UnetError, match=r"cannot write the outputs of .*a8\.png \(No space left"):
        predict_files(run, [inputs], tmp_path / "out", progress=False)


def test_a_full_disk_names_the_output_and_resume(run, inputs, tmp_path, monkeypatch) -> None:
    """The atomic writes turn a full disk into UnwritableError, which the write step's
    `except OSError` missed: the user read the CSV's error (the last write to fail) and
    nothing about --resume. Now the first failed output is named, with --resume."""
    from unet_lowered.io import atomic

    real = atomic.tempfile.mkstemp
    calls = []

    def filling(*args, **kwargs):
        calls.append(kwargs.get("prefix"))
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", filling)
    with pytest.raises(UnetError) as failed:
        predict_files(run, [inputs], tmp_path / "out", pipeline=False, progress=False)
    message = str(failed.value)
    assert "cannot write the outputs of" in message and "(No space left on device)" in message
    assert message.endswith("then run again with --resume")
    assert "predictions.csv" not in message  # its own failed write stays quiet


def test_workers_read_and_write_side_by_side_and_record_in_order(
    run, inputs, tmp_path, monkeypatch
) -> None:
    """On two CPUs two images of a batch are decoded, and written, at once; the journal
    still records them in input order, the slow first image of a batch before the rest."""
    monkeypatch.setattr(batch.os, "cpu_count", lambda: 2)
    lock = threading.Lock()
    running = {"read": 0, "write": 0}
    most = {"read": 0, "write": 0}

    def counted(step: str, real, slow: tuple[str, ...]):
        def wrapper(*args, **kwargs):
            with lock:
                running[step] += 1
                most[step] = max(most[step], running[step])
            time.sleep(0.2 if Path(str(args[1 if step == "write" else 0])).stem in slow else 0.01)
            try:
                return real(*args, **kwargs)
            finally:
                with lock:
                    running[step] -= 1

        return wrapper

    first_of_batch = ("a8", "e_rgb")  # batches of 4: [a8 b16 c d_bad] [e_rgb f_empty g16 h8]
    monkeypatch.setattr(
        batch.images, "read_image", counted("read", images.read_image, first_of_batch)
    )
    monkeypatch.setattr(
        batch, "_write_outputs", counted("write", batch._write_outputs, first_of_batch)
    )
    journaled = []
    append = batch.Journal.append
    monkeypatch.setattr(
        batch.Journal, "append", lambda self, row: (journaled.append(row["id"]), append(self, row))
    )
    predict_files(run, [inputs], tmp_path / "out", PredictOptions(batch_size=4), progress=False)
    assert most == {"read": 2, "write": 2}
    assert journaled == ["a8", "b16", "c", "d_bad", "e_rgb", "f_empty", "g16", "h8"]


# ---------------------------------------------------------------- the runner alone


def test_runner_keeps_order_and_stays_bounded() -> None:
    """Random delays in each step; chunks come out in order and no step runs far ahead."""
    rng = random.Random(0)
    lock = threading.Lock()
    counts = {"read": 0, "written": 0, "most_ahead": 0}
    written: list[int] = []

    def read(k: int) -> int:
        time.sleep(rng.random() * 0.002)
        with lock:
            counts["read"] += 1
            counts["most_ahead"] = max(counts["most_ahead"], counts["read"] - counts["written"])
        return k * 10

    def predict(x: int) -> int:
        time.sleep(rng.random() * 0.002)
        return x + 1

    def write(x: int, stop: threading.Event) -> None:
        time.sleep(rng.random() * 0.006)  # the slow step: the others must wait for it
        written.append(x)
        with lock:
            counts["written"] += 1

    before = threading.active_count()
    run_pipeline(range(200), read, predict, write, ahead=2)
    assert written == [k * 10 + 1 for k in range(200)]
    # in flight at most: being read, 2 queued, being predicted, 2 queued, being written
    assert counts["most_ahead"] <= 7
    assert threading.active_count() == before


@pytest.mark.parametrize("where", ["predict", "write"])
def test_runner_interrupted_stops_and_joins(where: str) -> None:
    written: list[int] = []

    def predict(x: int) -> int:
        if where == "predict" and x == 5:
            raise KeyboardInterrupt
        return x

    def write(x: int, stop: threading.Event) -> None:
        if where == "write" and x == 5:
            raise KeyboardInterrupt
        written.append(x)

    before = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(range(100), lambda k: k, predict, write)
    assert threading.active_count() == before
    assert written == list(range(len(written))) and len(written) <= 5
    if where == "write":
        assert written == [0, 1, 2, 3, 4]


def test_runner_writes_what_was_predicted_before_an_error() -> None:
    written: list[int] = []

    def predict(x: int) -> int:
        if x == 7:
            raise ValueError("bad batch")
        return x

    with pytest.raises(ValueError, match="bad batch"):
        run_pipeline(range(20), lambda k: k, predict, lambda x, stop: written.append(x))
    assert written == list(range(7))


def test_runner_plain_loop_known_answer() -> None:
    out: list[float] = []
    run_pipeline([1, 2, 3], lambda k: k * 2, expit, lambda x, s: out.append(x), threaded=False)
    np.testing.assert_allclose(out, expit(np.array([2, 4, 6])))
