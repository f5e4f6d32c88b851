"""Export to ONNX and SavedModel: parity with Keras, run folders, atomic writes, errors.

Export goes through TensorFlow, so these tests are not marked ``backend``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json

import keras
import numpy as np
import pytest

from unet_lowered.cli import main
from unet_lowered.errors import UnetError
from unet_lowered.inference import export
from unet_lowered.inference.export import export_model
from unet_lowered.model import unet

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="export needs the TensorFlow backend"
)


def keras_predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


def onnx_predict(path, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as `unet train` writes it: fixed-size model.keras and config.json."""
    run = tmp_path / "run"
    run.mkdir()
    unet((32, 32, 1), base_filters=4, depth=2).save(run / "model.keras")
    config = {
        "image_size": [32, 32],
        "channels": 1,
        "num_classes": 1,
        "padding": "same",
        "depth": 2,
    }
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.mark.parametrize(
    ("input_shape", "kwargs", "x_shape"),
    [
        # free input size: the ONNX graph takes any valid size, here not the checked one
        ((None, None, 1), {"depth": 2}, (2, 48, 64, 1)),
        (
            (60, 60, 3),
            {
                "depth": 2,
                "padding": "valid",
                "upsampling": "bilinear",
                "num_classes": 3,
                "batch_norm": True,
            },
            (3, 60, 60, 3),
        ),
    ],
)
def test_onnx_matches_keras(input_shape, kwargs, x_shape, tmp_path, rng):
    model = unet(input_shape, base_filters=4, **kwargs)
    model.save(tmp_path / "m.keras")
    result = export_model(tmp_path / "m.keras", "onnx", tmp_path / "m.onnx")
    assert result["path"] == tmp_path / "m.onnx"
    assert result["max_abs_diff"] < 1e-4
    x = rng.standard_normal(x_shape).astype(np.float32)
    np.testing.assert_allclose(
        onnx_predict(tmp_path / "m.onnx", x), keras_predict(model, x), atol=1e-4
    )


def test_onnx_of_a_mixed_bfloat16_model_is_float32(tmp_path, rng):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        unet((None, None, 1), base_filters=4, depth=2).save(tmp_path / "m.keras")
    finally:
        keras.config.set_dtype_policy("float32")
    export_model(tmp_path / "m.keras", "onnx", tmp_path / "m.onnx")
    # the same weights in a float32 network
    reference = unet((None, None, 1), base_filters=4, depth=2)
    reference.set_weights(keras.saving.load_model(tmp_path / "m.keras").get_weights())
    x = rng.standard_normal((1, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(
        onnx_predict(tmp_path / "m.onnx", x), keras_predict(reference, x), atol=1e-4
    )


def test_saved_model_matches_keras(tmp_path, rng):
    import tensorflow as tf

    model = unet((None, None, 1), base_filters=4, depth=2, num_classes=2)
    model.save(tmp_path / "m.keras")
    result = export_model(tmp_path / "m.keras", "saved_model", tmp_path / "served")
    assert result["max_abs_diff"] == pytest.approx(0, abs=1e-5)
    loaded = tf.saved_model.load(str(tmp_path / "served"))
    x = rng.standard_normal((2, 16, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded.serve(x).numpy(), keras_predict(model, x), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "served"]


def test_run_folder_exports_beside_its_model_and_leaves_no_temporaries(run_dir):
    result = export_model(run_dir, "onnx")
    assert result["path"] == run_dir / "model.onnx"
    assert result["input_shape"] == (None, 32, 32, 1)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "model.keras", "model.onnx"]


def test_existing_output_needs_overwrite(run_dir):
    out = run_dir / "served"
    out.mkdir()
    with pytest.raises(UnetError, match="served already exists; pass --overwrite"):
        export_model(run_dir, "saved_model", out)
    export_model(run_dir, "saved_model", out, overwrite=True)
    assert (out / "saved_model.pb").is_file()


def test_failed_check_writes_nothing(run_dir, monkeypatch):
    monkeypatch.setattr(
        export, "_run_onnx", lambda path, x: np.ones((2, 32, 32, 1), np.float32) * 9
    )
    with pytest.raises(UnetError, match=r"export differs from Keras by .* not written"):
        export_model(run_dir, "onnx")
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "model.keras"]


def test_unknown_format_lists_the_valid_ones(run_dir):
    with pytest.raises(UnetError, match="unknown --format 'tflite'; use one of: onnx, saved_model"):
        export_model(run_dir, "tflite")


def test_missing_onnx_dependency_says_what_to_install(run_dir, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tf2onnx" else find_spec(name, *a),
    )
    with pytest.raises(UnetError) as error:
        export_model(run_dir, "onnx")
    assert str(error.value) == "ONNX export needs tf2onnx: pip install 'unet-lowered[onnx]'"


def test_not_a_model_file(tmp_path):
    (tmp_path / "weights.h5").write_bytes(b"")
    with pytest.raises(UnetError, match=r"weights.h5: not a .keras file or run folder"):
        export_model(tmp_path / "weights.h5", "onnx")
    with pytest.raises(UnetError, match="no such model file"):
        export_model(tmp_path / "missing.keras", "onnx")


def test_bilinear_with_a_free_input_size_is_refused(tmp_path):
    unet((None, None, 1), base_filters=2, depth=1, upsampling="bilinear").save(tmp_path / "m.keras")
    with pytest.raises(
        UnetError, match="bilinear upsampling with a free input size cannot be exported"
    ):
        export_model(tmp_path / "m.keras", "onnx")


def test_cli_export(run_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run_dir), "--format", "onnx", "--out", str(run_dir / "x.onnx")])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"wrote {run_dir / 'x.onnx'} (onnx; ")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run_dir), "--format", "tflite"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: unknown --format 'tflite'")


