"""``unet predict --engine ray``: the local engine's files on a local Ray instance, faults included.

One Ray instance (2 CPUs, 127.0.0.1) serves the whole module; each test predicts 40
small images and a corrupt file with 1 or 2 actors and compares every output file, byte
for byte, and ``predictions.csv`` (timings apart) with the local engine's.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from run_fixtures import (
    DARK_OBJECT_STATS,
    FRAMED_STATS,
    apex_chest,
    apex_stats,
    bright_model,
    chest_picture,
    chest_stats,
    dark_model,
    disk_image,
    framed_pictures,
    make_run,
)
from unet_lowered.errors import UnetError
from unet_lowered.inference.batch import predict_files
from unet_lowered.inference.journal import JOURNAL_FILE
from unet_lowered.io import images

N_GOOD = 40
OPTIONS = {"save_prob": "png", "save_overlay": True, "progress": False}


@pytest.fixture(scope="module")
def ray_address() -> str:
    """A local Ray instance on 127.0.0.1 with 2 CPUs; its GCS address."""
    # read when ray is imported: loopback only, for this process and its children
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = pytest.importorskip("ray", reason="Ray is not installed (unet-lowered[distributed])")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ray")
    run = make_run(root / "run", bright_model(32))
    inputs = root / "in"
    for k in range(N_GOOD):
        images.write_png(inputs / f"img{k:02d}.png", disk_image(64, 60 + k % 7, seed=k)[0])
    (inputs / "img05b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # one failed row
    return run, inputs


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory) -> Path:
    run, inputs = setup
    out = tmp_path_factory.mktemp("reference") / "out"
    report = predict_files(run, [inputs], out, **OPTIONS)
    assert len(report.written) == N_GOOD and len(report.failed) == 1
    return out


def rows_of(out: Path) -> list[dict[str, str]]:
    with open(out / "predictions.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def assert_same_outputs(out: Path, reference: Path) -> None:
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == sorted(p.name for p in reference.iterdir() if not p.name.startswith("."))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp, no journal
    assert len(visible) == 3 * N_GOOD + 1  # mask, probability, overlay; the table
    for name in visible:
        if name != "predictions.csv":
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    rows = rows_of(out)
    assert rows == rows_of(reference)
    assert len({r["id"] for r in rows}) == len(rows) == N_GOOD + 1
    assert [r["status"] for r in rows].count("ok") == N_GOOD
    with open(out / "predictions.csv", newline="") as f:
        assert all(float(r["seconds"]) > 0 for r in csv.DictReader(f) if r["status"] == "ok")


def test_same_files_as_the_local_engine(ray_address, setup, reference, tmp_path) -> None:
    from unet_lowered.inference.ray_engine import predict_files_ray

    run, inputs = setup
    report = predict_files_ray(run, [inputs], tmp_path / "out", actors=2, **OPTIONS)
    assert len(report.written) == N_GOOD
    assert [p for p, _ in report.failed] == [str(inputs / "img05b.png")]
    assert_same_outputs(tmp_path / "out", reference)


def test_the_quality_flag_sees_the_imaged_field_as_the_local_engine_does(
    ray_address, tmp_path
) -> None:
    from unet_lowered.inference.ray_engine import predict_files_ray

    run = make_run(tmp_path / "run", bright_model(), mask_stats=FRAMED_STATS)
    for name, image in framed_pictures().items():
        images.write_png(tmp_path / "in" / f"{name}.png", image)
    predict_files(run, [tmp_path / "in"], tmp_path / "local", progress=False)
    predict_files_ray(run, [tmp_path / "in"], tmp_path / "ray", actors=1, progress=False)
    assert rows_of(tmp_path / "ray") == rows_of(tmp_path / "local")
    assert [r["quality"] for r in rows_of(tmp_path / "ray")] == ["ok", "ok"]
    # The image reaches the contrast rule too: a bright object where training had dark ones.
    dark = make_run(tmp_path / "dark", bright_model(), mask_stats=DARK_OBJECT_STATS)
    predict_files_ray(dark, [tmp_path / "in"], tmp_path / "ray-dark", actors=1, progress=False)
    flags = [r["quality"] for r in rows_of(tmp_path / "ray-dark")]
    assert len(flags) == 2 and all(
        "an object's contrast with its surroundings -" in f for f in flags
    )


def test_an_inverted_film_is_read_the_right_way_round_as_locally(ray_address, tmp_path) -> None:
    """--polarity auto on the actors: the same masks, flags and gray_scale column."""
    from unet_lowered.inference.ray_engine import predict_files_ray

    run = make_run(tmp_path / "run", dark_model(), mask_stats=chest_stats())
    film, _ = chest_picture(seed=10)
    images.write_png(tmp_path / "in" / "film.png", film)
    images.write_png(tmp_path / "in" / "inverted.png", 255 - film)
    predict_files(run, [tmp_path / "in"], tmp_path / "local", progress=False)
    report = predict_files_ray(run, [tmp_path / "in"], tmp_path / "ray", actors=1, progress=False)
    rows = rows_of(tmp_path / "ray")
    assert rows == rows_of(tmp_path / "local")
    assert [(r["gray_scale"], r["quality"]) for r in rows] == [
        ("as stored", "ok"),
        ("inverted", "ok"),
    ]
    for name in ("film.png", "inverted.png"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    assert (tmp_path / "ray" / "film.png").read_bytes() == (
        tmp_path / "ray" / "inverted.png"
    ).read_bytes()
    assert any("inverted.png: read with its gray scale inverted" in n for n in report.notes)


def test_a_turned_film_is_read_upright_as_locally(ray_address, tmp_path) -> None:
    """--orientation auto on the actors: the same masks, flags and orientation column."""
    from unet_lowered.inference.ray_engine import predict_files_ray

    run = make_run(tmp_path / "run", dark_model(64), mask_stats=apex_stats())
    film, _ = apex_chest(seed=10)
    images.write_png(tmp_path / "in" / "film.png", film)
    images.write_png(tmp_path / "in" / "side.png", np.rot90(film))
    predict_files(run, [tmp_path / "in"], tmp_path / "local", progress=False)
    report = predict_files_ray(run, [tmp_path / "in"], tmp_path / "ray", actors=1, progress=False)
    rows = rows_of(tmp_path / "ray")
    assert rows == rows_of(tmp_path / "local")
    assert [(r["orientation"], r["quality"]) for r in rows] == [
        ("as stored", "ok"),
        ("turned 270", "ok"),
    ]
    for name in ("film.png", "side.png"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    assert any("side.png: read turned 270 degrees" in n for n in report.notes)


@pytest.mark.slow  # a fresh process or Ray run: CI runs it (make test-slow)
def test_an_actor_killed_mid_run_is_restarted(ray_address, setup, reference, tmp_path) -> None:
    from unet_lowered.inference.ray_engine import predict_files_ray

    run, inputs = setup
    marker = tmp_path / "killed"

    def kill_once(batch: int) -> None:  # runs in the actor, after batch 3's files are written
        if batch == 3 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    report = predict_files_ray(
        run, [inputs], tmp_path / "out", actors=2, batch_hook=kill_once, **OPTIONS
    )
    assert int(marker.read_text()) != os.getpid()  # an actor died, not this driver
    assert len(report.written) == N_GOOD and len(report.failed) == 1
    assert_same_outputs(tmp_path / "out", reference)


@pytest.mark.slow  # a fresh process or Ray run: CI runs it (make test-slow)
def test_a_batch_whose_actor_keeps_dying_fails_alone(ray_address, setup, tmp_path) -> None:
    from unet_lowered.inference.ray_engine import predict_files_ray

    run, inputs = setup

    def always_dies_on_batch_2(batch: int) -> None:
        if batch == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    report = predict_files_ray(
        run,
        [inputs],
        tmp_path / "out",
        actors=2,
        batch_hook=always_dies_on_batch_2,
        task_retries=0,
        **OPTIONS,
    )
    rows = rows_of(tmp_path / "out")
    assert len(rows) == N_GOOD + 1 and len({r["id"] for r in rows}) == N_GOOD + 1
    died = [r["id"] for r in rows if "the Ray actor predicting it died 1 time(s)" in r["status"]]
    assert died == ["img07", "img08", "img09", "img10"]  # batch 2: inputs 8-11 (img05b is 6)
    assert len(report.written) == N_GOOD - 4 and len(report.failed) == 5


@pytest.mark.slow  # a fresh process or Ray run: CI runs it (make test-slow)
def test_resume_after_the_driver_is_killed(ray_address, setup, reference, tmp_path) -> None:
    from unet_lowered.inference.ray_engine import predict_files_ray

    run, inputs = setup
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-c",
        "from unet_lowered.cli import main; main()",
        "predict",
        str(run),
        str(inputs),
        "--out",
        str(out),
        "--save-prob",
        "png",
        "--overlay",
        "--no-progress",
        "--engine",
        "ray",
        "--ray-address",
        ray_address,
        "--actors",
        "1",
    ]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out / JOURNAL_FILE
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 2 + 8:
            break
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read().decode()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    driver.stderr.close()
    finished = {json.loads(line)["id"] for line in journal.read_text().splitlines()[2:]}
    assert 8 <= len(finished) < N_GOOD + 1
    assert not (out / "predictions.csv").exists()

    redone = tmp_path / "redone"
    redone.mkdir()

    def count(batch: int) -> None:
        (redone / str(batch)).touch()

    report = predict_files_ray(
        run, [inputs], out, actors=2, resume=True, batch_hook=count, **OPTIONS
    )
    assert len(report.written) == N_GOOD
    assert_same_outputs(out, reference)
    assert 0 < len(list(redone.iterdir())) < 11  # only the batches left, of 11


def test_without_ray_the_engine_says_how_to_install_it(setup, tmp_path, monkeypatch) -> None:
    import importlib.util

    from unet_lowered.inference import ray_engine

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    run, inputs = setup
    with pytest.raises(UnetError, match=r"pip install 'unet-lowered\[distributed\]'"):
        ray_engine.predict_files_ray(run, [inputs], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_an_actor_s_own_error_comes_back_as_its_one_line(ray_address) -> None:
    import ray

    from unet_lowered.inference.ray_engine import _unet_error_in

    @ray.remote(num_cpus=0)
    def refuses() -> None:
        from unet_lowered.errors import UnetError

        raise UnetError("runs/x/config.json: missing; copy the whole run folder")

    with pytest.raises(ray.exceptions.RayError) as caught:
        ray.get(refuses.remote())
    assert str(caught.value).count("\n") >= 2  # Ray's text: a traceback, not for the user
    assert _unet_error_in(caught.value) == "runs/x/config.json: missing; copy the whole run folder"
    assert _unet_error_in(RuntimeError("no")) is None


def test_an_address_where_nothing_listens_is_one_line(setup, tmp_path) -> None:
    pytest.importorskip("ray")
    import socket

    from unet_lowered.inference.ray_engine import predict_files_ray

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run, inputs = setup
    with pytest.raises(UnetError, match=rf"--ray-address 127.0.0.1:{port}: nothing answers"):
        predict_files_ray(
            run, [inputs], tmp_path / "out", address=f"127.0.0.1:{port}", progress=False
        )
    assert not (tmp_path / "out").exists()  # refused before the job wrote its journal there
