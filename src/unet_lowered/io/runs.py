"""A trained run is a folder that carries everything needed to use it again.

Layout written by ``unet train`` (see :mod:`unet_lowered.training.train`)::

    RUN/model.keras     best model by validation Dice (weights + architecture)
    RUN/last.keras      latest epoch, with optimiser state (for --resume)
    RUN/state.json      epoch reached, best score so far (for --resume)
    RUN/config.json     every resolved setting: input size, channels, classes, threshold, ...
                        (:class:`~unet_lowered.training.config.RunConfig`)
    RUN/split.json      {"train": [ids], "val": [ids]}
    RUN/history.csv     one row per epoch (loss, dice, iou, val_*, lr)
    RUN/metrics.json    summary at the end: best epoch, validation Dice/IoU, time, images/s
    RUN/logs/           TensorBoard logs (TensorFlow backend)

``predict``, ``evaluate``, ``export`` and ``plot`` read it and never ask for the
architecture again.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unet_lowered.errors import UnetError
from unet_lowered.io import atomic
from unet_lowered.training.config import RunConfig

if TYPE_CHECKING:  # Keras is imported when a model is loaded, not with this module
    import keras

MODEL_FILE = "model.keras"
LAST_FILE = "last.keras"
CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
STATE_FILE = "state.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CHECKPOINT_STATE = "unet_state.json"
"""The member of a checkpoint (``last.keras``, and ``model.keras`` copied from it) that
holds the training state it was saved with: written into the archive before the
checkpoint is renamed into place, so checkpoint and state can never disagree."""


def history_number(text: str | None) -> float:
    """A cell of ``history.csv`` as a float; an empty or damaged cell is NaN (a gap)."""
    try:
        return float(text) if text else float("nan")
    except ValueError:
        return float("nan")


@dataclass(frozen=True)
class Run:
    """A run folder and its configuration.

    Attributes:
        dir: The run folder.
        config: Its ``config.json``, typed and checked.
    """

    dir: Path
    config: RunConfig

    @property
    def model_path(self) -> Path:
        return self.dir / MODEL_FILE

    def model(self, which: str = MODEL_FILE) -> keras.Model:
        """Load the best (default) or last model, without compiling, in Keras safe mode.

        Raises:
            UnetError: The model file is unsafe, damaged, or disagrees with ``config.json``
                (input channels, classes, input size).
        """
        path = self.dir / which
        model = load_model(path)
        check_model_matches(model, self.config, path)
        return model

    def split(self) -> dict[str, list[str]]:
        """The train/validation ids the run used (empty lists if the file is missing).

        Raises:
            UnetError: ``split.json`` is unreadable or not ``{"train": [...], "val": [...]}``.
        """
        path = self.dir / SPLIT_FILE
        if not path.is_file():
            return {"train": [], "val": []}
        try:
            split = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UnetError(
                f"{path}: unreadable ({_first_line(e)}); delete it or re-train"
            ) from None
        if not isinstance(split, dict) or not all(
            isinstance(split.get(k, []), list) and all(isinstance(i, str) for i in split.get(k, []))
            for k in ("train", "val")
        ):
            raise UnetError(f'{path}: expected {{"train": [ids], "val": [ids]}}; re-train')
        return {"train": list(split.get("train", [])), "val": list(split.get("val", []))}


def add_checkpoint_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` into the ``.keras`` archive at ``path`` (not yet in place)."""
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(CHECKPOINT_STATE, json.dumps(state))


def checkpoint_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The training state a checkpoint was saved with, checked (:func:`check_state`), or
    None (none recorded, as in checkpoints of older versions, or the file is unreadable).

    Raises:
        UnetError: The recorded state is too large or not a training state.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if CHECKPOINT_STATE not in archive.namelist():
                return None
            _check_member_size(path, archive, CHECKPOINT_STATE)
            state = json.loads(archive.read(CHECKPOINT_STATE))
    except UnetError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError):
        return None
    return check_state(state, f"{path} ({CHECKPOINT_STATE} inside)")


