"""Export to ONNX and SavedModel: parity with Keras, run folders, atomic writes, errors.

Export goes through TensorFlow, so these tests are not marked ``backend``.
"""

from __future__ import annotations

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
