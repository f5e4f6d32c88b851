"""Export a trained model to ONNX or a TensorFlow SavedModel for serving without Keras.

The route is Keras 3's own ``model.export``: with the TensorFlow backend it traces the
model into a ``tf.function`` and, for ONNX, hands it to ``tf2onnx``. Two details make
it work for our models: an explicit input signature (a model loaded from a file has
never been called, and ``model.export`` refuses to guess its input then), and a
float32 copy of models trained under ``mixed_bfloat16`` (ONNX Runtime on CPU has no
bfloat16 convolutions). Outputs are written atomically; the exported artefact is run
on random input and compared with Keras before it is moved into place.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from unet_lowered import options as names
from unet_lowered.errors import UnetError
from unet_lowered.inference.journal import remove_stale_temps
from unet_lowered.io import atomic, runs
from unet_lowered.io.progress import status
from unet_lowered.model import valid_input_sizes

FORMATS = names.EXPORT_FORMATS
_FORMAT_NAMES = {"onnx": "ONNX", "saved_model": "a SavedModel"}
TOLERANCE = 1e-4
"""Largest allowed ``|exported - keras|``, relative to ``max(1, max |keras|)``."""

_INSTALL_ONNX = "pip install 'unet-lowered[onnx]'"


def export_model(
    model_path: str | os.PathLike,
    format: str = "onnx",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> dict[str, Any]:
    """Export a ``.keras`` model or a run folder's ``model.keras`` to ONNX or a SavedModel.

    The exported model takes ``image`` of shape ``(B, H, W, C)`` float32 (preprocessed
    as for :func:`unet_lowered.preprocess.model_input`, with the ``channels``, ``clahe``
    and ``invert_light`` of the run's ``config.json``) and returns logits
    ``(B, h, w, num_classes)``; ``B`` (and ``H``, ``W`` where the model allows any
    size) are dynamic. A SavedModel serves it as the ``serve`` endpoint. A line on
    stderr says what is exported where before the conversion's seconds.

    Args:
        model_path: A ``.keras`` file, or a run folder written by ``unet train``.
        format: ``"onnx"`` (a file) or ``"saved_model"`` (a folder).
        out: Where to write; default beside the model: ``model.onnx`` or
            ``model_saved_model/``.
        overwrite: Replace an existing ``out``, but only a previous export of the same
            kind: for ONNX a file named ``*.onnx`` that ``onnx`` parses as a model with a
            graph; for a SavedModel a folder holding ``saved_model.pb``, or an empty
            folder. Anything else is refused, with or without ``overwrite``, as is ``out``
            being the model file, the model's (run) folder, or a folder that contains it.
            A new path inside the run folder is fine.
        check: Run the export on random input and compare it with Keras (ONNX: only
            when ``onnxruntime`` is installed).

    Returns:
        ``{"path", "format", "input_shape", "output_shape", "max_abs_diff",
        "precision_diff", "manifest"}``; ``max_abs_diff`` is ``None`` when not checked;
        ``precision_diff`` (the float32 copy's logits against a mixed-precision model's on
        the check input) is ``None`` for a float32 model; ``manifest`` (:func:`describe`,
        written into the export) is ``None`` for a bare ``.keras`` file.

    Raises:
        UnetError: Unknown format, missing optional dependency, non-TensorFlow backend,
            unreadable model, ``out`` exists without ``overwrite``, ``out`` is not a
            previous export (see ``overwrite``), or the export differs from Keras.
    """
    format = names.choose(format, FORMATS, "format")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise UnetError(
            f"export needs the TensorFlow backend, not {keras.backend.backend()!r}: "
            "unset KERAS_BACKEND or set KERAS_BACKEND=tensorflow"
        )
    if format == "onnx":
        missing = [m for m in ("tf2onnx", "onnx") if importlib.util.find_spec(m) is None]
        if missing:
            raise UnetError(f"ONNX export needs {' and '.join(missing)}: {_INSTALL_ONNX}")

    model, model_file, image_size, config = _load(Path(model_path))
    out = Path(out) if out is not None else _default_out(model_file, format)
    _refuse_non_export(out, format, model_file)
    if out.exists() and not overwrite:
        raise UnetError(
            f"{out} already exists; pass --overwrite to replace it or choose another --out"
        )
    run_model = model
    model = _float32(model)
    _check_exportable(model, model_file)
    x = _sample_input(model, image_size)
    precision_diff = None
    if model is not run_model:  # a mixed-precision run: what float32 changes, on the same input
        ours = keras.ops.convert_to_numpy(model(x, training=False))
        precision_diff = float(np.max(np.abs(ours - _logits(run_model, x))))
    manifest = None if config is None else describe(config, model.input.shape, precision_diff)
    checked = check and (format != "onnx" or importlib.util.find_spec("onnxruntime") is not None)
    status(
        f"exporting {model_file} to {_FORMAT_NAMES[format]} {out}"
        + (", then checking it against Keras" if checked else "")
    )
    with atomic.exclusive(out, "exporting to"):  # two exports would race for the rename
        diff = _write(model, x, format, out, overwrite, check, manifest)
    return {
        "path": out,
        "format": format,
        "input_shape": tuple(model.input.shape),
        "output_shape": tuple(model.output.shape),
        "max_abs_diff": diff,
        "precision_diff": precision_diff,
        "manifest": manifest,
    }


MANIFEST_KEY = "unet_lowered"
"""The ONNX metadata key, and (with ``.json``) the SavedModel folder's file, of :func:`describe`."""


def describe(config: Any, input_shape: Any, precision_diff: float | None = None) -> dict[str, Any]:
    """What a program needs besides the exported network to reproduce ``unet predict``'s
    masks with its default options: the input's preprocessing, the output's activation,
    the threshold, the resize back and the post-processing the run chose on validation.
    Written into the export (:data:`MANIFEST_KEY`). The second looks at films read
    inverted or turned and the quality flag are left out: they need the package."""
    from unet_lowered.inference.predictor import (
        PredictOptions,
        applied_threshold,
        applied_watershed,
        for_run,
        postprocess_steps,
        tile_geometry,
        tta_group,
    )

    options = for_run(PredictOptions(), config)
    h, w = config.resize_size if options.mode == "resize" else config.image_size
    keep, fill, area = postprocess_steps(options, config)
    one_class = config.num_classes == 1
    resize = options.mode == "resize"
    size = f"resized to {w}x{h} (area when shrinking, bilinear when enlarging), "
    steps = (
        f"the image to {config.channels} channel(s), "
        + ("CLAHE, " if config.clahe else "")
        + "scaled to [0, 1] by its own min and max, "
        + ("inverted when its background is light, " if config.invert_light else "")
        + (size if resize else "kept at its size, ")
        + "then standardised to zero mean and unit variance over all its pixels"
        + (
            f", then mirror-padded (numpy 'reflect') to the network's "
            f"{config.image_size[1]}x{config.image_size[0]} input, whose output is the image"
            if resize and config.resize_to_output
            else ""
        )
    )
    call = (
        f"unet_lowered.preprocess.model_input(image, channels={config.channels}, "
        f"size={(h, w) if resize else None}, clahe={config.clahe}, "
        f"invert_light={config.invert_light})"
    )
    (oh, ow), (mh, mw) = tile_geometry(config)
    # unet predict tiles in tile mode, and a valid network's resized image unless it was
    # resized to the output (one tile then: the mirror padding above)
    tiled = not resize or ((mh, mw) != (0, 0) and not config.resize_to_output)
    context = (
        ""
        if (mh, mw) == (0, 0)
        else f", each with {mh}x{mw} px of context around it (the network's "
        f"{config.image_size[1]}x{config.image_size[0]} input; valid padding)"
    )
    tiles = (
        f"overlapping output tiles of {ow}x{oh}{context}, the image mirror-padded at its "
        f"borders, Gaussian blending, overlap {options.overlap:g}: "
        f"unet_lowered.inference.tiling.predict_tiled(x, probabilities, tile=({oh}, {ow}), "
        f"overlap={options.overlap:g}, margin=({mh}, {mw}))"
    )
    return {
        "unet_lowered_version": config.unet_lowered_version,
        "input": {
            "name": "image",
            "shape": [None if d is None else int(d) for d in input_shape],
            "dtype": "float32",
            "preprocess": f"{call}: {steps}",
        },
        "output": {
            "kind": "logits",
            "activation": "sigmoid" if one_class else "softmax",
            "num_classes": config.num_classes,
            "label_values": None if config.label_values is None else list(config.label_values),
        },
        "predict": {
            "mode": options.mode,
            "tiles": tiles if tiled else None,
            "tta": tta_group(options, config),
            "resize_back": "probabilities, bilinear, to the image's size" if resize else None,
            "mask": "probability >= threshold" if one_class else "most likely class (argmax)",
            "threshold": applied_threshold(options, config) if one_class else None,
            "watershed": applied_watershed(options, config),
            "keep_largest": keep,
            "fill_holes": fill,
            "min_area": area,
        },
        "precision": {
            "trained": config.precision,
            "exported": "float32",
            "max_abs_logit_diff_on_check_input": precision_diff,
        },
    }


def _logits(model: Any, x: np.ndarray) -> np.ndarray:
    import keras

    return keras.ops.convert_to_numpy(keras.ops.cast(model(x, training=False), "float32"))


def _write(
    model: Any,
    x: np.ndarray,
    format: str,
    out: Path,
    overwrite: bool,
    check: bool,
    manifest: dict[str, Any] | None,
) -> float | None:
    """Write the export of ``model`` (with ``manifest``, if any) to ``out``; the largest
    difference from Keras on ``x``, if checked."""
    import keras
    import tensorflow as tf

    expected = keras.ops.convert_to_numpy(model(x, training=False))
    signature = [tf.TensorSpec((None, *model.input.shape[1:]), tf.float32, name="image")]
    diff = None
    if format == "onnx":
        remove_stale_temps(out.parent, [out.name])  # what a killed export left behind
        with atomic.atomic_path(out, suffix=".onnx") as tmp, warnings.catch_warnings():
            # Keras' numpy-2 patch for tf2onnx probes `np.object`, which warns; harmless.
            warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)
            model.export(tmp, format="onnx", input_signature=signature, verbose=False)
            if manifest is not None:
                _add_onnx_metadata(tmp, manifest)
            if check and importlib.util.find_spec("onnxruntime") is not None:
                diff = _check(_run_onnx(tmp, x), expected, out)
    else:
        try:
            with atomic.atomic_dir(out, overwrite=overwrite) as tmp:
                model.export(tmp, format="tf_saved_model", input_signature=signature, verbose=False)
                if manifest is not None:
                    atomic.write_json(Path(tmp) / f"{MANIFEST_KEY}.json", manifest)
                if check:
                    loaded = tf.saved_model.load(
                        str(tmp)
                    )  # keep a reference: it owns the variables
                    diff = _check(np.asarray(loaded.serve(x)), expected, out)
        except tf.errors.OpError as e:  # TensorFlow's own file writes: a full or read-only disk
            reason = e.message.split(";")[-1].strip().splitlines()[0]
            raise UnetError(
                f"{out}: the SavedModel cannot be written ({reason}); choose a writable place "
                "with free space"
            ) from None
    return diff