def check_state(state: Any, source: Any) -> dict[str, Any]:
    """``state`` (``state.json``, or the state inside a checkpoint) as written by
    :class:`unet_lowered.training.callbacks.Checkpoint`: ``epoch`` (whole, 0 or more),
    ``best`` (a number), ``best_epoch`` (1 to ``epoch``, or null), ``time_used_s`` (0
    or more, or null), ``finished`` (text, or null), ``plateau`` (null, or its ``best``,
    ``wait`` and ``cooldown_counter``).

    Raises:
        UnetError: Another shape or value; the message names ``source`` and what to do.
    """

    def whole(v: Any, low: int = 0, high: float = math.inf) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high

    def number(v: Any, low: float = -math.inf) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and low <= v < math.inf

    def refuse(what: str) -> UnetError:
        return UnetError(
            f"{source}: {what}: not a training state written by `unet train`, so the run "
            "cannot be resumed; train it again (--overwrite) or into another --out"
        )

    if not isinstance(state, dict):
        raise refuse(f"holds a {type(state).__name__}, not an object")
    epoch = state.get("epoch")
    if not whole(epoch, 0, MAX_EPOCHS):
        raise refuse(f"epoch is {_shown(epoch)}, not a whole number from 0 to {MAX_EPOCHS}")
    if not number(state.get("best")):
        raise refuse(f"best is {_shown(state.get('best'))}, not a number")
    if state.get("best_epoch") is not None and not whole(state["best_epoch"], 1, epoch):
        raise refuse(f"best_epoch is {_shown(state['best_epoch'])}, not an epoch 1 to {epoch}")
    if state.get("time_used_s") is not None and not number(state["time_used_s"], 0.0):
        raise refuse(f"time_used_s is {_shown(state['time_used_s'])}, not seconds, 0 or more")
    if state.get("finished") is not None and not isinstance(state["finished"], str):
        raise refuse(f"finished is {_shown(state['finished'])}, not text")
    plateau = state.get("plateau")
    if plateau is not None and not (
        isinstance(plateau, dict)
        and (plateau.get("best") is None or number(plateau["best"]))
        and whole(plateau.get("wait", 0))
        and whole(plateau.get("cooldown_counter", 0))
    ):
        raise refuse(f"plateau is {_shown(plateau)}, not its best, wait and cooldown_counter")
    return state


MAX_EPOCHS = 100_000
"""The most epochs a run's state (or a plan) may record; more is a damaged file."""