def tree_hashes(folder) -> dict[str, str]:
    """Every file and folder under ``folder``, relative, with the SHA-256 of each file."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "/"
        for p in sorted(folder.rglob("*"))
    }


def run_cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("format", ["saved_model", "onnx"])
def test_overwrite_refuses_the_run_folder_and_folders_above_it(run_dir, format, capsys):
    before = tree_hashes(run_dir.parent)
    code, err = run_cli(["export", run_dir, "-f", format, "-o", run_dir, "--overwrite"], capsys)
    assert code == 1
    assert err.startswith(f"error: {run_dir} is the run folder being exported, not a previous ")
    assert "refusing to overwrite it; choose another --out" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(UnetError, match="is a folder that contains the run folder"):
        export_model(run_dir, format, run_dir.parent, overwrite=True)
    assert tree_hashes(run_dir.parent) == before


@pytest.mark.parametrize("format", ["saved_model", "onnx"])
def test_overwrite_refuses_a_data_folder(run_dir, tmp_path, format):
    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
        (data / sub / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + sub.encode())
    before = tree_hashes(data)
    with pytest.raises(UnetError, match=r"data is a folder.*not a previous .* export; refusing"):
        export_model(run_dir, format, data, overwrite=True)
    assert tree_hashes(data) == before


@pytest.mark.parametrize(
    ("name", "format"),
    [("model.keras", "onnx"), ("model.keras", "saved_model"), ("config.json", "onnx")],
)
def test_overwrite_refuses_the_runs_own_files(run_dir, name, format, capsys):
    before = tree_hashes(run_dir)
    out = run_dir / name
    code, err = run_cli(["export", run_dir, "-f", format, "-o", out, "--overwrite"], capsys)
    assert code == 1
    assert err.startswith(f"error: {out} is the ")
    assert "not a previous" in err and "choose another --out" in err
    assert tree_hashes(run_dir) == before
    # the same for a .keras file given directly
    with pytest.raises(UnetError, match="refusing to overwrite it"):
        export_model(run_dir / "model.keras", format, out, overwrite=True)
    assert tree_hashes(run_dir) == before


def test_overwrite_refuses_a_file_that_only_looks_like_an_export(run_dir, tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_bytes((run_dir / "model.keras").read_bytes())  # a zip, not ONNX
    with pytest.raises(UnetError, match=r"fake.onnx is an .onnx file that is not an ONNX model"):
        export_model(run_dir, "onnx", fake, overwrite=True)
    (tmp_path / "m.txt").write_text("notes")
    with pytest.raises(UnetError, match=r"m.txt is a .txt file, not a previous ONNX export"):
        export_model(run_dir, "onnx", tmp_path / "m.txt", overwrite=True)
    with pytest.raises(UnetError, match=r"m.txt is a .txt file, not a previous SavedModel"):
        export_model(run_dir, "saved_model", tmp_path / "m.txt", overwrite=True)
    assert fake.read_bytes() == (run_dir / "model.keras").read_bytes()
    assert (tmp_path / "m.txt").read_text() == "notes"


def test_overwrite_replaces_a_previous_export(run_dir, tmp_path, capsys):
    onnx_out = run_dir / "model.onnx"  # a new path inside the run folder is allowed
    export_model(run_dir, "onnx", onnx_out)
    assert export._looks_like_onnx(onnx_out)
    code, _ = run_cli(["export", run_dir, "-o", onnx_out, "--overwrite"], capsys)
    assert code == 0
    served = tmp_path / "served"
    export_model(run_dir, "saved_model", served)
    code, _ = run_cli(["export", run_dir, "-f", "saved_model", "-o", served, "--overwrite"], capsys)
    assert code == 0
    assert (served / "saved_model.pb").is_file()
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "model.keras", "model.onnx"]


def test_a_run_export_describes_how_unet_predict_uses_it(run_dir, rng, capsys):
    """The export carries the run's preprocessing, activation, threshold and chosen
    post-processing (ONNX metadata_props, a JSON file in the SavedModel folder); following
    it on the exported network gives predict's probabilities."""
    import cv2

    from unet_lowered.inference.predictor import predict_image
    from unet_lowered.io.runs import load_run
    from unet_lowered.preprocess import model_input

    config = json.loads((run_dir / "config.json").read_text())
    config["postprocess"] = {"tta": None, "threshold": 0.4, "keep_largest": 1, "fill_holes": True}
    (run_dir / "config.json").write_text(json.dumps(config))
    result = export_model(run_dir, "onnx", run_dir / "m.onnx")
    onnx = pytest.importorskip("onnx")
    props = {p.key: p.value for p in onnx.load_model(str(run_dir / "m.onnx")).metadata_props}
    manifest = json.loads(props["unet_lowered"])
    assert manifest == json.loads(json.dumps(result["manifest"]))
    assert manifest["input"]["shape"] == [None, 32, 32, 1]
    assert manifest["input"]["preprocess"].startswith(
        "unet_lowered.preprocess.model_input(image, channels=1, size=(32, 32), clahe=False"
    )
    assert manifest["output"]["activation"] == "sigmoid"
    chosen = manifest["predict"]
    assert (chosen["mode"], chosen["threshold"], chosen["keep_largest"]) == ("resize", 0.4, 1)
    assert chosen["fill_holes"] is True and chosen["tta"] is None
    assert manifest["precision"]["max_abs_logit_diff_on_check_input"] is None  # float32 run
    # The recipe on the exported network gives unet predict's probabilities.
    image = rng.integers(0, 255, (50, 40), dtype=np.uint8)
    x = model_input(image, 1, (32, 32))[None]
    logits = onnx_predict(run_dir / "m.onnx", x)[0, :, :, 0]
    probs = cv2.resize(1 / (1 + np.exp(-logits)), (40, 50), interpolation=cv2.INTER_LINEAR)
    run = load_run(run_dir)
    expected = predict_image(run.model(), image, run.config)[..., 0]
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    export_model(run_dir, "saved_model", run_dir / "sm")
    assert json.loads((run_dir / "sm" / "unet_lowered.json").read_text()) == manifest


