"""Model files and run folders from elsewhere: unsafe, damaged, mismatched, other backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from run_fixtures import bright_model, disk_image, make_run
from unet_lowered.errors import UnetError
from unet_lowered.io import runs
from unet_lowered.io.runs import load_model, load_run


def refused(call, *args, match: str) -> str:
    with pytest.raises(UnetError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message, message
    assert match in message, message
    return message


def rewrite_config(path: Path, edit) -> None:
    """Rewrite ``config.json`` inside a ``.keras`` archive with ``edit(config)``."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["config.json"] = json.dumps(edit(json.loads(members["config.json"]))).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


# ---------------------------------------------------------------- code in model files


def _marker_lambda_model(marker: Path) -> keras.Model:
    def touch_and_pass(x, marker=str(marker)):
        with open(marker, "a") as f:
            f.write("ran\n")
        return x

    inputs = keras.Input((16, 16, 1))
    outputs = keras.layers.Conv2D(1, 1)(keras.layers.Lambda(touch_and_pass)(inputs))
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("kind", ["lambda", "function"])
def test_lambda_layer_is_refused_and_runs_nothing(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "marker"
    if kind == "function":  # a named function (serialised by module and name)
        model = _marker_lambda_model(marker)
    else:  # a Python lambda, serialised as bytecode (the marker path a constant in it)
        touch = eval(
            f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]"
        )
        inputs = keras.Input((16, 16, 1))
        model = keras.Model(inputs, keras.layers.Lambda(touch)(inputs))
    path = tmp_path / "evil.keras"
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model above ran it once
    refused(load_model, path, match="refused")
    assert not marker.exists()
    # The test can fail: loading without safe mode does run the file's code.
    if kind == "lambda":
        keras.saving.load_model(path, compile=False, safe_mode=False)
        assert marker.exists()


def test_unknown_custom_object_is_refused_before_import(tmp_path: Path) -> None:
    """A custom layer from another package: refused without importing its module."""
    path = tmp_path / "custom.keras"
    bright_model(16).save(path)

    def edit(config):
        layer = config["config"]["layers"][1]
        layer["module"], layer["registered_name"] = "evil_package.layers", "evil>Backdoor"
        return config

    rewrite_config(path, edit)
    message = refused(load_model, path, match="custom object")
    assert "evil_package.layers" in message
    assert "evil_package" not in sys.modules


def test_unknown_keras_class_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "unknown.keras"
    bright_model(16).save(path)

    def edit(config):
        config["config"]["layers"][1]["class_name"] = "NoSuchLayer"
        return config

    rewrite_config(path, edit)
    refused(load_model, path, match="NoSuchLayer")


# ---------------------------------------------------------------- damaged files


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("empty", "truncated"),
        ("half", "truncated"),
        ("text", "not a Keras model file"),
        ("flip", "damaged"),
        ("no_config", "not a Keras 3 model file"),
        ("folder", "a folder"),
        ("newer_keras", "upgrade Keras"),
        ("config_not_json", "damaged"),
    ],
)
def test_damaged_model_file(tmp_path: Path, damage: str, match: str) -> None:
    path = tmp_path / "model.keras"
    bright_model(16).save(path)
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "half":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "text":
        path.write_text("this is not a model\n")
    elif damage == "flip":
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("model.weights.h5")
        start = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
        flipped = bytes(b ^ 0xFF for b in data[start : start + 16])
        path.write_bytes(data[:start] + flipped + data[start + 16 :])
    elif damage == "folder":
        path.unlink()
        path.mkdir()
    else:
        with zipfile.ZipFile(path) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        if damage == "no_config":
            del members["config.json"]
        elif damage == "newer_keras":
            members["metadata.json"] = json.dumps({"keras_version": "9.0.0"}).encode()
        else:
            members["config.json"] = b"{not json"
        with zipfile.ZipFile(path, "w") as archive:
            for name, content in members.items():
                archive.writestr(name, content)
    refused(load_model, path, match=match)


# ---------------------------------------------------------------- run folders


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", bright_model(16))