def load_run(path: str | os.PathLike, unfinished: bool = False) -> Run:
    """Open a run folder written by ``unet train``.

    Args:
        path: The run folder (or its ``model.keras``).
        unfinished: Accept a run whose training has not finished (``unet plot`` shows
            the curves of a run in progress). Otherwise a run with ``state.json`` (one
            that ``unet train`` writes) but no ``metrics.json`` is refused: it was stopped
            after its epochs but before the post-processing choice and its final figures
            were written, and would be used without them.

    Raises:
        UnetError: The folder or its ``config.json``/``model.keras`` is missing or
            unreadable, ``config.json`` is damaged or from a newer version, or the
            training has not finished.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".keras":
        path = path.parent
    if path.is_file():
        raise UnetError(f"{path}: a file, not a run folder; pass the --out folder of `unet train`")
    if not path.is_dir():
        raise UnetError(f"{path}: no such run folder; pass the --out folder of `unet train`")
    config_path = path / CONFIG_FILE
    if not config_path.is_file() and (path / "ensemble.json").is_file():
        raise UnetError(
            f"{path}: the --folds run stopped before its folds were joined; finish it with "
            f"`unet train --resume --out {path}`"
        )
    if not config_path.is_file():
        raise UnetError(
            f"{config_path}: missing; {path} is not a run folder written by `unet train` "
            "(copy the whole run folder, config.json with model.keras)"
        )
    try:
        values = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UnetError(
            f"{config_path}: unreadable ({_first_line(e)}); copy the run folder again or "
            "re-run `unet train`"
        ) from None
    config = RunConfig.from_json(values, config_path)
    model_path = path / MODEL_FILE
    if not model_path.is_file():
        if model_path.is_dir():
            raise UnetError(f"{model_path}: a folder, not a Keras model file; re-run `unet train`")
        raise UnetError(
            f"{model_path}: missing; training has not finished an epoch yet "
            f"(resume it with `unet train --resume --out {path}`)"
        )
    if not unfinished and atomic.locked(path):
        raise UnetError(
            f"{path}: `unet train` is writing this run right now; wait for it to finish"
        )
    if not unfinished and (path / STATE_FILE).is_file() and not (path / METRICS_FILE).is_file():
        raise UnetError(
            f"{path}: training stopped before it finished (no {METRICS_FILE}; the "
            f"post-processing choice was not made); finish it with "
            f"`unet train --resume --out {path}`"
        )
    return Run(path, config)


MAX_MODEL_BYTES = 4 * 1024**3
"""A ``.keras`` archive that unpacks to more than this (4 GB) is refused (a zip bomb)."""

MAX_JSON_MEMBER_BYTES = 16_000_000
"""A JSON member of a ``.keras`` archive (``config.json``, ``metadata.json``, the
checkpoint's state) larger than this (16 MB) is refused before it is read: parsing
JSON takes many times its size in memory, and the ``config.json`` of the largest U-Net
this tool builds is about 130 KB (depth 8, batch norm; 43 KB at depth 4)."""

_OWN_PACKAGE = "unet_lowered>"


def load_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Load a ``.keras`` file in safe mode (no code from the file); for inference (not
    compiled), or with ``compile`` its loss, metrics and optimiser state (``unet train
    --resume``: the package's losses and metrics must be imported).

    Before Keras reads it, the archive is checked: a zip whose members are intact
    (CRC), with ``config.json`` and ``model.weights.h5``, and whose configuration
    names only Keras' own classes and this package's registered objects. A Lambda
    layer (Python code) or an unknown custom object is refused in one line, and nothing
    from the file is run.

    Raises:
        UnetError: Missing, a folder, truncated or damaged, unsafe, from a newer Keras,
            or not a Keras model file; the message names the file and what to do.
    """
    path = Path(path)
    if path.is_dir():
        raise UnetError(f"{path}: a folder, not a .keras model file")
    if not path.is_file():
        raise UnetError(f"{path}: no such model file")
    _check_archive(path)
    import keras

    # Registers the package's own layers for loading: the model's, an ensemble's
    # MeanProbability (Keras finds a class only once its module is imported).
    import unet_lowered.model
    import unet_lowered.training.folds  # noqa: F401

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as e:  # Keras raises ValueError/TypeError/OSError/h5py errors
        raise UnetError(_load_error(path, e)) from None


def check_model_matches(model: Any, config: RunConfig, path: Path) -> None:
    """Refuse a model whose input channels, classes or fixed input size differ from
    ``config.json``: the run folder then mixes files of two runs."""
    try:
        in_shape, out_shape = tuple(model.input_shape), tuple(model.output_shape)
    except (AttributeError, ValueError):
        raise UnetError(
            f"{path}: not a single-input, single-output segmentation model; "
            "use a model written by `unet train`"
        ) from None
    problems = []
    if len(in_shape) != 4 or len(out_shape) != 4:
        problems.append(f"input {in_shape} and output {out_shape} are not (batch, H, W, C)")
    else:
        if in_shape[-1] is not None and in_shape[-1] != config.channels:
            problems.append(f"takes {in_shape[-1]} channel(s), config.json says {config.channels}")
        if out_shape[-1] is not None and out_shape[-1] != config.num_classes:
            problems.append(
                f"gives {out_shape[-1]} class map(s), config.json says {config.num_classes}"
            )
        fixed = in_shape[1:3]
        if None not in fixed and tuple(fixed) != tuple(config.image_size):
            problems.append(
                f"takes {fixed[0]}x{fixed[1]} input, config.json says "
                f"{config.image_size[0]}x{config.image_size[1]}"
            )
    if problems:
        raise UnetError(
            f"{path}: the model {'; '.join(problems)}; the run folder mixes files of two runs: "
            "put back the model.keras and config.json that belong together, or re-train"
        )


def _check_archive(path: Path) -> None:
    """Refuse a damaged, oversized or unsafe ``.keras`` archive before Keras opens it."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names or "model.weights.h5" not in names:
                raise UnetError(
                    f"{path}: not a Keras 3 model file (no config.json and model.weights.h5 "
                    "inside); save it with model.save('model.keras') or re-train"
                )
            total = sum(info.file_size for info in archive.infolist())
            if total > MAX_MODEL_BYTES:
                raise UnetError(
                    f"{path}: unpacks to {total / 1e9:.1f} GB, more than a model of this "
                    "tool can be; refused"
                )
            for member in ("config.json", "metadata.json"):
                _check_member_size(path, archive, member)
            bad = archive.testzip()
            if bad is not None:
                raise UnetError(
                    f"{path}: damaged ({bad} fails its checksum); copy the file again or re-train"
                )
            config = json.loads(archive.read("config.json"))
            metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
    except UnetError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise UnetError(
            f"{path}: not a Keras model file, or truncated ({_first_line(e)}); copy the file "
            "again or re-train"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError, RuntimeError) as e:
        raise UnetError(
            f"{path}: unreadable or damaged Keras model file ({_first_line(e)}); copy the file "
            "again or re-train"
        ) from None
    _check_keras_version(path, metadata)
    unsafe = _unsafe_objects(config.get("config", config) if isinstance(config, dict) else config)
    if unsafe:
        kind, name = unsafe
        if kind == "code":
            raise UnetError(
                f"{path}: refused: the model holds Python code ({name}), which would run on "
                "this machine when loaded; models written by `unet train` hold none: "
                "re-train, or rebuild the model without Lambda layers"
            )
        raise UnetError(
            f"{path}: refused: the model uses {name}, a custom object this tool does not know "
            "(and will not import); use a model written by `unet train`"
        )


def _check_member_size(path: Path, archive: zipfile.ZipFile, member: str) -> None:
    """Refuse ``member`` of ``archive`` (every copy of that name) when it unpacks to more
    than :data:`MAX_JSON_MEMBER_BYTES`; zipfile never unpacks more than the size declared."""
    for info in archive.infolist():
        if info.filename == member and info.file_size > MAX_JSON_MEMBER_BYTES:
            raise UnetError(
                f"{path}: its {member} unpacks to {info.file_size / 1e6:.0f} MB, more than "
                f"the {MAX_JSON_MEMBER_BYTES / 1e6:.0f} MB a model of this tool can hold; "
                "refused: use a model written by `unet train`"
            )


def _check_keras_version(path: Path, metadata: Any) -> None:
    import keras

    saved = str(metadata.get("keras_version", "")) if isinstance(metadata, dict) else ""
    match = re.match(r"(\d+)\.(\d+)", saved)
    have = re.match(r"(\d+)\.(\d+)", keras.__version__)
    if match and have and int(match.group(1)) > int(have.group(1)):
        raise UnetError(
            f"{path}: saved by Keras {saved}, newer than the installed {keras.__version__}; "
            "upgrade Keras (pip install -U keras)"
        )


def _unsafe_objects(node: Any) -> tuple[str, str] | None:
    """``("code", what)`` for a Lambda or serialised function, ``("custom", name)`` for an
    object outside Keras and this package, or None; skips ``compile_config``."""
    if isinstance(node, dict):
        class_name = node.get("class_name")
        if isinstance(class_name, str):
            if class_name == "__lambda__":
                return "code", "a serialised Python lambda"
            if class_name == "Lambda" and str(node.get("module", "keras")).startswith("keras"):
                return "code", "a Lambda layer"
            module = node.get("module")
            registered = node.get("registered_name")
            own = isinstance(registered, str) and registered.startswith(_OWN_PACKAGE)
            if isinstance(module, str) and not module.startswith("keras") and not own:
                return "custom", f"{module}.{class_name}"
        for key, value in node.items():
            if key == "compile_config":
                continue
            found = _unsafe_objects(value)
            if found:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _unsafe_objects(value)
            if found:
                return found
    return None


def _load_error(path: Path, error: Exception) -> str:
    text = str(error)
    located = re.search(
        r"Could not (?:locate|deserialize) (?:class|function|object) '([^']+)'", text
    )
    if located:
        return (
            f"{path}: refused: the model uses {located.group(1)!r}, a custom object this tool "
            "does not know; use a model written by `unet train`"
        )
    if "safe_mode" in text or "Lambda" in text:
        return (
            f"{path}: refused: the model holds Python code, which would run on this machine "
            "when loaded; re-train, or rebuild the model without it"
        )
    return (
        f"{path}: not a loadable Keras model ({type(error).__name__}: {_first_line(error)}); "
        "copy the file again or re-train"
    )


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(error: BaseException, limit: int = 160) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