def _add_onnx_metadata(path: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as JSON into the ONNX file's ``metadata_props``."""
    import json

    import onnx

    model = onnx.load_model(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = MANIFEST_KEY, json.dumps(manifest)
    onnx.save_model(model, str(path))


def _load(path: Path) -> tuple[Any, Path, tuple[int, int] | None, Any]:
    """The model, its file, the training image size and the run's config when ``path``
    is a run folder (None for a bare ``.keras`` file)."""
    if path.is_dir():
        run = runs.load_run(path)
        return run.model(), run.model_path, run.config.image_size, run.config
    if path.suffix != ".keras":
        raise UnetError(f"{path}: not a .keras file or run folder; pass RUN or RUN/model.keras")
    return runs.load_model(path), path, None, None


def _default_out(model_file: Path, format: str) -> Path:
    if format == "onnx":
        return model_file.with_suffix(".onnx")
    return model_file.with_name(f"{model_file.stem}_saved_model")


def _refuse_non_export(out: Path, format: str, model_file: Path) -> None:
    """Refuse an ``out`` that is not a previous export of ``format`` (see ``export_model``).

    ``out`` being replaced (with ``--overwrite``) must never cost the run or any other
    input: not the model file, not its folder or a folder above it, and not an existing
    file or folder that is not what this export writes.
    """
    kind = "ONNX" if format == "onnx" else "SavedModel"
    home = model_file.parent
    is_run = (home / runs.CONFIG_FILE).is_file()
    try:
        target, home_r, model_r = out.resolve(), home.resolve(), model_file.resolve()
    except (OSError, RuntimeError):  # a symlink loop: not an export either
        target, home_r, model_r = out.absolute(), home.absolute(), model_file.absolute()
    if target == model_r:
        raise _refusal(out, "the model being exported", kind)
    if target == home_r:
        what = "the run folder being exported" if is_run else "the folder of the model"
        raise _refusal(out, what, kind)
    if home_r.is_relative_to(target):
        what = f"a folder that contains the {'run folder' if is_run else 'model'} {home}"
        raise _refusal(out, what, kind)
    if not out.exists():
        return
    if out.is_dir():
        if format == "saved_model" and ((out / "saved_model.pb").is_file() or _is_empty(out)):
            return
        what = "a folder" + (" without saved_model.pb" if format == "saved_model" else "")
    elif format == "onnx" and out.suffix.lower() == ".onnx":
        if _looks_like_onnx(out):
            return
        what = "an .onnx file that is not an ONNX model"
    else:
        what = f"a {out.suffix} file" if out.suffix else "a file"
    if is_run and target.parent == home_r:
        what = f"the run's own {out.name}"
    raise _refusal(out, what, kind)


def _is_empty(folder: Path) -> bool:
    try:
        return not any(folder.iterdir())
    except OSError:  # unreadable: it may hold anything
        return False


def _refusal(out: Path, what: str, kind: str) -> UnetError:
    return UnetError(
        f"{out} is {what}, not a previous {kind} export; refusing to overwrite it; "
        "choose another --out"
    )


def _looks_like_onnx(path: Path) -> bool:
    """Whether ``path`` is an ONNX model: ``onnx`` parses it (without external data),
    with an IR version and a graph of at least one node. ``onnx`` is installed whenever
    the ONNX export runs."""
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # DecodeError and anything else a foreign file makes it raise
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def _float32(model: Any) -> Any:
    """The model itself if it computes in float32, else a float32 copy with the same weights."""
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model

    def to_float32(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy":
                return "float32"
            return {k: to_float32(v) for k, v in node.items()}
        if isinstance(node, list):
            return [to_float32(v) for v in node]
        return node

    copy = keras.Model.from_config(to_float32(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def _check_exportable(model: Any, model_file: Path) -> None:
    """Refuse models that Keras cannot trace with a free input size."""
    from keras import layers

    dynamic = None in model.input.shape[1:3]
    bilinear = any(
        isinstance(layer, layers.UpSampling2D) and layer.interpolation != "nearest"
        for layer in model.layers
    )
    if dynamic and bilinear:
        # keras.ops.image.resize checks `size > 0` in Python, which fails on the symbolic
        # sizes of a graph traced with unknown H, W (Keras 3.15).
        raise UnetError(
            f"{model_file}: bilinear upsampling with a free input size cannot be exported "
            "(Keras resizes only to known sizes in a traced graph); build the model with a "
            "fixed input_shape, as `unet train` does, or use upsampling='transpose'"
        )


def _sample_input(model: Any, image_size: tuple[int, int] | None) -> np.ndarray:
    """Two random images of a size the model takes: the training size, or the smallest >= 64."""
    from keras import layers

    h, w, channels = model.input.shape[1:]
    if h is None or w is None:
        if image_size is not None:
            h, w = image_size
        else:  # our U-Net: depth = number of poolings, padding of its convolutions
            depth = sum(isinstance(layer, layers.MaxPooling2D) for layer in model.layers)
            convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
            padding = convs[0].padding if convs else "same"
            sizes = valid_input_sizes(depth, padding, up_to=2048) or [64]
            h = w = next((s for s in sizes if s >= 64), sizes[-1])
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, h, w, channels)).astype(np.float32)


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _check(got: np.ndarray, expected: np.ndarray, out: Path) -> float:
    """Max absolute difference; raise if it exceeds :data:`TOLERANCE` (relative to the scale)."""
    if got.shape != expected.shape:
        raise UnetError(
            f"{out}: export gives shape {got.shape}, Keras {expected.shape}; not written"
        )
    diff = float(np.max(np.abs(got - expected)))
    scale = max(1.0, float(np.max(np.abs(expected))))
    if diff > TOLERANCE * scale:
        raise UnetError(
            f"{out}: export differs from Keras by {diff:.3g} (> {TOLERANCE * scale:.3g}); "
            "not written; export with --no-check to keep it anyway"
        )
    return diff