def test_good_run_loads(run: Path) -> None:
    r = load_run(run)
    assert r.model().input_shape == (None, 16, 16, 1)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "config.json: missing"),
        (b"\xff\xfe\x00garbage", "unreadable"),
        (b'{"image_size": [16, 16]', "unreadable"),
        (b"[1, 2, 3]", "expected a JSON object"),
        (b'{"image_size": [16, 16], "config_version": 7}', "newer than this unet-lowered"),
        (b'{"channels": 1}', "image_size must be"),
        (b'{"image_size": [16, 16], "loss": 5}', "re-run `unet train`"),
        (b'{"image_size": [16, 16], "threshold": "high"}', "re-run `unet train`"),
        (b'{"image_size": [0, 16]}', "image_size must be"),
        (b'{"image_size": [16, 16], "num_classes": 2, "label_values": ["a", 3]}', "label_values"),
        (b'{"image_size": [16, 16], "data": 5}', "data must be text"),
    ],
)
def test_bad_config_json(run: Path, content: bytes | None, match: str) -> None:
    config = run / "config.json"
    if content is None:
        config.unlink()
    else:
        config.write_bytes(content)
    refused(load_run, run, match=match)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"channels": 3}, "takes 1 channel(s), config.json says 3"),
        ({"num_classes": 3, "label_values": [0, 1, 2]}, "gives 1 class map(s), config.json says 3"),
        ({"image_size": [32, 32]}, "takes 16x16 input, config.json says 32x32"),
    ],
)
def test_config_disagreeing_with_the_model(tmp_path: Path, override: dict, match: str) -> None:
    run = make_run(tmp_path / "run", bright_model(16), **override)
    r = load_run(run)
    message = refused(r.model, match=match)
    assert "mixes files of two runs" in message


def test_model_missing_or_a_folder(run: Path) -> None:
    (run / "model.keras").unlink()
    refused(load_run, run, match="unet train --resume")
    (run / "model.keras").mkdir()
    refused(load_run, run, match="a folder")


def test_a_run_stopped_before_its_post_processing_choice(run: Path) -> None:
    """state.json (unet train's) without metrics.json: stopped after the epochs but before
    the choice was written; refused (plot, for curves in progress, takes it)."""
    (run / "state.json").write_text('{"epoch": 3}')
    message = refused(load_run, run, match="training stopped before it finished")
    assert message.endswith(f"finish it with `unet train --resume --out {run}`")
    assert load_run(run, unfinished=True).dir == run
    (run / "metrics.json").write_text("{}")
    assert load_run(run).dir == run


def test_a_folds_run_stopped_before_the_join(run: Path) -> None:
    (run / "config.json").unlink()
    (run / "ensemble.json").write_text("{}")
    refused(load_run, run, match="the --folds run stopped before its folds were joined")


def test_a_file_instead_of_a_run_folder(run: Path) -> None:
    refused(load_run, run / "config.json", match="not a run folder")


def test_damaged_split_json(run: Path) -> None:
    (run / "split.json").write_text('{"train": 5}')
    refused(load_run(run).split, match="split.json")


# ---------------------------------------------------------------- other backends, precision


def _predict(run: Path) -> np.ndarray:
    from unet_lowered.inference.predictor import predict_image

    r = load_run(run)
    image, mask = disk_image(40, 36)
    probs = predict_image(r.model(), image, r.config)
    assert probs.shape == (40, 36, 1) and np.isfinite(probs).all()
    return (probs[:, :, 0] >= 0.5) == mask


def test_mixed_bfloat16_run_predicts_in_float32(tmp_path: Path) -> None:
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = bright_model(16)
    finally:
        keras.config.set_dtype_policy("float32")
    run = make_run(tmp_path / "run", model, precision_resolved="mixed_bfloat16")
    assert _predict(run).mean() > 0.95


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_run_saved_under_another_backend_loads(tmp_path: Path, backend: str) -> None:
    pytest.importorskip(backend)
    code = (
        "import sys; sys.path.insert(0, sys.argv[2]);"
        "from pathlib import Path; from run_fixtures import bright_model, make_run;"
        f"make_run(Path(sys.argv[1]), bright_model(16), backend={backend!r})"
    )
    tests = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run"), tests],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _predict(tmp_path / "run").mean() > 0.95


