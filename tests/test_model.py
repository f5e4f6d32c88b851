"""The U-Net builder, its size helpers and its parameter/FLOP counts.

Tests marked ``backend`` run under TensorFlow, JAX and PyTorch (``make test``);
they use tiny networks so each backend takes seconds.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from unet_lowered.cli import main
from unet_lowered.errors import UnetError
from unet_lowered.io import runs
from unet_lowered.model import (
    UpConv2x2,
    count_flops,
    half_size,
    model_info,
    nearest_valid_sizes,
    output_size,
    unet,
    valid_input_sizes,
    widths_table,
)

TINY = {"base_filters": 2, "depth": 1}
# Depth 1, base 2, 1 channel in, 1 class, "same", counted by hand (kernel + bias):
#   enc1 3x3 1->2: 9*1*2+2 = 20, 3x3 2->2: 36+2 = 38; bottleneck 3x3 2->4: 72+4 = 76,
#   4->4: 144+4 = 148; up-conv 2x2 4->2: 16*2+2 = 34; dec1 3x3 (2+2)->2: 72+2 = 74,
#   2->2: 38; logits 1x1 2->1: 2+1 = 3.  Total 431.
TINY_PARAMS = 431
# Multiply-accumulates at 8x8 (bottleneck at 4x4): 64*9*1*2 + 64*9*2*2 + 16*9*2*4 + 16*9*4*4
#   + up-conv 16 input px * 2*2*4*2 + 64*9*4*2 + 64*9*2*2 + 64*2*1
#   = 1152 + 2304 + 1152 + 2304 + 512 + 4608 + 2304 + 128 = 14464 MACs.
TINY_FLOPS_8x8 = 2 * 14464


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.fixture
def mixed_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy("float32")


# ---------------------------------------------------------------- forward, fit, save/load


# Two cases also run under JAX and PyTorch (under JAX every new weight shape costs a
# compilation of the initialiser, about a second each); the rest only under TensorFlow.
FORWARD_CASES = [
    pytest.param({"depth": 2, "padding": "same"}, 1, (32, 48), (32, 48), marks=pytest.mark.backend),
    ({"depth": 2, "padding": "same"}, 3, (32, 32), (32, 32)),
    ({"depth": 3, "padding": "same", "num_classes": 3}, 1, (32, 32), (32, 32)),
    ({"depth": 2, "upsampling": "bilinear", "batch_norm": True}, 1, (16, 16), (16, 16)),
    # valid, depth 2: 60 -conv-> 56 -pool-> 28 -> 24 -> 12 -> 8 (bottleneck) -up-> 16 -> 12
    #   -up-> 24 -> 20
    ({"depth": 2, "padding": "valid"}, 1, (60, 60), (20, 20)),
    # valid, depth 3: 108 -> 104 -> 52 -> 48 -> 24 -> 20 -> 10 -> 6 -> 12 -> 8 -> 16 -> 12 -> 24 -> 20
    ({"depth": 3, "padding": "valid"}, 1, (108, 92), (20, 4)),
    pytest.param(
        {"depth": 2, "padding": "valid", "num_classes": 3},
        3,
        (60, 76),
        (20, 36),
        marks=pytest.mark.backend,
    ),
    (
        {"depth": 2, "padding": "valid", "upsampling": "bilinear", "num_classes": 3},
        1,
        (76, 60),
        (36, 20),
    ),
]


@pytest.mark.parametrize(("kwargs", "channels", "size", "out"), FORWARD_CASES)
def test_forward_shape(kwargs, channels, size, out, rng):
    classes = kwargs.get("num_classes", 1)
    model = unet((None, None, channels), base_filters=4, **kwargs)
    y = predict(model, rng.standard_normal((2, *size, channels)).astype("float32"))
    assert y.shape == (2, *out, classes)
    assert np.isfinite(y).all()
    assert output_size(size, kwargs["depth"], kwargs.get("padding", "same")) == out


@pytest.mark.backend
def test_fit_one_step_changes_weights(rng):
    model = unet((32, 32, 1), base_filters=4, depth=2, dropout=0.5, batch_norm=True)
    model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    before = [w.copy() for w in model.get_weights()]
    x = rng.standard_normal((4, 32, 32, 1)).astype("float32")
    y = (x > 0).astype("float32")
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


@pytest.mark.backend
@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": "same"},
        {
            "padding": "valid",
            "batch_norm": True,
            "dropout": 0.5,
            "upsampling": "bilinear",
            "num_classes": 3,
        },
    ],
)
def test_save_load_gives_identical_predictions(kwargs, tmp_path, rng):
    model = unet((None, None, 1), base_filters=4, depth=2, **kwargs)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    x = rng.standard_normal((2, 60, 60, 1)).astype("float32")
    np.testing.assert_array_equal(predict(loaded, x), predict(model, x))
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]


# ---------------------------------------------------------------- the up-convolution


@pytest.mark.backend
def test_up_convolution_places_each_tap_by_hand():
    # Two input pixels side by side, channels (1, 2) and (0, 0), and a kernel whose tap
    # (a, b) maps channel c to filter f with weight 100a + 10b + f + 0.1c (+ bias 1000f):
    # output pixel (a, b) of filter f is sum_c x_c * K[a, b, f, c] + bias_f; the second
    # input pixel's 2x2 block, to its right, is the bias alone.
    a, b, f, c = np.meshgrid(np.arange(2), np.arange(2), np.arange(3), np.arange(2), indexing="ij")
    kernel = (100 * a + 10 * b + f + 0.1 * c).astype("float32")  # (2, 2, 3, 2)
    bias = np.array([0, 1000, 2000], "float32")
    layer = UpConv2x2(3, 2, strides=2)
    layer.build((1, 1, 1, 2))
    layer.set_weights([kernel, bias])
    y = keras.ops.convert_to_numpy(layer(np.array([[[[1, 2], [0, 0]]]], "float32")))
    expected = 3 * (100 * a + 10 * b + f)[..., 0] + 0.1 * 2 + 1000 * f[..., 0]  # x = (1, 2)
    assert y.shape == (1, 2, 4, 3)
    np.testing.assert_allclose(y[0, :, :2], expected, rtol=1e-6)
    np.testing.assert_allclose(y[0, :, 2:], np.broadcast_to(bias, (2, 2, 3)))


@pytest.mark.backend
@pytest.mark.parametrize(
    ("kernel", "strides", "padding"),
    [(2, 2, "valid"), (3, 2, "same"), (2, 1, "valid")],  # the shuffle, then two fall-backs
)
def test_up_convolution_equals_conv2d_transpose(kernel, strides, padding, rng):
    x = rng.standard_normal((2, 5, 7, 3)).astype("float32")
    plain = keras.layers.Conv2DTranspose(4, kernel, strides=strides, padding=padding)
    own = UpConv2x2(4, kernel, strides=strides, padding=padding)
    plain.build(x.shape)
    own.build(x.shape)
    weights = [rng.standard_normal(w.shape).astype("float32") for w in plain.get_weights()]
    plain.set_weights(weights)
    own.set_weights(weights)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(own(x)), keras.ops.convert_to_numpy(plain(x)), atol=1e-5
    )


def test_default_network_uses_the_shuffled_up_convolution_and_loads_it(tmp_path, rng):
    model = unet((None, None, 1), base_filters=4, depth=2)
    ups = [layer for layer in model.layers if layer.name.endswith("_upconv")]
    assert [type(layer) for layer in ups] == [UpConv2x2, UpConv2x2]
    assert all(layer._shuffle for layer in ups)  # not the fall-back
    model.save(tmp_path / "model.keras")
    loaded = runs.load_model(tmp_path / "model.keras")  # safe mode, the layer registered
    assert type(loaded.get_layer("dec1_upconv")) is UpConv2x2
    x = rng.standard_normal((1, 24, 40, 1)).astype("float32")
    np.testing.assert_array_equal(predict(loaded, x), predict(model, x))


def test_a_model_saved_with_conv2d_transpose_still_loads_with_the_same_outputs(tmp_path, rng):
    # Runs trained before UpConv2x2 hold Keras' Conv2DTranspose; they load unchanged, and
    # the same weights in today's network give the same logits.
    config = unet((None, None, 1), base_filters=4, depth=2).get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "UpConv2x2":
            layer.update(class_name="Conv2DTranspose", module="keras.layers", registered_name=None)
    old = keras.Model.from_config(config)
    assert type(old.get_layer("dec1_upconv")) is keras.layers.Conv2DTranspose
    old.save(tmp_path / "old.keras")
    loaded = runs.load_model(tmp_path / "old.keras")
    assert type(loaded.get_layer("dec1_upconv")) is keras.layers.Conv2DTranspose
    new = unet((None, None, 1), base_filters=4, depth=2)
    new.set_weights(loaded.get_weights())
    x = rng.standard_normal((1, 32, 16, 1)).astype("float32")
    np.testing.assert_allclose(predict(new, x), predict(loaded, x), atol=1e-5)


def test_logits_stay_float32_under_mixed_precision(mixed_bfloat16, rng):
    model = unet((16, 16, 1), **TINY)
    assert model.get_layer("enc1_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("logits").compute_dtype == "float32"
    assert predict(model, rng.standard_normal((1, 16, 16, 1)).astype("float32")).dtype == np.float32


def test_tiny_network_counted_by_hand():
    assert unet((None, None, 1), **TINY).count_params() == TINY_PARAMS
    # bilinear + 2x2 conv has the same parameters as the 2x2 up-convolution
    assert unet((None, None, 1), upsampling="bilinear", **TINY).count_params() == TINY_PARAMS


# ---------------------------------------------------------------- structure


def test_default_network_has_1940817_parameters():
    model = unet()
    assert model.count_params() == 1_940_817
    assert model.input.shape == (None, None, None, 1)
    assert model.output.shape == (None, None, None, 1)
    assert unet(width=0.25).count_params() == 1_940_817


def test_paper_network_has_31030658_parameters_and_maps_572_to_388():
    model = unet((572, 572, 1), base_filters=64, padding="valid", num_classes=2)
    assert model.count_params() == 31_030_658
    assert model.output.shape == (None, 388, 388, 2)
    assert output_size(572, 4, "valid") == 388


def test_layer_names_are_deterministic_and_follow_the_figure():
    names = [layer.name for layer in unet(depth=2).layers]
    assert names == [layer.name for layer in unet(depth=2).layers]
    assert names[:6] == [
        "image",
        "enc1_conv1",
        "enc1_relu1",
        "enc1_conv2",
        "enc1_relu2",
        "enc1_pool",
    ]
    assert {"bottleneck_conv2", "dec2_upconv", "dec2_concat", "dec1_conv2"} <= set(names)
    assert names[-1] == "logits"
    assert "bottleneck_dropout" not in names  # off by default
    dropout = unet(depth=2, dropout=0.5).get_layer("bottleneck_dropout")
    assert dropout.rate == 0.5


def test_filters_double_per_level_and_weights_are_he_normal():
    model = unet(depth=4)
    filters = [model.get_layer(f"enc{i}_conv2").filters for i in (1, 2, 3, 4)]
    assert [*filters, model.get_layer("bottleneck_conv2").filters] == [16, 32, 64, 128, 256]
    assert model.get_layer("dec4_upconv").filters == 128  # the up-convolution halves the channels
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(isinstance(c.kernel_initializer, keras.initializers.HeNormal) for c in convs)
    assert model.get_layer("logits").activation is keras.activations.linear


def test_batch_norm_replaces_the_conv_biases():
    # each 3x3 conv (2+2+4+4+2+2 = 16 filters) loses its bias and gains 4 BN values per filter,
    # 2 of them trainable (gamma, beta)
    model = unet((None, None, 1), batch_norm=True, **TINY)
    assert model.count_params() == TINY_PARAMS - 16 + 4 * 16
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == TINY_PARAMS - 16 + 2 * 16


@pytest.mark.parametrize(("width", "base"), [(0.25, 16), (0.5, 32), (1.0, 64)])
def test_width_is_a_fraction_of_the_paper(width, base):
    model = unet(width=width, depth=1)
    assert model.get_layer("enc1_conv1").filters == base


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("size", "depth", "padding", "out"),
    [
        (256, 4, "same", 256),
        (16, 4, "same", 16),
        (40, 3, "same", 40),
        (572, 4, "valid", 388),
        (188, 4, "valid", 4),  # bottleneck 8 -> 4 -> 4 -> 4 -> 4 -> 4: the smallest at depth 4
        (60, 2, "valid", 20),
        ((572, 252), 4, "valid", (388, 68)),
    ],
)
def test_output_size(size, depth, padding, out):
    assert output_size(size, depth, padding) == out


@pytest.mark.parametrize(
    ("size", "depth", "padding", "nearest"),
    [
        (250, 4, "same", "240 or 256"),
        (8, 4, "same", "16"),
        (570, 4, "valid", "556 (output 372) or 572 (output 388)"),
        (574, 4, "valid", "572 (output 388) or 588 (output 404)"),
        # 100 is too small for any output, and an output the network gives: name both
        (100, 4, "valid", "188 (output 4), or 284 for an output of 100"),
    ],
)
def test_invalid_size_names_the_nearest_valid_sizes(size, depth, padding, nearest):
    # one size: "the nearest ... is" (after the sizes, ", or N for an output of M")
    valid = "sizes are" if " or " in nearest.split(",")[0] else "size is"
    nearest = re.escape(nearest)
    with pytest.raises(UnetError, match=f"input size {size} .* nearest valid {valid} {nearest}:"):
        output_size(size, depth, padding)
    with pytest.raises(UnetError, match=f"nearest valid {valid} {nearest}:"):
        unet((size, 256 if padding == "same" else 572, 1), depth=depth, padding=padding)


def test_a_valid_size_refused_names_why_and_the_input_for_that_output() -> None:
    """--image-size 244 with valid padding: 244 is an output the network gives (of 428),
    and the sizes around it would give outputs of 52 and 68; 100 is too small for any."""
    with pytest.raises(UnetError) as refused:
        output_size(244, 4, "valid", name="--image-size")
    assert str(refused.value) == (
        "--image-size 244 does not fit a depth-4 U-Net with 'valid' padding (it needs one "
        "whose every pooling input is even); use 236 (output 52) or 252 (output 68), or 428 "
        "for an output of 244"
    )
    with pytest.raises(UnetError, match=r"it needs one large enough for a non-empty output"):
        output_size(100, 4, "valid")
    with pytest.raises(UnetError) as refused:
        output_size(250, 4, "valid")  # not an output the network gives either
    assert "for an output" not in str(refused.value)


def _searched_nearest(size: int, depth: int, padding: str) -> list[int]:
    """The nearest valid sizes found by walking the sizes one by one (what
    nearest_valid_sizes did before it computed them; bounded here)."""
    from unet_lowered.model import _output_size_or_none

    if _output_size_or_none(size, depth, padding):
        return [size]
    below = next(
        (s for s in range(size - 1, 0, -1) if _output_size_or_none(s, depth, padding)), None
    )
    above = next(
        s for s in range(max(size, 1) + 1, 10**5) if _output_size_or_none(s, depth, padding)
    )
    return [s for s in (below, above) if s is not None]


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6, 7, 8])
def test_nearest_valid_sizes_are_those_a_search_finds(depth: int, padding: str) -> None:
    sizes = [*range(-2, 700), *range(700, 6000, 37), 4092, 4096, 8188, 8192, 8193]
    for size in sizes:
        assert nearest_valid_sizes(size, depth, padding) == _searched_nearest(size, depth, padding)


def test_nearest_valid_sizes_of_a_deep_network_are_computed_not_searched() -> None:
    """A config.json with depth 100 hung `unet predict` in a search up to 2**31."""
    assert nearest_valid_sizes(100, 40, "same") == [2**40]
    assert nearest_valid_sizes(100, 100, "valid") == [2**100 * 12 - 4]  # bottleneck input 8
    assert nearest_valid_sizes(2**41 + 1, 40, "same") == [2**41, 2**41 + 2**40]
    with pytest.raises(UnetError, match="nearest valid size is 1099511627776:"):
        output_size(100, 40)


def test_a_network_deeper_than_max_depth_is_refused() -> None:
    from unet_lowered.training.config import MAX_DEPTH

    with pytest.raises(UnetError, match=f"depth .* must be from 1 to {MAX_DEPTH} .*got 9"):
        unet((512, 512, 1), depth=MAX_DEPTH + 1)
    assert MAX_DEPTH == 8
    unet((256, 256, 1), base_filters=1, depth=MAX_DEPTH)  # the deepest builds


@pytest.mark.parametrize(
    ("given", "canonical", "size", "out"),
    [
        ({"padding": "SAME"}, {"padding": "same"}, 16, 16),
        # valid, depth 2: 60 -> 20 (see FORWARD_CASES); unnormalised, the skips went uncropped
        ({"padding": " Valid "}, {"padding": "valid"}, 60, 20),
        ({"upsampling": "TRANSPOSE"}, {"upsampling": "transpose"}, 16, 16),  # was bilinear
    ],
)
def test_option_spellings_build_the_canonical_network(given, canonical, size, out):
    """Case and spaces are ignored, as in every option: the same layers, the same config."""
    tiny = {"base_filters": 2, "depth": 2}
    model = unet((size, size, 1), **tiny, **given)
    assert model.get_config() == unet((size, size, 1), **tiny, **canonical).get_config()
    assert model.output_shape == (None, out, out, 1)


def test_size_helpers_read_the_canonical_padding():
    assert output_size(572, 4, "VALID") == 388
    assert output_size((64, 48), 4, " Same ") == (64, 48)
    assert valid_input_sizes(4, "Valid", up_to=600) == valid_input_sizes(4, "valid", up_to=600)
    assert nearest_valid_sizes(100, 4, "SAME") == [96, 112]
    assert half_size(572, 4, "Valid") == half_size(572, 4, "valid") == 364  # output 388 -> 180
    with pytest.raises(UnetError, match="nearest valid sizes are 240 or 256: "):
        output_size(250, 4, "SAME")


def test_valid_input_sizes():
    assert valid_input_sizes(2, "same", up_to=20) == [4, 8, 12, 16, 20]
    valid = valid_input_sizes(4, "valid", up_to=600)
    # 16 * bottleneck + 60 for bottleneck >= 8 (so that the output is not empty)
    assert valid == list(range(188, 601, 16))
    assert 572 in valid
    assert nearest_valid_sizes(572, 4, "valid") == [572]
    assert nearest_valid_sizes(3, 2, "same") == [4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"padding": "full"}, "unknown --padding 'full'; use one of: same, valid"),
        (
            {"upsampling": "nearest"},
            "unknown --upsampling 'nearest'; use one of: transpose, bilinear",
        ),
        ({"num_classes": 0}, "num_classes must be an integer >= 1"),
        ({"num_classes": 2.5}, r"num_classes must be an integer >= 1 .*, got 2\.5"),
        ({"num_classes": True}, "num_classes must be an integer >= 1 .*, got True"),
        ({"depth": 0}, "depth .* must be from 1 to 8 .*got 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"base_filters": 32, "width": 0.5}, "give base_filters .* or width .*, not both"),
        ({"width": 0.001}, "width 0.001 gives no filters"),
        ({"input_shape": (64, 64)}, r"input_shape must be \(H, W, C\)"),
    ],
)
def test_bad_options_raise_unet_error(kwargs, message):
    with pytest.raises(UnetError, match=message):
        unet(**kwargs)


def test_a_loaded_model_is_typed_and_the_package_ships_its_marker():
    """``Run.model()`` and ``load_model`` say they return a ``keras.Model`` (without
    importing Keras with the module), and ``py.typed`` is installed with the package."""
    import typing
    from pathlib import Path

    import unet_lowered

    for fn in (runs.Run.model, runs.load_model):
        assert fn.__annotations__["return"] == "keras.Model"
        assert typing.get_type_hints(fn, {"keras": keras, **vars(runs)})["return"] is keras.Model
    assert (Path(unet_lowered.__file__).parent / "py.typed").is_file()
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert '"unet_lowered" = ["py.typed"]' in pyproject  # [tool.setuptools.package-data]


# ---------------------------------------------------------------- parameters and FLOPs


def test_model_info_counts_flops_by_hand():
    info = model_info(unet((None, None, 1), **TINY), (8, 8))
    assert info["params"] == TINY_PARAMS
    assert info["flops"] == TINY_FLOPS_8x8
    assert info["output_shape"] == (8, 8, 1)


def test_flops_scale_with_area_and_width():
    flops = count_flops(unet(), (64, 64))
    assert count_flops(unet(), (128, 64)) == 2 * flops
    # the paper's net (valid, 2 classes) at 572x572
    paper = unet((None, None, 1), width=1.0, padding="valid", num_classes=2)
    info = model_info(paper, (572, 572))
    assert info["output_shape"] == (388, 388, 2)
    assert info["params"] == 31_030_658


def test_widths_table():
    table = widths_table([0.25], size=64)
    lines = table.splitlines()
    assert lines[0].startswith("| width | filters | parameters | GFLOP per 64x64 image")
    assert lines[2].startswith("| 0.25 | 16-32-64-128-256 | 1,940,817 | ")
    gflop = float(lines[2].split("|")[4])
    assert gflop == pytest.approx(count_flops(unet(), (64, 64)) / 1e9, abs=0.005)


def test_cli_model_info(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["model-info", "--width", "0.25", "--size", "64"])
    assert exit_info.value.code == 0
    assert "| 0.25 | 16-32-64-128-256 | 1,940,817 |" in capsys.readouterr().out


def test_cli_model_info_rejects_a_bad_size(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["model-info", "--size", "250"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == (  # the flag it came from, and the sizes to use instead
        "error: --size 250 does not fit a depth-4 U-Net with 'same' padding (it needs a "
        "multiple of 16); use 240 or 256"
    )