def test_a_mixed_precision_runs_export_says_how_far_float32_moves_it(tmp_path, capsys):
    """The float32 export is checked against a float32 copy of the run's model; how far
    that copy's logits are from the mixed_bfloat16 model predict runs is printed too."""
    run = tmp_path / "run"
    run.mkdir()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        unet((32, 32, 1), base_filters=4, depth=2).save(run / "model.keras")
    finally:
        keras.config.set_dtype_policy("float32")
    config = {"image_size": [32, 32], "channels": 1, "num_classes": 1, "padding": "same",
              "depth": 2, "precision_resolved": "mixed_bfloat16"}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run), "--format", "saved_model"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()  # notes on stderr (README), only the result on stdout
    assert captured.out.startswith("wrote ") and captured.out.count("\n") == 1
    out = captured.err
    manifest = json.loads((run / "model_saved_model" / "unet_lowered.json").read_text())
    diff = manifest["precision"]["max_abs_logit_diff_on_check_input"]
    assert manifest["precision"]["trained"] == "mixed_bfloat16" and 0 < diff < 1
    assert (
        f"the run computes in mixed_bfloat16; the export in float32: its logits differ from the run's by up to {diff:.2g}"
        in " ".join(out.split())
    )


def test_the_recipe_of_a_valid_run_trained_at_its_output_size_says_to_mirror_pad() -> None:
    """resize_to_output: resize to the output size (8x8 for 48 in at depth 2), then
    mirror-pad to the input; a run trained before resizes to the input."""
    from run_fixtures import run_config

    for flag, size, padded in ((True, "size=(8, 8)", True), (False, "size=(48, 48)", False)):
        config = run_config(
            {"image_size": [48, 48], "padding": "valid", "depth": 2, "resize_to_output": flag}
        )
        recipe = export.describe(config, (None, 48, 48, 1))["input"]["preprocess"]
        assert size in recipe
        assert ("mirror-padded (numpy 'reflect') to the network's 48x48 input" in recipe) is padded


