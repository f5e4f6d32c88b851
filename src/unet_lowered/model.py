"""The U-Net of Ronneberger et al. (2015, arXiv:1505.04597, Fig. 1) on Keras 3.

:func:`unet` builds the network at any width; 25% of the paper (16-32-64-128-256
filters) is the default. The output is logits (no final activation), so it runs on
every Keras backend and is exported unchanged. :func:`output_size`,
:func:`valid_input_sizes` and :func:`nearest_valid_sizes` say which input sizes the
network takes; :func:`model_info` counts parameters and FLOPs from the layers.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, overload

import keras
from keras import layers

from unet_lowered import options
from unet_lowered.errors import UnetError
from unet_lowered.training.config import MAX_DEPTH

PAPER_BASE_FILTERS = 64
"""Filters of the first level in the paper (64-128-256-512-1024); ``width=1.0``."""

DEFAULT_BASE_FILTERS = 16
"""Our default: 25% of the paper's width, 16-32-64-128-256 filters."""


def unet(
    input_shape: Sequence[int | None] = (None, None, 1),
    *,
    num_classes: int = 1,
    base_filters: int | None = None,
    width: float | None = None,
    depth: int = 4,
    padding: str = "same",
    dropout: float = 0.0,
    batch_norm: bool = False,
    upsampling: str = "transpose",
    name: str = "unet",
) -> keras.Model:
    """Build the U-Net of Fig. 1 of the paper as a Functional model that outputs logits.

    Each level of the contracting path is two 3x3 convolutions + ReLU, then a 2x2 max
    pool that halves the size; the filters double per level. Each level of the expanding
    path is a 2x2 up-convolution that doubles the size and halves the filters, a
    concatenation with the matching skip (centre-cropped with ``padding="valid"``) and two
    3x3 convolutions + ReLU. A final 1x1 convolution maps to ``num_classes`` logits; it
    computes in float32 even under a ``mixed_bfloat16`` policy. Weights are He-normal
    (Keras' truncated normal with the paper's variance ``2 / fan_in``).

    Dropout: the paper puts dropout "at the end of the contracting path" without giving
    a rate. Here ``dropout`` is applied once, to the bottleneck features, and is off by
    default: our 25%-width network has 1/16 of the paper's parameters and is trained
    with strong augmentation. ``dropout=0.5`` is the usual choice for the paper's network.

    Args:
        input_shape: ``(H, W, C)``. ``H`` and ``W`` may be ``None``: the model then
            takes any size at call time, but only a size the network can take (one of
            :func:`valid_input_sizes`, or one :func:`nearest_valid_sizes` names:
            multiples of ``2**depth``, 16 at the default depth, with ``"same"``
            padding); another (say 50) is not checked here and fails inside the
            backend when the model is called.
        num_classes: 1 for one binary logit map (sigmoid), N > 1 for N-class logits
            (softmax); a whole number (:func:`check_num_classes`).
        base_filters: Filters of the first level (default 16); doubled per level.
        width: Alternative to ``base_filters``, a fraction of the paper's 64 filters
            (``0.25`` = 16, ``1.0`` = the paper). Give one of the two, not both.
        depth: Number of 2x2 poolings (the paper: 4), 1 to
            :data:`~unet_lowered.training.config.MAX_DEPTH`.
        padding: ``"same"`` (output size = input size; H, W multiples of ``2**depth``) or
            ``"valid"`` (the paper: unpadded convolutions, 572x572 in, 388x388 out).
            Case and spaces are ignored here and in ``upsampling`` (``"SAME"`` is
            ``"same"``), as in every option (:func:`unet_lowered.options.choose`).
        dropout: Dropout rate at the end of the contracting path (0 = none).
        batch_norm: Batch normalisation after every 3x3 convolution (not in the paper).
        upsampling: ``"transpose"`` (the paper's 2x2 up-convolution) or ``"bilinear"``
            (bilinear 2x upsampling then a 2x2 convolution, same parameter count).
        name: Model name; layer names are ``enc{level}_*``, ``bottleneck_*``,
            ``dec{level}_*`` and ``logits``.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to logits ``(B, h, w, num_classes)``
        with ``h = output_size(H, depth, padding)``.

    Raises:
        UnetError: An option is out of range or unknown, or a fixed ``H``/``W`` is a size
            the network cannot take (the message names the nearest valid sizes).
    """
    filters = _base_filters(base_filters, width)
    num_classes = check_num_classes(num_classes)
    # The canonical names ("SAME", " Valid " -> "same", "valid"): every branch below reads them.
    padding, upsampling = _check_options(input_shape, depth, padding, dropout, upsampling)
    for size in input_shape[:2]:
        if size is not None:
            output_size(size, depth, padding)  # raises with the nearest valid sizes

    inputs = keras.Input(shape=tuple(input_shape), name="image")  # (B, H, W, C)
    x, skips = inputs, []
    # Contracting path, level l = 1..depth, F = filters (16; the paper 64):
    #   (B, H/2^(l-1), W/2^(l-1), F*2^(l-1)): 256x256x16, 128x128x32, 64x64x64, 32x32x128;
    #   "valid" loses 4 px per level: the paper's 568x568x64, 280x280x128, 136x136x256, 64x64x512
    for level in range(1, depth + 1):
        x = _conv_block(x, filters * 2 ** (level - 1), padding, batch_norm, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    # Bottleneck: (B, H/2^depth, W/2^depth, F*2^depth): 16x16x256; the paper's 28x28x1024
    x = _conv_block(x, filters * 2**depth, padding, batch_norm, "bottleneck")
    if dropout > 0:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    # Expanding path, level l = depth..1, skips consumed in reverse: up-conv to F*2^(l-1)
    #   filters at twice the size, concatenate the skip, two convs: (B, H/2^(l-1), W/2^(l-1),
    #   F*2^(l-1)) again; the paper's 52x52x512, 100x100x256, 196x196x128, 388x388x64
    for level in range(depth, 0, -1):
        x = _up(x, filters * 2 ** (level - 1), upsampling, f"dec{level}")
        skip = skips[level - 1]
        if padding == "valid":
            # The skip is larger by 12 * 2^j - 16 px, j = levels below, whatever the input
            # size: crop 4, 16, 40, 88 px per side (the paper's 64 -> 56, ..., 568 -> 392).
            crop = 6 * 2 ** (depth - level + 1) - 8
            skip = layers.Cropping2D(crop, name=f"dec{level}_crop")(skip)
        x = layers.Concatenate(name=f"dec{level}_concat")([skip, x])
        x = _conv_block(x, filters * 2 ** (level - 1), padding, batch_norm, f"dec{level}")
    # Logits: (B, h, w, num_classes), h = output_size(H); float32 even under mixed precision
    outputs = layers.Conv2D(
        num_classes, 1, kernel_initializer="he_normal", dtype="float32", name="logits"
    )(x)
    return keras.Model(inputs, outputs, name=name)


def _conv_block(x: Any, filters: int, padding: str, batch_norm: bool, name: str) -> Any:
    """Two 3x3 convolutions, each followed by (batch norm and) ReLU."""
    for i in (1, 2):
        conv = layers.Conv2D(
            filters,
            3,
            padding=padding,
            use_bias=not batch_norm,  # BN's offset replaces the bias
            kernel_initializer="he_normal",
            name=f"{name}_conv{i}",
        )
        x = conv(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def _up(x: Any, filters: int, upsampling: str, name: str) -> Any:
    """Double the size and set the filters: a 2x2 up-convolution or bilinear + 2x2 conv."""
    if upsampling == "transpose":
        return UpConv2x2(
            filters, 2, strides=2, kernel_initializer="he_normal", name=f"{name}_upconv"
        )(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_upsample")(x)
    return layers.Conv2D(
        filters, 2, padding="same", kernel_initializer="he_normal", name=f"{name}_upconv"
    )(x)


@keras.saving.register_keras_serializable(package="unet_lowered")
class UpConv2x2(layers.Conv2DTranspose):
    """The paper's 2x2 up-convolution (stride 2), computed as a 1x1 convolution to four
    times the filters followed by a pixel shuffle.

    A 2x2 kernel at stride 2 never overlaps itself: output pixel ``(2i + a, 2j + b)`` is
    input pixel ``(i, j)`` times the kernel's tap ``(a, b)`` plus the bias. So one 1x1
    convolution computes all four taps at once (``filters * 4`` channels, ordered
    ``(a, b, filter)``) and a reshape and transpose put each tap in its place. The
    weights are ``Conv2DTranspose``'s (kernel ``(2, 2, filters, in)``, bias
    ``(filters,)``), the outputs the same (identical in float32); what changes is the
    cost: TensorFlow's oneDNN fuses the 1x1 convolution's bias into it, where the
    transposed convolution's bias is a separate op forward and backward (2-6% of a
    training step and 3-11% of an inference call at 224 px, batch 4, and 256 px, batch
    8, on 2 cores; ``benchmarks/step_levers.py``, figures in ``benchmarks/RESULTS.md``).
    Other kernel sizes, strides, padding or ``channels_first`` fall back to
    ``Conv2DTranspose``.
    """

    def __init__(self, filters: int, kernel_size: Any = 2, strides: Any = 2, **kwargs: Any):
        super().__init__(filters, kernel_size, strides=strides, **kwargs)
        self._shuffle = (
            tuple(self.kernel_size) == (2, 2)
            and tuple(self.strides) == (2, 2)
            and self.padding == "valid"
            and tuple(self.dilation_rate) == (1, 1)
            and self.data_format == "channels_last"
            and self.output_padding is None
        )

    def call(self, inputs: Any) -> Any:
        if not self._shuffle:
            return super().call(inputs)
        from keras import ops

        channels, filters = self.kernel.shape[-1], self.filters
        # (2, 2, F, C) -> (C, 2, 2, F) -> a 1x1 kernel (1, 1, C, 4F), taps ordered (a, b, f)
        kernel = ops.reshape(
            ops.transpose(self.kernel, (3, 0, 1, 2)), (1, 1, channels, 4 * filters)
        )
        outputs = ops.conv(inputs, kernel)
        if self.use_bias:
            outputs = ops.add(outputs, ops.tile(self.bias, (4,)))
        # (B, H, W, 2, 2, F) -> (B, H, 2, W, 2, F) -> (B, 2H, 2W, F)
        shape = ops.shape(inputs)
        outputs = ops.reshape(outputs, (shape[0], shape[1], shape[2], 2, 2, filters))
        outputs = ops.transpose(outputs, (0, 1, 3, 2, 4, 5))
        outputs = ops.reshape(outputs, (shape[0], shape[1] * 2, shape[2] * 2, filters))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


def _base_filters(base_filters: int | None, width: float | None) -> int:
    """Resolve ``base_filters``/``width`` to the filters of the first level."""
    if base_filters is not None and width is not None:
        raise UnetError(
            f"give base_filters ({base_filters}) or width ({width}), not both: "
            f"width {width} means base_filters = round({PAPER_BASE_FILTERS} * width)"
        )
    if width is not None:
        base_filters = round(PAPER_BASE_FILTERS * width)
        if base_filters < 1:
            raise UnetError(f"width {width} gives no filters; use a width of at least 1/64")
    base_filters = DEFAULT_BASE_FILTERS if base_filters is None else base_filters
    if base_filters < 1:
        raise UnetError(f"base_filters must be at least 1, got {base_filters}")
    return base_filters


def check_num_classes(num_classes: int) -> int:
    """Check a number of classes (output channels) and return it as an ``int``.

    The one check of the model, the losses and the metrics, which must agree on it.

    Raises:
        UnetError: Not a whole number >= 1 (``2.5``, ``0``, or a bool: ``True`` is no
            number of classes).
    """
    whole = isinstance(num_classes, numbers.Integral) and not isinstance(num_classes, bool)
    if whole and num_classes >= 1:
        return int(num_classes)
    raise UnetError(
        f"num_classes must be an integer >= 1 (1 = binary sigmoid, N > 1 = softmax), "
        f"got {num_classes!r}"
    )


def _check_options(
    input_shape: Sequence[int | None],
    depth: int,
    padding: str,
    dropout: float,
    upsampling: str,
) -> tuple[str, str]:
    """Raise :class:`UnetError` with a message saying how to fix any invalid option.

    Returns:
        ``(padding, upsampling)`` by their canonical names (:func:`options.choose`).
    """
    if len(input_shape) != 3 or input_shape[2] is None or input_shape[2] < 1:
        raise UnetError(f"input_shape must be (H, W, C) with C >= 1, got {tuple(input_shape)}")
    if not 1 <= depth <= MAX_DEPTH:
        raise UnetError(
            f"depth (the number of poolings) must be from 1 to {MAX_DEPTH} (the paper: 4), "
            f"got {depth}"
        )
    padding = options.choose(padding, options.PADDINGS, "padding")
    if not 0 <= dropout < 1:
        raise UnetError(f"dropout must be in [0, 1), got {dropout}")
    return padding, options.choose(upsampling, options.UPSAMPLINGS, "upsampling")


# ---------------------------------------------------------------- sizes


def _output_size_or_none(size: int, depth: int, padding: str) -> int | None:
    """Follow one spatial size through the network; ``None`` if some layer cannot take it."""
    if padding == "same":
        return size if size >= 1 and size % 2**depth == 0 else None
    for _ in range(depth):  # two 3x3 convs (-4), then a 2x2 pool that needs an even size
        size -= 4
        if size < 2 or size % 2:
            return None
        size //= 2
    size -= 4  # bottleneck
    for _ in range(depth):  # 2x2 up-conv (x2), then two 3x3 convs (-4)
        if size < 1:
            return None
        size = 2 * size - 4
    return size if size >= 1 else None


@overload
def output_size(
    input_size: int, depth: int = ..., padding: str = ..., name: str | None = ...
) -> int: ...
@overload
def output_size(
    input_size: Sequence[int], depth: int = ..., padding: str = ..., name: str | None = ...
) -> tuple[int, ...]: ...
def output_size(
    input_size: int | Sequence[int],
    depth: int = 4,
    padding: str = "same",
    name: str | None = None,
) -> int | tuple[int, ...]:
    """The output size for an input size: one side, or ``(H, W)``.

    Args:
        input_size: Input height or width in pixels, or ``(H, W)``.
        depth: Number of poolings.
        padding: ``"same"`` or ``"valid"``.
        name: The flag or setting the size came from (``"--image-size"``): the message
            then starts with it and says which sizes to use instead; None: the size is
            the images' (the message says to resize or crop them).

    Returns:
        The output size (an int, or a tuple for a tuple): ``input_size`` with
        ``"same"``; smaller with ``"valid"`` (572 -> 388 at depth 4).

    Raises:
        UnetError: The network cannot take ``input_size``; the message names the
            nearest sizes it can take (and ``name``).
    """
    if not isinstance(input_size, numbers.Integral):
        return tuple(output_size(int(s), depth, padding, name) for s in input_size)
    input_size = int(input_size)
    padding = options.choose(padding, options.PADDINGS, "padding")
    out = _output_size_or_none(input_size, depth, padding)
    if out is None:
        sizes = nearest_valid_sizes(input_size, depth, padding)
        meant = ""
        if padding == "same":
            near = " or ".join(str(s) for s in sizes)
            why = f"a multiple of {2**depth}"
        else:  # the input is not the size the images get: name the output of each
            near = " or ".join(
                f"{s} (output {_output_size_or_none(s, depth, padding)})" for s in sizes
            )
            why = (
                "one whose every pooling input is even"
                if input_size >= _first_valid_size(depth, padding)
                else "one large enough for a non-empty output"
            )
            around = resize_input_size(input_size, depth, padding)
            if _output_size_or_none(around, depth, padding) == input_size:  # meant the output?
                meant = f", or {around} for an output of {input_size}"
        given = f"input size {input_size}" if name is None else f"{name} {input_size}"
        problem = (
            f"{given} does not fit a depth-{depth} U-Net with {padding!r} padding (it needs {why})"
        )
        if name is not None:
            raise UnetError(f"{problem}; use {near}{meant}")
        if len(sizes) == 1:
            raise UnetError(
                f"{problem}; the nearest valid size is {near}{meant}: resize or crop the "
                "images to it"
            )
        raise UnetError(
            f"{problem}; the nearest valid sizes are {near}{meant}: resize or crop the images "
            "to one of them"
        )
    return out


def valid_input_sizes(depth: int = 4, padding: str = "same", up_to: int = 1024) -> list[int]:
    """All input sizes up to ``up_to`` that the network takes, smallest first.

    With ``"same"`` these are the multiples of ``2**depth``; with ``"valid"`` they are
    ``2**depth * (b + 4) - 4`` for bottleneck input sizes ``b`` large enough that the
    output is not empty (..., 556, 572, 588, ... at depth 4).
    """
    padding = options.choose(padding, options.PADDINGS, "padding")
    return [s for s in range(1, up_to + 1) if _output_size_or_none(s, depth, padding)]


def nearest_valid_sizes(size: int, depth: int = 4, padding: str = "same") -> list[int]:
    """The valid input sizes just below and just above ``size`` (one if ``size`` is valid).

    There may be none below a very small ``size``; the list then holds only the
    smallest valid size. Computed, not searched: the valid sizes are
    :func:`_first_valid_size` plus whole steps of ``2**depth``.
    """
    padding = options.choose(padding, options.PADDINGS, "padding")
    if _output_size_or_none(size, depth, padding):
        return [size]
    first, step = _first_valid_size(depth, padding), 2**depth
    if size < first:
        return [first]
    below = first + (size - first) // step * step
    return [below, below + step]


def _first_valid_size(depth: int, padding: str) -> int:
    """The smallest input size the network takes; the others follow every ``2**depth``.

    ``"same"``: ``2**depth``. ``"valid"``: each pooling input is ``2 * s + 4`` for the
    size ``s`` below it, so the inputs are ``2**depth * (b + 4) - 4`` for bottleneck
    inputs ``b``; from ``b = 8`` on the expanding path never runs empty, so the first
    eight ``b`` hold the smallest.
    """
    step = 2**depth
    if padding == "same":
        return step
    return next(
        s
        for s in (step * (b + 4) - 4 for b in range(1, 9))
        if _output_size_or_none(s, depth, padding)
    )


def resize_input_size(size: int, depth: int = 4, padding: str = "same") -> int:
    """The network input for whole images resized to about ``size``: with ``"same"`` the
    valid size at or just below it (:func:`nearest_valid_sizes`); with ``"valid"`` the
    input whose OUTPUT is the largest valid output at or below ``size`` (the smallest
    when none is), for the image is resized to the output size and mirror-padded to the
    input (the paper's overlap-tile for a whole image: 224 -> output 212, input 396 at
    depth 4).
    """
    padding = options.choose(padding, options.PADDINGS, "padding")
    if padding == "same":
        return nearest_valid_sizes(size, depth, padding)[0]
    first, step = _first_valid_size(depth, padding), 2**depth
    smallest = _output_size_or_none(first, depth, padding) or 1
    return first + max(0, (size - smallest) // step) * step


def half_size(size: int, depth: int = 4, padding: str = "same") -> int:
    """Half of ``size``, rounded down to a size the network takes (progressive
    resizing's smaller size; not smaller than ``size`` when nothing valid lies below).

    With ``"valid"`` padding it is the OUTPUT that is halved and the input returned the
    one that gives it (:func:`resize_input_size`; 396 -> output 212 -> 106 -> input 284,
    output 100), for whole images resized to the output and for crops alike: halving
    the input instead would leave an output of 4x4.
    """
    padding = options.choose(padding, options.PADDINGS, "padding")
    out = _output_size_or_none(size, depth, padding) if padding == "valid" else None
    if out is not None:
        return resize_input_size(max(1, out // 2), depth, padding)
    return nearest_valid_sizes(max(1, size // 2), depth, padding)[0]


# ---------------------------------------------------------------- size of the network


def model_info(model: keras.Model, input_size: Sequence[int]) -> dict[str, Any]:
    """Parameters and forward FLOPs of a model for one image of a given size.

    FLOPs are ``2 * multiply-accumulates`` of the convolution and dense layers, read
    from each layer's kernel and output shape (the work that matters for a matmul
    throughput comparison). Bias, ReLU, batch norm, pooling, upsampling and
    concatenation are not counted (about 0.3% more for the default U-Net).

    Args:
        model: A Functional model with one image input, e.g. from :func:`unet`.
        input_size: ``(H, W)`` of the image.

    Returns:
        ``{"params", "trainable_params", "flops", "gflops", "input_shape",
        "output_shape"}``; shapes are per image (no batch axis).

    Raises:
        UnetError: The model cannot take an image of that size.
    """
    config = model.get_config()
    layer0 = config["layers"][0]["config"]
    channels = layer0["batch_shape"][-1]
    layer0["batch_shape"] = [1, *input_size, channels]
    try:
        # Same architecture with a fixed input size, so every layer's output shape is known.
        fixed = keras.Model.from_config(config)
    except ValueError as e:
        raise UnetError(
            f"the model cannot take a {input_size[0]}x{input_size[1]} input: {e}"
        ) from e
    macs = 0
    for layer in fixed.layers:
        if isinstance(layer, layers.Conv2DTranspose):  # each input pixel scatters the kernel
            macs += _prod(layer.input.shape[1:-1]) * _prod(layer.kernel.shape)
        elif isinstance(layer, (layers.Conv2D, layers.Dense)):
            macs += _prod(layer.output.shape[1:-1]) * _prod(layer.kernel.shape)
    return {
        "params": model.count_params(),
        "trainable_params": sum(_prod(w.shape) for w in model.trainable_weights),
        "flops": 2 * macs,
        "gflops": 2 * macs / 1e9,
        "input_shape": tuple(fixed.input.shape[1:]),
        "output_shape": tuple(fixed.output.shape[1:]),
    }


def count_flops(model: keras.Model, input_size: Sequence[int]) -> int:
    """Forward FLOPs (2 x multiply-accumulates) for one ``(H, W)`` image; see :func:`model_info`."""
    return model_info(model, input_size)["flops"]


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def widths_table(
    widths: Sequence[float] = (0.25, 0.5, 1.0),
    size: int = 256,
    depth: int = 4,
    padding: str = "same",
    channels: int = 1,
    num_classes: int = 1,
    size_name: str | None = "--size",
) -> str:
    """A Markdown table of parameters and forward GFLOP per image for U-Nets of several widths.

    Args:
        widths: Fractions of the paper's width (``1.0`` = 64..1024 filters).
        size: Input height and width in pixels.
        depth, padding, channels, num_classes: As for :func:`unet`.
        size_name: What a message calls ``size`` (:func:`output_size`'s ``name``): by
            default ``unet model-info``'s flag.

    Returns:
        The table, one row per width, ending with a newline.

    Raises:
        UnetError: An option is invalid (checked first: a depth out of range is named as
            such), or ``size`` does not fit the network.
    """
    _check_options((size, size, channels), depth, padding, 0.0, "transpose")
    out = output_size(size, depth, padding, size_name)
    rows = [
        f"| width | filters | parameters | GFLOP per {size}x{size} image (output {out}x{out}) |",
        "|---|---|---:|---:|",
    ]
    for width in widths:
        model = unet(
            (size, size, channels),
            num_classes=num_classes,
            width=width,
            depth=depth,
            padding=padding,
        )
        info = model_info(model, (size, size))
        base = _base_filters(None, width)
        filters = "-".join(str(base * 2**i) for i in range(depth + 1))
        rows.append(f"| {width:g} | {filters} | {info['params']:,} | {info['gflops']:.2f} |")
    return "\n".join(rows) + "\n"