def test_load_run_errors_say_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(UnetError, match="no such run folder"):
        runs.load_run(tmp_path / "none")
    with pytest.raises(UnetError, match=r"config\.json: missing"):
        runs.load_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"image_size": [32, 48], "channels": 3}))
    with pytest.raises(UnetError, match=r"model\.keras: missing; .*--resume"):
        runs.load_run(tmp_path)
    (tmp_path / "model.keras").write_bytes(b"not a model")
    run = runs.load_run(tmp_path / "model.keras")  # the .keras file names its folder
    assert run.config.image_size == (32, 48)
    assert (run.config.channels, run.config.num_classes, run.config.threshold) == (3, 1, 0.5)
    assert run.split() == {"train": [], "val": []}
    with pytest.raises(UnetError, match="not a Keras model file, or truncated"):
        run.model()


# ---------------------------------------------------------------- hostile run folders


@pytest.mark.parametrize(
    ("config", "match"),
    [
        # depth 100 hung `unet predict` (a search for the nearest valid size up to 2**31)
        ({"depth": 100}, "depth must be at most 8, got 100"),
        ({"depth": 0}, "depth must be at least 1"),
        # a model of input (None, None) and image_size 60000: a 14.4 GB resize per image
        ({"image_size": [60000, 60000]}, "each 1 to 8192 px, got [60000, 60000]"),
        ({"image_size": [16, 8193]}, "each 1 to 8192 px"),
        ({"postprocess": {"min_area": "abc"}}, "postprocess.min_area must be a whole number"),
        ({"postprocess": {"min_area": -5}}, "postprocess.min_area must be a whole number"),
        ({"postprocess": {"min_area": 2.5}}, "postprocess.min_area must be a whole number"),
        ({"postprocess": {"keep_largest": -3}}, "postprocess.keep_largest must be"),
        ({"postprocess": {"keep_largest": "x"}}, "postprocess.keep_largest must be"),
        ({"postprocess": {"keep_largest": True}}, "postprocess.keep_largest must be"),
        ({"postprocess": {"tta": "../../etc"}}, "postprocess.tta must be one of lr, ud"),
        ({"postprocess": {"threshold": float("nan")}}, "postprocess.threshold must be a number"),
        ({"postprocess": {"threshold": 1.0}}, "above 0 and below 1, got 1.0"),
        ({"postprocess": {"threshold": "0.5"}}, "postprocess.threshold must be"),
        ({"postprocess": {"watershed": 5}}, "postprocess.watershed must be a number from 0 to 1"),
        ({"postprocess": {"fill_holes": "yes"}}, "postprocess.fill_holes must be true or false"),
        ({"postprocess": [1]}, "postprocess must be an object or null"),
        ({"mask_stats": {"fraction": "x"}}, "mask_stats.fraction must be [low, high]"),
        ({"mask_stats": {"objects": 2}}, "mask_stats.fraction must be"),  # from_json needs it
        ({"mask_stats": {"fraction": [1e308, -1]}}, "mask_stats.fraction must be"),
        ({"mask_stats": {"fraction": [0.1, 0.2], "objects": "many"}}, "mask_stats.objects must"),
        ({"mask_stats": {"fraction": [0.1, 0.2], "shape": [[1]]}}, "mask_stats.shape must be"),
        ({"mask_stats": {"fraction": [0.1, 0.2], "contrast": "y"}}, "mask_stats.contrast must"),
        ({"mask_stats": {"fraction": [0.1, 0.2], "centre": [0.5]}}, "mask_stats.centre must"),
        ({"mask_stats": {"fraction": [0.1, 0.2], "val_unsure": -1}}, "mask_stats.val_unsure"),
        (
            {"mask_stats": {"fraction": [0.1, 0.2], "classes": {"1": {"fraction": "x"}}}},
            "mask_stats.classes must map class numbers",  # a one-class run has no classes
        ),
    ],
)
def test_hostile_config_json_is_refused_in_one_line(
    tmp_path: Path, config: dict, match: str
) -> None:
    run = make_run(tmp_path / "run", bright_model(16), **config)
    message = refused(load_run, run, match=match)
    assert message.startswith(f"{run / 'config.json'}: ")
    assert "re-run `unet train`" in message


def test_hostile_class_stats_are_refused(tmp_path: Path) -> None:
    stats = {"fraction": [0.1, 0.2]}
    config = {"num_classes": 3, "label_values": [0, 1, 2], "mask_stats": stats}
    from unet_lowered.training.config import RunConfig

    good = {"image_size": [16, 16], **config}
    classes = {"1": {**stats, "objects": 1}, "2": {**stats, "objects": None}}
    assert RunConfig.from_json({**good, "mask_stats": {**stats, "classes": classes}})
    for bad, match in (
        ({"1": {"fraction": [0.1, 0.2], "objects": -1}}, "mask_stats.classes.1.objects must"),
        ({"3": stats}, "class numbers 1 to 2"),
        ({"1": "x"}, "mask_stats.classes.1 must be an object"),
    ):
        values = {**good, "mask_stats": {**stats, "classes": bad}}
        refused(RunConfig.from_json, values, match=match)