@pytest.mark.parametrize(
    ("input_mode", "resize_to_output", "tiled"),
    [("crop", False, True), ("resize", False, True), ("resize", True, False)],
    ids=["crops", "old-resize-run", "resized-to-the-output"],
)
def test_the_manifest_of_a_valid_run_names_the_output_tiles_and_their_context(
    tmp_path, input_mode, resize_to_output, tiled
):
    """A valid network's tiles are its OUTPUT (20x20 of a 60x60 input at depth 2) with
    20 px of context: the manifest said "tiles of 60x60", which predict_tiled refuses
    for a valid network; an old valid run resized to its input tiles too (it said no
    tiles); a run resized to its output is one pass. Following it gives predict's
    probabilities."""
    from run_fixtures import make_run
    from unet_lowered.inference.predictor import predict_image
    from unet_lowered.inference.tiling import predict_tiled
    from unet_lowered.io.runs import load_run
    from unet_lowered.preprocess import model_input

    keras.utils.set_random_seed(0)
    model = unet((60, 60, 1), base_filters=2, depth=2, padding="valid")
    run = load_run(
        make_run(
            tmp_path / "run",
            model,
            input_mode=input_mode,
            padding="valid",
            resize_to_output=resize_to_output,
            postprocess={"tta": None},
        )
    )
    chosen = export.describe(run.config, model.input_shape)["predict"]
    if not tiled:
        assert chosen["tiles"] is None
        return
    assert chosen["tiles"].endswith(
        "predict_tiled(x, probabilities, tile=(20, 20), overlap=0.25, margin=(20, 20))"
    )
    assert "output tiles of 20x20, each with 20x20 px of context" in chosen["tiles"]
    image = np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8)
    size = None if input_mode == "crop" else (60, 60)
    x = model_input(image, 1, size)

    def probabilities(batch: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-np.asarray(model.predict_on_batch(batch))))

    probs = predict_tiled(x, probabilities, tile=(20, 20), overlap=0.25, margin=(20, 20))
    if size is not None:
        import cv2

        probs = cv2.resize(probs, (70, 50), interpolation=cv2.INTER_LINEAR)[..., None]
    expected = predict_image(run.model(), image, run.config)
    np.testing.assert_allclose(probs[..., 0], expected[..., 0], atol=1e-5)
