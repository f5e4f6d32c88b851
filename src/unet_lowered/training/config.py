"""Training settings and a run's configuration: typed, frozen, validated in one place.

:class:`TrainConfig` holds every setting of ``unet train``. Precedence: defaults <
``--config FILE`` < command-line flags (:func:`resolve`). :class:`RunConfig` is what
``RUN/config.json`` holds: the resolved settings plus the facts training found
(input size, channels, classes, label values, precision, versions). It is all a
run needs to be resumed, evaluated or used for prediction, and every stage reads
it through :func:`unet_lowered.io.runs.load_run`, never as a loose dict.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unet_lowered import options
from unet_lowered.dataset.dataset_json import check_class_names
from unet_lowered.errors import SettingError, UnetError

CONFIG_VERSION = 1
"""Version of ``config.json``; a run written by a newer version is refused, not guessed at."""

MAX_DEPTH = 8
"""The most poolings a U-Net may have (the paper: 4). At 8 the input is a multiple of
256 and the bottleneck 256 times the base filters; more is no network this tool trains,
and a ``config.json`` asking for it is refused rather than searched or built."""

MAX_EPOCHS = 100_000
MAX_BATCH = 4096
MAX_BASE_FILTERS = 1024
"""Bounds on epochs, batch size and first-level filters (the paper: 64; this package's
default 16): far above any real run, so a damaged or hostile config.json or plan.json
is refused in one line instead of allocating until the machine gives out."""

MAX_IMAGE_SIZE = 8192
"""The largest network input side (``image_size``), in pixels. 8192 x 8192 is 67 MP,
inside ``--max-pixels``' default of 100 MP, and a multiple of ``2**MAX_DEPTH``; a
``config.json`` asking for more would make ``unet predict`` resize every image to it."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of ``unet train``, with the defaults used for chest X-rays.

    The augmentation defaults aim at X-rays from other hospitals (other scanners,
    exposure, positioning): moderate rotation/shift, scale ±20% (patients of other
    sizes, other collimation), elastic deformation as in the paper, brightness/
    contrast/gamma changes, CLAHE-style local contrast and noise; no flips (lungs
    are not left-right symmetric: the heart sits on the patient's left). Batch 4
    and 45 epochs: twice the updates of batch 8 in the same time (the figures behind
    these choices are in ``benchmarks/RESULTS.md``).

    The annotations are those of a validated config. Before :meth:`validate` (which
    ``train()`` calls), as in a config file, ``image_size`` may also be ``"auto"`` and
    ``time_budget`` a duration text (``"10m"``, ``"90s"``, ``"1h"``): ``validate`` turns
    them into None and seconds.
    """

    # data
    image_size: int | None = None  # None: auto (see resolve_image_size)
    input_mode: str = "resize"
    clahe: bool = False
    # invert images with a light background (an option for mixed-polarity data)
    invert_light: bool = False
    val_fraction: float = 0.15
    seed: int = 0
    # model
    base_filters: int = 16
    depth: int = 4
    padding: str = "same"
    batch_norm: bool = False
    dropout: float = 0.0
    upsampling: str = "transpose"
    # optimisation
    epochs: int = 45
    batch_size: int = 4
    loss: str = "bce+dice"
    optimizer: str = "adam"
    learning_rate: float | None = None  # None: 1e-3 for Adam, 1e-2 for SGD
    schedule: str = "cosine"
    patience: int = 15
    # momentum of an exponential moving average of the weights (0: off); validation and
    # the saved models use the averaged weights
    ema: float = 0.0
    # progressive resizing: this share of the epochs (the first ones) at half the size
    progressive: float = 0.0
    precision: str = "auto"
    threshold: float = 0.5
    # weighted-bce (the paper's border weights)
    w0: float = 10.0
    sigma: float = 5.0
    # augmentation
    flip_lr: bool = False
    flip_ud: bool = False
    rotate: float = 10.0
    scale: float = 0.2
    shift: float = 0.08
    elastic: bool = True
    intensity: bool = True
    # crop mode: probability that a crop is centred on a foreground pixel
    foreground_crops: float = 0.0
    # cross-site shifts: probabilities, off until measured (see AugmentConfig)
    zoom_out: float = 0.0
    frame_crop: float = 0.0
    opacity: float = 0.0
    lowres: float = 0.0
    stamps: float = 0.0
    # devices: "data-parallel" splits each batch (the global batch) over all devices
    distribute: str = "none"
    # time budget in seconds (``--time-budget 10m``); None: no limit
    time_budget: float | None = None
    # debugging
    overfit_batch: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        """Check enumerations and ranges; return the config with canonical names.

        Loss aliases become the loss they stand for (``ce+dice`` -> ``bce+dice``) and
        ``image_size: auto`` becomes None.

        Raises:
            SettingError: A bad value; ``setting`` names it, the message lists valid values.
        """
        canonical = {
            "loss": options.loss_name(self.loss),
            "optimizer": options.choose(self.optimizer, options.OPTIMIZERS, "optimizer"),
            "schedule": options.choose(self.schedule, options.SCHEDULES, "schedule"),
            "precision": options.choose(self.precision, options.PRECISIONS, "precision"),
            "input_mode": options.choose(self.input_mode, options.INPUT_MODES, "input_mode"),
            "padding": options.choose(self.padding, options.PADDINGS, "padding"),
            "upsampling": options.choose(self.upsampling, options.UPSAMPLINGS, "upsampling"),
            "distribute": options.choose(self.distribute, options.DISTRIBUTE_MODES, "distribute"),
        }
        if self.image_size == "auto":  # type: ignore[comparison-overlap]  # a file's spelling
            canonical["image_size"] = None
        if self.time_budget is not None:  # "10m", "90s", "1h" or seconds
            from unet_lowered.planning.budget import parse_duration

            canonical["time_budget"] = parse_duration(self.time_budget)
        cfg = dataclasses.replace(self, **canonical)
        for name in NUMBERS:  # a config file may hold "abc" where a number belongs
            value = getattr(cfg, name)
            if value is None and name == "learning_rate":
                continue
            if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
                flag = name.replace("_", "-")
                raise SettingError(name, f"{flag} must be a number, got {value!r}")
        for name in BOOLEANS:  # YAML's "no" in quotes is a string, and a string is true
            value = getattr(cfg, name)
            if not isinstance(value, bool):
                flag = name.replace("_", "-")
                raise SettingError(
                    name,
                    f"{flag} is true or false (unquoted in YAML, JSON true/false), got {value!r}",
                )
        if cfg.upsampling == "bilinear" and cfg.progressive:
            raise SettingError(
                "upsampling",
                "upsampling bilinear cannot take the changing input size of progressive "
                "resizing (Keras' UpSampling2D); set progressive to 0, or keep upsampling "
                "transpose",
            )
        if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
            raise SettingError("seed", f"seed must be a whole number, 0 or more, got {cfg.seed!r}")
        if cfg.learning_rate is not None and not 0.0 < cfg.learning_rate < math.inf:
            raise SettingError(
                "learning_rate", f"lr must be a positive number, got {cfg.learning_rate}"
            )
        if not isinstance(cfg.patience, int) or isinstance(cfg.patience, bool) or cfg.patience < 0:
            raise SettingError(
                "patience", f"patience is a number of epochs, 0 or more, got {cfg.patience!r}"
            )
        for name, high in (("rotate", 180.0), ("scale", 1.0), ("shift", 1.0)):
            value = getattr(cfg, name)
            if not 0.0 <= value <= high or (name != "rotate" and value == high):
                bound = f"[0, {high:g}]" if name == "rotate" else f"[0, {high:g})"
                raise SettingError(name, f"{name} must be in {bound}, got {value}")
        if cfg.w0 < 0 or cfg.sigma <= 0:
            raise SettingError(
                "w0" if cfg.w0 < 0 else "sigma",
                f"the border weights need w0 >= 0 and sigma > 0, got w0 {cfg.w0}, sigma {cfg.sigma}",
            )
        if not 0.0 <= cfg.val_fraction < 1.0:
            raise SettingError(
                "val_fraction", f"val-fraction must be in [0, 1), got {cfg.val_fraction}"
            )
        for name in ("image_size", "epochs", "batch_size", "base_filters", "depth"):
            value = getattr(cfg, name)
            if name == "image_size" and value is None:
                continue
            flag = name.replace("_", "-")
            if not isinstance(value, int) or isinstance(value, bool):
                raise SettingError(name, f"{flag} must be a whole number, got {value!r}")
            if value < 1:
                raise SettingError(name, f"{flag} must be at least 1, got {value}")
            high = {
                "image_size": MAX_IMAGE_SIZE,
                "depth": MAX_DEPTH,
                "epochs": MAX_EPOCHS,
                "batch_size": MAX_BATCH,
                "base_filters": MAX_BASE_FILTERS,
            }.get(name)
            if high is not None and value > high:
                raise SettingError(name, f"{flag} must be at most {high}, got {value}")
        for name in ("zoom_out", "frame_crop", "opacity", "lowres", "stamps", "foreground_crops"):
            if not 0.0 <= getattr(cfg, name) <= 1.0:
                flag = name.replace("_", "-")
                raise SettingError(
                    name, f"{flag} is a probability in [0, 1], got {getattr(cfg, name)}"
                )
        if not 0.0 <= cfg.progressive < 1.0:
            raise SettingError(
                "progressive",
                f"progressive is the share of epochs at half size, in [0, 1), got {cfg.progressive}",
            )
        if not 0.0 <= cfg.dropout < 1.0:
            raise SettingError("dropout", f"dropout must be in [0, 1), got {cfg.dropout}")
        if not 0.0 <= cfg.ema < 1.0:
            raise SettingError(
                "ema", f"ema must be in [0, 1) (0: off, 0.99 is usual), got {cfg.ema}"
            )
        if not 0.0 < cfg.threshold < 1.0:
            raise SettingError("threshold", f"threshold must be in (0, 1), got {cfg.threshold}")
        return cfg

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.optimizer == "adam" else 1e-2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}
#: Settings that hold a real number (``learning_rate`` may also be None: the default).
BOOLEANS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.type in ("bool", bool))
"""The on/off settings: a config file must give them as booleans."""

NUMBERS = (
    "val_fraction",
    "dropout",
    "learning_rate",
    "ema",
    "progressive",
    "threshold",
    "w0",
    "sigma",
    "rotate",
    "scale",
    "shift",
    "foreground_crops",
    "zoom_out",
    "frame_crop",
    "opacity",
    "lowres",
    "stamps",
)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON file of training settings (keys as in ``unet train --help``).

    Keys may use dashes or underscores (``image-size`` or ``image_size``).

    Raises:
        UnetError: Unreadable file, not a mapping, or an unknown key (the message lists valid ones).
    """
    path = Path(path)
    if not path.is_file():
        raise UnetError(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:
        raise UnetError(f"{path}: not valid YAML/JSON ({_one_line(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UnetError(f"{path}: expected a mapping of setting: value, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        name = {"lr": "learning_rate"}.get(name, name)  # the flag is --lr
        if name in ("crop", "resize"):  # the flags --crop/--resize set input_mode
            if not isinstance(value, bool):
                raise UnetError(f"{path}: {key!r} is true or false, got {value!r}")
            name, value = "input_mode", "crop" if value == (name == "crop") else "resize"
        if name not in FIELDS:
            import difflib

            close = difflib.get_close_matches(name, sorted(FIELDS | {"crop", "lr"}), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UnetError(
                f"{path}: unknown setting {key!r}; {hint}valid settings: {', '.join(sorted(FIELDS))}"
            )
        out[name] = value
    return out


def resolve(
    config_file: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults, then the config file, then the non-None ``overrides`` (command-line flags).

    Raises:
        UnetError: An unreadable config file or an unknown setting.
        SettingError: A bad value (one from the file names the file), or an ``image_size``
            the network cannot take (:func:`check_image_size`).
    """
    values: dict[str, Any] = {}
    from_file: set[str] = set()
    if config_file is not None:
        values.update(read_config_file(config_file))
        from_file = set(values)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(flags)
    from_file -= set(flags)
    unknown = set(values) - FIELDS
    if unknown:
        raise UnetError(f"unknown settings: {', '.join(sorted(unknown))}")
    try:
        cfg = TrainConfig(**values)
    except TypeError as e:
        raise UnetError(f"bad settings: {e}") from None
    try:
        cfg = cfg.validate()
        check_image_size(cfg)
    except SettingError as e:  # a bad value from the file: name the file to fix
        if e.setting in from_file:
            raise SettingError(e.setting, f"{config_file}: {e}") from None
        raise
    return cfg


def check_image_size(cfg: TrainConfig) -> None:
    """Refuse, before any work, an ``image_size`` the network of ``cfg`` cannot take.

    Raises:
        SettingError: ``image_size`` does not fit ``depth`` and ``padding``; the message
            names ``--image-size`` and the sizes to use instead.
    """
    if cfg.image_size is None:
        return
    from unet_lowered.model import output_size  # Keras: imported only when a size is set

    try:
        output_size(cfg.image_size, cfg.depth, cfg.padding, name="--image-size")
    except UnetError as e:
        raise SettingError("image_size", str(e)) from None


def from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from a run's ``config.json`` (extra keys kept in ``extra``)."""
    known = {k: v for k, v in values.items() if k in FIELDS}
    if isinstance(known.get("image_size"), list | tuple):  # config.json stores [H, W]
        known["image_size"] = int(known["image_size"][0])
    extra = {k: v for k, v in values.items() if k not in FIELDS and k != "extra"}
    return TrainConfig(**known, extra=extra)


@dataclass(frozen=True)
class RunConfig:
    """The content of ``RUN/config.json``: the settings a run was trained with and the
    facts training found. Frozen; :meth:`from_json` reads and checks it.

    Attributes:
        settings: The resolved training settings (``settings.image_size`` is the side).
        image_size: ``(height, width)`` of the network input.
        channels: 1 (gray) or 3 (RGB) input channels.
        num_classes: 1 (binary, sigmoid) or K > 1 classes (softmax).
        label_values: The original mask value of each class (multi-class), or None.
        class_names: A name per class, background first (``unet prepare --class-names``),
            or None.
        precision: The precision policy training ran under (``float32``,
            ``mixed_bfloat16``).
        data: The data folder trained on (absolute), for ``--resume`` and ``unet plot``.
        backend: The Keras backend of the run.
        keras_version: Keras' version at training.
        unet_lowered_version: This package's version at training.
        mask_stats: What the training masks look like, for the quality flag:
            :class:`unet_lowered.inference.quality.MaskStats` as JSON (of the
            foreground), with ``classes`` (each class's, by class index) for multi-class
            runs; or None.
        postprocess: The post-processing chosen on validation
            (:func:`unet_lowered.evaluation.choose.choose_postprocess`): ``tta``,
            ``threshold``, ``watershed``, ``keep_largest``, ``fill_holes``, ``min_area``
            and the figures behind them, or None (none).
        plan: The plan the settings came from (:mod:`unet_lowered.planning.plan`), or None.
        settings_sources: Where each setting came from: ``default``, ``plan``, ``file``
            (``--config``) or ``flag``; None when not recorded.
        resize_to_output: A ``valid``-padding run on whole images trained at its OUTPUT
            size: each image resized to it and mirror-padded to the input (the paper's
            overlap-tile for a whole image), so prediction does the same
            (:attr:`resize_size`). False for runs trained before (resized to the input).
        distribute_info: The devices and processes a ``--distribute data-parallel`` run
            trained on and how the global batch was split
            (:meth:`unet_lowered.training.distribute.DataParallelPlan.describe`), or None.
        version: :data:`CONFIG_VERSION` of the file.
    """

    settings: TrainConfig
    image_size: tuple[int, int]
    channels: int = 1
    num_classes: int = 1
    label_values: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None
    precision: str = "float32"
    data: str | None = None
    backend: str | None = None
    keras_version: str | None = None
    unet_lowered_version: str | None = None
    mask_stats: Mapping[str, Any] | None = None
    postprocess: Mapping[str, Any] | None = None
    plan: Mapping[str, Any] | None = None
    settings_sources: Mapping[str, str] | None = None
    distribute_info: Mapping[str, Any] | None = None
    resize_to_output: bool = False
    version: int = CONFIG_VERSION

    # The settings that inference reads, by name.
    @property
    def threshold(self) -> float:
        return float(self.settings.threshold)

    @property
    def clahe(self) -> bool:
        return bool(self.settings.clahe)

    @property
    def invert_light(self) -> bool:
        return bool(self.settings.invert_light)

    @property
    def input_mode(self) -> str:
        return self.settings.input_mode

    @property
    def padding(self) -> str:
        return self.settings.padding

    @property
    def depth(self) -> int:
        return int(self.settings.depth)

    @property
    def resize_size(self) -> tuple[int, int]:
        """``(h, w)`` whole images are resized to in ``resize`` mode: the network input,
        or the output of a ``resize_to_output`` run (mirror-padded to the input, so one
        pass predicts the whole image)."""
        if not self.resize_to_output:
            return self.image_size
        from unet_lowered.model import output_size  # Keras: only for such runs

        h, w = output_size(self.image_size, self.depth, self.padding)
        return h, w

    @property
    def flips(self) -> tuple[bool, bool]:
        """``(left-right, up-down)``: the flips training augmented with."""
        return bool(self.settings.flip_lr), bool(self.settings.flip_ud)

    def to_json(self) -> dict[str, Any]:
        """The flat mapping written as ``config.json`` (settings, then the facts)."""
        values = self.settings.to_dict()
        values.pop("extra")
        values.update(
            image_size=list(self.image_size),
            channels=self.channels,
            num_classes=self.num_classes,
            label_values=None if self.label_values is None else list(self.label_values),
            class_names=None if self.class_names is None else list(self.class_names),
            learning_rate=self.settings.lr,
            precision_resolved=self.precision,
            data=self.data,
            backend=self.backend,
            keras_version=self.keras_version,
            unet_lowered_version=self.unet_lowered_version,
            mask_stats=None if self.mask_stats is None else dict(self.mask_stats),
            postprocess=None if self.postprocess is None else dict(self.postprocess),
            settings_sources=None if self.settings_sources is None else dict(self.settings_sources),
            plan=None if self.plan is None else dict(self.plan),
            distribute_info=None if self.distribute_info is None else dict(self.distribute_info),
            resize_to_output=self.resize_to_output,
            config_version=self.version,
        )
        return values

    @classmethod
    def from_json(cls, values: Any, source: str | os.PathLike = "config.json") -> RunConfig:
        """Check and type a parsed ``config.json``.

        Files without ``config_version`` are version 1 (written before it existed).

        Args:
            values: The parsed JSON.
            source: The file, named in error messages.

        Raises:
            UnetError: Not a mapping, from a newer version, ``image_size`` missing, or a
                value out of range; the message names the file and what to do.
        """
        if not isinstance(values, Mapping):
            raise UnetError(f"{source}: expected a JSON object; re-run `unet train`")
        version = values.get("config_version", 1)
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise UnetError(
                f"{source}: config version {version!r} is newer than this unet-lowered reads "
                f"({CONFIG_VERSION}); upgrade the package (pip install -U unet-lowered)"
            )
        size = values.get("image_size")
        if isinstance(size, int) and not isinstance(size, bool):
            size = [size, size]
        if not (
            isinstance(size, list | tuple)
            and len(size) == 2
            and all(_whole(v, 1, MAX_IMAGE_SIZE) for v in size)
        ):
            raise UnetError(
                f"{source}: image_size must be [height, width], each 1 to {MAX_IMAGE_SIZE} px, "
                f"got {_shown(size)}; re-run `unet train`"
            )
        try:
            settings = from_dict(values).validate()
        except (TypeError, ValueError, AttributeError) as e:
            raise UnetError(f"{source}: {e}; re-run `unet train`") from None
        channels, num_classes = values.get("channels", 1), values.get("num_classes", 1)
        if channels not in (1, 3) or not isinstance(num_classes, int) or num_classes < 1:
            raise UnetError(
                f"{source}: channels {channels!r} / num_classes {num_classes!r} are not "
                "1 or 3 / a positive whole number; re-run `unet train`"
            )
        label_values = values.get("label_values")
        if label_values and not (
            isinstance(label_values, list)
            and (num_classes == 1 or len(label_values) == num_classes)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in label_values)
            and len(set(label_values)) == len(label_values)
        ):
            raise UnetError(
                f"{source}: label_values {label_values!r} must be different whole numbers, one "
                f"per class ({num_classes}); re-run `unet train`"
            )
        class_names = values.get("class_names")
        if class_names is not None and check_class_names(class_names, num_classes) is None:
            raise UnetError(
                f"{source}: class_names {class_names!r} must be {num_classes} different names, "
                "background first; re-run `unet train`"
            )
        for key in ("precision_resolved", "data", "backend", "keras_version"):
            if values.get(key) is not None and not isinstance(values[key], str):
                raise UnetError(
                    f"{source}: {key} must be text, got {values[key]!r}; re-run `unet train`"
                )
        resize_to_output = values.get("resize_to_output", False)
        if not isinstance(resize_to_output, bool):
            raise UnetError(
                f"{source}: resize_to_output must be true or false, got {resize_to_output!r}; "
                "re-run `unet train`"
            )
        postprocess = _mapping_or_none(values, "postprocess", source)
        if postprocess is not None:
            _check_postprocess(postprocess, source)
        mask_stats = _mapping_or_none(values, "mask_stats", source)
        if mask_stats is not None:
            _check_mask_stats(mask_stats, source, num_classes)
        return cls(
            settings=settings,
            image_size=(int(size[0]), int(size[1])),
            channels=int(channels),
            num_classes=int(num_classes),
            label_values=None if not label_values else tuple(int(v) for v in label_values),
            class_names=None if class_names is None else tuple(class_names),
            precision=str(values.get("precision_resolved", "float32")),
            data=values.get("data"),
            backend=values.get("backend"),
            keras_version=values.get("keras_version"),
            unet_lowered_version=values.get("unet_lowered_version"),
            mask_stats=mask_stats,
            postprocess=postprocess,
            plan=_mapping_or_none(values, "plan", source),
            settings_sources=_mapping_or_none(values, "settings_sources", source),
            distribute_info=_mapping_or_none(values, "distribute_info", source),
            resize_to_output=resize_to_output,
            version=version,
        )


def _mapping_or_none(values: Mapping[str, Any], key: str, source: Any) -> Mapping[str, Any] | None:
    value = values.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise UnetError(f"{source}: {key} must be an object or null; re-run `unet train`")
    return value


MAX_COUNT = 2**31 - 1
"""The largest object count or area (pixels) a run's post-processing may name."""


def _check_postprocess(block: Mapping[str, Any], source: Any) -> None:
    """Refuse a ``postprocess`` block whose steps inference could not apply as written
    (:func:`unet_lowered.inference.predictor.probs_to_mask` reads them); the figures
    it keeps for the record (``tried``, the validation scores) are not read."""
    from unet_lowered.options import TTA_SETS

    rules = {
        "tta": (lambda v: v in TTA_SETS, f"one of {', '.join(TTA_SETS)}, or null"),
        "threshold": (lambda v: _real(v, 0.0, 1.0, ends=False), "a number above 0 and below 1"),
        "watershed": (lambda v: _real(v, 0.0, 1.0), "a number from 0 to 1"),
        "keep_largest": (lambda v: _whole(v, 0, MAX_COUNT), "a whole number, 0 or more"),
        "fill_holes": (lambda v: isinstance(v, bool), "true or false"),
        "min_area": (lambda v: _whole(v, 0, MAX_COUNT), "a whole number of pixels, 0 or more"),
    }
    for key, (ok, what) in rules.items():
        value = block.get(key)
        if value is not None and not ok(value):
            raise UnetError(
                f"{source}: postprocess.{key} must be {what}, got {_shown(value)}; remove "
                "the postprocess block (no post-processing) or re-run `unet train`"
            )


def _check_mask_stats(block: Mapping[str, Any], source: Any, num_classes: int) -> None:
    """Refuse a ``mask_stats`` block the quality flag could not read
    (:meth:`unet_lowered.inference.quality.MaskStats.from_json`): the foreground's
    figures, and each class's under ``classes`` (keys ``"1"`` .. ``"K-1"``)."""
    _check_stats(block, "mask_stats", source)
    classes = block.get("classes")
    if classes is None:
        return
    keys = {str(c) for c in range(1, num_classes)}
    if not isinstance(classes, Mapping) or not set(classes) <= keys:
        raise UnetError(
            f"{source}: mask_stats.classes must map class numbers 1 to {num_classes - 1} "
            "to their figures; remove mask_stats (no quality flag) or re-run `unet train`"
        )
    for key, stats in classes.items():
        if not isinstance(stats, Mapping):
            raise UnetError(
                f"{source}: mask_stats.classes.{key} must be an object; remove mask_stats "
                "(no quality flag) or re-run `unet train`"
            )
        _check_stats(stats, f"mask_stats.classes.{key}", source)


def _check_stats(stats: Mapping[str, Any], where: str, source: Any) -> None:
    def pair(low: float, high: float) -> Any:
        return lambda v: isinstance(v, list) and len(v) == 2 and all(_real(x, low, high) for x in v)

    share, inf = (lambda v: _real(v, 0.0, 1.0)), math.inf
    rules = {
        "fraction": (pair(0.0, 1.0), "[low, high], shares from 0 to 1"),
        "objects": (lambda v: _whole(v, 0, MAX_COUNT), "a whole number, 0 or more"),
        "min_ratio": (share, "a number from 0 to 1"),
        "small_object": (share, "a number from 0 to 1"),
        "contrast": (pair(-inf, inf), "[low, high], two numbers"),
        "shape": (_shape_grid, "rows of numbers from 0 to 1, as many as each row holds"),
        "centre": (pair(0.0, 1.0), "[low, high], shares from 0 to 1"),
        "larger_left": (share, "a number from 0 to 1"),
        "val_unsure": (lambda v: _real(v, 0.0, inf), "a number, 0 or more"),
    }
    for key, (ok, what) in rules.items():
        value = stats.get(key)
        if (value is not None or key == "fraction") and not ok(value):
            raise UnetError(
                f"{source}: {where}.{key} must be {what}, got {_shown(value)}; remove "
                "mask_stats (no quality flag) or re-run `unet train`"
            )


def _shape_grid(value: Any) -> bool:
    """A :func:`~unet_lowered.inference.quality.object_shape` array as JSON: its
    ``SHAPE_SIDE`` rows of ``SHAPE_SIDE`` numbers in [0, 1]."""
    from unet_lowered.inference.quality import SHAPE_SIDE

    return (
        isinstance(value, list)
        and len(value) == SHAPE_SIDE
        and all(
            isinstance(row, list)
            and len(row) == SHAPE_SIDE
            and all(_real(v, 0.0, 1.0) for v in row)
            for row in value
        )
    )


def _whole(value: Any, low: int, high: int) -> bool:
    """``value`` is a whole number (not a bool) from ``low`` to ``high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _real(value: Any, low: float, high: float, ends: bool = True) -> bool:
    """``value`` is a finite number (not a bool) from ``low`` to ``high`` (``ends``
    False: strictly between them)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        value = float(value)
    except OverflowError:  # a whole number too large for a float
        return False
    if not math.isfinite(value):
        return False
    return low <= value <= high if ends else low < value < high


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a hostile file may hold megabytes)."""
    text = repr(value) if not isinstance(value, list | dict) or len(value) < 100 else None
    if text is None:
        text = f"a {type(value).__name__} of {len(value)} items"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(error: Exception) -> str:
    """A parser's error in one line: YAML's problem and where it is, else the first line."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