def test_the_blocks_a_run_writes_are_accepted() -> None:
    """What unet train writes (choose_postprocess, training_mask_stats) reads back."""
    from unet_lowered.evaluation.choose import Choice
    from unet_lowered.inference.quality import SHAPE_SIDE, MaskStats
    from unet_lowered.training.config import RunConfig

    chosen = Choice(
        tta="flips", threshold=0.4, watershed=0.9, keep_largest=2, fill_holes=True, min_area=31
    )
    stats = MaskStats(
        objects=2,
        fraction=(0.1, 0.25),
        min_ratio=0.6,
        small_object=0.07,
        contrast=(-0.3, 0.5),
        shape=tuple(tuple(0.5 for _ in range(SHAPE_SIDE)) for _ in range(SHAPE_SIDE)),
        centre=(0.2, 0.4),
        larger_left=0.9,
        val_unsure=2.2,
    )
    for block in (chosen.to_json(), Choice().to_json()):
        values = {"image_size": [16, 16], "postprocess": block, "mask_stats": stats.to_json()}
        assert RunConfig.from_json(values).postprocess == block


def _padded_json_member(path: Path, member: str, size: int) -> None:
    """Rewrite ``member`` of the archive at ``path`` as its JSON followed by spaces up to
    ``size`` bytes (valid JSON; a few KB compressed)."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members[member] = members[member] + b" " * (size - len(members[member]))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_an_oversized_config_json_inside_a_model_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch
) -> None:
    """A 22 MB model.keras whose config.json held a 600 MB array took 6.5 GB to parse."""
    path = tmp_path / "model.keras"
    bright_model(16).save(path)
    _padded_json_member(path, "config.json", 17_000_000)
    assert path.stat().st_size < 1_000_000
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("read before the check"))
    message = refused(load_model, path, match="its config.json unpacks to 17 MB")
    assert "more than the 16 MB" in message


def test_an_oversized_checkpoint_state_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "last.keras"
    bright_model(16).save(path)
    runs.add_checkpoint_state(path, {"epoch": 1, "best": 0.5, "best_epoch": 1})
    assert runs.checkpoint_state(path)["epoch"] == 1
    _padded_json_member(path, runs.CHECKPOINT_STATE, 17_000_000)
    refused(runs.checkpoint_state, path, match=f"its {runs.CHECKPOINT_STATE} unpacks to 17 MB")


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ([1, 2], "holds a list, not an object"),
        ({"epoch": "x", "best": 0.5}, "epoch is 'x'"),
        ({"epoch": -5, "best": 0.5}, "epoch is -5"),
        ({"epoch": 10**9, "best": 0.5}, "not a whole number from 0 to 100000"),
        ({"epoch": 2, "best": "abc"}, "best is 'abc'"),
        ({"epoch": 2}, "best is None"),
        ({"epoch": 2, "best": float("inf")}, "best is inf"),
        ({"epoch": 2, "best": 0.5, "best_epoch": 3}, "not an epoch 1 to 2"),
        ({"epoch": 2, "best": 0.5, "time_used_s": "x"}, "time_used_s is 'x'"),
        ({"epoch": 2, "best": 0.5, "finished": 1}, "finished is 1"),
        ({"epoch": 2, "best": 0.5, "plateau": {"wait": "x"}}, "plateau is"),
    ],
)
def test_a_damaged_training_state_is_refused(state, match: str) -> None:
    message = refused(runs.check_state, state, "RUN/state.json", match=match)
    assert message.startswith("RUN/state.json: ") and "cannot be resumed" in message


def test_the_states_training_writes_are_accepted() -> None:
    for state in (
        {"epoch": 0, "best": -1.0, "best_epoch": None},
        {"epoch": 2, "best": 0.57, "best_epoch": 2, "time_used_s": 14.75, "finished": "all epochs"},
        {"epoch": 3, "best": 1, "best_epoch": 1, "plateau": {"best": None, "wait": 0}},
    ):
        assert runs.check_state(state, "state.json") == state
